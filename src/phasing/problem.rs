//! The prepared input of a phasing run, in FFT-native order, and the raw output a backend
//! returns. Preparation (validation, centring, amplitude computation, starting supports and
//! objects) happens once here, for every backend.

use super::program::Constraint;
use crate::array::{Complex32, Stack};
use crate::fft::Plan2d;
use crate::rng::{item_seed, unit};
use rand_xoshiro::rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// Starting objects.
#[derive(Clone, Debug)]
pub enum InitObjects {
    /// Random values in the support (uniform modulus in [0,1); uniform phase, in steps of
    /// 2 pi / 4096, when the object is complex), deterministic in (seed, pattern, start),
    /// independent of threading.
    Random { seed: u64 },
    /// Given objects in native order, `n` is 1 (shared) or the number of patterns, used as
    /// they are (see [`scale_to_data`] for the scaling `prepare` applies) when `noise` is 0.
    /// With `noise` > 0 every start multiplies each pixel by its own `1 + noise * (2u - 1)`,
    /// u uniform in [0, 1) and deterministic in (seed, pattern, start): distinct starts
    /// around one estimate (a network prediction, say), so that starts can be compared and
    /// averaged (PRTF).
    Given {
        objects: Stack<Complex32>,
        noise: f32,
        seed: u64,
    },
}

/// Everything a backend needs to run a program. All arrays are FFT-native (origin at 0,0).
#[derive(Clone, Debug)]
pub struct PhasingProblem {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    /// Random starts per pattern.
    pub starts: usize,
    /// Measured amplitudes sqrt(I), N*H*W, native order; unmeasured pixels hold -1.
    pub amplitudes: Vec<f32>,
    /// Per pattern: sum of A^2 over measured pixels (denominator of the Fourier error).
    pub sum_a2: Vec<f64>,
    /// Per pattern: number of measured pixels.
    pub measured: Vec<usize>,
    /// Starting supports, native order, n = 1 (shared) or N.
    pub supports: Stack<u8>,
    pub init: InitObjects,
    pub constraint: Constraint,
    /// Return every start's final object and support, not only the best.
    pub keep_all: bool,
    /// Checked by the backends between iterations: once set, the run stops and returns
    /// [`crate::Error::Cancelled`] (unset by [`crate::phasing::prepare`]).
    pub cancel: crate::cancel::Cancel,
}

impl PhasingProblem {
    /// Number of (pattern, start) items.
    pub fn items(&self) -> usize {
        self.n * self.starts
    }

    /// Amplitudes of pattern `p` (native order, -1 = unmeasured).
    pub fn amplitude(&self, p: usize) -> &[f32] {
        let l = self.h * self.w;
        &self.amplitudes[p * l..(p + 1) * l]
    }

    /// Fill the starting object and support of item (pattern `p`, start `s`).
    pub fn initial_state(&self, p: usize, s: usize, obj: &mut [Complex32], sup: &mut [u8]) {
        let l = self.h * self.w;
        let si = if self.supports.n == 1 { 0 } else { p };
        sup.copy_from_slice(self.supports.image(si));
        match &self.init {
            InitObjects::Random { seed } => {
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(item_seed(*seed, p, s));
                let complex = self.constraint == Constraint::None;
                let lut = phase_table();
                for (o, &m) in obj.iter_mut().zip(sup.iter()) {
                    // one 64-bit draw: 24 bits of modulus, 12 bits of phase
                    let x = rng.next_u64();
                    let a = unit(x);
                    *o = if m == 0 {
                        Complex32::new(0.0, 0.0)
                    } else if complex {
                        lut[(x & (PHASES as u64 - 1)) as usize] * a
                    } else {
                        Complex32::new(a, 0.0)
                    };
                }
            }
            InitObjects::Given {
                objects: st,
                noise,
                seed,
            } => {
                // Already scaled to the data by `prepare` (least-squares Fourier modulus fit).
                let oi = if st.n == 1 { 0 } else { p };
                obj.copy_from_slice(st.image(oi));
                if *noise > 0.0 {
                    let mut rng = Xoshiro256PlusPlus::seed_from_u64(item_seed(*seed, p, s));
                    for o in obj.iter_mut() {
                        *o *= 1.0 + noise * (2.0 * unit(rng.next_u64()) - 1.0);
                    }
                }
                return;
            }
        }
        // A random start has no scale of its own: give it the energy the data imply
        // (Parseval), so that the first HIO feedback mixes quantities of the same magnitude.
        let e: f64 = obj.iter().map(|c| c.norm_sqr() as f64).sum();
        let target = if self.measured[p] > 0 {
            self.sum_a2[p] / self.measured[p] as f64
        } else {
            0.0
        };
        if e > 0.0 && target > 0.0 {
            let k = (target / e).sqrt() as f32;
            obj.iter_mut().for_each(|c| *c *= k);
        }
        debug_assert_eq!(obj.len(), l);
    }
}

/// What a backend returns. Arrays are native order.
#[derive(Clone, Debug)]
pub struct PhasingOutput {
    /// Per pattern, the start with the lowest final Fourier error.
    pub best_start: Vec<usize>,
    /// Best object per pattern (N*H*W).
    pub objects: Stack<Complex32>,
    /// Support of the best start per pattern (N*H*W).
    pub supports: Stack<u8>,
    /// With `keep_all`: every start's object, N*K*H*W (pattern-major).
    pub all_objects: Option<Vec<Complex32>>,
    /// With `keep_all`: every start's support, N*K*H*W.
    pub all_supports: Option<Vec<u8>>,
    /// Fourier error history, N*K*records.
    pub fourier_error: Vec<f32>,
    /// Real-space error history (fraction of |P_M g|^2 outside the support), N*K*records.
    pub real_error: Vec<f32>,
    /// Fourier error of each item's final object, N*K.
    pub final_fourier_error: Vec<f32>,
    /// History entries per item.
    pub records: usize,
}

/// The factor s minimising sum over measured pixels of (s |F| - A)^2, F = FFT(obj):
/// sum |F| A / sum |F|^2. Maps a starting object in arbitrary units (a network output
/// normalised to 1, say) onto the scale of the data, and leaves a reconstruction of the same
/// data unchanged (s ~ 1).
pub fn scale_to_data(obj: &[Complex32], amplitude: &[f32], plan: &Plan2d) -> f32 {
    let mut f = obj.to_vec();
    plan.forward(&mut f, &mut plan.scratch());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (c, &a) in f.iter().zip(amplitude) {
        if a >= 0.0 {
            let m = c.norm() as f64;
            num += m * a as f64;
            den += m * m;
        }
    }
    if den > 0.0 && num > 0.0 {
        (num / den) as f32
    } else {
        1.0
    }
}

/// Number of phases of random complex starts (uniform on the circle, 2 pi / 4096 apart).
const PHASES: usize = 4096;

fn phase_table() -> &'static [Complex32] {
    static TABLE: std::sync::OnceLock<Vec<Complex32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..PHASES)
            .map(|k| {
                let t = std::f64::consts::TAU * k as f64 / PHASES as f64;
                Complex32::new(t.cos() as f32, t.sin() as f32)
            })
            .collect()
    })
}

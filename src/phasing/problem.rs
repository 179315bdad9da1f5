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
    /// Measured amplitudes sqrt(I), N*H*W, native order; unmeasured pixels hold -1, and
    /// pixels held out for the free log-likelihood hold `-(A + 2)` (see [`encode_free`]):
    /// every kernel treats a negative value as unmeasured (the modulus constraint leaves it
    /// free), and only the likelihood kernels read the held-out amplitude back.
    pub amplitudes: Vec<f32>,
    /// Per pattern: sum of A^2 over measured pixels, held-out pixels excluded (denominator
    /// of the Fourier error).
    pub sum_a2: Vec<f64>,
    /// Per pattern: number of measured pixels, held-out pixels excluded.
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
    /// How the best start is chosen and which starts are filtered out.
    pub selection: Selection,
    /// Per item (N*K), the factor of its shrinkwrap thresholds (shrinkwrap `factor=LO:HI`);
    /// empty: 1 for every item.
    pub sw_factors: Vec<f32>,
}

/// Offset of the held-out ("free") amplitudes: a held-out pixel of amplitude A >= 0 is
/// stored as `-(A + FREE_OFFSET)`, below -1 (unmeasured), so that the modulus projection
/// and the Fourier error treat it as unmeasured.
pub const FREE_OFFSET: f32 = 2.0;

/// The stored value of a held-out pixel of amplitude `a` (>= 0). The round trip through
/// [`decode_free`] keeps `a` to the f32 spacing at `a + 2`: exact to 2.4e-7 absolute below
/// A = 2 (fewer than 4 photons), to f32 rounding above.
pub fn encode_free(a: f32) -> f32 {
    -(a + FREE_OFFSET)
}

/// The held-out amplitude of a stored value, or None when the pixel is measured (>= 0) or
/// unmeasured (-1).
pub fn decode_free(v: f32) -> Option<f32> {
    (v <= -0.5 * (1.0 + FREE_OFFSET)).then(|| -v - FREE_OFFSET)
}

/// The stored value of an unmeasured (masked) pixel whose Fourier value the modulus
/// projection multiplies by `w` in [0, 1] (`--missing-centre`: 0 holds it at zero, 1 leaves
/// it free; the proximal step of a penalty lambda |F|^2 on it is w = 1 / (1 + lambda)):
/// `-1 - (1 - w) / 4`, in [-1.25, -1]. -1 (w = 1) is the plain unmeasured pixel, so every
/// kernel that only asks "measured?" (a >= 0) or "held out?" (a <= -1.5) is unchanged.
pub fn encode_masked(w: f32) -> f32 {
    -1.0 - 0.25 * (1.0 - w.clamp(0.0, 1.0))
}

/// The factor the modulus projection applies to F at a pixel stored as `v`: 1 for measured
/// and held-out pixels (and any unmeasured value above -1), `5 + 4 v` clamped to [0, 1] for
/// an unmeasured pixel in (-1.5, 0) (see [`encode_masked`]). The kernels (CPU scalar and
/// AVX2, `cd_modulus_project`) compute exactly this.
#[inline]
pub fn masked_weight(v: f32) -> f32 {
    if v < 0.0 && v > -1.5 {
        (4.0f32.mul_add(v, 5.0)).clamp(0.0, 1.0)
    } else {
        1.0
    }
}

/// Floor of the calculated intensity in the Poisson log-likelihood (keeps ln finite).
pub const LLK_FLOOR: f32 = 1e-20;

/// The Poisson log-likelihood term of one pixel, in f32 as the kernels compute it:
/// `Ic - Io - Io ln(Ic / Io)` for observed intensity `Io = a^2` and calculated intensity
/// `Ic = max(|F|^2, LLK_FLOOR)`, `Ic` when `Io = 0`. It is the negative log-likelihood of a
/// Poisson count minus its value at the perfect fit (Ic = Io), so it is >= 0 and zero only
/// at the perfect fit; twice it is the Poisson deviance. Written as `Io (x - ln(1 + x))`,
/// x = r - 1, with log1p near r = 1 to keep its digits.
#[inline]
pub fn llk_term(ic: f32, a: f32) -> f32 {
    let io = a * a;
    let ic = ic.max(LLK_FLOOR);
    if io <= 0.0 {
        return ic;
    }
    let r = ic / io;
    let x = r - 1.0;
    let l = if x.abs() < 0.5 { x.ln_1p() } else { r.ln() };
    io * (x - l)
}

/// Which figure of merit chooses the best start of each pattern.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum Criterion {
    /// Lowest final Fourier error (the default, as before).
    #[default]
    Fourier,
    /// Lowest final Poisson log-likelihood over the measured (not held-out) pixels.
    Llk,
    /// Lowest final free log-likelihood over the held-out pixels (needs held-out pixels).
    FreeLlk,
}

impl std::str::FromStr for Criterion {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "fourier" | "fourier-error" => Ok(Criterion::Fourier),
            "llk" | "poisson" => Ok(Criterion::Llk),
            "free-llk" | "freellk" | "free" => Ok(Criterion::FreeLlk),
            _ => Err(crate::Error::Config(format!(
                "--select '{s}': expected fourier, llk or free-llk"
            ))),
        }
    }
}

/// How the best start is chosen: by `criterion`, among the starts whose final support
/// fraction lies in [min_fraction, max_fraction] (a support that collapsed or blew up);
/// when no start of a pattern passes, among all of them.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Selection {
    pub criterion: Criterion,
    pub min_fraction: f32,
    pub max_fraction: f32,
}

/// Default support-fraction limits of the selection (PyNX's runner uses the same maximum):
/// a start whose final support covers more than 70 % of the field blew up, one with none
/// collapsed.
pub const DEFAULT_MIN_SUPPORT_FRACTION: f32 = 1e-4;
pub const DEFAULT_MAX_SUPPORT_FRACTION: f32 = 0.7;

impl Default for Selection {
    fn default() -> Self {
        Selection {
            criterion: Criterion::Fourier,
            min_fraction: DEFAULT_MIN_SUPPORT_FRACTION,
            max_fraction: DEFAULT_MAX_SUPPORT_FRACTION,
        }
    }
}

/// The final figures of merit of one (pattern, start) item.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FinalMerit {
    pub fourier: f32,
    pub llk: f32,
    pub free_llk: f32,
    pub support_fraction: f32,
}

impl Selection {
    /// Does the item pass the support filter?
    pub fn admissible(&self, m: &FinalMerit) -> bool {
        m.support_fraction >= self.min_fraction && m.support_fraction <= self.max_fraction
    }

    /// Sort key of an item (lower is better): filtered items after admissible ones, then
    /// the criterion (NaN counts as +inf), then the start index (ties to the lower start).
    pub fn key(&self, m: &FinalMerit, start: usize) -> (bool, f32, usize) {
        let v = match self.criterion {
            Criterion::Fourier => m.fourier,
            Criterion::Llk => m.llk,
            Criterion::FreeLlk => m.free_llk,
        };
        let v = if v.is_nan() { f32::INFINITY } else { v };
        (!self.admissible(m), v, start)
    }

    /// Is (m, start) strictly better than (than, than_start)?
    pub fn better(
        &self,
        m: &FinalMerit,
        start: usize,
        than: &FinalMerit,
        than_start: usize,
    ) -> bool {
        let (a, b) = (self.key(m, start), self.key(than, than_start));
        a.partial_cmp(&b) == Some(std::cmp::Ordering::Less)
    }

    /// The best start of each pattern from the N*K final merits.
    pub fn best_starts(&self, merits: &[FinalMerit], k: usize) -> Vec<usize> {
        merits
            .chunks(k)
            .map(|m| {
                let mut b = 0;
                for s in 1..m.len() {
                    if self.better(&m[s], s, &m[b], b) {
                        b = s;
                    }
                }
                b
            })
            .collect()
    }
}

impl PhasingProblem {
    /// Number of (pattern, start) items.
    pub fn items(&self) -> usize {
        self.n * self.starts
    }

    /// Amplitudes of pattern `p` (native order, -1 = unmeasured, <= -2 held out).
    pub fn amplitude(&self, p: usize) -> &[f32] {
        let l = self.h * self.w;
        &self.amplitudes[p * l..(p + 1) * l]
    }

    /// The shrinkwrap threshold factor of item `i` (pattern-major).
    pub fn sw_factor(&self, i: usize) -> f32 {
        self.sw_factors.get(i).copied().unwrap_or(1.0)
    }

    /// Pixels of pattern `p` entering the log-likelihood (measured, not held out) and the
    /// free log-likelihood (held out).
    pub fn llk_counts(&self, p: usize) -> (usize, usize) {
        let a = self.amplitude(p);
        let m = a.iter().filter(|&&v| v >= 0.0).count();
        let f = a.iter().filter(|&&v| decode_free(v).is_some()).count();
        (m, f)
    }

    /// Fill the starting object and support of item (pattern `p`, start `s`).
    pub fn initial_state(&self, p: usize, s: usize, obj: &mut [Complex32], sup: &mut [u8]) {
        let si = if self.supports.n == 1 { 0 } else { p };
        sup.copy_from_slice(self.supports.image(si));
        match &self.init {
            InitObjects::Random { seed } => {
                self.random_object(p, item_seed(*seed, p, s), obj, sup);
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
            }
        }
    }

    /// Fill a random starting object of pattern `p` inside the support `sup` (already
    /// filled), from the generator seeded by `item_seed` (see [`InitObjects::Random`]), with
    /// the energy the data imply. Also used to restart a collapsed start
    /// ([`crate::phasing::population`]) with a seed of its own.
    pub fn random_object(&self, p: usize, item_seed: u64, obj: &mut [Complex32], sup: &[u8]) {
        let l = self.h * self.w;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(item_seed);
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
    /// Poisson log-likelihood history (sum of [`llk_term`] over the measured, not held-out
    /// pixels, divided by their number), N*K*records.
    pub llk: Vec<f32>,
    /// Free log-likelihood history (the same over the held-out pixels; NaN without any),
    /// N*K*records.
    pub free_llk: Vec<f32>,
    /// Final log-likelihood, free log-likelihood and support fraction of each item, N*K.
    pub final_llk: Vec<f32>,
    pub final_free_llk: Vec<f32>,
    pub final_support_fraction: Vec<f32>,
    /// Per item, the shrinkwraps the support guard refused (collapse or blow-up), N*K.
    pub guard_events: Vec<u32>,
    /// Per item, its final shrinkwrap threshold factor (drawn, then retuned), N*K.
    pub threshold_factor: Vec<f32>,
}

impl PhasingOutput {
    /// The final merits of item i.
    pub fn final_merit(&self, i: usize) -> FinalMerit {
        FinalMerit {
            fourier: self.final_fourier_error[i],
            llk: self.final_llk[i],
            free_llk: self.final_free_llk[i],
            support_fraction: self.final_support_fraction[i],
        }
    }
}

/// The normalised likelihoods from their sums: (sum_m / m, sum_f / f), NaN for a count of 0.
pub fn llk_means(sum_m: f64, m: usize, sum_f: f64, f: usize) -> (f32, f32) {
    let mean = |s: f64, c: usize| {
        if c > 0 {
            (s / c as f64) as f32
        } else {
            f32::NAN
        }
    };
    (mean(sum_m, m), mean(sum_f, f))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn m(fourier: f32, llk: f32, free_llk: f32, support_fraction: f32) -> FinalMerit {
        FinalMerit {
            fourier,
            llk,
            free_llk,
            support_fraction,
        }
    }

    #[test]
    fn selection_ranks_filtered_and_nan_last() {
        let sel = Selection {
            criterion: Criterion::Llk,
            min_fraction: 0.01,
            max_fraction: 0.5,
        };
        let ms = [
            m(0.1, 5.0, 1.0, 0.2),
            m(0.2, 1.0, 1.0, 0.9),      // best llk, blown up
            m(0.3, f32::NAN, 1.0, 0.2), // NaN
            m(0.4, 3.0, 1.0, 0.0),      // collapsed
            m(0.5, 4.0, 1.0, 0.3),
        ];
        assert_eq!(sel.best_starts(&ms, 5), vec![4]);
        // every start filtered: the criterion alone decides
        let all_out = [m(0.1, 2.0, 0.0, 0.9), m(0.1, 1.0, 0.0, 0.95)];
        assert_eq!(sel.best_starts(&all_out, 2), vec![1]);
        // ties go to the lower start
        let tie = [m(0.1, 1.0, 0.0, 0.2), m(0.1, 1.0, 0.0, 0.2)];
        assert_eq!(sel.best_starts(&tie, 2), vec![0]);
        assert_eq!("free-llk".parse::<Criterion>().unwrap(), Criterion::FreeLlk);
        assert!("best".parse::<Criterion>().is_err());
    }

    #[test]
    fn llk_term_is_the_poisson_deviance_half() {
        for (ic, a) in [
            (4.0f32, 2.0f32),
            (1e4, 90.0),
            (0.5, 0.0),
            (0.0, 3.0),
            (1e6, 1000.0),
        ] {
            let io = (a as f64).powi(2);
            let icf = (ic as f64).max(LLK_FLOOR as f64);
            let want = if io == 0.0 {
                icf
            } else {
                icf - io - io * (icf / io).ln()
            };
            let got = llk_term(ic, a) as f64;
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1e-3),
                "{ic} {a}: {got} {want}"
            );
            assert!(got >= 0.0);
        }
        assert_eq!(decode_free(encode_free(3.5)), Some(3.5));
        assert_eq!(decode_free(-1.0), None);
        assert_eq!(decode_free(0.0), None);
    }
}

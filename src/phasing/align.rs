//! Alignment of a reconstruction to a reference under the trivial ambiguities of phase
//! retrieval: translation (integer, by FFT cross-correlation), the twin (centrosymmetric
//! flip + complex conjugate) and a global phase. Float64 throughout (not a hot path).
//! The DFT, twin and shift are those of [`crate::eval::align`], which adds sub-pixel
//! registration.

use num_complex::Complex64;

/// The alignment found and the error it leaves.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Alignment {
    /// Shift (dy, dx) applied to the (possibly flipped) candidate, in pixels.
    pub shift: (i64, i64),
    /// Whether the twin (flip + conjugate) of the candidate was used.
    pub twin: bool,
    /// Global phase (radians) multiplied onto the candidate.
    pub phase: f64,
    /// Normalised error ||ref - aligned|| / ||ref||.
    pub error: f64,
}

pub use crate::eval::align::{fft2, twin};

/// Circular shift: `out[y][x] = g[(y - dy) mod h][(x - dx) mod w]`.
pub fn shift(g: &[Complex64], h: usize, w: usize, dy: i64, dx: i64) -> Vec<Complex64> {
    crate::eval::align::roll(g, h, w, dy, dx)
}

/// Align `candidate` to `reference` (both h x w, same storage convention) and return the
/// aligned candidate and the alignment. With `allow_twin` false only translation and phase
/// are searched.
pub fn align(
    reference: &[Complex64],
    candidate: &[Complex64],
    h: usize,
    w: usize,
    allow_twin: bool,
) -> (Vec<Complex64>, Alignment) {
    assert_eq!(reference.len(), h * w);
    assert_eq!(candidate.len(), h * w);
    let ref_norm: f64 = reference.iter().map(|c| c.norm_sqr()).sum();
    let mut fr = reference.to_vec();
    fft2(&mut fr, h, w, false);
    let mut best: Option<(Vec<Complex64>, Alignment)> = None;
    for tw in [false, true] {
        if tw && !allow_twin {
            continue;
        }
        let cand = if tw {
            twin(candidate, h, w)
        } else {
            candidate.to_vec()
        };
        let mut fc = cand.clone();
        fft2(&mut fc, h, w, false);
        // xc(t) = sum_r ref(r) conj(cand(r - t))
        let mut xc: Vec<Complex64> = fr.iter().zip(&fc).map(|(a, b)| a * b.conj()).collect();
        fft2(&mut xc, h, w, true);
        let (imax, _) = xc
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.norm_sqr()))
            .fold((0, -1.0), |acc, x| if x.1 > acc.1 { x } else { acc });
        let dy = super::support::signed(imax / w, h);
        let dx = super::support::signed(imax % w, w);
        let mut shifted = shift(&cand, h, w, dy, dx);
        let dot: Complex64 = reference
            .iter()
            .zip(&shifted)
            .map(|(a, b)| a * b.conj())
            .sum();
        let phase = dot.arg();
        let rot = Complex64::from_polar(1.0, phase);
        shifted.iter_mut().for_each(|c| *c *= rot);
        let error = crate::eval::align::normalised_error(reference, &shifted, ref_norm);
        let al = Alignment {
            shift: (dy, dx),
            twin: tw,
            phase,
            error,
        };
        if best.as_ref().is_none_or(|b| error < b.1.error) {
            best = Some((shifted, al));
        }
    }
    best.expect("at least one candidate")
}

/// Normalised error of `candidate` against `reference` after alignment (translation, twin,
/// global phase). Inputs as complex64 images.
pub fn aligned_error(
    reference: &[num_complex::Complex32],
    candidate: &[num_complex::Complex32],
    h: usize,
    w: usize,
) -> Alignment {
    let r: Vec<Complex64> = reference
        .iter()
        .map(|c| Complex64::new(c.re as f64, c.im as f64))
        .collect();
    let c: Vec<Complex64> = candidate
        .iter()
        .map(|c| Complex64::new(c.re as f64, c.im as f64))
        .collect();
    align(&r, &c, h, w, true).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_shift_twin_and_phase() {
        let (h, w) = (13, 10);
        let mut s = 7u64;
        let mut rnd = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut r = vec![Complex64::new(0.0, 0.0); h * w];
        for y in 2..6 {
            for x in 1..5 {
                r[y * w + x] = Complex64::new(rnd(), rnd() - 0.5);
            }
        }
        for tw in [false, true] {
            let mut c = if tw { twin(&r, h, w) } else { r.clone() };
            c = shift(&c, h, w, 3, -2);
            let ph = Complex64::from_polar(1.0, 1.234);
            c.iter_mut().for_each(|v| *v *= ph);
            let (_, al) = align(&r, &c, h, w, true);
            assert!(al.error < 1e-12, "{al:?}");
            assert_eq!(al.twin, tw);
        }
    }
}

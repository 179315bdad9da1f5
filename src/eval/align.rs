//! Alignment of reconstructions and supports to a reference, under the trivial ambiguities
//! of phase retrieval: translation (integer, or sub-pixel by an upsampled DFT of the
//! cross-power spectrum around its peak, after Guizar-Sicairos, Thurman and Fienup, Opt.
//! Lett. 33, 156 (2008)), the twin (centrosymmetric flip + complex conjugate) and a global
//! phase (optionally a complex scale: phase and amplitude).
//!
//! Float64 throughout; images are row-major `h x w`, any storage origin (the shift absorbs
//! it). Translations are circular.

use num_complex::Complex64;

use crate::array::signed;
use crate::fft::Plan2d;

const ZERO: Complex64 = Complex64::new(0.0, 0.0);

/// Unnormalised 2-D DFT in place (forward: exp(-2 pi i k r / N); inverse: exp(+...)),
/// float64, through the crate's [`Plan2d`].
pub fn fft2(data: &mut [Complex64], h: usize, w: usize, inverse: bool) {
    assert_eq!(data.len(), h * w);
    let plan = Plan2d::<f64>::new(h, w);
    let mut scratch = plan.scratch();
    if inverse {
        plan.inverse_unscaled(data, &mut scratch)
    } else {
        plan.forward(data, &mut scratch)
    }
}

/// ||reference - x|| / ||reference||, given `ref_norm` = ||reference||^2 (infinite for an
/// empty reference).
pub fn normalised_error(reference: &[Complex64], x: &[Complex64], ref_norm: f64) -> f64 {
    if ref_norm <= 0.0 {
        return f64::INFINITY;
    }
    let err2: f64 = reference
        .iter()
        .zip(x)
        .map(|(a, b)| (a - b).norm_sqr())
        .sum();
    (err2 / ref_norm).sqrt()
}

/// Centrosymmetric flip `g(-r)` (indices modulo the size).
pub fn flip<T: Copy>(g: &[T], h: usize, w: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(h * w);
    for y in 0..h {
        for x in 0..w {
            out.push(g[((h - y) % h) * w + (w - x) % w]);
        }
    }
    out
}

/// The twin `conj(g(-r))`.
pub fn twin(g: &[Complex64], h: usize, w: usize) -> Vec<Complex64> {
    flip(g, h, w).into_iter().map(|c| c.conj()).collect()
}

/// Integer circular shift: `out[y][x] = g[(y - dy) mod h][(x - dx) mod w]`.
pub fn roll<T: Copy + Default>(g: &[T], h: usize, w: usize, dy: i64, dx: i64) -> Vec<T> {
    let mut out = vec![T::default(); h * w];
    for y in 0..h {
        let sy = (y as i64 - dy).rem_euclid(h as i64) as usize;
        for x in 0..w {
            let sx = (x as i64 - dx).rem_euclid(w as i64) as usize;
            out[y * w + x] = g[sy * w + sx];
        }
    }
    out
}

/// Sub-pixel circular shift by multiplication of the spectrum with a phase ramp:
/// `out(r) = g(r - t)` for band-limited g. Integer shifts use [`roll`] (exact).
pub fn fourier_shift(g: &[Complex64], h: usize, w: usize, dy: f64, dx: f64) -> Vec<Complex64> {
    if dy.fract() == 0.0 && dx.fract() == 0.0 {
        return roll(g, h, w, dy as i64, dx as i64);
    }
    let mut f = g.to_vec();
    fft2(&mut f, h, w, false);
    shift_spectrum(&mut f, h, w, dy, dx);
    fft2(&mut f, h, w, true);
    let s = 1.0 / (h * w) as f64;
    f.iter_mut().for_each(|c| *c *= s);
    f
}

/// Multiply a spectrum by the ramp of a shift (dy, dx): F(k) exp(-2 pi i k.t / N).
pub fn shift_spectrum(f: &mut [Complex64], h: usize, w: usize, dy: f64, dx: f64) {
    let tau = std::f64::consts::TAU;
    let ex: Vec<Complex64> = (0..w)
        .map(|x| Complex64::from_polar(1.0, -tau * signed(x, w) as f64 * dx / w as f64))
        .collect();
    for y in 0..h {
        let ey = Complex64::from_polar(1.0, -tau * signed(y, h) as f64 * dy / h as f64);
        for x in 0..w {
            f[y * w + x] *= ey * ex[x];
        }
    }
}

/// Translation t (dy, dx) that maximises |sum_r ref(r) conj(cand(r - t))|, from the
/// spectra `fr` and `fc` (forward [`fft2`] of reference and candidate). With `upsample`
/// u > 1 the integer peak is refined to 1/u pixel by evaluating the cross-correlation on a
/// 1.5-pixel neighbourhood with a matrix-multiply DFT (Guizar-Sicairos et al. 2008).
pub fn register(
    fr: &[Complex64],
    fc: &[Complex64],
    h: usize,
    w: usize,
    upsample: usize,
) -> (f64, f64) {
    let x: Vec<Complex64> = fr.iter().zip(fc).map(|(a, b)| a * b.conj()).collect();
    let mut cc = x.clone();
    fft2(&mut cc, h, w, true);
    let imax = argmax_norm(&cc);
    let (py, px) = (signed(imax / w, h) as f64, signed(imax % w, w) as f64);
    if upsample <= 1 {
        return (py, px);
    }
    let u = upsample as f64;
    let m = (1.5 * u).ceil() as usize;
    let off = (m / 2) as f64;
    let ty: Vec<f64> = (0..m).map(|i| py + (i as f64 - off) / u).collect();
    let tx: Vec<f64> = (0..m).map(|j| px + (j as f64 - off) / u).collect();
    let tau = std::f64::consts::TAU;
    // M[i][kx] = sum_ky exp(2 pi i ky ty_i / H) X[ky][kx]
    let mut mm = vec![ZERO; m * w];
    for (ky_i, row) in x.chunks_exact(w).enumerate() {
        let ky = signed(ky_i, h) as f64;
        for (i, &t) in ty.iter().enumerate() {
            let e = Complex64::from_polar(1.0, tau * ky * t / h as f64);
            let dst = &mut mm[i * w..(i + 1) * w];
            for (d, &v) in dst.iter_mut().zip(row) {
                *d += e * v;
            }
        }
    }
    let ex: Vec<Complex64> = (0..m)
        .flat_map(|j| {
            let t = tx[j];
            (0..w).map(move |kx| {
                Complex64::from_polar(1.0, tau * signed(kx, w) as f64 * t / w as f64)
            })
        })
        .collect();
    let mut best = (-1.0, 0usize, 0usize);
    for i in 0..m {
        let row = &mm[i * w..(i + 1) * w];
        for j in 0..m {
            let e = &ex[j * w..(j + 1) * w];
            let v: Complex64 = row.iter().zip(e).map(|(a, b)| a * b).sum();
            let n = v.norm_sqr();
            if n > best.0 {
                best = (n, i, j);
            }
        }
    }
    (ty[best.1], tx[best.2])
}

fn argmax_norm(v: &[Complex64]) -> usize {
    let mut best = (0usize, -1.0f64);
    for (i, c) in v.iter().enumerate() {
        let n = c.norm_sqr();
        if n > best.1 {
            best = (i, n);
        }
    }
    best.0
}

/// What [`align`] searches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlignOptions {
    /// Also try the twin (flip + conjugate).
    pub twin: bool,
    /// Sub-pixel upsampling factor of the translation (1: integer shifts only).
    pub upsample: usize,
    /// Fit a complex scale (phase and amplitude) instead of a phase only.
    pub fit_scale: bool,
}

impl Default for AlignOptions {
    fn default() -> Self {
        AlignOptions {
            twin: true,
            upsample: 1,
            fit_scale: false,
        }
    }
}

/// The alignment found and the error it leaves.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Alignment {
    /// Shift (dy, dx) applied to the (possibly twinned) candidate, pixels.
    pub shift: (f64, f64),
    /// Whether the twin of the candidate was used.
    pub twin: bool,
    /// Global phase (radians) multiplied onto the candidate.
    pub phase: f64,
    /// Amplitude of the scale multiplied onto the candidate (1 without `fit_scale`).
    pub scale: f64,
    /// Normalised error ||ref - aligned|| / ||ref||.
    pub error: f64,
}

/// Align `candidate` to `reference` (translation, optionally twin, global phase or complex
/// scale). Returns the aligned candidate and the alignment. The twin is kept only when it
/// gives a strictly lower error.
pub fn align(
    reference: &[Complex64],
    candidate: &[Complex64],
    h: usize,
    w: usize,
    opts: AlignOptions,
) -> (Vec<Complex64>, Alignment) {
    assert_eq!(reference.len(), h * w);
    assert_eq!(candidate.len(), h * w);
    let ref_norm: f64 = reference.iter().map(|c| c.norm_sqr()).sum();
    let mut fr = reference.to_vec();
    fft2(&mut fr, h, w, false);
    let mut fc0 = candidate.to_vec();
    fft2(&mut fc0, h, w, false);
    let mut best: Option<(Vec<Complex64>, Alignment)> = None;
    for tw in [false, true] {
        if tw && !opts.twin {
            continue;
        }
        // spectrum of the twin is conj(F)
        let fc: Vec<Complex64> = if tw {
            fc0.iter().map(|c| c.conj()).collect()
        } else {
            fc0.clone()
        };
        let (dy, dx) = register(&fr, &fc, h, w, opts.upsample);
        let mut shifted = if dy.fract() == 0.0 && dx.fract() == 0.0 {
            let base = if tw {
                twin(candidate, h, w)
            } else {
                candidate.to_vec()
            };
            roll(&base, h, w, dy as i64, dx as i64)
        } else {
            let mut f = fc.clone();
            shift_spectrum(&mut f, h, w, dy, dx);
            fft2(&mut f, h, w, true);
            let s = 1.0 / (h * w) as f64;
            f.iter_mut().for_each(|c| *c *= s);
            f
        };
        // c = <x, ref> / <x, x> (scale) or its phase only
        let dot: Complex64 = shifted
            .iter()
            .zip(reference)
            .map(|(x, r)| x.conj() * r)
            .sum();
        let xx: f64 = shifted.iter().map(|c| c.norm_sqr()).sum();
        let c = if opts.fit_scale && xx > 0.0 {
            dot / xx
        } else {
            Complex64::from_polar(1.0, dot.arg())
        };
        shifted.iter_mut().for_each(|v| *v *= c);
        let error = normalised_error(reference, &shifted, ref_norm);
        let al = Alignment {
            shift: (dy, dx),
            twin: tw,
            phase: c.arg(),
            scale: c.norm(),
            error,
        };
        if best.as_ref().is_none_or(|b| error < b.1.error) {
            best = Some((shifted, al));
        }
    }
    best.expect("at least one candidate")
}

/// Normalised error of `candidate` against `reference` (complex64 images) after alignment
/// by integer translation, the twin and a global phase ([`align`] with the default
/// [`AlignOptions`]).
pub fn aligned_error(
    reference: &[num_complex::Complex32],
    candidate: &[num_complex::Complex32],
    h: usize,
    w: usize,
) -> Alignment {
    align(
        &to_c64(reference),
        &to_c64(candidate),
        h,
        w,
        AlignOptions::default(),
    )
    .1
}

/// Complex64 copy of a complex32 image.
pub fn to_c64(v: &[num_complex::Complex32]) -> Vec<Complex64> {
    v.iter()
        .map(|c| Complex64::new(c.re as f64, c.im as f64))
        .collect()
}

/// Complex64 copy of a real image.
pub fn real_to_c64(v: &[f32]) -> Vec<Complex64> {
    v.iter().map(|&r| Complex64::new(r as f64, 0.0)).collect()
}

/// How a support was aligned to a reference support.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SupportAlignment {
    /// Integer shift (dy, dx) applied to the (possibly flipped) candidate.
    pub shift: (i64, i64),
    /// Whether the centrosymmetric flip of the candidate was used.
    pub twin: bool,
    /// Pixels in both after alignment.
    pub overlap: usize,
}

/// Align a binary support to a reference support by integer translation and, when
/// `allow_twin`, the centrosymmetric flip: the alignment of largest overlap, which is also
/// the one of smallest symmetric difference (|A xor B| = |A| + |B| - 2 |A and B|). Ties
/// keep the candidate unflipped.
pub fn align_support(
    reference: &[u8],
    candidate: &[u8],
    h: usize,
    w: usize,
    allow_twin: bool,
) -> (Vec<u8>, SupportAlignment) {
    assert_eq!(reference.len(), h * w);
    assert_eq!(candidate.len(), h * w);
    let as_c = |s: &[u8]| -> Vec<Complex64> {
        s.iter()
            .map(|&v| Complex64::new((v != 0) as u8 as f64, 0.0))
            .collect()
    };
    let mut fr = as_c(reference);
    fft2(&mut fr, h, w, false);
    let mut best: Option<(Vec<u8>, SupportAlignment)> = None;
    for tw in [false, true] {
        if tw && !allow_twin {
            continue;
        }
        let cand: Vec<u8> = if tw {
            flip(candidate, h, w)
        } else {
            candidate.to_vec()
        };
        let mut fc = as_c(&cand);
        fft2(&mut fc, h, w, false);
        let mut cc: Vec<Complex64> = fr.iter().zip(&fc).map(|(a, b)| a * b.conj()).collect();
        fft2(&mut cc, h, w, true);
        // the real part is the overlap count times H*W; take the largest
        let mut imax = 0;
        for (i, c) in cc.iter().enumerate() {
            if c.re > cc[imax].re + 1e-6 * (h * w) as f64 {
                imax = i;
            }
        }
        let (dy, dx) = (signed(imax / w, h), signed(imax % w, w));
        let shifted = roll(&cand, h, w, dy, dx);
        let overlap = shifted
            .iter()
            .zip(reference)
            .filter(|(&a, &b)| a != 0 && b != 0)
            .count();
        let al = SupportAlignment {
            shift: (dy, dx),
            twin: tw,
            overlap,
        };
        if best.as_ref().is_none_or(|b| overlap > b.1.overlap) {
            best = Some((shifted, al));
        }
    }
    best.expect("at least one candidate")
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
            c = roll(&c, h, w, 3, -2);
            let ph = Complex64::from_polar(1.0, 1.234);
            c.iter_mut().for_each(|v| *v *= ph);
            let (_, al) = align(&r, &c, h, w, AlignOptions::default());
            assert!(al.error < 1e-12, "{al:?}");
            assert_eq!(al.twin, tw);
        }
    }
}

//! Element-wise phasing kernels of the CPU backend. Each is written once as an
//! `#[inline(always)]` body and compiled twice: generic, and with AVX2+FMA enabled
//! (selected at run time), so a portable binary still vectorises on modern CPUs.

use crate::array::Complex32;
use crate::phasing::program::Constraint;
use crate::phasing::schedule::Algorithm;

/// Smallest modulus divided by in the modulus projection (guards |F| = 0).
pub const TINY: f32 = 1e-30;

/// The support-update rule `g' inside, a*g + b*g' outside` as (a, b):
/// ER (0, 0); HIO (1, -beta); RAAR (beta, 1 - 2 beta).
pub fn coefficients(alg: Algorithm, beta: f32) -> (f32, f32) {
    match alg {
        Algorithm::ER => (0.0, 0.0),
        Algorithm::HIO => (1.0, -beta),
        Algorithm::RAAR => (beta, 1.0 - 2.0 * beta),
    }
}

fn as_f32(x: &[Complex32]) -> &[f32] {
    // SAFETY: Complex<f32> is #[repr(C)] { re: f32, im: f32 }.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len() * 2) }
}

fn as_f32_mut(x: &mut [Complex32]) -> &mut [f32] {
    // SAFETY: Complex<f32> is #[repr(C)] { re: f32, im: f32 }.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut f32, x.len() * 2) }
}

macro_rules! dispatch {
    ($body:ident, $avx:ident, ($($arg:ident : $ty:ty),*) -> $ret:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx($($arg: $ty),*) -> $ret {
            $body($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the features were detected at run time.
                return unsafe { $avx($($arg),*) };
            }
        }
        return $body($($arg),*);
    };
}

/// Modulus projection in place: measured pixels (a >= 0) get modulus `a`, phase kept;
/// unmeasured pixels (a < 0) keep their value; everything is multiplied by `scale`
/// (the inverse FFT's 1/(HW)). Returns sum over measured pixels of (|F| - a)^2.
pub fn modulus_project(f: &mut [Complex32], a: &[f32], scale: f32) -> f32 {
    assert_eq!(f.len(), a.len());
    let f = as_f32_mut(f);
    dispatch!(modulus_body, modulus_avx2, (f: &mut [f32], a: &[f32], scale: f32) -> f32);
}

#[inline(always)]
fn modulus_body(f: &mut [f32], a: &[f32], scale: f32) -> f32 {
    let mut err = 0.0f32;
    for (x, &amp) in f.chunks_exact_mut(2).zip(a) {
        let (re, im) = (x[0], x[1]);
        let m = (re * re + im * im).sqrt();
        let meas = amp >= 0.0;
        let d = if meas { m - amp } else { 0.0 };
        err += d * d;
        let r = if meas { amp / m.max(TINY) } else { 1.0 } * scale;
        x[0] = re * r;
        x[1] = im * r;
    }
    err
}

/// Sum over measured pixels of (|F| - a)^2, without modifying F.
pub fn fourier_residual(f: &[Complex32], a: &[f32]) -> f32 {
    assert_eq!(f.len(), a.len());
    let f = as_f32(f);
    dispatch!(residual_body, residual_avx2, (f: &[f32], a: &[f32]) -> f32);
}

#[inline(always)]
fn residual_body(f: &[f32], a: &[f32]) -> f32 {
    let mut err = 0.0f32;
    for (x, &amp) in f.chunks_exact(2).zip(a) {
        let m = (x[0] * x[0] + x[1] * x[1]).sqrt();
        let d = if amp >= 0.0 { m - amp } else { 0.0 };
        err += d * d;
    }
    err
}

/// Support update in place: `g <- p` where the constraint holds (inside the support, and
/// for `Real` only the real part, for `Positive` only a non-negative real part), else
/// `g <- a*g + b*p` component-wise. Returns (sum |p|^2 outside the support, sum |p|^2).
pub fn support_update(
    g: &mut [Complex32],
    p: &[Complex32],
    s: &[u8],
    a: f32,
    b: f32,
    constraint: Constraint,
) -> (f32, f32) {
    assert!(g.len() == p.len() && g.len() == s.len());
    let g = as_f32_mut(g);
    let p = as_f32(p);
    match constraint {
        Constraint::None => {
            dispatch!(update_none, update_none_avx2, (g: &mut [f32], p: &[f32], s: &[u8], a: f32, b: f32) -> (f32, f32));
        }
        Constraint::Real => {
            dispatch!(update_real, update_real_avx2, (g: &mut [f32], p: &[f32], s: &[u8], a: f32, b: f32) -> (f32, f32));
        }
        Constraint::Positive => {
            dispatch!(update_pos, update_pos_avx2, (g: &mut [f32], p: &[f32], s: &[u8], a: f32, b: f32) -> (f32, f32));
        }
    }
}

#[inline(always)]
fn update_generic<const C: u8>(g: &mut [f32], p: &[f32], s: &[u8], a: f32, b: f32) -> (f32, f32) {
    let mut out = 0.0f32;
    let mut tot = 0.0f32;
    for ((x, y), &m) in g.chunks_exact_mut(2).zip(p.chunks_exact(2)).zip(s) {
        let (pr, pi) = (y[0], y[1]);
        let e = pr * pr + pi * pi;
        let inside = m != 0;
        tot += e;
        out += if inside { 0.0 } else { e };
        let (mre, mim) = match C {
            0 => (inside, inside),
            1 => (inside, false),
            _ => (inside && pr >= 0.0, false),
        };
        let gr = a * x[0] + b * pr;
        let gi = a * x[1] + b * pi;
        x[0] = if mre { pr } else { gr };
        x[1] = if mim { pi } else { gi };
    }
    (out, tot)
}

#[inline(always)]
fn update_none(g: &mut [f32], p: &[f32], s: &[u8], a: f32, b: f32) -> (f32, f32) {
    update_generic::<0>(g, p, s, a, b)
}
#[inline(always)]
fn update_real(g: &mut [f32], p: &[f32], s: &[u8], a: f32, b: f32) -> (f32, f32) {
    update_generic::<1>(g, p, s, a, b)
}
#[inline(always)]
fn update_pos(g: &mut [f32], p: &[f32], s: &[u8], a: f32, b: f32) -> (f32, f32) {
    update_generic::<2>(g, p, s, a, b)
}

/// Normalised 1-D Gaussian kernel of standard deviation `sigma` px, radius ceil(4 sigma).
pub fn gaussian_kernel(sigma: f32, out: &mut Vec<f32>) {
    out.clear();
    if sigma <= 0.0 {
        out.push(1.0);
        return;
    }
    let r = (4.0 * sigma).ceil() as i64;
    let mut sum = 0.0f64;
    for i in -r..=r {
        let v = (-(i as f64).powi(2) / (2.0 * (sigma as f64).powi(2))).exp();
        out.push(v as f32);
        sum += v;
    }
    out.iter_mut().for_each(|v| *v = (*v as f64 / sum) as f32);
}

/// Periodic blur of the rows of an h x w image: `out[y][x] = sum_j k[j] inp[y][(x+j-r) mod w]`.
pub fn blur_rows(inp: &[f32], h: usize, w: usize, kernel: &[f32], out: &mut [f32]) {
    let r = (kernel.len() / 2) as isize;
    for y in 0..h {
        let src = &inp[y * w..(y + 1) * w];
        let dst = &mut out[y * w..(y + 1) * w];
        for (x, d) in dst.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            for (j, &kv) in kernel.iter().enumerate() {
                let xx = (x as isize + j as isize - r).rem_euclid(w as isize) as usize;
                acc += kv * src[xx];
            }
            *d = acc;
        }
    }
}

/// Periodic blur of the columns, as whole-row multiply-adds (cache friendly).
pub fn blur_cols(inp: &[f32], h: usize, w: usize, kernel: &[f32], out: &mut [f32]) {
    let r = (kernel.len() / 2) as isize;
    for y in 0..h {
        let dst = &mut out[y * w..(y + 1) * w];
        dst.iter_mut().for_each(|v| *v = 0.0);
        for (j, &kv) in kernel.iter().enumerate() {
            let yy = (y as isize + j as isize - r).rem_euclid(h as isize) as usize;
            let src = &inp[yy * w..(yy + 1) * w];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d += kv * s;
            }
        }
    }
}

/// Shrinkwrap: support = { blur(|g|, sigma) >= threshold * max }, periodic blur (the object
/// wraps around the corners in FFT-native order). The support is left unchanged if the
/// object is zero or not finite.
#[allow(clippy::too_many_arguments)]
pub fn shrinkwrap(
    g: &[Complex32],
    s: &mut [u8],
    h: usize,
    w: usize,
    sigma: f32,
    threshold: f32,
    mag: &mut [f32],
    tmp: &mut [f32],
    kernel: &mut Vec<f32>,
) {
    for (m, c) in mag.iter_mut().zip(g) {
        *m = c.norm();
    }
    gaussian_kernel(sigma, kernel);
    blur_rows(mag, h, w, kernel, tmp);
    blur_cols(tmp, h, w, kernel, mag);
    let max = mag.iter().copied().fold(0.0f32, f32::max);
    if !(max > 0.0 && max.is_finite()) {
        return;
    }
    let t = threshold * max;
    for (sv, &m) in s.iter_mut().zip(mag.iter()) {
        *sv = (m >= t) as u8;
    }
}

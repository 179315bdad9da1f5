//! Element-wise phasing kernels of the CPU backend: a portable version of each, and an
//! explicit AVX2+FMA version (selected at run time, so a portable binary still uses the
//! vector units). LLVM does not vectorise these loops by itself: the data are interleaved
//! complex values and the error sums are float reductions. Both versions are tested
//! against each other and against float64 references.

use crate::array::Complex32;
use crate::phasing::problem::{decode_free, llk_term, masked_weight};
use crate::phasing::program::{Constraint, SupportGuard, ThresholdRef};

/// Smallest modulus divided by in the modulus projection (guards |F| = 0).
pub const TINY: f32 = 1e-30;

fn as_f32(x: &[Complex32]) -> &[f32] {
    // SAFETY: Complex<f32> is #[repr(C)] { re: f32, im: f32 }.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len() * 2) }
}

fn as_f32_mut(x: &mut [Complex32]) -> &mut [f32] {
    // SAFETY: Complex<f32> is #[repr(C)] { re: f32, im: f32 }.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut f32, x.len() * 2) }
}

/// Modulus projection in place: measured pixels (a >= 0) get modulus `a`, phase kept;
/// unmeasured pixels (a < 0) keep their value, times [`masked_weight`] (below 1 only for
/// masked pixels damped by `--missing-centre`); everything is multiplied by `scale`
/// (the inverse FFT's 1/(HW)). Returns (sum over measured pixels of (|F| - a)^2, sum of
/// |output|^2).
pub fn modulus_project(f: &mut [Complex32], a: &[f32], scale: f32) -> (f32, f32) {
    assert_eq!(f.len(), a.len());
    let f = as_f32_mut(f);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA were detected at run time.
        return unsafe { avx2::modulus(f, a, scale) };
    }
    modulus_body(f, a, scale)
}

/// The portable (scalar or compiler-vectorised) modulus projection, used where AVX2 is
/// missing and for the tail of the AVX2 loop.
pub fn modulus_project_portable(f: &mut [Complex32], a: &[f32], scale: f32) -> (f32, f32) {
    assert_eq!(f.len(), a.len());
    modulus_body(as_f32_mut(f), a, scale)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Lanes of the element-wise kernels: the loops work on blocks of `LANES` complex values
/// with per-lane accumulators, which lets LLVM vectorise them (a scalar float reduction
/// would not be reassociated and would keep the loop scalar).
const LANES: usize = 8;

#[inline(always)]
fn modulus_lane(re: f32, im: f32, amp: f32, scale: f32) -> (f32, f32, f32) {
    let m = (re * re + im * im).sqrt();
    let meas = amp >= 0.0;
    let d = if meas { m - amp } else { 0.0 };
    let r = if meas {
        amp / m.max(TINY)
    } else {
        masked_weight(amp)
    } * scale;
    (re * r, im * r, d * d)
}

#[inline(always)]
fn modulus_body(f: &mut [f32], a: &[f32], scale: f32) -> (f32, f32) {
    let mut err = 0.0f32;
    let mut energy = 0.0f32;
    for (x, &am) in f.chunks_exact_mut(2).zip(a) {
        let (r, i, e) = modulus_lane(x[0], x[1], am, scale);
        x[0] = r;
        x[1] = i;
        err += e;
        energy += r * r + i * i;
    }
    (err, energy)
}

/// Sum over measured pixels of (|F| - a)^2, without modifying F.
pub fn fourier_residual(f: &[Complex32], a: &[f32]) -> f32 {
    assert_eq!(f.len(), a.len());
    let f = as_f32(f);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA were detected at run time.
        return unsafe { avx2::residual(f, a) };
    }
    residual_body(f, a)
}

#[inline(always)]
fn residual_body(f: &[f32], a: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (fc, frem) = f.as_chunks::<{ 2 * LANES }>();
    let (ac, arem) = a.as_chunks::<LANES>();
    for (x, am) in fc.iter().zip(ac) {
        for j in 0..LANES {
            let (_, _, e) = modulus_lane(x[2 * j], x[2 * j + 1], am[j], 1.0);
            acc[j] += e;
        }
    }
    let mut err = 0.0f32;
    for (x, &am) in frem.chunks_exact(2).zip(arem) {
        err += modulus_lane(x[0], x[1], am, 1.0).2;
    }
    err + acc.iter().sum::<f32>()
}

/// Sums of the Poisson log-likelihood terms ([`llk_term`]) of F over the measured pixels
/// (a >= 0) and over the held-out pixels (a <= -2, amplitude `-a - 2`), in f32 per pixel as
/// the GPU kernel computes them, accumulated in f64. Only run on recording iterations, so it
/// is written plainly.
pub fn poisson_llk(f: &[Complex32], a: &[f32]) -> (f64, f64) {
    assert_eq!(f.len(), a.len());
    let (mut m, mut fr) = (0.0f64, 0.0f64);
    for (c, &am) in f.iter().zip(a) {
        if am >= 0.0 {
            m += llk_term(c.norm_sqr(), am) as f64;
        } else if let Some(af) = decode_free(am) {
            fr += llk_term(c.norm_sqr(), af) as f64;
        }
    }
    (m, fr)
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
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA were detected at run time.
        return unsafe {
            match constraint {
                Constraint::None => avx2::update::<0>(g, p, s, a, b),
                Constraint::Real => avx2::update::<1>(g, p, s, a, b),
                Constraint::Positive => avx2::update::<2>(g, p, s, a, b),
            }
        };
    }
    update_portable(g, p, s, a, b, constraint)
}

/// The portable support update (see [`support_update`]).
pub fn support_update_portable(
    g: &mut [Complex32],
    p: &[Complex32],
    s: &[u8],
    a: f32,
    b: f32,
    constraint: Constraint,
) -> (f32, f32) {
    assert!(g.len() == p.len() && g.len() == s.len());
    update_portable(as_f32_mut(g), as_f32(p), s, a, b, constraint)
}

fn update_portable(
    g: &mut [f32],
    p: &[f32],
    s: &[u8],
    a: f32,
    b: f32,
    constraint: Constraint,
) -> (f32, f32) {
    match constraint {
        Constraint::None => update_generic::<0>(g, p, s, a, b),
        Constraint::Real => update_generic::<1>(g, p, s, a, b),
        Constraint::Positive => update_generic::<2>(g, p, s, a, b),
    }
}

/// One element of the support update: returns (new re, new im, |p|^2 outside, |p|^2).
#[inline(always)]
fn update_lane<const C: u8>(
    gr: f32,
    gi: f32,
    pr: f32,
    pi: f32,
    m: u8,
    a: f32,
    b: f32,
) -> (f32, f32, f32, f32) {
    let e = pr * pr + pi * pi;
    let inside = m != 0;
    let out = if inside { 0.0 } else { e };
    let (mre, mim) = match C {
        0 => (inside, inside),
        1 => (inside, false),
        _ => (inside && pr >= 0.0, false),
    };
    let nr = if mre { pr } else { a * gr + b * pr };
    let ni = if mim { pi } else { a * gi + b * pi };
    (nr, ni, out, e)
}

#[inline(always)]
fn update_generic<const C: u8>(g: &mut [f32], p: &[f32], s: &[u8], a: f32, b: f32) -> (f32, f32) {
    let mut acc_o = [0.0f32; LANES];
    let mut acc_t = [0.0f32; LANES];
    let (gc, grem) = g.as_chunks_mut::<{ 2 * LANES }>();
    let (pc, prem) = p.as_chunks::<{ 2 * LANES }>();
    let (sc, srem) = s.as_chunks::<LANES>();
    for ((x, y), m) in gc.iter_mut().zip(pc).zip(sc) {
        for j in 0..LANES {
            let (nr, ni, o, e) =
                update_lane::<C>(x[2 * j], x[2 * j + 1], y[2 * j], y[2 * j + 1], m[j], a, b);
            x[2 * j] = nr;
            x[2 * j + 1] = ni;
            acc_o[j] += o;
            acc_t[j] += e;
        }
    }
    let (mut out, mut tot) = (0.0f32, 0.0f32);
    for ((x, y), &m) in grem.chunks_exact_mut(2).zip(prem.chunks_exact(2)).zip(srem) {
        let (nr, ni, o, e) = update_lane::<C>(x[0], x[1], y[0], y[1], m, a, b);
        x[0] = nr;
        x[1] = ni;
        out += o;
        tot += e;
    }
    (
        out + acc_o.iter().sum::<f32>(),
        tot + acc_t.iter().sum::<f32>(),
    )
}

/// For a gathered block (columns of length `h`): `col = ca*old + cb*col` element-wise
/// along each column, with per-row coefficients given twice (for re and im): `ca`, `cb` of
/// length 2h. Without `keep_old`, `col = cb*col`. Plain f32 loops that LLVM vectorises.
pub fn combine_rows(
    col: &mut [Complex32],
    old: &[Complex32],
    ca: &[f32],
    cb: &[f32],
    h: usize,
    keep_old: bool,
) {
    let ca = &ca[..2 * h];
    let cb = &cb[..2 * h];
    for (cc, oc) in col.chunks_exact_mut(h).zip(old.chunks_exact(h)) {
        let x = as_f32_mut(cc);
        let y = as_f32(oc);
        if keep_old {
            for (((x, &y), &a), &b) in x.iter_mut().zip(y).zip(ca).zip(cb) {
                *x = a * y + b * *x;
            }
        } else {
            for (x, &b) in x.iter_mut().zip(cb) {
                *x *= b;
            }
        }
    }
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

/// What a shrinkwrap did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwOutcome {
    Applied,
    /// The object is zero or not finite (or its support empty for mean/rms): unchanged.
    Skipped,
    /// The new support would have been below the guard's minimum fraction: unchanged.
    Collapsed,
    /// ... above its maximum: unchanged.
    BlewUp,
}

/// Shrinkwrap: support = { blur(|g|, sigma) >= threshold * reference }, periodic blur (the
/// object wraps around the corners in FFT-native order); the reference is the maximum of
/// the blurred modulus, or its mean or rms over the current support. The support is left
/// unchanged if the object is zero or not finite, and, with a guard, when the new support's
/// fraction of the field is outside [min, max].
#[allow(clippy::too_many_arguments)]
pub fn shrinkwrap(
    g: &[Complex32],
    s: &mut [u8],
    h: usize,
    w: usize,
    sigma: f32,
    threshold: f32,
    reference: ThresholdRef,
    guard: Option<SupportGuard>,
    mag: &mut [f32],
    tmp: &mut [f32],
    kernel: &mut Vec<f32>,
) -> SwOutcome {
    for (m, c) in mag.iter_mut().zip(g) {
        *m = c.norm();
    }
    gaussian_kernel(sigma, kernel);
    blur_rows(mag, h, w, kernel, tmp);
    blur_cols(tmp, h, w, kernel, mag);
    let max = mag.iter().copied().fold(0.0f32, f32::max);
    if !(max > 0.0 && max.is_finite()) {
        return SwOutcome::Skipped;
    }
    let r = match reference {
        ThresholdRef::Max => max,
        ThresholdRef::Mean | ThresholdRef::Rms => {
            let (mut sum, mut sq, mut n) = (0.0f64, 0.0f64, 0usize);
            for (&m, &sv) in mag.iter().zip(s.iter()) {
                if sv != 0 {
                    sum += m as f64;
                    sq += (m as f64) * (m as f64);
                    n += 1;
                }
            }
            if n == 0 {
                return SwOutcome::Skipped;
            }
            let v = if reference == ThresholdRef::Mean {
                sum / n as f64
            } else {
                (sq / n as f64).sqrt()
            };
            v as f32
        }
    };
    let t = threshold * r;
    if let Some(gd) = guard {
        let count = mag.iter().filter(|&&m| m >= t).count();
        let frac = count as f32 / mag.len() as f32;
        if frac < gd.min {
            return SwOutcome::Collapsed;
        }
        if frac > gd.max {
            return SwOutcome::BlewUp;
        }
    }
    for (sv, &m) in s.iter_mut().zip(mag.iter()) {
        *sv = (m >= t) as u8;
    }
    SwOutcome::Applied
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2 kernels on interleaved complex64: one `__m256` holds 4 complex values
    //! (re0 im0 re1 im1 ...). |z|^2 is formed in both slots of each pair by adding the
    //! pair-swapped square, so no de-interleaving is needed; per-pair quantities are thus
    //! counted twice in the accumulators and halved at the end.
    use super::{modulus_body, residual_body, update_generic};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX (every caller is compiled for AVX2).
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            let lo = _mm256_castps256_ps128(v);
            let hi = _mm256_extractf128_ps(v, 1);
            let s = _mm_add_ps(lo, hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    /// [a0 a0 a1 a1 a2 a2 a3 a3] from 4 amplitudes.
    ///
    /// # Safety
    /// The CPU has AVX; `p` points at 4 readable floats.
    #[inline(always)]
    unsafe fn dup_pairs(p: *const f32) -> __m256 {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            let a = _mm_loadu_ps(p);
            _mm256_set_m128(_mm_unpackhi_ps(a, a), _mm_unpacklo_ps(a, a))
        }
    }

    /// |z| in both slots of each pair.
    ///
    /// # Safety
    /// The CPU has AVX.
    #[inline(always)]
    unsafe fn modulus_pairs(v: __m256) -> __m256 {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            let sq = _mm256_mul_ps(v, v);
            _mm256_sqrt_ps(_mm256_add_ps(sq, _mm256_permute_ps(sq, 0xB1)))
        }
    }

    /// 8 complex values per step: |z|^2 of two registers packed into one by `hadd`, one
    /// reciprocal square root (+ one Newton step, ~1e-7 relative) for all 8, and the ratios
    /// unpacked back onto the interleaved layout.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `f` holds at least `2 * a.len()` values (the slices
    /// are indexed only within those lengths).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn modulus(f: &mut [f32], a: &[f32], scale: f32) -> (f32, f32) {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            let n = a.len();
            let body = n / 8 * 8;
            let zero = _mm256_setzero_ps();
            let one = _mm256_set1_ps(1.0);
            let half = _mm256_set1_ps(0.5);
            let three_halves = _mm256_set1_ps(1.5);
            let four = _mm256_set1_ps(4.0);
            let five = _mm256_set1_ps(5.0);
            let free_edge = _mm256_set1_ps(-1.5);
            let tiny = _mm256_set1_ps(f32::MIN_POSITIVE);
            let sc = _mm256_set1_ps(scale);
            let sc2 = _mm256_set1_ps(scale * scale);
            // order of the 8 amplitudes as `hadd` leaves the moduli: 0 1 4 5 | 2 3 6 7
            let perm = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
            let mut acc = zero;
            let mut acc_en = zero;
            let fp = f.as_mut_ptr();
            let ap = a.as_ptr();
            let mut i = 0;
            while i < body {
                let v0 = _mm256_loadu_ps(fp.add(2 * i));
                let v1 = _mm256_loadu_ps(fp.add(2 * i + 8));
                let sq = _mm256_hadd_ps(_mm256_mul_ps(v0, v0), _mm256_mul_ps(v1, v1));
                let amp = _mm256_permutevar8x32_ps(_mm256_loadu_ps(ap.add(i)), perm);
                let x = _mm256_max_ps(sq, tiny);
                let y = _mm256_rsqrt_ps(x);
                // Newton: y <- y (1.5 - 0.5 x y^2)
                let y = _mm256_mul_ps(
                    y,
                    _mm256_fnmadd_ps(_mm256_mul_ps(half, x), _mm256_mul_ps(y, y), three_halves),
                );
                let m = _mm256_mul_ps(sq, y);
                let meas = _mm256_cmp_ps(amp, zero, _CMP_GE_OQ);
                let d = _mm256_and_ps(_mm256_sub_ps(m, amp), meas);
                acc = _mm256_fmadd_ps(d, d, acc);
                // unmeasured: masked_weight(amp) = clamp(5 + 4 amp, 0, 1) above -1.5, else 1
                let wm = _mm256_min_ps(_mm256_max_ps(_mm256_fmadd_ps(four, amp, five), zero), one);
                let wm = _mm256_blendv_ps(wm, one, _mm256_cmp_ps(amp, free_edge, _CMP_LE_OQ));
                let ratio = _mm256_blendv_ps(wm, _mm256_mul_ps(amp, y), meas);
                // |output|^2 = (ratio * scale)^2 |z|^2
                acc_en =
                    _mm256_fmadd_ps(_mm256_mul_ps(ratio, ratio), _mm256_mul_ps(sq, sc2), acc_en);
                let r = _mm256_mul_ps(ratio, sc);
                _mm256_storeu_ps(fp.add(2 * i), _mm256_mul_ps(v0, _mm256_unpacklo_ps(r, r)));
                _mm256_storeu_ps(
                    fp.add(2 * i + 8),
                    _mm256_mul_ps(v1, _mm256_unpackhi_ps(r, r)),
                );
                i += 8;
            }
            let (e, en) = modulus_body(&mut f[2 * body..], &a[body..], scale);
            (hsum(acc) + e, hsum(acc_en) + en)
        }
    }

    /// # Safety
    /// The CPU has AVX2 and FMA; `f` holds at least `2 * a.len()` values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn residual(f: &[f32], a: &[f32]) -> f32 {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            let n = a.len();
            let body = n / 4 * 4;
            let zero = _mm256_setzero_ps();
            let mut acc = zero;
            let mut i = 0;
            while i < body {
                let v = _mm256_loadu_ps(f.as_ptr().add(2 * i));
                let amp = dup_pairs(a.as_ptr().add(i));
                let m = modulus_pairs(v);
                let meas = _mm256_cmp_ps(amp, zero, _CMP_GE_OQ);
                let d = _mm256_and_ps(_mm256_sub_ps(m, amp), meas);
                acc = _mm256_fmadd_ps(d, d, acc);
                i += 4;
            }
            0.5 * hsum(acc) + residual_body(&f[2 * body..], &a[body..])
        }
    }

    /// C: 0 none, 1 real, 2 positive (see `update_generic`).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `g` and `p` hold at least `2 * s.len()` values each.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn update<const C: u8>(
        g: &mut [f32],
        p: &[f32],
        s: &[u8],
        a: f32,
        b: f32,
    ) -> (f32, f32) {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            let n = s.len();
            let body = n / 4 * 4;
            let zero = _mm256_setzero_ps();
            let va = _mm256_set1_ps(a);
            let vb = _mm256_set1_ps(b);
            // lanes holding real parts
            let even = _mm256_castsi256_ps(_mm256_setr_epi32(-1, 0, -1, 0, -1, 0, -1, 0));
            let dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1, -1, -1, -1, -1, -1);
            let mut acc_out = zero;
            let mut acc_tot = zero;
            let gp = g.as_mut_ptr();
            let pp = p.as_ptr();
            let sp = s.as_ptr();
            let mut i = 0;
            while i < body {
                let vg = _mm256_loadu_ps(gp.add(2 * i));
                let vp = _mm256_loadu_ps(pp.add(2 * i));
                let bytes = _mm_cvtsi32_si128((sp.add(i) as *const i32).read_unaligned());
                let lanes = _mm256_cvtepu8_epi32(_mm_shuffle_epi8(bytes, dup));
                let inside = _mm256_castsi256_ps(_mm256_cmpgt_epi32(lanes, _mm256_setzero_si256()));
                let sq = _mm256_mul_ps(vp, vp);
                let e = _mm256_add_ps(sq, _mm256_permute_ps(sq, 0xB1));
                acc_tot = _mm256_add_ps(acc_tot, e);
                acc_out = _mm256_add_ps(acc_out, _mm256_andnot_ps(inside, e));
                let keep = match C {
                    0 => inside,
                    1 => _mm256_and_ps(inside, even),
                    _ => _mm256_and_ps(
                        _mm256_and_ps(inside, even),
                        _mm256_cmp_ps(vp, zero, _CMP_GE_OQ),
                    ),
                };
                let other = _mm256_fmadd_ps(va, vg, _mm256_mul_ps(vb, vp));
                _mm256_storeu_ps(gp.add(2 * i), _mm256_blendv_ps(other, vp, keep));
                i += 4;
            }
            let (o, t) = update_generic::<C>(&mut g[2 * body..], &p[2 * body..], &s[body..], a, b);
            (0.5 * hsum(acc_out) + o, 0.5 * hsum(acc_tot) + t)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> (Vec<Complex32>, Vec<f32>, Vec<u8>) {
        let mut x = seed;
        let mut r = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let f = (0..n).map(|_| Complex32::new(r(), r())).collect();
        let a = (0..n)
            .map(|_| if r() < -0.3 { -1.0 } else { r() + 0.5 })
            .collect();
        let s = (0..n).map(|_| (r() > 0.0) as u8).collect();
        (f, a, s)
    }

    /// The dispatched (AVX2 where present) kernels agree with the portable ones at every
    /// length (vector body + tail) and every constraint.
    #[test]
    fn simd_and_portable_kernels_agree() {
        for n in [1usize, 3, 4, 7, 8, 13, 16, 17, 64, 129] {
            let (f, a, s) = data(n, n as u64 + 11);
            let mut f1 = f.clone();
            let mut f2 = f.clone();
            let (e1, n1) = modulus_project(&mut f1, &a, 0.25);
            let (e2, n2) = modulus_project_portable(&mut f2, &a, 0.25);
            assert!((e1 - e2).abs() <= 1e-5 * e2.max(1.0), "n={n}: {e1} vs {e2}");
            assert!((n1 - n2).abs() <= 1e-5 * n2.max(1.0), "n={n}: {n1} vs {n2}");
            let direct: f32 = f2.iter().map(|c| c.norm_sqr()).sum();
            assert!((n2 - direct).abs() <= 1e-5 * direct.max(1.0));
            for (x, y) in f1.iter().zip(&f2) {
                assert!((x - y).norm() <= 1e-6 * (1.0 + y.norm()), "n={n}");
            }
            let r = fourier_residual(&f, &a);
            let r2 = residual_body(as_f32(&f), &a);
            assert!((r - r2).abs() <= 1e-5 * r2.max(1.0));
            for c in [Constraint::None, Constraint::Real, Constraint::Positive] {
                let (p, _, _) = data(n, n as u64 + 99);
                let mut g1 = f.clone();
                let mut g2 = f.clone();
                let (o1, t1) = support_update(&mut g1, &p, &s, 0.7, -0.9, c);
                let (o2, t2) = support_update_portable(&mut g2, &p, &s, 0.7, -0.9, c);
                assert!(
                    (o1 - o2).abs() <= 1e-5 * o2.max(1.0) && (t1 - t2).abs() <= 1e-5 * t2.max(1.0)
                );
                for (x, y) in g1.iter().zip(&g2) {
                    assert!((x - y).norm() <= 1e-6 * (1.0 + y.norm()), "n={n} {c:?}");
                }
            }
        }
    }

    /// Masked pixels stored with a weight ([`encode_masked`], `--missing-centre`) are
    /// multiplied by it, held-out and plain unmeasured pixels kept, measured ones projected:
    /// both kernels against a float64 reference, at lengths with AVX2 tails.
    #[test]
    fn damped_masked_pixels_against_float64() {
        use crate::phasing::problem::{encode_free, encode_masked};
        for n in [5usize, 8, 29, 67, 130] {
            let (f, mut a, _) = data(n, n as u64 + 5);
            let mut weight = vec![1.0f64; n];
            for (i, v) in a.iter_mut().enumerate() {
                match i % 5 {
                    0 => {
                        weight[i] = (i % 7) as f64 / 6.0;
                        *v = encode_masked(weight[i] as f32);
                    }
                    1 => *v = encode_free(0.3 + i as f32 * 0.01),
                    _ => {}
                }
            }
            let scale = 0.37f64;
            let (mut err, mut en) = (0.0f64, 0.0f64);
            let want: Vec<(f64, f64)> = f
                .iter()
                .zip(&a)
                .zip(&weight)
                .map(|((c, &am), &wt)| {
                    let (re, im) = (c.re as f64, c.im as f64);
                    let m = (re * re + im * im).sqrt();
                    let r = if am >= 0.0 {
                        err += (m - am as f64).powi(2);
                        am as f64 / m
                    } else {
                        wt
                    } * scale;
                    en += (re * r).powi(2) + (im * r).powi(2);
                    (re * r, im * r)
                })
                .collect();
            for simd in [true, false] {
                let mut g = f.clone();
                let (e, t) = if simd {
                    modulus_project(&mut g, &a, scale as f32)
                } else {
                    modulus_project_portable(&mut g, &a, scale as f32)
                };
                assert!((e as f64 - err).abs() <= 1e-5 * err.max(1e-3), "n={n}");
                assert!((t as f64 - en).abs() <= 1e-5 * en.max(1e-3), "n={n}");
                for (i, (x, y)) in g.iter().zip(&want).enumerate() {
                    let d = ((x.re as f64 - y.0).powi(2) + (x.im as f64 - y.1).powi(2)).sqrt();
                    let norm = (y.0 * y.0 + y.1 * y.1).sqrt();
                    assert!(
                        d <= 1e-6 * (1.0 + norm),
                        "n={n} i={i} simd={simd}: {x} vs {y:?}"
                    );
                }
            }
        }
    }
}

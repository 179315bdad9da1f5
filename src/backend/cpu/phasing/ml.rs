//! Poisson maximum-likelihood refinement on the CPU ([`Op::Ml`](crate::phasing::program::Op)):
//! the element-wise passes and the per-item scalar rules of one conjugate-gradient iteration.
//! The GPU kernels (`cd_ml_*` in `kernels/phasing.cu`) implement the same formulas, pass by
//! pass, and the same scalar rules ([`beta_rule`], [`newton_rule`]) per item, so both engines
//! agree to rounding.
//!
//! One iteration on an object g confined to the support S:
//!
//! 1. F = FFT(g); W = 2 (1 - Io / (Ic + eps)) on measured pixels (Io = A^2, Ic = |F|^2),
//!    0 on unmeasured and held-out ones ([`weights`]);
//! 2. the gradient of L(g) = sum over measured pixels of (Ic + eps) - Io ln(Ic + eps) with
//!    respect to (Re g, Im g) is IFFT_unscaled(W F), restricted to S and the constraint
//!    ([`mask_gradient`]);
//! 3. Polak-Ribiere direction d = -grad + beta d ([`beta_rule`], [`direction`]), steepest
//!    descent at a restart or where d would not descend;
//! 4. D = FFT(d); along g + t d the intensities are quadratic in t, so L(t) is 1-D and cheap:
//!    [`line_sums`] gives L(t) - L(0), L'(t) and a Gauss-Newton curvature at t, and
//!    [`newton_rule`] chooses the next t, [`ML_LINE_PASSES`] times;
//! 5. g += t d at the best t evaluated ([`step`]); nothing moves when no evaluated t lowered
//!    L (and the next iteration restarts from steepest descent).

use crate::array::Complex32;
use crate::phasing::program::{Constraint, ML_LINE_PASSES};

/// The per-item scalar state of the refinement (the GPU keeps it as 8 doubles per item:
/// `gprev_norm, beta, t, tbest, dlbest, restart, done, -`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MlState {
    /// |grad|^2 of the previous iteration (the Polak-Ribiere denominator).
    pub gprev_norm: f64,
    /// The conjugation factor of this iteration's direction.
    pub beta: f64,
    /// The step evaluated by the current line-search pass.
    pub t: f64,
    /// The best step evaluated so far and its L(t) - L(0).
    pub tbest: f64,
    pub dlbest: f64,
    /// The next direction is steepest descent (set at the start of an `Ml` op and after a
    /// step that did not lower L).
    pub restart: bool,
    /// The line search has nothing to do (no descent at t = 0).
    pub done: bool,
}

impl Default for MlState {
    fn default() -> Self {
        MlState {
            gprev_norm: 0.0,
            beta: 0.0,
            t: 0.0,
            tbest: 0.0,
            dlbest: 0.0,
            restart: true,
            done: false,
        }
    }
}

/// Confine g to the support and the constraint (as ER would): zero outside; `Real` and
/// `Positive` drop the imaginary part, `Positive` clips negative real parts to zero.
pub fn start(g: &mut [Complex32], s: &[u8], constraint: Constraint) {
    for (v, &m) in g.iter_mut().zip(s) {
        *v = if m == 0 {
            Complex32::new(0.0, 0.0)
        } else {
            match constraint {
                Constraint::None => *v,
                Constraint::Real => Complex32::new(v.re, 0.0),
                Constraint::Positive => Complex32::new(v.re.max(0.0), 0.0),
            }
        };
    }
}

/// `out = 2 (1 - Io / (Ic + eps)) F` on measured pixels (a >= 0), 0 elsewhere (unmeasured
/// and held-out pixels do not enter the gradient).
pub fn weights(f: &[Complex32], amp: &[f32], eps: f32, out: &mut [Complex32]) {
    for ((o, v), &a) in out.iter_mut().zip(f).zip(amp) {
        *o = if a >= 0.0 {
            let io = a * a;
            let c = v.re * v.re + v.im * v.im + eps;
            let wgt = 2.0 * (1.0 - io / c);
            Complex32::new(wgt * v.re, wgt * v.im)
        } else {
            Complex32::new(0.0, 0.0)
        };
    }
}

/// Restrict the gradient (IFFT_unscaled of [`weights`]) to the support and the constraint:
/// zero outside; `Real` and `Positive` drop the imaginary part; `Positive` also holds pixels
/// at zero whose gradient would push them below zero. Returns the sums (|grad|^2,
/// <grad, gprev>, <grad, d>) with <a, b> = sum Re(conj(a) b); `gprev` and `d` are read only
/// when `restart` is false (at a restart they hold nothing valid).
pub fn mask_gradient(
    grad: &mut [Complex32],
    g: &[Complex32],
    s: &[u8],
    constraint: Constraint,
    gprev: &[Complex32],
    d: &[Complex32],
    restart: bool,
) -> [f64; 3] {
    let (mut gg, mut gp, mut gd) = (0.0f64, 0.0f64, 0.0f64);
    for (i, (q, &m)) in grad.iter_mut().zip(s).enumerate() {
        let v = if m == 0 {
            Complex32::new(0.0, 0.0)
        } else {
            match constraint {
                Constraint::None => *q,
                Constraint::Real => Complex32::new(q.re, 0.0),
                Constraint::Positive => {
                    let hold = g[i].re <= 0.0 && q.re > 0.0;
                    Complex32::new(if hold { 0.0 } else { q.re }, 0.0)
                }
            }
        };
        *q = v;
        gg += (v.re * v.re + v.im * v.im) as f64;
        if !restart {
            gp += (v.re * gprev[i].re + v.im * gprev[i].im) as f64;
            gd += (v.re * d[i].re + v.im * d[i].im) as f64;
        }
    }
    [gg, gp, gd]
}

/// The Polak-Ribiere factor from the sums of [`mask_gradient`] (PR+: never negative), 0 at a
/// restart, where it is not finite, or where the new direction would not descend
/// (<grad, d> = -|grad|^2 + beta <grad, d_prev> >= 0). Sets `beta` and `gprev_norm`.
pub fn beta_rule(st: &mut MlState, sums: [f64; 3]) {
    let [gg, gp, gd] = sums;
    let mut beta = 0.0;
    if !st.restart && st.gprev_norm > 0.0 {
        beta = (gg - gp) / st.gprev_norm;
        // keep it only where it is a positive number and d still descends
        let descends = -gg + beta * gd < 0.0;
        if !(beta.is_finite() && beta > 0.0 && descends) {
            beta = 0.0;
        }
    }
    st.beta = beta;
    st.gprev_norm = gg;
}

/// d = -grad + beta d (d = -grad when beta is 0, never reading the old d); gprev = grad.
pub fn direction(grad: &[Complex32], d: &mut [Complex32], gprev: &mut [Complex32], beta: f64) {
    let b = beta as f32;
    for ((q, dv), pv) in grad.iter().zip(d.iter_mut()).zip(gprev.iter_mut()) {
        *dv = if beta == 0.0 {
            -*q
        } else {
            Complex32::new(b * dv.re - q.re, b * dv.im - q.im)
        };
        *pv = *q;
    }
}

/// The 1-D likelihood along the direction at step `t`, over measured pixels: with
/// c0 = |F|^2 + eps, p = Re(conj(F) D), dd = |D|^2, delta = t (2p + t dd) and c = c0 + delta
/// (= |F + tD|^2 + eps), the sums of delta - Io ln(c / c0) (L(t) - L(0)), of (1 - Io/c) q
/// (L'(t), q = 2 (p + t dd)) and of the Gauss-Newton curvature Io/c^2 q^2 +
/// max(0, 1 - Io/c) 2 dd (>= 0; the exact L'' drops the max).
///
/// Written for the vector units (AVX2 + FMA where the CPU has them, chosen at run time):
/// blocks of [`LANES`] pixels with per-lane f32 sums, flushed to f64 every [`FLUSH`] pixels
/// (as the GPU's block partials), and [`ln_ratio`] instead of libm's scalar logarithms.
/// At t = 0, L(t) - L(0) is 0 and no logarithm is taken.
pub fn line_sums(f: &[Complex32], dd: &[Complex32], amp: &[f32], eps: f32, t: f32) -> [f64; 3] {
    assert!(f.len() == amp.len() && dd.len() == amp.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA were detected at run time.
        return unsafe { line_sums_avx2(f, dd, amp, eps, t) };
    }
    line_sums_body(f, dd, amp, eps, t)
}

/// [`line_sums`] compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn line_sums_avx2(
    f: &[Complex32],
    dd: &[Complex32],
    amp: &[f32],
    eps: f32,
    t: f32,
) -> [f64; 3] {
    line_sums_body(f, dd, amp, eps, t)
}

#[inline(always)]
fn line_sums_body(f: &[Complex32], dd: &[Complex32], amp: &[f32], eps: f32, t: f32) -> [f64; 3] {
    if t == 0.0 {
        line_sums_blocks::<false>(f, dd, amp, eps, t)
    } else {
        line_sums_blocks::<true>(f, dd, amp, eps, t)
    }
}

#[inline(always)]
fn line_sums_blocks<const DL: bool>(
    f: &[Complex32],
    dd: &[Complex32],
    amp: &[f32],
    eps: f32,
    t: f32,
) -> [f64; 3] {
    let mut tot = [0.0f64; 3];
    for ((fc, dc), ac) in f.chunks(FLUSH).zip(dd.chunks(FLUSH)).zip(amp.chunks(FLUSH)) {
        let mut acc = [[0.0f32; LANES]; 3];
        let (fb, fr) = fc.as_chunks::<LANES>();
        let (db, dr) = dc.as_chunks::<LANES>();
        let (ab, ar) = ac.as_chunks::<LANES>();
        for ((fv, dv), av) in fb.iter().zip(db).zip(ab) {
            for j in 0..LANES {
                let [x, y, z] = line_term_inner::<DL>(fv[j], dv[j], av[j], eps, t);
                acc[0][j] += x;
                acc[1][j] += y;
                acc[2][j] += z;
            }
        }
        for ((v, w), &a) in fr.iter().zip(dr).zip(ar) {
            let [x, y, z] = line_term_inner::<DL>(*v, *w, a, eps, t);
            acc[0][0] += x;
            acc[1][0] += y;
            acc[2][0] += z;
        }
        for (s, a) in tot.iter_mut().zip(&acc) {
            *s += a.iter().map(|&v| v as f64).sum::<f64>();
        }
    }
    tot
}

/// Pixels per vector block of [`line_sums`].
pub const LANES: usize = 8;
/// Pixels summed in f32 before a flush to f64 in [`line_sums`].
pub const FLUSH: usize = 256;

/// One pixel of [`line_sums`] (the GPU's `cd_ml_line_term`); zero for unmeasured and
/// held-out pixels (a < 0).
#[inline]
pub fn line_term(v: Complex32, w: Complex32, a: f32, eps: f32, t: f32) -> [f32; 3] {
    line_term_inner::<true>(v, w, a, eps, t)
}

/// [`line_term`], branch-free (so that the loop vectorises); without `DL` the first sum
/// (L(t) - L(0)) is not formed (it is 0 at t = 0).
#[inline(always)]
fn line_term_inner<const DL: bool>(
    v: Complex32,
    w: Complex32,
    a: f32,
    eps: f32,
    t: f32,
) -> [f32; 3] {
    let io = a * a;
    let c0 = v.re * v.re + v.im * v.im + eps;
    let p = v.re * w.re + v.im * w.im;
    let dd = w.re * w.re + w.im * w.im;
    let delta = t * (2.0 * p + t * dd);
    let c = (c0 + delta).max(eps);
    let ic = 1.0 / c;
    let r = io * ic;
    let q = 2.0 * (p + t * dd);
    let m = a >= 0.0;
    let pick = |v: f32| if m { v } else { 0.0 };
    let dl = if DL {
        pick(delta - io * ln_ratio(delta, c0, c))
    } else {
        0.0
    };
    [
        dl,
        pick((1.0 - r) * q),
        pick(r * ic * q * q + (1.0 - r).max(0.0) * 2.0 * dd),
    ]
}

/// ln(c / c0) for c = c0 + delta (c, c0 > 0), to f32 accuracy, branch-free: the ratio
/// r = c / c0 = m 2^k with m in [sqrt(1/2), sqrt(2)); ln r = k ln 2 + 2 atanh(s), with
/// s = (m - 1) / (m + 1), or, when k = 0 (r near 1), s = delta / (2 c0 + delta), which
/// keeps the digits of a ratio near 1 that forming r would lose (as log1p does).
#[inline(always)]
pub fn ln_ratio(delta: f32, c0: f32, c: f32) -> f32 {
    let r = (c / c0).max(f32::MIN_POSITIVE);
    let bits = r.to_bits() as i32;
    // the exponent shifted so that m lands in [sqrt(1/2), sqrt(2))
    let k = bits.wrapping_sub(0x3f35_04f3) >> 23;
    let m = f32::from_bits(bits.wrapping_sub(k << 23) as u32);
    let near = k == 0;
    let num = if near { delta } else { m - 1.0 };
    let den = if near { 2.0 * c0 + delta } else { m + 1.0 };
    k as f32 * std::f32::consts::LN_2 + 2.0 * atanh_series(num / den)
}

/// atanh(s) for |s| <= 0.172: s + s^3/3 + ... + s^11/11 (truncation below 1e-10 relative).
#[inline(always)]
fn atanh_series(s: f32) -> f32 {
    let s2 = s * s;
    let poly = 1.0
        + s2 * (1.0 / 3.0
            + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0 + s2 * (1.0 / 11.0)))));
    s * poly
}

/// The line search's choice after pass `pass` (evaluated at `st.t`, giving `sums` =
/// (L(t) - L(0), L'(t), curvature)): pass 0 (t = 0) gives the first Gauss-Newton step, or
/// marks the search done when L does not descend; later passes keep the best t so far and
/// step by Gauss-Newton from an improving point, else back towards the best point; a step
/// that is not a positive finite number halves t instead.
pub fn newton_rule(st: &mut MlState, pass: usize, sums: [f64; 3]) {
    let [dl, g1, g2] = sums;
    if pass == 0 {
        st.tbest = 0.0;
        st.dlbest = 0.0;
        let t = -g1 / g2;
        st.done = !(g1 < 0.0 && g2 > 0.0 && t.is_finite());
        st.t = if st.done { 0.0 } else { t };
        return;
    }
    if st.done {
        return;
    }
    let improved = dl.is_finite() && dl < st.dlbest;
    if improved {
        st.dlbest = dl;
        st.tbest = st.t;
    }
    let mut next = if improved && g2 > 0.0 {
        st.t - g1 / g2
    } else {
        0.5 * (st.t + st.tbest)
    };
    if !(next.is_finite() && next > 0.0) {
        next = 0.5 * st.t;
    }
    st.t = next;
}

/// g += tbest d where tbest is not 0 (clipped at zero under positivity); the next direction
/// restarts when tbest is 0.
pub fn step(g: &mut [Complex32], d: &[Complex32], constraint: Constraint, st: &mut MlState) {
    st.restart = st.tbest == 0.0;
    if st.restart {
        return;
    }
    let t = st.tbest as f32;
    for (v, w) in g.iter_mut().zip(d) {
        let re = v.re + t * w.re;
        let im = v.im + t * w.im;
        *v = match constraint {
            Constraint::Positive => Complex32::new(re.max(0.0), im),
            _ => Complex32::new(re, im),
        };
    }
}

/// The objective of the refinement on F = FFT(g), in float64: sum over measured pixels of
/// (Ic + eps) - Io ln(Ic + eps).
pub fn objective(f: &[Complex32], amp: &[f32], eps: f32) -> f64 {
    f.iter()
        .zip(amp)
        .filter(|(_, &a)| a >= 0.0)
        .map(|(v, &a)| {
            let c = v.norm_sqr() as f64 + eps as f64;
            let io = (a as f64) * (a as f64);
            c - io * c.ln()
        })
        .sum()
}

/// The buffers of the refinement of one item: F, the gradient, the previous gradient, the
/// direction and its transform, and a scratch image.
pub struct MlBufs {
    pub f: Vec<Complex32>,
    pub grad: Vec<Complex32>,
    pub gprev: Vec<Complex32>,
    pub d: Vec<Complex32>,
    pub dd: Vec<Complex32>,
    pub tmp: Vec<Complex32>,
    pub scratch: crate::fft::Scratch<f32>,
}

impl MlBufs {
    /// NaN-poisoned buffers for `plan`'s image size.
    pub fn new(plan: &crate::fft::Plan2d) -> MlBufs {
        let nan = vec![Complex32::new(f32::NAN, f32::NAN); plan.h * plan.w];
        MlBufs {
            f: nan.clone(),
            grad: nan.clone(),
            gprev: nan.clone(),
            d: nan.clone(),
            dd: nan.clone(),
            tmp: nan,
            scratch: plan.scratch(),
        }
    }
}

/// What a recording ML iteration measures on F = FFT(g), before its step: the sums the
/// history needs.
pub struct MlRecord {
    /// Sum over measured pixels of (|F| - A)^2.
    pub residual: f64,
    /// Energy of P_M g outside the support, and in all.
    pub outside: f64,
    pub total: f64,
    /// Sums of the Poisson log-likelihood terms over measured and held-out pixels.
    pub llk: (f64, f64),
}

/// The gradient of [`objective`] with respect to (Re g, Im g) at g (native order),
/// restricted to the support and the constraint, as one refinement iteration computes it
/// (for tests against finite differences).
pub fn gradient(
    plan: &crate::fft::Plan2d,
    g: &[Complex32],
    s: &[u8],
    amp: &[f32],
    eps: f32,
    constraint: Constraint,
) -> Vec<Complex32> {
    let mut b = MlBufs::new(plan);
    b.f.copy_from_slice(g);
    plan.forward(&mut b.f, &mut b.scratch);
    weights(&b.f, amp, eps, &mut b.grad);
    plan.inverse_unscaled(&mut b.grad, &mut b.scratch);
    mask_gradient(&mut b.grad, g, s, constraint, &b.gprev, &b.d, true);
    b.grad
}

/// `count` refinement iterations on one item. With `fresh`, g is confined to its support
/// first and the state `st` restarts; else the iterations continue from `st` and the
/// buffers' direction (the previous op of the same item). With `record`, the last
/// iteration's figures of merit are returned.
#[allow(clippy::too_many_arguments)]
pub fn run(
    plan: &crate::fft::Plan2d,
    b: &mut MlBufs,
    g: &mut [Complex32],
    s: &[u8],
    amp: &[f32],
    eps: f32,
    constraint: Constraint,
    (count, record, fresh): (u64, bool, bool),
    st: &mut MlState,
    cancel: &crate::cancel::Cancel,
) -> Option<MlRecord> {
    if fresh {
        start(g, s, constraint);
        *st = MlState::default();
    }
    let mut out = None;
    let scale = 1.0 / (plan.h * plan.w) as f32;
    for it in 0..count {
        if cancel.is_cancelled() {
            return None;
        }
        b.f.copy_from_slice(g);
        plan.forward(&mut b.f, &mut b.scratch);
        if record && it + 1 == count {
            let llk = super::kernels::poisson_llk(&b.f, amp);
            b.tmp.copy_from_slice(&b.f);
            let (residual, _) = super::kernels::modulus_project(&mut b.tmp, amp, scale);
            plan.inverse_unscaled(&mut b.tmp, &mut b.scratch);
            let (mut outside, mut total) = (0.0f64, 0.0f64);
            for (v, &m) in b.tmp.iter().zip(s) {
                let e = v.norm_sqr() as f64;
                total += e;
                if m == 0 {
                    outside += e;
                }
            }
            out = Some(MlRecord {
                residual: residual as f64,
                outside,
                total,
                llk,
            });
        }
        weights(&b.f, amp, eps, &mut b.grad);
        plan.inverse_unscaled(&mut b.grad, &mut b.scratch);
        let sums = mask_gradient(&mut b.grad, g, s, constraint, &b.gprev, &b.d, st.restart);
        beta_rule(st, sums);
        direction(&b.grad, &mut b.d, &mut b.gprev, st.beta);
        b.dd.copy_from_slice(&b.d);
        plan.forward(&mut b.dd, &mut b.scratch);
        st.t = 0.0;
        for pass in 0..ML_LINE_PASSES {
            let sums = line_sums(&b.f, &b.dd, amp, eps, st.t as f32);
            newton_rule(st, pass, sums);
        }
        step(g, &b.d, constraint, st);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The branch-free logarithms against float64 over ratios from 1e-30 to 1e30 and near 1.
    #[test]
    fn ln_ratio_matches_float64() {
        let mut worst = 0.0f64;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            let c0 = 10f64.powf(u * 40.0 - 20.0) as f32;
            let ratio = if i % 2 == 0 {
                10f64.powf(((x >> 3) % 1000) as f64 / 1000.0 * 60.0 - 30.0)
            } else {
                1.0 + (u - 0.5) * 1e-3 * (i % 7) as f64
            };
            let delta = (c0 as f64 * (ratio - 1.0)) as f32;
            let c = c0 + delta;
            if !(c > 0.0 && c.is_normal() && c0.is_normal()) {
                continue;
            }
            let want = ((c0 as f64 + delta as f64) / c0 as f64).ln();
            let got = ln_ratio(delta, c0, c) as f64;
            // absolute error against the scale of ln's own rounding: ulp(ln c), ulp(ln c0)
            // where the logarithms are subtracted, relative near 1
            let tol =
                4e-7 * (want.abs() + (c0 as f64).ln().abs() * (want.abs() > 0.4) as i32 as f64);
            worst = worst.max((got - want).abs() / tol.max(1e-30));
            assert!((got - want).abs() <= tol, "{delta} {c0}: {got} vs {want}");
        }
        eprintln!("worst error / tolerance {worst:.2}");
    }
}

//! The missing centre (issue 19): what the modulus projection does with masked pixels
//! (a beamstop hides the low frequencies, whose Fourier values no measurement constrains).
//!
//! - `free` (the default): masked pixels keep the current transform's value.
//! - `free-after:ITER`: masked pixels are held at zero amplitude for the first ITER
//!   iterations (the low-frequency modes the data leave free cannot drift), then freed.
//! - `damp:W[,until=ITER]`: masked pixels are multiplied by W in [0, 1] by every modulus
//!   projection (until ITER, default the whole run): the proximal step of a penalty
//!   lambda |F|^2 on the masked Fourier values, W = 1 / (1 + lambda), a regularisation of
//!   the unconstrained modes.
//! - `interpolate:ITER`: before the first iteration the masked intensities are filled by a
//!   band-limited interpolation of the measured ones (below) and held as measured for the
//!   first ITER iterations, then freed.
//!
//! The run is cut at ITER by the segmented runner ([`super::population`]), each segment
//! with its own amplitudes, so the engines take no new state: a damped masked pixel is
//! stored as `-1 - (1 - W) / 4` ([`super::problem::encode_masked`]) and the modulus
//! projection kernels (CPU scalar and AVX2, `cd_modulus_project`) multiply F by W there.
//! Masked pixels stay out of the Fourier error and the likelihoods whatever W; with
//! `interpolate` the filled pixels count as measured (in the error and the LLK) while
//! they are held.

use super::problem::{encode_masked, PhasingProblem};
use crate::fft::Plan2d;
use crate::{Error, Result};

/// What the modulus projection does with masked pixels (`--missing-centre`).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum MissingCentre {
    /// Masked pixels float (keep the transform's value).
    #[default]
    Free,
    /// Held at zero amplitude for the first `until` iterations, then free.
    FreeAfter { until: u64 },
    /// Multiplied by `weight` by every modulus projection until `until` (None: the whole run).
    Damp { weight: f32, until: Option<u64> },
    /// Filled by [`interpolate`] and held as measured for the first `until` iterations.
    Interpolate { until: u64 },
}

/// Rounds of the interpolation ([`interpolate`]): support estimate, then least squares.
pub const INTERPOLATE_ROUNDS: usize = 16;
/// Threshold of the autocorrelation support in [`interpolate`] (fraction of its maximum):
/// low, because the autocorrelation of a compact object falls to zero slowly at its edge
/// (a support cut inside it is the failure that was measured), above the Poisson noise
/// floor of 1e7-photon patterns (~3e-4).
pub const INTERPOLATE_THRESHOLD: f64 = 0.002;
/// Dilation (pixels) of the thresholded autocorrelation in [`interpolate`].
pub const INTERPOLATE_DILATION: usize = 2;
/// Pixels outside the autocorrelation support, per masked pixel, below which
/// [`interpolate`] raises its threshold (the least squares need many more equations than
/// unknowns).
pub const INTERPOLATE_MIN_OUTSIDE: usize = 4;
/// Most masked pixels [`interpolate`] solves for (an m x m eigenproblem per round, by
/// Jacobi: a beamstop of radius 10 is ~317 pixels).
pub const INTERPOLATE_MAX_PIXELS: usize = 400;
/// Relative eigenvalue cutoff of the least-squares solve in [`interpolate`].
pub const INTERPOLATE_CUTOFF: f64 = 1e-13;

/// Is a stored amplitude a masked (unmeasured, not held-out) pixel?
#[inline]
pub fn is_masked(v: f32) -> bool {
    v < 0.0 && v > -1.5
}

impl MissingCentre {
    /// Parse `free`, `free-after:ITER`, `damp:W[,until=ITER]` or `interpolate:ITER`.
    pub fn parse(text: &str) -> Result<MissingCentre> {
        let what = "--missing-centre";
        let t = text.trim();
        let (head, rest) = match t.split_once(':') {
            Some((h, r)) => (h.trim().to_ascii_lowercase(), Some(r.trim())),
            None => (t.to_ascii_lowercase(), None),
        };
        let iter = |v: &str, name: &str| -> Result<u64> {
            v.trim()
                .parse::<u64>()
                .ok()
                .filter(|&i| i > 0)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "{what} {name}: '{v}' is not a positive iteration count"
                    ))
                })
        };
        match (head.as_str(), rest) {
            ("free", None) => Ok(MissingCentre::Free),
            ("free-after", Some(r)) => Ok(MissingCentre::FreeAfter {
                until: iter(r, "free-after")?,
            }),
            ("interpolate", Some(r)) => Ok(MissingCentre::Interpolate {
                until: iter(r, "interpolate")?,
            }),
            ("damp", Some(r)) => {
                let mut parts = r.split(',');
                let w = parts.next().unwrap_or("").trim();
                let weight = w
                    .parse::<f32>()
                    .ok()
                    .filter(|v| (0.0..=1.0).contains(v))
                    .ok_or_else(|| {
                        Error::Config(format!(
                            "{what} damp:{w}: the weight must be a number in [0, 1] (the factor on the masked Fourier values)"
                        ))
                    })?;
                let mut until = None;
                for p in parts {
                    match p.split_once('=') {
                        Some((k, v)) if k.trim().eq_ignore_ascii_case("until") => {
                            until = Some(iter(v, "until")?)
                        }
                        _ => {
                            return Err(Error::Config(format!(
                                "{what} damp: unknown option '{p}': expected until=ITER"
                            )))
                        }
                    }
                }
                Ok(MissingCentre::Damp { weight, until })
            }
            _ => Err(Error::Config(format!(
                "{what} '{text}': expected free, free-after:ITER, damp:W[,until=ITER] or interpolate:ITER"
            ))),
        }
    }

    /// The iteration at which the masked pixels are freed, if the run is cut there.
    pub fn switch_at(&self) -> Option<u64> {
        match *self {
            MissingCentre::Free => None,
            MissingCentre::FreeAfter { until } | MissingCentre::Interpolate { until } => {
                Some(until)
            }
            MissingCentre::Damp { until, .. } => until,
        }
    }

    /// Does the run differ from `free`?
    pub fn active(&self) -> bool {
        !matches!(self, MissingCentre::Free)
            && !matches!(self, MissingCentre::Damp { weight, .. } if *weight == 1.0)
    }

    /// Check against a run of `total` iterations.
    pub fn check(&self, total: u64) -> Result<()> {
        if let Some(at) = self.switch_at() {
            if at >= total {
                return Err(Error::Config(format!(
                    "--missing-centre: iteration {at} is not inside the run of {total} iterations"
                )));
            }
        }
        Ok(())
    }

    /// The amplitudes (native order, N*H*W) a segment starting at iteration `from` runs
    /// with: the problem's own once the masked pixels are freed; before, masked pixels
    /// stored as damped ([`encode_masked`]) or, for `interpolate`, the `filled` amplitudes
    /// (from [`interpolate_all`]).
    pub fn amplitudes(&self, problem: &PhasingProblem, from: u64, filled: &[f32]) -> Vec<f32> {
        let early = self.switch_at().is_none_or(|at| from < at);
        let mut a = problem.amplitudes.clone();
        if !early {
            return a;
        }
        match *self {
            MissingCentre::Free => {}
            MissingCentre::FreeAfter { .. } => mark(&mut a, encode_masked(0.0)),
            MissingCentre::Damp { weight, .. } => mark(&mut a, encode_masked(weight)),
            MissingCentre::Interpolate { .. } => {
                for (v, &f) in a.iter_mut().zip(filled) {
                    if is_masked(*v) {
                        *v = f;
                    }
                }
            }
        }
        a
    }
}

fn mark(a: &mut [f32], v: f32) {
    for x in a.iter_mut().filter(|x| is_masked(**x)) {
        *x = v;
    }
}

/// [`interpolate`] for every pattern of the problem: N*H*W amplitudes, the filled value
/// at masked pixels and the problem's own elsewhere.
pub fn interpolate_all(problem: &PhasingProblem) -> Result<Vec<f32>> {
    use rayon::prelude::*;
    let (h, w) = (problem.h, problem.w);
    let plan = Plan2d::<f64>::new(h, w);
    let per: Vec<Vec<f32>> = (0..problem.n)
        .into_par_iter()
        .map(|p| {
            interpolate(problem.amplitude(p), h, w, &plan)
                .map_err(|e| Error::Config(format!("pattern {p}: {e}")))
        })
        .collect::<Result<_>>()?;
    Ok(per.concat())
}

/// Fill the masked pixels of one pattern (native-order amplitudes, masked pixels as
/// [`is_masked`], held-out ones <= -2) by a band-limited interpolation: the intensities of
/// an object of finite extent have an autocorrelation of finite extent, so the masked
/// intensities x are the non-negative least-squares choice that keeps IFFT(I) smallest
/// outside the autocorrelation's support S:
/// `min_x sum_{r not in S} |IFFT(I_measured + sum_j x_j delta_j)(r)|^2`, whose normal
/// equations are `G x = b` with `G_jk = Re IFFT(1_out)(q_k - q_j)` and
/// `b_j = -Re FFT(1_out IFFT(I_measured))(q_j)` (two FFTs and an m x m eigen-decomposition
/// per round, float64, eigenvalues below [`INTERPOLATE_CUTOFF`] of the largest dropped). S is re-estimated every round from the current fill (the
/// autocorrelation thresholded at [`INTERPOLATE_THRESHOLD`] of its maximum, dilated by
/// [`INTERPOLATE_DILATION`]), starting from a fill at the largest measured intensity
/// around the mask (too large on purpose: a zero fill gives a support cut inside the true
/// one, a fixed point the rounds do not leave). Held-out pixels stay free of the data:
/// they enter as the mean of their measured neighbours and keep their stored value; the
/// least squares are sensitive to that (the fill was 15-60 % off with 1 pixel in 37 held
/// out), so [`super::prepare`] refuses `interpolate` with held-out pixels.
/// Returns the amplitudes with the masked pixels filled (sqrt of the intensity, f32).
///
/// Since session 26 the threshold is raised until enough pixels lie outside the support
/// (a low threshold could cover the whole field: no equations), and the rounds also run
/// from a Guinier extrapolation of the ring around the mask, keeping the fill whose
/// autocorrelation is the most compact (NOTES.md, "Breeding and merging on the device; the
/// interpolation's support").
///
/// Where it works: exact to rounding on noise-free patterns of compact objects (0 misses
/// in 100 random objects of ~0.12 of the field, tests/interp_probe.rs; 10 before); objects
/// of 0.15-0.2 of the field still miss about 1 in 7 (18 in 50 before); 0.3 % off at 1e7
/// photons before session 26 (not re-measured).
pub fn interpolate(a: &[f32], h: usize, w: usize, plan: &Plan2d<f64>) -> Result<Vec<f32>> {
    interpolate_with(a, h, w, plan, &InterpolateOptions::default()).map(|(v, _)| v)
}

/// The settings of [`interpolate`] (its defaults), for measuring its failure modes.
#[derive(Clone, Debug)]
pub struct InterpolateOptions<'a> {
    pub rounds: usize,
    pub threshold: f64,
    pub dilation: usize,
    /// A fixed autocorrelation support (native order) instead of the estimate.
    pub support: Option<&'a [u8]>,
    /// Raise the threshold until this many pixels lie outside the support (None:
    /// [`INTERPOLATE_MIN_OUTSIDE`] times the masked pixels, at least 1/20 of the field);
    /// `Some(0)` never raises it (the behaviour before session 26).
    pub min_outside: Option<usize>,
    /// Also start from the Guinier extrapolation (and keep the more compact result).
    pub guinier: bool,
}

impl InterpolateOptions<'_> {
    fn min_outside(&self, m: usize, l: usize) -> usize {
        self.min_outside
            .unwrap_or((INTERPOLATE_MIN_OUTSIDE * m).max(l / 20))
    }
}

impl Default for InterpolateOptions<'_> {
    fn default() -> Self {
        InterpolateOptions {
            rounds: INTERPOLATE_ROUNDS,
            threshold: INTERPOLATE_THRESHOLD,
            dilation: INTERPOLATE_DILATION,
            support: None,
            min_outside: None,
            guinier: true,
        }
    }
}

/// [`interpolate`] with explicit settings; also returns the last autocorrelation support.
pub fn interpolate_with(
    a: &[f32],
    h: usize,
    w: usize,
    plan: &Plan2d<f64>,
    opts: &InterpolateOptions,
) -> Result<(Vec<f32>, Vec<u8>)> {
    use num_complex::Complex64;
    let l = h * w;
    let masked: Vec<usize> = (0..l).filter(|&i| is_masked(a[i])).collect();
    let m = masked.len();
    let mut out = a.to_vec();
    if m == 0 || !a.iter().any(|&v| v >= 0.0) {
        return Ok((out, Vec::new()));
    }
    if m > INTERPOLATE_MAX_PIXELS {
        return Err(Error::Config(format!(
            "--missing-centre interpolate: {m} masked pixels, more than the {INTERPOLATE_MAX_PIXELS} it solves for (use free-after or damp)"
        )));
    }
    let is_mask: Vec<bool> = (0..l).map(|i| is_masked(a[i])).collect();
    let neighbours = |i: usize| {
        let (y, x) = (i / w, i % w);
        [h - 1, 0, 1].into_iter().flat_map(move |dy| {
            [w - 1, 0, 1]
                .into_iter()
                .map(move |dx| ((y + dy) % h) * w + (x + dx) % w)
        })
    };
    // the measured intensities; held-out pixels as their measured neighbours' mean
    let mut im: Vec<f64> = a
        .iter()
        .map(|&v| {
            if v >= 0.0 {
                (v as f64) * (v as f64)
            } else {
                0.0
            }
        })
        .collect();
    for i in 0..l {
        if a[i] < 0.0 && !is_mask[i] {
            let (mut s, mut c) = (0.0, 0usize);
            for j in neighbours(i).filter(|&j| a[j] >= 0.0) {
                s += (a[j] as f64).powi(2);
                c += 1;
            }
            im[i] = if c > 0 { s / c as f64 } else { 0.0 };
        }
    }
    let start = masked
        .iter()
        .flat_map(|&i| neighbours(i))
        .filter(|&j| !is_mask[j])
        .map(|j| im[j])
        .fold(0.0f64, f64::max);
    // two starting fills: the largest measured intensity around the mask (too large on
    // purpose, see above), and a Guinier extrapolation I0 exp(-b q^2) fitted to the
    // measured ring around the mask (close to the truth for a compact object, so the
    // autocorrelation's ripple from the fill's error stays under the threshold). The
    // rounds run from each; the fill whose autocorrelation is the most compact (fewest
    // pixels above the threshold) is kept: a wrong fill spreads it over the field.
    let mut starts = Vec::new();
    if let Some(gf) = opts
        .guinier
        .then(|| guinier_fill(&im, &masked, &is_mask, h, w))
        .flatten()
    {
        starts.push(gf);
    }
    starts.push(vec![start; m]);
    let mut am: Vec<Complex64> = im.iter().map(|&v| Complex64::new(v, 0.0)).collect();
    plan.inverse(&mut am, &mut plan.scratch());
    let solve = |mut x: Vec<f64>| -> (Vec<f64>, Vec<u8>, usize) {
        let mut scratch = plan.scratch();
        let mut c = vec![Complex64::new(0.0, 0.0); l];
        let mut g = vec![0.0f64; m * m];
        let mut last = Vec::new();
        for _ in 0..opts.rounds {
            // the support of the current fill's autocorrelation
            for (d, &v) in c.iter_mut().zip(&im) {
                *d = Complex64::new(v, 0.0);
            }
            for (&q, &v) in masked.iter().zip(&x) {
                c[q] = Complex64::new(v, 0.0);
            }
            plan.inverse(&mut c, &mut scratch);
            let max = c.iter().map(|v| v.re).fold(f64::MIN, f64::max);
            // the threshold rises (x2, up to 1/2 of the maximum) until at least `min_out`
            // pixels lie outside: the fill's error at the mask adds a ripple (the transform of
            // the masked disc, ~1.7 % sidelobes) that can exceed a low threshold everywhere;
            // a support covering the field leaves no equation for the least squares
            let mut thr = opts.threshold;
            let sup = loop {
                let mut sup: Vec<u8> = match opts.support {
                    Some(s) => s.to_vec(),
                    None => c.iter().map(|v| (v.re >= thr * max) as u8).collect(),
                };
                for _ in 0..opts.dilation {
                    sup = dilate(&sup, h, w);
                }
                let outside = sup.iter().filter(|&&v| v == 0).count();
                if opts.support.is_some() || outside >= opts.min_outside(m, l) || thr >= 0.5 {
                    break sup;
                }
                thr *= 2.0;
            };
            last.clone_from(&sup);
            // G = Re IFFT(1_out) at the differences, b = -Re FFT(1_out A) at the pixels
            for (d, &s) in c.iter_mut().zip(&sup) {
                *d = Complex64::new((s == 0) as u8 as f64, 0.0);
            }
            plan.inverse(&mut c, &mut scratch);
            for (j, &qj) in masked.iter().enumerate() {
                let (yj, xj) = (qj / w, qj % w);
                for (k, &qk) in masked.iter().enumerate() {
                    let (yk, xk) = (qk / w, qk % w);
                    g[j * m + k] = c[((yk + h - yj) % h) * w + (xk + w - xj) % w].re;
                }
            }
            for ((d, &s), &v) in c.iter_mut().zip(&sup).zip(&am) {
                *d = if s == 0 { v } else { Complex64::new(0.0, 0.0) };
            }
            plan.forward(&mut c, &mut scratch);
            let b: Vec<f64> = masked.iter().map(|&q| -c[q].re).collect();
            // the least-squares solution by the eigen-decomposition of G, eigenvalues below
            // 1e-13 of the largest dropped (a large support leaves too few outside pixels for
            // m unknowns, as in the first rounds from the large starting fill, and G is
            // singular; a Cholesky with a ridge was measured to jump to a wrong support there)
            let (lam, vecs) = symmetric_eigen(&g, m);
            let top = lam.iter().copied().fold(0.0f64, f64::max);
            if !(top > 0.0 && top.is_finite()) {
                // no outside pixels at all (the support covers the field): keep the last fill
                break;
            }
            let mut sol = vec![0.0f64; m];
            for (i, &lv) in lam.iter().enumerate() {
                if lv > INTERPOLATE_CUTOFF * top {
                    let v = (0..m).map(|k| vecs[k * m + i]);
                    let proj: f64 = v.clone().zip(&b).map(|(c, &bj)| c * bj).sum();
                    for (d, c) in sol.iter_mut().zip(v) {
                        *d += c * proj / lv;
                    }
                }
            }
            let mut change = 0.0f64;
            for (d, v) in x.iter_mut().zip(sol) {
                let v = if v.is_finite() { v.max(0.0) } else { 0.0 };
                change = change.max((v - *d).abs());
                *d = v;
            }
            // converged: the support of the next round would be this one's
            let top_x = x.iter().copied().fold(0.0f64, f64::max);
            if change <= 1e-12 * top_x {
                break;
            }
        }
        // the compactness of the result: pixels of its autocorrelation >= threshold x max
        let mut c = vec![Complex64::new(0.0, 0.0); l];
        for (d, &v) in c.iter_mut().zip(&im) {
            *d = Complex64::new(v, 0.0);
        }
        for (&q, &v) in masked.iter().zip(&x) {
            c[q] = Complex64::new(v, 0.0);
        }
        plan.inverse(&mut c, &mut scratch);
        let max = c.iter().map(|v| v.re).fold(f64::MIN, f64::max);
        let size = c.iter().filter(|v| v.re >= opts.threshold * max).count();
        (x, last, size)
    };
    let mut best: Option<(Vec<f64>, Vec<u8>, usize)> = None;
    for x0 in starts {
        let r = solve(x0);
        if best.as_ref().is_none_or(|b| r.2 < b.2) {
            best = Some(r);
        }
    }
    let (x, last, _) = best.expect("at least one start");
    for (&q, &v) in masked.iter().zip(&x) {
        out[q] = v.sqrt() as f32;
    }
    Ok((out, last))
}

/// A Guinier extrapolation of the measured intensities into the mask: `ln I = a - b q^2`
/// fitted (least squares) to the measured pixels within 3 pixels of a masked one (q from
/// the zero frequency, native order), `b >= 0`; None when fewer than 3 such pixels have
/// positive intensity or the fit is not finite.
fn guinier_fill(
    im: &[f64],
    masked: &[usize],
    is_mask: &[bool],
    h: usize,
    w: usize,
) -> Option<Vec<f64>> {
    let q2 = |i: usize| {
        let (y, x) = (i / w, i % w);
        let (dy, dx) = (y.min(h - y) as f64, x.min(w - x) as f64);
        dy * dy + dx * dx
    };
    let mut ring = vec![false; h * w];
    for &i in masked {
        let (y, x) = (i / w, i % w);
        for dy in 0..7 {
            for dx in 0..7 {
                let j = ((y + h + dy - 3) % h) * w + (x + w + dx - 3) % w;
                if !is_mask[j] && im[j] > 0.0 {
                    ring[j] = true;
                }
            }
        }
    }
    let pts: Vec<(f64, f64)> = (0..h * w)
        .filter(|&j| ring[j])
        .map(|j| (q2(j), im[j].ln()))
        .collect();
    if pts.len() < 3 {
        return None;
    }
    let n = pts.len() as f64;
    let (sx, sy) = pts.iter().fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
    let (mx, my) = (sx / n, sy / n);
    let (sxx, sxy) = pts.iter().fold((0.0, 0.0), |a, p| {
        (a.0 + (p.0 - mx).powi(2), a.1 + (p.0 - mx) * (p.1 - my))
    });
    let b = if sxx > 0.0 {
        (-sxy / sxx).max(0.0)
    } else {
        0.0
    };
    let a = my + b * mx;
    let fill: Vec<f64> = masked.iter().map(|&i| (a - b * q2(i)).exp()).collect();
    fill.iter().all(|v| v.is_finite()).then_some(fill)
}

/// Eigenvalues and eigenvectors (columns of the returned row-major m x m matrix) of a real
/// symmetric m x m matrix by cyclic Jacobi, to 1e-15 of its norm.
fn symmetric_eigen(g: &[f64], m: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = g.to_vec();
    let mut v = vec![0.0f64; m * m];
    for i in 0..m {
        v[i * m + i] = 1.0;
    }
    let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..100 {
        let mut off = 0.0f64;
        for p in 0..m {
            for q in 0..m {
                if p != q {
                    off += a[p * m + q] * a[p * m + q];
                }
            }
        }
        if off.sqrt() <= 1e-15 * norm.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..m {
            for q in p + 1..m {
                let apq = a[p * m + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[q * m + q] - a[p * m + p]) / (2.0 * apq);
                let t = if theta == 0.0 {
                    1.0
                } else {
                    theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt())
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..m {
                    let (akp, akq) = (a[k * m + p], a[k * m + q]);
                    a[k * m + p] = c * akp - s * akq;
                    a[k * m + q] = s * akp + c * akq;
                }
                for k in 0..m {
                    let (apk, aqk) = (a[p * m + k], a[q * m + k]);
                    a[p * m + k] = c * apk - s * aqk;
                    a[q * m + k] = s * apk + c * aqk;
                }
                for k in 0..m {
                    let (vkp, vkq) = (v[k * m + p], v[k * m + q]);
                    v[k * m + p] = c * vkp - s * vkq;
                    v[k * m + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..m).map(|i| a[i * m + i]).collect(), v)
}

/// A support grown by one pixel (8-neighbourhood, periodic).
fn dilate(s: &[u8], h: usize, w: usize) -> Vec<u8> {
    let mut out = s.to_vec();
    for y in 0..h {
        for x in 0..w {
            if s[y * w + x] == 0 {
                continue;
            }
            for dy in [h - 1, 0, 1] {
                for dx in [w - 1, 0, 1] {
                    out[((y + dy) % h) * w + (x + dx) % w] = 1;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_modes_and_refuses_the_rest() {
        assert_eq!(MissingCentre::parse("free").unwrap(), MissingCentre::Free);
        assert_eq!(
            MissingCentre::parse("free-after:300").unwrap(),
            MissingCentre::FreeAfter { until: 300 }
        );
        assert_eq!(
            MissingCentre::parse("Interpolate:50").unwrap(),
            MissingCentre::Interpolate { until: 50 }
        );
        assert_eq!(
            MissingCentre::parse("damp:0.5").unwrap(),
            MissingCentre::Damp {
                weight: 0.5,
                until: None
            }
        );
        assert_eq!(
            MissingCentre::parse("damp:0,until=400").unwrap(),
            MissingCentre::Damp {
                weight: 0.0,
                until: Some(400)
            }
        );
        for bad in [
            "zero",
            "free-after",
            "free-after:0",
            "free-after:x",
            "damp:1.5",
            "damp:0.5,stop=3",
            "interpolate",
            "free:3",
        ] {
            assert!(MissingCentre::parse(bad).is_err(), "{bad}");
        }
        assert!(MissingCentre::FreeAfter { until: 100 }.check(100).is_err());
        assert!(MissingCentre::FreeAfter { until: 99 }.check(100).is_ok());
        assert!(!MissingCentre::parse("damp:1").unwrap().active());
    }
}

//! `cdiphase selftest`: every kernel of a device (phasing and network) against float64
//! references on fresh random inputs at awkward sizes (odd, prime, non-square, batch 1 and
//! larger), then a short whole phasing run and whole network forwards.
//!
//! The references are written here from the documented semantics, independently of the
//! engines: a float64 FFT (rustfft in f64), one phasing iteration (modulus projection with the
//! mask, the ER/HIO/RAAR support update with its constraint, the error records), the
//! shrinkwrap blur and threshold, and an interpreter of the model format (TensorFlow's
//! geometry rules for convolutions, transposed convolutions and pooling). The same checks run
//! on every device: `cpu` (the CPU engine), `emu` (the CUDA kernels under the emulator, which
//! the test suite runs) and `cuda` (a real GPU, where users run it after installing drivers
//! and attach its JSON to bug reports).
//!
//! Each check is one row: the kernel(s) it exercises, the case, the largest error (relative
//! norm, or the share of support pixels that differ), the tolerance, the time and pass/fail.
//! A check that fails to run (a launch error, a non-finite output) is a failed row, never a
//! panic. Tolerances: one f32 iteration or layer agrees with float64 to ~1e-6 (rounding of
//! the FFTs and sums); HIO and RAAR amplify rounding 2-2.5x per iteration, and a rim pixel
//! whose blurred value lies within rounding of the shrinkwrap threshold may flip and steer
//! the later iterations, so the whole run is short (8 HIO iterations) and its tolerance is
//! 3e-2 (measured on the CPU engine over seeds 1-5: 5e-5 to 6e-3, the largest with 3 of
//! 131,072 support pixels flipped); a kernel bug gives errors of order 0.1-1.

use crate::array::{Complex32, Stack};
use crate::backend::cpu::nn::{Mode, Network, Options as NnOptions, Runner};
use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::launcher::{DevBuf, Launcher};
use crate::backend::gpu::network::GpuNetwork;
use crate::backend::gpu::{nn_kernels as gpu_nn, phasing as gpu_phasing};
use crate::backend::PhasingOps;
use crate::fft::Plan2d;
use crate::nn::spec::{Activation, LayerSpec, ModelSpec, Op, Padding, Preprocess};
use crate::nn::Model;
use crate::phasing::problem::{InitObjects, PhasingOutput, PhasingProblem};
use crate::phasing::program::{Constraint, Op as PhOp, Program, Recording, ShrinkwrapConfig};
use crate::phasing::schedule::{Algorithm, Schedule};
use crate::{Error, Result};
use num_complex::Complex64;
use rand_xoshiro::rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;
use std::time::Instant;

/// One row of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// The kernel(s) or path exercised.
    pub kernel: String,
    /// The case: sizes, batch, rule.
    pub case: String,
    /// Largest error against the reference (NaN when the check could not run).
    pub max_err: f64,
    pub tolerance: f64,
    /// Wall time of the device run, milliseconds.
    pub ms: f64,
    pub passed: bool,
    /// Why it failed to run, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The whole self-test.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub device: String,
    pub quick: bool,
    pub seed: u64,
    pub checks: Vec<Check>,
    pub failures: usize,
    pub seconds: f64,
}

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Fewer and smaller cases (seconds on the emulator).
    pub quick: bool,
    /// Seed of the random inputs (printed, so that a failure can be replayed).
    pub seed: u64,
}

/// The device under test.
pub enum Target<'a> {
    /// The CPU engine (phasing backend and network runner).
    Cpu(&'a CpuBackend),
    /// The GPU kernels through a launcher (`cuda` or `emu`).
    Gpu(&'a dyn Launcher),
}

impl Target<'_> {
    fn phase(&self, pb: &PhasingProblem, prog: &Program) -> Result<PhasingOutput> {
        match self {
            Target::Cpu(b) => b.run_phasing(pb, prog, &|_| {}),
            Target::Gpu(l) => gpu_phasing::run_phasing(*l, pb, prog, &|_| {}),
        }
    }

    fn forward(&self, m: &Model, x: &[f32], n: usize) -> Result<Vec<f32>> {
        match self {
            Target::Cpu(b) => {
                let net = Network::with_features(m, Mode::F32Direct, b.features())?;
                let mut r = Runner::with_pool(
                    &net,
                    n,
                    NnOptions {
                        threads: b.threads(),
                        mode: Mode::F32Direct,
                        poison: true,
                    },
                    b.pool().clone(),
                )?;
                Ok(r.run(x, n)?.to_vec())
            }
            Target::Gpu(l) => GpuNetwork::new(*l, m)?.run(x, n),
        }
    }

    /// Forward (unnormalised) or inverse (scaled by 1/(HW)) 2-D FFTs of `batch` images.
    fn fft(&self, x: &[Complex32], h: usize, w: usize, forward: bool) -> Result<Vec<Complex32>> {
        let l = h * w;
        match self {
            Target::Cpu(_) => {
                let plan = Plan2d::new(h, w);
                let mut work = plan.scratch();
                let mut y = x.to_vec();
                for img in y.chunks_mut(l) {
                    if forward {
                        plan.forward(img, &mut work);
                    } else {
                        plan.inverse(img, &mut work);
                    }
                }
                Ok(y)
            }
            Target::Gpu(lch) => {
                let batch = x.len() / l;
                let plan = lch.fft_plan(h, w, batch)?;
                let run = || -> Result<Vec<Complex32>> {
                    let a = DevBuf::from_slice(*lch, x)?;
                    let b = DevBuf::new(*lch, std::mem::size_of_val(x))?;
                    lch.fft(plan, a.ptr(), b.ptr(), forward)?;
                    let mut y: Vec<Complex32> = b.to_vec(x.len())?;
                    if !forward {
                        let s = 1.0 / l as f32;
                        y.iter_mut().for_each(|c| *c *= s);
                    }
                    Ok(y)
                };
                let r = run();
                lch.fft_destroy(plan);
                r
            }
        }
    }

    /// The name of what a check exercises: the GPU kernels, or the CPU engine's operation.
    fn label(&self, gpu: &str, cpu: &str) -> String {
        match self {
            Target::Gpu(_) => gpu.to_string(),
            Target::Cpu(_) => format!("cpu: {cpu}"),
        }
    }

    fn is_cuda(&self) -> bool {
        matches!(self, Target::Gpu(l) if l.name() == "cuda")
    }
}

/// Run every check on `target`; `device` is the description printed in the report.
pub fn run(target: &Target, device: &str, opts: Options) -> Report {
    let t0 = Instant::now();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(opts.seed);
    let mut checks = Vec::new();
    fft_checks(target, opts, &mut rng, &mut checks);
    phasing_checks(target, opts, &mut rng, &mut checks);
    network_checks(target, opts, &mut rng, &mut checks);
    let failures = checks.iter().filter(|c| !c.passed).count();
    Report {
        device: device.to_string(),
        quick: opts.quick,
        seed: opts.seed,
        checks,
        failures,
        seconds: t0.elapsed().as_secs_f64(),
    }
}

/// Time `f` and turn its (error, or failure to run) into a row.
fn check(
    out: &mut Vec<Check>,
    kernel: String,
    case: String,
    tolerance: f64,
    f: impl FnOnce() -> Result<f64>,
) {
    let t = Instant::now();
    let r = f();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let (max_err, error) = match r {
        Ok(e) => (e, None),
        Err(e) => (f64::NAN, Some(e.to_string())),
    };
    out.push(Check {
        kernel,
        case,
        max_err,
        tolerance,
        ms,
        passed: error.is_none() && max_err <= tolerance,
        error,
    });
}

// ------------------------------------------------------------------------------------------
// Random inputs and error measures

fn uniform(rng: &mut Xoshiro256PlusPlus) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn vec_f32(rng: &mut Xoshiro256PlusPlus, n: usize) -> Vec<f32> {
    (0..n).map(|_| (2.0 * uniform(rng) - 1.0) as f32).collect()
}

/// ||got - want|| / ||want||; a non-finite value in `got` (an unwritten, NaN-poisoned
/// element) is an error naming its index.
fn rel_norm(got: &[f64], want: &[f64]) -> Result<f64> {
    if got.len() != want.len() {
        return Err(Error::Config(format!(
            "output has {} values, the reference {}",
            got.len(),
            want.len()
        )));
    }
    let mut num = 0.0;
    let mut den = 0.0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if !g.is_finite() {
            return Err(Error::Config(format!(
                "output value {i} is {g} (unwritten or not finite)"
            )));
        }
        num += (g - w).powi(2);
        den += w * w;
    }
    Ok((num / den.max(1e-300)).sqrt())
}

fn c_to_f64(v: &[Complex32]) -> Vec<f64> {
    v.iter().flat_map(|c| [c.re as f64, c.im as f64]).collect()
}

fn c64_to_f64(v: &[Complex64]) -> Vec<f64> {
    v.iter().flat_map(|c| [c.re, c.im]).collect()
}

fn f32_to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

// ------------------------------------------------------------------------------------------
// FFT

/// Unnormalised 2-D DFT of one h x w image in float64 (rustfft's f64 plans, rows then
/// columns); `inverse` uses the positive exponent.
fn dft2(x: &[Complex64], h: usize, w: usize, inverse: bool) -> Vec<Complex64> {
    let mut p = rustfft::FftPlanner::<f64>::new();
    let (fr, fc) = if inverse {
        (p.plan_fft_inverse(w), p.plan_fft_inverse(h))
    } else {
        (p.plan_fft_forward(w), p.plan_fft_forward(h))
    };
    let mut y = x.to_vec();
    for row in y.chunks_mut(w) {
        fr.process(row);
    }
    let mut col = vec![Complex64::new(0.0, 0.0); h];
    for c in 0..w {
        for r in 0..h {
            col[r] = y[r * w + c];
        }
        fc.process(&mut col);
        for r in 0..h {
            y[r * w + c] = col[r];
        }
    }
    y
}

fn fft_checks(t: &Target, o: Options, rng: &mut Xoshiro256PlusPlus, out: &mut Vec<Check>) {
    let name = if t.is_cuda() {
        "cuFFT (batched C2C)".to_string()
    } else {
        t.label(
            "2-D FFT (rustfft, the emulator's cuFFT)",
            "2-D FFT (rustfft)",
        )
    };
    let cases: &[(usize, usize, usize)] = if o.quick {
        &[(1, 31, 20), (3, 16, 16)]
    } else {
        &[(1, 128, 128), (3, 97, 131), (2, 61, 61), (64, 64, 64)]
    };
    for &(n, h, w) in cases {
        let x: Vec<Complex32> = (0..n * h * w)
            .map(|_| {
                Complex32::new(
                    (2.0 * uniform(rng) - 1.0) as f32,
                    (2.0 * uniform(rng) - 1.0) as f32,
                )
            })
            .collect();
        for forward in [true, false] {
            let case = format!(
                "{} {n} x {h}x{w}",
                if forward { "forward" } else { "inverse" }
            );
            check(out, name.clone(), case, 1e-5, || {
                let got = t.fft(&x, h, w, forward)?;
                let mut want = Vec::with_capacity(x.len());
                for img in x.chunks(h * w) {
                    let xi: Vec<Complex64> = img
                        .iter()
                        .map(|c| Complex64::new(c.re as f64, c.im as f64))
                        .collect();
                    let mut y = dft2(&xi, h, w, !forward);
                    if !forward {
                        let s = 1.0 / (h * w) as f64;
                        y.iter_mut().for_each(|c| *c *= s);
                    }
                    want.extend(y);
                }
                rel_norm(&c_to_f64(&got), &c64_to_f64(&want))
            });
        }
    }
}

// ------------------------------------------------------------------------------------------
// Phasing

/// Patterns, height, width, starts.
type Size = (usize, usize, usize, usize);

/// A random phasing problem: compact objects around the origin (native order), their Fourier
/// amplitudes, optionally a mask (about 8 % of pixels and the origin unmeasured), supports a
/// little larger than the objects, random starts.
fn phasing_problem(
    rng: &mut Xoshiro256PlusPlus,
    (n, h, w, starts): Size,
    masked: bool,
    constraint: Constraint,
    off_centre: bool,
) -> PhasingProblem {
    let l = h * w;
    // off centre: the blob around (h/3, w/3), the whole field as the starting support and
    // the true objects as the starts, so that a shrinkwrap must clear pixels everywhere, the
    // last ones of the arrays included
    let (cy, cx) = if off_centre { (h / 3, w / 3) } else { (0, 0) };
    let mut amplitudes = vec![0.0f32; n * l];
    let mut supports = vec![0u8; n * l];
    let mut sum_a2 = vec![0.0; n];
    let mut measured = vec![0; n];
    let mut truth = Vec::with_capacity(if off_centre { n * l } else { 0 });
    for p in 0..n {
        let ry = (h as f64 * (0.15 + 0.1 * uniform(rng))).max(1.0);
        let rx = (w as f64 * (0.15 + 0.1 * uniform(rng))).max(1.0);
        let mut obj = vec![Complex64::new(0.0, 0.0); l];
        for y in 0..h {
            for x in 0..w {
                let wrap = |v: usize, len: usize| {
                    if v > len / 2 {
                        v as f64 - len as f64
                    } else {
                        v as f64
                    }
                };
                let d = (wrap((y + h - cy) % h, h) / ry).powi(2)
                    + (wrap((x + w - cx) % w, w) / rx).powi(2);
                if d < 1.6 || off_centre {
                    supports[p * l + y * w + x] = 1;
                }
                if d < 1.0 {
                    let im = if constraint == Constraint::None {
                        uniform(rng) - 0.5
                    } else {
                        0.0
                    };
                    obj[y * w + x] = Complex64::new(0.2 + uniform(rng), im);
                }
            }
        }
        if off_centre {
            truth.extend(obj.iter().map(|c| Complex32::new(c.re as f32, c.im as f32)));
        }
        let f = dft2(&obj, h, w, false);
        for i in 0..l {
            let unmeasured = masked && (uniform(rng) < 0.08 || i == 0);
            let a = f[i].norm() as f32;
            amplitudes[p * l + i] = if unmeasured { -1.0 } else { a };
            if !unmeasured {
                sum_a2[p] += (a as f64).powi(2);
                measured[p] += 1;
            }
        }
    }
    PhasingProblem {
        n,
        h,
        w,
        starts,
        amplitudes,
        sum_a2,
        measured,
        supports: Stack::from_vec(n, h, w, supports).expect("sizes match"),
        // off centre, the starts are the true objects (so that the shrinkwrap sees a compact
        // object) with 10 % noise each (so that starts differ)
        init: if off_centre {
            InitObjects::Given {
                objects: Stack::from_vec(n, h, w, truth).expect("sizes match"),
                noise: 0.1,
                seed: rng.next_u64(),
            }
        } else {
            InitObjects::Random {
                seed: rng.next_u64(),
            }
        },
        constraint,
        keep_all: true,
        cancel: Default::default(),
        selection: Default::default(),
        sw_factors: Vec::new(),
    }
}

/// The float64 state of one item and its recorded errors.
struct RefItem {
    g: Vec<Complex64>,
    sup: Vec<u8>,
    /// Pixels whose blurred value fell within rounding of a shrinkwrap threshold: f32 may
    /// decide them either way.
    ambiguous: Vec<bool>,
    fourier: Vec<f64>,
    real: Vec<f64>,
}

/// Fourier error of `g` against the item's amplitudes, and (when `project`) `g`'s transform
/// with the modulus projection applied.
fn ref_modulus(
    g: &[Complex64],
    amp: &[f32],
    sum_a2: f64,
    h: usize,
    w: usize,
) -> (f64, Vec<Complex64>) {
    let mut f = dft2(g, h, w, false);
    let mut err = 0.0;
    for (v, &a) in f.iter_mut().zip(amp) {
        if a >= 0.0 {
            let m = v.norm();
            err += (m - a as f64).powi(2);
            *v *= a as f64 / m.max(1e-30);
        }
    }
    let fe = if sum_a2 > 0.0 {
        (err / sum_a2).sqrt()
    } else {
        0.0
    };
    (fe, f)
}

/// One iteration of `alg` on a float64 item of pattern `pat` (the kernels' documented rule).
fn ref_iterate(
    it: &mut RefItem,
    pb: &PhasingProblem,
    pat: usize,
    (alg, beta): (Algorithm, f64),
    record: bool,
) {
    let (h, w, c) = (pb.h, pb.w, pb.constraint);
    let (fe, f) = ref_modulus(&it.g, pb.amplitude(pat), pb.sum_a2[pat], h, w);
    let mut p = dft2(&f, h, w, true);
    let s = 1.0 / (h * w) as f64;
    let (a, b) = match alg {
        Algorithm::ER => (0.0, 0.0),
        Algorithm::HIO => (1.0, -beta),
        Algorithm::RAAR => (beta, 1.0 - 2.0 * beta),
    };
    let (mut outside, mut total) = (0.0, 0.0);
    for ((g, q), &m) in it.g.iter_mut().zip(p.iter_mut()).zip(&it.sup) {
        *q *= s;
        let e = q.norm_sqr();
        let inside = m != 0;
        if !inside {
            outside += e;
        }
        total += e;
        let mre = match c {
            Constraint::Positive => inside && q.re >= 0.0,
            _ => inside,
        };
        let mim = c == Constraint::None && inside;
        g.re = if mre { q.re } else { a * g.re + b * q.re };
        g.im = if mim { q.im } else { a * g.im + b * q.im };
    }
    if record {
        it.fourier.push(fe);
        it.real.push(if total > 0.0 {
            (outside / total).sqrt()
        } else {
            0.0
        });
    }
}

/// The 1-D Gaussian of the shrinkwrap blur (radius ceil(4 sigma)), in float64.
fn ref_gaussian(sigma: f64) -> Vec<f64> {
    if sigma <= 0.0 {
        return vec![1.0];
    }
    let r = (4.0 * sigma).ceil() as i64;
    let v: Vec<f64> = (-r..=r)
        .map(|i| (-(i as f64).powi(2) / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f64 = v.iter().sum();
    v.iter().map(|x| x / s).collect()
}

/// Shrinkwrap: the periodic Gaussian blur of |g|, support = blurred >= threshold x maximum
/// (unchanged when the maximum is not positive).
fn ref_shrinkwrap(it: &mut RefItem, (h, w): (usize, usize), sigma: f64, threshold: f64) {
    let k = ref_gaussian(sigma);
    let r = (k.len() / 2) as i64;
    let m: Vec<f64> = it.g.iter().map(|c| c.norm()).collect();
    let mut tmp = vec![0.0; h * w];
    for y in 0..h {
        for x in 0..w {
            tmp[y * w + x] = k
                .iter()
                .enumerate()
                .map(|(j, kj)| {
                    kj * m[y * w + (x as i64 + j as i64 - r).rem_euclid(w as i64) as usize]
                })
                .sum();
        }
    }
    let mut b = vec![0.0; h * w];
    for y in 0..h {
        for x in 0..w {
            b[y * w + x] = k
                .iter()
                .enumerate()
                .map(|(j, kj)| {
                    kj * tmp[(y as i64 + j as i64 - r).rem_euclid(h as i64) as usize * w + x]
                })
                .sum();
        }
    }
    let mx = b.iter().cloned().fold(0.0, f64::max);
    if mx > 0.0 && mx.is_finite() {
        let t = threshold * mx;
        for ((s, v), amb) in it.sup.iter_mut().zip(&b).zip(it.ambiguous.iter_mut()) {
            *s = (*v >= t) as u8;
            *amb |= (v - t).abs() <= 1e-5 * mx;
        }
    }
}

/// Run a compiled program on every item of `pb` in float64.
fn ref_program(pb: &PhasingProblem, prog: &Program) -> Vec<RefItem> {
    let l = pb.h * pb.w;
    let mut items = Vec::with_capacity(pb.items());
    for p in 0..pb.n {
        for s in 0..pb.starts {
            let mut obj = vec![Complex32::new(0.0, 0.0); l];
            let mut sup = vec![0u8; l];
            pb.initial_state(p, s, &mut obj, &mut sup);
            let mut it = RefItem {
                g: obj
                    .iter()
                    .map(|c| Complex64::new(c.re as f64, c.im as f64))
                    .collect(),
                sup,
                ambiguous: vec![false; l],
                fourier: Vec::new(),
                real: Vec::new(),
            };
            for op in &prog.ops {
                match *op {
                    PhOp::Iterate {
                        alg,
                        beta,
                        count,
                        record,
                        ..
                    } => {
                        for i in 0..count {
                            ref_iterate(
                                &mut it,
                                pb,
                                p,
                                (alg, beta as f64),
                                record && i + 1 == count,
                            );
                        }
                    }
                    PhOp::Shrinkwrap {
                        sigma, threshold, ..
                    } => ref_shrinkwrap(&mut it, (pb.h, pb.w), sigma as f64, threshold as f64),
                    // issue 19: ML. The self-test's programs (phasing_checks) hold no ML step,
                    // and this reference has none: an ML program would leave the object
                    // unrefined here and fail the comparison. tests/ml.rs checks the
                    // refinement (finite differences, engines against each other).
                    PhOp::Ml { .. } => {}
                }
            }
            items.push(it);
        }
    }
    items
}

/// The largest of: objects (relative norm), Fourier-error histories and final errors
/// (relative norm), real-space errors (absolute, as squares: the CPU forms them as a
/// difference), and the share of support pixels that differ divided by `flip_tol / tol`
/// (so that one number against `tol` covers all of them).
fn compare_phasing(
    got: &PhasingOutput,
    want: &[RefItem],
    pb: &PhasingProblem,
    tol: f64,
    flip_tol: f64,
    strict: bool,
) -> Result<f64> {
    let objs = got
        .all_objects
        .as_ref()
        .ok_or_else(|| Error::Config("no objects returned".into()))?;
    let sups = got
        .all_supports
        .as_ref()
        .ok_or_else(|| Error::Config("no supports returned".into()))?;
    let want_g: Vec<Complex64> = want.iter().flat_map(|it| it.g.iter().cloned()).collect();
    let mut e = rel_norm(&c_to_f64(objs), &c64_to_f64(&want_g))?;
    let want_f: Vec<f64> = want
        .iter()
        .flat_map(|it| it.fourier.iter().cloned())
        .collect();
    e = e.max(rel_norm(&f32_to_f64(&got.fourier_error), &want_f)?);
    let mut fin = Vec::with_capacity(want.len());
    for (i, it) in want.iter().enumerate() {
        let p = i / pb.starts;
        fin.push(ref_modulus(&it.g, pb.amplitude(p), pb.sum_a2[p], pb.h, pb.w).0);
    }
    e = e.max(rel_norm(&f32_to_f64(&got.final_fourier_error), &fin)?);
    let want_r: Vec<f64> = want.iter().flat_map(|it| it.real.iter().cloned()).collect();
    for (g, w) in got.real_error.iter().zip(&want_r) {
        e = e.max(((*g as f64).powi(2) - w * w).abs());
    }
    let want_s: Vec<u8> = want.iter().flat_map(|it| it.sup.iter().cloned()).collect();
    let amb: Vec<bool> = want
        .iter()
        .flat_map(|it| it.ambiguous.iter().cloned())
        .collect();
    let (mut flips, mut hard) = (0usize, 0usize);
    for ((a, b), &m) in sups.iter().zip(&want_s).zip(&amb) {
        if a != b {
            flips += 1;
            hard += !m as usize;
        }
    }
    e = e.max(flips as f64 / sups.len() as f64 * tol / flip_tol);
    if strict {
        // a pixel clearly on one side of the threshold decided the other way is a bug
        e = e.max(hard as f64);
    }
    Ok(e)
}

fn program(schedule: &str, sw: Option<&str>, recording: Recording) -> Result<Program> {
    let sw = match sw {
        Some(s) => ShrinkwrapConfig::parse(s)?,
        None => ShrinkwrapConfig::default(),
    };
    Program::compile(&Schedule::parse(schedule)?, 0.9, &sw, recording)
}

fn phasing_checks(t: &Target, o: Options, rng: &mut Xoshiro256PlusPlus, out: &mut Vec<Check>) {
    let sizes: Vec<(usize, usize, usize, usize)> = if o.quick {
        vec![(1, 24, 24, 1), (2, 31, 20, 2)]
    } else {
        let big = if t.is_cuda() { 512 } else { 32 };
        vec![
            (1, 128, 128, 2),
            (3, 97, 131, 2),
            (2, 61, 61, 3),
            (big, 64, 64, 1),
        ]
    };
    let k_update = t.label(
        "cd_modulus_project, cd_support_update, cd_record_errors",
        "modulus projection, support update, errors",
    );
    for (si, &size) in sizes.iter().enumerate() {
        let (n, h, w, k) = size;
        for c in [Constraint::None, Constraint::Real, Constraint::Positive] {
            // the mask on every other size
            let pb = phasing_problem(rng, size, si % 2 == 0, c, false);
            for alg in ["ER", "HIO", "RAAR"] {
                let case = format!(
                    "1 {alg} {c:?} {n}x{k} of {h}x{w}{}",
                    if si % 2 == 0 { " masked" } else { "" }
                );
                check(out, k_update.clone(), case, 2e-5, || {
                    let prog = program(&format!("1*{alg}"), None, Recording::Every(1))?;
                    let got = t.phase(&pb, &prog)?;
                    compare_phasing(&got, &ref_program(&pb, &prog), &pb, 2e-5, 1e-9, true)
                });
            }
        }
    }
    // shrinkwrap: a blur wider than the image (r >= w), odd sizes, two thresholds
    let sw_cases: Vec<(Size, f32, f32)> = if o.quick {
        vec![((2, 19, 23, 2), 1.0, 0.1), ((1, 9, 7, 1), 3.0, 0.2)]
    } else {
        vec![
            ((2, 97, 131, 2), 1.0, 0.1),
            ((3, 61, 61, 1), 2.5, 0.15),
            ((1, 9, 7, 2), 3.0, 0.2),
            ((1, 128, 128, 2), 1.0, 0.1),
        ]
    };
    for (size, sigma, thr) in sw_cases {
        let (n, h, w, k) = size;
        let pb = phasing_problem(rng, size, true, Constraint::Positive, true);
        let case = format!("SW(sigma {sigma}, threshold {thr}) + 1 ER {n}x{k} of {h}x{w}");
        let k = t.label(
            "cd_sw_blur_rows, cd_sw_blur_cols, cd_sw_threshold",
            "shrinkwrap blur and threshold",
        );
        check(out, k, case, 2e-5, || {
            let prog = program(
                "SW + 1*ER",
                Some(&format!("sigma={sigma},threshold={thr}")),
                Recording::Every(1),
            )?;
            let got = t.phase(&pb, &prog)?;
            // a pixel whose blurred value lies within rounding of the threshold may flip
            compare_phasing(&got, &ref_program(&pb, &prog), &pb, 2e-5, 0.005, true)
        });
    }
    // a short whole run: HIO/ER alternation with periodic shrinkwrap
    let (size, sched) = if o.quick {
        ((2, 32, 32, 2), "2*(4*HIO + 4*ER)")
    } else {
        ((8, 64, 64, 4), "2*(4*HIO + 4*ER) + 4*ER")
    };
    let pb = phasing_problem(rng, size, true, Constraint::Positive, false);
    let (n, h, w, k) = size;
    check(
        out,
        "whole phasing run".into(),
        format!("{sched}, SW every 8, positive, {n}x{k} of {h}x{w} masked"),
        3e-2,
        || {
            let prog = program(
                sched,
                Some("sigma=1,threshold=0.1,every=8"),
                Recording::EndOfErSections,
            )?;
            let got = t.phase(&pb, &prog)?;
            compare_phasing(&got, &ref_program(&pb, &prog), &pb, 3e-2, 0.005, false)
        },
    );
}

// ------------------------------------------------------------------------------------------
// Network

fn act(x: f64, a: Activation) -> f64 {
    match a {
        Activation::Linear => x,
        Activation::Relu => x.max(0.0),
        Activation::Tanh => x.tanh(),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
    }
}

/// TensorFlow's output length and leading padding along one axis of a convolution or pooling.
fn tf_axis(len: usize, k: usize, s: usize, p: Padding) -> Result<(usize, usize)> {
    Ok(match p {
        Padding::Same => {
            let out = len.div_ceil(s);
            (out, ((out - 1) * s + k).saturating_sub(len) / 2)
        }
        Padding::Valid => {
            if len < k {
                return Err(Error::Config(format!("window {k} larger than {len}")));
            }
            ((len - k) / s + 1, 0)
        }
    })
}

/// A value of the reference interpreter: (h, w, c) or a flat vector (h = w = 1).
#[derive(Clone)]
struct Val {
    h: usize,
    w: usize,
    c: usize,
    v: Vec<f64>,
}

fn weights<'m>(m: &'m Model, layer: &str, what: &str) -> Option<&'m [f32]> {
    m.weights
        .get(&format!("{layer}/{what}"))
        .map(|t| t.data.as_slice())
}

/// One image through the model, in float64, by the layers' definitions.
fn ref_forward_one(m: &Model, x: &[f32]) -> Result<Vec<f64>> {
    let [h0, w0, c0] = m.spec.input;
    let mut vals: Vec<(String, Val)> = vec![(
        m.spec.input_name.clone(),
        Val {
            h: h0,
            w: w0,
            c: c0,
            v: f32_to_f64(x),
        },
    )];
    let get = |vals: &Vec<(String, Val)>, name: &str| -> Result<Val> {
        vals.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| Error::Config(format!("no value '{name}'")))
    };
    for ly in &m.spec.layers {
        let x = get(&vals, &ly.inputs[0])?;
        let kern = weights(m, &ly.name, "kernel");
        let bias = |co: usize| weights(m, &ly.name, "bias").map_or(0.0, |b| b[co] as f64);
        let y = match &ly.op {
            Op::Conv2D {
                filters,
                kernel: [kh, kw],
                strides: [sy, sx],
                padding,
                activation,
                ..
            } => {
                let wt = kern.ok_or_else(|| Error::Config("conv without kernel".into()))?;
                let (ho, pt) = tf_axis(x.h, *kh, *sy, *padding)?;
                let (wo, pl) = tf_axis(x.w, *kw, *sx, *padding)?;
                let co_n = *filters;
                let mut v = vec![0.0; ho * wo * co_n];
                for oy in 0..ho {
                    for ox in 0..wo {
                        for co in 0..co_n {
                            let mut acc = bias(co);
                            for i in 0..*kh {
                                for j in 0..*kw {
                                    let iy = (oy * sy + i) as isize - pt as isize;
                                    let ix = (ox * sx + j) as isize - pl as isize;
                                    if iy < 0 || ix < 0 || iy >= x.h as isize || ix >= x.w as isize
                                    {
                                        continue;
                                    }
                                    for ci in 0..x.c {
                                        acc += x.v[(iy as usize * x.w + ix as usize) * x.c + ci]
                                            * wt[((i * kw + j) * x.c + ci) * co_n + co] as f64;
                                    }
                                }
                            }
                            v[(oy * wo + ox) * co_n + co] = act(acc, *activation);
                        }
                    }
                }
                Val {
                    h: ho,
                    w: wo,
                    c: co_n,
                    v,
                }
            }
            Op::Conv2DTranspose {
                filters,
                kernel: [kh, kw],
                strides: [sy, sx],
                padding,
                activation,
                ..
            } => {
                let wt =
                    kern.ok_or_else(|| Error::Config("transposed conv without kernel".into()))?;
                // the gradient of a convolution from the output grid: 'same' out = in * s,
                // leading padding max(k - s, 0) / 2; 'valid' out = in * s + max(k - s, 0)
                let axis = |len: usize, k: usize, s: usize| match padding {
                    Padding::Same => (len * s, k.saturating_sub(s) / 2),
                    Padding::Valid => (len * s + k.saturating_sub(s), 0),
                };
                let (ho, pt) = axis(x.h, *kh, *sy);
                let (wo, pl) = axis(x.w, *kw, *sx);
                let co_n = *filters;
                let mut v = vec![0.0; ho * wo * co_n];
                for iy in 0..x.h {
                    for ix in 0..x.w {
                        for i in 0..*kh {
                            for j in 0..*kw {
                                let oy = (iy * sy + i) as isize - pt as isize;
                                let ox = (ix * sx + j) as isize - pl as isize;
                                if oy < 0 || ox < 0 || oy >= ho as isize || ox >= wo as isize {
                                    continue;
                                }
                                for co in 0..co_n {
                                    let mut acc = 0.0;
                                    for ci in 0..x.c {
                                        acc += x.v[(iy * x.w + ix) * x.c + ci]
                                            * wt[((i * kw + j) * co_n + co) * x.c + ci] as f64;
                                    }
                                    v[(oy as usize * wo + ox as usize) * co_n + co] += acc;
                                }
                            }
                        }
                    }
                }
                for (i, e) in v.iter_mut().enumerate() {
                    *e = act(*e + bias(i % co_n), *activation);
                }
                Val {
                    h: ho,
                    w: wo,
                    c: co_n,
                    v,
                }
            }
            Op::MaxPooling2D {
                pool: [ph, pw],
                strides: [sy, sx],
                padding,
            } => {
                let (ho, pt) = tf_axis(x.h, *ph, *sy, *padding)?;
                let (wo, pl) = tf_axis(x.w, *pw, *sx, *padding)?;
                let mut v = vec![f64::NEG_INFINITY; ho * wo * x.c];
                for oy in 0..ho {
                    for ox in 0..wo {
                        for i in 0..*ph {
                            for j in 0..*pw {
                                let iy = (oy * sy + i) as isize - pt as isize;
                                let ix = (ox * sx + j) as isize - pl as isize;
                                if iy < 0 || ix < 0 || iy >= x.h as isize || ix >= x.w as isize {
                                    continue;
                                }
                                for c in 0..x.c {
                                    let o = &mut v[(oy * wo + ox) * x.c + c];
                                    *o = o.max(x.v[(iy as usize * x.w + ix as usize) * x.c + c]);
                                }
                            }
                        }
                    }
                }
                Val {
                    h: ho,
                    w: wo,
                    c: x.c,
                    v,
                }
            }
            Op::UpSampling2D { size: [fy, fx] } => {
                let (ho, wo) = (x.h * fy, x.w * fx);
                let mut v = vec![0.0; ho * wo * x.c];
                for oy in 0..ho {
                    for ox in 0..wo {
                        for c in 0..x.c {
                            v[(oy * wo + ox) * x.c + c] =
                                x.v[((oy / fy) * x.w + ox / fx) * x.c + c];
                        }
                    }
                }
                Val {
                    h: ho,
                    w: wo,
                    c: x.c,
                    v,
                }
            }
            Op::Dense {
                units, activation, ..
            } => {
                let wt = kern.ok_or_else(|| Error::Config("dense without kernel".into()))?;
                let rows = x.h * x.w;
                let mut v = vec![0.0; rows * units];
                for r in 0..rows {
                    for u in 0..*units {
                        let mut acc = bias(u);
                        for i in 0..x.c {
                            acc += x.v[r * x.c + i] * wt[i * units + u] as f64;
                        }
                        v[r * units + u] = act(acc, *activation);
                    }
                }
                Val {
                    h: x.h,
                    w: x.w,
                    c: *units,
                    v,
                }
            }
            Op::Flatten => Val {
                h: 1,
                w: 1,
                c: x.v.len(),
                v: x.v,
            },
            Op::Reshape { target } => {
                let (h, w, c) = match target.as_slice() {
                    [h, w, c] => (*h, *w, *c),
                    [c] => (1, 1, *c),
                    t => return Err(Error::Config(format!("reshape to {t:?}"))),
                };
                Val { h, w, c, v: x.v }
            }
            Op::Concatenate => {
                let parts: Vec<Val> = ly
                    .inputs
                    .iter()
                    .map(|n| get(&vals, n))
                    .collect::<Result<_>>()?;
                let c: usize = parts.iter().map(|p| p.c).sum();
                let mut v = Vec::with_capacity(x.h * x.w * c);
                for px in 0..x.h * x.w {
                    for p in &parts {
                        v.extend_from_slice(&p.v[px * p.c..(px + 1) * p.c]);
                    }
                }
                Val {
                    h: x.h,
                    w: x.w,
                    c,
                    v,
                }
            }
            Op::Dropout => x,
            Op::Activation { activation } => Val {
                v: x.v.iter().map(|&e| act(e, *activation)).collect(),
                ..x
            },
        };
        vals.push((ly.name.clone(), y));
    }
    Ok(get(&vals, &m.spec.output)?.v)
}

fn layer(name: &str, inputs: &[&str], op: Op) -> LayerSpec {
    LayerSpec {
        name: name.into(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        op,
    }
}

fn conv(
    filters: usize,
    kernel: [usize; 2],
    strides: [usize; 2],
    padding: Padding,
    activation: Activation,
) -> Op {
    Op::Conv2D {
        filters,
        kernel,
        strides,
        padding,
        activation,
        use_bias: true,
    }
}

fn convt(
    filters: usize,
    kernel: [usize; 2],
    strides: [usize; 2],
    padding: Padding,
    activation: Activation,
) -> Op {
    Op::Conv2DTranspose {
        filters,
        kernel,
        strides,
        padding,
        activation,
        use_bias: true,
    }
}

fn model_spec(name: &str, input: [usize; 3], layers: Vec<LayerSpec>) -> ModelSpec {
    let output = layers
        .last()
        .map(|l| l.name.clone())
        .unwrap_or_else(|| "input".into());
    ModelSpec {
        name: name.into(),
        input_name: "input".into(),
        input,
        preprocess: Preprocess::Max,
        layers,
        output,
    }
}

/// The single-layer (and small) models that together cover every network kernel.
fn layer_models() -> Vec<(&'static str, &'static str, ModelSpec)> {
    use Activation::*;
    use Padding::*;
    let one = |name: &str, input: [usize; 3], op: Op| {
        model_spec(name, input, vec![layer("l", &["input"], op)])
    };
    vec![
        (
            "cd_nn_conv2d (tiled 3x3)",
            "Conv2D, direct",
            one(
                "conv 3x3 same relu 17x23x5->7",
                [17, 23, 5],
                conv(7, [3, 3], [1, 1], Same, Relu),
            ),
        ),
        (
            "cd_nn_conv2d (tiled 5x5)",
            "Conv2D, direct",
            one(
                "conv 5x5 same 12x9x3->4",
                [12, 9, 3],
                conv(4, [5, 5], [1, 1], Same, Linear),
            ),
        ),
        (
            "cd_nn_conv2d_general",
            "Conv2D, strided",
            one(
                "conv 3x3 stride 2 valid 19x16x4->6",
                [19, 16, 4],
                conv(6, [3, 3], [2, 2], Valid, Relu),
            ),
        ),
        (
            "cd_nn_conv2d_general",
            "Conv2D, even kernel",
            one(
                "conv 4x2 stride 2x1 same 11x14x3->5",
                [11, 14, 3],
                conv(5, [4, 2], [2, 1], Same, Tanh),
            ),
        ),
        (
            "cd_nn_convT_weights, cd_nn_conv2d",
            "Conv2DTranspose",
            one(
                "conv-transpose 3x3 same tanh 13x10x6->5",
                [13, 10, 6],
                convt(5, [3, 3], [1, 1], Same, Tanh),
            ),
        ),
        (
            "cd_nn_conv_transpose2d",
            "Conv2DTranspose, strided",
            one(
                "conv-transpose 3x3 stride 2 same 7x9x4->3",
                [7, 9, 4],
                convt(3, [3, 3], [2, 2], Same, Relu),
            ),
        ),
        (
            "cd_nn_conv_transpose2d",
            "Conv2DTranspose, valid",
            one(
                "conv-transpose 2x2 stride 2 valid sigmoid 6x5x3->2",
                [6, 5, 3],
                convt(2, [2, 2], [2, 2], Valid, Sigmoid),
            ),
        ),
        (
            "cd_nn_maxpool2",
            "MaxPooling2D 2x2",
            one(
                "maxpool 2x2 15x17x3 (odd: floors)",
                [15, 17, 3],
                Op::MaxPooling2D {
                    pool: [2, 2],
                    strides: [2, 2],
                    padding: Valid,
                },
            ),
        ),
        (
            "cd_nn_maxpool",
            "MaxPooling2D",
            one(
                "maxpool 3x3 stride 2 same 13x11x2",
                [13, 11, 2],
                Op::MaxPooling2D {
                    pool: [3, 3],
                    strides: [2, 2],
                    padding: Same,
                },
            ),
        ),
        (
            "cd_nn_upsample",
            "UpSampling2D",
            one(
                "upsample 3x2 5x7x3",
                [5, 7, 3],
                Op::UpSampling2D { size: [3, 2] },
            ),
        ),
        (
            "cd_nn_dense, cd_nn_activate",
            "Flatten, Dense",
            model_spec(
                "flatten, dense 10 relu, dense 37 6x5x4",
                [6, 5, 4],
                vec![
                    layer("f", &["input"], Op::Flatten),
                    layer(
                        "d1",
                        &["f"],
                        Op::Dense {
                            units: 10,
                            activation: Relu,
                            use_bias: true,
                        },
                    ),
                    layer(
                        "d2",
                        &["d1"],
                        Op::Dense {
                            units: 37,
                            activation: Linear,
                            use_bias: true,
                        },
                    ),
                ],
            ),
        ),
        (
            "cd_nn_copy_channels (Concatenate, Activation)",
            "Concatenate, Activation",
            model_spec(
                "two convs, concatenate, tanh 9x8x3",
                [9, 8, 3],
                vec![
                    layer("a", &["input"], conv(2, [3, 3], [1, 1], Same, Linear)),
                    layer("b", &["input"], conv(3, [1, 1], [1, 1], Same, Relu)),
                    layer("cat", &["a", "b"], Op::Concatenate),
                    layer("t", &["cat"], Op::Activation { activation: Tanh }),
                ],
            ),
        ),
    ]
}

fn network_case(
    t: &Target,
    spec: ModelSpec,
    n: usize,
    rng: &mut Xoshiro256PlusPlus,
) -> Result<f64> {
    let m = Model::random(spec, rng.next_u64())?;
    let per: usize = m.spec.input.iter().product();
    let x = vec_f32(rng, n * per);
    let got = t.forward(&m, &x, n)?;
    let mut want = Vec::new();
    for img in x.chunks(per) {
        want.extend(ref_forward_one(&m, img)?);
    }
    rel_norm(&f32_to_f64(&got), &want)
}

fn network_checks(t: &Target, o: Options, rng: &mut Xoshiro256PlusPlus, out: &mut Vec<Check>) {
    let batches: &[usize] = if o.quick { &[1, 3] } else { &[1, 5] };
    for (kernel, op, spec) in layer_models() {
        for &n in batches {
            let case = format!("{}, batch {n}", spec.name);
            let spec = spec.clone();
            check(out, t.label(kernel, op), case, 1e-5, || {
                network_case(t, spec, n, rng)
            });
        }
    }
    // the network's input normalisation and support threshold (GPU kernels of the pipeline)
    if let Target::Gpu(l) = t {
        check(
            out,
            "cd_nn_normalize_max, cd_nn_support_threshold".into(),
            "3 x 1001 values, one all zero".into(),
            1e-6,
            || {
                let (pats, per) = (3usize, 1001usize);
                let mut v: Vec<f32> = (0..pats * per)
                    .map(|_| (uniform(rng) * 5.0) as f32)
                    .collect();
                v[per..2 * per].iter_mut().for_each(|x| *x = 0.0);
                let vb = DevBuf::from_slice(*l, &v)?;
                let sb = DevBuf::new(*l, pats * per)?;
                gpu_nn::support_threshold(*l, &vb, pats, per, 0.3, &sb)?;
                gpu_nn::normalize_max(*l, &vb, pats, per)?;
                let got: Vec<f32> = vb.to_vec(pats * per)?;
                let sup: Vec<u8> = sb.to_vec(pats * per)?;
                let mut want = Vec::with_capacity(v.len());
                let mut wrong = 0usize;
                for blk in v.chunks(per) {
                    let mx = blk.iter().cloned().fold(0.0f32, f32::max) as f64;
                    want.extend(
                        blk.iter()
                            .map(|&x| if mx > 0.0 { x as f64 / mx } else { x as f64 }),
                    );
                    let base = want.len() - per;
                    for (i, &x) in blk.iter().enumerate() {
                        let x = x as f64;
                        let expect = mx > 0.0 && x >= 0.3 * mx;
                        // a value within rounding of the threshold may go either way
                        if (x - 0.3 * mx).abs() > 1e-6 * mx && (sup[base + i] != 0) != expect {
                            wrong += 1;
                        }
                    }
                }
                Ok(rel_norm(&f32_to_f64(&got), &want)?.max(wrong as f64))
            },
        );
    }
    // whole networks: the paper's topology, reduced, against the float64 interpreter
    let (size, width, n) = if o.quick {
        (32, 0.125, 2)
    } else {
        (64, 0.25, 3)
    };
    check(
        out,
        "whole network forward".into(),
        format!("paper topology {size}x{size}, width {width}, batch {n}"),
        1e-4,
        || {
            network_case(
                t,
                crate::nn::presets::spinn(size, width, Preprocess::Max)?,
                n,
                rng,
            )
        },
    );
    // on a GPU, the full-size network against the CPU engine (too slow for the emulator)
    if t.is_cuda() && !o.quick {
        check(
            out,
            "whole network forward".into(),
            "paper network 128x128 (19.7 M), batch 8, against the CPU engine".into(),
            1e-4,
            || {
                let m = Model::random(
                    crate::nn::presets::spinn(128, 1.0, Preprocess::Max)?,
                    rng.next_u64(),
                )?;
                let per: usize = m.spec.input.iter().product();
                let x: Vec<f32> = (0..8 * per).map(|_| uniform(rng) as f32).collect();
                let got = t.forward(&m, &x, 8)?;
                let cpu = CpuBackend::new(None)?;
                let want = Target::Cpu(&cpu).forward(&m, &x, 8)?;
                rel_norm(&f32_to_f64(&got), &f32_to_f64(&want))
            },
        );
    }
}

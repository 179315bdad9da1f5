//! The CPU phasing engine against an independent float64 reference written here: naive
//! separable DFTs and the textbook ER / HIO / RAAR updates, with fresh random inputs at
//! awkward sizes (odd, prime, non-square; batch 1 and many; several starts), masks and
//! every constraint. Plus invariants: projection idempotence, Parseval, mask behaviour.

#![allow(clippy::too_many_arguments, clippy::needless_range_loop)]
mod common;

use cdiphase::array::{Complex32, Stack};
use cdiphase::backend::cpu::phasing::modulus_project;
use cdiphase::backend::cpu::CpuBackend;
use cdiphase::backend::PhasingOps;
use cdiphase::fft::Plan2d;
use cdiphase::phasing::problem::{InitObjects, PhasingOutput, PhasingProblem};
use cdiphase::phasing::program::{Constraint, Program, Recording, ShrinkwrapConfig};
use cdiphase::phasing::schedule::{Algorithm, Schedule, Step};
use common::refs::dft2;
use common::Lcg;
use num_complex::Complex64;

/// The reference modulus projection P_M g, the error sum (|F| - A)^2 over measured, and
/// the float32 conditioning of the projection: the bound on how far a float32 engine's
/// P_M g may lie from the float64 one through its own FFT's rounding alone (see
/// `fourier_allowance`).
fn ref_project(g: &[Complex64], amp: &[f32], h: usize, w: usize) -> (Vec<Complex64>, f64, f64) {
    let f = dft2(g, h, w, -1.0);
    let allowance = fourier_allowance(&f, amp);
    let mut err = 0.0;
    let fp: Vec<Complex64> = f
        .iter()
        .zip(amp)
        .map(|(&c, &a)| {
            if a < 0.0 {
                c
            } else {
                let m = c.norm();
                err += (m - a as f64).powi(2);
                if m > 0.0 {
                    c * (a as f64 / m)
                } else {
                    Complex64::new(0.0, 0.0)
                }
            }
        })
        .collect();
    let n = (h * w) as f64;
    (
        dft2(&fp, h, w, 1.0).iter().map(|c| c / n).collect(),
        err,
        allowance,
    )
}

/// The modulus projection sets each measured Fourier coefficient F to A F / |F|: its phase
/// is the engine's own float32 F's, and where |F| is near zero that phase is not
/// determined by the input to float32 precision. A float32 FFT errs by about
/// u sqrt(log2 N) |F|_rms per coefficient; with e_F = 4 u log2(N) |F|_rms (ten times
/// that at N = 144), a coefficient's projection may move by min(2 A, 2 A e_F / |F|).
/// Coefficients whose phase is so uncertain that this exceeds 1e-4 A are ill-conditioned,
/// and the real-space norm of their possible movement, sqrt(sum (..)^2 / N) by Parseval, is
/// what a correct engine may differ by on top of the 1e-5 of the well-conditioned rest.
/// (They are not rare: at the self-conjugate frequencies of a nearly real iterate, F is
/// nearly real and crosses zero along a line; clean-clone CI met |F| = 2.7e-5 |F|_rms at
/// (0, 8) of a 9x16 positivity-constrained HIO iterate, seed 1796513475437991323.)
fn fourier_allowance(f: &[Complex64], amp: &[f32]) -> f64 {
    let n = f.len() as f64;
    let rms = (f.iter().map(|c| c.norm_sqr()).sum::<f64>() / n).sqrt();
    let e_f = 4.0 * f64::from(f32::EPSILON) * 0.5 * n.log2().max(1.0) * rms;
    let mut sum = 0.0;
    for (c, &a) in f.iter().zip(amp) {
        if a <= 0.0 {
            continue;
        }
        let a = f64::from(a);
        let m = c.norm();
        let moved = if m > 0.0 {
            (2.0 * a * e_f / m).min(2.0 * a)
        } else {
            2.0 * a
        };
        if moved > 1e-4 * a {
            sum += moved * moved;
        }
    }
    (sum / n).sqrt()
}

/// One reference iteration, textbook form: inside the constraint set g' ; outside
/// ER 0, HIO g - beta g', RAAR beta g + (1 - 2 beta) g'. Returns the Fourier error sum, the
/// real-space error, the allowance of `fourier_allowance` and the norm of P_M g. Under
/// positivity a pixel of the support whose Re g' lies within what a correct float32 engine
/// may differ by (the 1e-5 norm-wise tolerance plus the allowance) is a tie: either side of
/// the branch is right, and the reference takes the one nearer the engine's `got`.
fn ref_iterate(
    g: &mut [Complex64],
    amp: &[f32],
    sup: &[u8],
    h: usize,
    w: usize,
    alg: Algorithm,
    beta: f64,
    c: Constraint,
    got: &[Complex32],
) -> (f64, f64, f64, f64) {
    let (p, err, allowance) = ref_project(g, amp, h, w);
    let tot: f64 = p.iter().map(|v| v.norm_sqr()).sum();
    let out: f64 = p
        .iter()
        .zip(sup)
        .filter(|(_, &m)| m == 0)
        .map(|(v, _)| v.norm_sqr())
        .sum();
    let tie = 1e-5 * tot.sqrt() + allowance;
    let outside = |gv: f64, pv: f64| match alg {
        Algorithm::ER => 0.0,
        Algorithm::HIO => gv - beta * pv,
        Algorithm::RAAR => beta * gv + (1.0 - 2.0 * beta) * pv,
    };
    for i in 0..h * w {
        let inside = sup[i] != 0;
        let (okr, oki) = match c {
            Constraint::None => (inside, inside),
            Constraint::Real => (inside, false),
            Constraint::Positive => (inside && p[i].re >= 0.0, false),
        };
        let mut re = if okr {
            p[i].re
        } else {
            outside(g[i].re, p[i].re)
        };
        if c == Constraint::Positive && inside && p[i].re.abs() <= tie {
            let other = if okr {
                outside(g[i].re, p[i].re)
            } else {
                p[i].re
            };
            let engine = f64::from(got[i].re);
            if (other - engine).abs() < (re - engine).abs() {
                re = other;
            }
        }
        let im = if oki {
            p[i].im
        } else {
            outside(g[i].im, p[i].im)
        };
        g[i] = Complex64::new(re, im);
    }
    (err, (out / tot).sqrt(), allowance, tot.sqrt())
}

fn rel_err(a: &[Complex32], b: &[Complex64]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (Complex64::new(x.re as f64, x.im as f64) - y).norm_sqr())
        .sum();
    let den: f64 = b.iter().map(|y| y.norm_sqr()).sum();
    (num / den).sqrt()
}

/// A random problem: amplitudes of a random compact object (so that the data are
/// consistent), optional random mask, random supports per pattern.
fn random_problem(
    rng: &mut Lcg,
    n: usize,
    h: usize,
    w: usize,
    starts: usize,
    masked: bool,
    constraint: Constraint,
) -> PhasingProblem {
    let l = h * w;
    let mut amplitudes = vec![0.0f32; n * l];
    let mut supports = vec![0u8; n * l];
    let mut sum_a2 = vec![0.0; n];
    let mut measured = vec![0; n];
    for p in 0..n {
        // Random support pixels on a random subset of rows (some rows empty, not
        // contiguous), so the engine's row-skipping path is exercised; every other
        // pattern has support pixels on every row.
        let skip = p % 2 == 0;
        for i in 0..l {
            let row_used = !skip || !(i / w * 7 + p).is_multiple_of(3);
            supports[p * l + i] = (row_used && rng.next() < 0.3) as u8;
        }
        supports[p * l] = 1;
        let obj: Vec<Complex64> = (0..l)
            .map(|i| {
                if supports[p * l + i] != 0 {
                    Complex64::new(rng.next(), rng.next() - 0.5)
                } else {
                    Complex64::new(0.0, 0.0)
                }
            })
            .collect();
        let f = dft2(&obj, h, w, -1.0);
        for i in 0..l {
            // perturb the amplitudes so the iterate is never at a fixed point
            let a = f[i].norm() * (0.8 + 0.4 * rng.next());
            let unmeasured = masked && rng.next() < 0.1;
            amplitudes[p * l + i] = if unmeasured { -1.0 } else { a as f32 };
            if !unmeasured {
                sum_a2[p] += a * a;
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
        supports: Stack::from_vec(n, h, w, supports).unwrap(),
        init: InitObjects::Random { seed: rng.0 },
        constraint,
        keep_all: true,
        cancel: Default::default(),
        selection: Default::default(),
        sw_factors: Vec::new(),
    }
}

/// The schedule's iterations one by one, as (algorithm, beta).
fn flat_iterations(sched: &Schedule) -> Vec<(Algorithm, Option<f32>)> {
    let mut v = Vec::new();
    for step in &sched.steps {
        if let Step::Iterate { alg, beta, count } = *step {
            for _ in 0..count {
                v.push((alg, beta));
            }
        }
    }
    v
}

/// Run the engine on the first `k` iterations of `its` (keep-all, error every iteration).
fn run_prefix(
    problem: &PhasingProblem,
    its: &[(Algorithm, Option<f32>)],
    k: usize,
    threads: usize,
) -> PhasingOutput {
    let sched = Schedule {
        text: format!("first {k} iterations"),
        steps: its[..k]
            .iter()
            .map(|&(alg, beta)| Step::Iterate {
                alg,
                beta,
                count: 1,
            })
            .collect(),
    };
    let program = Program::compile(
        &sched,
        0.9,
        &ShrinkwrapConfig::default(),
        Recording::Every(1),
    )
    .unwrap();
    CpuBackend::new(Some(threads))
        .unwrap()
        .run_phasing(problem, &program, &|_| {})
        .unwrap()
}

fn to64(x: &[Complex32]) -> Vec<Complex64> {
    x.iter()
        .map(|c| Complex64::new(c.re as f64, c.im as f64))
        .collect()
}

/// Every iteration of the engine against the float64 reference iteration applied to the
/// engine's own previous iterate: relative error < 1e-5 at each of the schedule's
/// iterations, for every pattern and start, plus the recorded Fourier and real-space errors
/// and the final Fourier error. (Comparing whole runs instead would also measure the
/// conditioning of HIO from a random start: where |F| of an iterate passes near zero, the
/// phase, and so float32 rounding, is amplified, and a few random problems in a hundred
/// drift past 1e-5 after four HIO iterations in float32 and float64 alike.)
fn check_against_reference(
    schedule: &str,
    n: usize,
    h: usize,
    w: usize,
    starts: usize,
    masked: bool,
    c: Constraint,
) {
    let mut rng = Lcg::new(schedule);
    let problem = random_problem(&mut rng, n, h, w, starts, masked, c);
    let its = flat_iterations(&Schedule::parse(schedule).unwrap());
    let l = h * w;
    // engine states after 0, 1, .., K iterations (item-major, native order)
    let mut states: Vec<Vec<Complex32>> = Vec::new();
    let mut start = vec![Complex32::new(0.0, 0.0); n * starts * l];
    let mut sups = vec![0u8; n * starts * l];
    for p in 0..n {
        for s in 0..starts {
            let i = p * starts + s;
            problem.initial_state(
                p,
                s,
                &mut start[i * l..(i + 1) * l],
                &mut sups[i * l..(i + 1) * l],
            );
        }
    }
    states.push(start);
    let mut outs = Vec::new();
    for k in 1..=its.len() {
        let out = run_prefix(&problem, &its, k, 2);
        states.push(out.all_objects.clone().unwrap());
        outs.push(out);
    }
    for (k, &(alg, beta)) in its.iter().enumerate() {
        let out = &outs[k];
        for p in 0..n {
            let amp = problem.amplitude(p);
            for s in 0..starts {
                let item = p * starts + s;
                let sup = &sups[item * l..(item + 1) * l];
                let mut g = to64(&states[k][item * l..(item + 1) * l]);
                let got = &states[k + 1][item * l..(item + 1) * l];
                let (e, re, allowance, pnorm) = ref_iterate(
                    &mut g,
                    amp,
                    sup,
                    h,
                    w,
                    alg,
                    beta.unwrap_or(0.9) as f64,
                    c,
                    got,
                );
                let err = rel_err(got, &g);
                let norm = g.iter().map(|v| v.norm_sqr()).sum::<f64>().sqrt();
                let tol = 1e-5 + allowance / norm;
                assert!(
                    err < tol,
                    "{schedule} {h}x{w} iteration {} pattern {p} start {s} {c:?}: relative error {err:e} (tolerance {tol:e})",
                    k + 1
                );
                // the error recorded at this iteration is the error of its input
                let fe = (e / problem.sum_a2[p]).sqrt();
                let got_fe = out.fourier_error[(item + 1) * out.records - 1] as f64;
                assert!(
                    (got_fe - fe).abs() <= 1e-5 * fe.max(1e-3),
                    "history {got_fe} vs {fe}"
                );
                // |P_M g outside| / |P_M g| moves by at most 2 |delta P_M g| / |P_M g|
                let got_re = out.real_error[(item + 1) * out.records - 1] as f64;
                assert!(
                    (got_re - re).abs() <= 1e-5 + 2.0 * allowance / pnorm,
                    "real-space error {got_re} vs {re}"
                );
                // final Fourier error = error of the output object, computed independently
                let f = dft2(&to64(got), h, w, -1.0);
                let fe: f64 = f
                    .iter()
                    .zip(amp)
                    .filter(|(_, &a)| a >= 0.0)
                    .map(|(c, &a)| (c.norm() - a as f64).powi(2))
                    .sum();
                let fe = (fe / problem.sum_a2[p]).sqrt();
                let got_fe = out.final_fourier_error[item] as f64;
                assert!(
                    (got_fe - fe).abs() <= 1e-5 * fe.max(1e-3),
                    "final error {got_fe} vs {fe}"
                );
            }
        }
    }
    // the full run's history is the per-iteration histories side by side
    let full = outs.last().unwrap();
    for (k, out) in outs.iter().enumerate() {
        for item in 0..n * starts {
            assert_eq!(
                full.fourier_error[item * full.records + k],
                out.fourier_error[(item + 1) * out.records - 1]
            );
        }
    }
}

#[test]
fn hio_matches_float64_reference_odd_nonsquare() {
    check_against_reference("4*HIO", 3, 15, 22, 2, false, Constraint::None);
}

#[test]
fn er_matches_float64_reference_prime_sizes_masked() {
    check_against_reference("3*ER", 2, 17, 13, 1, true, Constraint::None);
}

#[test]
fn raar_matches_float64_reference_with_beta_override() {
    check_against_reference("2*RAAR + 2*RAAR(0.75)", 1, 11, 9, 3, true, Constraint::None);
}

#[test]
fn mixed_schedule_real_and_positive_constraints() {
    check_against_reference("2*HIO + ER + RAAR", 2, 12, 19, 1, true, Constraint::Real);
    check_against_reference("3*HIO + 2*ER", 5, 9, 16, 2, false, Constraint::Positive);
}

#[test]
fn batch_one_at_128_and_many_small() {
    check_against_reference("2*HIO + ER", 1, 128, 128, 1, true, Constraint::None);
    check_against_reference("HIO + ER", 257, 8, 7, 1, false, Constraint::Positive);
}

fn random_c32(rng: &mut Lcg, n: usize) -> Vec<Complex32> {
    (0..n)
        .map(|_| Complex32::new(rng.next() as f32 - 0.5, rng.next() as f32 - 0.5))
        .collect()
}

#[test]
fn modulus_projection_is_idempotent_and_respects_the_mask() {
    let mut rng = Lcg::new("idempotence");
    let (h, w) = (23, 10);
    let l = h * w;
    let plan = Plan2d::new(h, w);
    let mut scratch = plan.scratch();
    let g = random_c32(&mut rng, l);
    let amp: Vec<f32> = (0..l)
        .map(|_| {
            if rng.next() < 0.2 {
                -1.0
            } else {
                rng.next() as f32 * 3.0
            }
        })
        .collect();
    let project = |x: &[Complex32],
                   scratch: &mut cdiphase::fft::Scratch|
     -> (Vec<Complex32>, Vec<Complex32>) {
        let mut f = x.to_vec();
        plan.forward(&mut f, scratch);
        let before = f.clone();
        modulus_project(&mut f, &amp, 1.0);
        let after = f.clone();
        plan.inverse(&mut f, scratch);
        let _ = before;
        (f, after)
    };
    let (p1, f1) = project(&g, &mut scratch);
    let (p2, _) = project(&p1, &mut scratch);
    let num: f32 = p1.iter().zip(&p2).map(|(a, b)| (a - b).norm_sqr()).sum();
    let den: f32 = p1.iter().map(|a| a.norm_sqr()).sum();
    assert!(
        (num / den).sqrt() < 1e-5,
        "P_M P_M != P_M: {}",
        (num / den).sqrt()
    );
    // measured pixels have the target modulus; unmeasured keep the computed value
    let mut fg = g.clone();
    plan.forward(&mut fg, &mut scratch);
    for i in 0..l {
        if amp[i] >= 0.0 {
            assert!(
                (f1[i].norm() - amp[i]).abs() <= 1e-5 * amp[i].max(1.0),
                "pixel {i}"
            );
            // phase kept
            if amp[i] > 1e-3 {
                let d = (f1[i] / fg[i]).arg();
                assert!(d.abs() < 1e-4, "phase changed at {i}");
            }
        } else {
            assert_eq!(f1[i], fg[i], "unmeasured pixel {i} changed");
        }
    }
}

#[test]
fn parseval_and_fft_pair_against_naive_dft() {
    let mut rng = Lcg::new("parseval");
    for &(h, w) in &[(31usize, 7usize), (128, 128), (1, 5), (64, 96)] {
        let plan = Plan2d::new(h, w);
        let mut scratch = plan.scratch();
        let g = random_c32(&mut rng, h * w);
        let mut f = g.clone();
        plan.forward(&mut f, &mut scratch);
        let e_real: f64 = g.iter().map(|c| c.norm_sqr() as f64).sum();
        let e_four: f64 = f.iter().map(|c| c.norm_sqr() as f64).sum::<f64>() / (h * w) as f64;
        assert!(
            ((e_real - e_four) / e_real).abs() < 1e-5,
            "Parseval {h}x{w}"
        );
        if h * w <= 4096 {
            let g64: Vec<Complex64> = g
                .iter()
                .map(|c| Complex64::new(c.re as f64, c.im as f64))
                .collect();
            let r = dft2(&g64, h, w, -1.0);
            assert!(rel_err(&f, &r) < 1e-5, "forward FFT vs DFT {h}x{w}");
        }
        plan.inverse(&mut f, &mut scratch);
        let e: f64 = rel_err(
            &f,
            &g.iter()
                .map(|c| Complex64::new(c.re as f64, c.im as f64))
                .collect::<Vec<_>>(),
        );
        assert!(e < 1e-5, "inverse(forward) {h}x{w}: {e}");
    }
}

/// Shrinkwrap against a float64 periodic blur + threshold written here.
#[test]
fn shrinkwrap_matches_float64_reference() {
    let mut rng = Lcg::new("shrinkwrap");
    let (h, w) = (19, 26);
    let l = h * w;
    let mut problem = random_problem(&mut rng, 1, h, w, 1, false, Constraint::None);
    problem.supports = Stack::from_vec(
        1,
        h,
        w,
        cdiphase::support::native::circle_support(h, w, 6.0),
    )
    .unwrap();
    let backend = CpuBackend::new(Some(1)).unwrap();
    let run = |text: &str, sw: &ShrinkwrapConfig| {
        let program = Program::compile(
            &Schedule::parse(text).unwrap(),
            0.9,
            sw,
            Recording::EndOfErSections,
        )
        .unwrap();
        backend.run_phasing(&problem, &program, &|_| {}).unwrap()
    };
    // the object shrinkwrap will see (shrinkwrap does not change the object)
    let before = run("3*HIO", &ShrinkwrapConfig::default());
    let g = &before.objects.data;
    let sigma = 1.5f64;
    let r = (4.0 * sigma).ceil() as i64;
    let k: Vec<f64> = (-r..=r)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let ks: f64 = k.iter().sum();
    let mut blur = vec![0.0f64; l];
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let mut acc = 0.0;
            for (j, kj) in k.iter().enumerate() {
                for (i, ki) in k.iter().enumerate() {
                    let yy = (y + j as i64 - r).rem_euclid(h as i64) as usize;
                    let xx = (x + i as i64 - r).rem_euclid(w as i64) as usize;
                    acc += kj * ki * g[yy * w + xx].norm() as f64;
                }
            }
            blur[y as usize * w + x as usize] = acc / (ks * ks);
        }
    }
    let max = blur.iter().cloned().fold(0.0, f64::max);
    // a threshold that keeps about half the pixels, so the comparison is never vacuous
    let mut sorted = blur.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let threshold = (sorted[l / 2] / max) as f32;
    let sw = ShrinkwrapConfig::parse(&format!("sigma=1.5,threshold={threshold}")).unwrap();
    let out = run("3*HIO + SW", &sw);
    assert_eq!(out.objects.data, before.objects.data);
    let t = threshold as f64 * max;
    let mut differ = 0;
    let mut kept = 0;
    for i in 0..l {
        let want = blur[i] >= t;
        kept += want as usize;
        // pixels within float rounding of the threshold may go either way
        if (blur[i] - t).abs() > 1e-5 * max && want != (out.supports.data[i] != 0) {
            differ += 1;
        }
    }
    assert_eq!(differ, 0);
    assert!(kept > l / 4 && kept < l, "kept {kept} of {l}");
}

/// With fewer items than threads, every thread works on the same item (column and row
/// blocks shared out). The result must be bit-identical to one thread doing it all: same
/// object, support, histories and final error, whatever the number of lanes.
#[test]
fn lanes_give_bit_identical_results() {
    let mut rng = Lcg::new("lanes");
    for &(h, w) in &[(37usize, 29usize), (64, 64)] {
        let problem = random_problem(&mut rng, 1, h, w, 1, true, Constraint::None);
        let sched = Schedule::parse("5*HIO + SW + 3*RAAR + 2*ER + SW + 4*HIO").unwrap();
        let sw = ShrinkwrapConfig::parse("sigma=1,threshold=0.3").unwrap();
        let program = Program::compile(&sched, 0.9, &sw, Recording::Every(2)).unwrap();
        let run = |threads| {
            CpuBackend::new(Some(threads))
                .unwrap()
                .run_phasing(&problem, &program, &|_| {})
                .unwrap()
        };
        let one = run(1);
        assert!(one
            .objects
            .data
            .iter()
            .all(|c| c.re.is_finite() && c.im.is_finite()));
        for threads in [2, 3, 4] {
            let many = run(threads);
            assert_eq!(
                one.objects.data, many.objects.data,
                "{h}x{w}, {threads} lanes"
            );
            assert_eq!(one.supports.data, many.supports.data);
            assert_eq!(one.fourier_error, many.fourier_error);
            assert_eq!(one.real_error, many.real_error);
            assert_eq!(one.final_fourier_error, many.final_fourier_error);
        }
    }
}

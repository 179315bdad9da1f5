//! The missing centre (issue 19, `--missing-centre`, `src/phasing/missing.rs`): damped masked
//! pixels in one iteration of both engines (the CPU engine and the emulated CUDA kernels)
//! against a float64 reference; the band-limited interpolation of a masked centre against
//! the true intensities; the segmented runs of `free-after` and `damp`/`interpolate` with
//! the amplitudes switched at the right iteration.

mod common;

use cdiphase::array::{Complex32, Stack};
use cdiphase::backend::cpu::CpuBackend;
use cdiphase::backend::gpu::emu::{EmuBackend, ScheduleOrder};
use cdiphase::backend::PhasingOps;
use cdiphase::fft::Plan2d;
use cdiphase::phasing::missing::{interpolate, is_masked, MissingCentre};
use cdiphase::phasing::population::{run_segmented, Strategy};
use cdiphase::phasing::problem::{encode_free, encode_masked, InitObjects, PhasingProblem};
use cdiphase::phasing::program::{Constraint, Program, Recording, ShrinkwrapConfig};
use cdiphase::phasing::schedule::Schedule;
use common::phasing::{problem, Data};
use common::refs::dft2;
use common::Lcg;
use num_complex::Complex64;

fn program(schedule: &str) -> Program {
    Program::compile(
        &Schedule::parse(schedule).unwrap(),
        0.9,
        &ShrinkwrapConfig::default(),
        Recording::EndOfErSections,
    )
    .unwrap()
}

/// A compact positive object around the origin (native order): an ellipse of random
/// radii filled with 0.5..1.5.
fn compact(rng: &mut Lcg, h: usize, w: usize, size: f64) -> Vec<Complex64> {
    let ry = h as f64 * size * (0.8 + 0.4 * rng.next());
    let rx = w as f64 * size * (0.8 + 0.4 * rng.next());
    (0..h * w)
        .map(|i| {
            let (y, x) = (i / w, i % w);
            let dy = y.min(h - y) as f64 / ry;
            let dx = x.min(w - x) as f64 / rx;
            if dy * dy + dx * dx < 1.0 {
                Complex64::new(0.5 + rng.next(), 0.0)
            } else {
                Complex64::new(0.0, 0.0)
            }
        })
        .collect()
}

/// Is native pixel i within `r` pixels of the zero frequency?
fn central(i: usize, h: usize, w: usize, r: f64) -> bool {
    let (y, x) = (i / w, i % w);
    let dy = y.min(h - y) as f64;
    let dx = x.min(w - x) as f64;
    dy * dy + dx * dx <= r * r
}

/// One ER iteration (no constraint) with masked pixels of several weights, held-out and
/// plain unmeasured pixels, from a given object, on the CPU engine and the emulated
/// kernels, against float64: F = DFT(g); measured pixels get their amplitude, a masked
/// pixel of weight w becomes w F, the others keep F; g' = IDFT inside the support.
#[test]
fn damped_masked_pixels_in_one_iteration_of_both_engines_against_float64() {
    let mut rng = Lcg::new("missing-damp-er");
    let cpu = CpuBackend::new(Some(2)).unwrap();
    let emu = EmuBackend::new(ScheduleOrder::InOrder);
    for (n, h, w) in [(2usize, 29usize, 22usize), (1, 16, 33)] {
        let l = h * w;
        let mut d = Data {
            amplitudes: vec![0.0; n * l],
            supports: vec![0; n * l],
            sum_a2: vec![0.0; n],
            measured: vec![0; n],
        };
        let mut weights = vec![1.0f64; n * l];
        let mut objects = vec![Complex32::new(0.0, 0.0); n * l];
        for p in 0..n {
            for i in 0..l {
                let j = p * l + i;
                objects[j] = Complex32::new(rng.next() as f32 - 0.3, rng.next() as f32 - 0.5);
                d.supports[j] = (rng.next() < 0.6) as u8;
                let u = rng.next();
                d.amplitudes[j] = if central(i, h, w, 3.5) {
                    // the masked centre, each pixel its own weight in [0, 1]
                    weights[j] = (rng.next() * 8.0).floor() / 7.0;
                    encode_masked(weights[j] as f32)
                } else if u < 0.05 {
                    -1.0
                } else if u < 0.1 {
                    encode_free(3.0 * rng.next() as f32)
                } else {
                    let a = 5.0 * rng.next() as f32;
                    d.sum_a2[p] += (a as f64) * (a as f64);
                    d.measured[p] += 1;
                    a
                };
            }
        }
        let supports = d.supports.clone();
        let amplitudes = d.amplitudes.clone();
        let mut pb: PhasingProblem = problem(&mut rng, (n, h, w, 1), d, Constraint::None);
        pb.init = InitObjects::Given {
            objects: Stack::from_vec(n, h, w, objects.clone()).unwrap(),
            noise: 0.0,
            seed: 0,
        };
        let prog = program("1*ER");
        for (name, be) in [
            ("cpu", &cpu as &dyn PhasingOps),
            ("emu", &emu as &dyn PhasingOps),
        ] {
            let out = be.run_phasing(&pb, &prog, &|_| {}).unwrap();
            let got = out.all_objects.unwrap();
            for p in 0..n {
                let g: Vec<Complex64> = objects[p * l..(p + 1) * l]
                    .iter()
                    .map(|c| Complex64::new(c.re as f64, c.im as f64))
                    .collect();
                let mut f = dft2(&g, h, w, -1.0);
                for (i, c) in f.iter_mut().enumerate() {
                    let a = amplitudes[p * l + i];
                    if a >= 0.0 {
                        *c *= a as f64 / c.norm();
                    } else {
                        *c *= weights[p * l + i];
                    }
                }
                let back = dft2(&f, h, w, 1.0);
                let (mut num, mut den) = (0.0f64, 0.0f64);
                for i in 0..l {
                    let want = if supports[p * l + i] != 0 {
                        back[i] / l as f64
                    } else {
                        Complex64::new(0.0, 0.0)
                    };
                    let c = got[p * l + i];
                    num += (Complex64::new(c.re as f64, c.im as f64) - want).norm_sqr();
                    den += want.norm_sqr();
                }
                let rel = (num / den).sqrt();
                assert!(
                    rel < 2e-6,
                    "{name} {h}x{w} pattern {p}: relative error {rel:.2e} against float64"
                );
            }
        }
    }
}

/// The interpolation fills a masked centre of a compact object's pattern from the measured
/// intensities: against the true intensities (float64 DFT) the filled values agree to
/// 1e-3 where a zero fill is 100 % off, for all but at most [`MAX_MISSES`] of 24 random
/// objects at awkward sizes and beamstop radii (before session 26 about 1 in 5 of the
/// 47x71 cases came out 0.3-0.95 off: the support estimate covered the whole field,
/// NOTES.md "The missing centre and culling"); held-out pixels are left as they are.
/// Fills (of 24) allowed off the truth. Measured over 151 fresh seeds (3,624 fills):
/// 6 missed, all 64x64 with r = 3 (five ~0.9 off: the fill stayed at its start; one
/// 4.8e-3), never 2 in one run; a rate of 1.7e-3 per fill makes 3 misses in 24 a 1e-5
/// event, while a broken fill misses all 24.
const MAX_MISSES: usize = 2;

#[test]
fn interpolation_recovers_a_masked_centre() {
    let mut rng = Lcg::new("missing-interpolate");
    let cases = [(60usize, 52usize, 2.5f64), (64, 64, 3.0), (47, 71, 3.5)];
    let (mut total, mut misses) = (0usize, Vec::new());
    for ((h, w, r), held_out) in cases.into_iter().flat_map(|c| [(c, false), (c, true)]) {
        let l = h * w;
        let plan = Plan2d::<f64>::new(h, w);
        for object in 0..if held_out { 1 } else { 8 } {
            let obj = compact(&mut rng, h, w, 0.12);
            let f = dft2(&obj, h, w, -1.0);
            let truth: Vec<f64> = f.iter().map(|c| c.norm_sqr()).collect();
            let a: Vec<f32> = (0..l)
                .map(|i| {
                    if central(i, h, w, r) {
                        -1.0
                    } else if held_out && i % 37 == 5 {
                        encode_free(truth[i].sqrt() as f32)
                    } else {
                        truth[i].sqrt() as f32
                    }
                })
                .collect();
            let filled = interpolate(&a, h, w, &plan).unwrap();
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for i in 0..l {
                if is_masked(a[i]) {
                    let v = (filled[i] as f64).powi(2);
                    num += (v - truth[i]).powi(2);
                    den += truth[i].powi(2);
                    assert!(filled[i] >= 0.0 && filled[i].is_finite());
                } else {
                    assert_eq!(filled[i], a[i], "a measured pixel changed");
                }
            }
            let rel = (num / den).sqrt();
            // held-out pixels (1 in 37) enter as their neighbours' mean, not their data:
            // the fill is then only finite (`phase` refuses interpolate with held-out pixels)
            if held_out {
                assert!(rel.is_finite(), "{h}x{w}: {rel}");
            } else {
                total += 1;
                if rel >= 1e-3 {
                    misses.push(format!("{h}x{w} r={r} object {object}: {rel:.2e} off"));
                }
            }
        }
    }
    eprintln!(
        "interpolation: {} of {total} fills off the truth {misses:?}",
        misses.len()
    );
    assert!(
        misses.len() <= MAX_MISSES,
        "{} of {total} fills off the truth: {misses:?}",
        misses.len()
    );
}

/// `free-after:ITER` runs the first ITER iterations with the masked pixels held at zero
/// (stored as weight 0) and the rest with them free: the same as two runs chained by hand
/// with those amplitudes; `damp:0,until=ITER` is the same run; and holding them changes
/// the result (against `free`).
#[test]
fn free_after_switches_the_amplitudes_at_its_iteration() {
    let mut rng = Lcg::new("missing-free-after");
    let cpu = CpuBackend::new(Some(2)).unwrap();
    let (n, h, w, k) = (2usize, 30usize, 26usize, 2usize);
    let l = h * w;
    let mut pb = common::phasing::disc_problem(&mut rng, n, h, w, k);
    for p in 0..n {
        for i in 0..l {
            if central(i, h, w, 2.0) {
                let a = &mut pb.amplitudes[p * l + i];
                pb.sum_a2[p] -= (*a as f64).powi(2);
                pb.measured[p] -= 1;
                *a = -1.0;
            }
        }
    }
    let prog = program("40*HIO + 20*ER");
    let st = |mc| Strategy {
        missing_centre: mc,
        ..Default::default()
    };
    let (fa, _) = run_segmented(
        &cpu,
        &pb,
        &prog,
        &st(MissingCentre::FreeAfter { until: 25 }),
        3,
        &|_| {},
    )
    .unwrap();
    let (dz, _) = run_segmented(
        &cpu,
        &pb,
        &prog,
        &st(MissingCentre::Damp {
            weight: 0.0,
            until: Some(25),
        }),
        3,
        &|_| {},
    )
    .unwrap();
    assert_eq!(fa.all_objects, dz.all_objects);
    // by hand: 25 HIO with the centre held, then 15 HIO + 20 ER free, every item its own
    // pattern as the segmented runner runs them
    let items = n * k;
    let mut g = vec![Complex32::new(0.0, 0.0); items * l];
    let mut s = vec![0u8; items * l];
    for i in 0..items {
        pb.initial_state(
            i / k,
            i % k,
            &mut g[i * l..(i + 1) * l],
            &mut s[i * l..(i + 1) * l],
        );
    }
    let sub = |amp: &dyn Fn(f32) -> f32, g: &[Complex32], s: &[u8]| -> PhasingProblem {
        let mut amplitudes = Vec::with_capacity(items * l);
        for i in 0..items {
            amplitudes.extend(pb.amplitude(i / k).iter().map(|&a| amp(a)));
        }
        PhasingProblem {
            n: items,
            starts: 1,
            amplitudes,
            sum_a2: (0..items).map(|i| pb.sum_a2[i / k]).collect(),
            measured: (0..items).map(|i| pb.measured[i / k]).collect(),
            supports: Stack::from_vec(items, h, w, s.to_vec()).unwrap(),
            init: InitObjects::Given {
                objects: Stack::from_vec(items, h, w, g.to_vec()).unwrap(),
                noise: 0.0,
                seed: 0,
            },
            keep_all: false,
            ..pb.clone()
        }
    };
    let held = |a: f32| if a == -1.0 { encode_masked(0.0) } else { a };
    let first = cpu
        .run_phasing(&sub(&held, &g, &s), &program("25*HIO"), &|_| {})
        .unwrap();
    let second = cpu
        .run_phasing(
            &sub(&|a| a, &first.objects.data, &first.supports.data),
            &program("15*HIO + 20*ER"),
            &|_| {},
        )
        .unwrap();
    assert_eq!(fa.all_objects.as_ref().unwrap(), &second.objects.data);
    assert_eq!(fa.final_fourier_error, second.final_fourier_error);
    let (free, _) = run_segmented(&cpu, &pb, &prog, &st(MissingCentre::Free), 3, &|_| {}).unwrap();
    let diff = common::refs::rel_c(
        fa.all_objects.as_ref().unwrap(),
        free.all_objects.as_ref().unwrap(),
    );
    assert!(
        diff > 1e-3,
        "holding the centre changed nothing ({diff:.1e})"
    );
}

/// `interpolate:ITER` holds the filled amplitudes as measured until ITER (the first
/// segment's error counts them), then frees them; `damp:W` without `until` damps the whole
/// run. Both finish with finite objects and figures of merit against the real data.
#[test]
fn interpolate_and_damp_run_to_the_end() {
    let mut rng = Lcg::new("missing-interp-run");
    let cpu = CpuBackend::new(Some(2)).unwrap();
    let (n, h, w, k) = (2usize, 36usize, 28usize, 2usize);
    let l = h * w;
    let mut pb = common::phasing::disc_problem(&mut rng, n, h, w, k);
    for p in 0..n {
        for i in 0..l {
            if central(i, h, w, 2.5) {
                let a = &mut pb.amplitudes[p * l + i];
                pb.sum_a2[p] -= (*a as f64).powi(2);
                pb.measured[p] -= 1;
                *a = -1.0;
            }
        }
    }
    let prog = program("30*HIO + 20*ER");
    for mc in [
        MissingCentre::Interpolate { until: 30 },
        MissingCentre::Damp {
            weight: 0.5,
            until: None,
        },
    ] {
        let st = Strategy {
            missing_centre: mc,
            ..Default::default()
        };
        let (out, _) = run_segmented(&cpu, &pb, &prog, &st, 5, &|_| {}).unwrap();
        assert!(out
            .all_objects
            .unwrap()
            .iter()
            .all(|c| c.re.is_finite() && c.im.is_finite()));
        assert!(
            out.final_fourier_error
                .iter()
                .all(|e| e.is_finite() && *e < 1.0),
            "{mc:?}"
        );
        assert!(out.final_llk.iter().all(|e| e.is_finite()), "{mc:?}");
    }
}

//! Issue 19, part 1 and 2: the Poisson figures of merit (log-likelihood, free log-likelihood
//! over held-out pixels) against float64 references on fresh random inputs at awkward
//! sizes, on the CPU engine and the emulated GPU kernels; held-out pixels float (the
//! modulus constraint leaves them alone); the best start chosen by each criterion, with
//! starts whose support blew up or collapsed filtered.

mod common;

use cdiphase::array::Complex32;
use cdiphase::backend::cpu::CpuBackend;
use cdiphase::backend::gpu::emu::{EmuBackend, ScheduleOrder};
use cdiphase::backend::PhasingOps;
use cdiphase::phasing::hold_out;
use cdiphase::phasing::problem::{
    decode_free, Criterion, FinalMerit, PhasingOutput, PhasingProblem, Selection,
};
use cdiphase::phasing::program::{Constraint, Program, Recording, ShrinkwrapConfig};
use cdiphase::phasing::schedule::Schedule;
use common::refs::dft2;
use common::Lcg;
use num_complex::Complex64;

/// A random compact object per pattern and noisy amplitudes of it (so that the likelihood
/// is far from zero and every branch is taken): some pixels masked (-1), some of zero
/// intensity, `free` of the rest held out in Friedel pairs.
fn problem(
    rng: &mut Lcg,
    n: usize,
    h: usize,
    w: usize,
    starts: usize,
    free: f32,
) -> PhasingProblem {
    let l = h * w;
    let mut amplitudes = vec![0.0f32; n * l];
    let mut supports = vec![0u8; n * l];
    let mut sum_a2 = vec![0.0; n];
    let mut measured = vec![0; n];
    for p in 0..n {
        for i in 0..l {
            let (y, x) = (i / w, i % w);
            let near = |c: usize, m: usize| c.min(m - c) as f64 <= (m as f64 * 0.3).max(1.0);
            supports[p * l + i] = (near(y, h) && near(x, w)) as u8;
        }
        let obj: Vec<Complex64> = (0..l)
            .map(|i| {
                if supports[p * l + i] != 0 {
                    Complex64::new(rng.next() * 10.0, 0.0)
                } else {
                    Complex64::new(0.0, 0.0)
                }
            })
            .collect();
        let f = dft2(&obj, h, w, -1.0);
        for i in 0..l {
            let r = rng.next();
            amplitudes[p * l + i] = if r < 0.05 {
                -1.0
            } else if r < 0.08 {
                0.0
            } else {
                (f[i].norm() * (0.7 + 0.6 * rng.next())) as f32
            };
        }
        let seed = (rng.next() * 1e12) as u64;
        hold_out(&mut amplitudes[p * l..(p + 1) * l], h, w, free, seed, p);
        for &a in amplitudes[p * l..(p + 1) * l].iter().filter(|&&a| a >= 0.0) {
            sum_a2[p] += (a as f64) * (a as f64);
            measured[p] += 1;
        }
    }
    common::phasing::problem(
        rng,
        (n, h, w, starts),
        common::phasing::Data {
            amplitudes,
            supports,
            sum_a2,
            measured,
        },
        Constraint::None,
    )
}

/// The definition in float64: mean over the measured pixels and over the held-out pixels of
/// Ic - Io - Io ln(Ic/Io) (Ic when Io = 0), Ic = |DFT(g)|^2 floored at 1e-20, Io = A^2.
fn llk_ref(g: &[Complex32], amp: &[f32], h: usize, w: usize) -> (f64, f64) {
    let x: Vec<Complex64> = g
        .iter()
        .map(|c| Complex64::new(c.re as f64, c.im as f64))
        .collect();
    let f = dft2(&x, h, w, -1.0);
    let term = |ic: f64, a: f64| {
        let io = a * a;
        let ic = ic.max(1e-20);
        if io == 0.0 {
            ic
        } else {
            ic - io - io * (ic / io).ln()
        }
    };
    let (mut sm, mut nm, mut sf, mut nf) = (0.0, 0usize, 0.0, 0usize);
    for (c, &a) in f.iter().zip(amp) {
        if a >= 0.0 {
            sm += term(c.norm_sqr(), a as f64);
            nm += 1;
        } else if let Some(af) = decode_free(a) {
            sf += term(c.norm_sqr(), af as f64);
            nf += 1;
        }
    }
    let mean = |s: f64, c: usize| if c > 0 { s / c as f64 } else { f64::NAN };
    (mean(sm, nm), mean(sf, nf))
}

fn program(schedule: &str, sw: Option<&str>, recording: Recording) -> Program {
    let sw = sw
        .map(|s| ShrinkwrapConfig::parse(s).unwrap())
        .unwrap_or_default();
    Program::compile(&Schedule::parse(schedule).unwrap(), 0.9, &sw, recording).unwrap()
}

fn close(got: f32, want: f64, tol: f64, what: &str) {
    if want.is_nan() {
        assert!(got.is_nan(), "{what}: {got}, expected NaN");
        return;
    }
    let e = (got as f64 - want).abs() / want.abs().max(1e-12);
    assert!(e < tol, "{what}: {got} against {want} (relative {e:.2e})");
}

/// The recorded log-likelihoods of the start and the final ones of the result, on both
/// engines, against float64 at awkward sizes (odd, prime, one row, one item with several
/// threads on it), with masked, zero-intensity and held-out pixels.
#[test]
fn likelihoods_match_float64_references() {
    let mut rng = Lcg::new("merits-llk");
    let cpu = CpuBackend::new(Some(2)).unwrap();
    let emu = EmuBackend::new(ScheduleOrder::Random(3));
    let backends: [(&str, &dyn PhasingOps); 2] = [("cpu", &cpu), ("emu", &emu)];
    let mut worst = 0.0f64;
    for (n, h, w, k, free) in [
        (1, 13, 7, 2, 0.1),
        (2, 31, 20, 3, 0.05),
        (1, 1, 9, 2, 0.0),
        (1, 24, 37, 1, 0.1),
        (3, 17, 17, 2, 0.2),
    ] {
        let pb = problem(&mut rng, n, h, w, k, free);
        let prog = program("2*HIO", None, Recording::Every(1));
        let l = h * w;
        for (name, be) in backends {
            let out = be.run_phasing(&pb, &prog, &|_| {}).unwrap();
            let all = out.all_objects.as_ref().unwrap();
            for p in 0..n {
                for s in 0..k {
                    let i = p * k + s;
                    let tag = format!("{name} {h}x{w} p{p} s{s}");
                    let mut g0 = vec![Complex32::new(0.0, 0.0); l];
                    let mut s0 = vec![0u8; l];
                    pb.initial_state(p, s, &mut g0, &mut s0);
                    let (m0, f0) = llk_ref(&g0, pb.amplitude(p), h, w);
                    close(out.llk[i * 2], m0, 1e-4, &format!("{tag} llk of the start"));
                    close(
                        out.free_llk[i * 2],
                        f0,
                        1e-4,
                        &format!("{tag} free llk of the start"),
                    );
                    let (m1, f1) = llk_ref(&all[i * l..(i + 1) * l], pb.amplitude(p), h, w);
                    close(out.final_llk[i], m1, 1e-4, &format!("{tag} final llk"));
                    close(
                        out.final_free_llk[i],
                        f1,
                        1e-4,
                        &format!("{tag} final free llk"),
                    );
                    for (g, r) in [(out.llk[i * 2], m0), (out.final_llk[i], m1)] {
                        worst = worst.max((g as f64 - r).abs() / r.abs());
                    }
                    // the support fraction of the result
                    let sup = &out.all_supports.as_ref().unwrap()[i * l..(i + 1) * l];
                    let frac = sup.iter().filter(|&&v| v != 0).count() as f32 / l as f32;
                    assert_eq!(out.final_support_fraction[i], frac, "{tag}");
                }
            }
        }
    }
    eprintln!("worst relative error of the log-likelihoods: {worst:.2e}");
}

/// A held-out pixel floats: the run is the same, bit for bit, as with that pixel unmeasured
/// (-1), and only the free log-likelihood sees it.
#[test]
fn held_out_pixels_are_free_of_the_modulus_constraint() {
    let mut rng = Lcg::new("merits-free");
    let cpu = CpuBackend::new(Some(2)).unwrap();
    let emu = EmuBackend::new(ScheduleOrder::InOrder);
    let held = problem(&mut rng, 2, 19, 22, 2, 0.1);
    let mut masked = held.clone();
    for a in masked.amplitudes.iter_mut() {
        if decode_free(*a).is_some() {
            *a = -1.0;
        }
    }
    let n_free = held
        .amplitudes
        .iter()
        .filter(|&&a| decode_free(a).is_some())
        .count();
    assert!(n_free > 20, "{n_free} held-out pixels");
    let prog = program(
        "3*(4*HIO + 2*ER)",
        Some("sigma=1,threshold=0.1,every=4"),
        Recording::Every(2),
    );
    for be in [&cpu as &dyn PhasingOps, &emu] {
        let a = be.run_phasing(&held, &prog, &|_| {}).unwrap();
        let b = be.run_phasing(&masked, &prog, &|_| {}).unwrap();
        assert_eq!(a.all_objects, b.all_objects);
        assert_eq!(a.fourier_error, b.fourier_error);
        assert_eq!(a.llk, b.llk);
        assert!(a.free_llk.iter().all(|v| v.is_finite() && *v > 0.0));
        assert!(b.free_llk.iter().all(|v| v.is_nan()));
    }
}

/// Held-out pixels: about the fraction asked for, in Friedel pairs, never the zero
/// frequency or an unmeasured pixel, the same for the same (seed, pattern).
#[test]
fn hold_out_draws_friedel_pairs() {
    let (h, w) = (64, 50);
    let mut rng = Lcg::new("merits-holdout");
    let base: Vec<f32> = (0..h * w)
        .map(|_| {
            if rng.next() < 0.1 {
                -1.0
            } else {
                rng.next() as f32
            }
        })
        .collect();
    let mut a = base.clone();
    hold_out(&mut a, h, w, 0.05, 9, 3);
    let mut b = base.clone();
    hold_out(&mut b, h, w, 0.05, 9, 3);
    assert_eq!(a, b);
    let mut c = base.clone();
    hold_out(&mut c, h, w, 0.05, 9, 4);
    assert_ne!(a, c, "another pattern holds out other pixels");
    let measured = base.iter().filter(|&&v| v >= 0.0).count();
    let free: Vec<usize> = (0..h * w)
        .filter(|&i| decode_free(a[i]).is_some())
        .collect();
    let share = free.len() as f64 / measured as f64;
    assert!((0.03..0.07).contains(&share), "held out {share}");
    assert!(decode_free(a[0]).is_none());
    for &i in &free {
        let (y, x) = (i / w, i % w);
        let j = ((h - y) % h) * w + (w - x) % w;
        assert!(
            decode_free(a[j]).is_some(),
            "pixel {i} held out without its mate {j}"
        );
        // the stored -(A + 2) rounds A to the f32 spacing at A + 2 (absolute <= 2.4e-7 below
        // A = 2, exact relative rounding above)
        let back = decode_free(a[i]).unwrap();
        assert!(
            (back - base[i]).abs() <= 2.4e-7f32.max(2.4e-7 * base[i]),
            "{back} {}",
            base[i]
        );
        assert!(base[i] >= 0.0);
    }
    for i in 0..h * w {
        if decode_free(a[i]).is_none() {
            assert_eq!(a[i], base[i]);
        }
    }
}

/// The index of the lowest value among the admissible starts of pattern p (all if none).
fn argmin(out: &PhasingOutput, sel: &Selection, p: usize, k: usize, crit: Criterion) -> usize {
    let merits: Vec<FinalMerit> = (0..k).map(|s| out.final_merit(p * k + s)).collect();
    let value = |m: &FinalMerit| match crit {
        Criterion::Fourier => m.fourier,
        Criterion::Llk => m.llk,
        Criterion::FreeLlk => m.free_llk,
    };
    let any = merits.iter().any(|m| sel.admissible(m));
    let mut best: Option<usize> = None;
    for (s, m) in merits.iter().enumerate() {
        if any && !sel.admissible(m) {
            continue;
        }
        if best.is_none_or(|b| value(m) < value(&merits[b])) {
            best = Some(s);
        }
    }
    best.unwrap()
}

/// Every criterion picks the start it names, on both engines; the object returned is that
/// start's; starts outside the support-fraction limits are passed over.
#[test]
fn selection_by_each_criterion() {
    let mut rng = Lcg::new("merits-select");
    let cpu = CpuBackend::new(Some(2)).unwrap();
    let emu = EmuBackend::new(ScheduleOrder::Reverse);
    let (n, h, w, k) = (4, 24, 26, 5);
    let base = problem(&mut rng, n, h, w, k, 0.08);
    let prog = program(
        "4*(5*HIO + 3*ER)",
        Some("sigma=1,threshold=0.08:0.2,every=5"),
        Recording::EndOfErSections,
    );
    let l = h * w;
    let mut differs = 0;
    for be in [&cpu as &dyn PhasingOps, &emu] {
        let mut picks = Vec::new();
        for crit in [Criterion::Fourier, Criterion::Llk, Criterion::FreeLlk] {
            let sel = Selection {
                criterion: crit,
                min_fraction: 0.0,
                max_fraction: 1.0,
            };
            let pb = PhasingProblem {
                selection: sel,
                ..base.clone()
            };
            let out = be.run_phasing(&pb, &prog, &|_| {}).unwrap();
            for p in 0..n {
                let want = argmin(&out, &sel, p, k, crit);
                assert_eq!(out.best_start[p], want, "{crit:?} pattern {p}");
                let i = p * k + want;
                assert_eq!(
                    out.objects.image(p),
                    &out.all_objects.as_ref().unwrap()[i * l..(i + 1) * l]
                );
            }
            picks.push(out.best_start.clone());
            // filter: a maximum support fraction just below the pick of a pattern that has
            // a start with a smaller support, so that at least that pick must change (a
            // median cut left every pick admissible on some seeds); every pick must be
            // admissible and the best of those
            let fr = &out.final_support_fraction;
            let pick = |p: usize| fr[p * k + out.best_start[p]];
            let max_fraction = (0..n)
                .filter(|&p| (0..k).any(|s| fr[p * k + s] < pick(p)))
                .map(pick)
                .fold(f32::NAN, f32::max)
                .next_down();
            let cut = Selection {
                criterion: crit,
                min_fraction: 0.0,
                max_fraction: if max_fraction.is_nan() {
                    1.0
                } else {
                    max_fraction
                },
            };
            let pb = PhasingProblem {
                selection: cut,
                ..base.clone()
            };
            let out2 = be.run_phasing(&pb, &prog, &|_| {}).unwrap();
            for p in 0..n {
                let want = argmin(&out2, &cut, p, k, crit);
                assert_eq!(out2.best_start[p], want, "{crit:?} filtered, pattern {p}");
                differs += (out2.best_start[p] != out.best_start[p]) as usize;
            }
        }
        // the criteria are different figures: over 4 patterns x 5 starts they disagree
        // somewhere (else this test could not tell them apart)
        assert!(
            picks[0] != picks[1] || picks[0] != picks[2],
            "every criterion picked {:?}",
            picks[0]
        );
    }
    assert!(differs > 0, "the support filter never changed a pick");
}

/// The CLI: `--select free-llk` holds out 5 % by default and writes every figure of merit;
/// the best start's final values are those of the start it names; bad values are clear
/// errors.
#[test]
fn cli_writes_the_figures_of_merit() {
    use common::cli::{fails, ok};
    use std::path::Path;
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("sim.cxi");
    let out = dir.path().join("rec.cxi");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    ok(&[
        "simulate",
        "--synthetic",
        "compact",
        "--count",
        "2",
        "--size",
        "32",
        "--photons",
        "1e6",
        "--noise",
        "poisson",
        "--mask",
        "beamstop:1",
        "--seed",
        "3",
        "-o",
        &s(&sim),
        "--quiet",
    ]);
    ok(&[
        "phase",
        &s(&sim),
        "-o",
        &s(&out),
        "--algorithm",
        "10*(8*HIO + 2*ER)",
        "--shrinkwrap",
        "sigma=1,threshold=0.1,every=20",
        "--starts",
        "3",
        "--select",
        "free-llk",
        "--seed",
        "2",
        "--quiet",
    ]);
    let read = |e: &str| cdiphase::io::read_f32(&out, e).unwrap();
    let (shape, all_free) = read("entry_1/image_1/all_final_free_llk");
    assert_eq!(shape, vec![2, 3]);
    let (_, best) = read("entry_1/image_1/best_start");
    let (_, fin) = read("entry_1/image_1/final_free_llk");
    for p in 0..2 {
        let b = best[p] as usize;
        assert_eq!(fin[p], all_free[p * 3 + b]);
        assert!(all_free[p * 3..p * 3 + 3]
            .iter()
            .all(|v| v.is_finite() && *v >= fin[p]));
    }
    for (e, cols) in [
        ("entry_1/image_1/llk", 10),
        ("entry_1/image_1/free_llk", 10),
        ("entry_1/image_1/outside_energy", 10),
        ("entry_1/image_1/all_llk", 10),
        ("entry_1/image_1/all_final_support_fraction", 3),
    ] {
        let (shape, v) = read(e);
        assert_eq!(*shape.last().unwrap(), cols, "{e}");
        assert!(v.iter().all(|x| x.is_finite()), "{e}");
    }
    let cfg = cdiphase::io::read_string(&out, "entry_1/image_1/process_1/configuration").unwrap();
    assert!(cfg.contains("\"free_fraction\": 0.05"), "{cfg}");
    let e = fails(&["phase", &s(&sim), "-o", &s(&out), "--select", "best"]);
    assert!(e.contains("free-llk"), "{e}");
    let e = fails(&["phase", &s(&sim), "-o", &s(&out), "--free-fraction", "0.9"]);
    assert!(e.contains("free-fraction"), "{e}");
    let e = fails(&[
        "phase",
        &s(&sim),
        "-o",
        &s(&out),
        "--support-fraction",
        "0.5:0.1",
    ]);
    assert!(e.contains("support fraction"), "{e}");
    let e = fails(&[
        "phase",
        &s(&sim),
        "-o",
        &s(&out),
        "--select",
        "free-llk",
        "--free-fraction",
        "0",
    ]);
    assert!(e.contains("held-out"), "{e}");
}

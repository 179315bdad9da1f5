//! Breeding and merging on the device (`cd_pop_*` kernels, `backend::gpu::population`)
//! under the emulator, against the host's float64 alignment, recombination and merge
//! (`phasing::merge`, `phasing::population::merge_starts`), at awkward sizes, with one and
//! nine pairs or groups, in every schedule order.
//!
//! Tolerances: the kernels compute in f32 (float64 finishes of their block sums), the host
//! in float64 from the same f32 inputs, so images agree to a few f32 roundings (1e-6
//! relative; modes, a sum over the stack weighted by eigenvectors of a Gram matrix summed
//! in f32 blocks, 1e-4); the discrete choices (shift, twin, majority support) must be the
//! same: the test objects have clear cross-correlation maxima.

mod common;

use cdiphase::array::Complex32;
use cdiphase::backend::gpu::emu::{EmuBackend, EmuLauncher, ScheduleOrder};
use cdiphase::backend::gpu::population::DevStack;
use cdiphase::backend::PhasingOps;
use cdiphase::phasing::merge::{self, Aligner};
use cdiphase::phasing::population;
use cdiphase::phasing::problem::FinalMerit;
use cdiphase::phasing::program::Constraint;
use common::refs::rel_c;
use common::Lcg;
use num_complex::Complex64;
use std::f64::consts::{PI, TAU};

/// A random complex blob (radius ~0.3 of the field, random centre) and its support.
fn blob(rng: &mut Lcg, h: usize, w: usize) -> (Vec<Complex32>, Vec<u8>) {
    let (cy, cx) = (rng.next() * h as f64, rng.next() * w as f64);
    let (ry, rx) = (
        h as f64 * (0.2 + 0.1 * rng.next()),
        w as f64 * (0.2 + 0.1 * rng.next()),
    );
    let mut o = vec![Complex32::new(0.0, 0.0); h * w];
    let mut s = vec![0u8; h * w];
    for y in 0..h {
        for x in 0..w {
            let dy = ((y as f64 - cy + 1.5 * h as f64) % h as f64 - h as f64 / 2.0) / ry;
            let dx = ((x as f64 - cx + 1.5 * w as f64) % w as f64 - w as f64 / 2.0) / rx;
            let d = dy * dy + dx * dx;
            if d < 1.3 {
                s[y * w + x] = 1;
            }
            if d < 1.0 {
                o[y * w + x] = Complex32::new((0.3 + rng.next()) as f32, (rng.next() - 0.5) as f32);
            }
        }
    }
    (o, s)
}

/// `a` moved by a random shift, maybe twinned, rotated by a random phase, plus noise of
/// relative size `noise` (so the pair is not an exact copy): the image to align onto `a`.
fn transformed(
    rng: &mut Lcg,
    a: &[Complex32],
    s: &[u8],
    h: usize,
    w: usize,
    noise: f64,
) -> (Vec<Complex32>, Vec<u8>) {
    let twin = rng.next() < 0.5;
    let (sy, sx) = (
        (rng.next() * h as f64) as usize,
        (rng.next() * w as f64) as usize,
    );
    let ph = Complex64::from_polar(1.0, TAU * rng.next() - PI);
    let a64 = merge::to_c64(a);
    let t = if twin { merge::twin(&a64, h, w) } else { a64 };
    let st: Vec<u8> = if twin {
        (0..h * w)
            .map(|i| s[((h - i / w) % h) * w + (w - i % w) % w])
            .collect()
    } else {
        s.to_vec()
    };
    let b = merge::shift(&t, h, w, sy, sx)
        .into_iter()
        .map(|v| {
            let v = v * ph;
            if v.norm() > 0.0 {
                v + Complex64::new(rng.next() - 0.5, rng.next() - 0.5) * noise
            } else {
                v
            }
        })
        .map(|v| Complex32::new(v.re as f32, v.im as f32))
        .collect();
    (b, merge::shift(&st, h, w, sy, sx))
}

fn c32(v: &[Complex64]) -> Vec<Complex32> {
    v.iter()
        .map(|c| Complex32::new(c.re as f32, c.im as f32))
        .collect()
}

/// Pairs (a_p, b_p) as a stack [a_0, b_0, a_1, b_1, ...].
fn pair_stack(rng: &mut Lcg, h: usize, w: usize, pairs: usize) -> (Vec<Complex32>, Vec<u8>) {
    let (mut g, mut s) = (Vec::new(), Vec::new());
    for _ in 0..pairs {
        let (a, sa) = blob(rng, h, w);
        let (b, sb) = transformed(rng, &a, &sa, h, w, 0.05);
        g.extend_from_slice(&a);
        s.extend_from_slice(&sa);
        g.extend_from_slice(&b);
        s.extend_from_slice(&sb);
    }
    (g, s)
}

/// Alignment and the aligned images and supports agree with the float64 `Aligner`:
/// the same shift and twin, the phase to 1e-6, the images to 1e-6, the supports exactly;
/// every schedule order gives the same bits.
#[test]
fn alignment_matches_the_float64_aligner() {
    let mut rng = Lcg::new("emu-pop-align");
    for (h, w) in [(29, 22), (31, 31)] {
        for pairs in [1usize, 9] {
            let (g, s) = pair_stack(&mut rng, h, w, pairs);
            let l = h * w;
            let al = Aligner::new(h, w);
            let pa: Vec<usize> = (0..pairs).map(|p| 2 * p).collect();
            let pb: Vec<usize> = (0..pairs).map(|p| 2 * p + 1).collect();
            let mut first: Option<(Vec<Complex32>, Vec<u8>)> = None;
            for order in ScheduleOrder::ALL {
                let emu = EmuLauncher::new(order);
                let st = DevStack::upload(&emu, h, w, &g, &s, Constraint::None).unwrap();
                let a = st.align(&pa, &pb).unwrap();
                let got = a.to_host().unwrap();
                let (imgs, sups) = st.aligned_images(&a).unwrap();
                for p in 0..pairs {
                    let ra = merge::to_c64(&g[2 * p * l..(2 * p + 1) * l]);
                    let rb = merge::to_c64(&g[(2 * p + 1) * l..(2 * p + 2) * l]);
                    let want = al.align(&ra, &rb);
                    let d = got[p];
                    let tag = format!("{h}x{w} pairs {pairs} pair {p} {order:?}");
                    assert_eq!((d.dy, d.dx, d.twin), (want.dy, want.dx, want.twin), "{tag}");
                    let dp = Complex64::new(d.phase.re as f64, d.phase.im as f64) - want.phase;
                    assert!(
                        dp.norm() < 1e-6,
                        "{tag}: phase {:?} vs {:?}",
                        d.phase,
                        want.phase
                    );
                    let wi = c32(&al.apply(&rb, &want));
                    let e = rel_c(&imgs[p * l..(p + 1) * l], &wi);
                    assert!(e < 1e-6, "{tag}: aligned image differs by {e}");
                    let ws = al.apply_support(&s[(2 * p + 1) * l..(2 * p + 2) * l], &want);
                    assert_eq!(&sups[p * l..(p + 1) * l], &ws[..], "{tag}: support");
                }
                match &first {
                    None => first = Some((imgs, sups)),
                    Some(f) => assert!(f.0 == imgs && f.1 == sups, "{h}x{w}: {order:?} differs"),
                }
            }
        }
    }
}

/// The GA's children (sqrt(|a| |b'|) with a's phase) agree with the float64 formula on the
/// float64-aligned partner to 1e-6.
#[test]
fn children_match_the_float64_recombination() {
    let mut rng = Lcg::new("emu-pop-breed");
    for (h, w) in [(29, 22), (31, 31)] {
        for pairs in [1usize, 9] {
            let (g, s) = pair_stack(&mut rng, h, w, pairs);
            let l = h * w;
            let al = Aligner::new(h, w);
            let emu = EmuLauncher::new(ScheduleOrder::Random(7));
            // Real constraint: the projection inside the support is part of the gather
            let st = DevStack::upload(&emu, h, w, &g, &s, Constraint::Real).unwrap();
            let proj = st.images().unwrap();
            let pa: Vec<usize> = (0..pairs).map(|p| 2 * p).collect();
            let pb: Vec<usize> = (0..pairs).map(|p| 2 * p + 1).collect();
            let c = st.breed(&pa, &pb).unwrap();
            let mut children = vec![Complex32::new(0.0, 0.0); pairs * l];
            c.download(&mut children).unwrap();
            for p in 0..pairs {
                let x = population::projected(
                    &g[2 * p * l..(2 * p + 1) * l],
                    &s[2 * p * l..(2 * p + 1) * l],
                    Constraint::Real,
                );
                assert_eq!(&proj[2 * p * l..(2 * p + 1) * l], &x[..], "projection");
                let y = population::projected(
                    &g[(2 * p + 1) * l..(2 * p + 2) * l],
                    &s[(2 * p + 1) * l..(2 * p + 2) * l],
                    Constraint::Real,
                );
                let (a, b) = (merge::to_c64(&x), merge::to_c64(&y));
                let bb = al.apply(&b, &al.align(&a, &b));
                let want: Vec<Complex64> = a
                    .iter()
                    .zip(&bb)
                    .map(|(u, v)| {
                        let m = u.norm();
                        if m > 0.0 {
                            u / m * (m * v.norm()).sqrt()
                        } else {
                            Complex64::new(0.0, 0.0)
                        }
                    })
                    .collect();
                let e = rel_c(&children[p * l..(p + 1) * l], &c32(&want));
                assert!(
                    e < 1e-6,
                    "{h}x{w} pairs {pairs} pair {p}: child differs by {e}"
                );
            }
        }
    }
}

/// Groups of n images: one object's transformed copies (plus noise) per group. The device
/// merge agrees with the float64 `merge::merge`: average to 1e-6, majority support exactly,
/// mode weights to 1e-5, modes to 1e-4 plus 1e-6 over their eigenvalue's relative gap.
#[test]
fn merge_matches_the_float64_merge() {
    let mut rng = Lcg::new("emu-pop-merge");
    for ((h, w), groups, n) in [((29, 22), 9, 4), ((31, 31), 1, 5), ((29, 22), 2, 1)] {
        let l = h * w;
        let (mut g, mut s) = (Vec::new(), Vec::new());
        for _ in 0..groups {
            let (a, sa) = blob(&mut rng, h, w);
            g.extend_from_slice(&a);
            s.extend_from_slice(&sa);
            for _ in 1..n {
                let (b, sb) = transformed(&mut rng, &a, &sa, h, w, 0.2);
                g.extend_from_slice(&b);
                s.extend_from_slice(&sb);
            }
        }
        let al = Aligner::new(h, w);
        let modes = 3.min(n);
        let emu = EmuLauncher::new(ScheduleOrder::InOrder);
        let st = DevStack::upload(&emu, h, w, &g, &s, Constraint::None).unwrap();
        let m = st.merge(n, modes).unwrap();
        assert_eq!(m.n_modes, modes);
        for q in 0..groups {
            let objs: Vec<&[Complex32]> = (0..n)
                .map(|j| &g[(q * n + j) * l..(q * n + j + 1) * l])
                .collect();
            let sups: Vec<&[u8]> = (0..n)
                .map(|j| &s[(q * n + j) * l..(q * n + j + 1) * l])
                .collect();
            let want = merge::merge(&al, &objs, &sups, modes);
            let tag = format!("{h}x{w} group {q} of {groups}, n {n}");
            let e = rel_c(&m.objects[q * l..(q + 1) * l], &want.object);
            assert!(e < 1e-6, "{tag}: average differs by {e}");
            assert_eq!(&m.supports[q * l..(q + 1) * l], &want.support[..], "{tag}");
            for i in 0..modes {
                let dw = (m.weights[q * modes + i] - want.weights[i]).abs();
                assert!(dw < 1e-5, "{tag}: weight {i} differs by {dw}");
                let e = rel_c(
                    &m.modes[(q * modes + i) * l..(q * modes + i + 1) * l],
                    &want.modes[i * l..(i + 1) * l],
                );
                // an eigenvector moves by ~rounding / (its eigenvalue's gap to the
                // neighbours, relative to the largest) (Davis-Kahan): near-degenerate
                // trailing modes (gaps of 3e-5 here) mix in f32. Over 150 fresh seeds
                // (4,793 modes) e x gap stayed below 5.2e-8; the bound leaves 20x.
                let w = &want.weights;
                let gap = [i.wrapping_sub(1), i + 1]
                    .iter()
                    .filter(|&&j| j < w.len())
                    .map(|&j| (w[i] - w[j]).abs() as f64)
                    .fold(f64::INFINITY, f64::min)
                    / (w[0] as f64).max(f64::MIN_POSITIVE);
                let tol = 1e-4 + 1e-6 / gap;
                assert!(
                    e < tol,
                    "{tag}: mode {i} differs by {e} (gap {gap:.2e}, bound {tol:.2e})"
                );
            }
        }
    }
}

/// The GPU backends' `--merge` (`PhasingOps::merge_starts`) gives the host's merge: the same
/// starts, average and support, merits of the merged object; and it moves only the merged
/// starts to the device (counted by the emulator).
#[test]
fn backend_merge_matches_the_host_merge() {
    let mut rng = Lcg::new("emu-pop-backend");
    let (n, k, h, w) = (3usize, 5usize, 29usize, 22usize);
    let l = h * w;
    let mut pb = common::phasing::disc_problem(&mut rng, n, h, w, k);
    pb.constraint = Constraint::None;
    let (mut g, mut s) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let (a, sa) = blob(&mut rng, h, w);
        for _ in 0..k {
            let (b, sb) = transformed(&mut rng, &a, &sa, h, w, 0.2);
            g.extend_from_slice(&b);
            s.extend_from_slice(&sb);
        }
    }
    let merits: Vec<FinalMerit> = (0..n * k)
        .map(|_| FinalMerit {
            fourier: rng.next() as f32,
            llk: rng.next() as f32,
            free_llk: f32::NAN,
            support_fraction: 0.2,
        })
        .collect();
    let count = 3;
    let want = population::merge_starts(&pb, &g, &s, &merits, count);
    let emu = EmuBackend::new(ScheduleOrder::Reverse);
    let before = emu.launcher().transfers();
    let got = emu.merge_starts(&pb, &g, &s, &merits, count).unwrap();
    let moved = emu.launcher().transfers() - before;
    assert_eq!(got.starts, want.starts);
    assert_eq!((got.count, got.modes), (want.count, want.modes));
    let e = rel_c(&got.objects, &want.objects);
    assert!(e < 1e-6, "average differs by {e}");
    assert_eq!(got.supports, want.supports);
    for p in 0..n {
        let d = (got.fourier_error[p] - want.fourier_error[p]).abs();
        assert!(
            d < 1e-5 * want.fourier_error[p].max(1e-3),
            "pattern {p}: merit {d}"
        );
    }
    // up: the merged starts (objects and supports) and index lists; down: the merge
    let up_images = (n * count * l * 9) as u64;
    assert!(
        moved.upload_bytes >= up_images && moved.upload_bytes < up_images + 4096,
        "{moved:?}"
    );
    eprintln!(
        "device merge of {n} patterns x {count} of {k} starts of {h}x{w}: {moved:?} (the {} bytes of all starts stay on the host)",
        n * k * l * 9
    );
}

/// The host<->device copies of `--merge` and of a `--population` run on the emulated GPU
/// (what a GPU moves over its bus), counted by the emulator and printed for BENCHMARKS.md:
/// the merge moves only the merged starts up and the merge down; a population run keeps
/// the state on the device across its checkpoints (`gpu::segmented`): the state up once
/// and, with the merge, every start down once (tests/emu_breeding.rs compares it with the
/// host path's round trip per checkpoint).
#[test]
fn transfers_of_merge_and_population_runs() {
    use cdiphase::phasing::population::{PopulationConfig, Strategy};
    use cdiphase::phasing::program::{Program, Recording, ShrinkwrapConfig};
    use cdiphase::phasing::schedule::Schedule;
    let mut rng = Lcg::new("emu-pop-transfers");
    let (n, k, h, w) = (2usize, 8usize, 29usize, 22usize);
    let l = h * w;
    let mut pb = common::phasing::disc_problem(&mut rng, n, h, w, k);
    pb.keep_all = false;
    let prog = Program::compile(
        &Schedule::parse("HIO**12 + ER**8").unwrap(),
        0.9,
        &ShrinkwrapConfig::parse("sigma=1,threshold=0.1,every=5").unwrap(),
        Recording::Every(10),
    )
    .unwrap();
    let emu = EmuBackend::new(ScheduleOrder::InOrder);
    let count = |st: &Strategy| {
        let t0 = emu.launcher().transfers();
        cdiphase::phasing::run_strategy(&emu, &pb, &prog, st, 3, &|_| {}).unwrap();
        emu.launcher().transfers() - t0
    };
    let plain = count(&Strategy::default());
    let merge = Strategy {
        merge: 4,
        ..Default::default()
    };
    let merged = count(&merge);
    let pop = Strategy {
        population: Some(PopulationConfig {
            generations: 2,
            keep: 4,
            every: None,
        }),
        merge: 4,
        ..Default::default()
    };
    let bred = count(&pop);
    let state = (n * k * l * 9) as u64; // every item's iterate (8 B) and support (1 B)
    let merged_up = (n * 4 * l * 9) as u64;
    eprintln!("transfers, {n} patterns x {k} starts of {h}x{w} (state of all items {state} B):");
    eprintln!("  plain run:                 {plain:?}");
    eprintln!("  --merge 4:                 {merged:?}");
    eprintln!("  --population g=2 + merge:  {bred:?}");
    // the merge adds the merged starts up, the merge (object, support, Gram, modes) down
    let extra = merged - plain;
    assert!(extra.upload_bytes >= merged_up && extra.upload_bytes < merged_up + 8192);
    assert!(extra.download_bytes >= (n * l * 9) as u64);
    // three segments, the state resident: up once, down once (the merge wants every start)
    assert!(bred.upload_bytes >= state && bred.upload_bytes < state + merged_up + 16384);
    assert!(bred.download_bytes >= state && bred.download_bytes < 2 * state);
}

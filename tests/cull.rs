//! Keep-the-best-N culling (issue 19, `--cull at=ITER,keep=N`): the starts that stop are
//! the worst by the selection criterion at ITER (checked against the run stopped there and
//! float64 merits), the survivors run on exactly as without culling (same cuts), the
//! stopped ones cost no iterations after ITER and are never chosen or merged; the CLI
//! writes `all_culled_at` and refuses bad settings.

mod common;

use cdiphase::backend::cpu::CpuBackend;
use cdiphase::backend::PhasingOps;
use cdiphase::fft::Plan2d;
use cdiphase::phasing::population::{
    host_merit, projected, run_segmented, split_program, CullConfig, PopulationConfig,
    RestartConfig, Strategy,
};
use cdiphase::phasing::problem::Criterion;
use cdiphase::phasing::program::{Program, Recording, ShrinkwrapConfig};
use cdiphase::phasing::schedule::Schedule;
use common::cli::{bin, fails, ok};
use common::files::{p, simulate};
use common::phasing::disc_problem;
use common::Lcg;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn program(schedule: &str, sw: &str) -> Program {
    Program::compile(
        &Schedule::parse(schedule).unwrap(),
        0.9,
        &ShrinkwrapConfig::parse(sw).unwrap(),
        Recording::Every(10),
    )
    .unwrap()
}

#[test]
fn cull_stops_the_worst_starts_and_the_rest_run_on_unchanged() {
    let mut rng = Lcg::new("cull");
    let cpu = CpuBackend::new(Some(2)).unwrap();
    let (n, h, w, k, keep, at) = (3usize, 26usize, 21usize, 5usize, 2usize, 30u64);
    let l = h * w;
    for criterion in [Criterion::Fourier, Criterion::Llk] {
        let mut pb = disc_problem(&mut rng, n, h, w, k);
        pb.selection.criterion = criterion;
        let sw = "sigma=1,threshold=0.1,every=10,stop=60";
        let prog = program("HIO**40 + ER**30", sw);
        let st = Strategy {
            cull: Some(CullConfig { at, keep }),
            merge: keep,
            ..Default::default()
        };
        let done = AtomicU64::new(0);
        let (out, log) = run_segmented(&cpu, &pb, &prog, &st, 9, &|d| {
            done.fetch_add(d, Ordering::Relaxed);
        })
        .unwrap();
        // the time saved: the stopped starts ran `at` iterations, the others all 70
        assert_eq!(
            done.load(Ordering::Relaxed),
            (n * k) as u64 * at + (n * keep) as u64 * (prog.iterations - at)
        );
        // the reference: the same starts run to `at` (the cull run's first segment, its
        // shrinkwrap at `at` included), their merits measured in float64 on the support-projected objects
        let first = cpu
            .run_phasing(&pb, &split_program(&prog, &[at])[0], &|_| {})
            .unwrap();
        let (g0, s0) = (
            first.all_objects.as_ref().unwrap(),
            first.all_supports.as_ref().unwrap(),
        );
        let plan = Plan2d::new(h, w);
        for pt in 0..n {
            let mut keys: Vec<((bool, f32, usize), usize)> = (0..k)
                .map(|s| {
                    let i = pt * k + s;
                    let (o, sp) = (&g0[i * l..(i + 1) * l], &s0[i * l..(i + 1) * l]);
                    let m = host_merit(&pb, &plan, pt, &projected(o, sp, pb.constraint), sp);
                    (pb.selection.key(&m, s), s)
                })
                .collect();
            keys.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            let mut survivors: Vec<usize> = keys[..keep].iter().map(|x| x.1).collect();
            survivors.sort_unstable();
            let got: Vec<usize> = (0..k).filter(|&s| log.culled_at[pt * k + s] == 0).collect();
            assert_eq!(got, survivors, "{criterion:?} pattern {pt}");
            for s in 0..k {
                let i = pt * k + s;
                let stopped = log.culled_at[i] > 0;
                assert!(!stopped || log.culled_at[i] == at);
                // histories: NaN after the cull for a stopped start, numbers otherwise
                let hist = &out.fourier_error[i * prog.records..(i + 1) * prog.records];
                assert_eq!(hist.len(), 7);
                assert!(hist[..3].iter().all(|v| v.is_finite()));
                assert!(hist[3..].iter().all(|v| v.is_nan() == stopped), "{hist:?}");
                if stopped {
                    // its object is the state at the cull (to the rounding of the
                    // segmented runner's start from given objects)
                    let a = &out.all_objects.as_ref().unwrap()[i * l..(i + 1) * l];
                    let d = common::refs::rel_c(a, &g0[i * l..(i + 1) * l]);
                    assert!(
                        d < 1e-5,
                        "stopped start {i}: {d:.1e} from the state at the cull"
                    );
                    assert!(out.final_fourier_error[i].is_finite());
                }
            }
            assert!(survivors.contains(&out.best_start[pt]));
        }
        // the survivors ran on as in a run cut at the same iteration without culling
        let same_cuts = Strategy {
            restart: Some(
                RestartConfig::parse(&format!("guard=1000,every={at},until={at}")).unwrap(),
            ),
            ..Default::default()
        };
        let (plain, _) = run_segmented(&cpu, &pb, &prog, &same_cuts, 9, &|_| {}).unwrap();
        for i in (0..n * k).filter(|&i| log.culled_at[i] == 0) {
            let (a, b) = (
                &out.all_objects.as_ref().unwrap()[i * l..(i + 1) * l],
                &plain.all_objects.as_ref().unwrap()[i * l..(i + 1) * l],
            );
            assert_eq!(a, b, "survivor {i}");
            assert_eq!(out.final_llk[i], plain.final_llk[i]);
        }
    }
}

/// `--cull` with `--population`: at the shared checkpoint the cull comes first, so the
/// stopped starts neither breed nor are replaced, then or later; the generations rank and
/// replace the survivors only (elites unchanged, the others children of two survivors);
/// the stopped starts keep their state at the cull and cost no later iterations; the best
/// start and the merge come from the survivors.
#[test]
fn cull_with_a_population_breeds_among_the_survivors_only() {
    let mut rng = Lcg::new("cull-population");
    let cpu = CpuBackend::new(Some(2)).unwrap();
    let (n, h, w, k) = (3usize, 23usize, 27usize, 6usize);
    let l = h * w;
    let (at, cull_keep, pop_keep) = (20u64, 4usize, 2usize);
    let mut pb = disc_problem(&mut rng, n, h, w, k);
    pb.selection.criterion = Criterion::Llk;
    let prog = program("HIO**50 + ER**20", "sigma=1,threshold=0.1,every=10,stop=60");
    let st = Strategy {
        cull: Some(CullConfig {
            at,
            keep: cull_keep,
        }),
        // generations at 20 (with the cull) and 40 (survivors only)
        population: Some(PopulationConfig {
            generations: 2,
            keep: pop_keep,
            every: Some(20),
        }),
        merge: 3,
        ..Default::default()
    };
    let done = AtomicU64::new(0);
    let (out, log) = run_segmented(&cpu, &pb, &prog, &st, 5, &|d| {
        done.fetch_add(d, Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(
        done.load(Ordering::Relaxed),
        (n * k) as u64 * at + (n * cull_keep) as u64 * (prog.iterations - at)
    );
    // the state at the cull: the first segment of the same cuts, from the same start
    let first = cpu
        .run_phasing(&pb, &split_program(&prog, &[at, 40])[0], &|_| {})
        .unwrap();
    let g0 = first.all_objects.as_ref().unwrap();
    let all = out.all_objects.as_ref().unwrap();
    for pt in 0..n {
        let stopped: Vec<usize> = (0..k).filter(|&s| log.culled_at[pt * k + s] > 0).collect();
        assert_eq!(stopped.len(), k - cull_keep, "pattern {pt}");
        for &s in &stopped {
            let i = pt * k + s;
            assert_eq!(log.culled_at[i], at);
            assert_eq!(log.replaced[i], 0, "stopped start {i} was replaced");
            let d = common::refs::rel_c(&all[i * l..(i + 1) * l], &g0[i * l..(i + 1) * l]);
            assert!(
                d < 1e-5,
                "stopped start {i}: {d:.1e} from its state at the cull"
            );
        }
        // two generations of survivors: each replaces cull_keep - pop_keep of them
        let replaced: u32 = (0..k).map(|s| log.replaced[pt * k + s]).sum();
        assert_eq!(
            replaced as usize,
            2 * (cull_keep - pop_keep),
            "pattern {pt}"
        );
        assert!(!stopped.contains(&out.best_start[pt]));
        // the per-generation best is a survivor's figure: finite
        for g in 0..2 {
            assert!(log.generation_best[pt * 2 + g].is_finite());
        }
    }
    // the merge (through the strategy runner) takes survivors only
    let rec = cdiphase::phasing::run_strategy(&cpu, &pb, &prog, &st, 5, &|_| {}).unwrap();
    let merged = rec.merits.as_ref().unwrap().merged.as_ref().unwrap();
    for pt in 0..n {
        for &s in &merged.starts[pt * 3..(pt + 1) * 3] {
            assert_eq!(
                log.culled_at[pt * k + s as usize],
                0,
                "pattern {pt}: merged a stopped start {s}"
            );
        }
    }
}

/// A block-wise `phase --cull --population --merge` killed after its first finished block
/// and resumed writes the same file, byte for byte, as the uninterrupted run; a resume with
/// another `--cull` is refused.
#[test]
fn cull_runs_resume_to_the_same_file() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let sim = simulate(dir, "sim.cxi", 8, 32);
    let args = |out: &std::path::Path, cull: &'static str, extra: &[&'static str]| {
        let mut v: Vec<String> = [
            "phase",
            p(&sim),
            "-o",
            p(out),
            "-q",
            "--algorithm",
            "HIO**300 + ER**100",
            "--starts",
            "6",
            "--cull",
            cull,
            "--population",
            "generations=2,keep=2,every=150",
            "--merge",
            "3",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--block",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let full = dir.join("full.cxi");
    let a = args(&full, "at=100,keep=3", &[]);
    ok(&strs(&a));
    let want = std::fs::read(&full).unwrap();
    let (shape, c) = cdiphase::io::read_f32(&full, "entry_1/image_1/all_culled_at").unwrap();
    assert_eq!(shape, vec![8, 6]);
    assert_eq!(c.iter().filter(|&&v| v == 100.0).count(), 8 * 3);
    let out = dir.join("out.cxi");
    let journal = dir.join(".out.cxi.cdiphase-journal");
    let mut killed_mid_run = false;
    for _attempt in 0..5 {
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(&journal);
        let mut child = bin()
            .args(args(&out, "at=100,keep=3", &[]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        // kill as soon as the journal lists a finished block (after its 2 header lines)
        let mut finished = false;
        loop {
            if child.try_wait().unwrap().is_some() {
                finished = true;
                break;
            }
            let blocks = std::fs::read_to_string(&journal)
                .map(|s| s.lines().count().saturating_sub(2))
                .unwrap_or(0);
            if blocks >= 1 || t.elapsed() > Duration::from_secs(120) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if !finished {
            let pid = libc::pid_t::try_from(child.id()).unwrap();
            // SAFETY: kill only sends a signal to our own child process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            child.wait().unwrap();
            let blocks = std::fs::read_to_string(&journal)
                .map(|s| s.lines().count().saturating_sub(2))
                .unwrap_or(0);
            if (1..4).contains(&blocks) {
                killed_mid_run = true;
                break;
            }
        }
    }
    assert!(killed_mid_run, "no kill left 1..3 of 4 blocks to resume");
    // another --cull is a different run: refused, and the partial output is kept
    let other = args(&out, "at=100,keep=4", &["--resume"]);
    let e = fails(&strs(&other));
    assert!(e.contains("cull"), "{e}");
    let resume = args(&out, "at=100,keep=3", &["--resume"]);
    ok(&strs(&resume));
    assert!(
        std::fs::read(&out).unwrap() == want,
        "the resumed file differs from the uninterrupted one"
    );
}

#[test]
fn cull_settings_are_checked() {
    assert_eq!(
        CullConfig::parse("at=300,keep=4").unwrap(),
        CullConfig { at: 300, keep: 4 }
    );
    for bad in [
        "at=300",
        "keep=4",
        "at=0,keep=2",
        "at=10,keep=0",
        "at=x,keep=2",
        "at=10,keep=2,every=3",
    ] {
        assert!(CullConfig::parse(bad).is_err(), "{bad}");
    }
    let st = |keep, merge| Strategy {
        cull: Some(CullConfig { at: 10, keep }),
        merge,
        ..Default::default()
    };
    assert!(cdiphase::phasing::check_strategy(&st(2, 2), 4, 100).is_ok());
    assert!(cdiphase::phasing::check_strategy(&st(4, 0), 4, 100).is_err());
    assert!(cdiphase::phasing::check_strategy(&st(2, 3), 4, 100).is_err());
    assert!(cdiphase::phasing::check_strategy(&st(2, 0), 4, 10).is_err());
}

/// Through the CLI: `all_culled_at` in the output, the merge of survivors only, and clear
/// refusals.
#[test]
fn phase_cull_on_the_command_line() {
    let dir = std::env::temp_dir().join(format!("cdiphase-cull-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = simulate(&dir, "d.cxi", 2, 32);
    let out = dir.join("r.cxi");
    ok(&[
        "phase",
        p(&data),
        "-o",
        p(&out),
        "--algorithm",
        "HIO**40+ER**20",
        "--starts",
        "4",
        "--cull",
        "at=20,keep=2",
        "--merge",
        "2",
        "--missing-centre",
        "damp:0.5,until=30",
        "--quiet",
    ]);
    let (shape, c) = cdiphase::io::read_f32(&out, "entry_1/image_1/all_culled_at").unwrap();
    assert_eq!(shape, vec![2, 4]);
    assert_eq!(c.iter().filter(|&&v| v == 20.0).count(), 4);
    assert_eq!(c.iter().filter(|&&v| v == 0.0).count(), 4);
    for (args, msg) in [
        (vec!["--cull", "at=20,keep=4"], "keep fewer than --starts"),
        (
            vec!["--cull", "at=20,keep=1"],
            "more than the 1 start(s) --cull keeps",
        ),
        (vec!["--cull", "at=60,keep=2"], "not inside the run"),
        (
            vec!["--missing-centre", "zero"],
            "expected free, free-after:ITER",
        ),
        (
            vec!["--missing-centre", "free-after:60"],
            "not inside the run",
        ),
    ] {
        let mut a = vec![
            "phase",
            p(&data),
            "-o",
            p(&out),
            "--algorithm",
            "HIO**40+ER**20",
            "--starts",
            "4",
            "--merge",
            "2",
            "--quiet",
        ];
        a.extend(args);
        let err = fails(&a);
        assert!(err.contains(msg), "{err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

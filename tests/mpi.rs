//! MPI runs (cargo feature `mpi`, issue 18): `mpirun -n K cdiphase
//! phase|predict|simulate|support` on localhost with 1, 2 and 3 ranks writes the data of the
//! one-process run, bit for bit (blocks' rows split into many MPI messages too); a run
//! killed by SIGKILL in one process is continued by `mpirun ... --resume`; a verb that does
//! not split across ranks is refused (every `support` method splits), and an error on one rank stops the job with a non-zero
//! status instead of hanging.
//!
//! Needs `mpirun` (OpenMPI: `apt-get install openmpi-bin libopenmpi-dev`); without it the
//! tests fail (they do not skip). Run with `cargo test --release --features mpi --test mpi`.
#![cfg(feature = "mpi")]

mod common;

use common::cli::{bin, ok};
use common::files::{kill_after_journal_lines, no_leftovers, p, same_data, simulate};
use common::seed;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// `mpirun -n K cdiphase ARGS` on localhost (root allowed, more ranks than cores allowed).
fn mpirun(k: usize, args: &[&str]) -> Output {
    mpirun_env(k, &[], args)
}

/// [`mpirun`] with environment variables `env` exported to every rank.
fn mpirun_env(k: usize, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new("mpirun");
    c.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-n",
        &k.to_string(),
    ]);
    for (name, value) in env {
        c.env(name, value).args(["-x", name]);
    }
    c.arg(env!("CARGO_BIN_EXE_cdiphase"))
        .args(args)
        // containers often forbid the cross-memory attach of OpenMPI's shared-memory path
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .output()
        .expect("running mpirun (install OpenMPI: apt-get install openmpi-bin libopenmpi-dev)")
}

fn mpi_ok(k: usize, args: &[&str]) -> Output {
    mpi_env_ok(k, &[], args)
}

fn mpi_env_ok(k: usize, env: &[(&str, &str)], args: &[&str]) -> Output {
    let o = mpirun_env(k, env, args);
    assert!(
        o.status.success(),
        "mpirun -n {k} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

#[test]
fn phase_on_1_2_and_3_ranks_writes_the_one_process_data() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let sim = simulate(dir, "sim.cxi", 13, 32);
    let flags = |out: &Path| -> Vec<String> {
        [
            "phase",
            p(&sim),
            "-o",
            p(out),
            "--algorithm",
            "10*(5*HIO + 5*ER)",
            "--starts",
            "3",
            "--seed",
            "11",
            "--keep-all",
            // blocks of 2: 7 blocks, more than ranks, so blocks are handed out in turns
            "--block",
            "2",
            "--threads",
            "1",
            "-q",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let one = dir.join("one.cxi");
    let a = flags(&one);
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    for k in [1, 2, 3] {
        let out = dir.join(format!("ranks{k}.cxi"));
        let a = flags(&out);
        mpi_ok(k, &a.iter().map(String::as_str).collect::<Vec<_>>());
        same_data(&one, &out, true);
        // the same flags (threads included): the configuration too, so the whole file
        assert!(
            std::fs::read(&one).unwrap() == std::fs::read(&out).unwrap(),
            "{k} ranks: the file differs from the one-process run's"
        );
    }
    // a block's rows sent in pieces of 1000 bytes (of about 60 kB): what a block of more
    // than 2 GiB, the most one MPI message carries, goes through
    let out = dir.join("pieces.cxi");
    let a = flags(&out);
    mpi_env_ok(
        3,
        &[("CDIPHASE_MPI_PIECE_BYTES", "1000")],
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(
        std::fs::read(&one).unwrap() == std::fs::read(&out).unwrap(),
        "rows sent in pieces: the file differs from the one-process run's"
    );
    let o = mpirun_env(
        2,
        &[("CDIPHASE_MPI_PIECE_BYTES", "0")],
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("CDIPHASE_MPI_PIECE_BYTES"),
        "{e}"
    );
    // refused before rank 0 opened anything (no_leftovers below)
    no_leftovers(dir);
}

#[test]
fn phase_with_a_support_and_init_per_pattern_on_1_2_and_3_ranks() {
    // each worker reads its own blocks' windows of the --support and --init files
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let (n, size) = (11, 32);
    let sim = simulate(dir, "sim.cxi", n, size);
    let mut lcg = common::Lcg::new("mpi per-pattern support init");
    let l = size * size;
    let c = size as f64 / 2.0;
    let mut sup = Vec::with_capacity(n * l);
    for _ in 0..n {
        let r = 4.0 + lcg.next() * 6.0;
        for y in 0..size {
            for x in 0..size {
                let dd = ((y as f64 - c).powi(2) + (x as f64 - c).powi(2)).sqrt();
                sup.push(f32::from(u8::from(dd <= r)));
            }
        }
    }
    let supf = dir.join("sup.npy");
    cdiphase::io::npy::write_f32(&supf, &[n, size, size], &sup).unwrap();
    let obj: Vec<num_complex::Complex32> = lcg
        .vec(n * l)
        .into_iter()
        .zip(lcg.vec(n * l))
        .map(|(a, b)| num_complex::Complex32::new(a + 1.5, b))
        .collect();
    let objf = dir.join("obj.cxi");
    let mut cw = cdiphase::io::CxiWriter::new();
    cw.set_gzip(Some(2));
    cw.complex64("entry_1/image_1/data", &[n, size, size], &obj)
        .unwrap();
    cw.finish(&objf).unwrap();
    let flags = |out: &Path| -> Vec<String> {
        [
            "phase",
            p(&sim),
            "-o",
            p(out),
            "--algorithm",
            "6*(5*HIO + 5*ER)",
            "--starts",
            "2",
            "--support",
            p(&supf),
            "--init",
            p(&objf),
            "--init-noise",
            "0.05",
            "--block",
            "2",
            "--threads",
            "1",
            "-q",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let one = dir.join("one.cxi");
    let a = flags(&one);
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    for k in [1, 2, 3] {
        let out = dir.join(format!("ranks{k}.cxi"));
        let a = flags(&out);
        mpi_ok(k, &a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            std::fs::read(&one).unwrap() == std::fs::read(&out).unwrap(),
            "{k} ranks: the file differs from the one-process run's"
        );
    }
    no_leftovers(dir);
}

#[test]
fn simulate_on_1_2_and_3_ranks_writes_the_one_process_data() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let pdb = |f: &str| format!("{}/assets/pdb/{f}", env!("CARGO_MANIFEST_DIR"));
    let s = seed("mpi simulate").to_string();
    let (a, b) = (pdb("1eteA.pdb.gz"), pdb("1bvyF.pdb.gz"));
    // synthetic particles (one per pattern) with noise and a mask; assemblies of structures
    let sources: [Vec<&str>; 2] = [
        vec![
            "--synthetic",
            "all",
            "--count",
            "11",
            "--noise",
            "poisson",
            "--photons",
            "1e6",
            "--mask",
            "beamstop:2",
        ],
        vec!["--pdb", &a, &b, "--assemblies", "2", "--count", "5"],
    ];
    for (i, src) in sources.iter().enumerate() {
        let args = |out: &Path, extra: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = ["simulate", "--size", "32", "--seed", &s, "-q", "-o", p(out)]
                .iter()
                .map(|x| x.to_string())
                .collect();
            v.extend(src.iter().chain(extra).map(|x| x.to_string()));
            v
        };
        let one = dir.join(format!("one{i}.cxi"));
        let a1 = args(&one, &[]);
        ok(&a1.iter().map(String::as_str).collect::<Vec<_>>());
        for k in [1, 2, 3] {
            // blocks of 2: more blocks than ranks
            let out = dir.join(format!("src{i}_ranks{k}.cxi"));
            let ak = args(&out, &["--block", "2", "--threads", "1"]);
            mpi_ok(k, &ak.iter().map(String::as_str).collect::<Vec<_>>());
            same_data(&one, &out, false);
            assert!(
                std::fs::read(&one).unwrap() == std::fs::read(&out).unwrap(),
                "source {i}, {k} ranks: the file differs from the one-process run's"
            );
        }
    }
}

#[test]
fn support_on_1_2_and_3_ranks_writes_the_one_process_data() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let sim = simulate(dir, "sim.cxi", 9, 32);
    // a training set for the mean image, read by rank 0 alone and sent to the workers
    let train = simulate(dir, "train.cxi", 5, 32);
    for (method, extra) in [
        ("autocorrelation", vec![]),
        ("triple-intersection", vec![]),
        // a network output's place taken by the true densities
        ("nn", vec!["--entry", "entry_1/sample_1/density"]),
        ("mean-image", vec!["--from", p(&train)]),
        ("oracle", vec!["--sigma", "1.5"]),
        ("circle", vec!["--margin", "0.5"]),
    ] {
        let args = |out: &Path| -> Vec<String> {
            let mut v: Vec<String> = [
                "support",
                p(&sim),
                "-o",
                p(out),
                "--method",
                method,
                "--block",
                "2",
                "--json",
            ]
            .iter()
            .map(|x| x.to_string())
            .collect();
            v.extend(extra.iter().map(|x| x.to_string()));
            v
        };
        let one = dir.join(format!("{method}.cxi"));
        let a1 = args(&one);
        let o1 = ok(&a1.iter().map(String::as_str).collect::<Vec<_>>());
        let mut want: serde_json::Value = serde_json::from_slice(&o1.stdout).unwrap();
        want["output"] = serde_json::Value::Null;
        for k in [1, 2, 3] {
            let out = dir.join(format!("{method}_ranks{k}.cxi"));
            let ak = args(&out);
            let o = mpi_ok(k, &ak.iter().map(String::as_str).collect::<Vec<_>>());
            // the supports (and the images or radii of the baselines) and the
            // configuration (the same: the same input)
            let (shape, _) = cdiphase::io::read_f32(&out, "entry_1/image_1/support").unwrap();
            assert_eq!(shape, [9, 32, 32]);
            assert!(
                std::fs::read(&one).unwrap() == std::fs::read(&out).unwrap(),
                "{method}, {k} ranks: the file differs from the one-process run's"
            );
            // the report: areas and triple-intersection details of every pattern
            let mut got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            got["output"] = serde_json::Value::Null;
            assert_eq!(got, want, "{method}, {k} ranks");
        }
    }
    no_leftovers(dir);
}

#[test]
fn predict_on_1_2_and_3_ranks_writes_the_one_process_data() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let sim = simulate(dir, "sim.cxi", 7, 128);
    let one = dir.join("one.cxi");
    // default threads (each rank its share of the cores): the network's data do not depend
    // on them; blocks of 2 batches of 2
    let args = |out: &Path| -> Vec<String> {
        [
            "predict",
            p(&sim),
            "-o",
            p(out),
            "--batch",
            "2",
            "--block",
            "4",
            "-q",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = args(&one);
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    for k in [1, 2, 3] {
        let out = dir.join(format!("ranks{k}.cxi"));
        let a = args(&out);
        mpi_ok(k, &a.iter().map(String::as_str).collect::<Vec<_>>());
        same_data(&one, &out, true);
    }
    no_leftovers(dir);
}

#[test]
fn a_one_process_simulate_killed_by_sigkill_is_resumed_by_three_ranks() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let out = dir.join("out.cxi");
    let flags: Vec<&str> = vec![
        "simulate",
        "--synthetic",
        "all",
        "--count",
        "400",
        "--size",
        "64",
        "--mask",
        "beamstop:3",
        "--photons",
        "1e7",
        "--noise",
        "poisson",
        "--block",
        "4",
        "--threads",
        "1",
        "-q",
        "-o",
        p(&out),
    ];
    let mut child = bin().args(&flags).spawn().unwrap();
    let (_, journal) = cdiphase::io::journal::paths(&out).unwrap();
    // killed once the journal lists 3 finished blocks of 100
    kill_after_journal_lines(&mut child, &journal, 5);
    assert!(!out.exists());
    let mut resume = flags.clone();
    resume.push("--resume");
    mpi_ok(3, &resume);
    let whole = dir.join("whole.cxi");
    let mut again = flags.clone();
    *again.last_mut().unwrap() = p(&whole);
    ok(&again);
    assert!(
        std::fs::read(&whole).unwrap() == std::fs::read(&out).unwrap(),
        "resumed by 3 ranks: the file differs from the uninterrupted one-process run's"
    );
    no_leftovers(dir);
}

#[test]
fn a_one_process_run_killed_by_sigkill_is_resumed_by_three_ranks() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let sim = simulate(dir, "sim.cxi", 24, 32);
    let out = dir.join("out.cxi");
    let flags: Vec<&str> = vec![
        "phase",
        p(&sim),
        "-o",
        p(&out),
        "--algorithm",
        "150*(5*HIO + 5*ER)",
        "--starts",
        "4",
        "--block",
        "1",
        "--threads",
        "1",
        "-q",
    ];
    let mut child = bin().args(&flags).spawn().unwrap();
    let (_, journal) = cdiphase::io::journal::paths(&out).unwrap();
    // killed once the journal lists 3 finished blocks (its first two lines are the header)
    kill_after_journal_lines(&mut child, &journal, 5);
    assert!(!out.exists());
    let mut resume = flags.clone();
    resume.extend(["--resume", "--json"]);
    resume.retain(|a| *a != "-q");
    let o = mpi_ok(3, &resume);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let resumed = report["resumed_blocks"].as_u64().unwrap();
    assert!(
        (3..24).contains(&resumed),
        "resumed {resumed} blocks: {report}"
    );
    // the uninterrupted one-process run
    let whole = dir.join("whole.cxi");
    let mut again = flags.clone();
    again[3] = p(&whole);
    ok(&again);
    same_data(&whole, &out, true);
    no_leftovers(dir);
}

#[test]
fn verbs_that_do_not_split_are_refused_and_an_error_on_a_rank_stops_the_job() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let sim = simulate(dir, "small.cxi", 6, 32);
    let out = dir.join("eval.json");
    let o = mpirun(
        2,
        &[
            "evaluate",
            "--truth",
            p(&sim),
            "--input",
            p(&sim),
            "--report",
            p(&out),
        ],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "evaluate on 2 ranks ran: {e}");
    assert!(
        e.contains("only `phase`, `predict`, `simulate` and `support`"),
        "{e}"
    );
    assert!(!out.exists());
    // every support method splits; an error of rank 0 alone, before the blocks (the
    // training set of the mean image is not (N,H,W)), stops the workers waiting for the
    // mean image too
    let flat = dir.join("flat.npy");
    cdiphase::io::npy::write_f32(&flat, &[4], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    let out = dir.join("mean.cxi");
    let t = Instant::now();
    let o = mpirun(
        3,
        &[
            "support",
            p(&sim),
            "-o",
            p(&out),
            "--method",
            "mean-image",
            "--from",
            p(&flat),
        ],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{e}");
    assert!(e.contains("flat.npy") && e.contains("MPI rank"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(60), "{e}");
    assert!(!out.exists());
    // the bundled network takes 128x128 patterns: every worker fails on its first block,
    // and the job ends (MPI_Abort) with the message instead of waiting forever
    let o = mpirun(
        3,
        &[
            "predict",
            p(&sim),
            "-o",
            p(&dir.join("pred.cxi")),
            "--block",
            "2",
            "--batch",
            "2",
            "-q",
        ],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{e}");
    assert!(e.contains("128") && e.contains("MPI rank"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

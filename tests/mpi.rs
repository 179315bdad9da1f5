//! MPI runs (cargo feature `mpi`, issue 18): `mpirun -n K cdiphase phase|predict` on
//! localhost with 1, 2 and 3 ranks writes the data of the one-process run, bit for bit; a
//! run killed by SIGKILL in one process is continued by `mpirun ... --resume`; a verb that
//! does not split across ranks is refused, and an error on one rank stops the job with a
//! non-zero status instead of hanging.
//!
//! Needs `mpirun` (OpenMPI: `apt-get install openmpi-bin libopenmpi-dev`); without it the
//! tests fail (they do not skip). Run with `cargo test --release --features mpi --test mpi`.
#![cfg(feature = "mpi")]

mod common;

use common::cli::{bin, ok};
use common::files::{p, same_data, simulate};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// `mpirun -n K cdiphase ARGS` on localhost (root allowed, more ranks than cores allowed).
fn mpirun(k: usize, args: &[&str]) -> Output {
    Command::new("mpirun")
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-n",
            &k.to_string(),
            env!("CARGO_BIN_EXE_cdiphase"),
        ])
        .args(args)
        // containers often forbid the cross-memory attach of OpenMPI's shared-memory path
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .output()
        .expect("running mpirun (install OpenMPI: apt-get install openmpi-bin libopenmpi-dev)")
}

fn mpi_ok(k: usize, args: &[&str]) -> Output {
    let o = mpirun(k, args);
    assert!(
        o.status.success(),
        "mpirun -n {k} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// No partial output or journal is left in `dir`.
fn no_leftovers(dir: &Path) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".cdiphase-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
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
    let t = Instant::now();
    loop {
        let lines = std::fs::read_to_string(&journal)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if lines >= 5 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed: make it longer"
        );
        assert!(t.elapsed() < Duration::from_secs(120), "no block finished");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
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
    let out = dir.join("sim.cxi");
    let o = mpirun(
        2,
        &[
            "simulate",
            "--synthetic",
            "all",
            "--count",
            "2",
            "--size",
            "32",
            "-o",
            p(&out),
            "-q",
        ],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "simulate on 2 ranks ran: {e}");
    assert!(e.contains("only `phase` and `predict`"), "{e}");
    assert!(!out.exists());
    // the bundled network takes 128x128 patterns: every worker fails on its first block,
    // and the job ends (MPI_Abort) with the message instead of waiting forever
    let sim = simulate(dir, "small.cxi", 6, 32);
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

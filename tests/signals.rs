//! SIGINT, SIGTERM and SIGHUP in the middle of the long verbs: the process exits with
//! 128 + the signal, removes its temporary files, and leaves an existing output intact.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".cdiphase-tmp-"))
        .collect()
}

/// Wait until `ready()` or the child ends (then panic with its output).
fn wait_until(child: &mut Child, what: &str, ready: impl Fn() -> bool) {
    let t = Instant::now();
    while !ready() {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("{what}: ended ({s}) before it could be interrupted");
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{what}: never got ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: i32) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill only sends a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

/// Start `args` in `dir`, wait for `ready`, send `sig`, and check the exit status, that no
/// temporary file is left and that `out` (which existed before) is unchanged.
fn interrupt(dir: &Path, args: &[&str], out: &str, sig: i32, ready: impl Fn() -> bool) {
    let before = std::fs::read(dir.join(out)).unwrap();
    let mut child = common::cli::bin()
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(&mut child, args[0], ready);
    signal(&child, sig);
    let o = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(128 + sig),
        "{args:?} after signal {sig}: {e}"
    );
    assert!(e.contains("stopped"), "{e}");
    assert_eq!(
        temporaries(dir),
        Vec::<String>::new(),
        "{args:?}: temporaries left"
    );
    assert_eq!(
        std::fs::read(dir.join(out)).unwrap(),
        before,
        "{args:?}: output changed"
    );
}

#[test]
fn simulate_interrupted_keeps_its_blocks_for_resume_and_the_old_output() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("out.cxi"), "an older result").unwrap();
    let args = [
        "simulate",
        "--synthetic",
        "all",
        "--count",
        "300000",
        "--size",
        "64",
        "-o",
        "out.cxi",
        "-q",
        "--threads",
        "1",
    ];
    let (partial, journal) = (
        p.join(".out.cxi.cdiphase-partial"),
        p.join(".out.cxi.cdiphase-journal"),
    );
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // interrupted once a block is finished (the journal's third line); the partial
        // output and its journal are kept for --resume, as `phase` keeps them
        interrupt(p, &args, "out.cxi", sig, || {
            std::fs::read_to_string(&journal).is_ok_and(|j| j.lines().count() >= 3)
        });
        assert!(partial.exists() && journal.exists(), "signal {sig}");
        // the next run waits for a journal of its own
        std::fs::remove_file(&partial).unwrap();
        std::fs::remove_file(&journal).unwrap();
    }
}

#[test]
fn phase_interrupted_keeps_the_old_output() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    simulate_synthetic(p, "sim.cxi", 2, 32);
    std::fs::write(p.join("out.cxi"), "an older result").unwrap();
    // a run of minutes, interrupted while it computes
    let args = [
        "phase",
        "sim.cxi",
        "-o",
        "out.cxi",
        "--algorithm",
        "100000000*ER",
        "-q",
        "--threads",
        "1",
    ];
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let t = Instant::now();
        interrupt(p, &args, "out.cxi", sig, || {
            t.elapsed() > Duration::from_millis(300)
        });
    }
}

/// `count` synthetic particles of `size` x `size` in `dir/name` (fast to make).
fn simulate_synthetic(dir: &Path, name: &str, count: usize, size: usize) {
    let o = common::cli::bin()
        .args([
            "simulate",
            "--synthetic",
            "all",
            "-o",
            name,
            "-q",
            "--threads",
            "1",
        ])
        .args(["--count", &count.to_string(), "--size", &size.to_string()])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn predict_interrupted_keeps_the_old_output() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    // about a minute of one thread: interrupted while it reads or infers
    let n = cdiphase::nn::bundled::load().unwrap().spec.input[0];
    simulate_synthetic(p, "sim.cxi", 4000, n);
    std::fs::write(p.join("out.cxi"), "an older result").unwrap();
    let args = [
        "predict",
        "sim.cxi",
        "-o",
        "out.cxi",
        "-q",
        "--threads",
        "1",
    ];
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let t = Instant::now();
        interrupt(p, &args, "out.cxi", sig, || {
            t.elapsed() > Duration::from_millis(500)
        });
    }
}

#[test]
fn demo_interrupted_leaves_no_temporary() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::create_dir(p.join("demo")).unwrap();
    // a file of the user's in the demo's folder, not one the demo writes
    std::fs::write(p.join("demo/notes.txt"), "mine").unwrap();
    let args = [
        "demo",
        "-o",
        "demo",
        "--count",
        "6",
        "--schedule",
        "100000*(5*HIO + 5*ER)",
        "-q",
        "--threads",
        "1",
    ];
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // interrupted once it phases (its patterns are written by then; the previous
        // run's network output is removed so that readiness is this run's)
        let _ = std::fs::remove_file(p.join("demo/nn.cxi"));
        interrupt(p, &args, "demo/notes.txt", sig, || {
            p.join("demo/nn.cxi").exists()
        });
        assert!(temporaries(&p.join("demo")).is_empty());
    }
}

//! Block-wise runs (`--block`) and resumed runs (`--resume`) of `phase`, `predict` and
//! `support`: the data written are those of the in-memory library functions on the whole
//! file, bit for bit, for block sizes that do not divide N (1, a few, N, more than N), and a
//! run killed at random points (SIGKILL, SIGTERM) then resumed writes the same file, byte
//! for byte, as an uninterrupted one; a resume with changed flags or input is refused.

mod common;

use common::cli::{bin, fails, ok};
use common::files::{no_leftovers, p, same_data, simulate};
use common::Lcg;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn phase_in_blocks_writes_the_in_memory_result() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let n = 13;
    let sim = simulate(dir, "sim.cxi", n, 32);
    // the in-memory reference: the library on the whole file
    let patterns = cdiphase::io::read_patterns(&sim, None).unwrap();
    let cfg = cdiphase::phasing::PhaseConfig {
        schedule: "10*(5*HIO + 5*ER)".into(),
        starts: 3,
        seed: 7,
        keep_all: true,
        ..Default::default()
    };
    let backend = cdiphase::backend::select(cdiphase::backend::Device::Cpu, Some(2)).unwrap();
    let rec = cdiphase::phasing::phase(backend.as_ref(), &patterns, &cfg, &|_| {}).unwrap();
    let reference = dir.join("reference.cxi");
    rec.write_cxi(&reference, &serde_json::json!({})).unwrap();
    let mut first: Option<Vec<u8>> = None;
    for block in [1, 4, 5, n, n + 20] {
        let out = dir.join(format!("b{block}.cxi"));
        ok(&[
            "phase",
            p(&sim),
            "-o",
            p(&out),
            "--algorithm",
            "10*(5*HIO + 5*ER)",
            "--starts",
            "3",
            "--seed",
            "7",
            "--keep-all",
            "--device",
            "cpu",
            "--block",
            &block.to_string(),
            "-q",
        ]);
        same_data(&reference, &out, true);
        // every block size writes the same bytes
        let bytes = std::fs::read(&out).unwrap();
        match &first {
            None => first = Some(bytes),
            Some(f) => assert!(
                f == &bytes,
                "block {block}: the file differs from block 1's"
            ),
        }
    }
    no_leftovers(dir);
    // a NaN in pattern 9 is reported with its index in the file, whatever the block
    let mut lcg = Lcg::new("phase nan");
    let mut v: Vec<f32> = lcg.vec(n * 16 * 16).iter().map(|x| x.abs() + 0.1).collect();
    v[9 * 256 + 17] = f32::NAN;
    let bad = dir.join("bad.npy");
    cdiphase::io::npy::write_f32(&bad, &[n, 16, 16], &v).unwrap();
    for block in ["1", "4", "100"] {
        let e = fails(&[
            "phase",
            p(&bad),
            "-o",
            p(&dir.join("x.cxi")),
            "-q",
            "--block",
            block,
        ]);
        assert!(
            e.contains("pattern 9 pixel (y=1, x=1)"),
            "block {block}: {e}"
        );
    }
    no_leftovers(dir);
}

#[test]
fn integer_patterns_with_a_mask_per_pattern_in_blocks() {
    // int64 intensities and an (N,H,W) mask: the row reader's integer conversion and its
    // per-pattern mask windows, against the whole-file reader
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let (n, h, w) = (9, 24, 20);
    let mut lcg = Lcg::new("int patterns");
    let vals: Vec<i64> = (0..n * h * w)
        .map(|_| (lcg.next() * 1000.0) as i64)
        .collect();
    let mask: Vec<u8> = (0..n * h * w)
        .map(|_| u8::from(lcg.next() < 0.05) * 3)
        .collect();
    let input = dir.join("int.cxi");
    let mut f = cdiphase::io::StreamWriter::create(&input).unwrap();
    f.i64("entry_1/data_1/data", &[n, h, w], &vals).unwrap();
    f.u8("entry_1/data_1/mask", &[n, h, w], &mask).unwrap();
    f.finish().unwrap();
    let whole = cdiphase::io::read_patterns(&input, None).unwrap();
    let blocks = cdiphase::io::blocks::PatternBlocks::open(&input, None).unwrap();
    assert!(blocks.streamed());
    for r in [0..1, 2..5, 5..9, 0..9] {
        let b = blocks.read(r.clone()).unwrap();
        let l = h * w;
        assert_eq!(
            b.intensities.data,
            whole.intensities.data[r.start * l..r.end * l]
        );
        let m = b.mask.unwrap();
        assert_eq!(
            m.data,
            whole.mask.as_ref().unwrap().data[r.start * l..r.end * l]
        );
    }
    let cfg = cdiphase::phasing::PhaseConfig {
        schedule: "4*(5*HIO + 5*ER)".into(),
        support: cdiphase::phasing::SupportSpec::Circle { radius: 5.0 },
        ..Default::default()
    };
    let backend = cdiphase::backend::select(cdiphase::backend::Device::Cpu, Some(2)).unwrap();
    let rec = cdiphase::phasing::phase(backend.as_ref(), &whole, &cfg, &|_| {}).unwrap();
    let reference = dir.join("reference.cxi");
    rec.write_cxi(&reference, &serde_json::json!({})).unwrap();
    for block in ["2", "4"] {
        let out = dir.join(format!("b{block}.cxi"));
        ok(&[
            "phase",
            p(&input),
            "-o",
            p(&out),
            "--algorithm",
            "4*(5*HIO + 5*ER)",
            "--support",
            "circle:5",
            "--device",
            "cpu",
            "--block",
            block,
            "-q",
        ]);
        same_data(&reference, &out, true);
    }
}

#[test]
fn predict_in_blocks_writes_the_in_memory_result() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let model = cdiphase::nn::bundled::load().unwrap();
    let size = model.spec.input[0];
    let n = 5;
    let sim = simulate(dir, "sim.cxi", n, size);
    let ps = cdiphase::io::read_patterns(&sim, None).unwrap();
    let backend = cdiphase::backend::select(cdiphase::backend::Device::Cpu, Some(2)).unwrap();
    let opts = cdiphase::backend::NetOptions {
        mode: cdiphase::backend::Mode::F32,
        poison: false,
    };
    let pred = cdiphase::nn::predict::predict(
        backend.as_ref(),
        &model,
        &ps.intensities,
        ps.mask.as_ref(),
        2,
        0.1,
        opts,
        &|_| {},
    )
    .unwrap();
    let reference = dir.join("reference.cxi");
    pred.write_cxi(&reference, "m", "d").unwrap();
    // batches of 2: blocks of 1 and 3 are rounded up to 2 and 4 (whole batches)
    for block in [1, 3, n + 3] {
        let out = dir.join(format!("b{block}.cxi"));
        ok(&[
            "predict",
            p(&sim),
            "-o",
            p(&out),
            "--batch",
            "2",
            "--device",
            "cpu",
            "--block",
            &block.to_string(),
            "-q",
        ]);
        same_data(&reference, &out, true);
    }
    no_leftovers(dir);
}

#[test]
fn support_in_blocks_writes_the_in_memory_result() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let n = 7;
    let sim = simulate(dir, "sim.cxi", n, 32);
    let ps = cdiphase::io::read_patterns(&sim, None).unwrap();
    for method in [
        cdiphase::support::Method::Autocorrelation,
        cdiphase::support::Method::TripleIntersection,
    ] {
        let t = method.default_threshold();
        let (s, _) = cdiphase::support::estimate_from_patterns(&ps, method, t).unwrap();
        for block in [1, 3, n, n + 1] {
            let out = dir.join(format!("{}-{block}.cxi", method.name()));
            ok(&[
                "support",
                p(&sim),
                "-o",
                p(&out),
                "--method",
                method.name(),
                "--block",
                &block.to_string(),
            ]);
            let (shape, v) = cdiphase::io::read_mask_nd(&out, "entry_1/image_1/support").unwrap();
            assert_eq!(shape, vec![n, 32, 32]);
            assert!(v == s.data, "{} block {block}", method.name());
        }
    }
    // nn: a network output thresholded; the phase output's modulus stands in for one
    let net = dir.join("net.npy");
    let mut lcg = Lcg::new("support nn");
    let vals: Vec<f32> = lcg.vec(n * 32 * 32).iter().map(|x| x.abs()).collect();
    let st = cdiphase::array::Stack::from_vec(n, 32, 32, vals.clone()).unwrap();
    cdiphase::io::npy::write_f32(&net, &[n, 32, 32], &vals).unwrap();
    let want = cdiphase::support::threshold_supports(&st, 0.3);
    for block in [2, 100] {
        let out = dir.join(format!("nn-{block}.cxi"));
        ok(&[
            "support",
            p(&net),
            "-o",
            p(&out),
            "--method",
            "nn",
            "--threshold",
            "0.3",
            "--block",
            &block.to_string(),
        ]);
        let (_, v) = cdiphase::io::read_mask_nd(&out, "entry_1/image_1/support").unwrap();
        assert!(v == want.data, "nn block {block}");
    }
    no_leftovers(dir);
}

#[test]
fn npy_inputs_are_read_in_blocks_with_the_whole_file_result() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let n = 11;
    let sim = simulate(dir, "sim.cxi", n, 32);
    let st = cdiphase::io::read_patterns(&sim, None).unwrap().intensities;
    // a random subset of the patterns, in a random order: the offsets differ per run
    let mut lcg = Lcg::new("npy rows");
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, (lcg.next() * (i + 1) as f64) as usize);
    }
    let m = 5 + (lcg.next() * 6.0) as usize;
    let v: Vec<f32> = order[..m]
        .iter()
        .flat_map(|&i| st.image(i).to_vec())
        .collect();
    let npy = dir.join("patterns.npy");
    cdiphase::io::npy::write_f32(&npy, &[m, 32, 32], &v).unwrap();
    let input = cdiphase::io::blocks::PatternBlocks::open(&npy, None).unwrap();
    assert!(input.streamed(), "an .npy file is read by offsets");
    // the reference: the library on the whole file, read whole
    let patterns = cdiphase::io::read_patterns(&npy, None).unwrap();
    let cfg = cdiphase::phasing::PhaseConfig {
        schedule: "10*(5*HIO + 5*ER)".into(),
        starts: 2,
        seed: 3,
        ..Default::default()
    };
    let backend = cdiphase::backend::select(cdiphase::backend::Device::Cpu, Some(2)).unwrap();
    let rec = cdiphase::phasing::phase(backend.as_ref(), &patterns, &cfg, &|_| {}).unwrap();
    let reference = dir.join("reference.cxi");
    rec.write_cxi(&reference, &serde_json::json!({})).unwrap();
    for block in [1, 3, m + 4] {
        let out = dir.join(format!("b{block}.cxi"));
        let o = ok(&[
            "phase",
            p(&npy),
            "-o",
            p(&out),
            "--algorithm",
            "10*(5*HIO + 5*ER)",
            "--starts",
            "2",
            "--seed",
            "3",
            "--device",
            "cpu",
            "--block",
            &block.to_string(),
        ]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!e.contains("read whole"), "{e}");
        same_data(&reference, &out, true);
    }
    // a window is what the whole file holds there
    let w = input.read(2..m).unwrap();
    assert!(w.intensities.data == patterns.intensities.data[2 * 1024..m * 1024]);
    assert!(w.mask.is_none());
    no_leftovers(dir);
}

#[test]
fn float16_patterns_are_read_in_blocks_as_read_whole() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hostile/float16.cxi");
    let whole = cdiphase::io::read_patterns(&path, None).unwrap();
    let input = cdiphase::io::blocks::PatternBlocks::open(&path, None).unwrap();
    assert!(
        input.streamed(),
        "float16 data are converted a window at a time"
    );
    let (n, l) = (input.n, input.h * input.w);
    assert_eq!(n, whole.intensities.n);
    for k in 1..=n {
        for first in (0..n).step_by(k) {
            let end = (first + k).min(n);
            let w = input.read(first..end).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(
                bits(&w.intensities.data) == bits(&whole.intensities.data[first * l..end * l]),
                "patterns {first}..{end}"
            );
            match (&w.mask, &whole.mask) {
                (None, None) => {}
                (Some(a), Some(b)) if b.n == 1 => assert!(a.data == b.data),
                (Some(a), Some(b)) => assert!(a.data == b.data[first * l..end * l]),
                _ => panic!("the mask differs from the whole-file reader's"),
            }
        }
    }
}

const PHASE: [&str; 8] = [
    "--algorithm",
    "300*(5*HIO + 5*ER)",
    "--starts",
    "2",
    "--device",
    "cpu",
    "--threads",
    "1",
];

fn phase_args<'a>(sim: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["phase", sim, "-o", out, "-q"];
    v.extend_from_slice(&PHASE);
    if !extra.contains(&"--block") {
        v.extend_from_slice(&["--block", "2"]);
    }
    v.extend_from_slice(extra);
    v
}

/// Start `args`, kill it with `sig` after `after`; returns whether it was still running.
fn kill_after(args: &[&str], sig: i32, after: Duration) -> bool {
    let mut child = bin()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while t.elapsed() < after {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill only sends a signal to our own child process.
    unsafe { libc::kill(pid, sig) };
    child.wait().unwrap();
    true
}

#[test]
fn killed_runs_resume_to_the_same_file() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let sim = simulate(dir, "sim.cxi", 15, 32);
    let full = dir.join("full.cxi");
    let t = Instant::now();
    ok(&phase_args(p(&sim), p(&full), &[]));
    let whole = t.elapsed();
    let want = std::fs::read(&full).unwrap();
    let out = dir.join("out.cxi");
    let mut rng = Lcg::new("resume kill points");
    let mut mid_run = 0;
    for round in 0..4 {
        // killed, resumed and killed again at random points, then resumed to the end
        let sig = if round == 3 {
            libc::SIGTERM
        } else {
            libc::SIGKILL
        };
        let mut args = phase_args(p(&sim), p(&out), &[]);
        let mut kills = 0;
        for _ in 0..3 {
            let at = whole.mul_f64(0.1 + 0.8 * rng.next());
            if kill_after(&args, sig, at) {
                kills += 1;
                // blocks listed in the journal (header and configuration lines aside)
                let done = std::fs::read_to_string(dir.join(".out.cxi.cdiphase-journal"))
                    .map(|s| s.lines().count().saturating_sub(2))
                    .unwrap_or(0);
                if done > 0 && done < 8 {
                    mid_run += 1;
                }
            }
            args = phase_args(p(&sim), p(&out), &["--resume"]);
        }
        ok(&args);
        let got = std::fs::read(&out).unwrap();
        assert!(
            got == want,
            "round {round} ({kills} kills): the resumed file differs from the uninterrupted one"
        );
        no_leftovers(dir);
        std::fs::remove_file(&out).unwrap();
    }
    // most kill points fall between blocks 1 and 7 of 8; at least some must have
    assert!(
        mid_run >= 2,
        "only {mid_run} of 12 kills left finished blocks to resume"
    );
}

#[test]
fn a_resume_with_other_flags_or_input_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let sim = simulate(dir, "sim.cxi", 12, 32);
    let out = dir.join("out.cxi");
    // interrupted after its first blocks (SIGKILL once the journal lists a block)
    let args = phase_args(p(&sim), p(&out), &[]);
    let mut child = bin()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = dir.join(".out.cxi.cdiphase-journal");
    let t = Instant::now();
    loop {
        let lines = std::fs::read_to_string(&journal)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if lines >= 3 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "ended before a block");
        assert!(t.elapsed() < Duration::from_secs(120), "no block finished");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let e = fails(&phase_args(
        p(&sim),
        p(&out),
        &["--resume", "--beta", "0.8"],
    ));
    assert!(
        e.contains("different configuration") && e.contains("beta") && e.contains("0.8"),
        "{e}"
    );
    let e = fails(&phase_args(p(&sim), p(&out), &["--resume", "--block", "3"]));
    assert!(
        e.contains("different configuration") && e.contains("block"),
        "{e}"
    );
    // the input changed under the partial output: same size, other values
    let saved = std::fs::read(&sim).unwrap();
    let other = simulate(dir, "other.cxi", 12, 32);
    std::fs::copy(&other, &sim).unwrap();
    let e = fails(&phase_args(p(&sim), p(&out), &["--resume"]));
    assert!(
        e.contains("different configuration or input") && e.contains("input_files"),
        "{e}"
    );
    // back to the original input: the refusals changed nothing, the resume completes
    std::fs::write(&sim, &saved).unwrap();
    let e = fails(&phase_args(p(&sim), p(&out), &["--resume"]));
    // the modification time differs from the original's: still refused, and says so
    assert!(e.contains("mtime"), "{e}");
    // without --resume: a fresh run replaces the partial output, and says so
    let o = ok(&phase_args(p(&sim), p(&out), &[]));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("starts afresh and replaces them"), "{e}");
    no_leftovers(dir);
    let full = dir.join("full.cxi");
    ok(&phase_args(p(&sim), p(&full), &[]));
    assert!(std::fs::read(&full).unwrap() == std::fs::read(&out).unwrap());
}

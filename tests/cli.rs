//! The `cdiphase` binary end to end: real jobs on generated files, chaining outputs into
//! inputs, determinism, and clear failures (non-zero exit, message naming the file / entry /
//! shape, no partial output) on bad input.

mod common;

use cdiphase::array::Complex32;
use cdiphase::io::{self, CxiWriter};
use common::cli::{run, stderr};
use std::path::{Path, PathBuf};
use std::process::Output;

/// `cdiphase phase INPUT -o OUT --quiet EXTRA...`, which must succeed.
fn phase_ok(input: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "phase",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    o
}

/// Patterns of `n` random particles at h x w, with a central beamstop of radius 2 masked.
fn write_patterns(
    dir: &Path,
    name: &str,
    n: usize,
    h: usize,
    w: usize,
    poison: Option<(usize, f32)>,
) -> PathBuf {
    let (p, _) = cdiphase::simulate::synthetic_particles(n, h, w, n, 3);
    let mut data = p.intensities.data.clone();
    let mut mask = vec![0u8; h * w];
    for y in 0..h {
        for x in 0..w {
            let (dy, dx) = (y as f32 - (h / 2) as f32, x as f32 - (w / 2) as f32);
            if dy * dy + dx * dx <= 4.0 {
                mask[y * w + x] = 1;
            }
        }
    }
    if let Some((i, v)) = poison {
        data[i] = v;
    }
    let path = dir.join(name);
    let mut wr = CxiWriter::new();
    wr.f32("entry_1/data_1/data", &[n, h, w], &data).unwrap();
    wr.u8("entry_1/instrument_1/detector_1/mask", &[h, w], &mask)
        .unwrap();
    wr.finish(&path).unwrap();
    path
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn phase_writes_cxi_that_reads_back_and_chains() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_patterns(dir.path(), "in.cxi", 3, 32, 40, None);
    let out = dir.path().join("out.cxi");
    let o = run(&[
        "phase",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--algorithm",
        "20*(10*HIO + 5*ER)",
        "--shrinkwrap",
        "sigma=1,threshold=0.1,every=15",
        "--constraint",
        "positive",
        "--starts",
        "2",
        "--seed",
        "5",
        "--keep-all",
        "--json",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("JSON summary on stdout");
    assert_eq!(summary["patterns"], 3);
    assert_eq!(summary["iterations"], 300);
    let obj = io::read_object(&out, None).unwrap();
    assert_eq!(obj.shape(), [3, 32, 40]);
    let sup = io::read_support(&out, None).unwrap();
    assert_eq!(sup.shape(), [3, 32, 40]);
    let (shape, hist) = io::read_f32(&out, "entry_1/image_1/fourier_error").unwrap();
    assert_eq!(shape, vec![3, 20]);
    assert!(hist.iter().all(|v| v.is_finite() && *v >= 0.0));
    let (shape, _) = io::read_f32(&out, "entry_1/image_1/all_fourier_error").unwrap();
    assert_eq!(shape, vec![3, 2, 20]);
    let listing = io::list_datasets(&out).unwrap();
    let all = listing
        .iter()
        .find(|(n, _, _)| n.ends_with("image_2/data"))
        .expect("keep-all data");
    assert_eq!(all.1, vec![3, 2, 32, 40]);
    assert_eq!(all.2, "complex64");
    assert!(listing
        .iter()
        .any(|(n, _, _)| n.ends_with("process_1/configuration")));
    // the output seeds another run: its support and its object
    let out2 = dir.path().join("out2.cxi");
    let o = out.to_str().unwrap();
    phase_ok(
        &input,
        &out2,
        &["--algorithm", "10*ER", "--support", o, "--init", o],
    );
    let (_, e1) = io::read_f32(&out, "entry_1/image_1/final_fourier_error").unwrap();
    let (_, e2) = io::read_f32(&out2, "entry_1/image_1/final_fourier_error").unwrap();
    for (a, b) in e1.iter().zip(&e2) {
        // ER from a converged state with its own support cannot get (much) worse
        assert!(*b <= a * 1.05 + 1e-6, "chained ER: {a} -> {b}");
    }
    // .npy input and a .npy support
    let p = io::read_patterns(&input, None).unwrap();
    let npy = dir.path().join("in.npy");
    io::npy::write_f32(&npy, &[3, 32, 40], &p.intensities.data).unwrap();
    let sup_npy = dir.path().join("sup.npy");
    io::npy::write_u8(&sup_npy, &[32, 40], sup.image(0)).unwrap();
    let out3 = dir.path().join("out3.cxi");
    let sup = sup_npy.to_str().unwrap();
    phase_ok(
        &npy,
        &out3,
        &["--algorithm", "5*HIO + 5*ER", "--support", sup],
    );
}

#[test]
fn deterministic_across_runs_and_thread_counts() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_patterns(dir.path(), "in.cxi", 5, 24, 24, None);
    let phase = |out: &Path, seed: &str, threads: &str| {
        let o = run(&[
            "phase",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--algorithm",
            "3*(10*HIO + 5*ER)",
            "--starts",
            "3",
            "--seed",
            seed,
            "--threads",
            threads,
            "--support",
            "circle:8",
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        io::read_object(out, None).unwrap()
    };
    let objs: Vec<_> = ["1", "2", "2"]
        .iter()
        .enumerate()
        .map(|(i, t)| phase(&dir.path().join(format!("o{i}.cxi")), "42", t))
        .collect();
    assert_eq!(objs[0].data, objs[1].data);
    assert_eq!(objs[1].data, objs[2].data);
    // a different seed gives a different start
    let other = phase(&dir.path().join("o_other.cxi"), "43", "2");
    assert_ne!(other.data, objs[0].data);
}

/// Each bad input fails with a non-zero exit, a message containing `needle`, and leaves no
/// output (nor temp files) behind.
fn expect_failure(dir: &Path, args: &[&str], needle: &str) {
    let before = files_in(dir);
    let o = run(args);
    let msg = stderr(&o);
    assert!(!o.status.success(), "{args:?} should fail");
    assert_eq!(o.status.code(), Some(1), "{args:?}: exit code");
    assert!(
        msg.contains(needle),
        "{args:?}: message {msg:?} lacks {needle:?}"
    );
    assert!(!msg.contains("panicked"), "{msg}");
    assert_eq!(files_in(dir), before, "{args:?} left files behind");
}

#[test]
fn bad_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = write_patterns(d, "good.cxi", 2, 16, 16, None);
    let nan = write_patterns(d, "nan.cxi", 2, 16, 16, Some((256 + 3 * 16 + 5, f32::NAN)));
    let neg = write_patterns(d, "neg.cxi", 2, 16, 16, Some((7, -2.5)));
    let g = good.to_str().unwrap();
    let out = d.join("out.cxi");
    let o = out.to_str().unwrap();
    expect_failure(
        d,
        &["phase", "/nonexistent/x.cxi", "-o", o],
        "/nonexistent/x.cxi",
    );
    expect_failure(
        d,
        &["phase", nan.to_str().unwrap(), "-o", o, "--quiet"],
        "pattern 1 pixel (y=3, x=5)",
    );
    expect_failure(
        d,
        &["phase", neg.to_str().unwrap(), "-o", o, "--quiet"],
        "negative intensity -2.5",
    );
    expect_failure(
        d,
        &["phase", g, "-o", o, "--algorithm", "5*HIO + 5*EER"],
        "position 10",
    );
    expect_failure(
        d,
        &["phase", g, "-o", o, "--entry", "entry_1/nothing"],
        "entry_1/nothing",
    );
    expect_failure(
        d,
        &["phase", g, "-o", o, "--constraint", "imaginary"],
        "imaginary",
    );
    expect_failure(d, &["phase", g, "-o", o, "--device", "cuda"], "cuda");
    expect_failure(d, &["phase", g, "-o", o, "--support", "circle:"], "circle");
    expect_failure(
        d,
        &["phase", g, "-o", o, "--shrinkwrap", "sigma=1,threshold=3"],
        "threshold",
    );
    expect_failure(d, &["phase", g, "-o", g], "refusing to overwrite");
    // support of the wrong shape
    let bad_sup = d.join("sup.npy");
    io::npy::write_u8(&bad_sup, &[15, 16], &vec![1u8; 15 * 16]).unwrap();
    expect_failure(
        d,
        &["phase", g, "-o", o, "--support", bad_sup.to_str().unwrap()],
        "1 image(s) of 15x16 do not match",
    );
    let empty_sup = d.join("empty.npy");
    io::npy::write_u8(&empty_sup, &[16, 16], &[0u8; 256]).unwrap();
    expect_failure(
        d,
        &[
            "phase",
            g,
            "-o",
            o,
            "--support",
            empty_sup.to_str().unwrap(),
        ],
        "empty",
    );
    // an init object with a NaN
    let bad_init = d.join("init.npy");
    let mut v = vec![Complex32::new(1.0, 0.0); 256];
    v[17] = Complex32::new(f32::NAN, 0.0);
    io::npy::write_complex64(&bad_init, &[16, 16], &v).unwrap();
    expect_failure(
        d,
        &["phase", g, "-o", o, "--init", bad_init.to_str().unwrap()],
        "not finite",
    );
    // output into a folder that does not exist: nothing written anywhere
    let o = run(&[
        "phase",
        g,
        "-o",
        "/nonexistent-dir/out.cxi",
        "--algorithm",
        "2*ER",
        "--quiet",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent-dir/out.cxi"),
        "{}",
        stderr(&o)
    );
    // masked NaNs are fine: NaN at a masked (beamstop) pixel is never read
    let centre = 8 * 16 + 8;
    let masked_nan = write_patterns(d, "masked_nan.cxi", 1, 16, 16, Some((centre, f32::NAN)));
    let o2 = d.join("ok.cxi");
    let r = run(&[
        "phase",
        masked_nan.to_str().unwrap(),
        "-o",
        o2.to_str().unwrap(),
        "--algorithm",
        "3*HIO",
        "--quiet",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
}

#[test]
fn help_and_info() {
    for verb in ["simulate", "phase", "demo", "bench", "info"] {
        let o = run(&[verb, "--help"]);
        assert!(o.status.success());
        assert!(!o.stdout.is_empty());
    }
    let o = run(&["info"]);
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("cpu:") && s.contains("cuda"), "{s}");
}

#[test]
fn simulate_then_phase_with_the_ideal_support() {
    let dir = tempfile::tempdir().unwrap();
    let pdb = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/pdb/1dx5I.pdb.gz");
    let sim = dir.path().join("sim.cxi");
    let o = run(&[
        "simulate",
        "--pdb",
        pdb.to_str().unwrap(),
        "--count",
        "3",
        "--size",
        "64",
        "--photons",
        "1e9",
        "--noise",
        "poisson",
        "--mask",
        "beamstop:1",
        "--seed",
        "2",
        "-o",
        sim.to_str().unwrap(),
        "--json",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["patterns"], 3);
    let p = io::read_patterns(&sim, None).unwrap();
    assert_eq!(p.intensities.shape(), [3, 64, 64]);
    assert!(p.mask.as_ref().unwrap().data.contains(&1));
    // the simulated file feeds `phase` directly: its ideal support as the starting support
    let out = dir.path().join("rec.cxi");
    let sup = sim.to_str().unwrap();
    phase_ok(
        &sim,
        &out,
        &[
            "--support",
            sup,
            "--algorithm",
            "10*(10*HIO + 5*ER)",
            "--constraint",
            "positive",
        ],
    );
    assert_eq!(io::read_object(&out, None).unwrap().shape(), [3, 64, 64]);
    // unreadable structures are named; with none readable the run fails
    let bad = dir.path().join("bad.pdb");
    std::fs::write(&bad, "not a structure\n").unwrap();
    let o = run(&[
        "simulate",
        "--pdb",
        bad.to_str().unwrap(),
        "-o",
        dir.path().join("x.cxi").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bad.pdb"), "{}", stderr(&o));
    assert!(!dir.path().join("x.cxi").exists());
    let o = run(&[
        "simulate",
        "--pdb",
        pdb.to_str().unwrap(),
        "--noise",
        "poisson",
        "-o",
        dir.path().join("y.cxi").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--photons"), "{}", stderr(&o));
}

#[test]
fn simulate_synthetic_particles() {
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("syn.cxi");
    let args = |threads: &'static str, out: &Path| -> Vec<String> {
        [
            "simulate",
            "--synthetic",
            "ring,compact",
            "--residues",
            "100:300",
            "--atoms",
            "cromer-mann",
            "--support-threshold",
            "0.05",
            "--count",
            "6",
            "--size",
            "48x40",
            "--seed",
            "4",
            "--threads",
            threads,
            "--quiet",
            "-o",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a: Vec<String> = args("1", &sim);
    let o = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let sim2 = dir.path().join("syn2.cxi");
    let b: Vec<String> = args("2", &sim2);
    let o = run(&b.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let p1 = io::read_patterns(&sim, None).unwrap();
    let p2 = io::read_patterns(&sim2, None).unwrap();
    assert_eq!(p1.intensities.shape(), [6, 48, 40]);
    assert_eq!(p1.intensities.data, p2.intensities.data);
    let names = cdiphase::io::read_string(&sim, "entry_1/sample_1/name").unwrap();
    let names: Vec<&str> = names.lines().collect();
    assert_eq!(names.len(), 6);
    assert!(names[0].starts_with("syn-ring-") && names[1].starts_with("syn-compact-"));
    // every pattern a different particle
    for i in 0..6 {
        for j in 0..i {
            assert_ne!(p1.intensities.image(i), p1.intensities.image(j));
        }
    }
    // --pdb and --synthetic exclude each other; bad kinds and ranges are named
    expect_failure(
        dir.path(),
        &["simulate", "--synthetic", "blob", "-o", "x.cxi"],
        "blob",
    );
    expect_failure(
        dir.path(),
        &[
            "simulate",
            "--synthetic",
            "all",
            "--residues",
            "50:10",
            "-o",
            "x.cxi",
        ],
        "residues",
    );
    let o = run(&[
        "simulate",
        "--synthetic",
        "all",
        "--pdb",
        "a.pdb",
        "-o",
        "x.cxi",
    ]);
    assert_eq!(o.status.code(), Some(2), "clap usage error");
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
}

//! Hostile inputs (issue 16): every verb on inputs a careless user or an attacker gives.
//! Each case asserts the exit status, the message, that no panic or abort happened, that
//! nothing is left on disk (no temporary file, no partial output) and that every file that
//! existed before is unchanged.

mod common;

use common::cli::{run, stderr};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every file under `dir` (recursively, hidden ones included) with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.file_type().is_symlink() {
                out.insert(
                    p.clone(),
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                );
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// `cdiphase ARGS` run in `dir` must fail with exit status 1, a message containing every
/// one of `needles`, no panic, and leave `dir` exactly as it was.
fn refused_in(dir: &Path, args: &[&str], needles: &[&str]) -> String {
    let before = snapshot(dir);
    let o = common::cli::bin()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run cdiphase");
    let e = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{args:?}: status {:?}: {e}",
        o.status
    );
    assert!(!e.contains("panicked"), "{args:?} panicked: {e}");
    for n in needles {
        assert!(e.contains(n), "{args:?}: message lacks '{n}': {e}");
    }
    let after = snapshot(dir);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "{args:?}: files appeared or vanished"
    );
    assert!(before == after, "{args:?}: a file changed");
    e
}

/// `cdiphase ARGS` run in `dir`, which must succeed.
fn ok_in(dir: &Path, args: &[&str]) {
    let o = common::cli::bin()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run cdiphase");
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
}

fn hostile(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hostile")
        .join(name)
        .display()
        .to_string()
}

/// A work folder with `sim.cxi`: 3 synthetic patterns of 32x32 with ground truth.
fn work() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    ok_in(
        d.path(),
        &[
            "simulate",
            "--synthetic",
            "all",
            "--count",
            "3",
            "--size",
            "32",
            "-o",
            "sim.cxi",
            "-q",
            "--threads",
            "1",
        ],
    );
    d
}

fn write_npy(path: &Path, shape: &[usize], v: &[f32]) {
    cdiphase::io::npy::write_f32(path, shape, v).unwrap();
}

#[test]
fn an_output_may_never_be_an_input() {
    let d = work();
    let p = d.path();
    std::os::unix::fs::symlink("sim.cxi", p.join("link.cxi")).unwrap();
    std::fs::hard_link(p.join("sim.cxi"), p.join("hard.cxi")).unwrap();
    std::fs::create_dir(p.join("sub")).unwrap();
    let msg = "refusing to overwrite an input";
    for out in [
        "sim.cxi",
        "./sim.cxi",
        "link.cxi",
        "hard.cxi",
        "sub/../sim.cxi",
    ] {
        refused_in(p, &["support", "sim.cxi", "-o", out], &[msg]);
        refused_in(p, &["phase", "./sim.cxi", "-o", out, "-q"], &[msg]);
        refused_in(p, &["predict", "sim.cxi", "-o", out, "-q"], &[msg]);
    }
    // the other inputs of phase: supports and starting objects
    ok_in(p, &["support", "sim.cxi", "-o", "sup.cxi"]);
    refused_in(
        p,
        &[
            "phase",
            "sim.cxi",
            "--support",
            "sup.cxi",
            "-o",
            "./sup.cxi",
            "-q",
        ],
        &["--support", msg],
    );
    refused_in(
        p,
        &[
            "phase", "sim.cxi", "--init", "sup.cxi", "-o", "sup.cxi", "-q",
        ],
        &["--init", msg],
    );
    // models: predict onto its model, convert onto its checkpoint
    std::fs::write(p.join("m.safetensors"), cdiphase::nn::bundled::bytes()).unwrap();
    refused_in(
        p,
        &[
            "predict",
            "sim.cxi",
            "--model",
            "m.safetensors",
            "-o",
            "m.safetensors",
            "-q",
        ],
        &["--model", msg],
    );
    let keras =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras/spinn_small/model.keras");
    std::fs::copy(keras, p.join("m.keras")).unwrap();
    refused_in(p, &["convert", "m.keras", "-o", "./m.keras"], &[msg]);
    // support --from, evaluate inputs inside the report folder
    refused_in(
        p,
        &[
            "support",
            "sim.cxi",
            "--method",
            "mean-image",
            "--from",
            "sup.cxi",
            "-o",
            "sup.cxi",
        ],
        &["--from", msg],
    );
    refused_in(
        p,
        &[
            "evaluate",
            "--truth",
            "sub/../sim.cxi",
            "--input",
            "sup.cxi",
            "--report",
            ".",
        ],
        &["holds an input"],
    );
    // simulate onto one of its structure files
    std::fs::write(
        p.join("s.pdb"),
        "ATOM      1  CA  ALA A   1       0.000   0.000   0.000  1.00  0.00           C\n",
    )
    .unwrap();
    refused_in(
        p,
        &["simulate", "--pdb", "s.pdb", "-o", "./s.pdb"],
        &["--pdb", msg],
    );
    // an output file that is an existing folder
    refused_in(
        p,
        &["support", "sim.cxi", "-o", "sub"],
        &["existing folder"],
    );
}

#[test]
fn evaluate_replaces_only_its_own_reports() {
    let d = work();
    let p = d.path();
    ok_in(
        p,
        &[
            "phase",
            "sim.cxi",
            "-o",
            "ph.cxi",
            "--algorithm",
            "20*ER",
            "-q",
        ],
    );
    let eval = |rep: &str| {
        [
            "evaluate", "--truth", "sim.cxi", "--input", "ph.cxi", "--report", rep,
        ]
        .map(String::from)
    };
    let args = |rep: &str| eval(rep);
    // someone else's folder, even with a metrics.json
    std::fs::create_dir(p.join("mine")).unwrap();
    std::fs::write(p.join("mine/metrics.json"), "{}").unwrap();
    std::fs::write(p.join("mine/notes.txt"), "precious").unwrap();
    let a = args("mine");
    refused_in(
        p,
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &["not a cdiphase report", "nothing was changed"],
    );
    // a file
    let a = args("ph.cxi");
    refused_in(
        p,
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &["not a folder"],
    );
    // our report is replaced whole; with a file of the user's in it, refused
    let a = args("rep");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    ok_in(p, &a);
    assert!(p.join("rep/.cdiphase-report").is_file() && p.join("rep/metrics.json").is_file());
    std::fs::write(p.join("rep/metrics.json"), "old").unwrap();
    ok_in(p, &a);
    assert_ne!(std::fs::read(p.join("rep/metrics.json")).unwrap(), b"old");
    std::fs::write(p.join("rep/mine.txt"), "user's").unwrap();
    refused_in(p, &a, &["holds 'mine.txt'"]);
    std::fs::remove_file(p.join("rep/mine.txt")).unwrap();
    // an empty folder is filled; nothing temporary is left anywhere
    std::fs::create_dir(p.join("empty")).unwrap();
    let a = args("empty");
    ok_in(p, &a.iter().map(String::as_str).collect::<Vec<_>>());
    let names: Vec<String> = snapshot(p)
        .keys()
        .map(|k| k.display().to_string())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("cdiphase-tmp")),
        "{names:?}"
    );
}

#[test]
fn huge_declared_shapes_are_refused_before_allocating() {
    let d = work();
    let p = d.path();
    for f in ["huge_chunked.cxi", "huge_contiguous.cxi"] {
        let h = hostile(f);
        let needles = [
            "1000000000, 1000000000",
            "memory",
            "refused before allocating",
        ];
        refused_in(p, &["phase", &h, "-o", "o.cxi", "-q"], &needles);
        // a support or starting object is read by windows of the patterns' blocks: its
        // header's shape is refused before any value is read
        let unmatched = ["1000000000x1000000000 do not match the 3 patterns of 32x32"];
        refused_in(
            p,
            &["phase", "sim.cxi", "--support", &h, "-o", "o.cxi", "-q"],
            &unmatched,
        );
        refused_in(
            p,
            &["phase", "sim.cxi", "--init", &h, "-o", "o.cxi", "-q"],
            &unmatched,
        );
        refused_in(p, &["predict", &h, "-o", "o.cxi", "-q"], &needles);
        refused_in(p, &["support", &h, "-o", "o.cxi"], &needles);
        refused_in(
            p,
            &["support", &h, "--method", "nn", "-o", "o.cxi"],
            &needles,
        );
        // the baselines read the ground truth by windows: one declared image of 10^18
        // pixels is refused before allocating (the circle's shared image included)
        refused_in(
            p,
            &[
                "support", &h, "--method", "oracle", "--sigma", "1", "-o", "o.cxi",
            ],
            &needles,
        );
        refused_in(
            p,
            &["support", &h, "--method", "circle", "-o", "o.cxi"],
            &needles,
        );
        refused_in(
            p,
            &[
                "support",
                "sim.cxi",
                "--method",
                "mean-image",
                "--from",
                &h,
                "-o",
                "o.cxi",
            ],
            &["1000000000"],
        );
        refused_in(
            p,
            &[
                "evaluate", "--truth", &h, "--input", "sim.cxi", "--report", "r",
            ],
            &["1000000000"],
        );
    }
}

#[test]
fn size_options_are_bounded_with_an_estimate() {
    let d = work();
    let p = d.path();
    refused_in(
        p,
        &[
            "simulate",
            "--synthetic",
            "all",
            "--size",
            "65536x65536",
            "-o",
            "o.cxi",
        ],
        &["65536x65536", "16384"],
    );
    refused_in(
        p,
        &[
            "simulate",
            "--synthetic",
            "all",
            "--count",
            "1000000000000",
            "-o",
            "o.cxi",
        ],
        &["on disk", "refused before writing"],
    );
    refused_in(
        p,
        &[
            "simulate",
            "--synthetic",
            "all",
            "--count",
            "0",
            "-o",
            "o.cxi",
        ],
        &["at least 1"],
    );
    refused_in(
        p,
        &[
            "phase",
            "sim.cxi",
            "--starts",
            "1000000000",
            "-o",
            "o.cxi",
            "-q",
        ],
        &["1000000000 starts", "memory"],
    );
    refused_in(p, &["bench", "--batch", "100000000"], &["memory"]);
    refused_in(p, &["bench", "--batch", "0"], &["at least 1"]);
    refused_in(
        p,
        &["bench", "network", "--arch", "spinn:100000"],
        &["2048"],
    );
    for w in ["-1", "0", "NaN", "inf"] {
        refused_in(
            p,
            &["bench", "network", "--arch", &format!("spinn:32:{w}")],
            &["width"],
        );
    }
    for t in ["0", "1000000"] {
        refused_in(
            p,
            &[
                "phase",
                "sim.cxi",
                "-o",
                "o.cxi",
                "--threads",
                t,
                "--device",
                "cpu",
                "-q",
            ],
            &["--threads", "1024"],
        );
        refused_in(
            p,
            &[
                "predict",
                "sim.cxi",
                "-o",
                "o.cxi",
                "--threads",
                t,
                "--device",
                "cpu",
                "-q",
            ],
            &["--threads", "1024"],
        );
        refused_in(
            p,
            &["support", "sim.cxi", "-o", "o.cxi", "--threads", t],
            &["--threads", "1024"],
        );
    }
    refused_in(
        p,
        &["predict", "sim.cxi", "-o", "o.cxi", "--batch", "0", "-q"],
        &["--batch"],
    );
    // demo validates first: no folder appears
    refused_in(
        p,
        &["demo", "--count", "100000000", "--out", "dd"],
        &["memory"],
    );
    refused_in(
        p,
        &["demo", "--nn-threshold", "1", "--out", "dd"],
        &["--nn-threshold"],
    );
    refused_in(p, &["demo", "--schedule", "5*FOO", "--out", "dd"], &["FOO"]);
}

#[test]
fn zero_patterns_and_degenerate_shapes_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    write_npy(&p.join("none.npy"), &[0, 32, 32], &[]);
    write_npy(&p.join("flat.npy"), &[2, 32, 0], &[]);
    for f in ["none.npy", "flat.npy"] {
        for m in ["autocorrelation", "triple-intersection"] {
            refused_in(
                p,
                &["support", f, "--method", m, "-o", "o.cxi"],
                &["at least one image"],
            );
        }
        refused_in(
            p,
            &["phase", f, "-o", "o.cxi", "-q"],
            &["at least one image"],
        );
        refused_in(
            p,
            &["predict", f, "-o", "o.cxi", "-q"],
            &["at least one image"],
        );
    }
}

/// Two 128x128 patterns (the bundled model's input) in `p/pat.cxi` with a mask that hides
/// pixel (0, 0) of every pattern; `bad` is written at the masked pixel and `measured_bad`
/// at pixel (5, 7) of pattern 1.
fn masked_patterns(p: &Path, bad: f32, measured_bad: Option<f32>) {
    let (h, w) = (128, 128);
    let mut v: Vec<f32> = (0..2 * h * w).map(|i| ((i * 7919) % 1000) as f32).collect();
    v[0] = bad;
    v[h * w] = bad;
    if let Some(x) = measured_bad {
        v[h * w + 5 * w + 7] = x;
    }
    let mut mask = vec![0u8; h * w];
    mask[0] = 1;
    let mut wr = cdiphase::io::CxiWriter::new();
    wr.f32("entry_1/data_1/data", &[2, h, w], &v).unwrap();
    wr.u8("entry_1/data_1/mask", &[h, w], &mask).unwrap();
    wr.finish(&p.join("pat.cxi")).unwrap();
}

#[test]
fn predict_never_reads_masked_pixels_and_refuses_non_finite_measured_ones() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    masked_patterns(p, f32::NAN, None);
    ok_in(
        p,
        &[
            "predict",
            "pat.cxi",
            "-o",
            "o.cxi",
            "--device",
            "cpu",
            "--threads",
            "1",
            "-q",
        ],
    );
    let nan = cdiphase::io::read_object(&p.join("o.cxi"), None).unwrap();
    masked_patterns(p, f32::INFINITY, None);
    std::fs::remove_file(p.join("o.cxi")).unwrap();
    ok_in(
        p,
        &[
            "predict",
            "pat.cxi",
            "-o",
            "o.cxi",
            "--device",
            "cpu",
            "--threads",
            "1",
            "-q",
        ],
    );
    let inf = cdiphase::io::read_object(&p.join("o.cxi"), None).unwrap();
    assert_eq!(nan.data, inf.data, "the masked value changed the output");
    assert!(inf.data.iter().any(|c| c.re > 0.0));
    for x in [f32::INFINITY, f32::NAN, f32::NEG_INFINITY] {
        masked_patterns(p, 0.0, Some(x));
        refused_in(
            p,
            &["predict", "pat.cxi", "-o", "o.cxi", "--device", "cpu", "-q"],
            &["pattern 1", "(y=5, x=7)", "not masked"],
        );
    }
    refused_in(
        p,
        &[
            "predict",
            "pat.cxi",
            "-o",
            "o2.cxi",
            "--threshold",
            "1",
            "-q",
        ],
        &["[0, 1)"],
    );
}

#[test]
fn values_that_cannot_be_right_are_refused() {
    let d = work();
    let p = d.path();
    refused_in(
        p,
        &[
            "simulate",
            "--synthetic",
            "all",
            "--count",
            "2",
            "--size",
            "32",
            "--photons",
            "1e300",
            "-o",
            "o.cxi",
        ],
        &["photons"],
    );
    refused_in(
        p,
        &[
            "simulate",
            "--synthetic",
            "all",
            "--count",
            "2",
            "--size",
            "32",
            "--fluence",
            "1e300",
            "--noise",
            "poisson",
            "-o",
            "o.cxi",
        ],
        &["fluence"],
    );
    write_npy(&p.join("zeros.npy"), &[32, 32], &[0.0; 1024]);
    refused_in(
        p,
        &[
            "phase",
            "sim.cxi",
            "--init",
            "zeros.npy",
            "-o",
            "o.cxi",
            "-q",
        ],
        &["zero everywhere"],
    );
    let mut s = vec![0.0f32; 1024];
    s[500] = 1.0;
    s[5] = f32::NAN;
    write_npy(&p.join("nan.npy"), &[32, 32], &s);
    refused_in(
        p,
        &[
            "phase",
            "sim.cxi",
            "--support",
            "nan.npy",
            "-o",
            "o.cxi",
            "-q",
        ],
        &["(y=0, x=5) is NaN"],
    );
    refused_in(
        p,
        &[
            "phase",
            "sim.cxi",
            "--shrinkwrap",
            "every=0",
            "-o",
            "o.cxi",
            "-q",
        ],
        &["every=0"],
    );
    refused_in(
        p,
        &[
            "phase",
            "sim.cxi",
            "--shrinkwrap",
            "every=5,start=10,stop=5",
            "-o",
            "o.cxi",
            "-q",
        ],
        &["start=10 is after stop=5"],
    );
}

#[test]
fn float16_is_read_and_soft_links_are_named() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    ok_in(
        p,
        &[
            "phase",
            &hostile("float16.cxi"),
            "-o",
            "o.cxi",
            "--algorithm",
            "4*ER",
            "-q",
        ],
    );
    refused_in(
        p,
        &["phase", &hostile("softlink.cxi"), "-o", "o2.cxi", "-q"],
        &["soft or external link"],
    );
}

#[test]
fn stale_temporaries_of_dead_runs_are_removed() {
    let d = work();
    let p = d.path();
    // pid 4294967295 cannot exist; a file of another name must stay
    std::fs::write(
        p.join(".o.cxi.cdiphase-tmp-4294967295-0"),
        "left by SIGKILL",
    )
    .unwrap();
    std::fs::write(p.join(".o.cxi.keep"), "not ours").unwrap();
    ok_in(p, &["support", "sim.cxi", "-o", "o.cxi"]);
    assert!(!p.join(".o.cxi.cdiphase-tmp-4294967295-0").exists());
    assert!(p.join(".o.cxi.keep").exists() && p.join("o.cxi").exists());
}

#[test]
fn a_failed_write_leaves_nothing() {
    let d = work();
    let p = d.path();
    // the output's folder does not exist: nothing is created anywhere
    refused_in(
        p,
        &["support", "sim.cxi", "-o", "missing/o.cxi"],
        &["missing/o.cxi"],
    );
    let o = run(&["info"]);
    assert!(o.status.success());
}

#[test]
fn small_things() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    // an OS error is printed once
    let e = refused_in(
        p,
        &["phase", "missing.cxi", "-o", "o.cxi", "-q"],
        &["missing.cxi"],
    );
    assert_eq!(e.matches("No such file").count(), 1, "{e}");
    // no "see the warnings above" without warnings
    std::fs::create_dir(p.join("empty")).unwrap();
    let e = refused_in(
        p,
        &["simulate", "--pdb", "empty", "-o", "o.cxi"],
        &["no structure file found"],
    );
    assert!(!e.contains("warnings above"), "{e}");
    refused_in(
        p,
        &[
            "simulate",
            "--synthetic",
            "all",
            "--fill",
            "2",
            "-o",
            "o.cxi",
        ],
        &["fill 2"],
    );
    // convert: a truncated checkpoint is named as such; the output is reproducible
    let keras = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras/spinn_small");
    let mut h5 = std::fs::read(keras.join("model.h5")).unwrap();
    h5.truncate(h5.len() / 2);
    std::fs::write(p.join("cut.h5"), &h5).unwrap();
    refused_in(
        p,
        &["convert", "cut.h5", "-o", "m.safetensors"],
        &["truncated"],
    );
    let k = keras.join("model.keras").display().to_string();
    ok_in(p, &["convert", &k, "-o", "a.safetensors"]);
    ok_in(p, &["convert", &k, "-o", "b.safetensors"]);
    assert!(
        std::fs::read(p.join("a.safetensors")).unwrap()
            == std::fs::read(p.join("b.safetensors")).unwrap()
    );
}

/// Groups hard-linked to their own ancestor (legal HDF5) end a listing instead of looping
/// forever: the cycle is not followed past `MAX_GROUP_DEPTH` levels, and with two such
/// links (a walk that doubles per level) the group limit stops it with a message. The
/// patterns of such a file still read.
#[test]
fn groups_linked_in_a_cycle_end_the_walk() {
    let f = std::path::PathBuf::from(hostile("cyclic.cxi"));
    let t0 = std::time::Instant::now();
    let e = cdiphase::io::list_datasets(&f).unwrap_err().to_string();
    assert!(e.contains("groups linked in a cycle"), "{e}");
    assert!(t0.elapsed().as_secs() < 30, "{:?}", t0.elapsed());
    let p = cdiphase::io::read_patterns(&f, None).unwrap();
    assert_eq!(
        (p.intensities.n, p.intensities.h, p.intensities.w),
        (1, 8, 8)
    );
}

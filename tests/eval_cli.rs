//! `cdiphase support` and `cdiphase evaluate` end to end: simulate, estimate supports,
//! phase briefly, evaluate; and the failures (non-zero exit, no partial output).

mod common;

use cdiphase::io::{self, CxiWriter};
use common::cli::ok;
use std::path::Path;

fn fails(args: &[&str], needle: &str) -> String {
    let e = common::cli::fails(args);
    assert!(e.contains(needle), "{args:?}: '{needle}' not in: {e}");
    e
}

fn p(x: &Path) -> &str {
    x.to_str().unwrap()
}

fn simulate(dir: &Path, name: &str, count: usize, size: usize) -> std::path::PathBuf {
    let out = dir.join(name);
    ok(&[
        "simulate",
        "--synthetic",
        "all",
        "--residues",
        "150:400",
        "--count",
        &count.to_string(),
        "--size",
        &size.to_string(),
        "--photons",
        "1e9",
        "--seed",
        "3",
        "-o",
        p(&out),
        "--quiet",
    ]);
    out
}

#[test]
fn support_phase_and_evaluate_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let sim = simulate(d.path(), "sim.cxi", 3, 48);
    let ac = d.path().join("ac.cxi");
    let ti = d.path().join("ti.cxi");
    ok(&[
        "support",
        p(&sim),
        "-o",
        p(&ac),
        "--method",
        "autocorrelation",
    ]);
    let o = ok(&[
        "support",
        p(&sim),
        "-o",
        p(&ti),
        "--method",
        "triple-intersection",
        "--json",
    ]);
    let js: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(js["patterns"], 3);
    assert_eq!(js["triple_intersection"].as_array().unwrap().len(), 3);
    let s = io::read_support(&ac, None).unwrap();
    assert_eq!(s.shape(), [3, 48, 48]);
    // the autocorrelation support is centred on (H/2, W/2), where |IFFT(I)| peaks
    assert!((0..3).all(|i| s.image(i)[24 * 48 + 24] == 1));
    let t = io::read_support(&ti, None).unwrap();
    for i in 0..3 {
        let (na, nt) = (
            s.image(i).iter().filter(|&&v| v != 0).count(),
            t.image(i).iter().filter(|&&v| v != 0).count(),
        );
        assert!(
            nt > 0 && nt < na,
            "pattern {i}: triple {nt} vs autocorrelation {na}"
        );
    }
    // nn: the threshold of a network output; here the true density plays the network
    let (shape, dens) = io::read_f32(&sim, "entry_1/sample_1/density").unwrap();
    let pred = d.path().join("pred.cxi");
    let mut w = CxiWriter::new();
    w.f32("entry_1/image_1/data", &shape, &dens).unwrap();
    w.finish(&pred).unwrap();
    let nn = d.path().join("nn.cxi");
    ok(&[
        "support",
        p(&pred),
        "-o",
        p(&nn),
        "--method",
        "nn",
        "--threshold",
        "0.1",
    ]);

    // phase from the triple-intersection support file: `phase` accepts it
    let rec = d.path().join("rec.cxi");
    ok(&[
        "phase",
        p(&sim),
        "-o",
        p(&rec),
        "--algorithm",
        "20*(20*HIO + 5*ER)",
        "--support",
        p(&ac),
        "--shrinkwrap",
        "sigma=1,threshold=0.1,every=25",
        "--constraint",
        "positive",
        "--starts",
        "3",
        "--keep-all",
        "--quiet",
    ]);
    let report = d.path().join("report");
    let o = ok(&[
        "evaluate",
        "--truth",
        p(&sim),
        "--input",
        p(&ac),
        p(&ti),
        p(&nn),
        p(&rec),
        "--report",
        p(&report),
        "--json",
    ]);
    for f in [
        "metrics.json",
        "index.html",
        "support_fp_fn.png",
        "prtf.png",
        "fourier_error.png",
        // rec has 3 starts: every start's history
        "fourier_error_starts.png",
        "density_error.png",
        "grid_0_ac.png",
        "grid_1_ti.png",
        "grid_2_nn.png",
        "grid_3_rec.png",
    ] {
        let m = std::fs::metadata(report.join(f)).unwrap_or_else(|_| panic!("{f} missing"));
        assert!(
            m.len() > 1000 || f.ends_with(".json") || f.ends_with(".html"),
            "{f} too small"
        );
    }
    let js: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(js, on_disk);
    assert_eq!(js["patterns"], 3);
    assert!(js["pixel_size_nm"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v.as_f64().unwrap() > 0.0));
    let inputs = js["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 4);
    let labels: Vec<&str> = inputs
        .iter()
        .map(|i| i["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["ac", "ti", "nn", "rec"]);
    for inp in inputs {
        let per = inp["per_pattern"].as_array().unwrap();
        assert_eq!(per.len(), 3);
        for m in per {
            let s = &m["support"];
            let (fp, fn_) = (
                s["false_positives"].as_u64().unwrap(),
                s["false_negatives"].as_u64().unwrap(),
            );
            let (ne, ni) = (
                s["estimate_size"].as_u64().unwrap(),
                s["ideal_size"].as_u64().unwrap(),
            );
            // |E| - FP = |I| - FN = overlap
            assert_eq!(ne - fp, ni - fn_);
            assert_eq!(ne - fp, s["alignment"]["overlap"].as_u64().unwrap());
        }
    }
    // nn of the true density at 0.1 of its maximum lies inside the ideal support (1 %)
    for m in inputs[2]["per_pattern"].as_array().unwrap() {
        assert_eq!(m["support"]["false_positives"], 0, "{m}");
    }
    // the autocorrelation support is loose: many false positives
    let ac_fp = inputs[0]["aggregate"]["false_positives"]["median"]
        .as_f64()
        .unwrap();
    let ti_fp = inputs[1]["aggregate"]["false_positives"]["median"]
        .as_f64()
        .unwrap();
    assert!(
        ac_fp > ti_fp,
        "autocorrelation FP {ac_fp} vs triple {ti_fp}"
    );
    // the reconstruction: density errors in [0, 1], PRTF resolution between 2 px and the field
    let rec = &inputs[3];
    for m in rec["per_pattern"].as_array().unwrap() {
        let e = m["density"]["error"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&e), "{e}");
        let r = m["prtf_resolution"]["pixels"].as_f64().unwrap();
        assert!((2.0..=48.0).contains(&r), "{r}");
        assert!(m["prtf_resolution"]["nm"].as_f64().unwrap() > 0.0);
        assert!(m["final_fourier_error"].as_f64().unwrap() < 0.5);
    }
    let q = rec["prtf"]["value"].as_array().unwrap();
    assert!(
        (q[0].as_f64().unwrap() - 1.0).abs() < 1e-6,
        "PRTF at zero frequency: {}",
        q[0]
    );
    // every pattern's own PRTF is kept (a report resamples them), and the input's curve is
    // their mean, bin by bin
    let per: Vec<Vec<f64>> = rec["per_pattern"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["prtf"]
                .as_array()
                .unwrap_or_else(|| panic!("no per-pattern prtf in {m}"))
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect();
    for (b, v) in q.iter().enumerate() {
        let mean = per.iter().map(|c| c[b]).sum::<f64>() / per.len() as f64;
        assert!((v.as_f64().unwrap() - mean).abs() < 1e-12, "bin {b}");
    }
    // a support input has no PRTF
    assert!(inputs[0]["per_pattern"][0].get("prtf").is_none());
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(html.contains("grid_3_rec.png") && html.contains("prtf.png"));

    // a second run replaces the previous report
    ok(&[
        "evaluate",
        "--truth",
        p(&sim),
        "--input",
        p(&ti),
        "--report",
        p(&report),
    ]);
    let js: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(js["inputs"].as_array().unwrap().len(), 1);
    assert!(!report.join("prtf.png").exists());
}

#[test]
fn bad_inputs_fail_without_partial_output() {
    let d = tempfile::tempdir().unwrap();
    let sim = simulate(d.path(), "sim.cxi", 2, 32);
    let other = simulate(d.path(), "other.cxi", 2, 40);
    let ac = d.path().join("ac.cxi");
    ok(&["support", p(&sim), "-o", p(&ac)]);
    let report = d.path().join("report");

    // the truth must hold the ground truth of a simulation
    fails(
        &[
            "evaluate",
            "--truth",
            p(&ac),
            "--input",
            p(&ac),
            "--report",
            p(&report),
        ],
        "entry_1/sample_1/density",
    );
    assert!(!report.exists());
    // shape mismatch between the truth and an input
    fails(
        &[
            "evaluate",
            "--truth",
            p(&other),
            "--input",
            p(&ac),
            "--report",
            p(&report),
        ],
        "expected shape",
    );
    assert!(!report.exists());
    // an input without anything to evaluate
    let empty = d.path().join("empty.cxi");
    let mut w = CxiWriter::new();
    w.string("cxi_version", "150").unwrap();
    w.finish(&empty).unwrap();
    fails(
        &[
            "evaluate",
            "--truth",
            p(&sim),
            "--input",
            p(&empty),
            "--report",
            p(&report),
        ],
        "entry_1/image_1/support",
    );
    assert!(!report.exists());
    // a missing file
    fails(
        &[
            "evaluate",
            "--truth",
            p(&sim),
            "--input",
            "nope.cxi",
            "--report",
            p(&report),
        ],
        "nope.cxi",
    );
    assert!(!report.exists());
    // an existing folder that is not a report is never overwritten
    let busy = d.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "x").unwrap();
    fails(
        &[
            "evaluate",
            "--truth",
            p(&sim),
            "--input",
            p(&ac),
            "--report",
            p(&busy),
        ],
        "not a cdiphase report",
    );
    assert!(busy.join("keep.txt").exists());
    // no temporary folders left behind
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // support: bad method, bad threshold, nn on patterns without a network output
    let out = d.path().join("s.cxi");
    fails(
        &["support", p(&sim), "-o", p(&out), "--method", "magic"],
        "unknown support method",
    );
    fails(
        &["support", p(&sim), "-o", p(&out), "--threshold", "1.5"],
        "threshold",
    );
    fails(
        &["support", p(&ac), "-o", p(&out), "--method", "nn"],
        "entry_1/image_1/data",
    );
    fails(&["support", p(&ac), "-o", p(&out)], "entry_1/data_1/data");
    assert!(!out.exists());
}

/// `support --method nn` and `predict` threshold a network output by the same rule (signed
/// `v > t * max v`): negative values of any size are not support.
#[test]
fn nn_support_rule_matches_predict() {
    use cdiphase::array::Stack;
    let (h, w) = (5, 7);
    let mut v: Vec<f32> = (0..2 * h * w)
        .map(|i| ((i * 37 % 11) as f32 - 4.0) / 6.0)
        .collect();
    v[3] = -0.95; // large negative: |v| above the threshold, v below
    let st = Stack::from_vec(2, h, w, v.clone()).unwrap();
    let s = cdiphase::support::threshold_supports(&st, 0.3);
    for p in 0..2 {
        let mut want = vec![0u8; h * w];
        cdiphase::nn::predict::support_of(&v[p * h * w..(p + 1) * h * w], 0.3, &mut want);
        assert_eq!(s.image(p), &want[..]);
        assert!(want.contains(&1) && want.contains(&0));
    }
    assert_eq!(s.image(0)[3], 0);
}

//! `cdiphase demo`, the README's first command, end to end at a small size: every stage
//! runs (simulate from the bundled test structures, the bundled network, supports, three
//! phasing methods, evaluation), the report and summary are complete and consistent.

mod common;

use common::cli::bin;

#[test]
fn demo_runs_the_whole_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let o = bin()
        .args([
            "demo",
            "-o",
            out.to_str().unwrap(),
            "--count",
            "3",
            "--starts",
            "3",
            "--schedule",
            "20*(5*HIO + 5*ER)",
            "--threads",
            "2",
            "--device",
            "cpu",
            "--quiet",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for f in [
        "patterns.cxi",
        "model.safetensors",
        "nn.cxi",
        "autocorrelation.cxi",
        "triple_intersection.cxi",
        "circle_random.cxi",
        "circle_nn_start.cxi",
        "nn_support.cxi",
        "summary.json",
        "report/index.html",
        "report/metrics.json",
        "report/support_fp_fn.png",
        "report/fourier_error.png",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    for want in ["FN <= 2", "circle_nn_start", "Convergence", "sooner"] {
        assert!(stdout.contains(want), "no '{want}' in:\n{stdout}");
    }
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["patterns"], 3);
    assert_eq!(s["iterations"], 200);
    let c = &s["convergence"];
    assert_eq!(c["level"].as_array().unwrap().len(), 3);
    assert_eq!(c["iterations_nn_start"].as_array().unwrap().len(), 3);
    // the random starts' level is their own median final error: at least half reach it
    assert_eq!(c["patterns_reached_random"], 3);
    let inputs = s["metrics"]["inputs"].as_array().unwrap();
    let labels: Vec<&str> = inputs
        .iter()
        .map(|i| i["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "nn",
            "autocorrelation",
            "triple_intersection",
            "circle_random",
            "circle_nn_start",
            "nn_support"
        ]
    );
    // the network's support was scored against the truth, and the phasing outputs too
    let nn = &inputs[0]["aggregate"];
    assert!(nn["false_positives"]["mean"].as_f64().unwrap() >= 0.0);
    for i in &inputs[3..] {
        let e = i["aggregate"]["final_fourier_error"]["median"]
            .as_f64()
            .unwrap();
        assert!(e.is_finite() && e > 0.0 && e < 1.0, "{i}");
    }
}

#[test]
fn demo_refuses_a_single_start() {
    let dir = tempfile::tempdir().unwrap();
    let o = bin()
        .args(["demo", "-o", dir.path().to_str().unwrap(), "--starts", "1"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--starts"));
}

//! Reproducing the paper (issue 13): the circular starting support of the maximum extent
//! (`support --method circle`) against a float64 brute force, and a smoke run of
//! `scripts/paper.sh` with tiny knobs.
//!
//! The random supports are fresh each run (`CDIPHASE_TEST_SEED` repeats one).

mod common;

use cdiphase::array::Stack;
use cdiphase::support::baselines::{circle_of_extent, max_extent};
use common::cli::{fails, ok};
use common::Lcg;
use std::path::{Path, PathBuf};

/// The largest distance between two support pixel centres, by every pair, plus one.
fn brute_extent(s: &[u8], h: usize, w: usize) -> f64 {
    let pts: Vec<(f64, f64)> = (0..h * w)
        .filter(|&i| s[i] != 0)
        .map(|i| ((i / w) as f64, (i % w) as f64))
        .collect();
    if pts.is_empty() {
        return 0.0;
    }
    let mut d = 0.0f64;
    for a in &pts {
        for b in &pts {
            d = d.max(((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt());
        }
    }
    d + 1.0
}

#[test]
fn max_extent_and_circle_against_brute_force() {
    let (h, w) = (23usize, 31usize);
    let mut g = Lcg::new("circle of extent");
    for trial in 0..20 {
        // random blobs: a few filled rectangles, sometimes holes (interior pixels removed)
        let mut s = vec![0u8; h * w];
        for _ in 0..1 + trial % 4 {
            let y0 = (g.next() * (h - 4) as f64) as usize;
            let x0 = (g.next() * (w - 4) as f64) as usize;
            let hh = 1 + (g.next() * (h - y0 - 1) as f64) as usize;
            let ww = 1 + (g.next() * (w - x0 - 1) as f64) as usize;
            for y in y0..y0 + hh {
                for x in x0..x0 + ww {
                    s[y * w + x] = 1;
                }
            }
        }
        for v in s.iter_mut() {
            if g.next() < 0.1 {
                *v = 0;
            }
        }
        let want = brute_extent(&s, h, w);
        let got = max_extent(&s, h, w);
        assert!((got - want).abs() < 1e-12, "trial {trial}: {got} {want}");
        if want == 0.0 {
            continue;
        }
        let st = Stack::from_vec(1, h, w, s.clone()).unwrap();
        let margin = g.next() * 3.0;
        let (disc, radii) = circle_of_extent(&st, margin).unwrap();
        let r = want / 2.0 + margin;
        assert!((radii[0] - r).abs() < 1e-12);
        for y in 0..h {
            for x in 0..w {
                let d2 = (y as f64 - (h / 2) as f64).powi(2) + (x as f64 - (w / 2) as f64).powi(2);
                assert_eq!(
                    disc.image(0)[y * w + x] != 0,
                    d2 <= r * r,
                    "({y},{x}) r {r}"
                );
            }
        }
    }
    // a single pixel is one pixel wide; a 1x5 bar is 5 long
    let mut s = vec![0u8; h * w];
    s[5 * w + 7] = 1;
    assert_eq!(max_extent(&s, h, w), 1.0);
    for x in 3..8 {
        s[2 * w + x] = 1;
    }
    assert!(max_extent(&s, h, w) >= 5.0);
    // an empty support and a bad margin are errors
    let empty = Stack::filled(2, h, w, 0u8);
    let e = circle_of_extent(&empty, 1.0).unwrap_err().to_string();
    assert!(e.contains("pattern 0") && e.contains("empty"), "{e}");
    let one = Stack::from_vec(1, h, w, s).unwrap();
    assert!(circle_of_extent(&one, -1.0).is_err());
    assert!(circle_of_extent(&one, f64::NAN).is_err());
}

fn p(x: &Path) -> &str {
    x.to_str().unwrap()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn support_method_circle_cli() {
    let d = tempfile::tempdir().unwrap();
    let test = d.path().join("test.cxi");
    ok(&[
        "simulate",
        "--preset",
        "paper",
        "--size",
        "64",
        "--ideal-support",
        "threshold:0.1",
        "--pdb",
        p(&root().join("assets/pdb/1eteA.pdb.gz")),
        p(&root().join("assets/pdb/4gcnA.pdb.gz")),
        "--count",
        "3",
        "--seed",
        "3",
        "-o",
        p(&test),
        "-q",
    ]);
    let out = d.path().join("circle.cxi");
    ok(&[
        "support",
        p(&test),
        "-o",
        p(&out),
        "--method",
        "circle",
        "--margin",
        "0.5",
    ]);
    let (_, ideal) = cdiphase::io::read_f32(&test, "entry_1/sample_1/support").unwrap();
    let got = cdiphase::io::read_support(&out, None).unwrap();
    assert_eq!(got.shape(), [3, 64, 64]);
    for k in 0..3 {
        let s: Vec<u8> = ideal[k * 4096..(k + 1) * 4096]
            .iter()
            .map(|&v| (v != 0.0) as u8)
            .collect();
        let r = brute_extent(&s, 64, 64) / 2.0 + 0.5;
        let area = got.image(k).iter().filter(|&&v| v != 0).count();
        let want = (0..4096)
            .filter(|&i| {
                ((i / 64) as f64 - 32.0).powi(2) + ((i % 64) as f64 - 32.0).powi(2) <= r * r
            })
            .count();
        assert_eq!(area, want, "pattern {k}");
        // the disc covers the ideal support's extent: it holds at least as many pixels
        assert!(area >= s.iter().filter(|&&v| v != 0).count());
    }
    // misuse: clear messages, nothing written
    let bad = d.path().join("bad.cxi");
    for (args, needle) in [
        (
            vec!["--method", "circle", "--threshold", "0.1"],
            "--threshold is not used",
        ),
        (
            vec!["--method", "autocorrelation", "--margin", "1"],
            "--margin is for",
        ),
        (vec!["--method", "circle", "--margin=-2"], "margin"),
    ] {
        let e = fails(&[&["support", p(&test), "-o", p(&bad)][..], &args[..]].concat());
        assert!(e.contains(needle), "{args:?}: {e}");
        assert!(!bad.exists());
    }
    // an input without a ground truth (a support file): the message names it
    let e = fails(&["support", p(&out), "-o", p(&bad), "--method", "circle"]);
    assert!(e.contains("circle.cxi"), "{e}");
    assert!(!bad.exists());
}

/// The Python of the test suite (numpy + h5py): `CDIPHASE_PYTHON`, else the crate's .venv.
/// Missing, it fails (never skips), as tests/io_interop.rs.
fn python() -> PathBuf {
    let py = std::env::var_os("CDIPHASE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    let o = std::process::Command::new(&py)
        .args(["-c", "import numpy, h5py"])
        .output();
    match o {
        Ok(o) if o.status.success() => py,
        _ => panic!(
            "{} cannot import numpy and h5py: run the tests with scripts/test.sh (it creates \
             the pinned .venv) or set CDIPHASE_PYTHON",
            py.display()
        ),
    }
}

/// `scripts/paper.sh` end to end with tiny knobs (about 20 s on 2 cores): every table and
/// figure written, the targets printed as PASS/FAIL, the counts as asked.
#[test]
fn paper_script_smoke() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("paper");
    let o = std::process::Command::new("bash")
        .arg(root().join("scripts/paper.sh"))
        .arg(&out)
        .env("BIN", env!("CARGO_BIN_EXE_cdiphase"))
        .env("PYTHON", python())
        .env("COUNT", "14")
        .env("TRAIN", "20")
        .env("PHASE_COUNT", "2")
        .env("STARTS", "3")
        .env("ITER", "100")
        .env("SW_EVERY", "20")
        .env("THREADS", "2")
        .output()
        .unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{log}");
    for f in [
        "supports.md",
        "supports.json",
        "supports_fp_fn.png",
        "prtf.md",
        "prtf.json",
        "prtf.png",
        "seeding.md",
        "seeding.json",
        "seeding_fourier_error.png",
        "seeding_fourier_error_best.png",
        "summary.md",
    ] {
        let m = std::fs::metadata(out.join(f)).unwrap_or_else(|_| panic!("{f} missing\n{log}"));
        assert!(m.len() > 200, "{f} is {} bytes", m.len());
    }
    let js = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(out.join(f)).unwrap()).unwrap()
    };
    let s = js("supports.json");
    assert_eq!(s["patterns"], 14);
    assert_eq!(s["groups"], 7, "the 7 held-out structures");
    let labels: Vec<&String> = s["inputs"].as_object().unwrap().keys().collect();
    for l in [
        "network",
        "autocorrelation",
        "triple_intersection",
        "mean_image",
        "oracle",
    ] {
        assert!(labels.iter().any(|k| *k == l), "{l} missing in {labels:?}");
    }
    // the density error of the image behind each support: the network's output (its own
    // evaluate run, whose supports the report checks against `support --method nn`'s), the
    // mean image and the blurred truth have one; the autocorrelation has none
    for l in ["network", "mean_image", "oracle"] {
        let e = s["inputs"][l]["density_error_median"]
            .as_f64()
            .unwrap_or_else(|| panic!("{l}: no density error\n{}", s["inputs"][l]));
        assert!(e > 0.0 && e < 2.0, "{l}: density error {e}");
    }
    assert!(s["inputs"]["autocorrelation"]["density_error_median"].is_null());
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        summary.contains("density error of the network's output"),
        "{summary}"
    );
    let p = js("prtf.json");
    for l in [
        "autocorrelation",
        "circle",
        "circle_shrinkwrap",
        "network_support",
    ] {
        let r = &p[l]["resolution_of_mean_prtf"];
        assert!(r["pixels"].as_f64().unwrap() >= 2.0, "{l}: {r}");
        // the bootstrap interval of the mean PRTF's resolution (paper_report.py checks that
        // its own crossing of the full mean equals evaluate's, or fails)
        let iv = &p[l]["resolution_interval_px"];
        let (lo, est, hi) = (
            iv["low"].as_f64().unwrap(),
            iv["estimate"].as_f64().unwrap(),
            iv["high"].as_f64().unwrap(),
        );
        assert!(
            (est - r["pixels"].as_f64().unwrap()).abs() < 1e-9,
            "{l}: {iv}"
        );
        assert!(2.0 <= lo && lo <= est && est <= hi, "{l}: {iv}");
    }
    let ratio = &p["network_over_circle_shrinkwrap"];
    let est = ratio["estimate"].as_f64().unwrap();
    let want = p["network_support"]["resolution_of_mean_prtf"]["pixels"]
        .as_f64()
        .unwrap()
        / p["circle_shrinkwrap"]["resolution_of_mean_prtf"]["pixels"]
            .as_f64()
            .unwrap();
    assert!((est - want).abs() < 1e-9, "{ratio}");
    assert!(ratio["low"].as_f64().unwrap() <= est && est <= ratio["high"].as_f64().unwrap());
    let sd = js("seeding.json");
    assert_eq!(sd["per_pattern"].as_array().unwrap().len(), 2);
    assert_eq!(sd["aggregate"]["starts"], 3);
    // 100 HIO + 100 ER, one record per ER section
    assert_eq!(sd["aggregate"]["iterations"], 200);
    assert_eq!(sd["aggregate"]["records"], 20);
    // the verdicts carry a bootstrap interval over the phasing set's structures
    for key in ["speedup_interval", "spread_ratio_std_interval"] {
        let iv = &sd["aggregate"][key];
        assert_eq!(iv["resamples"], 2000, "{key}: {iv}");
        assert!(iv["groups"].as_u64().unwrap() >= 1, "{key}: {iv}");
        let num = |k: &str| match &iv[k] {
            serde_json::Value::String(s) if s == "inf" => Some(f64::INFINITY),
            v => v.as_f64(),
        };
        if let (Some(lo), Some(est), Some(hi)) = (num("low"), num("estimate"), num("high")) {
            assert!(lo <= est && est <= hi, "{key}: {iv}");
        }
    }
    assert!(
        std::fs::read_to_string(out.join("seeding.md"))
            .unwrap()
            .contains("95 % percentile bootstrap over the structures"),
        "seeding.md names its interval"
    );
    // the seeding oracle: the truth blurred by SEED_SIGMA (2.5 px), phased as a third row
    let o = &sd["oracle"];
    assert_eq!(o["seed_sigma_px"], 2.5, "{o}");
    assert_eq!(o["per_pattern"].as_array().unwrap().len(), 2);
    assert_eq!(o["aggregate"]["starts"], 3);
    assert!(o["aggregate"]["speedup_interval"].is_object(), "{o}");
    assert_eq!(
        sd["aggregate"]["oracle"]["speedup_median"],
        o["aggregate"]["speedup_median"]
    );
    let cmds = std::fs::read_to_string(out.join("data/commands.txt")).unwrap();
    assert!(
        cmds.contains("--method oracle --sigma 2.5 --twin none"),
        "{cmds}"
    );
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    let verdicts = summary.matches("**PASS**").count() + summary.matches("**FAIL**").count();
    assert_eq!(verdicts, 5, "{summary}");
    assert!(
        summary.contains("cdiphase simulate --preset paper"),
        "{summary}"
    );
    assert!(
        summary.contains("seeding oracle (truth blurred 2.5 px, twin kept)"),
        "{summary}"
    );
    // a bad knob: a clear message, non-zero exit
    let o = std::process::Command::new("bash")
        .arg(root().join("scripts/paper.sh"))
        .arg(d.path().join("bad"))
        .env("BIN", env!("CARGO_BIN_EXE_cdiphase"))
        .env("PYTHON", python())
        .env("ITER", "12")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("ITER 12 must be a multiple of 5"));
}

/// Runs a Python check of `scripts/paper_report.py` (argv: the scripts folder, the seed) and
/// fails with its output, the seed included, unless it exits 0 and prints "ok".
fn run_report_check(script: &str, seed: u64) {
    let o = std::process::Command::new(python())
        .args(["-c", script])
        .arg(root().join("scripts"))
        .arg(seed.to_string())
        .output()
        .unwrap();
    let log = format!(
        "seed {seed}\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success() && log.contains("ok"), "{log}");
}

/// `paper_report.starts_bootstrap` (the seeding interval that resamples the starts too):
/// its reach times equal `reached_for_good`'s on fresh random histories; with every start
/// of a pattern the same history, resampling the starts changes nothing, so its interval
/// must follow the exact distribution of the median speed-up over every draw of whole
/// structures, the per-pattern speed-ups being `compare_seeded`'s.
#[test]
fn seeding_starts_bootstrap_against_exact_enumeration() {
    let mut g = Lcg::new("starts bootstrap");
    let seed = (g.next() * 1e9) as u64;
    let script = r#"
import itertools, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import paper_report as pr
rng = np.random.default_rng(int(sys.argv[2]))
# reach times against the direct rule, thresholds that every history, some, or none meets
h = rng.random((7, 23)) * np.linspace(1.0, 0.2, 23)
sm = pr.suffix_max(h)
for thr in list(rng.random(20)) + [0.0, 2.0, float(h[:, -1].min()) * 1.0001]:
    got = pr.reached_for_good_many(sm, thr, 10)
    want = [pr.reached_for_good(x, thr / (1 + pr.TOLERANCE), 10) for x in h]
    assert got == want, (thr, got, want)
for trial in range(3):
    n, k, l = int(rng.integers(5, 10)), 3, 40
    groups = sorted(int(x) for x in rng.integers(0, 3, n))
    base_r = rng.random((n, 1, l)) * np.linspace(1.0, 0.3, l)
    base_n = rng.random((n, 1, l)) * np.linspace(1.0, 0.3, l) * rng.uniform(0.8, 1.2, (n, 1, 1))
    hr, hn = np.repeat(base_r, k, axis=1), np.repeat(base_n, k, axis=1)
    fr, fn = hr[:, :, -1], hn[:, :, -1]
    meta = {"iterations": 10 * l}
    pats, agg = pr.compare_seeded(hr, fr, hn, fn, 10, meta, groups, "structures")
    iv = pr.starts_bootstrap(hr, fr, hn, 10, groups, resamples=4000, seed=trial)
    keys = sorted(set(groups))
    exact = sorted(pr.median_opt([pats[i]["speedup"] for j in pick for i in range(n) if groups[i] == keys[j]])
                   for pick in itertools.product(range(len(keys)), repeat=len(keys)))
    exact = [e for e in exact if e is not None]
    cdf_below = lambda x: sum(e < x for e in exact) / len(exact)
    cdf_at = lambda x: sum(e <= x for e in exact) / len(exact)
    assert iv["low"] in exact and iv["high"] in exact, (iv, exact)
    assert cdf_below(iv["low"]) <= 0.025 + 0.02 and cdf_at(iv["low"]) >= 0.025 - 0.02, (iv, exact)
    assert cdf_below(iv["high"]) <= 0.975 + 0.02 and cdf_at(iv["high"]) >= 0.975 - 0.02, (iv, exact)
print("ok")
"#;
    run_report_check(script, seed);
}

/// `paper_report.group_bootstrap` (the seeding verdict's interval) against the exact
/// distribution of the statistic over every draw of whole groups, on fresh random values
/// with a few infinities and zeros (a network or random side that never got there).
#[test]
fn seeding_bootstrap_against_exact_enumeration() {
    let mut g = Lcg::new("seeding bootstrap");
    let seed = (g.next() * 1e9) as u64;
    let script = r#"
import itertools, math, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import paper_report as pr
rng = np.random.default_rng(int(sys.argv[2]))
for trial in range(6):
    k = int(rng.integers(2, 6))
    groups = sorted(int(x) for x in rng.integers(0, k, int(rng.integers(k, 3 * k + 1))))
    keys = sorted(set(groups))
    vals = [float(v) for v in rng.exponential(2.0, len(groups))]
    for i in range(len(vals)):
        u = rng.random()
        vals[i] = math.inf if u < 0.15 else (0.0 if u < 0.3 else vals[i])
    iv = pr.group_bootstrap(vals, groups, pr.median_opt, resamples=20000, seed=trial)
    exact = sorted(pr.median_opt([vals[i] for j in pick for i in range(len(vals)) if groups[i] == keys[j]])
                   for pick in itertools.product(range(len(keys)), repeat=len(keys)))
    cdf_below = lambda x: sum(e < x for e in exact) / len(exact)
    cdf_at = lambda x: sum(e <= x for e in exact) / len(exact)
    assert iv["estimate"] == pr.median_opt(vals), (iv, vals)
    assert iv["groups"] == len(keys)
    assert iv["low"] in exact and iv["high"] in exact, (iv, exact)
    # the 2.5 % and 97.5 % order statistics of the resamples, within Monte Carlo error
    assert cdf_below(iv["low"]) <= 0.025 + 0.01 and cdf_at(iv["low"]) >= 0.025 - 0.01, (iv, exact)
    assert cdf_below(iv["high"]) <= 0.975 + 0.01 and cdf_at(iv["high"]) >= 0.975 - 0.01, (iv, exact)
# a statistic that is undefined in most resamples gives no interval
iv = pr.group_bootstrap([None, 1.0], [0, 1], pr.median_opt, resamples=200)
assert iv["low"] is None and iv["high"] is None and iv["estimate"] == 1.0, iv
print("ok")
"#;
    run_report_check(script, seed);
}

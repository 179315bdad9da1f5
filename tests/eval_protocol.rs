//! The paper's support protocol (issue 13): FN and FP after the alignment of largest
//! overlap (translation and twin), the shares with FN < 2 and FN <= 2, mean and median FP,
//! FP relative to the ideal support, the cluster bootstrap over structures; the baselines
//! (training-set mean image, oracle); `evaluate`'s table and metrics.json.
//!
//! The random supports and images are fresh each run (`CDIPHASE_TEST_SEED` repeats one).

mod common;

use cdiphase::array::Stack;
use cdiphase::eval::align::flip;
use cdiphase::eval::metrics::{
    bootstrap_ci, group_ids, mean, median, share, support_errors, support_summary, SupportErrors,
};
use cdiphase::support::baselines::{gaussian_blur, oracle};
use common::cli::{fails, ok, stderr};
use common::Lcg;
use std::path::{Path, PathBuf};

fn rect(h: usize, w: usize, y0: usize, x0: usize, hh: usize, ww: usize) -> Vec<u8> {
    let mut s = vec![0u8; h * w];
    for y in y0..y0 + hh {
        for x in x0..x0 + ww {
            s[y * w + x] = 1;
        }
    }
    s
}

/// FP and FN by brute force: every circular shift of the estimate and of its flip
/// (index (H - y) % H, (W - x) % W), the alignment of largest overlap; FP = |E| - overlap,
/// FN = |I| - overlap (whichever alignment ties).
fn brute(ideal: &[u8], est: &[u8], h: usize, w: usize) -> (usize, usize) {
    let flipped = flip(est, h, w);
    let mut best = 0;
    for cand in [est, &flipped[..]] {
        for dy in 0..h {
            for dx in 0..w {
                let mut o = 0;
                for y in 0..h {
                    for x in 0..w {
                        if ideal[y * w + x] != 0
                            && cand[((y + h - dy) % h) * w + (x + w - dx) % w] != 0
                        {
                            o += 1;
                        }
                    }
                }
                best = best.max(o);
            }
        }
    }
    let ne = est.iter().filter(|&&v| v != 0).count();
    let ni = ideal.iter().filter(|&&v| v != 0).count();
    (ne - best, ni - best)
}

#[test]
fn hand_computed_counts() {
    let (h, w) = (10, 12);
    let ideal = rect(h, w, 3, 4, 2, 3); // 6 pixels
                                        // shifted by (2, -3) with one extra pixel: aligned, FP 1 and FN 0
    let mut est = rect(h, w, 5, 1, 2, 3);
    est[7 * w + 1] = 1;
    let e = support_errors(&ideal, &est, h, w, true);
    assert_eq!((e.false_positives, e.false_negatives), (1, 0));
    assert_eq!((e.estimate_size, e.ideal_size), (7, 6));
    // two pixels short: FN 2 (counted by FN <= 2, not by FN < 2)
    let mut short = ideal.clone();
    short[3 * w + 4] = 0;
    short[4 * w + 6] = 0;
    let e2 = support_errors(&ideal, &short, h, w, true);
    assert_eq!((e2.false_positives, e2.false_negatives), (0, 2));
    // an L and its twin: exact once the flip is allowed, not without
    let mut l = rect(h, w, 2, 2, 4, 1);
    for x in 2..5 {
        l[5 * w + x] = 1;
    }
    let twin = flip(&l, h, w);
    let e3 = support_errors(&l, &twin, h, w, true);
    assert_eq!((e3.false_positives, e3.false_negatives), (0, 0));
    assert!(e3.alignment.twin);
    let e4 = support_errors(&l, &twin, h, w, false);
    assert_eq!(e4.false_positives, e4.false_negatives);
    assert!(e4.false_negatives > 0);

    let errs = [e, e2, e3];
    let s = support_summary(&errs, &[0, 1, 2], "pattern").unwrap();
    assert_eq!(s.fn_below_2.estimate, 2.0 / 3.0);
    assert_eq!(s.fn_at_most_2.estimate, 1.0);
    assert!((s.fp_mean.estimate - 1.0 / 3.0).abs() < 1e-15);
    assert_eq!(s.fp_median.estimate, 0.0);
    assert!((s.fp_over_ideal_mean.estimate - (1.0 / 6.0) / 3.0).abs() < 1e-15);
    assert!((s.fn_mean.estimate - 2.0 / 3.0).abs() < 1e-15);
    assert!((s.fp_over_ideal_of_means - (1.0 / 3.0) / (6.0 + 6.0 + 6.0) * 3.0).abs() < 1e-15);
    assert_eq!(s.ideal_size_median, 6.0);
    assert_eq!(s.estimate_size_median, 6.0);
}

#[test]
fn random_supports_match_brute_force_and_the_summary_its_definition() {
    let mut g = Lcg::new("random supports");
    for &(h, w) in &[(13usize, 17usize), (16, 9), (11, 11)] {
        let mut errs: Vec<SupportErrors> = Vec::new();
        let mut fns = Vec::new();
        let mut fps = Vec::new();
        let mut rel = Vec::new();
        for _ in 0..12 {
            let blob = |g: &mut Lcg, p: f64| -> Vec<u8> {
                let mut s = vec![0u8; h * w];
                let (cy, cx) = (h as f64 / 2.0, w as f64 / 2.0);
                for y in 0..h {
                    for x in 0..w {
                        let r = ((y as f64 - cy).powi(2) + (x as f64 - cx).powi(2)).sqrt();
                        if r < 3.5 && g.next() < p {
                            s[y * w + x] = 1;
                        }
                    }
                }
                s[(h / 2) * w + w / 2] = 1;
                s
            };
            let ideal = blob(&mut g, 0.8);
            let mut est = blob(&mut g, 0.9);
            // move the estimate somewhere and flip it half the time
            let (dy, dx) = (
                (g.next() * h as f64) as usize,
                (g.next() * w as f64) as usize,
            );
            est = (0..h * w)
                .map(|i| est[((i / w + dy) % h) * w + (i % w + dx) % w])
                .collect();
            if g.next() < 0.5 {
                est = flip(&est, h, w);
            }
            let e = support_errors(&ideal, &est, h, w, true);
            let (fp, fn_) = brute(&ideal, &est, h, w);
            assert_eq!((e.false_positives, e.false_negatives), (fp, fn_), "{h}x{w}");
            errs.push(e);
            fns.push(fn_ as f64);
            fps.push(fp as f64);
            rel.push(fp as f64 / ideal.iter().filter(|&&v| v != 0).count() as f64);
        }
        let groups: Vec<usize> = (0..errs.len()).map(|i| i / 3).collect();
        let s = support_summary(&errs, &groups, "test").unwrap();
        assert_eq!(s.groups, 4);
        let below = fns.iter().filter(|&&v| v < 2.0).count() as f64 / fns.len() as f64;
        let atmost = fns.iter().filter(|&&v| v <= 2.0).count() as f64 / fns.len() as f64;
        assert_eq!(s.fn_below_2.estimate, below);
        assert_eq!(s.fn_at_most_2.estimate, atmost);
        assert!((s.fp_mean.estimate - fps.iter().sum::<f64>() / 12.0).abs() < 1e-12);
        let mut sorted = fps.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        assert_eq!(s.fp_median.estimate, 0.5 * (sorted[5] + sorted[6]));
        assert!((s.fp_over_ideal_mean.estimate - rel.iter().sum::<f64>() / 12.0).abs() < 1e-12);
        for i in [
            s.fn_below_2,
            s.fn_at_most_2,
            s.fp_mean,
            s.fp_median,
            s.fp_over_ideal_mean,
            s.fn_mean,
        ] {
            assert!(i.low <= i.high, "{i:?}");
        }
    }
}

#[test]
fn bootstrap_over_groups() {
    // 3 groups of one value each: the mean of 3 draws with replacement from {0, 1, 10}
    // takes 0 and 10 with probability 1/27 each (> 2.5 %), so the 95 % interval is [0, 10]
    let v = [0.0, 1.0, 10.0];
    let g = [0, 1, 2];
    let ci = bootstrap_ci(&g, &v, &mean, 2000, 0.95, 1);
    assert_eq!((ci.estimate, ci.low, ci.high), (11.0 / 3.0, 0.0, 10.0));
    // deterministic in the seed
    assert_eq!(ci, bootstrap_ci(&g, &v, &mean, 2000, 0.95, 1));
    // whole groups are resampled: two groups of 10 patterns, FN 0 and FN 5. A pattern-level
    // bootstrap would give a narrow interval around 0.5; over 2 groups it spans [0, 1]
    let fns: Vec<f64> = (0..20).map(|i| if i < 10 { 0.0 } else { 5.0 }).collect();
    let groups: Vec<usize> = (0..20).map(|i| i / 10).collect();
    let s = bootstrap_ci(&groups, &fns, &|x| share(x, 2.0, true), 2000, 0.95, 3);
    assert_eq!((s.estimate, s.low, s.high), (0.5, 0.0, 1.0));
    // one group per pattern, all equal: a degenerate interval
    let c = bootstrap_ci(&[0, 1, 2, 3], &[4.0; 4], &median, 500, 0.95, 0);
    assert_eq!((c.low, c.high), (4.0, 4.0));
    let (ids, n) = group_ids(&["b".into(), "a".into(), "b".into(), "c".into()]);
    assert_eq!((ids, n), (vec![0, 1, 0, 2], 3));
    assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), 2.5);
}

#[test]
fn oracle_blur_and_twin_against_direct_sums() {
    let (h, w) = (11usize, 14usize);
    let mut g = Lcg::new("oracle image");
    let img: Vec<f32> = (0..h * w).map(|_| g.next() as f32).collect();
    let sigma = 1.3;
    let got = gaussian_blur(&img, h, w, sigma);
    let r = (4.0f64 * sigma).ceil() as i64;
    let norm: f64 = (-r..=r)
        .map(|d| (-(d * d) as f64 / (2.0 * sigma * sigma)).exp())
        .sum::<f64>();
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let mut s = 0.0;
            for dy in -r..=r {
                for dx in -r..=r {
                    let (yy, xx) = (y + dy, x + dx);
                    if (0..h as i64).contains(&yy) && (0..w as i64).contains(&xx) {
                        s += img[(yy * w as i64 + xx) as usize] as f64
                            * (-((dy * dy + dx * dx) as f64) / (2.0 * sigma * sigma)).exp();
                    }
                }
            }
            s /= norm * norm;
            let g = got[(y * w as i64 + x) as usize];
            assert!((g - s).abs() < 1e-12, "({y},{x}) {g} {s}");
        }
    }
    let dens = Stack::from_vec(1, h, w, img.clone()).unwrap();
    let o = oracle(&dens, sigma, true).unwrap();
    let im = o.image(0);
    assert_eq!(im.iter().fold(0f32, |m, &v| m.max(v)), 1.0);
    assert_eq!(flip(im, h, w), im.to_vec(), "twin-averaged");
    let plain = oracle(&dens, 0.0, false).unwrap();
    let max = img.iter().fold(0f32, |m, &v| m.max(v));
    for (a, b) in plain.image(0).iter().zip(&img) {
        assert!((a - b / max).abs() < 1e-6);
    }
    assert!(oracle(&dens, -1.0, true).is_err());
}

fn p(x: &Path) -> &str {
    x.to_str().unwrap()
}

fn pdb(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("assets/pdb")
        .join(name)
}

#[test]
fn baselines_and_the_protocol_table_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let train = d.path().join("train.cxi");
    let test = d.path().join("test.cxi");
    // 300 training patterns (more than one block of 256 for the streamed mean)
    ok(&[
        "simulate",
        "--preset",
        "paper",
        "--size",
        "48",
        "--pdb",
        p(&pdb("1bvyF.pdb.gz")),
        p(&pdb("2cviA.pdb.gz")),
        "--count",
        "300",
        "--seed",
        "1",
        "-o",
        p(&train),
        "-q",
    ]);
    ok(&[
        "simulate",
        "--preset",
        "paper",
        "--size",
        "48",
        "--ideal-support",
        "threshold:0.1",
        "--pdb",
        p(&pdb("1eteA.pdb.gz")),
        p(&pdb("2xdgA.pdb.gz")),
        p(&pdb("4gcnA.pdb.gz")),
        "--count",
        "9",
        "--seed",
        "2",
        "-o",
        p(&test),
        "-q",
    ]);
    let mean_f = d.path().join("mean.cxi");
    ok(&[
        "support",
        p(&test),
        "-o",
        p(&mean_f),
        "--method",
        "mean-image",
        "--from",
        p(&train),
    ]);
    // the mean image is the mean of the normalised training densities (float64 here)
    let (_, dens) = cdiphase::io::read_f32(&train, "entry_1/sample_1/density").unwrap();
    let hw = 48 * 48;
    let mut want = vec![0.0f64; hw];
    for img in dens.chunks(hw) {
        let m = img.iter().fold(0f32, |a, &b| a.max(b)) as f64;
        for (a, &v) in want.iter_mut().zip(img) {
            *a += v as f64 / m / 300.0;
        }
    }
    let (shape, got) = cdiphase::io::read_f32(&mean_f, "entry_1/image_1/data").unwrap();
    assert_eq!(shape, [9, 48, 48]);
    for k in [0, 8] {
        for (g, e) in got[k * hw..(k + 1) * hw].iter().zip(&want) {
            assert!((*g as f64 - e).abs() < 1e-6, "{g} {e}");
        }
    }
    // the oracle at sigma 0 without the twin is the truth: with the same 10 % rule as the
    // ideal support, every pattern has FP = FN = 0
    let oracle_f = d.path().join("oracle.cxi");
    ok(&[
        "support",
        p(&test),
        "-o",
        p(&oracle_f),
        "--method",
        "oracle",
        "--sigma",
        "0",
        "--twin",
        "none",
    ]);
    let blur_f = d.path().join("blur.cxi");
    ok(&[
        "support",
        p(&test),
        "-o",
        p(&blur_f),
        "--method",
        "oracle",
        "--sigma",
        "1.5",
    ]);
    let rep = d.path().join("rep");
    let o = ok(&[
        "evaluate",
        "--truth",
        p(&test),
        "--input",
        p(&mean_f),
        p(&oracle_f),
        p(&blur_f),
        "--report",
        p(&rep),
    ]);
    let err = stderr(&o);
    assert!(
        err.contains("FN < 2") && err.contains("FN <= 2") && err.contains("mean FP/ideal"),
        "{err}"
    );
    assert!(err.contains("9 patterns, 3 groups by source id"), "{err}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rep.join("metrics.json")).unwrap()).unwrap();
    let inputs = m["inputs"].as_array().unwrap();
    let s = &inputs[1]["aggregate"]["support_summary"];
    assert_eq!(s["fn_below_2"]["estimate"], 1.0);
    assert_eq!(s["fp_mean"]["estimate"], 0.0);
    assert_eq!(s["groups"], 3);
    assert_eq!(inputs[1]["aggregate"]["fraction_fn_below_2"], 1.0);
    assert!(inputs[0]["aggregate"]["density_error"].is_object());
    let html = std::fs::read_to_string(rep.join("index.html")).unwrap();
    assert!(
        html.contains("<h2>Supports: the paper") && html.contains("FN &lt; 2"),
        "{html}"
    );

    // failures: clear messages, non-zero exit, nothing written
    let out = d.path().join("x.cxi");
    for (args, needle) in [
        (vec!["--method", "mean-image"], "needs --from"),
        (vec!["--method", "oracle"], "needs --sigma"),
        (
            vec!["--method", "oracle", "--sigma", "1", "--twin", "both"],
            "expected average or none",
        ),
        (
            vec!["--method", "autocorrelation", "--sigma", "1"],
            "--sigma is for --method oracle",
        ),
        (
            vec![
                "--method",
                "mean-image",
                "--from",
                p(&d.path().join("none.cxi")),
            ],
            "none.cxi",
        ),
    ] {
        let e = fails(&[&["support", p(&test), "-o", p(&out)][..], &args[..]].concat());
        assert!(e.contains(needle), "{args:?}: {e}");
        assert!(!out.exists());
    }
    // a training set of another size
    let small = d.path().join("small.cxi");
    ok(&[
        "simulate",
        "--preset",
        "paper",
        "--size",
        "40",
        "--pdb",
        p(&pdb("1bvyF.pdb.gz")),
        "--count",
        "2",
        "-o",
        p(&small),
        "-q",
    ]);
    let e = fails(&[
        "support",
        p(&test),
        "-o",
        p(&out),
        "--method",
        "mean-image",
        "--from",
        p(&small),
    ]);
    assert!(e.contains("48x48 patterns, but the mean image"), "{e}");
}

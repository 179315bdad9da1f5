//! Measurement (ignored; run by hand with `--ignored --nocapture`): why `--missing-centre
//! interpolate` misses on some objects. Many random compact objects at 47x71, beamstop
//! r = 3.5 (the unit test's failing case): the default fill, the fill with the true
//! autocorrelation support (undilated and dilated 2 px), more rounds, and how the default's
//! final support differs from the true one (NOTES.md, "The missing centre and culling").

mod common;

use cdiphase::fft::Plan2d;
use cdiphase::phasing::missing::{interpolate_with, is_masked, InterpolateOptions};
use common::refs::dft2;
use common::Lcg;
use num_complex::Complex64;

fn compact(rng: &mut Lcg, h: usize, w: usize, size: f64) -> Vec<Complex64> {
    let ry = h as f64 * size * (0.8 + 0.4 * rng.next());
    let rx = w as f64 * size * (0.8 + 0.4 * rng.next());
    (0..h * w)
        .map(|i| {
            let (y, x) = (i / w, i % w);
            let dy = y.min(h - y) as f64 / ry;
            let dx = x.min(w - x) as f64 / rx;
            if dy * dy + dx * dx < 1.0 {
                Complex64::new(0.5 + rng.next(), 0.0)
            } else {
                Complex64::new(0.0, 0.0)
            }
        })
        .collect()
}

fn central(i: usize, h: usize, w: usize, r: f64) -> bool {
    let (y, x) = (i / w, i % w);
    let dy = y.min(h - y) as f64;
    let dx = x.min(w - x) as f64;
    dy * dy + dx * dx <= r * r
}

/// Per case: the misses of each variant (before, raise only, now, 32 rounds, true support)
/// and the true-support pixels the default's support missed.
type Row = (f64, f64, f64, f64, f64, usize);

#[test]
#[ignore]
fn interpolation_failure_modes() {
    let mut rng = Lcg::new("interp-probe");
    for (h, w, r, size) in [
        (47usize, 71usize, 3.5f64, 0.12f64),
        (60, 52, 2.5, 0.12),
        (64, 64, 3.0, 0.12),
        (64, 64, 5.0, 0.12),
        (64, 64, 3.0, 0.2),
        (128, 128, 4.0, 0.15),
    ] {
        println!("== {h}x{w}, beamstop r = {r}, object radius {size} of the field");
        probe(&mut rng, h, w, r, size);
    }
}

fn probe(rng: &mut Lcg, h: usize, w: usize, r: f64, size: f64) {
    let cases: usize = std::env::var("PROBE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let l = h * w;
    let plan = Plan2d::<f64>::new(h, w);
    let mut rows = Vec::new();
    for case in 0..cases {
        let obj = compact(rng, h, w, size);
        let f = dft2(&obj, h, w, -1.0);
        let truth: Vec<f64> = f.iter().map(|c| c.norm_sqr()).collect();
        let a: Vec<f32> = (0..l)
            .map(|i| {
                if central(i, h, w, r) {
                    -1.0
                } else {
                    truth[i].sqrt() as f32
                }
            })
            .collect();
        // the true autocorrelation and its support
        let ac = dft2(
            &truth
                .iter()
                .map(|&v| Complex64::new(v, 0.0))
                .collect::<Vec<_>>(),
            h,
            w,
            1.0,
        );
        let amax = ac.iter().map(|v| v.re).fold(f64::MIN, f64::max);
        let tsup: Vec<u8> = ac.iter().map(|v| (v.re > 1e-9 * amax) as u8).collect();
        let rel = |filled: &[f32]| {
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for i in (0..l).filter(|&i| is_masked(a[i])) {
                num += ((filled[i] as f64).powi(2) - truth[i]).powi(2);
                den += truth[i].powi(2);
            }
            (num / den).sqrt()
        };
        let run = |o: InterpolateOptions| interpolate_with(&a, h, w, &plan, &o).unwrap();
        let (d, dsup) = run(InterpolateOptions::default());
        let (t0, _) = run(InterpolateOptions {
            support: Some(&tsup),
            dilation: 0,
            ..Default::default()
        });
        let (r32, _) = run(InterpolateOptions {
            rounds: 32,
            ..Default::default()
        });
        // the algorithm before session 26: one start, the threshold never raised, 8 rounds
        let (old, _) = run(InterpolateOptions {
            rounds: 8,
            min_outside: Some(0),
            guinier: false,
            ..Default::default()
        });
        // the threshold raise alone
        let (raise, _) = run(InterpolateOptions {
            guinier: false,
            ..Default::default()
        });
        let missing = (0..l).filter(|&i| tsup[i] == 1 && dsup[i] == 0).count();
        let extra = (0..l).filter(|&i| tsup[i] == 0 && dsup[i] == 1).count();
        let tcount = tsup.iter().filter(|&&v| v != 0).count();
        let m = a.iter().filter(|&&v| is_masked(v)).count();
        println!(
            "case {case:2}: before {:.1e}  threshold raise {:.1e}  default {:.1e}  32 rounds {:.1e}  true support {:.1e} | true support {tcount} px, default's misses {missing}, adds {extra}; outside {} px for {m} unknowns",
            rel(&old),
            rel(&raise),
            rel(&d),
            rel(&r32),
            rel(&t0),
            l - tcount
        );
        // the least squares themselves: exact with the true support, whatever the object
        assert!(
            rel(&t0) < 1e-6,
            "case {case}: {:.1e} with the true support",
            rel(&t0)
        );
        rows.push((
            rel(&old),
            rel(&raise),
            rel(&d),
            rel(&r32),
            rel(&t0),
            missing,
        ));
    }
    let bad = |f: fn(&Row) -> f64| rows.iter().filter(|r| f(r) > 1e-3).count();
    println!(
        "over {cases}: > 1e-3 off: before {}, threshold raise only {}, default (raise + Guinier start) {}, default with 32 rounds {}, true support {}",
        bad(|r| r.0),
        bad(|r| r.1),
        bad(|r| r.2),
        bad(|r| r.3),
        bad(|r| r.4)
    );
}

//! The cancel flag stops a phasing run and a prediction early with `Error::Cancelled`, and
//! `eval::metrics::fourier_error` measures what the backends record.

use std::time::{Duration, Instant};

use cdiphase::backend::{select, Device, NetOptions};
use cdiphase::cancel::Cancel;
use cdiphase::eval::{align::to_c64, metrics};
use cdiphase::io::PatternSet;
use cdiphase::nn::{presets, spec::Preprocess, Model};
use cdiphase::phasing::{self, PhaseConfig};
use cdiphase::Error;

fn patterns(n: usize, size: usize) -> PatternSet {
    cdiphase::simulate::synthetic_particles(n, size, size, 3, 7).0
}

#[test]
fn a_cancelled_phasing_run_stops_at_once() {
    let ps = patterns(2, 32);
    for (threads, starts) in [(1, 1), (2, 4)] {
        let cfg = PhaseConfig {
            schedule: "1000000*(5*HIO + 5*ER)".into(),
            starts,
            ..PhaseConfig::default()
        };
        let (mut problem, program) = phasing::prepare(&ps, &cfg).unwrap();
        let cancel = Cancel::new();
        problem.cancel = cancel.clone();
        let backend = select(Device::Cpu, Some(threads)).unwrap();
        let t = Instant::now();
        let r = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                cancel.cancel();
            });
            phasing::run_prepared(backend.as_ref(), &problem, &program, &|_| {})
        });
        assert!(matches!(r, Err(Error::Cancelled)), "{:?}", r.err());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
}

#[test]
fn a_cancelled_prediction_stops_between_batches() {
    let spec = presets::spinn(16, 1.0 / 16.0, Preprocess::Max).unwrap();
    let model = Model::random(spec, 1).unwrap();
    let ps = patterns(4, 16);
    let backend = select(Device::Cpu, Some(1)).unwrap();
    let cancel = Cancel::new();
    let seen = std::sync::atomic::AtomicUsize::new(0);
    let r = cdiphase::nn::predict::predict_cancellable(
        backend.as_ref(),
        &model,
        &ps.intensities,
        None,
        1,
        0.1,
        NetOptions::default(),
        &|done| {
            seen.store(done, std::sync::atomic::Ordering::Relaxed);
            if done == 2 {
                cancel.cancel();
            }
        },
        &cancel,
    );
    assert!(matches!(r, Err(Error::Cancelled)));
    assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[test]
fn fourier_error_is_what_phasing_records() {
    let ps = patterns(2, 32);
    let cfg = PhaseConfig {
        schedule: "3*(5*HIO + 5*ER)".into(),
        starts: 2,
        ..PhaseConfig::default()
    };
    let backend = select(Device::Cpu, Some(1)).unwrap();
    let rec = phasing::phase(backend.as_ref(), &ps, &cfg, &|_| {}).unwrap();
    let st = &ps.intensities;
    for (p, want) in rec.best_final_errors().into_iter().enumerate() {
        let got =
            metrics::fourier_error(&to_c64(rec.objects.image(p)), st.image(p), None, st.h, st.w)
                .unwrap();
        assert!(want > 1e-3, "{want}");
        assert!(
            (got - want as f64).abs() < 1e-3 * want as f64,
            "{got} vs {want}"
        );
    }
    // unmeasured pixels are left out; a bad value is named
    let mut bad = st.image(0).to_vec();
    bad[5] = f32::NAN;
    let e = metrics::fourier_error(&to_c64(rec.objects.image(0)), &bad, None, 32, 32);
    assert!(e.unwrap_err().to_string().contains("pixel (y=0, x=5)"));
    let mut mask = vec![0u8; 32 * 32];
    mask[5] = 1;
    assert!(
        metrics::fourier_error(&to_c64(rec.objects.image(0)), &bad, Some(&mask), 32, 32).is_ok()
    );
}

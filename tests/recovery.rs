//! Recovery: 20 random compact objects (oversampling >= 2 per axis, noise-free) phased from
//! an autocorrelation starting support with shrinkwrap must come back to a normalised error
//! < 0.05 after alignment (translation, twin, global phase) in at least 18 of 20.

mod common;

use cdiphase::array::{Complex32, Stack};
use cdiphase::backend::cpu::CpuBackend;
use cdiphase::eval::align::aligned_error;
use cdiphase::fft::Plan2d;
use cdiphase::io::PatternSet;
use cdiphase::phasing::program::{Constraint, ShrinkwrapConfig};
use cdiphase::phasing::{phase, PhaseConfig, SupportSpec};
use cdiphase::simulate::{far_field_intensity, random_compact_object};

#[test]
fn recovers_18_of_20_random_compact_objects() {
    let (h, w) = (64usize, 64usize);
    let n = 20;
    let plan = Plan2d::new(h, w);
    let seed0 = common::seed("recovery objects");
    let mut truth = Vec::new();
    let mut data = Vec::new();
    for i in 0..n {
        let obj: Vec<Complex32> =
            random_compact_object(h, w, (h.min(w) / 4) as f32, seed0 + i as u64)
                .into_iter()
                .map(|v| Complex32::new(v, 0.0))
                .collect();
        data.extend(far_field_intensity(&obj, h, w, &plan));
        truth.push(obj);
    }
    let patterns = PatternSet {
        intensities: Stack::from_vec(n, h, w, data).unwrap(),
        mask: None,
        source: "memory".into(),
        entry: "random compact objects".into(),
    };
    let cfg = PhaseConfig {
        schedule: "300*(20*HIO + 5*ER) + 100*ER".into(),
        beta: 0.9,
        shrinkwrap: Some(
            ShrinkwrapConfig::parse("sigma=1,threshold=0.1,every=25,stop=7000").unwrap(),
        ),
        constraint: Constraint::Positive,
        starts: 8,
        seed: 1,
        support: SupportSpec::Autocorrelation { threshold: 0.04 },
        ..PhaseConfig::default()
    };
    let backend = CpuBackend::new(None).unwrap();
    let rec = phase(&backend, &patterns, &cfg, &|_| {}).unwrap();
    let mut ok = 0;
    for (i, t) in truth.iter().enumerate() {
        let al = aligned_error(t, rec.objects.image(i), h, w);
        eprintln!(
            "object {i}: error {:.4} (shift {:?}, twin {}), final Fourier error {:.2e}",
            al.error,
            al.shift,
            al.twin,
            rec.best_final_errors()[i]
        );
        if al.error < 0.05 {
            ok += 1;
        }
    }
    eprintln!("{ok} of {n} recovered");
    assert!(ok >= 18, "only {ok} of {n} objects recovered to < 0.05");
}

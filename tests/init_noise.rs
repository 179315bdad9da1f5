//! `--init FILE --init-noise A`: starts around one given object, each with its own seeded
//! multiplicative noise in [1 - A, 1 + A]; A = 0 keeps every start equal to the object.

use cdiphase::array::{Complex32, Stack};
use cdiphase::io::PatternSet;
use cdiphase::phasing::{self, InitSpec, PhaseConfig, SupportSpec};

fn setup(noise: f32, seed: u64) -> (phasing::problem::PhasingProblem, usize) {
    let (ps, cfg, l) = inputs(noise, seed);
    (phasing::prepare(&ps, &cfg).unwrap().0, l)
}

fn inputs(noise: f32, seed: u64) -> (PatternSet, PhaseConfig, usize) {
    let (n, h, w) = (2, 12, 10);
    let l = h * w;
    let mut inten = vec![0.0f32; n * l];
    for (i, v) in inten.iter_mut().enumerate() {
        *v = 1.0 + (i % 7) as f32;
    }
    let ps = PatternSet {
        intensities: Stack::from_vec(n, h, w, inten).unwrap(),
        mask: None,
        source: "mem".into(),
        entry: String::new(),
    };
    let obj: Vec<Complex32> = (0..n * l)
        .map(|i| Complex32::new(0.5 + (i % 5) as f32 * 0.1, 0.0))
        .collect();
    let cfg = PhaseConfig {
        schedule: "2*ER".into(),
        starts: 3,
        seed,
        support: SupportSpec::Circle { radius: 4.0 },
        init: InitSpec::Given(Stack::from_vec(n, h, w, obj).unwrap()),
        init_noise: noise,
        ..PhaseConfig::default()
    };
    (ps, cfg, l)
}

fn start(p: &phasing::problem::PhasingProblem, l: usize, pat: usize, s: usize) -> Vec<Complex32> {
    let mut o = vec![Complex32::new(f32::NAN, 0.0); l];
    let mut sup = vec![0u8; l];
    p.initial_state(pat, s, &mut o, &mut sup);
    o
}

#[test]
fn init_noise_gives_distinct_bounded_seeded_starts() {
    let (p0, l) = setup(0.0, 1);
    for pat in 0..2 {
        let a = start(&p0, l, pat, 0);
        assert!(a.iter().all(|c| c.re.is_finite()));
        for s in 1..3 {
            assert_eq!(a, start(&p0, l, pat, s), "noise 0: starts must be equal");
        }
    }
    let (p, _) = setup(0.2, 1);
    for pat in 0..2 {
        let base = start(&p0, l, pat, 0);
        let starts: Vec<Vec<Complex32>> = (0..3).map(|s| start(&p, l, pat, s)).collect();
        assert_ne!(starts[0], starts[1]);
        assert_ne!(starts[1], starts[2]);
        for st in &starts {
            let mut dev = 0.0f32;
            for (x, b) in st.iter().zip(&base) {
                if b.norm() > 0.0 {
                    let r = x.re / b.re;
                    assert!((0.8 - 1e-6..=1.2 + 1e-6).contains(&r), "ratio {r}");
                    dev = dev.max((r - 1.0).abs());
                }
            }
            assert!(dev > 0.1, "noise too small: {dev}");
        }
    }
    // seeded: the same seed gives the same starts, another seed others
    let (again, _) = setup(0.2, 1);
    let (other, _) = setup(0.2, 2);
    assert_eq!(start(&p, l, 1, 2), start(&again, l, 1, 2));
    assert_ne!(start(&p, l, 1, 2), start(&other, l, 1, 2));
}

#[test]
fn init_noise_out_of_range_is_refused() {
    for bad in [-0.1f32, 1.0, f32::NAN] {
        let (ps, cfg, _) = inputs(bad, 1);
        match phasing::prepare(&ps, &cfg) {
            Ok(_) => panic!("init_noise {bad} accepted"),
            Err(e) => assert!(e.to_string().contains("--init-noise"), "{e}"),
        }
    }
}

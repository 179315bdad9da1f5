//! Phasing problems built by hand for the engine tests: the struct with the tests' common
//! settings ([`problem`]), and the compact-disc problem several files use ([`disc_problem`]).

use super::refs::dft2;
use super::Lcg;
use cdiphase::array::Stack;
use cdiphase::phasing::problem::{InitObjects, PhasingProblem};
use cdiphase::phasing::program::Constraint;
use num_complex::Complex64;

/// The per-pattern data of a problem: amplitudes (negative = unmeasured), starting supports
/// and the sums the engines normalise by, all N*H*W (sums: N).
pub struct Data {
    pub amplitudes: Vec<f32>,
    pub supports: Vec<u8>,
    pub sum_a2: Vec<f64>,
    pub measured: Vec<usize>,
}

/// A problem of N patterns of HxW with random starts seeded from `rng`, every start kept
/// (`keep_all`), the default selection and no per-start shrinkwrap factors.
pub fn problem(
    rng: &mut Lcg,
    (n, h, w, starts): (usize, usize, usize, usize),
    d: Data,
    constraint: Constraint,
) -> PhasingProblem {
    PhasingProblem {
        n,
        h,
        w,
        starts,
        amplitudes: d.amplitudes,
        sum_a2: d.sum_a2,
        measured: d.measured,
        supports: Stack::from_vec(n, h, w, d.supports).unwrap(),
        init: InitObjects::Random {
            seed: (rng.next() * 1e12) as u64,
        },
        constraint,
        keep_all: true,
        cancel: Default::default(),
        selection: Default::default(),
        sw_factors: Vec::new(),
    }
}

/// Compact random real objects (a disc of radius ~H/6 around the origin, values 0.5..1.5),
/// their exact amplitudes (every pixel measured), a generous disc support (radius ~H/3),
/// positivity.
pub fn disc_problem(rng: &mut Lcg, n: usize, h: usize, w: usize, starts: usize) -> PhasingProblem {
    let l = h * w;
    let mut d = Data {
        amplitudes: vec![0.0f32; n * l],
        supports: vec![0u8; n * l],
        sum_a2: vec![0.0; n],
        measured: vec![0; n],
    };
    for p in 0..n {
        let mut obj = vec![Complex64::new(0.0, 0.0); l];
        let sup = &mut d.supports[p * l..(p + 1) * l];
        for (i, (o, s)) in obj.iter_mut().zip(sup.iter_mut()).enumerate() {
            let (y, x) = (i / w, i % w);
            let dy = y.min(h - y) as f64 / h as f64;
            let dx = x.min(w - x) as f64 / w as f64;
            let r = (dy * dy + dx * dx).sqrt();
            if r < 1.0 / 3.0 {
                *s = 1;
            }
            if r < 1.0 / 6.0 {
                *o = Complex64::new(0.5 + rng.next(), 0.0);
            }
        }
        let f = dft2(&obj, h, w, -1.0);
        for (amp, c) in d.amplitudes[p * l..(p + 1) * l].iter_mut().zip(&f) {
            let a = c.norm();
            *amp = a as f32;
            d.sum_a2[p] += a * a;
            d.measured[p] += 1;
        }
    }
    problem(rng, (n, h, w, starts), d, Constraint::Positive)
}

//! Orientations and rigid-body geometry shared by the simulator and the assembly builder:
//! uniform random rotations (deterministic in seed and pattern index), rotation matrices and
//! the electron-weighted centroid. A leaf module: it imports nothing of the simulator.

use super::structure::Structure;
use crate::rng::item_seed;
use rand_xoshiro::rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// Uniform random unit quaternion [w, x, y, z] of pattern `index` (Shoemake 1992), w >= 0.
pub fn random_quaternion(seed: u64, index: usize) -> [f64; 4] {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(item_seed(seed, index, 1));
    let mut u = || (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    let (u1, u2, u3) = (u(), u(), u());
    let tau = std::f64::consts::TAU;
    let (a, b) = ((1.0 - u1).sqrt(), u1.sqrt());
    let mut q = [
        b * (tau * u3).cos(),
        a * (tau * u2).sin(),
        a * (tau * u2).cos(),
        b * (tau * u3).sin(),
    ];
    if q[0] < 0.0 {
        q.iter_mut().for_each(|v| *v = -*v);
    }
    q
}

/// Rotation matrix of a unit quaternion [w, x, y, z] (active rotation of column vectors).
pub fn rotation_matrix(q: &[f64; 4]) -> [[f64; 3]; 3] {
    let [w, x, y, z] = *q;
    [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - w * z),
            2.0 * (x * z + w * y),
        ],
        [
            2.0 * (x * y + w * z),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - w * x),
        ],
        [
            2.0 * (x * z - w * y),
            2.0 * (y * z + w * x),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ]
}

/// Rotate a point with a rotation matrix.
pub fn rotate(m: &[[f64; 3]; 3], p: &[f64; 3]) -> [f64; 3] {
    [
        m[0][0] * p[0] + m[0][1] * p[1] + m[0][2] * p[2],
        m[1][0] * p[0] + m[1][1] * p[1] + m[1][2] * p[2],
        m[2][0] * p[0] + m[2][1] * p[1] + m[2][2] * p[2],
    ]
}

/// Electron-weighted centroid of a structure, Å.
pub fn centroid(s: &Structure) -> [f64; 3] {
    let mut c = [0.0; 3];
    let mut total = 0.0;
    for a in &s.atoms {
        let e = a.electrons as f64;
        for (cd, pd) in c.iter_mut().zip(&a.pos) {
            *cd += e * pd;
        }
        total += e;
    }
    if total > 0.0 {
        c.iter_mut().for_each(|v| *v /= total);
    }
    c
}

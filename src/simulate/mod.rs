//! Simulation of diffraction data. This module starts with synthetic compact objects (for the
//! phasing tests and the demo) and the far-field pattern of a given density; the PDB-based
//! simulator lives beside it: [`structure`] reads PDB/mmCIF atoms, [`synthetic`] builds
//! protein-like particles (compact, elongated, multi-domain, ring oligomers),
//! [`form_factors`] holds the Cromer-Mann tables, and [`diffraction`] projects atoms in
//! random orientations and computes the patterns.

pub mod assembly;
pub mod diffraction;
pub mod form_factors;
pub mod geometry;
pub mod options;
pub mod rotation;
pub mod structure;
pub mod synthetic;

pub use assembly::AssemblyConfig;
pub use diffraction::{
    check_fit, chunk_for, field_room_a, fitting_structures, needed_extent_a, phasing_check,
    phasing_check_with, simulate, simulate_chunks, simulate_to_cxi, write_cxi, AtomModel,
    CheckResult, MaskSpec, Noise, SimChunk, SimConfig, SimMeta, SimOutput, SimTimings, Simulator,
    StreamReport, MAX_FLUENCE, MAX_PHOTONS, MAX_SIDE, PAPER_PIXEL_NM,
};
pub use geometry::{Centring, IdealSupport};
pub use options::SimOptions;
pub use rotation::{random_quaternion, rotation_matrix};
pub use structure::{collect_structures, read_structure, Atom, Chains, ReadOptions, Structure};
pub use synthetic::{ParticleKind, SyntheticConfig};

use crate::array::{centred_to_native, native_to_centred, Complex32};
use crate::fft::Plan2d;
use crate::rng::{item_seed, unit};
use rand_xoshiro::rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// A random compact, real, non-negative object in an `h x w` field, centred at (h/2, w/2),
/// confined to a disc of `radius` px, shaped like a particle: the union of 3 to 6 discs
/// (radius 25% to 55% of `radius`) inside the disc gives a sharp outline, and a smooth
/// random density (0.4 + a sum of 4 to 12 Gaussian blobs of sigma 1 to 3 px, normalised to
/// [0.4, 1.4]) fills it. With `radius <= min(h, w) / 4` the pattern is oversampled at least
/// 2x per axis. Deterministic in `seed`.
pub fn random_compact_object(h: usize, w: usize, radius: f32, seed: u64) -> Vec<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(item_seed(seed, 0x5151, 7));
    let mut u = || unit(rng.next_u64());
    let (cy, cx) = ((h / 2) as f32, (w / 2) as f32);
    let discs: Vec<(f32, f32, f32)> = (0..3 + (u() * 4.0) as usize)
        .map(|_| {
            let rd = radius * (0.25 + 0.3 * u());
            let r = (radius - rd) * u().sqrt();
            let t = std::f32::consts::TAU * u();
            (cy + r * t.sin(), cx + r * t.cos(), rd)
        })
        .collect();
    let blobs: Vec<(f32, f32, f32, f32)> = (0..4 + (u() * 9.0) as usize)
        .map(|_| {
            let sigma = 1.0 + 2.0 * u();
            let r = radius * u().sqrt();
            let t = std::f32::consts::TAU * u();
            (cy + r * t.sin(), cx + r * t.cos(), sigma, 0.3 + 0.7 * u())
        })
        .collect();
    let mut out = vec![0.0f32; h * w];
    let mut inside = vec![false; h * w];
    for y in 0..h {
        for x in 0..w {
            let (fy, fx) = (y as f32, x as f32);
            if discs
                .iter()
                .any(|&(py, px, r)| (fy - py).powi(2) + (fx - px).powi(2) <= r * r)
            {
                inside[y * w + x] = true;
                out[y * w + x] = blobs
                    .iter()
                    .map(|&(py, px, s, a)| {
                        a * (-((fy - py).powi(2) + (fx - px).powi(2)) / (2.0 * s * s)).exp()
                    })
                    .sum();
            }
        }
    }
    let (lo, hi) = out
        .iter()
        .zip(&inside)
        .filter(|(_, &i)| i)
        .fold((f32::INFINITY, 0.0f32), |(lo, hi), (&v, _)| {
            (lo.min(v), hi.max(v))
        });
    let span = if hi > lo { hi - lo } else { 1.0 };
    for (v, &i) in out.iter_mut().zip(&inside) {
        *v = if i { 0.4 + (*v - lo) / span } else { 0.0 };
    }
    out
}

/// Noise-free far-field intensities |FFT(density)|^2 of a centred density, returned centred
/// (zero frequency at (h/2, w/2)), unnormalised forward FFT.
pub fn far_field_intensity(density: &[Complex32], h: usize, w: usize, plan: &Plan2d) -> Vec<f32> {
    let mut native = vec![Complex32::new(0.0, 0.0); h * w];
    centred_to_native(density, h, w, &mut native);
    plan.forward(&mut native, &mut plan.scratch());
    let mag: Vec<f32> = native.iter().map(|c| c.norm_sqr()).collect();
    let mut out = vec![0.0f32; h * w];
    native_to_centred(&mag, h, w, &mut out);
    out
}

/// `n` noise-free patterns of random compact particles (`distinct` different objects, cycled),
/// with their centred ground-truth densities. Particle radius min(h, w) / 4 (oversampling >= 2).
pub fn synthetic_particles(
    n: usize,
    h: usize,
    w: usize,
    distinct: usize,
    seed: u64,
) -> (crate::io::PatternSet, crate::array::Stack<f32>) {
    use crate::array::Stack;
    let plan = Plan2d::new(h, w);
    let distinct = distinct.clamp(1, n.max(1));
    let radius = (h.min(w) / 4) as f32;
    let objs: Vec<Vec<f32>> = (0..distinct)
        .map(|i| random_compact_object(h, w, radius, seed.wrapping_add(i as u64)))
        .collect();
    let pats: Vec<Vec<f32>> = objs
        .iter()
        .map(|o| {
            let c: Vec<Complex32> = o.iter().map(|&v| Complex32::new(v, 0.0)).collect();
            far_field_intensity(&c, h, w, &plan)
        })
        .collect();
    let mut data = Vec::with_capacity(n * h * w);
    let mut truth = Vec::with_capacity(n * h * w);
    for i in 0..n {
        data.extend_from_slice(&pats[i % distinct]);
        truth.extend_from_slice(&objs[i % distinct]);
    }
    (
        crate::io::PatternSet {
            intensities: Stack { n, h, w, data },
            mask: None,
            source: "synthetic".into(),
            entry: format!("random compact particles, seed {seed}"),
        },
        Stack {
            n,
            h,
            w,
            data: truth,
        },
    )
}

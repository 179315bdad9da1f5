//! Synthetic protein-like particles: unlimited shape diversity at the scale of the paper's
//! data, without PDB files.
//!
//! A particle is built the way a protein fills space, at protein density: a chain of
//! residues (C-alpha positions 3.8 Å apart, a persistent random walk that never comes
//! closer than 4 Å to an earlier residue) confined to an envelope, each residue dressed
//! with its backbone atoms (N, C, O) and a side chain of 0 to 6 atoms (C, with N/O at the end
//! of polar ones and S in about 4% of residues), so the heavy-atom composition is close to
//! that of real proteins (about 63% C, 17% N, 19% O, 1% S; 7.8 heavy atoms per residue).
//!
//! Kinds (envelope -> shape):
//! - [`ParticleKind::Compact`]: one ellipsoid, axis ratios 1 : 1-1.3 : 1-1.5 (globular);
//! - [`ParticleKind::Elongated`]: one prolate ellipsoid, long axis 2.5-4x the short ones;
//! - [`ParticleKind::MultiDomain`]: 2-4 compact domains in contact, each its own ellipsoid,
//!   the chain walking through them in turn (linkers are implicit chain breaks);
//! - [`ParticleKind::Ring`]: a ring oligomer like GroEL: 5-8 copies of one compact subunit
//!   around an axis, touching their neighbours; half of them a double ring (two staggered
//!   rings stacked along the axis).
//!
//! Everything is drawn from a generator seeded with `(seed, index)`, so particle `i` is the
//! same whatever the thread count or the other particles.

use super::structure::{Atom, Structure};
use crate::rng::item_seed;
use crate::{Error, Result};
use rand_xoshiro::rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use std::collections::HashMap;
use std::path::PathBuf;

/// The shape family of a synthetic particle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ParticleKind {
    Compact,
    Elongated,
    MultiDomain,
    Ring,
}

impl ParticleKind {
    pub const ALL: [ParticleKind; 4] = [
        ParticleKind::Compact,
        ParticleKind::Elongated,
        ParticleKind::MultiDomain,
        ParticleKind::Ring,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ParticleKind::Compact => "compact",
            ParticleKind::Elongated => "elongated",
            ParticleKind::MultiDomain => "multidomain",
            ParticleKind::Ring => "ring",
        }
    }

    /// A comma-separated list of kinds, or `all`.
    pub fn parse_list(text: &str) -> Result<Vec<ParticleKind>> {
        let mut v = Vec::new();
        for t in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match t.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
                "all" => v.extend(ParticleKind::ALL),
                "compact" => v.push(ParticleKind::Compact),
                "elongated" => v.push(ParticleKind::Elongated),
                "multidomain" => v.push(ParticleKind::MultiDomain),
                "ring" => v.push(ParticleKind::Ring),
                other => {
                    return Err(Error::Config(format!(
                        "particle kind '{other}': expected compact, elongated, multidomain, \
                         ring or all"
                    )))
                }
            }
        }
        if v.is_empty() {
            return Err(Error::Config("no particle kinds given".into()));
        }
        v.dedup();
        Ok(v)
    }
}

/// What to generate: particle `i` has kind `kinds[i % kinds.len()]` and a residue count `n`
/// drawn uniformly from `residues`. Single chains (compact, elongated, multi-domain) have `n`
/// residues; rings have 5-8 subunits (twice as many when double) of `n / 2` residues each,
/// so the largest reach GroEL's scale (14 x 547 residues).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SyntheticConfig {
    pub kinds: Vec<ParticleKind>,
    /// Inclusive range of residues per particle. Default 150..=1200.
    pub residues: (usize, usize),
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            kinds: ParticleKind::ALL.to_vec(),
            residues: (150, 1200),
        }
    }
}

impl SyntheticConfig {
    pub fn validate(&self) -> Result<()> {
        let (a, b) = self.residues;
        if self.kinds.is_empty() {
            return Err(Error::Config("no particle kinds given".into()));
        }
        if a < 20 || b < a || b > 200_000 {
            return Err(Error::Config(format!(
                "residues {a}..{b}: need 20 <= min <= max <= 200000"
            )));
        }
        Ok(())
    }

    /// Particle `index` of the family seeded by `seed`.
    pub fn particle(&self, seed: u64, index: usize) -> Structure {
        self.particle_attempt(seed, index, 0)
    }

    /// Another draw of particle `index` (same kind, same name), from the random stream
    /// `attempt` (0 is [`SyntheticConfig::particle`]): used when a particle does not fit
    /// the field of a fixed pixel size.
    pub fn particle_attempt(&self, seed: u64, index: usize, attempt: u64) -> Structure {
        let kind = self.kinds[index % self.kinds.len()];
        let stream = if attempt == 0 {
            7
        } else {
            1000 + attempt as usize
        };
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(item_seed(seed, index, stream));
        let (a, b) = self.residues;
        let n = a + (rng.next_u64() % (b - a + 1) as u64) as usize;
        let mut s = synthetic_particle(kind, n, &mut rng);
        s.name = format!("syn-{}-{index:06}", kind.name());
        s
    }
}

/// Average volume of a residue in a folded protein, Å^3 (0.81 Da/Å^3, 110 Da per residue).
const RESIDUE_VOLUME: f64 = 135.0;
/// Share of an envelope that the confined walk fills before it jams.
const PACKING: f64 = 0.55;
const STEP: f64 = 3.8;
const MIN_CA: f64 = 4.0;

fn uniform(rng: &mut Xoshiro256PlusPlus) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn range(rng: &mut Xoshiro256PlusPlus, a: f64, b: f64) -> f64 {
    a + (b - a) * uniform(rng)
}

fn unit(rng: &mut Xoshiro256PlusPlus) -> [f64; 3] {
    let z = range(rng, -1.0, 1.0);
    let phi = range(rng, 0.0, std::f64::consts::TAU);
    let r = (1.0 - z * z).sqrt();
    [r * phi.cos(), r * phi.sin(), z]
}

fn add(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

fn scale(a: [f64; 3], k: f64) -> [f64; 3] {
    [a[0] * k, a[1] * k, a[2] * k]
}

fn norm(a: [f64; 3]) -> f64 {
    (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]).sqrt()
}

/// An ellipsoid: centre, semi-axes and orthonormal axes (rows).
#[derive(Clone, Copy, Debug)]
struct Ellipsoid {
    centre: [f64; 3],
    semi: [f64; 3],
    axes: [[f64; 3]; 3],
}

impl Ellipsoid {
    fn new(centre: [f64; 3], semi: [f64; 3], rng: &mut Xoshiro256PlusPlus) -> Ellipsoid {
        // random orthonormal frame (Gram-Schmidt of two random unit vectors)
        let a = unit(rng);
        let mut b = unit(rng);
        let d = a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
        b = add(b, scale(a, -d));
        let nb = norm(b).max(1e-12);
        b = scale(b, 1.0 / nb);
        let c = [
            a[1] * b[2] - a[2] * b[1],
            a[2] * b[0] - a[0] * b[2],
            a[0] * b[1] - a[1] * b[0],
        ];
        Ellipsoid {
            centre,
            semi,
            axes: [a, b, c],
        }
    }

    fn contains(&self, p: [f64; 3]) -> bool {
        let d = add(p, scale(self.centre, -1.0));
        let mut s = 0.0;
        for k in 0..3 {
            let t = (d[0] * self.axes[k][0] + d[1] * self.axes[k][1] + d[2] * self.axes[k][2])
                / self.semi[k];
            s += t * t;
        }
        s <= 1.0
    }

    /// Semi-axes for `residues` with the given axis ratios.
    fn semi_for(residues: usize, ratios: [f64; 3]) -> [f64; 3] {
        let v = residues as f64 * RESIDUE_VOLUME / PACKING;
        let k = (v / (4.0 / 3.0 * std::f64::consts::PI * ratios[0] * ratios[1] * ratios[2])).cbrt();
        [k * ratios[0], k * ratios[1], k * ratios[2]]
    }
}

/// Spatial hash of C-alpha positions (cells of MIN_CA).
struct Grid {
    cells: HashMap<[i32; 3], Vec<[f64; 3]>>,
}

impl Grid {
    fn key(p: [f64; 3]) -> [i32; 3] {
        p.map(|v| (v / MIN_CA).floor() as i32)
    }

    /// No C-alpha closer than MIN_CA to `p`, other than `except` (the chain's last one).
    fn free(&self, p: [f64; 3], except: [f64; 3]) -> bool {
        let k = Grid::key(p);
        for dz in -1..=1 {
            for dy in -1..=1 {
                for dx in -1..=1 {
                    if let Some(v) = self.cells.get(&[k[0] + dx, k[1] + dy, k[2] + dz]) {
                        if v.iter()
                            .any(|q| *q != except && norm(add(p, scale(*q, -1.0))) < MIN_CA)
                        {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }

    fn insert(&mut self, p: [f64; 3]) {
        self.cells.entry(Grid::key(p)).or_default().push(p);
    }
}

/// A persistent self-avoiding walk of `n` C-alpha positions inside `env`, starting near its
/// centre. When the walk jams it restarts at a random free point (a chain break).
fn confined_chain(env: &Ellipsoid, n: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<[f64; 3]> {
    let mut grid = Grid {
        cells: HashMap::new(),
    };
    let mut out = Vec::with_capacity(n);
    let mut pos = env.centre;
    let mut dir = unit(rng);
    let mut restarts = 0;
    grid.insert(pos);
    out.push(pos);
    while out.len() < n {
        let mut placed = false;
        for _ in 0..40 {
            let d = add(scale(dir, 1.2), unit(rng));
            let d = scale(d, 1.0 / norm(d).max(1e-12));
            let p = add(pos, scale(d, STEP));
            if env.contains(p) && grid.free(p, pos) {
                pos = p;
                dir = d;
                placed = true;
                break;
            }
        }
        if !placed {
            // jammed: restart the chain at a random free interior point
            let mut found = false;
            for _ in 0..2000 {
                let u = unit(rng);
                let r = uniform(rng).cbrt();
                let mut p = env.centre;
                for ((axis, uk), semi) in env.axes.iter().zip(u).zip(env.semi) {
                    p = add(p, scale(*axis, uk * r * semi));
                }
                if grid.free(p, [f64::NAN; 3]) {
                    pos = p;
                    dir = unit(rng);
                    found = true;
                    break;
                }
            }
            restarts += 1;
            if !found || restarts > 4 * n {
                break; // the envelope is full: keep what fits
            }
        }
        grid.insert(pos);
        out.push(pos);
    }
    out
}

/// Dress C-alpha positions with backbone and side-chain atoms.
fn residues_to_atoms(ca: &[[f64; 3]], rng: &mut Xoshiro256PlusPlus, atoms: &mut Vec<Atom>) {
    let mk = |pos: [f64; 3], el: &str, z: f32| Atom {
        pos,
        element: el.to_string(),
        electrons: z,
    };
    for (i, &p) in ca.iter().enumerate() {
        let prev = if i > 0 { ca[i - 1] } else { add(p, unit(rng)) };
        let next = if i + 1 < ca.len() {
            ca[i + 1]
        } else {
            add(p, unit(rng))
        };
        let back = add(prev, scale(p, -1.0));
        let fwd = add(next, scale(p, -1.0));
        let (nb, nf) = (norm(back).max(1e-9), norm(fwd).max(1e-9));
        atoms.push(mk(p, "C", 6.0));
        atoms.push(mk(add(p, scale(back, 1.46 / nb)), "N", 7.0));
        let c = add(p, scale(fwd, 1.52 / nf));
        atoms.push(mk(c, "C", 6.0));
        atoms.push(mk(add(c, scale(unit(rng), 1.23)), "O", 8.0));
        // side chain: away from the backbone, 0-6 atoms 1.53 Å apart
        let out_dir = add(scale(back, -1.0 / nb), scale(fwd, -1.0 / nf));
        let mut d = add(out_dir, scale(unit(rng), 0.6));
        d = scale(d, 1.0 / norm(d).max(1e-9));
        let len = [0usize, 1, 2, 3, 4, 4, 5, 6][(rng.next_u64() % 8) as usize];
        let sulphur = uniform(rng) < 0.04;
        let polar = uniform(rng) < 0.45;
        let mut q = p;
        for k in 0..len {
            let dk = add(d, scale(unit(rng), 0.5));
            q = add(q, scale(dk, 1.53 / norm(dk).max(1e-9)));
            let last = k + 1 == len;
            let (el, z) = if sulphur && (k == 1 || last) {
                ("S", 16.0)
            } else if polar && last && len >= 2 {
                if uniform(rng) < 0.5 {
                    ("N", 7.0)
                } else {
                    ("O", 8.0)
                }
            } else {
                ("C", 6.0)
            };
            atoms.push(mk(q, el, z));
        }
    }
}

fn finish(name: String, atoms: Vec<Atom>) -> Structure {
    Structure {
        name,
        atoms,
        path: PathBuf::new(),
        unknown_elements: 0,
    }
}

/// A synthetic particle of `kind`: a chain of `residues` residues, or a ring of subunits of
/// `residues / 2` residues each (see [`SyntheticConfig`] and the module docs).
pub fn synthetic_particle(
    kind: ParticleKind,
    residues: usize,
    rng: &mut Xoshiro256PlusPlus,
) -> Structure {
    let mut atoms = Vec::with_capacity(residues * 8);
    match kind {
        ParticleKind::Compact | ParticleKind::Elongated => {
            let ratios = if kind == ParticleKind::Compact {
                [1.0, range(rng, 1.0, 1.3), range(rng, 1.0, 1.5)]
            } else {
                [1.0, range(rng, 1.0, 1.3), range(rng, 2.5, 4.0)]
            };
            let env = Ellipsoid::new([0.0; 3], Ellipsoid::semi_for(residues, ratios), rng);
            let ca = confined_chain(&env, residues, rng);
            residues_to_atoms(&ca, rng, &mut atoms);
        }
        ParticleKind::MultiDomain => {
            let nd = 2 + (rng.next_u64() % 3) as usize;
            let weights: Vec<f64> = (0..nd).map(|_| range(rng, 0.5, 1.5)).collect();
            let wsum: f64 = weights.iter().sum();
            let mut domains: Vec<Ellipsoid> = Vec::new();
            for (d, w) in weights.iter().enumerate() {
                let nres = ((residues as f64 * w / wsum).round() as usize).max(10);
                let ratios = [1.0, range(rng, 1.0, 1.3), range(rng, 1.0, 1.6)];
                let semi = Ellipsoid::semi_for(nres, ratios);
                let r = semi.iter().fold(0.0f64, |m, &v| m.max(v));
                // place touching a random earlier domain, not overlapping any other much
                let mut centre = [0.0; 3];
                if d > 0 {
                    for _ in 0..200 {
                        let host = &domains[(rng.next_u64() % domains.len() as u64) as usize];
                        let hr = host.semi.iter().fold(0.0f64, |m, &v| m.max(v));
                        let c = add(host.centre, scale(unit(rng), 0.8 * (r + hr)));
                        let clear = domains.iter().all(|o| {
                            let orr = o.semi.iter().fold(0.0f64, |m, &v| m.max(v));
                            norm(add(c, scale(o.centre, -1.0))) > 0.75 * (r + orr)
                        });
                        centre = c;
                        if clear {
                            break;
                        }
                    }
                }
                let env = Ellipsoid::new(centre, semi, rng);
                let ca = confined_chain(&env, nres, rng);
                residues_to_atoms(&ca, rng, &mut atoms);
                domains.push(env);
            }
        }
        ParticleKind::Ring => {
            let copies = 5 + (rng.next_u64() % 4) as usize;
            let double = uniform(rng) < 0.5;
            let rings = if double { 2 } else { 1 };
            let per = (residues / 2).max(20);
            let ratios = [1.0, range(rng, 1.0, 1.2), range(rng, 1.2, 1.8)];
            let env = Ellipsoid::new([0.0; 3], Ellipsoid::semi_for(per, ratios), rng);
            let ca = confined_chain(&env, per, rng);
            let mut sub = Vec::new();
            residues_to_atoms(&ca, rng, &mut sub);
            // subunit radius in the ring plane (x, y) and height (z)
            let rxy = sub
                .iter()
                .map(|a| (a.pos[0] * a.pos[0] + a.pos[1] * a.pos[1]).sqrt())
                .fold(0.0f64, f64::max);
            let hz = sub.iter().map(|a| a.pos[2].abs()).fold(0.0f64, f64::max);
            let radius = 0.9 * rxy / (std::f64::consts::PI / copies as f64).sin();
            for ring in 0..rings {
                let z0 = if double {
                    (ring as f64 - 0.5) * 1.9 * hz
                } else {
                    0.0
                };
                let stagger = ring as f64 * std::f64::consts::PI / copies as f64;
                for k in 0..copies {
                    let t = stagger + std::f64::consts::TAU * k as f64 / copies as f64;
                    let (s, c) = t.sin_cos();
                    for a in &sub {
                        // the subunit rotated about z by t, at distance `radius`
                        let x = a.pos[0] + radius;
                        let y = a.pos[1];
                        let z = if ring == 1 { -a.pos[2] } else { a.pos[2] };
                        atoms.push(Atom {
                            pos: [c * x - s * y, s * x + c * y, z + z0],
                            element: a.element.clone(),
                            electrons: a.electrons,
                        });
                    }
                }
            }
        }
    }
    finish(format!("syn-{}", kind.name()), atoms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inertia_ratio(s: &Structure) -> f64 {
        // ratio of the largest to the smallest principal radius of gyration
        let n = s.atoms.len() as f64;
        let mut c = [0.0; 3];
        for a in &s.atoms {
            c = add(c, a.pos);
        }
        c = scale(c, 1.0 / n);
        let mut m = [[0.0f64; 3]; 3];
        for a in &s.atoms {
            let d = add(a.pos, scale(c, -1.0));
            for i in 0..3 {
                for j in 0..3 {
                    m[i][j] += d[i] * d[j] / n;
                }
            }
        }
        // eigenvalues of the symmetric 3x3 by Jacobi sweeps
        for _ in 0..50 {
            for (p, q) in [(0, 1), (0, 2), (1, 2)] {
                if m[p][q].abs() < 1e-12 {
                    continue;
                }
                let th = 0.5 * (2.0 * m[p][q]).atan2(m[q][q] - m[p][p]);
                let (s, co) = th.sin_cos();
                let mut r = [[0.0; 3]; 3];
                for (i, row) in r.iter_mut().enumerate() {
                    row[i] = 1.0;
                }
                r[p][p] = co;
                r[q][q] = co;
                r[p][q] = s;
                r[q][p] = -s;
                // m = r^T m r
                let mut t = [[0.0; 3]; 3];
                for i in 0..3 {
                    for j in 0..3 {
                        t[i][j] = (0..3).map(|k| m[i][k] * r[k][j]).sum();
                    }
                }
                for i in 0..3 {
                    for j in 0..3 {
                        m[i][j] = (0..3).map(|k| r[k][i] * t[k][j]).sum();
                    }
                }
            }
        }
        let ev = [m[0][0], m[1][1], m[2][2]];
        let mx = ev.iter().fold(0.0f64, |a, &b| a.max(b));
        let mn = ev.iter().fold(f64::INFINITY, |a, &b| a.min(b));
        (mx / mn).sqrt()
    }

    #[test]
    fn composition_density_and_spacing() {
        let cfg = SyntheticConfig {
            kinds: vec![ParticleKind::Compact],
            residues: (300, 300),
        };
        let s = cfg.particle(1, 0);
        let per_res = s.atoms.len() as f64 / 300.0;
        assert!((6.5..9.0).contains(&per_res), "{per_res} atoms per residue");
        let count = |e: &str| s.atoms.iter().filter(|a| a.element == e).count() as f64;
        let n = s.atoms.len() as f64;
        let (c, nn, o) = (count("C") / n, count("N") / n, count("O") / n);
        assert!((0.55..0.72).contains(&c), "C {c}");
        assert!((0.12..0.22).contains(&nn), "N {nn}");
        assert!((0.13..0.25).contains(&o), "O {o}");
        // radius of gyration of a globular protein: about 2.2 N^0.38 Å
        let rg = {
            let mut cen = [0.0; 3];
            for a in &s.atoms {
                cen = add(cen, a.pos);
            }
            cen = scale(cen, 1.0 / n);
            (s.atoms
                .iter()
                .map(|a| norm(add(a.pos, scale(cen, -1.0))).powi(2))
                .sum::<f64>()
                / n)
                .sqrt()
        };
        let expect = 2.2 * 300f64.powf(0.38);
        assert!(
            rg > 0.8 * expect && rg < 1.5 * expect,
            "Rg {rg} vs globular {expect}"
        );
    }

    #[test]
    fn kinds_have_their_shapes() {
        let gen = |k: ParticleKind, seed: u64| {
            SyntheticConfig {
                kinds: vec![k],
                residues: (400, 400),
            }
            .particle(seed, 0)
        };
        for seed in 0..4 {
            let compact = inertia_ratio(&gen(ParticleKind::Compact, seed));
            let elongated = inertia_ratio(&gen(ParticleKind::Elongated, seed));
            assert!(compact < 1.9, "compact ratio {compact}");
            assert!(elongated > 2.0, "elongated ratio {elongated}");
            // a ring has a hole: few atoms near its axis, compared with its radius
            let ring = gen(ParticleKind::Ring, seed);
            let rmax = ring
                .atoms
                .iter()
                .map(|a| (a.pos[0].powi(2) + a.pos[1].powi(2)).sqrt())
                .fold(0.0f64, f64::max);
            let inner = ring
                .atoms
                .iter()
                .filter(|a| (a.pos[0].powi(2) + a.pos[1].powi(2)).sqrt() < 0.15 * rmax)
                .count();
            assert!(
                (inner as f64) < 0.01 * ring.atoms.len() as f64,
                "ring with {inner} of {} atoms near the axis",
                ring.atoms.len()
            );
        }
    }

    #[test]
    fn deterministic_and_distinct() {
        let cfg = SyntheticConfig::default();
        let a = cfg.particle(5, 17);
        let b = cfg.particle(5, 17);
        let c = cfg.particle(5, 18);
        let d = cfg.particle(6, 17);
        assert_eq!(a, b);
        assert_ne!(a.atoms, c.atoms);
        assert_ne!(a.atoms, d.atoms);
        assert!(a.name.starts_with("syn-"));
        assert!(ParticleKind::parse_list("ring,bogus").is_err());
        assert_eq!(
            ParticleKind::parse_list("all").unwrap(),
            ParticleKind::ALL.to_vec()
        );
    }
}

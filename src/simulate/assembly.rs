//! Multi-structure assemblies: 2 or 3 of the given structures, each in its own random
//! orientation, placed in contact without overlapping, for shape diversity beyond the
//! single chains at hand.
//!
//! Assembly `k` is drawn from a generator seeded with `(seed, k)`, so it is the same
//! whatever the thread count, the pattern count or the other assemblies:
//!
//! 1. the number of parts, uniform in [`AssemblyConfig::parts`], and each part's structure,
//!    uniform over the list (repeats allowed: homo-oligomers);
//! 2. each part gets a uniform random orientation about its own centroid; the first part
//!    sits at the origin;
//! 3. each further part comes in along a uniform random direction `u` from far away
//!    (bounding spheres apart) in steps of 1 Å, refined to 1/16 Å, and stops at the last
//!    position where none of its atoms lies in a cell of 2 Å next to (or in) a cell holding
//!    an atom already placed: the parts touch (closest atom pairs 2 to ~7 Å apart, like an
//!    interface) and never overlap;
//! 4. the name is `asm<k>-<id>+<id>[+<id>]` (the source ids of the parts, in order), so the
//!    structures behind every pattern are recorded.

use super::rotation::{centroid, random_quaternion, rotate, rotation_matrix};
use super::structure::Structure;
use crate::rng::item_seed;
use crate::{Error, Result};
use rand_xoshiro::rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// What assemblies to build.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AssemblyConfig {
    /// Number of distinct assemblies (patterns cycle over them).
    pub count: usize,
    /// Inclusive range of parts per assembly. Default 2..=3.
    pub parts: (usize, usize),
}

impl Default for AssemblyConfig {
    fn default() -> Self {
        AssemblyConfig {
            count: 1,
            parts: (2, 3),
        }
    }
}

impl AssemblyConfig {
    pub fn validate(&self) -> Result<()> {
        let (a, b) = self.parts;
        if self.count == 0 {
            return Err(Error::Config(
                "assemblies: the count must be at least 1".into(),
            ));
        }
        if !(2 <= a && a <= b && b <= 8) {
            return Err(Error::Config(format!(
                "assemblies: parts {a}..{b}: need 2 <= min <= max <= 8"
            )));
        }
        Ok(())
    }
}

/// One part of an assembly: atom `p` of structure `structure` lies at
/// `rotation (p - centroid) + offset` in the assembly's frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub structure: usize,
    pub rotation: [[f64; 3]; 3],
    pub offset: [f64; 3],
}

/// An assembly: its parts, with offsets relative to the assembly's electron-weighted
/// centroid, its name and the largest distance of an atom from that centroid (Å).
#[derive(Clone, Debug, PartialEq)]
pub struct Assembly {
    pub name: String,
    pub parts: Vec<Part>,
    pub radius: f64,
}

/// Cell size of the contact grid, Å.
const CELL: f64 = 2.0;

/// Occupancy of the cells next to placed atoms, on a cube of `n^3` cells centred at the
/// origin.
struct Occupancy {
    n: i64,
    bits: Vec<u64>,
}

impl Occupancy {
    fn new(half: f64) -> Occupancy {
        let n = (2.0 * half / CELL).ceil() as i64 + 4;
        let cells = (n * n * n) as usize;
        Occupancy {
            n,
            bits: vec![0; cells.div_ceil(64)],
        }
    }

    fn cell(&self, p: [f64; 3]) -> Option<[i64; 3]> {
        let h = self.n / 2;
        let c = p.map(|v| (v / CELL).floor() as i64 + h);
        c.iter().all(|&v| (0..self.n).contains(&v)).then_some(c)
    }

    fn index(&self, c: [i64; 3]) -> usize {
        ((c[0] * self.n + c[1]) * self.n + c[2]) as usize
    }

    /// Mark the 27 cells around the cell of `p`.
    fn mark(&mut self, p: [f64; 3]) {
        let Some(c) = self.cell(p) else { return };
        for dx in -1..=1 {
            for dy in -1..=1 {
                for dz in -1..=1 {
                    let q = [c[0] + dx, c[1] + dy, c[2] + dz];
                    if q.iter().all(|&v| (0..self.n).contains(&v)) {
                        let i = self.index(q);
                        self.bits[i / 64] |= 1u64 << (i % 64);
                    }
                }
            }
        }
    }

    fn hit(&self, p: [f64; 3]) -> bool {
        match self.cell(p) {
            Some(c) => {
                let i = self.index(c);
                self.bits[i / 64] >> (i % 64) & 1 == 1
            }
            None => false,
        }
    }
}

/// Atom positions of `s` relative to its electron-weighted centroid, with its electrons.
fn centred_atoms(s: &Structure) -> Vec<([f64; 3], f64)> {
    let c = centroid(s);
    s.atoms
        .iter()
        .map(|a| {
            (
                [a.pos[0] - c[0], a.pos[1] - c[1], a.pos[2] - c[2]],
                a.electrons as f64,
            )
        })
        .collect()
}

fn unit_vector(rng: &mut Xoshiro256PlusPlus) -> [f64; 3] {
    let mut u = || (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    let z = 2.0 * u() - 1.0;
    let phi = std::f64::consts::TAU * u();
    let r = (1.0 - z * z).max(0.0).sqrt();
    [r * phi.cos(), r * phi.sin(), z]
}

/// Build assembly `index` of the family seeded by `seed` from `structures`, drawing from
/// the random stream `attempt` (0 first; another attempt gives another assembly of the
/// same index, used when one does not fit the field).
pub fn build(
    structures: &[Structure],
    cfg: &AssemblyConfig,
    seed: u64,
    index: usize,
    attempt: u64,
) -> Assembly {
    assert!(!structures.is_empty());
    let mut rng =
        Xoshiro256PlusPlus::seed_from_u64(item_seed(seed, index, 11 + 1000 * attempt as usize));
    let (a, b) = cfg.parts;
    let np = a + (rng.next_u64() % (b - a + 1) as u64) as usize;
    let picks: Vec<usize> = (0..np)
        .map(|_| (rng.next_u64() % structures.len() as u64) as usize)
        .collect();
    let atoms: Vec<Vec<([f64; 3], f64)>> = picks
        .iter()
        .map(|&k| centred_atoms(&structures[k]))
        .collect();
    let radii: Vec<f64> = atoms
        .iter()
        .map(|v| {
            v.iter()
                .map(|(p, _)| (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt())
                .fold(0.0, f64::max)
        })
        .collect();
    // every part lies within this distance of the first part's centroid
    let half = radii[0] + radii[1..].iter().map(|r| 2.0 * r + 2.0 * CELL).sum::<f64>() + 4.0 * CELL;
    let mut occ = Occupancy::new(half);
    let mut parts: Vec<Part> = Vec::with_capacity(np);
    let mut placed_radius = 0.0f64;
    let mut moved: Vec<[f64; 3]> = Vec::new();
    for (j, part_atoms) in atoms.iter().enumerate() {
        let q = random_quaternion(rng.next_u64(), index);
        let rot = rotation_matrix(&q);
        moved.clear();
        moved.extend(part_atoms.iter().map(|(p, _)| rotate(&rot, p)));
        let offset = if j == 0 {
            [0.0; 3]
        } else {
            let u = unit_vector(&mut rng);
            let at = |t: f64| [u[0] * t, u[1] * t, u[2] * t];
            let clash = |t: f64| {
                let o = at(t);
                moved
                    .iter()
                    .any(|p| occ.hit([p[0] + o[0], p[1] + o[1], p[2] + o[2]]))
            };
            let mut free = placed_radius + radii[j] + 2.0 * CELL;
            let mut t = free - 1.0;
            while t > -(placed_radius + radii[j]) && !clash(t) {
                free = t;
                t -= 1.0;
            }
            // refine between the clash at t and the free position
            let (mut lo, mut hi) = (t, free);
            for _ in 0..4 {
                let mid = 0.5 * (lo + hi);
                if clash(mid) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            at(hi)
        };
        for p in &moved {
            let r = [p[0] + offset[0], p[1] + offset[1], p[2] + offset[2]];
            occ.mark(r);
            placed_radius = placed_radius.max((r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt());
        }
        parts.push(Part {
            structure: picks[j],
            rotation: rot,
            offset,
        });
    }
    // re-centre on the electron-weighted centroid of the whole assembly
    let mut c = [0.0f64; 3];
    let mut total = 0.0;
    for (part, pa) in parts.iter().zip(&atoms) {
        for (p, e) in pa {
            let r = rotate(&part.rotation, p);
            for ((cd, rd), od) in c.iter_mut().zip(r).zip(part.offset) {
                *cd += e * (rd + od);
            }
            total += e;
        }
    }
    if total > 0.0 {
        c.iter_mut().for_each(|v| *v /= total);
    }
    let mut radius = 0.0f64;
    for (part, pa) in parts.iter_mut().zip(&atoms) {
        for (od, cd) in part.offset.iter_mut().zip(c) {
            *od -= cd;
        }
        for (p, _) in pa {
            let r = rotate(&part.rotation, p);
            let v = [
                r[0] + part.offset[0],
                r[1] + part.offset[1],
                r[2] + part.offset[2],
            ];
            radius = radius.max((v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt());
        }
    }
    let ids: Vec<&str> = picks.iter().map(|&k| structures[k].name.as_str()).collect();
    Assembly {
        name: format!("asm{index:05}-{}", ids.join("+")),
        parts,
        radius,
    }
}

impl Assembly {
    /// The assembly as one structure (atoms of every part in the assembly's frame, centred
    /// on its centroid).
    pub fn to_structure(&self, structures: &[Structure]) -> Structure {
        let mut atoms = Vec::new();
        for part in &self.parts {
            let s = &structures[part.structure];
            let c = centroid(s);
            for a in &s.atoms {
                let r = rotate(
                    &part.rotation,
                    &[a.pos[0] - c[0], a.pos[1] - c[1], a.pos[2] - c[2]],
                );
                let mut at = a.clone();
                at.pos = [
                    r[0] + part.offset[0],
                    r[1] + part.offset[1],
                    r[2] + part.offset[2],
                ];
                atoms.push(at);
            }
        }
        Structure {
            name: self.name.clone(),
            atoms,
            path: std::path::PathBuf::new(),
            unknown_elements: 0,
        }
    }
}

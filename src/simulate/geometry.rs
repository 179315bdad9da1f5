//! The sample-plane geometry of a simulation: how the density is rendered (supersampling,
//! truncation of the Gaussians, centring), which pixels make the ideal support, and whether
//! a particle fits the field.
//!
//! The paper's geometry ([`super::SimConfig::paper`]) is Chimera `molmap` at 3.5 Å on a
//! 1.167 Å grid, summed along the beam and binned 2x2: 2.333 Å pixels, 128 x 128, the
//! molecule's bounding box centred. `molmap` truncates each atom's Gaussian on a box of
//! `cutoffRange` (5) standard deviations per axis (Chimera's `sum_of_gaussians`: grid points
//! `ceil(c - 5 s) ..= floor(c + 5 s)` on each axis), so its map is exactly zero beyond the
//! atoms' reach and the ideal support is the projected density > 0.

use super::structure::Structure;
use crate::{Error, Result};

/// Truncation of the Gaussians in the default (threshold) mode, in standard deviations:
/// where a Gaussian falls below 1e-7 of its peak, sqrt(2 ln 1e7) ~ 5.68.
pub fn default_cutoff_sigmas() -> f64 {
    (2.0 * (1e7f64).ln()).sqrt()
}

/// Chimera molmap's default `cutoffRange`, in standard deviations.
pub const MOLMAP_CUTOFF_RANGE: f64 = 5.0;

/// Which pixels make the ideal support stored with each pattern.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub enum IdealSupport {
    /// Density above `SimConfig::support_threshold` times the pattern's maximum; the
    /// Gaussians are truncated where they fall below 1e-7 of their peak (default).
    #[default]
    Threshold,
    /// Chimera molmap's extent: every Gaussian truncated on a box of `cutoff_range`
    /// standard deviations per axis (molmap's `cutoffRange`, 5 by default), and the support
    /// is the projected density > 0, i.e. exactly the pixels the truncated Gaussians reach.
    Molmap { cutoff_range: f64 },
}

impl IdealSupport {
    /// Parse `molmap`, `molmap:RANGE` (sigmas), `threshold` or `threshold:T` (a fraction of
    /// the maximum). Returns the rule and, for `threshold:T`, the threshold.
    pub fn parse(text: &str) -> Result<(IdealSupport, Option<f64>)> {
        let t = text.trim();
        let (head, arg) = t.split_once(':').unwrap_or((t, ""));
        let bad = |m: &str| Error::Config(format!("ideal support '{t}': {m}"));
        let num = |what: &str| -> Result<f64> {
            arg.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| bad(&format!("expected a number after ':' ({what})")))
        };
        match head.trim().to_ascii_lowercase().as_str() {
            "molmap" => {
                let r = if arg.is_empty() {
                    MOLMAP_CUTOFF_RANGE
                } else {
                    num("the cutoff range in sigmas")?
                };
                if !(r > 0.0 && r <= 20.0) {
                    return Err(bad("the cutoff range must be in (0, 20] sigmas"));
                }
                Ok((IdealSupport::Molmap { cutoff_range: r }, None))
            }
            "threshold" => {
                if arg.is_empty() {
                    return Ok((IdealSupport::Threshold, None));
                }
                let v = num("a fraction of the maximum")?;
                if !(0.0..1.0).contains(&v) {
                    return Err(bad("the threshold must be in [0, 1)"));
                }
                Ok((IdealSupport::Threshold, Some(v)))
            }
            _ => Err(bad("expected molmap[:RANGE] or threshold[:T]")),
        }
    }

    /// Truncation of the Gaussians, in their standard deviations (a box per axis).
    pub fn cutoff_sigmas(&self) -> f64 {
        match self {
            IdealSupport::Threshold => default_cutoff_sigmas(),
            IdealSupport::Molmap { cutoff_range } => *cutoff_range,
        }
    }
}

/// Where each projection is centred in the field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum Centring {
    /// The electron-weighted centroid of the atoms at (H/2, W/2) (default).
    #[default]
    Centroid,
    /// The centre of the bounding box of the projected atom centres at (H/2, W/2), as the
    /// paper's data (Chimera's map box is the atoms' bounding box plus a margin).
    BoundingBox,
}

impl Centring {
    /// `centroid` or `bbox` (`bounding-box`).
    pub fn parse(text: &str) -> Result<Centring> {
        match text.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "centroid" => Ok(Centring::Centroid),
            "bbox" | "bounding-box" => Ok(Centring::BoundingBox),
            other => Err(Error::Config(format!(
                "centring '{other}': expected centroid or bbox"
            ))),
        }
    }
}

/// The supersampling factor that puts the fine grid at or below `resolution / 3`, Chimera
/// molmap's default grid spacing (1.167 Å at 3.5 Å): the smallest K >= 1 with
/// `pixel_a / K <= resolution / 3`, at most 8.
pub fn auto_supersample(pixel_a: f64, resolution: f64) -> usize {
    let k = (pixel_a / (resolution / 3.0) - 1e-9).ceil();
    if k.is_finite() {
        (k as usize).clamp(1, 8)
    } else {
        1
    }
}

/// Largest distance between two atom centres of `s` (Å), exact. Pairs are visited from the
/// atoms farthest from the centroid inwards and a pair is skipped when the two distances to
/// the centroid cannot beat the best found, so this is close to linear for compact shapes.
pub fn diameter(s: &Structure) -> f64 {
    let n = s.atoms.len();
    if n < 2 {
        return 0.0;
    }
    let mut c = [0.0f64; 3];
    for a in &s.atoms {
        for (cd, pd) in c.iter_mut().zip(&a.pos) {
            *cd += pd;
        }
    }
    c.iter_mut().for_each(|v| *v /= n as f64);
    let dist = |p: &[f64; 3], q: &[f64; 3]| -> f64 {
        ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2)).sqrt()
    };
    let mut order: Vec<(f64, [f64; 3])> =
        s.atoms.iter().map(|a| (dist(&a.pos, &c), a.pos)).collect();
    order.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut best = 0.0f64;
    for i in 0..n {
        let (ri, pi) = order[i];
        if 2.0 * ri <= best {
            break;
        }
        for &(rj, pj) in &order[i + 1..] {
            if ri + rj <= best {
                break;
            }
            best = best.max(dist(&pi, &pj));
        }
    }
    best
}

/// Largest distance of an atom centre from the electron-weighted centroid (Å).
pub fn radius_from_centroid(s: &Structure) -> f64 {
    let c = super::rotation::centroid(s);
    s.atoms
        .iter()
        .map(|a| {
            ((a.pos[0] - c[0]).powi(2) + (a.pos[1] - c[1]).powi(2) + (a.pos[2] - c[2]).powi(2))
                .sqrt()
        })
        .fold(0.0, f64::max)
}

//! Diffraction patterns of atomic structures in random orientations.
//!
//! Per pattern `i` (structure `i % S`):
//!
//! 1. orientation: a uniform random unit quaternion `q = [w, x, y, z]` (Shoemake), drawn from
//!    a generator seeded with `item_seed(seed, i, 1)`, so it depends on the pattern index only
//!    (not on the thread count). `w >= 0` is chosen (q and -q are the same rotation);
//! 2. the atoms, taken relative to their electron-weighted centroid `c`, are rotated actively:
//!    `r' = R(q) (r - c)`;
//! 3. projection along the beam (z): the density in electrons per pixel is
//!    `rho[j][i] = sum_k Z_k / (2 pi s^2) exp(-((j - H/2 - y'_k/a)^2 + (i - W/2 - x'_k/a)^2)
//!    / (2 s^2))` with rows `j` along y, columns `i` along x, `a` the pixel size (Å) and
//!    `s = sigma / a` the Gaussian width in pixels, `sigma = resolution / (pi sqrt 2)` (the
//!    Chimera `molmap` default). With [`AtomModel::CromerMann`] each atom is instead the sum
//!    of its five Cromer-Mann Gaussians, each widened by `sigma` (see
//!    [`super::form_factors`]). Each atom is splatted over the pixels within
//!    `sqrt(2 ln 1e7) s` (~5.7 s) of it (the Gaussian is below 1e-7 of its peak beyond);
//! 4. pixel size: `a = D / (fill * min(H, W))` with `D = 2 max_k |r_k - c|` the diameter of
//!    the sphere around the centroid holding every atom centre, so every orientation of the
//!    particle spans at most `fill` of the field (fill <= 0.5: oversampling >= 2 per axis),
//!    plus the few-sigma blur;
//! 5. intensities `|F|^2`, `F` the unnormalised forward DFT of the centred density, stored
//!    centred (zero frequency at (H/2, W/2)); scaled to `photons` in total when given, or to
//!    the expected counts of an incident `fluence` (photons/µm²):
//!    `I = fluence r_e² dΩ |F|²`, `F` in electrons, `r_e` the classical electron radius and
//!    `dΩ = (λ / (H dx)) (λ / (W dx))` the solid angle of one detector pixel (small-angle,
//!    polarisation factor 1); then
//!    Poisson noise (seeded with `item_seed(seed, i, 2)`) if chosen;
//! 6. the mask (one (H, W) image shared by all patterns, nonzero = not measured) flags
//!    pixels; their values are kept;
//! 7. ideal support: `density > support_threshold * max(density)` (default 2.5%; see
//!    [`SimConfig::support_threshold`]).

use super::assembly::{self, Assembly, AssemblyConfig};
use super::geometry::{auto_supersample, diameter, Centring, IdealSupport, MOLMAP_CUTOFF_RANGE};
use super::rotation::{centroid, random_quaternion, rotate, rotation_matrix};
use super::structure::Structure;
use super::synthetic::SyntheticConfig;
use crate::array::{centred_to_native, native_to_centred, Complex32, Stack};
use crate::fft::Plan2d;
use crate::io::stream::{Dtype, StreamId, StreamWriter};
use crate::rng::item_seed;
use crate::{Error, Result};
use rand_xoshiro::rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Noise model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Noise {
    None,
    Poisson,
}

/// How an atom scatters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum AtomModel {
    /// A Gaussian holding Z electrons, of standard deviation `sigma` (Chimera `molmap`).
    #[default]
    Gaussian,
    /// Cromer-Mann form factors (International Tables), each term blurred by `sigma`:
    /// five Gaussians per atom (see [`super::form_factors`]). Elements not tabulated fall
    /// back to the Gaussian of Z electrons.
    CromerMann,
}

impl AtomModel {
    /// `gaussian` or `cromer-mann`.
    pub fn parse(text: &str) -> Result<AtomModel> {
        match text.to_ascii_lowercase().replace('_', "-").as_str() {
            "gaussian" => Ok(AtomModel::Gaussian),
            "cromer-mann" | "cm" => Ok(AtomModel::CromerMann),
            other => Err(Error::Config(format!(
                "atom model '{other}': expected gaussian or cromer-mann"
            ))),
        }
    }
}

/// Missing-data masks (nonzero = unmeasured). Combine several with [`MaskSpec::Combined`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum MaskSpec {
    None,
    /// A horizontal stripe of `rows` full rows centred on the centre row: rows
    /// `H/2 - rows/2 .. H/2 - rows/2 + rows`.
    Stripe {
        rows: usize,
    },
    /// A disc: pixels with `(y - H/2)^2 + (x - W/2)^2 <= radius^2`.
    Beamstop {
        radius: f64,
    },
    /// Gaps between `panels x panels` detector tiles: at each `k * H / panels` (rows) and
    /// `k * W / panels` (columns), k = 1..panels-1, `width` rows/columns starting at
    /// `k * size / panels - width / 2`.
    Gaps {
        width: usize,
        panels: usize,
    },
    Combined(Vec<MaskSpec>),
}

impl MaskSpec {
    /// Parse a comma-separated list of `none`, `stripe:ROWS`, `beamstop:RADIUS`,
    /// `gaps:WIDTH[xPANELS]` (panels default 2).
    pub fn parse(text: &str) -> Result<MaskSpec> {
        let mut parts = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (head, arg) = item.split_once(':').unwrap_or((item, ""));
            let bad = |m: &str| Error::Config(format!("--mask '{item}': {m}"));
            match head.to_ascii_lowercase().as_str() {
                "none" => {}
                "stripe" => parts.push(MaskSpec::Stripe {
                    rows: arg
                        .parse()
                        .map_err(|_| bad("expected stripe:ROWS (integer)"))?,
                }),
                "beamstop" => {
                    let radius: f64 = arg
                        .parse()
                        .map_err(|_| bad("expected beamstop:RADIUS (pixels)"))?;
                    if !(radius >= 0.0 && radius.is_finite()) {
                        return Err(bad("radius must be a non-negative number"));
                    }
                    parts.push(MaskSpec::Beamstop { radius })
                }
                "gaps" => {
                    let (w, p) = arg.split_once(['x', 'X']).unwrap_or((arg, "2"));
                    let width = w.parse().map_err(|_| bad("expected gaps:WIDTH[xPANELS]"))?;
                    let panels: usize =
                        p.parse().map_err(|_| bad("expected gaps:WIDTH[xPANELS]"))?;
                    if panels == 0 {
                        return Err(bad("panels must be at least 1"));
                    }
                    parts.push(MaskSpec::Gaps { width, panels })
                }
                _ => {
                    return Err(bad(
                        "expected none, stripe:ROWS, beamstop:RADIUS or gaps:WIDTH[xPANELS]",
                    ))
                }
            }
        }
        Ok(match parts.len() {
            0 => MaskSpec::None,
            1 => parts.pop().unwrap(),
            _ => MaskSpec::Combined(parts),
        })
    }

    /// Whether no pixel can be flagged.
    pub fn is_none(&self) -> bool {
        match self {
            MaskSpec::None => true,
            MaskSpec::Combined(v) => v.iter().all(|m| m.is_none()),
            _ => false,
        }
    }

    /// Flag this mask's pixels (set to 1) in a centred `h x w` image.
    pub fn apply(&self, h: usize, w: usize, mask: &mut [u8]) {
        match self {
            MaskSpec::None => {}
            MaskSpec::Stripe { rows } => {
                let r0 = (h / 2).saturating_sub(rows / 2);
                for y in r0..(r0 + rows).min(h) {
                    mask[y * w..(y + 1) * w].fill(1);
                }
            }
            MaskSpec::Beamstop { radius } => {
                let (cy, cx) = ((h / 2) as f64, (w / 2) as f64);
                for y in 0..h {
                    for x in 0..w {
                        let d2 = (y as f64 - cy).powi(2) + (x as f64 - cx).powi(2);
                        if d2 <= radius * radius {
                            mask[y * w + x] = 1;
                        }
                    }
                }
            }
            MaskSpec::Gaps { width, panels } => {
                for k in 1..*panels {
                    let r0 = (k * h / panels).saturating_sub(width / 2);
                    for y in r0..(r0 + width).min(h) {
                        mask[y * w..(y + 1) * w].fill(1);
                    }
                    let c0 = (k * w / panels).saturating_sub(width / 2);
                    for y in 0..h {
                        for x in c0..(c0 + width).min(w) {
                            mask[y * w + x] = 1;
                        }
                    }
                }
            }
            MaskSpec::Combined(v) => v.iter().for_each(|m| m.apply(h, w, mask)),
        }
    }
}

/// The paper's real-space pixel size, nm: molmap's default grid at 3.5 Å (1.167 Å), binned
/// 2 x 2.
pub const PAPER_PIXEL_NM: f64 = 0.2333;

/// Simulation parameters.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SimConfig {
    /// Pattern size (H, W). Default 128 x 128.
    pub size: (usize, usize),
    /// Number of patterns (cycling over the structures).
    pub count: usize,
    /// Resolution of the Gaussian blur, Å (sigma = resolution / (pi sqrt 2)). Default 3.5.
    pub resolution: f64,
    /// Gaussian atoms (default) or Cromer-Mann form factors.
    pub atoms: AtomModel,
    /// Particle diameter / field size (per structure). Default 0.45.
    pub fill: f64,
    /// A fixed real-space pixel size in nm for every structure instead of `fill`.
    pub pixel_size_nm: Option<f64>,
    /// Total photons per pattern (None: raw |F|^2 of the electrons-per-pixel density).
    pub photons: Option<f64>,
    /// Incident fluence, photons per µm² (instead of `photons`): the pattern holds the
    /// expected counts `fluence r_e² dΩ |F|²` (see the module documentation).
    pub fluence: Option<f64>,
    pub noise: Noise,
    pub mask: MaskSpec,
    /// Ideal support threshold, fraction of the density maximum. Default 0.025: at 3.5 Å the
    /// 1% contour of the blurred atoms runs well outside the particle's outline, and such a
    /// loose support let HIO stagnate in half the real-structure runs (BENCHMARKS.md); 2.5%
    /// keeps all but ~0.1% of the density's energy.
    pub support_threshold: f64,
    pub seed: u64,
    /// Synthetic protein-like particles instead of structures: pattern `i` shows particle
    /// `i` of [`SyntheticConfig::particle`] (seeded with `seed`), each one different.
    pub synthetic: Option<SyntheticConfig>,
    /// Assemblies of 2-3 of the structures instead of the structures themselves: pattern
    /// `i` shows assembly `i % count` (see [`super::assembly`]).
    pub assemblies: Option<AssemblyConfig>,
    /// Which pixels make the ideal support (and where the Gaussians are truncated).
    pub ideal_support: IdealSupport,
    /// The density is rendered on a grid this many times finer per axis and summed over
    /// each block of K x K fine pixels (anti-aliasing). None: 1 with `fill`, and with
    /// `pixel_size_nm` the smallest K that puts the fine grid at or below resolution / 3
    /// (Chimera molmap's default grid spacing; 2 in the paper's geometry).
    pub supersample: Option<usize>,
    /// Where the projection is centred: the centroid (default) or the bounding box.
    pub centre: Centring,
    /// With `pixel_size_nm`: the largest extent of the density (atoms' reach included),
    /// as a fraction of the field's N - 1 pixels (N = min(H, W)). A structure beyond it is
    /// refused ([`check_fit`]). Default 1: the density never crosses the field's edge;
    /// 0.5 guarantees oversampling 2.
    pub max_extent: f64,
    /// X-ray wavelength, nm (geometry metadata). Default 0.2 nm.
    pub wavelength_nm: f64,
    /// Sample-detector distance, m (geometry metadata). Default 0.7 m.
    pub detector_distance_m: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            size: (128, 128),
            count: 1,
            resolution: 3.5,
            atoms: AtomModel::Gaussian,
            fill: 0.45,
            pixel_size_nm: None,
            photons: None,
            fluence: None,
            noise: Noise::None,
            mask: MaskSpec::None,
            support_threshold: 0.025,
            seed: 0,
            synthetic: None,
            assemblies: None,
            ideal_support: IdealSupport::Threshold,
            supersample: None,
            centre: Centring::Centroid,
            max_extent: 1.0,
            wavelength_nm: 0.2,
            detector_distance_m: 0.7,
        }
    }
}

impl SimConfig {
    /// The paper's geometry (DESIGN.md section 6; its data script `chimera_simulate.py`):
    /// 128 x 128 pixels of 0.2333 nm (Chimera molmap at 3.5 Å on its default 1.167 Å grid,
    /// summed along the beam, binned 2 x 2: supersampling 2), a 299 Å field, molmap's
    /// extent as the ideal support (Gaussians cut at 5 sigma, support = density > 0), the
    /// bounding box of the projected atoms centred, noise-free |F|^2. The geometry metadata
    /// is the paper's Condor set-up: 8 keV (0.155 nm), 0.3 m.
    pub fn paper() -> SimConfig {
        SimConfig {
            size: (128, 128),
            resolution: 3.5,
            pixel_size_nm: Some(PAPER_PIXEL_NM),
            ideal_support: IdealSupport::Molmap {
                cutoff_range: MOLMAP_CUTOFF_RANGE,
            },
            supersample: Some(2),
            centre: Centring::BoundingBox,
            noise: Noise::None,
            photons: None,
            fluence: None,
            wavelength_nm: 1.239_842 / 8.0,
            detector_distance_m: 0.3,
            ..SimConfig::default()
        }
    }

    /// Gaussian sigma in Å (Chimera molmap: resolution / (pi sqrt 2) = 0.225 resolution).
    pub fn sigma(&self) -> f64 {
        self.resolution / (std::f64::consts::PI * std::f64::consts::SQRT_2)
    }

    /// The supersampling factor used for a real-space pixel of `pixel_a` Å.
    pub fn supersample_for(&self, pixel_a: f64) -> usize {
        match (self.supersample, self.pixel_size_nm) {
            (Some(k), _) => k,
            (None, Some(_)) => auto_supersample(pixel_a, self.resolution),
            (None, None) => 1,
        }
    }

    /// Refuse a simulation whose working memory (the patterns of one chunk, and each
    /// thread's supersampled grid) or whose output file exceed what the machine has.
    pub(crate) fn check_resources(&self, dest: &Path, chunk: usize) -> Result<()> {
        let (h, w) = (self.size.0 as u128, self.size.1 as u128);
        let ss = self.supersample.unwrap_or(1).max(match self.pixel_size_nm {
            Some(p) => self.supersample_for(p * 10.0),
            None => 1,
        }) as u128;
        let threads = rayon::current_num_threads() as u128;
        // per pattern in flight: intensities, density, support, and the complex transform
        let chunk_bytes = 2 * (chunk as u128) * h * w * (4 + 4 + 1 + 8);
        let grid_bytes = threads * h * w * ss * ss * 8 * 2;
        crate::limits::check_memory(
            &format!(
                "simulating {h}x{w} patterns ({chunk} at a time, supersampling {ss}, {threads} threads)"
            ),
            chunk_bytes + grid_bytes,
        )?;
        // intensities f32, density f32, support u8, per-pattern metadata (< 256 B)
        let file_bytes = (self.count as u128) * (h * w * 9 + 256);
        crate::limits::check_disk(
            &format!("{} patterns of {h}x{w}", self.count),
            dest,
            file_bytes,
        )
    }

    fn validate(&self, structures: &[Structure]) -> Result<()> {
        let (h, w) = self.size;
        let bad = |m: String| Err(Error::Config(m));
        if h < 2 || w < 2 || h > MAX_SIDE || w > MAX_SIDE {
            return bad(format!(
                "pattern size {h}x{w}: must be from 2x2 to {MAX_SIDE}x{MAX_SIDE}"
            ));
        }
        if self.count == 0 {
            return bad("the number of patterns must be at least 1".into());
        }
        match &self.synthetic {
            Some(sc) => {
                sc.validate()?;
                if !structures.is_empty() {
                    return bad("give either structures or synthetic particles, not both".into());
                }
            }
            None => {
                if structures.is_empty() {
                    return bad("no structures to simulate".into());
                }
            }
        }
        if !(self.resolution > 0.0 && self.resolution.is_finite()) {
            return bad(format!("resolution {} Å must be positive", self.resolution));
        }
        if !(self.fill > 0.0 && self.fill <= 1.0) {
            return bad(format!(
                "fill {} must be in (0, 1] (the particle's extent as a fraction of the field)",
                self.fill
            ));
        }
        if let Some(p) = self.pixel_size_nm {
            if !(p > 0.0 && p.is_finite()) {
                return bad(format!("pixel size {p} nm must be positive"));
            }
        }
        if let Some(k) = self.supersample {
            if !(1..=16).contains(&k) {
                return bad(format!("supersampling {k} must be in 1..=16"));
            }
        }
        if !(self.max_extent > 0.0 && self.max_extent <= 1.0) {
            return bad(format!(
                "maximum extent {} must be in (0, 1] (a fraction of the field)",
                self.max_extent
            ));
        }
        if let Some(a) = &self.assemblies {
            a.validate()?;
            if self.synthetic.is_some() {
                return bad("give either assemblies or synthetic particles, not both".into());
            }
        }
        if let Some(p) = self.photons {
            if !(p > 0.0 && p <= MAX_PHOTONS) {
                return bad(format!(
                    "photons {p:e} must be positive and at most {MAX_PHOTONS:e} per pattern"
                ));
            }
        }
        if let Some(f) = self.fluence {
            if !(f > 0.0 && f <= MAX_FLUENCE) {
                return bad(format!(
                    "fluence {f:e} photons/µm² must be positive and at most {MAX_FLUENCE:e}"
                ));
            }
            if self.photons.is_some() {
                return bad("give either a photon count or a fluence, not both".into());
            }
        }
        if !(0.0..1.0).contains(&self.support_threshold) {
            return bad(format!(
                "support threshold {} must be in [0, 1)",
                self.support_threshold
            ));
        }
        if !(self.wavelength_nm > 0.0 && self.detector_distance_m > 0.0) {
            return bad("wavelength and detector distance must be positive".into());
        }
        Ok(())
    }

    /// The configuration as JSON (stored with the output).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["sigma_angstrom"] = serde_json::json!(self.sigma());
        v["conventions"] = serde_json::json!(
            "centred at (H/2, W/2); intensities |unnormalised forward DFT of the projected \
             density|^2; density in electrons per pixel, atoms as in 'atoms' blurred by sigma_angstrom; rows = y, columns = x, \
             beam along z; orientation quaternion [w,x,y,z] rotates the centroid-centred atoms \
             (active); mask nonzero = unmeasured; support = see support_rule; \
             the density is sampled on a grid `supersample` times finer per axis and \
             summed over each block; each Gaussian is truncated on a box of \
             cutoff_sigmas standard deviations per axis"
        );
        v["support_rule"] = serde_json::json!(self.support_rule());
        v["cutoff_sigmas"] = serde_json::json!(self.ideal_support.cutoff_sigmas());
        v
    }

    /// The ideal support rule in words (stored with the data).
    pub fn support_rule(&self) -> String {
        match self.ideal_support {
            IdealSupport::Threshold => {
                format!("density > {} * max(density)", self.support_threshold)
            }
            IdealSupport::Molmap { cutoff_range } => format!(
                "density > 0 (molmap extent: Gaussians truncated at {cutoff_range} sigma per axis)"
            ),
        }
    }
}

/// Simulated patterns and their ground truth.
#[derive(Clone, Debug)]
pub struct SimOutput {
    /// (N, H, W), centred.
    pub intensities: Stack<f32>,
    /// (1, H, W), shared by all patterns; nonzero = unmeasured.
    pub mask: Stack<u8>,
    /// Projected densities, electrons per pixel, (N, H, W), centred.
    pub density: Stack<f32>,
    /// Ideal supports, (N, H, W), centred.
    pub support: Stack<u8>,
    /// Unit quaternion [w, x, y, z] per pattern.
    pub orientation: Vec<[f64; 4]>,
    /// Source id (structure name) per pattern.
    pub names: Vec<String>,
    /// Index into the structure list per pattern.
    pub structure_index: Vec<usize>,
    /// Real-space pixel size per pattern, nm.
    pub pixel_size_nm: Vec<f64>,
    /// CPU seconds (summed over threads) spent per stage.
    pub timings: SimTimings,
}

/// CPU seconds, summed over the threads, per stage of [`simulate`].
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct SimTimings {
    pub projection: f64,
    pub fft: f64,
    pub noise_mask: f64,
    /// Wall seconds of the whole call.
    pub wall: f64,
}

/// Atoms splatted with one Gaussian: `(variance in Å^2, [(position Å, electrons)])`.
type Group = (f64, Vec<([f64; 3], f64)>);

/// Structure prepared for projection: centred atom positions (f64, Å) grouped by the
/// variance of the Gaussian they are splatted with, the pixel size, and the largest
/// distance of an atom centre from the centroid.
struct Prepared {
    groups: Vec<Group>,
    pixel_a: f64,
    radius: f64,
}

impl Prepared {
    /// Standard deviation of the widest Gaussian, Å.
    fn widest_sigma(&self) -> f64 {
        self.groups.iter().map(|g| g.0).fold(0.0, f64::max).sqrt()
    }
}

fn prepare(s: &Structure, cfg: &SimConfig) -> Prepared {
    let c = centroid(s);
    let sigma = cfg.sigma();
    let mut groups: Vec<Group> = Vec::new();
    let mut add = |var: f64, pos: [f64; 3], e: f64| match groups
        .iter_mut()
        .find(|(v, _)| v.to_bits() == var.to_bits())
    {
        Some((_, g)) => g.push((pos, e)),
        None => groups.push((var, vec![(pos, e)])),
    };
    let mut rmax = 0.0f64;
    for a in &s.atoms {
        let p = [a.pos[0] - c[0], a.pos[1] - c[1], a.pos[2] - c[2]];
        rmax = rmax.max((p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt());
        let cm = match cfg.atoms {
            AtomModel::CromerMann => super::form_factors::cromer_mann(&a.element),
            AtomModel::Gaussian => None,
        };
        match cm {
            Some(coef) => {
                for (e, var) in super::form_factors::gaussian_terms(coef, sigma) {
                    add(var, p, e);
                }
            }
            None => add(sigma * sigma, p, a.electrons as f64),
        }
    }
    let (h, w) = cfg.size;
    let pixel_a = match cfg.pixel_size_nm {
        Some(p) => p * 10.0,
        None => {
            let d = (2.0 * rmax).max(sigma);
            d / (cfg.fill * h.min(w) as f64)
        }
    };
    Prepared {
        groups,
        pixel_a,
        radius: rmax,
    }
}

/// An assembly prepared for projection from its parts' prepared structures (the parts'
/// atoms moved into the assembly's frame, grouped by variance).
fn prepare_assembly(asm: &Assembly, parts: &[Prepared], pixel_a: f64) -> Prepared {
    let mut groups: Vec<Group> = Vec::new();
    for part in &asm.parts {
        for (var, atoms) in &parts[part.structure].groups {
            let g = match groups
                .iter()
                .position(|(v, _)| v.to_bits() == var.to_bits())
            {
                Some(k) => k,
                None => {
                    groups.push((*var, Vec::new()));
                    groups.len() - 1
                }
            };
            groups[g].1.extend(atoms.iter().map(|(p, e)| {
                let r = rotate(&part.rotation, p);
                (
                    [
                        r[0] + part.offset[0],
                        r[1] + part.offset[1],
                        r[2] + part.offset[2],
                    ],
                    *e,
                )
            }));
        }
    }
    Prepared {
        groups,
        pixel_a,
        radius: asm.radius,
    }
}

/// How the density is sampled: `ss` x `ss` fine pixels per pixel, Gaussians truncated on a
/// box of `cut` standard deviations per axis, centred on the centroid or the bounding box.
#[derive(Clone, Copy, Debug)]
struct Render {
    ss: usize,
    cut: f64,
    bbox: bool,
}

impl Render {
    fn new(cfg: &SimConfig, pixel_a: f64) -> Render {
        Render {
            ss: cfg.supersample_for(pixel_a),
            cut: cfg.ideal_support.cutoff_sigmas(),
            bbox: cfg.centre == Centring::BoundingBox,
        }
    }
}

/// Splat the rotated atoms' Gaussians into a zeroed centred `h x w` grid.
fn project(p: &Prepared, rot: &[[f64; 3]; 3], r: Render, h: usize, w: usize, out: &mut [f32]) {
    let off = if r.bbox {
        let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
        for (_, atoms) in &p.groups {
            for (pos, _) in atoms {
                for d in 0..2 {
                    let v = rot[d][0] * pos[0] + rot[d][1] * pos[1] + rot[d][2] * pos[2];
                    lo[d] = lo[d].min(v);
                    hi[d] = hi[d].max(v);
                }
            }
        }
        if lo[0].is_finite() {
            [0.5 * (lo[0] + hi[0]), 0.5 * (lo[1] + hi[1])]
        } else {
            [0.0; 2]
        }
    } else {
        [0.0; 2]
    };
    for (var, atoms) in &p.groups {
        splat(atoms, p.pixel_a, rot, var.sqrt(), r, off, h, w, out);
    }
}

/// Splat Gaussians of standard deviation `sigma_a` (Å) at the rotated `atoms`, minus
/// `off` (Å, in the detector plane), each truncated on a box of `r.cut` standard deviations
/// per axis, sampled at the centres of a grid `r.ss` times finer than the output and
/// summed over each `ss x ss` block (electrons per output pixel). Fine pixel `i` (of
/// `ss * w`) has its centre at output coordinate `(i + 1/2) / ss - 1/2`, so a block's
/// centre is its output pixel's. The Gaussian is separable, so the block sums are products
/// of per-axis block sums: exactly the fine grid binned, at the cost of the coarse grid.
#[allow(clippy::too_many_arguments)]
fn splat(
    atoms: &[([f64; 3], f64)],
    pixel_a: f64,
    rot: &[[f64; 3]; 3],
    sigma_a: f64,
    r: Render,
    off: [f64; 2],
    h: usize,
    w: usize,
    out: &mut [f32],
) {
    let ss = r.ss.max(1);
    let ssf = ss as f64;
    let s = sigma_a / pixel_a * ssf;
    let inv2s2 = 1.0 / (2.0 * s * s);
    let norm1 = 1.0 / ((std::f64::consts::TAU).sqrt() * s);
    let radius = s * r.cut;
    let (cy, cx) = ((h / 2) as f64, (w / 2) as f64);
    let (fw, fh) = ((ss * w) as i64, (ss * h) as i64);
    let cap = 2 * radius as usize + 3;
    let mut gx: Vec<f32> = Vec::with_capacity(cap);
    let mut gy: Vec<f32> = Vec::with_capacity(cap);
    let mut acc: Vec<f64> = Vec::with_capacity(cap);
    for (pos, e) in atoms {
        let rx = rot[0][0] * pos[0] + rot[0][1] * pos[1] + rot[0][2] * pos[2];
        let ry = rot[1][0] * pos[0] + rot[1][1] * pos[1] + rot[1][2] * pos[2];
        let x = cx + (rx - off[0]) / pixel_a;
        let y = cy + (ry - off[1]) / pixel_a;
        // fine-grid coordinates of the atom (the output grid when ss = 1)
        let (x, y) = if ss == 1 {
            (x, y)
        } else {
            (ssf * (x + 0.5) - 0.5, ssf * (y + 0.5) - 0.5)
        };
        let x0 = (x - radius).ceil().max(0.0) as i64;
        let x1 = ((x + radius).floor() as i64).min(fw - 1);
        let y0 = (y - radius).ceil().max(0.0) as i64;
        let y1 = ((y + radius).floor() as i64).min(fh - 1);
        if x1 < x0 || y1 < y0 {
            continue;
        }
        let (cx0, cy0) = if ss == 1 {
            gx.clear();
            gx.extend((x0..=x1).map(|i| {
                let d = i as f64 - x;
                (norm1 * (-d * d * inv2s2).exp()) as f32
            }));
            gy.clear();
            gy.extend((y0..=y1).map(|j| {
                let d = j as f64 - y;
                (e * norm1 * (-d * d * inv2s2).exp()) as f32
            }));
            (x0 as usize, y0 as usize)
        } else {
            let sum_blocks =
                |a: i64, b: i64, c: f64, k: f64, acc: &mut Vec<f64>, g: &mut Vec<f32>| {
                    let (b0, b1) = (a / ss as i64, b / ss as i64);
                    acc.clear();
                    acc.resize((b1 - b0 + 1) as usize, 0.0);
                    for i in a..=b {
                        let d = i as f64 - c;
                        acc[(i / ss as i64 - b0) as usize] += (-d * d * inv2s2).exp();
                    }
                    g.clear();
                    g.extend(acc.iter().map(|&v| (k * v) as f32));
                    b0 as usize
                };
            let bx = sum_blocks(x0, x1, x, norm1, &mut acc, &mut gx);
            let by = sum_blocks(y0, y1, y, e * norm1, &mut acc, &mut gy);
            (bx, by)
        };
        for (dj, &vy) in gy.iter().enumerate() {
            let row = &mut out[(cy0 + dj) * w + cx0..(cy0 + dj) * w + cx0 + gx.len()];
            for (o, &vx) in row.iter_mut().zip(&gx) {
                *o += vy * vx;
            }
        }
    }
}

/// The extent that a structure's density needs in the field, Å, in any orientation: the
/// largest projected extent of its atom centres (the diameter with bounding-box centring,
/// twice the largest distance from the centroid with centroid centring) plus the reach of
/// the truncated Gaussians on both sides and a pixel for the binning.
pub fn needed_extent_a(s: &Structure, cfg: &SimConfig) -> f64 {
    let p = prepare(s, cfg);
    let core = match cfg.centre {
        Centring::BoundingBox => diameter(s),
        Centring::Centroid => 2.0 * p.radius,
    };
    core + reach_both_sides(&p, cfg)
}

/// The reach of the density beyond the atom centres on both sides, Å. With the molmap
/// rule, the truncation of the widest Gaussian (the support is everything it reaches);
/// with the threshold rule, that of the resolution's Gaussian: the wider Cromer-Mann terms
/// carry little density, and their far tails may be cut at the field's edge.
fn reach_both_sides(p: &Prepared, cfg: &SimConfig) -> f64 {
    let sigma = match cfg.ideal_support {
        IdealSupport::Molmap { .. } => p.widest_sigma(),
        IdealSupport::Threshold => cfg.sigma(),
    };
    2.0 * cfg.ideal_support.cutoff_sigmas() * sigma + 2.0 * p.pixel_a
}

/// The room in the field, Å: `max_extent` of N - 1 pixels (N = min(H, W); the centre is
/// at pixel N/2, so N - 1 pixels is twice the room on its short side).
pub fn field_room_a(cfg: &SimConfig, pixel_a: f64) -> f64 {
    let (h, w) = cfg.size;
    cfg.max_extent * (h.min(w) as f64 - 1.0) * pixel_a
}

/// Check that a structure fits the field of a fixed pixel size (always true without one,
/// where the pixel size is made to fit): an [`Error::InvalidData`] naming the structure,
/// its extent and the field otherwise.
pub fn check_fit(s: &Structure, cfg: &SimConfig) -> Result<()> {
    let Some(px_nm) = cfg.pixel_size_nm else {
        return Ok(());
    };
    let need = needed_extent_a(s, cfg);
    let room = field_room_a(cfg, px_nm * 10.0);
    if need > room {
        let (h, w) = cfg.size;
        return Err(Error::invalid(
            format!("structure {}", s.name),
            format!(
                "its density spans up to {:.1} nm in some orientation, more than the {:.1} nm \
                 allowed in the {h}x{w} field of {px_nm} nm pixels (max extent {}): skipped",
                need / 10.0,
                room / 10.0,
                cfg.max_extent
            ),
        ));
    }
    Ok(())
}

/// Split `structures` into those that fit the field ([`check_fit`]) and the errors of those
/// that do not (in order).
pub fn fitting_structures(
    structures: Vec<Structure>,
    cfg: &SimConfig,
) -> (Vec<Structure>, Vec<(String, Error)>) {
    let checks: Vec<Result<()>> = structures.par_iter().map(|s| check_fit(s, cfg)).collect();
    let mut keep = Vec::new();
    let mut skipped = Vec::new();
    for (s, c) in structures.into_iter().zip(checks) {
        match c {
            Ok(()) => keep.push(s),
            Err(e) => skipped.push((s.name.clone(), e)),
        }
    }
    (keep, skipped)
}

/// Attempts at drawing a synthetic particle or an assembly that fits the field.
const FIT_ATTEMPTS: u64 = 64;

/// Whether a prepared object (synthetic particle, assembly) fits in every orientation:
/// twice its radius bounds its projected extent.
fn prepared_fits(p: &Prepared, cfg: &SimConfig) -> bool {
    cfg.pixel_size_nm.is_none()
        || 2.0 * p.radius + reach_both_sides(p, cfg) <= field_room_a(cfg, p.pixel_a)
}

/// Synthetic particle `i`, drawn again (same kind and name) until it fits the field.
fn fitting_particle(sc: &SyntheticConfig, cfg: &SimConfig, i: usize) -> Result<(String, Prepared)> {
    for attempt in 0..FIT_ATTEMPTS {
        let st = sc.particle_attempt(cfg.seed, i, attempt);
        let p = prepare(&st, cfg);
        if prepared_fits(&p, cfg) {
            return Ok((st.name, p));
        }
    }
    Err(Error::invalid(
        format!("synthetic particle {i}"),
        format!(
            "none of {FIT_ATTEMPTS} draws fits the field of {} nm pixels: lower the residue range",
            cfg.pixel_size_nm.unwrap_or(0.0)
        ),
    ))
}

/// Build the assemblies, each drawn again until it fits the field.
fn build_assemblies(
    structures: &[Structure],
    prepared: &[Prepared],
    cfg: &SimConfig,
    ac: &AssemblyConfig,
) -> Result<Vec<Assembly>> {
    let pixel_a = cfg.pixel_size_nm.map(|p| p * 10.0);
    (0..ac.count)
        .into_par_iter()
        .map(|k| {
            for attempt in 0..FIT_ATTEMPTS {
                let a = assembly::build(structures, ac, cfg.seed, k, attempt);
                let px = pixel_a.unwrap_or(1.0);
                if prepared_fits(&prepare_assembly(&a, prepared, px), cfg) {
                    return Ok(a);
                }
            }
            Err(Error::invalid(
                format!("assembly {k}"),
                format!(
                    "none of {FIT_ATTEMPTS} draws of {}-{} structures fits the field: \
                     use smaller structures, fewer parts or a larger field",
                    ac.parts.0, ac.parts.1
                ),
            ))
        })
        .collect()
}

/// Poisson deviate (inversion for small means, Hörmann's PTRS above 10).
pub fn poisson<R: Rng>(lambda: f64, rng: &mut R) -> f64 {
    let mut u = || (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    if !lambda.is_finite() {
        // no count can be drawn: keep the non-finite value so that the caller refuses it
        return lambda;
    }
    if lambda <= 0.0 {
        return 0.0;
    }
    if lambda < 10.0 {
        let mut p = (-lambda).exp();
        let mut f = p;
        let v = u();
        let mut k = 0.0;
        while v > f && k < 1000.0 {
            k += 1.0;
            p *= lambda / k;
            f += p;
        }
        return k;
    }
    let slam = lambda.sqrt();
    let loglam = lambda.ln();
    let b = 0.931 + 2.53 * slam;
    let a = -0.059 + 0.02483 * b;
    let invalpha = 1.1239 + 1.1328 / (b - 3.4);
    let vr = 0.9277 - 3.6224 / (b - 2.0);
    loop {
        let uu = u() - 0.5;
        let v = u();
        let us = 0.5 - uu.abs();
        let k = ((2.0 * a / us + b) * uu + lambda + 0.43).floor();
        if us >= 0.07 && v <= vr {
            return k;
        }
        if k < 0.0 || (us < 0.013 && v > us) {
            continue;
        }
        if v.ln() + invalpha.ln() - (a / (us * us) + b).ln()
            <= -lambda + k * loglam - ln_factorial(k)
        {
            return k;
        }
    }
}

/// ln(k!) (table below 10, Stirling series above).
fn ln_factorial(k: f64) -> f64 {
    const T: [f64; 10] = [
        0.0,
        0.0,
        std::f64::consts::LN_2,
        1.791_759_469_228_055,
        3.178_053_830_347_945_8,
        4.787_491_742_782_046,
        6.579_251_212_010_101,
        8.525_161_361_065_415,
        10.604_602_902_745_25,
        12.801_827_480_081_469,
    ];
    if k < 10.0 {
        return T[k as usize];
    }
    let n = k + 1.0;
    (n - 0.5) * n.ln() - n + 0.5 * std::f64::consts::TAU.ln() + 1.0 / (12.0 * n)
        - 1.0 / (360.0 * n * n * n)
        + 1.0 / (1260.0 * n.powi(5))
}

/// One block of consecutive patterns `first .. first + n` from [`simulate_chunks`].
#[derive(Clone, Debug)]
pub struct SimChunk {
    pub first: usize,
    pub n: usize,
    /// (n, H, W), centred.
    pub intensities: Vec<f32>,
    /// (n, H, W), electrons per pixel, centred.
    pub density: Vec<f32>,
    /// (n, H, W).
    pub support: Vec<u8>,
    /// Real-space pixel size per pattern, Å.
    pub pixel_a: Vec<f64>,
    /// Source id per pattern.
    pub names: Vec<String>,
}

/// What [`simulate_chunks`] returns besides the chunks: the per-run and per-pattern
/// metadata (small: O(N) numbers, no images).
#[derive(Clone, Debug)]
pub struct SimMeta {
    /// (1, H, W), shared by all patterns; nonzero = unmeasured.
    pub mask: Stack<u8>,
    pub orientation: Vec<[f64; 4]>,
    pub names: Vec<String>,
    pub structure_index: Vec<usize>,
    pub pixel_size_nm: Vec<f64>,
    pub timings: SimTimings,
}

/// Patterns per block for [`simulate_to_cxi`]: about 37 MB of images per block (256
/// patterns at 128x128), at least one pattern.
/// Refuse a result that cannot be right: a non-finite intensity (photon counts beyond
/// f32), or a pattern without a single positive count (a fluence too low, or one whose
/// counts overflowed the Poisson sampler).
fn check_chunk(c: &SimChunk, cfg: &SimConfig) -> Result<()> {
    let px = cfg.size.0 * cfg.size.1;
    for k in 0..c.n {
        let img = &c.intensities[k * px..(k + 1) * px];
        let p = c.first + k;
        if let Some(i) = img.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(
                format!("simulated pattern {p}"),
                format!(
                    "intensity {} at pixel {i} is not finite: the photon count or fluence is too large for float32 intensities",
                    img[i]
                ),
            ));
        }
        if !img.iter().any(|&v| v > 0.0) {
            return Err(Error::invalid(
                format!("simulated pattern {p}"),
                "no positive intensity anywhere: the photon count or fluence gives no counts (or is beyond the noise model's range)",
            ));
        }
    }
    Ok(())
}

/// The most photons per pattern (far above any experiment; float32 intensities and the
/// Poisson sampler stay exact well beyond).
pub const MAX_PHOTONS: f64 = 1e20;
/// The largest incident fluence, photons per µm² (XFELs reach about 1e13).
pub const MAX_FLUENCE: f64 = 1e20;

/// The largest pattern side the simulator accepts.
pub const MAX_SIDE: usize = 16384;

pub fn chunk_for(h: usize, w: usize) -> usize {
    (256 * 128 * 128 / (h * w).max(1)).clamp(1, 256)
}

/// A simulation ready to compute any block of its patterns: the structures prepared and
/// the assemblies built once. Pattern `i` depends on `i` and the configuration alone, so
/// blocks computed in any order, by any process ([`crate::run::simulate`] under MPI), hold
/// the data of one run over all patterns.
pub struct Simulator<'a> {
    structures: &'a [Structure],
    cfg: &'a SimConfig,
    prepared: Vec<Prepared>,
    assemblies: Vec<Assembly>,
    plan: Plan2d,
    t_proj: AtomicU64,
    t_fft: AtomicU64,
    t_noise: AtomicU64,
    t_wall: Instant,
}

impl<'a> Simulator<'a> {
    /// Check the configuration and prepare `structures` (in the current rayon pool).
    pub fn new(structures: &'a [Structure], cfg: &'a SimConfig) -> Result<Simulator<'a>> {
        cfg.validate(structures)?;
        let t_wall = Instant::now();
        if cfg.synthetic.is_none() {
            for s in structures {
                check_fit(s, cfg)?;
            }
        }
        let prepared: Vec<Prepared> = structures.par_iter().map(|s| prepare(s, cfg)).collect();
        let assemblies: Vec<Assembly> = match &cfg.assemblies {
            Some(ac) => build_assemblies(structures, &prepared, cfg, ac)?,
            None => Vec::new(),
        };
        let (h, w) = cfg.size;
        Ok(Simulator {
            structures,
            cfg,
            prepared,
            assemblies,
            plan: Plan2d::new(h, w),
            t_proj: AtomicU64::new(0),
            t_fft: AtomicU64::new(0),
            t_noise: AtomicU64::new(0),
            t_wall,
        })
    }

    /// The mask shared by all patterns, (1, H, W), nonzero = unmeasured.
    pub fn mask(&self) -> Stack<u8> {
        let (h, w) = self.cfg.size;
        let mut mask = Stack::filled(1, h, w, 0u8);
        self.cfg.mask.apply(h, w, &mut mask.data);
        mask
    }

    /// The index of the structure (synthetic particle, assembly) of pattern `i`.
    pub fn structure_index(&self, i: usize) -> usize {
        if self.cfg.synthetic.is_some() {
            i
        } else if !self.assemblies.is_empty() {
            i % self.assemblies.len()
        } else {
            i % self.structures.len().max(1)
        }
    }

    /// CPU seconds per stage so far, and the wall seconds since [`Simulator::new`].
    pub fn timings(&self) -> SimTimings {
        let secs = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 * 1e-9;
        SimTimings {
            projection: secs(&self.t_proj),
            fft: secs(&self.t_fft),
            noise_mask: secs(&self.t_noise),
            wall: self.t_wall.elapsed().as_secs_f64(),
        }
    }

    /// Patterns `first .. first + m` (in the current rayon pool), checked as
    /// [`simulate_to_cxi`] checks them; `progress` gets 1 per finished pattern.
    pub fn block(
        &self,
        first: usize,
        m: usize,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<SimChunk> {
        let c = self.compute(first, m, progress)?;
        check_chunk(&c, self.cfg)?;
        Ok(c)
    }

    /// Pattern `i`'s name and particle: a synthetic particle or an assembly made for it
    /// (`Some`), or one of the prepared structures (`None`: `prepared[i % len]`).
    fn particle(&self, i: usize) -> Result<(String, Option<Prepared>)> {
        let cfg = self.cfg;
        let (h, w) = cfg.size;
        match (&cfg.synthetic, self.assemblies.is_empty()) {
            (Some(sc), _) => fitting_particle(sc, cfg, i).map(|(n, p)| (n, Some(p))),
            (None, false) => {
                let a = &self.assemblies[i % self.assemblies.len()];
                let pixel_a = match cfg.pixel_size_nm {
                    Some(px) => px * 10.0,
                    None => (2.0 * a.radius).max(cfg.sigma()) / (cfg.fill * h.min(w) as f64),
                };
                Ok((
                    a.name.clone(),
                    Some(prepare_assembly(a, &self.prepared, pixel_a)),
                ))
            }
            (None, true) => Ok((
                self.structures[i % self.structures.len()].name.clone(),
                None,
            )),
        }
    }

    /// The names and real-space pixel sizes (Å) of patterns `first .. first + m`, as
    /// [`Simulator::block`] gives them, without simulating the patterns (the per-pattern
    /// metadata of blocks a resumed run does not compute again).
    pub fn labels(&self, first: usize, m: usize) -> Result<(Vec<String>, Vec<f64>)> {
        let v: Vec<(String, f64)> = (first..first + m)
            .into_par_iter()
            .map(|i| {
                let (name, owned) = self.particle(i)?;
                let p = owned
                    .as_ref()
                    .unwrap_or_else(|| &self.prepared[i % self.prepared.len()]);
                Ok((name, p.pixel_a))
            })
            .collect::<Result<_>>()?;
        Ok(v.into_iter().unzip())
    }

    fn compute(&self, first: usize, m: usize, progress: &(dyn Fn(u64) + Sync)) -> Result<SimChunk> {
        let (cfg, prepared, plan) = (self.cfg, &self.prepared, &self.plan);
        let (h, w) = cfg.size;
        let hw = h * w;
        let ns = |t: Instant| t.elapsed().as_nanos() as u64;
        let failed: std::sync::Mutex<Option<Error>> = std::sync::Mutex::new(None);
        let mut intensities = vec![0f32; m * hw];
        let mut density = vec![0f32; m * hw];
        let mut support = vec![0u8; m * hw];
        let mut pixel_a = vec![0f64; m];
        let mut names = vec![String::new(); m];
        intensities
            .par_chunks_mut(hw)
            .zip(density.par_chunks_mut(hw))
            .zip(support.par_chunks_mut(hw))
            .zip(pixel_a.par_iter_mut().zip(names.par_iter_mut()))
            .enumerate()
            .for_each_init(
                || {
                    (
                        plan.scratch(),
                        vec![Complex32::new(0.0, 0.0); hw],
                        vec![Complex32::new(0.0, 0.0); hw],
                        vec![0f32; hw],
                    )
                },
                |(work, cbuf, nbuf, mag), (k, (((inten, dens), sup), (pix, name)))| {
                    let i = first + k;
                    let t0 = Instant::now();
                    let owned = match self.particle(i) {
                        Ok((n, owned)) => {
                            *name = n;
                            owned
                        }
                        Err(e) => {
                            failed
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                            return;
                        }
                    };
                    let p = owned
                        .as_ref()
                        .unwrap_or_else(|| &prepared[i % prepared.len()]);
                    *pix = p.pixel_a;
                    let rot = rotation_matrix(&random_quaternion(cfg.seed, i));
                    project(p, &rot, Render::new(cfg, p.pixel_a), h, w, dens);
                    match cfg.ideal_support {
                        IdealSupport::Threshold => {
                            let max = dens.iter().fold(0f32, |m, &v| m.max(v));
                            let thr = (cfg.support_threshold * max as f64) as f32;
                            for (s, &d) in sup.iter_mut().zip(dens.iter()) {
                                *s = (d > thr) as u8;
                            }
                        }
                        IdealSupport::Molmap { .. } => {
                            for (s, &d) in sup.iter_mut().zip(dens.iter()) {
                                *s = (d > 0.0) as u8;
                            }
                        }
                    }
                    self.t_proj.fetch_add(ns(t0), Ordering::Relaxed);
                    let t1 = Instant::now();
                    for (c, &d) in cbuf.iter_mut().zip(dens.iter()) {
                        *c = Complex32::new(d, 0.0);
                    }
                    centred_to_native(cbuf, h, w, nbuf);
                    plan.forward(nbuf, work);
                    for (m, c) in mag.iter_mut().zip(nbuf.iter()) {
                        *m = c.norm_sqr();
                    }
                    native_to_centred(mag, h, w, inten);
                    self.t_fft.fetch_add(ns(t1), Ordering::Relaxed);
                    let t2 = Instant::now();
                    scale_and_noise(cfg, i, p.pixel_a, inten);
                    self.t_noise.fetch_add(ns(t2), Ordering::Relaxed);
                    progress(1);
                },
            );
        if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(e);
        }
        Ok(SimChunk {
            first,
            n: m,
            intensities,
            density,
            support,
            pixel_a,
            names,
        })
    }
}

/// Simulate `cfg.count` patterns cycling over `structures` (see the module documentation),
/// `chunk` patterns at a time: each finished block goes to `sink` in order before the next
/// block is started, so memory is bounded by the chunk, not by N. Runs in the current rayon
/// pool; results are independent of the thread count and of `chunk`. `progress` is called
/// with 1 per finished pattern.
pub fn simulate_chunks(
    structures: &[Structure],
    cfg: &SimConfig,
    chunk: usize,
    progress: &(dyn Fn(u64) + Sync),
    sink: &mut dyn FnMut(SimChunk) -> Result<()>,
) -> Result<SimMeta> {
    let sim = Simulator::new(structures, cfg)?;
    let n = cfg.count;
    let chunk = chunk.max(1);
    let mut all_names = Vec::with_capacity(n);
    let mut all_pixel_a = Vec::with_capacity(n);
    let mut first = 0;
    while first < n {
        let m = chunk.min(n - first);
        let c = sim.compute(first, m, progress)?;
        all_names.extend(c.names.iter().cloned());
        all_pixel_a.extend_from_slice(&c.pixel_a);
        sink(c)?;
        first += m;
    }
    Ok(SimMeta {
        mask: sim.mask(),
        orientation: (0..n).map(|i| random_quaternion(cfg.seed, i)).collect(),
        names: all_names,
        structure_index: (0..n).map(|i| sim.structure_index(i)).collect(),
        pixel_size_nm: all_pixel_a.iter().map(|a| a / 10.0).collect(),
        timings: sim.timings(),
    })
}

/// Scale pattern `i` to the photon count and draw its Poisson noise, as configured.
fn scale_and_noise(cfg: &SimConfig, i: usize, pixel_a: f64, inten: &mut [f32]) {
    let scale = match (cfg.photons, cfg.fluence) {
        (Some(ph), _) => {
            let total: f64 = inten.iter().map(|&v| v as f64).sum();
            Some(if total > 0.0 { ph / total } else { 0.0 })
        }
        (None, Some(f)) => Some(fluence_scale(cfg, f, pixel_a)),
        (None, None) => None,
    };
    if let Some(k) = scale {
        match cfg.noise {
            Noise::None => inten.iter_mut().for_each(|v| *v = (*v as f64 * k) as f32),
            Noise::Poisson => {
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(item_seed(cfg.seed, i, 2));
                for v in inten.iter_mut() {
                    *v = poisson(*v as f64 * k, &mut rng) as f32;
                }
            }
        }
    } else if cfg.noise == Noise::Poisson {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(item_seed(cfg.seed, i, 2));
        for v in inten.iter_mut() {
            *v = poisson(*v as f64, &mut rng) as f32;
        }
    }
}

/// Classical electron radius, m (CODATA 2018).
pub const ELECTRON_RADIUS_M: f64 = 2.817_940_326_2e-15;

/// Expected photons per pixel per electron² of |F|² for an incident fluence (photons/µm²):
/// `fluence r_e² dΩ`, with the detector pixel's solid angle `dΩ = (λ / (H dx)) (λ / (W dx))`
/// for a real-space pixel of `pixel_a` Å (small-angle approximation, polarisation 1).
pub fn fluence_scale(cfg: &SimConfig, fluence_per_um2: f64, pixel_a: f64) -> f64 {
    let (h, w) = cfg.size;
    let lam = cfg.wavelength_nm * 1e-9;
    let dx = pixel_a * 1e-10;
    let d_omega = (lam / (h as f64 * dx)) * (lam / (w as f64 * dx));
    fluence_per_um2 * 1e12 * ELECTRON_RADIUS_M * ELECTRON_RADIUS_M * d_omega
}

/// Simulate `cfg.count` patterns in memory (see [`simulate_chunks`] for large N).
pub fn simulate(
    structures: &[Structure],
    cfg: &SimConfig,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<SimOutput> {
    let (h, w) = cfg.size;
    let n = cfg.count;
    let mut intensities = Stack::filled(n, h, w, 0f32);
    let mut density = Stack::filled(n, h, w, 0f32);
    let mut support = Stack::filled(n, h, w, 0u8);
    let hw = h * w;
    let meta = simulate_chunks(structures, cfg, n.max(1), progress, &mut |c| {
        let r = c.first * hw..(c.first + c.n) * hw;
        intensities.data[r.clone()].copy_from_slice(&c.intensities);
        density.data[r.clone()].copy_from_slice(&c.density);
        support.data[r].copy_from_slice(&c.support);
        Ok(())
    })?;
    Ok(SimOutput {
        intensities,
        mask: meta.mask,
        density,
        support,
        orientation: meta.orientation,
        names: meta.names,
        structure_index: meta.structure_index,
        pixel_size_nm: meta.pixel_size_nm,
        timings: meta.timings,
    })
}

/// A CXI file of simulated patterns being written: the three (N,H,W) datasets are streamed
/// to disk by blocks of patterns, the rest is written at [`SimCxi::finish`].
pub(crate) struct SimCxi {
    w: StreamWriter,
    ids: SimLayout,
}

impl SimCxi {
    pub(crate) fn create(
        dest: &Path,
        n: usize,
        h: usize,
        w: usize,
        cfg: &SimConfig,
    ) -> Result<SimCxi> {
        let mut f = StreamWriter::create(dest)?;
        let ids = SimLayout::declare(&mut f, n, h, w, cfg)?;
        Ok(SimCxi { w: f, ids })
    }

    pub(crate) fn rows(
        &mut self,
        first: usize,
        inten: &[f32],
        dens: &[f32],
        sup: &[u8],
    ) -> Result<()> {
        let (f, ids) = (&mut self.w, &self.ids);
        f.write_rows_f32(ids.data, first, inten)?;
        f.write_rows_f32(ids.density, first, dens)?;
        f.write_rows_u8(ids.support, first, sup)
    }

    pub(crate) fn finish(mut self, meta: &SimMeta, cfg: &SimConfig) -> Result<()> {
        SimLayout::write_meta(&mut self.w, meta, cfg)?;
        self.w.finish()
    }
}

/// The streamed datasets of a simulation's CXI file in a [`StreamWriter`] (the layout
/// of [`write_cxi`]; a resumable writer of `simulate --resume` gets the same one).
pub(crate) struct SimLayout {
    data: StreamId,
    density: StreamId,
    support: StreamId,
}

impl SimLayout {
    /// Declare the streamed datasets of `n` patterns of `h` x `w` in `f`.
    pub(crate) fn declare(
        f: &mut StreamWriter,
        n: usize,
        h: usize,
        w: usize,
        cfg: &SimConfig,
    ) -> Result<SimLayout> {
        let data = f.stream("entry_1/data_1/data", Dtype::F32, &[n, h, w])?;
        let density = f.stream("entry_1/sample_1/density", Dtype::F32, &[n, h, w])?;
        let support = f.stream("entry_1/sample_1/support", Dtype::U8, &[n, h, w])?;
        f.attr_string(
            "entry_1/data_1/data",
            "description",
            "diffraction intensities, zero frequency at (H/2, W/2)",
        )?;
        f.attr_string(
            "entry_1/sample_1/density",
            "units",
            "electrons per pixel, centred",
        )?;
        f.attr_string("entry_1/sample_1/support", "rule", &cfg.support_rule())?;
        Ok(SimLayout {
            data,
            density,
            support,
        })
    }

    /// Rows from little-endian bytes (a block's rows as [`crate::run::simulate`] carries
    /// them), written at pattern `first`.
    pub(crate) fn rows_raw(
        &self,
        f: &mut StreamWriter,
        first: usize,
        inten: &[u8],
        dens: &[u8],
        sup: &[u8],
    ) -> Result<()> {
        f.write_rows_raw(self.data, first, inten)?;
        f.write_rows_raw(self.density, first, dens)?;
        f.write_rows_raw(self.support, first, sup)
    }

    /// Everything but the streamed rows (written before `f`'s `finish`).
    pub(crate) fn write_meta(f: &mut StreamWriter, meta: &SimMeta, cfg: &SimConfig) -> Result<()> {
        let [_, h, w] = meta.mask.shape();
        let n = meta.orientation.len();
        f.string("cxi_version", "150")?;
        f.attr_string("entry_1", "NX_class", "NXentry")?;
        f.u8(
            "entry_1/instrument_1/detector_1/mask",
            &[h, w],
            &meta.mask.data,
        )?;
        let lam = cfg.wavelength_nm * 1e-9;
        let dist = cfg.detector_distance_m;
        f.f32(
            "entry_1/instrument_1/detector_1/distance",
            &[1],
            &[dist as f32],
        )?;
        f.attr_string("entry_1/instrument_1/detector_1/distance", "units", "m")?;
        f.f32(
            "entry_1/instrument_1/source_1/wavelength",
            &[1],
            &[lam as f32],
        )?;
        f.attr_string("entry_1/instrument_1/source_1/wavelength", "units", "m")?;
        let px: Vec<f64> = meta.pixel_size_nm.iter().map(|p| p * 1e-9).collect();
        let det_x: Vec<f32> = px
            .iter()
            .map(|d| (lam * dist / (w as f64 * d)) as f32)
            .collect();
        let det_y: Vec<f32> = px
            .iter()
            .map(|d| (lam * dist / (h as f64 * d)) as f32)
            .collect();
        f.f32("entry_1/instrument_1/detector_1/x_pixel_size", &[n], &det_x)?;
        f.f32("entry_1/instrument_1/detector_1/y_pixel_size", &[n], &det_y)?;
        let pxf: Vec<f32> = px.iter().map(|&d| d as f32).collect();
        f.f32("entry_1/sample_1/pixel_size", &[n], &pxf)?;
        f.attr_string("entry_1/sample_1/pixel_size", "units", "m")?;
        let res: Vec<f32> = px.iter().map(|&d| (2.0 * d) as f32).collect();
        f.f32("entry_1/sample_1/resolution_at_edge", &[n], &res)?;
        f.attr_string(
            "entry_1/sample_1/resolution_at_edge",
            "units",
            "m (full period at the detector edge, 2 * pixel_size)",
        )?;
        let q: Vec<f32> = meta
            .orientation
            .iter()
            .flat_map(|q| q.iter().map(|&v| v as f32))
            .collect();
        f.f32("entry_1/sample_1/geometry_1/orientation", &[n, 4], &q)?;
        f.attr_string(
            "entry_1/sample_1/geometry_1/orientation",
            "description",
            "unit quaternion [w, x, y, z], active rotation of the centroid-centred atoms",
        )?;
        f.string("entry_1/sample_1/name", &meta.names.join("\n"))?;
        let idx: Vec<i64> = meta.structure_index.iter().map(|&i| i as i64).collect();
        f.i64("entry_1/sample_1/structure_index", &[n], &idx)?;
        let mut distinct: Vec<(usize, &str)> = meta
            .structure_index
            .iter()
            .zip(&meta.names)
            .map(|(&i, s)| (i, s.as_str()))
            .collect();
        distinct.sort();
        distinct.dedup();
        let list: Vec<&str> = distinct.iter().map(|x| x.1).collect();
        f.string("entry_1/sample_1/structures", &list.join("\n"))?;
        f.string(
            "entry_1/process_1/configuration",
            &serde_json::to_string_pretty(&cfg.to_json()).unwrap_or_default(),
        )?;
        f.string("entry_1/process_1/program", "cdiphase simulate")?;
        f.string("entry_1/process_1/version", env!("CARGO_PKG_VERSION"))?;
        Ok(())
    }
}

/// Write a simulation held in memory as CXI (atomic). Datasets:
///
/// - `entry_1/data_1/data` (N,H,W) f32 intensities (centred), also the detector data;
/// - `entry_1/instrument_1/detector_1/mask` (H,W) u8, nonzero = unmeasured;
/// - `entry_1/instrument_1/detector_1/distance` (1) f32, m;
/// - `entry_1/instrument_1/detector_1/x_pixel_size`, `y_pixel_size` (N) f32, m: the detector
///   pixel that gives each pattern's real-space pixel, `lambda * L / (size * dx)`;
/// - `entry_1/instrument_1/source_1/wavelength` (1) f32, m;
/// - `entry_1/sample_1/density` (N,H,W) f32 electrons per pixel, `support` (N,H,W) u8;
/// - `entry_1/sample_1/pixel_size` (N) f32, m (real space);
/// - `entry_1/sample_1/resolution_at_edge` (N) f32, m: full-period resolution at the middle
///   of the detector edge, `2 dx`;
/// - `entry_1/sample_1/geometry_1/orientation` (N,4) f32 quaternions [w,x,y,z];
/// - `entry_1/sample_1/name`: the source ids of the patterns joined by newlines (string);
///   `entry_1/sample_1/structure_index` (N) i64 index into `entry_1/sample_1/structures`
///   (the distinct names, newline-joined);
/// - `entry_1/process_1/configuration`: the configuration as JSON.
///
/// The file is the same as [`simulate_to_cxi`] writes.
pub fn write_cxi(out: &SimOutput, cfg: &SimConfig, dest: &Path) -> Result<()> {
    let [n, h, w] = out.intensities.shape();
    let mut f = SimCxi::create(dest, n, h, w, cfg)?;
    f.rows(
        0,
        &out.intensities.data,
        &out.density.data,
        &out.support.data,
    )?;
    let meta = SimMeta {
        mask: out.mask.clone(),
        orientation: out.orientation.clone(),
        names: out.names.clone(),
        structure_index: out.structure_index.clone(),
        pixel_size_nm: out.pixel_size_nm.clone(),
        timings: out.timings,
    };
    f.finish(&meta, cfg)
}

/// What [`simulate_to_cxi`] reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StreamReport {
    pub timings: SimTimings,
    /// Wall seconds the writer thread spent writing (overlapping the simulation).
    pub write_seconds: f64,
    /// Wall seconds of the whole call, simulation and writing.
    pub total_seconds: f64,
    pub patterns: usize,
}

/// Simulate and write straight to a CXI file (the layout of [`write_cxi`]), `chunk` patterns
/// at a time: a writer thread writes block k while block k + 1 is simulated, so memory stays
/// at about three blocks whatever N. The file appears at `dest` only when complete.
pub fn simulate_to_cxi(
    structures: &[Structure],
    cfg: &SimConfig,
    dest: &Path,
    chunk: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<StreamReport> {
    let t0 = Instant::now();
    cfg.validate(structures)?;
    cfg.check_resources(dest, chunk)?;
    let (h, w) = cfg.size;
    let file = SimCxi::create(dest, cfg.count, h, w, cfg)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<SimChunk>(1);
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> Result<(SimCxi, f64)> {
            let mut file = file;
            let mut secs = 0.0;
            for c in rx {
                let t = Instant::now();
                file.rows(c.first, &c.intensities, &c.density, &c.support)?;
                secs += t.elapsed().as_secs_f64();
            }
            Ok((file, secs))
        });
        let sim = simulate_chunks(structures, cfg, chunk, progress, &mut |c| {
            check_chunk(&c, cfg)?;
            // a closed channel means the writer failed: its error is reported below
            tx.send(c)
                .map_err(|_| Error::Config("writer stopped".into()))
        });
        drop(tx);
        let written = writer
            .join()
            .map_err(|_| Error::Config("the CXI writer thread panicked".into()))?;
        let (file, write_seconds) = written?;
        let meta = sim?;
        file.finish(&meta, cfg)?;
        Ok(StreamReport {
            timings: meta.timings,
            write_seconds,
            total_seconds: t0.elapsed().as_secs_f64(),
            patterns: cfg.count,
        })
    })
}

/// Phase simulated patterns of real structures from their ideal support and report the
/// aligned normalised error to the ground-truth density per pattern.
///
/// `orientations` noise-free patterns per structure (`size` x `size`, other simulation
/// settings default), `starts` random starts, `schedule` e.g.
/// `"200*(20*HIO + 5*ER) + 100*ER"`, beta 0.9, positivity, CPU backend (current rayon
/// threads). Returns `(structure name, error)` per pattern; see [`phasing_check_with`].
pub fn phasing_check(
    structures: &[Structure],
    orientations: usize,
    size: usize,
    starts: usize,
    schedule: &str,
    seed: u64,
) -> Result<Vec<(String, f64)>> {
    let sim = SimConfig {
        size: (size, size),
        count: structures.len() * orientations,
        seed,
        ..SimConfig::default()
    };
    let pcfg = crate::phasing::PhaseConfig {
        schedule: schedule.to_string(),
        beta: 0.9,
        constraint: crate::phasing::program::Constraint::Positive,
        starts,
        seed: seed ^ 0xC0FFEE,
        ..crate::phasing::PhaseConfig::default()
    };
    Ok(phasing_check_with(structures, &sim, &pcfg)?
        .into_iter()
        .map(|r| (r.name, r.error))
        .collect())
}

/// One pattern of [`phasing_check_with`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CheckResult {
    pub name: String,
    /// Normalised real-space error to the ground-truth density after alignment
    /// (translation, twin, global phase).
    pub error: f64,
    /// Final Fourier error of the best start (as the phasing reports it).
    pub fourier_error: f64,
    /// The same aligned error restricted to spatial frequencies below half the Nyquist
    /// frequency (|q| < min(H, W) / 4 px^-1 in DFT units): how well the low-resolution
    /// density (features of 4 px and more) is recovered.
    pub error_low_q: f64,
    /// Share of the ground truth's energy (|F|^2, zero frequency excluded) above half the
    /// Nyquist frequency: how much near-atomic detail the object carries.
    pub high_q_energy: f64,
    /// sqrt(energy of the truth outside its ideal support / total energy): the lowest error
    /// any object confined to that support can reach.
    pub support_floor: f64,
}

/// Energies of `a - b` and of `a` at |q| < `q_cut` (DFT units), and of `a` above it and
/// overall (zero frequency excluded from the last two), float64 DFTs of centred images.
fn band_energies(a: &[Complex32], b: &[Complex32], h: usize, w: usize, q_cut: f64) -> [f64; 4] {
    let fft = |v: &[Complex32]| -> Vec<num_complex::Complex64> {
        let mut d: Vec<num_complex::Complex64> = v
            .iter()
            .map(|c| num_complex::Complex64::new(c.re as f64, c.im as f64))
            .collect();
        crate::eval::align::fft2(&mut d, h, w, false);
        d
    };
    let fa = fft(a);
    let fb = fft(b);
    let mut e = [0.0; 4];
    for y in 0..h {
        let qy = crate::array::signed(y, h) as f64;
        for x in 0..w {
            let qx = crate::array::signed(x, w) as f64;
            let i = y * w + x;
            let q = (qy * qy + qx * qx).sqrt();
            if q < q_cut {
                e[0] += (fa[i] - fb[i]).norm_sqr();
                e[1] += fa[i].norm_sqr();
            } else {
                e[2] += fa[i].norm_sqr();
            }
            if i != 0 {
                e[3] += fa[i].norm_sqr();
            }
        }
    }
    e
}

/// Simulate with `sim` (noise and masks as configured) and phase with `pcfg`, whose support
/// is replaced by the ideal supports (`SupportSpec::Given`, centred).
pub fn phasing_check_with(
    structures: &[Structure],
    sim: &SimConfig,
    pcfg: &crate::phasing::PhaseConfig,
) -> Result<Vec<CheckResult>> {
    use crate::backend::cpu::CpuBackend;
    use crate::eval::align::{align, AlignOptions};
    use crate::io::PatternSet;
    use crate::phasing::{phase, PhaseConfig, SupportSpec};
    let out = simulate(structures, sim, &|_| {})?;
    let patterns = PatternSet {
        intensities: out.intensities.clone(),
        mask: if sim.mask.is_none() {
            None
        } else {
            Some(out.mask.clone())
        },
        source: "simulation".into(),
        entry: "phasing_check".into(),
    };
    let pcfg = PhaseConfig {
        support: SupportSpec::Given(out.support.clone()),
        ..pcfg.clone()
    };
    let backend = CpuBackend::new(None)?;
    let rec = phase(&backend, &patterns, &pcfg, &|_| {})?;
    let finals = rec.best_final_errors();
    let [n, h, w] = out.density.shape();
    Ok((0..n)
        .map(|i| {
            let truth: Vec<Complex32> = out
                .density
                .image(i)
                .iter()
                .map(|&v| Complex32::new(v, 0.0))
                .collect();
            let c64 = |v: &[Complex32]| -> Vec<num_complex::Complex64> {
                v.iter()
                    .map(|c| num_complex::Complex64::new(c.re as f64, c.im as f64))
                    .collect()
            };
            let (aligned, al) = align(
                &c64(&truth),
                &c64(rec.objects.image(i)),
                h,
                w,
                AlignOptions::default(),
            );
            let aligned: Vec<Complex32> = aligned
                .iter()
                .map(|c| Complex32::new(c.re as f32, c.im as f32))
                .collect();
            let e = band_energies(&truth, &aligned, h, w, h.min(w) as f64 / 4.0);
            CheckResult {
                name: out.names[i].clone(),
                error: al.error,
                fourier_error: finals[i] as f64,
                error_low_q: (e[0] / e[1].max(f64::MIN_POSITIVE)).sqrt(),
                high_q_energy: e[2] / e[3].max(f64::MIN_POSITIVE),
                support_floor: {
                    let (mut out_e, mut all) = (0.0f64, 0.0f64);
                    for (&d, &s) in out.density.image(i).iter().zip(out.support.image(i)) {
                        let e = (d as f64) * (d as f64);
                        all += e;
                        if s == 0 {
                            out_e += e;
                        }
                    }
                    (out_e / all.max(f64::MIN_POSITIVE)).sqrt()
                },
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_moments() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        for &lam in &[0.3, 4.0, 25.0, 1e4] {
            let n = 20000;
            let v: Vec<f64> = (0..n).map(|_| poisson(lam, &mut rng)).collect();
            let m = v.iter().sum::<f64>() / n as f64;
            let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64;
            let se = (lam / n as f64).sqrt();
            assert!((m - lam).abs() < 5.0 * se, "lam {lam} mean {m}");
            assert!((var / lam - 1.0).abs() < 0.08, "lam {lam} var {var}");
        }
    }

    #[test]
    fn band_energies_split_parseval() {
        let (h, w) = (9, 14);
        let a: Vec<Complex32> = (0..h * w)
            .map(|i| Complex32::new((i as f32 * 0.7).sin(), (i as f32 * 0.3).cos()))
            .collect();
        let b: Vec<Complex32> = a.iter().map(|c| c * 0.5).collect();
        let e = band_energies(&a, &b, h, w, 2.5);
        let energy: f64 = a.iter().map(|c| c.norm_sqr() as f64).sum::<f64>() * (h * w) as f64;
        // low + high = all (Parseval); a - b = a / 2 in every band
        assert!(
            ((e[1] + e[2]) / energy - 1.0).abs() < 1e-6,
            "{e:?} {energy}"
        );
        assert!((e[0] / e[1] - 0.25).abs() < 1e-9);
        assert!(e[3] < energy && e[3] > 0.0);
    }

    #[test]
    fn ln_factorial_matches() {
        let mut f = 0.0f64;
        for k in 1..40 {
            f += (k as f64).ln();
            assert!((ln_factorial(k as f64) - f).abs() < 1e-9, "{k}");
        }
    }
}

//! The options of a simulation as `cdiphase simulate` and the Python package's `simulate`
//! spell them, turned into a [`SimConfig`]: the preset (or the defaults), then every option
//! given. One implementation for both front ends; messages use the CLI's flag names.

use super::{
    AssemblyConfig, AtomModel, Centring, IdealSupport, MaskSpec, Noise, ParticleKind, SimConfig,
    SyntheticConfig,
};
use crate::{Error, Result};

/// Simulation options; `None` keeps the preset's (or the default) value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SimOptions {
    /// `paper`, or none for [`SimConfig::default`].
    pub preset: Option<String>,
    pub count: usize,
    pub seed: u64,
    pub size: Option<(usize, usize)>,
    /// `none` | `poisson`.
    pub noise: Option<String>,
    pub photons: Option<f64>,
    pub fluence: Option<f64>,
    /// [`MaskSpec::parse`] syntax.
    pub mask: Option<String>,
    pub resolution: Option<f64>,
    /// [`AtomModel::parse`] syntax.
    pub atoms: Option<String>,
    pub fill: Option<f64>,
    pub pixel_size_nm: Option<f64>,
    pub supersample: Option<usize>,
    /// [`IdealSupport::parse`] syntax.
    pub ideal_support: Option<String>,
    pub support_threshold: Option<f64>,
    /// [`Centring::parse`] syntax.
    pub centre: Option<String>,
    pub max_extent: Option<f64>,
    /// Synthetic particle kinds ([`ParticleKind::parse_list`]) with their residue range.
    pub synthetic: Option<(String, (usize, usize))>,
    /// Assemblies: their count and parts per assembly (MIN, MAX).
    pub assemblies: Option<(usize, (usize, usize))>,
}

impl SimOptions {
    /// The configuration: the preset (or the defaults), then every option given.
    pub fn config(&self) -> Result<SimConfig> {
        let bad = |m: String| Err(Error::Config(m));
        let mut cfg = match self
            .preset
            .as_deref()
            .map(|p| p.trim().to_ascii_lowercase())
        {
            None => SimConfig::default(),
            Some(p) if p == "paper" => SimConfig::paper(),
            Some(p) => return bad(format!("--preset '{p}': expected paper")),
        };
        cfg.count = self.count;
        cfg.seed = self.seed;
        if let Some((h, w)) = self.size {
            if h < 2 || w < 2 {
                return bad(format!("--size {h}x{w}: expected HxW with H, W >= 2"));
            }
            cfg.size = (h, w);
        }
        if let Some(n) = &self.noise {
            cfg.noise = match n.to_ascii_lowercase().as_str() {
                "none" => Noise::None,
                "poisson" => Noise::Poisson,
                other => return bad(format!("--noise '{other}': expected none or poisson")),
            };
        }
        if self.photons.is_some() && self.fluence.is_some() {
            return bad("--photons and --fluence: give one".into());
        }
        if cfg.noise == Noise::Poisson && self.photons.is_none() && self.fluence.is_none() {
            return bad(
                "--noise poisson needs --photons (the expected total count per pattern) or --fluence"
                    .into(),
            );
        }
        if self.photons.is_some() || self.fluence.is_some() {
            cfg.photons = self.photons;
            cfg.fluence = self.fluence;
        }
        if let Some(m) = &self.mask {
            cfg.mask = MaskSpec::parse(m)?;
        }
        if let Some(r) = self.resolution {
            cfg.resolution = r;
        }
        if let Some(a) = &self.atoms {
            cfg.atoms = AtomModel::parse(a)?;
        }
        if self.fill.is_some() && self.pixel_size_nm.is_some() {
            return bad("--fill and --pixel-size: give one".into());
        }
        if let Some(f) = self.fill {
            cfg.fill = f;
            cfg.pixel_size_nm = None;
        }
        if let Some(p) = self.pixel_size_nm {
            cfg.pixel_size_nm = Some(p);
        }
        if self.supersample.is_some() {
            cfg.supersample = self.supersample;
        } else if self.preset.is_some()
            && (self.pixel_size_nm.is_some() || self.fill.is_some() || self.resolution.is_some())
        {
            // the preset's factor was chosen for its own pixel size and resolution
            cfg.supersample = None;
        }
        if let Some(t) = self.support_threshold {
            cfg.support_threshold = t;
        }
        if let Some(rule) = &self.ideal_support {
            let (r, t) = IdealSupport::parse(rule)?;
            cfg.ideal_support = r;
            if let Some(t) = t {
                if self.support_threshold.is_some_and(|s| s != t) {
                    return bad(format!(
                        "--ideal-support {rule} and --support-threshold disagree: give one"
                    ));
                }
                cfg.support_threshold = t;
            }
        }
        if let Some(c) = &self.centre {
            cfg.centre = Centring::parse(c)?;
        }
        if let Some(m) = self.max_extent {
            cfg.max_extent = m;
        }
        cfg.synthetic = match &self.synthetic {
            Some((kinds, residues)) => Some(SyntheticConfig {
                kinds: ParticleKind::parse_list(kinds)?,
                residues: *residues,
            }),
            None => None,
        };
        cfg.assemblies = self
            .assemblies
            .map(|(count, parts)| AssemblyConfig { count, parts });
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preset_then_the_options() {
        let o = SimOptions {
            preset: Some("paper".into()),
            count: 3,
            resolution: Some(5.0),
            ..SimOptions::default()
        };
        let c = o.config().unwrap();
        assert_eq!(c.count, 3);
        assert_eq!(c.resolution, 5.0);
        assert_eq!(c.supersample, None);
        assert_eq!(c.pixel_size_nm, SimConfig::paper().pixel_size_nm);
    }

    #[test]
    fn inconsistent_options_are_refused() {
        let poisson = SimOptions {
            noise: Some("poisson".into()),
            ..SimOptions::default()
        };
        assert!(poisson
            .config()
            .unwrap_err()
            .to_string()
            .contains("needs --photons"));
        let both = SimOptions {
            fill: Some(0.4),
            pixel_size_nm: Some(0.2),
            ..SimOptions::default()
        };
        assert!(both.config().is_err());
        let preset = SimOptions {
            preset: Some("nature".into()),
            ..SimOptions::default()
        };
        assert!(preset
            .config()
            .unwrap_err()
            .to_string()
            .contains("expected paper"));
    }
}

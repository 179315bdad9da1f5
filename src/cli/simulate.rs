//! `cdiphase simulate`: diffraction patterns with their ground truth, from structures or
//! synthetic particles.

use super::{parse_size, progress_bar, RunArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct SimulateArgs {
    /// Structures: PDB or mmCIF files (gzipped or not), folders of them, or .txt/.lst lists.
    #[arg(long, num_args = 1.., required_unless_present = "synthetic", conflicts_with = "synthetic")]
    pub pdb: Vec<PathBuf>,
    /// Synthetic protein-like particles instead of structures, one different particle per
    /// pattern: all | a list of compact, elongated, multidomain, ring.
    #[arg(long)]
    pub synthetic: Option<String>,
    /// Residues per synthetic particle, MIN:MAX (rings: MIN/2..MAX/2 per subunit).
    #[arg(long, default_value = "150:1200")]
    pub residues: String,
    /// Output CXI file (written atomically).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Number of patterns (cycling over the structures, a random orientation each).
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// Pattern size: N for N x N, or HxW.
    #[arg(long, default_value = "128")]
    pub size: String,
    /// Total photons per pattern (default: raw |F|^2 of the density in electrons).
    #[arg(long)]
    pub photons: Option<f64>,
    /// Incident fluence, photons per µm², instead of --photons: expected counts
    /// fluence * r_e^2 * (pixel solid angle) * |F|^2 (uses the wavelength, 0.2 nm).
    #[arg(long, conflicts_with = "photons")]
    pub fluence: Option<f64>,
    /// none | poisson.
    #[arg(long, default_value = "none")]
    pub noise: String,
    /// Missing data: none | stripe:ROWS | beamstop:RADIUS | gaps:WIDTH[xPANELS], comma-separated.
    #[arg(long, default_value = "none")]
    pub mask: String,
    /// Resolution of the Gaussian blur of the atoms, Å (Chimera molmap-like).
    #[arg(long, default_value_t = 3.5)]
    pub resolution: f64,
    /// Atom model: gaussian (Z electrons, molmap) | cromer-mann (form factors, then blurred).
    #[arg(long, default_value = "gaussian")]
    pub atoms: String,
    /// Particle maximum extent as a fraction of the field (0.5 = oversampling 2).
    #[arg(long, default_value_t = 0.45)]
    pub fill: f64,
    /// Ideal support: density above this fraction of the pattern's density maximum.
    #[arg(long, default_value_t = cdiphase::simulate::SimConfig::default().support_threshold)]
    pub support_threshold: f64,
    /// Keep water molecules.
    #[arg(long)]
    pub keep_waters: bool,
    /// Keep hydrogen atoms.
    #[arg(long)]
    pub keep_hydrogens: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn run(a: SimulateArgs) -> Result<()> {
    use cdiphase::simulate::{self as sim, AtomModel, MaskSpec, Noise, ReadOptions, SimConfig};
    let (h, w) = parse_size(&a.size)?;
    let noise = match a.noise.to_ascii_lowercase().as_str() {
        "none" => Noise::None,
        "poisson" => Noise::Poisson,
        other => bail!("--noise '{other}': expected none or poisson"),
    };
    if noise == Noise::Poisson && a.photons.is_none() && a.fluence.is_none() {
        bail!(
            "--noise poisson needs --photons (the expected total count per pattern) or --fluence"
        );
    }
    let cfg = SimConfig {
        size: (h, w),
        count: a.count,
        resolution: a.resolution,
        atoms: AtomModel::parse(&a.atoms)?,
        fill: a.fill,
        photons: a.photons,
        fluence: a.fluence,
        noise,
        mask: MaskSpec::parse(&a.mask)?,
        support_threshold: a.support_threshold,
        seed: a.seed,
        synthetic: match &a.synthetic {
            Some(kinds) => Some(sim::SyntheticConfig {
                kinds: sim::ParticleKind::parse_list(kinds)?,
                residues: parse_residues(&a.residues)?,
            }),
            None => None,
        },
        ..SimConfig::default()
    };
    let opts = ReadOptions {
        skip_waters: !a.keep_waters,
        skip_hydrogens: !a.keep_hydrogens,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.run.threads.unwrap_or(0))
        .build()
        .context("starting the thread pool")?;
    let t0 = std::time::Instant::now();
    let (structures, failed) = if cfg.synthetic.is_some() {
        (Vec::new(), Vec::new())
    } else {
        pool.install(|| sim::collect_structures(&a.pdb, &opts))
    };
    for (path, e) in &failed {
        eprintln!("warning: skipped {}: {e}", path.display());
    }
    if structures.is_empty() && cfg.synthetic.is_none() {
        bail!(
            "no readable structure among {} (see the warnings above)",
            a.pdb
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let read_s = t0.elapsed().as_secs_f64();
    if !a.run.quiet {
        match &a.synthetic {
            Some(k) => eprintln!(
                "simulating {} patterns of {h}x{w}, one synthetic particle ({k}) each",
                a.count
            ),
            None => eprintln!(
                "simulating {} patterns of {}x{} from {} structures ({} unreadable)",
                a.count,
                h,
                w,
                structures.len(),
                failed.len()
            ),
        }
    }
    let pb = progress_bar(a.count as u64, a.run.quiet, "simulate");
    let rep = pool
        .install(|| {
            sim::simulate_to_cxi(&structures, &cfg, &a.output, sim::chunk_for(h, w), &|k| {
                pb.inc(k)
            })
        })
        .with_context(|| format!("simulating into {}", a.output.display()))?;
    pb.finish_and_clear();
    let total = t0.elapsed().as_secs_f64();
    if !a.run.quiet {
        eprintln!(
            "done in {total:.2} s (read {read_s:.2} s, simulate and write {:.2} s, of which the \
             writer thread was busy {:.2} s); wrote {}",
            rep.total_seconds,
            rep.write_seconds,
            a.output.display()
        );
    }
    if a.run.json {
        let summary = serde_json::json!({
            "output": a.output.display().to_string(),
            "patterns": a.count,
            "height": h,
            "width": w,
            "structures": structures.len(),
            "unreadable": failed.iter().map(|(p, e)| serde_json::json!({"file": p.display().to_string(), "error": e.to_string()})).collect::<Vec<_>>(),
            "seconds": {"total": total, "read": read_s, "simulate_and_write": rep.total_seconds, "write_busy": rep.write_seconds},
            "cpu_seconds": rep.timings,
            "configuration": cfg.to_json(),
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(())
}

fn parse_residues(s: &str) -> Result<(usize, usize)> {
    let (a, b) = s.split_once(':').unwrap_or((s, s));
    let p = |t: &str| {
        t.trim()
            .parse::<usize>()
            .with_context(|| format!("--residues '{s}': expected MIN:MAX (whole numbers)"))
    };
    Ok((p(a)?, p(b)?))
}

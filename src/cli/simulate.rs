//! `cdiphase simulate`: diffraction patterns with their ground truth, from structures,
//! assemblies of them or synthetic particles, in the default geometry (`--fill`) or a fixed
//! pixel size (`--pixel-size`, `--preset paper`).

use anyhow::{bail, Context, Result};
use cdiphase::simulate::{self as sim, Chains, ReadOptions, SimConfig};
use clap::Args;
use std::path::PathBuf;

use super::{parse_size, progress_bar, RunArgs};

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
    /// K assemblies of 2-3 of the structures (random orientations, placed in contact
    /// without overlap, seeded) instead of the structures themselves; patterns cycle over
    /// them; each is named asm<k>-<id>+<id>[+<id>].
    #[arg(long, conflicts_with = "synthetic")]
    pub assemblies: Option<usize>,
    /// Parts per assembly, MIN:MAX.
    #[arg(long, default_value = "2:3", requires = "assemblies")]
    pub assembly_parts: String,
    /// Chains of each structure file: all (the whole entry) | first.
    #[arg(long, default_value = "all")]
    pub chains: String,
    /// Output CXI file (written atomically).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Number of patterns (cycling over the structures, a random orientation each).
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// Preset geometry: `paper` = 128x128, 0.2333 nm pixels, 3.5 Å, molmap ideal support,
    /// bounding box centred, supersampling 2, noise-free (the flags below override it).
    #[arg(long)]
    pub preset: Option<String>,
    /// Pattern size: N for N x N, or HxW [default: 128].
    #[arg(long)]
    pub size: Option<String>,
    /// Total photons per pattern (default: raw |F|^2 of the density in electrons).
    #[arg(long)]
    pub photons: Option<f64>,
    /// Incident fluence, photons per µm², instead of --photons: expected counts
    /// fluence * r_e^2 * (pixel solid angle) * |F|^2 (uses the wavelength, 0.2 nm).
    #[arg(long, conflicts_with = "photons")]
    pub fluence: Option<f64>,
    /// none | poisson [default: none].
    #[arg(long)]
    pub noise: Option<String>,
    /// Missing data: none | stripe:ROWS | beamstop:RADIUS | gaps:WIDTH[xPANELS], comma-separated.
    #[arg(long, default_value = "none")]
    pub mask: String,
    /// Resolution of the Gaussian blur of the atoms, Å (Chimera molmap: sigma = 0.225 x
    /// resolution) [default: 3.5].
    #[arg(long)]
    pub resolution: Option<f64>,
    /// Atom model: gaussian (Z electrons, molmap) | cromer-mann (form factors, then blurred).
    #[arg(long, default_value = "gaussian")]
    pub atoms: String,
    /// Particle maximum extent as a fraction of the field (0.5 = oversampling 2); sets the
    /// pixel size per structure [default: 0.45].
    #[arg(long, conflicts_with = "pixel_size")]
    pub fill: Option<f64>,
    /// A fixed real-space pixel size for every structure, nm, instead of --fill (the paper:
    /// 0.2333). Structures whose density does not fit the field are skipped with a warning.
    #[arg(long)]
    pub pixel_size: Option<f64>,
    /// Render on a grid K times finer per axis and sum K x K blocks (anti-aliasing)
    /// [default: 1 with --fill; with --pixel-size the smallest K putting the fine grid at
    /// or below resolution/3, molmap's grid: 2 at 0.2333 nm and 3.5 Å].
    #[arg(long)]
    pub supersample: Option<usize>,
    /// Ideal support: threshold[:T] (density > T x its maximum, T = --support-threshold) |
    /// molmap[:RANGE] (Gaussians cut on a box of RANGE = 5 sigma as Chimera's molmap;
    /// support = density > 0) [default: threshold].
    #[arg(long)]
    pub ideal_support: Option<String>,
    /// Ideal support threshold (threshold rule): a fraction of the pattern's density maximum
    /// [default: 0.025].
    #[arg(long)]
    pub support_threshold: Option<f64>,
    /// Centre of each projection at (H/2, W/2): centroid | bbox (bounding box of the
    /// projected atoms) [default: centroid].
    #[arg(long)]
    pub centre: Option<String>,
    /// With --pixel-size: the largest density extent allowed, as a fraction of the field
    /// (0.5 guarantees oversampling 2) [default: 1].
    #[arg(long)]
    pub max_extent: Option<f64>,
    /// Keep water molecules.
    #[arg(long)]
    pub keep_waters: bool,
    /// Keep hydrogen atoms.
    #[arg(long)]
    pub keep_hydrogens: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Patterns simulated and written at a time (under MPI: the unit handed to a rank)
    /// [default: 256 patterns of 128x128, as many pixels for other sizes]. The data do not
    /// depend on it.
    #[arg(long)]
    pub block: Option<usize>,
    /// Continue an interrupted run of this command (killed by a signal, SIGKILL included,
    /// or stopped by an error after some blocks): the blocks it finished are kept (the
    /// hidden .OUT.cdiphase-partial and .OUT.cdiphase-journal beside the output). Refused
    /// when the flags or structures differ; without an interrupted run, starts afresh.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

fn parse_range(s: &str, flag: &str) -> Result<(usize, usize)> {
    let (a, b) = s.split_once(':').unwrap_or((s, s));
    let p = |t: &str| {
        t.trim()
            .parse::<usize>()
            .with_context(|| format!("{flag} '{s}': expected MIN:MAX (whole numbers)"))
    };
    Ok((p(a)?, p(b)?))
}

/// The configuration: the preset (or the defaults), then every flag given
/// ([`sim::SimOptions::config`], shared with the Python package).
pub fn config_from_args(a: &SimulateArgs) -> Result<SimConfig> {
    let opts = sim::SimOptions {
        preset: a.preset.clone(),
        count: a.count,
        seed: a.seed,
        size: a.size.as_deref().map(parse_size).transpose()?,
        noise: a.noise.clone(),
        photons: a.photons,
        fluence: a.fluence,
        mask: Some(a.mask.clone()),
        resolution: a.resolution,
        atoms: Some(a.atoms.clone()),
        fill: a.fill,
        pixel_size_nm: a.pixel_size,
        supersample: a.supersample,
        ideal_support: a.ideal_support.clone(),
        support_threshold: a.support_threshold,
        centre: a.centre.clone(),
        max_extent: a.max_extent,
        synthetic: match &a.synthetic {
            Some(k) => Some((k.clone(), parse_range(&a.residues, "--residues")?)),
            None => None,
        },
        assemblies: match a.assemblies {
            Some(k) => Some((k, parse_range(&a.assembly_parts, "--assembly-parts")?)),
            None => None,
        },
    };
    Ok(opts.config()?)
}

pub fn run(mut a: SimulateArgs) -> Result<()> {
    // in an MPI job: rank 0 writes and reports, the workers compute their blocks quietly
    let worker = cdiphase::run::dist::is_worker();
    if worker {
        a.run.quiet = true;
        a.run.json = false;
    }
    let inputs: Vec<(&str, &std::path::Path)> =
        a.pdb.iter().map(|p| ("--pdb", p.as_path())).collect();
    super::check_paths(&inputs, &[("--output", &a.output)], &[])?;
    let cfg = config_from_args(&a)?;
    let (h, w) = cfg.size;
    let opts = ReadOptions {
        skip_waters: !a.keep_waters,
        skip_hydrogens: !a.keep_hydrogens,
        chains: Chains::parse(&a.chains)?,
    };
    let block = a.block.unwrap_or_else(|| sim::chunk_for(h, w));
    if block == 0 {
        bail!("--block 0: expected at least 1 pattern per block");
    }
    // --threads 0 meant rayon's default (all cores), as no --threads does; in an MPI job the
    // node's cores are shared by its ranks
    let threads = a
        .run
        .threads
        .filter(|&t| t > 0)
        .or(cdiphase::run::dist::default_threads());
    let pool = cdiphase::backend::cpu::thread_pool(threads).context("starting the thread pool")?;
    let t0 = std::time::Instant::now();
    let (structures, failed) = if cfg.synthetic.is_some() {
        (Vec::new(), Vec::new())
    } else {
        pool.install(|| sim::collect_structures(&a.pdb, &opts))
    };
    for (path, e) in failed.iter().filter(|_| !worker) {
        eprintln!("warning: skipped {}: {e}", path.display());
    }
    if structures.is_empty() && cfg.synthetic.is_none() {
        bail!(
            "no readable structure among {}{}",
            a.pdb
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if failed.is_empty() {
                " (no structure file found)"
            } else {
                " (see the warnings above)"
            }
        );
    }
    let read = structures.len();
    let (structures, too_large) = pool.install(|| sim::fitting_structures(structures, &cfg));
    for (name, e) in too_large.iter().filter(|_| !worker) {
        eprintln!("warning: skipped {name}: {e}");
    }
    if structures.is_empty() && cfg.synthetic.is_none() {
        bail!(
            "none of the {read} structures fits the field of {}x{} pixels of {} nm{}",
            h,
            w,
            cfg.pixel_size_nm.unwrap_or(0.0),
            if too_large.is_empty() {
                ""
            } else {
                " (see the warnings above)"
            }
        );
    }
    let read_s = t0.elapsed().as_secs_f64();
    if !a.run.quiet {
        let geometry = match cfg.pixel_size_nm {
            Some(p) => format!(
                "{p} nm pixels (field {:.1} nm), supersampling {}",
                p * h.min(w) as f64,
                cfg.supersample_for(p * 10.0)
            ),
            None => format!("particle extent {} of the field", cfg.fill),
        };
        match (&a.synthetic, &cfg.assemblies) {
            (Some(k), _) => eprintln!(
                "simulating {} patterns of {h}x{w}, one synthetic particle ({k}) each; {geometry}",
                a.count
            ),
            (None, Some(ac)) => eprintln!(
                "simulating {} patterns of {h}x{w} from {} assemblies of {}-{} of {} structures; {geometry}",
                a.count,
                ac.count,
                ac.parts.0,
                ac.parts.1,
                structures.len()
            ),
            (None, None) => eprintln!(
                "simulating {} patterns of {}x{} from {} structures ({} unreadable, {} too large); {geometry}",
                a.count,
                h,
                w,
                structures.len(),
                failed.len(),
                too_large.len()
            ),
        }
    }
    // what a resumed run must find unchanged: the configuration, the structures (in
    // order: pattern i takes structure i mod S) and their files' contents
    let mut files: Vec<&std::path::Path> = Vec::new();
    for s in &structures {
        if !s.path.as_os_str().is_empty() && !files.contains(&s.path.as_path()) {
            files.push(s.path.as_path());
        }
    }
    let identity = serde_json::json!({
        "verb": "simulate",
        "configuration": cfg.to_json(),
        "structures": structures.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
    });
    let block_run = super::BlockArgs {
        block,
        resume: a.resume,
    }
    .run(&a.output, identity, files)?;
    let pb = progress_bar(a.count as u64, a.run.quiet, "simulate");
    let rep =
        cdiphase::run::simulate::simulate_blocks(&structures, &cfg, &block_run, &pool, &|k| {
            pb.inc(k)
        })
        .with_context(|| {
            format!(
                "simulating into {} ({})",
                a.output.display(),
                super::resume_hint(&a.output)
            )
        })?;
    let Some(rep) = rep else {
        return Ok(()); // an MPI worker: rank 0 reports
    };
    pb.finish_and_clear();
    let total = t0.elapsed().as_secs_f64();
    let rate = a.count as f64 / rep.total_seconds.max(1e-9);
    if !a.run.quiet {
        eprintln!(
            "done in {total:.2} s (read {read_s:.2} s, simulate and write {:.2} s = {rate:.0} \
             patterns/s, of which the writer thread was busy {:.2} s); wrote {}",
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
            "too_large": too_large.iter().map(|(n, e)| serde_json::json!({"structure": n, "error": e.to_string()})).collect::<Vec<_>>(),
            "seconds": {"total": total, "read": read_s, "simulate_and_write": rep.total_seconds, "write_busy": rep.write_seconds},
            "patterns_per_second": rate,
            "cpu_seconds": rep.timings,
            "configuration": cfg.to_json(),
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(())
}

//! `cdiphase phase`: phase retrieval of every pattern of a file.

use super::{check_paths, is_file_spec, progress_bar, resume_hint, BlockArgs, RunArgs};
use anyhow::{bail, Context, Result};
use cdiphase::array::Stack;
use cdiphase::backend::{self, Device};
use cdiphase::io;
use cdiphase::phasing::program::Recording;
use cdiphase::phasing::{self, InitSpec, PhaseConfig, SupportSpec};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct PhaseArgs {
    /// Input patterns: CXI/HDF5 (entry_1/data_1/data, (N,H,W) or (H,W)) or .npy.
    pub input: PathBuf,
    /// Output CXI file (written atomically).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Dataset path of the intensities in the input (default entry_1/data_1/data).
    #[arg(long)]
    pub entry: Option<String>,
    /// Schedule, e.g. "2000*(5*HIO + 5*ER)", "100*(SW + 50*HIO) + 200*ER", "RAAR(0.8)**500",
    /// "HIO**800 + ML**50 + ER**200" (steps: HIO, ER, RAAR, ML = Poisson maximum-likelihood
    /// conjugate gradient, SW = one shrinkwrap).
    /// Without --algorithm and --shrinkwrap: the recipe measured best by
    /// scripts/phasing_benchmark.sh, "HIO**800 + ML**50 + ER**200" with shrinkwrap
    /// sigma=1,threshold=0.1,every=50,stop=950 (README, "Phasing recipes that work").
    #[arg(long)]
    pub algorithm: Option<String>,
    /// Feedback parameter of HIO / relaxation of RAAR.
    #[arg(long, default_value_t = 0.9)]
    pub beta: f32,
    /// Starting support: autocorrelation[:THRESHOLD] | circle:RADIUS | FILE.cxi | FILE.npy.
    #[arg(long, default_value = "autocorrelation")]
    pub support: String,
    /// Starting object: random | FILE.cxi | FILE.npy (real or complex, centred).
    #[arg(long, default_value = "random")]
    pub init: String,
    /// With a given --init: every start multiplies each pixel by its own 1 + A*(2u-1), u
    /// uniform, seeded (distinct starts around one estimate). 0: all starts are the object.
    #[arg(long, default_value_t = 0.0)]
    pub init_noise: f32,
    /// Periodic shrinkwrap: sigma=1,threshold=0.1,every=N[,start=I][,stop=I]; ranges a:b
    /// ramp; ref=max|mean|rms, factor=LO:HI (per-start thresholds), min=F,max=F[,tune=T]
    /// (support guard). `none`: no shrinkwrap (the default when --algorithm is given).
    #[arg(long)]
    pub shrinkwrap: Option<String>,
    /// Real-space constraint: none | real | positive. Default: positive with the default
    /// recipe (neither --algorithm nor --shrinkwrap given), none otherwise.
    #[arg(long)]
    pub constraint: Option<String>,
    /// Random starts per pattern; the best by final Fourier error is kept.
    #[arg(long, default_value_t = 1)]
    pub starts: usize,
    /// Seed of the random starting objects.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Record the Fourier error every K iterations (default: at the end of each ER section).
    #[arg(long)]
    pub error_every: Option<u64>,
    /// Also write every start to entry_1/image_2 (N,K,H,W).
    #[arg(long)]
    pub keep_all: bool,
    /// Clip negative measured intensities to zero instead of failing.
    #[arg(long)]
    pub clip_negative: bool,
    /// Choose the best start by: fourier (final Fourier error) | llk (final Poisson
    /// log-likelihood) | free-llk (final free log-likelihood over held-out pixels). Starts
    /// whose final support fraction is outside --support-fraction are ranked last.
    #[arg(long, default_value = "fourier")]
    pub select: String,
    /// Fraction of the measured pixels held out of the modulus constraint for the free
    /// log-likelihood (in Friedel pairs); default 0, or 0.05 with --select free-llk.
    #[arg(long)]
    pub free_fraction: Option<f32>,
    /// MIN:MAX support fraction of an admissible start (a support outside collapsed or blew up).
    #[arg(long, default_value = "0.0001:0.7")]
    pub support_fraction: String,
    /// Population search over the starts of each pattern (cohere-style GA):
    /// generations=G,keep=N[,every=K]. Every K iterations (default: iterations/(G+1)), G
    /// times, the best N starts (by --select) are kept and every other start is replaced
    /// by a child of two of them: sqrt(|a||b|) with a's phase, b aligned onto a
    /// (translation, twin, phase), support by shrinkwrap. Deterministic in --seed.
    #[arg(long)]
    pub population: Option<String>,
    /// Restart collapsed starts from a new random object: guard=R[,every=K][,until=I] (or
    /// `default`: guard=3,every=100, until half the run). At checkpoints every K iterations
    /// up to I, a start whose support guard refused more than R shrinkwraps since its last
    /// start, or whose support fraction is outside --support-fraction, starts afresh.
    #[arg(long)]
    pub restart: Option<String>,
    /// Also write the average of the best N starts of each pattern, aligned onto the best,
    /// and the leading modes of their stack, to entry_1/image_3 (scored by `evaluate`).
    /// Default: 4 with the default recipe and --starts 8 or more (on noisy data the merged
    /// object is the better estimate; README "Phasing your data"), else 0.
    #[arg(long)]
    pub merge: Option<usize>,
    /// Keep the best N starts after ITER iterations: at=ITER,keep=N. The other starts of
    /// each pattern (ranked by --select on their support-projected objects) stop there,
    /// saving their time; they are never chosen or merged (entry_1/image_1/all_culled_at).
    #[arg(long)]
    pub cull: Option<String>,
    /// Masked pixels (the missing centre behind a beamstop): free (default; they keep the
    /// transform's value) | free-after:ITER (held at zero amplitude for the first ITER
    /// iterations) | damp:W[,until=ITER] (multiplied by W in [0,1] by every modulus
    /// projection: a penalty on the unconstrained low frequencies) | interpolate:ITER
    /// (filled by a band-limited interpolation of the measured intensities and held as
    /// measured for the first ITER iterations).
    #[arg(long)]
    pub missing_centre: Option<String>,
    /// auto | cpu | cuda | emu.
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub blocks: BlockArgs,
}

pub fn run(mut a: PhaseArgs) -> Result<()> {
    let worker = cdiphase::run::dist::is_worker();
    // in an MPI job: the node's cores shared by its ranks; rank 0 alone reports
    a.run.threads = a.run.threads.or(cdiphase::run::dist::default_threads());
    if worker {
        a.run.quiet = true;
        a.run.json = false;
    }
    let mut inputs = vec![("input", a.input.as_path())];
    for (opt, v) in [("--support", &a.support), ("--init", &a.init)] {
        if is_file_spec(v) {
            inputs.push((opt, Path::new(v)));
        }
    }
    check_paths(&inputs, &[("--output", &a.output)], &[])?;
    let device: Device = a.device.parse()?;
    let backend = backend::select(device, a.run.threads)?;
    let patterns = io::blocks::PatternBlocks::open(&a.input, a.entry.as_deref())
        .with_context(|| format!("reading patterns from {}", a.input.display()))?;
    let st = &patterns;
    let fits = |what: &str, file: &str, n: usize, h: usize, w: usize| -> Result<()> {
        if h != st.h || w != st.w || (n != 1 && n != st.n) {
            bail!(
                "{what} {file}: {n} image(s) of {h}x{w} do not match the {} patterns of {}x{} in {} \
                 (expected one {}x{} image, or {})",
                st.n,
                st.h,
                st.w,
                a.input.display(),
                st.h,
                st.w,
                st.n
            );
        }
        Ok(())
    };
    // a file of one image per pattern is read with each block's patterns (`per`); one
    // shared image is read here. The spec left in `cfg` for a per-pattern file is an
    // empty stack, which the block-wise run replaces and the in-memory one would refuse.
    let mut per = cdiphase::run::phase::PerPattern::default();
    let support = match SupportSpec::parse_builtin(&a.support)? {
        Some(s) => s,
        None if is_file_spec(&a.support) => {
            let reading = || format!("reading --support {}", a.support);
            let s = io::blocks::ImageBlocks::open_support(Path::new(&a.support), None)
                .with_context(reading)?;
            fits("--support", &a.support, s.n, s.h, s.w)?;
            if s.n == 1 {
                SupportSpec::Given(s.read(0..1).with_context(reading)?)
            } else {
                per.support = Some(s);
                SupportSpec::Given(Stack::from_vec(0, st.h, st.w, vec![])?)
            }
        }
        None => bail!(
            "--support '{}': expected autocorrelation[:THRESHOLD], circle:RADIUS, or a .cxi/.h5/.npy file",
            a.support
        ),
    };
    if a.init_noise != 0.0 && a.init.eq_ignore_ascii_case("random") {
        bail!("--init-noise needs a starting object: --init FILE");
    }
    let init = if a.init.eq_ignore_ascii_case("random") {
        InitSpec::Random
    } else if is_file_spec(&a.init) {
        let reading = || format!("reading --init {}", a.init);
        let o =
            io::blocks::ImageBlocks::open_object(Path::new(&a.init), None).with_context(reading)?;
        fits("--init", &a.init, o.n, o.h, o.w)?;
        if o.n == 1 {
            InitSpec::Given(o.read(0..1).with_context(reading)?)
        } else {
            per.init = Some(o);
            InitSpec::Given(Stack::from_vec(0, st.h, st.w, vec![])?)
        }
    } else {
        bail!(
            "--init '{}': expected random or a .cxi/.h5/.npy file",
            a.init
        );
    };
    // the measured default recipe applies where neither --algorithm nor --shrinkwrap is given
    let recipe = phasing::recipe::resolve(
        a.algorithm.as_deref(),
        a.shrinkwrap.as_deref(),
        a.constraint.as_deref(),
    )
    .context("--algorithm / --shrinkwrap / --constraint")?;
    let support_fraction = parse_range(&a.support_fraction)
        .with_context(|| format!("--support-fraction '{}'", a.support_fraction))?;
    let strategy = phasing::recipe::strategy(
        &recipe,
        a.starts,
        a.merge,
        a.population.as_deref(),
        a.restart.as_deref(),
        a.cull.as_deref(),
        a.missing_centre.as_deref(),
    )?;
    let (selection, free_fraction) =
        phasing::recipe::selection(&a.select, a.free_fraction, support_fraction)?;
    let cfg = PhaseConfig {
        schedule: recipe.schedule,
        beta: a.beta,
        shrinkwrap: recipe.shrinkwrap,
        constraint: recipe.constraint,
        starts: a.starts,
        seed: a.seed,
        support,
        init,
        init_noise: a.init_noise,
        recording: match a.error_every {
            Some(k) => Recording::Every(k),
            None => Recording::EndOfErSections,
        },
        keep_all: a.keep_all,
        clip_negative: a.clip_negative,
        free_fraction,
        selection,
        strategy,
    };
    let mut config = cfg.to_json();
    config["input"] = serde_json::json!(a.input.display().to_string());
    config["entry"] = serde_json::json!(patterns.entry);
    config["device"] = serde_json::json!(backend.describe());
    if let SupportSpec::Given(_) = cfg.support {
        config["support"] = serde_json::json!(a.support);
    }
    if let InitSpec::Given(_) = cfg.init {
        config["init"] = serde_json::json!(a.init);
    }
    let mut files = vec![a.input.as_path()];
    for (given, f) in [
        (matches!(cfg.support, SupportSpec::Given(_)), &a.support),
        (matches!(cfg.init, InitSpec::Given(_)), &a.init),
    ] {
        if given {
            files.push(Path::new(f));
        }
    }
    let block_run = a.blocks.run(
        &a.output,
        serde_json::json!({"verb": "phase", "configuration": config}),
        files,
    )?;
    let iterations = phasing::program::Program::compile(
        &phasing::schedule::Schedule::parse(&cfg.schedule)?,
        cfg.beta,
        &cfg.shrinkwrap.clone().unwrap_or_default(),
        cfg.recording,
    )?
    .iterations;
    if !a.run.quiet {
        eprintln!(
            "phasing {} patterns of {}x{} x {} starts, {} iterations each on {}, {} per block{}",
            st.n,
            st.h,
            st.w,
            cfg.starts,
            iterations,
            backend.describe(),
            a.blocks.block,
            if patterns.streamed() {
                ""
            } else {
                " (input read whole: a type the row reader does not decode)"
            }
        );
        for (opt, whole) in [
            ("--support", per.support.as_ref().map(|s| !s.streamed())),
            ("--init", per.init.as_ref().map(|o| !o.streamed())),
        ] {
            if whole == Some(true) {
                eprintln!("{opt} read whole: a type the row reader does not decode");
            }
        }
    }
    let pb = progress_bar(
        st.n as u64 * cfg.starts as u64 * iterations,
        a.run.quiet,
        "phase",
    );
    let t = std::time::Instant::now();
    let summary = cdiphase::run::phase::phase_blocks(
        backend.as_ref(),
        &patterns,
        &cfg,
        &per,
        &config,
        &block_run,
        &|k| pb.inc(k),
    )
    .with_context(|| {
        format!(
            "phasing {} into {} ({})",
            a.input.display(),
            a.output.display(),
            resume_hint(&a.output)
        )
    })?;
    pb.finish_and_clear();
    if worker {
        return Ok(());
    }
    for line in [summary.guard_summary(), summary.restart_summary()]
        .into_iter()
        .flatten()
    {
        if !a.run.quiet {
            eprintln!("{line}");
        }
    }
    let wall = t.elapsed().as_secs_f64();
    let stats = &summary.stats;
    let fe = summary.final_fourier_error.clone();
    let mut sorted = fe.clone();
    sorted.sort_by(|x, y| x.total_cmp(y));
    let median = sorted[sorted.len() / 2];
    let computed = stats.computed_patterns.max(1);
    let rate = (computed * cfg.starts) as f64 * iterations as f64 / stats.compute_seconds.max(1e-9);
    if !a.run.quiet {
        let resumed = if stats.resumed_blocks > 0 {
            format!(
                " ({} of {} blocks resumed from the interrupted run)",
                stats.resumed_blocks, stats.blocks
            )
        } else {
            String::new()
        };
        eprintln!(
            "done in {:.2} s ({:.0} pattern-iterations/s){resumed}; final Fourier error median {:.3e}, min {:.3e}, max {:.3e}; wrote {}",
            wall,
            rate,
            median,
            sorted[0],
            sorted[sorted.len() - 1],
            a.output.display()
        );
        if let Some(c) = cfg.strategy.cull {
            eprintln!(
                "culled: after {} iterations only the best {} of {} starts of each pattern went on (entry_1/image_1/all_culled_at)",
                c.at, c.keep, cfg.starts
            );
        }
        let m = cfg.strategy.merge.min(cfg.starts);
        if m > 0 {
            eprintln!(
                "merged the best {m} of {} starts of each pattern (aligned average and modes) into entry_1/image_3",
                cfg.starts
            );
        }
    }
    if a.run.json {
        let summary = serde_json::json!({
            "input": a.input.display().to_string(),
            "output": a.output.display().to_string(),
            "patterns": st.n,
            "height": st.h,
            "width": st.w,
            "starts": cfg.starts,
            "iterations": iterations,
            "seconds": stats.compute_seconds,
            "wall_seconds": wall,
            "pattern_iterations_per_second": rate,
            "device": backend.describe(),
            "block": a.blocks.block,
            "blocks": stats.blocks,
            "resumed_blocks": stats.resumed_blocks,
            "best_start": summary.best_start,
            "restarts": summary.restarts_per_pattern(),
            "final_fourier_error": fe,
            "final_fourier_error_median": median,
            "configuration": config,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(())
}

/// `MIN:MAX` as two numbers.
fn parse_range(text: &str) -> Result<(f32, f32)> {
    let (a, b) = text
        .split_once(':')
        .context("expected MIN:MAX, e.g. 0.0001:0.7")?;
    let num = |v: &str| -> Result<f32> {
        v.trim()
            .parse::<f32>()
            .ok()
            .filter(|x| x.is_finite())
            .with_context(|| format!("'{v}' is not a number"))
    };
    Ok((num(a)?, num(b)?))
}

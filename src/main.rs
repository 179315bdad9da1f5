//! The `cdiphase` command line.

use anyhow::{bail, Context, Result};
use cdiphase::backend::{self, Device};
use cdiphase::io;
use cdiphase::phasing::program::{Constraint, Recording, ShrinkwrapConfig};
use cdiphase::phasing::{self, InitSpec, PhaseConfig, SupportSpec};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

mod cli_demo;
mod cli_eval;
mod cli_gpu;
mod cli_nn;

#[derive(Parser)]
#[command(
    name = "cdiphase",
    version,
    about = "Batch coherent diffraction imaging: phase retrieval of many patterns at once",
    long_about = "cdiphase phases thousands of diffraction patterns in one batch (HIO/ER/RAAR with \
shrinkwrap), reads and writes CXI (HDF5) files that h5py reads without plugins, and reports the \
figures of merit of the field. Run `cdiphase demo` for a complete example on generated data."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Simulate diffraction patterns (with ground truth) from PDB/mmCIF structures.
    Simulate(SimulateArgs),
    /// Phase retrieval of every pattern of a CXI/HDF5 or .npy file.
    Phase(PhaseArgs),
    /// The whole pipeline on held-out test structures: simulate, network, supports, phasing
    /// (network-seeded vs baselines), evaluation report.
    Demo(cli_demo::DemoArgs),
    /// Measure throughput (patterns x iterations per second) against the FFT floor.
    Bench(BenchArgs),
    /// Show the CPU, its SIMD features and the available backends.
    Info,
    /// Estimate supports: autocorrelation, triple intersection, or a threshold of a network output.
    Support(cli_eval::SupportArgs),
    /// Compare supports and reconstructions with the ground truth: metrics JSON, figures, index.html.
    Evaluate(cli_eval::EvaluateArgs),
    /// Convert a Keras checkpoint (.h5, .keras, .weights.h5) to a safetensors model file.
    Convert(cli_nn::ConvertArgs),
    /// Run the encoder-decoder on patterns: network output and support, as CXI.
    Predict(cli_nn::PredictArgs),
}

#[derive(Args)]
struct PhaseArgs {
    /// Input patterns: CXI/HDF5 (entry_1/data_1/data, (N,H,W) or (H,W)) or .npy.
    input: PathBuf,
    /// Output CXI file (written atomically).
    #[arg(short, long)]
    output: PathBuf,
    /// Dataset path of the intensities in the input (default entry_1/data_1/data).
    #[arg(long)]
    entry: Option<String>,
    /// Schedule, e.g. "2000*(5*HIO + 5*ER)", "100*(SW + 50*HIO) + 200*ER", "RAAR(0.8)**500".
    #[arg(long, default_value = "2000*(5*HIO + 5*ER)")]
    algorithm: String,
    /// Feedback parameter of HIO / relaxation of RAAR.
    #[arg(long, default_value_t = 0.9)]
    beta: f32,
    /// Starting support: autocorrelation[:THRESHOLD] | circle:RADIUS | FILE.cxi | FILE.npy.
    #[arg(long, default_value = "autocorrelation")]
    support: String,
    /// Starting object: random | FILE.cxi | FILE.npy (real or complex, centred).
    #[arg(long, default_value = "random")]
    init: String,
    /// With a given --init: every start multiplies each pixel by its own 1 + A*(2u-1), u
    /// uniform, seeded (distinct starts around one estimate). 0: all starts are the object.
    #[arg(long, default_value_t = 0.0)]
    init_noise: f32,
    /// Periodic shrinkwrap: sigma=1,threshold=0.1,every=N[,start=I][,stop=I]; ranges a:b ramp.
    #[arg(long)]
    shrinkwrap: Option<String>,
    /// Real-space constraint: none | real | positive.
    #[arg(long, default_value = "none")]
    constraint: String,
    /// Random starts per pattern; the best by final Fourier error is kept.
    #[arg(long, default_value_t = 1)]
    starts: usize,
    /// Seed of the random starting objects.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Record the Fourier error every K iterations (default: at the end of each ER section).
    #[arg(long)]
    error_every: Option<u64>,
    /// Also write every start to entry_1/image_2 (N,K,H,W).
    #[arg(long)]
    keep_all: bool,
    /// Clip negative measured intensities to zero instead of failing.
    #[arg(long)]
    clip_negative: bool,
    /// auto | cpu | cuda | emu.
    #[arg(long, default_value = "auto")]
    device: String,
    #[command(flatten)]
    run: RunArgs,
}

/// Options every long-running verb shares.
#[derive(Args)]
struct RunArgs {
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
struct SimulateArgs {
    /// Structures: PDB or mmCIF files (gzipped or not), folders of them, or .txt/.lst lists.
    #[arg(long, num_args = 1.., required_unless_present = "synthetic", conflicts_with = "synthetic")]
    pdb: Vec<PathBuf>,
    /// Synthetic protein-like particles instead of structures, one different particle per
    /// pattern: all | a list of compact, elongated, multidomain, ring.
    #[arg(long)]
    synthetic: Option<String>,
    /// Residues per synthetic particle, MIN:MAX (rings: MIN/2..MAX/2 per subunit).
    #[arg(long, default_value = "150:1200")]
    residues: String,
    /// Output CXI file (written atomically).
    #[arg(short, long)]
    output: PathBuf,
    /// Number of patterns (cycling over the structures, a random orientation each).
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Pattern size: N for N x N, or HxW.
    #[arg(long, default_value = "128")]
    size: String,
    /// Total photons per pattern (default: raw |F|^2 of the density in electrons).
    #[arg(long)]
    photons: Option<f64>,
    /// Incident fluence, photons per µm², instead of --photons: expected counts
    /// fluence * r_e^2 * (pixel solid angle) * |F|^2 (uses the wavelength, 0.2 nm).
    #[arg(long, conflicts_with = "photons")]
    fluence: Option<f64>,
    /// none | poisson.
    #[arg(long, default_value = "none")]
    noise: String,
    /// Missing data: none | stripe:ROWS | beamstop:RADIUS | gaps:WIDTH[xPANELS], comma-separated.
    #[arg(long, default_value = "none")]
    mask: String,
    /// Resolution of the Gaussian blur of the atoms, Å (Chimera molmap-like).
    #[arg(long, default_value_t = 3.5)]
    resolution: f64,
    /// Atom model: gaussian (Z electrons, molmap) | cromer-mann (form factors, then blurred).
    #[arg(long, default_value = "gaussian")]
    atoms: String,
    /// Particle maximum extent as a fraction of the field (0.5 = oversampling 2).
    #[arg(long, default_value_t = 0.45)]
    fill: f64,
    /// Ideal support: density above this fraction of the pattern's density maximum.
    #[arg(long, default_value_t = cdiphase::simulate::SimConfig::default().support_threshold)]
    support_threshold: f64,
    /// Keep water molecules.
    #[arg(long)]
    keep_waters: bool,
    /// Keep hydrogen atoms.
    #[arg(long)]
    keep_hydrogens: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// What to measure: `phasing` or `network`.
    #[arg(default_value = "phasing")]
    what: String,
    /// network: model file (default: --arch with random weights).
    #[arg(long)]
    model: Option<PathBuf>,
    /// network: architecture preset with seeded random weights (spinn, spinn:SIZE[:WIDTH]).
    #[arg(long)]
    arch: Option<String>,
    /// network: CPU kernels (f32, f32-gemm, winograd, bf16); a mode other than f32 reports
    /// its error against f32.
    #[arg(long, value_enum, default_value_t = cli_nn::NetMode::F32)]
    mode: cli_nn::NetMode,
    /// network: the fastest opt-in mode of this CPU (bf16 on AMX, else winograd).
    #[arg(long, conflicts_with = "mode")]
    fast: bool,
    /// Pattern size HxW (or one number for square).
    #[arg(long, default_value = "128x128")]
    size: String,
    /// Batch (default: 256 for phasing, 64 for network).
    #[arg(long)]
    batch: Option<usize>,
    /// HIO iterations timed per pattern (phasing, default 100); timed batches (network,
    /// default 5).
    #[arg(long)]
    iterations: Option<u64>,
    #[arg(long)]
    threads: Option<usize>,
    /// Best of this many timed runs.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli.cmd) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Run a verb in this process from its arguments (without the program name), exactly as
/// the command line would (the demo chains verbs this way).
fn run_argv(args: &[String]) -> Result<()> {
    let argv = std::iter::once("cdiphase".to_string()).chain(args.iter().cloned());
    let cli = Cli::try_parse_from(argv).map_err(|e| anyhow::anyhow!("{e}"))?;
    dispatch(cli.cmd)
}

fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Simulate(a) => cmd_simulate(a),
        Cmd::Phase(a) => cmd_phase(a),
        Cmd::Demo(a) => cli_demo::cmd_demo(a),
        Cmd::Bench(a) => cmd_bench(a),
        Cmd::Info => cmd_info(),
        Cmd::Support(a) => cli_eval::cmd_support(a),
        Cmd::Evaluate(a) => cli_eval::cmd_evaluate(a),
        Cmd::Convert(a) => cli_nn::cmd_convert(a),
        Cmd::Predict(a) => cli_nn::cmd_predict(a),
    }
}

fn is_file_spec(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    [".cxi", ".h5", ".hdf5", ".nxs", ".npy"]
        .iter()
        .any(|e| l.ends_with(e))
}

fn progress_bar(total: u64, quiet: bool, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {bar:40.cyan/blue} {percent:>3}% {msg} (eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// Run a prepared phasing job with a header line and a progress bar (patterns x
/// iterations) on stderr, unless `quiet`.
fn run_with_progress(
    backend: &dyn backend::Backend,
    problem: &phasing::problem::PhasingProblem,
    program: &phasing::program::Program,
    quiet: bool,
    header: &str,
) -> Result<phasing::Reconstruction> {
    if !quiet {
        eprintln!("{header}");
    }
    let pb = progress_bar(problem.items() as u64 * program.iterations, quiet, "phase");
    let rec = phasing::run_prepared(backend, problem, program, &|k| pb.inc(k))?;
    pb.finish_and_clear();
    Ok(rec)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn cmd_phase(a: PhaseArgs) -> Result<()> {
    if same_file(&a.input, &a.output) {
        bail!(
            "output {} is the input file: refusing to overwrite it",
            a.output.display()
        );
    }
    let device: Device = a.device.parse()?;
    let backend = backend::select(device, a.run.threads)?;
    let patterns = io::read_patterns(&a.input, a.entry.as_deref())
        .with_context(|| format!("reading patterns from {}", a.input.display()))?;
    let st = &patterns.intensities;
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
    let support = match SupportSpec::parse_builtin(&a.support)? {
        Some(s) => s,
        None if is_file_spec(&a.support) => {
            let s = io::read_support(Path::new(&a.support), None)
                .with_context(|| format!("reading --support {}", a.support))?;
            fits("--support", &a.support, s.n, s.h, s.w)?;
            SupportSpec::Given(s)
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
        let o = io::read_object(Path::new(&a.init), None)
            .with_context(|| format!("reading --init {}", a.init))?;
        fits("--init", &a.init, o.n, o.h, o.w)?;
        InitSpec::Given(o)
    } else {
        bail!(
            "--init '{}': expected random or a .cxi/.h5/.npy file",
            a.init
        );
    };
    let shrinkwrap = a
        .shrinkwrap
        .as_deref()
        .map(ShrinkwrapConfig::parse)
        .transpose()
        .context("--shrinkwrap")?;
    let constraint: Constraint = a.constraint.parse()?;
    let cfg = PhaseConfig {
        schedule: a.algorithm.clone(),
        beta: a.beta,
        shrinkwrap,
        constraint,
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
    };
    let (problem, program) = phasing::prepare(&patterns, &cfg)
        .with_context(|| format!("preparing {}", a.input.display()))?;
    let header = format!(
        "phasing {} patterns of {}x{} x {} starts, {} iterations each on {}",
        st.n,
        st.h,
        st.w,
        cfg.starts,
        program.iterations,
        backend.describe()
    );
    let rec = run_with_progress(backend.as_ref(), &problem, &program, a.run.quiet, &header)?;
    let mut config = cfg.to_json();
    config["input"] = serde_json::json!(a.input.display().to_string());
    config["entry"] = serde_json::json!(patterns.entry);
    config["device"] = serde_json::json!(rec.backend);
    if let SupportSpec::Given(_) = cfg.support {
        config["support"] = serde_json::json!(a.support);
    }
    if let InitSpec::Given(_) = cfg.init {
        config["init"] = serde_json::json!(a.init);
    }
    rec.write_cxi(&a.output, &config)
        .with_context(|| format!("writing {}", a.output.display()))?;
    let fe = rec.best_final_errors();
    let mut sorted = fe.clone();
    sorted.sort_by(|x, y| x.total_cmp(y));
    let median = sorted[sorted.len() / 2];
    let rate = (st.n * cfg.starts) as f64 * program.iterations as f64 / rec.seconds;
    if !a.run.quiet {
        eprintln!(
            "done in {:.2} s ({:.0} pattern-iterations/s); final Fourier error median {:.3e}, min {:.3e}, max {:.3e}; wrote {}",
            rec.seconds,
            rate,
            median,
            sorted[0],
            sorted[sorted.len() - 1],
            a.output.display()
        );
    }
    if a.run.json {
        let summary = serde_json::json!({
            "input": a.input.display().to_string(),
            "output": a.output.display().to_string(),
            "patterns": st.n,
            "height": st.h,
            "width": st.w,
            "starts": cfg.starts,
            "iterations": program.iterations,
            "seconds": rec.seconds,
            "pattern_iterations_per_second": rate,
            "device": rec.backend,
            "best_start": rec.best_start,
            "final_fourier_error": fe,
            "final_fourier_error_median": median,
            "configuration": config,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(())
}

fn cmd_simulate(a: SimulateArgs) -> Result<()> {
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

fn parse_size(s: &str) -> Result<(usize, usize)> {
    let parse = |x: &str| -> Result<usize> {
        x.trim()
            .parse::<usize>()
            .ok()
            .filter(|&v| v >= 2)
            .with_context(|| format!("--size '{s}': expected HxW like 128x128"))
    };
    match s.split_once(['x', 'X']) {
        Some((a, b)) => Ok((parse(a)?, parse(b)?)),
        None => {
            let v = parse(s)?;
            Ok((v, v))
        }
    }
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    if a.what == "network" {
        return cli_nn::bench_network(cli_nn::NetBench {
            model: a.model.as_deref(),
            arch: a.arch.as_deref(),
            batch: a.batch.unwrap_or(64),
            threads: a.threads,
            iterations: a.iterations.unwrap_or(5),
            mode: a.mode,
            fast: a.fast,
            json: a.json,
        });
    }
    if a.what != "phasing" {
        bail!("bench '{}': expected 'phasing' or 'network'", a.what);
    }
    let device: Device = a.device.parse()?;
    let (h, w) = parse_size(&a.size)?;
    if matches!(device, Device::Cuda | Device::Emu) {
        return cli_gpu::bench(&a, device, h, w);
    }
    let r = cdiphase::bench::bench_phasing(&cdiphase::bench::PhasingBench {
        h,
        w,
        batch: a.batch.unwrap_or(256).max(1),
        iterations: a.iterations.unwrap_or(100),
        threads: a.threads,
        repeat: a.repeat,
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("device:                      {}", r.device);
        println!("size x batch:                {}x{} x {}", r.h, r.w, r.batch);
        println!(
            "HIO, us/pattern/iteration:   {:.2}",
            r.hio_us_per_pattern_iteration
        );
        println!(
            "FFT pair, us/pattern:        {:.2}",
            r.fft_pair_us_per_pattern
        );
        println!(
            "HIO / FFT pair:              {:.3}",
            r.ratio_hio_to_fft_pair
        );
        println!("set-up, us/pattern/run:      {:.1}", r.setup_us_per_pattern);
        println!(
            "paper mix, us/pattern/iter:  {:.2}",
            r.paper_schedule_us_per_pattern_iteration
        );
        println!(
            "paper 20k-iteration run:     {:.2} patterns/s",
            r.paper_run_patterns_per_second
        );
    }
    Ok(())
}

fn cmd_info() -> Result<()> {
    println!("cdiphase {}", env!("CARGO_PKG_VERSION"));
    let cpu = backend::cpu::CpuBackend::new(None)?;
    println!("cpu:  available: {}", backend::Backend::describe(&cpu));
    cli_gpu::info();
    for d in [Device::Cuda, Device::Emu] {
        match backend::select(d, None) {
            Ok(b) => println!("{}: available: {}", b.name(), b.describe()),
            Err(e) => println!("{}", e),
        }
    }
    Ok(())
}

//! The `cdiphase` command line: parses the arguments and dispatches to the verb's file in
//! [`cli`]. Every verb is a library function first; see `src/cli/` for the bodies.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cli;

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
    Simulate(Box<cli::simulate::SimulateArgs>),
    /// Phase retrieval of every pattern of a CXI/HDF5 or .npy file.
    Phase(Box<cli::phase::PhaseArgs>),
    /// The whole pipeline on held-out test structures: simulate, network, supports, phasing
    /// (network-seeded vs baselines), evaluation report.
    Demo(cli::demo::DemoArgs),
    /// Measure throughput (patterns x iterations per second) against the FFT floor.
    Bench(cli::bench::BenchArgs),
    /// Show the CPU, its SIMD features and the available backends.
    Info,
    /// Estimate supports: autocorrelation, triple intersection, or a threshold of a network output.
    Support(cli::support::SupportArgs),
    /// Compare supports and reconstructions with the ground truth: metrics JSON, figures, index.html.
    Evaluate(cli::evaluate::EvaluateArgs),
    /// Convert a Keras checkpoint (.h5, .keras, .weights.h5) to a safetensors model file.
    Convert(cli::convert::ConvertArgs),
    /// Run the encoder-decoder on patterns: network output and support, as CXI.
    Predict(cli::predict::PredictArgs),
    /// Check every kernel of a device (phasing and network) against float64 references,
    /// then a short phasing run and whole network forwards; non-zero exit on any failure.
    Selftest(cli::selftest::SelftestArgs),
}

/// SIGINT, SIGTERM and SIGHUP: remove every unfinished output (the registered temporary
/// files and folders, see `cdiphase::io::temp`), keep the partial outputs and journals of
/// block-wise runs (`cdiphase::io::journal`: `--resume` continues them), and exit with the conventional status
/// 128 + signal (130, 143, 129). Outputs already renamed into place are complete and kept.
fn install_signal_handlers() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("cdiphase-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let n = cdiphase::io::temp::remove_all_and_hold();
                let name = match sig {
                    SIGINT => "SIGINT",
                    SIGTERM => "SIGTERM",
                    _ => "SIGHUP",
                };
                let kept = cdiphase::io::journal::live_partials();
                let resume = if kept.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; the finished blocks are kept in {} (rerun the same command with --resume to continue)",
                        kept.iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                eprintln!("\ncdiphase: {name}: stopped; {n} unfinished output(s) removed{resume}");
                std::process::exit(128 + sig);
            }
        })?;
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = install_signal_handlers() {
        eprintln!("error: installing the signal handlers: {e:#}");
        std::process::exit(1);
    }
    // MPI (cargo feature `mpi`), only when an MPI launcher started this process; dropped
    // (MPI_Finalize) at the end of a successful run
    let _mpi = match cdiphase::run::dist::init() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    if let Err(e) = dispatch_ranked(cli.cmd) {
        let p = cdiphase::run::dist::place();
        if p.size > 1 {
            // one rank failed: stop the others (the journal lists only the blocks on
            // disk, so --resume continues the job)
            eprintln!("error (MPI rank {} of {}): {e:#}", p.rank, p.size);
            cdiphase::run::dist::abort(1);
        } else {
            eprintln!("error: {e:#}");
        }
        std::process::exit(1);
    }
}

/// [`dispatch`] in an MPI job of several ranks: only the verbs that split their patterns
/// across ranks (`phase`, `predict`, `simulate`, `support`) run there; the others would
/// write one output from every rank.
fn dispatch_ranked(cmd: Cmd) -> Result<()> {
    let size = cdiphase::run::dist::world_size();
    if size > 1
        && !matches!(
            cmd,
            Cmd::Phase(_) | Cmd::Predict(_) | Cmd::Simulate(_) | Cmd::Support(_)
        )
    {
        anyhow::bail!(
            "only `phase`, `predict`, `simulate` and `support` split their work across MPI \
             ranks; run this verb as one process (without mpirun, or with -n 1); this job has \
             {size} ranks"
        );
    }
    dispatch(cmd)
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
        Cmd::Simulate(a) => cli::simulate::run(*a),
        Cmd::Phase(a) => cli::phase::run(*a),
        Cmd::Demo(a) => cli::demo::run(a),
        Cmd::Bench(a) => cli::bench::run(a),
        Cmd::Info => cli::info::run(),
        Cmd::Support(a) => cli::support::run(a),
        Cmd::Evaluate(a) => cli::evaluate::run(a),
        Cmd::Convert(a) => cli::convert::run(a),
        Cmd::Predict(a) => cli::predict::run(a),
        Cmd::Selftest(a) => cli::selftest::run(a),
    }
}

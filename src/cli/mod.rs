//! The verbs of the `cdiphase` command line, one file each: the verb's arguments and its
//! body (`run`), on top of the library. `main.rs` only parses and dispatches; what several
//! verbs share (run options, progress bars, file checks, sizes, the network mode) is here.

pub mod bench;
pub mod convert;
pub mod demo;
pub mod evaluate;
pub mod info;
pub mod phase;
pub mod predict;
pub mod selftest;
pub mod simulate;
pub mod support;

use anyhow::{Context, Result};
use cdiphase::backend::cpu::nn::{Mode, Options};
use cdiphase::nn::spec::Preprocess;
use cdiphase::{backend, phasing};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;

/// Options every long-running verb shares.
#[derive(Args)]
pub struct RunArgs {
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

pub fn is_file_spec(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    [".cxi", ".h5", ".hdf5", ".nxs", ".npy"]
        .iter()
        .any(|e| l.ends_with(e))
}

pub fn progress_bar(total: u64, quiet: bool, what: &str) -> ProgressBar {
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
pub fn run_with_progress(
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

pub fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

pub fn parse_size(s: &str) -> Result<(usize, usize)> {
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

/// Parse `spinn`, `spinn:SIZE` or `spinn:SIZE:WIDTH` ([`cdiphase::nn::presets::parse`]).
pub fn arch_preset(s: &str, pre: Preprocess) -> Result<cdiphase::nn::ModelSpec> {
    Ok(cdiphase::nn::presets::parse(s, pre)?)
}

/// `--mode` of `predict` and `bench network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetMode {
    F32,
    F32Gemm,
    Winograd,
    Bf16,
    Bf16Avx512,
}

/// The engine mode for `--mode` / `--fast`.
pub fn engine_mode(mode: NetMode, fast: bool) -> Mode {
    if fast {
        return if cdiphase::backend::cpu::nn::amx_available() {
            Mode::Bf16
        } else {
            Mode::Winograd
        };
    }
    match mode {
        NetMode::F32 => Mode::F32,
        NetMode::F32Gemm => Mode::Gemm,
        NetMode::Winograd => Mode::Winograd,
        NetMode::Bf16 => Mode::Bf16,
        NetMode::Bf16Avx512 => Mode::Bf16Avx512,
    }
}

pub fn threads_or_default(t: Option<usize>) -> usize {
    t.unwrap_or_else(|| Options::default().threads).max(1)
}

/// `--threads` of the verbs that run in rayon's global pool (support, evaluate).
pub fn set_threads(t: Option<usize>) -> Result<()> {
    if t.is_some() {
        backend::cpu::init_global_pool(t)?;
    }
    Ok(())
}

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

use anyhow::{bail, Context, Result};
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
    pub quiet: bool,
}

/// Options of the verbs that run block by block (`phase`, `predict`, `support`).
#[derive(Args, Clone, Debug)]
pub struct BlockArgs {
    /// Patterns per block: the input is read, computed and written a block at a time
    /// (memory does not grow with the number of patterns; a killed run loses at most the
    /// block in flight). The output is the same for every block size.
    #[arg(long, default_value_t = cdiphase::io::blocks::DEFAULT_BLOCK)]
    pub block: usize,
    /// Continue an interrupted run of this command (killed by a signal, SIGKILL included,
    /// or stopped by an error after some blocks): the blocks it finished are kept (the
    /// hidden .OUT.cdiphase-partial and .OUT.cdiphase-journal beside the output). Refused
    /// when the flags or inputs differ; without an interrupted run, starts afresh.
    #[arg(long)]
    pub resume: bool,
}

impl BlockArgs {
    /// The block-wise run writing `dest`, identified by `identity` and `inputs`.
    pub fn run<'a>(
        &self,
        dest: &'a Path,
        identity: serde_json::Value,
        inputs: Vec<&'a Path>,
    ) -> Result<cdiphase::run::BlockRun<'a>> {
        if self.block == 0 {
            bail!("--block 0: expected at least 1 pattern per block");
        }
        // rank 0 of an MPI job alone opens the output
        if !self.resume && !cdiphase::run::dist::is_worker() {
            if let Ok((partial, journal)) = cdiphase::io::journal::paths(dest) {
                if journal.exists() && partial.exists() {
                    eprintln!(
                        "note: {} holds the finished blocks of an interrupted run of {}; \
                         this run starts afresh and replaces them (--resume continues them)",
                        partial.display(),
                        dest.display()
                    );
                }
            }
        }
        Ok(cdiphase::run::BlockRun {
            dest,
            block: self.block,
            resume: self.resume,
            identity,
            inputs,
        })
    }
}

/// The note a failed block-wise run leaves when blocks are kept for `--resume`.
pub fn resume_hint(dest: &Path) -> String {
    match cdiphase::io::journal::paths(dest) {
        Ok((partial, _)) if partial.exists() => format!(
            "the finished blocks are kept in {}: rerun the same command with --resume to continue",
            partial.display()
        ),
        _ => "nothing was written".into(),
    }
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
    if let Some(line) = rec.merits.as_ref().and_then(|m| m.guard_summary()) {
        if !quiet {
            eprintln!("{line}");
        }
    }
    Ok(rec)
}

/// The identity of an existing file (device, inode), symbolic links followed: two
/// spellings of one file (`./a`, a symbolic or hard link) have the same identity.
fn file_id(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// `p` made absolute with every symbolic link resolved, also when `p` itself does not
/// exist yet (its folder is resolved).
fn resolved(p: &Path) -> Option<std::path::PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Some(c);
    }
    let name = p.file_name()?;
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(parent.canonicalize().ok()?.join(name))
}

/// Whether `a` and `b` name the same file, whatever the spelling.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (file_id(a), file_id(b)) {
        (Some(x), Some(y)) => x == y,
        _ => matches!((resolved(a), resolved(b)), (Some(x), Some(y)) if x == y),
    }
}

/// An input's name in messages: `the input` for the positional input, else the option.
fn label(name: &str) -> String {
    if name == "input" {
        "the input".into()
    } else {
        format!("the input {name}")
    }
}

/// The one rule of every verb on its paths, checked before anything is read or written:
/// no output file may be any input (patterns, masks, supports, inits, models, truths,
/// structures), whatever the spelling (`./`, symbolic or hard links); no output folder may
/// hold an input; an output file may not be an existing folder; two outputs may not be one
/// file. `inputs` and `outputs` are (option, path) pairs; `folders` are (option, folder)
/// outputs whose whole content is replaced or written.
pub fn check_paths(
    inputs: &[(&str, &Path)],
    outputs: &[(&str, &Path)],
    folders: &[(&str, &Path)],
) -> Result<()> {
    for (k, (oname, out)) in outputs.iter().enumerate() {
        if std::fs::metadata(out).is_ok_and(|m| m.is_dir()) {
            bail!(
                "{oname} {}: is an existing folder, expected a file path; nothing was written",
                out.display()
            );
        }
        for (iname, inp) in inputs {
            if same_file(inp, out) {
                bail!(
                    "{oname} {} is the same file as {} {}: refusing to overwrite an input; nothing was written",
                    out.display(),
                    label(iname),
                    inp.display()
                );
            }
        }
        for (oname2, out2) in &outputs[k + 1..] {
            if same_file(out, out2) {
                bail!(
                    "{oname} {} and {oname2} {} are the same file",
                    out.display(),
                    out2.display()
                );
            }
        }
    }
    for (fname, dir) in folders {
        if std::fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
            bail!(
                "{fname} {}: exists and is not a folder; nothing was changed",
                dir.display()
            );
        }
        let Some(d) = resolved(dir) else { continue };
        for (iname, inp) in inputs {
            if resolved(inp).is_some_and(|i| i.starts_with(&d)) {
                bail!(
                    "{fname} {}: {} {} is inside it: refusing to replace a folder that holds an input; nothing was written",
                    dir.display(),
                    label(iname),
                    inp.display()
                );
            }
        }
    }
    Ok(())
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
    F32Direct,
    F32Gemm,
    Winograd,
    Bf16,
    Bf16Avx512,
}

/// The engine mode for `--mode` / `--fast`.
pub fn engine_mode(mode: NetMode, fast: bool) -> Mode {
    if fast {
        return cdiphase::backend::cpu::nn::fast_mode().0;
    }
    match mode {
        NetMode::F32 => Mode::F32,
        NetMode::F32Direct => Mode::F32Direct,
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

//! `cdiphase predict`: the network over a pattern file, output and support as CXI.

use super::{check_paths, engine_mode, progress_bar, resume_hint, BlockArgs, NetMode};
use anyhow::{bail, Context, Result};
use cdiphase::backend::{self, Device, NetOptions};
use cdiphase::io;
use cdiphase::nn::store;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct PredictArgs {
    /// Input patterns: CXI/HDF5 (entry_1/data_1/data, centred) or .npy. Masked pixels
    /// (entry_1/.../mask nonzero) are set to 0 before preprocessing.
    input: PathBuf,
    /// Model file from `cdiphase convert` (default: the bundled model, trained for the
    /// paper's geometry; see `cdiphase info`).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output CXI: entry_1/image_1/data (float32 network output) and
    /// entry_1/image_1/support (uint8, output > threshold x per-pattern max).
    #[arg(short, long)]
    output: PathBuf,
    /// Dataset of the patterns in an HDF5 input.
    #[arg(long)]
    entry: Option<String>,
    #[arg(long, default_value_t = 0.1)]
    threshold: f32,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long)]
    threads: Option<usize>,
    /// CPU kernels: f32 (Winograd F(4x4,3x3) on 3x3 layers with >= 64 channels, direct
    /// elsewhere; ~1e-6 relative rounding), f32-direct (the direct kernels: exact up to
    /// summation order), f32-gemm (the GEMM paths, for comparison), winograd (F(4x4,3x3) on
    /// every 3x3 layer), bf16 (bf16 products, f32 sums: AMX, else AVX512_BF16), bf16-avx512.
    #[arg(long, value_enum, default_value_t = NetMode::F32)]
    mode: NetMode,
    /// The fastest opt-in mode this CPU has: bf16 on AMX, else bf16 on AVX512_BF16 where its
    /// dot products measure faster than the f32 FMAs (AMD Zen 4; with f32 Winograd on the
    /// layers of >= 64 channels), else f32; prints why.
    #[arg(long, conflicts_with = "mode")]
    fast: bool,
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    blocks: BlockArgs,
}

pub fn run(mut a: PredictArgs) -> Result<()> {
    let worker = cdiphase::run::dist::is_worker();
    // in an MPI job: the node's cores shared by its ranks; rank 0 alone reports
    a.threads = a.threads.or(cdiphase::run::dist::default_threads());
    a.quiet |= worker;
    let device: Device = a.device.parse()?;
    if !(0.0..1.0).contains(&a.threshold) {
        bail!(
            "--threshold {}: expected a fraction in [0, 1) (1 gives empty supports)",
            a.threshold
        );
    }
    let mut inputs = vec![("input", a.input.as_path())];
    if let Some(m) = &a.model {
        inputs.push(("--model", m.as_path()));
    }
    check_paths(&inputs, &[("--output", &a.output)], &[])?;
    let (model, model_name) = match &a.model {
        Some(p) => (
            store::load(p).with_context(|| format!("loading model {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            cdiphase::nn::bundled::load()?,
            cdiphase::nn::bundled::label(),
        ),
    };
    let mode = engine_mode(a.mode, a.fast);
    // the same device choice as `phase`: `auto` is the GPU where one is usable
    let backend = backend::select(device, a.threads)?;
    let ps = io::blocks::PatternBlocks::open(&a.input, a.entry.as_deref())
        .with_context(|| format!("reading patterns from {}", a.input.display()))?;
    let st = &ps;
    let on_cpu = backend.name() == "cpu";
    let kernels = if on_cpu {
        mode.name()
    } else {
        "f32 gpu kernels"
    };
    if a.fast && on_cpu && !a.quiet {
        eprintln!("--fast: {}", cdiphase::backend::cpu::nn::fast_mode().1);
    }
    if !a.quiet {
        eprintln!(
            "predicting {} patterns of {}x{} with network '{}' ({kernels}) on {}",
            st.n,
            st.h,
            st.w,
            model.spec.name,
            backend.describe()
        );
    }
    let opts = NetOptions {
        mode,
        poison: false,
    };
    let engine = cdiphase::nn::predict::engine(backend.as_ref(), mode);
    let description = cdiphase::nn::predict::description(&model.spec, a.threshold, engine);
    let mut files = vec![a.input.as_path()];
    if let Some(m) = &a.model {
        files.push(m.as_path());
    }
    let identity = serde_json::json!({
        "verb": "predict",
        "input": a.input.display().to_string(),
        "entry": ps.entry,
        "model": model_name,
        "description": description,
        "threshold": a.threshold,
        "batch": a.batch,
        "device": backend.describe(),
    });
    let block_run = a.blocks.run(&a.output, identity, files)?;
    let pb = progress_bar(st.n as u64, a.quiet, "predict");
    let t = std::time::Instant::now();
    let stats = cdiphase::run::predict::predict_blocks(
        backend.as_ref(),
        &model,
        &ps,
        a.batch,
        a.threshold,
        opts,
        &model_name,
        &description,
        &block_run,
        &|done| pb.set_position(done as u64),
    )
    .with_context(|| {
        format!(
            "model {model_name} on {} ({})",
            a.input.display(),
            resume_hint(&a.output)
        )
    })?;
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    if worker {
        return Ok(());
    }
    if !a.quiet {
        let on = if on_cpu {
            format!("{} threads", backend::cpu::thread_count(a.threads)?)
        } else {
            format!("on {}", backend.name())
        };
        eprintln!(
            "{}: {} patterns in {:.2} s ({:.1} images/s, {on}){}",
            a.output.display(),
            st.n,
            secs,
            stats.computed_patterns as f64 / secs,
            if stats.resumed_blocks > 0 {
                format!(
                    "; {} of {} blocks resumed from the interrupted run",
                    stats.resumed_blocks, stats.blocks
                )
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

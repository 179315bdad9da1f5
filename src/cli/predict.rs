//! `cdiphase predict`: the network over a pattern file, output and support as CXI.

use super::{check_paths, engine_mode, progress_bar, NetMode};
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
    /// CPU kernels: f32 (exact), f32-gemm (the GEMM paths, for comparison), winograd
    /// (F(2x2,3x3)), bf16 (bf16 products, f32 sums: AMX, else AVX512_BF16), bf16-avx512.
    #[arg(long, value_enum, default_value_t = NetMode::F32)]
    mode: NetMode,
    /// The fastest opt-in mode this CPU has: bf16 on AMX, else winograd.
    #[arg(long, conflicts_with = "mode")]
    fast: bool,
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(a: PredictArgs) -> Result<()> {
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
    let ps = io::read_patterns(&a.input, a.entry.as_deref())
        .with_context(|| format!("reading patterns from {}", a.input.display()))?;
    let st = &ps.intensities;
    let on_cpu = backend.name() == "cpu";
    let kernels = if on_cpu {
        mode.name()
    } else {
        "f32 gpu kernels"
    };
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
    let pb = progress_bar(st.n as u64, a.quiet, "predict");
    let t = std::time::Instant::now();
    let p = cdiphase::nn::predict::predict(
        backend.as_ref(),
        &model,
        st,
        ps.mask.as_ref(),
        a.batch,
        a.threshold,
        opts,
        &|done| pb.set_position(done as u64),
    )
    .with_context(|| format!("model {model_name} on {}", a.input.display()))?;
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    let engine = cdiphase::nn::predict::engine(backend.as_ref(), mode);
    let description = cdiphase::nn::predict::description(&model.spec, a.threshold, engine);
    p.write_cxi(&a.output, &model_name, &description)
        .with_context(|| format!("writing {}", a.output.display()))?;
    if !a.quiet {
        let on = if on_cpu {
            format!("{} threads", backend::cpu::thread_count(a.threads)?)
        } else {
            format!("on {}", backend.name())
        };
        eprintln!(
            "{}: {} patterns in {:.2} s ({:.1} images/s, {on})",
            a.output.display(),
            p.n,
            secs,
            p.n as f64 / secs,
        );
    }
    Ok(())
}

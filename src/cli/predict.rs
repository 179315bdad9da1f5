//! `cdiphase predict`: the network over a pattern file, output and support as CXI.

use super::{engine_mode, progress_bar, same_file, threads_or_default, NetMode};
use anyhow::{bail, Context, Result};
use cdiphase::backend::cpu::nn::{Network, Options};
use cdiphase::backend::Device;
use cdiphase::io;
use cdiphase::nn::{store, Model};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct PredictArgs {
    /// Input patterns: CXI/HDF5 (entry_1/data_1/data, centred) or .npy. Masked pixels
    /// (entry_1/.../mask nonzero) are set to 0 before preprocessing.
    input: PathBuf,
    /// Model file from `cdiphase convert`.
    #[arg(long)]
    model: PathBuf,
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

/// `predict` on the GPU kernels (`emu`: the emulator; `cuda`: a real GPU), through
/// `gpu_forward::GpuNetwork`. `auto` stays on the CPU for the network until the CUDA path
/// has been measured on a GPU.
fn predict_gpu(
    device: Device,
    model: &Model,
    output_shape: &[usize],
    ps: &io::PatternSet,
    a: &PredictArgs,
    progress: &dyn Fn(usize),
) -> Result<cdiphase::nn::predict::Prediction> {
    use cdiphase::backend::gpu::launcher::Launcher;
    use cdiphase::backend::gpu::network::GpuNetwork;
    if a.fast || a.mode != NetMode::F32 {
        bail!("--fast / --mode select CPU kernels; drop them with --device {device:?}");
    }
    let emu;
    let cuda;
    let launcher: &dyn Launcher = match device {
        Device::Emu => {
            emu = cdiphase::backend::gpu::emu::EmuLauncher::new(
                cdiphase::backend::gpu::emu::ScheduleOrder::InOrder,
            );
            &emu
        }
        _ => {
            cuda = cdiphase::backend::gpu::cuda::CudaLauncher::new(
                cdiphase::backend::cuda_ordinal()?,
            )?;
            &cuda
        }
    };
    let g = GpuNetwork::new(launcher, model)?;
    Ok(cdiphase::nn::predict::predict_with(
        &model.spec,
        output_shape,
        &ps.intensities,
        ps.mask.as_ref(),
        a.batch,
        a.threshold,
        &mut |x, b| g.run(x, b),
        progress,
    )?)
}

pub fn run(a: PredictArgs) -> Result<()> {
    let device: Device = a.device.parse()?;
    if !(a.threshold.is_finite() && (0.0..=1.0).contains(&a.threshold)) {
        bail!("--threshold {}: expected a fraction in [0, 1]", a.threshold);
    }
    if same_file(&a.input, &a.output) {
        bail!(
            "output {} is the input file: refusing to overwrite it",
            a.output.display()
        );
    }
    let model =
        store::load(&a.model).with_context(|| format!("loading model {}", a.model.display()))?;
    let mode = engine_mode(a.mode, a.fast);
    let net = Network::new(&model, mode)?;
    let ps = io::read_patterns(&a.input, a.entry.as_deref())
        .with_context(|| format!("reading patterns from {}", a.input.display()))?;
    let st = &ps.intensities;
    if let Some(i) = st.data.iter().position(|v| v.is_nan()) {
        let px = st.h * st.w;
        bail!(
            "{}: pattern {} has a NaN at pixel ({}, {}); mask it instead",
            a.input.display(),
            i / px,
            (i % px) / st.w,
            i % st.w
        );
    }
    let opts = Options {
        threads: threads_or_default(a.threads),
        mode,
        poison: false,
    };
    let pb = progress_bar(st.n as u64, a.quiet, "predict");
    let t = std::time::Instant::now();
    let p = match device {
        Device::Emu | Device::Cuda => {
            predict_gpu(device, &model, &net.output_shape, &ps, &a, &|done| {
                pb.set_position(done as u64)
            })
        }
        Device::Auto | Device::Cpu => cdiphase::nn::predict::predict(
            &net,
            st,
            ps.mask.as_ref(),
            a.batch,
            a.threshold,
            opts,
            &|done| pb.set_position(done as u64),
        )
        .map_err(Into::into),
    }
    .with_context(|| format!("model {} on {}", a.model.display(), a.input.display()))?;
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    let mut wr = io::CxiWriter::new();
    let shape = [p.n, p.h, p.w];
    wr.f32("entry_1/image_1/data", &shape, &p.output)?;
    wr.u8("entry_1/image_1/support", &shape, &p.support)?;
    wr.string(
        "entry_1/image_1/process_1/model",
        &a.model.display().to_string(),
    )?;
    wr.string(
        "entry_1/image_1/process_1/description",
        &format!(
            "cdiphase predict: network '{}' ({:?} preprocessing, masked pixels set to 0), \
             support = output > {} x per-pattern max, mode {}",
            net.spec.name,
            net.spec.preprocess,
            a.threshold,
            match device {
                Device::Emu => "gpu kernels under the emulator",
                Device::Cuda => "gpu kernels on CUDA",
                _ => mode.name(),
            }
        ),
    )?;
    wr.finish(&a.output)
        .with_context(|| format!("writing {}", a.output.display()))?;
    if !a.quiet {
        eprintln!(
            "{}: {} patterns in {:.2} s ({:.1} images/s, {} threads)",
            a.output.display(),
            p.n,
            secs,
            p.n as f64 / secs,
            opts.threads
        );
    }
    Ok(())
}

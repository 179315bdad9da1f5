//! CLI verbs of the network: `convert`, `predict`, and the body of `bench network`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cdiphase::backend::Device;
use cdiphase::io;
use cdiphase::nn::cpu::{Mode, Model, Network, Options};
use cdiphase::nn::keras::{self, Arch};
use cdiphase::nn::spec::Preprocess;
use cdiphase::nn::store::{self, WeightDtype};
use clap::Args;

#[derive(Args)]
pub struct ConvertArgs {
    /// Keras checkpoint: legacy .h5 (Keras 2 or 3), Keras 3 .keras, .weights.h5, or a
    /// weights-only save_weights file (then give --arch or --arch-config).
    input: PathBuf,
    /// Output model file (safetensors, written atomically).
    #[arg(short, long)]
    output: PathBuf,
    /// Architecture preset for weights-only files: `spinn` (the paper's network, 128x128)
    /// or `spinn:SIZE[:WIDTH]`.
    #[arg(long, conflicts_with = "arch_config")]
    arch: Option<String>,
    /// Architecture from a Keras model JSON (`model.to_json()` or a .keras config.json).
    #[arg(long)]
    arch_config: Option<PathBuf>,
    /// Weight storage type: f32, f16 or bf16 (always computed in f32).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Input preprocessing stored with the model: max (x / max) or log1p-max.
    #[arg(long, default_value = "max")]
    preprocess: String,
}

/// Parse `spinn`, `spinn:SIZE` or `spinn:SIZE:WIDTH`.
pub fn arch_preset(s: &str, pre: Preprocess) -> Result<cdiphase::nn::ModelSpec> {
    let mut it = s.split(':');
    match it.next() {
        Some("spinn") => {
            let size = match it.next() {
                Some(v) => v.parse().with_context(|| format!("--arch '{s}': size"))?,
                None => 128,
            };
            let width = match it.next() {
                Some(v) => v.parse().with_context(|| format!("--arch '{s}': width"))?,
                None => 1.0,
            };
            Ok(cdiphase::nn::spinn::spinn(size, width, pre)?)
        }
        _ => bail!("--arch '{s}': unknown preset (known: spinn, spinn:SIZE[:WIDTH])"),
    }
}

pub fn cmd_convert(a: ConvertArgs) -> Result<()> {
    let pre: Preprocess = a.preprocess.parse()?;
    let dtype: WeightDtype = a.dtype.parse()?;
    let arch = match (&a.arch, &a.arch_config) {
        (Some(s), _) => Arch::Given(arch_preset(s, pre)?),
        (None, Some(p)) => Arch::Given(
            keras::config_from_file(p, pre)
                .with_context(|| format!("reading the architecture from {}", p.display()))?,
        ),
        (None, None) => Arch::FromFile,
    };
    let model = keras::convert(&a.input, arch, pre)
        .with_context(|| format!("converting {}", a.input.display()))?;
    store::save(&model, dtype, &a.output)
        .with_context(|| format!("writing {}", a.output.display()))?;
    eprintln!(
        "{}: model '{}', {} layers, {} parameters, input {:?}, preprocessing {:?}, {:?} weights",
        a.output.display(),
        model.spec.name,
        model.spec.layers.len(),
        model.spec.params()?,
        model.spec.input,
        model.spec.preprocess,
        dtype
    );
    Ok(())
}

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
        return if cdiphase::nn::cpu::amx_available() {
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
    use cdiphase::backend::gpu_common::Launcher;
    use cdiphase::backend::gpu_forward::GpuNetwork;
    if a.fast || a.mode != NetMode::F32 {
        bail!("--fast / --mode select CPU kernels; drop them with --device {device:?}");
    }
    let emu;
    let cuda;
    let launcher: &dyn Launcher = match device {
        Device::Emu => {
            emu = cdiphase::backend::emu::EmuLauncher::new(
                cdiphase::backend::emu::ScheduleOrder::InOrder,
            );
            &emu
        }
        _ => {
            cuda = cdiphase::backend::cuda::CudaLauncher::new(cdiphase::backend::cuda_ordinal()?)?;
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

fn threads_or_default(t: Option<usize>) -> usize {
    t.unwrap_or_else(|| Options::default().threads).max(1)
}

pub fn cmd_predict(a: PredictArgs) -> Result<()> {
    let device: Device = a.device.parse()?;
    if !(a.threshold.is_finite() && (0.0..=1.0).contains(&a.threshold)) {
        bail!("--threshold {}: expected a fraction in [0, 1]", a.threshold);
    }
    if crate::same_file(&a.input, &a.output) {
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
    let pb = crate::progress_bar(st.n as u64, a.quiet, "predict");
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

/// Options of `bench network` (fields of the shared `bench` verb).
pub struct NetBench<'a> {
    pub model: Option<&'a Path>,
    pub arch: Option<&'a str>,
    pub batch: usize,
    pub threads: Option<usize>,
    pub iterations: u64,
    pub mode: NetMode,
    pub fast: bool,
    pub json: bool,
}

pub fn bench_network(b: NetBench) -> Result<()> {
    let model = match (b.model, b.arch) {
        (Some(p), _) => store::load(p).with_context(|| format!("loading model {}", p.display()))?,
        (None, a) => Model::random(arch_preset(a.unwrap_or("spinn"), Preprocess::Max)?, 1)?,
    };
    let threads = threads_or_default(b.threads);
    let mode = engine_mode(b.mode, b.fast);
    let r =
        cdiphase::nn::bench::bench_network(&model, b.batch, threads, b.iterations as usize, mode)?;
    if b.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "model:            {} ({} parameters, {:.2} GFLOP/image)",
            r.model, r.params, r.gflop_per_image
        );
        println!(
            "batch x threads:  {} x {} ({} mode, {} timed batches)",
            r.batch, r.threads, r.mode, r.iterations
        );
        println!(
            "images/s:         {:.2} (best batch {:.1} ms, median {:.1} ms)",
            r.images_per_s, r.ms_per_batch, r.ms_per_batch_median
        );
        println!("GFLOP/s:          {:.1}", r.gflop_per_s);
        if let (Some(c), Some(sh)) = (r.cpu_s_per_batch, r.cpu_share) {
            println!(
                "CPU s/batch:      {c:.2} (share of {} threads: {:.0}%)",
                r.threads,
                100.0 * sh
            );
        }
        println!("arena per image:  {:.2} MB", r.bytes_per_image / 1e6);
        if let Some(m) = r.peak_rss_bytes {
            println!("peak RSS:         {:.1} MB", m as f64 / 1e6);
        }
        for (name, ms, algo) in &r.layers {
            println!("  {name:22} {ms:9.1} ms/batch  {algo}");
        }
        if let Some(e) = r.fast_max_rel_err {
            println!("{} vs f32:  max rel err {e:.2e}", r.mode);
        }
    }
    Ok(())
}

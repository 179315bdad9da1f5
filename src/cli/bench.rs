//! `cdiphase bench`: the phasing benchmark (CPU, or a GPU backend) and the network
//! benchmark, printed as text or one JSON object.

use super::{arch_preset, engine_mode, parse_size, threads_or_default, NetMode};
use anyhow::{bail, Context, Result};
use cdiphase::backend::Device;
use cdiphase::nn::spec::Preprocess;
use cdiphase::nn::{store, Model};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct BenchArgs {
    /// What to measure: `phasing` or `network`.
    #[arg(default_value = "phasing")]
    pub what: String,
    /// network: model file (default: --arch with random weights).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// network: architecture preset with seeded random weights (spinn, spinn:SIZE[:WIDTH]).
    #[arg(long)]
    pub arch: Option<String>,
    /// network: CPU kernels (f32, f32-direct, f32-gemm, winograd, bf16, bf16-avx512; as
    /// `predict --mode`); a mode other than f32-direct reports its error against it.
    #[arg(long, value_enum, default_value_t = NetMode::F32)]
    pub mode: NetMode,
    /// network: the fastest opt-in mode of this CPU (as `predict --fast`).
    #[arg(long, conflicts_with = "mode")]
    pub fast: bool,
    /// Pattern size HxW (or one number for square).
    #[arg(long, default_value = "128x128")]
    pub size: String,
    /// Batch (default: 256 for phasing, 64 for network).
    #[arg(long)]
    pub batch: Option<usize>,
    /// HIO iterations timed per pattern (phasing, default 100); timed batches (network,
    /// default 5).
    #[arg(long)]
    pub iterations: Option<u64>,
    #[arg(long)]
    pub threads: Option<usize>,
    /// Best of this many timed runs.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.batch == Some(0) || a.iterations == Some(0) || a.repeat == 0 {
        bail!("--batch, --iterations and --repeat must be at least 1");
    }
    if a.what == "network" {
        let device: Device = a.device.parse()?;
        if matches!(device, Device::Cuda | Device::Emu) {
            return bench_gpu_network(&a, device);
        }
        return bench_network(NetBench {
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
        return bench_gpu(&a, device, h, w);
    }
    let r = cdiphase::bench::bench_phasing(&cdiphase::bench::PhasingBench {
        h,
        w,
        batch: a.batch.unwrap_or(256),
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
    if b.fast && !b.json {
        println!(
            "--fast:           {}",
            cdiphase::backend::cpu::nn::fast_mode().1
        );
    }
    model.spec.check_memory(b.batch).context("bench network")?;
    let r = cdiphase::bench::bench_network(&model, b.batch, threads, b.iterations as usize, mode)?;
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
            println!("{} vs f32-direct:  max rel err {e:.2e}", r.mode);
        }
    }
    Ok(())
}

/// `bench phasing` on `--device cuda` or `--device emu`.
fn bench_gpu(a: &BenchArgs, device: Device, h: usize, w: usize) -> Result<()> {
    let r = cdiphase::bench::gpu::bench_gpu_phasing(
        device,
        h,
        w,
        a.batch.unwrap_or(256),
        a.iterations.unwrap_or(100),
        a.repeat,
    )
    .context("GPU phasing bench")?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("device:                      {}", r.device);
        println!("size x batch:                {}x{} x {}", r.h, r.w, r.batch);
        println!(
            "HIO, us/pattern/iteration:   {:.3}",
            r.hio_us_per_pattern_iteration
        );
        println!(
            "FFT pair, us/pattern:        {:.3}",
            r.fft_pair_us_per_pattern
        );
        println!(
            "HIO / FFT pair:              {:.3}",
            r.ratio_hio_to_fft_pair
        );
        if device == Device::Emu {
            println!("(emulator: CPU timings of the emulated kernels, not a GPU figure)");
        }
    }
    Ok(())
}

/// `bench network --device cuda|emu`.
fn bench_gpu_network(a: &BenchArgs, device: Device) -> Result<()> {
    if a.fast || !matches!(a.mode, NetMode::F32 | NetMode::F32Direct) {
        bail!("--fast / --mode select CPU kernels; drop them with --device {device:?}");
    }
    let model = match (a.model.as_deref(), a.arch.as_deref()) {
        (Some(p), _) => store::load(p).with_context(|| format!("loading model {}", p.display()))?,
        (None, arch) => Model::random(arch_preset(arch.unwrap_or("spinn"), Preprocess::Max)?, 1)?,
    };
    let r = cdiphase::bench::gpu::bench_gpu_network(
        device,
        &model,
        a.batch.unwrap_or(64),
        a.iterations.unwrap_or(5) as usize,
    )
    .context("GPU network bench")?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("device:           {}", r.device);
        println!(
            "model:            {} ({} parameters, {:.2} GFLOP/image)",
            r.model, r.params, r.gflop_per_image
        );
        println!(
            "batch:            {} ({} timed batches)",
            r.batch, r.iterations
        );
        println!(
            "images/s:         {:.1} (best batch {:.2} ms, median {:.2} ms; transfers included)",
            r.images_per_s, r.ms_per_batch, r.ms_per_batch_median
        );
        println!("GFLOP/s:          {:.0}", r.gflop_per_s);
        if device == Device::Emu {
            println!("(emulator: CPU time of the emulated kernels, not a GPU figure)");
        }
    }
    Ok(())
}

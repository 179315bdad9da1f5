//! `bench phasing --device cuda|emu`: HIO throughput of a GPU backend against its own batched
//! FFT floor. Timings are wall-clock on whatever device runs them; the emulator's are CPU
//! timings of the emulated kernels (useful only as ratios between kernels, never as a GPU
//! figure).

use super::best_of;
use crate::array::Complex32;
use crate::backend::gpu::cuda::CudaBackend;
use crate::backend::gpu::emu::{EmuBackend, ScheduleOrder};
use crate::backend::gpu::launcher::{as_bytes_mut, DevBuf, Launcher};
use crate::backend::{Backend, Device, NetOptions};
use crate::phasing::program::{Constraint, Recording, ShrinkwrapConfig};
use crate::phasing::{prepare, run_prepared, PhaseConfig, SupportSpec};
use crate::{Error, Result};
use std::time::Instant;

/// The figures of `bench phasing` on a GPU backend.
#[derive(Debug, serde::Serialize)]
pub struct GpuBench {
    pub device: String,
    pub h: usize,
    pub w: usize,
    pub batch: usize,
    pub iterations: u64,
    /// HIO iterations (two batched FFTs + modulus + support update), microseconds per pattern
    /// per iteration, set-up excluded.
    pub hio_us_per_pattern_iteration: f64,
    /// One batched forward + inverse FFT (cuFFT, or rustfft under emu), per pattern.
    pub fft_pair_us_per_pattern: f64,
    /// hio / fft pair: the cost of the kernels over the FFT floor.
    pub ratio_hio_to_fft_pair: f64,
}

/// `bench phasing` on `Device::Cuda` or `Device::Emu`: `batch` synthetic patterns of `h x w`,
/// `iterations` HIO iterations (at least 2), best of `repeat`.
pub fn bench_gpu_phasing(
    device: Device,
    h: usize,
    w: usize,
    batch: usize,
    iterations: u64,
    repeat: usize,
) -> Result<GpuBench> {
    let (emu, gpu);
    let (be, launcher): (&dyn Backend, &dyn Launcher) = match device {
        Device::Emu => {
            emu = EmuBackend::new(ScheduleOrder::InOrder);
            (&emu, emu.launcher())
        }
        Device::Cuda => {
            gpu = CudaBackend::new(crate::backend::cuda_ordinal()?)?;
            (&gpu, gpu.launcher())
        }
        other => {
            return Err(Error::Config(format!(
                "the GPU phasing bench runs on cuda or emu, not {other:?}"
            )))
        }
    };
    let n = batch.max(1);
    let iters = iterations.max(2);
    let (patterns, _) = crate::simulate::synthetic_particles(n, h, w, 16, 7);
    let mk = |schedule: String| PhaseConfig {
        schedule,
        shrinkwrap: Some(ShrinkwrapConfig::default()),
        constraint: Constraint::None,
        support: SupportSpec::Circle {
            radius: (h.min(w) / 4) as f32 + 2.0,
        },
        recording: Recording::EndOfErSections,
        ..PhaseConfig::default()
    };
    let noop = |_: u64| {};
    let (p1, prog1) = prepare(&patterns, &mk("1*HIO".into()))?;
    let (pi, progi) = prepare(&patterns, &mk(format!("{iters}*HIO")))?;
    run_prepared(be, &p1, &prog1, &noop)?;
    let t1 = best_of(repeat, || {
        let t = Instant::now();
        run_prepared(be, &p1, &prog1, &noop)?;
        Ok(t.elapsed().as_secs_f64())
    })?;
    let ti = best_of(repeat, || {
        let t = Instant::now();
        run_prepared(be, &pi, &progi, &noop)?;
        Ok(t.elapsed().as_secs_f64())
    })?;
    let hio = ((ti - t1) / (iters - 1) as f64).max(0.0);
    // FFT floor: the same batched plan, forward + inverse in place.
    let l = h * w;
    let buf = DevBuf::from_slice(launcher, &vec![Complex32::new(1.0, 0.5); n * l])?;
    let plan = launcher.fft_plan(h, w, n)?;
    let mut one = [Complex32::new(0.0, 0.0)];
    let pair = best_of(repeat, || {
        let t = Instant::now();
        for _ in 0..iters {
            launcher.fft(plan, buf.ptr(), buf.ptr(), true)?;
            launcher.fft(plan, buf.ptr(), buf.ptr(), false)?;
        }
        // a copy back waits for the queued work (CUDA launches are asynchronous)
        launcher.download(buf.ptr(), as_bytes_mut(&mut one))?;
        Ok(t.elapsed().as_secs_f64() / iters as f64)
    });
    launcher.fft_destroy(plan);
    let pair = pair?;
    Ok(GpuBench {
        device: be.describe(),
        h,
        w,
        batch: n,
        iterations: iters,
        hio_us_per_pattern_iteration: hio * 1e6 / n as f64,
        fft_pair_us_per_pattern: pair * 1e6 / n as f64,
        ratio_hio_to_fft_pair: if pair > 0.0 { hio / pair } else { f64::NAN },
    })
}

/// The figures of `bench network` on a GPU backend.
#[derive(Debug, serde::Serialize)]
pub struct GpuNetBench {
    pub device: String,
    pub model: String,
    pub params: usize,
    pub gflop_per_image: f64,
    pub batch: usize,
    pub iterations: usize,
    /// Images per second of the best batch: upload of the preprocessed batch, every layer on
    /// the device, download of the output (what `predict` does per batch).
    pub images_per_s: f64,
    pub ms_per_batch: f64,
    pub ms_per_batch_median: f64,
    pub gflop_per_s: f64,
}

/// `bench network` on `Device::Cuda` or `Device::Emu`: `iterations` timed batches of `batch`
/// random inputs after one warm-up batch (which allocates the device buffers and, on CUDA,
/// compiles the kernels).
pub fn bench_gpu_network(
    device: Device,
    model: &crate::nn::Model,
    batch: usize,
    iterations: usize,
) -> Result<GpuNetBench> {
    let be: Box<dyn Backend> = match device {
        Device::Emu => Box::new(EmuBackend::new(ScheduleOrder::InOrder)),
        Device::Cuda => Box::new(CudaBackend::new(crate::backend::cuda_ordinal()?)?),
        other => {
            return Err(Error::Config(format!(
                "the GPU network bench runs on cuda or emu, not {other:?}"
            )))
        }
    };
    let n = batch.max(1);
    let per: usize = model.spec.input.iter().product();
    let flop = model.spec.flop_per_image()?;
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let x: Vec<f32> = (0..n * per)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    // the network as `predict` loads it: weights uploaded once, layer buffers kept
    let mut g = be.load_network(model, n, NetOptions::default())?;
    g.forward(&x, n)?; // warm-up
    let mut times = Vec::with_capacity(iterations.max(1));
    for _ in 0..iterations.max(1) {
        let t = Instant::now();
        let y = g.forward(&x, n)?;
        times.push(t.elapsed().as_secs_f64());
        if let Some(i) = y.iter().position(|v| !v.is_finite()) {
            return Err(Error::Config(format!(
                "network output {i} is {} on {}",
                y[i],
                be.describe()
            )));
        }
    }
    times.sort_by(f64::total_cmp);
    let best = times[0];
    let median = times[times.len() / 2];
    Ok(GpuNetBench {
        device: be.describe(),
        model: model.spec.name.clone(),
        params: model.weights.values().map(|t| t.data.len()).sum(),
        gflop_per_image: flop / 1e9,
        batch: n,
        iterations: times.len(),
        images_per_s: n as f64 / best,
        ms_per_batch: best * 1e3,
        ms_per_batch_median: median * 1e3,
        gflop_per_s: flop * n as f64 / best / 1e9,
    })
}

//! The CLI pieces of the GPU engine: `bench phasing --device cuda|emu` and the GPU lines of
//! `info`. Timings are wall-clock on whatever device runs them; the emulator's are CPU
//! timings of the emulated kernels (useful only as ratios between kernels, never as a GPU
//! figure).

use super::BenchArgs;
use anyhow::{Context, Result};
use cdiphase::array::Complex32;
use cdiphase::backend::emu::{EmuBackend, ScheduleOrder};
use cdiphase::backend::gpu_common::{DevBuf, Launcher};
use cdiphase::backend::{self, cuda, Backend, Device};
use cdiphase::phasing::program::{Constraint, Recording, ShrinkwrapConfig};
use cdiphase::phasing::{prepare, run_prepared, PhaseConfig, SupportSpec};
use std::time::Instant;

/// The figures of `bench phasing` on a GPU backend.
#[derive(Debug, serde::Serialize)]
struct GpuBench {
    device: String,
    h: usize,
    w: usize,
    batch: usize,
    iterations: u64,
    /// HIO iterations (two batched FFTs + modulus + support update), microseconds per pattern
    /// per iteration, set-up excluded.
    hio_us_per_pattern_iteration: f64,
    /// One batched forward + inverse FFT (cuFFT, or rustfft under emu), per pattern.
    fft_pair_us_per_pattern: f64,
    /// hio / fft pair: the cost of the kernels over the FFT floor.
    ratio_hio_to_fft_pair: f64,
}

fn best_of(repeat: usize, mut f: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..repeat.max(1) {
        best = best.min(f()?);
    }
    Ok(best)
}

/// `bench phasing` on `--device cuda` or `--device emu`.
pub fn bench(a: &BenchArgs, device: Device, h: usize, w: usize) -> Result<()> {
    let (emu, gpu);
    let (be, launcher): (&dyn Backend, &dyn Launcher) = match device {
        Device::Emu => {
            emu = EmuBackend::new(ScheduleOrder::InOrder);
            (&emu, emu.launcher())
        }
        _ => {
            gpu = cuda::CudaBackend::new(backend::cuda_ordinal()?)?;
            (&gpu, gpu.launcher())
        }
    };
    let n = a.batch.unwrap_or(256).max(1);
    let iters = a.iterations.unwrap_or(100).max(2);
    let (patterns, _) = cdiphase::simulate::synthetic_particles(n, h, w, 16, 7);
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
    run_prepared(be, &p1, &prog1, &noop).context("warm-up run")?;
    let t1 = best_of(a.repeat, || {
        let t = Instant::now();
        run_prepared(be, &p1, &prog1, &noop)?;
        Ok(t.elapsed().as_secs_f64())
    })?;
    let ti = best_of(a.repeat, || {
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
    let pair = best_of(a.repeat, || {
        let t = Instant::now();
        for _ in 0..iters {
            launcher.fft(plan, buf.ptr, buf.ptr, true)?;
            launcher.fft(plan, buf.ptr, buf.ptr, false)?;
        }
        // a copy back waits for the queued work (CUDA launches are asynchronous)
        launcher.download(
            buf.ptr,
            cdiphase::backend::gpu_common::as_bytes_mut(&mut one),
        )?;
        Ok(t.elapsed().as_secs_f64() / iters as f64)
    });
    launcher.fft_destroy(plan);
    let pair = pair?;
    let r = GpuBench {
        device: be.describe(),
        h,
        w,
        batch: n,
        iterations: iters,
        hio_us_per_pattern_iteration: hio * 1e6 / n as f64,
        fft_pair_us_per_pattern: pair * 1e6 / n as f64,
        ratio_hio_to_fft_pair: if pair > 0.0 { hio / pair } else { f64::NAN },
    };
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

/// The GPU lines of `info`: the CUDA driver and its GPUs, or why there are none.
pub fn info() {
    match cuda::probe() {
        Ok((version, gpus)) => {
            println!("cuda driver: {version}, {} GPU(s)", gpus.len());
            for g in gpus {
                println!(
                    "  gpu {}: {} (sm_{}{}, {:.1} GiB)",
                    g.ordinal,
                    g.name,
                    g.compute_capability.0,
                    g.compute_capability.1,
                    g.memory_bytes as f64 / (1u64 << 30) as f64
                );
            }
        }
        Err(_) => println!("cuda driver: none"),
    }
    for (lib, found) in cdiphase::backend::cuda_libs::report() {
        match found {
            Ok(l) => println!("  {:14} {l}", lib.file()),
            Err(e) => println!("  {:14} missing: {e}", lib.file()),
        }
    }
}

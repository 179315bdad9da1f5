//! The backend seam. Algorithms are written once (as a compiled [`Program`]) and executed by
//! a backend that owns its buffers and works batched over patterns x starts x H x W. No
//! per-pixel callbacks cross the seam: a backend receives whole arrays and whole programs.
//!
//! Backends, one folder per device: [`cpu`] ([`cpu::CpuBackend`]: rustfft + rayon, and the
//! CPU network engine) and [`gpu`] (the CUDA backend and its host emulator, one
//! orchestration over the same kernels).

pub mod cpu;
pub mod gpu;

use gpu::{cuda, emu};

use crate::phasing::problem::{PhasingOutput, PhasingProblem};
use crate::phasing::program::Program;
use crate::{Error, Result};

/// Progress callback: called with the number of (item x iteration) units just completed.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// A compute backend.
pub trait Backend: Send + Sync {
    /// Short name (`cpu`, `cuda`, `emu`).
    fn name(&self) -> &'static str;
    /// Human-readable description of the device (CPU features, thread count, GPU name).
    fn describe(&self) -> String;
    /// Run a compiled phasing program on every (pattern, start) item of `problem`.
    fn run_phasing(
        &self,
        problem: &PhasingProblem,
        program: &Program,
        progress: Progress<'_>,
    ) -> Result<PhasingOutput>;
}

/// Device selection as spelled on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Auto,
    Cpu,
    Cuda,
    Emu,
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda),
            "emu" => Ok(Device::Emu),
            _ => Err(Error::Config(format!(
                "unknown device '{s}': expected auto, cpu, cuda or emu"
            ))),
        }
    }
}

/// Pick a backend. `auto` falls back to the CPU where no other backend is available.
pub fn select(device: Device, threads: Option<usize>) -> Result<Box<dyn Backend>> {
    match device {
        Device::Cpu => Ok(Box::new(cpu::CpuBackend::new(threads)?)),
        Device::Auto => match cuda::CudaBackend::new(cuda_ordinal()?) {
            Ok(b) => Ok(Box::new(b)),
            Err(e) => Ok(Box::new(AutoCpu {
                inner: cpu::CpuBackend::new(threads)?,
                note: e.to_string(),
            })),
        },
        Device::Cuda => Ok(Box::new(cuda::CudaBackend::new(cuda_ordinal()?)?)),
        Device::Emu => Ok(Box::new(emu::EmuBackend::new(emu_order()?))),
    }
}

/// The emulator's schedule order: `CDIPHASE_EMU_SCHEDULE` (in-order, reverse, random,
/// random:SEED), in-order by default.
pub fn emu_order() -> Result<emu::ScheduleOrder> {
    match std::env::var("CDIPHASE_EMU_SCHEDULE") {
        Ok(v) => v.parse(),
        Err(_) => Ok(emu::ScheduleOrder::InOrder),
    }
}

/// The GPU `--device cuda` uses: `CDIPHASE_CUDA_DEVICE` (an ordinal), 0 by default.
pub fn cuda_ordinal() -> Result<usize> {
    match std::env::var("CDIPHASE_CUDA_DEVICE") {
        Ok(v) => v.trim().parse().map_err(|_| {
            Error::Config(format!(
                "CDIPHASE_CUDA_DEVICE='{v}': expected a GPU ordinal (0, 1, ...)"
            ))
        }),
        Err(_) => Ok(0),
    }
}

/// `--device auto` on a machine without a usable GPU: the CPU backend, with the reason in
/// its description (shown in every run header), so the fallback is never silent.
struct AutoCpu {
    inner: cpu::CpuBackend,
    note: String,
}

impl Backend for AutoCpu {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn describe(&self) -> String {
        format!(
            "{} (auto: no GPU used: {})",
            self.inner.describe(),
            self.note
        )
    }
    fn run_phasing(
        &self,
        problem: &PhasingProblem,
        program: &Program,
        progress: Progress<'_>,
    ) -> Result<PhasingOutput> {
        self.inner.run_phasing(problem, program, progress)
    }
}

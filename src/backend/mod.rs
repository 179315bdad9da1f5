//! The backend seam. A backend is one device with both op families of the crate, written
//! as supertraits (one per family, as burn does): [`PhasingOps`] runs a compiled phasing
//! [`Program`] on a whole batch, [`NetworkOps`] loads a [`Model`] once and runs its forward
//! on batches ([`Forward`]), keeping the device's buffers between batches. Algorithms and
//! models are written once and cross the seam whole: no per-pixel callbacks, the backend
//! owns its buffers and works batched over patterns x starts x H x W.
//!
//! Devices, one folder each: [`cpu`] ([`cpu::CpuBackend`]: one rayon pool and the
//! instruction sets detected once, the phasing and the network engines) and [`gpu`] (the
//! CUDA backend and its host emulator, one orchestration over the same kernels). [`select`]
//! picks one for every verb, and `auto` says in [`Backend::describe`] what it chose and why.

pub mod cpu;
pub mod gpu;

use gpu::{cuda, emu};

use crate::nn::model::Model;
use crate::phasing::problem::{PhasingOutput, PhasingProblem};
use crate::phasing::program::Program;
use crate::{Error, Result};

/// Progress callback: called with the number of (item x iteration) units just completed.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// Phasing: a compiled program over every (pattern, start) item of a prepared problem.
pub trait PhasingOps {
    /// Run a compiled phasing program on every (pattern, start) item of `problem`.
    fn run_phasing(
        &self,
        problem: &PhasingProblem,
        program: &Program,
        progress: Progress<'_>,
    ) -> Result<PhasingOutput>;

    /// `--merge`: merge the best `count` starts of every pattern (`all_objects` /
    /// `all_supports`: every start's final iterate and support, N*K*H*W, centred as the
    /// output; `merits`: the N*K final merits that rank them). The host's float64
    /// [`crate::phasing::population::merge_starts`] by default; the GPU backends align,
    /// average and decompose on the device.
    fn merge_starts(
        &self,
        problem: &PhasingProblem,
        all_objects: &[crate::array::Complex32],
        all_supports: &[u8],
        merits: &[crate::phasing::problem::FinalMerit],
        count: usize,
    ) -> Result<crate::phasing::population::MergedSet> {
        Ok(crate::phasing::population::merge_starts(
            problem,
            all_objects,
            all_supports,
            merits,
            count,
        ))
    }

    /// A segmented run (`--population`, `--restart`, `--cull`, the missing-centre switch)
    /// with the state kept on the device across the checkpoints. `Ok(None)` where the
    /// backend has no such path (the CPU engine: its state is already on the host) or the
    /// run does not fit it; the caller then runs the host path,
    /// [`crate::phasing::population::run_segmented`]. The GPU backends override it with
    /// [`gpu::segmented::run_segmented`].
    fn run_segmented_resident(
        &self,
        _problem: &PhasingProblem,
        _program: &Program,
        _strategy: &crate::phasing::population::Strategy,
        _seed: u64,
        _progress: Progress<'_>,
    ) -> Result<Option<(PhasingOutput, crate::phasing::population::RunLog)>> {
        Ok(None)
    }
}

/// How a network's convolutions are computed. The CPU engine runs every mode; the GPU
/// kernels are f32 ([`Mode::F32`]) only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// f32 arithmetic, the fastest measured kernels: Winograd F(4x4, 3x3) for the 3x3
    /// stride-1 layers with >= 64 input and output channels where the CPU has AVX-512F
    /// (not those reading a fused upsampling), the direct kernels for the other stride-1
    /// layers, the GEMM paths without AVX-512F. Winograd's rounding error is ~10x the direct
    /// kernels' (about 1e-6 of a layer's output scale); [`Mode::F32Direct`] avoids it.
    #[default]
    F32,
    /// f32, exact up to summation order: the direct AVX-512 kernels where the CPU has
    /// AVX-512F (stride-1 layers), the GEMM paths otherwise (the reference path).
    F32Direct,
    /// f32 through the GEMM paths only (shifted GEMM or im2col; for comparison).
    Gemm,
    /// Winograd F(4x4, 3x3) for every 3x3 stride-1 convolution with >= 16 channels (4x
    /// fewer multiplications; a small accuracy cost, reported by the bench), GEMM for the
    /// rest.
    Winograd,
    /// bf16 inputs and weights with f32 accumulation for the stride-1 layers with >= 16
    /// input and output channels, f32 elsewhere: on the AMX tile unit where the CPU has it
    /// (`tdpbf16ps`), else with AVX512_BF16 (`vdpbf16ps`), where the 3x3 layers with >= 64
    /// input and output channels run f32 Winograd F(4x4, 3x3) instead (faster there than
    /// the bf16 dot products, and more accurate).
    Bf16,
    /// As `Bf16`, always with AVX512_BF16 (`vdpbf16ps`), never AMX (for comparison).
    Bf16Avx512,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::F32 => "f32",
            Mode::F32Direct => "f32-direct",
            Mode::Gemm => "f32-gemm",
            Mode::Winograd => "winograd-f4x4-3x3",
            Mode::Bf16 => "bf16",
            Mode::Bf16Avx512 => "bf16-avx512",
        }
    }
}

/// How a network runs on a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetOptions {
    /// The kernels ([`Mode::F32`] on the GPU backends, which refuse the others).
    pub mode: Mode,
    /// Fill the device's work buffers with NaN before each layer writes them (tests: a
    /// kernel that skips an element shows up as NaN).
    pub poison: bool,
}

/// A model loaded on a device: its weights in the device's layouts and the buffers of its
/// layers, kept from one batch to the next.
pub trait Forward: Send {
    /// The output of one image (without the batch axis), channels last.
    fn output_shape(&self) -> &[usize];
    /// Run `n` preprocessed images (`n` x H x W x C, channels last) and return the output
    /// layer's values (`n` x its shape).
    fn forward(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>>;
}

/// The network: a [`Model`] loaded once, then forwards on batches.
pub trait NetworkOps {
    /// Load `model` for batches of up to `max_batch` images (a GPU grows its buffers when
    /// a larger batch comes).
    fn load_network<'a>(
        &'a self,
        model: &Model,
        max_batch: usize,
        opts: NetOptions,
    ) -> Result<Box<dyn Forward + 'a>>;
}

/// A compute backend: one device with both op families.
pub trait Backend: PhasingOps + NetworkOps + Send + Sync {
    /// Short name (`cpu`, `cuda`, `emu`).
    fn name(&self) -> &'static str;
    /// Human-readable description of the device (CPU features, thread count, GPU name);
    /// under `--device auto` it ends with what was chosen and why.
    fn describe(&self) -> String;
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

/// Pick the backend of a run, the same for every verb. `auto` takes the GPU where one is
/// usable and the CPU otherwise, and its description says which and why.
pub fn select(device: Device, threads: Option<usize>) -> Result<Box<dyn Backend>> {
    match device {
        Device::Cpu => Ok(Box::new(cpu::CpuBackend::new(threads)?)),
        Device::Auto => match cuda::CudaBackend::new(cuda_ordinal()?) {
            Ok(b) => Ok(Box::new(Auto {
                inner: b,
                why: "a usable CUDA GPU".into(),
            })),
            Err(e) => Ok(Box::new(Auto {
                inner: cpu::CpuBackend::new(threads)?,
                why: format!("no GPU used: {e}"),
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

/// The GPU `--device cuda` uses: `CDIPHASE_CUDA_DEVICE` (an ordinal), 0 by default (in an
/// MPI job: the rank's own GPU, see [`crate::run::dist::default_cuda_ordinal`]).
pub fn cuda_ordinal() -> Result<usize> {
    match std::env::var("CDIPHASE_CUDA_DEVICE") {
        Ok(v) => v.trim().parse().map_err(|_| {
            Error::Config(format!(
                "CDIPHASE_CUDA_DEVICE='{v}': expected a GPU ordinal (0, 1, ...)"
            ))
        }),
        Err(_) => Ok(crate::run::dist::default_cuda_ordinal()),
    }
}

/// The backend `--device auto` chose, with why in its description (shown in every run
/// header of every verb), so the choice is never silent.
struct Auto<B> {
    inner: B,
    why: String,
}

impl<B: Backend> PhasingOps for Auto<B> {
    fn run_phasing(
        &self,
        problem: &PhasingProblem,
        program: &Program,
        progress: Progress<'_>,
    ) -> Result<PhasingOutput> {
        self.inner.run_phasing(problem, program, progress)
    }
    fn merge_starts(
        &self,
        problem: &PhasingProblem,
        all_objects: &[crate::array::Complex32],
        all_supports: &[u8],
        merits: &[crate::phasing::problem::FinalMerit],
        count: usize,
    ) -> Result<crate::phasing::population::MergedSet> {
        self.inner
            .merge_starts(problem, all_objects, all_supports, merits, count)
    }
    fn run_segmented_resident(
        &self,
        problem: &PhasingProblem,
        program: &Program,
        strategy: &crate::phasing::population::Strategy,
        seed: u64,
        progress: Progress<'_>,
    ) -> Result<Option<(PhasingOutput, crate::phasing::population::RunLog)>> {
        self.inner
            .run_segmented_resident(problem, program, strategy, seed, progress)
    }
}

impl<B: Backend> NetworkOps for Auto<B> {
    fn load_network<'a>(
        &'a self,
        model: &Model,
        max_batch: usize,
        opts: NetOptions,
    ) -> Result<Box<dyn Forward + 'a>> {
        self.inner.load_network(model, max_batch, opts)
    }
}

impl<B: Backend> Backend for Auto<B> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn describe(&self) -> String {
        format!("{} (auto: {})", self.inner.describe(), self.why)
    }
}

//! `--device cuda`: the kernels of `kernels/*.cu` on an NVIDIA GPU through cudarc (driver,
//! NVRTC and cuFFT, all loaded at run time: the crate builds and runs with no CUDA present).
//!
//! - The driver library is looked for ([`super::cuda_libs`]: CUDA 12 and 13 names, override
//!   variables, well-known folders) before any call that would touch it; without it, `--device cuda` is a typed [`Error::DeviceUnavailable`] and `--device
//!   auto` uses the CPU.
//! - NVRTC compiles each kernel family at first use for the device's compute capability; the
//!   PTX is cached on disk per architecture and source hash
//!   (`$XDG_CACHE_HOME/cdiphase/ptx` or `~/.cache/cdiphase/ptx`).
//! - cuFFT batched C2C plans (`cufftPlanMany`, one per chunk) are reused across iterations.
//! - Launches go through the same [`Launcher`] as the emulator, with the same `void**`
//!   parameter arrays; all work is ordered on the legacy default stream and errors surface
//!   at the next synchronising call (a copy back, or the end of a chunk).
//!
//! This backend has not been run here: no machine of the project has a GPU. It compiles,
//! and the kernels and orchestration it runs are the ones the emulator tests.

use super::cuda_libs::CudaLib;
use super::launcher::{DevPtr, Dims, KArg, Launcher, ParamPack};
use crate::backend::{Backend, Forward, NetOptions, NetworkOps, PhasingOps, Progress};
use crate::nn::model::Model;
use crate::phasing::problem::{PhasingOutput, PhasingProblem};
use crate::phasing::program::Program;
use crate::{Error, Result};
use cudarc::driver::{result as drv, sys as dsys, CudaContext, CudaFunction, CudaModule};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The kernel families, their embedded sources and their kernels.
const FAMILIES: [(&str, &str); 2] = [
    ("phasing", include_str!("../../../kernels/phasing.cu")),
    ("nn", include_str!("../../../kernels/nn.cu")),
];
const COMMON: &str = include_str!("../../../kernels/common.cuh");

/// NVRTC options (besides the architecture); tools/gpu/compile_check.py uses the same.
const NVRTC_OPTIONS: [&str; 2] = ["--std=c++17", "-lineinfo"];

fn unavailable(reason: impl Into<String>) -> Error {
    Error::DeviceUnavailable {
        device: "cuda".into(),
        reason: reason.into(),
    }
}

fn failed(msg: impl Into<String>) -> Error {
    Error::Device {
        device: "cuda".into(),
        msg: msg.into(),
    }
}

/// One GPU as the driver reports it.
#[derive(Clone, Debug)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub memory_bytes: usize,
}

/// The CUDA driver version and GPUs, or why there are none. Never panics: the driver library
/// is looked for before anything is called in it.
pub fn probe() -> std::result::Result<(String, Vec<GpuInfo>), String> {
    // The driver library is looked for (and preloaded if found off the loader path) before
    // anything is called in it: cudarc would panic without it.
    super::cuda_libs::locate(CudaLib::Driver)?;
    drv::init().map_err(|e| format!("cuInit failed: {e:?}"))?;
    let mut v = 0i32;
    // SAFETY: the driver is loaded and initialised; v is a valid out pointer.
    unsafe { dsys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(|e| format!("cuDriverGetVersion failed: {e:?}"))?;
    let version = format!("{}.{}", v / 1000, (v % 1000) / 10);
    let n = drv::device::get_count().map_err(|e| format!("no CUDA device: {e:?}"))?;
    let mut gpus = Vec::new();
    for i in 0..n {
        let dev = drv::device::get(i).map_err(|e| format!("device {i}: {e:?}"))?;
        let name = drv::device::get_name(dev).unwrap_or_else(|_| "?".into());
        // SAFETY: `dev` came from device::get.
        let (major, minor, mem) = unsafe {
            (
                drv::device::get_attribute(
                    dev,
                    dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                )
                .unwrap_or(0),
                drv::device::get_attribute(
                    dev,
                    dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                )
                .unwrap_or(0),
                drv::device::total_mem(dev).unwrap_or(0),
            )
        };
        gpus.push(GpuInfo {
            ordinal: i as usize,
            name,
            compute_capability: (major, minor),
            memory_bytes: mem,
        });
    }
    Ok((version, gpus))
}

/// The source of a family with `#include "common.cuh"` expanded (NVRTC gets one string, so
/// the binary needs no kernel files next to it).
pub fn expanded_source(src: &str) -> String {
    src.replace("#include \"common.cuh\"", COMMON)
}

/// FNV-1a 64 of the text (cache key; collisions only cost a stale-cache compile error).
fn fnv64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("cdiphase").join("ptx"))
}

/// PTX of one family for compute capability `cc`, from the cache or NVRTC.
fn family_ptx(family: &str, src: &str, cc: (i32, i32)) -> Result<String> {
    let arch = format!("compute_{}{}", cc.0, cc.1);
    let full = expanded_source(src);
    let key = fnv64(&[&full, &arch, &NVRTC_OPTIONS.join(" ")]);
    let path = cache_dir().map(|d| d.join(format!("{family}-{arch}-{key:016x}.ptx")));
    if let Some(p) = &path {
        if let Ok(text) = std::fs::read_to_string(p) {
            return Ok(text);
        }
    }
    super::cuda_libs::locate(CudaLib::Nvrtc).map_err(unavailable)?;
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(Box::leak(arch.clone().into_boxed_str())),
        options: NVRTC_OPTIONS.iter().map(|s| s.to_string()).collect(),
        name: Some(format!("{family}.cu")),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(&full, opts).map_err(|e| {
        failed(format!(
            "NVRTC could not compile {family}.cu for {arch}: {e:?}"
        ))
    })?;
    let text = ptx.to_src();
    if let Some(p) = &path {
        // Best effort: a read-only cache only costs a compile next time.
        if let Some(dir) = p.parent() {
            if std::fs::create_dir_all(dir).is_ok() {
                let tmp = p.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::write(&tmp, &text).is_ok() && std::fs::rename(&tmp, p).is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
            }
        }
    }
    Ok(text)
}

/// Whether the NVRTC library can be loaded (no GPU needed).
pub fn nvrtc_present() -> bool {
    super::cuda_libs::locate(CudaLib::Nvrtc).is_ok()
}

/// PTX of kernel family `family` (`phasing` or `nn`) for compute capability `cc`, through
/// the same NVRTC path (and cache) as the backend. Needs only libnvrtc, no GPU: CI runs it
/// with the `nvidia-cuda-nvrtc-cu12` wheel's library (CUDA 13's works too).
pub fn compile_family_ptx(family: &str, cc: (i32, i32)) -> Result<String> {
    let src = FAMILIES
        .iter()
        .find(|(n, _)| *n == family)
        .map(|(_, s)| *s)
        .ok_or_else(|| Error::Config(format!("no kernel family '{family}'")))?;
    family_ptx(family, src, cc)
}

/// Device memory, launches and cuFFT on one GPU.
pub struct CudaLauncher {
    ctx: Arc<CudaContext>,
    info: GpuInfo,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    plans: Mutex<HashMap<u64, (cudarc::cufft::sys::cufftHandle, usize)>>,
}

impl CudaLauncher {
    /// Open GPU `ordinal`. Every library is looked for first, so a machine without CUDA
    /// gets a typed error, never a panic.
    pub fn new(ordinal: usize) -> Result<CudaLauncher> {
        let (_, gpus) = probe().map_err(unavailable)?;
        let info = gpus
            .into_iter()
            .find(|g| g.ordinal == ordinal)
            .ok_or_else(|| unavailable(format!("no GPU with ordinal {ordinal}")))?;
        super::cuda_libs::locate(CudaLib::Cufft).map_err(unavailable)?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| unavailable(format!("cannot create a context on GPU {ordinal}: {e:?}")))?;
        Ok(CudaLauncher {
            ctx,
            info,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            plans: Mutex::new(HashMap::new()),
        })
    }

    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| failed(format!("cannot bind the context: {e:?}")))
    }

    fn function(&self, kernel: &str) -> Result<CudaFunction> {
        if let Some(f) = self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(kernel)
        {
            return Ok(f.clone());
        }
        let family = if kernel.starts_with("cd_nn_") {
            "nn"
        } else {
            "phasing"
        };
        let module = {
            let mut mods = self.modules.lock().unwrap_or_else(|e| e.into_inner());
            match mods.get(family) {
                Some(m) => m.clone(),
                None => {
                    let src = FAMILIES
                        .iter()
                        .find(|(n, _)| *n == family)
                        .map(|(_, s)| *s)
                        .unwrap_or("");
                    let ptx = family_ptx(family, src, self.info.compute_capability)?;
                    let m = self
                        .ctx
                        .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                        .map_err(|e| failed(format!("cannot load the {family} module: {e:?}")))?;
                    let name: &'static str = if family == "nn" { "nn" } else { "phasing" };
                    mods.insert(name, m.clone());
                    m
                }
            }
        };
        let f = module
            .load_function(kernel)
            .map_err(|e| failed(format!("no kernel {kernel} in {family}.cu: {e:?}")))?;
        self.functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kernel.to_string(), f.clone());
        Ok(f)
    }

    /// Wait for all work and report the first asynchronous error.
    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        drv::ctx::synchronize().map_err(|e| failed(format!("kernel failed: {e:?}")))
    }
}

// SAFETY: `alloc` returns a `cuMemAlloc` allocation of the requested size, freed only by
// `free`; `launch` runs the named kernel of the NVRTC-compiled `kernels/*.cu` with exactly
// the given arguments and waits for nothing else (errors surface at the next synchronising
// copy, as documented in NOTES.md).
unsafe impl Launcher for CudaLauncher {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        self.bind()?;
        // SAFETY: the context is current; the allocation is poisoned before use.
        unsafe {
            let p = drv::malloc_sync(bytes.max(1))
                .map_err(|e| failed(format!("cannot allocate {bytes} bytes: {e:?}")))?;
            drv::memset_d8_sync(p, 0xFF, bytes.max(1))
                .map_err(|e| failed(format!("memset: {e:?}")))?;
            Ok(DevPtr(p))
        }
    }

    fn free(&self, p: DevPtr) {
        if self.bind().is_ok() {
            // Kernels queued on the stream may still use the buffer: wait for them first
            // (frees are rare: once per buffer per chunk).
            let _ = drv::ctx::synchronize();
            // SAFETY: `p` came from alloc and nothing queued uses it any more.
            let _ = unsafe { drv::free_sync(p.0) };
        }
    }

    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: dst is a live allocation of at least src.len() bytes (DevBuf checks).
        unsafe { drv::memcpy_htod_sync(dst.0, src) }
            .map_err(|e| failed(format!("upload of {} bytes: {e:?}", src.len())))
    }

    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: src is a live allocation of at least dst.len() bytes (DevBuf checks).
        unsafe { drv::memcpy_dtoh_sync(dst, src.0) }.map_err(|e| {
            failed(format!(
                "download of {} bytes (or an earlier kernel): {e:?}",
                dst.len()
            ))
        })
    }

    unsafe fn launch(&self, kernel: &str, dims: Dims, args: &[KArg]) -> Result<()> {
        self.bind()?;
        let f = self.function(kernel)?;
        let mut pack = ParamPack::new(args);
        let n = args.len();
        // SAFETY: `pack` holds one 8-byte slot per argument in the kernel's order (the typed
        // wrappers in phasing.rs / nn_kernels.rs mirror the kernel signatures); cuLaunchKernel
        // copies the values before returning; the pointer arguments address allocations as
        // large as the kernel touches (this function's contract).
        unsafe {
            let params = std::slice::from_raw_parts_mut(pack.params(), n);
            drv::launch_kernel(
                f.cu_function(),
                (dims.grid[0], dims.grid[1], dims.grid[2]),
                (dims.block[0], dims.block[1], dims.block[2]),
                dims.shmem,
                std::ptr::null_mut(),
                params,
            )
        }
        .map_err(|e| failed(format!("launch of {kernel} {dims:?}: {e:?}")))
    }

    fn fft_plan(&self, h: usize, w: usize, batch: usize) -> Result<u64> {
        self.bind()?;
        let mut n = [h as i32, w as i32];
        let dist = (h * w) as i32;
        // SAFETY: n is a valid rank-2 size array; null embeds mean contiguous layout.
        let plan = unsafe {
            cudarc::cufft::result::plan_many(
                2,
                n.as_mut_ptr(),
                std::ptr::null_mut(),
                1,
                dist,
                std::ptr::null_mut(),
                1,
                dist,
                cudarc::cufft::sys::cufftType::CUFFT_C2C,
                batch as i32,
            )
        }
        .map_err(|e| failed(format!("cuFFT plan {batch} x {h}x{w}: {e:?}")))?;
        let id = plan as u64 + 1;
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (plan, batch * h * w));
        Ok(id)
    }

    fn fft(&self, plan: u64, input: DevPtr, output: DevPtr, forward: bool) -> Result<()> {
        self.bind()?;
        let (p, _) = *self
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&plan)
            .ok_or_else(|| failed(format!("no FFT plan {plan}")))?;
        // SAFETY: both buffers hold the plan's batch of complex64 images (run_chunk sizes them).
        unsafe {
            cudarc::cufft::result::exec_c2c(
                p,
                input.0 as *mut cudarc::cufft::sys::cufftComplex,
                output.0 as *mut cudarc::cufft::sys::cufftComplex,
                if forward { -1 } else { 1 },
            )
        }
        .map_err(|e| failed(format!("cuFFT exec: {e:?}")))
    }

    fn fft_destroy(&self, plan: u64) {
        if let Some((p, _)) = self
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&plan)
        {
            // SAFETY: the plan came from plan_many and is destroyed once.
            let _ = unsafe { cudarc::cufft::result::destroy(p) };
        }
    }

    fn memory_budget(&self) -> usize {
        if self.bind().is_err() {
            return 0;
        }
        match drv::mem_get_info() {
            Ok((free, _)) => free / 10 * 8,
            Err(_) => self.info.memory_bytes / 2,
        }
    }
}

/// The CUDA backend.
pub struct CudaBackend {
    launcher: CudaLauncher,
}

impl CudaBackend {
    /// Open GPU `ordinal` (`CDIPHASE_CUDA_DEVICE`, default 0 when called through `select`).
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        Ok(CudaBackend {
            launcher: CudaLauncher::new(ordinal)?,
        })
    }

    pub fn launcher(&self) -> &CudaLauncher {
        &self.launcher
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn describe(&self) -> String {
        let i = &self.launcher.info;
        format!(
            "CUDA GPU {}: {} (sm_{}{}, {:.1} GiB), NVRTC kernels, cuFFT",
            i.ordinal,
            i.name,
            i.compute_capability.0,
            i.compute_capability.1,
            i.memory_bytes as f64 / (1u64 << 30) as f64
        )
    }
}

impl PhasingOps for CudaBackend {
    fn run_phasing(
        &self,
        problem: &PhasingProblem,
        program: &Program,
        progress: Progress<'_>,
    ) -> Result<PhasingOutput> {
        let out = super::phasing::run_phasing(&self.launcher, problem, program, progress)?;
        self.launcher.synchronize()?;
        Ok(out)
    }
    fn merge_starts(
        &self,
        problem: &PhasingProblem,
        all_objects: &[crate::array::Complex32],
        all_supports: &[u8],
        merits: &[crate::phasing::problem::FinalMerit],
        count: usize,
    ) -> Result<crate::phasing::population::MergedSet> {
        super::population::merge_starts(
            &self.launcher,
            problem,
            all_objects,
            all_supports,
            merits,
            count,
        )
    }
    fn run_segmented_resident(
        &self,
        problem: &PhasingProblem,
        program: &Program,
        strategy: &crate::phasing::population::Strategy,
        seed: u64,
        progress: Progress<'_>,
    ) -> Result<Option<(PhasingOutput, crate::phasing::population::RunLog)>> {
        let out = super::segmented::run_segmented(
            &self.launcher,
            problem,
            program,
            strategy,
            seed,
            progress,
        )?;
        self.launcher.synchronize()?;
        Ok(out)
    }
}

impl NetworkOps for CudaBackend {
    fn load_network<'a>(
        &'a self,
        model: &Model,
        max_batch: usize,
        opts: NetOptions,
    ) -> Result<Box<dyn Forward + 'a>> {
        super::network::load(&self.launcher, model, max_batch, opts)
    }
}

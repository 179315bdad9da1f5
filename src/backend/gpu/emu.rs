//! `--device emu`: the CUDA kernels of `kernels/*.cu`, compiled as host C++ by build.rs
//! through the shim in `kernels/emu/`, run on the CPU with the CUDA execution model (blocks
//! on OS threads, CUDA threads as fibers, barriers and warp intrinsics as fiber yields). The
//! orchestration is the CUDA backend's ([`super::phasing`]); only cuFFT is replaced by
//! rustfft. Anyone can debug the GPU path here without a GPU, and the schedule order
//! (in-order, reverse, seeded random) exposes missing barriers.

use super::launcher::{DevPtr, Dims, KArg, Launcher, ParamPack};
use crate::array::Complex32;
use crate::backend::{Backend, Forward, NetOptions, NetworkOps, PhasingOps, Progress};
use crate::fft::Plan2d;
use crate::nn::model::Model;
use crate::phasing::problem::{PhasingOutput, PhasingProblem};
use crate::phasing::program::Program;
use crate::{Error, Result};
use rayon::prelude::*;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The launch configuration of the C++ runtime (`cdemu_launch_cfg` in cuda_emu.h).
#[repr(C)]
struct LaunchCfg {
    grid: [u32; 3],
    block: [u32; 3],
    shmem_bytes: u32,
    order: u32,
    seed: u64,
}

type FamilyFn = unsafe extern "C" fn(*const c_char, *const LaunchCfg, *mut *mut c_void) -> c_int;

extern "C" {
    fn cdemu_launch_phasing(
        name: *const c_char,
        cfg: *const LaunchCfg,
        params: *mut *mut c_void,
    ) -> c_int;
    fn cdemu_launch_nn(
        name: *const c_char,
        cfg: *const LaunchCfg,
        params: *mut *mut c_void,
    ) -> c_int;
    fn cdemu_launch_test(
        name: *const c_char,
        cfg: *const LaunchCfg,
        params: *mut *mut c_void,
    ) -> c_int;
}

const CDEMU_OK: c_int = 0;
const CDEMU_DEADLOCK: c_int = 1;
const CDEMU_BAD_CONFIG: c_int = 2;
const CDEMU_NO_KERNEL: c_int = 3;

/// The order in which the fibers of a block run between barriers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleOrder {
    /// Thread 0 first.
    InOrder,
    /// The last thread first.
    Reverse,
    /// A fresh permutation at every barrier, from this seed (and the launch and block index).
    Random(u64),
}

impl ScheduleOrder {
    /// The three orders every kernel test runs in.
    pub const ALL: [ScheduleOrder; 3] = [
        ScheduleOrder::InOrder,
        ScheduleOrder::Reverse,
        ScheduleOrder::Random(0x5EED),
    ];

    fn code(self) -> (u32, u64) {
        match self {
            ScheduleOrder::InOrder => (0, 0),
            ScheduleOrder::Reverse => (1, 0),
            ScheduleOrder::Random(s) => (2, s),
        }
    }
}

impl std::str::FromStr for ScheduleOrder {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "in-order" | "inorder" | "forward" => Ok(ScheduleOrder::InOrder),
            "reverse" => Ok(ScheduleOrder::Reverse),
            "random" => Ok(ScheduleOrder::Random(0x5EED)),
            other => match other.strip_prefix("random:").map(str::parse::<u64>) {
                Some(Ok(seed)) => Ok(ScheduleOrder::Random(seed)),
                _ => Err(Error::Config(format!(
                    "unknown emulator schedule '{s}': expected in-order, reverse, random or random:SEED"
                ))),
            },
        }
    }
}

/// Host<->device copies counted by the emulator ([`EmuLauncher::transfers`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfers {
    pub uploads: u64,
    pub downloads: u64,
    pub upload_bytes: u64,
    pub download_bytes: u64,
}

impl std::ops::Sub for Transfers {
    type Output = Transfers;
    fn sub(self, o: Transfers) -> Transfers {
        Transfers {
            uploads: self.uploads - o.uploads,
            downloads: self.downloads - o.downloads,
            upload_bytes: self.upload_bytes - o.upload_bytes,
            download_bytes: self.download_bytes - o.download_bytes,
        }
    }
}

/// A batched 2-D FFT plan of the emulator: the crate's [`Plan2d`] over `batch` images.
struct EmuFft {
    plan: Plan2d,
    batch: usize,
}

/// Device memory, launches and FFTs of the emulator.
pub struct EmuLauncher {
    order: ScheduleOrder,
    launches: AtomicU64,
    /// Host<->device copies made so far: uploads, downloads and their bytes.
    uploads: AtomicU64,
    downloads: AtomicU64,
    upload_bytes: AtomicU64,
    download_bytes: AtomicU64,
    mem: Mutex<HashMap<u64, Vec<u64>>>,
    plans: Mutex<HashMap<u64, Arc<EmuFft>>>,
    next_plan: AtomicU64,
    budget: usize,
}

impl EmuLauncher {
    /// An emulator with this schedule order. Its memory budget is 1 GiB per chunk (or
    /// `CDIPHASE_EMU_MEMORY` bytes), so large batches exercise the chunked path.
    pub fn new(order: ScheduleOrder) -> Self {
        let budget = std::env::var("CDIPHASE_EMU_MEMORY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1usize << 30);
        EmuLauncher::with_budget(order, budget)
    }

    /// An emulator with an explicit memory budget (bytes per chunk).
    pub fn with_budget(order: ScheduleOrder, budget: usize) -> Self {
        EmuLauncher {
            order,
            launches: AtomicU64::new(0),
            uploads: AtomicU64::new(0),
            downloads: AtomicU64::new(0),
            upload_bytes: AtomicU64::new(0),
            download_bytes: AtomicU64::new(0),
            mem: Mutex::new(HashMap::new()),
            plans: Mutex::new(HashMap::new()),
            next_plan: AtomicU64::new(1),
            budget,
        }
    }

    pub fn order(&self) -> ScheduleOrder {
        self.order
    }

    /// The host<->device copies made so far (what a GPU would move over its bus).
    pub fn transfers(&self) -> Transfers {
        Transfers {
            uploads: self.uploads.load(Ordering::Relaxed),
            downloads: self.downloads.load(Ordering::Relaxed),
            upload_bytes: self.upload_bytes.load(Ordering::Relaxed),
            download_bytes: self.download_bytes.load(Ordering::Relaxed),
        }
    }

    fn device_err(&self, msg: String) -> Error {
        Error::Device {
            device: "emu".into(),
            msg,
        }
    }

    /// Check that `p` is null or lies inside a live allocation, and return the bytes left.
    fn check_ptr(&self, p: DevPtr) -> Result<usize> {
        if p == DevPtr::NULL {
            return Ok(0);
        }
        let mem = self.mem.lock().unwrap_or_else(|e| e.into_inner());
        for (&base, v) in mem.iter() {
            let len = (v.len() * 8) as u64;
            if p.0 >= base && p.0 < base + len {
                return Ok((base + len - p.0) as usize);
            }
        }
        Err(self.device_err(format!(
            "address {:#x} is not inside any live allocation",
            p.0
        )))
    }

    fn family(kernel: &str) -> Result<FamilyFn> {
        if kernel.starts_with("cd_test_") {
            Ok(cdemu_launch_test)
        } else if kernel.starts_with("cd_nn_") {
            Ok(cdemu_launch_nn)
        } else {
            Ok(cdemu_launch_phasing)
        }
    }
}

// SAFETY: `alloc` returns the address of a host vector of at least the requested bytes,
// kept alive in `mem` until `free`; `launch` runs the named kernel of the C++ build of
// `kernels/*.cu` with exactly the given arguments and returns when every block finished.
unsafe impl Launcher for EmuLauncher {
    fn name(&self) -> &'static str {
        "emu"
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        let v = vec![u64::MAX; bytes.div_ceil(8).max(1)];
        let p = v.as_ptr() as u64;
        self.mem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(p, v);
        Ok(DevPtr(p))
    }

    fn free(&self, p: DevPtr) {
        self.mem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&p.0);
    }

    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        if self.check_ptr(dst)? < src.len() {
            return Err(self.device_err(format!("upload of {} bytes overruns", src.len())));
        }
        self.uploads.fetch_add(1, Ordering::Relaxed);
        self.upload_bytes
            .fetch_add(src.len() as u64, Ordering::Relaxed);
        // SAFETY: the destination range lies inside a live allocation (checked above).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.0 as *mut u8, src.len()) };
        Ok(())
    }

    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        if self.check_ptr(src)? < dst.len() {
            return Err(self.device_err(format!("download of {} bytes overruns", dst.len())));
        }
        self.downloads.fetch_add(1, Ordering::Relaxed);
        self.download_bytes
            .fetch_add(dst.len() as u64, Ordering::Relaxed);
        // SAFETY: the source range lies inside a live allocation (checked above).
        unsafe { std::ptr::copy_nonoverlapping(src.0 as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    unsafe fn launch(&self, kernel: &str, dims: Dims, args: &[KArg]) -> Result<()> {
        for a in args {
            if let KArg::Ptr(p) = a {
                self.check_ptr(*p)?;
            }
        }
        let f = Self::family(kernel)?;
        let (order, seed) = self.order.code();
        let n = self.launches.fetch_add(1, Ordering::Relaxed);
        let cfg = LaunchCfg {
            grid: dims.grid,
            block: dims.block,
            shmem_bytes: dims.shmem,
            order,
            seed: seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        };
        let name = CString::new(kernel).map_err(|_| self.device_err("bad kernel name".into()))?;
        let mut pack = ParamPack::new(args);
        // SAFETY: every pointer argument is null or inside a live allocation (checked above),
        // with room for what the kernel touches (this function's contract, which the typed
        // wrappers check); `pack` holds one slot per argument in the kernel's order.
        let st = unsafe { f(name.as_ptr(), &cfg, pack.params()) };
        match st {
            CDEMU_OK => Ok(()),
            CDEMU_DEADLOCK => Err(self.device_err(format!(
                "{kernel}: threads of a block wait at different barriers (deadlock)"
            ))),
            CDEMU_BAD_CONFIG => Err(self.device_err(format!(
                "{kernel}: invalid launch grid {:?} block {:?} shared {} bytes",
                dims.grid, dims.block, dims.shmem
            ))),
            CDEMU_NO_KERNEL => Err(self.device_err(format!("no kernel named {kernel}"))),
            other => Err(self.device_err(format!("{kernel}: launch status {other}"))),
        }
    }

    fn fft_plan(&self, h: usize, w: usize, batch: usize) -> Result<u64> {
        let plan = EmuFft {
            plan: Plan2d::new(h, w),
            batch,
        };
        let id = self.next_plan.fetch_add(1, Ordering::Relaxed);
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::new(plan));
        Ok(id)
    }

    fn fft(&self, plan: u64, input: DevPtr, output: DevPtr, forward: bool) -> Result<()> {
        let p = self
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&plan)
            .cloned()
            .ok_or_else(|| self.device_err(format!("no FFT plan {plan}")))?;
        let (h, w) = (p.plan.h, p.plan.w);
        let total = p.batch * h * w;
        if self.check_ptr(input)? < total * 8 || self.check_ptr(output)? < total * 8 {
            return Err(self.device_err("FFT buffer smaller than its plan".into()));
        }
        if input != output {
            // SAFETY: both ranges are inside live allocations (checked above); distinct
            // allocations do not overlap (in-place FFTs take the other branch).
            unsafe {
                std::ptr::copy(input.0 as *const u8, output.0 as *mut u8, total * 8);
            }
        }
        // SAFETY: `output` holds `total` complex values (checked) and nothing else touches
        // them during this synchronous call.
        let data = unsafe { std::slice::from_raw_parts_mut(output.0 as *mut Complex32, total) };
        // unnormalised both ways, as cuFFT
        data.par_chunks_mut(h * w).for_each_init(
            || p.plan.scratch(),
            |scratch, img| {
                if forward {
                    p.plan.forward(img, scratch)
                } else {
                    p.plan.inverse_unscaled(img, scratch)
                }
            },
        );
        Ok(())
    }

    fn fft_destroy(&self, plan: u64) {
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&plan);
    }

    fn memory_budget(&self) -> usize {
        self.budget
    }
}

/// The emulated GPU backend.
pub struct EmuBackend {
    launcher: EmuLauncher,
}

impl EmuBackend {
    pub fn new(order: ScheduleOrder) -> Self {
        EmuBackend {
            launcher: EmuLauncher::new(order),
        }
    }

    /// A backend whose device memory budget is `budget` bytes (forces chunking in tests).
    pub fn with_budget(order: ScheduleOrder, budget: usize) -> Self {
        EmuBackend {
            launcher: EmuLauncher::with_budget(order, budget),
        }
    }

    pub fn launcher(&self) -> &EmuLauncher {
        &self.launcher
    }
}

impl Backend for EmuBackend {
    fn name(&self) -> &'static str {
        "emu"
    }

    fn describe(&self) -> String {
        let threads = std::env::var("CDIPHASE_EMU_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            });
        format!(
            "CUDA emulator: kernels/*.cu as host C++ on {threads} threads, CUDA threads as fibers, \
             schedule {:?}, rustfft in place of cuFFT",
            self.launcher.order
        )
    }
}

impl PhasingOps for EmuBackend {
    fn run_phasing(
        &self,
        problem: &PhasingProblem,
        program: &Program,
        progress: Progress<'_>,
    ) -> Result<PhasingOutput> {
        super::phasing::run_phasing(&self.launcher, problem, program, progress)
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
        super::segmented::run_segmented(&self.launcher, problem, program, strategy, seed, progress)
    }
}

impl NetworkOps for EmuBackend {
    fn load_network<'a>(
        &'a self,
        model: &Model,
        max_batch: usize,
        opts: NetOptions,
    ) -> Result<Box<dyn Forward + 'a>> {
        super::network::load(&self.launcher, model, max_batch, opts)
    }
}

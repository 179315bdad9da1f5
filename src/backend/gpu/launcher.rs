//! The device seam of the GPU backends: device addresses and buffers, kernel arguments
//! packed as `cuLaunchKernel`'s `void**` parameter array, launch shapes, and the
//! [`Launcher`] trait (memory, copies, launches, batched 2-D FFTs) that CUDA
//! ([`super::cuda`]) and the emulator ([`super::emu`]) implement.
//!
//! Three layers, as in cudarc: raw device addresses ([`DevPtr`]) and the `unsafe`
//! [`Launcher::launch`], whose contract (every pointer argument addresses a live allocation
//! as large as the kernel reads or writes) no launcher can check for itself; typed buffers
//! ([`DevBuf`]: an allocation of a known size, freed on drop); and the safe typed
//! per-kernel wrappers in [`super::phasing`] and [`super::nn_kernels`], which take
//! `DevBuf`s, check their sizes against what the kernel touches, and only then launch.

use crate::array::Complex32;
use crate::{Error, Result};
use std::ffi::c_void;

/// A device address (a `CUdeviceptr` on CUDA, a host address under the emulator).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DevPtr(pub u64);

impl DevPtr {
    /// The null pointer (a kernel's optional array that is absent).
    pub const NULL: DevPtr = DevPtr(0);
    /// The address `bytes` further on.
    pub fn offset(self, bytes: usize) -> DevPtr {
        DevPtr(self.0 + bytes as u64)
    }
}

/// One kernel argument.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KArg {
    Ptr(DevPtr),
    I32(i32),
    I64(i64),
    F32(f32),
}

/// The kernel parameters as `cuLaunchKernel` takes them: `params()[i]` points at argument i.
pub struct ParamPack {
    slots: Vec<u64>,
    ptrs: Vec<*mut c_void>,
}

impl ParamPack {
    /// Pack the arguments (each in its own 8-byte slot, little-endian, so a 4-byte argument
    /// is read from the start of its slot).
    pub fn new(args: &[KArg]) -> ParamPack {
        let slots: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                KArg::Ptr(p) => p.0,
                KArg::I32(v) => v as u32 as u64,
                KArg::I64(v) => v as u64,
                KArg::F32(v) => v.to_bits() as u64,
            })
            .collect();
        let mut pack = ParamPack {
            slots,
            ptrs: Vec::new(),
        };
        let base = pack.slots.as_mut_ptr();
        // SAFETY: `i` is in bounds of `slots`, which is never resized after this point.
        pack.ptrs = (0..pack.slots.len())
            .map(|i| unsafe { base.add(i) } as *mut c_void)
            .collect();
        pack
    }

    /// The `void**` array.
    pub fn params(&mut self) -> *mut *mut c_void {
        self.ptrs.as_mut_ptr()
    }
}

/// A launch shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shmem: u32,
}

/// What the GPU orchestration needs from a device.
///
/// # Safety
/// The typed wrappers trust an implementation on these points: [`Launcher::alloc`] returns
/// the address of an allocation of at least the requested bytes that stays valid until
/// [`Launcher::free`]; [`Launcher::launch`] runs the named kernel of `kernels/*.cu` with
/// exactly the given arguments and shape, and returns after it finished (or failed).
pub unsafe trait Launcher: Send + Sync {
    /// `cuda` or `emu`.
    fn name(&self) -> &'static str;
    /// Allocate `bytes` of device memory, filled with 0xFF bytes (NaN as f32) so that a kernel
    /// reading memory nobody wrote gives NaN.
    fn alloc(&self, bytes: usize) -> Result<DevPtr>;
    /// Free an allocation made by [`Launcher::alloc`].
    fn free(&self, p: DevPtr);
    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()>;
    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()>;
    /// Launch `kernel` (its plain `extern "C"` name) and wait for it.
    ///
    /// # Safety
    /// Every [`KArg::Ptr`] argument must be null where the kernel takes an optional array,
    /// or else address a live allocation of this launcher with at least as many bytes from
    /// that address on as the kernel reads or writes through it, for these integer arguments
    /// and this launch shape. Under the emulator the kernels run on the host, so a kernel
    /// that runs past its buffers corrupts this process's memory. Call it through the typed
    /// wrappers ([`super::phasing::PhasingKernels`], [`super::nn_kernels`]), which check
    /// their buffers' sizes first.
    unsafe fn launch(&self, kernel: &str, dims: Dims, args: &[KArg]) -> Result<()>;
    /// A batched 2-D complex-to-complex FFT plan of `batch` contiguous h x w images.
    fn fft_plan(&self, h: usize, w: usize, batch: usize) -> Result<u64>;
    /// Unnormalised forward or inverse FFT (in place when `input == output`).
    fn fft(&self, plan: u64, input: DevPtr, output: DevPtr, forward: bool) -> Result<()>;
    fn fft_destroy(&self, plan: u64);
    /// Device memory one chunk of a run may use, in bytes.
    fn memory_budget(&self) -> usize;
}

/// A device allocation of a known size, freed on drop. Its fields are private, so a
/// `DevBuf` always describes a live allocation of at least [`DevBuf::bytes`] bytes: that is
/// what lets the typed kernel wrappers check their launches.
pub struct DevBuf<'a> {
    l: &'a dyn Launcher,
    ptr: DevPtr,
    bytes: usize,
}

impl<'a> DevBuf<'a> {
    /// Allocate `bytes` (poisoned: 0xFF bytes, NaN as f32).
    pub fn new(l: &'a dyn Launcher, bytes: usize) -> Result<DevBuf<'a>> {
        let ptr = l.alloc(bytes.max(1))?;
        Ok(DevBuf { l, ptr, bytes })
    }

    /// The device address of its first byte.
    pub fn ptr(&self) -> DevPtr {
        self.ptr
    }

    /// Its size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Is this an allocation of launcher `l`?
    pub fn belongs_to(&self, l: &dyn Launcher) -> bool {
        std::ptr::addr_eq(self.l as *const dyn Launcher, l as *const dyn Launcher)
    }

    /// Check, before a launch, that this buffer belongs to `l` and holds at least `n`
    /// values of `T` (`what` names the kernel argument in the error).
    pub fn check<T>(&self, l: &dyn Launcher, n: usize, what: &str) -> Result<()> {
        if !self.belongs_to(l) {
            return Err(Error::Config(format!(
                "{what}: a buffer of another device than the {} launcher's",
                l.name()
            )));
        }
        let need = n.checked_mul(std::mem::size_of::<T>());
        if need.is_none_or(|b| b > self.bytes) {
            return Err(Error::Config(format!(
                "{what}: the kernel touches {n} values of {} bytes, the buffer holds {} bytes",
                std::mem::size_of::<T>(),
                self.bytes
            )));
        }
        Ok(())
    }
    /// Allocate and upload a slice of plain values.
    pub fn from_slice<T: Plain>(l: &'a dyn Launcher, v: &[T]) -> Result<DevBuf<'a>> {
        let b = DevBuf::new(l, std::mem::size_of_val(v))?;
        l.upload(b.ptr, as_bytes(v))?;
        Ok(b)
    }
    pub fn upload<T: Plain>(&self, v: &[T]) -> Result<()> {
        check_len(std::mem::size_of_val(v), self.bytes)?;
        self.l.upload(self.ptr, as_bytes(v))
    }
    pub fn download<T: Plain>(&self, v: &mut [T]) -> Result<()> {
        check_len(std::mem::size_of_val(v), self.bytes)?;
        self.l.download(self.ptr, as_bytes_mut(v))
    }
    /// Download into a new vector of `n` values.
    pub fn to_vec<T: Plain + Default + Clone>(&self, n: usize) -> Result<Vec<T>> {
        let mut v = vec![T::default(); n];
        self.download(&mut v)?;
        Ok(v)
    }
    /// The buffer as a kernel argument (for [`Launcher::launch`]'s callers: the typed
    /// wrappers, and tests of the test kernels).
    pub fn arg(&self) -> KArg {
        KArg::Ptr(self.ptr)
    }
}

impl Drop for DevBuf<'_> {
    fn drop(&mut self) {
        self.l.free(self.ptr);
    }
}

fn check_len(bytes: usize, cap: usize) -> Result<()> {
    if bytes > cap {
        return Err(Error::Config(format!(
            "device copy of {bytes} bytes into a {cap}-byte buffer"
        )));
    }
    Ok(())
}

/// `v` as a kernel's `int` argument (the kernels index with 32-bit counts): an error when
/// it does not fit.
pub fn int_arg(v: usize, what: &str) -> Result<KArg> {
    i32::try_from(v).map(KArg::I32).map_err(|_| {
        Error::Config(format!(
            "{what} = {v} exceeds the kernels' 32-bit index range"
        ))
    })
}

/// Types that are plain bytes (no padding, no pointers): safe to copy to and from a device.
///
/// # Safety
/// Every bit pattern of the right size must be a valid value and the type has no padding.
pub unsafe trait Plain: Copy {}
// SAFETY: primitive numbers: no padding, every bit pattern valid.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl Plain for i32 {}
// SAFETY: as above.
unsafe impl Plain for u32 {}
// SAFETY: as above.
unsafe impl Plain for f32 {}
// SAFETY: as above.
unsafe impl Plain for f64 {}
// SAFETY: `#[repr(C)]` pair of f32 (num-complex): no padding, every bit pattern valid.
unsafe impl Plain for Complex32 {}

pub fn as_bytes<T: Plain>(v: &[T]) -> &[u8] {
    // SAFETY: T is Plain (no padding), the length covers exactly the slice.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

pub fn as_bytes_mut<T: Plain>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: T is Plain: every byte pattern is a valid T.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
}

/// Threads per block of the element-wise kernels (CD_BLOCK in kernels/common.cuh).
pub const BLOCK: u32 = 256;
/// Most items per launch (grid.y limit of CUDA).
pub const MAX_ITEMS: usize = 65_535;
/// Dynamic shared memory a launch may use without opting in (48 KiB on every CUDA GPU).
pub const MAX_DYN_SHARED: usize = 48 * 1024;

//! The GPU backends: one orchestration over the [`launcher::Launcher`] seam, two devices.
//! [`cuda`] runs `kernels/*.cu` on a GPU (cudarc: driver, NVRTC, cuFFT); [`emu`] compiles the
//! same kernels as host C++ and runs them with fibers under permuted schedules, rustfft in
//! place of cuFFT. [`kernels`] holds the typed wrappers (launch shape and argument list) of
//! every kernel, [`phasing`] the phasing run and [`network`] the network graph, both written
//! once against the launcher.

pub mod cuda;
pub mod cuda_libs;
pub mod emu;
pub mod kernels;
pub mod launcher;
pub mod network;
pub mod phasing;

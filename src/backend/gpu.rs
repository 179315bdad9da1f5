//! The GPU backends: one orchestration over the [`launcher::Launcher`] seam, two devices.
//! [`cuda`] runs `kernels/*.cu` on a GPU (cudarc: driver, NVRTC, cuFFT); [`emu`] compiles the
//! same kernels as host C++ and runs them with fibers under permuted schedules, rustfft in
//! place of cuFFT. [`phasing`] is the phasing run with the typed wrappers of the phasing
//! kernels, [`network`] the network graph over the typed wrappers of [`nn_kernels`], both
//! written once against the launcher.

pub mod cuda;
pub mod cuda_libs;
pub mod emu;
pub mod launcher;
pub mod network;
pub mod nn_kernels;
pub mod phasing;
pub mod population;
pub mod segmented;

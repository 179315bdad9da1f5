//! The CPU backend: one rayon pool per backend, the phasing engine ([`phasing`]: rustfft
//! plans and fused AVX2 element-wise passes) and the network engine ([`nn`]: direct
//! AVX-512 / AMX kernels, Winograd, GEMM).

pub mod nn;
pub mod phasing;

use super::{Backend, Progress};
use crate::phasing::problem::{PhasingOutput, PhasingProblem};
use crate::phasing::program::Program;
use crate::{Error, Result};

/// The CPU backend. Owns a rayon thread pool.
pub struct CpuBackend {
    pool: rayon::ThreadPool,
}

impl CpuBackend {
    /// A backend with `threads` worker threads (default: all available cores).
    pub fn new(threads: Option<usize>) -> Result<Self> {
        let n = threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        if n == 0 {
            return Err(Error::Config("--threads must be at least 1".into()));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("cdiphase-cpu-{i}"))
            .build()
            .map_err(|e| Error::Config(format!("cannot start {n} threads: {e}")))?;
        Ok(CpuBackend { pool })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Run `f` inside this backend's thread pool.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn describe(&self) -> String {
        format!("CPU, {} threads, {}", self.threads(), cpu_features())
    }

    fn run_phasing(
        &self,
        problem: &PhasingProblem,
        program: &Program,
        progress: Progress<'_>,
    ) -> Result<PhasingOutput> {
        self.run_phasing_items(problem, program, progress)
    }
}

/// The SIMD features rustfft and our loops can use on this CPU.
pub fn cpu_features() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut f = Vec::new();
        for (name, on) in [
            ("sse4.2", std::arch::is_x86_feature_detected!("sse4.2")),
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ] {
            if on {
                f.push(name);
            }
        }
        format!("x86_64 [{}]", f.join(" "))
    }
    #[cfg(target_arch = "aarch64")]
    {
        "aarch64 [neon]".to_string()
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        std::env::consts::ARCH.to_string()
    }
}

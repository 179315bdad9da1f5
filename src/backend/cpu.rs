//! The CPU backend: one rayon pool and the instruction sets detected once
//! ([`CpuFeatures`]), shared by the phasing engine ([`phasing`]: rustfft plans and fused
//! AVX2 element-wise passes) and the network engine ([`nn`]: direct AVX-512 / AMX kernels,
//! Winograd, GEMM). [`thread_pool`] is the one place a pool is set up, for the backend and
//! for the CPU work outside it (simulation, supports, evaluation).

mod features;
pub mod nn;
pub mod phasing;
mod pool;

use std::sync::Arc;

pub use features::{CpuFeatures, DotPeak};
pub use pool::{init_global_pool, thread_count, thread_pool};

use super::{Backend, Forward, NetOptions, NetworkOps, PhasingOps, Progress};
use crate::nn::model::Model;
use crate::phasing::problem::{PhasingOutput, PhasingProblem};
use crate::phasing::program::Program;
use crate::Result;

/// The CPU backend. Owns a rayon pool, shared by its phasing runs and its networks.
pub struct CpuBackend {
    pool: Arc<rayon::ThreadPool>,
    isa: CpuFeatures,
}

impl CpuBackend {
    /// A backend with `threads` worker threads (default: all available cores), on the
    /// instruction sets of this CPU.
    pub fn new(threads: Option<usize>) -> Result<Self> {
        Ok(CpuBackend {
            pool: thread_pool(threads)?,
            isa: CpuFeatures::detect(),
        })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// The instruction sets its kernels use.
    pub fn features(&self) -> CpuFeatures {
        self.isa
    }

    /// The backend's pool (for a [`nn::Runner::with_pool`] of its own).
    pub fn pool(&self) -> &Arc<rayon::ThreadPool> {
        &self.pool
    }

    /// Run `f` inside this backend's thread pool.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

impl PhasingOps for CpuBackend {
    fn run_phasing(
        &self,
        problem: &PhasingProblem,
        program: &Program,
        progress: Progress<'_>,
    ) -> Result<PhasingOutput> {
        self.run_phasing_items(problem, program, progress)
    }
}

/// A network compiled for this CPU with its runner (arena sized for the largest batch).
struct CpuForward {
    runner: nn::Runner<'static>,
}

impl Forward for CpuForward {
    fn output_shape(&self) -> &[usize] {
        &self.runner.network().output_shape
    }
    fn forward(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>> {
        Ok(self.runner.run(input, n)?.to_vec())
    }
}

impl NetworkOps for CpuBackend {
    fn load_network<'a>(
        &'a self,
        model: &Model,
        max_batch: usize,
        opts: NetOptions,
    ) -> Result<Box<dyn Forward + 'a>> {
        let net = nn::Network::with_features(model, opts.mode, self.isa)?;
        let nn_opts = nn::Options {
            threads: self.threads(),
            mode: opts.mode,
            poison: opts.poison,
        };
        let runner = nn::Runner::owning(net, max_batch, nn_opts, self.pool.clone())?;
        Ok(Box::new(CpuForward { runner }))
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn describe(&self) -> String {
        format!("CPU, {} threads, {}", self.threads(), self.isa.describe())
    }
}

/// The SIMD features rustfft and our loops can use on this CPU.
pub fn cpu_features() -> String {
    CpuFeatures::detect().describe()
}

//! `cdiphase bench`: the phasing benchmark on the CPU ([`phasing`]) and on the GPU backends
//! ([`gpu`]), each against its own FFT floor, and the network benchmark ([`network`]).
//! Timings are wall-clock; nothing here is asserted (benches/compare_*.py run the peers).

pub mod gpu;
pub mod network;
pub mod phasing;

pub use network::{bench_network, NetworkBenchResult};
pub use phasing::{bench_phasing, PhasingBench, PhasingBenchResult};

use crate::Result;

/// The smallest of `repeat` (at least one) timings `f` returns.
pub(crate) fn best_of(repeat: usize, mut f: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..repeat.max(1) {
        best = best.min(f()?);
    }
    Ok(best)
}

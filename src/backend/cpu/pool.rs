//! The one set-up of the crate's CPU thread pools: the backend's, a stand-alone network
//! runner's and the simulator's ([`thread_pool`]), and rayon's global pool for the verbs
//! that run in it ([`init_global_pool`]).

use std::sync::Arc;

use crate::{Error, Result};

/// The most worker threads a pool may have: far above any machine, far below what makes
/// creating the threads take minutes or exhaust the process's limits.
pub const MAX_THREADS: usize = 1024;

/// The number of worker threads for `--threads`: all available cores by default, from 1 to
/// [`MAX_THREADS`].
pub fn thread_count(threads: Option<usize>) -> Result<usize> {
    let n = threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if n == 0 || n > MAX_THREADS {
        return Err(Error::Config(format!(
            "--threads {n}: expected 1 to {MAX_THREADS}"
        )));
    }
    Ok(n)
}

/// The pool builder every CPU pool of the crate starts from: `threads` workers
/// ([`thread_count`]), named `cdiphase-cpu-N`.
fn pool_builder(threads: Option<usize>) -> Result<(rayon::ThreadPoolBuilder, usize)> {
    let n = thread_count(threads)?;
    let b = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("cdiphase-cpu-{i}"));
    Ok((b, n))
}

/// A rayon pool of `threads` workers (all cores by default): the one set-up of the crate's
/// CPU pools (the backend's, a network runner's when none is given, the simulator's).
pub fn thread_pool(threads: Option<usize>) -> Result<Arc<rayon::ThreadPool>> {
    let (b, n) = pool_builder(threads)?;
    b.build()
        .map(Arc::new)
        .map_err(|e| Error::Config(format!("cannot start {n} threads: {e}")))
}

/// Make rayon's global pool `threads` workers wide (for library calls that run in the global
/// pool). Only the first call of a process takes effect; later ones are ignored.
pub fn init_global_pool(threads: Option<usize>) -> Result<()> {
    let (b, _) = pool_builder(threads)?;
    // a second initialisation (tests calling twice) is harmless
    let _ = b.build_global();
    Ok(())
}

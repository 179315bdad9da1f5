//! `cdiphase bench`: throughput of the phasing engine against its own FFT floor, measured in
//! one run on the same data, threads and buffers. Timings are wall-clock; nothing here is
//! asserted (see benches/compare_phasing.py for the peer comparison).

use super::best_of;
use crate::array::Complex32;
use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::fft::Plan2d;
use crate::phasing::program::{Constraint, Recording, ShrinkwrapConfig};
use crate::phasing::schedule::Schedule;
use crate::phasing::{prepare, run_prepared, PhaseConfig, SupportSpec};
use crate::Result;
use rayon::prelude::*;
use std::time::Instant;

/// What to measure.
#[derive(Clone, Debug)]
pub struct PhasingBench {
    pub h: usize,
    pub w: usize,
    pub batch: usize,
    /// Pure HIO iterations timed.
    pub iterations: u64,
    pub threads: Option<usize>,
    /// Best of this many timed runs.
    pub repeat: usize,
}

/// The figures, per pattern.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PhasingBenchResult {
    pub device: String,
    pub threads: usize,
    pub h: usize,
    pub w: usize,
    pub batch: usize,
    pub iterations: u64,
    /// HIO iterations, microseconds per pattern per iteration (set-up excluded).
    pub hio_us_per_pattern_iteration: f64,
    /// One forward + one inverse 2-D FFT per pattern (same layout, same threads).
    pub fft_pair_us_per_pattern: f64,
    /// hio / fft pair.
    pub ratio_hio_to_fft_pair: f64,
    /// Per-item set-up of a run (random start, amplitude transpose, final Fourier error,
    /// result copies), microseconds per pattern; excluded from the per-iteration figures.
    pub setup_us_per_pattern: f64,
    /// The paper's mix (5 HIO + 5 ER, error recorded per ER section, shrinkwrap every 50).
    pub paper_schedule_us_per_pattern_iteration: f64,
    /// Patterns per second for the paper's full 10,000 + 10,000 iteration run, extrapolated.
    pub paper_run_patterns_per_second: f64,
}

/// Run the benchmark.
pub fn bench_phasing(cfg: &PhasingBench) -> Result<PhasingBenchResult> {
    let (h, w, n) = (cfg.h, cfg.w, cfg.batch);
    if n == 0 {
        return Err(crate::Error::Config("--batch must be at least 1".into()));
    }
    crate::limits::check_memory(
        &format!("bench: a batch of {n} patterns of {h}x{w}"),
        (n as u128) * (h as u128) * (w as u128) * 64,
    )?;
    let backend = CpuBackend::new(cfg.threads)?;
    let (patterns, _) = crate::simulate::synthetic_particles(n, h, w, 16, 7);
    let mk = |schedule: String, every: u64| PhaseConfig {
        schedule,
        shrinkwrap: Some(ShrinkwrapConfig {
            every,
            ..ShrinkwrapConfig::default()
        }),
        constraint: Constraint::None,
        support: SupportSpec::Circle {
            radius: (h.min(w) / 4) as f32 + 2.0,
        },
        recording: Recording::EndOfErSections,
        ..PhaseConfig::default()
    };
    let iters = cfg.iterations.max(1);
    let (problem, program) = prepare(&patterns, &mk(format!("{iters}*HIO"), 0))?;
    let noop = |_: u64| {};
    // warm-up (plans, pages)
    let (wp, wprog) = prepare(&patterns, &mk("2*HIO".into(), 0))?;
    run_prepared(&backend, &wp, &wprog, &noop)?;
    // Per-iteration cost = (t(I) - t(1)) / (I - 1): the per-item set-up (random start,
    // amplitude transpose, final error, result copies) is measured on its own.
    let (p1, prog1) = prepare(&patterns, &mk("1*HIO".into(), 0))?;
    let setup = best_of(cfg.repeat, || {
        let t = Instant::now();
        run_prepared(&backend, &p1, &prog1, &noop)?;
        Ok(t.elapsed().as_secs_f64())
    })?;
    let hio_total = best_of(cfg.repeat, || {
        let t = Instant::now();
        run_prepared(&backend, &problem, &program, &noop)?;
        Ok(t.elapsed().as_secs_f64())
    })?;
    let hio = if iters > 1 {
        ((hio_total - setup) / (iters - 1) as f64).max(0.0) * iters as f64
    } else {
        hio_total
    };
    let sections = (iters / 10).max(1);
    let paper_sched = format!("{sections}*(5*HIO + 5*ER)");
    let (pp, pprog) = prepare(&patterns, &mk(paper_sched.clone(), 50))?;
    let paper_total = best_of(cfg.repeat, || {
        let t = Instant::now();
        run_prepared(&backend, &pp, &pprog, &noop)?;
        Ok(t.elapsed().as_secs_f64())
    })?;
    let paper_iters = Schedule::parse(&paper_sched)?.iterations();
    let paper = if paper_iters > 1 {
        ((paper_total - setup) / (paper_iters - 1) as f64).max(0.0) * paper_iters as f64
    } else {
        paper_total
    };
    // FFT floor: same plans and layout, same pool, data per pattern.
    let plan = Plan2d::new(h, w);
    // Zeros: rustfft's arithmetic does not depend on the values, and unscaled round trips
    // of finite data would overflow to inf after a few repetitions.
    let mut data = vec![Complex32::new(0.0, 0.0); n * h * w];
    let fft = best_of(cfg.repeat, || {
        let t = Instant::now();
        backend.install(|| {
            data.par_chunks_mut(h * w).for_each_init(
                || plan.scratch(),
                |scratch, img| {
                    for _ in 0..iters {
                        plan.fft_pair_unscaled(img, scratch);
                    }
                },
            )
        });
        Ok(t.elapsed().as_secs_f64())
    })?;
    let per = |secs: f64, it: u64| secs * 1e6 / (n as f64 * it as f64);
    let hio_us = per(hio, iters);
    let fft_us = per(fft, iters);
    let paper_us = per(paper, paper_iters);
    Ok(PhasingBenchResult {
        device: backend.describe(),
        threads: backend.threads(),
        h,
        w,
        batch: n,
        iterations: iters,
        hio_us_per_pattern_iteration: hio_us,
        fft_pair_us_per_pattern: fft_us,
        ratio_hio_to_fft_pair: hio_us / fft_us,
        setup_us_per_pattern: setup * 1e6 / n as f64,
        paper_schedule_us_per_pattern_iteration: paper_us,
        paper_run_patterns_per_second: 1e6 / (paper_us * 20_000.0),
    })
}

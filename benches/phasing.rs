//! Criterion benchmarks of the CPU phasing engine: HIO iterations and the FFT pair (the
//! floor one iteration cannot beat) on the same batch, same threads.
//! `cargo bench --bench phasing`. The peer comparison is benches/compare_phasing.py.

use cdiphase::array::Complex32;
use cdiphase::backend::cpu::CpuBackend;
use cdiphase::fft::Plan2d;
use cdiphase::phasing::{prepare, run_prepared, PhaseConfig, SupportSpec};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rayon::prelude::*;

fn phasing(c: &mut Criterion) {
    let mut g = c.benchmark_group("phasing");
    g.sample_size(10);
    let backend = CpuBackend::new(None).unwrap();
    for &(size, batch) in &[(128usize, 1usize), (128, 64), (256, 16)] {
        let (patterns, _) = cdiphase::simulate::synthetic_particles(batch, size, size, 8, 1);
        let iters = 20u64;
        let cfg = PhaseConfig {
            schedule: format!("{iters}*HIO"),
            support: SupportSpec::Circle {
                radius: (size / 4) as f32,
            },
            ..PhaseConfig::default()
        };
        let (problem, program) = prepare(&patterns, &cfg).unwrap();
        g.throughput(Throughput::Elements(batch as u64 * iters));
        g.bench_with_input(
            BenchmarkId::new("hio_iterations", format!("{size}x{size}_b{batch}")),
            &(),
            |b, _| b.iter(|| run_prepared(&backend, &problem, &program, &|_| {}).unwrap()),
        );
        let plan = Plan2d::new(size, size);
        let mut data = vec![Complex32::new(0.0, 0.0); batch * size * size];
        g.bench_with_input(
            BenchmarkId::new("fft_pair", format!("{size}x{size}_b{batch}")),
            &(),
            |b, _| {
                b.iter(|| {
                    backend.install(|| {
                        data.par_chunks_mut(size * size).for_each_init(
                            || plan.scratch(),
                            |scratch, img| {
                                for _ in 0..iters {
                                    plan.fft_pair_unscaled(img, scratch)
                                }
                            },
                        )
                    })
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, phasing);
criterion_main!(benches);

//! `cdiphase info`: the CPU, its SIMD features, the CUDA driver and the available backends.

use anyhow::Result;
use cdiphase::backend::gpu::{cuda, cuda_libs};
use cdiphase::backend::{self, Device};

pub fn run() -> Result<()> {
    println!("cdiphase {}", env!("CARGO_PKG_VERSION"));
    let cpu = backend::cpu::CpuBackend::new(None)?;
    println!("cpu:  available: {}", backend::Backend::describe(&cpu));
    println!(
        "network --fast: {}",
        cdiphase::backend::cpu::nn::fast_mode().1
    );
    match cdiphase::nn::bundled::load() {
        Ok(m) => println!(
            "bundled model: {} ('{}', {} parameters, input {}x{}): trained for {}; model card \
             models/{}/README.md",
            cdiphase::nn::bundled::NAME,
            m.spec.name,
            m.spec.params().unwrap_or(0),
            m.spec.input[0],
            m.spec.input[1],
            cdiphase::nn::bundled::TRAINED_FOR,
            cdiphase::nn::bundled::NAME
        ),
        Err(e) => println!("bundled model: unreadable: {e}"),
    }
    gpu_info();
    for d in [Device::Cuda, Device::Emu] {
        match backend::select(d, None) {
            Ok(b) => println!("{}: available: {}", b.name(), b.describe()),
            Err(e) => println!("{}", e),
        }
    }
    Ok(())
}

/// The GPU lines of `info`: the CUDA driver and its GPUs, or why there are none.
fn gpu_info() {
    match cuda::probe() {
        Ok((version, gpus)) => {
            println!("cuda driver: {version}, {} GPU(s)", gpus.len());
            for g in gpus {
                println!(
                    "  gpu {}: {} (sm_{}{}, {:.1} GiB)",
                    g.ordinal,
                    g.name,
                    g.compute_capability.0,
                    g.compute_capability.1,
                    g.memory_bytes as f64 / (1u64 << 30) as f64
                );
            }
        }
        Err(_) => println!("cuda driver: none"),
    }
    for (lib, found) in cuda_libs::report() {
        match found {
            Ok(l) => println!("  {:14} {l}", lib.file()),
            Err(e) => println!("  {:14} missing: {e}", lib.file()),
        }
    }
}

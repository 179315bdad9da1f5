//! `cdiphase selftest`: every kernel of a device against float64 references, a short whole
//! phasing run and whole network forwards (`cdiphase::selftest`); a table or JSON, and a
//! non-zero exit status on any failure.

use anyhow::{bail, Result};
use cdiphase::backend::gpu::{cuda::CudaBackend, emu::EmuBackend};
use cdiphase::backend::{self, cpu::CpuBackend, Backend, Device};
use cdiphase::selftest::{self, Options, Report, Target};
use clap::Args;

#[derive(Args)]
pub struct SelftestArgs {
    /// auto | cpu | emu | cuda (auto: the GPU when one is usable, else the CPU).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Fewer and smaller cases (seconds on the emulator).
    #[arg(long)]
    quick: bool,
    /// Seed of the random inputs (a failure is replayed with the same seed).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// CPU threads (cpu device).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the report as one JSON object on stdout (attach it to bug reports).
    #[arg(long)]
    json: bool,
}

pub fn run(a: SelftestArgs) -> Result<()> {
    let device: Device = a.device.parse()?;
    let opts = Options {
        quick: a.quick,
        seed: a.seed,
    };
    let report = match device {
        Device::Cpu => run_cpu(a.threads, opts, None)?,
        Device::Emu => {
            let b = EmuBackend::new(backend::emu_order()?);
            selftest::run(&Target::Gpu(b.launcher()), &b.describe(), opts)
        }
        Device::Cuda => {
            let b = CudaBackend::new(backend::cuda_ordinal()?)?;
            selftest::run(&Target::Gpu(b.launcher()), &b.describe(), opts)
        }
        Device::Auto => match CudaBackend::new(backend::cuda_ordinal()?) {
            Ok(b) => selftest::run(&Target::Gpu(b.launcher()), &b.describe(), opts),
            Err(e) => run_cpu(a.threads, opts, Some(e.to_string()))?,
        },
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    if report.failures > 0 {
        bail!(
            "selftest: {} of {} checks failed on {} (seed {})",
            report.failures,
            report.checks.len(),
            report.device,
            report.seed
        );
    }
    Ok(())
}

fn run_cpu(threads: Option<usize>, opts: Options, auto_note: Option<String>) -> Result<Report> {
    let b = CpuBackend::new(threads)?;
    let mut device = b.describe();
    if let Some(n) = auto_note {
        device = format!("{device} (auto: no GPU used: {n})");
    }
    Ok(selftest::run(&Target::Cpu(&b), &device, opts))
}

fn print_table(r: &Report) {
    println!("device: {}", r.device);
    println!(
        "{:<56} {:<66} {:>9} {:>9} {:>9}  result",
        "kernel", "case", "max err", "tol", "ms"
    );
    for c in &r.checks {
        println!(
            "{:<56} {:<66} {:>9.2e} {:>9.1e} {:>9.1}  {}",
            c.kernel,
            c.case,
            c.max_err,
            c.tolerance,
            c.ms,
            if c.passed { "pass" } else { "FAIL" }
        );
        if let Some(e) = &c.error {
            println!("    error: {e}");
        }
    }
    println!(
        "{} checks, {} failed, {:.1} s (seed {}{})",
        r.checks.len(),
        r.failures,
        r.seconds,
        r.seed,
        if r.quick { ", quick" } else { "" }
    );
}

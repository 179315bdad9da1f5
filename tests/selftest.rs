//! `cdiphase selftest` on the devices CI has: the CPU engine and the emulated CUDA kernels
//! (in several fiber schedule orders, which expose missing barriers) pass every check against
//! the float64 references, and a planted off-by-one in any one kernel's launch bound is
//! caught: the selftest a user runs on a new GPU finds such a bug instead of passing.

mod common;

use cdiphase::backend::cpu::CpuBackend;
use cdiphase::backend::gpu::emu::{EmuLauncher, ScheduleOrder};
use cdiphase::backend::gpu::launcher::{DevPtr, Dims, KArg, Launcher};
use cdiphase::selftest::{run, Options, Report, Target};
use std::process::Command;

fn failures(r: &Report) -> String {
    r.checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| {
            format!(
                "{} | {} | err {:.3e} tol {:.1e} {}",
                c.kernel,
                c.case,
                c.max_err,
                c.tolerance,
                c.error.clone().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_check_passes_on_the_cpu_engine() {
    let cpu = CpuBackend::new(Some(2)).unwrap();
    let opts = Options {
        quick: false,
        seed: common::seed("selftest-cpu"),
    };
    let r = run(&Target::Cpu(&cpu), "cpu", opts);
    assert!(r.checks.len() > 60, "{} checks", r.checks.len());
    assert_eq!(r.failures, 0, "failed:\n{}", failures(&r));
}

#[test]
fn every_check_passes_on_the_emulated_kernels() {
    // the full set once, in order; the quick set in the other schedule orders
    for (order, quick) in [
        (ScheduleOrder::InOrder, false),
        (ScheduleOrder::Reverse, true),
        (ScheduleOrder::Random(common::seed("selftest-order")), true),
    ] {
        let l = EmuLauncher::new(order);
        let opts = Options {
            quick,
            seed: common::seed("selftest-emu"),
        };
        let r = run(&Target::Gpu(&l), "emu", opts);
        // every network and phasing kernel is named by at least one row
        for k in [
            "cd_modulus_project",
            "cd_support_update",
            "cd_record_errors",
            "cd_sw_blur_rows",
            "cd_sw_blur_cols",
            "cd_sw_threshold",
            "cd_nn_conv2d ",
            "cd_nn_convT_weights",
            "cd_nn_conv2d_general",
            "cd_nn_conv_transpose2d",
            "cd_nn_maxpool2",
            "cd_nn_maxpool",
            "cd_nn_upsample",
            "cd_nn_dense",
            "cd_nn_activate",
            "cd_nn_copy_channels",
            "cd_nn_normalize_max",
            "cd_nn_support_threshold",
        ] {
            assert!(
                r.checks.iter().any(|c| c.kernel.contains(k)),
                "no check names {k}"
            );
        }
        assert_eq!(r.failures, 0, "{order:?}: failed:\n{}", failures(&r));
    }
}

/// The emulator with one integer argument of one kernel (a length, height or width: the
/// `nth` integer of its parameter list) one too small: the classic off-by-one in a bound.
struct OffByOne {
    inner: EmuLauncher,
    kernel: &'static str,
    nth: usize,
}

// SAFETY: memory, copies and FFTs are the emulator's; a launch is the emulator's with one
// bound made one smaller, so the kernel touches no more memory than the unchanged launch.
unsafe impl Launcher for OffByOne {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn alloc(&self, bytes: usize) -> cdiphase::Result<DevPtr> {
        self.inner.alloc(bytes)
    }
    fn free(&self, p: DevPtr) {
        self.inner.free(p)
    }
    fn upload(&self, dst: DevPtr, src: &[u8]) -> cdiphase::Result<()> {
        self.inner.upload(dst, src)
    }
    fn download(&self, src: DevPtr, dst: &mut [u8]) -> cdiphase::Result<()> {
        self.inner.download(src, dst)
    }
    unsafe fn launch(&self, kernel: &str, dims: Dims, args: &[KArg]) -> cdiphase::Result<()> {
        let mut args = args.to_vec();
        if kernel == self.kernel {
            if let Some(KArg::I32(v)) = args
                .iter_mut()
                .filter(|a| matches!(a, KArg::I32(_)))
                .nth(self.nth)
            {
                *v -= 1;
            }
        }
        // SAFETY: the caller's pointer arguments satisfy `launch`'s contract for the
        // unchanged bound, hence for the smaller one.
        unsafe { self.inner.launch(kernel, dims, &args) }
    }
    fn fft_plan(&self, h: usize, w: usize, batch: usize) -> cdiphase::Result<u64> {
        self.inner.fft_plan(h, w, batch)
    }
    fn fft(&self, plan: u64, input: DevPtr, output: DevPtr, forward: bool) -> cdiphase::Result<()> {
        self.inner.fft(plan, input, output, forward)
    }
    fn fft_destroy(&self, plan: u64) {
        self.inner.fft_destroy(plan)
    }
    fn memory_budget(&self) -> usize {
        self.inner.memory_budget()
    }
}

#[test]
fn a_planted_off_by_one_is_caught() {
    // (kernel, which integer argument): the pixel count L, the image height or width
    for (kernel, nth) in [
        ("cd_modulus_project", 0),
        ("cd_support_update", 0),
        ("cd_sw_blur_rows", 1),
        ("cd_sw_blur_cols", 0),
        ("cd_sw_threshold", 0),
        ("cd_nn_conv2d", 1),
        ("cd_nn_conv2d_general", 2),
        ("cd_nn_conv_transpose2d", 2),
        ("cd_nn_maxpool2", 2),
        ("cd_nn_maxpool", 1),
        ("cd_nn_upsample", 1),
        ("cd_nn_dense", 1),
    ] {
        let l = OffByOne {
            inner: EmuLauncher::new(ScheduleOrder::InOrder),
            kernel,
            nth,
        };
        let opts = Options {
            quick: true,
            seed: common::seed("selftest-planted"),
        };
        let r = run(&Target::Gpu(&l), "emu with a planted bug", opts);
        let hit = r
            .checks
            .iter()
            .filter(|c| !c.passed)
            .filter(|c| c.kernel.contains(kernel) || c.kernel.starts_with("whole"))
            .count();
        println!("{kernel}: {} of {} checks fail", r.failures, r.checks.len());
        assert!(
            hit > 0,
            "an off-by-one in {kernel} was not caught:\n{}",
            failures(&r)
        );
    }
}

/// The verb: a table, `--json`, and the exit status.
#[test]
fn the_verb_prints_a_table_and_json() {
    let bin = env!("CARGO_BIN_EXE_cdiphase");
    let o = Command::new(bin)
        .args(["selftest", "--device", "emu", "--quick"])
        .env_remove("CDIPHASE_EMU_SCHEDULE")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("CUDA emulator")
            && out.contains("cd_support_update")
            && out.contains("0 failed"),
        "{out}"
    );
    let o = Command::new(bin)
        .args([
            "selftest", "--device", "cpu", "--quick", "--json", "--seed", "7",
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["failures"], 0);
    assert_eq!(v["seed"], 7);
    assert!(v["checks"].as_array().unwrap().len() > 40);
    // an unknown device is an error, not a panic
    let o = Command::new(bin)
        .args(["selftest", "--device", "tpu"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown device"));
}

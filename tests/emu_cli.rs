//! The CLI on the GPU code path: `phase --device emu` gives the CPU's reconstruction (short
//! program, see tests/emu_phasing.rs for the tolerance), `info` lists emu and the CUDA
//! state, and `--device cuda` without a GPU fails with a clear message, not a panic.

mod common;

use cdiphase::io::{self, CxiWriter};
use std::path::Path;
use std::process::Output;

fn run(args: &[&str]) -> Output {
    common::cli::bin()
        .args(args)
        .env_remove("CDIPHASE_EMU_SCHEDULE")
        .output()
        .unwrap()
}

fn write_patterns(dir: &Path, n: usize, h: usize, w: usize) -> std::path::PathBuf {
    let (p, _) = cdiphase::simulate::synthetic_particles(n, h, w, n, 11);
    let mut mask = vec![0u8; h * w];
    mask[(h / 2) * w + w / 2] = 1;
    let path = dir.join("in.cxi");
    let mut wr = CxiWriter::new();
    wr.f32("entry_1/data_1/data", &[n, h, w], &p.intensities.data)
        .unwrap();
    wr.u8("entry_1/instrument_1/detector_1/mask", &[h, w], &mask)
        .unwrap();
    wr.finish(&path).unwrap();
    path
}

#[test]
fn phase_on_emu_matches_cpu_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_patterns(dir.path(), 2, 27, 34);
    let mut objs = Vec::new();
    for device in ["cpu", "emu"] {
        let out = dir.path().join(format!("{device}.cxi"));
        let o = run(&[
            "phase",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--algorithm",
            "2*(3*HIO + 2*ER)",
            "--shrinkwrap",
            "sigma=1,threshold=0.1,every=4",
            "--constraint",
            "real",
            "--starts",
            "2",
            "--seed",
            "3",
            "--device",
            device,
            "--quiet",
        ]);
        assert!(
            o.status.success(),
            "{device}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        objs.push(io::read_object(&out, None).unwrap());
    }
    let (a, b) = (&objs[1].data, &objs[0].data);
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).norm_sqr() as f64)
        .sum();
    let den: f64 = b.iter().map(|y| y.norm_sqr() as f64).sum();
    let e = (num / den).sqrt();
    assert!(e < 1e-4, "emu vs cpu through the CLI: {e}");
}

#[test]
fn info_and_device_errors() {
    let o = run(&["info"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("emu: available"), "{text}");
    assert!(text.contains("cuda driver"), "{text}");
    if cdiphase::backend::gpu::cuda::probe().is_err() {
        let dir = tempfile::tempdir().unwrap();
        let input = write_patterns(dir.path(), 1, 16, 16);
        let out = dir.path().join("o.cxi");
        let o = run(&[
            "phase",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--device",
            "cuda",
            "--quiet",
        ]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("not available"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "no output file on failure");
    }
}

/// `bench network --device emu` runs the network on the emulated kernels and reports its
/// figures as JSON (the command users run with `--device cuda`).
#[test]
fn network_bench_on_the_gpu_path() {
    let o = run(&[
        "bench",
        "network",
        "--device",
        "emu",
        "--arch",
        "spinn:16:0.0625",
        "--batch",
        "2",
        "--iterations",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["batch"], 2);
    assert_eq!(v["iterations"], 2);
    assert!(v["images_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["device"].as_str().unwrap().contains("emulator"));
    let o = run(&["bench", "network", "--device", "emu", "--fast"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("CPU kernels"));
}

/// `predict` and `phase` take their device from the one `backend::select`: with `--device
/// emu` both run on the emulated GPU and their run headers name it, and `--device auto`
/// gives both verbs the same backend, whose description states what auto chose and why.
#[test]
fn predict_and_phase_share_the_device_choice() {
    use cdiphase::backend::{select, Device};
    use cdiphase::nn::spec::Preprocess;
    use cdiphase::nn::store::{self, WeightDtype};
    use cdiphase::nn::Model;
    let dir = tempfile::tempdir().unwrap();
    let input = write_patterns(dir.path(), 2, 32, 32);
    let model = dir.path().join("small.safetensors");
    let spec = cdiphase::nn::presets::spinn(32, 0.125, Preprocess::Max).unwrap();
    store::save(&Model::random(spec, 3).unwrap(), WeightDtype::F32, &model).unwrap();
    let auto = select(Device::Auto, Some(1)).unwrap().describe();
    assert!(
        auto.contains("(auto: "),
        "auto does not say what it chose: {auto}"
    );
    for (device, want) in [
        ("emu", "CUDA emulator: kernels/*.cu"),
        ("auto", auto.as_str()),
    ] {
        for verb in ["predict", "phase"] {
            let out = dir.path().join(format!("{verb}-{device}.cxi"));
            let mut args = vec![
                verb,
                input.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--device",
                device,
                "--threads",
                "1",
            ];
            if verb == "predict" {
                args.extend(["--model", model.to_str().unwrap()]);
            } else {
                args.extend(["--algorithm", "2*ER", "--starts", "1"]);
            }
            let o = run(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{verb} --device {device}: {err}");
            assert!(
                err.contains(want),
                "{verb} --device {device}: the run header does not name '{want}':\n{err}"
            );
        }
    }
}

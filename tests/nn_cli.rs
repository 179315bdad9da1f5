//! The network verbs end to end: `convert` (every Keras format, and its errors), `predict`
//! feeding `phase` as support and starting object, model-file errors (truncated, wrong
//! shape, unknown layer, missing tensor), and the safetensors round trip in f32/f16/bf16.

mod common;

use std::path::{Path, PathBuf};

use cdiphase::backend::cpu::nn::{Mode, Network, Options, Runner};
use cdiphase::io::CxiWriter;
use cdiphase::nn::spec::Preprocess;
use cdiphase::nn::store::{self, WeightDtype};
use cdiphase::nn::Model;
use common::cli::{fails, ok};

fn fixture(model: &str, file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/keras")
        .join(model)
        .join(file)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small spinn model (32x32, 1/8 width) written as a model file.
fn small_model(dir: &Path) -> PathBuf {
    let spec = cdiphase::nn::presets::spinn(32, 0.125, Preprocess::Log1pMax).unwrap();
    let m = Model::random(spec, 3).unwrap();
    let p = dir.join("small.safetensors");
    store::save(&m, WeightDtype::F32, &p).unwrap();
    p
}

#[test]
fn convert_every_format_gives_the_same_model() {
    let t = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for (file, extra) in [
        ("model.h5", vec![]),
        ("model_k2.h5", vec![]),
        ("model.keras", vec![]),
        ("model.weights.h5", vec!["--arch-config", "config.json"]),
        ("weights_k2.h5", vec!["--arch-config", "config_k2.json"]),
    ] {
        let out = t.path().join(format!("{file}.safetensors"));
        let cfg;
        let mut args = vec!["convert", "--preprocess", "log1p-max", "-o", s(&out)];
        let inp = fixture("unet", file);
        args.push(s(&inp));
        if !extra.is_empty() {
            cfg = fixture("unet", extra[1]);
            args.extend(["--arch-config", s(&cfg)]);
        }
        ok(&args);
        outs.push(store::load(&out).unwrap());
    }
    for m in &outs[1..] {
        assert_eq!(m.weights, outs[0].weights);
        assert_eq!(m.spec.layers, outs[0].spec.layers);
        assert_eq!(m.spec.preprocess, Preprocess::Log1pMax);
    }
}

#[test]
fn convert_errors_name_the_problem() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("m.safetensors");
    // weights-only without an architecture
    let e = fails(&[
        "convert",
        s(&fixture("unet", "weights_k2.h5")),
        "-o",
        s(&out),
    ]);
    assert!(e.contains("--arch"), "{e}");
    // the wrong architecture: spinn's layers are not in the unet file
    let e = fails(&[
        "convert",
        s(&fixture("unet", "model.weights.h5")),
        "--arch",
        "spinn:32",
        "-o",
        s(&out),
    ]);
    assert!(
        e.contains("conv2d_") && e.contains("wrong architecture"),
        "{e}"
    );
    // the right topology at the wrong width: a shape mismatch naming the layer and both
    // shapes
    let e = fails(&[
        "convert",
        s(&fixture("spinn_small", "weights_k2.h5")),
        "--arch",
        "spinn:32:0.25",
        "-o",
        s(&out),
    ]);
    assert!(
        e.contains("layer 'conv2d_1' (Conv2D)")
            && e.contains("kernel shape [3, 3, 1, 8] in the file")
            && e.contains("[3, 3, 1, 16] in the architecture"),
        "{e}"
    );
    // a model of spinn_small's own width converts with the preset
    ok(&[
        "convert",
        s(&fixture("spinn_small", "weights_k2.h5")),
        "--arch",
        "spinn:32:0.125",
        "--dtype",
        "bf16",
        "-o",
        s(&out),
    ]);
    // an unknown layer type in a config
    let cfg = std::fs::read_to_string(fixture("unet", "config.json")).unwrap();
    let bad = t.path().join("bad.json");
    std::fs::write(
        &bad,
        cfg.replacen("\"Dropout\"", "\"LayerNormalization\"", 1),
    )
    .unwrap();
    let e = fails(&[
        "convert",
        s(&fixture("unet", "model.weights.h5")),
        "--arch-config",
        s(&bad),
        "-o",
        s(&out),
    ]);
    assert!(
        e.contains("LayerNormalization") && e.contains("dropout_1"),
        "{e}"
    );
    // truncated inputs
    for f in ["model.h5", "model.keras"] {
        let bytes = std::fs::read(fixture("unet", f)).unwrap();
        let cut = t.path().join(format!("cut_{f}"));
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = fails(&["convert", s(&cut), "-o", s(&out)]);
        assert!(e.contains("cut_"), "{e}");
    }
}

#[test]
fn model_file_errors_are_clear() {
    let t = tempfile::tempdir().unwrap();
    let p = small_model(t.path());
    let bytes = std::fs::read(&p).unwrap();
    // truncated
    let e = store::from_bytes(&p, &bytes[..bytes.len() - 100])
        .unwrap_err()
        .to_string();
    assert!(e.contains("truncated"), "{e}");
    let m = store::load(&p).unwrap();
    // a weight of the wrong shape
    let mut w = m.weights.clone();
    w.get_mut("conv2d_3/kernel").unwrap().shape = vec![3, 3, 8, 8, 2];
    let e = Model::new(m.spec.clone(), w).unwrap_err().to_string();
    assert!(
        e.contains("conv2d_3/kernel") && e.contains("[3, 3, 8, 16]"),
        "{e}"
    );
    // a missing tensor
    let mut w = m.weights.clone();
    w.remove("dense_2/bias");
    let e = Model::new(m.spec.clone(), w).unwrap_err().to_string();
    assert!(e.contains("dense_2/bias") && e.contains("missing"), "{e}");
    // an unknown layer type in the stored description
    let json = m
        .spec
        .to_json()
        .replacen("\"MaxPooling2D\"", "\"AvgPooling2D\"", 1);
    let e = cdiphase::nn::spec::ModelSpec::from_json(&json)
        .unwrap_err()
        .to_string();
    assert!(e.contains("AvgPooling2D"), "{e}");
    // a safetensors file that is not a cdiphase model
    let plain = safetensors::serialize(
        [(
            "x",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0u8; 4])
                .unwrap(),
        )],
        None,
    )
    .unwrap();
    let e = store::from_bytes(Path::new("plain.safetensors"), &plain)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cdiphase.model"), "{e}");
}

#[test]
fn safetensors_round_trip_f32_f16_bf16() {
    let spec = cdiphase::nn::presets::spinn(16, 0.125, Preprocess::Max).unwrap();
    let m = Model::random(spec, 11).unwrap();
    for (dt, tol) in [
        (WeightDtype::F32, 0.0f32),
        (WeightDtype::F16, 1.0 / 2048.0),
        (WeightDtype::Bf16, 1.0 / 256.0),
    ] {
        let b = store::to_bytes(&m, dt).unwrap();
        let r = store::from_bytes(Path::new("mem"), &b).unwrap();
        assert_eq!(r.spec, m.spec);
        let mut worst = 0.0f32;
        for (k, t) in &m.weights {
            let u = &r.weights[k];
            assert_eq!(u.shape, t.shape);
            for (&a, &b) in t.data.iter().zip(&u.data) {
                worst = worst.max((a - b).abs() / a.abs().max(1e-3));
            }
        }
        assert!(
            worst <= tol,
            "{dt:?}: worst relative weight error {worst} > {tol}"
        );
        if dt != WeightDtype::F32 {
            assert!(worst > 0.0, "{dt:?} stored exactly?");
        }
    }
}

/// Patterns of random particles with a masked beamstop, as CXI.
fn write_patterns(dir: &Path, n: usize, h: usize, w: usize) -> PathBuf {
    let (p, _) = cdiphase::simulate::synthetic_particles(n, h, w, n, 5);
    let mut mask = vec![0u8; h * w];
    mask[(h / 2) * w + w / 2] = 1;
    let path = dir.join("patterns.cxi");
    let mut wr = CxiWriter::new();
    wr.f32("entry_1/data_1/data", &[n, h, w], &p.intensities.data)
        .unwrap();
    wr.u8("entry_1/instrument_1/detector_1/mask", &[h, w], &mask)
        .unwrap();
    wr.finish(&path).unwrap();
    path
}

#[test]
fn predict_feeds_phase() {
    let t = tempfile::tempdir().unwrap();
    let model = small_model(t.path());
    let n = 5;
    let inp = write_patterns(t.path(), n, 32, 32);
    let out = t.path().join("pred.cxi");
    ok(&[
        "predict",
        s(&inp),
        "--model",
        s(&model),
        "-o",
        s(&out),
        "--batch",
        "2",
        "--threads",
        "2",
        "--threshold",
        "0.2",
        "--quiet",
    ]);
    let (shape, data) = cdiphase::io::read_f32(&out, "entry_1/image_1/data").unwrap();
    assert_eq!(shape, vec![n, 32, 32]);
    assert!(data.iter().all(|v| v.is_finite()));
    let sup = cdiphase::io::read_support(&out, None).unwrap();
    // the support is output > 0.2 x per-pattern max, recomputed here
    for i in 0..n {
        let img = &data[i * 1024..(i + 1) * 1024];
        let mx = img.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for (j, &v) in img.iter().enumerate() {
            assert_eq!(sup.data[i * 1024 + j], u8::from(mx > 0.0 && v > 0.2 * mx));
        }
    }
    // the same result as the library on the same preprocessing (mask -> 0, log1p, / max)
    let m = store::load(&model).unwrap();
    let net = Network::new(&m, Mode::F32).unwrap();
    let ps = cdiphase::io::read_patterns(&inp, None).unwrap();
    let mut x = ps.intensities.data.clone();
    let mask = ps.mask.as_ref().unwrap();
    for p in x.chunks_mut(1024) {
        Preprocess::Log1pMax.apply(p, Some(&mask.data));
    }
    let mut r = Runner::new(
        &net,
        n,
        Options {
            threads: 1,
            mode: Mode::F32,
            poison: true,
        },
    )
    .unwrap();
    let y = r.run(&x, n).unwrap();
    let e = y
        .iter()
        .zip(&data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(e < 1e-5, "predict CLI vs library: {e}");
    // the output is a starting support and object for phase
    let ph = t.path().join("phased.cxi");
    ok(&[
        "phase",
        s(&inp),
        "-o",
        s(&ph),
        "--support",
        s(&out),
        "--init",
        s(&out),
        "--quiet",
        "--algorithm",
        "10*ER",
    ]);
    assert!(ph.exists());
}

#[test]
fn predict_errors() {
    let t = tempfile::tempdir().unwrap();
    let model = small_model(t.path());
    let inp = write_patterns(t.path(), 2, 24, 32);
    let out = t.path().join("pred.cxi");
    let e = fails(&["predict", s(&inp), "--model", s(&model), "-o", s(&out)]);
    assert!(e.contains("32, 32") && e.contains("24, 32"), "{e}");
    assert!(!out.exists());
    let e = fails(&[
        "predict",
        s(&inp),
        "--model",
        s(&t.path().join("none.safetensors")),
        "-o",
        s(&out),
    ]);
    assert!(e.contains("none.safetensors"), "{e}");
    let e = fails(&[
        "predict",
        s(&inp),
        "--model",
        s(&model),
        "-o",
        s(&out),
        "--device",
        "cuda",
    ]);
    assert!(e.to_lowercase().contains("cuda"), "{e}");
    assert!(!out.exists());
}

/// `predict --device emu` runs the network through the CUDA kernels under the emulator and
/// writes the same output and support as the CPU engine (within f32 rounding).
#[test]
fn predict_on_emulated_gpu_matches_cpu() {
    let t = tempfile::tempdir().unwrap();
    let model = small_model(t.path());
    let n = 3;
    let inp = write_patterns(t.path(), n, 32, 32);
    let (cpu, emu) = (t.path().join("cpu.cxi"), t.path().join("emu.cxi"));
    for (out, dev) in [(&cpu, "cpu"), (&emu, "emu")] {
        ok(&[
            "predict",
            s(&inp),
            "--model",
            s(&model),
            "-o",
            s(out),
            "--batch",
            "2",
            "--device",
            dev,
            "--quiet",
        ]);
    }
    let (_, a) = cdiphase::io::read_f32(&cpu, "entry_1/image_1/data").unwrap();
    let (shape, b) = cdiphase::io::read_f32(&emu, "entry_1/image_1/data").unwrap();
    assert_eq!(shape, vec![n, 32, 32]);
    let mx = a.iter().fold(0f32, |m, &v| m.max(v.abs()));
    let err = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / mx;
    assert!(err < 1e-5, "emu vs cpu {err}");
    let e = fails(&[
        "predict",
        s(&inp),
        "--model",
        s(&model),
        "-o",
        s(&emu),
        "--device",
        "emu",
        "--fast",
    ]);
    assert!(e.contains("--fast"), "{e}");
}

#[test]
fn bench_network_json_keys() {
    let o = ok(&[
        "bench",
        "network",
        "--arch",
        "spinn:16:0.125",
        "--batch",
        "3",
        "--threads",
        "2",
        "--iterations",
        "2",
        "--json",
        "--mode",
        "winograd",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in [
        "images_per_s",
        "ms_per_batch",
        "batch",
        "threads",
        "mode",
        "params",
        "gflop_per_image",
        "peak_rss_bytes",
        "bytes_per_image",
    ] {
        assert!(v.get(k).is_some(), "missing key {k} in {v}");
    }
    assert_eq!(v["batch"], 3);
    assert_eq!(v["mode"], "winograd-f4x4-3x3");
    assert!(v["fast_max_rel_err"].as_f64().unwrap() < 1e-4);
    // --fast: bf16 on AMX, else on AVX512_BF16 where its dot products measure faster than
    // the f32 FMAs, else f32; the bf16 error is reported
    let o = ok(&[
        "bench",
        "network",
        "--arch",
        "spinn:16:0.125",
        "--batch",
        "3",
        "--threads",
        "2",
        "--iterations",
        "1",
        "--json",
        "--fast",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (fast, why) = cdiphase::backend::cpu::nn::fast_mode();
    assert_eq!(v["mode"], fast.name(), "{why}");
    // against the exact direct f32 kernels: f32 itself (Winograd on wide layers) is close
    let e = v["fast_max_rel_err"].as_f64().unwrap();
    if fast == cdiphase::backend::Mode::F32 {
        assert!(e < 1e-4, "--fast (f32) error {e}");
    } else {
        assert!(e > 0.0 && e < 0.1, "--fast error {e}");
    }
    // and the run says which path it chose and why
    let o = ok(&[
        "bench",
        "network",
        "--arch",
        "spinn:16:0.125",
        "--batch",
        "1",
        "--iterations",
        "1",
        "--fast",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("--fast:") && text.contains(fast.name()),
        "{text}"
    );
}

#[test]
fn predict_without_model_uses_the_bundled_model() {
    let t = tempfile::tempdir().unwrap();
    let bundled = cdiphase::nn::bundled::load().unwrap();
    let [h, w, _] = bundled.spec.input;
    let inp = write_patterns(t.path(), 3, h, w);
    // the same bytes as a model file, named explicitly
    let file = t.path().join("bundled.safetensors");
    std::fs::write(&file, cdiphase::nn::bundled::bytes()).unwrap();
    let (a, b) = (t.path().join("a.cxi"), t.path().join("b.cxi"));
    ok(&["predict", s(&inp), "-o", s(&a), "--threads", "1", "-q"]);
    ok(&[
        "predict",
        s(&inp),
        "--model",
        s(&file),
        "-o",
        s(&b),
        "--threads",
        "1",
        "-q",
    ]);
    let (sa, da) = cdiphase::io::read_f32(&a, "entry_1/image_1/data").unwrap();
    let (sb, db) = cdiphase::io::read_f32(&b, "entry_1/image_1/data").unwrap();
    assert_eq!(sa, vec![3, h, w]);
    assert_eq!((sa, da), (sb, db));
    // the output records which model made it
    let name = cdiphase::io::read_string(&a, "entry_1/image_1/process_1/model").unwrap();
    assert_eq!(name, cdiphase::nn::bundled::label());
}

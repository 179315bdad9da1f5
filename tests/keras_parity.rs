//! Parity with Keras on the committed fixtures (tests/data/keras, written by
//! tools/keras/make_fixtures.py): every model x every file format, converted, stored as
//! safetensors f32, reloaded and run; max|y - keras| / max|keras| <= 1e-4. spinn_names/:
//! weights-only files whose layers carry Keras's default names (or explicit names unlike
//! the preset's) convert with `--arch` / `--arch-config` by order, and match Keras too.

use std::path::{Path, PathBuf};

use cdiphase::backend::cpu::nn::{Mode, Network, Options, Runner};
use cdiphase::nn::keras::{config_from_file, convert_matched, Arch, Matching};
use cdiphase::nn::presets::spinn;
use cdiphase::nn::spec::Preprocess;
use cdiphase::nn::store::{self, WeightDtype};

fn dir(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/keras")
        .join(model)
}

fn preprocess_of(d: &Path) -> Preprocess {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("meta.json")).unwrap()).unwrap();
    meta["preprocessing"].as_str().unwrap().parse().unwrap()
}

/// max relative error of the model in `file` against output.npy.
fn parity(model: &str, file: &str, mode: Mode, dtype: WeightDtype) -> f64 {
    let d = dir(model);
    let pre = preprocess_of(&d);
    let arch = match file {
        "model.weights.h5" => Arch::Given(config_from_file(&d.join("config.json"), pre).unwrap()),
        "weights_k2.h5" => Arch::Given(config_from_file(&d.join("config_k2.json"), pre).unwrap()),
        _ => Arch::FromFile,
    };
    parity_with(model, file, arch, mode, dtype).0
}

/// [`parity`] with the architecture given, and how the layers were matched.
fn parity_with(
    model: &str,
    file: &str,
    arch: Arch,
    mode: Mode,
    dtype: WeightDtype,
) -> (f64, Matching) {
    let d = dir(model);
    let pre = preprocess_of(&d);
    let (m, matching) =
        convert_matched(&d.join(file), arch, pre).unwrap_or_else(|e| panic!("{model}/{file}: {e}"));
    // through the model file, as `convert` + `predict` do
    let bytes = store::to_bytes(&m, dtype).unwrap();
    let m = store::from_bytes(Path::new("mem.safetensors"), &bytes).unwrap();
    assert_eq!(m.spec.preprocess, pre);
    let net = Network::new(&m, mode).unwrap();
    let input = cdiphase::io::npy::read(&d.join("input.npy")).unwrap();
    let want = cdiphase::io::npy::read(&d.join("output.npy")).unwrap();
    let n = input.shape[0];
    let px = input.shape[1] * input.shape[2];
    assert_eq!(&net.spec.input[..2], &input.shape[1..3]);
    assert_eq!(
        &want.shape[1..],
        net.output_shape.as_slice(),
        "{model}/{file}: output shape"
    );
    let mut x = input.to_f32();
    for p in x.chunks_mut(px) {
        pre.apply(p, None);
    }
    let mut r = Runner::new(
        &net,
        n,
        Options {
            threads: 2,
            mode,
            poison: true,
        },
    )
    .unwrap();
    let got = r.run(&x, n).unwrap();
    let want = want.to_f32();
    assert_eq!(got.len(), want.len());
    let mx = want.iter().fold(0.0f64, |a, &b| a.max(b.abs() as f64));
    let err = got
        .iter()
        .zip(&want)
        .map(|(&g, &w)| {
            assert!(g.is_finite());
            (g as f64 - w as f64).abs()
        })
        .fold(0.0, f64::max);
    (err / mx, matching)
}

const MODELS: [&str; 3] = ["spinn_small", "strided", "unet"];
const FILES: [&str; 5] = [
    "model.h5",
    "model_k2.h5",
    "model.keras",
    "model.weights.h5",
    "weights_k2.h5",
];

#[test]
fn every_model_every_format_f32() {
    for m in MODELS {
        for f in FILES {
            let e = parity(m, f, Mode::F32, WeightDtype::F32);
            eprintln!("{m:12} {f:18} f32 max rel err {e:.2e}");
            assert!(e <= 1e-4, "{m}/{f}: max rel err {e}");
        }
    }
}

#[test]
fn fast_mode_and_half_weights_stay_close() {
    for m in MODELS {
        let e = parity(m, "model.keras", Mode::Winograd, WeightDtype::F32);
        eprintln!("{m:12} winograd max rel err {e:.2e}");
        assert!(e <= 1e-4, "{m}: winograd max rel err {e}");
        // half-precision storage: rounding of the weights only (f16 ~5e-4, bf16 ~4e-3 rel.)
        let e16 = parity(m, "model.keras", Mode::F32, WeightDtype::F16);
        let eb16 = parity(m, "model.keras", Mode::F32, WeightDtype::Bf16);
        eprintln!("{m:12} f16 weights {e16:.2e}, bf16 weights {eb16:.2e}");
        assert!(e16 > 0.0 && e16 < 2e-2, "{m}: f16 {e16}");
        assert!(eb16 > 0.0 && eb16 < 1e-1, "{m}: bf16 {eb16}");
    }
}

/// The weight files of spinn_names/ (meta.json `files` ending in .h5).
fn names_files() -> Vec<String> {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir("spinn_names").join("meta.json")).unwrap(),
    )
    .unwrap();
    let files: Vec<String> = meta["files"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|f| f.ends_with(".h5"))
        .cloned()
        .collect();
    assert_eq!(files.len(), 6, "{files:?}");
    files
}

/// The preset of spinn_names/ (`--arch spinn:16:0.0625`) and its `--arch-config`.
fn names_archs() -> [(&'static str, Arch); 2] {
    let d = dir("spinn_names");
    let pre = preprocess_of(&d);
    [
        (
            "--arch spinn:16:0.0625",
            Arch::Given(spinn(16, 0.0625, pre).unwrap()),
        ),
        (
            "--arch-config config.json",
            Arch::Given(config_from_file(&d.join("config.json"), pre).unwrap()),
        ),
    ]
}

#[test]
fn default_names_match_by_order_with_arch_and_arch_config() {
    // TF 2.x (tf_keras) and Keras 3 default names, fresh process and numbered on, and
    // explicit names unlike the preset's: none is the preset's, so all go by order
    for f in names_files() {
        for (label, arch) in names_archs() {
            let (e, how) = parity_with("spinn_names", &f, arch, Mode::F32, WeightDtype::F32);
            eprintln!("spinn_names {f:22} {label:27} {how:?} max rel err {e:.2e}");
            assert_eq!(how, Matching::ByOrder, "{f} {label}");
            assert!(e <= 1e-4, "{f} {label}: max rel err {e}");
        }
    }
}

#[test]
fn explicit_names_match_by_name() {
    // the explicitly named file with its own architecture
    let d = dir("spinn_names");
    let pre = preprocess_of(&d);
    let arch = Arch::Given(config_from_file(&d.join("named_config.json"), pre).unwrap());
    let (e, how) = parity_with(
        "spinn_names",
        "named.weights.h5",
        arch,
        Mode::F32,
        WeightDtype::F32,
    );
    eprintln!("spinn_names named.weights.h5 + named_config.json {how:?} {e:.2e}");
    assert_eq!(how, Matching::ByName);
    assert!(e <= 1e-4, "{e}");
    // a full legacy file with its own config (default names numbered on)
    let (e, how) = parity_with(
        "spinn_names",
        "k3_offset.h5",
        Arch::FromFile,
        Mode::F32,
        WeightDtype::F32,
    );
    assert_eq!(how, Matching::ByName);
    assert!(e <= 1e-4, "{e}");
    // the preset's own names (tools/keras/spinn.py), Keras 3 and Keras 2 weights-only
    let pre = preprocess_of(&dir("spinn_small"));
    for f in ["model.weights.h5", "weights_k2.h5"] {
        let arch = Arch::Given(spinn(32, 0.125, pre).unwrap());
        let (e, how) = parity_with("spinn_small", f, arch, Mode::F32, WeightDtype::F32);
        eprintln!("spinn_small {f} --arch spinn:32:0.125 {how:?} {e:.2e}");
        assert_eq!(how, Matching::ByName, "{f}");
        assert!(e <= 1e-4, "{f}: {e}");
    }
}

fn convert_err(model: &str, file: &str, arch: Arch) -> String {
    let d = dir(model);
    match convert_matched(&d.join(file), arch, preprocess_of(&d)) {
        Ok(_) => panic!("{model}/{file}: converted with the wrong architecture"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn wrong_architecture_names_the_layer_and_both_shapes() {
    let pre = Preprocess::Max;
    // width 1/8 instead of 1/16: the first convolution's kernel differs
    for f in ["k3_fresh.weights.h5", "tf2_fresh_weights.h5"] {
        let e = convert_err(
            "spinn_names",
            f,
            Arch::Given(spinn(16, 0.125, pre).unwrap()),
        );
        eprintln!("{f}: {e}");
        assert!(e.contains(f), "{e}");
        assert!(e.contains("layer 'conv2d_1' (Conv2D)"), "{e}");
        assert!(
            e.contains("[3, 3, 1, 4]") && e.contains("[3, 3, 1, 8]"),
            "{e}"
        );
        assert!(e.contains("matched by order"), "{e}");
    }
    // the size: the Dense layers differ (Flatten of 4x4x16 instead of 2x2x16)
    let e = convert_err(
        "spinn_names",
        "k3_offset.weights.h5",
        Arch::Given(spinn(32, 0.0625, pre).unwrap()),
    );
    eprintln!("{e}");
    assert!(e.contains("layer 'dense_1' (Dense)"), "{e}");
    assert!(e.contains("[64, 8]") && e.contains("[256, 8]"), "{e}");
    // explicit names: a shape mismatch found by name names both shapes too
    let e = convert_err(
        "spinn_small",
        "model.weights.h5",
        Arch::Given(spinn(32, 0.25, pre).unwrap()),
    );
    eprintln!("{e}");
    assert!(
        e.contains("layer 'conv2d_1' (Conv2D)") && e.contains("matched by name"),
        "{e}"
    );
    assert!(
        e.contains("[3, 3, 1, 8]") && e.contains("[3, 3, 1, 16]"),
        "{e}"
    );
}

#[test]
fn wrong_architecture_counts_are_an_error() {
    let pre = Preprocess::Max;
    let spinn16 = || Arch::Given(spinn(16, 0.0625, pre).unwrap());
    // Keras 3: per class (strided has 4 Conv2D, 4 Conv2DTranspose, no Dense)
    let e = convert_err("strided", "model.weights.h5", spinn16());
    eprintln!("{e}");
    assert!(e.contains("6 conv2d") && e.contains("4 conv2d"), "{e}");
    assert!(e.contains("counts differ"), "{e}");
    // legacy: in model order (unet has 12 layers with weights, spinn 15)
    let e = convert_err("unet", "weights_k2.h5", spinn16());
    eprintln!("{e}");
    assert!(
        e.contains("15 layers with weights") && e.contains("the file 12"),
        "{e}"
    );
    // and the other way round
    let d = dir("unet");
    let unet = Arch::Given(config_from_file(&d.join("config.json"), preprocess_of(&d)).unwrap());
    let e = convert_err("spinn_names", "tf2_fresh_weights.h5", unet);
    eprintln!("{e}");
    assert!(e.contains("counts differ"), "{e}");
}

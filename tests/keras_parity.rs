//! Parity with Keras on the committed fixtures (tests/data/keras, written by
//! tools/keras/make_fixtures.py): every model x every file format, converted, stored as
//! safetensors f32, reloaded and run; max|y - keras| / max|keras| <= 1e-4.

use std::path::{Path, PathBuf};

use cdiphase::backend::cpu::nn::{Mode, Network, Options, Runner};
use cdiphase::nn::keras::{config_from_file, convert, Arch};
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
    let m = convert(&d.join(file), arch, pre).unwrap_or_else(|e| panic!("{model}/{file}: {e}"));
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
    err / mx
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

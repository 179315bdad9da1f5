//! A whole network forward through the CUDA kernels under the emulator, against the CPU
//! engine and against Keras, on the committed fixture models (tests/data/keras).

use std::path::PathBuf;

use cdiphase::backend::emu::{EmuLauncher, ScheduleOrder};
use cdiphase::backend::gpu_forward::GpuNetwork;
use cdiphase::nn::cpu::{Mode, Network, Options, Runner};
use cdiphase::nn::keras::{convert, Arch};
use cdiphase::nn::spec::Preprocess;

fn dir(model: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/keras")
        .join(model)
}

fn preprocess_of(model: &str) -> Preprocess {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir(model).join("meta.json")).unwrap())
            .unwrap();
    meta["preprocessing"].as_str().unwrap().parse().unwrap()
}

fn max_rel(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let mx = want.iter().fold(0.0f64, |a, &b| a.max(b.abs() as f64));
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            assert!(g.is_finite(), "unwritten or non-finite output");
            (g as f64 - w as f64).abs()
        })
        .fold(0.0, f64::max)
        / mx
}

/// The paper's topology at 32x32 (conv, pool, dense, reshape, transposed conv, upsampling,
/// tanh) runs end to end on the emulated GPU kernels and matches the CPU engine and Keras,
/// in every schedule order.
#[test]
fn spinn_small_forward_matches_cpu_and_keras() {
    let model = "spinn_small";
    let pre = preprocess_of(model);
    let m = convert(&dir(model).join("model.h5"), Arch::FromFile, pre).unwrap();
    let input = cdiphase::io::npy::read(&dir(model).join("input.npy")).unwrap();
    let keras = cdiphase::io::npy::read(&dir(model).join("output.npy"))
        .unwrap()
        .to_f32();
    let n = input.shape[0];
    let px = input.shape[1] * input.shape[2];
    let mut x = input.to_f32();
    for p in x.chunks_mut(px) {
        pre.apply(p, None);
    }
    let net = Network::new(&m, Mode::F32).unwrap();
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
    let cpu = r.run(&x, n).unwrap().to_vec();
    for order in [
        ScheduleOrder::InOrder,
        ScheduleOrder::Reverse,
        ScheduleOrder::Random(11),
    ] {
        let l = EmuLauncher::new(order);
        let g = GpuNetwork::new(&l, &m).unwrap();
        let got = g.run(&x, n).unwrap();
        let e_cpu = max_rel(&got, &cpu);
        let e_keras = max_rel(&got, &keras);
        println!("{order:?}: max rel error vs CPU engine {e_cpu:.2e}, vs Keras {e_keras:.2e}");
        assert!(e_cpu < 1e-5, "{order:?}: emu vs CPU engine {e_cpu}");
        assert!(e_keras < 1e-4, "{order:?}: emu vs Keras {e_keras}");
    }
    // batch 1 gives the same first image
    let l = EmuLauncher::new(ScheduleOrder::InOrder);
    let g = GpuNetwork::new(&l, &m).unwrap();
    let one = g.run(&x[..px], 1).unwrap();
    assert!(max_rel(&one, &cpu[..one.len()]) < 1e-5);
    // a wrong input length is a shape error
    assert!(g.run(&x[..px - 1], 1).is_err());
}

/// Layers the kernels do not cover yet are refused up front, naming the layer.
#[test]
fn unsupported_layers_are_named() {
    for (model, what) in [("strided", "stride 1"), ("unet", "")] {
        let pre = preprocess_of(model);
        let m = convert(&dir(model).join("model.h5"), Arch::FromFile, pre).unwrap();
        let l = EmuLauncher::new(ScheduleOrder::InOrder);
        let e = match GpuNetwork::new(&l, &m) {
            Ok(_) => panic!("{model}: expected an unsupported layer"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("layer '") && e.contains("CPU engine"),
            "{model}: {e}"
        );
        assert!(e.contains(what), "{model}: {e}");
    }
}

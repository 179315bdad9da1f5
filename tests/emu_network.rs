//! A whole network forward through the CUDA kernels under the emulator, against the CPU
//! engine and against Keras, on the committed fixture models (tests/data/keras), and on
//! random-weight models that use every layer kind at awkward sizes (odd, prime, non-square,
//! channel counts that are not multiples of the kernels' 8-channel groups), batch 1 and
//! several. Each comparison uses a fresh `GpuNetwork`, whose layer buffers the emulator
//! NaN-poisons, so an element a kernel forgets to write fails it.

use std::path::PathBuf;

use cdiphase::backend::cpu::nn::{Mode, Network, Options, Runner};
use cdiphase::backend::gpu::emu::{EmuLauncher, ScheduleOrder};
use cdiphase::backend::gpu::network::GpuNetwork;
use cdiphase::nn::keras::{convert, Arch};
use cdiphase::nn::spec::{Activation, LayerSpec, ModelSpec, Op, Padding, Preprocess};
use cdiphase::nn::Model;

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

/// Relative norm error ||got - want|| / ||want||; every value must be finite (an unwritten,
/// NaN-poisoned element is not).
fn rel_norm(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "output {i} unwritten or non-finite: {g}");
        num += (g as f64 - w as f64).powi(2);
        den += (w as f64).powi(2);
    }
    (num / den.max(1e-300)).sqrt()
}

/// The CPU engine's output (f32 mode, one thread, poisoned arena) for `n` inputs.
fn cpu_forward(m: &Model, x: &[f32], n: usize) -> Vec<f32> {
    let net = Network::new(m, Mode::F32).unwrap();
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
    r.run(x, n).unwrap().to_vec()
}

/// Preprocessed fixture inputs, their count and the Keras output.
fn fixture(model: &str) -> (Model, Vec<f32>, usize, Vec<f32>) {
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
    (m, x, n, keras)
}

/// The strided fixture (Conv2D 5x5 stride 2 'same' with asymmetric padding, 'valid' and
/// strided 'valid' convolutions, floor max-pooling, Conv2DTranspose stride 2 'same' and
/// 'valid', stride 1 'same' 5x5 and 'valid' 3x3) and the U-Net fixture (Concatenate of an
/// upsampled and a skip branch, Dropout) run fully on the emulated kernels and match the CPU
/// engine and Keras, in every schedule order, batch 1 and the whole batch.
#[test]
fn strided_and_unet_fixtures_match_cpu_and_keras() {
    for model in ["strided", "unet"] {
        let (m, x, n, keras) = fixture(model);
        let cpu = cpu_forward(&m, &x, n);
        for order in ScheduleOrder::ALL {
            let l = EmuLauncher::new(order);
            let g = GpuNetwork::new(&l, &m).unwrap();
            let got = g.run(&x, n).unwrap();
            let e_cpu = rel_norm(&got, &cpu);
            let m_cpu = max_rel(&got, &cpu);
            let e_keras = max_rel(&got, &keras);
            println!(
                "{model} {order:?} batch {n}: vs CPU engine rel norm {e_cpu:.2e} (max rel \
                 {m_cpu:.2e}), vs Keras max rel {e_keras:.2e}"
            );
            assert!(
                e_cpu <= 1e-5,
                "{model} {order:?}: emu vs CPU engine {e_cpu}"
            );
            assert!(e_keras <= 1e-4, "{model} {order:?}: emu vs Keras {e_keras}");
        }
        // batch 1 on a fresh (poisoned) network: the last image
        let per = x.len() / n;
        let out = cpu.len() / n;
        let l = EmuLauncher::new(ScheduleOrder::Random(7));
        let g = GpuNetwork::new(&l, &m).unwrap();
        let one = g.run(&x[(n - 1) * per..], 1).unwrap();
        let e1 = rel_norm(&one, &cpu[(n - 1) * out..]);
        let k1 = max_rel(&one, &keras[(n - 1) * out..]);
        println!("{model} batch 1: vs CPU engine rel norm {e1:.2e}, vs Keras max rel {k1:.2e}");
        assert!(e1 <= 1e-5 && k1 <= 1e-4, "{model} batch 1: {e1} {k1}");
    }
}

fn layer(name: &str, inputs: &[&str], op: Op) -> LayerSpec {
    LayerSpec {
        name: name.into(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        op,
    }
}

fn conv(
    filters: usize,
    kernel: [usize; 2],
    strides: [usize; 2],
    padding: Padding,
    a: Activation,
) -> Op {
    Op::Conv2D {
        filters,
        kernel,
        strides,
        padding,
        activation: a,
        use_bias: true,
    }
}

fn convt(
    filters: usize,
    kernel: [usize; 2],
    strides: [usize; 2],
    padding: Padding,
    a: Activation,
    use_bias: bool,
) -> Op {
    Op::Conv2DTranspose {
        filters,
        kernel,
        strides,
        padding,
        activation: a,
        use_bias,
    }
}

fn pool(p: [usize; 2], s: [usize; 2], padding: Padding) -> Op {
    Op::MaxPooling2D {
        pool: p,
        strides: s,
        padding,
    }
}

fn spec(name: &str, input: [usize; 3], layers: Vec<LayerSpec>, output: &str) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        input_name: "input".into(),
        input,
        preprocess: Preprocess::Max,
        layers,
        output: output.into(),
    }
}

/// Deterministic inputs in [-1, 1).
fn inputs(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Every layer of `spec` as the model output in turn (so that a wrong early layer is not
/// hidden by a later one), batch 1 and `batch`, each on a fresh emulator network, against
/// the CPU engine. Returns the largest relative norm error.
fn check_model(spec: &ModelSpec, batch: usize, orders: &[ScheduleOrder]) -> f64 {
    let mut worst = 0.0f64;
    for out in &spec.layers {
        let mut s = spec.clone();
        s.output = out.name.clone();
        let m = Model::random(s, 0xC0FFEE).unwrap();
        let per: usize = spec.input.iter().product();
        for n in [1, batch] {
            let x = inputs(n * per, 17 + n as u64);
            let cpu = cpu_forward(&m, &x, n);
            for &order in orders {
                let l = EmuLauncher::new(order);
                let g = GpuNetwork::new(&l, &m).unwrap();
                let got = g.run(&x, n).unwrap();
                let e = rel_norm(&got, &cpu);
                assert!(
                    e <= 1e-5,
                    "model '{}', output '{}', batch {n}, {order:?}: rel norm error {e}",
                    spec.name,
                    out.name
                );
                worst = worst.max(e);
            }
        }
        println!(
            "{}: up to '{}' ({:?} -> {:?}) ok",
            spec.name,
            out.name,
            spec.input,
            m_shape(spec, &out.name)
        );
    }
    println!(
        "{}: worst rel norm error vs CPU engine {worst:.2e}",
        spec.name
    );
    worst
}

fn m_shape(spec: &ModelSpec, name: &str) -> Vec<usize> {
    spec.shapes().unwrap()[spec.index_of(name).unwrap()].clone()
}

/// Conv2D with strides, 'valid' padding, even and non-square kernels (the direct kernel), and
/// the tiled kernel's cases next to them (stride 1 'same' odd square, 1x1 'valid', and an
/// 11x11 'same' whose tiles do not fit in shared memory, which falls back to the direct one).
#[test]
fn conv2d_any_stride_kernel_and_padding() {
    use Activation::*;
    use Padding::*;
    let s = spec(
        "conv",
        [23, 17, 3],
        vec![
            // 23x17 -> ceil: 12x6, pads (1,2) before (TF: the extra one after)
            layer("c1", &["input"], conv(5, [4, 2], [2, 3], Same, Relu)),
            // tiled: stride 1 'same' 3x3, 9 filters (one full and one partial group)
            layer("c2", &["c1"], conv(9, [3, 3], [1, 1], Same, Tanh)),
            // 'valid' non-square: 12x6 -> 10x2
            layer("c3", &["c2"], conv(13, [3, 5], [1, 1], Valid, Linear)),
            // even 'same' at stride 1 (asymmetric padding 1 before, 2 after)
            layer("c4", &["c3"], conv(7, [4, 4], [1, 1], Same, Sigmoid)),
            // 1x1 'valid' (tiled)
            layer("c5", &["c4"], conv(3, [1, 1], [1, 1], Valid, Relu)),
            // strided 'valid': 10x2 -> 4x1
            layer("c6", &["c5"], conv(6, [3, 2], [2, 2], Valid, Tanh)),
            // from the input again: 7x3 strides (3, 1) 'same' -> 8x17
            layer("c7", &["input"], conv(8, [7, 3], [3, 1], Same, Linear)),
            // 11x11 'same' stride 1: the tiled kernel's shared memory is over 48 KiB
            layer("c8", &["c7"], conv(4, [11, 11], [1, 1], Same, Tanh)),
            // stride larger than the kernel, 'valid': 8x17 -> 3x5
            layer("c9", &["c8"], conv(2, [2, 1], [3, 4], Valid, Linear)),
        ],
        "c6",
    );
    check_model(&s, 4, &ScheduleOrder::ALL);
}

/// Conv2DTranspose with 'valid' and 'same' padding, non-square kernels, unequal strides,
/// kernels smaller than the stride, even kernels at stride 1, with and without bias.
#[test]
fn conv_transpose2d_any_stride_kernel_and_padding() {
    use Activation::*;
    use Padding::*;
    let s = spec(
        "convT",
        [5, 7, 3],
        vec![
            // 'valid' (3, 2) strides (2, 3): 5x7 -> 11x21
            layer(
                "t1",
                &["input"],
                convt(5, [3, 2], [2, 3], Valid, Relu, true),
            ),
            // 'same' (5, 3) strides (3, 2), no bias: 5x7 -> 15x14
            layer(
                "t2",
                &["input"],
                convt(9, [5, 3], [3, 2], Same, Tanh, false),
            ),
            // stride 1 'same' odd square: through the tiled convolution
            layer("t3", &["t2"], convt(4, [3, 3], [1, 1], Same, Linear, true)),
            // stride 1 'same' even: direct
            layer("t4", &["t3"], convt(6, [4, 4], [1, 1], Same, Sigmoid, true)),
            // stride 1 'valid' non-square: 15x14 -> 17x18
            layer("t5", &["t4"], convt(3, [3, 5], [1, 1], Valid, Relu, true)),
            // kernel smaller than the stride on one axis, 'valid': 5x7 -> 15x9
            layer(
                "t6",
                &["input"],
                convt(10, [1, 3], [3, 1], Valid, Linear, true),
            ),
            // and 'same' with k < s on both axes: 15x9 -> 30x27
            layer("t7", &["t6"], convt(2, [2, 2], [2, 3], Same, Tanh, true)),
        ],
        "t1",
    );
    check_model(&s, 3, &ScheduleOrder::ALL);
}

/// Concatenate (several inputs, one of them twice, different channel counts), stand-alone
/// Activation layers, max-pooling with general pool sizes, strides and padding, and
/// upsampling by unequal factors, then a Dense head on a flattened concatenation.
#[test]
fn concatenate_activation_pooling_upsampling() {
    use Activation::*;
    use Padding::*;
    let act = |a| Op::Activation { activation: a };
    let s = spec(
        "graph",
        [13, 11, 2],
        vec![
            layer("a", &["input"], conv(5, [3, 3], [1, 1], Same, Linear)),
            layer("relu", &["a"], act(Relu)),
            layer("tanh", &["a"], act(Tanh)),
            layer("sig", &["input"], act(Sigmoid)),
            layer("lin", &["sig"], act(Linear)),
            // 5 + 2 + 5 + 5 channels
            layer("cat", &["relu", "lin", "tanh", "relu"], Op::Concatenate),
            // 3x3 stride 2 'same' on 13x11: 7x6, padding 1 before
            layer("p1", &["cat"], pool([3, 3], [2, 2], Same)),
            // 2x3 strides (1, 2) 'valid': 13x11 -> 12x5
            layer("p2", &["cat"], pool([2, 3], [1, 2], Valid)),
            // 2x2 stride 2 'same' on odd sizes: 7x6 -> 4x3
            layer("p3", &["p1"], pool([2, 2], [2, 2], Same)),
            // 2x2 stride 2 'valid' (the fast kernel): 12x5 -> 6x2
            layer("p4", &["p2"], pool([2, 2], [2, 2], Valid)),
            // (3, 2) upsampling: 4x3 -> 12x6; (2, 3): 6x2 -> 12x6
            layer("u1", &["p3"], Op::UpSampling2D { size: [3, 2] }),
            layer("u2", &["p4"], Op::UpSampling2D { size: [2, 3] }),
            layer("cat2", &["u1", "u2"], Op::Concatenate),
            layer("drop", &["cat2"], Op::Dropout),
            layer("c", &["drop"], conv(3, [2, 3], [1, 1], Valid, Relu)),
            layer("flat", &["c"], Op::Flatten),
            layer(
                "d",
                &["flat"],
                Op::Dense {
                    units: 19,
                    activation: Linear,
                    use_bias: true,
                },
            ),
            layer("dact", &["d"], act(Tanh)),
            layer(
                "r",
                &["dact"],
                Op::Reshape {
                    target: vec![19, 1],
                },
            ),
            // channel concatenation of rank-2 values
            layer("cat3", &["r", "r"], Op::Concatenate),
        ],
        "cat3",
    );
    check_model(&s, 5, &ScheduleOrder::ALL);
}

/// The layer buffers are kept between runs and grow with the batch: a sequence of batch
/// sizes (down and up) on one network gives the CPU engine's values every time.
#[test]
fn buffers_are_reused_across_batches() {
    let (m, x, n, _) = fixture("unet");
    let per = x.len() / n;
    let l = EmuLauncher::new(ScheduleOrder::InOrder);
    let g = GpuNetwork::new(&l, &m).unwrap();
    let cpu = cpu_forward(&m, &x, n);
    let out = cpu.len() / n;
    for b in [2, 1, 3, 2, 3] {
        let got = g.run(&x[..b * per], b).unwrap();
        let e = rel_norm(&got, &cpu[..b * out]);
        assert!(e <= 1e-5, "batch {b}: {e}");
    }
    // a bad input length is still a shape error, and the network still runs afterwards
    assert!(g.run(&x[..per + 1], 1).is_err());
    assert!(rel_norm(&g.run(&x[..per], 1).unwrap(), &cpu[..out]) <= 1e-5);
}

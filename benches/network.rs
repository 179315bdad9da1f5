//! Criterion benches of the network engine: one 3x3 convolution layer (64 -> 64 channels at
//! 64x64, both algorithms) and the paper's full network at batch 4 (f32 and Winograd).

use cdiphase::backend::cpu::nn::{Mode, Network, Options, Runner};
use cdiphase::nn::spec::{Activation, LayerSpec, ModelSpec, Op, Padding, Preprocess};
use cdiphase::nn::Model;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};

fn conv_layer() -> Model {
    let spec = ModelSpec {
        name: "conv".into(),
        input_name: "input".into(),
        input: [64, 64, 64],
        preprocess: Preprocess::Max,
        layers: vec![LayerSpec {
            name: "c".into(),
            inputs: vec!["input".into()],
            op: Op::Conv2D {
                filters: 64,
                kernel: [3, 3],
                strides: [1, 1],
                padding: Padding::Same,
                activation: Activation::Relu,
                use_bias: true,
            },
        }],
        output: "c".into(),
    };
    Model::random(spec, 1).unwrap()
}

fn bench(g: &mut BenchmarkGroup<WallTime>, name: &str, model: &Model, batch: usize, mode: Mode) {
    let net = Network::new(model, mode).unwrap();
    let opts = Options {
        threads: 2,
        mode,
        poison: false,
    };
    let mut r = Runner::new(&net, batch, opts).unwrap();
    let x = cdiphase::bench::network::bench_input(&net, batch, 1);
    g.throughput(Throughput::Elements(batch as u64));
    g.bench_function(name, |b| {
        b.iter(|| std::hint::black_box(r.run(&x, batch).unwrap().len()))
    });
}

fn network(c: &mut Criterion) {
    let mut g = c.benchmark_group("network");
    g.sample_size(10);
    let conv = conv_layer();
    bench(&mut g, "conv3x3_64x64x64_b8_f32", &conv, 8, Mode::F32);
    bench(
        &mut g,
        "conv3x3_64x64x64_b8_winograd",
        &conv,
        8,
        Mode::Winograd,
    );
    let spinn = Model::random(
        cdiphase::nn::presets::spinn(128, 1.0, Preprocess::Max).unwrap(),
        1,
    )
    .unwrap();
    bench(&mut g, "spinn_128_b4_f32", &spinn, 4, Mode::F32);
    bench(&mut g, "spinn_128_b4_winograd", &spinn, 4, Mode::Winograd);
    g.finish();
}

criterion_group!(benches, network);
criterion_main!(benches);

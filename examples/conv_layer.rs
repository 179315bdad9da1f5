//! One 3x3 'same' convolution layer of the CPU engine in f32, timed alone, for kernel
//! work: `cargo run --release --example conv_layer -- H W CIN COUT [BATCH] [THREADS]
//! [REPEAT] [conv|up|pool|spinn]` (`up`: an UpSampling2D before it, `pool`: a 2x2
//! MaxPooling2D after it, `spinn`: the paper's whole network instead, sizes ignored, with
//! its per-layer times). Prints the best of REPEAT runs. The machine's speed drifts by tens
//! of percent between seconds here, so compare two kernels by alternating them, not by
//! two separate runs. `MODES=f32,bf16-avx512,...` compiles the network once per mode
//! (f32, f32-direct, f32-gemm, winograd, bf16, bf16-avx512) and alternates them batch by batch.
use cdiphase::backend::cpu::nn::{Mode, Network, Options, Runner};
use cdiphase::nn::spec::{Activation, LayerSpec, ModelSpec, Op, Padding, Preprocess};
use cdiphase::nn::Model;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| a.get(i).map_or(d, |s| s.parse().expect("a number"));
    let (h, w, cin, cout) = (num(0, 32), num(1, 32), num(2, 256), num(3, 256));
    let (batch, threads, repeat) = (num(4, 16), num(5, 1), num(6, 5));
    let kind = a.get(7).map_or("conv", |s| s.as_str());
    let conv = Op::Conv2D {
        filters: cout,
        kernel: [3, 3],
        strides: [1, 1],
        padding: Padding::Same,
        activation: Activation::Relu,
        use_bias: true,
    };
    let mut layers = Vec::new();
    let mut prev = "input".to_string();
    let mut push = |name: &str, op: Op, layers: &mut Vec<LayerSpec>| {
        layers.push(LayerSpec {
            name: name.into(),
            inputs: vec![prev.clone()],
            op,
        });
        prev = name.into();
    };
    match kind {
        "up" => {
            push("up", Op::UpSampling2D { size: [2, 2] }, &mut layers);
            push("c", conv, &mut layers);
        }
        "pool" => {
            push("c", conv, &mut layers);
            push(
                "p",
                Op::MaxPooling2D {
                    pool: [2, 2],
                    strides: [2, 2],
                    padding: Padding::Valid,
                },
                &mut layers,
            );
        }
        _ => push("c", conv, &mut layers),
    }
    let spec = ModelSpec {
        name: "layer".into(),
        input_name: "input".into(),
        input: [h, w, cin],
        preprocess: Preprocess::Max,
        output: layers.last().expect("a layer").name.clone(),
        layers,
    };
    let spec = if kind == "spinn" {
        cdiphase::nn::presets::spinn(128, 1.0, Preprocess::Max).expect("spinn")
    } else {
        spec
    };
    let model = Model::random(spec, 1).expect("model");
    // AB_ENV=NAME[=VALUE]: a second network compiled with the environment variable NAME set
    // (the engine's A/B switches, e.g. CDIPHASE_NO_SUBPIXEL or CDIPHASE_WINO_MIN=64), run
    // alternately with the first
    let modes: Vec<Mode> = std::env::var("MODES")
        .unwrap_or_else(|_| "f32".into())
        .split(',')
        .map(|m| match m.trim() {
            "f32" => Mode::F32,
            "f32-direct" => Mode::F32Direct,
            "f32-gemm" => Mode::Gemm,
            "winograd" => Mode::Winograd,
            "bf16" => Mode::Bf16,
            "bf16-avx512" => Mode::Bf16Avx512,
            other => panic!("MODES: unknown mode {other}"),
        })
        .collect();
    let mut nets: Vec<Network> = modes
        .iter()
        .map(|&m| {
            let t = std::time::Instant::now();
            let n = Network::new(&model, m).expect("network");
            eprintln!(
                "{} compiled in {:.1} ms",
                m.name(),
                t.elapsed().as_secs_f64() * 1e3
            );
            n
        })
        .collect();
    if let Ok(ab) = std::env::var("AB_ENV") {
        // NAME or NAME=VALUE (default 1)
        let (var, val) = ab.split_once('=').unwrap_or((ab.as_str(), "1"));
        std::env::set_var(var, val);
        nets.push(Network::new(&model, modes[0]).expect("network"));
        std::env::remove_var(var);
    }
    let mut runners: Vec<Runner> = nets
        .iter()
        .map(|n| {
            let opts = Options {
                threads,
                mode: n.mode,
                poison: false,
            };
            Runner::new(n, batch, opts).expect("runner")
        })
        .collect();
    let x = cdiphase::bench::network::bench_input(&nets[0], batch, 1);
    // the layers' nominal FLOPs (as `bench network` counts them)
    let flop = nets[0].flop_per_image * batch as f64;
    let mut best = vec![f64::MAX; runners.len()];
    let mut layers: Vec<Vec<(String, f64)>> = vec![Vec::new(); runners.len()];
    for rep in 0..=repeat {
        for (k, r) in runners.iter_mut().enumerate() {
            r.reset_profile();
            let t = std::time::Instant::now();
            std::hint::black_box(r.run(&x, batch).expect("run").len());
            let e = t.elapsed().as_secs_f64();
            if rep == 0 {
                continue; // warm-up
            }
            best[k] = best[k].min(e);
            let prof = r.profile();
            if layers[k].is_empty() {
                layers[k] = prof.iter().map(|p| (p.0.clone(), p.1)).collect();
            }
            for (m, p) in layers[k].iter_mut().zip(&prof) {
                m.1 = m.1.min(p.1);
            }
        }
    }
    for (k, b) in best.iter().enumerate() {
        let what = if k < modes.len() {
            format!(" [{}]", nets[k].mode.name())
        } else {
            " (AB_ENV set)".to_string()
        };
        println!(
            "{kind} {h}x{w} {cin}->{cout} batch {batch} threads {threads}{what}: {:.2} ms, \
             {:.1} GFLOP/s",
            b * 1e3,
            flop / b / 1e9
        );
        if layers[k].len() > 1 {
            for (n, t) in &layers[k] {
                println!("  {n:40} {:8.1} ms (best)", t * 1e3);
            }
        }
    }
}

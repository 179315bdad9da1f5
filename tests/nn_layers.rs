//! Every layer type of the network engine against float64 references written here (naive
//! loops, Keras definitions), at awkward sizes, batch 1 and 7, by relative norm error.

mod common;

use cdiphase::backend::cpu::nn::{Mode, Network, Options, Runner};
use cdiphase::nn::spec::{Activation, LayerSpec, ModelSpec, Op, Padding, Preprocess};
use cdiphase::nn::Model;
use common::refs::rel_err;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next() as f32).collect()
    }
}

fn act64(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Linear => x,
        Activation::Relu => x.max(0.0),
        Activation::Tanh => x.tanh(),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
    }
}

/// TF 'same' leading pad.
fn pad_before(len: usize, k: usize, s: usize) -> usize {
    let out = len.div_ceil(s);
    ((out - 1) * s + k).saturating_sub(len) / 2
}

/// Keras Conv2D: cross-correlation, kernel (kh,kw,in,out).
#[allow(clippy::too_many_arguments)]
fn conv_ref(
    x: &[f64],
    n: usize,
    h: usize,
    w: usize,
    ci: usize,
    k: &[f32],
    b: &[f32],
    kh: usize,
    kw: usize,
    co: usize,
    s: [usize; 2],
    p: Padding,
    act: Activation,
) -> (Vec<f64>, usize, usize) {
    let (ho, wo, pt, pl) = match p {
        Padding::Same => (
            h.div_ceil(s[0]),
            w.div_ceil(s[1]),
            pad_before(h, kh, s[0]),
            pad_before(w, kw, s[1]),
        ),
        Padding::Valid => ((h - kh) / s[0] + 1, (w - kw) / s[1] + 1, 0, 0),
    };
    let mut o = vec![0.0; n * ho * wo * co];
    for im in 0..n {
        for y in 0..ho {
            for xo in 0..wo {
                for c in 0..co {
                    let mut acc = b[c] as f64;
                    for dy in 0..kh {
                        for dx in 0..kw {
                            let r = (y * s[0] + dy) as isize - pt as isize;
                            let q = (xo * s[1] + dx) as isize - pl as isize;
                            if r < 0 || q < 0 || r >= h as isize || q >= w as isize {
                                continue;
                            }
                            for i in 0..ci {
                                acc += x[((im * h + r as usize) * w + q as usize) * ci + i]
                                    * k[((dy * kw + dx) * ci + i) * co + c] as f64;
                            }
                        }
                    }
                    o[((im * ho + y) * wo + xo) * co + c] = act64(act, acc);
                }
            }
        }
    }
    (o, ho, wo)
}

/// Keras Conv2DTranspose by its scatter definition: kernel (kh,kw,out,in); input pixel i
/// adds to output o = i*s + t - pad for every tap t. Output length H*s ('same') or
/// H*s + max(k - s, 0) ('valid'); pad = max(k - s, 0) / 2 ('same') or 0.
#[allow(clippy::too_many_arguments)]
fn convt_ref(
    x: &[f64],
    n: usize,
    h: usize,
    w: usize,
    ci: usize,
    k: &[f32],
    b: &[f32],
    kh: usize,
    kw: usize,
    co: usize,
    s: [usize; 2],
    p: Padding,
    act: Activation,
) -> (Vec<f64>, usize, usize) {
    let (ho, wo, pt, pl) = match p {
        Padding::Same => (
            h * s[0],
            w * s[1],
            kh.saturating_sub(s[0]) / 2,
            kw.saturating_sub(s[1]) / 2,
        ),
        Padding::Valid => (
            h * s[0] + kh.saturating_sub(s[0]),
            w * s[1] + kw.saturating_sub(s[1]),
            0,
            0,
        ),
    };
    let mut o = vec![0.0; n * ho * wo * co];
    for im in 0..n {
        for r in 0..h {
            for q in 0..w {
                for dy in 0..kh {
                    for dx in 0..kw {
                        let y = (r * s[0] + dy) as isize - pt as isize;
                        let xo = (q * s[1] + dx) as isize - pl as isize;
                        if y < 0 || xo < 0 || y >= ho as isize || xo >= wo as isize {
                            continue;
                        }
                        for c in 0..co {
                            let mut acc = 0.0;
                            for i in 0..ci {
                                acc += x[((im * h + r) * w + q) * ci + i]
                                    * k[((dy * kw + dx) * co + c) * ci + i] as f64;
                            }
                            o[((im * ho + y as usize) * wo + xo as usize) * co + c] += acc;
                        }
                    }
                }
            }
        }
    }
    for v in o.chunks_mut(co) {
        for (c, v) in v.iter_mut().enumerate() {
            *v = act64(act, *v + b[c] as f64);
        }
    }
    (o, ho, wo)
}

/// 2x2 stride-2 max pooling of `n` images (h x w x c, h and w even), float64.
fn maxpool2_ref(v: &[f64], n: usize, h: usize, w: usize, c: usize) -> Vec<f64> {
    let (hp, wp) = (h / 2, w / 2);
    let mut o = vec![0.0f64; n * hp * wp * c];
    for im in 0..n {
        for y in 0..hp {
            for q in 0..wp {
                for k in 0..c {
                    let at = |yy: usize, qq: usize| v[((im * h + yy) * w + qq) * c + k];
                    o[((im * hp + y) * wp + q) * c + k] = at(2 * y, 2 * q)
                        .max(at(2 * y, 2 * q + 1))
                        .max(at(2 * y + 1, 2 * q))
                        .max(at(2 * y + 1, 2 * q + 1));
                }
            }
        }
    }
    o
}

fn one_layer(input: [usize; 3], op: Op) -> ModelSpec {
    model_spec(input, vec![layer("l", &["input"], op)], "l")
}

fn layer(name: &str, inputs: &[&str], op: Op) -> LayerSpec {
    LayerSpec {
        name: name.into(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        op,
    }
}

/// A model "t" on an input named "input", max preprocessing.
fn model_spec(input: [usize; 3], layers: Vec<LayerSpec>, output: &str) -> ModelSpec {
    ModelSpec {
        name: "t".into(),
        input_name: "input".into(),
        input,
        preprocess: Preprocess::Max,
        layers,
        output: output.into(),
    }
}

/// A 3x3 convolution with bias.
fn conv3(filters: usize, strides: usize, padding: Padding, activation: Activation) -> Op {
    Op::Conv2D {
        filters,
        kernel: [3, 3],
        strides: [strides, strides],
        padding,
        activation,
        use_bias: true,
    }
}

/// A 2x2 stride-2 'valid' max pooling.
fn pool2() -> Op {
    Op::MaxPooling2D {
        pool: [2, 2],
        strides: [2, 2],
        padding: Padding::Valid,
    }
}

fn run(model: &Model, x: &[f32], n: usize, mode: Mode, threads: usize) -> Vec<f32> {
    run_profiled(model, x, n, mode, threads).0
}

/// Layer (name, algorithm) pairs of a run.
type Profile = Vec<(String, &'static str)>;

/// Run `n` inputs on a NaN-poisoned arena; the output and the layers' (name, algorithm).
fn run_profiled(
    model: &Model,
    x: &[f32],
    n: usize,
    mode: Mode,
    threads: usize,
) -> (Vec<f32>, Profile) {
    let net = Network::new(model, mode).unwrap();
    let mut r = Runner::new(
        &net,
        n,
        Options {
            threads,
            mode,
            poison: true,
        },
    )
    .unwrap();
    let y = r.run(x, n).unwrap().to_vec();
    let prof = r.profile().into_iter().map(|(l, _, a)| (l, a)).collect();
    (y, prof)
}

#[test]
fn conv2d_matches_reference() {
    let mut rng = Rng(1);
    // (h, w, ci, co, k, stride, padding, act, batch)
    let cases = [
        (
            13,
            11,
            3,
            5,
            [3, 3],
            [1, 1],
            Padding::Same,
            Activation::Relu,
            1,
        ),
        (
            17,
            9,
            20,
            7,
            [3, 3],
            [1, 1],
            Padding::Same,
            Activation::Tanh,
            7,
        ), // shifted GEMM
        (
            17,
            9,
            20,
            7,
            [3, 3],
            [1, 1],
            Padding::Valid,
            Activation::Linear,
            2,
        ),
        (
            11,
            13,
            17,
            6,
            [5, 2],
            [1, 1],
            Padding::Same,
            Activation::Sigmoid,
            3,
        ), // even kw
        (
            33,
            28,
            1,
            8,
            [5, 5],
            [2, 2],
            Padding::Same,
            Activation::Relu,
            7,
        ),
        (
            12,
            10,
            12,
            16,
            [3, 3],
            [2, 2],
            Padding::Valid,
            Activation::Relu,
            1,
        ),
        (
            7,
            5,
            16,
            3,
            [1, 1],
            [1, 1],
            Padding::Same,
            Activation::Sigmoid,
            2,
        ),
        (
            19,
            23,
            18,
            4,
            [3, 3],
            [2, 1],
            Padding::Same,
            Activation::Linear,
            2,
        ),
    ];
    for (h, w, ci, co, k, s, p, act, n) in cases {
        let spec = one_layer(
            [h, w, ci],
            Op::Conv2D {
                filters: co,
                kernel: k,
                strides: s,
                padding: p,
                activation: act,
                use_bias: true,
            },
        );
        let model = Model::random(spec, 3).unwrap();
        let x = rng.vec(n * h * w * ci);
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let (want, _, _) = conv_ref(
            &x64,
            n,
            h,
            w,
            ci,
            &model.weights["l/kernel"].data,
            &model.weights["l/bias"].data,
            k[0],
            k[1],
            co,
            s,
            p,
            act,
        );
        for threads in [1, 2] {
            let got = run(&model, &x, n, Mode::F32, threads);
            let e = rel_err(&got, &want);
            assert!(
                e < 1e-5,
                "conv {h}x{w}x{ci}->{co} k{k:?} s{s:?} {p:?}: rel err {e}"
            );
        }
    }
}

#[test]
fn conv2d_transpose_matches_scatter_definition() {
    let mut rng = Rng(2);
    let cases = [
        (
            6,
            5,
            12,
            12,
            [3, 3],
            [2, 2],
            Padding::Same,
            Activation::Linear,
            7,
        ),
        (
            5,
            4,
            16,
            8,
            [5, 5],
            [2, 2],
            Padding::Valid,
            Activation::Relu,
            1,
        ),
        (
            13,
            11,
            20,
            6,
            [5, 5],
            [1, 1],
            Padding::Same,
            Activation::Tanh,
            2,
        ), // shifted GEMM
        (
            13,
            11,
            8,
            4,
            [3, 3],
            [1, 1],
            Padding::Valid,
            Activation::Relu,
            3,
        ),
        (
            7,
            9,
            17,
            5,
            [3, 3],
            [1, 1],
            Padding::Same,
            Activation::Relu,
            2,
        ),
        (
            7,
            6,
            3,
            2,
            [2, 2],
            [2, 2],
            Padding::Same,
            Activation::Sigmoid,
            2,
        ),
        (
            4,
            5,
            3,
            2,
            [1, 1],
            [3, 2],
            Padding::Valid,
            Activation::Linear,
            1,
        ),
        (
            5,
            7,
            16,
            3,
            [4, 3],
            [3, 2],
            Padding::Same,
            Activation::Linear,
            2,
        ),
    ];
    for (h, w, ci, co, k, s, p, act, n) in cases {
        let spec = one_layer(
            [h, w, ci],
            Op::Conv2DTranspose {
                filters: co,
                kernel: k,
                strides: s,
                padding: p,
                activation: act,
                use_bias: true,
            },
        );
        let shapes = spec.shapes().unwrap();
        let model = Model::random(spec, 4).unwrap();
        let x = rng.vec(n * h * w * ci);
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let (want, ho, wo) = convt_ref(
            &x64,
            n,
            h,
            w,
            ci,
            &model.weights["l/kernel"].data,
            &model.weights["l/bias"].data,
            k[0],
            k[1],
            co,
            s,
            p,
            act,
        );
        assert_eq!(shapes[1], vec![ho, wo, co]);
        for threads in [1, 2] {
            let got = run(&model, &x, n, Mode::F32, threads);
            let e = rel_err(&got, &want);
            assert!(
                e < 1e-5,
                "convT {h}x{w}x{ci}->{co} k{k:?} s{s:?} {p:?}: rel err {e}"
            );
        }
    }
}

#[test]
fn winograd_matches_reference_closely() {
    let mut rng = Rng(3);
    for (h, w, ci, co, n) in [(13, 11, 16, 5, 1), (16, 16, 32, 32, 7), (9, 17, 24, 1, 2)] {
        for transpose in [false, true] {
            let op = |act| {
                if transpose {
                    Op::Conv2DTranspose {
                        filters: co,
                        kernel: [3, 3],
                        strides: [1, 1],
                        padding: Padding::Same,
                        activation: act,
                        use_bias: true,
                    }
                } else {
                    Op::Conv2D {
                        filters: co,
                        kernel: [3, 3],
                        strides: [1, 1],
                        padding: Padding::Same,
                        activation: act,
                        use_bias: true,
                    }
                }
            };
            let model = Model::random(one_layer([h, w, ci], op(Activation::Relu)), 5).unwrap();
            let x = rng.vec(n * h * w * ci);
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let f = if transpose { convt_ref } else { conv_ref };
            let (want, _, _) = f(
                &x64,
                n,
                h,
                w,
                ci,
                &model.weights["l/kernel"].data,
                &model.weights["l/bias"].data,
                3,
                3,
                co,
                [1, 1],
                Padding::Same,
                Activation::Relu,
            );
            let got = run(&model, &x, n, Mode::Winograd, 2);
            let e = rel_err(&got, &want);
            assert!(
                e < 1e-5,
                "winograd {h}x{w}x{ci}->{co} transpose={transpose}: rel err {e}"
            );
        }
    }
}

#[test]
fn pool_upsample_dense_flatten_reshape_concat_dropout_activation() {
    let mut rng = Rng(4);
    let (h, w, c, n) = (13, 10, 3, 7);
    // input -> maxpool(3x2, s 2x2, same) -> a ; input -> up(2x3) -> maxpool 2x3 valid -> b
    // concat(a', b') needs equal H,W: use pool(2,2 valid) on input (6x5) and up(1x1)... keep
    // it explicit: a = maxpool 2x2 valid (6x5x3); b = up 2x1 of maxpool 4x2 s(4,2) same
    // (4x5 -> 8x5? no). Use: b = conv-free path: up(2,1) of maxpool(4,2) on input -> 3x5 ->
    // 6x5x3. Then concat [a, b, a] -> 6x5x9, dropout, flatten, dense 7 sigmoid, reshape 7x1,
    // dense 4 tanh (on the last axis), activation relu.
    let l = layer;
    let spec = ModelSpec {
        name: "misc".into(),
        input_name: "input".into(),
        input: [h, w, c],
        preprocess: Preprocess::Max,
        layers: vec![
            l(
                "a",
                &["input"],
                Op::MaxPooling2D {
                    pool: [2, 2],
                    strides: [2, 2],
                    padding: Padding::Valid,
                },
            ),
            l(
                "p",
                &["input"],
                Op::MaxPooling2D {
                    pool: [4, 2],
                    strides: [4, 2],
                    padding: Padding::Same,
                },
            ),
            l("b", &["p"], Op::UpSampling2D { size: [2, 1] }),
            l("cat", &["a", "b", "a"], Op::Concatenate),
            l("drop", &["cat"], Op::Dropout),
            l("flat", &["drop"], Op::Flatten),
            l(
                "d1",
                &["flat"],
                Op::Dense {
                    units: 7,
                    activation: Activation::Sigmoid,
                    use_bias: true,
                },
            ),
            l("r", &["d1"], Op::Reshape { target: vec![7, 1] }),
            l(
                "d2",
                &["r"],
                Op::Dense {
                    units: 4,
                    activation: Activation::Tanh,
                    use_bias: false,
                },
            ),
            l(
                "act",
                &["d2"],
                Op::Activation {
                    activation: Activation::Relu,
                },
            ),
        ],
        output: "act".into(),
    };
    // 'same' pooling 13 by 4 gives 4 rows, upsampled 8, but a is 6x5: concat must refuse,
    // naming the layer
    let err = Model::random(spec.clone(), 1).unwrap_err().to_string();
    assert!(err.contains("'cat'") && err.contains("[8, 5, 3]"), "{err}");
    // make them agree: pool 2x2 valid on 13 -> 6; 'p' pool 4x2 valid s(4,2) -> 3x5 -> up 2 -> 6x5
    let mut spec = spec;
    spec.layers[1].op = Op::MaxPooling2D {
        pool: [4, 2],
        strides: [4, 2],
        padding: Padding::Valid,
    };
    let shapes = spec.shapes().unwrap();
    assert_eq!(shapes[1], vec![6, 5, 3]);
    assert_eq!(shapes[2], vec![3, 5, 3]);
    assert_eq!(shapes[4], vec![6, 5, 9]);
    let model = Model::random(spec, 6).unwrap();
    let x = rng.vec(n * h * w * c);
    let xi = |im: usize, r: usize, q: usize, ch: usize| x[((im * h + r) * w + q) * c + ch] as f64;
    let pool = |im: usize, r0: usize, q0: usize, ph: usize, pw: usize, ch: usize| {
        let mut m = f64::NEG_INFINITY;
        for r in r0..(r0 + ph).min(h) {
            for q in q0..(q0 + pw).min(w) {
                m = m.max(xi(im, r, q, ch));
            }
        }
        m
    };
    let d1k = &model.weights["d1/kernel"].data;
    let d1b = &model.weights["d1/bias"].data;
    let d2k = &model.weights["d2/kernel"].data;
    let mut want = Vec::new();
    for im in 0..n {
        let mut flat: Vec<f64> = Vec::new();
        for y in 0..6 {
            for xo in 0..5 {
                let a: Vec<f64> = (0..c).map(|ch| pool(im, 2 * y, 2 * xo, 2, 2, ch)).collect();
                let b: Vec<f64> = (0..c)
                    .map(|ch| pool(im, 4 * (y / 2), 2 * xo, 4, 2, ch))
                    .collect();
                flat.extend(&a);
                flat.extend(&b);
                flat.extend(&a);
            }
        }
        assert_eq!(flat.len(), 6 * 5 * 9);
        let d1: Vec<f64> = (0..7)
            .map(|u| {
                let s: f64 = flat
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * d1k[i * 7 + u] as f64)
                    .sum();
                act64(Activation::Sigmoid, s + d1b[u] as f64)
            })
            .collect();
        for v in d1 {
            for &k in &d2k[..4] {
                want.push(act64(Activation::Tanh, v * k as f64).max(0.0));
            }
        }
    }
    for threads in [1, 2] {
        let got = run(&model, &x, n, Mode::F32, threads);
        let e = rel_err(&got, &want);
        assert!(e < 1e-5, "misc layers: rel err {e}");
    }
}

#[test]
fn upsample_and_pool_exact() {
    let mut rng = Rng(5);
    let (h, w, c, n) = (5, 3, 2, 1);
    let spec = ModelSpec {
        name: "u".into(),
        input_name: "input".into(),
        input: [h, w, c],
        preprocess: Preprocess::Max,
        layers: vec![
            LayerSpec {
                name: "up".into(),
                inputs: vec!["input".into()],
                op: Op::UpSampling2D { size: [3, 2] },
            },
            LayerSpec {
                name: "mp".into(),
                inputs: vec!["up".into()],
                op: Op::MaxPooling2D {
                    pool: [2, 2],
                    strides: [2, 2],
                    padding: Padding::Same,
                },
            },
        ],
        output: "up".into(),
    };
    let model = Model::random(spec.clone(), 1).unwrap();
    let x = rng.vec(n * h * w * c);
    let got = run(&model, &x, n, Mode::F32, 1);
    for y in 0..15 {
        for q in 0..6 {
            for ch in 0..c {
                assert_eq!(got[(y * 6 + q) * c + ch], x[((y / 3) * w + q / 2) * c + ch]);
            }
        }
    }
    // 'same' max pooling of 15x6 by 2: 8x3, the last row pools one row only
    let mut spec2 = spec;
    spec2.output = "mp".into();
    let model = Model::random(spec2, 1).unwrap();
    let got = run(&model, &x, n, Mode::F32, 2);
    assert_eq!(got.len(), 8 * 3 * c);
    for y in 0..8 {
        for q in 0..3 {
            for ch in 0..c {
                let mut m = f32::NEG_INFINITY;
                for r in 2 * y..(2 * y + 2).min(15) {
                    for s in 2 * q..2 * q + 2 {
                        m = m.max(x[((r / 3) * w + s / 2) * c + ch]);
                    }
                }
                assert_eq!(got[(y * 3 + q) * c + ch], m);
            }
        }
    }
}

#[test]
fn spinn_small_matches_layer_by_layer_reference() {
    // the paper's topology at 16x16, 1/8 width: check the chain end to end in float64
    let spec = cdiphase::nn::presets::spinn(16, 0.125, Preprocess::Max).unwrap();
    let model = Model::random(spec.clone(), 9).unwrap();
    let n = 3;
    let mut rng = Rng(6);
    let x: Vec<f32> = (0..n * 256).map(|_| rng.next().abs() as f32).collect();
    let mut cur: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let mut shape = [16usize, 16, 1];
    for l in &spec.layers {
        let kw = |s: &str| &model.weights[&format!("{}/{s}", l.name)].data;
        match &l.op {
            Op::Conv2D {
                filters,
                activation,
                ..
            } => {
                let (o, ho, wo) = conv_ref(
                    &cur,
                    n,
                    shape[0],
                    shape[1],
                    shape[2],
                    kw("kernel"),
                    kw("bias"),
                    3,
                    3,
                    *filters,
                    [1, 1],
                    Padding::Same,
                    *activation,
                );
                cur = o;
                shape = [ho, wo, *filters];
            }
            Op::Conv2DTranspose {
                filters,
                activation,
                ..
            } => {
                let (o, ho, wo) = convt_ref(
                    &cur,
                    n,
                    shape[0],
                    shape[1],
                    shape[2],
                    kw("kernel"),
                    kw("bias"),
                    3,
                    3,
                    *filters,
                    [1, 1],
                    Padding::Same,
                    *activation,
                );
                cur = o;
                shape = [ho, wo, *filters];
            }
            Op::MaxPooling2D { .. } => {
                let [h, w, c] = shape;
                let mut o = vec![0.0; n * (h / 2) * (w / 2) * c];
                for im in 0..n {
                    for y in 0..h / 2 {
                        for q in 0..w / 2 {
                            for ch in 0..c {
                                let g = |r: usize, s: usize| cur[((im * h + r) * w + s) * c + ch];
                                o[((im * (h / 2) + y) * (w / 2) + q) * c + ch] = g(2 * y, 2 * q)
                                    .max(g(2 * y + 1, 2 * q))
                                    .max(g(2 * y, 2 * q + 1))
                                    .max(g(2 * y + 1, 2 * q + 1));
                            }
                        }
                    }
                }
                cur = o;
                shape = [h / 2, w / 2, c];
            }
            Op::UpSampling2D { .. } => {
                let [h, w, c] = shape;
                let mut o = vec![0.0; n * h * w * c * 4];
                for im in 0..n {
                    for y in 0..2 * h {
                        for q in 0..2 * w {
                            for ch in 0..c {
                                o[((im * 2 * h + y) * 2 * w + q) * c + ch] =
                                    cur[((im * h + y / 2) * w + q / 2) * c + ch];
                            }
                        }
                    }
                }
                cur = o;
                shape = [2 * h, 2 * w, c];
            }
            Op::Dense {
                units, activation, ..
            } => {
                let din = cur.len() / n;
                let (k, b) = (kw("kernel"), kw("bias"));
                let mut o = vec![0.0; n * units];
                for im in 0..n {
                    for u in 0..*units {
                        let s: f64 = (0..din)
                            .map(|i| cur[im * din + i] * k[i * units + u] as f64)
                            .sum();
                        o[im * units + u] = act64(*activation, s + b[u] as f64);
                    }
                }
                cur = o;
                shape = [1, 1, *units];
            }
            Op::Flatten => {}
            Op::Reshape { target } => shape = [target[0], target[1], target[2]],
            _ => unreachable!(),
        }
    }
    for (mode, tol) in [(Mode::F32, 1e-5), (Mode::Winograd, 1e-4)] {
        let got = run(&model, &x, n, mode, 2);
        let e = rel_err(&got, &cur);
        assert!(e < tol, "spinn 16x16 {mode:?}: rel err {e}");
    }
}

/// The direct kernels (f32, bf16, dot) at every tile shape they have: 1, 2 and 4 vectors
/// of output channels with channel tails, the compile-time channel counts and a runtime
/// one, a 1-channel input, fewer than 16 outputs (dot kernel, with an input-channel tail),
/// even and 5x5 kernels, 'valid' padding, transposed stride-2 layers (a dilated P), tiles
/// that span several rows (narrow images), batch 1 and 5, 1 and 2 threads. Each against
/// the float64 reference, for `Mode::F32` (direct where the CPU has AVX-512), `Mode::Gemm`
/// and, where the CPU has AVX512_BF16, `Mode::Bf16`; the layer's algorithm is checked so
/// that a silent fallback cannot pass for the kernel under test.
/// (h, w, ci, co, kernel, transpose stride (0: Conv2D), padding, activation, batch)
type Case = (
    usize,
    usize,
    usize,
    usize,
    [usize; 2],
    usize,
    Padding,
    Activation,
    usize,
);

#[test]
fn direct_kernels_match_reference() {
    let mut rng = Rng(9);
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    let bf16 = avx512 && std::arch::is_x86_feature_detected!("avx512bf16");
    let amx = cdiphase::backend::cpu::nn::amx_available();
    eprintln!("direct kernels: avx512f {avx512}, avx512bf16 {bf16}, amx {amx}");
    // (h, w, ci, co, k, transpose stride, padding, act, batch)
    let cases: &[Case] = &[
        (
            13,
            11,
            16,
            16,
            [3, 3],
            0,
            Padding::Same,
            Activation::Relu,
            3,
        ),
        (9, 17, 20, 33, [3, 3], 0, Padding::Same, Activation::Tanh, 2),
        (7, 30, 64, 64, [3, 3], 0, Padding::Same, Activation::Relu, 1),
        (
            5,
            6,
            32,
            70,
            [3, 3],
            0,
            Padding::Same,
            Activation::Linear,
            5,
        ),
        (11, 13, 1, 24, [5, 5], 0, Padding::Same, Activation::Relu, 2),
        (
            6,
            5,
            128,
            128,
            [3, 3],
            0,
            Padding::Same,
            Activation::Relu,
            2,
        ),
        (
            4,
            4,
            256,
            32,
            [3, 3],
            0,
            Padding::Same,
            Activation::Sigmoid,
            2,
        ),
        (
            10,
            9,
            24,
            48,
            [2, 5],
            0,
            Padding::Valid,
            Activation::Relu,
            2,
        ),
        (
            23,
            19,
            48,
            3,
            [3, 3],
            0,
            Padding::Same,
            Activation::Sigmoid,
            2,
        ),
        (
            17,
            21,
            40,
            1,
            [3, 3],
            0,
            Padding::Same,
            Activation::Linear,
            1,
        ),
        (8, 7, 16, 16, [3, 3], 2, Padding::Same, Activation::Relu, 2),
        (5, 9, 32, 1, [3, 3], 2, Padding::Same, Activation::Tanh, 3),
        (6, 6, 17, 19, [3, 3], 1, Padding::Valid, Activation::Relu, 1),
        // even widths >= 14: the f32 kernel's compact tiles, which wrap from one row to the
        // next after K = 2, 4, ..., 12 pixels (16 wide: every K), runtime and compile-time
        // channel counts, a channel tail, a band ending inside a tile
        (9, 16, 20, 40, [3, 3], 0, Padding::Same, Activation::Relu, 2),
        (
            5,
            22,
            256,
            64,
            [3, 3],
            0,
            Padding::Same,
            Activation::Relu,
            1,
        ),
        (
            7,
            14,
            128,
            32,
            [3, 3],
            0,
            Padding::Same,
            Activation::Linear,
            3,
        ),
        (6, 18, 32, 48, [3, 3], 1, Padding::Same, Activation::Relu, 2),
        (
            4,
            20,
            16,
            32,
            [3, 3],
            0,
            Padding::Valid,
            Activation::Relu,
            2,
        ),
        // wide kernels: a wrapping last tile reads 12 + kw - 1 pixels into the band's zero
        // slack (32 pixels), so kw = 19 is the widest that runs compact, and kw = 21 takes
        // the flat tiling
        (
            3,
            20,
            16,
            32,
            [3, 19],
            0,
            Padding::Same,
            Activation::Relu,
            2,
        ),
        (
            3,
            24,
            16,
            32,
            [1, 21],
            0,
            Padding::Same,
            Activation::Relu,
            1,
        ),
    ];
    for &(h, w, ci, co, k, ts, p, act, n) in cases {
        let op = if ts == 0 {
            Op::Conv2D {
                filters: co,
                kernel: k,
                strides: [1, 1],
                padding: p,
                activation: act,
                use_bias: true,
            }
        } else {
            Op::Conv2DTranspose {
                filters: co,
                kernel: k,
                strides: [ts, ts],
                padding: p,
                activation: act,
                use_bias: true,
            }
        };
        let model = Model::random(one_layer([h, w, ci], op), 11).unwrap();
        let x = rng.vec(n * h * w * ci);
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let f = if ts == 0 { conv_ref } else { convt_ref };
        let s = if ts == 0 { [1, 1] } else { [ts, ts] };
        let (want, _, _) = f(
            &x64,
            n,
            h,
            w,
            ci,
            &model.weights["l/kernel"].data,
            &model.weights["l/bias"].data,
            k[0],
            k[1],
            co,
            s,
            p,
            act,
        );
        let what = format!("{h}x{w}x{ci}->{co} k{k:?} transpose-stride {ts} {p:?} {act:?} n{n}");
        let mut modes = vec![(Mode::F32Direct, 1e-5), (Mode::Gemm, 1e-5)];
        if bf16 {
            modes.push((Mode::Bf16Avx512, 1.5e-2));
        }
        if amx || bf16 {
            modes.push((Mode::Bf16, 1.5e-2));
        }
        for (mode, tol) in modes {
            for threads in [1, 2] {
                let (got, prof) = run_profiled(&model, &x, n, mode, threads);
                let e = rel_err(&got, &want);
                assert!(e < tol, "{what} {mode:?} threads {threads}: rel err {e}");
                let algo = prof[0].1;
                let expect = match mode {
                    Mode::Gemm => None,
                    _ if !avx512 => None,
                    _ if co < 16 => Some("direct-dot"),
                    Mode::Bf16 if ci >= 16 && amx => Some("amx-bf16"),
                    // wide 3x3 layers: f32 Winograd beats the AVX512_BF16 kernels
                    Mode::Bf16 | Mode::Bf16Avx512
                        if k == [3, 3] && ts <= 1 && ci >= 64 && co >= 64 =>
                    {
                        Some("winograd")
                    }
                    Mode::Bf16 | Mode::Bf16Avx512 if ci >= 16 => Some("direct-bf16"),
                    _ => Some("direct-f32"),
                };
                if let Some(a) = expect {
                    assert_eq!(algo, a, "{what} {mode:?}");
                } else {
                    assert!(!algo.starts_with("direct"), "{what} {mode:?}: {algo}");
                }
                if algo == "direct-bf16" || algo == "amx-bf16" {
                    // the inputs and weights really were rounded to bf16
                    assert!(e > 1e-5, "{what}: bf16 error {e} is f32-exact");
                }
            }
        }
    }
}

/// `Mode::F32` runs the 3x3 stride-1 layers with >= 64 input and output channels with
/// Winograd F(4x4, 3x3) (where the CPU has AVX-512F): against the float64 reference at
/// sizes that leave partial 4x4 tiles in both directions, a single tile, a 1-row image, odd
/// channel counts, transposed layers, a fused pooling, batch 1 to 9, 1 and 2 threads, the
/// outputs poisoned before the kernel. The bound (1e-5 relative L2, against < 1e-6 asked of
/// the direct kernels) is 4x the largest error measured here (2.6e-6); one transform
/// coefficient off by 1 % gives 3.8e-3.
#[test]
fn f32_mode_runs_winograd_f4x4_on_wide_layers() {
    let mut rng = Rng(41);
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    // (h, w, ci, co, transpose, pool, n)
    let cases = [
        (7, 13, 64, 64, false, false, 1),
        (17, 9, 67, 80, true, false, 3),
        (12, 10, 64, 128, false, true, 2),
        (4, 4, 128, 64, false, false, 9),
        (1, 6, 64, 64, true, false, 2),
        (30, 22, 64, 66, false, true, 1),
        (9, 31, 96, 64, true, false, 2),
    ];
    let mut worst = 0.0f64;
    for (h, w, ci, co, transpose, pool, n) in cases {
        let conv = if transpose {
            Op::Conv2DTranspose {
                filters: co,
                kernel: [3, 3],
                strides: [1, 1],
                padding: Padding::Same,
                activation: Activation::Relu,
                use_bias: true,
            }
        } else {
            conv3(co, 1, Padding::Same, Activation::Linear)
        };
        let mut layers = vec![layer("c", &["input"], conv)];
        if pool {
            layers.push(layer("p", &["c"], pool2()));
        }
        let spec = model_spec([h, w, ci], layers, if pool { "p" } else { "c" });
        let model = Model::random(spec, 8).unwrap();
        let x = rng.vec(n * h * w * ci);
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let f = if transpose { convt_ref } else { conv_ref };
        let act = if transpose {
            Activation::Relu
        } else {
            Activation::Linear
        };
        let (cv, ho, wo) = f(
            &x64,
            n,
            h,
            w,
            ci,
            &model.weights["c/kernel"].data,
            &model.weights["c/bias"].data,
            3,
            3,
            co,
            [1, 1],
            Padding::Same,
            act,
        );
        let want = if pool {
            let mut o = vec![0.0f64; n * (ho / 2) * (wo / 2) * co];
            for im in 0..n {
                for y in 0..ho / 2 {
                    for q in 0..wo / 2 {
                        for c in 0..co {
                            let at = |dy: usize, dq: usize| {
                                cv[((im * ho + 2 * y + dy) * wo + 2 * q + dq) * co + c]
                            };
                            o[((im * (ho / 2) + y) * (wo / 2) + q) * co + c] =
                                at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1));
                        }
                    }
                }
            }
            o
        } else {
            cv
        };
        for threads in [1, 2] {
            let (got, prof) = run_profiled(&model, &x, n, Mode::F32, threads);
            let e = rel_err(&got, &want);
            let what =
                format!("{h}x{w}x{ci}->{co} transpose {transpose} pool {pool} n{n} t{threads}");
            assert!(e < 1e-5, "{what}: rel err {e}");
            worst = worst.max(e);
            if avx512 {
                assert_eq!(prof[0].1, "winograd", "{what}");
                // the direct kernels are exact to ~1e-7: Winograd's error is its own
                let (d, _) = run_profiled(&model, &x, n, Mode::F32Direct, threads);
                assert!(rel_err(&d, &want) < 1e-6, "{what}: direct");
            }
        }
    }
    eprintln!("winograd F(4x4, 3x3) worst relative L2 error: {worst:.2e}");
}

/// An UpSampling2D read only by a convolution is folded into it (the convolution reads the
/// small input repeated); the result must equal upsample-then-convolve in float64, for
/// every convolution algorithm: direct f32, GEMM, Winograd, bf16, im2col (stride 2), a
/// transposed stride-2 layer (dilated P), uneven factors, batch 1 and 3.
#[test]
fn upsampling_fused_into_the_next_convolution() {
    let mut rng = Rng(21);
    // (h, w, ci, co, up, conv stride, transpose, mode, tol)
    let cases = [
        (5, 7, 16, 32, [2, 2], 1, false, Mode::F32, 1e-5),
        (6, 4, 20, 24, [2, 3], 1, false, Mode::Gemm, 1e-5),
        (4, 5, 32, 16, [2, 2], 1, false, Mode::Winograd, 1e-4),
        (5, 5, 32, 32, [3, 2], 1, true, Mode::F32, 1e-5),
        (7, 6, 3, 8, [2, 2], 2, false, Mode::F32, 1e-5),
        (3, 4, 16, 16, [2, 2], 2, true, Mode::F32, 1e-5),
        (5, 3, 16, 40, [2, 2], 1, false, Mode::Bf16, 1.5e-2),
        (7, 4, 40, 33, [2, 3], 1, true, Mode::Bf16, 1.5e-2),
        (9, 6, 16, 3, [2, 2], 1, false, Mode::F32, 1e-5),
        (4, 7, 24, 1, [3, 3], 1, true, Mode::F32, 1e-5),
        (6, 5, 20, 17, [1, 2], 1, false, Mode::F32, 1e-5),
        // sub-pixel classes 16 and 14 wide: compact tiles
        (5, 16, 32, 40, [2, 2], 1, true, Mode::F32, 1e-5),
        (3, 14, 64, 32, [2, 2], 1, false, Mode::F32, 1e-5),
        // wide enough for Winograd in f32: an upsampled reader goes back to direct
        // sub-pixel classes
        (5, 6, 64, 72, [2, 2], 1, false, Mode::F32, 1e-5),
        (3, 4, 128, 128, [2, 2], 1, true, Mode::Bf16Avx512, 1.5e-2),
        // the AVX512_BF16 kernel's sub-pixel classes: odd pair counts, a channel tail,
        // compact tiles (16 and 14 wide classes), one vector per tile
        (5, 16, 34, 40, [2, 2], 1, true, Mode::Bf16Avx512, 1.5e-2),
        (3, 14, 64, 32, [2, 2], 1, false, Mode::Bf16Avx512, 1.5e-2),
        (4, 7, 17, 16, [3, 2], 1, false, Mode::Bf16Avx512, 1.5e-2),
        (6, 5, 20, 33, [1, 2], 1, true, Mode::Bf16Avx512, 1.5e-2),
    ];
    let bf16_ok = cdiphase::backend::cpu::nn::amx_available()
        || (std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16"));
    for (h, w, ci, co, up, st, transpose, mode, tol) in cases {
        if matches!(mode, Mode::Bf16 | Mode::Bf16Avx512) && !bf16_ok {
            continue;
        }
        let conv = if transpose {
            Op::Conv2DTranspose {
                filters: co,
                kernel: [3, 3],
                strides: [st, st],
                padding: Padding::Same,
                activation: Activation::Relu,
                use_bias: true,
            }
        } else {
            conv3(co, st, Padding::Same, Activation::Relu)
        };
        let layers = vec![
            layer("up", &["input"], Op::UpSampling2D { size: up }),
            layer("l", &["up"], conv),
        ];
        let spec = model_spec([h, w, ci], layers, "l");
        let model = Model::random(spec, 4).unwrap();
        let n = if st == 2 { 1 } else { 3 };
        let x = rng.vec(n * h * w * ci);
        let (hu, wu) = (h * up[0], w * up[1]);
        let mut xu = vec![0.0f64; n * hu * wu * ci];
        for im in 0..n {
            for y in 0..hu {
                for q in 0..wu {
                    for c in 0..ci {
                        xu[((im * hu + y) * wu + q) * ci + c] =
                            x[((im * h + y / up[0]) * w + q / up[1]) * ci + c] as f64;
                    }
                }
            }
        }
        let f = if transpose { convt_ref } else { conv_ref };
        let (want, _, _) = f(
            &xu,
            n,
            hu,
            wu,
            ci,
            &model.weights["l/kernel"].data,
            &model.weights["l/bias"].data,
            3,
            3,
            co,
            [st, st],
            Padding::Same,
            Activation::Relu,
        );
        let (got, prof) = run_profiled(&model, &x, n, mode, 2);
        let e = rel_err(&got, &want);
        let what = format!("{h}x{w}x{ci} up{up:?} -> {co} s{st} transpose {transpose} {mode:?}");
        assert!(e < tol, "{what}: rel err {e}");
        assert_eq!(prof.len(), 1, "{what}: not fused: {prof:?}");
        assert_eq!(prof[0].0, "up+l", "{what}");
        // stride-1 f32 layers on the direct kernels take the sub-pixel form
        if matches!(mode, Mode::Bf16 | Mode::Bf16Avx512) && prof[0].1.contains("bf16") {
            // the inputs and weights really were rounded to bf16
            assert!(e > 1e-5, "{what}: bf16 error {e} is f32-exact");
        }
        if (mode == Mode::F32 && st == 1 && std::arch::is_x86_feature_detected!("avx512f"))
            || (matches!(mode, Mode::Bf16 | Mode::Bf16Avx512) && st == 1 && bf16_ok && ci >= 16)
        {
            assert!(prof[0].1.ends_with("-subpixel"), "{what}: {}", prof[0].1);
        }
    }
}

/// A 2x2 stride-2 max-pooling after a convolution (its only reader) is folded into it; the
/// result must equal convolve-then-pool in float64 for every algorithm, and a pooling whose
/// input another layer also reads (a U-Net skip) must not be folded.
#[test]
fn pooling_fused_into_the_previous_convolution() {
    let mut rng = Rng(31);
    // (h, w, ci, co, conv stride, act, mode, tol)
    let cases = [
        (10, 14, 16, 32, 1, Activation::Relu, Mode::F32, 1e-5),
        (6, 8, 20, 24, 1, Activation::Tanh, Mode::Gemm, 1e-5),
        (8, 12, 32, 16, 1, Activation::Relu, Mode::Winograd, 1e-4),
        (12, 10, 1, 8, 1, Activation::Linear, Mode::F32, 1e-5),
        (12, 16, 3, 16, 2, Activation::Relu, Mode::F32, 1e-5),
        (14, 6, 16, 40, 1, Activation::Relu, Mode::Bf16, 1.5e-2),
        (40, 36, 16, 3, 1, Activation::Sigmoid, Mode::F32, 1e-5),
    ];
    let bf16_ok = cdiphase::backend::cpu::nn::amx_available()
        || (std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16"));
    for (h, w, ci, co, st, act, mode, tol) in cases {
        if mode == Mode::Bf16 && !bf16_ok {
            continue;
        }
        for skip in [false, true] {
            let mut layers = vec![
                layer("c", &["input"], conv3(co, st, Padding::Same, act)),
                layer("p", &["c"], pool2()),
            ];
            let mut output = "p";
            if skip {
                // the conv output is also read after the pooling: upsample back and concat
                layers.push(layer("u", &["p"], Op::UpSampling2D { size: [2, 2] }));
                layers.push(layer("cat", &["u", "c"], Op::Concatenate));
                output = "cat";
            }
            let spec = model_spec([h, w, ci], layers, output);
            let model = Model::random(spec, 6).unwrap();
            let n = 3;
            let x = rng.vec(n * h * w * ci);
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let (cv, ho, wo) = conv_ref(
                &x64,
                n,
                h,
                w,
                ci,
                &model.weights["c/kernel"].data,
                &model.weights["c/bias"].data,
                3,
                3,
                co,
                [st, st],
                Padding::Same,
                act,
            );
            let (hp, wp) = (ho / 2, wo / 2);
            let pooled = maxpool2_ref(&cv, n, ho, wo, co);
            let want = if skip {
                let mut o = vec![0.0f64; n * ho * wo * 2 * co];
                for im in 0..n {
                    for y in 0..ho {
                        for q in 0..wo {
                            let px = (im * ho + y) * wo + q;
                            for c in 0..co {
                                o[px * 2 * co + c] =
                                    pooled[((im * hp + y / 2) * wp + q / 2) * co + c];
                                o[px * 2 * co + co + c] = cv[px * co + c];
                            }
                        }
                    }
                }
                o
            } else {
                pooled
            };
            let (got, prof) = run_profiled(&model, &x, n, mode, 2);
            let e = rel_err(&got, &want);
            let what = format!("{h}x{w}x{ci} -> {co} s{st} {act:?} {mode:?} skip {skip}");
            assert!(e < tol, "{what}: rel err {e}");
            let names: Vec<String> = prof.into_iter().map(|p| p.0).collect();
            if skip {
                assert!(names.contains(&"c".to_string()), "{what}: fused: {names:?}");
            } else {
                assert_eq!(names, ["c+p"], "{what}");
            }
        }
    }
}

/// A cheap first convolution (kh*kw*cin <= 27) whose output only the next plain direct
/// convolution reads is computed inside that one's bands (`ConvStep::pre`), for an f32, a
/// bf16/AMX and a dot-product (< 16 outputs) reader: the result must equal the two layers in float64, the layer list must
/// show the fusion, and a producer that is too expensive, or whose output a skip
/// connection also reads, stays a layer.
#[test]
fn cheap_convolution_fused_into_the_next() {
    let mut rng = Rng(41);
    // (h, w, ci, c1, co, consumer padding, pool after, act of the first, skip, fused)
    #[rustfmt::skip]
    let cases = [
        (14, 18, 1, 24, 40, Padding::Same, true, Activation::Relu, false, true),
        (11, 16, 3, 32, 32, Padding::Same, false, Activation::Tanh, false, true),
        (10, 15, 2, 16, 33, Padding::Valid, false, Activation::Relu, false, true),
        (5, 7, 1, 16, 16, Padding::Same, false, Activation::Linear, false, true),
        // a dot-product reader (fewer than 16 outputs)
        (9, 12, 1, 16, 3, Padding::Same, false, Activation::Relu, false, true),
        // Winograd readers (from 64 channels, in f32 and beside AVX512_BF16)
        (14, 18, 1, 64, 64, Padding::Same, true, Activation::Relu, false, true),
        (9, 11, 3, 64, 80, Padding::Valid, false, Activation::Tanh, false, true),
        (6, 9, 2, 128, 128, Padding::Same, false, Activation::Relu, false, true),
        // not fused: a reduction of 36; the producer's output also read by a skip
        (9, 13, 4, 16, 20, Padding::Same, false, Activation::Relu, false, false),
        (8, 14, 1, 16, 32, Padding::Same, false, Activation::Relu, true, false),
    ];
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    let bf16_ok = cdiphase::backend::cpu::nn::amx_available()
        || (avx512 && std::arch::is_x86_feature_detected!("avx512bf16"));
    for (h, w, ci, c1, co, pad, pool, act, skip, fused) in cases {
        let mut layers = vec![
            layer("a", &["input"], conv3(c1, 1, Padding::Same, act)),
            layer("b", &["a"], conv3(co, 1, pad, Activation::Relu)),
        ];
        let mut output = "b";
        if pool {
            layers.push(layer("p", &["b"], pool2()));
            output = "p";
        }
        if skip {
            layers.push(layer("cat", &["b", "a"], Op::Concatenate));
            output = "cat";
        }
        let spec = model_spec([h, w, ci], layers, output);
        let model = Model::random(spec, 8).unwrap();
        let n = 3;
        let x = rng.vec(n * h * w * ci);
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let wt = |k: &str| &model.weights[k].data;
        let (a, _, _) = conv_ref(
            &x64,
            n,
            h,
            w,
            ci,
            wt("a/kernel"),
            wt("a/bias"),
            3,
            3,
            c1,
            [1, 1],
            Padding::Same,
            act,
        );
        let (b, hb, wb) = conv_ref(
            &a,
            n,
            h,
            w,
            c1,
            wt("b/kernel"),
            wt("b/bias"),
            3,
            3,
            co,
            [1, 1],
            pad,
            Activation::Relu,
        );
        let want: Vec<f64> = if pool {
            maxpool2_ref(&b, n, hb, wb, co)
        } else if skip {
            let px = n * h * w;
            let mut o = Vec::with_capacity(px * (co + c1));
            for p in 0..px {
                o.extend_from_slice(&b[p * co..(p + 1) * co]);
                o.extend_from_slice(&a[p * c1..(p + 1) * c1]);
            }
            o
        } else {
            b
        };
        let what = format!("{h}x{w}x{ci} -> {c1} -> {co} {pad:?} pool {pool} skip {skip}");
        // the reader on the f32 kernel, and on the bf16 one (AMX where there is one)
        let mut modes = vec![(Mode::F32, 1e-5)];
        if bf16_ok {
            modes.push((Mode::Bf16, 1.5e-2));
        }
        for (mode, tol) in modes {
            for threads in [1, 2] {
                let (got, prof) = run_profiled(&model, &x, n, mode, threads);
                let e = rel_err(&got, &want);
                assert!(e < tol, "{what} {mode:?} threads {threads}: rel err {e}");
                let names: Vec<String> = prof.iter().map(|p| p.0.clone()).collect();
                let first = if pool { "a+b+p" } else { "a+b" };
                if fused && avx512 {
                    assert_eq!(names[0], first, "{what} {mode:?}: {names:?}");
                    let amx = cdiphase::backend::cpu::nn::amx_available();
                    let wino = c1 >= 64 && co >= 64 && (mode == Mode::F32 || !amx);
                    let algo = match mode {
                        _ if co < 16 => "direct-dot",
                        _ if wino => "winograd",
                        Mode::F32 => "direct-f32",
                        _ if cdiphase::backend::cpu::nn::amx_available() => "amx-bf16",
                        _ => "direct-bf16",
                    };
                    assert_eq!(prof[0].1, algo, "{what} {mode:?}");
                } else {
                    assert_eq!(names[0], "a", "{what} {mode:?}: fused: {names:?}");
                }
            }
        }
    }
}

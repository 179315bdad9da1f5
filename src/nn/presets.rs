//! The paper's encoder-decoder (DESIGN.md section 4) as a [`ModelSpec`], with the layer
//! names of `tools/keras/spinn.py` (`conv2d_1`, ..., `conv2d_transpose_7`), so that
//! weights-only Keras files of that script load by name with `--arch spinn`; files with
//! other names (Keras defaults) load by order (`keras::Matching`).

use super::spec::{Activation, LayerSpec, ModelSpec, Op, Padding, Preprocess};
use crate::{Error, Result};

/// Parameters of the paper's network.
pub const SPINN_PARAMS: usize = 19_721_217;

/// A preset by name, as `convert --arch` and the Python package's `convert(arch=...)` spell
/// it: `spinn` (128x128, width 1), `spinn:SIZE` or `spinn:SIZE:WIDTH`.
pub fn parse(name: &str, preprocess: Preprocess) -> Result<ModelSpec> {
    let mut it = name.split(':');
    let bad = |what: &str| Error::Config(format!("--arch '{name}': {what}"));
    match it.next() {
        Some("spinn") => {
            let size = match it.next() {
                Some(v) => v.parse().map_err(|_| bad("size"))?,
                None => 128,
            };
            let width = match it.next() {
                Some(v) => v.parse().map_err(|_| bad("width"))?,
                None => 1.0,
            };
            spinn(size, width, preprocess)
        }
        _ => Err(bad("unknown preset (known: spinn, spinn:SIZE[:WIDTH])")),
    }
}

/// The largest input side of the preset (16 times the paper's).
pub const MAX_INPUT: usize = 2048;
/// The largest channel multiplier of the preset.
pub const MAX_WIDTH: f64 = 16.0;

/// The paper's network for an `s x s` input (s a multiple of 8), channel counts scaled by
/// `width` (1.0: 64/128/256), bottleneck Dense of `128*width` units.
pub fn spinn(input_size: usize, width: f64, preprocess: Preprocess) -> Result<ModelSpec> {
    if input_size == 0 || !input_size.is_multiple_of(8) || input_size > MAX_INPUT {
        return Err(Error::Config(format!(
            "spinn: input size must be a positive multiple of 8 up to {MAX_INPUT}, got {input_size}"
        )));
    }
    if !(width.is_finite() && width > 0.0 && width <= MAX_WIDTH) {
        return Err(Error::Config(format!(
            "spinn: width must be a number in (0, {MAX_WIDTH}], got {width}"
        )));
    }
    let ch = |c: usize| ((c as f64 * width).round() as usize).max(1);
    let (c1, c2, c3) = (ch(64), ch(128), ch(256));
    let s8 = input_size / 8;
    let mut counts: std::collections::HashMap<&str, usize> = Default::default();
    let mut name = |k: &'static str| {
        let n = counts.entry(k).or_insert(0);
        *n += 1;
        format!("{k}_{n}")
    };
    let mut layers: Vec<LayerSpec> = Vec::new();
    let mut prev = "input".to_string();
    let push = |layers: &mut Vec<LayerSpec>, prev: &mut String, n: String, op: Op| {
        layers.push(LayerSpec {
            name: n.clone(),
            inputs: vec![prev.clone()],
            op,
        });
        *prev = n;
    };
    let conv = |f: usize, act: Activation| Op::Conv2D {
        filters: f,
        kernel: [3, 3],
        strides: [1, 1],
        padding: Padding::Same,
        activation: act,
        use_bias: true,
    };
    let convt = |f: usize, act: Activation| Op::Conv2DTranspose {
        filters: f,
        kernel: [3, 3],
        strides: [1, 1],
        padding: Padding::Same,
        activation: act,
        use_bias: true,
    };
    for c in [c1, c2, c3] {
        for _ in 0..2 {
            push(
                &mut layers,
                &mut prev,
                name("conv2d"),
                conv(c, Activation::Relu),
            );
        }
        push(
            &mut layers,
            &mut prev,
            name("max_pooling2d"),
            Op::MaxPooling2D {
                pool: [2, 2],
                strides: [2, 2],
                padding: Padding::Valid,
            },
        );
    }
    push(&mut layers, &mut prev, name("flatten"), Op::Flatten);
    for units in [ch(128), s8 * s8 * c3] {
        push(
            &mut layers,
            &mut prev,
            name("dense"),
            Op::Dense {
                units,
                activation: Activation::Relu,
                use_bias: true,
            },
        );
    }
    push(
        &mut layers,
        &mut prev,
        name("reshape"),
        Op::Reshape {
            target: vec![s8, s8, c3],
        },
    );
    for c in [c3, c2, c1] {
        for _ in 0..2 {
            push(
                &mut layers,
                &mut prev,
                name("conv2d_transpose"),
                convt(c, Activation::Relu),
            );
        }
        push(
            &mut layers,
            &mut prev,
            name("up_sampling2d"),
            Op::UpSampling2D { size: [2, 2] },
        );
    }
    push(
        &mut layers,
        &mut prev,
        name("conv2d_transpose"),
        convt(1, Activation::Tanh),
    );
    Ok(ModelSpec {
        name: "spinn".into(),
        input_name: "input".into(),
        input: [input_size, input_size, 1],
        preprocess,
        output: prev,
        layers,
    })
}

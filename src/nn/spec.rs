//! The model description: a DAG of named layers (Keras semantics, channels-last), the input
//! preprocessing, and shape inference. Serialised as JSON in the safetensors metadata.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Element-wise activation applied after a layer (Keras names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    #[default]
    Linear,
    Relu,
    Tanh,
    Sigmoid,
}

impl Activation {
    /// Parse a Keras activation name.
    pub fn parse(s: &str, layer: &str) -> Result<Self> {
        Ok(match s {
            "linear" | "None" | "" => Activation::Linear,
            "relu" => Activation::Relu,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            other => {
                return Err(Error::Config(format!(
                    "layer '{layer}': activation '{other}' is not supported (relu, tanh, sigmoid, linear)"
                )))
            }
        })
    }

    /// Apply to one value.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Linear => x,
            Activation::Relu => x.max(0.0),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        }
    }
}

/// Keras padding modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    Same,
    Valid,
}

/// How raw intensities become the network input, per pattern (masked pixels are set to 0
/// first; negative values are clamped to 0; a pattern whose maximum is not positive stays 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Preprocess {
    /// x / max(x) (the published training script).
    #[default]
    Max,
    /// log1p(x) / max(log1p(x)).
    Log1pMax,
}

impl std::str::FromStr for Preprocess {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "max" => Ok(Preprocess::Max),
            "log1p-max" | "log1p_max" | "log1p" => Ok(Preprocess::Log1pMax),
            o => Err(Error::Config(format!(
                "preprocessing '{o}': expected 'max' or 'log1p-max'"
            ))),
        }
    }
}

impl Preprocess {
    /// Apply to one pattern in place (`mask`: nonzero = bad pixel, set to 0).
    pub fn apply(self, x: &mut [f32], mask: Option<&[u8]>) {
        if let Some(m) = mask {
            for (v, &b) in x.iter_mut().zip(m) {
                if b != 0 {
                    *v = 0.0;
                }
            }
        }
        for v in x.iter_mut() {
            // NaN and negative values become 0 (max(NaN, 0) = 0)
            *v = v.max(0.0);
            if self == Preprocess::Log1pMax {
                *v = v.ln_1p();
            }
        }
        let mx = x.iter().fold(0.0f32, |a, &b| a.max(b));
        if mx > 0.0 && mx.is_finite() {
            let inv = 1.0 / mx;
            x.iter_mut().for_each(|v| *v *= inv);
        } else {
            x.iter_mut().for_each(|v| *v = 0.0);
        }
    }
}

/// One layer's operation (Keras semantics, channels-last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Op {
    /// Cross-correlation, kernel (kh, kw, in, out).
    Conv2D {
        filters: usize,
        kernel: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
        activation: Activation,
        use_bias: bool,
    },
    /// Transposed convolution, kernel (kh, kw, out, in).
    Conv2DTranspose {
        filters: usize,
        kernel: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
        activation: Activation,
        use_bias: bool,
    },
    MaxPooling2D {
        pool: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
    },
    /// Nearest-neighbour upsampling.
    UpSampling2D {
        size: [usize; 2],
    },
    /// Applied to the last axis; kernel (in, out).
    Dense {
        units: usize,
        activation: Activation,
        use_bias: bool,
    },
    /// (H, W, C) -> H*W*C in that order (a no-op on channels-last memory).
    Flatten,
    /// Row-major reshape (a no-op on memory).
    Reshape {
        target: Vec<usize>,
    },
    /// Concatenation on the channel (last) axis.
    Concatenate,
    /// Inference no-op.
    Dropout,
    Activation {
        activation: Activation,
    },
}

/// A named layer and the names of the layers it reads ("input" is the model input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    pub name: String,
    pub inputs: Vec<String>,
    #[serde(flatten)]
    pub op: Op,
}

/// A whole model: input shape (H, W, C), preprocessing, layers in evaluation order, and the
/// name of the output layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    pub input_name: String,
    pub input: [usize; 3],
    pub preprocess: Preprocess,
    pub layers: Vec<LayerSpec>,
    pub output: String,
}

/// A weight tensor a layer needs: (suffix, shape). Suffixes are `kernel` and `bias`.
pub type WeightShape = (&'static str, Vec<usize>);

/// Output length of a convolution/pooling along one axis (Keras/TF rules).
pub fn conv_out(len: usize, k: usize, s: usize, p: Padding) -> Option<usize> {
    match p {
        Padding::Same => Some(len.div_ceil(s)),
        Padding::Valid => (len >= k).then(|| (len - k) / s + 1),
    }
}

/// Leading ("top"/"left") padding of a 'same' convolution along one axis (TF rule: the
/// extra pixel of an odd total goes at the end).
pub fn same_pad_before(len: usize, k: usize, s: usize) -> usize {
    let out = len.div_ceil(s);
    ((out - 1) * s + k).saturating_sub(len) / 2
}

/// Output length of a transposed convolution along one axis (Keras `deconv_output_length`
/// with output_padding None).
pub fn deconv_out(len: usize, k: usize, s: usize, p: Padding) -> usize {
    match p {
        Padding::Same => len * s,
        Padding::Valid => len * s + k.saturating_sub(s),
    }
}

fn shape_err(layer: &str, expected: &str, found: &[usize]) -> Error {
    Error::Shape {
        what: format!("layer '{layer}' input"),
        expected: expected.to_string(),
        found: found.to_vec(),
    }
}

impl LayerSpec {
    /// Output shape (without batch) from the input shapes; error naming the layer.
    pub fn out_shape(&self, ins: &[Vec<usize>]) -> Result<Vec<usize>> {
        let name = &self.name;
        let one = |ins: &[Vec<usize>]| -> Result<Vec<usize>> {
            if ins.len() != 1 {
                return Err(Error::Config(format!(
                    "layer '{name}' takes one input, {} given",
                    ins.len()
                )));
            }
            Ok(ins[0].clone())
        };
        let hwc = |s: &[usize]| -> Result<[usize; 3]> {
            match *s {
                [h, w, c] => Ok([h, w, c]),
                _ => Err(shape_err(name, "(H, W, C)", s)),
            }
        };
        match &self.op {
            Op::Conv2D {
                filters,
                kernel,
                strides,
                padding,
                ..
            } => {
                let [h, w, _] = hwc(&one(ins)?)?;
                check_pos(name, kernel, strides, *filters)?;
                let ho = conv_out(h, kernel[0], strides[0], *padding);
                let wo = conv_out(w, kernel[1], strides[1], *padding);
                match (ho, wo) {
                    (Some(ho), Some(wo)) if ho > 0 && wo > 0 => Ok(vec![ho, wo, *filters]),
                    _ => Err(shape_err(
                        name,
                        &format!("at least the kernel size {kernel:?}"),
                        &[h, w],
                    )),
                }
            }
            Op::Conv2DTranspose {
                filters,
                kernel,
                strides,
                padding,
                ..
            } => {
                let [h, w, _] = hwc(&one(ins)?)?;
                check_pos(name, kernel, strides, *filters)?;
                Ok(vec![
                    deconv_out(h, kernel[0], strides[0], *padding),
                    deconv_out(w, kernel[1], strides[1], *padding),
                    *filters,
                ])
            }
            Op::MaxPooling2D {
                pool,
                strides,
                padding,
            } => {
                let [h, w, c] = hwc(&one(ins)?)?;
                check_pos(name, pool, strides, 1)?;
                match (
                    conv_out(h, pool[0], strides[0], *padding),
                    conv_out(w, pool[1], strides[1], *padding),
                ) {
                    (Some(ho), Some(wo)) if ho > 0 && wo > 0 => Ok(vec![ho, wo, c]),
                    _ => Err(shape_err(
                        name,
                        &format!("at least the pool size {pool:?}"),
                        &[h, w],
                    )),
                }
            }
            Op::UpSampling2D { size } => {
                let [h, w, c] = hwc(&one(ins)?)?;
                check_pos(name, size, size, 1)?;
                Ok(vec![h * size[0], w * size[1], c])
            }
            Op::Dense { units, .. } => {
                let mut s = one(ins)?;
                if s.is_empty() || *units == 0 {
                    return Err(shape_err(name, "rank >= 1 and units > 0", &s));
                }
                *s.last_mut().unwrap() = *units;
                Ok(s)
            }
            Op::Flatten => Ok(vec![one(ins)?.iter().product()]),
            Op::Reshape { target } => {
                let s = one(ins)?;
                let n: usize = s.iter().product();
                let m: usize = target.iter().product();
                if n != m {
                    return Err(shape_err(
                        name,
                        &format!("{m} elements to reshape to {target:?}"),
                        &s,
                    ));
                }
                Ok(target.clone())
            }
            Op::Concatenate => {
                if ins.len() < 2 {
                    return Err(Error::Config(format!(
                        "layer '{name}' (Concatenate) needs at least two inputs"
                    )));
                }
                let first = &ins[0];
                let lead = &first[..first.len().saturating_sub(1)];
                let mut c = 0;
                for s in ins {
                    if s.is_empty() || s[..s.len() - 1] != *lead {
                        return Err(shape_err(
                            name,
                            &format!("inputs that agree except on the last axis, like {first:?}"),
                            s,
                        ));
                    }
                    c += s[s.len() - 1];
                }
                let mut o = first.clone();
                *o.last_mut().unwrap() = c;
                Ok(o)
            }
            Op::Dropout | Op::Activation { .. } => one(ins),
        }
    }

    /// The weight tensors this layer needs given its input shape (Keras layouts).
    pub fn weight_shapes(&self, input: &[usize]) -> Vec<WeightShape> {
        let cin = input.last().copied().unwrap_or(0);
        match &self.op {
            Op::Conv2D {
                filters,
                kernel,
                use_bias,
                ..
            } => {
                let mut v = vec![("kernel", vec![kernel[0], kernel[1], cin, *filters])];
                if *use_bias {
                    v.push(("bias", vec![*filters]));
                }
                v
            }
            Op::Conv2DTranspose {
                filters,
                kernel,
                use_bias,
                ..
            } => {
                let mut v = vec![("kernel", vec![kernel[0], kernel[1], *filters, cin])];
                if *use_bias {
                    v.push(("bias", vec![*filters]));
                }
                v
            }
            Op::Dense {
                units, use_bias, ..
            } => {
                let mut v = vec![("kernel", vec![cin, *units])];
                if *use_bias {
                    v.push(("bias", vec![*units]));
                }
                v
            }
            _ => Vec::new(),
        }
    }
}

/// The largest kernel, pool, stride or upsampling size a layer may declare.
pub const MAX_WINDOW: usize = 256;
/// The most filters (channels) a layer may declare.
pub const MAX_FILTERS: usize = 65536;
/// The largest height or width of any activation.
pub const MAX_SIDE: usize = 65536;
/// The most elements of one sample's activation at any layer (4 GiB of f32).
pub const MAX_ACTIVATION: usize = 1 << 30;

fn check_pos(name: &str, k: &[usize; 2], s: &[usize; 2], f: usize) -> Result<()> {
    if k.contains(&0) || s.contains(&0) || f == 0 {
        return Err(Error::Config(format!(
            "layer '{name}': sizes, strides and filters must be positive ({k:?}, {s:?}, {f})"
        )));
    }
    if k.iter().chain(s).any(|&v| v > MAX_WINDOW) || f > MAX_FILTERS {
        return Err(Error::Config(format!(
            "layer '{name}': sizes and strides {k:?}, {s:?} (at most {MAX_WINDOW}) or {f} filters (at most {MAX_FILTERS}) out of range"
        )));
    }
    Ok(())
}

/// Refuse an activation shape too large to be a network of this crate (before any
/// arithmetic on it can overflow or any buffer is sized from it).
fn check_activation(model: &str, layer: &str, s: &[usize]) -> Result<()> {
    let elems = s
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .unwrap_or(usize::MAX);
    let side = s
        .iter()
        .take(s.len().saturating_sub(1))
        .any(|&d| d > MAX_SIDE);
    if side || elems > MAX_ACTIVATION {
        return Err(Error::Config(format!(
            "model '{model}': layer '{layer}' output {s:?} is too large (at most {MAX_SIDE} per side and {MAX_ACTIVATION} values per sample)"
        )));
    }
    Ok(())
}

impl ModelSpec {
    /// Shapes (without batch) of the input and of every layer output, in layer order
    /// (index 0 is the input). Errors name the layer.
    pub fn shapes(&self) -> Result<Vec<Vec<usize>>> {
        let mut names: Vec<&str> = vec![&self.input_name];
        let mut shapes = vec![self.input.to_vec()];
        if self.input.contains(&0) {
            return Err(Error::Config(format!(
                "model '{}': input shape {:?} has a zero",
                self.name, self.input
            )));
        }
        check_activation(&self.name, &self.input_name, &self.input)?;
        for l in &self.layers {
            if names.contains(&l.name.as_str()) {
                return Err(Error::Config(format!(
                    "model '{}': two layers are named '{}'",
                    self.name, l.name
                )));
            }
            let mut ins = Vec::new();
            for i in &l.inputs {
                let idx = names.iter().position(|n| n == i).ok_or_else(|| {
                    Error::Config(format!(
                        "layer '{}' reads '{}', which is not an earlier layer",
                        l.name, i
                    ))
                })?;
                ins.push(shapes[idx].clone());
            }
            let out = l.out_shape(&ins)?;
            check_activation(&self.name, &l.name, &out)?;
            shapes.push(out);
            names.push(&l.name);
        }
        if !names.contains(&self.output.as_str()) {
            return Err(Error::Config(format!(
                "model '{}': output layer '{}' does not exist",
                self.name, self.output
            )));
        }
        Ok(shapes)
    }

    /// Index (into [`ModelSpec::shapes`]) of a layer name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        if name == self.input_name {
            return Some(0);
        }
        self.layers
            .iter()
            .position(|l| l.name == name)
            .map(|i| i + 1)
    }

    /// All weight tensors as (`layer/suffix`, shape), in layer order.
    pub fn weight_shapes(&self) -> Result<Vec<(String, Vec<usize>)>> {
        let shapes = self.shapes()?;
        let mut out = Vec::new();
        for l in &self.layers {
            let input = l
                .inputs
                .first()
                .and_then(|i| self.index_of(i))
                .map(|i| shapes[i].clone())
                .unwrap_or_default();
            for (suffix, s) in l.weight_shapes(&input) {
                out.push((format!("{}/{}", l.name, suffix), s));
            }
        }
        Ok(out)
    }

    /// Number of parameters.
    /// Refuse to run this network on `batch` patterns at once when the weights and the
    /// activations (three of the largest per pattern, as the engines keep) exceed the
    /// memory available; the message holds the estimate.
    pub fn check_memory(&self, batch: usize) -> Result<()> {
        let shapes = self.shapes()?;
        let largest = shapes
            .iter()
            .map(|s| s.iter().map(|&d| d as u128).product::<u128>())
            .max()
            .unwrap_or(0);
        let params: u128 = self
            .weight_shapes()?
            .iter()
            .map(|(_, s)| s.iter().map(|&d| d as u128).product::<u128>())
            .sum();
        let bytes = params * 4 + largest * 4 * 3 * batch as u128;
        crate::limits::check_memory(
            &format!(
                "model '{}' ({params} parameters) on a batch of {batch}",
                self.name
            ),
            bytes,
        )
    }

    pub fn params(&self) -> Result<usize> {
        Ok(self
            .weight_shapes()?
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum())
    }

    /// Multiply-add FLOPs (2 per MAC) per image of the convolution and dense layers, as
    /// defined by the layer (not counting padding work or the implementation's waste).
    pub fn flop_per_image(&self) -> Result<f64> {
        let shapes = self.shapes()?;
        let mut f = 0.0;
        for (i, l) in self.layers.iter().enumerate() {
            let out = &shapes[i + 1];
            let input = l
                .inputs
                .first()
                .and_then(|n| self.index_of(n))
                .map(|j| shapes[j].clone())
                .unwrap_or_default();
            let cin = *input.last().unwrap_or(&0) as f64;
            match &l.op {
                Op::Conv2D { kernel, .. } => {
                    f += 2.0
                        * out.iter().product::<usize>() as f64
                        * (kernel[0] * kernel[1]) as f64
                        * cin
                }
                Op::Conv2DTranspose { kernel, .. } => {
                    // every input pixel scatters kh*kw*out products
                    f += 2.0
                        * input.iter().product::<usize>() as f64
                        * (kernel[0] * kernel[1]) as f64
                        * *out.last().unwrap() as f64
                }
                Op::Dense { units, .. } => {
                    let rows: usize = input[..input.len() - 1].iter().product();
                    f += 2.0 * rows as f64 * cin * *units as f64
                }
                _ => {}
            }
        }
        Ok(f)
    }

    /// Parse from JSON (the safetensors metadata).
    pub fn from_json(s: &str) -> Result<Self> {
        serde_json::from_str(s)
            .map_err(|e| Error::Config(format!("model description (JSON) does not parse: {e}")))
    }

    /// Serialise to JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a ModelSpec always serialises")
    }
}

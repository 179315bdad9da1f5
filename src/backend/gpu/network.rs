//! A whole network forward on a GPU [`Launcher`] (real CUDA or the emulator): the model
//! graph of [`crate::nn`] executed layer by layer through the kernels of [`super::nn_kernels`].
//!
//! Weights are uploaded once by [`GpuNetwork::new`] (transposed convolutions at stride 1
//! with 'same' padding and an odd square kernel are turned into plain convolutions on the
//! device by `cd_nn_convT_weights`). Every layer output has its own device buffer, kept
//! across calls of [`GpuNetwork::run`] and sized for the largest batch seen so far (a larger
//! batch reallocates them all). Fresh buffers are NaN-poisoned by the emulator's allocator,
//! so on a network's first run (and after each growth) a kernel that leaves an element
//! unwritten shows up in the comparison with the CPU engine. Flatten, Reshape and Dropout
//! alias their input buffer (channels-last memory does not change).
//!
//! Supported, with Keras/TensorFlow semantics (padding rules of [`crate::nn::spec`]):
//! - Conv2D with any kernel (kh x kw), strides (sy, sx) and 'same' or 'valid' padding:
//!   stride 1 'same' with an odd square kernel (and any 1x1) through the tiled
//!   `cd_nn_conv2d`, everything else through the direct `cd_nn_conv2d_general`;
//! - Conv2DTranspose with any kernel, strides and padding: stride 1 'same' odd square through
//!   `cd_nn_conv2d` on transformed weights, everything else through the direct
//!   `cd_nn_conv_transpose2d`;
//! - MaxPooling2D with any pool size, strides and padding (2x2 stride 2 'valid', or 'same' on
//!   even sizes, through `cd_nn_maxpool2`, the rest through `cd_nn_maxpool`);
//! - UpSampling2D (nearest) with any factors per axis;
//! - Concatenate on the channel (last) axis of any number of inputs, and stand-alone
//!   Activation layers, through the channel copy `cd_nn_copy_channels`;
//! - Dense (on the last axis); Flatten; Reshape; Dropout.
//!
//! That is every layer of [`crate::nn::spec::Op`]; a model the CPU engine accepts runs here.

use std::sync::Mutex;

use super::launcher::{DevBuf, Launcher};
use super::nn_kernels::{self as gpu_nn, Act, ConvGeom};
use crate::backend::{Forward, Mode, NetOptions};
use crate::nn::model::Model;
use crate::nn::spec::{Activation, Op, Padding};
use crate::{Error, Result};

fn act(a: Activation) -> Act {
    match a {
        Activation::Linear => Act::Linear,
        Activation::Relu => Act::Relu,
        Activation::Tanh => Act::Tanh,
        Activation::Sigmoid => Act::Sigmoid,
    }
}

/// How one layer runs on the device.
enum Step {
    /// `cd_nn_conv2d` (stride 1, 'same', odd square kernel); also stride-1 transposed
    /// convolutions on their transformed weights.
    Conv {
        k: usize,
        cout: usize,
        act: Act,
        weight: usize,
        bias: Option<usize>,
    },
    /// `cd_nn_conv2d_general`.
    ConvGeneral {
        g: ConvGeom,
        cout: usize,
        act: Act,
        weight: usize,
        bias: Option<usize>,
    },
    /// `cd_nn_conv_transpose2d` on the Keras weights.
    ConvT {
        g: ConvGeom,
        cout: usize,
        act: Act,
        weight: usize,
        bias: Option<usize>,
    },
    /// `cd_nn_maxpool2`.
    Pool2,
    /// `cd_nn_maxpool`.
    Pool(ConvGeom),
    Up([usize; 2]),
    Dense {
        units: usize,
        act: Act,
        weight: usize,
        bias: Option<usize>,
    },
    /// Channel concatenation of every input, in order.
    Concat,
    /// Stand-alone activation (out of place: the input may have other readers).
    Activation(Act),
    Alias,
}

/// One layer: how it runs, the nodes it reads (0 = model input, i + 1 = layer i) and its
/// output shape without the batch.
struct Layer {
    step: Step,
    inputs: Vec<usize>,
    out_shape: Vec<usize>,
}

/// Device buffers of the layer outputs, kept between runs.
struct Buffers<'a> {
    /// The batch size they hold.
    batch: usize,
    /// The input's buffer and one per layer that is not an alias, in layer order.
    bufs: Vec<DevBuf<'a>>,
}

/// A model with its weights on a device, ready to run batches.
pub struct GpuNetwork<'a> {
    l: &'a dyn Launcher,
    layers: Vec<Layer>,
    /// Per node (0 = input, i + 1 = layer i): the index of its buffer in [`Buffers::bufs`].
    node_buf: Vec<usize>,
    /// Input shape (H, W, C) and the node of the output layer.
    input: Vec<usize>,
    output: usize,
    /// The output node's shape (without the batch).
    output_shape: Vec<usize>,
    weights: Vec<DevBuf<'a>>,
    buffers: Mutex<Option<Buffers<'a>>>,
}

impl<'a> GpuNetwork<'a> {
    /// Check that every layer is supported and upload the weights.
    pub fn new(l: &'a dyn Launcher, model: &Model) -> Result<GpuNetwork<'a>> {
        let spec = &model.spec;
        let shapes = spec.shapes()?;
        let mut weights: Vec<DevBuf<'a>> = Vec::new();
        let upload = |weights: &mut Vec<DevBuf<'a>>, name: &str| -> Result<usize> {
            let t = model.weights.get(name).ok_or_else(|| {
                Error::Config(format!("model '{}': no weight '{name}'", spec.name))
            })?;
            weights.push(DevBuf::from_slice(l, &t.data)?);
            Ok(weights.len() - 1)
        };
        let unsupported = |layer: &str, why: &str| {
            Err(Error::Config(format!(
                "layer '{layer}' cannot run on the GPU kernels yet: {why} (the CPU engine runs it)"
            )))
        };
        let mut layers = Vec::new();
        let mut node_buf = vec![0usize];
        let mut nbufs = 1;
        for (i, layer) in spec.layers.iter().enumerate() {
            let name = &layer.name;
            let mut inputs = Vec::with_capacity(layer.inputs.len());
            for src in &layer.inputs {
                inputs.push(spec.index_of(src).ok_or_else(|| {
                    Error::Config(format!(
                        "layer '{name}' reads '{src}', which does not exist"
                    ))
                })?);
            }
            let single = !matches!(layer.op, Op::Concatenate);
            if inputs.is_empty() || (single && inputs.len() != 1) {
                return unsupported(name, "a layer of this type takes exactly one input");
            }
            let ins = &shapes[inputs[0]];
            let out_shape = &shapes[i + 1];
            let hw = |what: &str| -> Result<[usize; 2]> {
                match ins[..] {
                    [h, w, _] => Ok([h, w]),
                    _ => Err(Error::Config(format!(
                        "layer '{name}' ({what}) needs an (H, W, C) input, not {ins:?}"
                    ))),
                }
            };
            let bias_of = |weights: &mut Vec<DevBuf<'a>>, use_bias: bool| {
                if use_bias {
                    upload(weights, &format!("{name}/bias")).map(Some)
                } else {
                    Ok(None)
                }
            };
            let step = match &layer.op {
                Op::Conv2D {
                    filters,
                    kernel,
                    strides,
                    padding,
                    activation,
                    use_bias,
                } => {
                    let g = ConvGeom::conv(hw("Conv2D")?, *kernel, *strides, *padding).ok_or_else(
                        || {
                            Error::Config(format!(
                                "layer '{name}': input {ins:?} smaller than the kernel {kernel:?}"
                            ))
                        },
                    )?;
                    let weight = upload(&mut weights, &format!("{name}/kernel"))?;
                    let bias = bias_of(&mut weights, *use_bias)?;
                    let (cout, act) = (*filters, act(*activation));
                    if gpu_nn::conv2d_tiled_fits(*kernel, *strides, *padding) {
                        Step::Conv {
                            k: kernel[0],
                            cout,
                            act,
                            weight,
                            bias,
                        }
                    } else {
                        Step::ConvGeneral {
                            g,
                            cout,
                            act,
                            weight,
                            bias,
                        }
                    }
                }
                Op::Conv2DTranspose {
                    filters,
                    kernel,
                    strides,
                    padding,
                    activation,
                    use_bias,
                } => {
                    let g = ConvGeom::conv_transpose(
                        hw("Conv2DTranspose")?,
                        *kernel,
                        *strides,
                        *padding,
                    );
                    let wt = upload(&mut weights, &format!("{name}/kernel"))?;
                    let bias = bias_of(&mut weights, *use_bias)?;
                    let (cout, act) = (*filters, act(*activation));
                    if *padding == Padding::Same
                        && gpu_nn::conv2d_tiled_fits(*kernel, *strides, Padding::Same)
                    {
                        let (k, cin) = (kernel[0], ins[2]);
                        let conv = DevBuf::new(l, k * k * cin * filters * 4)?;
                        gpu_nn::conv_transpose_weights(l, &weights[wt], k, cin, *filters, &conv)?;
                        weights.push(conv);
                        Step::Conv {
                            k,
                            cout,
                            act,
                            weight: weights.len() - 1,
                            bias,
                        }
                    } else {
                        Step::ConvT {
                            g,
                            cout,
                            act,
                            weight: wt,
                            bias,
                        }
                    }
                }
                Op::MaxPooling2D {
                    pool,
                    strides,
                    padding,
                } => {
                    let [h, w] = hw("MaxPooling2D")?;
                    let even = h % 2 == 0 && w % 2 == 0;
                    if *pool == [2, 2] && *strides == [2, 2] && (*padding == Padding::Valid || even)
                    {
                        Step::Pool2
                    } else {
                        Step::Pool(
                            ConvGeom::conv([h, w], *pool, *strides, *padding).ok_or_else(|| {
                                Error::Config(format!(
                                    "layer '{name}': input {ins:?} smaller than the pool {pool:?}"
                                ))
                            })?,
                        )
                    }
                }
                Op::UpSampling2D { size } => {
                    hw("UpSampling2D")?;
                    Step::Up(*size)
                }
                Op::Dense {
                    units,
                    activation,
                    use_bias,
                } => {
                    let weight = upload(&mut weights, &format!("{name}/kernel"))?;
                    Step::Dense {
                        units: *units,
                        act: act(*activation),
                        weight,
                        bias: bias_of(&mut weights, *use_bias)?,
                    }
                }
                Op::Flatten | Op::Reshape { .. } | Op::Dropout => Step::Alias,
                Op::Concatenate => Step::Concat,
                Op::Activation { activation } => Step::Activation(act(*activation)),
            };
            if let Step::Alias = step {
                node_buf.push(node_buf[inputs[0]]);
            } else {
                node_buf.push(nbufs);
                nbufs += 1;
            }
            layers.push(Layer {
                step,
                inputs,
                out_shape: out_shape.clone(),
            });
        }
        let output = spec
            .index_of(&spec.output)
            .ok_or_else(|| Error::Config(format!("model '{}': no output layer", spec.name)))?;
        Ok(GpuNetwork {
            l,
            layers,
            node_buf,
            input: shapes[0].clone(),
            output,
            output_shape: shapes[output].clone(),
            weights,
            buffers: Mutex::new(None),
        })
    }

    /// Run `n` preprocessed inputs (n x H x W x C, channels-last) and return the output
    /// layer's values (n x its shape).
    pub fn run(&self, input: &[f32], n: usize) -> Result<Vec<f32>> {
        let l = self.l;
        let per: usize = self.input.iter().product();
        if input.len() != n * per {
            return Err(Error::Shape {
                what: "network input".into(),
                expected: format!("{n} x {:?} = {} values", self.input, n * per),
                found: vec![input.len()],
            });
        }
        let mut guard = self
            .buffers
            .lock()
            .map_err(|_| Error::Config("GpuNetwork: a previous run panicked".into()))?;
        if guard.as_ref().is_none_or(|b| b.batch < n) {
            // free the old buffers before allocating the larger ones
            *guard = None;
            let mut bufs = vec![DevBuf::new(l, n * per * 4)?];
            for layer in &self.layers {
                if !matches!(layer.step, Step::Alias) {
                    let len: usize = layer.out_shape.iter().product();
                    bufs.push(DevBuf::new(l, n * len * 4)?);
                }
            }
            *guard = Some(Buffers { batch: n, bufs });
        }
        let bufs = &guard.as_ref().expect("allocated above").bufs;
        bufs[0].upload(input)?;
        // shapes[j]: the shape of node j (0 = input)
        let mut shapes: Vec<&[usize]> = vec![&self.input];
        let w = |i: usize| &self.weights[i];
        let buf = |node: usize| &bufs[self.node_buf[node]];
        for (li, layer) in self.layers.iter().enumerate() {
            let out_shape = &layer.out_shape[..];
            let src = layer.inputs[0];
            let x = buf(src);
            let y = buf(li + 1);
            let ins = shapes[src];
            let nhwc = |s: &[usize]| [n, s[0], s[1], s[2]];
            // rows of the channels-last view of a node's values (n x all axes but the last)
            let rows = |s: &[usize]| n * s[..s.len() - 1].iter().product::<usize>();
            match &layer.step {
                Step::Conv {
                    k,
                    cout,
                    act,
                    weight,
                    bias,
                } => gpu_nn::conv2d(l, x, w(*weight), bias.map(w), y, nhwc(ins), *cout, *k, *act)?,
                Step::ConvGeneral {
                    g,
                    cout,
                    act,
                    weight,
                    bias,
                } => gpu_nn::conv2d_general(
                    l,
                    x,
                    w(*weight),
                    bias.map(w),
                    y,
                    nhwc(ins),
                    *cout,
                    *g,
                    *act,
                )?,
                Step::ConvT {
                    g,
                    cout,
                    act,
                    weight,
                    bias,
                } => gpu_nn::conv_transpose2d_general(
                    l,
                    x,
                    w(*weight),
                    bias.map(w),
                    y,
                    nhwc(ins),
                    *cout,
                    *g,
                    *act,
                )?,
                Step::Pool2 => gpu_nn::maxpool2(l, x, y, nhwc(ins))?,
                Step::Pool(g) => gpu_nn::maxpool(l, x, y, nhwc(ins), *g)?,
                Step::Up(f) => gpu_nn::upsample2d(l, x, y, nhwc(ins), *f)?,
                Step::Dense {
                    units,
                    act,
                    weight,
                    bias,
                } => {
                    let k = *ins.last().unwrap_or(&1);
                    let m = n * ins.iter().product::<usize>() / k.max(1);
                    gpu_nn::dense(l, x, w(*weight), bias.map(w), y, m, k, *units, *act)?
                }
                Step::Concat => {
                    let ct = *out_shape.last().unwrap_or(&1);
                    let mut offset = 0;
                    for &src in &layer.inputs {
                        let s = shapes[src];
                        let ci = *s.last().unwrap_or(&1);
                        gpu_nn::copy_channels(
                            l,
                            buf(src),
                            y,
                            rows(s),
                            ci,
                            ct,
                            offset,
                            Act::Linear,
                        )?;
                        offset += ci;
                    }
                }
                Step::Activation(a) => {
                    let c = *ins.last().unwrap_or(&1);
                    gpu_nn::copy_channels(l, x, y, rows(ins), c, c, 0, *a)?
                }
                Step::Alias => {}
            }
            shapes.push(out_shape);
        }
        let out_len: usize = shapes[self.output].iter().product();
        bufs[self.node_buf[self.output]].to_vec(n * out_len)
    }
}

impl Forward for GpuNetwork<'_> {
    fn output_shape(&self) -> &[usize] {
        &self.output_shape
    }
    fn forward(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>> {
        self.run(input, n)
    }
}

/// [`crate::backend::NetworkOps::load_network`] of the GPU backends: the kernels are f32,
/// so any other mode is refused. Buffers are allocated by the first batch (NaN-poisoned by
/// the emulator, whatever `opts.poison`) and kept.
pub fn load<'a>(
    l: &'a dyn Launcher,
    model: &Model,
    _max_batch: usize,
    opts: NetOptions,
) -> Result<Box<dyn Forward + 'a>> {
    // the GPU kernels are direct f32 convolutions: both f32 modes mean them
    if !matches!(opts.mode, Mode::F32 | Mode::F32Direct) {
        return Err(Error::Config(format!(
            "the {} backend runs the network in f32 only; mode {} selects CPU kernels (drop \
             --mode/--fast, or use --device cpu)",
            l.name(),
            opts.mode.name()
        )));
    }
    Ok(Box::new(GpuNetwork::new(l, model)?))
}

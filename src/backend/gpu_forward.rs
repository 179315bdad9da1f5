//! A whole network forward on a GPU [`Launcher`] (real CUDA or the emulator): the model
//! graph of [`crate::nn`] executed layer by layer through the kernels of [`super::gpu_nn`].
//!
//! Weights are uploaded once by [`GpuNetwork::new`] (transposed convolutions at stride 1
//! are turned into plain convolutions on the device by `cd_nn_convT_weights`); each layer
//! output gets its own device buffer, which is NaN-poisoned by the emulator's allocator, so
//! a kernel that leaves an element unwritten shows up in the comparison with the CPU engine.
//! Flatten, Reshape and Dropout alias their input buffer (channels-last memory does not
//! change).
//!
//! Supported: Conv2D with stride 1, 'same' padding and an odd square kernel;
//! Conv2DTranspose with 'same' padding (stride 1 with an odd kernel goes through the
//! convolution kernel, other strides through the direct kernel); 2x2 max-pooling with
//! stride 2 ('valid', or 'same' on even sizes); nearest upsampling by the same factor on
//! both axes; Dense; Flatten; Reshape; Dropout. Other layers (strided or 'valid'
//! convolutions, Concatenate, stand-alone Activation) are refused with an error naming the
//! layer: the CPU engine runs them.

use super::gpu_common::{DevBuf, Launcher};
use super::gpu_nn::{self, Act};
use crate::nn::cpu::Model;
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
    Conv {
        k: usize,
        cout: usize,
        act: Act,
        weight: usize,
        bias: Option<usize>,
    },
    ConvT {
        k: usize,
        s: usize,
        cout: usize,
        act: Act,
        weight: usize,
        bias: Option<usize>,
    },
    Pool,
    Up(usize),
    Dense {
        units: usize,
        act: Act,
        weight: usize,
        bias: Option<usize>,
    },
    Alias,
}

/// A model with its weights on a device, ready to run batches.
pub struct GpuNetwork<'a> {
    l: &'a dyn Launcher,
    /// Per layer: the step, the index of its input (0 = model input, i + 1 = layer i) and
    /// its output shape without the batch.
    steps: Vec<(Step, usize, Vec<usize>)>,
    /// Input shape (H, W, C) and the index of the output layer.
    input: Vec<usize>,
    output: usize,
    weights: Vec<DevBuf<'a>>,
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
        let mut steps = Vec::new();
        for (i, layer) in spec.layers.iter().enumerate() {
            if layer.inputs.len() != 1 {
                return unsupported(&layer.name, "more than one input");
            }
            let src = spec.index_of(&layer.inputs[0]).ok_or_else(|| {
                Error::Config(format!(
                    "layer '{}' reads '{}', which does not exist",
                    layer.name, layer.inputs[0]
                ))
            })?;
            let ins = &shapes[src];
            let name = &layer.name;
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
                    if *strides != [1, 1] || *padding != Padding::Same {
                        return unsupported(name, "only stride 1 'same' convolutions");
                    }
                    if kernel[0] != kernel[1] || kernel[0] % 2 == 0 {
                        return unsupported(name, "only odd square kernels");
                    }
                    let weight = upload(&mut weights, &format!("{name}/kernel"))?;
                    Step::Conv {
                        k: kernel[0],
                        cout: *filters,
                        act: act(*activation),
                        weight,
                        bias: bias_of(&mut weights, *use_bias)?,
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
                    if *padding != Padding::Same || strides[0] != strides[1] {
                        return unsupported(name, "only 'same' transposed convolutions");
                    }
                    if kernel[0] != kernel[1] {
                        return unsupported(name, "only square kernels");
                    }
                    let (k, s) = (kernel[0], strides[0]);
                    let wt = upload(&mut weights, &format!("{name}/kernel"))?;
                    let weight = if s == 1 && k % 2 == 1 {
                        let cin = ins[2];
                        let conv = DevBuf::new(l, k * k * cin * filters * 4)?;
                        gpu_nn::conv_transpose_weights(
                            l,
                            weights[wt].ptr,
                            k,
                            cin,
                            *filters,
                            conv.ptr,
                        )?;
                        weights.push(conv);
                        weights.len() - 1
                    } else {
                        wt
                    };
                    Step::ConvT {
                        k,
                        s,
                        cout: *filters,
                        act: act(*activation),
                        weight,
                        bias: bias_of(&mut weights, *use_bias)?,
                    }
                }
                Op::MaxPooling2D {
                    pool,
                    strides,
                    padding,
                } => {
                    let even = ins[0] % 2 == 0 && ins[1] % 2 == 0;
                    if *pool != [2, 2] || *strides != [2, 2] || (*padding == Padding::Same && !even)
                    {
                        return unsupported(name, "only 2x2 pooling with stride 2");
                    }
                    Step::Pool
                }
                Op::UpSampling2D { size } => {
                    if size[0] != size[1] {
                        return unsupported(name, "only equal factors on both axes");
                    }
                    Step::Up(size[0])
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
                Op::Concatenate => return unsupported(name, "no concatenation kernel"),
                Op::Activation { .. } => {
                    return unsupported(name, "stand-alone activations are not fused")
                }
            };
            steps.push((step, src, shapes[i + 1].clone()));
        }
        let output = spec
            .index_of(&spec.output)
            .ok_or_else(|| Error::Config(format!("model '{}': no output layer", spec.name)))?;
        Ok(GpuNetwork {
            l,
            steps,
            input: shapes[0].clone(),
            output,
            weights,
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
        // buffers[j]: index into `owned` of the value of node j (0 = input)
        let mut owned: Vec<DevBuf<'_>> = vec![DevBuf::from_slice(l, input)?];
        let mut node = vec![0usize];
        let mut shapes: Vec<&[usize]> = vec![&self.input];
        let w = |i: usize| self.weights[i].ptr;
        for (step, src, out_shape) in &self.steps {
            let x = owned[node[*src]].ptr;
            let ins = shapes[*src];
            let out_len = n * out_shape.iter().product::<usize>();
            let nhwc = |s: &[usize]| [n, s[0], s[1], s[2]];
            if let Step::Alias = step {
                node.push(node[*src]);
                shapes.push(out_shape);
                continue;
            }
            let y = DevBuf::new(l, out_len * 4)?;
            match step {
                Step::Conv {
                    k,
                    cout,
                    act,
                    weight,
                    bias,
                } => gpu_nn::conv2d(
                    l,
                    x,
                    w(*weight),
                    bias.map(w),
                    y.ptr,
                    nhwc(ins),
                    *cout,
                    *k,
                    *act,
                )?,
                Step::ConvT {
                    k,
                    s,
                    cout,
                    act,
                    weight,
                    bias,
                } => {
                    if *s == 1 && k % 2 == 1 {
                        gpu_nn::conv2d(
                            l,
                            x,
                            w(*weight),
                            bias.map(w),
                            y.ptr,
                            nhwc(ins),
                            *cout,
                            *k,
                            *act,
                        )?
                    } else {
                        gpu_nn::conv_transpose2d(
                            l,
                            x,
                            w(*weight),
                            bias.map(w),
                            y.ptr,
                            nhwc(ins),
                            *cout,
                            *k,
                            *s,
                            *act,
                        )?
                    }
                }
                Step::Pool => gpu_nn::maxpool2(l, x, y.ptr, nhwc(ins))?,
                Step::Up(f) => gpu_nn::upsample(l, x, y.ptr, nhwc(ins), *f)?,
                Step::Dense {
                    units,
                    act,
                    weight,
                    bias,
                } => {
                    let k = *ins.last().unwrap_or(&1);
                    let m = n * ins.iter().product::<usize>() / k.max(1);
                    gpu_nn::dense(l, x, w(*weight), bias.map(w), y.ptr, m, k, *units, *act)?
                }
                Step::Alias => unreachable!("handled above"),
            }
            owned.push(y);
            node.push(owned.len() - 1);
            shapes.push(out_shape);
        }
        let out_shape: usize = shapes[self.output].iter().product();
        owned[node[self.output]].to_vec(n * out_shape)
    }
}

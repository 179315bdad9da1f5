//! Launch shapes of the network kernels (`kernels/nn.cu`), shared by the CUDA backend and the
//! emulator. Tensors are NHWC float32 device buffers; weights in Keras layouts.

use crate::backend::gpu::launcher::{DevPtr, Dims, KArg, Launcher, BLOCK, MAX_DYN_SHARED};
use crate::nn::spec::{conv_out, deconv_out, same_pad_before, Padding};
use crate::{Error, Result};

/// Activation fused into a layer (codes of `cd_act` in kernels/nn.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Linear = 0,
    Relu = 1,
    Tanh = 2,
    Sigmoid = 3,
}

const CONV_TS: usize = 16;
const CONV_CIT: usize = 8;
const CONV_COT: usize = 8;
const GEMM_T: usize = 16;

fn opt(p: Option<DevPtr>) -> KArg {
    KArg::Ptr(p.unwrap_or(DevPtr::NULL))
}

/// A one-dimensional launch of `n` threads in blocks of `BLOCK`, no shared memory.
fn linear(n: usize) -> Result<Dims> {
    let blocks = n.div_ceil(BLOCK as usize);
    if blocks > u32::MAX as usize {
        return Err(Error::Config(format!("{n} elements exceed one launch")));
    }
    Ok(Dims {
        grid: [blocks.max(1) as u32, 1, 1],
        block: [BLOCK, 1, 1],
        shmem: 0,
    })
}

/// Where a general convolution, transposed convolution or pooling window reads, per axis
/// (rows, columns): kernel (or pool) size, strides, leading padding and output size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    /// padding before the first row / column (top, left)
    pub pad: [usize; 2],
    /// output rows and columns
    pub out: [usize; 2],
}

impl ConvGeom {
    /// A Conv2D or MaxPooling2D on an `h` x `w` input with TensorFlow's rules ('same': out =
    /// ceil(in / s), pad_before = pad_total / 2; 'valid': out = floor((in - k) / s) + 1), or
    /// None when the input is smaller than a 'valid' window.
    pub fn conv(
        [h, w]: [usize; 2],
        kernel: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
    ) -> Option<ConvGeom> {
        let ho = conv_out(h, kernel[0], strides[0], padding)?;
        let wo = conv_out(w, kernel[1], strides[1], padding)?;
        let pad = match padding {
            Padding::Same => [
                same_pad_before(h, kernel[0], strides[0]),
                same_pad_before(w, kernel[1], strides[1]),
            ],
            Padding::Valid => [0, 0],
        };
        (ho > 0 && wo > 0).then_some(ConvGeom {
            kernel,
            strides,
            pad,
            out: [ho, wo],
        })
    }

    /// A Conv2DTranspose on an `h` x `w` input with Keras/TensorFlow's rules ('same': out =
    /// in * s, pad_before = max(k - s, 0) / 2 removed at the start; 'valid': out = in * s +
    /// max(k - s, 0), no padding).
    pub fn conv_transpose(
        [h, w]: [usize; 2],
        kernel: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
    ) -> ConvGeom {
        let out = [
            deconv_out(h, kernel[0], strides[0], padding),
            deconv_out(w, kernel[1], strides[1], padding),
        ];
        let pad = match padding {
            Padding::Same => [
                same_pad_before(out[0], kernel[0], strides[0]),
                same_pad_before(out[1], kernel[1], strides[1]),
            ],
            Padding::Valid => [0, 0],
        };
        ConvGeom {
            kernel,
            strides,
            pad,
            out,
        }
    }

    fn args(&self) -> [KArg; 6] {
        [
            KArg::I32(self.kernel[0] as i32),
            KArg::I32(self.kernel[1] as i32),
            KArg::I32(self.strides[0] as i32),
            KArg::I32(self.strides[1] as i32),
            KArg::I32(self.pad[0] as i32),
            KArg::I32(self.pad[1] as i32),
        ]
    }
}

/// Dynamic shared memory of `cd_nn_conv2d` for a K x K kernel.
pub fn conv_shared_bytes(k: usize) -> usize {
    let t = CONV_TS + k - 1;
    4 * (t * t * CONV_CIT + k * k * CONV_CIT * CONV_COT)
}

/// 'same' stride-1 convolution with fused bias and activation: x (n,h,w,cin) -> y (n,h,w,cout),
/// weights (k,k,cin,cout).
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    l: &dyn Launcher,
    x: DevPtr,
    w: DevPtr,
    bias: Option<DevPtr>,
    y: DevPtr,
    shape: [usize; 4],
    cout: usize,
    k: usize,
    act: Act,
) -> Result<()> {
    let [n, h, wd, cin] = shape;
    let shmem = conv_shared_bytes(k);
    if shmem > MAX_DYN_SHARED {
        return Err(Error::Config(format!(
            "a {k}x{k} convolution kernel needs {shmem} bytes of shared memory (limit {MAX_DYN_SHARED})"
        )));
    }
    l.launch(
        "cd_nn_conv2d",
        Dims {
            grid: [
                wd.div_ceil(CONV_TS) as u32,
                h.div_ceil(CONV_TS) as u32,
                (n * cout.div_ceil(CONV_COT)) as u32,
            ],
            block: [CONV_TS as u32, CONV_TS as u32, 1],
            shmem: shmem as u32,
        },
        &[
            KArg::Ptr(x),
            KArg::Ptr(w),
            opt(bias),
            KArg::Ptr(y),
            KArg::I32(n as i32),
            KArg::I32(h as i32),
            KArg::I32(wd as i32),
            KArg::I32(cin as i32),
            KArg::I32(cout as i32),
            KArg::I32(k as i32),
            KArg::I32(act as i32),
        ],
    )
}

/// Does `cd_nn_conv2d` (the tiled kernel) run this layer: stride 1, 'same' padding (or a 1x1
/// kernel), an odd square kernel whose tiles fit in shared memory?
pub fn conv2d_tiled_fits(kernel: [usize; 2], strides: [usize; 2], padding: Padding) -> bool {
    let [kh, kw] = kernel;
    strides == [1, 1]
        && kh == kw
        && kh % 2 == 1
        && (padding == Padding::Same || kh == 1)
        && conv_shared_bytes(kh) <= MAX_DYN_SHARED
}

/// Any Conv2D (`cd_nn_conv2d_general`, direct gather): x (n,h,w,cin) -> y (n,ho,wo,cout) with
/// `g` from [`ConvGeom::conv`], weights (kh,kw,cin,cout), fused bias and activation.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_general(
    l: &dyn Launcher,
    x: DevPtr,
    w: DevPtr,
    bias: Option<DevPtr>,
    y: DevPtr,
    shape: [usize; 4],
    cout: usize,
    g: ConvGeom,
    act: Act,
) -> Result<()> {
    gather_conv(
        l,
        "cd_nn_conv2d_general",
        x,
        w,
        bias,
        y,
        shape,
        cout,
        g,
        act,
    )
}

/// The launch shared by the two direct-gather kernels (same parameter list): one thread
/// per output pixel (grid x) and group of `CONV_COT` output channels (grid y).
#[allow(clippy::too_many_arguments)]
fn gather_conv(
    l: &dyn Launcher,
    kernel: &str,
    x: DevPtr,
    w: DevPtr,
    bias: Option<DevPtr>,
    y: DevPtr,
    shape: [usize; 4],
    cout: usize,
    g: ConvGeom,
    act: Act,
) -> Result<()> {
    let [n, h, wd, cin] = shape;
    let [ho, wo] = g.out;
    let mut dims = linear(n * ho * wo)?;
    dims.grid[1] = cout.div_ceil(CONV_COT) as u32;
    let mut args = vec![
        KArg::Ptr(x),
        KArg::Ptr(w),
        opt(bias),
        KArg::Ptr(y),
        KArg::I32(n as i32),
        KArg::I32(h as i32),
        KArg::I32(wd as i32),
        KArg::I32(cin as i32),
        KArg::I32(ho as i32),
        KArg::I32(wo as i32),
        KArg::I32(cout as i32),
    ];
    args.extend(g.args());
    args.push(KArg::I32(act as i32));
    l.launch(kernel, dims, &args)
}

/// The convolution weights (k,k,cin,cout) equivalent to a stride-1 'same' Conv2DTranspose
/// with Keras weights `wt` (k,k,cout,cin), k odd.
pub fn conv_transpose_weights(
    l: &dyn Launcher,
    wt: DevPtr,
    k: usize,
    cin: usize,
    cout: usize,
    w: DevPtr,
) -> Result<()> {
    if k.is_multiple_of(2) {
        return Err(Error::Config(format!(
            "a stride-1 transposed convolution with an even kernel ({k}x{k}) has no equivalent 'same' convolution; use conv_transpose2d"
        )));
    }
    l.launch(
        "cd_nn_convT_weights",
        linear(k * k * cin * cout)?,
        &[
            KArg::Ptr(wt),
            KArg::I32(k as i32),
            KArg::I32(cin as i32),
            KArg::I32(cout as i32),
            KArg::Ptr(w),
        ],
    )
}

/// Conv2DTranspose with stride `s`, 'same': x (n,h,w,cin) -> y (n,h*s,w*s,cout), Keras
/// weights (k,k,cout,cin), direct gather ([`conv_transpose2d_general`] with a square kernel).
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d(
    l: &dyn Launcher,
    x: DevPtr,
    wt: DevPtr,
    bias: Option<DevPtr>,
    y: DevPtr,
    shape: [usize; 4],
    cout: usize,
    k: usize,
    s: usize,
    act: Act,
) -> Result<()> {
    let g = ConvGeom::conv_transpose([shape[1], shape[2]], [k, k], [s, s], Padding::Same);
    conv_transpose2d_general(l, x, wt, bias, y, shape, cout, g, act)
}

/// Any Conv2DTranspose (`cd_nn_conv_transpose2d`, direct gather): x (n,h,w,cin) -> y
/// (n,ho,wo,cout) with `g` from [`ConvGeom::conv_transpose`], Keras weights (kh,kw,cout,cin),
/// fused bias and activation.
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d_general(
    l: &dyn Launcher,
    x: DevPtr,
    wt: DevPtr,
    bias: Option<DevPtr>,
    y: DevPtr,
    shape: [usize; 4],
    cout: usize,
    g: ConvGeom,
    act: Act,
) -> Result<()> {
    gather_conv(
        l,
        "cd_nn_conv_transpose2d",
        x,
        wt,
        bias,
        y,
        shape,
        cout,
        g,
        act,
    )
}

/// 2x2 max-pooling, stride 2, 'valid': (n,h,w,c) -> (n,h/2,w/2,c).
pub fn maxpool2(l: &dyn Launcher, x: DevPtr, y: DevPtr, shape: [usize; 4]) -> Result<()> {
    let [n, h, w, c] = shape;
    l.launch(
        "cd_nn_maxpool2",
        linear(n * (h / 2) * (w / 2) * c)?,
        &[
            KArg::Ptr(x),
            KArg::Ptr(y),
            KArg::I32(n as i32),
            KArg::I32(h as i32),
            KArg::I32(w as i32),
            KArg::I32(c as i32),
        ],
    )
}

/// Max-pooling, any pool size, strides and padding: (n,h,w,c) -> (n,ho,wo,c) with `g` from
/// [`ConvGeom::conv`] (kernel = the pool size).
pub fn maxpool(
    l: &dyn Launcher,
    x: DevPtr,
    y: DevPtr,
    shape: [usize; 4],
    g: ConvGeom,
) -> Result<()> {
    let [n, h, w, c] = shape;
    let [ho, wo] = g.out;
    let mut args = vec![
        KArg::Ptr(x),
        KArg::Ptr(y),
        KArg::I32(n as i32),
        KArg::I32(h as i32),
        KArg::I32(w as i32),
        KArg::I32(c as i32),
        KArg::I32(ho as i32),
        KArg::I32(wo as i32),
    ];
    args.extend(g.args());
    l.launch("cd_nn_maxpool", linear(n * ho * wo * c)?, &args)
}

/// Nearest upsampling by `f` on both axes: (n,h,w,c) -> (n,h*f,w*f,c).
pub fn upsample(l: &dyn Launcher, x: DevPtr, y: DevPtr, shape: [usize; 4], f: usize) -> Result<()> {
    upsample2d(l, x, y, shape, [f, f])
}

/// Nearest upsampling by (fy, fx): (n,h,w,c) -> (n,h*fy,w*fx,c).
pub fn upsample2d(
    l: &dyn Launcher,
    x: DevPtr,
    y: DevPtr,
    shape: [usize; 4],
    [fy, fx]: [usize; 2],
) -> Result<()> {
    let [n, h, w, c] = shape;
    l.launch(
        "cd_nn_upsample",
        linear(n * h * fy * w * fx * c)?,
        &[
            KArg::Ptr(x),
            KArg::Ptr(y),
            KArg::I32(n as i32),
            KArg::I32(h as i32),
            KArg::I32(w as i32),
            KArg::I32(c as i32),
            KArg::I32(fy as i32),
            KArg::I32(fx as i32),
        ],
    )
}

/// Channel copy with an activation: `y[r*ct + offset + c] = act(x[r*ci + c])` for r < rows,
/// c < ci (`cd_nn_copy_channels`). One launch per input of a channel Concatenate; with
/// ct = ci and offset 0 an out-of-place activation.
#[allow(clippy::too_many_arguments)]
pub fn copy_channels(
    l: &dyn Launcher,
    x: DevPtr,
    y: DevPtr,
    rows: usize,
    ci: usize,
    ct: usize,
    offset: usize,
    act: Act,
) -> Result<()> {
    if offset + ci > ct {
        return Err(Error::Config(format!(
            "channel copy of {ci} channels at offset {offset} into rows of {ct}"
        )));
    }
    l.launch(
        "cd_nn_copy_channels",
        linear(rows * ci)?,
        &[
            KArg::Ptr(x),
            KArg::Ptr(y),
            KArg::I64(rows as i64),
            KArg::I32(ci as i32),
            KArg::I32(ct as i32),
            KArg::I32(offset as i32),
            KArg::I32(act as i32),
        ],
    )
}

/// Dense layer: x (m,k) -> y (m,n) with weights (k,n), fused bias and activation.
#[allow(clippy::too_many_arguments)]
pub fn dense(
    l: &dyn Launcher,
    x: DevPtr,
    w: DevPtr,
    bias: Option<DevPtr>,
    y: DevPtr,
    m: usize,
    k: usize,
    n: usize,
    act: Act,
) -> Result<()> {
    l.launch(
        "cd_nn_dense",
        Dims {
            grid: [n.div_ceil(GEMM_T) as u32, m.div_ceil(GEMM_T) as u32, 1],
            block: [GEMM_T as u32, GEMM_T as u32, 1],
            shmem: 0,
        },
        &[
            KArg::Ptr(x),
            KArg::Ptr(w),
            opt(bias),
            KArg::Ptr(y),
            KArg::I32(m as i32),
            KArg::I32(k as i32),
            KArg::I32(n as i32),
            KArg::I32(act as i32),
        ],
    )
}

/// Activation in place over `n` values.
pub fn activate(l: &dyn Launcher, x: DevPtr, n: usize, act: Act) -> Result<()> {
    l.launch(
        "cd_nn_activate",
        linear(n)?,
        &[KArg::Ptr(x), KArg::I64(n as i64), KArg::I32(act as i32)],
    )
}

/// Divide each of `patterns` patterns of `per` values by its maximum, in place.
pub fn normalize_max(l: &dyn Launcher, x: DevPtr, patterns: usize, per: usize) -> Result<()> {
    l.launch(
        "cd_nn_normalize_max",
        Dims {
            grid: [patterns as u32, 1, 1],
            block: [BLOCK, 1, 1],
            shmem: 0,
        },
        &[KArg::Ptr(x), KArg::I32(per as i32)],
    )
}

/// Support masks (u8) of `patterns` network outputs: value >= frac * the pattern's maximum.
pub fn support_threshold(
    l: &dyn Launcher,
    x: DevPtr,
    patterns: usize,
    per: usize,
    frac: f32,
    out: DevPtr,
) -> Result<()> {
    l.launch(
        "cd_nn_support_threshold",
        Dims {
            grid: [patterns as u32, 1, 1],
            block: [BLOCK, 1, 1],
            shmem: 0,
        },
        &[
            KArg::Ptr(x),
            KArg::I32(per as i32),
            KArg::F32(frac),
            KArg::Ptr(out),
        ],
    )
}

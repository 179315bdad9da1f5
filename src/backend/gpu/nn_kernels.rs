//! The typed wrappers of the network kernels (`kernels/nn.cu`), shared by the CUDA backend
//! and the emulator: one safe function per kernel, with its launch shape and argument list.
//! Tensors are NHWC float32 device buffers ([`DevBuf`]); weights in Keras layouts. Each
//! wrapper checks every buffer against the values the kernel reads or writes for the given
//! shape (and the counts against the kernels' 32-bit indices) before it launches, which is
//! the contract of the `unsafe` [`Launcher::launch`].

use crate::backend::gpu::launcher::{
    int_arg, DevBuf, DevPtr, Dims, KArg, Launcher, BLOCK, MAX_DYN_SHARED,
};
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

/// An optional array argument (null when absent).
fn opt(b: Option<&DevBuf>) -> KArg {
    KArg::Ptr(b.map_or(DevPtr::NULL, DevBuf::ptr))
}

/// Check an f32 buffer of `n` values for argument `what` of `kernel`.
fn f32s(l: &dyn Launcher, b: &DevBuf, n: usize, kernel: &str, what: &str) -> Result<()> {
    b.check::<f32>(l, n, &format!("{kernel} {what}"))
}

/// [`f32s`] for an optional buffer.
fn opt_f32s(
    l: &dyn Launcher,
    b: Option<&DevBuf>,
    n: usize,
    kernel: &str,
    what: &str,
) -> Result<()> {
    b.map_or(Ok(()), |b| f32s(l, b, n, kernel, what))
}

/// The element count `a * b * ...` of a tensor, checked against overflow.
fn count(dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::Config(format!("tensor {dims:?} is too large")))
}

/// Integer kernel arguments: each must fit an `int`.
fn ints(v: &[(usize, &str)]) -> Result<Vec<KArg>> {
    v.iter().map(|&(x, what)| int_arg(x, what)).collect()
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

    fn args(&self) -> Result<Vec<KArg>> {
        ints(&[
            (self.kernel[0], "kernel rows"),
            (self.kernel[1], "kernel columns"),
            (self.strides[0], "row stride"),
            (self.strides[1], "column stride"),
            (self.pad[0], "top padding"),
            (self.pad[1], "left padding"),
        ])
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
    x: &DevBuf,
    w: &DevBuf,
    bias: Option<&DevBuf>,
    y: &DevBuf,
    shape: [usize; 4],
    cout: usize,
    k: usize,
    act: Act,
) -> Result<()> {
    const K: &str = "cd_nn_conv2d";
    let [n, h, wd, cin] = shape;
    let shmem = conv_shared_bytes(k);
    if shmem > MAX_DYN_SHARED {
        return Err(Error::Config(format!(
            "a {k}x{k} convolution kernel needs {shmem} bytes of shared memory (limit {MAX_DYN_SHARED})"
        )));
    }
    f32s(l, x, count(&[n, h, wd, cin])?, K, "x")?;
    f32s(l, w, count(&[k, k, cin, cout])?, K, "weights")?;
    opt_f32s(l, bias, cout, K, "bias")?;
    f32s(l, y, count(&[n, h, wd, cout])?, K, "y")?;
    let mut args = vec![x.arg(), w.arg(), opt(bias), y.arg()];
    args.extend(ints(&[
        (n, "batch"),
        (h, "height"),
        (wd, "width"),
        (cin, "input channels"),
        (cout, "output channels"),
        (k, "kernel size"),
    ])?);
    args.push(KArg::I32(act as i32));
    let dims = Dims {
        grid: [
            wd.div_ceil(CONV_TS) as u32,
            h.div_ceil(CONV_TS) as u32,
            u32::try_from(n * cout.div_ceil(CONV_COT))
                .map_err(|_| Error::Config(format!("{K}: batch x channel groups too large")))?,
        ],
        block: [CONV_TS as u32, CONV_TS as u32, 1],
        shmem: shmem as u32,
    };
    // SAFETY: x, w, bias, y were checked above against what the kernel reads and writes
    // for this shape (x and y n*h*w channels, w k*k*cin*cout, bias cout), on this launcher.
    unsafe { l.launch(K, dims, &args) }
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
    x: &DevBuf,
    w: &DevBuf,
    bias: Option<&DevBuf>,
    y: &DevBuf,
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
    x: &DevBuf,
    w: &DevBuf,
    bias: Option<&DevBuf>,
    y: &DevBuf,
    shape: [usize; 4],
    cout: usize,
    g: ConvGeom,
    act: Act,
) -> Result<()> {
    let [n, h, wd, cin] = shape;
    let [ho, wo] = g.out;
    // the kernels read inside the input only (taps outside it are padding)
    f32s(l, x, count(&[n, h, wd, cin])?, kernel, "x")?;
    f32s(
        l,
        w,
        count(&[g.kernel[0], g.kernel[1], cin, cout])?,
        kernel,
        "weights",
    )?;
    opt_f32s(l, bias, cout, kernel, "bias")?;
    f32s(l, y, count(&[n, ho, wo, cout])?, kernel, "y")?;
    let mut dims = linear(n * ho * wo)?;
    dims.grid[1] = cout.div_ceil(CONV_COT) as u32;
    let mut args = vec![x.arg(), w.arg(), opt(bias), y.arg()];
    args.extend(ints(&[
        (n, "batch"),
        (h, "height"),
        (wd, "width"),
        (cin, "input channels"),
        (ho, "output height"),
        (wo, "output width"),
        (cout, "output channels"),
    ])?);
    args.extend(g.args()?);
    args.push(KArg::I32(act as i32));
    // SAFETY: x (n,h,w,cin), the weights (kh,kw,cin,cout), bias (cout) and y (n,ho,wo,cout)
    // were checked above, on this launcher; the kernel reads the input only at in-range
    // pixels.
    unsafe { l.launch(kernel, dims, &args) }
}

/// The convolution weights (k,k,cin,cout) equivalent to a stride-1 'same' Conv2DTranspose
/// with Keras weights `wt` (k,k,cout,cin), k odd.
pub fn conv_transpose_weights(
    l: &dyn Launcher,
    wt: &DevBuf,
    k: usize,
    cin: usize,
    cout: usize,
    w: &DevBuf,
) -> Result<()> {
    const K: &str = "cd_nn_convT_weights";
    if k.is_multiple_of(2) {
        return Err(Error::Config(format!(
            "a stride-1 transposed convolution with an even kernel ({k}x{k}) has no equivalent 'same' convolution; use conv_transpose2d"
        )));
    }
    let len = count(&[k, k, cin, cout])?;
    f32s(l, wt, len, K, "Keras weights")?;
    f32s(l, w, len, K, "weights")?;
    let mut args = vec![wt.arg()];
    args.extend(ints(&[
        (k, "kernel size"),
        (cin, "input channels"),
        (cout, "output channels"),
    ])?);
    args.push(w.arg());
    // SAFETY: both weight buffers hold k*k*cin*cout values (checked above, this launcher).
    unsafe { l.launch(K, linear(len)?, &args) }
}

/// Conv2DTranspose with stride `s`, 'same': x (n,h,w,cin) -> y (n,h*s,w*s,cout), Keras
/// weights (k,k,cout,cin), direct gather ([`conv_transpose2d_general`] with a square kernel).
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d(
    l: &dyn Launcher,
    x: &DevBuf,
    wt: &DevBuf,
    bias: Option<&DevBuf>,
    y: &DevBuf,
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
    x: &DevBuf,
    wt: &DevBuf,
    bias: Option<&DevBuf>,
    y: &DevBuf,
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
pub fn maxpool2(l: &dyn Launcher, x: &DevBuf, y: &DevBuf, shape: [usize; 4]) -> Result<()> {
    const K: &str = "cd_nn_maxpool2";
    let [n, h, w, c] = shape;
    let out = count(&[n, h / 2, w / 2, c])?;
    f32s(l, x, count(&[n, h, w, c])?, K, "x")?;
    f32s(l, y, out, K, "y")?;
    let mut args = vec![x.arg(), y.arg()];
    args.extend(ints(&[
        (n, "batch"),
        (h, "height"),
        (w, "width"),
        (c, "channels"),
    ])?);
    // SAFETY: x (n,h,w,c) and y (n,h/2,w/2,c) were checked above, on this launcher.
    unsafe { l.launch(K, linear(out)?, &args) }
}

/// Max-pooling, any pool size, strides and padding: (n,h,w,c) -> (n,ho,wo,c) with `g` from
/// [`ConvGeom::conv`] (kernel = the pool size).
pub fn maxpool(
    l: &dyn Launcher,
    x: &DevBuf,
    y: &DevBuf,
    shape: [usize; 4],
    g: ConvGeom,
) -> Result<()> {
    const K: &str = "cd_nn_maxpool";
    let [n, h, w, c] = shape;
    let [ho, wo] = g.out;
    let out = count(&[n, ho, wo, c])?;
    f32s(l, x, count(&[n, h, w, c])?, K, "x")?;
    f32s(l, y, out, K, "y")?;
    let mut args = vec![x.arg(), y.arg()];
    args.extend(ints(&[
        (n, "batch"),
        (h, "height"),
        (w, "width"),
        (c, "channels"),
        (ho, "output height"),
        (wo, "output width"),
    ])?);
    args.extend(g.args()?);
    // SAFETY: x (n,h,w,c) and y (n,ho,wo,c) were checked above, on this launcher; windows
    // read the input only at in-range pixels.
    unsafe { l.launch(K, linear(out)?, &args) }
}

/// Nearest upsampling by `f` on both axes: (n,h,w,c) -> (n,h*f,w*f,c).
pub fn upsample(
    l: &dyn Launcher,
    x: &DevBuf,
    y: &DevBuf,
    shape: [usize; 4],
    f: usize,
) -> Result<()> {
    upsample2d(l, x, y, shape, [f, f])
}

/// Nearest upsampling by (fy, fx): (n,h,w,c) -> (n,h*fy,w*fx,c).
pub fn upsample2d(
    l: &dyn Launcher,
    x: &DevBuf,
    y: &DevBuf,
    shape: [usize; 4],
    [fy, fx]: [usize; 2],
) -> Result<()> {
    const K: &str = "cd_nn_upsample";
    let [n, h, w, c] = shape;
    let out = count(&[n, h, fy, w, fx, c])?;
    f32s(l, x, count(&[n, h, w, c])?, K, "x")?;
    f32s(l, y, out, K, "y")?;
    let mut args = vec![x.arg(), y.arg()];
    args.extend(ints(&[
        (n, "batch"),
        (h, "height"),
        (w, "width"),
        (c, "channels"),
        (fy, "row factor"),
        (fx, "column factor"),
    ])?);
    // SAFETY: x (n,h,w,c) and y (n,h*fy,w*fx,c) were checked above, on this launcher.
    unsafe { l.launch(K, linear(out)?, &args) }
}

/// Channel copy with an activation: `y[r*ct + offset + c] = act(x[r*ci + c])` for r < rows,
/// c < ci (`cd_nn_copy_channels`). One launch per input of a channel Concatenate; with
/// ct = ci and offset 0 an out-of-place activation.
#[allow(clippy::too_many_arguments)]
pub fn copy_channels(
    l: &dyn Launcher,
    x: &DevBuf,
    y: &DevBuf,
    rows: usize,
    ci: usize,
    ct: usize,
    offset: usize,
    act: Act,
) -> Result<()> {
    const K: &str = "cd_nn_copy_channels";
    if offset + ci > ct {
        return Err(Error::Config(format!(
            "channel copy of {ci} channels at offset {offset} into rows of {ct}"
        )));
    }
    f32s(l, x, count(&[rows, ci])?, K, "x")?;
    f32s(l, y, count(&[rows, ct])?, K, "y")?;
    let mut args = vec![x.arg(), y.arg(), KArg::I64(rows as i64)];
    args.extend(ints(&[
        (ci, "channels"),
        (ct, "output channels"),
        (offset, "offset"),
    ])?);
    args.push(KArg::I32(act as i32));
    // SAFETY: x (rows, ci) and y (rows, ct) were checked above, on this launcher, and
    // offset + ci <= ct.
    unsafe { l.launch(K, linear(rows * ci)?, &args) }
}

/// Dense layer: x (m,k) -> y (m,n) with weights (k,n), fused bias and activation.
#[allow(clippy::too_many_arguments)]
pub fn dense(
    l: &dyn Launcher,
    x: &DevBuf,
    w: &DevBuf,
    bias: Option<&DevBuf>,
    y: &DevBuf,
    m: usize,
    k: usize,
    n: usize,
    act: Act,
) -> Result<()> {
    const K: &str = "cd_nn_dense";
    f32s(l, x, count(&[m, k])?, K, "x")?;
    f32s(l, w, count(&[k, n])?, K, "weights")?;
    opt_f32s(l, bias, n, K, "bias")?;
    f32s(l, y, count(&[m, n])?, K, "y")?;
    let mut args = vec![x.arg(), w.arg(), opt(bias), y.arg()];
    args.extend(ints(&[(m, "rows"), (k, "inputs"), (n, "units")])?);
    args.push(KArg::I32(act as i32));
    let dims = Dims {
        grid: [n.div_ceil(GEMM_T) as u32, m.div_ceil(GEMM_T) as u32, 1],
        block: [GEMM_T as u32, GEMM_T as u32, 1],
        shmem: 0,
    };
    // SAFETY: x (m,k), the weights (k,n), bias (n) and y (m,n) were checked above, on this
    // launcher.
    unsafe { l.launch(K, dims, &args) }
}

/// Activation in place over the first `n` values of `x`.
pub fn activate(l: &dyn Launcher, x: &DevBuf, n: usize, act: Act) -> Result<()> {
    const K: &str = "cd_nn_activate";
    f32s(l, x, n, K, "x")?;
    let args = [x.arg(), KArg::I64(n as i64), KArg::I32(act as i32)];
    // SAFETY: x holds n values (checked above, this launcher).
    unsafe { l.launch(K, linear(n)?, &args) }
}

/// One block per pattern: `patterns` blocks of `BLOCK` threads.
fn per_pattern(patterns: usize) -> Result<Dims> {
    Ok(Dims {
        grid: [
            u32::try_from(patterns)
                .map_err(|_| Error::Config(format!("{patterns} patterns exceed one launch")))?,
            1,
            1,
        ],
        block: [BLOCK, 1, 1],
        shmem: 0,
    })
}

/// Divide each of `patterns` patterns of `per` values by its maximum, in place.
pub fn normalize_max(l: &dyn Launcher, x: &DevBuf, patterns: usize, per: usize) -> Result<()> {
    const K: &str = "cd_nn_normalize_max";
    f32s(l, x, count(&[patterns, per])?, K, "x")?;
    let args = [x.arg(), int_arg(per, "values per pattern")?];
    // SAFETY: x holds patterns * per values (checked above, this launcher).
    unsafe { l.launch(K, per_pattern(patterns)?, &args) }
}

/// Support masks (u8) of `patterns` network outputs: value >= frac * the pattern's maximum.
pub fn support_threshold(
    l: &dyn Launcher,
    x: &DevBuf,
    patterns: usize,
    per: usize,
    frac: f32,
    out: &DevBuf,
) -> Result<()> {
    const K: &str = "cd_nn_support_threshold";
    let len = count(&[patterns, per])?;
    f32s(l, x, len, K, "x")?;
    out.check::<u8>(l, len, &format!("{K} support"))?;
    let args = [
        x.arg(),
        int_arg(per, "values per pattern")?,
        KArg::F32(frac),
        out.arg(),
    ];
    // SAFETY: x (patterns * per f32) and out (patterns * per u8) were checked above, on
    // this launcher.
    unsafe { l.launch(K, per_pattern(patterns)?, &args) }
}

//! Launch shapes of the network kernels (`kernels/nn.cu`), shared by the CUDA backend and the
//! emulator. Tensors are NHWC float32 device buffers; weights in Keras layouts.

use super::gpu_common::{DevPtr, Dims, KArg, Launcher, BLOCK, MAX_DYN_SHARED};
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

fn linear(n: usize) -> Result<[u32; 3]> {
    let blocks = n.div_ceil(BLOCK as usize);
    if blocks > u32::MAX as usize {
        return Err(Error::Config(format!("{n} elements exceed one launch")));
    }
    Ok([blocks.max(1) as u32, 1, 1])
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
        Dims {
            grid: linear(k * k * cin * cout)?,
            block: [BLOCK, 1, 1],
            shmem: 0,
        },
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
/// weights (k,k,cout,cin), direct gather.
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
    let [n, h, wd, cin] = shape;
    let mut grid = linear(n * h * s * wd * s)?;
    grid[1] = cout.div_ceil(CONV_COT) as u32;
    l.launch(
        "cd_nn_conv_transpose2d",
        Dims {
            grid,
            block: [BLOCK, 1, 1],
            shmem: 0,
        },
        &[
            KArg::Ptr(x),
            KArg::Ptr(wt),
            opt(bias),
            KArg::Ptr(y),
            KArg::I32(n as i32),
            KArg::I32(h as i32),
            KArg::I32(wd as i32),
            KArg::I32(cin as i32),
            KArg::I32(cout as i32),
            KArg::I32(k as i32),
            KArg::I32(s as i32),
            KArg::I32(act as i32),
        ],
    )
}

/// 2x2 max-pooling, stride 2, 'valid': (n,h,w,c) -> (n,h/2,w/2,c).
pub fn maxpool2(l: &dyn Launcher, x: DevPtr, y: DevPtr, shape: [usize; 4]) -> Result<()> {
    let [n, h, w, c] = shape;
    l.launch(
        "cd_nn_maxpool2",
        Dims {
            grid: linear(n * (h / 2) * (w / 2) * c)?,
            block: [BLOCK, 1, 1],
            shmem: 0,
        },
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

/// Nearest upsampling by `f`: (n,h,w,c) -> (n,h*f,w*f,c).
pub fn upsample(l: &dyn Launcher, x: DevPtr, y: DevPtr, shape: [usize; 4], f: usize) -> Result<()> {
    let [n, h, w, c] = shape;
    l.launch(
        "cd_nn_upsample",
        Dims {
            grid: linear(n * h * f * w * f * c)?,
            block: [BLOCK, 1, 1],
            shmem: 0,
        },
        &[
            KArg::Ptr(x),
            KArg::Ptr(y),
            KArg::I32(n as i32),
            KArg::I32(h as i32),
            KArg::I32(w as i32),
            KArg::I32(c as i32),
            KArg::I32(f as i32),
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
        Dims {
            grid: linear(n)?,
            block: [BLOCK, 1, 1],
            shmem: 0,
        },
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

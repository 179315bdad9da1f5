//! CPU inference: batched NHWC, rayon over (image, row tile) work items, the `gemm` crate for
//! every convolution and dense layer, bias and activation fused into the GEMM epilogue.
//!
//! Convolutions (and transposed convolutions, rewritten as convolutions over a zero-dilated,
//! padded input with the kernel flipped and its channel axes swapped) read a *virtual padded
//! input* P: `P[j, i] = X[(j - pt) / dh, (i - pl) / dw]` where the division is exact and in
//! range, else 0; output `O[y, x] = sum_{dy,dx} P[y*sh + dy, x*sw + dx] . W[dy, dx]`.
//!
//! * stride 1 and at least 16 input channels ("shifted GEMM"): a tile of output rows copies
//!   its rows of P (with the padding columns) into a thread-local buffer of width
//!   `Wp = Wo + kw - 1`; then each of the kh*kw taps is one GEMM whose left operand is that
//!   buffer shifted by the tap (`dy*Wp + dx` pixels), accumulating into an output tile of
//!   width Wp whose last kw-1 columns are discarded by the epilogue. No im2col copy.
//! * otherwise (stride 2, few input channels): im2col of the tile, one GEMM with
//!   K = kh*kw*Cin written straight into the output.
//!
//! Memory: activations live in an arena of slots assigned once per batch size by liveness
//! (a chain needs two, skips hold theirs until the Concatenate), plus one scratch buffer per
//! thread; nothing is allocated per layer in steady state.

use std::sync::{Arc, Mutex};

use gemm::Parallelism;
use rayon::prelude::*;

mod conv;
mod direct;
mod matmul;
mod winograd;

use super::features::{CpuFeatures, DotPeak};
pub use crate::backend::Mode;
use crate::nn::model::{Model, Tensor};
use crate::nn::spec::{same_pad_before, Activation, ModelSpec, Op, Padding};
use crate::{Error, Result};
use conv::{ConvAlgo, ConvStep, DirectKind};
use matmul::{epilogue_inplace, sgemm};

/// Does this CPU and kernel run the AMX bf16 kernels (`Mode::Bf16` then uses them)?
pub fn amx_available() -> bool {
    CpuFeatures::detect().amx()
}

/// How much faster, per FLOP, AVX512_BF16's dot products must be than the f32 FMAs on
/// this core for `--fast` to take them: the bf16 kernels also convert every band to bf16
/// and run the same tiles, so a ratio near 1 (Intel Sapphire Rapids: 0.5-1) loses.
pub const FAST_BF16_MIN_RATIO: f64 = 1.4;

/// The fastest opt-in mode on this CPU (`--fast`) and why: bf16 on AMX where the kernel
/// grants it; else bf16 on AVX512_BF16 where its dot products measured at least
/// [`FAST_BF16_MIN_RATIO`] x the f32 FMA rate ([`DotPeak`], e.g. AMD Zen 4: ~2x; the
/// 3x3 layers with >= 64 channels then run f32 Winograd, faster still); else f32 (the default,
/// already Winograd F(4x4, 3x3) on the wide layers), since no faster path is known there.
pub fn fast_mode() -> (Mode, String) {
    let isa = CpuFeatures::detect();
    if isa.amx() {
        return (Mode::Bf16, "bf16 on AMX tiles (tdpbf16ps)".into());
    }
    match DotPeak::measure(&isa) {
        Some(p) if p.ratio() >= FAST_BF16_MIN_RATIO => (
            Mode::Bf16,
            format!(
                "bf16 with AVX512_BF16: vdpbf16ps measured {:.2}x the f32 FMA rate on this \
                 core ({:.0} against {:.0} GFLOP/s); f32 Winograd F(4x4,3x3), faster still, on \
                 the 3x3 layers with >= 64 channels",
                p.ratio(),
                p.bf16_gflops,
                p.f32_gflops
            ),
        ),
        Some(p) => (
            Mode::F32,
            format!(
                "f32 (Winograd F(4x4,3x3) on wide layers): vdpbf16ps measured only {:.2}x \
                 the f32 FMA rate on this core (< {}), and no faster path is known for this CPU",
                p.ratio(),
                FAST_BF16_MIN_RATIO
            ),
        ),
        None => (
            Mode::F32,
            "f32 (Winograd F(4x4,3x3) on wide layers where the CPU has AVX-512F): this CPU \
             has neither AMX nor AVX512_BF16, and no faster path is known for it"
                .into(),
        ),
    }
}

/// Engine options.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub threads: usize,
    pub mode: Mode,
    /// Fill the arena with NaN when it is allocated and each layer's output before its kernel
    /// runs (tests: a kernel that skips an element shows up as NaN).
    pub poison: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            mode: Mode::F32,
            poison: false,
        }
    }
}

#[derive(Debug)]
enum Kind {
    Conv(Box<ConvStep>),
    Dense {
        cin: usize,
        units: usize,
        wgt: Vec<f32>,
        bias: Vec<f32>,
        act: Activation,
    },
    MaxPool {
        h: usize,
        w: usize,
        c: usize,
        ho: usize,
        wo: usize,
        p: [usize; 2],
        s: [usize; 2],
        pt: usize,
        pl: usize,
    },
    Up {
        h: usize,
        w: usize,
        c: usize,
        s: [usize; 2],
    },
    /// channel concatenation: per-input channel counts
    Concat {
        pixels: usize,
        cs: Vec<usize>,
    },
    Act(Activation),
    Alias,
}

#[derive(Debug)]
struct Step {
    name: String,
    kind: Kind,
    inputs: Vec<usize>,
    out: usize,
    /// elements per image of the output value
    out_len: usize,
}

/// A compiled network (weights rearranged for the kernels), independent of the batch size.
#[derive(Debug)]
pub struct Network {
    pub spec: ModelSpec,
    steps: Vec<Step>,
    /// elements per image of every value
    value_len: Vec<usize>,
    output_value: usize,
    pub output_shape: Vec<usize>,
    pub params: usize,
    pub flop_per_image: f64,
    pub mode: Mode,
    /// The instruction sets its kernels were chosen for.
    isa: CpuFeatures,
}

impl Network {
    /// Compile a model for this CPU ([`CpuFeatures::detect`]): shape inference, kernel
    /// rearrangement (Conv2DTranspose flipped and transposed), algorithm choice per layer.
    pub fn new(model: &Model, mode: Mode) -> Result<Network> {
        Network::with_features(model, mode, CpuFeatures::detect())
    }

    /// [`Network::new`] with the kernels chosen from `isa` (detected once by the caller, or
    /// narrowed, e.g. [`CpuFeatures::portable`] for the portable paths).
    pub fn with_features(model: &Model, mode: Mode, isa: CpuFeatures) -> Result<Network> {
        if (mode == Mode::Bf16 && !isa.avx512bf16() && !isa.amx())
            || (mode == Mode::Bf16Avx512 && !isa.avx512bf16())
        {
            return Err(Error::Config(format!(
                "{} mode needs a CPU with AMX-BF16 or AVX-512F with AVX512_BF16; this one \
                 lacks them: use f32 or winograd",
                mode.name()
            )));
        }
        let spec = &model.spec;
        let shapes = spec.shapes()?;
        let w = |name: &str, sfx: &str| -> Result<&Tensor> {
            model
                .weights
                .get(&format!("{name}/{sfx}"))
                .ok_or_else(|| Error::Config(format!("weight '{name}/{sfx}' is missing")))
        };
        // value id of every node (index into shapes); aliases share their input's value
        let mut node_value = vec![0usize];
        let mut value_len = vec![shapes[0].iter().product::<usize>()];
        let mut steps = Vec::new();
        for (li, l) in spec.layers.iter().enumerate() {
            let ins: Vec<usize> = l
                .inputs
                .iter()
                .map(|n| spec.index_of(n).expect("checked by shapes()"))
                .collect();
            let in_shape = &shapes[ins[0]];
            let out_shape = &shapes[li + 1];
            let out_len: usize = out_shape.iter().product();
            let in_values: Vec<usize> = ins.iter().map(|&i| node_value[i]).collect();
            let kind = match &l.op {
                Op::Conv2D {
                    kernel,
                    strides,
                    padding,
                    activation,
                    use_bias,
                    filters,
                } => {
                    let (h, wd, cin) = (in_shape[0], in_shape[1], in_shape[2]);
                    let (pt, pl) = match padding {
                        Padding::Same => (
                            same_pad_before(h, kernel[0], strides[0]),
                            same_pad_before(wd, kernel[1], strides[1]),
                        ),
                        Padding::Valid => (0, 0),
                    };
                    let k = w(&l.name, "kernel")?;
                    let bias = if *use_bias {
                        w(&l.name, "bias")?.data.clone()
                    } else {
                        vec![0.0; *filters]
                    };
                    Kind::Conv(Box::new(conv_step(
                        [h, wd, cin],
                        [out_shape[0], out_shape[1], *filters],
                        *kernel,
                        *strides,
                        [1, 1],
                        pt,
                        pl,
                        k.data.clone(),
                        bias,
                        *activation,
                        mode,
                        isa,
                    )))
                }
                Op::Conv2DTranspose {
                    kernel,
                    strides,
                    padding,
                    activation,
                    use_bias,
                    filters,
                } => {
                    let (h, wd, cin) = (in_shape[0], in_shape[1], in_shape[2]);
                    let (ho, wo) = (out_shape[0], out_shape[1]);
                    let (p0, p1) = match padding {
                        Padding::Same => (
                            same_pad_before(ho, kernel[0], strides[0]),
                            same_pad_before(wo, kernel[1], strides[1]),
                        ),
                        Padding::Valid => (0, 0),
                    };
                    let k = w(&l.name, "kernel")?;
                    let (kh, kw, co) = (kernel[0], kernel[1], *filters);
                    // W'[dy,dx,ci,co] = K[kh-1-dy, kw-1-dx, co, ci]
                    let mut wf = vec![0.0f32; kh * kw * cin * co];
                    for dy in 0..kh {
                        for dx in 0..kw {
                            for ci in 0..cin {
                                for o in 0..co {
                                    wf[((dy * kw + dx) * cin + ci) * co + o] =
                                        k.data[(((kh - 1 - dy) * kw + (kw - 1 - dx)) * co + o)
                                            * cin
                                            + ci];
                                }
                            }
                        }
                    }
                    let bias = if *use_bias {
                        w(&l.name, "bias")?.data.clone()
                    } else {
                        vec![0.0; co]
                    };
                    Kind::Conv(Box::new(conv_step(
                        [h, wd, cin],
                        [ho, wo, co],
                        *kernel,
                        [1, 1],
                        *strides,
                        kh - 1 - p0,
                        kw - 1 - p1,
                        wf,
                        bias,
                        *activation,
                        mode,
                        isa,
                    )))
                }
                Op::Dense {
                    units,
                    activation,
                    use_bias,
                } => {
                    let cin = *in_shape.last().unwrap();
                    Kind::Dense {
                        cin,
                        units: *units,
                        wgt: w(&l.name, "kernel")?.data.clone(),
                        bias: if *use_bias {
                            w(&l.name, "bias")?.data.clone()
                        } else {
                            vec![0.0; *units]
                        },
                        act: *activation,
                    }
                }
                Op::MaxPooling2D {
                    pool,
                    strides,
                    padding,
                } => {
                    let (h, wd, c) = (in_shape[0], in_shape[1], in_shape[2]);
                    let (pt, pl) = match padding {
                        Padding::Same => (
                            same_pad_before(h, pool[0], strides[0]),
                            same_pad_before(wd, pool[1], strides[1]),
                        ),
                        Padding::Valid => (0, 0),
                    };
                    Kind::MaxPool {
                        h,
                        w: wd,
                        c,
                        ho: out_shape[0],
                        wo: out_shape[1],
                        p: *pool,
                        s: *strides,
                        pt,
                        pl,
                    }
                }
                Op::UpSampling2D { size } => Kind::Up {
                    h: in_shape[0],
                    w: in_shape[1],
                    c: in_shape[2],
                    s: *size,
                },
                Op::Concatenate => Kind::Concat {
                    pixels: out_len / out_shape.last().unwrap(),
                    cs: ins.iter().map(|&i| *shapes[i].last().unwrap()).collect(),
                },
                Op::Activation { activation } => Kind::Act(*activation),
                Op::Flatten | Op::Reshape { .. } | Op::Dropout => Kind::Alias,
            };
            let out = if matches!(kind, Kind::Alias) {
                in_values[0]
            } else {
                value_len.push(out_len);
                value_len.len() - 1
            };
            node_value.push(out);
            steps.push(Step {
                name: l.name.clone(),
                kind,
                inputs: in_values,
                out,
                out_len,
            });
        }
        let oi = spec.index_of(&spec.output).expect("checked by shapes()");
        fuse_upsampling(&mut steps, node_value[oi]);
        fuse_pooling(&mut steps, node_value[oi]);
        if std::env::var("CDIPHASE_NO_PRODUCER_FUSION").is_err() {
            fuse_producers(&mut steps, node_value[oi]);
        }
        Ok(Network {
            spec: spec.clone(),
            steps,
            value_len,
            output_value: node_value[oi],
            output_shape: shapes[oi].clone(),
            params: spec.params()?,
            flop_per_image: spec.flop_per_image()?,
            mode,
            isa,
        })
    }

    /// Elements per image of the input.
    pub fn input_len(&self) -> usize {
        self.spec.input.iter().product()
    }

    /// Elements per image of the output.
    pub fn output_len(&self) -> usize {
        self.output_shape.iter().product()
    }
}

/// Fold each UpSampling2D whose output only one convolution reads (and that is not the
/// network output) into that convolution, which then reads the smaller input directly
/// ([`ConvStep::up`]): the upsampled tensor is never written. Exact, no numerical change.
fn fuse_upsampling(steps: &mut Vec<Step>, output_value: usize) {
    let mut k = 0;
    while k < steps.len() {
        let Kind::Up { s, .. } = steps[k].kind else {
            k += 1;
            continue;
        };
        let v = steps[k].out;
        let readers: Vec<usize> = (0..steps.len())
            .filter(|&i| steps[i].inputs.contains(&v))
            .collect();
        let fusable = v != output_value
            && readers.len() == 1
            && steps[readers[0]].inputs.len() == 1
            && matches!(&steps[readers[0]].kind, Kind::Conv(c) if c.up == [1, 1]);
        if !fusable {
            k += 1;
            continue;
        }
        let up = steps.remove(k);
        let r = readers[0] - usize::from(readers[0] > k);
        let conv = &mut steps[r];
        if let Kind::Conv(c) = &mut conv.kind {
            c.up = s;
            if let (ConvAlgo::Winograd, Some(k)) = (c.algo, c.direct_kind.take()) {
                // the sub-pixel classes need 4 taps where Winograd computes 9
                c.direct = Some(direct::pack(&c.wgt, &c.bias, 9, c.cin, c.cout, k));
                c.algo = ConvAlgo::Direct;
                c.wino = Vec::new();
                c.wino_pack = None;
            }
            if std::env::var("CDIPHASE_NO_SUBPIXEL").is_err() {
                c.subpixel = c.direct.as_ref().and_then(|p| direct::subpixel(c, p.kind));
            }
        }
        conv.inputs = up.inputs;
        conv.name = format!("{}+{}", up.name, conv.name);
    }
}

/// Fold each 2x2 stride-2 MaxPooling2D (even input, no padding) whose input only it reads
/// and a convolution writes into that convolution ([`ConvStep::pool`]): every band is
/// pooled while it is in cache, and the full-resolution tensor is never written. Exact.
fn fuse_pooling(steps: &mut Vec<Step>, output_value: usize) {
    let mut k = 0;
    while k < steps.len() {
        let Kind::MaxPool {
            h, w, p, s, pt, pl, ..
        } = steps[k].kind
        else {
            k += 1;
            continue;
        };
        let v = steps[k].inputs[0];
        let readers = steps.iter().filter(|st| st.inputs.contains(&v)).count();
        let writer = steps.iter().position(|st| st.out == v);
        let fusable = p == [2, 2]
            && s == [2, 2]
            && pt == 0
            && pl == 0
            && h % 2 == 0
            && w % 2 == 0
            && v != output_value
            && readers == 1
            && writer.is_some_and(
                |j| matches!(&steps[j].kind, Kind::Conv(c) if !c.pool && c.ho == h && c.wo == w),
            );
        if !fusable {
            k += 1;
            continue;
        }
        let j = writer.expect("checked");
        let pool = steps.remove(k);
        let j = j - usize::from(j > k);
        let conv = &mut steps[j];
        if let Kind::Conv(c) = &mut conv.kind {
            c.pool = true;
        }
        conv.out = pool.out;
        conv.out_len = pool.out_len;
        conv.name = format!("{}+{}", conv.name, pool.name);
    }
}

/// Largest `kh * kw * cin` of a convolution computed inside the next one
/// ([`fuse_producers`]): such a layer does few FLOPs per value it writes, so writing and
/// re-reading its output costs more than computing the few rows two bands share twice.
const PRODUCER_MAX_REDUCTION: usize = 27;

/// Fold each cheap direct f32 convolution (stride 1, a reduction of at most
/// [`PRODUCER_MAX_REDUCTION`], nothing else fused into it) whose output only one plain
/// direct or Winograd convolution (stride 1, no upsampling; f32, bf16 or AMX) reads into
/// that reader
/// ([`ConvStep::pre`]). On the paper's network this is conv2d_1 (1 -> 64 channels at
/// 128x128): its 4 MB per image were written to memory and read back by conv2d_2. Exact:
/// the same kernel computes the same rows.
fn fuse_producers(steps: &mut Vec<Step>, output_value: usize) {
    let mut k = 0;
    while k < steps.len() {
        let Kind::Conv(c) = &steps[k].kind else {
            k += 1;
            continue;
        };
        let plain = |c: &ConvStep| {
            matches!(c.algo, ConvAlgo::Direct | ConvAlgo::Winograd)
                && c.s == [1, 1]
                && c.d == [1, 1]
                && c.up == [1, 1]
                && c.subpixel.is_none()
                && c.pre.is_none()
        };
        let v = steps[k].inputs[0];
        let readers = steps.iter().filter(|st| st.inputs.contains(&v)).count();
        let writer = steps.iter().position(|st| st.out == v);
        let fusable = plain(c)
            && steps[k].inputs.len() == 1
            && v != output_value
            && readers == 1
            && writer.is_some_and(|j| {
                matches!(&steps[j].kind, Kind::Conv(p) if p.algo == ConvAlgo::Direct
                    && plain(p)
                    && matches!(p.packed().kind, DirectKind::F32 | DirectKind::Dot)
                    && !p.pool
                    && p.kh * p.kw * p.cin <= PRODUCER_MAX_REDUCTION
                    && (p.ho, p.wo, p.cout) == (c.h, c.w, c.cin))
            });
        if !fusable {
            k += 1;
            continue;
        }
        let j = writer.expect("checked");
        let prod = steps.remove(j);
        let k2 = k - usize::from(k > j);
        let Kind::Conv(p) = prod.kind else {
            unreachable!("checked")
        };
        let cons = &mut steps[k2];
        if let Kind::Conv(c) = &mut cons.kind {
            c.pre = Some(p);
        }
        cons.inputs = prod.inputs;
        cons.name = format!("{}+{}", prod.name, cons.name);
        k = k2 + 1;
    }
}

#[allow(clippy::too_many_arguments)]
fn conv_step(
    [h, w, cin]: [usize; 3],
    [ho, wo, cout]: [usize; 3],
    [kh, kw]: [usize; 2],
    s: [usize; 2],
    d: [usize; 2],
    pt: usize,
    pl: usize,
    wgt: Vec<f32>,
    bias: Vec<f32>,
    act: Activation,
    mode: Mode,
    isa: CpuFeatures,
) -> ConvStep {
    let force = std::env::var("CDIPHASE_CONV_ALGO").unwrap_or_default();
    let gemm_only = mode == Mode::Gemm || force == "gemm";
    let wino_min = winograd_min_channels(mode, isa);
    let mut dkind = None;
    let algo = if force == "im2col" {
        ConvAlgo::Im2col
    } else if s == [1, 1] && mode == Mode::Winograd && kh == 3 && kw == 3 && cin >= 16 && cout >= 16
    {
        ConvAlgo::Winograd
    } else if s == [1, 1] && !gemm_only && isa.avx512f() && (cout >= 16 || cin >= 16) {
        // the direct kernels' instructions are checked here, once: a layer runs the kernel
        // chosen for it without asking the CPU again
        dkind = Some(if cout < 16 {
            DirectKind::Dot
        } else if mode == Mode::Bf16 && cin >= 16 && isa.amx() {
            DirectKind::Amx
        } else if matches!(mode, Mode::Bf16 | Mode::Bf16Avx512) && cin >= 16 && isa.avx512bf16() {
            DirectKind::Bf16
        } else {
            DirectKind::F32
        });
        // Winograd where it measured faster (a fused upsampling turns it back to direct)
        if d == [1, 1] && kh == 3 && kw == 3 && cin >= wino_min && cout >= wino_min {
            ConvAlgo::Winograd
        } else {
            ConvAlgo::Direct
        }
    } else if s == [1, 1] && cin >= 16 {
        ConvAlgo::Shifted
    } else {
        ConvAlgo::Im2col
    };
    let (direct, direct_kind) = match (algo, dkind) {
        (ConvAlgo::Winograd, k) => (None, k),
        (_, k) => (
            k.map(|k| direct::pack(&wgt, &bias, kh * kw, cin, cout, k)),
            None,
        ),
    };
    let (wino, wino_pack) = if algo == ConvAlgo::Winograd {
        winograd::transform_kernel(&wgt, cin, cout, isa)
    } else {
        (Vec::new(), None)
    };
    ConvStep {
        h,
        w,
        cin,
        ho,
        wo,
        cout,
        kh,
        kw,
        s,
        d,
        up: [1, 1],
        pool: false,
        subpixel: None,
        pre: None,
        pt,
        pl,
        wgt,
        bias,
        act,
        algo,
        wino,
        wino_pack,
        direct,
        direct_kind,
    }
}

/// Fewest input and output channels of a 3x3 stride-1 layer that `mode` runs with Winograd
/// F(4x4, 3x3) on this CPU (usize::MAX: none). Measured on AMD Zen 4 (BENCHMARKS "Winograd
/// F(4x4, 3x3)"): against the direct f32 kernels Winograd gains 1.8x at 64 channels and
/// 2.2-2.7x at 128-256, and it beat the AVX512_BF16 kernels (1.8-1.95x f32) on every
/// layer of 64 channels and more in the same run. Never with AMX (3x f32 and more).
/// `CDIPHASE_WINO_MIN=N` overrides it (A/B runs).
fn winograd_min_channels(mode: Mode, isa: CpuFeatures) -> usize {
    if let Some(n) = std::env::var("CDIPHASE_WINO_MIN")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        return if matches!(mode, Mode::F32 | Mode::Bf16 | Mode::Bf16Avx512) {
            n
        } else {
            usize::MAX
        };
    }
    match mode {
        Mode::Bf16 if isa.amx() => usize::MAX,
        Mode::F32 | Mode::Bf16 | Mode::Bf16Avx512 => 64,
        Mode::F32Direct | Mode::Gemm | Mode::Winograd => usize::MAX,
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Target bytes of a thread's working set per work item (L2 is 2 MiB per core here).
const TILE_BYTES: usize = 1 << 20;
/// Winograd bands: larger, so that each of the 16 GEMMs has enough rows.
const WINO_BYTES: usize = 4 << 20;

impl ConvStep {
    /// Output rows per work item.
    fn tile_rows(&self, batch: usize, threads: usize) -> usize {
        let per_row = match self.algo {
            ConvAlgo::Shifted => self.wp() * (self.cin + self.cout) * 4,
            ConvAlgo::Im2col => self.wo * (self.kh * self.kw * self.cin + self.cout) * 4,
            ConvAlgo::Winograd => return winograd::tile_rows(self, batch, threads, WINO_BYTES),
            ConvAlgo::Direct => self.wp() * (self.cin + self.cout) * 4,
        };
        let mut rows = (TILE_BYTES / per_row.max(1)).clamp(1, self.ho);
        // enough items for every thread
        let want = 4 * threads;
        while rows > 1 && batch * self.ho.div_ceil(rows) < want {
            rows = rows.div_ceil(2);
        }
        // pooled bands need whole row pairs, sub-pixel bands whole input rows (ho is a
        // multiple of both)
        let m = if self.pool { 2 } else { 1 };
        let m = if self.subpixel.is_some() {
            m * self.up[0] / gcd(m, self.up[0])
        } else {
            m
        };
        rows.div_ceil(m) * m
    }

    /// Scratch of one work item: the kernel's, plus the band output when a pooling is fused.
    fn scratch_len(&self, rows: usize) -> usize {
        self.kernel_scratch_len(rows)
            + if self.pool {
                rows * self.wo * self.cout
            } else {
                0
            }
    }

    /// One work item: output rows [r0, r0 + rows) of image `x`; `out` holds those rows of
    /// the layer's output, pooled when a pooling is fused (then `rows` is even).
    fn run_item(
        &self,
        isa: CpuFeatures,
        x: &[f32],
        r0: usize,
        rows: usize,
        out: &mut [f32],
        sc: &mut [f32],
    ) {
        if !self.pool {
            return self.run_tile(isa, x, r0, rows, out, sc);
        }
        let (wo, c) = (self.wo, self.cout);
        let (ksc, rest) = sc.split_at_mut(self.kernel_scratch_len(rows));
        let band = &mut rest[..rows * wo * c];
        self.run_tile(isa, x, r0, rows, band, ksc);
        for y in 0..rows / 2 {
            for q in 0..wo / 2 {
                let o = &mut out[(y * (wo / 2) + q) * c..][..c];
                let a = &band[((2 * y) * wo + 2 * q) * c..][..2 * c];
                let b = &band[((2 * y + 1) * wo + 2 * q) * c..][..2 * c];
                for k in 0..c {
                    o[k] = a[k].max(a[c + k]).max(b[k].max(b[c + k]));
                }
            }
        }
    }

    fn kernel_scratch_len(&self, rows: usize) -> usize {
        match self.algo {
            ConvAlgo::Shifted => {
                (rows + self.kh - 1) * self.wp() * self.cin + rows * self.wp() * self.cout
            }
            ConvAlgo::Im2col => rows * self.wo * self.kh * self.kw * self.cin,
            ConvAlgo::Winograd => winograd::scratch_len_rows(self, rows),
            ConvAlgo::Direct => direct::scratch_len(self, self.packed(), rows),
        }
    }

    /// One tile: output rows [r0, r0 + rows) of image `x` (h*w*cin) into `out` (rows*wo*cout).
    fn run_tile(
        &self,
        isa: CpuFeatures,
        x: &[f32],
        r0: usize,
        rows: usize,
        out: &mut [f32],
        sc: &mut [f32],
    ) {
        match self.algo {
            ConvAlgo::Direct => direct::tile(self, self.packed(), x, r0, rows, out, sc),
            ConvAlgo::Winograd => winograd::tile(self, isa, x, r0, rows, out, sc),
            ConvAlgo::Shifted | ConvAlgo::Im2col => matmul::tile(self, isa, x, r0, rows, out, sc),
        }
    }
}

/// A layer output shared by the work items of a layer, each writing its own disjoint range.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the work items that share it write disjoint ranges (see `run_step`).
unsafe impl Send for SendPtr {}
// SAFETY: as for Send.
unsafe impl Sync for SendPtr {}

/// The network a [`Runner`] runs: borrowed from the caller, or its own (a backend's).
enum NetRef<'a> {
    Borrowed(&'a Network),
    Owned(Box<Network>),
}

impl std::ops::Deref for NetRef<'_> {
    type Target = Network;
    fn deref(&self) -> &Network {
        match self {
            NetRef::Borrowed(n) => n,
            NetRef::Owned(n) => n,
        }
    }
}

/// A network ready to run batches of up to `max_batch` images: arena and scratch allocated
/// once, work items on a rayon pool (its own of `threads` threads, or a backend's).
pub struct Runner<'a> {
    net: NetRef<'a>,
    max_batch: usize,
    opts: Options,
    pool: Arc<rayon::ThreadPool>,
    /// value -> slot
    slot_of: Vec<usize>,
    slots: Vec<Vec<f32>>,
    scratch: Vec<Mutex<Vec<f32>>>,
    /// per step: rows per tile (convolutions)
    tile_rows: Vec<usize>,
    /// per step: seconds spent, summed over runs
    step_secs: Vec<f64>,
}

impl<'a> Runner<'a> {
    /// A runner of `net` on a pool of its own of `opts.threads` threads.
    pub fn new(net: &'a Network, max_batch: usize, opts: Options) -> Result<Runner<'a>> {
        let pool = super::pool::thread_pool(Some(opts.threads.max(1)))?;
        Runner::build(NetRef::Borrowed(net), max_batch, opts, pool)
    }

    /// A runner of `net` on `pool` (a backend's: its threads, whatever `opts.threads`).
    pub fn with_pool(
        net: &'a Network,
        max_batch: usize,
        opts: Options,
        pool: Arc<rayon::ThreadPool>,
    ) -> Result<Runner<'a>> {
        Runner::build(NetRef::Borrowed(net), max_batch, opts, pool)
    }

    /// A runner that owns its network, on `pool` (what [`crate::backend::CpuBackend`]
    /// loads for `predict`).
    pub fn owning(
        net: Network,
        max_batch: usize,
        opts: Options,
        pool: Arc<rayon::ThreadPool>,
    ) -> Result<Runner<'static>> {
        Runner::build(NetRef::Owned(Box::new(net)), max_batch, opts, pool)
    }

    /// The network this runner runs.
    pub fn network(&self) -> &Network {
        &self.net
    }

    fn build(
        net: NetRef<'a>,
        max_batch: usize,
        opts: Options,
        pool: Arc<rayon::ThreadPool>,
    ) -> Result<Runner<'a>> {
        let max_batch = max_batch.max(1);
        let threads = pool.current_num_threads().max(1);
        let layout = Runner::layout(&net, max_batch, threads);
        let (slot_of, slot_len, tile_rows, scratch_len) = layout;
        let fill = if opts.poison { f32::NAN } else { 0.0 };
        let slots = slot_len
            .iter()
            .map(|&l| vec![fill; l * max_batch])
            .collect();
        let scratch = (0..threads)
            .map(|_| Mutex::new(vec![fill; scratch_len]))
            .collect();
        Ok(Runner {
            net,
            max_batch,
            opts: Options { threads, ..opts },
            pool,
            slot_of,
            slots,
            scratch,
            step_secs: vec![0.0; tile_rows.len()],
            tile_rows,
        })
    }

    /// The arena: a slot per value by liveness (value -> slot, slot lengths per image),
    /// the rows per work item of each step and the scratch of a thread.
    fn layout(
        net: &Network,
        max_batch: usize,
        threads: usize,
    ) -> (Vec<usize>, Vec<usize>, Vec<usize>, usize) {
        // liveness: last step reading each value (the output lives to the end)
        let nv = net.value_len.len();
        let mut last = vec![0usize; nv];
        for (si, s) in net.steps.iter().enumerate() {
            for &v in &s.inputs {
                last[v] = last[v].max(si);
            }
        }
        last[net.output_value] = usize::MAX;
        let mut slot_of = vec![usize::MAX; nv];
        let mut slot_len: Vec<usize> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let take = |len: usize, free: &mut Vec<usize>, slot_len: &mut Vec<usize>| {
            // best fit: the free slot whose size is closest to len
            let pick = free
                .iter()
                .enumerate()
                .min_by_key(|(_, &s)| (slot_len[s] as i64 - len as i64).unsigned_abs())
                .map(|(i, _)| i);
            match pick {
                Some(i) => {
                    let s = free.swap_remove(i);
                    slot_len[s] = slot_len[s].max(len);
                    s
                }
                None => {
                    slot_len.push(len);
                    slot_len.len() - 1
                }
            }
        };
        slot_of[0] = take(net.value_len[0], &mut free, &mut slot_len);
        let mut tile_rows = Vec::with_capacity(net.steps.len());
        let mut scratch_len = 0usize;
        for (si, s) in net.steps.iter().enumerate() {
            if !matches!(s.kind, Kind::Alias) {
                slot_of[s.out] = take(net.value_len[s.out], &mut free, &mut slot_len);
            }
            // free the inputs whose last reader is this step
            for &v in &s.inputs {
                if last[v] == si && v != s.out && !free.contains(&slot_of[v]) {
                    // another live value may share the slot only through aliasing (same value)
                    free.push(slot_of[v]);
                }
            }
            let rows = match &s.kind {
                Kind::Conv(c) => {
                    let r = c.tile_rows(max_batch, threads);
                    scratch_len = scratch_len.max(c.scratch_len(r));
                    r
                }
                _ => 0,
            };
            tile_rows.push(rows);
        }
        (slot_of, slot_len, tile_rows, scratch_len)
    }

    /// Bytes of the activation arena (all slots) plus the per-thread scratch.
    pub fn arena_bytes(&self) -> usize {
        let a: usize = self.slots.iter().map(|s| s.len()).sum();
        let s: usize = self
            .scratch
            .iter()
            .map(|m| m.lock().map(|v| v.len()).unwrap_or(0))
            .sum();
        (a + s) * 4
    }

    /// Seconds spent in each layer (name, seconds, algorithm), summed over the runs so far.
    pub fn profile(&self) -> Vec<(String, f64, &'static str)> {
        self.net
            .steps
            .iter()
            .zip(&self.step_secs)
            .filter(|(s, _)| !matches!(s.kind, Kind::Alias))
            .map(|(s, &t)| {
                let algo = match &s.kind {
                    Kind::Conv(c) => match c.algo {
                        ConvAlgo::Shifted => "shifted-gemm",
                        ConvAlgo::Im2col => "im2col-gemm",
                        ConvAlgo::Winograd => "winograd",
                        ConvAlgo::Direct => match c.packed().kind {
                            DirectKind::F32 if c.subpixel.is_some() => "direct-f32-subpixel",
                            DirectKind::Dot if c.subpixel.is_some() => "direct-dot-subpixel",
                            DirectKind::Bf16 if c.subpixel.is_some() => "direct-bf16-subpixel",
                            DirectKind::F32 => "direct-f32",
                            DirectKind::Bf16 => "direct-bf16",
                            DirectKind::Dot => "direct-dot",
                            DirectKind::Amx if c.subpixel.is_some() => "amx-bf16-subpixel",
                            DirectKind::Amx => "amx-bf16",
                        },
                    },
                    Kind::Dense { .. } => "gemm",
                    _ => "direct",
                };
                (s.name.clone(), t, algo)
            })
            .collect()
    }

    /// Forget the per-layer times.
    pub fn reset_profile(&mut self) {
        self.step_secs.iter_mut().for_each(|t| *t = 0.0);
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Run `n` images (`input`: n * H*W*C, NHWC, already preprocessed). Returns the output
    /// (n * output_len), valid until the next call.
    pub fn run(&mut self, input: &[f32], n: usize) -> Result<&[f32]> {
        let net: &Network = &self.net;
        let il = net.input_len();
        if n == 0 || n > self.max_batch || input.len() != n * il {
            return Err(Error::Shape {
                what: "network input".into(),
                expected: format!(
                    "n * {:?} values with 1 <= n <= {}",
                    net.spec.input, self.max_batch
                ),
                found: vec![input.len()],
            });
        }
        self.slots[self.slot_of[0]][..n * il].copy_from_slice(input);
        for (si, step) in net.steps.iter().enumerate() {
            if matches!(step.kind, Kind::Alias) {
                continue;
            }
            let os = self.slot_of[step.out];
            let mut out = std::mem::take(&mut self.slots[os]);
            let olen = n * step.out_len;
            if self.opts.poison {
                out[..olen].fill(f32::NAN);
            }
            let t0 = std::time::Instant::now();
            let r = {
                let ins = Inputs {
                    slots: &self.slots,
                    slot_of: &self.slot_of,
                    value_len: &net.value_len,
                    values: &step.inputs,
                    n,
                };
                let ctx = Ctx {
                    pool: &self.pool,
                    scratch: &self.scratch,
                    threads: self.opts.threads,
                    isa: net.isa,
                };
                run_step(&ctx, step, &ins, &mut out[..olen], n, self.tile_rows[si])
            };
            self.slots[os] = out;
            self.step_secs[si] += t0.elapsed().as_secs_f64();
            r?;
        }
        let ol = net.output_len();
        Ok(&self.slots[self.slot_of[net.output_value]][..n * ol])
    }
}

struct Ctx<'r> {
    pool: &'r rayon::ThreadPool,
    scratch: &'r [Mutex<Vec<f32>>],
    threads: usize,
    isa: CpuFeatures,
}

/// The input values of a step, read from the arena without collecting them.
struct Inputs<'r> {
    slots: &'r [Vec<f32>],
    slot_of: &'r [usize],
    value_len: &'r [usize],
    values: &'r [usize],
    n: usize,
}

impl Inputs<'_> {
    fn get(&self, k: usize) -> &[f32] {
        let v = self.values[k];
        &self.slots[self.slot_of[v]][..self.n * self.value_len[v]]
    }
}

fn run_step(
    ctx: &Ctx,
    step: &Step,
    ins: &Inputs,
    out: &mut [f32],
    n: usize,
    tile_rows: usize,
) -> Result<()> {
    let x = ins.get(0);
    match &step.kind {
        Kind::Conv(c) => {
            let c: &ConvStep = c;
            let in_img = c.src_len();
            let out_img = c.out_len();
            let pf = if c.pool { 2 } else { 1 };
            let tiles = c.ho.div_ceil(tile_rows);
            let optr = SendPtr(out.as_mut_ptr());
            let failed = ctx.pool.install(|| {
                (0..n * tiles).into_par_iter().try_for_each(|item| {
                    let (img, t) = (item / tiles, item % tiles);
                    let r0 = t * tile_rows;
                    let rows = tile_rows.min(c.ho - r0);
                    let xi = &x[img * in_img..(img + 1) * in_img];
                    let off = img * out_img + r0 / pf * (c.wo / pf) * c.cout;
                    let len = rows / pf * (c.wo / pf) * c.cout;
                    // SAFETY: work items write disjoint ranges [off, off+len) of `out`
                    // (distinct (image, row range) pairs), all inside out's n*out_img values.
                    let o = unsafe { std::slice::from_raw_parts_mut({ optr }.0.add(off), len) };
                    let ti = rayon::current_thread_index().unwrap_or(0) % ctx.scratch.len();
                    let mut sc = ctx.scratch[ti].lock().map_err(|_| ())?;
                    c.run_item(ctx.isa, xi, r0, rows, o, &mut sc);
                    Ok::<(), ()>(())
                })
            });
            failed.map_err(|_| {
                Error::Config(format!("layer '{}': a worker thread panicked", step.name))
            })
        }
        Kind::Dense {
            cin,
            units,
            wgt,
            bias,
            act,
        } => {
            let rows = x.len() / cin;
            let (cin, units) = (*cin, *units);
            // split the output columns between threads (m is only the batch)
            let parts = ctx.threads.min(units.div_ceil(16)).max(1);
            let chunk = units.div_ceil(parts).div_ceil(16) * 16;
            let optr = SendPtr(out.as_mut_ptr());
            ctx.pool.install(|| {
                (0..units.div_ceil(chunk)).into_par_iter().for_each(|p| {
                    let c0 = p * chunk;
                    let nc = chunk.min(units - c0);
                    // SAFETY: columns [c0, c0+nc) of the (rows, units) output are written by
                    // this part only; x is (rows, cin), wgt (cin, units).
                    unsafe {
                        sgemm(
                            rows,
                            nc,
                            cin,
                            { optr }.0.add(c0),
                            units,
                            false,
                            x.as_ptr(),
                            cin,
                            wgt.as_ptr().add(c0),
                            units,
                            Parallelism::None,
                        );
                    }
                });
                out.par_chunks_mut(units)
                    .for_each(|o| epilogue_inplace(o, bias, *act));
            });
            Ok(())
        }
        Kind::MaxPool {
            h,
            w,
            c,
            ho,
            wo,
            p,
            s,
            pt,
            pl,
        } => {
            let (h, w, c, ho, wo) = (*h, *w, *c, *ho, *wo);
            ctx.pool.install(|| {
                out.par_chunks_mut(ho * wo * c)
                    .zip(x.par_chunks(h * w * c))
                    .for_each(|(o, xi)| {
                        for y in 0..ho {
                            for xo in 0..wo {
                                let op = &mut o[(y * wo + xo) * c..(y * wo + xo + 1) * c];
                                op.fill(f32::NEG_INFINITY);
                                for py in 0..p[0] {
                                    let Some(r) = (y * s[0] + py).checked_sub(*pt) else {
                                        continue;
                                    };
                                    if r >= h {
                                        continue;
                                    }
                                    for px in 0..p[1] {
                                        let Some(q) = (xo * s[1] + px).checked_sub(*pl) else {
                                            continue;
                                        };
                                        if q >= w {
                                            continue;
                                        }
                                        let ip = &xi[(r * w + q) * c..(r * w + q + 1) * c];
                                        for (a, &b) in op.iter_mut().zip(ip) {
                                            *a = a.max(b);
                                        }
                                    }
                                }
                            }
                        }
                    })
            });
            Ok(())
        }
        Kind::Up { h, w, c, s } => {
            let (h, w, c) = (*h, *w, *c);
            let (ho, wo) = (h * s[0], w * s[1]);
            ctx.pool.install(|| {
                out.par_chunks_mut(ho * wo * c)
                    .zip(x.par_chunks(h * w * c))
                    .for_each(|(o, xi)| {
                        for y in 0..ho {
                            let r = y / s[0];
                            for xo in 0..wo {
                                let q = xo / s[1];
                                o[(y * wo + xo) * c..(y * wo + xo + 1) * c]
                                    .copy_from_slice(&xi[(r * w + q) * c..(r * w + q + 1) * c]);
                            }
                        }
                    })
            });
            Ok(())
        }
        Kind::Concat { pixels, cs } => {
            let ct: usize = cs.iter().sum();
            let per_img = pixels * ct;
            ctx.pool.install(|| {
                out.par_chunks_mut(per_img)
                    .enumerate()
                    .for_each(|(img, o)| {
                        for px in 0..*pixels {
                            let mut off = 0;
                            for (k, &ck) in cs.iter().enumerate() {
                                let src = &ins.get(k)[(img * pixels + px) * ck..][..ck];
                                o[px * ct + off..px * ct + off + ck].copy_from_slice(src);
                                off += ck;
                            }
                        }
                    })
            });
            Ok(())
        }
        Kind::Act(a) => {
            let a = *a;
            ctx.pool.install(|| {
                out.par_chunks_mut(4096)
                    .zip(x.par_chunks(4096))
                    .for_each(|(o, xi)| {
                        for (o, &v) in o.iter_mut().zip(xi) {
                            *o = a.apply(v);
                        }
                    })
            });
            Ok(())
        }
        Kind::Alias => Ok(()),
    }
}

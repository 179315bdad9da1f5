//! One convolution layer as every CPU kernel sees it ([`ConvStep`]): its geometry over the
//! virtual padded input P, its weights (as loaded, and packed for the kernel that runs it)
//! and what is fused into it. The kernels (`matmul`: shifted GEMM and im2col, `direct`,
//! `winograd`) read it; only the network compiler (`super`) builds it.
//!
//! P shows the stored input X placed at an offset `(pt, pl)`, dilated by `d` (a transposed
//! convolution) and repeated `up` times per axis (a fused upsampling):
//! `P[j, i] = X[(j - pt) / d0 / up0, (i - pl) / d1 / up1]` where the division by `d` is exact
//! and in range, else 0.

use crate::nn::spec::Activation;

/// How a convolution is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConvAlgo {
    Shifted,
    Im2col,
    Winograd,
    Direct,
}

#[derive(Debug)]
pub(crate) struct ConvStep {
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub ho: usize,
    pub wo: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    /// stride over P
    pub s: [usize; 2],
    /// dilation of X inside P
    pub d: [usize; 2],
    /// nearest-neighbour upsampling of the stored input fused into this layer (an
    /// UpSampling2D whose only reader this is): X is the stored input repeated `up` times
    /// along each axis, `h` and `w` are X's (upsampled) size
    pub up: [usize; 2],
    /// a 2x2 stride-2 max-pooling fused after this layer (the layer's only reader; `ho`
    /// and `wo` even): each band is pooled from thread scratch into the (ho/2, wo/2) output
    pub pool: bool,
    /// the fused upsampling computed by sub-pixel classes (direct f32 layers)
    pub(crate) subpixel: Option<SubPixel>,
    /// a cheap convolution fused before this one (its output's only reader, see
    /// [`fuse_producers`]): each band computes the rows of X it needs from the producer's
    /// input, in cache, and X itself is never stored
    pub(crate) pre: Option<Box<ConvStep>>,
    /// offset of X inside P
    pub pt: usize,
    pub pl: usize,
    /// (kh*kw*cin, cout), row-major, cross-correlation over P
    pub wgt: Vec<f32>,
    pub bias: Vec<f32>,
    pub act: Activation,
    pub(crate) algo: ConvAlgo,
    /// Winograd-transformed kernel (36, cin, cout), for the portable GEMM
    pub wino: Vec<f32>,
    /// the same packed as 36 taps for the AVX-512 f32 micro-kernels (instead of `wino`
    /// where the CPU has AVX-512F)
    pub(crate) wino_pack: Option<DirectPack>,
    /// weights packed for the direct kernels
    pub(crate) direct: Option<DirectPack>,
    /// a Winograd layer's direct kernel, packed only if a fused upsampling turns the layer
    /// back to direct (sub-pixel classes: 4 taps where Winograd computes 9)
    pub(crate) direct_kind: Option<DirectKind>,
}

/// Which micro-kernel a direct layer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DirectKind {
    /// f32 FMA, `nv` vectors of 16 output channels per tile
    F32,
    /// bf16 input and weights, f32 accumulation (`vdpbf16ps`)
    Bf16,
    /// bf16 input and weights, f32 accumulation on the AMX tile unit (`tdpbf16ps`)
    Amx,
    /// fewer than 16 output channels: vectorised over input channels
    Dot,
}

/// Weights rearranged for the direct kernels. Its `kind` is chosen by the network compiler
/// only where the detected CPU features have the kernel's instructions; `direct::tile`
/// relies on that.
#[derive(Debug)]
pub(crate) struct DirectPack {
    pub kind: DirectKind,
    /// vectors of 16 output channels per block (F32, Bf16)
    pub nv: usize,
    /// output-channel blocks of `16 * nv`
    pub ncb: usize,
    /// F32: `[cb][tap][ci][16*nv]`; Dot: `[co][tap][cin16]` (cin padded to 16)
    pub w32: Vec<f32>,
    /// Bf16: `[cb][tap][ci/2][16*nv][2]` (cin padded to even);
    /// Amx: `[cb32][tap][ci/32][half][16 pairs][16 co][2]` (cin and cout padded to 32)
    pub w16: Vec<u16>,
    /// bias padded to `ncb * 16 * nv`
    pub bias: Vec<f32>,
}

/// One sub-pixel class of an upsampling folded into a layer: its taps in band
/// coordinates (row, column) and its weights (the original taps that read the same input
/// pixel, summed), packed for the kernel.
#[derive(Debug)]
pub(crate) struct SubClass {
    pub taps: Vec<(usize, usize)>,
    pub pack: DirectPack,
}

/// An upsampling by `ConvStep::up` folded into a direct layer, computed by sub-pixel
/// classes: `classes[a * u1 + b]` makes the outputs (u0*y + a, u1*x + b) from the small
/// input, padded by `pad` = [top, bottom, left, right] input pixels in the band.
#[derive(Debug)]
pub(crate) struct SubPixel {
    pub pad: [usize; 4],
    pub classes: Vec<SubClass>,
}

impl ConvStep {
    /// Row of the stored input that P row j shows (None: zero row).
    #[inline]
    pub(crate) fn src_row(&self, j: usize) -> Option<usize> {
        let r = j.checked_sub(self.pt)?;
        (r % self.d[0] == 0 && r / self.d[0] < self.h).then_some(r / self.d[0] / self.up[0])
    }

    #[inline]
    pub(crate) fn src_col(&self, i: usize) -> Option<usize> {
        let r = i.checked_sub(self.pl)?;
        (r % self.d[1] == 0 && r / self.d[1] < self.w).then_some(r / self.d[1] / self.up[1])
    }

    /// Width of the stored input (before a fused upsampling).
    #[inline]
    pub(crate) fn src_w(&self) -> usize {
        self.w / self.up[1]
    }

    /// Values per image of the stored input (the producer's input when one is fused).
    pub(crate) fn src_len(&self) -> usize {
        match &self.pre {
            Some(p) => p.src_len(),
            None => self.h / self.up[0] * self.src_w() * self.cin,
        }
    }

    pub(crate) fn wp(&self) -> usize {
        self.wo + self.kw - 1
    }

    /// Output values per image (after a fused pooling).
    pub(crate) fn out_len(&self) -> usize {
        let f = if self.pool { 2 } else { 1 };
        self.ho / f * (self.wo / f) * self.cout
    }

    pub(crate) fn packed(&self) -> &DirectPack {
        self.direct
            .as_ref()
            .expect("direct layers carry packed weights")
    }

    /// Copy P row `j`, columns [0, ncols), into `dst` (ncols*cin).
    #[inline(always)]
    pub(crate) fn fill_p_row(&self, x: &[f32], j: usize, ncols: usize, dst: &mut [f32]) {
        let cin = self.cin;
        match self.src_row(j) {
            None => dst.fill(0.0),
            Some(r) => {
                let sw = self.src_w();
                let row = &x[r * sw * cin..(r + 1) * sw * cin];
                if self.d[1] == 1 && self.up[1] == 1 {
                    // zeros, a contiguous copy, zeros
                    let a = self.pl.min(ncols);
                    let b = (self.pl + self.w).min(ncols);
                    dst[..a * cin].fill(0.0);
                    if b > a {
                        dst[a * cin..b * cin].copy_from_slice(&row[..(b - a) * cin]);
                    }
                    dst[b * cin..].fill(0.0);
                } else {
                    for (i, px) in dst.chunks_exact_mut(cin).enumerate() {
                        match self.src_col(i) {
                            Some(c) => px.copy_from_slice(&row[c * cin..(c + 1) * cin]),
                            None => px.fill(0.0),
                        }
                    }
                }
            }
        }
    }
}

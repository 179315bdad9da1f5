//! Direct stride-1 convolution over the virtual padded input P with register-blocked
//! AVX-512 micro-kernels: f32 FMA (`Mode::F32`), and bf16 pairs with `vdpbf16ps`
//! (`Mode::Bf16`, f32 accumulation).
//!
//! A band of output rows copies its rows of P (width `wp = wo + kw - 1`, NHWC) into a
//! thread buffer. Output pixel `m` of the band (flat over `rows x wp`, the `kw - 1` extra
//! columns of each row are computed and dropped) reads, at tap `(dy, dx)`, band pixel
//! `m + dy*wp + dx`: a tile of `MR` consecutive pixels is `MR` consecutive band pixels at
//! every tap. A micro-kernel holds `MR x NV` vectors of 16 output channels in registers
//! over the whole reduction (`kh*kw*cin`), broadcasting one input value per pixel and
//! loading `NV` weight vectors per reduction step, then adds the bias, applies ReLU and
//! stores straight into the layer output (masked for a channel tail). No accumulation
//! buffer, no epilogue pass, no GEMM packing. With the common channel counts as
//! compile-time constants every load address is a register plus a constant displacement.
//!
//! Layers with fewer than 16 output channels (the decoder's last layer) use a dot-product
//! kernel vectorised over the input channels instead.

use super::conv::{ConvStep, DirectKind, DirectPack, SubClass, SubPixel};
use crate::nn::spec::Activation;

/// Vectors per tile for `cout` output channels.
/// (Measured on the paper's network: 2 vectors x 14 pixels beat 4 x 6 by 5 %, since a
/// weight vector, streamed from L2, then serves 14 FMAs instead of 6.)
fn nv_for(cout: usize) -> usize {
    if cout >= 32 {
        2
    } else {
        1
    }
}

/// Largest tile, in pixels (tiles: 28 pixels x 1 vector, 14 x 2; 8 for Dot; 32 for Amx): the
/// band's zero slack.
const MR_MAX: usize = 32;

fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// Pack `wgt` (`(kh*kw*cin, cout)`, row-major, cross-correlation over P).
pub(crate) fn pack(
    wgt: &[f32],
    bias: &[f32],
    taps: usize,
    cin: usize,
    cout: usize,
    kind: DirectKind,
) -> DirectPack {
    match kind {
        DirectKind::Dot => {
            let c16 = cin.div_ceil(16) * 16;
            let mut w32 = vec![0.0f32; cout * taps * c16];
            for co in 0..cout {
                for t in 0..taps {
                    for ci in 0..cin {
                        w32[(co * taps + t) * c16 + ci] = wgt[(t * cin + ci) * cout + co];
                    }
                }
            }
            DirectPack {
                kind,
                nv: 0,
                ncb: cout,
                w32,
                w16: Vec::new(),
                bias: bias.to_vec(),
            }
        }
        DirectKind::Amx => {
            let (kc, ncb) = (cin.div_ceil(32), cout.div_ceil(32));
            let mut b = vec![0.0f32; ncb * 32];
            b[..cout].copy_from_slice(bias);
            let mut w16 = Vec::with_capacity(ncb * taps * kc * 1024);
            for cb in 0..ncb {
                for t in 0..taps {
                    for k in 0..kc {
                        for half in 0..2 {
                            for pr in 0..16 {
                                for j in 0..16 {
                                    for e in 0..2 {
                                        let (ci, co) =
                                            (k * 32 + 2 * pr + e, cb * 32 + half * 16 + j);
                                        let v = if ci < cin && co < cout {
                                            wgt[(t * cin + ci) * cout + co]
                                        } else {
                                            0.0
                                        };
                                        w16.push(bf16_bits(v));
                                    }
                                }
                            }
                        }
                    }
                }
            }
            DirectPack {
                kind,
                nv: 2,
                ncb,
                w32: Vec::new(),
                w16,
                bias: b,
            }
        }
        DirectKind::F32 | DirectKind::Bf16 => {
            let nv = nv_for(cout);
            let nb = 16 * nv;
            let ncb = cout.div_ceil(nb);
            let mut b = vec![0.0f32; ncb * nb];
            b[..cout].copy_from_slice(bias);
            let w = |t: usize, ci: usize, co: usize| -> f32 {
                if ci < cin && co < cout {
                    wgt[(t * cin + ci) * cout + co]
                } else {
                    0.0
                }
            };
            if kind == DirectKind::F32 {
                // [cb][tap][ci][nb]: the kernel's reading order; a block's channels are
                // contiguous in `wgt` (copied as a run, the tail zero)
                let mut w32 = vec![0.0f32; ncb * taps * cin * nb];
                for cb in 0..ncb {
                    let (c0, len) = (cb * nb, nb.min(cout - cb * nb));
                    for t in 0..taps {
                        for ci in 0..cin {
                            let src = &wgt[(t * cin + ci) * cout + c0..][..len];
                            w32[((cb * taps + t) * cin + ci) * nb..][..len].copy_from_slice(src);
                        }
                    }
                }
                DirectPack {
                    kind,
                    nv,
                    ncb,
                    w32,
                    w16: Vec::new(),
                    bias: b,
                }
            } else {
                let c2 = cin.div_ceil(2);
                let mut w16 = vec![0u16; ncb * taps * c2 * nb * 2];
                for cb in 0..ncb {
                    for t in 0..taps {
                        for k in 0..c2 {
                            for j in 0..nb {
                                for e in 0..2 {
                                    w16[(((cb * taps + t) * c2 + k) * nb + j) * 2 + e] =
                                        bf16_bits(w(t, 2 * k + e, cb * nb + j));
                                }
                            }
                        }
                    }
                }
                DirectPack {
                    kind,
                    nv,
                    ncb,
                    w32: Vec::new(),
                    w16,
                    bias: b,
                }
            }
        }
    }
}

/// The sub-pixel form of a direct f32 layer that reads its input upsampled by `c.up`
/// (None where it does not apply: no upsampling, a dilated P, or output sizes that are
/// not multiples of the factors).
pub(crate) fn subpixel(c: &ConvStep, kind: DirectKind) -> Option<SubPixel> {
    let [u0, u1] = c.up;
    if (u0 == 1 && u1 == 1)
        || c.d != [1, 1]
        || c.s != [1, 1]
        || !c.ho.is_multiple_of(u0)
        || !c.wo.is_multiple_of(u1)
    {
        return None;
    }
    // per axis and phase a: the input offset of tap d, floor((a + d - pad) / u)
    let axis = |k: usize, pad: usize, u: usize| -> Vec<Vec<isize>> {
        (0..u)
            .map(|a| {
                (0..k)
                    .map(|d| (a as isize + d as isize - pad as isize).div_euclid(u as isize))
                    .collect()
            })
            .collect()
    };
    let (oy, ox) = (axis(c.kh, c.pt, u0), axis(c.kw, c.pl, u1));
    let lo = |o: &[Vec<isize>]| o.iter().flatten().copied().min().unwrap_or(0);
    let hi = |o: &[Vec<isize>]| o.iter().flatten().copied().max().unwrap_or(0);
    let (pt, pb) = ((-lo(&oy)).max(0) as usize, hi(&oy).max(0) as usize);
    let (pl, pr) = ((-lo(&ox)).max(0) as usize, hi(&ox).max(0) as usize);
    let uniq = |v: &[isize]| {
        let mut u = v.to_vec();
        u.sort_unstable();
        u.dedup();
        u
    };
    let (cin, cout) = (c.cin, c.cout);
    let mut classes = Vec::with_capacity(u0 * u1);
    for oa in &oy {
        for ob in &ox {
            let (ry, rx) = (uniq(oa), uniq(ob));
            let mut taps = Vec::new();
            let mut wgt = vec![0.0f32; ry.len() * rx.len() * cin * cout];
            for (i, &vy) in ry.iter().enumerate() {
                for (j, &vx) in rx.iter().enumerate() {
                    let t = i * rx.len() + j;
                    taps.push(((vy + pt as isize) as usize, (vx + pl as isize) as usize));
                    for dy in (0..c.kh).filter(|&d| oa[d] == vy) {
                        for dx in (0..c.kw).filter(|&d| ob[d] == vx) {
                            let src = &c.wgt[(dy * c.kw + dx) * cin * cout..][..cin * cout];
                            for (w, s) in wgt[t * cin * cout..][..cin * cout].iter_mut().zip(src) {
                                *w += s;
                            }
                        }
                    }
                }
            }
            let pack = pack(&wgt, &c.bias, taps.len(), cin, cout, kind);
            classes.push(SubClass { taps, pack });
        }
    }
    Some(SubPixel {
        pad: [pt, pb, pl, pr],
        classes,
    })
}

/// Band pixels (with the zero slack) for `rows` output rows.
fn band_pixels(c: &ConvStep, rows: usize) -> usize {
    (rows + c.kh - 1) * c.wp() + MR_MAX
}

/// f32 elements of scratch for a band of `rows` output rows.
pub(crate) fn scratch_len(c: &ConvStep, p: &DirectPack, rows: usize) -> usize {
    if let Some(sp) = &c.subpixel {
        let [pt, pb, pl, pr] = sp.pad;
        let prow = rows.div_ceil(c.up[0]) + pt + pb;
        let wpb = c.w / c.up[1] + pl + pr;
        let px = prow * wpb + MR_MAX;
        return match p.kind {
            // bf16 band (cin padded to 32) + one f32 row + the result tiles
            DirectKind::Amx => px * c.cin.div_ceil(32) * 16 + wpb * c.cin + 4 * 256,
            // bf16 band (pairs, cin padded to even) + one f32 row
            DirectKind::Bf16 => px * c.cin.div_ceil(2) + wpb * c.cin,
            _ => px * c.cin,
        };
    }
    kernel_scratch_len(c, p, rows)
        + c.pre
            .as_ref()
            .map_or(0, |q| producer_scratch_len(q, rows + c.kh - 1))
}

/// Scratch of a fused producer's kernel computing `rows` rows (its output rows, then its
/// own band).
pub(crate) fn producer_scratch_len(q: &ConvStep, rows: usize) -> usize {
    rows * q.wo * q.cout + scratch_len(q, q.packed(), rows)
}

/// The plain kernels' own scratch for a band of `rows` output rows (without a fused
/// producer's, which follows it).
fn kernel_scratch_len(c: &ConvStep, p: &DirectPack, rows: usize) -> usize {
    let px = band_pixels(c, rows);
    match p.kind {
        DirectKind::F32 | DirectKind::Dot => px * c.cin,
        // bf16 band (2 per f32 slot, cin padded to even) + one f32 row to convert from
        DirectKind::Bf16 => px * c.cin.div_ceil(2) + c.wp() * c.cin,
        // bf16 band (cin padded to 32) + one f32 row + the four 16x16 f32 result tiles
        DirectKind::Amx => px * c.cin.div_ceil(32) * 16 + c.wp() * c.cin + 4 * 256,
    }
}

/// Where the P rows of a plain band come from: the stored input `x`, or, with a fused
/// producer ([`ConvStep::pre`]), rows `[ra, ..)` of X that [`BandRows::new`] computed from
/// `x`, the producer's input, into scratch.
pub(crate) struct BandRows<'a> {
    c: &'a ConvStep,
    x: &'a [f32],
    xr: Option<(&'a [f32], usize)>,
}

impl<'a> BandRows<'a> {
    /// The rows of X that P rows `[r0, r0 + prow)` show: computed by the producer into
    /// `sc` when there is one (`sc`: at least `producer_scratch_len(prow)`).
    pub(crate) fn new(
        c: &'a ConvStep,
        x: &'a [f32],
        r0: usize,
        prow: usize,
        sc: &'a mut [f32],
    ) -> Self {
        let Some(q) = c.pre.as_deref() else {
            return BandRows { c, x, xr: None };
        };
        let ra = r0.max(c.pt) - c.pt;
        let rb = (r0 + prow).saturating_sub(c.pt).min(c.h);
        let (xr, qsc) = sc.split_at_mut(prow * q.wo * q.cout);
        if rb > ra {
            tile(q, q.packed(), x, ra, rb - ra, xr, qsc);
        }
        BandRows {
            c,
            x,
            xr: Some((xr, ra)),
        }
    }

    /// P row `j`, columns `[0, ncols)`, into `dst` (`ncols * cin`).
    #[inline(always)]
    pub(crate) fn fill(&self, j: usize, ncols: usize, dst: &mut [f32]) {
        let c = self.c;
        let Some((xr, ra)) = self.xr else {
            return c.fill_p_row(self.x, j, ncols, dst);
        };
        // a fused producer implies stride 1, no dilation and no upsampling: X row r is
        // P row pt + r, X column q is P column pl + q
        match j.checked_sub(c.pt).filter(|&r| r < c.h) {
            None => dst.fill(0.0),
            Some(r) => {
                let cin = c.cin;
                let row = &xr[(r - ra) * c.w * cin..(r - ra + 1) * c.w * cin];
                let (a, b) = (c.pl.min(ncols), (c.pl + c.w).min(ncols));
                dst[..a * cin].fill(0.0);
                if b > a {
                    dst[a * cin..b * cin].copy_from_slice(&row[..(b - a) * cin]);
                }
                dst[b * cin..].fill(0.0);
            }
        }
    }
}

/// Output rows `[r0, r0 + rows)` of image `x` into `out` (`rows * wo * cout`), with the
/// kernel of `p.kind`, which the network compiler chose from the detected
/// [`CpuFeatures`](crate::backend::cpu::CpuFeatures): the instructions are not checked again.
pub(crate) fn tile(
    c: &ConvStep,
    p: &DirectPack,
    x: &[f32],
    r0: usize,
    rows: usize,
    out: &mut [f32],
    sc: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        let need = rows * c.wo * c.cout;
        assert!(out.len() >= need && sc.len() >= scratch_len(c, p, rows));
        // SAFETY: a DirectPack's kind is only chosen (conv_step, subpixel) where the detected
        // CpuFeatures have its instructions (AVX-512F; AVX512_BF16 for Bf16; AMX for Amx);
        // the slices were checked against the band's sizes just above; `p` and `c.subpixel`
        // are `c`'s own packed weights.
        unsafe {
            match p.kind {
                DirectKind::Amx if c.subpixel.is_some() => {
                    let sp = c.subpixel.as_ref().expect("checked");
                    x86::tile_classes_amx(c, sp, x, r0, rows, out, sc)
                }
                DirectKind::Bf16 if c.subpixel.is_some() => {
                    let sp = c.subpixel.as_ref().expect("checked");
                    x86::tile_classes_bf16(c, sp, x, r0, rows, out, sc)
                }
                _ if c.subpixel.is_some() => {
                    let sp = c.subpixel.as_ref().expect("checked");
                    x86::tile_classes(c, sp, x, r0, rows, out, sc)
                }
                _ => {
                    let (sc, psc) = sc.split_at_mut(kernel_scratch_len(c, p, rows));
                    let src = BandRows::new(c, x, r0, rows + c.kh - 1, psc);
                    match p.kind {
                        DirectKind::F32 | DirectKind::Dot => {
                            x86::tile_plain(c, p, &src, r0, rows, out, sc)
                        }
                        DirectKind::Bf16 => x86::tile_bf16(c, p, &src, r0, rows, out, sc),
                        DirectKind::Amx => x86::tile_amx(c, p, &src, r0, rows, out, sc),
                    }
                }
            }
        }
        if !matches!(c.act, Activation::Relu | Activation::Linear) {
            for v in &mut out[..need] {
                *v = c.act.apply(*v);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (c, p, x, r0, rows, out, sc);
        unreachable!("direct kernels are chosen only where available() is true");
    }
}

/// Rows of slack a [`gemm_packed`] operand needs after its last row.
pub(crate) const GEMM_SLACK_ROWS: usize = MR_MAX;

/// `m[r][..cout] = a[r][..cin] . W_tap` for rows `r < rows`, with the f32 micro-kernels of
/// the direct convolutions (tiles of 6-14 rows x 32 columns, the rows split evenly; or
/// 28 x 16), `W_tap` being tap
/// `tap` of `p` (F32 weights packed by [`pack`] as `taps` taps of `cin x cout`): the GEMMs
/// of Winograd's transformed domain, whose weights are packed once at compile time.
/// `a` holds `rows` rows of `cin` floats and then [`GEMM_SLACK_ROWS`] readable rows (read,
/// never used); `m` rows of `ldm >= cout` floats.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_packed(
    p: &DirectPack,
    tap: usize,
    taps: usize,
    cin: usize,
    cout: usize,
    a: &[f32],
    rows: usize,
    m: &mut [f32],
    ldm: usize,
) {
    assert!(p.kind == DirectKind::F32 && tap < taps && ldm >= cout);
    assert!(p.w32.len() == p.ncb * taps * cin * 16 * p.nv && p.ncb * 16 * p.nv >= cout);
    assert!(a.len() >= (rows + GEMM_SLACK_ROWS) * cin);
    assert!(rows == 0 || m.len() >= (rows - 1) * ldm + cout);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: F32 packs are only made where the detected CPU has AVX-512F (conv_step);
    // the sizes were checked just above: every tile reads rows of `a` below
    // rows + MR_MAX and writes rows of `m` below `rows`, columns below `cout`.
    unsafe {
        x86::gemm_f32(
            p,
            tap,
            taps,
            cin,
            cout,
            a.as_ptr(),
            rows,
            m.as_mut_ptr(),
            ldm,
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (a, m);
        unreachable!("direct kernels are chosen only where available() is true");
    }
}

#[cfg(target_arch = "x86_64")]
// the micro-kernels index their register arrays by pixel and vector on purpose
#[allow(clippy::needless_range_loop)]
mod x86 {
    use super::super::conv::ConvStep;
    use super::{band_pixels, BandRows, DirectKind, DirectPack, MR_MAX};
    use crate::nn::spec::Activation;
    use std::arch::x86_64::*;

    /// The same 512 bits as 32 bf16.
    #[inline(always)]
    fn bh(v: __m512i) -> __m512bh {
        // SAFETY: both are plain 64-byte vectors.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    /// How the flat pixels of a band map to the layer output: band pixel m = (y, x) with
    /// y = m / `wpb`, x = m % `wpb`; valid when m < `mtot` and x < `wv`; output pixel
    /// (y * step[0] + phase[0], x * step[1] + phase[1]).
    #[derive(Clone, Copy)]
    pub(super) struct Geom {
        pub wpb: usize,
        pub wv: usize,
        pub mtot: usize,
        pub step: [usize; 2],
        pub phase: [usize; 2],
    }

    impl Geom {
        /// The plain band of `rows` output rows (P width wp, kw - 1 dropped columns).
        fn plain(c: &ConvStep, rows: usize) -> Geom {
            Geom {
                wpb: c.wp(),
                wv: c.wo,
                mtot: (rows - 1) * c.wp() + c.wo,
                step: [1, 1],
                phase: [0, 0],
            }
        }
    }

    /// Destination of each pixel of a tile (null: a dropped column or past the band).
    #[inline(always)]
    fn dests<const MR: usize>(
        c: &ConvStep,
        g: &Geom,
        out: *mut f32,
        m0: usize,
        ch0: usize,
    ) -> [*mut f32; MR] {
        let mut d = [std::ptr::null_mut(); MR];
        let (mut y, mut xx) = (m0 / g.wpb, m0 % g.wpb);
        for (i, di) in d.iter_mut().enumerate() {
            if m0 + i < g.mtot && xx < g.wv {
                let (oy, ox) = (y * g.step[0] + g.phase[0], xx * g.step[1] + g.phase[1]);
                // SAFETY: (oy, ox) is an output pixel of the band, inside `out`.
                *di = unsafe { out.add((oy * c.wo + ox) * c.cout + ch0) };
            }
            xx += 1;
            if xx == g.wpb {
                xx = 0;
                y += 1;
            }
        }
        d
    }

    /// Lane masks of the `nv` vectors of block `cb` (the channel tail is masked).
    #[inline(always)]
    fn masks<const NV: usize>(cout: usize, ch0: usize) -> [u16; NV] {
        let mut m = [0u16; NV];
        for (v, mv) in m.iter_mut().enumerate() {
            let lanes = cout.saturating_sub(ch0 + 16 * v).min(16);
            *mv = if lanes == 16 {
                0xffff
            } else {
                ((1u32 << lanes) - 1) as u16
            };
        }
        m
    }

    /// Bias + ReLU and the (masked) stores of one tile.
    ///
    /// # Safety
    /// The CPU has AVX-512F (every caller is compiled for it); `bias` points at `16 * NV`
    /// readable floats; every non-null `dst[i]` at the `16 * NV` channel values of one output
    /// pixel, writable where `mask` selects them and written by no one else meanwhile.
    #[inline(always)]
    unsafe fn store<const MR: usize, const NV: usize>(
        acc: &[[__m512; NV]; MR],
        bias: *const f32,
        relu: bool,
        dst: &[*mut f32; MR],
        mask: &[u16; NV],
    ) {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            let mut b = [_mm512_setzero_ps(); NV];
            for (v, bv) in b.iter_mut().enumerate() {
                *bv = _mm512_loadu_ps(bias.add(16 * v));
            }
            for i in 0..MR {
                let d = dst[i];
                if d.is_null() {
                    continue;
                }
                for v in 0..NV {
                    let mut r = _mm512_add_ps(acc[i][v], b[v]);
                    if relu {
                        r = _mm512_max_ps(r, _mm512_setzero_ps());
                    }
                    if mask[v] == 0xffff {
                        _mm512_storeu_ps(d.add(16 * v), r);
                    } else if mask[v] != 0 {
                        _mm512_mask_storeu_ps(d.add(16 * v), mask[v], r);
                    }
                }
            }
        }
    }

    /// One reduction step of an f32 tile: `NV` weight vectors at `wq`, one input value per
    /// pixel, at `b + i * cin` for the first `K` pixels and at `b1 + i * cin` for the others
    /// (`K` = 0: all at `b`).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `wq` points at `16 * NV` readable floats; the input values at
    /// `b + i * cin` (pixels `i < K`, every pixel when `K` = 0) and `b1 + i * cin` (pixels
    /// `i >= K`) are readable.
    #[inline(always)]
    unsafe fn step<const MR: usize, const NV: usize, const K: usize>(
        acc: &mut [[__m512; NV]; MR],
        b: *const f32,
        b1: *const f32,
        wq: *const f32,
        cin: usize,
    ) {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            let mut wv = [_mm512_setzero_ps(); NV];
            for (v, wvv) in wv.iter_mut().enumerate() {
                *wvv = _mm512_loadu_ps(wq.add(16 * v));
            }
            for i in 0..MR {
                let src = if K > 0 && i >= K { b1 } else { b };
                let a = _mm512_set1_ps(*src.add(i * cin));
                for v in 0..NV {
                    acc[i][v] = _mm512_fmadd_ps(a, wv[v], acc[i][v]);
                }
            }
        }
    }

    /// One f32 tile: `MR` pixels from band pixel `t` on, `NV` vectors of channels; with
    /// `K` > 0 the tile wraps to the next band row after `K` pixels, and its other pixels
    /// are read `gap` floats further on (the row's dropped columns are skipped).
    /// `CIN` > 0 fixes the channel count at compile time (`cin` otherwise).
    ///
    /// # Safety
    /// The CPU has AVX-512F; for every tap offset `off` of `offs` and channel `ci < cin`, the
    /// values at `t + off + ci + i * cin` (pixels `i < K`, every pixel when `K` = 0) and
    /// `t + off + gap + ci + i * cin` (pixels `i >= K`) are readable (the band and its zero slack);
    /// `w` holds `offs.len() * cin * 16 * NV` floats; `bias`, `dst` and `mask` as for [`store`].
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn micro_f32<const MR: usize, const NV: usize, const CIN: usize, const K: usize>(
        t: *const f32,
        cin: usize,
        gap: usize,
        offs: &[usize],
        w: *const f32,
        bias: *const f32,
        relu: bool,
        dst: &[*mut f32; MR],
        mask: &[u16; NV],
    ) {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            let cin = if CIN > 0 { CIN } else { cin };
            let mut acc = [[_mm512_setzero_ps(); NV]; MR];
            let mut wq = w;
            // four reduction steps per loop trip: the loop's own counter and pointer updates
            // otherwise take FMA port slots (measured: 4-8 % per layer, single thread)
            let c4 = cin / 4 * 4;
            for &off in offs {
                let b = t.add(off);
                let b1 = b.add(gap);
                let mut ci = 0;
                while ci < c4 {
                    for u in 0..4 {
                        let o = ci + u;
                        step::<MR, NV, K>(&mut acc, b.add(o), b1.add(o), wq.add(16 * NV * u), cin);
                    }
                    wq = wq.add(64 * NV);
                    ci += 4;
                }
                while ci < cin {
                    step::<MR, NV, K>(&mut acc, b.add(ci), b1.add(ci), wq, cin);
                    wq = wq.add(16 * NV);
                    ci += 1;
                }
            }
            store(&acc, bias, relu, dst, mask);
        }
    }

    /// One reduction step of a bf16 tile: `NV` weight vectors (16 pairs each) at `wq`, one
    /// input pair per pixel, at `b + i * c2` for the first `K` pixels and at `b1 + i * c2` for
    /// the others (`K` = 0: all at `b`).
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16; `wq` points at `32 * NV` readable bf16; the pairs
    /// at `b + i * c2` (pixels `i < K`, every pixel when `K` = 0) and `b1 + i * c2` (pixels
    /// `i >= K`) are readable.
    #[inline(always)]
    unsafe fn step_bf16<const MR: usize, const NV: usize, const K: usize>(
        acc: &mut [[__m512; NV]; MR],
        b: *const u32,
        b1: *const u32,
        wq: *const u16,
        c2: usize,
    ) {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            let mut wv: [__m512bh; NV] = [bh(_mm512_setzero_si512()); NV];
            for (v, wvv) in wv.iter_mut().enumerate() {
                *wvv = bh(_mm512_loadu_si512(wq.add(32 * v) as *const _));
            }
            for i in 0..MR {
                let src = if K > 0 && i >= K { b1 } else { b };
                let a = bh(_mm512_set1_epi32(*src.add(i * c2) as i32));
                for v in 0..NV {
                    acc[i][v] = _mm512_dpbf16_ps(acc[i][v], a, wv[v]);
                }
            }
        }
    }

    /// One bf16 tile: like [`micro_f32`] over pairs of input channels (`C2` > 0 fixes the
    /// pair count at compile time, `c2` otherwise), four pairs per loop trip; with `K` > 0
    /// the tile wraps to the next band row after `K` pixels, its other pixels read `gap`
    /// pairs further on.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16; for every offset `off` of `offs` and pair
    /// `k < c2` the pairs at `t + off + k + i * c2` (pixels `i < K`, every pixel when `K` = 0)
    /// and `t + off + gap + k + i * c2` (pixels `i >= K`) are readable; `w` holds
    /// `offs.len() * c2 * 32 * NV` bf16 values; `bias`, `dst` and `mask` as for [`store`].
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn micro_bf16<const MR: usize, const NV: usize, const C2: usize, const K: usize>(
        t: *const u32,
        c2: usize,
        gap: usize,
        offs: &[usize],
        w: *const u16,
        bias: *const f32,
        relu: bool,
        dst: &[*mut f32; MR],
        mask: &[u16; NV],
    ) {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            let c2 = if C2 > 0 { C2 } else { c2 };
            let mut acc = [[_mm512_setzero_ps(); NV]; MR];
            let mut wq = w;
            let c4 = c2 / 4 * 4;
            for &off in offs {
                let b = t.add(off);
                let b1 = b.add(gap);
                let mut k = 0;
                while k < c4 {
                    for u in 0..4 {
                        let o = k + u;
                        step_bf16::<MR, NV, K>(
                            &mut acc,
                            b.add(o),
                            b1.add(o),
                            wq.add(32 * NV * u),
                            c2,
                        );
                    }
                    wq = wq.add(128 * NV);
                    k += 4;
                }
                while k < c2 {
                    step_bf16::<MR, NV, K>(&mut acc, b.add(k), b1.add(k), wq, c2);
                    wq = wq.add(32 * NV);
                    k += 1;
                }
            }
            store(&acc, bias, relu, dst, mask);
        }
    }

    fn offsets(c: &ConvStep, px: usize) -> Vec<usize> {
        let wp = c.wp();
        let mut o = Vec::with_capacity(c.kh * c.kw);
        for dy in 0..c.kh {
            for dx in 0..c.kw {
                o.push((dy * wp + dx) * px);
            }
        }
        o
    }

    macro_rules! dispatch_cin {
        ($f:ident, $mr:literal, $nv:literal, $cin:expr, [$k:literal], $($arg:expr),*) => {
            match $cin {
                16 => $f::<$mr, $nv, 16, $k>($($arg),*),
                32 => $f::<$mr, $nv, 32, $k>($($arg),*),
                64 => $f::<$mr, $nv, 64, $k>($($arg),*),
                128 => $f::<$mr, $nv, 128, $k>($($arg),*),
                256 => $f::<$mr, $nv, 256, $k>($($arg),*),
                _ => $f::<$mr, $nv, 0, $k>($($arg),*),
            }
        };
    }

    /// [`super::gemm_packed`] on raw pointers.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `p` holds F32 weights of `taps` taps (`cin x cout`, tap < taps);
    /// `a` points at `(rows + MR_MAX) * cin` readable floats, `m` at `rows` rows of `ldm`
    /// floats, writable in their first `cout` columns.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm_f32(
        p: &DirectPack,
        tap: usize,
        taps: usize,
        cin: usize,
        cout: usize,
        a: *const f32,
        rows: usize,
        m: *mut f32,
        ldm: usize,
    ) {
        static ZERO: [f32; 32] = [0.0; 32];
        let nb = 16 * p.nv;
        // SAFETY: the caller upholds the contract above (# Safety); a tile's rows past
        // `rows` get a null destination (not stored) and read within the slack.
        unsafe {
            macro_rules! run {
                ($mr:literal, $nv:literal) => {
                    for cb in 0..p.ncb {
                        let mask = masks::<$nv>(cout, cb * nb);
                        let w = p.w32.as_ptr().add((cb * taps + tap) * cin * nb);
                        let mut r0 = 0;
                        while r0 < rows {
                            let mut dst = [std::ptr::null_mut(); $mr];
                            for (i, d) in dst.iter_mut().enumerate() {
                                if r0 + i < rows {
                                    *d = m.add((r0 + i) * ldm + cb * nb);
                                }
                            }
                            dispatch_cin!(
                                micro_f32,
                                $mr,
                                $nv,
                                cin,
                                [0],
                                a.add(r0 * cin),
                                cin,
                                0,
                                &[0],
                                w,
                                ZERO.as_ptr(),
                                false,
                                &dst,
                                &mask
                            );
                            r0 += $mr;
                        }
                    }
                };
            }
            // rows split evenly into tiles of at most 14 (16 rows: two of 8, not 14 + 2)
            let mr = rows.div_ceil(rows.div_ceil(14)).next_multiple_of(2).max(6);
            match (p.nv, mr) {
                (1, _) => run!(28, 1),
                (_, 6) => run!(6, 2),
                (_, 8) => run!(8, 2),
                (_, 10) => run!(10, 2),
                (_, 12) => run!(12, 2),
                _ => run!(14, 2),
            }
        }
    }

    /// The f32 and dot kernels on a plain band (no sub-pixel classes).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `p` is `c`'s packed weights, of kind F32 or Dot; `out` holds the
    /// `rows * wo * cout` outputs of the band and `sc` at least `super::scratch_len(c, p, rows)`
    /// floats (what `super::tile` checks before it calls this).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_plain(
        c: &ConvStep,
        p: &DirectPack,
        src: &BandRows,
        r0: usize,
        rows: usize,
        out: &mut [f32],
        sc: &mut [f32],
    ) {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            let band = fill_band(c, src, r0, rows, sc);
            let offs = offsets(c, c.cin);
            let g = Geom::plain(c, rows);
            match p.kind {
                DirectKind::Dot => sweep_dot(c, p, band.as_ptr(), &offs, &g, out.as_mut_ptr()),
                _ => sweep_f32(c, p, band.as_ptr(), &offs, &g, out.as_mut_ptr()),
            }
        }
    }

    /// The band's P rows (f32, pixel-major) and the zero slack after them.
    fn fill_band<'s>(
        c: &ConvStep,
        src: &BandRows,
        r0: usize,
        rows: usize,
        sc: &'s mut [f32],
    ) -> &'s [f32] {
        let (cin, wp) = (c.cin, c.wp());
        let prow = rows + c.kh - 1;
        let band = &mut sc[..band_pixels(c, rows) * cin];
        for jj in 0..prow {
            src.fill(r0 + jj, wp, &mut band[jj * wp * cin..(jj + 1) * wp * cin]);
        }
        band[prow * wp * cin..].fill(0.0);
        band
    }

    /// The compact tiling of band `g` for tiles of `mr` pixels and `nv` vectors, where it
    /// applies (2 vectors, an even valid width of at least `mr`): the geometry of the valid
    /// pixels alone (a band without dropped columns), whose tiles wrap from the end of one
    /// row to the start of the next. A last tile that wraps reads up to `mr - 2 + kw - 1`
    /// pixels into the band's zero slack (the flat tiling at most `mr - 2`): that must fit.
    fn compact(c: &ConvStep, g: &Geom, nv: usize, mr: usize) -> Option<Geom> {
        (nv == 2 && g.wv.is_multiple_of(2) && g.wv >= mr && mr - 2 + c.kw - 1 < MR_MAX).then(|| {
            let nrows = (g.mtot - g.wv) / g.wpb + 1;
            Geom {
                wpb: g.wv,
                mtot: nrows * g.wv,
                ..*g
            }
        })
    }

    /// The tile loops of [`sweep_f32`] and [`sweep_bf16`], one body for both element types:
    /// compact tiles of 14 pixels x 2 vectors where [`compact`] applies (the wrap point as
    /// a const generic), else flat tiles of 28 x 1 or 14 x 2 vectors. `$px`: elements (f32
    /// or bf16 pairs) per band pixel; `$dispatch!($micro, MR, NV, px, [K], args..)` calls
    /// the micro-kernel; `$w(cb)`: the weights of channel block `cb`. Expands to unsafe
    /// code: the caller's contract is the sweep's.
    macro_rules! sweep_tiles {
        ($c:expr, $p:expr, $bp:expr, $offs:expr, $g:expr, $op:expr, $px:expr,
         $dispatch:ident, $micro:ident, $w:expr) => {{
            let (c, p, bp, offs, g, op, px): (
                &ConvStep,
                &DirectPack,
                _,
                &[usize],
                &Geom,
                _,
                usize,
            ) = ($c, $p, $bp, $offs, $g, $op, $px);
            let wof = $w;
            let (nv, nb) = (p.nv, 16 * p.nv);
            let relu = c.act == Activation::Relu;
            const MR: usize = 14;
            if let Some(gc) = compact(c, g, nv, MR) {
                let (ntot, gap) = (gc.mtot, (g.wpb - g.wv) * px);
                for cb in 0..p.ncb {
                    let mask = masks::<2>(c.cout, cb * nb);
                    let w = wof(cb);
                    let b = p.bias.as_ptr().add(cb * nb);
                    let mut n0 = 0;
                    while n0 < ntot {
                        let (y, x0) = (n0 / g.wv, n0 % g.wv);
                        let dst = dests::<MR>(c, &gc, op, n0, cb * nb);
                        let t = bp.add((y * g.wpb + x0) * px);
                        macro_rules! go {
                            ($k:literal) => {
                                $dispatch!(
                                    $micro,
                                    14,
                                    2,
                                    px,
                                    [$k],
                                    t,
                                    px,
                                    gap,
                                    offs,
                                    w,
                                    b,
                                    relu,
                                    &dst,
                                    &mask
                                )
                            };
                        }
                        match g.wv - x0 {
                            2 => go!(2),
                            4 => go!(4),
                            6 => go!(6),
                            8 => go!(8),
                            10 => go!(10),
                            12 => go!(12),
                            _ => go!(0),
                        }
                        n0 += MR;
                    }
                }
            } else {
                macro_rules! run {
                    ($mr:literal, $nv:literal) => {
                        for cb in 0..p.ncb {
                            let mask = masks::<$nv>(c.cout, cb * nb);
                            let w = wof(cb);
                            let b = p.bias.as_ptr().add(cb * nb);
                            let mut m0 = 0;
                            while m0 < g.mtot {
                                let dst = dests::<$mr>(c, g, op, m0, cb * nb);
                                let t = bp.add(m0 * px);
                                $dispatch!(
                                    $micro,
                                    $mr,
                                    $nv,
                                    px,
                                    [0],
                                    t,
                                    px,
                                    0,
                                    offs,
                                    w,
                                    b,
                                    relu,
                                    &dst,
                                    &mask
                                );
                                m0 += $mr;
                            }
                        }
                    };
                }
                match nv {
                    1 => run!(28, 1),
                    _ => run!(14, 2),
                }
            }
        }};
    }

    /// Every f32 tile of a band: taps at `offs` (floats from a pixel), weights `p`.
    ///
    /// With 2 vectors per tile and an even valid width of at least 14 pixels, tiles run over
    /// the valid pixels only ("compact"): a tile that reaches the end of a row goes on at
    /// the start of the next, its pixels there read through a second base pointer (`K`, the
    /// pixels before the wrap, is even and fixed at compile time). Otherwise tiles run over
    /// every band pixel and the `kw - 1` dropped columns of each row are computed too (up to
    /// 11 % of the work on a 16-pixel-wide layer).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `bp` points at a band in `g`'s geometry (`c.cin` floats per
    /// pixel, then the zero slack of `MR_MAX` pixels) inside which every tile's reads stay at every
    /// tap offset of `offs`; `op` points at the layer output, holding every pixel `g` maps the
    /// band to; `p` holds F32 weights for `c` with `offs.len()` taps.
    #[target_feature(enable = "avx512f")]
    unsafe fn sweep_f32(
        c: &ConvStep,
        p: &DirectPack,
        bp: *const f32,
        offs: &[usize],
        g: &Geom,
        op: *mut f32,
    ) {
        let (cin, taps) = (c.cin, offs.len());
        // SAFETY: the caller upholds the contract above (# Safety), which is the
        // micro-kernels' for every tile the sweep makes.
        unsafe {
            sweep_tiles!(
                c,
                p,
                bp,
                offs,
                g,
                op,
                cin,
                dispatch_cin,
                micro_f32,
                |cb: usize| p.w32.as_ptr().add(cb * taps * cin * 16 * p.nv)
            )
        }
    }

    /// The band of a sub-pixel tile: output rows [r0, r0 + rows) are input rows
    /// [ys0, ys0 + nrs) of every class; the band holds `prow` padded input rows of `wpb`
    /// pixels, starting `pt` rows above ys0.
    struct SubBand {
        ws: usize,
        wpb: usize,
        ys0: usize,
        nrs: usize,
        prow: usize,
        pt: usize,
    }

    impl SubBand {
        fn new(c: &ConvStep, sp: &super::SubPixel, r0: usize, rows: usize) -> SubBand {
            let [pt, pb, pl, pr] = sp.pad;
            let ws = c.w / c.up[1];
            let nrs = rows / c.up[0];
            SubBand {
                ws,
                wpb: ws + pl + pr,
                ys0: r0 / c.up[0],
                nrs,
                prow: nrs + pt + pb,
                pt,
            }
        }

        /// Class `k`'s output geometry and tap offsets (`px` units per band pixel).
        fn class(
            &self,
            c: &ConvStep,
            k: usize,
            class: &super::SubClass,
            px: usize,
        ) -> (Geom, Vec<usize>) {
            let g = Geom {
                wpb: self.wpb,
                wv: self.ws,
                mtot: (self.nrs - 1) * self.wpb + self.ws,
                step: c.up,
                phase: [k / c.up[1], k % c.up[1]],
            };
            let offs = class
                .taps
                .iter()
                .map(|&(dy, dx)| (dy * self.wpb + dx) * px)
                .collect();
            (g, offs)
        }
    }

    /// Row `r` of the small input (zeros outside it) with the sub-pixel band's left and
    /// right padding, f32 pixel-major, into `dst` (`(pl + ws + pr) * cin`).
    fn fill_src_row(
        c: &ConvStep,
        sp: &super::SubPixel,
        x: &[f32],
        r: Option<usize>,
        dst: &mut [f32],
    ) {
        let cin = c.cin;
        let (hs, ws) = (c.h / c.up[0], c.w / c.up[1]);
        let pl = sp.pad[2];
        match r.filter(|&r| r < hs) {
            None => dst.fill(0.0),
            Some(r) => {
                dst[..pl * cin].fill(0.0);
                dst[pl * cin..(pl + ws) * cin]
                    .copy_from_slice(&x[r * ws * cin..(r + 1) * ws * cin]);
                dst[(pl + ws) * cin..].fill(0.0);
            }
        }
    }

    /// Upsampling folded into the layer (`ConvStep::up`), by sub-pixel classes: output
    /// pixels of one class (oy mod u0, ox mod u1) read the small input through a smaller
    /// kernel (the taps that land on the same input pixel summed), so the band is the small
    /// input and a 3x3 layer after a 2x upsampling does 4 taps per output instead of 9.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `sp` is `c`'s sub-pixel form (F32 or Dot classes); `out` and `sc`
    /// as for [`tile_plain`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_classes(
        c: &ConvStep,
        sp: &super::SubPixel,
        x: &[f32],
        r0: usize,
        rows: usize,
        out: &mut [f32],
        sc: &mut [f32],
    ) {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            let cin = c.cin;
            let sb = SubBand::new(c, sp, r0, rows);
            let wpb = sb.wpb;
            let band = &mut sc[..(sb.prow * wpb + MR_MAX) * cin];
            for jj in 0..sb.prow {
                let dst = &mut band[jj * wpb * cin..(jj + 1) * wpb * cin];
                fill_src_row(c, sp, x, (sb.ys0 + jj).checked_sub(sb.pt), dst);
            }
            band[sb.prow * wpb * cin..].fill(0.0);
            for (k, class) in sp.classes.iter().enumerate() {
                let (g, offs) = sb.class(c, k, class, cin);
                match class.pack.kind {
                    DirectKind::Dot => {
                        sweep_dot(c, &class.pack, band.as_ptr(), &offs, &g, out.as_mut_ptr())
                    }
                    _ => sweep_f32(c, &class.pack, band.as_ptr(), &offs, &g, out.as_mut_ptr()),
                }
            }
        }
    }

    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16; `p` is `c`'s packed weights of kind Bf16; `out`
    /// and `sc` as for [`tile_plain`].
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile_bf16(
        c: &ConvStep,
        p: &DirectPack,
        src: &BandRows,
        r0: usize,
        rows: usize,
        out: &mut [f32],
        sc: &mut [f32],
    ) {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            let c2 = c.cin.div_ceil(2);
            let prow = rows + c.kh - 1;
            let npx = band_pixels(c, rows);
            let (band, row) = sc.split_at_mut(npx * c2);
            // the band as bf16 pairs: pixel-major, cin padded to even
            fill_band_bf16(
                c,
                src,
                r0,
                prow,
                2 * c2,
                bytemuck::cast_slice_mut(band),
                row,
            );
            let offs = offsets(c, c2);
            let g = Geom::plain(c, rows);
            sweep_bf16(
                c,
                p,
                band.as_ptr() as *const u32,
                &offs,
                &g,
                out.as_mut_ptr(),
            );
        }
    }

    /// Sub-pixel classes (see [`tile_classes`]) on the AVX512_BF16 kernel: a bf16 band of
    /// the small input (pairs, cin padded to even), one sweep per class with its taps and
    /// summed weights.
    ///
    /// # Safety
    /// As for [`tile_bf16`], with `sp` `c`'s sub-pixel form of Bf16 classes.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile_classes_bf16(
        c: &ConvStep,
        sp: &super::SubPixel,
        x: &[f32],
        r0: usize,
        rows: usize,
        out: &mut [f32],
        sc: &mut [f32],
    ) {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            let cin = c.cin;
            let sb = SubBand::new(c, sp, r0, rows);
            let c2 = cin.div_ceil(2);
            let npx = sb.prow * sb.wpb + MR_MAX;
            let (band, rest) = sc.split_at_mut(npx * c2);
            let row = &mut rest[..sb.wpb * cin];
            let b16: &mut [u16] = bytemuck::cast_slice_mut(band);
            for jj in 0..sb.prow {
                fill_src_row(c, sp, x, (sb.ys0 + jj).checked_sub(sb.pt), row);
                row_to_bf16(
                    row,
                    cin,
                    2 * c2,
                    &mut b16[jj * sb.wpb * 2 * c2..(jj + 1) * sb.wpb * 2 * c2],
                );
            }
            b16[sb.prow * sb.wpb * 2 * c2..].fill(0);
            for (k, class) in sp.classes.iter().enumerate() {
                // offsets in pairs: c2 per pixel
                let (g, offs) = sb.class(c, k, class, c2);
                sweep_bf16(
                    c,
                    &class.pack,
                    band.as_ptr() as *const u32,
                    &offs,
                    &g,
                    out.as_mut_ptr(),
                );
            }
        }
    }

    macro_rules! dispatch_c2 {
        ($f:ident, $mr:literal, $nv:literal, $c2:expr, [$k:literal], $($arg:expr),*) => {
            match $c2 {
                8 => $f::<$mr, $nv, 8, $k>($($arg),*),
                16 => $f::<$mr, $nv, 16, $k>($($arg),*),
                32 => $f::<$mr, $nv, 32, $k>($($arg),*),
                64 => $f::<$mr, $nv, 64, $k>($($arg),*),
                128 => $f::<$mr, $nv, 128, $k>($($arg),*),
                _ => $f::<$mr, $nv, 0, $k>($($arg),*),
            }
        };
    }

    /// Every bf16 tile of a band of pairs: taps at `offs` (pairs from a pixel), weights `p`;
    /// compact tiles where [`compact`] applies, as in [`sweep_f32`].
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16; `bp` points at a band in `g`'s geometry
    /// (`ceil(c.cin / 2)` pairs per pixel, then the zero slack of `MR_MAX` pixels) inside
    /// which every tile's reads stay at every tap offset of `offs`; `op` points at the layer
    /// output, holding every pixel `g` maps the band to; `p` holds Bf16 weights for `c` with
    /// `offs.len()` taps.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn sweep_bf16(
        c: &ConvStep,
        p: &DirectPack,
        bp: *const u32,
        offs: &[usize],
        g: &Geom,
        op: *mut f32,
    ) {
        let (c2, taps) = (c.cin.div_ceil(2), offs.len());
        // SAFETY: the caller upholds the contract above (# Safety), which is the
        // micro-kernels' for every tile the sweep makes.
        unsafe {
            sweep_tiles!(
                c,
                p,
                bp,
                offs,
                g,
                op,
                c2,
                dispatch_c2,
                micro_bf16,
                |cb: usize| p.w16.as_ptr().add(cb * taps * c2 * 32 * p.nv)
            )
        }
    }

    /// The band's P rows as bf16, pixel-major with `cp >= cin` channels (zero padded), and
    /// zeros after them; `row` is f32 scratch of at least `wp * cin`.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16 (the slices are bounds-checked).
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn fill_band_bf16(
        c: &ConvStep,
        src: &BandRows,
        r0: usize,
        prow: usize,
        cp: usize,
        b16: &mut [u16],
        row: &mut [f32],
    ) {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            let (cin, wp) = (c.cin, c.wp());
            let row = &mut row[..wp * cin];
            for jj in 0..prow {
                src.fill(r0 + jj, wp, row);
                row_to_bf16(row, cin, cp, &mut b16[jj * wp * cp..(jj + 1) * wp * cp]);
            }
            b16[prow * wp * cp..].fill(0);
        }
    }

    /// A row of f32 pixels (`cin` channels) as bf16 pixels of `cp >= cin` channels, the
    /// padding channels zero.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16 (the slices are bounds-checked).
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn row_to_bf16(row: &[f32], cin: usize, cp: usize, dst: &mut [u16]) {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            if cp == cin {
                convert_bf16(row, dst);
            } else {
                for (d, s) in dst.chunks_exact_mut(cp).zip(row.chunks_exact(cin)) {
                    convert_bf16(s, &mut d[..cin]);
                    d[cin..].fill(0);
                }
            }
        }
    }

    /// The AMX tile configuration: palette 1, all eight tiles 16 rows x 64 bytes.
    #[repr(C, align(64))]
    struct TileCfg {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    /// AMX bf16: tiles of 32 band pixels x 32 output channels in four accumulator tiles
    /// (tmm0..3: pixel block p, channel half h -> tmm(2p + h)), two A tiles (16 pixels x 32
    /// input channels, read in place from the band with the pixel stride) and two B tiles
    /// (32 input x 16 output channels, pairs) per step; a step is one tap and 32 input
    /// channels. The accumulators go through a 4 KB buffer to the bias/ReLU epilogue.
    ///
    /// # Safety
    /// The CPU has AMX-TILE and AMX-BF16 with the tile state granted to this process, AVX-512F
    /// and AVX512_BF16 (`CpuFeatures::amx`); `p` is `c`'s packed weights of kind Amx; `out` and
    /// `sc` as for [`tile_plain`].
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile_amx(
        c: &ConvStep,
        p: &DirectPack,
        src: &BandRows,
        r0: usize,
        rows: usize,
        out: &mut [f32],
        sc: &mut [f32],
    ) {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            let wp = c.wp();
            let cp = 32 * c.cin.div_ceil(32);
            let prow = rows + c.kh - 1;
            let npx = band_pixels(c, rows);
            let (band, rest) = sc.split_at_mut(npx * cp / 2);
            let (row, rest) = rest.split_at_mut(wp * c.cin);
            fill_band_bf16(c, src, r0, prow, cp, bytemuck::cast_slice_mut(band), row);
            let offs = offsets(c, cp * 2); // bytes
            let g = Geom::plain(c, rows);
            sweep_amx(
                c,
                p,
                band.as_ptr() as *const u8,
                &offs,
                &g,
                out,
                &mut rest[..4 * 256],
            );
        }
    }

    /// Sub-pixel classes (see [`tile_classes`]) on the AMX kernel: a bf16 band of the
    /// small input, one sweep per class with its taps and summed weights.
    ///
    /// # Safety
    /// As for [`tile_amx`], with `sp` `c`'s sub-pixel form of Amx classes.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile_classes_amx(
        c: &ConvStep,
        sp: &super::SubPixel,
        x: &[f32],
        r0: usize,
        rows: usize,
        out: &mut [f32],
        sc: &mut [f32],
    ) {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            let cin = c.cin;
            let sb = SubBand::new(c, sp, r0, rows);
            let cp = 32 * cin.div_ceil(32);
            let npx = sb.prow * sb.wpb + MR_MAX;
            let (band, rest) = sc.split_at_mut(npx * cp / 2);
            let (row, rest) = rest.split_at_mut(sb.wpb * cin);
            let b16: &mut [u16] = bytemuck::cast_slice_mut(band);
            for jj in 0..sb.prow {
                fill_src_row(c, sp, x, (sb.ys0 + jj).checked_sub(sb.pt), row);
                row_to_bf16(
                    row,
                    cin,
                    cp,
                    &mut b16[jj * sb.wpb * cp..(jj + 1) * sb.wpb * cp],
                );
            }
            b16[sb.prow * sb.wpb * cp..].fill(0);
            let cbuf = &mut rest[..4 * 256];
            for (k, class) in sp.classes.iter().enumerate() {
                // byte offsets: cp bf16 per pixel
                let (g, offs) = sb.class(c, k, class, cp * 2);
                sweep_amx(
                    c,
                    &class.pack,
                    band.as_ptr() as *const u8,
                    &offs,
                    &g,
                    out,
                    cbuf,
                );
            }
        }
    }

    /// Every AMX tile of a bf16 band (`cp = 32 * ceil(cin/32)` channels per pixel): taps at
    /// `offs` (bytes from a pixel), weights `p` in the AMX layout; `cbuf` is 4 x 256 f32.
    ///
    /// # Safety
    /// The CPU features of [`tile_amx`]; `bb` points at a bf16 band of `32 * ceil(cin / 32)`
    /// channels per pixel inside which every tile (32 pixels from each tile start, at every byte
    /// offset of `offs`) stays, zero slack included; `out` holds every output pixel `g` maps the
    /// band to; `cbuf` holds at least 4 x 256 floats; `p` holds Amx weights with `offs.len()` taps.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn sweep_amx(
        c: &ConvStep,
        p: &DirectPack,
        bb: *const u8,
        offs: &[usize],
        g: &Geom,
        out: &mut [f32],
        cbuf: &mut [f32],
    ) {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            let kc = c.cin.div_ceil(32);
            let taps = offs.len();
            let relu = c.act == Activation::Relu;
            let mtot = g.mtot;
            let stride = 64 * kc;
            let cfg = TileCfg {
                palette: 1,
                start_row: 0,
                reserved: [0; 14],
                colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
                rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
            };
            use std::arch::asm;
            asm!("ldtilecfg [{0}]", in(reg) &cfg as *const TileCfg, options(nostack));
            for cb in 0..p.ncb {
                let wcb = p.w16.as_ptr().add(cb * taps * kc * 1024) as *const u8;
                let bias = p.bias.as_ptr().add(cb * 32);
                let mask = masks::<2>(c.cout, cb * 32);
                let mut m0 = 0;
                while m0 < mtot {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack)
                    );
                    let a0 = bb.add(m0 * stride);
                    let mut wq = wcb;
                    for &off in offs {
                        for k in 0..kc {
                            let a = a0.add(off + 64 * k);
                            asm!(
                                "tileloadd tmm4, [{a} + {s}*1]",
                                "tileloadd tmm5, [{a1} + {s}*1]",
                                "tileloadd tmm6, [{b} + {s64}*1]",
                                "tileloadd tmm7, [{b1} + {s64}*1]",
                                "tdpbf16ps tmm0, tmm4, tmm6",
                                "tdpbf16ps tmm1, tmm4, tmm7",
                                "tdpbf16ps tmm2, tmm5, tmm6",
                                "tdpbf16ps tmm3, tmm5, tmm7",
                                a = in(reg) a,
                                a1 = in(reg) a.add(16 * stride),
                                s = in(reg) stride,
                                b = in(reg) wq,
                                b1 = in(reg) wq.add(1024),
                                s64 = in(reg) 64usize,
                                options(nostack)
                            );
                            wq = wq.add(2048);
                        }
                    }
                    let cp_ = cbuf.as_mut_ptr();
                    asm!(
                        "tilestored [{c0} + {s64}*1], tmm0",
                        "tilestored [{c1} + {s64}*1], tmm1",
                        "tilestored [{c2} + {s64}*1], tmm2",
                        "tilestored [{c3} + {s64}*1], tmm3",
                        c0 = in(reg) cp_,
                        c1 = in(reg) cp_.add(256),
                        c2 = in(reg) cp_.add(512),
                        c3 = in(reg) cp_.add(768),
                        s64 = in(reg) 64usize,
                        options(nostack)
                    );
                    let b = [_mm512_loadu_ps(bias), _mm512_loadu_ps(bias.add(16))];
                    for pb in 0..2 {
                        let dst = dests::<16>(c, g, out.as_mut_ptr(), m0 + 16 * pb, cb * 32);
                        for (r, &d) in dst.iter().enumerate() {
                            if d.is_null() {
                                continue;
                            }
                            for h in 0..2 {
                                let mut v = _mm512_add_ps(
                                    _mm512_loadu_ps(cp_.add((2 * pb + h) * 256 + 16 * r)),
                                    b[h],
                                );
                                if relu {
                                    v = _mm512_max_ps(v, _mm512_setzero_ps());
                                }
                                if mask[h] == 0xffff {
                                    _mm512_storeu_ps(d.add(16 * h), v);
                                } else if mask[h] != 0 {
                                    _mm512_mask_storeu_ps(d.add(16 * h), mask[h], v);
                                }
                            }
                        }
                    }
                    m0 += 32;
                }
            }
            asm!("tilerelease", options(nostack));
        }
    }

    /// f32 -> bf16, round to nearest even (NaN stays NaN).
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512_BF16 (only the common length of the slices is read and
    /// written).
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn convert_bf16(src: &[f32], dst: &mut [u16]) {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            let n = src.len().min(dst.len());
            let mut i = 0;
            while i + 16 <= n {
                let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(i)));
                _mm256_storeu_si256(
                    dst.as_mut_ptr().add(i) as *mut __m256i,
                    std::mem::transmute::<__m256bh, __m256i>(v),
                );
                i += 16;
            }
            for k in i..n {
                dst[k] = super::bf16_bits(src[k]);
            }
        }
    }

    /// Fewer than 16 output channels: per pixel and output channel, a dot product over
    /// `taps x cin`, 16 input channels per vector, `MR` pixels at a time.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `bp` points at a band in `g`'s geometry (`c.cin` floats per
    /// pixel, then the zero slack) inside which every tile's reads stay at every tap offset of
    /// `offs`; `op` points at the layer output, holding every pixel `g` maps the band to; `p`
    /// holds Dot weights for `c` with `offs.len()` taps.
    #[target_feature(enable = "avx512f")]
    unsafe fn sweep_dot(
        c: &ConvStep,
        p: &DirectPack,
        bp: *const f32,
        offs: &[usize],
        g: &Geom,
        op: *mut f32,
    ) {
        // SAFETY: the caller upholds the contract above (# Safety).
        unsafe {
            const MR: usize = 8;
            let cin = c.cin;
            let taps = offs.len();
            let c16 = cin.div_ceil(16) * 16;
            let nblk = c16 / 16;
            let tail = cin - (nblk - 1) * 16;
            let tail_mask: u16 = if tail == 16 {
                0xffff
            } else {
                ((1u32 << tail) - 1) as u16
            };
            let relu = c.act == Activation::Relu;
            const { assert!(MR <= MR_MAX) };
            for co in 0..c.cout {
                let wco = p.w32.as_ptr().add(co * taps * c16);
                let bias = p.bias[co];
                let mut m0 = 0;
                while m0 < g.mtot {
                    let dst = dests::<MR>(c, g, op, m0, co);
                    let mut acc = [_mm512_setzero_ps(); MR];
                    for (t, &off) in offs.iter().enumerate() {
                        let b = bp.add(m0 * cin + off);
                        let wt = wco.add(t * c16);
                        for k in 0..nblk {
                            let wv = _mm512_loadu_ps(wt.add(16 * k));
                            let msk = if k + 1 == nblk { tail_mask } else { 0xffff };
                            for (i, a) in acc.iter_mut().enumerate() {
                                let xv = _mm512_maskz_loadu_ps(msk, b.add(i * cin + 16 * k));
                                *a = _mm512_fmadd_ps(xv, wv, *a);
                            }
                        }
                    }
                    for i in 0..MR {
                        if !dst[i].is_null() {
                            let mut r = _mm512_reduce_add_ps(acc[i]) + bias;
                            if relu {
                                r = r.max(0.0);
                            }
                            *dst[i] = r;
                        }
                    }
                    m0 += MR;
                }
            }
        }
    }
}

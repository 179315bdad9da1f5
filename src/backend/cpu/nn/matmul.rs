//! The GEMM paths of the convolutions (the `gemm` crate): the shifted GEMM (stride 1, at
//! least 16 input channels: each of the kh*kw taps is one GEMM on the band of P rows shifted
//! by the tap, no im2col copy) and im2col (everything else: one GEMM with K = kh*kw*cin);
//! bias and activation in the epilogue. The copies and epilogues are compiled twice,
//! baseline and AVX-512, and picked from the detected [`CpuFeatures`] (the GEMMs dispatch on
//! their own).

use gemm::Parallelism;

use super::conv::{ConvAlgo, ConvStep};
use crate::backend::cpu::features::CpuFeatures;
use crate::nn::spec::Activation;

/// Output rows `[r0, r0 + rows)` of image `x` into `out` (`rows * wo * cout`), for a layer
/// whose algorithm is [`ConvAlgo::Shifted`] or [`ConvAlgo::Im2col`].
pub(crate) fn tile(
    c: &ConvStep,
    isa: CpuFeatures,
    x: &[f32],
    r0: usize,
    rows: usize,
    out: &mut [f32],
    sc: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa.avx512f() {
        // SAFETY: `isa` was detected on this CPU (CpuFeatures cannot be built otherwise)
        // and has AVX-512F, which implies AVX2 and FMA.
        return unsafe { tile_avx512(c, x, r0, rows, out, sc) };
    }
    let _ = isa;
    tile_impl(c, x, r0, rows, out, sc)
}

/// [`tile`] compiled for AVX-512.
///
/// # Safety
/// The CPU must have AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tile_avx512(
    c: &ConvStep,
    x: &[f32],
    r0: usize,
    rows: usize,
    out: &mut [f32],
    sc: &mut [f32],
) {
    tile_impl(c, x, r0, rows, out, sc)
}

#[inline(always)]
fn tile_impl(c: &ConvStep, x: &[f32], r0: usize, rows: usize, out: &mut [f32], sc: &mut [f32]) {
    match c.algo {
        ConvAlgo::Shifted => shifted(c, x, r0, rows, out, sc),
        _ => im2col(c, x, r0, rows, out, sc),
    }
}

#[inline(always)]
fn shifted(c: &ConvStep, x: &[f32], r0: usize, rows: usize, out: &mut [f32], sc: &mut [f32]) {
    let (cin, cout, kh, kw) = (c.cin, c.cout, c.kh, c.kw);
    let wp = c.wp();
    let prow = rows + kh - 1;
    let (t, rest) = sc.split_at_mut(prow * wp * cin);
    let acc = &mut rest[..rows * wp * cout];
    for (jj, dst) in t.chunks_exact_mut(wp * cin).enumerate() {
        c.fill_p_row(x, r0 + jj, wp, dst);
    }
    let m = rows * wp - (kw - 1);
    for dy in 0..kh {
        for dx in 0..kw {
            let tap = dy * kw + dx;
            // SAFETY: the left operand reads rows [off, off + m) of the (prow*wp, cin)
            // buffer t, and off + m <= prow*wp; the right operand is tap's (cin, cout)
            // block of wgt; dst is acc (m <= rows*wp rows of cout).
            unsafe {
                sgemm(
                    m,
                    cout,
                    cin,
                    acc.as_mut_ptr(),
                    cout,
                    tap > 0,
                    t.as_ptr().add((dy * wp + dx) * cin),
                    cin,
                    c.wgt.as_ptr().add(tap * cin * cout),
                    cout,
                    Parallelism::None,
                );
            }
        }
    }
    for y in 0..rows {
        for xo in 0..c.wo {
            let a = &acc[(y * wp + xo) * cout..(y * wp + xo + 1) * cout];
            let o = &mut out[(y * c.wo + xo) * cout..(y * c.wo + xo + 1) * cout];
            epilogue(a, &c.bias, c.act, o);
        }
    }
}

#[inline(always)]
fn im2col(c: &ConvStep, x: &[f32], r0: usize, rows: usize, out: &mut [f32], sc: &mut [f32]) {
    let (cin, cout, kh, kw) = (c.cin, c.cout, c.kh, c.kw);
    let kk = kh * kw * cin;
    let col = &mut sc[..rows * c.wo * kk];
    for y in 0..rows {
        for dy in 0..kh {
            let j = (r0 + y) * c.s[0] + dy;
            let sr = c.src_row(j);
            for xo in 0..c.wo {
                let base = (y * c.wo + xo) * kk + dy * kw * cin;
                for dx in 0..kw {
                    let dst = &mut col[base + dx * cin..base + (dx + 1) * cin];
                    match (sr, c.src_col(xo * c.s[1] + dx)) {
                        (Some(r), Some(q)) => {
                            let sw = c.src_w();
                            dst.copy_from_slice(&x[(r * sw + q) * cin..(r * sw + q + 1) * cin])
                        }
                        _ => dst.fill(0.0),
                    }
                }
            }
        }
    }
    let m = rows * c.wo;
    // SAFETY: col is (m, kk), wgt is (kk, cout), out is (m, cout), all row-major.
    unsafe {
        sgemm(
            m,
            cout,
            kk,
            out.as_mut_ptr(),
            cout,
            false,
            col.as_ptr(),
            kk,
            c.wgt.as_ptr(),
            cout,
            Parallelism::None,
        );
    }
    for o in out[..m * cout].chunks_exact_mut(cout) {
        epilogue_inplace(o, &c.bias, c.act);
    }
}

/// `o = act(a + bias)`.
#[inline(always)]
pub(crate) fn epilogue(a: &[f32], bias: &[f32], act: Activation, o: &mut [f32]) {
    match act {
        Activation::Relu => {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(bias) {
                *o = (a + b).max(0.0);
            }
        }
        Activation::Linear => {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(bias) {
                *o = a + b;
            }
        }
        _ => {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(bias) {
                *o = act.apply(a + b);
            }
        }
    }
}

#[inline(always)]
pub(crate) fn epilogue_inplace(o: &mut [f32], bias: &[f32], act: Activation) {
    match act {
        Activation::Relu => {
            for (o, &b) in o.iter_mut().zip(bias) {
                *o = (*o + b).max(0.0);
            }
        }
        _ => {
            for (o, &b) in o.iter_mut().zip(bias) {
                *o = act.apply(*o + b);
            }
        }
    }
}

/// Row-major `C (m,n) [+]= A (m,k) . B (k,n)` with leading dimensions.
///
/// # Safety
/// The pointers must address matrices of the given sizes and leading dimensions.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    par: Parallelism,
) {
    // SAFETY: the matrices are as large as the sizes and leading dimensions say (this
    // function's contract); gemm reads A and B and writes C only.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ldc as isize,
            accumulate,
            a,
            1,
            lda as isize,
            b,
            1,
            ldb as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

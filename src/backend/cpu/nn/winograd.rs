//! Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions (the opt-in fast mode).
//!
//! Output tiles of 2x2 read 4x4 input tiles: `V = B^T d B` per tile and channel, 16 GEMMs
//! `M_e = V_e . U_e` (tiles x Cin by Cin x Cout) with `U = G g G^T` precomputed, then
//! `Y = A^T M A`. 16 products per 4 outputs instead of 36: 2.25x fewer multiply-adds in
//! the GEMMs, at the price of transforms and a slightly larger rounding error (the bench
//! reports it against the f32 path).

use gemm::Parallelism;

use super::conv::ConvStep;
use super::matmul::sgemm;
use crate::backend::cpu::features::CpuFeatures;

/// `U[e, ci, co]` (e = 4*i + j) from the cross-correlation kernel `wgt[(dy*3+dx), ci, co]`.
pub(crate) fn transform_kernel(wgt: &[f32], cin: usize, cout: usize) -> Vec<f32> {
    let mut u = vec![0.0f32; 16 * cin * cout];
    let g_mat: [[f64; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    for ci in 0..cin {
        for co in 0..cout {
            let g = |dy: usize, dx: usize| wgt[((dy * 3 + dx) * cin + ci) * cout + co] as f64;
            // G g G^T
            for i in 0..4 {
                for j in 0..4 {
                    let mut s = 0.0;
                    for a in 0..3 {
                        for b in 0..3 {
                            s += g_mat[i][a] * g(a, b) * g_mat[j][b];
                        }
                    }
                    u[((i * 4 + j) * cin + ci) * cout + co] = s as f32;
                }
            }
        }
    }
    u
}

fn tiles_w(c: &ConvStep) -> usize {
    c.wo.div_ceil(2)
}

/// Output rows per work item (even): the tiles of a row band fit the target working set.
pub(crate) fn tile_rows(c: &ConvStep, batch: usize, threads: usize, target: usize) -> usize {
    let per_pair = tiles_w(c) * (c.cin + c.cout) * 16 * 4;
    let mut pairs = (target / per_pair.max(1)).clamp(1, c.ho.div_ceil(2));
    while pairs > 1 && batch * c.ho.div_ceil(2 * pairs) < 4 * threads {
        pairs = pairs.div_ceil(2);
    }
    2 * pairs
}

pub(crate) fn scratch_len_rows(c: &ConvStep, rows: usize) -> usize {
    let tw = tiles_w(c);
    let th = rows.div_ceil(2);
    let wp2 = 2 * tw + 2;
    (2 * th + 2) * wp2 * c.cin + 16 * th * tw * (c.cin + c.cout)
}

/// Output rows [r0, r0 + rows) of one image (r0 even). The transforms are compiled for
/// AVX-512 too and picked at run time.
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
        // SAFETY: `isa` was detected on this CPU and has AVX-512F (implying AVX2 and FMA).
        return unsafe { tile_avx512(c, x, r0, rows, out, sc) };
    }
    let _ = isa;
    tile_impl(c, x, r0, rows, out, sc)
}

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
    let (cin, cout) = (c.cin, c.cout);
    let tw = tiles_w(c);
    let th = rows.div_ceil(2);
    let nt = th * tw;
    let wp2 = 2 * tw + 2;
    let (p, rest) = sc.split_at_mut((2 * th + 2) * wp2 * cin);
    let (v, rest) = rest.split_at_mut(16 * nt * cin);
    let m = &mut rest[..16 * nt * cout];
    for (jj, dst) in p.chunks_exact_mut(wp2 * cin).enumerate() {
        c.fill_p_row(x, r0 + jj, wp2, dst);
    }
    // input transform, 16 channels at a time (fixed-size arrays: vectorised)
    for ty in 0..th {
        for tx in 0..tw {
            let t = ty * tw + tx;
            let at = |i: usize, j: usize| ((2 * ty + i) * wp2 + 2 * tx + j) * cin;
            let mut c0 = 0;
            while c0 < cin {
                let cb = (cin - c0).min(L);
                let mut d = [[[0.0f32; L]; 4]; 4];
                for (i, di) in d.iter_mut().enumerate() {
                    for (j, dij) in di.iter_mut().enumerate() {
                        dij[..cb].copy_from_slice(&p[at(i, j) + c0..at(i, j) + c0 + cb]);
                    }
                }
                let vv = input_tile(&d);
                for (e, ve) in vv.iter().enumerate() {
                    let o = (e * nt + t) * cin + c0;
                    v[o..o + cb].copy_from_slice(&ve[..cb]);
                }
                c0 += cb;
            }
        }
    }
    for e in 0..16 {
        // SAFETY: V_e is (nt, cin), U_e (cin, cout), M_e (nt, cout), row-major, in bounds.
        unsafe {
            sgemm(
                nt,
                cout,
                cin,
                m.as_mut_ptr().add(e * nt * cout),
                cout,
                false,
                v.as_ptr().add(e * nt * cin),
                cin,
                c.wino.as_ptr().add(e * cin * cout),
                cout,
                Parallelism::None,
            );
        }
    }
    // output transform + bias + activation, 16 channels at a time
    for ty in 0..th {
        for tx in 0..tw {
            let t = ty * tw + tx;
            let mut c0 = 0;
            while c0 < cout {
                let cb = (cout - c0).min(L);
                let mut mm = [[0.0f32; L]; 16];
                for (e, me) in mm.iter_mut().enumerate() {
                    let o = (e * nt + t) * cout + c0;
                    me[..cb].copy_from_slice(&m[o..o + cb]);
                }
                let y = output_tile(&mm);
                for (a, ya) in y.iter().enumerate() {
                    let oy = 2 * ty + a;
                    if oy >= rows {
                        continue;
                    }
                    for (b, yab) in ya.iter().enumerate() {
                        let ox = 2 * tx + b;
                        if ox >= c.wo {
                            continue;
                        }
                        let o = (oy * c.wo + ox) * cout + c0;
                        let dst = &mut out[o..o + cb];
                        for ((dv, &yv), &bv) in
                            dst.iter_mut().zip(&yab[..cb]).zip(&c.bias[c0..c0 + cb])
                        {
                            *dv = c.act.apply(yv + bv);
                        }
                    }
                }
                c0 += cb;
            }
        }
    }
}

/// Channel block of the transforms.
const L: usize = 16;

/// `V = B^T d B` for a block of channels; `d[i][j]` is input pixel (i, j).
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn input_tile(d: &[[[f32; L]; 4]; 4]) -> [[f32; L]; 16] {
    let mut tm = [[[0.0f32; L]; 4]; 4];
    for j in 0..4 {
        for l in 0..L {
            let (d0, d1, d2, d3) = (d[0][j][l], d[1][j][l], d[2][j][l], d[3][j][l]);
            tm[0][j][l] = d0 - d2;
            tm[1][j][l] = d1 + d2;
            tm[2][j][l] = d2 - d1;
            tm[3][j][l] = d1 - d3;
        }
    }
    let mut v = [[0.0f32; L]; 16];
    for i in 0..4 {
        for l in 0..L {
            let (r0, r1, r2, r3) = (tm[i][0][l], tm[i][1][l], tm[i][2][l], tm[i][3][l]);
            v[i * 4][l] = r0 - r2;
            v[i * 4 + 1][l] = r1 + r2;
            v[i * 4 + 2][l] = r2 - r1;
            v[i * 4 + 3][l] = r1 - r3;
        }
    }
    v
}

/// `Y = A^T M A` for a block of channels; `m[4*i + j]`.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn output_tile(m: &[[f32; L]; 16]) -> [[[f32; L]; 2]; 2] {
    let mut r = [[[0.0f32; L]; 4]; 2];
    for j in 0..4 {
        for l in 0..L {
            let (m0, m1, m2, m3) = (m[j][l], m[4 + j][l], m[8 + j][l], m[12 + j][l]);
            r[0][j][l] = m0 + m1 + m2;
            r[1][j][l] = m1 - m2 - m3;
        }
    }
    let mut y = [[[0.0f32; L]; 2]; 2];
    for a in 0..2 {
        for l in 0..L {
            y[a][0][l] = r[a][0][l] + r[a][1][l] + r[a][2][l];
            y[a][1][l] = r[a][1][l] - r[a][2][l] - r[a][3][l];
        }
    }
    y
}

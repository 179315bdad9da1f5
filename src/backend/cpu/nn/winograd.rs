//! Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions.
//!
//! Output tiles of 4x4 read 6x6 input tiles: `V = B^T d B` per tile and channel, 36 GEMMs
//! `M_e = V_e . U_e` (tiles x Cin by Cin x Cout) with `U = G g G^T` precomputed (in f64,
//! rounded once), then `Y = A^T M A` (Lavin and Gray 2016, interpolation points 0, +-1,
//! +-2, infinity). 36 products per 16 outputs instead of 144: 4x fewer multiply-adds in the
//! GEMMs, at the price of transforms and a larger rounding error than the direct kernels
//! (~1e-6 of the output's scale per layer against ~1e-7; `tests/nn_layers.rs` holds it to
//! float64 references).

use gemm::Parallelism;

use super::conv::{ConvStep, DirectKind, DirectPack};
use super::direct::{self, BandRows, GEMM_SLACK_ROWS};
use super::matmul::sgemm;
use crate::backend::cpu::features::CpuFeatures;

/// Output tile side.
const T: usize = 4;
/// Input tile side (T + 2).
const N: usize = 6;
/// Transform elements per tile.
const E: usize = N * N;

/// G (6x3), in f64.
const G: [[f64; 3]; N] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// The transformed kernel for `isa`: packed for the AVX-512 micro-kernels where it has
/// AVX-512F (as 36 taps of `cin x cout`), else `U` for the portable GEMM.
pub(crate) fn transform_kernel(
    wgt: &[f32],
    cin: usize,
    cout: usize,
    isa: CpuFeatures,
) -> (Vec<f32>, Option<DirectPack>) {
    let u = transform(wgt, cin, cout);
    if isa.avx512f() && std::env::var("CDIPHASE_WINO_CRATE").is_err() {
        let zero = vec![0.0f32; cout];
        (
            Vec::new(),
            Some(direct::pack(&u, &zero, E, cin, cout, DirectKind::F32)),
        )
    } else {
        (u, None)
    }
}

/// `U[e, ci, co]` (e = 6*i + j) from the cross-correlation kernel `wgt[(dy*3+dx), ci, co]`,
/// in f64 over contiguous output channels (`G g` first, then `(G g) G^T`).
fn transform(wgt: &[f32], cin: usize, cout: usize) -> Vec<f32> {
    let mut u = vec![0.0f32; E * cin * cout];
    // gg[i][b][co] = sum_a G[i][a] g[a][b][co] for one input channel
    let mut gg = vec![0.0f64; N * 3 * cout];
    for ci in 0..cin {
        gg.fill(0.0);
        for (i, gi) in G.iter().enumerate() {
            for (a, &gia) in gi.iter().enumerate() {
                if gia == 0.0 {
                    continue;
                }
                for b in 0..3 {
                    let src = &wgt[((a * 3 + b) * cin + ci) * cout..][..cout];
                    let dst = &mut gg[(i * 3 + b) * cout..][..cout];
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d += gia * v as f64;
                    }
                }
            }
        }
        for i in 0..N {
            let (g0, rest) = gg[i * 3 * cout..(i + 1) * 3 * cout].split_at(cout);
            let (g1, g2) = rest.split_at(cout);
            for (j, gj) in G.iter().enumerate() {
                let dst = &mut u[((i * N + j) * cin + ci) * cout..][..cout];
                for (co, d) in dst.iter_mut().enumerate() {
                    *d = (g0[co] * gj[0] + g1[co] * gj[1] + g2[co] * gj[2]) as f32;
                }
            }
        }
    }
    u
}

fn tiles_w(c: &ConvStep) -> usize {
    c.wo.div_ceil(T)
}

/// Output rows per work item (a multiple of the tile side, hence even for a fused
/// pooling): the tiles of a row band fit the target working set.
pub(crate) fn tile_rows(c: &ConvStep, batch: usize, threads: usize, target: usize) -> usize {
    let per_tile_row = tiles_w(c) * (c.cin + c.cout) * E * 4;
    let mut trows = (target / per_tile_row.max(1)).clamp(1, c.ho.div_ceil(T));
    while trows > 1 && batch * c.ho.div_ceil(T * trows) < 4 * threads {
        trows = trows.div_ceil(2);
    }
    T * trows
}

pub(crate) fn scratch_len_rows(c: &ConvStep, rows: usize) -> usize {
    let tw = tiles_w(c);
    let th = rows.div_ceil(T);
    let wp = T * tw + 2;
    (T * th + 2) * wp * c.cin
        + (E * th * tw + GEMM_SLACK_ROWS) * c.cin
        + E * th * tw * c.cout
        + c.pre
            .as_ref()
            .map_or(0, |q| direct::producer_scratch_len(q, T * th + 2))
}

/// Output rows [r0, r0 + rows) of one image (r0 a multiple of the tile side). The
/// transforms are compiled for AVX-512 too and picked at run time.
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
    let th = rows.div_ceil(T);
    let nt = th * tw;
    let wp = T * tw + 2;
    let (p, rest) = sc.split_at_mut((T * th + 2) * wp * cin);
    let (v, rest) = rest.split_at_mut((E * nt + GEMM_SLACK_ROWS) * cin);
    let (m, psc) = rest.split_at_mut(E * nt * cout);
    // the P rows: from the stored input, or computed by a fused producer
    let src = BandRows::new(c, x, r0, T * th + 2, psc);
    for (jj, dst) in p.chunks_exact_mut(wp * cin).enumerate() {
        src.fill(r0 + jj, wp, dst);
    }
    // input transform, 16 channels at a time (fixed-size arrays: vectorised). The tile
    // buffer is zeroed once: lanes past a channel tail hold stale values, computed on and
    // never stored.
    let mut d = [[[0.0f32; L]; N]; N];
    for ty in 0..th {
        for tx in 0..tw {
            let t = ty * tw + tx;
            let at = |i: usize, j: usize| ((T * ty + i) * wp + T * tx + j) * cin;
            let mut c0 = 0;
            while c0 < cin {
                let cb = (cin - c0).min(L);
                for (i, di) in d.iter_mut().enumerate() {
                    for (j, dij) in di.iter_mut().enumerate() {
                        load(dij, &p[at(i, j) + c0..], cb);
                    }
                }
                let vv = input_tile(&d);
                for (e, ve) in vv.iter().enumerate() {
                    store(&mut v[(e * nt + t) * cin + c0..], ve, cb);
                }
                c0 += cb;
            }
        }
    }
    for e in 0..E {
        if let Some(pk) = &c.wino_pack {
            let (ve, me) = (&v[e * nt * cin..], &mut m[e * nt * cout..]);
            direct::gemm_packed(pk, e, E, cin, cout, ve, nt, me, cout);
            continue;
        }
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
    let mut mm = [[0.0f32; L]; E];
    for ty in 0..th {
        for tx in 0..tw {
            let t = ty * tw + tx;
            let mut c0 = 0;
            while c0 < cout {
                let cb = (cout - c0).min(L);
                for (e, me) in mm.iter_mut().enumerate() {
                    load(me, &m[(e * nt + t) * cout + c0..], cb);
                }
                let y = output_tile(&mm);
                for (a, ya) in y.iter().enumerate() {
                    let oy = T * ty + a;
                    if oy >= rows {
                        continue;
                    }
                    for (b, yab) in ya.iter().enumerate() {
                        let ox = T * tx + b;
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

/// `dst[..cb] = src[..cb]`, a fixed-size copy (no `memcpy` call) for a whole block.
#[inline(always)]
fn load(dst: &mut [f32; L], src: &[f32], cb: usize) {
    if cb == L {
        *dst = src[..L].try_into().expect("a whole block");
    } else {
        dst[..cb].copy_from_slice(&src[..cb]);
    }
}

/// `dst[..cb] = src[..cb]`, as [`load`].
#[inline(always)]
fn store(dst: &mut [f32], src: &[f32; L], cb: usize) {
    if cb == L {
        dst[..L].copy_from_slice(src);
    } else {
        dst[..cb].copy_from_slice(&src[..cb]);
    }
}

/// `B^T x` for one column of six channel blocks.
#[inline(always)]
fn bt6(x: [&[f32; L]; N], l: usize) -> [f32; N] {
    let (d0, d1, d2, d3, d4, d5) = (x[0][l], x[1][l], x[2][l], x[3][l], x[4][l], x[5][l]);
    [
        4.0 * d0 - 5.0 * d2 + d4,
        -4.0 * (d1 + d2) + d3 + d4,
        4.0 * (d1 - d2) - d3 + d4,
        2.0 * (d3 - d1) - d2 + d4,
        2.0 * (d1 - d3) - d2 + d4,
        4.0 * d1 - 5.0 * d3 + d5,
    ]
}

/// `V = B^T d B` for a block of channels; `d[i][j]` is input pixel (i, j).
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn input_tile(d: &[[[f32; L]; N]; N]) -> [[f32; L]; E] {
    // tm[i][j] = (B^T d)[i][j]
    let mut tm = [[[0.0f32; L]; N]; N];
    for j in 0..N {
        for l in 0..L {
            let col = bt6(
                [&d[0][j], &d[1][j], &d[2][j], &d[3][j], &d[4][j], &d[5][j]],
                l,
            );
            for i in 0..N {
                tm[i][j][l] = col[i];
            }
        }
    }
    let mut v = [[0.0f32; L]; E];
    for i in 0..N {
        for l in 0..L {
            let r = &tm[i];
            let row = bt6([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]], l);
            for j in 0..N {
                v[i * N + j][l] = row[j];
            }
        }
    }
    v
}

/// `A^T x` (6 -> 4).
#[inline(always)]
fn at4(m: [f32; N]) -> [f32; T] {
    let (s12, d12) = (m[1] + m[2], m[1] - m[2]);
    let (s34, d34) = (m[3] + m[4], m[3] - m[4]);
    [
        m[0] + s12 + s34,
        d12 + 2.0 * d34,
        s12 + 4.0 * s34,
        d12 + 8.0 * d34 + m[5],
    ]
}

/// `Y = A^T M A` for a block of channels; `m[6*i + j]`.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn output_tile(m: &[[f32; L]; E]) -> [[[f32; L]; T]; T] {
    // r[a][j] = (A^T M)[a][j]
    let mut r = [[[0.0f32; L]; N]; T];
    for j in 0..N {
        for l in 0..L {
            let col = at4([
                m[j][l],
                m[N + j][l],
                m[2 * N + j][l],
                m[3 * N + j][l],
                m[4 * N + j][l],
                m[5 * N + j][l],
            ]);
            for a in 0..T {
                r[a][j][l] = col[a];
            }
        }
    }
    let mut y = [[[0.0f32; L]; T]; T];
    for a in 0..T {
        for l in 0..L {
            let ra = &r[a];
            let row = at4([ra[0][l], ra[1][l], ra[2][l], ra[3][l], ra[4][l], ra[5][l]]);
            for b in 0..T {
                y[a][b][l] = row[b];
            }
        }
    }
    y
}

//! Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions (the opt-in fast mode).
//!
//! Output tiles of 2x2 read 4x4 input tiles: `V = B^T d B` per tile and channel, 16 GEMMs
//! `M_e = V_e . U_e` (tiles x Cin by Cin x Cout) with `U = G g G^T` precomputed, then
//! `Y = A^T M A`. 16 products per 4 outputs instead of 36: 2.25x fewer multiply-adds in
//! the GEMMs, at the price of transforms and a slightly larger rounding error (the bench
//! reports it against the f32 path).

use gemm::Parallelism;

use super::cpu::{sgemm, ConvStep};

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

/// Output rows [r0, r0 + rows) of one image (r0 even).
pub(crate) fn tile(
    c: &ConvStep,
    x: &[f32],
    r0: usize,
    rows: usize,
    out: &mut [f32],
    sc: &mut [f32],
) {
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
    // input transform
    for ty in 0..th {
        for tx in 0..tw {
            let t = ty * tw + tx;
            let at = |i: usize, j: usize| ((2 * ty + i) * wp2 + 2 * tx + j) * cin;
            for ch in 0..cin {
                let d = |i: usize, j: usize| p[at(i, j) + ch];
                let mut tm = [[0.0f32; 4]; 4];
                for j in 0..4 {
                    let (d0, d1, d2, d3) = (d(0, j), d(1, j), d(2, j), d(3, j));
                    tm[0][j] = d0 - d2;
                    tm[1][j] = d1 + d2;
                    tm[2][j] = d2 - d1;
                    tm[3][j] = d1 - d3;
                }
                for (i, r) in tm.iter().enumerate() {
                    let vv = [r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3]];
                    for (j, &val) in vv.iter().enumerate() {
                        v[((i * 4 + j) * nt + t) * cin + ch] = val;
                    }
                }
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
    // output transform + bias + activation
    let mut ybuf = [[0.0f32; 2]; 2];
    for ty in 0..th {
        for tx in 0..tw {
            let t = ty * tw + tx;
            for co in 0..cout {
                let mm = |i: usize, j: usize| m[((i * 4 + j) * nt + t) * cout + co];
                let mut r = [[0.0f32; 4]; 2];
                for j in 0..4 {
                    let (m0, m1, m2, m3) = (mm(0, j), mm(1, j), mm(2, j), mm(3, j));
                    r[0][j] = m0 + m1 + m2;
                    r[1][j] = m1 - m2 - m3;
                }
                for a in 0..2 {
                    ybuf[a][0] = r[a][0] + r[a][1] + r[a][2];
                    ybuf[a][1] = r[a][1] - r[a][2] - r[a][3];
                }
                for (a, yr) in ybuf.iter().enumerate() {
                    let oy = 2 * ty + a;
                    if oy >= rows {
                        continue;
                    }
                    for (b, &val) in yr.iter().enumerate() {
                        let ox = 2 * tx + b;
                        if ox >= c.wo {
                            continue;
                        }
                        out[(oy * c.wo + ox) * cout + co] = c.act.apply(val + c.bias[co]);
                    }
                }
            }
        }
    }
}

//! The network kernels (kernels/nn.cu) under the emulator against float64 references written
//! here: fresh random inputs, sizes that divide neither the 16x16 tiles nor the 8-channel
//! groups, batch 1 and several, every activation, in all three schedule orders. Outputs start
//! poisoned (NaN), so an element a kernel forgets to write fails the comparison.

#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]
mod common;

use cdiphase::backend::gpu::emu::{EmuLauncher, ScheduleOrder};
use cdiphase::backend::gpu::launcher::DevBuf;
use cdiphase::backend::gpu::nn_kernels::{self as gpu_nn, Act, ConvGeom};
use cdiphase::nn::spec::Padding;
use common::refs::rel_err as rel;
use common::Lcg;

fn act(v: f64, a: Act) -> f64 {
    match a {
        Act::Linear => v,
        Act::Relu => v.max(0.0),
        Act::Tanh => v.tanh(),
        Act::Sigmoid => 1.0 / (1.0 + (-v).exp()),
    }
}

/// A dense layer's f32 output against a float64 reference, element by element, within the
/// rounding bound of any summation order: |got - want| <= (k + 2) u (|b| + sum |x w|) plus
/// a few ulp of the activation (u = 2^-24). A norm-wise relative error is no bound here:
/// with 3 outputs of 130 random terms a cancelling sum made a correct kernel fail 1e-6.
fn check_dense(
    got: &[f32],
    x: &[f32],
    w: &[f32],
    b: &[f32],
    [m, k, n]: [usize; 3],
    a: Act,
    what: &str,
) {
    let u = 2f64.powi(-24); // f32's unit roundoff
    for i in 0..m {
        for j in 0..n {
            let (mut acc, mut scale) = b.get(j).map_or((0.0, 0.0), |&v| (v as f64, v.abs() as f64));
            for q in 0..k {
                let t = x[i * k + q] as f64 * w[q * n + j] as f64;
                acc += t;
                scale += t.abs();
            }
            let want = act(acc, a);
            let g = got[i * n + j];
            let bound = (k + 2) as f64 * u * scale + 8.0 * u * want.abs();
            assert!(
                g.is_finite() && (g as f64 - want).abs() <= bound,
                "{what} dense {m}x{k}x{n} {a:?} bias {}: [{i}, {j}] = {g}, want {want} (bound {bound:e})",
                !b.is_empty()
            );
        }
    }
}

/// 'same' stride-1 cross-correlation, Keras (k,k,cin,cout) weights: [`conv_general_ref`]
/// with the padding (k - 1) / 2 before.
fn conv_ref(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    [n, h, wd, cin]: [usize; 4],
    cout: usize,
    k: usize,
    a: Act,
) -> Vec<f64> {
    let p = (k - 1) / 2;
    let g = ConvGeom {
        kernel: [k, k],
        strides: [1, 1],
        pad: [p, p],
        out: [h, wd],
    };
    conv_general_ref(x, w, b, [n, h, wd, cin], cout, g, a)
}

/// Conv2DTranspose by its definition (scatter), Keras (k,k,cout,cin) weights, 'same':
/// [`convt_general_ref`] with output (h*s, w*s) and (k - s) / 2 cropped before.
#[allow(clippy::too_many_arguments)]
fn convt_ref(
    x: &[f32],
    wt: &[f32],
    b: &[f32],
    [n, h, wd, cin]: [usize; 4],
    cout: usize,
    k: usize,
    s: usize,
    a: Act,
) -> Vec<f64> {
    let p = k.saturating_sub(s) / 2;
    let g = ConvGeom {
        kernel: [k, k],
        strides: [s, s],
        pad: [p, p],
        out: [h * s, wd * s],
    };
    convt_general_ref(x, wt, b, [n, h, wd, cin], cout, g, a)
}

#[test]
fn conv2d_fused_bias_activation() {
    let mut rng = Lcg::new("conv2d");
    // (shape, cout, k, act)
    let cases = [
        ([2usize, 19, 13, 10], 9usize, 3usize, Act::Relu),
        ([1, 7, 21, 3], 17, 5, Act::Tanh),
        ([3, 5, 4, 1], 2, 1, Act::Sigmoid),
        ([1, 9, 10, 4], 8, 4, Act::Linear),
    ];
    for (shape, cout, k, a) in cases {
        let [n, h, w, cin] = shape;
        let x = rng.vec(n * h * w * cin);
        let wt = rng.vec(k * k * cin * cout);
        let b = rng.vec(cout);
        let want = conv_ref(&x, &wt, &b, shape, cout, k, a);
        for order in ScheduleOrder::ALL {
            let l = EmuLauncher::new(order);
            let (xb, wb, bb) = (
                DevBuf::from_slice(&l, &x).unwrap(),
                DevBuf::from_slice(&l, &wt).unwrap(),
                DevBuf::from_slice(&l, &b).unwrap(),
            );
            let yb = DevBuf::new(&l, want.len() * 4).unwrap();
            gpu_nn::conv2d(&l, &xb, &wb, Some(&bb), &yb, shape, cout, k, a).unwrap();
            let got: Vec<f32> = yb.to_vec(want.len()).unwrap();
            let e = rel(&got, &want);
            assert!(e < 1e-6, "{order:?} {shape:?} k{k} {a:?}: {e}");
        }
    }
}

#[test]
fn transposed_convolutions() {
    let mut rng = Lcg::new("convT");
    // stride 1 through the transformed weights and the plain convolution kernel
    for (shape, cout, k) in [([2usize, 11, 17, 9], 5usize, 3usize), ([1, 6, 5, 3], 10, 5)] {
        let [n, h, w, cin] = shape;
        let x = rng.vec(n * h * w * cin);
        let wt = rng.vec(k * k * cout * cin);
        let b = rng.vec(cout);
        let want = convt_ref(&x, &wt, &b, shape, cout, k, 1, Act::Relu);
        for order in ScheduleOrder::ALL {
            let l = EmuLauncher::new(order);
            let xb = DevBuf::from_slice(&l, &x).unwrap();
            let wtb = DevBuf::from_slice(&l, &wt).unwrap();
            let bb = DevBuf::from_slice(&l, &b).unwrap();
            let wc = DevBuf::new(&l, wt.len() * 4).unwrap();
            gpu_nn::conv_transpose_weights(&l, &wtb, k, cin, cout, &wc).unwrap();
            let yb = DevBuf::new(&l, want.len() * 4).unwrap();
            gpu_nn::conv2d(&l, &xb, &wc, Some(&bb), &yb, shape, cout, k, Act::Relu).unwrap();
            let got: Vec<f32> = yb.to_vec(want.len()).unwrap();
            let e = rel(&got, &want);
            assert!(
                e < 1e-6,
                "{order:?} stride 1 via weights {shape:?} k{k}: {e}"
            );
            // the direct kernel agrees at stride 1 too
            let yd = DevBuf::new(&l, want.len() * 4).unwrap();
            gpu_nn::conv_transpose2d(&l, &xb, &wtb, Some(&bb), &yd, shape, cout, k, 1, Act::Relu)
                .unwrap();
            let got: Vec<f32> = yd.to_vec(want.len()).unwrap();
            assert!(rel(&got, &want) < 1e-6, "{order:?} direct stride 1");
        }
    }
    // stride 2 (and an even kernel), direct kernel
    for (shape, cout, k, s) in [
        ([2usize, 5, 7, 3], 11usize, 3usize, 2usize),
        ([1, 4, 3, 9], 4, 4, 2),
        ([1, 3, 3, 2], 3, 2, 3),
    ] {
        let [n, h, w, cin] = shape;
        let x = rng.vec(n * h * w * cin);
        let wt = rng.vec(k * k * cout * cin);
        let b = rng.vec(cout);
        let want = convt_ref(&x, &wt, &b, shape, cout, k, s, Act::Tanh);
        for order in ScheduleOrder::ALL {
            let l = EmuLauncher::new(order);
            let xb = DevBuf::from_slice(&l, &x).unwrap();
            let wtb = DevBuf::from_slice(&l, &wt).unwrap();
            let bb = DevBuf::from_slice(&l, &b).unwrap();
            let yd = DevBuf::new(&l, want.len() * 4).unwrap();
            gpu_nn::conv_transpose2d(&l, &xb, &wtb, Some(&bb), &yd, shape, cout, k, s, Act::Tanh)
                .unwrap();
            let got: Vec<f32> = yd.to_vec(want.len()).unwrap();
            let e = rel(&got, &want);
            assert!(e < 1e-6, "{order:?} stride {s} {shape:?} k{k}: {e}");
        }
    }
    // an even kernel has no stride-1 weight transform: a clear error
    let l = EmuLauncher::new(ScheduleOrder::InOrder);
    let d = DevBuf::new(&l, 64).unwrap();
    assert!(gpu_nn::conv_transpose_weights(&l, &d, 2, 1, 1, &d).is_err());
}

#[test]
fn pooling_upsampling_dense_and_elementwise() {
    let mut rng = Lcg::new("nn-misc");
    for order in ScheduleOrder::ALL {
        let l = EmuLauncher::new(order);
        // max-pool 2x2 on odd sizes
        let shape = [2usize, 9, 7, 5];
        let [n, h, w, c] = shape;
        let x = rng.vec(n * h * w * c);
        let (ho, wo) = (h / 2, w / 2);
        let mut want = vec![0.0f64; n * ho * wo * c];
        for b in 0..n {
            for y in 0..ho {
                for xx in 0..wo {
                    for ch in 0..c {
                        let at = |dy: usize, dx: usize| {
                            x[((b * h + 2 * y + dy) * w + 2 * xx + dx) * c + ch] as f64
                        };
                        want[((b * ho + y) * wo + xx) * c + ch] =
                            at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1));
                    }
                }
            }
        }
        let xb = DevBuf::from_slice(&l, &x).unwrap();
        let yb = DevBuf::new(&l, want.len() * 4).unwrap();
        gpu_nn::maxpool2(&l, &xb, &yb, shape).unwrap();
        assert_eq!(rel(&yb.to_vec::<f32>(want.len()).unwrap(), &want), 0.0);
        // nearest upsampling by 2 and 3
        for f in [2usize, 3] {
            let mut want = vec![0.0f64; n * h * f * w * f * c];
            for b in 0..n {
                for y in 0..h * f {
                    for xx in 0..w * f {
                        for ch in 0..c {
                            want[((b * h * f + y) * w * f + xx) * c + ch] =
                                x[((b * h + y / f) * w + xx / f) * c + ch] as f64;
                        }
                    }
                }
            }
            let yb = DevBuf::new(&l, want.len() * 4).unwrap();
            gpu_nn::upsample(&l, &xb, &yb, shape, f).unwrap();
            assert_eq!(rel(&yb.to_vec::<f32>(want.len()).unwrap(), &want), 0.0);
        }
        // dense: sizes that are not multiples of the 16x16 tiles, batch 1 and several
        for (m, k, nn, a) in [
            (5usize, 37usize, 21usize, Act::Relu),
            (1, 130, 3, Act::Sigmoid),
            (17, 16, 16, Act::Linear),
        ] {
            let xm = rng.vec(m * k);
            let wm = rng.vec(k * nn);
            let bm = rng.vec(nn);
            let (xb, wb, bb) = (
                DevBuf::from_slice(&l, &xm).unwrap(),
                DevBuf::from_slice(&l, &wm).unwrap(),
                DevBuf::from_slice(&l, &bm).unwrap(),
            );
            for bias in [Some(&bb), None] {
                let a = if bias.is_some() { a } else { Act::Linear };
                let yb = DevBuf::new(&l, m * nn * 4).unwrap();
                gpu_nn::dense(&l, &xb, &wb, bias, &yb, m, k, nn, a).unwrap();
                let got = yb.to_vec::<f32>(m * nn).unwrap();
                let b = if bias.is_some() { &bm[..] } else { &[][..] };
                check_dense(&got, &xm, &wm, b, [m, k, nn], a, &format!("{order:?}"));
            }
        }
        // activations in place
        let v = rng.vec(1001);
        for a in [Act::Relu, Act::Tanh, Act::Sigmoid, Act::Linear] {
            let vb = DevBuf::from_slice(&l, &v).unwrap();
            gpu_nn::activate(&l, &vb, v.len(), a).unwrap();
            let want: Vec<f64> = v.iter().map(|&x| act(x as f64, a)).collect();
            assert!(rel(&vb.to_vec::<f32>(v.len()).unwrap(), &want) < 1e-6);
        }
        // per-pattern max normalisation and support threshold; pattern 1 is all zero
        let (pats, per) = (3usize, 1000usize);
        let mut v: Vec<f32> = (0..pats * per).map(|_| rng.next() as f32 * 5.0).collect();
        v[per..2 * per].iter_mut().for_each(|x| *x = 0.0);
        let vb = DevBuf::from_slice(&l, &v).unwrap();
        let sb = DevBuf::new(&l, pats * per).unwrap();
        gpu_nn::support_threshold(&l, &vb, pats, per, 0.3, &sb).unwrap();
        gpu_nn::normalize_max(&l, &vb, pats, per).unwrap();
        let got: Vec<f32> = vb.to_vec(pats * per).unwrap();
        let sup: Vec<u8> = sb.to_vec(pats * per).unwrap();
        for p in 0..pats {
            let blk = &v[p * per..(p + 1) * per];
            let mx = blk.iter().cloned().fold(0.0f32, f32::max) as f64;
            let want: Vec<f64> = blk
                .iter()
                .map(|&x| if mx > 0.0 { x as f64 / mx } else { x as f64 })
                .collect();
            assert!(rel(&got[p * per..(p + 1) * per], &want) < 1e-6);
            for i in 0..per {
                let t = 0.3 * mx;
                let x = blk[i] as f64;
                if mx == 0.0 {
                    assert_eq!(sup[p * per + i], 0);
                } else if (x - t).abs() > 1e-6 * mx {
                    assert_eq!(sup[p * per + i], (x >= t) as u8, "support {p} {i}");
                }
            }
        }
    }
}

/// TensorFlow's output size and leading padding along one axis, written out here
/// independently of the library: 'same' out = ceil(in/s), pad_before = pad_total / 2;
/// 'valid' out = floor((in - k)/s) + 1, no padding.
fn tf_axis(len: usize, k: usize, s: usize, same: bool) -> (usize, usize) {
    if same {
        let out = len.div_ceil(s);
        (out, ((out - 1) * s + k).saturating_sub(len) / 2)
    } else {
        ((len - k) / s + 1, 0)
    }
}

/// Conv2D by its definition (gather), Keras (kh,kw,cin,cout) weights, any geometry.
fn conv_general_ref(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    [n, h, wd, cin]: [usize; 4],
    cout: usize,
    g: ConvGeom,
    a: Act,
) -> Vec<f64> {
    let ([kh, kw], [sy, sx], [pt, pl], [ho, wo]) = (g.kernel, g.strides, g.pad, g.out);
    let mut y = vec![0.0; n * ho * wo * cout];
    for b0 in 0..n {
        for oy in 0..ho {
            for ox in 0..wo {
                for co in 0..cout {
                    let mut acc = b[co] as f64;
                    for i in 0..kh {
                        for j in 0..kw {
                            let iy = (oy * sy + i) as isize - pt as isize;
                            let ix = (ox * sx + j) as isize - pl as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                continue;
                            }
                            for ci in 0..cin {
                                acc += x[((b0 * h + iy as usize) * wd + ix as usize) * cin + ci]
                                    as f64
                                    * w[((i * kw + j) * cin + ci) * cout + co] as f64;
                            }
                        }
                    }
                    y[((b0 * ho + oy) * wo + ox) * cout + co] = act(acc, a);
                }
            }
        }
    }
    y
}

/// Conv2DTranspose by its definition (scatter), Keras (kh,kw,cout,cin) weights, any geometry.
fn convt_general_ref(
    x: &[f32],
    wt: &[f32],
    b: &[f32],
    [n, h, wd, cin]: [usize; 4],
    cout: usize,
    g: ConvGeom,
    a: Act,
) -> Vec<f64> {
    let ([kh, kw], [sy, sx], [pt, pl], [ho, wo]) = (g.kernel, g.strides, g.pad, g.out);
    let mut y = vec![0.0; n * ho * wo * cout];
    for b0 in 0..n {
        for iy in 0..h {
            for ix in 0..wd {
                for i in 0..kh {
                    for j in 0..kw {
                        let oy = (iy * sy + i) as isize - pt as isize;
                        let ox = (ix * sx + j) as isize - pl as isize;
                        if oy < 0 || ox < 0 || oy >= ho as isize || ox >= wo as isize {
                            continue;
                        }
                        for co in 0..cout {
                            let mut acc = 0.0;
                            for ci in 0..cin {
                                acc += x[((b0 * h + iy) * wd + ix) * cin + ci] as f64
                                    * wt[((i * kw + j) * cout + co) * cin + ci] as f64;
                            }
                            y[((b0 * ho + oy as usize) * wo + ox as usize) * cout + co] += acc;
                        }
                    }
                }
            }
        }
    }
    for (i, v) in y.iter_mut().enumerate() {
        *v = act(*v + b[i % cout] as f64, a);
    }
    y
}

/// The general convolution, transposed convolution and max-pooling kernels against float64
/// references at strided, 'valid', even and non-square geometries (the geometry from
/// `ConvGeom`, checked against TensorFlow's rules written out above), and the channel copy
/// (Concatenate, stand-alone Activation) leaving the other channels alone.
#[test]
fn general_convolution_pooling_and_channel_copy() {
    let mut rng = Lcg::new("nn-general");
    // (shape, cout, kernel, strides, same, act)
    let convs = [
        (
            [2usize, 23, 17, 3],
            5usize,
            [4usize, 2usize],
            [2usize, 3usize],
            true,
            Act::Relu,
        ),
        ([1, 13, 11, 9], 11, [3, 5], [1, 1], false, Act::Tanh),
        ([3, 10, 7, 2], 8, [4, 4], [1, 1], true, Act::Sigmoid),
        ([1, 9, 19, 4], 3, [3, 2], [2, 2], false, Act::Linear),
        ([2, 8, 17, 1], 17, [2, 1], [3, 4], false, Act::Relu),
        ([1, 7, 6, 5], 2, [7, 3], [3, 1], true, Act::Tanh),
    ];
    for (shape, cout, k, s, same, a) in convs {
        let [n, h, w, cin] = shape;
        let padding = if same { Padding::Same } else { Padding::Valid };
        let g = ConvGeom::conv([h, w], k, s, padding).unwrap();
        let (ho, pt) = tf_axis(h, k[0], s[0], same);
        let (wo, pl) = tf_axis(w, k[1], s[1], same);
        assert_eq!(
            (g.out, g.pad),
            ([ho, wo], [pt, pl]),
            "{shape:?} {k:?} {s:?}"
        );
        let x = rng.vec(n * h * w * cin);
        let wt = rng.vec(k[0] * k[1] * cin * cout);
        let b = rng.vec(cout);
        let want = conv_general_ref(&x, &wt, &b, shape, cout, g, a);
        let want0 = conv_general_ref(&x, &wt, &vec![0.0; cout], shape, cout, g, a);
        for order in ScheduleOrder::ALL {
            let l = EmuLauncher::new(order);
            let xb = DevBuf::from_slice(&l, &x).unwrap();
            let wb = DevBuf::from_slice(&l, &wt).unwrap();
            let bb = DevBuf::from_slice(&l, &b).unwrap();
            let yb = DevBuf::new(&l, want.len() * 4).unwrap();
            gpu_nn::conv2d_general(&l, &xb, &wb, Some(&bb), &yb, shape, cout, g, a).unwrap();
            let e = rel(&yb.to_vec::<f32>(want.len()).unwrap(), &want);
            assert!(
                e < 1e-6,
                "{order:?} conv {shape:?} {k:?} {s:?} same={same}: {e}"
            );
            let yb = DevBuf::new(&l, want.len() * 4).unwrap();
            gpu_nn::conv2d_general(&l, &xb, &wb, None, &yb, shape, cout, g, a).unwrap();
            assert!(rel(&yb.to_vec::<f32>(want.len()).unwrap(), &want0) < 1e-6);
        }
    }
    // transposed: (shape, cout, kernel, strides, same); Keras: 'same' out = in*s with
    // max(k - s, 0)/2 removed before, 'valid' out = in*s + max(k - s, 0)
    let convts = [
        (
            [2usize, 5, 7, 3],
            5usize,
            [3usize, 2usize],
            [2usize, 3usize],
            false,
        ),
        ([1, 5, 7, 3], 9, [5, 3], [3, 2], true),
        ([3, 4, 3, 2], 6, [4, 4], [1, 1], true),
        ([1, 6, 5, 4], 3, [3, 5], [1, 1], false),
        ([2, 5, 3, 10], 2, [1, 3], [3, 1], false),
        ([1, 3, 4, 7], 13, [2, 2], [2, 3], true),
    ];
    for (shape, cout, k, s, same) in convts {
        let [n, h, w, cin] = shape;
        let padding = if same { Padding::Same } else { Padding::Valid };
        let g = ConvGeom::conv_transpose([h, w], k, s, padding);
        let axis = |len: usize, k: usize, s: usize| {
            if same {
                (len * s, k.saturating_sub(s) / 2)
            } else {
                (len * s + k.saturating_sub(s), 0)
            }
        };
        let (ho, pt) = axis(h, k[0], s[0]);
        let (wo, pl) = axis(w, k[1], s[1]);
        assert_eq!(
            (g.out, g.pad),
            ([ho, wo], [pt, pl]),
            "{shape:?} {k:?} {s:?}"
        );
        let x = rng.vec(n * h * w * cin);
        let wt = rng.vec(k[0] * k[1] * cout * cin);
        let b = rng.vec(cout);
        let want = convt_general_ref(&x, &wt, &b, shape, cout, g, Act::Tanh);
        for order in ScheduleOrder::ALL {
            let l = EmuLauncher::new(order);
            let xb = DevBuf::from_slice(&l, &x).unwrap();
            let wb = DevBuf::from_slice(&l, &wt).unwrap();
            let bb = DevBuf::from_slice(&l, &b).unwrap();
            let yb = DevBuf::new(&l, want.len() * 4).unwrap();
            gpu_nn::conv_transpose2d_general(
                &l,
                &xb,
                &wb,
                Some(&bb),
                &yb,
                shape,
                cout,
                g,
                Act::Tanh,
            )
            .unwrap();
            let e = rel(&yb.to_vec::<f32>(want.len()).unwrap(), &want);
            assert!(
                e < 1e-6,
                "{order:?} convT {shape:?} {k:?} {s:?} same={same}: {e}"
            );
        }
    }
    // max-pooling: (shape, pool, strides, same); padding taps are ignored
    let pools = [
        (
            [2usize, 13, 11, 5],
            [3usize, 3usize],
            [2usize, 2usize],
            true,
        ),
        ([1, 13, 11, 3], [2, 3], [1, 2], false),
        ([3, 7, 5, 9], [2, 2], [2, 2], true),
        ([1, 17, 4, 2], [4, 2], [4, 2], true),
        ([2, 9, 8, 1], [1, 3], [3, 1], false),
    ];
    for (shape, p, s, same) in pools {
        let [n, h, w, c] = shape;
        let padding = if same { Padding::Same } else { Padding::Valid };
        let g = ConvGeom::conv([h, w], p, s, padding).unwrap();
        let (ho, pt) = tf_axis(h, p[0], s[0], same);
        let (wo, pl) = tf_axis(w, p[1], s[1], same);
        assert_eq!((g.out, g.pad), ([ho, wo], [pt, pl]));
        let x = rng.vec(n * h * w * c);
        let mut want = vec![f64::NEG_INFINITY; n * ho * wo * c];
        for b0 in 0..n {
            for oy in 0..ho {
                for ox in 0..wo {
                    for ch in 0..c {
                        let o = &mut want[((b0 * ho + oy) * wo + ox) * c + ch];
                        for i in 0..p[0] {
                            for j in 0..p[1] {
                                let iy = (oy * s[0] + i) as isize - pt as isize;
                                let ix = (ox * s[1] + j) as isize - pl as isize;
                                if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                                    let v = x[((b0 * h + iy as usize) * w + ix as usize) * c + ch];
                                    *o = o.max(v as f64);
                                }
                            }
                        }
                    }
                }
            }
        }
        for order in ScheduleOrder::ALL {
            let l = EmuLauncher::new(order);
            let xb = DevBuf::from_slice(&l, &x).unwrap();
            let yb = DevBuf::new(&l, want.len() * 4).unwrap();
            gpu_nn::maxpool(&l, &xb, &yb, shape, g).unwrap();
            let got: Vec<f32> = yb.to_vec(want.len()).unwrap();
            assert_eq!(
                rel(&got, &want),
                0.0,
                "{order:?} pool {shape:?} {p:?} {s:?}"
            );
        }
    }
    // upsampling by unequal factors
    let l = EmuLauncher::new(ScheduleOrder::Random(3));
    let shape = [2usize, 5, 3, 7];
    let [n, h, w, c] = shape;
    let x = rng.vec(n * h * w * c);
    for f in [[3usize, 2usize], [1, 4], [2, 1]] {
        let (ho, wo) = (h * f[0], w * f[1]);
        let mut want = vec![0.0f64; n * ho * wo * c];
        for b0 in 0..n {
            for y in 0..ho {
                for xx in 0..wo {
                    for ch in 0..c {
                        want[((b0 * ho + y) * wo + xx) * c + ch] =
                            x[((b0 * h + y / f[0]) * w + xx / f[1]) * c + ch] as f64;
                    }
                }
            }
        }
        let xb = DevBuf::from_slice(&l, &x).unwrap();
        let yb = DevBuf::new(&l, want.len() * 4).unwrap();
        gpu_nn::upsample2d(&l, &xb, &yb, shape, f).unwrap();
        assert_eq!(
            rel(&yb.to_vec::<f32>(want.len()).unwrap(), &want),
            0.0,
            "up {f:?}"
        );
    }
    // channel copy: three inputs of 3, 1 and 5 channels into rows of 9 (Concatenate), then
    // every activation out of place; channels outside the copied range keep their value
    let rows = 37usize;
    let cs = [3usize, 1, 5];
    let ct: usize = cs.iter().sum();
    let parts: Vec<Vec<f32>> = cs.iter().map(|&ci| rng.vec(rows * ci)).collect();
    for order in ScheduleOrder::ALL {
        let l = EmuLauncher::new(order);
        let yb = DevBuf::new(&l, rows * ct * 4).unwrap();
        let mut offset = 0;
        for (p, &ci) in parts.iter().zip(&cs) {
            let xb = DevBuf::from_slice(&l, p).unwrap();
            // one input alone leaves the rest of each row as it was (NaN)
            if offset == 0 {
                gpu_nn::copy_channels(&l, &xb, &yb, rows, ci, ct, 0, Act::Linear).unwrap();
                let got: Vec<f32> = yb.to_vec(rows * ct).unwrap();
                for r in 0..rows {
                    for c in 0..ct {
                        let v = got[r * ct + c];
                        if c < ci {
                            assert_eq!(v, p[r * ci + c]);
                        } else {
                            assert!(v.is_nan(), "row {r} channel {c} overwritten");
                        }
                    }
                }
            }
            gpu_nn::copy_channels(&l, &xb, &yb, rows, ci, ct, offset, Act::Linear).unwrap();
            offset += ci;
        }
        let got: Vec<f32> = yb.to_vec(rows * ct).unwrap();
        let mut want = Vec::new();
        for r in 0..rows {
            for (p, &ci) in parts.iter().zip(&cs) {
                want.extend(p[r * ci..(r + 1) * ci].iter().map(|&v| v as f64));
            }
        }
        assert_eq!(rel(&got, &want), 0.0, "{order:?} concatenate");
        for a in [Act::Relu, Act::Tanh, Act::Sigmoid, Act::Linear] {
            let yb2 = DevBuf::new(&l, rows * ct * 4).unwrap();
            gpu_nn::copy_channels(&l, &yb, &yb2, rows, ct, ct, 0, a).unwrap();
            let want_a: Vec<f64> = want.iter().map(|&v| act(v, a)).collect();
            assert!(
                rel(&yb2.to_vec::<f32>(rows * ct).unwrap(), &want_a) < 1e-6,
                "{a:?}"
            );
        }
        // a copy that does not fit in the rows is refused
        assert!(gpu_nn::copy_channels(&l, &yb, &yb, rows, 5, 9, 5, Act::Linear).is_err());
    }
}

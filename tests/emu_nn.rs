//! The network kernels (kernels/nn.cu) under the emulator against float64 references written
//! here: fresh random inputs, sizes that divide neither the 16x16 tiles nor the 8-channel
//! groups, batch 1 and several, every activation, in all three schedule orders. Outputs start
//! poisoned (NaN), so an element a kernel forgets to write fails the comparison.

#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]
use cdiphase::backend::emu::{EmuLauncher, ScheduleOrder};
use cdiphase::backend::gpu_common::DevBuf;
use cdiphase::backend::gpu_nn::{self, Act};

struct Lcg(u64);
impl Lcg {
    fn new(tag: &str) -> Lcg {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        eprintln!("{tag}: random seed {t}");
        Lcg(t | 1)
    }
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| (self.next() * 2.0 - 1.0) as f32).collect()
    }
}

fn rel(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

fn act(v: f64, a: Act) -> f64 {
    match a {
        Act::Linear => v,
        Act::Relu => v.max(0.0),
        Act::Tanh => v.tanh(),
        Act::Sigmoid => 1.0 / (1.0 + (-v).exp()),
    }
}

/// 'same' stride-1 cross-correlation, Keras (k,k,cin,cout) weights.
fn conv_ref(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    [n, h, wd, cin]: [usize; 4],
    cout: usize,
    k: usize,
    a: Act,
) -> Vec<f64> {
    let p = (k as isize - 1) / 2;
    let mut y = vec![0.0; n * h * wd * cout];
    for b0 in 0..n {
        for oy in 0..h {
            for ox in 0..wd {
                for co in 0..cout {
                    let mut acc = b[co] as f64;
                    for i in 0..k {
                        for j in 0..k {
                            let iy = oy as isize + i as isize - p;
                            let ix = ox as isize + j as isize - p;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                continue;
                            }
                            for ci in 0..cin {
                                acc += x[((b0 * h + iy as usize) * wd + ix as usize) * cin + ci]
                                    as f64
                                    * w[((i * k + j) * cin + ci) * cout + co] as f64;
                            }
                        }
                    }
                    y[((b0 * h + oy) * wd + ox) * cout + co] = act(acc, a);
                }
            }
        }
    }
    y
}

/// Conv2DTranspose by its definition (scatter), Keras (k,k,cout,cin) weights, 'same'.
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
    let (ho, wo) = (h * s, wd * s);
    let pad = (k.saturating_sub(s) / 2) as isize;
    let mut y = vec![0.0; n * ho * wo * cout];
    for b0 in 0..n {
        for iy in 0..h {
            for ix in 0..wd {
                for i in 0..k {
                    for j in 0..k {
                        let oy = (iy * s + i) as isize - pad;
                        let ox = (ix * s + j) as isize - pad;
                        if oy < 0 || ox < 0 || oy >= ho as isize || ox >= wo as isize {
                            continue;
                        }
                        for co in 0..cout {
                            let mut acc = 0.0;
                            for ci in 0..cin {
                                acc += x[((b0 * h + iy) * wd + ix) * cin + ci] as f64
                                    * wt[((i * k + j) * cout + co) * cin + ci] as f64;
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
            gpu_nn::conv2d(&l, xb.ptr, wb.ptr, Some(bb.ptr), yb.ptr, shape, cout, k, a).unwrap();
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
            gpu_nn::conv_transpose_weights(&l, wtb.ptr, k, cin, cout, wc.ptr).unwrap();
            let yb = DevBuf::new(&l, want.len() * 4).unwrap();
            gpu_nn::conv2d(
                &l,
                xb.ptr,
                wc.ptr,
                Some(bb.ptr),
                yb.ptr,
                shape,
                cout,
                k,
                Act::Relu,
            )
            .unwrap();
            let got: Vec<f32> = yb.to_vec(want.len()).unwrap();
            let e = rel(&got, &want);
            assert!(
                e < 1e-6,
                "{order:?} stride 1 via weights {shape:?} k{k}: {e}"
            );
            // the direct kernel agrees at stride 1 too
            let yd = DevBuf::new(&l, want.len() * 4).unwrap();
            gpu_nn::conv_transpose2d(
                &l,
                xb.ptr,
                wtb.ptr,
                Some(bb.ptr),
                yd.ptr,
                shape,
                cout,
                k,
                1,
                Act::Relu,
            )
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
            gpu_nn::conv_transpose2d(
                &l,
                xb.ptr,
                wtb.ptr,
                Some(bb.ptr),
                yd.ptr,
                shape,
                cout,
                k,
                s,
                Act::Tanh,
            )
            .unwrap();
            let got: Vec<f32> = yd.to_vec(want.len()).unwrap();
            let e = rel(&got, &want);
            assert!(e < 1e-6, "{order:?} stride {s} {shape:?} k{k}: {e}");
        }
    }
    // an even kernel has no stride-1 weight transform: a clear error
    let l = EmuLauncher::new(ScheduleOrder::InOrder);
    let d = DevBuf::new(&l, 64).unwrap();
    assert!(gpu_nn::conv_transpose_weights(&l, d.ptr, 2, 1, 1, d.ptr).is_err());
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
        gpu_nn::maxpool2(&l, xb.ptr, yb.ptr, shape).unwrap();
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
            gpu_nn::upsample(&l, xb.ptr, yb.ptr, shape, f).unwrap();
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
            let mut want = vec![0.0f64; m * nn];
            for i in 0..m {
                for j in 0..nn {
                    let mut acc = bm[j] as f64;
                    for q in 0..k {
                        acc += xm[i * k + q] as f64 * wm[q * nn + j] as f64;
                    }
                    want[i * nn + j] = act(acc, a);
                }
            }
            let (xb, wb, bb) = (
                DevBuf::from_slice(&l, &xm).unwrap(),
                DevBuf::from_slice(&l, &wm).unwrap(),
                DevBuf::from_slice(&l, &bm).unwrap(),
            );
            let yb = DevBuf::new(&l, m * nn * 4).unwrap();
            gpu_nn::dense(&l, xb.ptr, wb.ptr, Some(bb.ptr), yb.ptr, m, k, nn, a).unwrap();
            let e = rel(&yb.to_vec::<f32>(m * nn).unwrap(), &want);
            assert!(e < 1e-6, "{order:?} dense {m}x{k}x{nn}: {e}");
            // and without a bias
            let yb = DevBuf::new(&l, m * nn * 4).unwrap();
            gpu_nn::dense(&l, xb.ptr, wb.ptr, None, yb.ptr, m, k, nn, Act::Linear).unwrap();
            let mut want0 = vec![0.0f64; m * nn];
            for i in 0..m {
                for j in 0..nn {
                    want0[i * nn + j] = (0..k)
                        .map(|q| xm[i * k + q] as f64 * wm[q * nn + j] as f64)
                        .sum();
                }
            }
            assert!(rel(&yb.to_vec::<f32>(m * nn).unwrap(), &want0) < 1e-6);
        }
        // activations in place
        let v = rng.vec(1001);
        for a in [Act::Relu, Act::Tanh, Act::Sigmoid, Act::Linear] {
            let vb = DevBuf::from_slice(&l, &v).unwrap();
            gpu_nn::activate(&l, vb.ptr, v.len(), a).unwrap();
            let want: Vec<f64> = v.iter().map(|&x| act(x as f64, a)).collect();
            assert!(rel(&vb.to_vec::<f32>(v.len()).unwrap(), &want) < 1e-6);
        }
        // per-pattern max normalisation and support threshold; pattern 1 is all zero
        let (pats, per) = (3usize, 1000usize);
        let mut v: Vec<f32> = (0..pats * per).map(|_| rng.next() as f32 * 5.0).collect();
        v[per..2 * per].iter_mut().for_each(|x| *x = 0.0);
        let vb = DevBuf::from_slice(&l, &v).unwrap();
        let sb = DevBuf::new(&l, pats * per).unwrap();
        gpu_nn::support_threshold(&l, vb.ptr, pats, per, 0.3, sb.ptr).unwrap();
        gpu_nn::normalize_max(&l, vb.ptr, pats, per).unwrap();
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

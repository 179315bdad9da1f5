//! The CUDA kernels under the emulator, kernel by kernel, against float64 references written
//! here, with fresh random inputs at sizes that do not divide the block size, batch 1 and
//! several, in all three schedule orders. Also the emulator itself: a deliberately racy
//! reduction (missing barrier) is caught by the schedule orders, the correct one is not;
//! warp shuffles, votes and atomics match their definitions.

#![allow(clippy::needless_range_loop)]
mod common;

use cdiphase::array::Complex32;
use cdiphase::backend::gpu::emu::{EmuLauncher, ScheduleOrder};
use cdiphase::backend::gpu::launcher::{DevBuf, DevPtr, Dims, KArg, Launcher};
use cdiphase::backend::gpu::phasing::{blocks_per_item, gaussian_kernel, PhasingKernels};
use cdiphase::phasing::program::Constraint;
use common::refs::rel;
use common::Lcg;

fn cflat(v: &[Complex32]) -> Vec<f64> {
    v.iter().flat_map(|c| [c.re as f64, c.im as f64]).collect()
}

fn block_reduce(l: &EmuLauncher, x: &[f32], racy: bool) -> Vec<f32> {
    let n = x.len();
    let nb = n.div_ceil(256);
    let xb = DevBuf::from_slice(l, x).unwrap();
    let out = DevBuf::new(l, nb * 4).unwrap();
    // SAFETY: the test kernel reads the n values of xb and writes one value per block (nb)
    // into out, both allocations of this launcher of those sizes.
    unsafe {
        l.launch(
            "cd_test_block_reduce",
            Dims {
                grid: [nb as u32, 1, 1],
                block: [256, 1, 1],
                shmem: 0,
            },
            &[
                xb.arg(),
                KArg::I32(n as i32),
                KArg::I32(racy as i32),
                out.arg(),
            ],
        )
    }
    .unwrap();
    out.to_vec(nb).unwrap()
}

#[test]
fn schedule_orders_catch_a_missing_barrier() {
    let mut rng = Lcg::new("racy");
    let n = 3 * 256 + 77;
    let x: Vec<f32> = (0..n).map(|_| (rng.next() + 0.5) as f32).collect();
    let reference: Vec<f64> = x
        .chunks(256)
        .map(|c| c.iter().map(|&v| v as f64).sum())
        .collect();
    let mut racy_results = Vec::new();
    for order in ScheduleOrder::ALL {
        let l = EmuLauncher::new(order);
        let good = block_reduce(&l, &x, false);
        let g: Vec<f64> = good.iter().map(|&v| v as f64).collect();
        assert!(
            rel(&g, &reference) < 1e-6,
            "{order:?}: correct reduction wrong"
        );
        let bad = block_reduce(&l, &x, true);
        racy_results.push(bad.iter().map(|&v| v as f64).collect::<Vec<f64>>());
    }
    // The racy kernel is wrong in at least one order, and the orders disagree.
    let wrong = racy_results
        .iter()
        .filter(|r| rel(r, &reference) > 1e-3)
        .count();
    assert!(wrong >= 1, "no schedule order exposed the missing barrier");
    assert!(
        racy_results.windows(2).any(|w| rel(&w[0], &w[1]) > 1e-3),
        "the racy reduction gave the same result in every order"
    );
}

#[test]
fn warp_intrinsics_and_atomics() {
    let mut rng = Lcg::new("warp");
    let threads = 96;
    let blocks = 3;
    let n = threads * blocks;
    let x: Vec<f32> = (0..n).map(|_| (rng.next() * 200.0 - 20.0) as f32).collect();
    for order in ScheduleOrder::ALL {
        let l = EmuLauncher::new(order);
        let xb = DevBuf::from_slice(&l, &x).unwrap();
        let out = DevBuf::new(&l, n * 5 * 4).unwrap();
        // SAFETY: one thread per value of xb (n of them) reads its value and writes 5 values
        // into out (n * 5 floats), both allocations of this launcher.
        unsafe {
            l.launch(
                "cd_test_warp",
                Dims {
                    grid: [blocks as u32, 1, 1],
                    block: [threads as u32, 1, 1],
                    shmem: 0,
                },
                &[xb.arg(), out.arg()],
            )
        }
        .unwrap();
        let o: Vec<f32> = out.to_vec(n * 5).unwrap();
        for i in 0..n {
            let lane = i % 32;
            let w0 = i - lane;
            assert_eq!(o[5 * i], x[w0 + (lane * 7 + 3) % 32], "shfl {order:?} {i}");
            let down = if lane + 5 < 32 { x[i + 5] } else { x[i] };
            assert_eq!(o[5 * i + 1], down, "shfl_down {order:?} {i}");
            assert_eq!(o[5 * i + 2], x[w0 + (lane ^ 9)], "shfl_xor {order:?} {i}");
            let ballot: u32 = (0..32)
                .filter(|&j| x[w0 + j] > 0.0)
                .map(|j| 1u32 << j)
                .sum();
            assert_eq!(o[5 * i + 3].to_bits(), ballot, "ballot {order:?} {i}");
            let any = (0..32).any(|j| x[w0 + j] > 1000.0) as i32;
            assert_eq!(o[5 * i + 4], (any + 2) as f32, "any/all {order:?} {i}");
        }
        // atomics across blocks (n not a multiple of the block size)
        let m: i32 = 1000;
        let y: Vec<f32> = (0..m as usize).map(|_| rng.next() as f32).collect();
        let yb = DevBuf::from_slice(&l, &y).unwrap();
        let sum = DevBuf::from_slice(&l, &[0.0f32]).unwrap();
        let cnt = DevBuf::from_slice(&l, &[0i32]).unwrap();
        let mx = DevBuf::from_slice(&l, &[i32::MIN]).unwrap();
        // SAFETY: the kernel reads the m values of yb and updates the single values of sum,
        // cnt and mx, all allocations of this launcher of those sizes.
        unsafe {
            l.launch(
                "cd_test_atomics",
                Dims {
                    grid: [4, 1, 1],
                    block: [256, 1, 1],
                    shmem: 0,
                },
                &[yb.arg(), KArg::I32(m), sum.arg(), cnt.arg(), mx.arg()],
            )
        }
        .unwrap();
        let s: Vec<f32> = sum.to_vec(1).unwrap();
        let c: Vec<i32> = cnt.to_vec(1).unwrap();
        let mxv: Vec<i32> = mx.to_vec(1).unwrap();
        let rs: f64 = y.iter().map(|&v| v as f64).sum();
        assert!((s[0] as f64 - rs).abs() < 1e-4 * rs);
        assert_eq!(c[0], m);
        assert_eq!(
            mxv[0],
            y.iter().map(|&v| (v * 1000.0) as i32).max().unwrap()
        );
    }
}

#[test]
fn emulator_reports_bad_launches() {
    let l = EmuLauncher::new(ScheduleOrder::InOrder);
    let out = DevBuf::new(&l, 16).unwrap();
    let dims = Dims {
        grid: [1, 1, 1],
        block: [2048, 1, 1],
        shmem: 0,
    };
    // SAFETY: refused before any kernel runs (a block of 2048 threads); the same holds for
    // the unknown kernel and the address outside every allocation below.
    let e = unsafe { l.launch("cd_test_warp", dims, &[out.arg(), out.arg()]) }.unwrap_err();
    assert!(e.to_string().contains("invalid launch"), "{e}");
    // SAFETY: see above.
    let e = unsafe {
        l.launch(
            "cd_no_such_kernel",
            Dims {
                block: [32, 1, 1],
                ..dims
            },
            &[],
        )
    }
    .unwrap_err();
    assert!(e.to_string().contains("no kernel"), "{e}");
    // SAFETY: see above.
    let e = unsafe {
        l.launch(
            "cd_test_warp",
            Dims {
                block: [32, 1, 1],
                ..dims
            },
            &[KArg::Ptr(DevPtr(8)), out.arg()],
        )
    }
    .unwrap_err();
    assert!(e.to_string().contains("allocation"), "{e}");
}

/// Random complex data, amplitudes with ~15% unmeasured pixels (-1), supports.
struct Case {
    h: usize,
    w: usize,
    patterns: usize,
    starts: usize,
}

const CASES: [Case; 3] = [
    Case {
        h: 1,
        w: 1,
        patterns: 1,
        starts: 1,
    },
    Case {
        h: 29,
        w: 37,
        patterns: 3,
        starts: 2,
    },
    // more pixels than 64 blocks x 256 threads: the grid-stride path
    Case {
        h: 131,
        w: 127,
        patterns: 1,
        starts: 2,
    },
];

#[test]
fn modulus_projection_and_fourier_error() {
    let mut rng = Lcg::new("modulus");
    for c in &CASES {
        let l = c.h * c.w;
        let items = c.patterns * c.starts;
        let f: Vec<Complex32> = (0..items * l)
            .map(|_| Complex32::new((rng.next() - 0.5) as f32, (rng.next() - 0.5) as f32))
            .collect();
        let amp: Vec<f32> = (0..c.patterns * l)
            .map(|_| {
                if rng.next() < 0.15 {
                    -1.0
                } else {
                    rng.next() as f32
                }
            })
            .collect();
        // float64 reference
        let mut rf = Vec::with_capacity(items * l * 2);
        let mut rerr = vec![0.0f64; items];
        for it in 0..items {
            for i in 0..l {
                let v = f[it * l + i];
                let (re, im) = (v.re as f64, v.im as f64);
                let a = amp[(it / c.starts) * l + i] as f64;
                if a >= 0.0 {
                    let m = (re * re + im * im).sqrt();
                    rerr[it] += (m - a) * (m - a);
                    rf.push(re * a / m);
                    rf.push(im * a / m);
                } else {
                    rf.push(re);
                    rf.push(im);
                }
            }
        }
        for order in ScheduleOrder::ALL {
            let lch = EmuLauncher::new(order);
            let k = PhasingKernels::new(&lch, c.h, c.w, items, c.starts);
            let fb = DevBuf::from_slice(&lch, &f).unwrap();
            let ab = DevBuf::from_slice(&lch, &amp).unwrap();
            let pf = DevBuf::new(&lch, items * k.bpi * 4).unwrap();
            for project in [false, true] {
                fb.upload(&f).unwrap();
                k.modulus(&fb, &ab, project, &pf).unwrap();
                let got: Vec<Complex32> = fb.to_vec(items * l).unwrap();
                let want = if project { rf.clone() } else { cflat(&f) };
                let e = rel(&cflat(&got), &want);
                assert!(e < 2e-7, "{order:?} {}x{} project={project}: {e}", c.h, c.w);
                let parts: Vec<f32> = pf.to_vec(items * k.bpi).unwrap();
                let sums: Vec<f64> = parts
                    .chunks(k.bpi)
                    .map(|p| p.iter().map(|&v| v as f64).sum())
                    .collect();
                let e = rel(&sums, &rerr);
                assert!(e < 1e-5, "{order:?} error sums: {e}");
            }
        }
    }
}

#[test]
fn support_update_rules_and_real_space_error() {
    let mut rng = Lcg::new("update");
    let rules = [(0.0f32, 0.0f32), (1.0, -0.9), (0.75, 1.0 - 1.5)];
    for c in &CASES {
        let l = c.h * c.w;
        let items = c.patterns * c.starts;
        let rc = |rng: &mut Lcg| -> Vec<Complex32> {
            (0..items * l)
                .map(|_| Complex32::new((rng.next() - 0.5) as f32, (rng.next() - 0.5) as f32))
                .collect()
        };
        let g = rc(&mut rng);
        let gp = rc(&mut rng);
        let sup: Vec<u8> = (0..items * l).map(|_| (rng.next() < 0.4) as u8).collect();
        let scale = 1.0 / l as f32;
        for (ci, constraint) in [Constraint::None, Constraint::Real, Constraint::Positive]
            .into_iter()
            .enumerate()
        {
            for &(a, b) in &rules {
                let mut want = Vec::with_capacity(items * l * 2);
                let mut out = vec![0.0f64; items];
                let mut tot = vec![0.0f64; items];
                for i in 0..items * l {
                    let (pr, pi) = (
                        gp[i].re as f64 * scale as f64,
                        gp[i].im as f64 * scale as f64,
                    );
                    let inside = sup[i] != 0;
                    let e = pr * pr + pi * pi;
                    if !inside {
                        out[i / l] += e;
                    }
                    tot[i / l] += e;
                    let (mre, mim) = match ci {
                        0 => (inside, inside),
                        1 => (inside, false),
                        _ => (inside && pr >= 0.0, false),
                    };
                    let (gr, gi) = (g[i].re as f64, g[i].im as f64);
                    want.push(if mre {
                        pr
                    } else {
                        a as f64 * gr + b as f64 * pr
                    });
                    want.push(if mim {
                        pi
                    } else {
                        a as f64 * gi + b as f64 * pi
                    });
                }
                for order in ScheduleOrder::ALL {
                    let lch = EmuLauncher::new(order);
                    let k = PhasingKernels::new(&lch, c.h, c.w, items, c.starts);
                    let gb = DevBuf::from_slice(&lch, &g).unwrap();
                    let pb = DevBuf::from_slice(&lch, &gp).unwrap();
                    let sb = DevBuf::from_slice(&lch, &sup).unwrap();
                    let pr = DevBuf::new(&lch, items * k.bpi * 8).unwrap();
                    k.update(&gb, &pb, &sb, a, b, constraint, scale, &pr)
                        .unwrap();
                    let got: Vec<Complex32> = gb.to_vec(items * l).unwrap();
                    let e = rel(&cflat(&got), &want);
                    assert!(e < 3e-7, "{order:?} {constraint:?} ({a},{b}): {e}");
                    let parts: Vec<f32> = pr.to_vec(items * k.bpi * 2).unwrap();
                    let mut go = vec![0.0f64; items];
                    let mut gt = vec![0.0f64; items];
                    for (j, p) in parts.chunks(2).enumerate() {
                        go[j / k.bpi] += p[0] as f64;
                        gt[j / k.bpi] += p[1] as f64;
                    }
                    assert!(rel(&go, &out) < 1e-5 && rel(&gt, &tot) < 1e-5);
                    // second stage: histories entry 1 of 3
                    let sa: Vec<f64> = (0..c.patterns).map(|_| 0.5 + rng.next()).collect();
                    let pf: Vec<f32> = (0..items * k.bpi).map(|_| rng.next() as f32).collect();
                    let pfb = DevBuf::from_slice(&lch, &pf).unwrap();
                    let sab = DevBuf::from_slice(&lch, &sa).unwrap();
                    let hf = DevBuf::new(&lch, items * 3 * 4).unwrap();
                    let hr = DevBuf::new(&lch, items * 3 * 4).unwrap();
                    k.record(&pfb, Some(&pr), &sab, 3, 1, &hf, Some(&hr))
                        .unwrap();
                    let hfv: Vec<f32> = hf.to_vec(items * 3).unwrap();
                    let hrv: Vec<f32> = hr.to_vec(items * 3).unwrap();
                    for it in 0..items {
                        let sf: f64 = pf[it * k.bpi..(it + 1) * k.bpi]
                            .iter()
                            .map(|&v| v as f64)
                            .sum();
                        let wf = (sf / sa[it / c.starts]).sqrt();
                        assert!((hfv[it * 3 + 1] as f64 - wf).abs() < 1e-5 * wf.max(1e-3));
                        let wr = (out[it] / tot[it]).sqrt();
                        assert!((hrv[it * 3 + 1] as f64 - wr).abs() < 1e-5 * wr.max(1e-3));
                        // entries the kernel was not asked to write stay poisoned
                        assert!(hfv[it * 3].is_nan() && hrv[it * 3 + 2].is_nan());
                    }
                }
            }
        }
    }
}

#[test]
fn shrinkwrap_passes() {
    let mut rng = Lcg::new("shrinkwrap");
    // (h, w, sigma): a radius wider than the image wraps several times
    let shapes = [
        (13usize, 7usize, 3.0f32),
        (29, 37, 1.0),
        (40, 33, 0.0),
        (5, 130, 1.7),
    ];
    for &(h, w, sigma) in &shapes {
        let (patterns, starts) = (2, 2);
        let items = patterns * starts;
        let l = h * w;
        let mut g: Vec<Complex32> = (0..items * l)
            .map(|_| Complex32::new((rng.next() - 0.5) as f32, (rng.next() - 0.5) as f32))
            .collect();
        // item 3 is zero: its support must stay as it was
        for v in &mut g[3 * l..] {
            *v = Complex32::new(0.0, 0.0);
        }
        let sup0: Vec<u8> = (0..items * l).map(|_| (rng.next() < 0.5) as u8).collect();
        let kern = gaussian_kernel(sigma);
        let r = (kern.len() / 2) as isize;
        let threshold = 0.3f32;
        // float64 reference of the blurred modulus
        let mut want_mag = vec![0.0f64; items * l];
        for it in 0..items {
            let m: Vec<f64> = g[it * l..(it + 1) * l]
                .iter()
                .map(|c| (c.re as f64).hypot(c.im as f64))
                .collect();
            let mut t = vec![0.0f64; l];
            for y in 0..h {
                for x in 0..w {
                    t[y * w + x] = (0..kern.len())
                        .map(|j| {
                            let xx = (x as isize + j as isize - r).rem_euclid(w as isize) as usize;
                            kern[j] as f64 * m[y * w + xx]
                        })
                        .sum();
                }
            }
            for y in 0..h {
                for x in 0..w {
                    want_mag[it * l + y * w + x] = (0..kern.len())
                        .map(|j| {
                            let yy = (y as isize + j as isize - r).rem_euclid(h as isize) as usize;
                            kern[j] as f64 * t[yy * w + x]
                        })
                        .sum();
                }
            }
        }
        for order in ScheduleOrder::ALL {
            let lch = EmuLauncher::new(order);
            let k = PhasingKernels::new(&lch, h, w, items, starts);
            let gb = DevBuf::from_slice(&lch, &g).unwrap();
            let sb = DevBuf::from_slice(&lch, &sup0).unwrap();
            let kb = DevBuf::from_slice(&lch, &kern).unwrap();
            // the row blur, then the column blur (mag) in the second half
            let scratch = DevBuf::new(&lch, 2 * items * l * 4).unwrap();
            let pmax = DevBuf::new(&lch, items * blocks_per_item(l) * 4).unwrap();
            k.shrinkwrap(&gb, &sb, &kb, kern.len(), threshold, &scratch, &pmax)
                .unwrap();
            let sc: Vec<f32> = scratch.to_vec(2 * items * l).unwrap();
            let gm = &sc[items * l..];
            let gmf: Vec<f64> = gm.iter().map(|&v| v as f64).collect();
            let e = rel(&gmf[..3 * l], &want_mag[..3 * l]);
            assert!(e < 1e-6, "{order:?} {h}x{w} sigma {sigma}: blur {e}");
            let gs: Vec<u8> = sb.to_vec(items * l).unwrap();
            for it in 0..items {
                let m = &want_mag[it * l..(it + 1) * l];
                let mx = m.iter().cloned().fold(0.0, f64::max);
                for i in 0..l {
                    let got = gs[it * l + i];
                    if mx == 0.0 {
                        assert_eq!(got, sup0[it * l + i], "zero object changed its support");
                        continue;
                    }
                    let t = threshold as f64 * mx;
                    if (m[i] - t).abs() > 1e-5 * mx {
                        assert_eq!(got, (m[i] >= t) as u8, "{order:?} item {it} px {i}");
                    }
                }
            }
        }
    }
}

#[test]
fn emulated_fft_matches_a_dft() {
    let mut rng = Lcg::new("fft");
    let (h, w, batch) = (7, 5, 3);
    let l = h * w;
    let x: Vec<Complex32> = (0..batch * l)
        .map(|_| Complex32::new(rng.next() as f32, rng.next() as f32 - 0.5))
        .collect();
    let lch = EmuLauncher::new(ScheduleOrder::InOrder);
    let a = DevBuf::from_slice(&lch, &x).unwrap();
    let b = DevBuf::new(&lch, batch * l * 8).unwrap();
    let plan = lch.fft_plan(h, w, batch).unwrap();
    for forward in [true, false] {
        lch.fft(plan, a.ptr(), b.ptr(), forward).unwrap();
        let got: Vec<Complex32> = b.to_vec(batch * l).unwrap();
        let sign = if forward { -1.0 } else { 1.0 };
        let mut want = Vec::new();
        for it in 0..batch {
            for ky in 0..h {
                for kx in 0..w {
                    let mut acc = num_complex::Complex64::new(0.0, 0.0);
                    for y in 0..h {
                        for xx in 0..w {
                            let v = x[it * l + y * w + xx];
                            let ph = sign
                                * std::f64::consts::TAU
                                * ((ky * y) as f64 / h as f64 + (kx * xx) as f64 / w as f64);
                            acc += num_complex::Complex64::new(v.re as f64, v.im as f64)
                                * num_complex::Complex64::from_polar(1.0, ph);
                        }
                    }
                    want.push(acc.re);
                    want.push(acc.im);
                }
            }
        }
        assert!(rel(&cflat(&got), &want) < 1e-6);
    }
    lch.fft_destroy(plan);
}

/// The CUDA backend's NVRTC path (cudarc, embedded sources with common.cuh expanded, on-disk
/// PTX cache) compiles both kernel families for sm_70/80/90. Needs libnvrtc only: CI puts the
/// `nvidia-cuda-nvrtc-cu12` wheel's lib/ on LD_LIBRARY_PATH. Without libnvrtc it checks the
/// typed error instead.
#[test]
fn cuda_backend_nvrtc_compiles_every_family() {
    use cdiphase::backend::gpu::cuda::compile_family_ptx;
    let dir = tempfile::tempdir().unwrap();
    // No other test of this binary reads XDG_CACHE_HOME.
    std::env::set_var("XDG_CACHE_HOME", dir.path());
    if !cdiphase::backend::gpu::cuda::nvrtc_present() {
        // scripts/test.sh (the README's test command, and CI) provides libnvrtc: there a
        // missing one is a failure, never a silent skip.
        assert!(
            std::env::var_os("CDIPHASE_REQUIRE_NVRTC").is_none(),
            "CDIPHASE_REQUIRE_NVRTC is set but libnvrtc was not found (LD_LIBRARY_PATH)"
        );
        let e = compile_family_ptx("phasing", (8, 0)).unwrap_err();
        assert!(e.to_string().contains("NVRTC"), "{e}");
        eprintln!("libnvrtc not found: NVRTC compile not exercised (set LD_LIBRARY_PATH)");
        return;
    }
    for cc in [(7, 0), (8, 0), (9, 0)] {
        for (family, kernels) in [
            (
                "phasing",
                &["cd_modulus_project", "cd_support_update", "cd_sw_threshold"][..],
            ),
            (
                "nn",
                &[
                    "cd_nn_conv2d",
                    "cd_nn_conv2d_general",
                    "cd_nn_conv_transpose2d",
                    "cd_nn_maxpool",
                    "cd_nn_copy_channels",
                    "cd_nn_dense",
                    "cd_nn_support_threshold",
                ][..],
            ),
        ] {
            let ptx = compile_family_ptx(family, cc).unwrap();
            assert!(ptx.contains(&format!(".target sm_{}{}", cc.0, cc.1)));
            for k in kernels {
                assert!(
                    ptx.contains(&format!(".entry {k}(")),
                    "{family}: {k} missing"
                );
            }
            // second call: from the cache, identical
            assert_eq!(compile_family_ptx(family, cc).unwrap(), ptx);
        }
    }
    let cached = std::fs::read_dir(dir.path().join("cdiphase/ptx"))
        .unwrap()
        .count();
    assert_eq!(cached, 6);
}

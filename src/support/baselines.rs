//! Reference supports for judging a network (issue 13): what an estimate that ignores its
//! input achieves, and what a perfect network at a given resolution could reach.
//!
//! - [`mean_image`]: the training set's mean target, the mean over its ground-truth
//!   densities each divided by its own maximum (the network's target |density| / max). A
//!   network trained with MSE that learnt nothing from its input outputs this image.
//! - [`oracle`]: the true density blurred by a Gaussian of `sigma` pixels (the network's
//!   resolution) and, by default, averaged with its centrosymmetric twin: a diffraction
//!   pattern cannot tell a density from its twin, so a network trained with plain MSE can
//!   at best output their average. It shows the ceiling of any such network.
//!
//! Both are thresholded like a network output (> T x the image's maximum, T = 0.1).
//!
//! - [`circle_of_extent`]: the paper's circular starting support for phasing, "a circular
//!   support of maximal diameter equivalent to the maximum elongation of the protein": a
//!   disc centred at (H/2, W/2) whose diameter is the ideal support's maximum extent. It
//!   uses the particle's size (prior knowledge), not its shape or position.

use std::path::Path;

use crate::array::Stack;
use crate::{Error, Result};

/// The densities of a simulation (`cdiphase simulate` output).
pub const DENSITY_ENTRY: &str = "entry_1/sample_1/density";

/// The mean over the densities of `from` (`entry_1/sample_1/density`, (N,H,W) or one
/// (H,W) image; HDF5 or `.npy`), each taken as |density| / max(|density|) (images whose
/// maximum is 0 are skipped), read `block` images at a time without loading the file
/// (row reads: memory flat in N). The sum runs over the images in file order, one image at
/// a time, in float64: the result is the same, bit for bit, for every `block`. Returns the
/// (H, W) image, centred like the densities, and the number of images averaged.
pub fn mean_image(from: &Path, block: usize) -> Result<(Stack<f32>, usize)> {
    if block == 0 {
        return Err(Error::Config("--block must be at least 1".into()));
    }
    let dens = crate::io::blocks::PatternBlocks::open_unmasked(from, DENSITY_ENTRY).map_err(
        |e| match e {
            Error::MissingEntry { path, entry, .. } => Error::MissingEntry {
                path,
                entry,
                hint: "the mean image needs the ground truth of `cdiphase simulate`".into(),
            },
            e => e,
        },
    )?;
    let (n, h, w) = (dens.n, dens.h, dens.w);
    let hw = h * w;
    let what = || format!("{}: dataset '{}'", from.display(), dens.entry);
    // the float64 sum, and the image returned (a hostile header may declare any size)
    crate::limits::check_memory(
        &format!(
            "{} of shape {:?}, the mean image",
            what(),
            [dens.n, dens.h, dens.w]
        ),
        (hw as u128) * 12,
    )?;
    let mut acc = vec![0f64; hw];
    let mut used = 0usize;
    let mut first = 0usize;
    while first < n {
        let last = (first + block).min(n);
        let win = dens.read(first..last)?;
        for (k, img) in win.intensities.data.chunks(hw).enumerate() {
            if let Some(i) = img.iter().position(|v| !v.is_finite()) {
                return Err(Error::invalid(
                    what(),
                    format!("image {} value {i} is not finite", first + k),
                ));
            }
            let max = img.iter().fold(0f32, |m, v| m.max(v.abs()));
            if max <= 0.0 {
                continue;
            }
            for (a, &v) in acc.iter_mut().zip(img) {
                *a += (v.abs() / max) as f64;
            }
            used += 1;
        }
        first = last;
    }
    if used == 0 {
        return Err(Error::invalid(
            what(),
            "no image with a positive maximum to average",
        ));
    }
    let data = acc.iter().map(|&a| (a / used as f64) as f32).collect();
    Ok((Stack::from_vec(1, h, w, data)?, used))
}

/// Separable Gaussian blur of an `h x w` image with standard deviation `sigma` pixels,
/// truncated at 4 sigma, zero outside the image (no wrap-around). `sigma = 0` copies.
pub fn gaussian_blur(img: &[f32], h: usize, w: usize, sigma: f64) -> Vec<f64> {
    let src: Vec<f64> = img.iter().map(|&v| v as f64).collect();
    if sigma <= 0.0 {
        return src;
    }
    let r = (4.0 * sigma).ceil() as i64;
    let k: Vec<f64> = (-r..=r)
        .map(|d| (-(d * d) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let ks: f64 = k.iter().sum();
    let k: Vec<f64> = k.iter().map(|v| v / ks).collect();
    let mut tmp = vec![0.0f64; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0.0;
            for (t, kv) in k.iter().enumerate() {
                let xx = x as i64 + t as i64 - r;
                if (0..w as i64).contains(&xx) {
                    s += kv * src[y * w + xx as usize];
                }
            }
            tmp[y * w + x] = s;
        }
    }
    let mut out = vec![0.0f64; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0.0;
            for (t, kv) in k.iter().enumerate() {
                let yy = y as i64 + t as i64 - r;
                if (0..h as i64).contains(&yy) {
                    s += kv * tmp[yy as usize * w + x];
                }
            }
            out[y * w + x] = s;
        }
    }
    out
}

/// The oracle's blur `sigma` (pixels) must lie in [0, 64].
pub fn check_sigma(sigma: f64) -> Result<()> {
    if !(sigma >= 0.0 && sigma.is_finite() && sigma <= 64.0) {
        return Err(Error::Config(format!(
            "oracle sigma {sigma} px must be in [0, 64]"
        )));
    }
    Ok(())
}

/// The circle's `margin` (pixels) must lie in [0, 64].
pub fn check_margin(margin: f64) -> Result<()> {
    if !(margin.is_finite() && (0.0..=64.0).contains(&margin)) {
        return Err(Error::Config(format!(
            "circle margin {margin} px must be in [0, 64]"
        )));
    }
    Ok(())
}

/// The oracle images of the densities (N,H,W), centred: |density| blurred by `sigma` px,
/// averaged with its centrosymmetric twin (index (H - y) % H, (W - x) % W, the flip about
/// the centre (H/2, W/2)) when `twin_average`, divided by its maximum.
pub fn oracle(density: &Stack<f32>, sigma: f64, twin_average: bool) -> Result<Stack<f32>> {
    check_sigma(sigma)?;
    let (n, h, w) = (density.n, density.h, density.w);
    let mut out = Stack::filled(n, h, w, 0f32);
    for p in 0..n {
        let abs: Vec<f32> = density.image(p).iter().map(|v| v.abs()).collect();
        let b = gaussian_blur(&abs, h, w, sigma);
        let img: Vec<f64> = if twin_average {
            let t = crate::eval::align::flip(&b, h, w);
            b.iter().zip(&t).map(|(a, c)| 0.5 * (a + c)).collect()
        } else {
            b
        };
        let max = img.iter().fold(0f64, |m, &v| m.max(v));
        let o = out.image_mut(p);
        if max > 0.0 {
            for (d, v) in o.iter_mut().zip(&img) {
                *d = (v / max) as f32;
            }
        }
    }
    Ok(out)
}

/// The maximum extent of a support, in pixels: the largest distance between two support
/// pixel centres plus one (a pixel's own width), 0 for an empty support.
pub fn max_extent(support: &[u8], h: usize, w: usize) -> f64 {
    // the farthest pair lies on the boundary: pixels with a 4-neighbour outside the support
    let on = |y: i64, x: i64| {
        y >= 0
            && x >= 0
            && y < h as i64
            && x < w as i64
            && support[y as usize * w + x as usize] != 0
    };
    let mut edge: Vec<(i64, i64)> = Vec::new();
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            if on(y, x) && !(on(y - 1, x) && on(y + 1, x) && on(y, x - 1) && on(y, x + 1)) {
                edge.push((y, x));
            }
        }
    }
    if edge.is_empty() {
        return 0.0;
    }
    let mut d2 = 0i64;
    for (i, &(ya, xa)) in edge.iter().enumerate() {
        for &(yb, xb) in &edge[i + 1..] {
            d2 = d2.max((ya - yb).pow(2) + (xa - xb).pow(2));
        }
    }
    (d2 as f64).sqrt() + 1.0
}

/// Discs centred at (H/2, W/2), one per support of `ideal` (N,H,W): the pixels whose centre
/// lies within `extent / 2 + margin` of the centre, `extent` = [`max_extent`] of that
/// support. Returns the discs and the radii in pixels. An empty ideal support is an error
/// naming the pattern.
pub fn circle_of_extent(ideal: &Stack<u8>, margin: f64) -> Result<(Stack<u8>, Vec<f64>)> {
    check_margin(margin)?;
    let (n, h, w) = (ideal.n, ideal.h, ideal.w);
    let mut out = Stack::filled(n, h, w, 0u8);
    let mut radii = Vec::with_capacity(n);
    let (cy, cx) = ((h / 2) as f64, (w / 2) as f64);
    for p in 0..n {
        let e = max_extent(ideal.image(p), h, w);
        if e == 0.0 {
            return Err(Error::invalid(
                format!("pattern {p}"),
                "the ideal support is empty: no extent to make a circle of",
            ));
        }
        let r = e / 2.0 + margin;
        for (i, o) in out.image_mut(p).iter_mut().enumerate() {
            let (y, x) = ((i / w) as f64, (i % w) as f64);
            *o = ((y - cy).powi(2) + (x - cx).powi(2) <= r * r) as u8;
        }
        radii.push(r);
    }
    Ok((out, radii))
}

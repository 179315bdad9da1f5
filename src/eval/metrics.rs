//! Figures of merit: support false positives / negatives after alignment, normalised
//! density error after alignment, the PRTF over aligned reconstructions, averaging.

use num_complex::Complex64;

use super::align::{align, align_support, fft2, AlignOptions, Alignment, SupportAlignment};
use crate::array::signed;

/// A support compared with the ideal support after alignment (the paper's figure 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SupportErrors {
    /// Pixels in the estimate but not in the ideal support (too loose).
    pub false_positives: usize,
    /// Pixels in the ideal support but not in the estimate (too tight: phasing fails).
    pub false_negatives: usize,
    /// Pixels of the estimate.
    pub estimate_size: usize,
    /// Pixels of the ideal support.
    pub ideal_size: usize,
    /// The alignment used.
    pub alignment: SupportAlignment,
}

/// False positives and negatives of `estimate` against `ideal` after the alignment of
/// largest overlap (integer translation and, with `allow_twin`, the flip).
pub fn support_errors(
    ideal: &[u8],
    estimate: &[u8],
    h: usize,
    w: usize,
    allow_twin: bool,
) -> SupportErrors {
    let (aligned, al) = align_support(ideal, estimate, h, w, allow_twin);
    let mut fp = 0;
    let mut fn_ = 0;
    for (&e, &i) in aligned.iter().zip(ideal) {
        match (e != 0, i != 0) {
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            _ => {}
        }
    }
    SupportErrors {
        false_positives: fp,
        false_negatives: fn_,
        estimate_size: estimate.iter().filter(|&&v| v != 0).count(),
        ideal_size: ideal.iter().filter(|&&v| v != 0).count(),
        alignment: al,
    }
}

/// Normalised error of a reconstruction against the true density after alignment
/// (sub-pixel translation, twin, and a complex scale: reconstructions live on the scale of
/// the data, not in electrons): min over t, twin, c of ||rho - c T x|| / ||rho||.
pub fn density_error(
    truth: &[Complex64],
    recon: &[Complex64],
    h: usize,
    w: usize,
    upsample: usize,
) -> (Vec<Complex64>, Alignment) {
    align(
        truth,
        recon,
        h,
        w,
        AlignOptions {
            twin: true,
            upsample,
            fit_scale: true,
        },
    )
}

/// Radial frequency bins of an h x w spectrum (native order): bin b holds the frequencies
/// with round(|q| * max(h, w)) == b, |q| = sqrt((ky/h)^2 + (kx/w)^2) in cycles per pixel.
/// Frequencies beyond 0.5 cycles/pixel (the corners) get `usize::MAX`. Returns the bin of
/// every pixel and the number of bins.
pub fn radial_bins(h: usize, w: usize) -> (Vec<usize>, usize) {
    let m = h.max(w) as f64;
    let nb = h.max(w) / 2 + 1;
    let mut bins = Vec::with_capacity(h * w);
    for y in 0..h {
        let fy = signed(y, h) as f64 / h as f64;
        for x in 0..w {
            let fx = signed(x, w) as f64 / w as f64;
            let q = (fy * fy + fx * fx).sqrt();
            let b = (q * m).round() as usize;
            bins.push(if q <= 0.5 + 1e-12 && b < nb {
                b
            } else {
                usize::MAX
            });
        }
    }
    (bins, nb)
}

/// A radially averaged curve over spatial frequency.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RadialCurve {
    /// Bin centres, cycles per pixel (b / max(H, W)).
    pub frequency: Vec<f64>,
    /// The curve; NaN in bins without pixels.
    pub value: Vec<f64>,
}

/// Ring means of a native-order map.
pub fn radial_average(map: &[f64], h: usize, w: usize) -> RadialCurve {
    let (bins, nb) = radial_bins(h, w);
    let mut sum = vec![0.0; nb];
    let mut cnt = vec![0usize; nb];
    for (&b, &v) in bins.iter().zip(map) {
        if b != usize::MAX {
            sum[b] += v;
            cnt[b] += 1;
        }
    }
    let m = h.max(w) as f64;
    RadialCurve {
        frequency: (0..nb).map(|b| b as f64 / m).collect(),
        value: sum
            .iter()
            .zip(&cnt)
            .map(|(&s, &c)| if c > 0 { s / c as f64 } else { f64::NAN })
            .collect(),
    }
}

/// The PRTF of reconstructions that are already aligned: per frequency |<F_i / |F_i|>|
/// (a frequency where |F_i| = 0 contributes 0), radially averaged. `images` are h*w each.
pub fn prtf_of_aligned(images: &[Vec<Complex64>], h: usize, w: usize) -> RadialCurve {
    assert!(!images.is_empty());
    let l = h * w;
    let mut acc = vec![Complex64::new(0.0, 0.0); l];
    for img in images {
        let mut f = img.clone();
        fft2(&mut f, h, w, false);
        for (a, v) in acc.iter_mut().zip(&f) {
            let n = v.norm();
            if n > 0.0 {
                *a += v / n;
            }
        }
    }
    let k = images.len() as f64;
    let map: Vec<f64> = acc.iter().map(|a| a.norm() / k).collect();
    radial_average(&map, h, w)
}

/// Align `images` to the first one (sub-pixel translation, twin, global phase) and return
/// the aligned images (the first unchanged) and their alignments.
pub fn align_all(
    images: &[Vec<Complex64>],
    h: usize,
    w: usize,
    upsample: usize,
) -> (Vec<Vec<Complex64>>, Vec<Alignment>) {
    let reference = &images[0];
    let opts = AlignOptions {
        twin: true,
        upsample,
        fit_scale: false,
    };
    images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            if i == 0 {
                (
                    img.clone(),
                    Alignment {
                        shift: (0.0, 0.0),
                        twin: false,
                        phase: 0.0,
                        scale: 1.0,
                        error: 0.0,
                    },
                )
            } else {
                align(reference, img, h, w, opts)
            }
        })
        .unzip()
}

/// The PRTF of several reconstructions of one pattern: aligned to the first (see
/// [`align_all`]), then [`prtf_of_aligned`]. Also returns the average of the aligned images.
pub fn prtf(
    images: &[Vec<Complex64>],
    h: usize,
    w: usize,
    upsample: usize,
) -> (RadialCurve, Vec<Complex64>) {
    let (aligned, _) = align_all(images, h, w, upsample);
    let curve = prtf_of_aligned(&aligned, h, w);
    (curve, average(&aligned))
}

/// Pixel-wise mean of images.
pub fn average(images: &[Vec<Complex64>]) -> Vec<Complex64> {
    let l = images[0].len();
    let mut out = vec![Complex64::new(0.0, 0.0); l];
    for img in images {
        for (o, v) in out.iter_mut().zip(img) {
            *o += v;
        }
    }
    let k = images.len() as f64;
    out.iter_mut().for_each(|v| *v /= k);
    out
}

/// The first frequency (cycles per pixel, linear interpolation between bins) above zero
/// where the curve falls below `level`; `None` when it never does.
pub fn crossing(curve: &RadialCurve, level: f64) -> Option<f64> {
    let v = &curve.value;
    let f = &curve.frequency;
    let mut prev: Option<usize> = None;
    for i in 1..v.len() {
        if !v[i].is_finite() {
            continue;
        }
        if v[i] < level {
            return Some(match prev {
                Some(p) if v[p] > v[i] => f[p] + (v[p] - level) / (v[p] - v[i]) * (f[i] - f[p]),
                _ => f[i],
            });
        }
        prev = Some(i);
    }
    None
}

/// Resolution where a PRTF crosses 1/e.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Resolution {
    /// Whether the curve crosses 1/e below Nyquist (else the values are the Nyquist limit).
    pub crossed: bool,
    /// Crossing frequency, cycles per pixel.
    pub frequency: f64,
    /// Full-period resolution 1 / frequency, in real-space pixels.
    pub pixels: f64,
    /// The same in nm, when the real-space pixel size is known.
    pub nm: Option<f64>,
}

/// Resolution at the 1/e crossing of a PRTF (full period); `pixel_nm` is the real-space
/// pixel size.
pub fn resolution(curve: &RadialCurve, pixel_nm: Option<f64>) -> Resolution {
    let c = crossing(curve, (-1.0f64).exp());
    let f = c.unwrap_or(0.5);
    Resolution {
        crossed: c.is_some(),
        frequency: f,
        pixels: 1.0 / f,
        nm: pixel_nm.map(|p| p / f),
    }
}

/// Summary statistics of a list of values (finite ones).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Stats {
    pub count: usize,
    pub mean: f64,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// [`Stats`] of the finite values; `None` when there are none.
pub fn stats(values: &[f64]) -> Option<Stats> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    };
    Some(Stats {
        count: n,
        mean: v.iter().sum::<f64>() / n as f64,
        median,
        min: v[0],
        max: v[n - 1],
    })
}

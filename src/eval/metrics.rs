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

/// A statistic with its bootstrap confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Interval {
    /// The statistic on all patterns.
    pub estimate: f64,
    /// The interval's bounds (percentile bootstrap).
    pub low: f64,
    pub high: f64,
}

/// Group index per item from labels (items sharing a label share a group), groups numbered
/// in order of first appearance. Returns the indices and the number of groups.
pub fn group_ids(labels: &[String]) -> (Vec<usize>, usize) {
    let mut map: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let ids = labels
        .iter()
        .map(|l| {
            let k = map.len();
            *map.entry(l.as_str()).or_insert(k)
        })
        .collect();
    (ids, map.len())
}

/// Percentile bootstrap over groups (a cluster bootstrap: the structures, not the patterns,
/// are the independent units). Each of the `resamples` draws takes `G` groups uniformly
/// with replacement (G = number of groups) and evaluates `stat` on the values of every item
/// of the drawn groups (a group drawn twice counts twice). The interval is the
/// ((1 - level) / 2, (1 + level) / 2) quantiles of the sorted draws, by nearest rank:
/// sorted[floor(B (1 - level) / 2)] and sorted[ceil(B (1 + level) / 2) - 1]. Deterministic
/// in `seed`. `groups[i]` is the group of `values[i]`, numbered 0..G.
pub fn bootstrap_ci(
    groups: &[usize],
    values: &[f64],
    stat: &dyn Fn(&[f64]) -> f64,
    resamples: usize,
    level: f64,
    seed: u64,
) -> Interval {
    use rand_xoshiro::rand_core::{Rng, SeedableRng};
    assert_eq!(groups.len(), values.len());
    let estimate = stat(values);
    let g = groups.iter().map(|&k| k + 1).max().unwrap_or(0);
    if g == 0 || resamples == 0 {
        return Interval {
            estimate,
            low: estimate,
            high: estimate,
        };
    }
    let mut members: Vec<Vec<f64>> = vec![Vec::new(); g];
    for (&k, &v) in groups.iter().zip(values) {
        members[k].push(v);
    }
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut draws = Vec::with_capacity(resamples);
    let mut sample = Vec::with_capacity(values.len() * 2);
    for _ in 0..resamples {
        sample.clear();
        for _ in 0..g {
            let k = (rng.next_u64() % g as u64) as usize;
            sample.extend_from_slice(&members[k]);
        }
        draws.push(stat(&sample));
    }
    draws.sort_by(|a, b| a.total_cmp(b));
    let b = resamples as f64;
    let lo = ((b * (1.0 - level) / 2.0).floor() as usize).min(resamples - 1);
    let hi = ((b * (1.0 + level) / 2.0).ceil() as usize)
        .saturating_sub(1)
        .min(resamples - 1);
    Interval {
        estimate,
        low: draws[lo],
        high: draws[hi],
    }
}

/// Mean of the values (NaN when empty).
pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Median of the values (the mean of the middle two for an even count; NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => s[n / 2],
        _ => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

/// Share of the values below `limit` (strictly) or at most `limit`.
pub fn share(v: &[f64], limit: f64, strict: bool) -> f64 {
    let k = v
        .iter()
        .filter(|&&x| if strict { x < limit } else { x <= limit })
        .count();
    k as f64 / v.len() as f64
}

/// The paper's support figures of merit for one input, with bootstrap intervals over the
/// structures (see [`support_summary`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SupportSummary {
    pub patterns: usize,
    /// Independent units of the bootstrap: distinct source ids (`entry_1/sample_1/name`),
    /// or the patterns when the truth has no names.
    pub groups: usize,
    pub grouping: String,
    /// Share of patterns with FN < 2 (the paper's "less than 2 false negative pixels").
    pub fn_below_2: Interval,
    /// Share of patterns with FN <= 2.
    pub fn_at_most_2: Interval,
    pub fn_mean: Interval,
    pub fp_mean: Interval,
    pub fp_median: Interval,
    /// Mean over patterns of FP / (pixels of the ideal support).
    pub fp_over_ideal_mean: Interval,
    /// Mean FP / mean ideal-support pixels (a ratio of means).
    pub fp_over_ideal_of_means: f64,
    pub ideal_size_mean: f64,
    pub ideal_size_median: f64,
    pub estimate_size_median: f64,
    /// Bootstrap resamples and confidence level.
    pub resamples: usize,
    pub level: f64,
}

/// Bootstrap resamples of [`support_summary`].
pub const BOOTSTRAP_RESAMPLES: usize = 2000;
/// Confidence level of [`support_summary`].
pub const CONFIDENCE: f64 = 0.95;

/// The support figures of merit of the paper's protocol (FN and FP after the alignment of
/// largest overlap, translation and twin: [`support_errors`]) over the patterns, with a
/// 95 % percentile bootstrap over `groups` ([`bootstrap_ci`], 2000 resamples, fixed seed).
/// `None` without patterns.
pub fn support_summary(
    errors: &[SupportErrors],
    groups: &[usize],
    grouping: &str,
) -> Option<SupportSummary> {
    if errors.is_empty() {
        return None;
    }
    assert_eq!(errors.len(), groups.len());
    let fns: Vec<f64> = errors.iter().map(|e| e.false_negatives as f64).collect();
    let fps: Vec<f64> = errors.iter().map(|e| e.false_positives as f64).collect();
    let ideal: Vec<f64> = errors.iter().map(|e| e.ideal_size as f64).collect();
    let est: Vec<f64> = errors.iter().map(|e| e.estimate_size as f64).collect();
    let rel: Vec<f64> = errors
        .iter()
        .map(|e| e.false_positives as f64 / (e.ideal_size.max(1)) as f64)
        .collect();
    let ci = |v: &[f64], f: &dyn Fn(&[f64]) -> f64, salt: u64| {
        bootstrap_ci(
            groups,
            v,
            f,
            BOOTSTRAP_RESAMPLES,
            CONFIDENCE,
            0x5EED_0013 ^ salt,
        )
    };
    Some(SupportSummary {
        patterns: errors.len(),
        groups: groups.iter().map(|&k| k + 1).max().unwrap_or(0),
        grouping: grouping.to_string(),
        fn_below_2: ci(&fns, &|v| share(v, 2.0, true), 1),
        fn_at_most_2: ci(&fns, &|v| share(v, 2.0, false), 2),
        fn_mean: ci(&fns, &mean, 3),
        fp_mean: ci(&fps, &mean, 4),
        fp_median: ci(&fps, &median, 5),
        fp_over_ideal_mean: ci(&rel, &mean, 6),
        fp_over_ideal_of_means: mean(&fps) / mean(&ideal).max(f64::MIN_POSITIVE),
        ideal_size_mean: mean(&ideal),
        ideal_size_median: median(&ideal),
        estimate_size_median: median(&est),
        resamples: BOOTSTRAP_RESAMPLES,
        level: CONFIDENCE,
    })
}

/// The Fourier (modulus) error of an object against measured intensities, as the phasing
/// backends record it: sqrt(sum (|F| - A)^2 / sum A^2) over the measured pixels, F the
/// unnormalised forward FFT of `object`, A = sqrt(`intensities`). Both images centred at
/// (H/2, W/2) as stored; `mask` nonzero = unmeasured. Computed in f64.
pub fn fourier_error(
    object: &[Complex64],
    intensities: &[f32],
    mask: Option<&[u8]>,
    h: usize,
    w: usize,
) -> crate::Result<f64> {
    let l = h * w;
    if object.len() != l || intensities.len() != l || mask.is_some_and(|m| m.len() != l) {
        return Err(crate::Error::Shape {
            what: "fourier_error inputs".into(),
            expected: format!("{h}x{w} object, intensities and mask"),
            found: vec![object.len(), intensities.len(), mask.map_or(l, |m| m.len())],
        });
    }
    let mut f = vec![Complex64::new(0.0, 0.0); l];
    crate::array::centred_to_native(object, h, w, &mut f);
    fft2(&mut f, h, w, false);
    let native: Vec<f64> = f.iter().map(|c| c.norm()).collect();
    // |F| centred, as the intensities are stored
    let mut modulus = vec![0.0f64; l];
    crate::array::native_to_centred(&native, h, w, &mut modulus);
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    for (i, (&v, &m)) in intensities.iter().zip(&modulus).enumerate() {
        if mask.is_some_and(|k| k[i] != 0) {
            continue;
        }
        if !v.is_finite() || v < 0.0 {
            return Err(crate::Error::invalid(
                "intensities",
                format!(
                    "pixel (y={}, x={}) is {v}: mask it (nonzero in the mask) or fix the data",
                    i / w,
                    i % w
                ),
            ));
        }
        let a = (v as f64).sqrt();
        err += (m - a).powi(2);
        norm += a * a;
    }
    if norm <= 0.0 {
        return Err(crate::Error::invalid(
            "intensities",
            "no measured intensity (every pixel masked or zero)",
        ));
    }
    Ok((err / norm).sqrt())
}

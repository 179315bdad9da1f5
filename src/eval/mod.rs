//! Evaluation of support estimates and reconstructions against the ground truth of a
//! simulation: alignment ([`align`]), figures of merit ([`metrics`]), figures ([`plot`])
//! and the report folder ([`report`]).

pub mod align;
pub mod metrics;
pub mod plot;
pub mod report;

use std::path::{Path, PathBuf};

use num_complex::Complex64;
use rayon::prelude::*;

use crate::array::{Complex32, Stack};
use crate::io::{self, PatternSet};
use crate::{Error, Result};
use metrics::{RadialCurve, Resolution, Stats, SupportErrors};

/// Ground truth entries written by `cdiphase simulate`.
pub const TRUTH_DENSITY: &str = "entry_1/sample_1/density";
pub const TRUTH_SUPPORT: &str = "entry_1/sample_1/support";
/// Real-space pixel size (N) in metres.
pub const TRUTH_PIXEL_SIZE: &str = "entry_1/sample_1/pixel_size";
pub const TRUTH_NAME: &str = "entry_1/sample_1/name";

/// The ground truth of a simulation.
#[derive(Clone, Debug)]
pub struct Truth {
    pub path: PathBuf,
    pub density: Stack<f32>,
    pub support: Stack<u8>,
    /// The patterns (for the figures), when the file holds them.
    pub patterns: Option<PatternSet>,
    /// Real-space pixel size per pattern, nm.
    pub pixel_nm: Option<Vec<f64>>,
    /// Source ids per pattern.
    pub names: Option<Vec<String>>,
}

impl Truth {
    pub fn n(&self) -> usize {
        self.density.n
    }
    pub fn hw(&self) -> (usize, usize) {
        (self.density.h, self.density.w)
    }
}

fn has(list: &[(String, Vec<usize>, String)], entry: &str) -> bool {
    list.iter()
        .any(|(p, _, _)| p.trim_start_matches('/') == entry)
}

fn shape_err(path: &Path, entry: &str, expected: String, found: Vec<usize>) -> Error {
    Error::Shape {
        what: format!("{}: dataset '{entry}'", path.display()),
        expected,
        found,
    }
}

/// The (N, H, W) of the patterns of `path` (`entry_1/data_1/data`, else the simulated
/// densities `entry_1/sample_1/density`), without reading them (nor the file: headers only).
pub fn pattern_shape(path: &Path) -> Result<(usize, usize, usize)> {
    let list = io::list_dataset_headers(path)?;
    for e in [io::DEFAULT_DATA_ENTRY, TRUTH_DENSITY] {
        if let Some((_, s, _)) = list.iter().find(|(p, _, _)| p.trim_start_matches('/') == e) {
            return match *s.as_slice() {
                [n, h, w] => Ok((n, h, w)),
                [h, w] => Ok((1, h, w)),
                _ => Err(shape_err(path, e, "(N,H,W) or (H,W)".into(), s.clone())),
            };
        }
    }
    Err(Error::MissingEntry {
        path: path.to_path_buf(),
        entry: format!("{}' or '{TRUTH_DENSITY}", io::DEFAULT_DATA_ENTRY),
        hint: "the patterns (or the simulated densities) set the number and size of the supports"
            .into(),
    })
}

/// Read the ground truth of `path` (density and ideal support are required).
pub fn read_truth(path: &Path) -> Result<Truth> {
    let list = io::list_datasets(path)?;
    for e in [TRUTH_DENSITY, TRUTH_SUPPORT] {
        if !has(&list, e) {
            return Err(Error::MissingEntry {
                path: path.to_path_buf(),
                entry: e.into(),
                hint: "the ground truth of `cdiphase simulate` is needed (--truth SIM.cxi)".into(),
            });
        }
    }
    let (shape, data) = io::read_f32(path, TRUTH_DENSITY)?;
    let (n, h, w) = match *shape.as_slice() {
        [n, h, w] => (n, h, w),
        [h, w] => (1, h, w),
        _ => return Err(shape_err(path, TRUTH_DENSITY, "(N,H,W)".into(), shape)),
    };
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(
            format!("{}: {TRUTH_DENSITY}", path.display()),
            format!("value {i} is not finite"),
        ));
    }
    let density = Stack::from_vec(n, h, w, data)?;
    let support = io::read_support(path, Some(TRUTH_SUPPORT))?;
    if support.shape() != [n, h, w] {
        return Err(shape_err(
            path,
            TRUTH_SUPPORT,
            format!("({n},{h},{w}) like '{TRUTH_DENSITY}'"),
            support.shape().to_vec(),
        ));
    }
    let patterns = if has(&list, io::DEFAULT_DATA_ENTRY) {
        let p = io::read_patterns(path, None)?;
        if p.intensities.shape() != [n, h, w] {
            return Err(shape_err(
                path,
                io::DEFAULT_DATA_ENTRY,
                format!("({n},{h},{w}) like '{TRUTH_DENSITY}'"),
                p.intensities.shape().to_vec(),
            ));
        }
        Some(p)
    } else {
        None
    };
    let pixel_nm = if has(&list, TRUTH_PIXEL_SIZE) {
        let (s, v) = io::read_f32(path, TRUTH_PIXEL_SIZE)?;
        if v.len() == n {
            Some(v.iter().map(|&m| m as f64 * 1e9).collect())
        } else if v.len() == 1 {
            Some(vec![v[0] as f64 * 1e9; n])
        } else {
            return Err(shape_err(
                path,
                TRUTH_PIXEL_SIZE,
                format!("({n}) or (1)"),
                s,
            ));
        }
    } else {
        None
    };
    let names = if has(&list, TRUTH_NAME) {
        let s = io::read_string(path, TRUTH_NAME)?;
        let v: Vec<String> = s.lines().map(str::to_string).collect();
        (v.len() == n).then_some(v)
    } else {
        None
    };
    Ok(Truth {
        path: path.to_path_buf(),
        density,
        support,
        patterns,
        pixel_nm,
        names,
    })
}

/// What one input file holds, read and checked against the truth's shape.
#[derive(Clone, Debug)]
pub struct Input {
    pub path: PathBuf,
    pub label: String,
    pub support: Option<Stack<u8>>,
    pub object: Option<Stack<Complex32>>,
    /// (N, L) Fourier error histories of the best start.
    pub fourier_error: Option<(usize, Vec<f32>)>,
    pub final_fourier_error: Option<Vec<f32>>,
    /// Every start's Fourier error history (`phase` outputs): (K, L, N*K*L values).
    pub all_fourier_error: Option<(usize, usize, Vec<f32>)>,
    /// Every start: (K, N*K*H*W).
    pub all_objects: Option<(usize, Vec<Complex32>)>,
    /// The merge of the best starts (`phase --merge`, `entry_1/image_3/data`).
    pub merged: Option<Stack<Complex32>>,
}

pub const IN_SUPPORT: &str = "entry_1/image_1/support";
pub const IN_DATA: &str = "entry_1/image_1/data";
pub const IN_FOURIER: &str = "entry_1/image_1/fourier_error";
pub const IN_FINAL: &str = "entry_1/image_1/final_fourier_error";
pub const IN_ALL_FOURIER: &str = "entry_1/image_1/all_fourier_error";
pub const IN_ALL: &str = "entry_1/image_2/data";
pub const IN_MERGED: &str = "entry_1/image_3/data";

/// Read an input (support file, `phase` output or `predict` output) and check every
/// dataset it holds against the truth shape (N, H, W).
pub fn read_input(path: &Path, label: &str, truth: &Truth) -> Result<Input> {
    let (n, (h, w)) = (truth.n(), truth.hw());
    let list = io::list_datasets(path)?;
    let want3 = format!("({n},{h},{w}) like the truth {}", truth.path.display());
    let support = if has(&list, IN_SUPPORT) {
        let s = io::read_support(path, Some(IN_SUPPORT))?;
        if s.shape() != [n, h, w] {
            return Err(shape_err(path, IN_SUPPORT, want3, s.shape().to_vec()));
        }
        Some(s)
    } else {
        None
    };
    let object = if has(&list, IN_DATA) {
        let o = io::read_object(path, Some(IN_DATA))?;
        if o.shape() != [n, h, w] {
            return Err(shape_err(path, IN_DATA, want3, o.shape().to_vec()));
        }
        if let Some(i) = o
            .data
            .iter()
            .position(|c| !(c.re.is_finite() && c.im.is_finite()))
        {
            return Err(Error::invalid(
                format!("{}: {IN_DATA}", path.display()),
                format!("image {} pixel {} is not finite", i / (h * w), i % (h * w)),
            ));
        }
        Some(o)
    } else {
        None
    };
    let fourier_error = if has(&list, IN_FOURIER) {
        let (s, v) = io::read_f32(path, IN_FOURIER)?;
        match *s.as_slice() {
            [m, l] if m == n => Some((l, v)),
            _ => return Err(shape_err(path, IN_FOURIER, format!("({n}, L)"), s)),
        }
    } else {
        None
    };
    let final_fourier_error = if has(&list, IN_FINAL) {
        let (s, v) = io::read_f32(path, IN_FINAL)?;
        if v.len() != n {
            return Err(shape_err(path, IN_FINAL, format!("({n})"), s));
        }
        Some(v)
    } else {
        None
    };
    let all_fourier_error = if has(&list, IN_ALL_FOURIER) {
        let (s, v) = io::read_f32(path, IN_ALL_FOURIER)?;
        match *s.as_slice() {
            [m, k, l] if m == n && k >= 1 => Some((k, l, v)),
            _ => return Err(shape_err(path, IN_ALL_FOURIER, format!("({n}, K, L)"), s)),
        }
    } else {
        None
    };
    let all_objects = if has(&list, IN_ALL) {
        let f = io::hdf5::open(path)?;
        let (name, d) = f.first_dataset(&[IN_ALL.to_string()])?;
        let (s, v) = f.read_complex(&name, &d)?;
        match *s.as_slice() {
            [m, k, hh, ww] if m == n && hh == h && ww == w && k >= 1 => Some((k, v)),
            _ => return Err(shape_err(path, IN_ALL, format!("({n},K,{h},{w})"), s)),
        }
    } else {
        None
    };
    let merged = if has(&list, IN_MERGED) {
        let o = io::read_object(path, Some(IN_MERGED))?;
        if o.shape() != [n, h, w] {
            return Err(shape_err(path, IN_MERGED, want3, o.shape().to_vec()));
        }
        if let Some(i) = o
            .data
            .iter()
            .position(|c| !(c.re.is_finite() && c.im.is_finite()))
        {
            return Err(Error::invalid(
                format!("{}: {IN_MERGED}", path.display()),
                format!("image {} pixel {} is not finite", i / (h * w), i % (h * w)),
            ));
        }
        Some(o)
    } else {
        None
    };
    if support.is_none() && object.is_none() && fourier_error.is_none() {
        return Err(Error::MissingEntry {
            path: path.to_path_buf(),
            entry: format!("{IN_SUPPORT}' or '{IN_DATA}' or '{IN_FOURIER}"),
            hint: "an input is a `cdiphase support`, `phase` or `predict` output".into(),
        });
    }
    Ok(Input {
        path: path.to_path_buf(),
        label: label.to_string(),
        support,
        object,
        fourier_error,
        final_fourier_error,
        all_fourier_error,
        all_objects,
        merged,
    })
}

/// The density comparison of one pattern.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct DensityMetrics {
    /// min over translation, twin and complex scale of ||rho - c x|| / ||rho||.
    pub error: f64,
    pub shift: (f64, f64),
    pub twin: bool,
}

/// Metrics of one pattern of one input.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PatternMetrics {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub support: Option<SupportErrors>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub density: Option<DensityMetrics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_fourier_error: Option<f64>,
    /// PRTF over the K starts of this pattern (with `--keep-all` outputs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prtf_resolution: Option<Resolution>,
    /// Error of the average of the K aligned starts against the truth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub average_error: Option<f64>,
    /// The PRTF of this pattern's K starts by frequency bin (the bins of the input's
    /// `prtf.frequency`), so that a report can resample the patterns (a bootstrap interval
    /// of the mean PRTF's resolution) without redoing the alignments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prtf: Option<Vec<f64>>,
    /// Density error of the merged object (`phase --merge`, `entry_1/image_3/data`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged_error: Option<f64>,
}

/// Aggregated metrics of one input.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Aggregate {
    pub false_positives: Option<Stats>,
    pub false_negatives: Option<Stats>,
    /// Fraction of patterns with at most 2 false negatives.
    pub fraction_fn_at_most_2: Option<f64>,
    /// Fraction of patterns with fewer than 2 false negatives (the paper's words: "less
    /// than 2 false negative pixels").
    pub fraction_fn_below_2: Option<f64>,
    /// The paper's support protocol with bootstrap intervals over the structures.
    pub support_summary: Option<metrics::SupportSummary>,
    pub density_error: Option<Stats>,
    pub final_fourier_error: Option<Stats>,
    pub average_error: Option<Stats>,
    /// Density error of the merged objects (`phase --merge`).
    pub merged_error: Option<Stats>,
    /// Resolution at the 1/e crossing of the PRTF averaged over patterns.
    pub prtf_resolution: Option<Resolution>,
    /// Mean of the per-pattern resolutions in nm.
    pub prtf_resolution_nm: Option<Stats>,
}

/// The aligned estimates of one pattern kept for the image grid: (support, |object|).
pub type GalleryItem = (Option<Vec<u8>>, Option<Vec<f32>>);

/// Everything computed for one input.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InputEvaluation {
    pub file: String,
    pub label: String,
    pub per_pattern: Vec<PatternMetrics>,
    pub aggregate: Aggregate,
    /// PRTF averaged over patterns.
    pub prtf: Option<RadialCurve>,
    #[serde(skip)]
    pub fourier_error: Option<(usize, Vec<f32>)>,
    /// Every start's history: (K, L, N*K*L values).
    #[serde(skip)]
    pub all_fourier_error: Option<(usize, usize, Vec<f32>)>,
    /// Aligned estimates of the first patterns, for the figure grid: (support, |object|).
    #[serde(skip)]
    pub gallery: Vec<GalleryItem>,
}

/// Sub-pixel precision of the density alignments (1/UPSAMPLE pixel).
pub const UPSAMPLE: usize = 20;

/// Evaluate one input against the truth. `gallery` patterns (the first ones) keep their
/// aligned estimates for the figures.
pub fn evaluate_input(truth: &Truth, input: &Input, gallery: usize) -> InputEvaluation {
    let n = truth.n();
    let (h, w) = truth.hw();
    let l = h * w;
    let per: Vec<(PatternMetrics, GalleryItem)> = (0..n)
        .into_par_iter()
        .map(|p| {
            let ideal = truth.support.image(p);
            let rho = align::real_to_c64(truth.density.image(p));
            let mut gal = (None, None);
            let support = input.support.as_ref().map(|s| {
                let e = metrics::support_errors(ideal, s.image(p), h, w, true);
                if p < gallery {
                    let cand = if e.alignment.twin {
                        align::flip(s.image(p), h, w)
                    } else {
                        s.image(p).to_vec()
                    };
                    gal.0 = Some(align::roll(
                        &cand,
                        h,
                        w,
                        e.alignment.shift.0,
                        e.alignment.shift.1,
                    ));
                }
                e
            });
            let density = input.object.as_ref().map(|o| {
                let (aligned, al) =
                    metrics::density_error(&rho, &align::to_c64(o.image(p)), h, w, UPSAMPLE);
                if p < gallery {
                    gal.1 = Some(aligned.iter().map(|c| c.norm() as f32).collect());
                }
                DensityMetrics {
                    error: al.error,
                    shift: al.shift,
                    twin: al.twin,
                }
            });
            let final_fourier_error = input.final_fourier_error.as_ref().map(|v| v[p] as f64);
            let merged_error = input.merged.as_ref().map(|o| {
                metrics::density_error(&rho, &align::to_c64(o.image(p)), h, w, UPSAMPLE)
                    .1
                    .error
            });
            let pixel = truth.pixel_nm.as_ref().map(|v| v[p]);
            let (mut prtf_resolution, mut average_error, mut prtf) = (None, None, None);
            if let Some((k, all)) = &input.all_objects {
                let imgs: Vec<Vec<Complex64>> = (0..*k)
                    .map(|s| align::to_c64(&all[(p * k + s) * l..(p * k + s + 1) * l]))
                    .collect();
                let (c, avg) = metrics::prtf(&imgs, h, w, UPSAMPLE);
                prtf_resolution = Some(metrics::resolution(&c, pixel));
                average_error = Some(metrics::density_error(&rho, &avg, h, w, UPSAMPLE).1.error);
                prtf = Some(c.value);
            }
            (
                PatternMetrics {
                    index: p,
                    name: truth.names.as_ref().map(|v| v[p].clone()),
                    support,
                    density,
                    final_fourier_error,
                    prtf_resolution,
                    average_error,
                    prtf,
                    merged_error,
                },
                gal,
            )
        })
        .collect();
    let mut per_pattern = Vec::with_capacity(n);
    let mut gallery_out = Vec::new();
    for (m, g) in per {
        if m.index < gallery {
            gallery_out.push(g);
        }
        per_pattern.push(m);
    }
    let curves: Vec<&Vec<f64>> = per_pattern.iter().filter_map(|m| m.prtf.as_ref()).collect();
    let prtf = (!curves.is_empty()).then(|| {
        let nb = curves[0].len();
        let m = h.max(w) as f64;
        RadialCurve {
            frequency: (0..nb).map(|b| b as f64 / m).collect(),
            value: (0..nb)
                .map(|b| curves.iter().map(|c| c[b]).sum::<f64>() / curves.len() as f64)
                .collect(),
        }
    });
    let col = |f: &dyn Fn(&PatternMetrics) -> Option<f64>| -> Vec<f64> {
        per_pattern.iter().filter_map(f).collect()
    };
    let fps = col(&|m| m.support.map(|s| s.false_positives as f64));
    let fns = col(&|m| m.support.map(|s| s.false_negatives as f64));
    // pixel size of the PRTF average: the mean pixel size (exact when all are equal)
    let mean_px = truth
        .pixel_nm
        .as_ref()
        .map(|v| v.iter().sum::<f64>() / v.len() as f64);
    let aggregate = Aggregate {
        false_positives: metrics::stats(&fps),
        false_negatives: metrics::stats(&fns),
        fraction_fn_at_most_2: (!fns.is_empty()).then(|| metrics::share(&fns, 2.0, false)),
        fraction_fn_below_2: (!fns.is_empty()).then(|| metrics::share(&fns, 2.0, true)),
        support_summary: {
            let errs: Vec<SupportErrors> = per_pattern.iter().filter_map(|m| m.support).collect();
            let labels: Vec<String> = per_pattern
                .iter()
                .filter(|m| m.support.is_some())
                .map(|m| match &m.name {
                    Some(n) => n.clone(),
                    None => format!("#{}", m.index),
                })
                .collect();
            let (ids, _) = metrics::group_ids(&labels);
            let grouping = if truth.names.is_some() {
                "source id (entry_1/sample_1/name)"
            } else {
                "pattern (the truth has no entry_1/sample_1/name)"
            };
            metrics::support_summary(&errs, &ids, grouping)
        },
        density_error: metrics::stats(&col(&|m| m.density.map(|d| d.error))),
        final_fourier_error: metrics::stats(&col(&|m| m.final_fourier_error)),
        average_error: metrics::stats(&col(&|m| m.average_error)),
        merged_error: metrics::stats(&col(&|m| m.merged_error)),
        prtf_resolution: prtf.as_ref().map(|c| metrics::resolution(c, mean_px)),
        prtf_resolution_nm: metrics::stats(&col(&|m| m.prtf_resolution.and_then(|r| r.nm))),
    };
    InputEvaluation {
        file: input.path.display().to_string(),
        label: input.label.clone(),
        per_pattern,
        aggregate,
        prtf,
        fourier_error: input.fourier_error.clone(),
        all_fourier_error: input.all_fourier_error.clone(),
        gallery: gallery_out,
    }
}

/// Labels for input files: their stems, made unique with a numeric suffix.
pub fn labels(paths: &[PathBuf]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in paths {
        let base = p
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "input".into());
        let mut name = base.clone();
        let mut i = 2;
        while out.contains(&name) {
            name = format!("{base}-{i}");
            i += 1;
        }
        out.push(name);
    }
    out
}

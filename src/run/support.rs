//! `support` block by block, every method: the autocorrelation and triple-intersection
//! supports of diffraction patterns ([`crate::support::estimate_from_patterns`]) and the
//! thresholded network output (`nn`) in [`support_blocks`]; the baselines of
//! [`crate::support::baselines`] (the training set's mean image, the oracle, the circle)
//! in [`baseline_blocks`].

use std::sync::atomic::{AtomicU64, Ordering};

use super::dist::{self, Rows};
use super::{shifted, BlockRun, BlockStats};
use crate::array::Stack;
use crate::io::blocks::{BlockPlan, ImageBlocks, PatternBlocks};
use crate::io::stream::Dtype;
use crate::support::{self, baselines, Method, TripleIntersection};
use crate::{Error, Result};

/// What a block-wise support run reports, per pattern.
#[derive(Clone, Debug)]
pub struct SupportSummary {
    /// Pixels of each support.
    pub areas: Vec<usize>,
    /// Triple-intersection details (`None` for the other methods, and for the patterns of
    /// blocks an earlier, interrupted run had finished).
    pub details: Vec<Option<TripleIntersection>>,
    pub stats: BlockStats,
}

/// Supports of every pattern of `input` by `method` (autocorrelation, triple-intersection:
/// `input` holds diffraction patterns; nn: `input` holds network outputs, see
/// [`PatternBlocks::open_unmasked`]) at `threshold`, written to `run.dest` as
/// `entry_1/image_1/support` with `config` stored. An empty support is an error naming
/// the patterns.
pub fn support_blocks(
    input: &PatternBlocks,
    method: Method,
    threshold: f32,
    config: &serde_json::Value,
    run: &BlockRun<'_>,
) -> Result<SupportSummary> {
    if !matches!(
        method,
        Method::Autocorrelation | Method::TripleIntersection | Method::Nn
    ) {
        return Err(Error::Config(format!(
            "method {} does not work pattern by pattern",
            method.name()
        )));
    }
    support::check_threshold(threshold)?;
    let (n, h, w) = (input.n, input.h, input.w);
    let plan = BlockPlan::new(n, run.block)?;
    let compute_ns = AtomicU64::new(0);
    let read = |b: usize| input.read(plan.range(b));
    // a block's rows: the supports, then the triple-intersection details (see
    // [`encode_details`])
    let compute = |b: usize, p: crate::io::PatternSet| -> Result<Rows> {
        let r = plan.range(b);
        let t = std::time::Instant::now();
        let (s, d) = if method == Method::Nn {
            let st = &p.intensities;
            if let Some(i) = st.data.iter().position(|x| !x.is_finite()) {
                return Err(Error::format(
                    &input.source,
                    format!(
                        "dataset '{}' value {} is not finite",
                        input.entry,
                        r.start * h * w + i
                    ),
                ));
            }
            (
                support::threshold_supports(st, threshold),
                vec![None; r.len()],
            )
        } else {
            support::estimate_from_patterns(&p, method, threshold)
                .map_err(|e| shifted(e, r.start))?
        };
        let empty = empty_supports(&s, r.start);
        if !empty.is_empty() {
            return Err(Error::invalid(
                input.source.display().to_string(),
                format!(
                    "the {} support of pattern(s) {:?} is empty (threshold {threshold}): nothing written",
                    method.name(),
                    &empty[..empty.len().min(10)]
                ),
            ));
        }
        compute_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(vec![s.data, encode_details(&d)])
    };
    if dist::is_worker() {
        // an MPI worker: rank 0 opens, writes and reports the output
        dist::work(read, compute)?;
        return Ok(SupportSummary {
            areas: Vec::new(),
            details: Vec::new(),
            stats: BlockStats::worker(&plan, compute_ns),
        });
    }
    let (_, mut out, sid) = run.begin(n, |f| {
        f.string("cxi_version", "150")?;
        let s = f.stream("entry_1/image_1/support", Dtype::U8, &[n, h, w])?;
        f.string(
            "entry_1/image_1/process_1/configuration",
            &config.to_string(),
        )?;
        Ok(s)
    })?;
    let mut areas = vec![0usize; n];
    let mut details: Vec<Option<TripleIntersection>> = vec![None; n];
    let area = |s: &[u8]| s.iter().filter(|&&v| v != 0).count();
    for b in 0..plan.count() {
        if out.is_done(b) {
            let r = plan.range(b);
            let s = out.writer().read_rows_raw(sid, r.start, r.len())?;
            for (i, p) in r.enumerate() {
                areas[p] = area(&s[i * h * w..(i + 1) * h * w]);
            }
        }
    }
    let todo = out.todo();
    dist::run_blocks(&todo, read, compute, |b, rows: Rows| {
        let r = plan.range(b);
        let [s, d]: [Vec<u8>; 2] = rows.try_into().map_err(|rows: Rows| {
            Error::invalid(
                format!("block {b}"),
                format!("{} datasets of rows, expected 2", rows.len()),
            )
        })?;
        let px = h * w;
        let d = decode_details(&d, &s, r.len(), px).ok_or_else(|| {
            Error::invalid(
                format!("block {b}"),
                format!(
                    "{} bytes of supports and {} of details do not hold {} patterns of {h}x{w}",
                    s.len(),
                    d.len(),
                    r.len()
                ),
            )
        })?;
        out.writer().write_rows_u8(sid, r.start, &s)?;
        out.commit(b)?;
        for (i, dd) in d.into_iter().enumerate() {
            areas[r.start + i] = area(&s[i * px..(i + 1) * px]);
            details[r.start + i] = dd;
        }
        Ok(())
    })?;
    let stats = BlockStats::finished(&plan, out.resumed_blocks, &todo, compute_ns);
    out.finish()?;
    Ok(SupportSummary {
        areas,
        details,
        stats,
    })
}

/// The pattern indices (counted in the file from `first`) of the empty supports in `s`.
fn empty_supports(s: &Stack<u8>, first: usize) -> Vec<usize> {
    (0..s.n)
        .filter(|&i| s.image(i).iter().all(|&v| v == 0))
        .map(|i| first + i)
        .collect()
}

/// A baseline of [`crate::support::baselines`], computed block by block.
pub enum Baseline<'a> {
    /// The training set's mean image ((H, W), [`baselines::mean_image`]), the same image
    /// for each of `n` patterns.
    MeanImage { n: usize, mean: &'a Stack<f32> },
    /// The oracle of each density of `density` ([`baselines::oracle`]).
    Oracle {
        density: &'a PatternBlocks,
        sigma: f64,
        twin: bool,
    },
    /// The disc of each ideal support of `ideal` ([`baselines::circle_of_extent`]).
    Circle {
        ideal: &'a ImageBlocks<u8>,
        margin: f64,
    },
}

impl Baseline<'_> {
    fn shape(&self) -> (usize, usize, usize) {
        match self {
            Baseline::MeanImage { n, mean } => (*n, mean.h, mean.w),
            Baseline::Oracle { density: d, .. } => (d.n, d.h, d.w),
            Baseline::Circle { ideal: d, .. } => (d.n, d.h, d.w),
        }
    }

    fn method(&self) -> Method {
        match self {
            Baseline::MeanImage { .. } => Method::MeanImage,
            Baseline::Oracle { .. } => Method::Oracle,
            Baseline::Circle { .. } => Method::Circle,
        }
    }

    /// The file read block by block (the input; none for the mean image, whose training
    /// set was read before).
    fn source(&self) -> String {
        match self {
            Baseline::MeanImage { .. } => "the mean image".into(),
            Baseline::Oracle { density: d, .. } => d.source.display().to_string(),
            Baseline::Circle { ideal: d, .. } => d.source.display().to_string(),
        }
    }
}

/// What a block-wise baseline run reports, per pattern.
#[derive(Clone, Debug)]
pub struct BaselineSummary {
    /// Pixels of each support.
    pub areas: Vec<usize>,
    /// The circle's radius of each pattern, in pixels (empty for the other baselines).
    pub radii: Vec<f64>,
    pub stats: BlockStats,
}

/// The supports of `baseline` for every pattern, thresholded at `threshold` (a fraction
/// of each image's maximum; unused by the circle), written to `run.dest` with `config`
/// stored: `entry_1/image_1/support` (N,H,W) uint8, and `entry_1/image_1/data` (N,H,W)
/// float32, the image thresholded (mean image, oracle), or `entry_1/image_1/radius_px`
/// (N,) float64, the disc's radius (circle). The data are those of the in-memory
/// functions on the whole input, bit for bit, for every block size. An empty support is an
/// error naming the patterns.
pub fn baseline_blocks(
    baseline: &Baseline<'_>,
    threshold: f32,
    config: &serde_json::Value,
    run: &BlockRun<'_>,
) -> Result<BaselineSummary> {
    let method = baseline.method();
    match baseline {
        Baseline::Circle { margin, .. } => baselines::check_margin(*margin)?,
        Baseline::Oracle { sigma, .. } => {
            baselines::check_sigma(*sigma)?;
            support::check_threshold(threshold)?;
        }
        Baseline::MeanImage { mean, .. } => {
            support::check_threshold(threshold)?;
            if mean.n != 1 {
                return Err(Error::Config(format!(
                    "the mean image is {} images, expected 1",
                    mean.n
                )));
            }
        }
    }
    let (n, h, w) = baseline.shape();
    let px = h * w;
    let plan = BlockPlan::new(n, run.block)?;
    let compute_ns = AtomicU64::new(0);
    // the mean image's support, the same for every pattern
    let mean_support = match baseline {
        Baseline::MeanImage { mean, .. } => Some(support::threshold_supports(mean, threshold)),
        _ => None,
    };
    enum Input {
        None,
        Densities(Stack<f32>),
        Supports(Stack<u8>),
    }
    let read = |b: usize| -> Result<Input> {
        let r = plan.range(b);
        Ok(match baseline {
            Baseline::MeanImage { .. } => Input::None,
            Baseline::Oracle { density, .. } => Input::Densities(density.read(r)?.intensities),
            Baseline::Circle { ideal, .. } => Input::Supports(ideal.read(r)?),
        })
    };
    // a block's rows: the supports, then the images (f32) or the radii (f64)
    let compute = |b: usize, x: Input| -> Result<Rows> {
        let r = plan.range(b);
        let k = r.len();
        let t = std::time::Instant::now();
        let (s, second) = match (baseline, x) {
            (Baseline::MeanImage { mean, .. }, Input::None) => {
                let ms = mean_support.as_ref().expect("made for the mean image");
                let s = Stack {
                    n: k,
                    h,
                    w,
                    data: ms.data.repeat(k),
                };
                (s, dist::f32_bytes(&mean.data.repeat(k)))
            }
            (
                Baseline::Oracle {
                    density,
                    sigma,
                    twin,
                },
                Input::Densities(st),
            ) => {
                if let Some(i) = st.data.iter().position(|v| !v.is_finite()) {
                    return Err(Error::invalid(
                        format!("{}: {}", density.source.display(), density.entry),
                        format!("value {} is not finite", r.start * px + i),
                    ));
                }
                let img = baselines::oracle(&st, *sigma, *twin)?;
                let s = support::threshold_supports(&img, threshold);
                (s, dist::f32_bytes(&img.data))
            }
            (Baseline::Circle { ideal, margin }, Input::Supports(st)) => {
                let (s, radii) = baselines::circle_of_extent(&st, *margin).map_err(|e| {
                    let e = shifted(e, r.start);
                    match e {
                        Error::InvalidData { what, msg } => Error::InvalidData {
                            what: format!("{}: '{}' {what}", ideal.source.display(), ideal.entry),
                            msg,
                        },
                        e => e,
                    }
                })?;
                (s, radii.iter().flat_map(|v| v.to_le_bytes()).collect())
            }
            _ => unreachable!("the input read for this baseline"),
        };
        let empty = empty_supports(&s, r.start);
        if !empty.is_empty() {
            return Err(Error::invalid(
                baseline.source(),
                format!(
                    "the {} support of pattern(s) {:?} is empty (threshold {threshold}): nothing written",
                    method.name(),
                    &empty[..empty.len().min(10)]
                ),
            ));
        }
        compute_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(vec![s.data, second])
    };
    if dist::is_worker() {
        dist::work(read, compute)?;
        return Ok(BaselineSummary {
            areas: Vec::new(),
            radii: Vec::new(),
            stats: BlockStats::worker(&plan, compute_ns),
        });
    }
    let circle = method == Method::Circle;
    let (_, mut out, (sid, xid)) = run.begin(n, |f| {
        f.string("cxi_version", "150")?;
        let s = f.stream("entry_1/image_1/support", Dtype::U8, &[n, h, w])?;
        let x = if circle {
            f.stream("entry_1/image_1/radius_px", Dtype::F64, &[n])?
        } else {
            f.stream("entry_1/image_1/data", Dtype::F32, &[n, h, w])?
        };
        f.string(
            "entry_1/image_1/process_1/configuration",
            &config.to_string(),
        )?;
        Ok((s, x))
    })?;
    let mut areas = vec![0usize; n];
    let mut radii = if circle { vec![0f64; n] } else { Vec::new() };
    let area = |s: &[u8]| s.iter().filter(|&&v| v != 0).count();
    let radii_of = |b: &[u8]| -> Vec<f64> {
        b.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    };
    for b in 0..plan.count() {
        if out.is_done(b) {
            let r = plan.range(b);
            let s = out.writer().read_rows_raw(sid, r.start, r.len())?;
            for (i, p) in r.clone().enumerate() {
                areas[p] = area(&s[i * px..(i + 1) * px]);
            }
            if circle {
                let x = out.writer().read_rows_raw(xid, r.start, r.len())?;
                radii[r].copy_from_slice(&radii_of(&x));
            }
        }
    }
    let todo = out.todo();
    dist::run_blocks(&todo, read, compute, |b, rows: Rows| {
        let r = plan.range(b);
        let x_len = r.len() * if circle { 8 } else { px * 4 };
        let ok = rows.len() == 2 && rows[0].len() == r.len() * px && rows[1].len() == x_len;
        if !ok {
            return Err(Error::invalid(
                format!("block {b}"),
                format!(
                    "rows of {:?} bytes do not hold {} patterns of {h}x{w}",
                    rows.iter().map(Vec::len).collect::<Vec<_>>(),
                    r.len()
                ),
            ));
        }
        out.writer().write_rows_u8(sid, r.start, &rows[0])?;
        out.writer().write_rows_raw(xid, r.start, &rows[1])?;
        out.commit(b)?;
        for i in 0..r.len() {
            areas[r.start + i] = area(&rows[0][i * px..(i + 1) * px]);
        }
        if circle {
            radii[r].copy_from_slice(&radii_of(&rows[1]));
        }
        Ok(())
    })?;
    let stats = BlockStats::finished(&plan, out.resumed_blocks, &todo, compute_ns);
    out.finish()?;
    Ok(BaselineSummary {
        areas,
        radii,
        stats,
    })
}

/// Names of [`TripleIntersection::kind`].
const KINDS: [&str; 3] = ["triple", "double", "none"];

/// Per pattern: 0 (no details), or 1, the kind's index in [`KINDS`], the areas and hull
/// vertices and the shifts, little-endian (the support itself travels as the rows).
fn encode_details(d: &[Option<TripleIntersection>]) -> Vec<u8> {
    let mut v = Vec::new();
    for t in d {
        let Some(t) = t else {
            v.push(0);
            continue;
        };
        v.push(1);
        v.push(
            KINDS
                .iter()
                .position(|k| *k == t.kind)
                .unwrap_or(KINDS.len()) as u8,
        );
        for x in [
            t.area,
            t.autocorrelation_area,
            t.hull_vertices,
            t.shifts.len(),
        ] {
            v.extend_from_slice(&(x as u64).to_le_bytes());
        }
        for &(dy, dx) in &t.shifts {
            v.extend_from_slice(&dy.to_le_bytes());
            v.extend_from_slice(&dx.to_le_bytes());
        }
    }
    v
}

/// The details of [`encode_details`] for `m` patterns whose supports (`px` pixels each)
/// are `supports`; `None` when the bytes do not hold exactly that.
fn decode_details(
    b: &[u8],
    supports: &[u8],
    m: usize,
    px: usize,
) -> Option<Vec<Option<TripleIntersection>>> {
    if supports.len() != m * px {
        return None;
    }
    fn word(b: &[u8], at: &mut usize) -> Option<u64> {
        let w = u64::from_le_bytes(b.get(*at..*at + 8)?.try_into().ok()?);
        *at += 8;
        Some(w)
    }
    let mut out = Vec::with_capacity(m);
    let mut pos = 0usize;
    for i in 0..m {
        let tag = *b.get(pos)?;
        if tag == 0 {
            pos += 1;
            out.push(None);
            continue;
        }
        let kind = *KINDS.get(*b.get(pos + 1)? as usize)?;
        let mut at = pos + 2;
        let area = word(b, &mut at)? as usize;
        let autocorrelation_area = word(b, &mut at)? as usize;
        let hull_vertices = word(b, &mut at)? as usize;
        let k = word(b, &mut at)? as usize;
        let mut shifts = Vec::with_capacity(k.min(64));
        for _ in 0..k {
            shifts.push((word(b, &mut at)? as i64, word(b, &mut at)? as i64));
        }
        pos = at;
        out.push(Some(TripleIntersection {
            support: supports[i * px..(i + 1) * px].to_vec(),
            shifts,
            kind,
            area,
            autocorrelation_area,
            hull_vertices,
        }));
    }
    (pos == b.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_round_trip_and_truncation_is_refused() {
        let t = TripleIntersection {
            support: vec![0, 1, 1, 0],
            shifts: vec![(3, -2), (-1, 4)],
            kind: "double",
            area: 2,
            autocorrelation_area: 9,
            hull_vertices: 5,
        };
        let d = vec![None, Some(t), None];
        let sup = [vec![0u8; 4], vec![0, 1, 1, 0], vec![1u8; 4]].concat();
        let b = encode_details(&d);
        assert_eq!(decode_details(&b, &sup, 3, 4), Some(d));
        assert_eq!(decode_details(&b[..b.len() - 1], &sup, 3, 4), None);
        assert_eq!(decode_details(&b, &sup, 2, 4), None);
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(decode_details(&longer, &sup, 3, 4), None);
    }
}

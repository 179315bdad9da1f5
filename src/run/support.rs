//! `support` block by block, for the methods that work pattern by pattern: the
//! autocorrelation and triple-intersection supports of diffraction patterns
//! ([`crate::support::estimate_from_patterns`]) and the thresholded network output (`nn`).

use std::sync::atomic::{AtomicU64, Ordering};

use super::{shifted, BlockRun, BlockStats};
use crate::array::Stack;
use crate::io::blocks::{pipeline, PatternBlocks};
use crate::io::stream::Dtype;
use crate::support::{self, Method, TripleIntersection};
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
    let (plan, mut out, sid) = run.begin(n, |f| {
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
    let compute_ns = AtomicU64::new(0);
    pipeline(
        &todo,
        |b| input.read(plan.range(b)),
        |b, p| {
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
            let empty: Vec<usize> = (0..s.n)
                .filter(|&i| s.image(i).iter().all(|&v| v == 0))
                .map(|i| r.start + i)
                .collect();
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
            Ok((s, d))
        },
        |b, (s, d): (Stack<u8>, Vec<Option<TripleIntersection>>)| {
            let first = plan.range(b).start;
            out.writer().write_rows_u8(sid, first, &s.data)?;
            out.commit(b)?;
            for (i, dd) in d.into_iter().enumerate() {
                areas[first + i] = area(s.image(i));
                details[first + i] = dd;
            }
            Ok(())
        },
    )?;
    let stats = BlockStats::finished(&plan, out.resumed_blocks, &todo, compute_ns);
    out.finish()?;
    Ok(SupportSummary {
        areas,
        details,
        stats,
    })
}

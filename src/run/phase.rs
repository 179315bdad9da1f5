//! `phase` block by block: [`crate::phasing::phase`] on windows of patterns, written as
//! [`crate::phasing::Reconstruction::write_cxi`] writes the whole run.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{shifted, BlockRun, BlockStats};
use crate::backend::{Backend, Progress};
use crate::io::blocks::{pipeline, window, PatternBlocks};
use crate::io::stream::{Dtype, StreamId};
use crate::phasing::program::Program;
use crate::phasing::schedule::Schedule;
use crate::phasing::{self, InitSpec, PhaseConfig, Reconstruction, SupportSpec};
use crate::{Error, Result};

/// What a block-wise phasing run reports (per pattern: every block, resumed ones too).
#[derive(Clone, Debug)]
pub struct PhaseSummary {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub iterations: u64,
    /// Final Fourier error of the best start, per pattern.
    pub final_fourier_error: Vec<f32>,
    pub best_start: Vec<usize>,
    pub stats: BlockStats,
}

struct Ids {
    data: StreamId,
    support: StreamId,
    fourier: StreamId,
    real: StreamId,
    final_best: StreamId,
    best_start: StreamId,
    all_fourier: StreamId,
    all_final: StreamId,
    keep: Option<(StreamId, StreamId)>,
}

/// Phase every pattern of `input` with `cfg` (its `seed` is the whole file's; a given
/// support or starting object holds one image or one per pattern of the file), writing
/// to `run.dest` block by block. `config` is the configuration stored in the file.
/// `progress` counts pattern-iterations (of the blocks run, not the resumed ones).
pub fn phase_blocks(
    backend: &dyn Backend,
    input: &PatternBlocks,
    cfg: &PhaseConfig,
    config: &serde_json::Value,
    run: &BlockRun<'_>,
    progress: Progress<'_>,
) -> Result<PhaseSummary> {
    let (n, h, w) = (input.n, input.h, input.w);
    let k = cfg.starts;
    if k == 0 {
        return Err(Error::Config("--starts must be at least 1".into()));
    }
    let program = Program::compile(
        &Schedule::parse(&cfg.schedule)?,
        cfg.beta,
        &cfg.shrinkwrap.clone().unwrap_or_default(),
        cfg.recording,
    )?;
    let l = program.records;
    // the per-block configuration: everything but the per-pattern images, cloned per block
    let mut template = cfg.clone();
    let support = std::mem::replace(&mut template.support, SupportSpec::Circle { radius: 1.0 });
    let init = std::mem::replace(&mut template.init, InitSpec::Random);
    let (plan, mut out, ids) = run.begin(n, |f| {
        f.i64("cxi_version", &[1], &[150])?;
        f.attr_string("entry_1", "NX_class", "NXentry")?;
        let data = f.stream("entry_1/image_1/data", Dtype::Complex64, &[n, h, w])?;
        f.attr_string("entry_1/image_1", "NX_class", "NXdata")?;
        f.attr_string(
            "entry_1/image_1/data",
            "description",
            "best start per pattern (lowest final Fourier error), centred at (H/2, W/2)",
        )?;
        let support = f.stream("entry_1/image_1/support", Dtype::U8, &[n, h, w])?;
        let fourier = f.stream("entry_1/image_1/fourier_error", Dtype::F32, &[n, l])?;
        let real = f.stream("entry_1/image_1/real_space_error", Dtype::F32, &[n, l])?;
        let final_best = f.stream("entry_1/image_1/final_fourier_error", Dtype::F32, &[n])?;
        let best_start = f.stream("entry_1/image_1/best_start", Dtype::I64, &[n])?;
        let all_fourier = f.stream("entry_1/image_1/all_fourier_error", Dtype::F32, &[n, k, l])?;
        let all_final = f.stream(
            "entry_1/image_1/all_final_fourier_error",
            Dtype::F32,
            &[n, k],
        )?;
        f.string(
            "entry_1/image_1/process_1/configuration",
            &serde_json::to_string_pretty(config).unwrap_or_default(),
        )?;
        f.string("entry_1/image_1/process_1/program", "cdiphase")?;
        f.string(
            "entry_1/image_1/process_1/version",
            env!("CARGO_PKG_VERSION"),
        )?;
        f.attr_string("entry_1/image_1", "configuration", &config.to_string())?;
        let keep = if cfg.keep_all {
            let o = f.stream("entry_1/image_2/data", Dtype::Complex64, &[n, k, h, w])?;
            let s = f.stream("entry_1/image_2/support", Dtype::U8, &[n, k, h, w])?;
            f.attr_string(
                "entry_1/image_2",
                "description",
                "every start, pattern-major (N,K,H,W)",
            )?;
            Some((o, s))
        } else {
            None
        };
        Ok(Ids {
            data,
            support,
            fourier,
            real,
            final_best,
            best_start,
            all_fourier,
            all_final,
            keep,
        })
    })?;
    let mut final_err = vec![0f32; n];
    let mut best = vec![0usize; n];
    // blocks finished by an earlier run: their summary values from the partial file
    for b in 0..plan.count() {
        if out.is_done(b) {
            let r = plan.range(b);
            let fe = out
                .writer()
                .read_rows_raw(ids.final_best, r.start, r.len())?;
            let bs = out
                .writer()
                .read_rows_raw(ids.best_start, r.start, r.len())?;
            for (i, p) in r.enumerate() {
                final_err[p] = f32::from_le_bytes(fe[4 * i..4 * i + 4].try_into().unwrap());
                best[p] =
                    i64::from_le_bytes(bs[8 * i..8 * i + 8].try_into().unwrap()).max(0) as usize;
            }
        }
    }
    let todo = out.todo();
    let compute_ns = AtomicU64::new(0);
    pipeline(
        &todo,
        |b| input.read(plan.range(b)),
        |b, patterns| {
            let r = plan.range(b);
            let mut c = template.clone();
            c.seed = crate::rng::offset_seed(cfg.seed, r.start);
            c.support = match &support {
                SupportSpec::Given(s) => SupportSpec::Given(window(s, r.clone())),
                other => other.clone(),
            };
            c.init = match &init {
                InitSpec::Given(o) => InitSpec::Given(window(o, r.clone())),
                InitSpec::Random => InitSpec::Random,
            };
            let rec = phasing::phase(backend, &patterns, &c, progress)
                .map_err(|e| shifted(e, r.start))?;
            // the backend's run, as `Reconstruction::seconds` of a whole-file run counts it
            // (preparation and I/O not included)
            compute_ns.fetch_add((rec.seconds * 1e9) as u64, Ordering::Relaxed);
            Ok(rec)
        },
        |b, rec: Reconstruction| {
            let first = plan.range(b).start;
            let f = out.writer();
            f.write_rows_complex64(ids.data, first, &rec.objects.data)?;
            f.write_rows_u8(ids.support, first, &rec.supports.data)?;
            f.write_rows_f32(ids.fourier, first, &rec.best_histories(&rec.fourier_error))?;
            f.write_rows_f32(ids.real, first, &rec.best_histories(&rec.real_error))?;
            let fe = rec.best_final_errors();
            f.write_rows_f32(ids.final_best, first, &fe)?;
            let bs: Vec<u8> = rec
                .best_start
                .iter()
                .flat_map(|&s| (s as i64).to_le_bytes())
                .collect();
            f.write_rows_raw(ids.best_start, first, &bs)?;
            f.write_rows_f32(ids.all_fourier, first, &rec.fourier_error)?;
            f.write_rows_f32(ids.all_final, first, &rec.final_fourier_error)?;
            if let (Some((io, is)), Some(o), Some(s)) =
                (ids.keep, &rec.all_objects, &rec.all_supports)
            {
                f.write_rows_complex64(io, first, o)?;
                f.write_rows_u8(is, first, s)?;
            }
            out.commit(b)?;
            final_err[first..first + fe.len()].copy_from_slice(&fe);
            best[first..first + fe.len()].copy_from_slice(&rec.best_start);
            Ok(())
        },
    )?;
    let stats = BlockStats {
        blocks: plan.count(),
        resumed_blocks: out.resumed_blocks,
        computed_patterns: todo.iter().map(|&b| plan.range(b).len()).sum(),
        compute_seconds: compute_ns.into_inner() as f64 * 1e-9,
    };
    out.finish()?;
    Ok(PhaseSummary {
        n,
        h,
        w,
        iterations: program.iterations,
        final_fourier_error: final_err,
        best_start: best,
        stats,
    })
}

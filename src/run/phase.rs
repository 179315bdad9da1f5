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
    /// Per start (N*K, every block): shrinkwraps refused by the support guard, and the
    /// final threshold factors.
    pub guard_events: Vec<u32>,
    pub threshold_factor: Vec<f32>,
    pub stats: BlockStats,
}

impl PhaseSummary {
    /// One line on the support guard's work over the whole file, when it refused any.
    pub fn guard_summary(&self) -> Option<String> {
        phasing::guard_summary(&self.guard_events, &self.threshold_factor)
    }
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
    merits: MeritIds,
    keep: Option<(StreamId, StreamId)>,
}

/// The Poisson figures of merit, as [`Reconstruction::write_cxi`] writes them.
struct MeritIds {
    /// (best-start history (N,L), every start's (N,K,L)) of llk, free_llk, outside_energy.
    hist: [(StreamId, StreamId); 3],
    /// (best start (N), every start (N,K)) of final llk, free_llk, support_fraction.
    fin: [(StreamId, StreamId); 3],
    threshold_factor: StreamId,
    guard_events: StreamId,
}

/// The `i64` rows `first..first + k` of `id` read back from the partial output.
fn read_i64(
    f: &mut crate::io::stream::StreamWriter,
    id: StreamId,
    first: usize,
    k: usize,
) -> Result<Vec<i64>> {
    let raw = f.read_rows_raw(id, first, k)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

/// The `f32` rows `first..first + k` of `id` read back from the partial output.
fn read_f32(
    f: &mut crate::io::stream::StreamWriter,
    id: StreamId,
    first: usize,
    k: usize,
) -> Result<Vec<f32>> {
    let raw = f.read_rows_raw(id, first, k)?;
    Ok(raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect())
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
        let mut hist = Vec::new();
        for (name, what) in [
            ("llk", Some(phasing::LLK_DESCRIPTION)),
            ("free_llk", Some(phasing::FREE_LLK_DESCRIPTION)),
            ("outside_energy", None),
        ] {
            let best = f.stream(&format!("entry_1/image_1/{name}"), Dtype::F32, &[n, l])?;
            if let Some(what) = what {
                f.attr_string(&format!("entry_1/image_1/{name}"), "description", what)?;
            }
            let all = f.stream(
                &format!("entry_1/image_1/all_{name}"),
                Dtype::F32,
                &[n, k, l],
            )?;
            hist.push((best, all));
        }
        let mut fin = Vec::new();
        for name in ["llk", "free_llk", "support_fraction"] {
            let best = f.stream(&format!("entry_1/image_1/final_{name}"), Dtype::F32, &[n])?;
            let all = f.stream(
                &format!("entry_1/image_1/all_final_{name}"),
                Dtype::F32,
                &[n, k],
            )?;
            fin.push((best, all));
        }
        let merits = MeritIds {
            hist: [hist[0], hist[1], hist[2]],
            fin: [fin[0], fin[1], fin[2]],
            threshold_factor: f.stream(
                "entry_1/image_1/all_threshold_factor",
                Dtype::F32,
                &[n, k],
            )?,
            guard_events: f.stream(
                "entry_1/image_1/all_support_guard_events",
                Dtype::I64,
                &[n, k],
            )?,
        };
        f.string(
            "entry_1/image_1/selection",
            &serde_json::to_string(&cfg.selection).unwrap_or_default(),
        )?;
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
            merits,
            keep,
        })
    })?;
    let mut final_err = vec![0f32; n];
    let mut best = vec![0usize; n];
    let mut guard_events = vec![0u32; n * k];
    let mut threshold_factor = vec![1f32; n * k];
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
            let ev = read_i64(out.writer(), ids.merits.guard_events, r.start, r.len())?;
            let tf = read_f32(out.writer(), ids.merits.threshold_factor, r.start, r.len())?;
            for (j, (e, t)) in ev.iter().zip(&tf).enumerate() {
                guard_events[r.start * k + j] = (*e).clamp(0, u32::MAX as i64) as u32;
                threshold_factor[r.start * k + j] = *t;
            }
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
            let m = rec.merits.as_ref().ok_or_else(|| {
                Error::Config("a phasing block returned no figures of merit".into())
            })?;
            let outside: Vec<f32> = rec.real_error.iter().map(|r| r * r).collect();
            for ((best_id, all_id), v) in
                ids.merits.hist.iter().zip([&m.llk, &m.free_llk, &outside])
            {
                f.write_rows_f32(*best_id, first, &rec.best_histories(v))?;
                f.write_rows_f32(*all_id, first, v)?;
            }
            for ((best_id, all_id), v) in ids.merits.fin.iter().zip([
                &m.final_llk,
                &m.final_free_llk,
                &m.final_support_fraction,
            ]) {
                f.write_rows_f32(*best_id, first, &rec.best_of(v))?;
                f.write_rows_f32(*all_id, first, v)?;
            }
            f.write_rows_f32(ids.merits.threshold_factor, first, &m.threshold_factor)?;
            let ev: Vec<u8> = m
                .guard_events
                .iter()
                .flat_map(|&e| (e as i64).to_le_bytes())
                .collect();
            f.write_rows_raw(ids.merits.guard_events, first, &ev)?;
            if let (Some((io, is)), Some(o), Some(s)) =
                (ids.keep, &rec.all_objects, &rec.all_supports)
            {
                f.write_rows_complex64(io, first, o)?;
                f.write_rows_u8(is, first, s)?;
            }
            out.commit(b)?;
            final_err[first..first + fe.len()].copy_from_slice(&fe);
            best[first..first + fe.len()].copy_from_slice(&rec.best_start);
            let items = first * k..first * k + m.guard_events.len();
            guard_events[items.clone()].copy_from_slice(&m.guard_events);
            threshold_factor[items].copy_from_slice(&m.threshold_factor);
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
        guard_events,
        threshold_factor,
        stats,
    })
}

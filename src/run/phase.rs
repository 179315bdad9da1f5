//! `phase` block by block: [`crate::phasing::phase`] on windows of patterns, written as
//! [`crate::phasing::Reconstruction::write_cxi`] writes the whole run.

use std::sync::atomic::{AtomicU64, Ordering};

use super::dist::{self, Rows};
use super::{shifted, BlockRun, BlockStats};
use crate::array::Complex32;
use crate::backend::{Backend, Progress};
use crate::io::blocks::{window, BlockPlan, ImageBlocks, PatternBlocks};
use crate::io::stream::{Dtype, StreamId};
use crate::phasing::program::Program;
use crate::phasing::schedule::Schedule;
use crate::phasing::{self, InitSpec, PhaseConfig, SupportSpec};
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
    /// Per start (N*K, every block; empty on an MPI worker): shrinkwraps refused by the
    /// support guard, and the final threshold factors.
    pub guard_events: Vec<u32>,
    pub threshold_factor: Vec<f32>,
    /// Per start (N*K, every block; empty on an MPI worker): restarts (`--restart`).
    pub restarts: Vec<u32>,
    /// Starts per pattern.
    pub starts: usize,
    pub stats: BlockStats,
}

impl PhaseSummary {
    /// One line on the support guard's work over the whole file, when it refused any.
    pub fn guard_summary(&self) -> Option<String> {
        phasing::guard_summary(&self.guard_events, &self.threshold_factor)
    }

    /// One line on the restarts over the whole file, when there were any.
    pub fn restart_summary(&self) -> Option<String> {
        phasing::population::restart_summary(&self.restarts, self.starts)
    }

    /// Restarts per pattern.
    pub fn restarts_per_pattern(&self) -> Vec<i64> {
        let v: Vec<i64> = self.restarts.iter().map(|&r| r as i64).collect();
        phasing::per_pattern_sum(&v, self.starts)
    }
}

/// Datasets of the figures of merit, in the order of their rows after `all_final`:
/// (name, shape kind: 0 = best-start history (N,L), 1 = every start's (N,K,L), 2 = best
/// start (N), 3 = every start (N,K)), as [`crate::phasing::Reconstruction::write_cxi`]
/// writes them.
const MERIT_ROWS: [(&str, u8); 12] = [
    ("llk", 0),
    ("all_llk", 1),
    ("free_llk", 0),
    ("all_free_llk", 1),
    ("outside_energy", 0),
    ("all_outside_energy", 1),
    ("final_llk", 2),
    ("all_final_llk", 3),
    ("final_free_llk", 2),
    ("all_final_free_llk", 3),
    ("final_support_fraction", 2),
    ("all_final_support_fraction", 3),
];

/// The values of little-endian `f32` / `i64` rows.
fn f32s(b: &[u8]) -> impl Iterator<Item = f32> + '_ {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
}
fn i64s(b: &[u8]) -> impl Iterator<Item = i64> + '_ {
    b.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
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
    /// [`MERIT_ROWS`], then the threshold factors (N,K) f32 and the guard events (N,K) i64.
    merits: Vec<StreamId>,
    /// `restarts` (N) and `all_restarts` (N,K) i64; with `--population` `all_replaced`
    /// (N,K) i64 and `generation_best` (N,G) f32; with `--cull` `all_culled_at` (N,K) i64;
    /// with `--merge` the `image_3` datasets
    /// (data, support, modes, mode_weights, starts, final_fourier_error, final_llk).
    extras: Vec<StreamId>,
    keep: Option<(StreamId, StreamId)>,
}

/// Starting supports and objects given in files of one image per pattern, read with each
/// block's patterns (a window of the file, in the reader stage; an MPI worker reads its own
/// blocks' windows) instead of held whole in a [`PhaseConfig`]: memory flat in N.
#[derive(Default)]
pub struct PerPattern {
    /// When set, every block's starting supports are its window of this file, in place
    /// of `cfg.support`.
    pub support: Option<ImageBlocks<u8>>,
    /// When set, every block's starting objects are its window of this file, in place of
    /// `cfg.init`.
    pub init: Option<ImageBlocks<Complex32>>,
}

/// Phase every pattern of `input` with `cfg` (its `seed` is the whole file's; a given
/// support or starting object holds one image or one per pattern of the file, or comes
/// from `per`), writing to `run.dest` block by block. `config` is the configuration
/// stored in the file. `progress` counts pattern-iterations (of the blocks run, not the
/// resumed ones).
#[allow(clippy::too_many_arguments)]
pub fn phase_blocks(
    backend: &dyn Backend,
    input: &PatternBlocks,
    cfg: &PhaseConfig,
    per: &PerPattern,
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
    phasing::check_strategy(&cfg.strategy, k, program.iterations)?;
    let generations = cfg
        .strategy
        .population
        .map_or(0, |p| p.generations as usize);
    let (merge_count, merge_modes) = (
        cfg.strategy.merge.min(k),
        phasing::population::MERGE_MODES.min(cfg.strategy.merge.min(k)),
    );
    // the per-block configuration: everything but the per-pattern images, cloned per block
    let mut template = cfg.clone();
    let support = std::mem::replace(&mut template.support, SupportSpec::Circle { radius: 1.0 });
    let init = std::mem::replace(&mut template.init, InitSpec::Random);
    let iterations = program.iterations;
    let compute_ns = AtomicU64::new(0);
    let plan = BlockPlan::new(n, run.block)?;
    for (what, hw) in [
        ("--support", per.support.as_ref().map(|s| (s.n, s.h, s.w))),
        ("--init", per.init.as_ref().map(|o| (o.n, o.h, o.w))),
    ] {
        if let Some((sn, sh, sw)) = hw {
            if (sh, sw) != (h, w) || (sn != 1 && sn != n) {
                return Err(Error::Shape {
                    what: what.into(),
                    expected: format!("({n}, {h}, {w}) or ({h}, {w})"),
                    found: vec![sn, sh, sw],
                });
            }
        }
    }
    // the block's patterns, with its windows of the per-pattern files
    type Input = (
        crate::io::PatternSet,
        Option<crate::array::Stack<u8>>,
        Option<crate::array::Stack<Complex32>>,
    );
    let read = |b: usize| -> Result<Input> {
        let r = plan.range(b);
        let s = per
            .support
            .as_ref()
            .map(|s| s.read(r.clone()))
            .transpose()?;
        let o = per.init.as_ref().map(|o| o.read(r.clone())).transpose()?;
        Ok((input.read(r)?, s, o))
    };
    // a block's rows, one buffer per streamed dataset in the order they are declared below
    let compute = |b: usize, (patterns, given_support, given_init): Input| -> Result<Rows> {
        let r = plan.range(b);
        let mut c = template.clone();
        c.seed = crate::rng::offset_seed(cfg.seed, r.start);
        c.support = match (given_support, &support) {
            (Some(s), _) => SupportSpec::Given(s),
            (None, SupportSpec::Given(s)) => SupportSpec::Given(window(s, r.clone())),
            (None, other) => other.clone(),
        };
        c.init = match (given_init, &init) {
            (Some(o), _) => InitSpec::Given(o),
            (None, InitSpec::Given(o)) => InitSpec::Given(window(o, r.clone())),
            (None, InitSpec::Random) => InitSpec::Random,
        };
        let rec =
            phasing::phase(backend, &patterns, &c, progress).map_err(|e| shifted(e, r.start))?;
        // the backend's run, as `Reconstruction::seconds` of a whole-file run counts it
        // (preparation and I/O not included)
        compute_ns.fetch_add((rec.seconds * 1e9) as u64, Ordering::Relaxed);
        let bs: Vec<u8> = rec
            .best_start
            .iter()
            .flat_map(|&s| (s as i64).to_le_bytes())
            .collect();
        let mut rows = vec![
            dist::c64_bytes(&rec.objects.data),
            rec.supports.data.clone(),
            dist::f32_bytes(&rec.best_histories(&rec.fourier_error)),
            dist::f32_bytes(&rec.best_histories(&rec.real_error)),
            dist::f32_bytes(&rec.best_final_errors()),
            bs,
            dist::f32_bytes(&rec.fourier_error),
            dist::f32_bytes(&rec.final_fourier_error),
        ];
        let m = rec
            .merits
            .as_ref()
            .ok_or_else(|| Error::Config("a phasing block returned no figures of merit".into()))?;
        let outside: Vec<f32> = rec.real_error.iter().map(|r| r * r).collect();
        for v in [&m.llk, &m.free_llk, &outside] {
            rows.push(dist::f32_bytes(&rec.best_histories(v)));
            rows.push(dist::f32_bytes(v));
        }
        for v in [&m.final_llk, &m.final_free_llk, &m.final_support_fraction] {
            rows.push(dist::f32_bytes(&rec.best_of(v)));
            rows.push(dist::f32_bytes(v));
        }
        rows.push(dist::f32_bytes(&m.threshold_factor));
        rows.push(
            m.guard_events
                .iter()
                .flat_map(|&e| (e as i64).to_le_bytes())
                .collect(),
        );
        let i64_bytes = |v: &[i64]| -> Vec<u8> { v.iter().flat_map(|e| e.to_le_bytes()).collect() };
        let rs: Vec<i64> = m.restarts.iter().map(|&r| r as i64).collect();
        rows.push(i64_bytes(&phasing::per_pattern_sum(&rs, k)));
        rows.push(i64_bytes(&rs));
        if cfg.strategy.population.is_some() {
            let rp: Vec<i64> = m
                .replaced
                .as_ref()
                .map(|r| r.iter().map(|&v| v as i64).collect())
                .unwrap_or_else(|| vec![0; rs.len()]);
            rows.push(i64_bytes(&rp));
            let gb = m
                .generation_best
                .as_ref()
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| vec![f32::NAN; rec.n * generations]);
            rows.push(dist::f32_bytes(&gb));
        }
        if cfg.strategy.cull.is_some() {
            let c: Vec<i64> = m.culled_at.iter().map(|&v| v as i64).collect();
            rows.push(i64_bytes(&c));
        }
        if cfg.strategy.merge > 0 {
            let mg = m
                .merged
                .as_ref()
                .ok_or_else(|| Error::Config("a phasing block returned no merge".into()))?;
            rows.push(dist::c64_bytes(&mg.objects));
            rows.push(mg.supports.clone());
            rows.push(dist::c64_bytes(&mg.mode_images));
            rows.push(dist::f32_bytes(&mg.weights));
            rows.push(i64_bytes(&mg.starts));
            rows.push(dist::f32_bytes(&mg.fourier_error));
            rows.push(dist::f32_bytes(&mg.llk));
        }
        if let (true, Some(o), Some(s)) = (cfg.keep_all, &rec.all_objects, &rec.all_supports) {
            rows.push(dist::c64_bytes(o));
            rows.push(s.clone());
        }
        Ok(rows)
    };
    if dist::is_worker() {
        // an MPI worker: rank 0 opens, writes and reports the output
        dist::work(read, compute)?;
        return Ok(PhaseSummary {
            n,
            h,
            w,
            iterations,
            final_fourier_error: Vec::new(),
            best_start: Vec::new(),
            guard_events: Vec::new(),
            threshold_factor: Vec::new(),
            restarts: Vec::new(),
            starts: k,
            stats: BlockStats::worker(&plan, compute_ns),
        });
    }
    let (_, mut out, ids) = run.begin(n, |f| {
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
        let mut merits = Vec::new();
        for (name, kind) in MERIT_ROWS {
            let shape: &[usize] = match kind {
                0 => &[n, l],
                1 => &[n, k, l],
                2 => &[n],
                _ => &[n, k],
            };
            merits.push(f.stream(&format!("entry_1/image_1/{name}"), Dtype::F32, shape)?);
        }
        f.attr_string(
            "entry_1/image_1/llk",
            "description",
            phasing::LLK_DESCRIPTION,
        )?;
        f.attr_string(
            "entry_1/image_1/free_llk",
            "description",
            phasing::FREE_LLK_DESCRIPTION,
        )?;
        merits.push(f.stream("entry_1/image_1/all_threshold_factor", Dtype::F32, &[n, k])?);
        merits.push(f.stream(
            "entry_1/image_1/all_support_guard_events",
            Dtype::I64,
            &[n, k],
        )?);
        f.string(
            "entry_1/image_1/selection",
            &serde_json::to_string(&cfg.selection).unwrap_or_default(),
        )?;
        let mut extras = vec![
            f.stream("entry_1/image_1/restarts", Dtype::I64, &[n])?,
            f.stream("entry_1/image_1/all_restarts", Dtype::I64, &[n, k])?,
        ];
        if cfg.strategy.population.is_some() {
            extras.push(f.stream("entry_1/image_1/all_replaced", Dtype::I64, &[n, k])?);
            extras.push(f.stream(
                "entry_1/image_1/generation_best",
                Dtype::F32,
                &[n, generations],
            )?);
        }
        if cfg.strategy.cull.is_some() {
            extras.push(f.stream("entry_1/image_1/all_culled_at", Dtype::I64, &[n, k])?);
        }
        if cfg.strategy.merge > 0 {
            let (c, md) = (merge_count, merge_modes);
            extras.push(f.stream("entry_1/image_3/data", Dtype::Complex64, &[n, h, w])?);
            f.attr_string("entry_1/image_3", "NX_class", "NXdata")?;
            f.attr_string(
                "entry_1/image_3",
                "description",
                phasing::MERGED_DESCRIPTION,
            )?;
            extras.push(f.stream("entry_1/image_3/support", Dtype::U8, &[n, h, w])?);
            extras.push(f.stream("entry_1/image_3/modes", Dtype::Complex64, &[n, md, h, w])?);
            extras.push(f.stream("entry_1/image_3/mode_weights", Dtype::F32, &[n, md])?);
            extras.push(f.stream("entry_1/image_3/starts", Dtype::I64, &[n, c])?);
            extras.push(f.stream("entry_1/image_3/final_fourier_error", Dtype::F32, &[n])?);
            extras.push(f.stream("entry_1/image_3/final_llk", Dtype::F32, &[n])?);
        }
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
            extras,
            keep,
        })
    })?;
    let mut final_err = vec![0f32; n];
    let mut best = vec![0usize; n];
    let mut guard_events = vec![0u32; n * k];
    let mut threshold_factor = vec![1f32; n * k];
    let mut restarts = vec![0u32; n * k];
    let all_restarts_id = ids.extras[1];
    let (tf_id, ev_id) = (
        ids.merits[MERIT_ROWS.len()],
        ids.merits[MERIT_ROWS.len() + 1],
    );
    // blocks finished by an earlier run: their summary values from the partial file
    for b in 0..plan.count() {
        if out.is_done(b) {
            let r = plan.range(b);
            let tf = out.writer().read_rows_raw(tf_id, r.start, r.len())?;
            let ev = out.writer().read_rows_raw(ev_id, r.start, r.len())?;
            let items = r.start * k..r.end * k;
            for (d, v) in threshold_factor[items.clone()].iter_mut().zip(f32s(&tf)) {
                *d = v;
            }
            for (d, v) in guard_events[items.clone()].iter_mut().zip(i64s(&ev)) {
                *d = v.clamp(0, u32::MAX as i64) as u32;
            }
            let rs = out
                .writer()
                .read_rows_raw(all_restarts_id, r.start, r.len())?;
            for (d, v) in restarts[items].iter_mut().zip(i64s(&rs)) {
                *d = v.clamp(0, u32::MAX as i64) as u32;
            }
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
    let ids_in_order = {
        let mut v = vec![
            ids.data,
            ids.support,
            ids.fourier,
            ids.real,
            ids.final_best,
            ids.best_start,
            ids.all_fourier,
            ids.all_final,
        ];
        v.extend(&ids.merits);
        v.extend(&ids.extras);
        if let Some((o, s)) = ids.keep {
            v.extend([o, s]);
        }
        v
    };
    let master = dist::is_master();
    dist::run_blocks(&todo, read, compute, |b, rows: Rows| {
        let r = plan.range(b);
        if rows.len() != ids_in_order.len() {
            return Err(Error::invalid(
                format!("block {b}"),
                format!(
                    "{} datasets of rows, expected {}",
                    rows.len(),
                    ids_in_order.len()
                ),
            ));
        }
        let f = out.writer();
        for (&id, bytes) in ids_in_order.iter().zip(&rows) {
            f.write_rows_raw(id, r.start, bytes)?;
        }
        out.commit(b)?;
        let (fe, bs) = (&rows[4], &rows[5]);
        let (tf, ev) = (&rows[8 + MERIT_ROWS.len()], &rows[9 + MERIT_ROWS.len()]);
        let items = r.start * k..r.end * k;
        for (d, v) in threshold_factor[items.clone()].iter_mut().zip(f32s(tf)) {
            *d = v;
        }
        for (d, v) in guard_events[items.clone()].iter_mut().zip(i64s(ev)) {
            *d = v.clamp(0, u32::MAX as i64) as u32;
        }
        for (d, v) in restarts[items]
            .iter_mut()
            .zip(i64s(&rows[11 + MERIT_ROWS.len()]))
        {
            *d = v.clamp(0, u32::MAX as i64) as u32;
        }
        for (i, p) in r.clone().enumerate() {
            final_err[p] = f32::from_le_bytes(fe[4 * i..4 * i + 4].try_into().unwrap());
            best[p] = i64::from_le_bytes(bs[8 * i..8 * i + 8].try_into().unwrap()).max(0) as usize;
        }
        if master {
            // the workers' progress, as it arrives
            progress((r.len() * k) as u64 * iterations);
        }
        Ok(())
    })?;
    let stats = BlockStats::finished(&plan, out.resumed_blocks, &todo, compute_ns);
    out.finish()?;
    Ok(PhaseSummary {
        n,
        h,
        w,
        iterations,
        final_fourier_error: final_err,
        best_start: best,
        guard_events,
        threshold_factor,
        restarts,
        starts: k,
        stats,
    })
}

//! `predict` block by block: the network loaded once, [`crate::nn::predict::predict_with`]
//! on windows of patterns, written as [`crate::nn::predict::Prediction::write_cxi`] writes
//! the whole run.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::dist::{self, Rows};
use super::{shifted, BlockRun, BlockStats};
use crate::backend::{Backend, NetOptions};
use crate::io::blocks::{BlockPlan, PatternBlocks};
use crate::io::stream::Dtype;
use crate::io::PatternSet;
use crate::nn::model::Model;
use crate::nn::predict::{check_measured, predict_with};
use crate::{Error, Result};

/// Run `model` over every pattern of `input`, `batch` patterns per forward (the block size
/// is rounded up to a whole number of batches: a network's output depends, by rounding, on
/// the batch it ran in, and so every batch holds what it holds in a whole-file run), writing to `run.dest` block by block. `progress` gets the patterns done (resumed
/// ones included).
#[allow(clippy::too_many_arguments)]
pub fn predict_blocks(
    backend: &dyn Backend,
    model: &Model,
    input: &PatternBlocks,
    batch: usize,
    threshold: f32,
    opts: NetOptions,
    model_label: &str,
    description: &str,
    run: &BlockRun<'_>,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<BlockStats> {
    if batch == 0 {
        return Err(Error::Config("--batch must be at least 1".into()));
    }
    let n = input.n;
    // the in-memory batches (the network's output depends on the batch it runs in, by
    // rounding): blocks are whole batches, so that every batch holds the patterns it holds
    // in a run over the whole file
    let batch = batch.min(n.max(1));
    let mut run = run.clone();
    run.block = run.block.div_ceil(batch) * batch;
    model.spec.check_memory(batch)?;
    let mut net = backend.load_network(model, batch, opts)?;
    let os = net.output_shape().to_vec();
    if os.len() != 3 {
        return Err(Error::Shape {
            what: format!("model '{}' output", model.spec.name),
            expected: "(H, W, 1) for one image per pattern".into(),
            found: os,
        });
    }
    let (oh, ow) = (os[0], os[1]);
    let plan = BlockPlan::new(n, run.block)?;
    let compute_ns = AtomicU64::new(0);
    // patterns done (resumed ones included), for `progress`
    let done = AtomicUsize::new(0);
    let read = |b: usize| input.read(plan.range(b));
    // a block's rows: the network output, then the support
    let mut compute = |b: usize, p: PatternSet| -> Result<Rows> {
        let r = plan.range(b);
        let t = std::time::Instant::now();
        check_measured(&p.intensities, p.mask.as_ref()).map_err(|e| shifted(e, r.start))?;
        let before = done.load(Ordering::Relaxed);
        let pred = predict_with(
            &model.spec,
            &os,
            &p.intensities,
            p.mask.as_ref(),
            batch,
            threshold,
            &mut |x, k| net.forward(x, k),
            &|d| progress(before + d),
        )?;
        done.fetch_add(r.len(), Ordering::Relaxed);
        compute_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(vec![dist::f32_bytes(&pred.output), pred.support])
    };
    if dist::is_worker() {
        // an MPI worker: rank 0 opens, writes and reports the output
        dist::work(read, &mut compute)?;
        return Ok(BlockStats::worker(&plan, compute_ns));
    }
    let (_, mut out, (data, support)) = run.begin(n, |f| {
        let data = f.stream("entry_1/image_1/data", Dtype::F32, &[n, oh, ow])?;
        let support = f.stream("entry_1/image_1/support", Dtype::U8, &[n, oh, ow])?;
        f.string("entry_1/image_1/process_1/model", model_label)?;
        f.string("entry_1/image_1/process_1/description", description)?;
        Ok((data, support))
    })?;
    let todo = out.todo();
    let mut resumed = 0;
    for b in 0..plan.count() {
        if out.is_done(b) {
            resumed += plan.range(b).len();
        }
    }
    done.store(resumed, Ordering::Relaxed);
    progress(resumed);
    let master = dist::is_master();
    let mut written = resumed;
    dist::run_blocks(&todo, read, &mut compute, |b, rows: Rows| {
        let r = plan.range(b);
        let [output, sup]: [Vec<u8>; 2] = rows.try_into().map_err(|rows: Rows| {
            Error::invalid(
                format!("block {b}"),
                format!("{} datasets of rows, expected 2", rows.len()),
            )
        })?;
        let f = out.writer();
        f.write_rows_raw(data, r.start, &output)?;
        f.write_rows_raw(support, r.start, &sup)?;
        out.commit(b)?;
        written += r.len();
        if master {
            // the workers' progress, as it arrives
            progress(written);
        }
        Ok(())
    })?;
    let stats = BlockStats::finished(&plan, out.resumed_blocks, &todo, compute_ns);
    out.finish()?;
    Ok(stats)
}

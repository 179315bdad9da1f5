//! `simulate` in one process or across MPI ranks (`mpirun -n N cdiphase simulate ...`).
//!
//! One process: blocks computed on this thread (in the pool) while the previous one is
//! written ([`crate::io::blocks::pipeline`]). Several ranks: rank 0 hands out blocks of
//! patterns ([`super::dist::serve`]) and writes the one output file; each worker prepares
//! the structures itself and computes the blocks it is given ([`Simulator::block`]). Both
//! write the layout of [`crate::simulate::simulate_to_cxi`] through a resumable writer
//! and its journal, as `phase` does (`--resume`). Pattern `i` depends on `i` and the
//! configuration alone (its orientation, particle and noise are seeded by `i`), so the data
//! are those of a one-process run, for every number of ranks and every block size.

use std::time::Instant;

use super::dist::{self, Rows};
use super::BlockRun;
use crate::simulate::diffraction::SimLayout;
use crate::simulate::{
    random_quaternion, SimConfig, SimMeta, SimTimings, Simulator, StreamReport, Structure,
};
use crate::{Error, Result};

/// Simulate `cfg.count` patterns of `structures` into `run.dest`, `run.block` patterns at
/// a time, in `pool`, resumable as `phase` is: the output is written to the partial file
/// with its journal ([`crate::io::journal`]), and `run.resume` continues an interrupted
/// run of the same configuration and structures (the blocks it finished are kept; the
/// names and pixel sizes of their patterns, written at the end, are recomputed without
/// simulating them). `progress` gets the patterns finished (on rank 0: as workers return
/// them). On an MPI worker: computes the blocks rank 0 hands out and returns `None` (rank
/// 0 writes and reports).
pub fn simulate_blocks(
    structures: &[Structure],
    cfg: &SimConfig,
    run: &BlockRun<'_>,
    pool: &rayon::ThreadPool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Option<StreamReport>> {
    let t0 = Instant::now();
    let sim = pool.install(|| Simulator::new(structures, cfg))?;
    let (h, w) = cfg.size;
    let hw = h * w;
    let n = cfg.count;
    let plan = crate::io::blocks::BlockPlan::new(n, run.block)?;
    // a block's rows: intensities, density, support, pixel sizes, names, CPU seconds
    let compute = |b: usize, ()| -> Result<Rows> {
        let r = plan.range(b);
        let before = sim.timings();
        let c = pool.install(|| sim.block(r.start, r.len(), &|_| {}))?;
        let after = sim.timings();
        let names = encode_names(&c.names);
        let pixel: Vec<u8> = c.pixel_a.iter().flat_map(|p| p.to_le_bytes()).collect();
        let cpu: Vec<u8> = [
            after.projection - before.projection,
            after.fft - before.fft,
            after.noise_mask - before.noise_mask,
        ]
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
        Ok(vec![
            dist::f32_bytes(&c.intensities),
            dist::f32_bytes(&c.density),
            c.support,
            pixel,
            names,
            cpu,
        ])
    };
    if dist::is_worker() {
        // every MPI call on this thread; the simulation in the pool
        dist::work(|_| Ok(()), compute)?;
        return Ok(None);
    }
    // one process, or rank 0
    pool.install(|| cfg.check_resources(run.dest, run.block))?;
    let (_, mut out, ids) = run.begin(n, |f| SimLayout::declare(f, n, h, w, cfg))?;
    let mut names = vec![String::new(); n];
    let mut pixel_a = vec![0f64; n];
    for b in (0..plan.count()).filter(|&b| out.is_done(b)) {
        let r = plan.range(b);
        let (nm, px) = pool.install(|| sim.labels(r.start, r.len()))?;
        names[r.clone()].clone_from_slice(&nm);
        pixel_a[r].copy_from_slice(&px);
    }
    let mut cpu = SimTimings::default();
    let mut write_seconds = 0.0;
    let todo = out.todo();
    dist::run_blocks(
        &todo,
        |_| Ok(()),
        compute,
        |b, rows: Rows| {
            let t = Instant::now();
            let r = plan.range(b);
            let m = r.len();
            let bad = |what: &str, got: usize, want: usize| {
                Error::invalid(
                    format!("block {b} (patterns {}..{})", r.start, r.end),
                    format!("{what}: {got} bytes of rows, expected {want}"),
                )
            };
            let [inten, dens, sup, pix, nm, secs]: [Vec<u8>; 6] =
                rows.try_into().map_err(|rows: Rows| {
                    Error::invalid(
                        format!("block {b}"),
                        format!("{} datasets of rows, expected 6", rows.len()),
                    )
                })?;
            for (what, got, want) in [
                ("intensities", inten.len(), 4 * m * hw),
                ("density", dens.len(), 4 * m * hw),
                ("support", sup.len(), m * hw),
                ("pixel sizes", pix.len(), 8 * m),
                ("timings", secs.len(), 24),
            ] {
                if got != want {
                    return Err(bad(what, got, want));
                }
            }
            ids.rows_raw(out.writer(), r.start, &inten, &dens, &sup)?;
            out.commit(b)?;
            let block_names = decode_names(&nm, m).ok_or_else(|| bad("names", nm.len(), m))?;
            for (i, (name, px)) in block_names.into_iter().zip(f64s(&pix)).enumerate() {
                names[r.start + i] = name;
                pixel_a[r.start + i] = px;
            }
            let s: Vec<f64> = f64s(&secs).collect();
            cpu.projection += s[0];
            cpu.fft += s[1];
            cpu.noise_mask += s[2];
            progress(m as u64);
            write_seconds += t.elapsed().as_secs_f64();
            Ok(())
        },
    )?;
    cpu.wall = t0.elapsed().as_secs_f64();
    let meta = SimMeta {
        mask: sim.mask(),
        orientation: (0..n).map(|i| random_quaternion(cfg.seed, i)).collect(),
        names,
        structure_index: (0..n).map(|i| sim.structure_index(i)).collect(),
        pixel_size_nm: pixel_a.iter().map(|a| a / 10.0).collect(),
        timings: cpu,
    };
    SimLayout::write_meta(out.writer(), &meta, cfg)?;
    out.finish()?;
    Ok(Some(StreamReport {
        timings: cpu,
        write_seconds,
        total_seconds: t0.elapsed().as_secs_f64(),
        patterns: n,
    }))
}

fn f64s(b: &[u8]) -> impl Iterator<Item = f64> + '_ {
    b.chunks_exact(8).map(|c| {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        f64::from_le_bytes(a)
    })
}

/// Names as (length u64, UTF-8 bytes) each.
fn encode_names(names: &[String]) -> Vec<u8> {
    let mut v = Vec::new();
    for s in names {
        v.extend_from_slice(&(s.len() as u64).to_le_bytes());
        v.extend_from_slice(s.as_bytes());
    }
    v
}

/// `m` names of [`encode_names`]; `None` when the bytes do not hold exactly that.
fn decode_names(b: &[u8], m: usize) -> Option<Vec<String>> {
    let mut at = 0usize;
    let mut out = Vec::with_capacity(m);
    for _ in 0..m {
        let len = u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?) as usize;
        at += 8;
        let end = at.checked_add(len)?;
        out.push(String::from_utf8(b.get(at..end)?.to_vec()).ok()?);
        at = end;
    }
    (at == b.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_round_trip_and_a_wrong_count_is_refused() {
        let names = vec!["1abc".to_string(), String::new(), "asm3-1abc+2xyz\n".into()];
        let b = super::encode_names(&names);
        assert_eq!(super::decode_names(&b, 3), Some(names));
        assert_eq!(super::decode_names(&b, 2), None);
        assert_eq!(super::decode_names(&b, 4), None);
        assert_eq!(super::decode_names(&b[..b.len() - 1], 3), None);
    }
}

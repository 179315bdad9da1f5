//! The device-resident segmented runner of the GPU backends (issue 19): `--population`,
//! `--restart`, `--cull` and the missing-centre switch with the run's state kept on the
//! device across the checkpoints.
//!
//! [`crate::phasing::population::run_segmented`] (the host path, any backend) runs every
//! segment as a fresh backend run, so on a GPU each checkpoint downloads and uploads every
//! item's iterate and support. Here one [`DevState`] holds them for the whole run; at a
//! checkpoint the device measures what the host decides on and the host moves only those
//! numbers and what it decides:
//! - after every segment: the support fraction (items floats), the guard events and
//!   threshold factors (items each), the segment's histories (items x its records);
//! - restarts (as the host path: since-restart guard refusals > R or the fraction outside
//!   the filter): the restarted items' new random objects and supports are made on the host
//!   (the same seeds) and uploaded, only those, and scattered into the state
//!   (`cd_pop_scatter`); their factors reset (items floats up);
//! - `--cull` and a GA generation rank on the support-projected objects against the
//!   problem's own data: `cd_pop_gather` of every item into a stack, FFT,
//!   `cd_modulus_project` (measure only) + `cd_record_errors`, `cd_poisson_llk` +
//!   `cd_record_llk`, `cd_support_fraction`: 4 floats per item down;
//! - `--cull`: the stopped items' iterates and supports are downloaded (they are final
//!   outputs: the whole run downloads each item once), and the state is compacted to the
//!   survivors (`cd_pop_scatter` with a source list; the same number per pattern, so the
//!   pattern x start layout of the kernels holds): later launches cover the survivors only;
//! - a generation: the host ranks and draws the parents exactly as the host path
//!   ([`breed_plan`], same seeds), uploads the pair lists, [`DevStack::breed`] aligns and
//!   recombines, the children are shrinkwrapped by the general shrinkwrap kernels (the
//!   program's last shrinkwrap parameters, each child's threshold factor, the first
//!   parent's support as the current one) whose guard (min, max of the selection's filter,
//!   tune 1) keeps the parent's support where the child's falls outside the filter, and
//!   `cd_pop_scatter` writes children and supports into the state;
//! - the missing-centre switch: the new amplitudes (patterns x L) are uploaded.
//!
//! At the end the final merits (items x 3 floats) decide the best starts, and only the
//! best start of each pattern is downloaded unless every start is wanted (`keep_all` or
//! `--merge`). The results equal the host path's up to rounding: the segments run the same
//! kernels on the same state; the breeding's alignment and recombination are f32 instead of
//! float64 and the children's shrinkwrap runs on the device instead of the CPU, and the
//! ranking merits are f32 sums (a near-tie may rank differently).

use super::launcher::{DevBuf, Launcher, MAX_ITEMS};
use super::phasing::{
    blocks_per_item, gaussian_kernel, DevData, DevState, GuardBufs, Histories, PhasingKernels,
};
use super::population::{scatter, DevStack, Side};
use crate::array::{Complex32, Stack};
use crate::backend::Progress;
use crate::phasing::missing::MissingCentre;
use crate::phasing::population::{
    breed_plan, cull_pattern, ranked_merits, restart_due, restart_state, shrinkwrap_at,
    split_program, RunLog, Strategy,
};
use crate::phasing::problem::{FinalMerit, PhasingOutput, PhasingProblem};
use crate::phasing::program::Program;
use crate::{Error, Result};

/// Device bytes of the resident state of `items` items of `l` pixels, with the
/// checkpoints' stacks (projected images, alignment spectra, children, scratch).
fn resident_bytes(items: usize, patterns: usize, l: usize, ml: bool) -> usize {
    let bpi = blocks_per_item(l);
    let per_item = 17 * l + 44 * bpi + 28 + if ml { 32 * l + 12 * bpi + 64 } else { 0 };
    let checkpoint = 9 * l + 16 * l + 8 * l + 8 * l + l + 8 * l + 24 * bpi + 64;
    items * (per_item + checkpoint) + patterns * (8 * l + 32)
}

/// Does a run of `problem` fit the device resident (memory, and launch sizes: the
/// alignment of a generation launches two rows per pair)?
pub fn fits(l: &dyn Launcher, problem: &PhasingProblem, program: &Program) -> bool {
    let len = problem.h * problem.w;
    let items = problem.n * problem.starts;
    items > 0
        && 2 * items <= MAX_ITEMS
        && len > 0
        && len <= i32::MAX as usize / 2
        && resident_bytes(items, problem.n, len, program.has_ml()) <= l.memory_budget()
}

/// The data a segment from iteration `done` runs against (as the host path's sub-problem):
/// the amplitudes, and the sums of A^2 and measured counts (those of the filled amplitudes
/// while `interpolate` holds them as measured).
fn segment_data(
    problem: &PhasingProblem,
    mc: MissingCentre,
    done: u64,
    filled: &[f32],
) -> (Vec<f32>, Vec<f64>, Vec<usize>) {
    let amp = mc.amplitudes(problem, done, filled);
    let filling = matches!(mc, MissingCentre::Interpolate { until } if done < until);
    let l = problem.h * problem.w;
    let (mut sum_a2, mut measured) = (Vec::new(), Vec::new());
    for p in 0..problem.n {
        if filling {
            let a = &amp[p * l..(p + 1) * l];
            let mut sa = 0.0f64;
            let mut cnt = 0usize;
            for &v in a.iter().filter(|&&v| v >= 0.0) {
                sa += (v as f64) * (v as f64);
                cnt += 1;
            }
            sum_a2.push(sa);
            measured.push(cnt);
        } else {
            sum_a2.push(problem.sum_a2[p]);
            measured.push(problem.measured[p]);
        }
    }
    (amp, sum_a2, measured)
}

fn nan_merit() -> FinalMerit {
    FinalMerit {
        fourier: f32::NAN,
        llk: f32::NAN,
        free_llk: f32::NAN,
        support_fraction: f32::NAN,
    }
}

/// Merits of items from their three device vectors and support fractions.
fn merits_from(v: [Vec<f32>; 3], frac: Vec<f32>) -> Vec<FinalMerit> {
    let [f, lk, fr] = v;
    (0..frac.len())
        .map(|j| FinalMerit {
            fourier: f[j],
            llk: lk[j],
            free_llk: fr[j],
            support_fraction: frac[j],
        })
        .collect()
}

/// Run `program` on `problem` with the strategy's checkpoints, the state on the device
/// (see the module's text). `Ok(None)` when the run does not fit the device resident
/// (the caller then runs the host path, which chunks). `merge`: every start is wanted at
/// the end.
pub fn run_segmented(
    launcher: &dyn Launcher,
    problem: &PhasingProblem,
    program: &Program,
    strategy: &Strategy,
    seed: u64,
    progress: Progress<'_>,
) -> Result<Option<(PhasingOutput, RunLog)>> {
    if !fits(launcher, problem, program) {
        return Ok(None);
    }
    let (n, k, h, w) = (problem.n, problem.starts, problem.h, problem.w);
    let l = h * w;
    let items = n * k;
    let sel = problem.selection;
    let cps = strategy.checkpoints(program.iterations)?;
    let cuts: Vec<u64> = cps.iter().map(|c| c.at).collect();
    let segs = split_program(program, &cuts);
    if segs.len() != cuts.len() + 1 {
        return Err(Error::Config(format!(
            "segmented run: {} segments for {} checkpoints",
            segs.len(),
            cuts.len()
        )));
    }
    // the host's copy of every item: filled for the starting state, for culled items at
    // their cull and for the downloaded ones at the end
    let mut g = vec![Complex32::new(0.0, 0.0); items * l];
    let mut s = vec![0u8; items * l];
    for i in 0..items {
        problem.initial_state(
            i / k,
            i % k,
            &mut g[i * l..(i + 1) * l],
            &mut s[i * l..(i + 1) * l],
        );
    }
    let mut factor: Vec<f32> = (0..items).map(|i| problem.sw_factor(i)).collect();
    // the host path runs every segment with per-item factors: the general shrinkwrap
    let mut st = DevState::upload(
        launcher,
        h,
        w,
        n,
        k,
        &g,
        &s,
        &factor,
        true,
        problem.constraint,
    )?;
    // state item j is item orig[j] of the problem; j_of is the inverse (usize::MAX: culled)
    let mut orig: Vec<usize> = (0..items).collect();
    let mut events = vec![0u32; items];
    let mut since = vec![0u32; items];
    // guard events of each state item already counted (the device counts since the state
    // was made)
    let mut ev_seen = vec![0u32; items];
    let mut log = RunLog::for_run(strategy, n, items);
    let mut hist: [Vec<Vec<f32>>; 4] = std::array::from_fn(|_| vec![Vec::new(); items]);
    let mc = strategy.missing_centre;
    let filled = match mc {
        MissingCentre::Interpolate { .. } => crate::phasing::missing::interpolate_all(problem)?,
        _ => Vec::new(),
    };
    let mut fin = vec![nan_merit(); items];
    let mut alive = vec![true; items];
    // the segment's data; the problem's own data for the ranking when they differ
    let mut cur: Option<(Vec<f32>, DevData)> = None;
    let mut own: Option<DevData> = None;
    let mut done = 0u64;
    for (si, seg) in segs.iter().enumerate() {
        let (amp, sum_a2, measured) = segment_data(problem, mc, done, &filled);
        if cur.as_ref().is_none_or(|(a, _)| *a != amp) {
            let d = DevData::upload(launcher, l, &amp, &sum_a2, &measured)?;
            cur = Some((amp, d));
            st.reset_ml();
        }
        let (cur_amp, data) = cur.as_ref().expect("uploaded above");
        let sitems = st.items();
        let hseg = Histories::new(launcher, sitems, seg.records)?;
        let mut rec = 0;
        st.run_ops(
            &seg.ops,
            program.guard,
            data,
            &hseg,
            &mut rec,
            &problem.cancel,
            progress,
        )?;
        problem.cancel.check()?;
        done += seg.iterations;
        let r = seg.records;
        let hs = hseg.download(sitems)?;
        let mut j_of = vec![usize::MAX; items];
        for (j, &i) in orig.iter().enumerate() {
            j_of[i] = j;
        }
        for (hh, src) in hist.iter_mut().zip(&hs) {
            for (i, hi) in hh.iter_mut().enumerate() {
                match j_of[i] {
                    usize::MAX => hi.extend(std::iter::repeat_n(f32::NAN, r)),
                    j => hi.extend_from_slice(&src[j * r..(j + 1) * r]),
                }
            }
        }
        let (fac, ev) = st.factors_events()?;
        let frac: Vec<f32> = st.support_fraction(&st.s)?.to_vec(sitems)?;
        for (j, &i) in orig.iter().enumerate() {
            let d = ev[j].saturating_sub(ev_seen[j]);
            ev_seen[j] = ev[j];
            events[i] += d;
            since[i] += d;
            factor[i] = fac[j];
            fin[i].support_fraction = frac[j];
        }
        let Some(cp) = cps.get(si).copied() else {
            continue;
        };
        // restarts first: a restarted start takes no part in this generation
        let mut fresh = vec![false; items];
        if let (true, Some(rc)) = (cp.restart, strategy.restart) {
            let mut up_g = Vec::new();
            let mut up_s = Vec::new();
            let mut dst = Vec::new();
            let mut og = vec![Complex32::new(0.0, 0.0); l];
            let mut os = vec![0u8; l];
            for i in (0..items).filter(|&i| alive[i]) {
                if restart_due(sel, &rc, since[i], fin[i].support_fraction) {
                    log.restarts[i] += 1;
                    since[i] = 0;
                    factor[i] = problem.sw_factor(i);
                    restart_state(problem, seed, i, log.restarts[i], &mut og, &mut os);
                    up_g.extend_from_slice(&og);
                    up_s.extend_from_slice(&os);
                    dst.push(j_of[i]);
                    fresh[i] = true;
                }
            }
            if !dst.is_empty() {
                let m = dst.len();
                let gb = DevBuf::from_slice(launcher, &up_g)?;
                let sb = DevBuf::from_slice(launcher, &up_s)?;
                scatter(
                    launcher,
                    h,
                    w,
                    m,
                    &Side {
                        images: Some(&gb),
                        supports: &sb,
                        n: m,
                        idx: None,
                    },
                    &Side {
                        images: Some(&st.g),
                        supports: &st.s,
                        n: sitems,
                        idx: Some(&dst),
                    },
                    false,
                )?;
                let f: Vec<f32> = orig.iter().map(|&i| factor[i]).collect();
                if let Some(gbufs) = &st.gb {
                    gbufs.factor.upload(&f)?;
                }
            }
        }
        let breeding = cp.generation.is_some() && strategy.population.is_some();
        let culling = cp.cull && strategy.cull.is_some();
        if !breeding && !culling {
            continue;
        }
        // the ranking merits: every state item's support-projected object against the
        // problem's own data
        let stack = DevStack::gather(
            launcher,
            h,
            w,
            &st.g,
            &st.s,
            sitems,
            &(0..sitems as i32).collect::<Vec<_>>(),
            problem.constraint,
        )?;
        let own_data = if *cur_amp == problem.amplitudes {
            data
        } else {
            if own.is_none() {
                own = Some(DevData::upload(
                    launcher,
                    l,
                    &problem.amplitudes,
                    &problem.sum_a2,
                    &problem.measured,
                )?);
            }
            own.as_ref().expect("uploaded above")
        };
        let mv = st.merits_of(stack.images_buf(), own_data)?;
        let mv = [
            mv[0].to_vec::<f32>(sitems)?,
            mv[1].to_vec::<f32>(sitems)?,
            mv[2].to_vec::<f32>(sitems)?,
        ];
        let pfrac = st
            .support_fraction(stack.supports_buf())?
            .to_vec::<f32>(sitems)?;
        let rmerit = merits_from(mv, pfrac); // by state item
                                             // the stack's index of each problem item (the stack keeps the pre-cull layout)
        let stack_of = j_of.clone();
        if let (true, Some(cc)) = (culling, strategy.cull) {
            let mut stopped = Vec::new();
            for p in 0..n {
                let cands: Vec<usize> = (p * k..(p + 1) * k).filter(|&i| alive[i]).collect();
                let m: Vec<FinalMerit> = cands.iter().map(|&i| rmerit[j_of[i]]).collect();
                stopped.extend(cull_pattern(sel, cc.keep, k, &cands, &m));
            }
            stopped.sort_unstable();
            if !stopped.is_empty() {
                // their state is final: download it (and only it) before the compaction
                let m = stopped.len();
                let src: Vec<usize> = stopped.iter().map(|&i| j_of[i]).collect();
                let (tg, ts) = gather_items(launcher, h, w, &st, sitems, &src)?;
                let vg: Vec<Complex32> = tg.to_vec(m * l)?;
                let vs: Vec<u8> = ts.to_vec(m * l)?;
                for (q, &i) in stopped.iter().enumerate() {
                    g[i * l..(i + 1) * l].copy_from_slice(&vg[q * l..(q + 1) * l]);
                    s[i * l..(i + 1) * l].copy_from_slice(&vs[q * l..(q + 1) * l]);
                    alive[i] = false;
                    log.culled_at[i] = cp.at;
                    fin[i] = rmerit[j_of[i]];
                }
                // compact the item axis to the survivors: the same count per pattern
                let survivors: Vec<usize> = (0..items).filter(|&i| alive[i]).collect();
                let k2 = survivors.len() / n;
                let uniform = k2 > 0
                    && survivors.len() == n * k2
                    && (0..n).all(|p| survivors[p * k2..(p + 1) * k2].iter().all(|&i| i / k == p));
                if !uniform {
                    return Err(Error::Config(format!(
                        "--cull: {} survivors are not the same number per pattern of {n}",
                        survivors.len()
                    )));
                }
                let src: Vec<usize> = survivors.iter().map(|&i| j_of[i]).collect();
                let (ng, ns) = gather_items(launcher, h, w, &st, sitems, &src)?;
                let f: Vec<f32> = survivors.iter().map(|&i| factor[i]).collect();
                st = DevState::from_device(
                    launcher,
                    h,
                    w,
                    n,
                    k2,
                    ng,
                    ns,
                    &f,
                    true,
                    problem.constraint,
                )?;
                orig = survivors;
                ev_seen = vec![0; orig.len()];
            }
        }
        if let (Some(gen), Some(pc)) = (cp.generation, strategy.population) {
            // stopped starts neither breed nor are replaced, as restarted ones
            for i in 0..items {
                fresh[i] |= !alive[i];
            }
            let mut plan = Vec::new();
            for p in 0..n {
                let cands: Vec<usize> = (0..k).filter(|&t| !fresh[p * k + t]).collect();
                let m: Vec<FinalMerit> =
                    cands.iter().map(|&t| rmerit[stack_of[p * k + t]]).collect();
                let (children, best) = breed_plan(sel, pc.keep, seed, gen, p, &cands, &m);
                log.generation_best[p * log.generations + gen] = best;
                plan.extend(children.into_iter().map(|c| (p, c)));
            }
            if !plan.is_empty() {
                let mut j_now = vec![usize::MAX; items];
                for (j, &i) in orig.iter().enumerate() {
                    j_now[i] = j;
                }
                let pa: Vec<usize> = plan.iter().map(|(p, c)| stack_of[p * k + c.a]).collect();
                let pb: Vec<usize> = plan.iter().map(|(p, c)| stack_of[p * k + c.b]).collect();
                let dst: Vec<usize> = plan.iter().map(|(p, c)| j_now[p * k + c.start]).collect();
                let cf: Vec<f32> = plan.iter().map(|(p, c)| factor[p * k + c.start]).collect();
                let (sigma, threshold, reference) = shrinkwrap_at(program, cp.at);
                breed_into(
                    &st,
                    &stack,
                    &pa,
                    &pb,
                    &dst,
                    &cf,
                    (sigma, threshold, reference.code()),
                    (sel.min_fraction, sel.max_fraction),
                )?;
                for (p, c) in &plan {
                    log.replaced[p * k + c.start] += 1;
                    since[p * k + c.start] = 0;
                }
            }
        }
    }
    // the final merits of the running items (their last segment's, as the host path)
    let (_, data) = cur.as_ref().expect("one segment ran");
    let sitems = st.items();
    let mv = st.iterate_merits(data)?;
    let mv = [
        mv[0].to_vec::<f32>(sitems)?,
        mv[1].to_vec::<f32>(sitems)?,
        mv[2].to_vec::<f32>(sitems)?,
    ];
    for (j, &i) in orig.iter().enumerate() {
        fin[i] = FinalMerit {
            fourier: mv[0][j],
            llk: mv[1][j],
            free_llk: mv[2][j],
            support_fraction: fin[i].support_fraction,
        };
    }
    let best_start = sel.best_starts(&ranked_merits(&fin, &log.culled_at), k);
    let all = problem.keep_all || strategy.merge > 0;
    let mut j_of = vec![usize::MAX; items];
    for (j, &i) in orig.iter().enumerate() {
        j_of[i] = j;
    }
    // download every running item, or only the running best starts
    let want: Vec<usize> = if all {
        orig.clone()
    } else {
        (0..n)
            .map(|p| p * k + best_start[p])
            .filter(|&i| j_of[i] != usize::MAX)
            .collect()
    };
    if !want.is_empty() {
        let m = want.len();
        let src: Vec<usize> = want.iter().map(|&i| j_of[i]).collect();
        let (vg, vs) = if all {
            (st.g.to_vec::<Complex32>(m * l)?, st.s.to_vec::<u8>(m * l)?)
        } else {
            let (tg, ts) = gather_items(launcher, h, w, &st, sitems, &src)?;
            (tg.to_vec::<Complex32>(m * l)?, ts.to_vec::<u8>(m * l)?)
        };
        for (q, &i) in want.iter().enumerate() {
            g[i * l..(i + 1) * l].copy_from_slice(&vg[q * l..(q + 1) * l]);
            s[i * l..(i + 1) * l].copy_from_slice(&vs[q * l..(q + 1) * l]);
        }
    }
    drop(st);
    let mut objects = Vec::with_capacity(n * l);
    let mut supports = Vec::with_capacity(n * l);
    for (p, &b) in best_start.iter().enumerate() {
        let i = p * k + b;
        objects.extend_from_slice(&g[i * l..(i + 1) * l]);
        supports.extend_from_slice(&s[i * l..(i + 1) * l]);
    }
    let flat = |v: &[Vec<f32>]| v.concat();
    Ok(Some((
        PhasingOutput {
            best_start,
            objects: Stack::from_vec(n, h, w, objects)?,
            supports: Stack::from_vec(n, h, w, supports)?,
            all_objects: all.then_some(g),
            all_supports: all.then_some(s),
            fourier_error: flat(&hist[0]),
            real_error: flat(&hist[1]),
            final_fourier_error: fin.iter().map(|m| m.fourier).collect(),
            records: program.records,
            llk: flat(&hist[2]),
            free_llk: flat(&hist[3]),
            final_llk: fin.iter().map(|m| m.llk).collect(),
            final_free_llk: fin.iter().map(|m| m.free_llk).collect(),
            final_support_fraction: fin.iter().map(|m| m.support_fraction).collect(),
            guard_events: events,
            threshold_factor: factor,
        },
        log,
    )))
}

/// The iterates and supports of the state items `src` (indices into the state's `sitems`
/// items), in that order, copied by `cd_pop_scatter` into new device buffers of
/// `src.len()` items.
fn gather_items<'a>(
    launcher: &'a dyn Launcher,
    h: usize,
    w: usize,
    st: &DevState<'a>,
    sitems: usize,
    src: &[usize],
) -> Result<(DevBuf<'a>, DevBuf<'a>)> {
    let (m, l) = (src.len(), h * w);
    let tg = DevBuf::new(launcher, m * l * 8)?;
    let ts = DevBuf::new(launcher, m * l)?;
    scatter(
        launcher,
        h,
        w,
        m,
        &Side {
            images: Some(&st.g),
            supports: &st.s,
            n: sitems,
            idx: Some(src),
        },
        &Side {
            images: Some(&tg),
            supports: &ts,
            n: m,
            idx: None,
        },
        false,
    )?;
    Ok((tg, ts))
}

/// The children of one generation into the state: parents `pa[c]`, `pb[c]` (images of the
/// projected `stack`) bred on the device, each child shrinkwrapped (`sw`: sigma, threshold,
/// reference code; its factor `cf[c]`; the first parent's support as the current one; a
/// support outside `filter` (min, max fraction) or empty falls back to that parent's) and
/// scattered, inside its support, into state item `dst[c]`.
#[allow(clippy::too_many_arguments)]
fn breed_into(
    st: &DevState,
    stack: &DevStack,
    pa: &[usize],
    pb: &[usize],
    dst: &[usize],
    cf: &[f32],
    sw: (f32, f32, i32),
    filter: (f32, f32),
) -> Result<()> {
    let (launcher, h, w) = (st.l, st.h, st.w);
    let l = h * w;
    let pairs = pa.len();
    let children = stack.breed(pa, pb)?;
    // the first parents' supports: the children's current supports
    let psup = DevBuf::new(launcher, pairs * l)?;
    scatter(
        launcher,
        h,
        w,
        pairs,
        &Side {
            images: None,
            supports: stack.supports_buf(),
            n: stack.m,
            idx: Some(pa),
        },
        &Side {
            images: None,
            supports: &psup,
            n: pairs,
            idx: None,
        },
        false,
    )?;
    let ck = PhasingKernels::new(launcher, h, w, pairs, 1);
    let bpi = ck.bpi;
    let kern = gaussian_kernel(sw.0);
    let kb = DevBuf::from_slice(launcher, &kern)?;
    let scratch = DevBuf::new(launcher, 2 * pairs * l * 4)?;
    let gbufs = GuardBufs {
        pmax: DevBuf::new(launcher, pairs * bpi * 4)?,
        pstat: DevBuf::new(launcher, pairs * bpi * 12)?,
        pcount: DevBuf::new(launcher, pairs * bpi * 4)?,
        level: DevBuf::new(launcher, pairs * 4)?,
        factor: DevBuf::from_slice(launcher, cf)?,
        events: DevBuf::from_slice(launcher, &vec![0i32; pairs])?,
    };
    // the host's rule: outside [min, max] or no pixel at all -> the parent's support; the
    // guard refuses below gmin and above gmax (tune 1: the factor stays)
    let gmin = if filter.0 > 0.0 {
        filter.0
    } else {
        0.5 / l as f32
    };
    ck.shrinkwrap_general(
        &children,
        &psup,
        &kb,
        kern.len(),
        sw.1,
        sw.2,
        Some((gmin, filter.1, 1.0)),
        &scratch,
        &gbufs,
    )?;
    scatter(
        launcher,
        h,
        w,
        pairs,
        &Side {
            images: Some(&children),
            supports: &psup,
            n: pairs,
            idx: None,
        },
        &Side {
            images: Some(&st.g),
            supports: &st.s,
            n: st.items(),
            idx: Some(dst),
        },
        true,
    )
}

//! The CPU phasing engine: rustfft (AVX/SSE chosen at run time) and rayon across (pattern, start)
//! items. Each item runs the whole program with its buffers in cache (128x128 complex64 is
//! 128 KiB): one fused row pass (inverse row FFTs, support update, forward row FFTs of the
//! next iterate) and one fused column pass (gather 8 columns = one cache line per row,
//! forward column FFTs, modulus projection + Fourier error with the 1/(HW) scaling folded
//! in, inverse column FFTs, scatter) per iteration. The centring shift is done once, on
//! input and output, never per iteration.

pub(crate) mod kernels;
pub mod ml;

use super::CpuBackend;
use crate::array::{Complex32, Stack};
use crate::backend::Progress;
use crate::fft::{Plan2d, COL_BLOCK};
use crate::phasing::problem::{llk_means, FinalMerit, PhasingOutput, PhasingProblem};
use crate::phasing::program::{ml_eps, Op, Program, Update};
use crate::{Error, Result};
use kernels::SwOutcome;
use rayon::prelude::*;
use std::sync::Mutex;

pub use kernels::{
    fourier_residual, modulus_project, modulus_project_portable, poisson_llk, support_update,
    support_update_portable,
};

/// Rows per block in the row pass.
const ROW_BLOCK: usize = 8;

/// Work buffers for one item processed by `lanes` threads together (one in batch mode).
/// They start poisoned with NaN, so a kernel that reads an element it did not write first
/// turns the result into NaN and fails the tests.
fn work_lanes(plan: &Plan2d, lanes: usize) -> Work {
    let (h, w) = (plan.h, plan.w);
    let l = h * w;
    let nan = Complex32::new(f32::NAN, f32::NAN);
    Work {
        u: vec![nan; l],
        lanes: (0..lanes.max(1))
            .map(|_| Lane {
                col: vec![nan; COL_BLOCK * h],
                old: vec![nan; COL_BLOCK * h],
                rowbuf: vec![nan; w],
                scratch: vec![nan; plan.fft_scratch_len()],
            })
            .collect(),
        active: vec![true; h],
        coef_a: vec![f32::NAN; 2 * h],
        coef_b: vec![f32::NAN; 2 * h],
        n_active: h,
        col_partials: vec![[f64::NAN; 4]; w.div_ceil(COL_BLOCK)],
        row_partials: vec![f64::NAN; h.div_ceil(ROW_BLOCK)],
        mag: vec![f32::NAN; l],
        tmp: vec![f32::NAN; l],
        kernel: Vec::new(),
        ml: None,
    }
}

/// A raw pointer to an item's row-transform buffer, shared by the lanes of the column pass:
/// each lane reads and writes only its own column blocks.
#[derive(Clone, Copy)]
struct SharedRows(*mut Complex32);
// SAFETY: lanes touch disjoint columns of the buffer (see `Item::column_block`).
unsafe impl Send for SharedRows {}
// SAFETY: as for Send.
unsafe impl Sync for SharedRows {}

/// The buffers of one thread working on an item: a gathered column block, its copy, a row
/// and the FFT scratch.
struct Lane {
    col: Vec<Complex32>,
    /// Copy of a gathered column block before its FFT (rows outside the support).
    old: Vec<Complex32>,
    rowbuf: Vec<Complex32>,
    scratch: Vec<Complex32>,
}

/// The buffers of one item in flight: shared arrays and one [`Lane`] per thread working on
/// it (one in batch mode, several when there are fewer items than threads).
struct Work {
    u: Vec<Complex32>,
    lanes: Vec<Lane>,
    /// Rows holding support pixels, and their number.
    active: Vec<bool>,
    /// Per row, twice (re, im): (a, b*W) for rows without support pixels, (0, 1) otherwise.
    coef_a: Vec<f32>,
    coef_b: Vec<f32>,
    n_active: usize,
    /// Per column block (Fourier residual, |P_M g|^2, log-likelihood sums over the measured
    /// and the held-out pixels) and per row block (energy inside the support): summed in
    /// block order whatever the number of lanes, so results do not depend on the thread
    /// count.
    col_partials: Vec<[f64; 4]>,
    row_partials: Vec<f64>,
    mag: Vec<f32>,
    tmp: Vec<f32>,
    kernel: Vec<f32>,
    /// The maximum-likelihood refinement's buffers, made at its first step.
    ml: Option<ml::MlBufs>,
}

/// The state of one (pattern, start) item.
struct Item<'a> {
    plan: &'a Plan2d,
    /// Transposed amplitudes (W x H), -1 = unmeasured.
    at: &'a [f32],
    /// The same in native order (H x W), for the maximum-likelihood refinement.
    amp: &'a [f32],
    /// The refinement's regularisation of the pattern ([`crate::phasing::program::ml_eps`]).
    ml_eps: f32,
    sum_a2: f64,
    /// Pixels of the log-likelihood and of the free log-likelihood.
    counts: (usize, usize),
    constraint: crate::phasing::program::Constraint,
    /// Checked every iteration: once set, [`Item::run`] stops at once.
    cancel: &'a crate::cancel::Cancel,
}

/// Mark the rows holding at least one support pixel; returns how many there are.
fn mark_support_rows(s: &[u8], w: usize, active: &mut [bool]) -> usize {
    let mut n = 0;
    for (flag, row) in active.iter_mut().zip(s.chunks_exact(w)) {
        *flag = row.iter().any(|&v| v != 0);
        n += *flag as usize;
    }
    n
}

impl Item<'_> {
    /// The column pass on `work.u`, which holds the row transforms of the iterate g.
    ///
    /// With `project`: forward column FFTs give F = FFT(g); the modulus projection (with
    /// the 1/(HW) of the inverse folded in) and inverse column FFTs give the row transforms
    /// U' of g' = P_M g. Rows holding support pixels get U' (the row pass finishes them);
    /// rows without any get the row transform of their HIO/ER/RAAR update directly,
    /// a U + b W U' (every pixel of such a row is outside the support, where the update is
    /// linear), so they need no row FFTs at all. Returns (sum over measured pixels of
    /// (|F| - A)^2, sum |g'|^2 by Parseval).
    ///
    /// Without `project`: only the Fourier residual of g is measured.
    ///
    /// With `llk`: the sums of the Poisson log-likelihood terms of F = FFT(g) over the
    /// measured and over the held-out pixels are measured too (before the projection), and
    /// returned as the third and fourth values (zero without `llk`).
    ///
    /// With several lanes the column blocks are shared out among them.
    fn column_pass(&self, work: &mut Work, project: bool, llk: bool, a: f32, b: f32) -> [f64; 4] {
        let (h, w) = (self.plan.h, self.plan.w);
        let partial = work.n_active < h;
        let keep_old = project && partial && (a != 0.0 || b != 0.0);
        if partial {
            // per-row coefficients (old, new), duplicated for re and im
            let bw = b * w as f32;
            for (r, &act) in work.active.iter().enumerate() {
                let (ca, cb) = if act { (0.0, 1.0) } else { (a, bw) };
                work.coef_a[2 * r..2 * r + 2].fill(ca);
                work.coef_b[2 * r..2 * r + 2].fill(cb);
            }
        }
        let rows = SharedRows(work.u.as_mut_ptr());
        let (ca, cb) = (&work.coef_a[..], &work.coef_b[..]);
        let job = |lane: &mut Lane, blocks: &mut [[f64; 4]], first: usize| {
            for (j, part) in blocks.iter_mut().enumerate() {
                // SAFETY: block `first + j` belongs to this lane only.
                *part = unsafe {
                    self.column_block(
                        rows,
                        first + j,
                        project,
                        llk,
                        partial,
                        keep_old,
                        ca,
                        cb,
                        lane,
                    )
                };
            }
        };
        if work.lanes.len() == 1 {
            job(&mut work.lanes[0], &mut work.col_partials, 0);
        } else {
            let per = work.col_partials.len().div_ceil(work.lanes.len());
            work.lanes
                .par_iter_mut()
                .zip(work.col_partials.par_chunks_mut(per))
                .enumerate()
                .for_each(|(i, (lane, blocks))| job(lane, blocks, i * per));
        }
        let mut sums = [0.0f64; 4];
        for part in work.col_partials.iter() {
            for (s, v) in sums.iter_mut().zip(part) {
                *s += v;
            }
        }
        sums[1] *= (h * w) as f64;
        sums
    }

    /// One block of the column pass (columns `bi * COL_BLOCK ..`), see [`Item::column_pass`].
    ///
    /// # Safety
    /// `rows` points at the item's h x w row-transform buffer and no other thread touches
    /// this block's columns during the call.
    #[allow(clippy::too_many_arguments)]
    unsafe fn column_block(
        &self,
        rows: SharedRows,
        bi: usize,
        project: bool,
        llk: bool,
        partial: bool,
        keep_old: bool,
        coef_a: &[f32],
        coef_b: &[f32],
        lane: &mut Lane,
    ) -> [f64; 4] {
        let (h, w) = (self.plan.h, self.plan.w);
        let scale = 1.0 / (h * w) as f32;
        let c0 = bi * COL_BLOCK;
        let nb = COL_BLOCK.min(w - c0);
        let colbuf = &mut lane.col[..nb * h];
        // SAFETY: `rows` is the item's h x w buffer and this block's columns are ours
        // (this function's contract); c0 + nb <= w.
        unsafe { crate::fft::gather_raw(rows.0, w, h, c0, nb, colbuf) };
        if keep_old {
            lane.old[..nb * h].copy_from_slice(colbuf);
        }
        self.plan
            .cols(true)
            .process_with_scratch(colbuf, &mut lane.scratch);
        let amp = &self.at[c0 * h..(c0 + nb) * h];
        let (mut err, mut energy) = (0.0f64, 0.0f64);
        let (lm, lf) = if llk {
            kernels::poisson_llk(colbuf, amp)
        } else {
            (0.0, 0.0)
        };
        if project {
            for (cb, ab) in colbuf.chunks_exact_mut(h).zip(amp.chunks_exact(h)) {
                let (e, en) = modulus_project(cb, ab, scale);
                err += e as f64;
                energy += en as f64;
            }
            self.plan
                .cols(false)
                .process_with_scratch(colbuf, &mut lane.scratch);
            if partial {
                // rows without support pixels: a*old + b*W*new (ER: zero)
                kernels::combine_rows(colbuf, &lane.old[..nb * h], coef_a, coef_b, h, keep_old);
            }
            // SAFETY: as for the gather above.
            unsafe { crate::fft::scatter_raw(colbuf, w, h, c0, nb, rows.0) };
        } else {
            for (cb, ab) in colbuf.chunks_exact(h).zip(amp.chunks_exact(h)) {
                err += kernels::fourier_residual(cb, ab) as f64;
            }
        }
        [err, energy, lm, lf]
    }

    /// The row pass over the rows holding support pixels: inverse row FFTs of `work.u` give
    /// g' = P_M g; `g` is updated in place with the support rule (a, b); forward row FFTs
    /// of the new `g` go back into `work.u`. Rows without support pixels were finished by
    /// the column pass (their `g` is brought up to date by [`Item::sync`] when needed).
    /// Returns the energy of g' inside the support. With several lanes the blocks of
    /// `ROW_BLOCK` rows are shared out among them.
    fn row_pass(&self, work: &mut Work, g: &mut [Complex32], s: &[u8], a: f32, b: f32) -> f64 {
        let w = self.plan.w;
        let blk = ROW_BLOCK * w;
        let job = |lane: &mut Lane,
                   u: &mut [Complex32],
                   g: &mut [Complex32],
                   s: &[u8],
                   act: &[bool],
                   parts: &mut [f64]| {
            for ((((u, g), s), act), part) in u
                .chunks_mut(blk)
                .zip(g.chunks_mut(blk))
                .zip(s.chunks(blk))
                .zip(act.chunks(ROW_BLOCK))
                .zip(parts.iter_mut())
            {
                *part = self.row_block(u, g, s, act, a, b, &mut lane.scratch);
            }
        };
        if work.lanes.len() == 1 {
            job(
                &mut work.lanes[0],
                &mut work.u,
                g,
                s,
                &work.active,
                &mut work.row_partials,
            );
        } else {
            let per = work.row_partials.len().div_ceil(work.lanes.len());
            work.lanes
                .par_iter_mut()
                .zip(work.u.par_chunks_mut(per * blk))
                .zip(g.par_chunks_mut(per * blk))
                .zip(s.par_chunks(per * blk))
                .zip(work.active.par_chunks(per * ROW_BLOCK))
                .zip(work.row_partials.par_chunks_mut(per))
                .for_each(|(((((lane, u), g), s), act), parts)| job(lane, u, g, s, act, parts));
        }
        work.row_partials.iter().sum()
    }

    /// One block of up to `ROW_BLOCK` rows of the row pass: each run of consecutive rows
    /// holding support pixels is transformed together.
    #[allow(clippy::too_many_arguments)]
    fn row_block(
        &self,
        u: &mut [Complex32],
        g: &mut [Complex32],
        s: &[u8],
        active: &[bool],
        a: f32,
        b: f32,
        scratch: &mut [Complex32],
    ) -> f64 {
        let w = self.plan.w;
        let n = active.len();
        let mut inside = 0.0f64;
        let mut r = 0;
        while r < n {
            if !active[r] {
                r += 1;
                continue;
            }
            let mut e = r + 1;
            while e < n && active[e] {
                e += 1;
            }
            let span = r * w..e * w;
            let uu = &mut u[span.clone()];
            let gg = &mut g[span.clone()];
            self.plan.rows(false).process_with_scratch(uu, scratch);
            let (o, t) = support_update(gg, uu, &s[span], a, b, self.constraint);
            inside += (t - o) as f64;
            uu.copy_from_slice(gg);
            self.plan.rows(true).process_with_scratch(uu, scratch);
            r = e;
        }
        inside
    }

    /// Bring `g` up to date on the rows the row pass skipped: g = IFFT_row(U) / W there.
    fn sync(&self, work: &mut Work, g: &mut [Complex32]) {
        let w = self.plan.w;
        let inv = 1.0 / w as f32;
        for (r, &act) in work.active.iter().enumerate() {
            if act {
                continue;
            }
            let lane = &mut work.lanes[0];
            let row = &mut lane.rowbuf[..w];
            row.copy_from_slice(&work.u[r * w..(r + 1) * w]);
            self.plan
                .rows(false)
                .process_with_scratch(row, &mut lane.scratch);
            for (d, v) in g[r * w..(r + 1) * w].iter_mut().zip(row.iter()) {
                *d = v * inv;
            }
        }
    }

    fn fourier_error(&self, sum: f64) -> f32 {
        if self.sum_a2 > 0.0 {
            (sum / self.sum_a2).sqrt() as f32
        } else {
            0.0
        }
    }

    /// Run the whole program on (g, s). Returns the final Fourier error.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        work: &mut Work,
        g: &mut [Complex32],
        s: &mut [u8],
        program: &Program,
        hist: &mut Histories,
        progress: Progress<'_>,
    ) -> FinalMerit {
        let (h, w) = (self.plan.h, self.plan.w);
        let cancelled = FinalMerit {
            fourier: f32::NAN,
            llk: f32::NAN,
            free_llk: f32::NAN,
            support_fraction: f32::NAN,
        };
        work.u.copy_from_slice(g);
        self.plan
            .rows(true)
            .process_with_scratch(&mut work.u, &mut work.lanes[0].scratch);
        work.n_active = mark_support_rows(s, w, &mut work.active);
        let mut rec = 0;
        let mut ml_state = ml::MlState::default();
        for op in &program.ops {
            match *op {
                Op::Iterate {
                    update: Update { a, b },
                    count,
                    record,
                    ..
                } => {
                    for it in 0..count {
                        if self.cancel.is_cancelled() {
                            // the caller sees the flag and discards every result
                            return cancelled;
                        }
                        let rec_now = record && it + 1 == count;
                        let [ferr, tot, lm, lf] = self.column_pass(work, true, rec_now, a, b);
                        let inside = self.row_pass(work, g, s, a, b);
                        if rec_now {
                            hist.f[rec] = self.fourier_error(ferr);
                            let out = (tot - inside).max(0.0);
                            hist.r[rec] = if tot > 0.0 {
                                (out / tot).sqrt() as f32
                            } else {
                                0.0
                            };
                            (hist.llk[rec], hist.free[rec]) =
                                llk_means(lm, self.counts.0, lf, self.counts.1);
                            rec += 1;
                        }
                    }
                    progress(count);
                }
                Op::Ml {
                    count,
                    record,
                    fresh,
                } => {
                    self.sync(work, g);
                    let bufs = work.ml.get_or_insert_with(|| ml::MlBufs::new(self.plan));
                    let r = ml::run(
                        self.plan,
                        bufs,
                        g,
                        s,
                        self.amp,
                        self.ml_eps,
                        self.constraint,
                        (count, record, fresh),
                        &mut ml_state,
                        self.cancel,
                    );
                    if self.cancel.is_cancelled() {
                        return cancelled;
                    }
                    if let Some(r) = r {
                        hist.f[rec] = self.fourier_error(r.residual);
                        hist.r[rec] = if r.total > 0.0 {
                            (r.outside.max(0.0) / r.total).sqrt() as f32
                        } else {
                            0.0
                        };
                        (hist.llk[rec], hist.free[rec]) =
                            llk_means(r.llk.0, self.counts.0, r.llk.1, self.counts.1);
                        rec += 1;
                    }
                    // the row transforms of the refined g, for the steps that follow
                    work.u.copy_from_slice(g);
                    self.plan
                        .rows(true)
                        .process_with_scratch(&mut work.u, &mut work.lanes[0].scratch);
                    progress(count);
                }
                Op::Shrinkwrap {
                    sigma,
                    threshold,
                    reference,
                } => {
                    self.sync(work, g);
                    let outcome = kernels::shrinkwrap(
                        g,
                        s,
                        h,
                        w,
                        sigma,
                        threshold * hist.factor,
                        reference,
                        program.guard,
                        &mut work.mag,
                        &mut work.tmp,
                        &mut work.kernel,
                    );
                    if let Some(gd) = program.guard {
                        match outcome {
                            SwOutcome::Collapsed => {
                                hist.factor /= gd.tune;
                                hist.events += 1;
                            }
                            SwOutcome::BlewUp => {
                                hist.factor *= gd.tune;
                                hist.events += 1;
                            }
                            SwOutcome::Applied | SwOutcome::Skipped => {}
                        }
                    }
                    work.n_active = mark_support_rows(s, w, &mut work.active);
                }
            }
        }
        self.sync(work, g);
        debug_assert_eq!(rec, hist.f.len());
        // work.u holds the row transform of the final g: one more column pass measures it.
        let [e, _, lm, lf] = self.column_pass(work, false, true, 0.0, 0.0);
        let (llk, free_llk) = llk_means(lm, self.counts.0, lf, self.counts.1);
        FinalMerit {
            fourier: self.fourier_error(e),
            llk,
            free_llk,
            support_fraction: support_fraction(s),
        }
    }
}

/// Fraction of the pixels in the support.
fn support_fraction(s: &[u8]) -> f32 {
    (s.iter().filter(|&&v| v != 0).count() as f64 / s.len().max(1) as f64) as f32
}

/// The histories one item records (`records` entries each), and its shrinkwrap state: the
/// threshold factor (per start, retuned by the guard) and the guard's interventions.
struct Histories {
    f: Vec<f32>,
    r: Vec<f32>,
    llk: Vec<f32>,
    free: Vec<f32>,
    factor: f32,
    events: u32,
}

struct ItemResult {
    hist: Histories,
    merit: FinalMerit,
    kept: Option<(Vec<Complex32>, Vec<u8>)>,
}

type Best = Mutex<Option<(FinalMerit, usize, Vec<Complex32>, Vec<u8>)>>;

impl CpuBackend {
    /// Run a compiled program on every (pattern, start) item of `problem` in this backend's
    /// pool: items in parallel, or, with fewer items than threads, every thread on each item
    /// in turn.
    pub(super) fn run_phasing_items(
        &self,
        problem: &PhasingProblem,
        program: &Program,
        progress: Progress<'_>,
    ) -> Result<PhasingOutput> {
        let (n, h, w, k) = (problem.n, problem.h, problem.w, problem.starts);
        let l = h * w;
        if n == 0 || k == 0 || l == 0 {
            return Err(Error::Config(format!(
                "nothing to phase: {n} patterns x {k} starts of {h}x{w}"
            )));
        }
        let plan = Plan2d::new(h, w);
        let records = program.records;
        self.pool.install(|| {
            // Amplitudes transposed once (column pass reads them contiguously).
            let mut at = vec![0.0f32; n * l];
            at.par_chunks_mut(l).enumerate().for_each(|(p, dst)| {
                let a = problem.amplitude(p);
                for r in 0..h {
                    for c in 0..w {
                        dst[c * h + r] = a[r * w + c];
                    }
                }
            });
            let best: Vec<Best> = (0..n).map(|_| Mutex::new(None)).collect();
            let counts: Vec<(usize, usize)> = (0..n).map(|p| problem.llk_counts(p)).collect();
            let sel = &problem.selection;
            let process = |work: &mut Work, g: &mut [Complex32], s: &mut [u8], item: usize| {
                let (p, st) = (item / k, item % k);
                problem.initial_state(p, st, g, s);
                let it = Item {
                    plan: &plan,
                    at: &at[p * l..(p + 1) * l],
                    amp: problem.amplitude(p),
                    ml_eps: ml_eps(problem.sum_a2[p], problem.measured[p]),
                    sum_a2: problem.sum_a2[p],
                    counts: counts[p],
                    constraint: problem.constraint,
                    cancel: &problem.cancel,
                };
                let mut hist = Histories {
                    f: vec![0.0f32; records],
                    r: vec![0.0f32; records],
                    llk: vec![0.0f32; records],
                    free: vec![0.0f32; records],
                    factor: problem.sw_factor(item),
                    events: 0,
                };
                let merit = it.run(work, g, s, program, &mut hist, progress);
                let kept = problem.keep_all.then(|| (g.to_vec(), s.to_vec()));
                let mut slot = best[p].lock().unwrap_or_else(|e| e.into_inner());
                let replace = match slot.as_ref() {
                    None => true,
                    Some((m, s0, _, _)) => sel.better(&merit, st, m, *s0),
                };
                if replace {
                    match slot.as_mut() {
                        Some(b) => {
                            b.0 = merit;
                            b.1 = st;
                            b.2.copy_from_slice(g);
                            b.3.copy_from_slice(s);
                        }
                        None => *slot = Some((merit, st, g.to_vec(), s.to_vec())),
                    }
                }
                ItemResult { hist, merit, kept }
            };
            let poisoned = || (vec![Complex32::new(f32::NAN, f32::NAN); l], vec![0xA5u8; l]);
            let threads = self.threads();
            let results: Vec<ItemResult> = if n * k < threads {
                // Fewer items than threads: every thread works on each item in turn
                // (column blocks and row blocks shared out), one item after the other.
                let mut work = work_lanes(&plan, threads);
                let (mut g, mut s) = poisoned();
                (0..n * k)
                    .map(|item| process(&mut work, &mut g, &mut s, item))
                    .collect()
            } else {
                (0..n * k)
                    .into_par_iter()
                    .map_init(
                        || {
                            let (g, s) = poisoned();
                            (work_lanes(&plan, 1), g, s)
                        },
                        |(work, g, s), item| process(work, g, s, item),
                    )
                    .collect()
            };
            problem.cancel.check()?;
            let mut objects = Vec::with_capacity(n * l);
            let mut supports = Vec::with_capacity(n * l);
            let mut best_start = Vec::with_capacity(n);
            for b in best {
                let (_, st, g, s) = b
                    .into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .expect("every pattern has at least one start");
                best_start.push(st);
                objects.extend_from_slice(&g);
                supports.extend_from_slice(&s);
            }
            let mut fourier_error = Vec::with_capacity(n * k * records);
            let mut real_error = Vec::with_capacity(n * k * records);
            let mut llk = Vec::with_capacity(n * k * records);
            let mut free_llk = Vec::with_capacity(n * k * records);
            let mut final_fourier_error = Vec::with_capacity(n * k);
            let mut final_llk = Vec::with_capacity(n * k);
            let mut final_free_llk = Vec::with_capacity(n * k);
            let mut final_support_fraction = Vec::with_capacity(n * k);
            let mut guard_events = Vec::with_capacity(n * k);
            let mut threshold_factor = Vec::with_capacity(n * k);
            let keep = problem.keep_all;
            let mut all_o = keep.then(|| Vec::with_capacity(n * k * l));
            let mut all_s = keep.then(|| Vec::with_capacity(n * k * l));
            for r in results {
                fourier_error.extend_from_slice(&r.hist.f);
                real_error.extend_from_slice(&r.hist.r);
                llk.extend_from_slice(&r.hist.llk);
                free_llk.extend_from_slice(&r.hist.free);
                final_fourier_error.push(r.merit.fourier);
                final_llk.push(r.merit.llk);
                final_free_llk.push(r.merit.free_llk);
                final_support_fraction.push(r.merit.support_fraction);
                guard_events.push(r.hist.events);
                threshold_factor.push(r.hist.factor);
                if let (Some((g, s)), Some(ao), Some(as_)) =
                    (r.kept, all_o.as_mut(), all_s.as_mut())
                {
                    ao.extend_from_slice(&g);
                    as_.extend_from_slice(&s);
                }
            }
            Ok(PhasingOutput {
                best_start,
                objects: Stack::from_vec(n, h, w, objects)?,
                supports: Stack::from_vec(n, h, w, supports)?,
                all_objects: all_o,
                all_supports: all_s,
                fourier_error,
                real_error,
                final_fourier_error,
                records,
                llk,
                free_llk,
                final_llk,
                final_free_llk,
                final_support_fraction,
                guard_events,
                threshold_factor,
            })
        })
    }
}

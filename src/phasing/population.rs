//! Populations of starts (issue 19): a genetic search over the batch of starts of each
//! pattern (cohere's GA), the restart of collapsed starts, and the merge of the best starts.
//!
//! The run is the compiled [`Program`] cut into segments at checkpoints. Each segment runs
//! on the backend as one batch of N*K items (every (pattern, start) item its own "pattern"
//! with one start, its object, support and threshold factor given), so the engines run
//! unchanged; between segments the host reads every item back, and:
//! - **restarts** an item whose support guard refused more than `guard` shrinkwraps since
//!   its last (re)start, or whose support fraction lies outside the selection's filter,
//!   from a new random object (seeded by (seed, pattern, start, restart number)) and the
//!   starting support, for the rest of the run;
//! - **breeds** (a GA generation): ranks the starts of each pattern by the selection
//!   criterion measured on the support-projected objects, keeps the best `keep` unchanged
//!   and replaces every other start by a child of two distinct kept parents a, b (drawn
//!   from (seed, generation, pattern, start)): `sqrt(|a| |b'|)` with a's phase, b' being b
//!   aligned onto a (translation, twin, global phase: [`super::merge::Aligner`]); its
//!   support is recomputed by a shrinkwrap of the child (the last shrinkwrap parameters of
//!   the program before the checkpoint, the child's threshold factor), a's support when
//!   that falls outside the selection's filter.
//!
//! Cutting is exact up to rounding: an item's state is (iterate, support, threshold
//! factor), except that the CPU engine carries the row transforms of the rows without
//! support pixels across iterations, which re-entering from the iterate rounds once (one
//! FFT round trip). An item that is neither restarted nor replaced follows the trajectory
//! of a run cut at the same checkpoints bit for bit, and the uncut run's to that rounding
//! (which HIO, being chaotic, may amplify). On the CPU engine the state is on the host
//! anyway; the GPU backends run the same checkpoints with the state kept on the device
//! ([`crate::backend::gpu::segmented`], the same decisions through [`restart_due`],
//! [`cull_pattern`] and [`breed_plan`]) and fall back to this runner, a host round trip of
//! every item per checkpoint, only when the state does not fit the device.

use super::merge::{merge, to_c64, Aligner};
use super::missing::MissingCentre;
use super::problem::{
    decode_free, llk_term, FinalMerit, InitObjects, PhasingOutput, PhasingProblem, Selection,
};
use super::program::{Constraint, Op, Program, ThresholdRef};
use crate::array::{Complex32, Stack};
use crate::backend::{Backend, Progress};
use crate::fft::Plan2d;
use crate::rng::{item_seed, unit};
use crate::{Error, Result};
use rand_xoshiro::rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;

/// `--population generations=G,keep=N[,every=K]`: G breeding steps, every K iterations
/// (default: the run's iterations / (G + 1)), keeping the best N starts of each pattern.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct PopulationConfig {
    pub generations: u32,
    pub keep: usize,
    pub every: Option<u64>,
}

/// `--restart guard=R[,every=K][,until=I]`: at checkpoints every K iterations (default 100)
/// up to iteration I (default: half the run), restart a start whose support guard refused
/// more than R shrinkwraps since its last (re)start (default 3), or whose support fraction
/// lies outside `--support-fraction`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct RestartConfig {
    pub guard: u32,
    pub every: u64,
    pub until: Option<u64>,
}

/// `--cull at=ITER,keep=N`: after ITER iterations only the best N starts of each pattern
/// (by the selection criterion, measured on the host on the support-projected objects, the
/// support filter first) go on; the others stop there, saving their time, and are never
/// chosen or merged.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct CullConfig {
    pub at: u64,
    pub keep: usize,
}

impl CullConfig {
    /// Parse `at=ITER,keep=N`.
    pub fn parse(text: &str) -> Result<CullConfig> {
        let what = "--cull";
        let (mut at, mut keep) = (None, None);
        for (k, v) in kv_pairs(text, what)? {
            match k.as_str() {
                "at" => at = Some(uint(what, &k, &v)?),
                "keep" => keep = Some(uint(what, &k, &v)?),
                other => {
                    return Err(Error::Config(format!(
                        "{what}: unknown option '{other}': expected at, keep"
                    )))
                }
            }
        }
        let at = at.filter(|&a| a > 0).ok_or_else(|| {
            Error::Config(format!("{what} needs at=ITER > 0 (e.g. at=300,keep=4)"))
        })?;
        let keep = keep.filter(|&k| k > 0).ok_or_else(|| {
            Error::Config(format!(
                "{what} needs keep=N >= 1, the starts of each pattern that go on"
            ))
        })? as usize;
        Ok(CullConfig { at, keep })
    }
}

/// Default period of the restart checkpoints (iterations).
pub const DEFAULT_RESTART_EVERY: u64 = 100;
/// Default number of guard refusals tolerated before a restart.
pub const DEFAULT_RESTART_GUARD: u32 = 3;
/// Number of modes kept by `--merge` (at most the number of merged starts).
pub const MERGE_MODES: usize = 3;

/// Populations, restarts and merging of a run (all off by default).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Strategy {
    pub population: Option<PopulationConfig>,
    pub restart: Option<RestartConfig>,
    /// Merge the best `merge` starts of each pattern (0: no merge).
    pub merge: usize,
    /// Keep-the-best-N culling (`--cull`).
    pub cull: Option<CullConfig>,
    /// What the modulus projection does with masked pixels (`--missing-centre`).
    pub missing_centre: MissingCentre,
}

fn kv_pairs(text: &str, what: &str) -> Result<Vec<(String, String)>> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            part.split_once('=')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .ok_or_else(|| Error::Config(format!("{what} option '{part}' is not key=value")))
        })
        .collect()
}

fn uint(what: &str, k: &str, v: &str) -> Result<u64> {
    v.parse::<u64>()
        .map_err(|_| Error::Config(format!("{what} {k}: '{v}' is not a non-negative integer")))
}

impl PopulationConfig {
    /// Parse `generations=G,keep=N[,every=K]`.
    pub fn parse(text: &str) -> Result<PopulationConfig> {
        let what = "--population";
        let (mut g, mut keep, mut every) = (None, None, None);
        for (k, v) in kv_pairs(text, what)? {
            match k.as_str() {
                "generations" | "g" => g = Some(uint(what, &k, &v)?),
                "keep" => keep = Some(uint(what, &k, &v)?),
                "every" => every = Some(uint(what, &k, &v)?),
                other => {
                    return Err(Error::Config(format!(
                        "{what}: unknown option '{other}': expected generations, keep, every"
                    )))
                }
            }
        }
        let generations = g.ok_or_else(|| {
            Error::Config(format!(
                "{what} needs generations=G (e.g. generations=3,keep=4)"
            ))
        })?;
        if generations == 0 || generations > 1000 {
            return Err(Error::Config(format!(
                "{what} generations={generations}: expected 1..1000"
            )));
        }
        let keep = keep.ok_or_else(|| {
            Error::Config(format!(
                "{what} needs keep=N, the starts kept per generation (at least 2: a child has two parents)"
            ))
        })?;
        if keep < 2 {
            return Err(Error::Config(format!(
                "{what} keep={keep}: at least 2 (a child has two distinct parents)"
            )));
        }
        if every == Some(0) {
            return Err(Error::Config(format!(
                "{what} every=0: at least 1 iteration"
            )));
        }
        Ok(PopulationConfig {
            generations: generations as u32,
            keep: keep as usize,
            every,
        })
    }
}

impl RestartConfig {
    /// Parse `guard=R[,every=K][,until=I]` (`default` or an empty text: all defaults).
    pub fn parse(text: &str) -> Result<RestartConfig> {
        let what = "--restart";
        let mut c = RestartConfig {
            guard: DEFAULT_RESTART_GUARD,
            every: DEFAULT_RESTART_EVERY,
            until: None,
        };
        let text = if text.trim().eq_ignore_ascii_case("default") {
            ""
        } else {
            text
        };
        for (k, v) in kv_pairs(text, what)? {
            match k.as_str() {
                "guard" => {
                    c.guard = u32::try_from(uint(what, &k, &v)?)
                        .map_err(|_| Error::Config(format!("{what} guard={v}: too large")))?
                }
                "every" => c.every = uint(what, &k, &v)?,
                "until" => c.until = Some(uint(what, &k, &v)?),
                other => {
                    return Err(Error::Config(format!(
                        "{what}: unknown option '{other}': expected guard, every, until"
                    )))
                }
            }
        }
        if c.every == 0 {
            return Err(Error::Config(format!(
                "{what} every=0: at least 1 iteration"
            )));
        }
        Ok(c)
    }
}

/// What happens at one checkpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Checkpoint {
    /// Iterations done when it happens.
    pub at: u64,
    /// GA generation index, if one breeds here.
    pub generation: Option<usize>,
    pub restart: bool,
    /// The worst starts stop here (`--cull`).
    pub cull: bool,
}

impl Strategy {
    /// Does the run need the segmented runner?
    pub fn segmented(&self) -> bool {
        self.population.is_some()
            || self.restart.is_some()
            || self.cull.is_some()
            || self.missing_centre.active()
    }

    /// The checkpoints of a run of `total` iterations, in order.
    pub fn checkpoints(&self, total: u64) -> Result<Vec<Checkpoint>> {
        let mut cps: std::collections::BTreeMap<u64, Checkpoint> = Default::default();
        if let Some(pc) = &self.population {
            let every = pc.every.unwrap_or(total / (pc.generations as u64 + 1));
            for g in 1..=pc.generations as u64 {
                let at = g * every;
                if every == 0 || at >= total {
                    return Err(Error::Config(format!(
                        "--population: generation {g} at iteration {at} is not inside the run of {total} iterations: lower generations or every"
                    )));
                }
                cps.entry(at)
                    .or_insert(Checkpoint {
                        at,
                        generation: None,
                        restart: false,
                        cull: false,
                    })
                    .generation = Some(g as usize - 1);
            }
        }
        if let Some(rc) = &self.restart {
            let until = rc.until.unwrap_or(total / 2).min(total.saturating_sub(1));
            let mut at = rc.every;
            while at <= until {
                cps.entry(at)
                    .or_insert(Checkpoint {
                        at,
                        generation: None,
                        restart: false,
                        cull: false,
                    })
                    .restart = true;
                at += rc.every;
            }
        }
        if let Some(c) = &self.cull {
            if c.at >= total {
                return Err(Error::Config(format!(
                    "--cull at={}: not inside the run of {total} iterations",
                    c.at
                )));
            }
            cps.entry(c.at)
                .or_insert(Checkpoint {
                    at: c.at,
                    generation: None,
                    restart: false,
                    cull: false,
                })
                .cull = true;
        }
        // the amplitudes change here: a cut, nothing else
        if self.missing_centre.active() {
            self.missing_centre.check(total)?;
            if let Some(at) = self.missing_centre.switch_at() {
                cps.entry(at).or_insert(Checkpoint {
                    at,
                    generation: None,
                    restart: false,
                    cull: false,
                });
            }
        }
        Ok(cps.into_values().collect())
    }
}

/// Cut a program at the iteration counts `cuts` (strictly increasing, inside the run): one
/// program per segment. A shrinkwrap that falls on a cut stays in the segment before it;
/// an iteration block cut in two records only in its second part, as the uncut block
/// does at its end.
pub fn split_program(program: &Program, cuts: &[u64]) -> Vec<Program> {
    let mut segs: Vec<Vec<Op>> = vec![Vec::new()];
    let mut next = 0usize;
    let mut done = 0u64;
    for op in &program.ops {
        match *op {
            Op::Shrinkwrap { .. } => segs.last_mut().expect("one segment").push(*op),
            Op::Iterate {
                alg,
                beta,
                update,
                count,
                record,
            } => {
                let mut left = count;
                while left > 0 {
                    if next < cuts.len() && done == cuts[next] {
                        segs.push(Vec::new());
                        next += 1;
                        continue;
                    }
                    let chunk = if next < cuts.len() {
                        left.min(cuts[next] - done)
                    } else {
                        left
                    };
                    left -= chunk;
                    done += chunk;
                    segs.last_mut().expect("one segment").push(Op::Iterate {
                        alg,
                        beta,
                        update,
                        count: chunk,
                        record: record && left == 0,
                    });
                }
            }
            Op::Ml {
                count,
                record,
                fresh,
            } => {
                // the conjugate-gradient state does not cross a cut (each segment is a new
                // backend run): the first ML chunk of a segment starts fresh
                let mut carried = !fresh;
                let mut left = count;
                while left > 0 {
                    if next < cuts.len() && done == cuts[next] {
                        segs.push(Vec::new());
                        next += 1;
                        carried = false;
                        continue;
                    }
                    let chunk = if next < cuts.len() {
                        left.min(cuts[next] - done)
                    } else {
                        left
                    };
                    left -= chunk;
                    done += chunk;
                    segs.last_mut().expect("one segment").push(Op::Ml {
                        count: chunk,
                        record: record && left == 0,
                        fresh: !carried,
                    });
                    carried = true;
                }
            }
        }
    }
    segs.into_iter()
        .map(|ops| Program {
            records: ops
                .iter()
                .filter(|o| {
                    matches!(
                        o,
                        Op::Iterate { record: true, .. } | Op::Ml { record: true, .. }
                    )
                })
                .count(),
            iterations: ops
                .iter()
                .map(|o| match o {
                    Op::Iterate { count, .. } | Op::Ml { count, .. } => *count,
                    Op::Shrinkwrap { .. } => 0,
                })
                .sum(),
            ops,
            guard: program.guard,
        })
        .collect()
}

/// The object of an iterate: `g` inside the support, with the real-space constraint.
pub fn projected(g: &[Complex32], s: &[u8], constraint: Constraint) -> Vec<Complex32> {
    g.iter()
        .zip(s)
        .map(|(c, &m)| {
            if m == 0 {
                Complex32::new(0.0, 0.0)
            } else {
                match constraint {
                    Constraint::None => *c,
                    Constraint::Real => Complex32::new(c.re, 0.0),
                    Constraint::Positive => Complex32::new(c.re.max(0.0), 0.0),
                }
            }
        })
        .collect()
}

/// The figures of merit of an object (native order) against pattern `p` of the problem,
/// in float64: Fourier error, Poisson LLK and free LLK (as the engines define them), and
/// the fraction of the support `s`.
pub fn host_merit(
    problem: &PhasingProblem,
    plan: &Plan2d,
    p: usize,
    obj: &[Complex32],
    s: &[u8],
) -> FinalMerit {
    let mut f = obj.to_vec();
    plan.forward(&mut f, &mut plan.scratch());
    let (mut err, mut lm, mut lf, mut nm, mut nf) = (0.0f64, 0.0f64, 0.0f64, 0usize, 0usize);
    for (c, &a) in f.iter().zip(problem.amplitude(p)) {
        let ic = c.norm_sqr();
        if a >= 0.0 {
            let d = c.norm() as f64 - a as f64;
            err += d * d;
            lm += llk_term(ic, a) as f64;
            nm += 1;
        } else if let Some(af) = decode_free(a) {
            lf += llk_term(ic, af) as f64;
            nf += 1;
        }
    }
    let (llk, free_llk) = super::problem::llk_means(lm, nm, lf, nf);
    FinalMerit {
        fourier: if problem.sum_a2[p] > 0.0 {
            (err / problem.sum_a2[p]).sqrt() as f32
        } else {
            0.0
        },
        llk,
        free_llk,
        support_fraction: (s.iter().filter(|&&v| v != 0).count() as f64 / s.len().max(1) as f64)
            as f32,
    }
}

/// Periodic Gaussian blur of |c| (truncated at 4 sigma), with the CPU engine's own
/// shrinkwrap kernels (so the same numbers as its shrinkwrap).
fn blurred_modulus(c: &[Complex32], h: usize, w: usize, sigma: f32) -> Vec<f32> {
    use crate::backend::cpu::phasing::kernels::{blur_cols, blur_rows, gaussian_kernel};
    let m: Vec<f32> = c.iter().map(|v| v.norm()).collect();
    if sigma <= 0.0 {
        return m;
    }
    let mut k = Vec::new();
    gaussian_kernel(sigma, &mut k);
    let mut tmp = vec![0.0f32; h * w];
    blur_rows(&m, h, w, &k, &mut tmp);
    let mut out = vec![0.0f32; h * w];
    blur_cols(&tmp, h, w, &k, &mut out);
    out
}

/// A shrinkwrap of `c` on the host: blurred modulus at or above `threshold` times its
/// maximum (or its mean / rms over `current`).
pub fn host_shrinkwrap(
    c: &[Complex32],
    current: &[u8],
    h: usize,
    w: usize,
    sigma: f32,
    threshold: f32,
    reference: ThresholdRef,
) -> Vec<u8> {
    let b = blurred_modulus(c, h, w, sigma);
    let r = match reference {
        ThresholdRef::Max => b.iter().copied().fold(0.0f32, f32::max) as f64,
        ThresholdRef::Mean | ThresholdRef::Rms => {
            let (mut s1, mut s2, mut n) = (0.0f64, 0.0f64, 0usize);
            for (&v, &m) in b.iter().zip(current) {
                if m != 0 {
                    s1 += v as f64;
                    s2 += (v as f64).powi(2);
                    n += 1;
                }
            }
            let n = n.max(1) as f64;
            if reference == ThresholdRef::Mean {
                s1 / n
            } else {
                (s2 / n).sqrt()
            }
        }
    };
    let t = (threshold as f64 * r) as f32;
    if !(t > 0.0 && t.is_finite()) {
        return vec![0; h * w];
    }
    b.iter().map(|&v| (v >= t) as u8).collect()
}

/// The shrinkwrap parameters in force at iteration `at` of the program: those of its last
/// shrinkwrap before, else the defaults (sigma 1, threshold 0.1 of the maximum).
pub fn shrinkwrap_at(program: &Program, at: u64) -> (f32, f32, ThresholdRef) {
    let mut done = 0u64;
    let mut last = (1.0, 0.1, ThresholdRef::Max);
    for op in &program.ops {
        match *op {
            Op::Iterate { count, .. } | Op::Ml { count, .. } => {
                done += count;
                if done > at {
                    break;
                }
            }
            Op::Shrinkwrap {
                sigma,
                threshold,
                reference,
            } => last = (sigma, threshold, reference),
        }
    }
    last
}

/// Per-item bookkeeping of a segmented run, reported with the reconstruction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunLog {
    /// N*K: restarts of each start.
    pub restarts: Vec<u32>,
    /// N*K: times each start was replaced by a child (GA).
    pub replaced: Vec<u32>,
    /// N*G: per pattern and generation, the selection criterion of the best start at the
    /// checkpoint (on its support-projected object).
    pub generation_best: Vec<f32>,
    pub generations: usize,
    /// N*K: the iteration at which `--cull` stopped each start (0: it ran to the end).
    pub culled_at: Vec<u64>,
}

impl RunLog {
    /// The empty log of a run of `items` starts over `n` patterns with `strategy`'s
    /// generations (none without a population).
    pub fn for_run(strategy: &Strategy, n: usize, items: usize) -> Self {
        let generations = strategy
            .population
            .map(|p| p.generations as usize)
            .unwrap_or(0);
        RunLog {
            restarts: vec![0; items],
            replaced: vec![0; items],
            generation_best: vec![f32::NAN; n * generations],
            generations,
            culled_at: vec![0; items],
        }
    }
}

/// Salts of the random streams of restarts and breeding.
const RESTART_SALT: u64 = 0x7E57_A27E_D0C0_FFEE;
const GA_SALT: u64 = 0x6E4E_71C5_0B1E_C7ED;

/// Is item restart due at a restart checkpoint: more than `rc.guard` guard refusals
/// since its last (re)start (`since`), or its support fraction `frac` outside the
/// selection's filter?
pub fn restart_due(sel: Selection, rc: &RestartConfig, since: u32, frac: f32) -> bool {
    let outside = !(frac >= sel.min_fraction && frac <= sel.max_fraction);
    since > rc.guard || outside
}

/// The new state of item `i` (pattern-major) at its `number`-th restart: the problem's
/// starting support and a random object seeded by (seed, pattern, start, number).
pub fn restart_state(
    problem: &PhasingProblem,
    seed: u64,
    i: usize,
    number: u32,
    g: &mut [Complex32],
    s: &mut [u8],
) {
    let k = problem.starts;
    let (p, st) = (i / k, i % k);
    let si_ = if problem.supports.n == 1 { 0 } else { p };
    s.copy_from_slice(problem.supports.image(si_));
    // derived from item_seed(seed, p, st) first, so that a block's offset seed gives the
    // whole-file run's draws
    let rs = item_seed(item_seed(seed, p, st) ^ RESTART_SALT, number as usize, 0);
    problem.random_object(p, rs, g, s);
}

/// Run `program` on `problem` with restarts, a GA population, culling and/or the
/// missing-centre modes (see the module's text and [`super::missing`]). Returns the
/// backend-shaped output with every start's object and support, and the log. `seed` is
/// the run's seed (`--seed`). A start stopped by `--cull` keeps its object, support and
/// figures of merit of the cull (measured on the host, against the problem's data) and NaN
/// in its histories after it.
pub fn run_segmented(
    backend: &dyn Backend,
    problem: &PhasingProblem,
    program: &Program,
    strategy: &Strategy,
    seed: u64,
    progress: Progress<'_>,
) -> Result<(PhasingOutput, RunLog)> {
    let (n, k, h, w) = (problem.n, problem.starts, problem.h, problem.w);
    let l = h * w;
    let items = n * k;
    let cps = strategy.checkpoints(program.iterations)?;
    let cuts: Vec<u64> = cps.iter().map(|c| c.at).collect();
    let segs = split_program(program, &cuts);
    debug_assert_eq!(segs.len(), cuts.len() + 1);
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
    let mut events = vec![0u32; items];
    let mut since = vec![0u32; items];
    let mut log = RunLog::for_run(strategy, n, items);
    let mut hist: [Vec<Vec<f32>>; 4] = std::array::from_fn(|_| vec![Vec::new(); items]);
    let mc = strategy.missing_centre;
    let filled = match mc {
        MissingCentre::Interpolate { .. } => super::missing::interpolate_all(problem)?,
        _ => Vec::new(),
    };
    let mut fin = vec![
        FinalMerit {
            fourier: f32::NAN,
            llk: f32::NAN,
            free_llk: f32::NAN,
            support_fraction: f32::NAN,
        };
        items
    ];
    let mut alive = vec![true; items];
    let plan = Plan2d::new(h, w);
    let aligner = Aligner::new(h, w);
    let sel = problem.selection;
    let mut done = 0u64;
    for (si, seg) in segs.iter().enumerate() {
        // the items that go on, and the amplitudes of this segment (the missing centre)
        let idx: Vec<usize> = (0..items).filter(|&i| alive[i]).collect();
        let m = idx.len();
        let seg_amp = mc.amplitudes(problem, done, &filled);
        // filled pixels count as measured while they are held (the error's denominator
        // too); otherwise the problem's own sums
        let filling = matches!(mc, MissingCentre::Interpolate { until } if done < until);
        let mut amplitudes = Vec::with_capacity(m * l);
        let (mut sum_a2, mut measured) = (Vec::with_capacity(m), Vec::with_capacity(m));
        let mut objects = Vec::with_capacity(m * l);
        let mut supports = Vec::with_capacity(m * l);
        for &i in &idx {
            let a = &seg_amp[(i / k) * l..(i / k + 1) * l];
            amplitudes.extend_from_slice(a);
            if filling {
                let mut sa = 0.0f64;
                let mut cnt = 0usize;
                for &v in a.iter().filter(|&&v| v >= 0.0) {
                    sa += (v as f64) * (v as f64);
                    cnt += 1;
                }
                sum_a2.push(sa);
                measured.push(cnt);
            } else {
                sum_a2.push(problem.sum_a2[i / k]);
                measured.push(problem.measured[i / k]);
            }
            objects.extend_from_slice(&g[i * l..(i + 1) * l]);
            supports.extend_from_slice(&s[i * l..(i + 1) * l]);
        }
        let sub = PhasingProblem {
            n: m,
            h,
            w,
            starts: 1,
            amplitudes,
            sum_a2,
            measured,
            supports: Stack::from_vec(m, h, w, supports)?,
            init: InitObjects::Given {
                objects: Stack::from_vec(m, h, w, objects)?,
                noise: 0.0,
                seed: 0,
            },
            constraint: problem.constraint,
            keep_all: false,
            cancel: problem.cancel.clone(),
            selection: problem.selection,
            sw_factors: idx.iter().map(|&i| factor[i]).collect(),
        };
        let out = backend.run_phasing(&sub, seg, progress)?;
        problem.cancel.check()?;
        done += seg.iterations;
        let r = seg.records;
        let mut j_of = vec![usize::MAX; items];
        for (j, &i) in idx.iter().enumerate() {
            j_of[i] = j;
            g[i * l..(i + 1) * l].copy_from_slice(&out.objects.data[j * l..(j + 1) * l]);
            s[i * l..(i + 1) * l].copy_from_slice(&out.supports.data[j * l..(j + 1) * l]);
            events[i] += out.guard_events[j];
            since[i] += out.guard_events[j];
            factor[i] = out.threshold_factor[j];
            fin[i] = out.final_merit(j);
        }
        let srcs = [&out.fourier_error, &out.real_error, &out.llk, &out.free_llk];
        for (hh, src) in hist.iter_mut().zip(srcs) {
            for (i, hi) in hh.iter_mut().enumerate() {
                match j_of[i] {
                    usize::MAX => hi.extend(std::iter::repeat_n(f32::NAN, r)),
                    j => hi.extend_from_slice(&src[j * r..(j + 1) * r]),
                }
            }
        }
        let cp = cps.get(si).copied();
        if let Some(cp) = cp {
            // restarts first: a restarted start takes no part in this generation
            let mut fresh = vec![false; items];
            if let (true, Some(rc)) = (cp.restart, strategy.restart) {
                for i in (0..items).filter(|&i| alive[i]) {
                    if restart_due(sel, &rc, since[i], fin[i].support_fraction) {
                        log.restarts[i] += 1;
                        since[i] = 0;
                        factor[i] = problem.sw_factor(i);
                        restart_state(
                            problem,
                            seed,
                            i,
                            log.restarts[i],
                            &mut g[i * l..(i + 1) * l],
                            &mut s[i * l..(i + 1) * l],
                        );
                        fresh[i] = true;
                    }
                }
            }
            if let (true, Some(cc)) = (cp.cull, strategy.cull) {
                let stopped = cull(problem, &plan, &g, &s, &alive, cc.keep);
                for i in stopped {
                    alive[i] = false;
                    log.culled_at[i] = cp.at;
                    let (o, si_) = (&g[i * l..(i + 1) * l], &s[i * l..(i + 1) * l]);
                    fin[i] = host_merit(
                        problem,
                        &plan,
                        i / k,
                        &projected(o, si_, problem.constraint),
                        si_,
                    );
                }
            }
            if let (Some(gen), Some(pc)) = (cp.generation, strategy.population) {
                // stopped starts neither breed nor are replaced, as restarted ones
                for i in 0..items {
                    fresh[i] |= !alive[i];
                }
                let (sigma, threshold, reference) = shrinkwrap_at(program, cp.at);
                let ctx = Breed {
                    problem,
                    plan: &plan,
                    aligner: &aligner,
                    keep: pc.keep,
                    generation: gen,
                    seed,
                    sigma,
                    threshold,
                    reference,
                };
                let results: Vec<(Vec<usize>, f32)> = g
                    .par_chunks_mut(k * l)
                    .zip(s.par_chunks_mut(k * l))
                    .enumerate()
                    .map(|(p, (gp, sp))| {
                        ctx.pattern(
                            p,
                            gp,
                            sp,
                            &fresh[p * k..(p + 1) * k],
                            &factor[p * k..(p + 1) * k],
                        )
                    })
                    .collect();
                for (p, (children, best)) in results.into_iter().enumerate() {
                    log.generation_best[p * log.generations + gen] = best;
                    for st in children {
                        log.replaced[p * k + st] += 1;
                        since[p * k + st] = 0;
                    }
                }
            }
        }
    }
    let best_start = sel.best_starts(&ranked_merits(&fin, &log.culled_at), k);
    let mut objects = Vec::with_capacity(n * l);
    let mut supports = Vec::with_capacity(n * l);
    for (p, &b) in best_start.iter().enumerate() {
        let i = p * k + b;
        objects.extend_from_slice(&g[i * l..(i + 1) * l]);
        supports.extend_from_slice(&s[i * l..(i + 1) * l]);
    }
    let flat = |v: &[Vec<f32>]| v.concat();
    Ok((
        PhasingOutput {
            best_start,
            objects: Stack::from_vec(n, h, w, objects)?,
            supports: Stack::from_vec(n, h, w, supports)?,
            all_objects: Some(g),
            all_supports: Some(s),
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
    ))
}

/// The merits the selection and the merge rank: a start stopped by `--cull`
/// (`culled_at` > 0) gets NaN everywhere, so it ranks after every start that ran to the end.
pub fn ranked_merits(merits: &[FinalMerit], culled_at: &[u64]) -> Vec<FinalMerit> {
    merits
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if culled_at.get(i).copied().unwrap_or(0) > 0 {
                FinalMerit {
                    fourier: f32::NAN,
                    llk: f32::NAN,
                    free_llk: f32::NAN,
                    support_fraction: f32::NAN,
                }
            } else {
                *m
            }
        })
        .collect()
}

/// The starts `--cull` stops: per pattern, the running (`alive`) starts after the best
/// `keep`, ranked by the selection (support filter first, then the criterion, ties to the
/// lower start) on their support-projected objects against the problem's data.
pub fn cull(
    problem: &PhasingProblem,
    plan: &Plan2d,
    g: &[Complex32],
    s: &[u8],
    alive: &[bool],
    keep: usize,
) -> Vec<usize> {
    let (k, l) = (problem.starts, problem.h * problem.w);
    let sel = problem.selection;
    let per: Vec<Vec<usize>> = (0..problem.n)
        .into_par_iter()
        .map(|p| {
            let cands: Vec<usize> = (p * k..(p + 1) * k).filter(|&i| alive[i]).collect();
            let merits: Vec<FinalMerit> = cands
                .iter()
                .map(|&i| {
                    let (o, si) = (&g[i * l..(i + 1) * l], &s[i * l..(i + 1) * l]);
                    host_merit(problem, plan, p, &projected(o, si, problem.constraint), si)
                })
                .collect();
            cull_pattern(sel, keep, k, &cands, &merits)
        })
        .collect();
    per.concat()
}

/// The starts `--cull` stops among the running items `cands` of one pattern (item indices,
/// pattern-major with `k` starts) whose merits on their support-projected objects are
/// `merits`: those after the best `keep` (support filter first, then the criterion, ties
/// to the lower start).
pub fn cull_pattern(
    sel: Selection,
    keep: usize,
    k: usize,
    cands: &[usize],
    merits: &[FinalMerit],
) -> Vec<usize> {
    let mut ranked: Vec<((bool, f32, usize), usize)> = cands
        .iter()
        .zip(merits)
        .map(|(&i, m)| (sel.key(m, i % k), i))
        .collect();
    ranked.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    ranked.iter().skip(keep).map(|&(_, i)| i).collect()
}

/// One child of a GA generation: start `start` is replaced by the child of the kept
/// starts `a` (its phase, and its support as the shrinkwrap's current one) and `b`
/// (aligned onto a).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Child {
    pub start: usize,
    pub a: usize,
    pub b: usize,
}

/// The host's decisions of one generation for pattern `p`: the candidates `cands` (starts
/// that neither were just restarted nor stopped, ascending) with their merits on their
/// support-projected objects are ranked by the selection; the best `keep` stay, every other
/// candidate is replaced by a child of two distinct kept starts drawn from (seed, p, start,
/// generation). Returns the children (ascending start) and the best criterion value. The
/// host breeding and the device-resident runner both draw here, so they draw alike.
pub fn breed_plan(
    sel: Selection,
    keep: usize,
    seed: u64,
    generation: usize,
    p: usize,
    cands: &[usize],
    merits: &[FinalMerit],
) -> (Vec<Child>, f32) {
    let mut order: Vec<usize> = (0..cands.len()).collect();
    order.sort_by(|&a, &b| {
        sel.key(&merits[a], cands[a])
            .partial_cmp(&sel.key(&merits[b], cands[b]))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let best = order
        .first()
        .map(|&j| sel.key(&merits[j], cands[j]).1)
        .unwrap_or(f32::NAN);
    if cands.len() <= keep {
        return (Vec::new(), best);
    }
    let elites: Vec<usize> = order[..keep].iter().map(|&j| cands[j]).collect();
    let mut children: Vec<usize> = order[keep..].iter().map(|&j| cands[j]).collect();
    children.sort_unstable();
    let plan = children
        .into_iter()
        .map(|st| {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(item_seed(
                item_seed(seed, p, st) ^ GA_SALT,
                generation,
                0,
            ));
            let ia = (unit(rng.next_u64()) * keep as f32) as usize % keep;
            let ib = {
                let o = 1 + (unit(rng.next_u64()) * (keep - 1) as f32) as usize % (keep - 1);
                (ia + o) % keep
            };
            Child {
                start: st,
                a: elites[ia],
                b: elites[ib],
            }
        })
        .collect();
    (plan, best)
}

/// One GA generation's shared inputs.
struct Breed<'a> {
    problem: &'a PhasingProblem,
    plan: &'a Plan2d,
    aligner: &'a Aligner,
    keep: usize,
    generation: usize,
    seed: u64,
    sigma: f32,
    threshold: f32,
    reference: ThresholdRef,
}

impl Breed<'_> {
    /// Breed the starts of pattern `p` (`g`, `s`: its K iterates and supports) in place;
    /// `fresh` starts (just restarted) neither breed nor are replaced. Returns the replaced
    /// starts and the best start's criterion value.
    fn pattern(
        &self,
        p: usize,
        g: &mut [Complex32],
        s: &mut [u8],
        fresh: &[bool],
        factor: &[f32],
    ) -> (Vec<usize>, f32) {
        let pb = self.problem;
        let (h, w) = (pb.h, pb.w);
        let l = h * w;
        let sel = pb.selection;
        let cands: Vec<usize> = (0..fresh.len()).filter(|&st| !fresh[st]).collect();
        let objs: Vec<Vec<Complex32>> = cands
            .iter()
            .map(|&st| {
                projected(
                    &g[st * l..(st + 1) * l],
                    &s[st * l..(st + 1) * l],
                    pb.constraint,
                )
            })
            .collect();
        let merits: Vec<FinalMerit> = cands
            .iter()
            .zip(&objs)
            .map(|(&st, o)| host_merit(pb, self.plan, p, o, &s[st * l..(st + 1) * l]))
            .collect();
        let (plan, best) = breed_plan(
            sel,
            self.keep,
            self.seed,
            self.generation,
            p,
            &cands,
            &merits,
        );
        let pos = |st: usize| cands.iter().position(|&c| c == st).expect("a candidate");
        let mut c64: Vec<Option<Vec<num_complex::Complex64>>> = vec![None; cands.len()];
        for c in &plan {
            for st in [c.a, c.b] {
                let j = pos(st);
                if c64[j].is_none() {
                    c64[j] = Some(to_c64(&objs[j]));
                }
            }
        }
        for c in &plan {
            let st = c.start;
            let a = c64[pos(c.a)].as_ref().expect("converted");
            let b = c64[pos(c.b)].as_ref().expect("converted");
            let al = self.aligner.align(a, b);
            let bb = self.aligner.apply(b, &al);
            let child: Vec<Complex32> = a
                .iter()
                .zip(&bb)
                .map(|(x, y)| {
                    let m = x.norm();
                    if m > 0.0 {
                        let v = x / m * (m * y.norm()).sqrt();
                        Complex32::new(v.re as f32, v.im as f32)
                    } else {
                        Complex32::new(0.0, 0.0)
                    }
                })
                .collect();
            let sa = c.a;
            let parent_sup = s[sa * l..(sa + 1) * l].to_vec();
            let mut sup = host_shrinkwrap(
                &child,
                &parent_sup,
                h,
                w,
                self.sigma,
                self.threshold * factor[st],
                self.reference,
            );
            let frac = sup.iter().filter(|&&v| v != 0).count() as f32 / l as f32;
            if !(frac >= sel.min_fraction && frac <= sel.max_fraction) || frac == 0.0 {
                sup = parent_sup;
            }
            let dst = &mut g[st * l..(st + 1) * l];
            for ((d, c), &m) in dst.iter_mut().zip(&child).zip(&sup) {
                *d = if m != 0 { *c } else { Complex32::new(0.0, 0.0) };
            }
            s[st * l..(st + 1) * l].copy_from_slice(&sup);
        }
        (plan.iter().map(|c| c.start).collect(), best)
    }
}

/// The merge of a run's best starts, per pattern (centred like the best start).
#[derive(Clone, Debug, PartialEq)]
pub struct MergedSet {
    /// Starts merged per pattern (`--merge`, at most K) and modes kept (at most that).
    pub count: usize,
    pub modes: usize,
    /// N*H*W: the average of the aligned best starts.
    pub objects: Vec<Complex32>,
    /// N*H*W: pixels in at least half of the aligned supports.
    pub supports: Vec<u8>,
    /// N*modes*H*W and N*modes: the leading modes and their energy fractions.
    pub mode_images: Vec<Complex32>,
    pub weights: Vec<f32>,
    /// N*count: the merged starts, best first.
    pub starts: Vec<i64>,
    /// N: the Fourier error and Poisson LLK of the merged object against the data.
    pub fourier_error: Vec<f32>,
    pub llk: Vec<f32>,
}

/// Merge the best `count` starts of every pattern. `all_objects` / `all_supports` are every
/// start's final iterate and support (N*K*H*W) in the centred frame of the output, whose
/// best start per pattern is the reference; `merits` are the N*K final merits.
pub fn merge_starts(
    problem: &PhasingProblem,
    all_objects: &[Complex32],
    all_supports: &[u8],
    merits: &[FinalMerit],
    count: usize,
) -> MergedSet {
    let (n, k, h, w) = (problem.n, problem.starts, problem.h, problem.w);
    let l = h * w;
    let count = count.min(k).max(1);
    let modes = MERGE_MODES.min(count);
    let aligner = Aligner::new(h, w);
    let plan = Plan2d::new(h, w);
    let sel = problem.selection;
    let per: Vec<_> = (0..n)
        .into_par_iter()
        .map(|p| {
            let mut order: Vec<usize> = (0..k).collect();
            order.sort_by(|&a, &b| {
                sel.key(&merits[p * k + a], a)
                    .partial_cmp(&sel.key(&merits[p * k + b], b))
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            order.truncate(count);
            let objs: Vec<Vec<Complex32>> = order
                .iter()
                .map(|&st| {
                    let i = p * k + st;
                    projected(
                        &all_objects[i * l..(i + 1) * l],
                        &all_supports[i * l..(i + 1) * l],
                        Constraint::None,
                    )
                })
                .collect();
            let refs: Vec<&[Complex32]> = objs.iter().map(|v| &v[..]).collect();
            let sups: Vec<&[u8]> = order
                .iter()
                .map(|&st| &all_supports[(p * k + st) * l..(p * k + st + 1) * l])
                .collect();
            let m = merge(&aligner, &refs, &sups, modes);
            // the merged object's merit against the data (native order)
            let mut native = vec![Complex32::new(0.0, 0.0); l];
            crate::array::centred_to_native(&m.object, h, w, &mut native);
            let mut ns = vec![0u8; l];
            crate::array::centred_to_native(&m.support, h, w, &mut ns);
            let fm = host_merit(problem, &plan, p, &native, &ns);
            (m, order, fm)
        })
        .collect();
    let mut out = MergedSet {
        count,
        modes,
        objects: Vec::with_capacity(n * l),
        supports: Vec::with_capacity(n * l),
        mode_images: Vec::with_capacity(n * modes * l),
        weights: Vec::with_capacity(n * modes),
        starts: Vec::with_capacity(n * count),
        fourier_error: Vec::with_capacity(n),
        llk: Vec::with_capacity(n),
    };
    for (m, order, fm) in per {
        out.objects.extend_from_slice(&m.object);
        out.supports.extend_from_slice(&m.support);
        out.mode_images.extend_from_slice(&m.modes);
        out.weights.extend_from_slice(&m.weights);
        out.starts.extend(order.iter().map(|&s| s as i64));
        out.fourier_error.push(fm.fourier);
        out.llk.push(fm.llk);
    }
    out
}

/// One line on the restarts of a run, when there were any.
pub fn restart_summary(restarts: &[u32], k: usize) -> Option<String> {
    let total: u64 = restarts.iter().map(|&r| r as u64).sum();
    if total == 0 || k == 0 {
        return None;
    }
    let starts = restarts.iter().filter(|&&r| r > 0).count();
    let patterns = restarts
        .chunks(k)
        .filter(|c| c.iter().any(|&r| r > 0))
        .count();
    Some(format!(
        "restarts: {total} restart(s) of {starts} of {} starts in {patterns} of {} patterns (support collapsed: guard refusals or support fraction outside the filter); counts per pattern in entry_1/image_1/restarts",
        restarts.len(),
        restarts.len() / k
    ))
}

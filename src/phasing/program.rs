//! A schedule plus the shrinkwrap and error-recording options, compiled into the flat list of
//! operations that a backend executes. This is the single place where the run's logic lives;
//! backends only execute [`Op`]s, batched over patterns x starts.

use super::schedule::{Algorithm, Schedule, Step};
use crate::{Error, Result};

/// Real-space constraint applied together with the support.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Constraint {
    /// Complex object, support only.
    None,
    /// Real object: the imaginary part is treated as lying outside the support.
    Real,
    /// Real, non-negative object: pixels with a negative real part are treated as outside.
    Positive,
}

impl std::str::FromStr for Constraint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Constraint::None),
            "real" => Ok(Constraint::Real),
            "positive" | "positivity" => Ok(Constraint::Positive),
            _ => Err(Error::Config(format!(
                "unknown constraint '{s}': expected none, real or positive"
            ))),
        }
    }
}

/// What the shrinkwrap threshold is relative to: the maximum of the blurred modulus, or its
/// mean or rms over the current support (PyNX's `method` of its support update).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum ThresholdRef {
    #[default]
    Max,
    Mean,
    Rms,
}

impl ThresholdRef {
    /// Kernel code: 0 max, 1 mean, 2 rms.
    pub fn code(self) -> i32 {
        match self {
            ThresholdRef::Max => 0,
            ThresholdRef::Mean => 1,
            ThresholdRef::Rms => 2,
        }
    }
}

/// The support guard: a shrinkwrap whose new support covers less than `min` or more than
/// `max` of the field is not applied (the support stays as it was), and that start's
/// threshold factor is divided (collapse) or multiplied (blow-up) by `tune` for its next
/// shrinkwraps: PyNX's threshold auto-tuning, per start.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct SupportGuard {
    pub min: f32,
    pub max: f32,
    pub tune: f32,
}

/// Default factor of the guard's threshold retuning.
pub const DEFAULT_GUARD_TUNE: f32 = 1.2;

/// Shrinkwrap settings: Gaussian blur of |g| then a threshold relative to the maximum (or the
/// mean or rms over the support, `reference`). `sigma` and `threshold` ramp linearly from
/// the first to the second value over the shrinkwrap applications of the run (Hawk-style
/// piecewise-linear maps with two points). Each start multiplies its thresholds by its own
/// factor, drawn uniformly from `factor` (seeded), and retuned by the guard.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ShrinkwrapConfig {
    pub sigma: (f32, f32),
    pub threshold: (f32, f32),
    pub reference: ThresholdRef,
    /// Range of the per-start threshold factors ((1, 1): none).
    pub factor: (f32, f32),
    /// Support-fraction guard (None: every shrinkwrap applies).
    pub guard: Option<SupportGuard>,
    /// Apply every `every` iterations (0: only where the schedule says `SW`).
    pub every: u64,
    /// First iteration at which periodic shrinkwrap may apply.
    pub start: u64,
    /// Last iteration at which periodic shrinkwrap may apply (None: until the end).
    pub stop: Option<u64>,
}

impl Default for ShrinkwrapConfig {
    fn default() -> Self {
        ShrinkwrapConfig {
            sigma: (1.0, 1.0),
            threshold: (0.1, 0.1),
            reference: ThresholdRef::Max,
            factor: (1.0, 1.0),
            guard: None,
            every: 0,
            start: 0,
            stop: None,
        }
    }
}

impl ShrinkwrapConfig {
    /// Parse `sigma=1,threshold=0.1,every=20,start=0,stop=9000`; `sigma=3:1` and
    /// `threshold=0.05:0.15` give linear ramps over the run; `ref=max|mean|rms`,
    /// `factor=LO:HI` (per-start threshold factors), `min=F,max=F[,tune=T]` (the guard).
    pub fn parse(text: &str) -> Result<ShrinkwrapConfig> {
        let mut c = ShrinkwrapConfig::default();
        let (mut gmin, mut gmax, mut tune) = (None, None, None);
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                Error::Config(format!(
                    "shrinkwrap option '{part}' is not key=value (e.g. sigma=1,threshold=0.1,every=20)"
                ))
            })?;
            let num = |v: &str| -> Result<f32> {
                v.trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| Error::Config(format!("shrinkwrap {k}: '{v}' is not a number")))
            };
            let range = |v: &str| -> Result<(f32, f32)> {
                match v.split_once(':') {
                    Some((a, b)) => Ok((num(a)?, num(b)?)),
                    None => {
                        let a = num(v)?;
                        Ok((a, a))
                    }
                }
            };
            let int = |v: &str| -> Result<u64> {
                v.trim().parse::<u64>().map_err(|_| {
                    Error::Config(format!(
                        "shrinkwrap {k}: '{v}' is not a non-negative integer"
                    ))
                })
            };
            match k.trim() {
                "sigma" => c.sigma = range(v)?,
                "threshold" => c.threshold = range(v)?,
                "every" => {
                    c.every = int(v)?;
                    if c.every == 0 {
                        return Err(Error::Config(
                            "shrinkwrap every=0: give a period of at least 1 iteration, or omit every to shrinkwrap only at the schedule's SW steps".into(),
                        ));
                    }
                }
                "start" => c.start = int(v)?,
                "stop" => c.stop = Some(int(v)?),
                "ref" | "reference" => {
                    c.reference = match v.trim().to_ascii_lowercase().as_str() {
                        "max" => ThresholdRef::Max,
                        "mean" | "average" => ThresholdRef::Mean,
                        "rms" => ThresholdRef::Rms,
                        o => {
                            return Err(Error::Config(format!(
                                "shrinkwrap ref '{o}': expected max, mean or rms"
                            )))
                        }
                    }
                }
                "factor" => c.factor = range(v)?,
                "min" => gmin = Some(num(v)?),
                "max" => gmax = Some(num(v)?),
                "tune" => tune = Some(num(v)?),
                other => {
                    return Err(Error::Config(format!(
                        "unknown shrinkwrap option '{other}': expected sigma, threshold, every, start, stop, ref, factor, min, max, tune"
                    )))
                }
            }
        }
        if gmin.is_some() || gmax.is_some() || tune.is_some() {
            c.guard = Some(SupportGuard {
                min: gmin.unwrap_or(0.0),
                max: gmax.unwrap_or(1.0),
                tune: tune.unwrap_or(DEFAULT_GUARD_TUNE),
            });
        }
        if (c.start > 0 || c.stop.is_some()) && c.every == 0 {
            return Err(Error::Config(
                "shrinkwrap start/stop apply to periodic shrinkwrap: give every=N too".into(),
            ));
        }
        c.validate()?;
        Ok(c)
    }

    /// Check ranges.
    pub fn validate(&self) -> Result<()> {
        if let Some(stop) = self.stop {
            if stop < self.start {
                return Err(Error::Config(format!(
                    "shrinkwrap start={} is after stop={stop}: shrinkwrap would never apply",
                    self.start
                )));
            }
        }
        for s in [self.sigma.0, self.sigma.1] {
            if !(0.0..=64.0).contains(&s) {
                return Err(Error::Config(format!(
                    "shrinkwrap sigma {s} out of range [0, 64] px"
                )));
            }
        }
        for t in [self.threshold.0, self.threshold.1] {
            if !(t > 0.0 && t < 1.0) {
                return Err(Error::Config(format!(
                    "shrinkwrap threshold {t} out of range (0, 1) (fraction of the maximum)"
                )));
            }
        }
        let (lo, hi) = self.factor;
        if !(lo > 0.0 && lo <= hi && hi <= 10.0) {
            return Err(Error::Config(format!(
                "shrinkwrap factor={lo}:{hi}: expected 0 < LO <= HI <= 10"
            )));
        }
        if let Some(g) = self.guard {
            if !(0.0..=1.0).contains(&g.min) || !(0.0..=1.0).contains(&g.max) || g.min >= g.max {
                return Err(Error::Config(format!(
                    "shrinkwrap min={} max={}: support fractions in [0, 1] with min < max",
                    g.min, g.max
                )));
            }
            if !(g.tune > 1.0 && g.tune <= 10.0) {
                return Err(Error::Config(format!(
                    "shrinkwrap tune={}: expected a factor in (1, 10]",
                    g.tune
                )));
            }
        }
        Ok(())
    }
}

/// When the Fourier error enters the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Recording {
    /// At the last iteration of every ER section (of every section when the schedule has no ER).
    EndOfErSections,
    /// Every k iterations.
    Every(u64),
}

/// The support-update rule of an iteration: where the constraint holds the iterate becomes
/// g' = P_M g; elsewhere `a * g + b * g'`. Every backend reads it from the program, so a
/// rule's coefficients are written once, in [`Update::of`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Update {
    pub a: f32,
    pub b: f32,
}

impl Update {
    /// ER (0, 0); HIO (1, -beta); RAAR (beta, 1 - 2 beta).
    pub fn of(alg: Algorithm, beta: f32) -> Update {
        let (a, b) = match alg {
            Algorithm::ER => (0.0, 0.0),
            Algorithm::HIO => (1.0, -beta),
            Algorithm::RAAR => (beta, 1.0 - 2.0 * beta),
        };
        Update { a, b }
    }
}

/// One operation of a compiled program.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// `count` iterations; when `record` the errors of the last one enter the history.
    /// `update` is the rule of `alg` at `beta` (the backends execute `update`; `alg` and
    /// `beta` name it).
    Iterate {
        alg: Algorithm,
        beta: f32,
        update: Update,
        count: u64,
        record: bool,
    },
    /// `count` iterations of Poisson maximum-likelihood refinement; when `record` the
    /// figures of merit of the last one (measured on F = FFT(g) before its step, as for
    /// `Iterate`) enter the history. The object is first confined to the support (and the
    /// constraint), as ER would; each iteration then takes a conjugate-gradient step
    /// (Polak-Ribiere, restarted at the start of every `Ml` op and after a step that made no
    /// progress) on the object inside the support, minimising the Poisson negative
    /// log-likelihood `sum over measured pixels of Ic - Io ln Ic` with `Ic = |FFT(g)|^2 + eps`
    /// (`eps` = [`ML_EPS`] times the mean measured intensity: the regularisation that keeps
    /// the gradient finite where Ic = 0), with an exact line search ([`ML_LINE_PASSES`]
    /// Gauss-Newton passes over the 1-D likelihood along the direction, keeping the best
    /// point evaluated, so a step never raises the likelihood it measured). Unmeasured and
    /// held-out pixels do not enter the gradient. With positivity, pixels at zero whose
    /// gradient points below zero are held, and the step is clipped at zero.
    ///
    /// `fresh` is false where the op continues the previous one (an `Ml` op cut only to
    /// record): the conjugate-gradient state carries over, so recording does not change
    /// the result; after anything else (a projection, a shrinkwrap) it restarts.
    Ml {
        count: u64,
        record: bool,
        fresh: bool,
    },
    /// A shrinkwrap support update with these parameters (the threshold before each
    /// start's factor).
    Shrinkwrap {
        sigma: f32,
        threshold: f32,
        reference: ThresholdRef,
    },
}

/// The regularisation of the maximum-likelihood refinement: `eps` added to every calculated
/// intensity is this fraction of the pattern's mean measured intensity.
pub const ML_EPS: f64 = 1e-6;

/// Evaluations of the 1-D likelihood per maximum-likelihood line search (the first at the
/// current object, then Gauss-Newton steps with backtracking).
pub const ML_LINE_PASSES: usize = 5;

/// The `eps` of the maximum-likelihood refinement of a pattern (see [`ML_EPS`]) from its sum
/// of measured intensities and number of measured pixels.
pub fn ml_eps(sum_a2: f64, measured: usize) -> f32 {
    let mean = if measured > 0 {
        sum_a2 / measured as f64
    } else {
        0.0
    };
    ((ML_EPS * mean) as f32).max(f32::MIN_POSITIVE)
}

/// A compiled run.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub ops: Vec<Op>,
    /// Number of history entries each item records.
    pub records: usize,
    /// Total iterations.
    pub iterations: u64,
    /// The support guard of every shrinkwrap (None: none).
    pub guard: Option<SupportGuard>,
}

impl Program {
    /// Do the shrinkwraps need the general (guarded, per-start, mean/rms) path?
    pub fn general_shrinkwrap(&self, per_start_factors: bool) -> bool {
        per_start_factors
            || self.guard.is_some()
            || self.ops.iter().any(|o| {
                matches!(o, Op::Shrinkwrap { reference, .. } if *reference != ThresholdRef::Max)
            })
    }
}

impl Program {
    /// Does the program hold maximum-likelihood steps (which need their own buffers)?
    pub fn has_ml(&self) -> bool {
        self.ops.iter().any(|o| matches!(o, Op::Ml { .. }))
    }

    /// Compile a schedule with the global beta, shrinkwrap settings and recording policy.
    pub fn compile(
        schedule: &Schedule,
        beta: f32,
        shrinkwrap: &ShrinkwrapConfig,
        recording: Recording,
    ) -> Result<Program> {
        if !(beta.is_finite() && beta > 0.0 && beta <= 2.0) {
            return Err(Error::Config(format!("beta {beta} out of range (0, 2]")));
        }
        if let Recording::Every(0) = recording {
            return Err(Error::Config(
                "error recording interval must be >= 1".into(),
            ));
        }
        shrinkwrap.validate()?;
        let has_er = schedule.has(Algorithm::ER);
        let total = schedule.iterations();
        // First pass: the iteration sequence with cut points (shrinkwrap, record) marked.
        let mut ops: Vec<Op> = Vec::new();
        let mut done: u64 = 0; // iterations completed so far
        let mut sw_marks: Vec<usize> = Vec::new(); // indices of Shrinkwrap ops (params set later)
                                                   // per step, the kind of the next iterating step after it (Some(alg), None for ML;
                                                   // the outer None: no more iterations), found in one backward pass (a forward search
                                                   // from every step is quadratic in a long run of shrinkwrap steps)
        let mut next_kind = vec![None; schedule.steps.len()];
        let mut seen: Option<Option<Algorithm>> = None;
        for (si, step) in schedule.steps.iter().enumerate().rev() {
            next_kind[si] = seen;
            match step {
                Step::Iterate { alg, .. } => seen = Some(Some(*alg)),
                Step::Ml { .. } => seen = Some(None),
                Step::Shrinkwrap => {}
            }
        }
        for (si, step) in schedule.steps.iter().enumerate() {
            let (kind, count) = match *step {
                Step::Shrinkwrap => {
                    sw_marks.push(ops.len());
                    ops.push(Op::Shrinkwrap {
                        sigma: 0.0,
                        threshold: 0.0,
                        reference: ThresholdRef::Max,
                    });
                    continue;
                }
                Step::Iterate {
                    alg,
                    beta: b,
                    count,
                } => (Some((alg, b.unwrap_or(beta))), count),
                Step::Ml { count } => (None, count),
            };
            // Is this the end of a section for recording purposes? (An ML section
            // ends where the next iterating step is not ML; it always records.)
            let next = next_kind[si];
            let section_end = match (recording, kind) {
                (Recording::EndOfErSections, Some((alg, _))) => {
                    (alg == Algorithm::ER || !has_er) && next != Some(Some(alg))
                }
                (Recording::EndOfErSections, None) => next != Some(None),
                (Recording::Every(_), _) => false,
            };
            let mut left = count;
            while left > 0 {
                // Distance to the next cut point inside this step.
                let mut chunk = left;
                if let Recording::Every(k) = recording {
                    chunk = chunk.min(k - done % k);
                }
                if shrinkwrap.every > 0 {
                    let e = shrinkwrap.every;
                    chunk = chunk.min(e - done % e);
                }
                done += chunk;
                left -= chunk;
                let record = match recording {
                    Recording::Every(k) => done.is_multiple_of(k),
                    Recording::EndOfErSections => section_end && left == 0,
                };
                match kind {
                    Some((alg, beta)) => push_iter(&mut ops, alg, beta, chunk, record),
                    None => push_ml(&mut ops, chunk, record),
                }
                let periodic = shrinkwrap.every > 0
                    && done.is_multiple_of(shrinkwrap.every)
                    && done >= shrinkwrap.start
                    && shrinkwrap.stop.is_none_or(|s| done <= s)
                    && done < total;
                if periodic {
                    sw_marks.push(ops.len());
                    ops.push(Op::Shrinkwrap {
                        sigma: 0.0,
                        threshold: 0.0,
                        reference: ThresholdRef::Max,
                    });
                }
            }
        }
        // Ramps over the shrinkwrap applications.
        let n_sw = sw_marks.len();
        for (j, &i) in sw_marks.iter().enumerate() {
            let t = if n_sw > 1 {
                j as f32 / (n_sw - 1) as f32
            } else {
                0.0
            };
            let lerp = |(a, b): (f32, f32)| a + (b - a) * t;
            ops[i] = Op::Shrinkwrap {
                sigma: lerp(shrinkwrap.sigma),
                threshold: lerp(shrinkwrap.threshold),
                reference: shrinkwrap.reference,
            };
        }
        let records = ops
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Op::Iterate { record: true, .. } | Op::Ml { record: true, .. }
                )
            })
            .count();
        Ok(Program {
            ops,
            records,
            iterations: total,
            guard: shrinkwrap.guard,
        })
    }
}

fn push_ml(ops: &mut Vec<Op>, count: u64, record: bool) {
    let fresh = match ops.last_mut() {
        Some(Op::Ml {
            count: c,
            record: r,
            ..
        }) => {
            if !*r {
                *c += count;
                *r = record;
                return;
            }
            false
        }
        _ => true,
    };
    ops.push(Op::Ml {
        count,
        record,
        fresh,
    });
}

fn push_iter(ops: &mut Vec<Op>, alg: Algorithm, beta: f32, count: u64, record: bool) {
    if let Some(Op::Iterate {
        alg: a,
        beta: b,
        count: c,
        record: r,
        ..
    }) = ops.last_mut()
    {
        if *a == alg && *b == beta && !*r {
            *c += count;
            *r = record;
            return;
        }
    }
    ops.push(Op::Iterate {
        alg,
        beta,
        update: Update::of(alg, beta),
        count,
        record,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iters(p: &Program) -> u64 {
        p.ops
            .iter()
            .map(|o| match o {
                Op::Iterate { count, .. } | Op::Ml { count, .. } => *count,
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn ml_sections_record_at_their_end_and_split_at_shrinkwraps() {
        let s = Schedule::parse("2*(HIO**10 + ER**5) + ML**30").unwrap();
        let p = Program::compile(
            &s,
            0.9,
            &ShrinkwrapConfig::default(),
            Recording::EndOfErSections,
        )
        .unwrap();
        assert_eq!(p.records, 3);
        assert!(p.has_ml());
        assert_eq!(
            p.ops.last(),
            Some(&Op::Ml {
                count: 30,
                record: true,
                fresh: true
            })
        );
        let sw = ShrinkwrapConfig::parse("every=20").unwrap();
        let s = Schedule::parse("HIO**30 + ML**30").unwrap();
        let p = Program::compile(&s, 0.9, &sw, Recording::Every(25)).unwrap();
        let mls: Vec<(u64, bool, bool)> = p
            .ops
            .iter()
            .filter_map(|o| match o {
                Op::Ml {
                    count,
                    record,
                    fresh,
                } => Some((*count, *record, *fresh)),
                _ => None,
            })
            .collect();
        // shrinkwraps at 40 (inside ML: the CG restarts); records at 25 and 50 (the op after
        // the record continues the CG)
        assert_eq!(
            mls,
            vec![(10, false, true), (10, true, true), (10, false, false)]
        );
        assert_eq!(p.records, 2);
        assert_eq!(iters(&p), 60);
        assert!(ml_eps(1e6, 1000) > 0.0 && ml_eps(0.0, 0) > 0.0);
    }

    #[test]
    fn paper_run_records_2000_values() {
        let s = Schedule::parse("2000*(5*HIO + 5*ER)").unwrap();
        let p = Program::compile(
            &s,
            0.9,
            &ShrinkwrapConfig::default(),
            Recording::EndOfErSections,
        )
        .unwrap();
        assert_eq!(p.records, 2000);
        assert_eq!(iters(&p), 20_000);
        assert_eq!(p.iterations, 20_000);
    }

    #[test]
    fn periodic_shrinkwrap_splits_steps_and_ramps() {
        let s = Schedule::parse("100*HIO + 10*ER").unwrap();
        let sw = ShrinkwrapConfig::parse("sigma=3:1,threshold=0.1,every=20").unwrap();
        let p = Program::compile(&s, 0.9, &sw, Recording::Every(10)).unwrap();
        let sws: Vec<f32> = p
            .ops
            .iter()
            .filter_map(|o| match o {
                Op::Shrinkwrap { sigma, .. } => Some(*sigma),
                _ => None,
            })
            .collect();
        // at 20, 40, 60, 80, 100 (not after the final iteration 110)
        assert_eq!(sws.len(), 5);
        assert_eq!(sws[0], 3.0);
        assert_eq!(sws[4], 1.0);
        assert!((sws[2] - 2.0).abs() < 1e-6);
        assert_eq!(p.records, 11);
        assert_eq!(iters(&p), 110);
        // no ER: every section end records
        let s = Schedule::parse("3*(10*HIO + 10*RAAR)").unwrap();
        let p = Program::compile(
            &s,
            0.9,
            &ShrinkwrapConfig::default(),
            Recording::EndOfErSections,
        )
        .unwrap();
        assert_eq!(p.records, 6);
    }

    #[test]
    fn shrinkwrap_parse_errors() {
        assert!(ShrinkwrapConfig::parse("sigma=1,threshold=2").is_err());
        assert!(ShrinkwrapConfig::parse("sigma").is_err());
        assert!(ShrinkwrapConfig::parse("colour=1").is_err());
        assert!(ShrinkwrapConfig::parse("every=-1").is_err());
        let c = ShrinkwrapConfig::parse("every=5, threshold=0.05:0.15,start=10,stop=90").unwrap();
        assert_eq!(c.threshold, (0.05, 0.15));
        assert_eq!((c.every, c.start, c.stop), (5, 10, Some(90)));
    }
}

//! Batch phase retrieval: configuration, preparation of the problem (validation, centring,
//! starting supports and objects), execution on a backend, and the reconstruction it
//! returns (centred, as stored on disk).

pub mod merge;
pub mod missing;
pub mod population;
pub mod problem;
pub mod program;
pub mod recipe;
pub mod schedule;

use crate::array::{centred_to_native, Complex32, Stack};
use crate::backend::{Backend, Progress};
use crate::fft::Plan2d;
use crate::io::PatternSet;
use crate::support::native as support;
use crate::{Error, Result};
use population::{MergedSet, RunLog, Strategy};
use problem::{InitObjects, PhasingOutput, PhasingProblem, Selection};
use program::{Constraint, Program, Recording, ShrinkwrapConfig};
use schedule::Schedule;

/// How the starting support is made.
#[derive(Clone, Debug)]
pub enum SupportSpec {
    /// Threshold of |autocorrelation| relative to its maximum.
    Autocorrelation { threshold: f32 },
    /// A disc of this radius (px) around the centre.
    Circle { radius: f32 },
    /// Given supports, centred, n = 1 (shared) or N.
    Given(Stack<u8>),
}

/// The schedule `cdiphase phase` runs without `--algorithm` and `--shrinkwrap`, with
/// [`RECIPE_SHRINKWRAP`]: chosen by `scripts/phasing_benchmark.sh` (BENCHMARKS.md, "Phasing
/// success", "ML refinement"): long HIO, 50 iterations of Poisson maximum-likelihood
/// refinement, then ER; shrinkwrap every 50 iterations, stopped before the last of the ER
/// polish. The ML section raised the share of noisy beamstop patterns under 0.2 from 50 %
/// to 62 % on two sets (session 24) for 23 % more time.
pub const RECIPE_SCHEDULE: &str = "HIO**800 + ML**50 + ER**200";
/// With the default recipe and at least [`RECIPE_MERGE_MIN_STARTS`] starts, `phase` also
/// writes the merge of the best [`RECIPE_MERGE`] starts (`--merge`): on noisy beamstop data
/// the merged object phased 79 % of the patterns under 0.2 on both benchmark sets, against
/// 62 % for the best start of the same run.
pub const RECIPE_MERGE: usize = 4;
/// See [`RECIPE_MERGE`].
pub const RECIPE_MERGE_MIN_STARTS: usize = 8;
/// The shrinkwrap of the default recipe (see [`RECIPE_SCHEDULE`]).
pub const RECIPE_SHRINKWRAP: &str = "sigma=1,threshold=0.1,every=50,stop=950";
/// The constraint of the default recipe: positivity (on beamstop data it phased 50 % of
/// the patterns under 0.2 against 8 % without, BENCHMARKS.md "Phasing success").
pub const RECIPE_CONSTRAINT: Constraint = Constraint::Positive;

/// Default autocorrelation threshold (fraction of the autocorrelation maximum).
pub const DEFAULT_AUTOCORRELATION_THRESHOLD: f32 = 0.04;

impl SupportSpec {
    /// Parse `autocorrelation[:THRESHOLD]` or `circle:RADIUS`; anything else is `None`
    /// (the caller treats it as a file).
    pub fn parse_builtin(text: &str) -> Result<Option<SupportSpec>> {
        let (head, arg) = match text.split_once(':') {
            Some((h, a)) => (h, Some(a)),
            None => (text, None),
        };
        let num = |a: &str, what: &str| -> Result<f32> {
            a.trim()
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "--support {head}: {what} '{a}' is not a positive number"
                    ))
                })
        };
        match head.to_ascii_lowercase().as_str() {
            "autocorrelation" | "autocorr" | "auto" => {
                let threshold = match arg {
                    Some(a) => num(a, "threshold")?,
                    None => DEFAULT_AUTOCORRELATION_THRESHOLD,
                };
                if threshold >= 1.0 {
                    return Err(Error::Config(format!(
                        "--support autocorrelation:{threshold}: threshold must be below 1 (fraction of the maximum)"
                    )));
                }
                Ok(Some(SupportSpec::Autocorrelation { threshold }))
            }
            "circle" => {
                let a = arg.ok_or_else(|| {
                    Error::Config("--support circle needs a radius in pixels: circle:RADIUS".into())
                })?;
                Ok(Some(SupportSpec::Circle {
                    radius: num(a, "radius")?,
                }))
            }
            _ => Ok(None),
        }
    }
}

/// How the starting objects are made.
#[derive(Clone, Debug)]
pub enum InitSpec {
    /// Random, seeded by [`PhaseConfig::seed`].
    Random,
    /// Given objects, centred, n = 1 (shared) or N.
    Given(Stack<Complex32>),
}

/// The full configuration of a phasing run.
#[derive(Clone, Debug)]
pub struct PhaseConfig {
    pub schedule: String,
    pub beta: f32,
    /// Periodic shrinkwrap and the parameters of `SW` steps (None: `SW` steps use defaults
    /// and nothing periodic happens).
    pub shrinkwrap: Option<ShrinkwrapConfig>,
    pub constraint: Constraint,
    pub starts: usize,
    pub seed: u64,
    pub support: SupportSpec,
    pub init: InitSpec,
    /// With a given starting object: relative amplitude of the per-start multiplicative
    /// noise (0: every start is the given object; see [`InitObjects::Given`]).
    pub init_noise: f32,
    pub recording: Recording,
    pub keep_all: bool,
    /// Clip negative measured intensities to zero instead of failing.
    pub clip_negative: bool,
    /// Fraction of the measured pixels held out of the modulus constraint for the free
    /// log-likelihood (0: none), drawn per pattern in Friedel pairs (see [`hold_out`]).
    pub free_fraction: f32,
    /// How the best start is chosen and which starts are filtered.
    pub selection: Selection,
    /// Populations (GA), restarts of collapsed starts and the merge of the best starts
    /// (issue 19; all off by default).
    pub strategy: Strategy,
}

impl Default for PhaseConfig {
    fn default() -> Self {
        PhaseConfig {
            schedule: "2000*(5*HIO + 5*ER)".into(),
            beta: 0.9,
            shrinkwrap: None,
            constraint: Constraint::None,
            starts: 1,
            seed: 0,
            support: SupportSpec::Autocorrelation {
                threshold: DEFAULT_AUTOCORRELATION_THRESHOLD,
            },
            init: InitSpec::Random,
            init_noise: 0.0,
            recording: Recording::EndOfErSections,
            keep_all: false,
            clip_negative: false,
            free_fraction: 0.0,
            selection: Selection::default(),
            strategy: Strategy::default(),
        }
    }
}

impl PhaseConfig {
    /// A JSON description of the run (stored with the output).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "schedule": self.schedule,
            "beta": self.beta,
            "shrinkwrap": self.shrinkwrap,
            "constraint": self.constraint,
            "starts": self.starts,
            "seed": self.seed,
            "support": match &self.support {
                SupportSpec::Autocorrelation { threshold } => format!("autocorrelation:{threshold}"),
                SupportSpec::Circle { radius } => format!("circle:{radius}"),
                SupportSpec::Given(s) => format!("given ({}x{}x{})", s.n, s.h, s.w),
            },
            "init": match &self.init {
                InitSpec::Random => "random".to_string(),
                InitSpec::Given(s) => format!("given ({}x{}x{})", s.n, s.h, s.w),
            },
            "init_noise": self.init_noise,
            "recording": self.recording,
            "keep_all": self.keep_all,
            "clip_negative": self.clip_negative,
            "free_fraction": self.free_fraction,
            "selection": self.selection,
            "population": self.strategy.population,
            "restart": self.strategy.restart,
            "merge": self.strategy.merge,
            "cull": self.strategy.cull,
            "missing_centre": self.strategy.missing_centre,
            "fft_convention": "forward unnormalised, inverse 1/(HW); arrays centred at (H/2, W/2)",
        })
    }
}

fn check_stack_shape<T>(s: &Stack<T>, n: usize, h: usize, w: usize, what: &str) -> Result<()> {
    if s.h != h || s.w != w || (s.n != 1 && s.n != n) {
        return Err(Error::Shape {
            what: what.to_string(),
            expected: format!("({h},{w}) or ({n},{h},{w}) to match the patterns"),
            found: vec![s.n, s.h, s.w],
        });
    }
    Ok(())
}

/// Validate the patterns and build the native-order problem and the compiled program.
pub fn prepare(patterns: &PatternSet, cfg: &PhaseConfig) -> Result<(PhasingProblem, Program)> {
    let st = &patterns.intensities;
    let (n, h, w) = (st.n, st.h, st.w);
    let src = patterns.source.display().to_string();
    // `.npy` files and in-memory arrays (the Python package) have no entry
    let what = if patterns.entry.is_empty() {
        src.clone()
    } else {
        format!("{src}:{}", patterns.entry)
    };
    if n == 0 || h < 2 || w < 2 {
        return Err(Error::Shape {
            what,
            expected: "(N,H,W) with N >= 1 and H, W >= 2".into(),
            found: vec![n, h, w],
        });
    }
    if cfg.starts == 0 {
        return Err(Error::Config("--starts must be at least 1".into()));
    }
    // every start of every pattern holds its field, its Fourier transform, the HIO
    // reference and its support: about 48 bytes per pixel (and the result copies)
    let per_px: u128 = if cfg.keep_all { 56 } else { 48 };
    crate::limits::check_memory(
        &format!("phasing {n} patterns of {h}x{w} x {} starts", cfg.starts),
        (n as u128) * (cfg.starts as u128) * (h as u128) * (w as u128) * per_px,
    )?;
    if let Some(m) = &patterns.mask {
        check_stack_shape(m, n, h, w, &format!("{src}: mask"))?;
    }
    let schedule = Schedule::parse(&cfg.schedule)?;
    let sw = cfg.shrinkwrap.clone().unwrap_or_default();
    let program = Program::compile(&schedule, cfg.beta, &sw, cfg.recording)?;
    check_strategy(&cfg.strategy, cfg.starts, program.iterations)?;

    let l = h * w;
    let mut amplitudes = vec![0.0f32; n * l];
    let mut sum_a2 = vec![0.0f64; n];
    let mut measured = vec![0usize; n];
    let mut centred = vec![0.0f32; l];
    for p in 0..n {
        let img = st.image(p);
        let mask = patterns
            .mask
            .as_ref()
            .map(|m| m.image(if m.n == 1 { 0 } else { p }));
        for (i, &v) in img.iter().enumerate() {
            let bad = mask.is_some_and(|m| m[i] != 0);
            centred[i] = if bad {
                -1.0
            } else if !v.is_finite() {
                return Err(Error::invalid(
                    &what,
                    format!(
                        "pattern {p} pixel (y={}, x={}) is {v}: mask it (nonzero in the mask) or fix the data",
                        i / w,
                        i % w
                    ),
                ));
            } else if v < 0.0 {
                if cfg.clip_negative {
                    0.0
                } else {
                    return Err(Error::invalid(
                        &what,
                        format!(
                            "pattern {p} pixel (y={}, x={}) has negative intensity {v}: mask it, or pass --clip-negative",
                            i / w,
                            i % w
                        ),
                    ));
                }
            } else {
                v.sqrt()
            };
        }
        let dst = &mut amplitudes[p * l..(p + 1) * l];
        centred_to_native(&centred, h, w, dst);
        let mut s = 0.0f64;
        let mut m = 0usize;
        for &a in dst.iter() {
            if a >= 0.0 {
                s += (a as f64) * (a as f64);
                m += 1;
            }
        }
        if m == 0 {
            return Err(Error::invalid(
                &what,
                format!("pattern {p}: every pixel is masked"),
            ));
        }
        if s <= 0.0 {
            return Err(Error::invalid(
                &what,
                format!("pattern {p}: zero measured intensity"),
            ));
        }
        sum_a2[p] = s;
        measured[p] = m;
    }

    // Starting supports, native order.
    let supports = match &cfg.support {
        SupportSpec::Given(s) => {
            check_stack_shape(s, n, h, w, "--support")?;
            support::check_nonempty(s, "--support")?;
            to_native(s)
        }
        SupportSpec::Circle { radius } => {
            Stack::from_vec(1, h, w, support::circle_support(h, w, *radius))?
        }
        SupportSpec::Autocorrelation { threshold } => {
            let plan = Plan2d::new(h, w);
            let mut data = Vec::with_capacity(n * l);
            let mut native_i = vec![0.0f32; l];
            for p in 0..n {
                let a = &amplitudes[p * l..(p + 1) * l];
                for (d, &v) in native_i.iter_mut().zip(a) {
                    *d = if v >= 0.0 { v * v } else { 0.0 };
                }
                data.extend(support::autocorrelation_support(
                    &native_i,
                    |i| a[i] >= 0.0,
                    h,
                    w,
                    *threshold,
                    &plan,
                ));
            }
            Stack::from_vec(n, h, w, data)?
        }
    };
    support::check_nonempty(&supports, "starting support")?;

    let init = match &cfg.init {
        InitSpec::Random => InitObjects::Random { seed: cfg.seed },
        InitSpec::Given(o) => {
            check_stack_shape(o, n, h, w, "--init")?;
            if let Some(i) = o
                .data
                .iter()
                .position(|c| !(c.re.is_finite() && c.im.is_finite()))
            {
                return Err(Error::invalid(
                    "--init",
                    format!("object {} pixel {} is not finite", i / l, i % l),
                ));
            }
            for k in 0..o.n {
                if o.image(k).iter().all(|c| c.re == 0.0 && c.im == 0.0) {
                    return Err(Error::invalid(
                        "--init",
                        format!(
                            "object {k} is zero everywhere: it cannot be scaled to the data and would stay zero"
                        ),
                    ));
                }
            }
            let native = to_native(o);
            let plan = Plan2d::new(h, w);
            let mut scaled = Stack::filled(n, h, w, Complex32::new(0.0, 0.0));
            for p in 0..n {
                let src = native.image(if native.n == 1 { 0 } else { p });
                let k = problem::scale_to_data(src, &amplitudes[p * l..(p + 1) * l], &plan);
                for (d, s) in scaled.image_mut(p).iter_mut().zip(src) {
                    *d = s * k;
                }
            }
            if !(cfg.init_noise.is_finite() && (0.0..1.0).contains(&cfg.init_noise)) {
                return Err(Error::invalid(
                    "--init-noise",
                    format!("{} is not in [0, 1)", cfg.init_noise),
                ));
            }
            InitObjects::Given {
                objects: scaled,
                noise: cfg.init_noise,
                seed: cfg.seed,
            }
        }
    };
    if !(cfg.free_fraction.is_finite() && (0.0..=0.5).contains(&cfg.free_fraction)) {
        return Err(Error::Config(format!(
            "--free-fraction {} is not in [0, 0.5]",
            cfg.free_fraction
        )));
    }
    let sel = &cfg.selection;
    if !(0.0..=1.0).contains(&sel.min_fraction)
        || !(0.0..=1.0).contains(&sel.max_fraction)
        || sel.min_fraction > sel.max_fraction
    {
        return Err(Error::Config(format!(
            "support fraction limits {}..{} are not within [0, 1] in increasing order",
            sel.min_fraction, sel.max_fraction
        )));
    }
    if cfg.free_fraction > 0.0
        && matches!(
            cfg.strategy.missing_centre,
            missing::MissingCentre::Interpolate { .. }
        )
    {
        return Err(Error::Config(
            "--missing-centre interpolate fills the masked pixels from every measured one, so held-out pixels (--free-fraction, --select free-llk) would not stay free: use one or the other".into(),
        ));
    }
    if sel.criterion == problem::Criterion::FreeLlk && cfg.free_fraction <= 0.0 {
        return Err(Error::Config(
            "--select free-llk needs held-out pixels: give --free-fraction (e.g. 0.05)".into(),
        ));
    }
    if cfg.free_fraction > 0.0 {
        // after the starting support and the scaling of a given object, which use every
        // measured pixel
        for p in 0..n {
            let a = &mut amplitudes[p * l..(p + 1) * l];
            hold_out(a, h, w, cfg.free_fraction, cfg.seed, p);
            let (mut s, mut m) = (0.0f64, 0usize);
            for &v in a.iter().filter(|&&v| v >= 0.0) {
                s += (v as f64) * (v as f64);
                m += 1;
            }
            if m == 0 || s <= 0.0 {
                return Err(Error::invalid(
                    &what,
                    format!(
                        "pattern {p}: no measured intensity left after holding out {} of the pixels",
                        cfg.free_fraction
                    ),
                ));
            }
            sum_a2[p] = s;
            measured[p] = m;
        }
    }
    Ok((
        PhasingProblem {
            n,
            h,
            w,
            starts: cfg.starts,
            amplitudes,
            sum_a2,
            measured,
            supports,
            init,
            constraint: cfg.constraint,
            keep_all: cfg.keep_all,
            cancel: crate::cancel::Cancel::default(),
            selection: cfg.selection,
            sw_factors: sw_factors(cfg, n),
        },
        program,
    ))
}

/// Check the populations, restarts and merge against the starts and the run's length.
pub fn check_strategy(st: &Strategy, starts: usize, iterations: u64) -> Result<()> {
    if let Some(pc) = &st.population {
        if pc.keep >= starts {
            return Err(Error::Config(format!(
                "--population keep={}: keep fewer than --starts ({starts}), or no start is ever replaced",
                pc.keep
            )));
        }
    }
    if st.merge > starts {
        return Err(Error::Config(format!(
            "--merge {}: more than the {starts} start(s) of each pattern (--starts)",
            st.merge
        )));
    }
    if let Some(c) = &st.cull {
        if c.keep >= starts {
            return Err(Error::Config(format!(
                "--cull keep={}: keep fewer than --starts ({starts}), or no start is ever stopped",
                c.keep
            )));
        }
        if st.merge > c.keep {
            return Err(Error::Config(format!(
                "--merge {}: more than the {} start(s) --cull keeps",
                st.merge, c.keep
            )));
        }
    }
    st.checkpoints(iterations)?;
    Ok(())
}

/// The per-start shrinkwrap threshold factors, uniform in the configured range, deterministic
/// in (seed, pattern, start); empty when the range is (1, 1).
fn sw_factors(cfg: &PhaseConfig, n: usize) -> Vec<f32> {
    let Some(sw) = &cfg.shrinkwrap else {
        return Vec::new();
    };
    let (lo, hi) = sw.factor;
    if lo == 1.0 && hi == 1.0 {
        return Vec::new();
    }
    use rand_xoshiro::rand_core::{Rng, SeedableRng};
    let mut v = Vec::with_capacity(n * cfg.starts);
    for p in 0..n {
        for s in 0..cfg.starts {
            let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(crate::rng::item_seed(
                cfg.seed ^ 0x5111_F4C7_0000_0001,
                p,
                s,
            ));
            v.push(lo + (hi - lo) * crate::rng::unit(rng.next_u64()));
        }
    }
    v
}

/// Hold out about `fraction` of the measured pixels of one pattern (native order) for the
/// free log-likelihood: each Friedel pair (q, -q) of measured pixels is held out together
/// with probability `fraction` (the two carry the same information for a real object, so
/// holding out one alone would not make it free), the zero frequency never. Deterministic
/// in (seed, pattern); the same pixels for every start of the pattern.
pub fn hold_out(a: &mut [f32], h: usize, w: usize, fraction: f32, seed: u64, p: usize) {
    use rand_xoshiro::rand_core::{Rng, SeedableRng};
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(crate::rng::item_seed(
        seed ^ 0xF4EE_F4EE_F4EE_F4EE,
        p,
        0,
    ));
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let j = ((h - y) % h) * w + (w - x) % w;
            if i == 0 || j < i {
                continue;
            }
            let u = crate::rng::unit(rng.next_u64());
            if u < fraction && a[i] >= 0.0 && a[j] >= 0.0 {
                a[i] = problem::encode_free(a[i]);
                if j != i {
                    a[j] = problem::encode_free(a[j]);
                }
            }
        }
    }
}

fn to_native<T: Copy>(s: &Stack<T>) -> Stack<T> {
    let mut out = s.clone();
    for i in 0..s.n {
        centred_to_native(s.image(i), s.h, s.w, out.image_mut(i));
    }
    out
}

/// Circular centre of mass of a support along both axes (native order), as integer pixels.
fn support_centre(s: &[u8], h: usize, w: usize) -> (usize, usize) {
    let mut rows = vec![0u64; h];
    let mut cols = vec![0u64; w];
    for (y, row) in s.chunks_exact(w).enumerate() {
        for (x, &v) in row.iter().enumerate() {
            let on = (v != 0) as u64;
            rows[y] += on;
            cols[x] += on;
        }
    }
    let centre = |counts: &[u64]| -> usize {
        let n = counts.len();
        let (mut c, mut sn) = (0.0f64, 0.0f64);
        for (i, &k) in counts.iter().enumerate() {
            let t = std::f64::consts::TAU * i as f64 / n as f64;
            c += k as f64 * t.cos();
            sn += k as f64 * t.sin();
        }
        if c == 0.0 && sn == 0.0 {
            return 0;
        }
        let a = sn.atan2(c).rem_euclid(std::f64::consts::TAU);
        ((a / std::f64::consts::TAU * n as f64).round() as usize) % n
    };
    (centre(&rows), centre(&cols))
}

/// Native order to centred, with the support's centre of mass moved to (h/2, w/2) so that
/// a particle never straddles the edges of the stored image (translation is a trivial
/// ambiguity of phase retrieval; object and support move together).
fn to_centred_recentred(obj: &mut [Complex32], sup: &mut [u8], h: usize, w: usize) {
    let l = h * w;
    let mut to = vec![Complex32::new(0.0, 0.0); l];
    let mut ts = vec![0u8; l];
    for (o, s) in obj.chunks_exact_mut(l).zip(sup.chunks_exact_mut(l)) {
        let (cy, cx) = support_centre(s, h, w);
        to.copy_from_slice(o);
        ts.copy_from_slice(s);
        // out[y][x] = in[(y + cy - h/2) mod h][(x + cx - w/2) mod w]
        let dy = (cy + h - h / 2) % h;
        let dx = (cx + w - w / 2) % w;
        crate::array::roll_to_origin(&to, h, w, dy, dx, o);
        crate::array::roll_to_origin(&ts, h, w, dy, dx, s);
    }
}

/// The Poisson figures of merit of a run, every start's (see [`PhasingOutput`]).
#[derive(Clone, Debug)]
pub struct Merits {
    /// N*K*records.
    pub llk: Vec<f32>,
    /// N*K*records (NaN without held-out pixels).
    pub free_llk: Vec<f32>,
    /// N*K.
    pub final_llk: Vec<f32>,
    pub final_free_llk: Vec<f32>,
    pub final_support_fraction: Vec<f32>,
    /// The selection that chose `best_start`.
    pub selection: Selection,
    /// N*K: shrinkwraps refused by the support guard, and the final threshold factors.
    pub guard_events: Vec<u32>,
    pub threshold_factor: Vec<f32>,
    /// N*K: restarts of each start (`--restart`; zeros without).
    pub restarts: Vec<u32>,
    /// N*K: the iteration at which `--cull` stopped each start (0: ran to the end; zeros
    /// without).
    pub culled_at: Vec<u64>,
    /// With `--population`: N*K, times each start was replaced by a child, and (G, N*G)
    /// the criterion of the best start of each pattern at each generation.
    pub replaced: Option<Vec<u32>>,
    pub generation_best: Option<(usize, Vec<f32>)>,
    /// With `--merge`: the merge of the best starts.
    pub merged: Option<MergedSet>,
}

impl Merits {
    /// One line on the support guard's work, when it refused any shrinkwrap.
    pub fn guard_summary(&self) -> Option<String> {
        guard_summary(&self.guard_events, &self.threshold_factor)
    }
}

/// The `description` attribute of the `llk` history in a phase output.
pub const LLK_DESCRIPTION: &str = "Poisson log-likelihood per measured pixel: mean over the measured, not held-out pixels of Ic - Io - Io ln(Ic/Io), Ic = |F|^2, recorded with the Fourier error";
/// The `description` attribute of the `free_llk` history in a phase output.
pub const FREE_LLK_DESCRIPTION: &str = "the same over the pixels held out of the modulus constraint (--free-fraction); NaN without any";

/// One line on the support guard's work from every start's refusal count and final
/// threshold factor (N*K each), when it refused any shrinkwrap.
pub fn guard_summary(guard_events: &[u32], threshold_factor: &[f32]) -> Option<String> {
    let total: u64 = guard_events.iter().map(|&e| e as u64).sum();
    if total == 0 {
        return None;
    }
    let starts = guard_events.iter().filter(|&&e| e > 0).count();
    let (lo, hi) = threshold_factor
        .iter()
        .fold((f32::INFINITY, 0.0f32), |(a, b), &f| (a.min(f), b.max(f)));
    Some(format!(
        "support guard: {total} shrinkwrap(s) refused (support collapsed or blew up) in {starts} of {} starts; their thresholds were retuned (final factors {lo:.3}..{hi:.3})",
        guard_events.len()
    ))
}

/// The result of a phasing run, centred as stored on disk.
#[derive(Clone, Debug)]
pub struct Reconstruction {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub starts: usize,
    /// Best start per pattern (lowest final Fourier error).
    pub best_start: Vec<usize>,
    pub objects: Stack<Complex32>,
    pub supports: Stack<u8>,
    /// With keep-all: N*K*H*W.
    pub all_objects: Option<Vec<Complex32>>,
    pub all_supports: Option<Vec<u8>>,
    /// History entries per item.
    pub records: usize,
    /// N*K*records.
    pub fourier_error: Vec<f32>,
    /// N*K*records.
    pub real_error: Vec<f32>,
    /// N*K.
    pub final_fourier_error: Vec<f32>,
    /// The Poisson figures of merit (None where a reconstruction was rebuilt from arrays
    /// without them, e.g. by the Python package's `to_cxi`).
    pub merits: Option<Merits>,
    /// Iterations per item.
    pub iterations: u64,
    /// Wall time of the backend run, seconds.
    pub seconds: f64,
    pub backend: String,
}

impl Reconstruction {
    fn from_output(
        out: PhasingOutput,
        problem: &PhasingProblem,
        program: &Program,
        seconds: f64,
        backend: String,
    ) -> Self {
        let (h, w) = (problem.h, problem.w);
        let mut objects = out.objects;
        let mut supports = out.supports;
        to_centred_recentred(&mut objects.data, &mut supports.data, h, w);
        let mut all_objects = out.all_objects;
        let mut all_supports = out.all_supports;
        if let (Some(o), Some(s)) = (all_objects.as_mut(), all_supports.as_mut()) {
            to_centred_recentred(o, s, h, w);
        }
        Reconstruction {
            n: problem.n,
            h,
            w,
            starts: problem.starts,
            best_start: out.best_start,
            objects,
            supports,
            all_objects,
            all_supports,
            records: out.records,
            fourier_error: out.fourier_error,
            real_error: out.real_error,
            final_fourier_error: out.final_fourier_error,
            merits: Some(Merits {
                llk: out.llk,
                free_llk: out.free_llk,
                final_llk: out.final_llk,
                final_free_llk: out.final_free_llk,
                final_support_fraction: out.final_support_fraction,
                selection: problem.selection,
                restarts: vec![0; out.guard_events.len()],
                culled_at: vec![0; out.guard_events.len()],
                guard_events: out.guard_events,
                threshold_factor: out.threshold_factor,
                replaced: None,
                generation_best: None,
                merged: None,
            }),
            iterations: program.iterations,
            seconds,
            backend,
        }
    }

    /// History of item (pattern p, start s).
    pub fn history(&self, p: usize, s: usize) -> &[f32] {
        let i = (p * self.starts + s) * self.records;
        &self.fourier_error[i..i + self.records]
    }

    /// Per-pattern history of the best start, N*records.
    pub fn best_histories(&self, which: &[f32]) -> Vec<f32> {
        let mut v = Vec::with_capacity(self.n * self.records);
        for p in 0..self.n {
            let i = (p * self.starts + self.best_start[p]) * self.records;
            v.extend_from_slice(&which[i..i + self.records]);
        }
        v
    }

    /// Final Fourier error of the best start of each pattern.
    pub fn best_final_errors(&self) -> Vec<f32> {
        self.best_of(&self.final_fourier_error)
    }

    /// The best start's value of each pattern from an N*K array.
    pub fn best_of(&self, all: &[f32]) -> Vec<f32> {
        (0..self.n)
            .map(|p| all[p * self.starts + self.best_start[p]])
            .collect()
    }

    /// Write the reconstruction as CXI (atomic: temp file then rename).
    pub fn write_cxi(&self, dest: &std::path::Path, config: &serde_json::Value) -> Result<()> {
        use crate::io::CxiWriter;
        let (n, h, w, k, l) = (self.n, self.h, self.w, self.starts, self.records);
        let mut out = CxiWriter::new();
        out.i64("cxi_version", &[1], &[150])?;
        out.attr_string("entry_1", "NX_class", "NXentry")?;
        out.complex64("entry_1/image_1/data", &[n, h, w], &self.objects.data)?;
        out.attr_string("entry_1/image_1", "NX_class", "NXdata")?;
        out.attr_string(
            "entry_1/image_1/data",
            "description",
            "best start per pattern (lowest final Fourier error), centred at (H/2, W/2)",
        )?;
        out.u8("entry_1/image_1/support", &[n, h, w], &self.supports.data)?;
        out.f32(
            "entry_1/image_1/fourier_error",
            &[n, l],
            &self.best_histories(&self.fourier_error),
        )?;
        out.f32(
            "entry_1/image_1/real_space_error",
            &[n, l],
            &self.best_histories(&self.real_error),
        )?;
        out.f32(
            "entry_1/image_1/final_fourier_error",
            &[n],
            &self.best_final_errors(),
        )?;
        out.i64(
            "entry_1/image_1/best_start",
            &[n],
            &self
                .best_start
                .iter()
                .map(|&s| s as i64)
                .collect::<Vec<_>>(),
        )?;
        out.f32(
            "entry_1/image_1/all_fourier_error",
            &[n, k, l],
            &self.fourier_error,
        )?;
        out.f32(
            "entry_1/image_1/all_final_fourier_error",
            &[n, k],
            &self.final_fourier_error,
        )?;
        if let Some(m) = &self.merits {
            let hist = [
                ("llk", &m.llk, LLK_DESCRIPTION),
                ("free_llk", &m.free_llk, FREE_LLK_DESCRIPTION),
            ];
            for (name, v, what) in hist {
                out.f32(
                    &format!("entry_1/image_1/{name}"),
                    &[n, l],
                    &self.best_histories(v),
                )?;
                out.attr_string(&format!("entry_1/image_1/{name}"), "description", what)?;
                out.f32(&format!("entry_1/image_1/all_{name}"), &[n, k, l], v)?;
            }
            // the energy outside the support, as a fraction of the energy of P_M g: the
            // square of the real-space error, under the name PyNX users look for
            let outside: Vec<f32> = self.real_error.iter().map(|r| r * r).collect();
            out.f32(
                "entry_1/image_1/outside_energy",
                &[n, l],
                &self.best_histories(&outside),
            )?;
            out.f32("entry_1/image_1/all_outside_energy", &[n, k, l], &outside)?;
            let fin = [
                ("llk", &m.final_llk),
                ("free_llk", &m.final_free_llk),
                ("support_fraction", &m.final_support_fraction),
            ];
            for (name, v) in fin {
                out.f32(
                    &format!("entry_1/image_1/final_{name}"),
                    &[n],
                    &self.best_of(v),
                )?;
                out.f32(&format!("entry_1/image_1/all_final_{name}"), &[n, k], v)?;
            }
            out.f32(
                "entry_1/image_1/all_threshold_factor",
                &[n, k],
                &m.threshold_factor,
            )?;
            let ev: Vec<i64> = m.guard_events.iter().map(|&e| e as i64).collect();
            out.i64("entry_1/image_1/all_support_guard_events", &[n, k], &ev)?;
            out.string(
                "entry_1/image_1/selection",
                &serde_json::to_string(&m.selection).unwrap_or_default(),
            )?;
            let rs: Vec<i64> = m.restarts.iter().map(|&r| r as i64).collect();
            out.i64("entry_1/image_1/all_restarts", &[n, k], &rs)?;
            out.i64("entry_1/image_1/restarts", &[n], &per_pattern_sum(&rs, k))?;
            // (always with --cull, whose keep is below --starts; as the block writer)
            if m.culled_at.iter().any(|&c| c > 0) {
                let c: Vec<i64> = m.culled_at.iter().map(|&v| v as i64).collect();
                out.i64("entry_1/image_1/all_culled_at", &[n, k], &c)?;
            }
            if let Some(r) = &m.replaced {
                let r: Vec<i64> = r.iter().map(|&v| v as i64).collect();
                out.i64("entry_1/image_1/all_replaced", &[n, k], &r)?;
            }
            if let Some((g, v)) = &m.generation_best {
                out.f32("entry_1/image_1/generation_best", &[n, *g], v)?;
            }
            if let Some(mg) = &m.merged {
                let (c, md) = (mg.count, mg.modes);
                out.complex64("entry_1/image_3/data", &[n, h, w], &mg.objects)?;
                out.attr_string("entry_1/image_3", "NX_class", "NXdata")?;
                out.attr_string("entry_1/image_3", "description", MERGED_DESCRIPTION)?;
                out.u8("entry_1/image_3/support", &[n, h, w], &mg.supports)?;
                out.complex64("entry_1/image_3/modes", &[n, md, h, w], &mg.mode_images)?;
                out.f32("entry_1/image_3/mode_weights", &[n, md], &mg.weights)?;
                out.i64("entry_1/image_3/starts", &[n, c], &mg.starts)?;
                out.f32(
                    "entry_1/image_3/final_fourier_error",
                    &[n],
                    &mg.fourier_error,
                )?;
                out.f32("entry_1/image_3/final_llk", &[n], &mg.llk)?;
            }
        }
        out.string(
            "entry_1/image_1/process_1/configuration",
            &serde_json::to_string_pretty(config).unwrap_or_default(),
        )?;
        out.string("entry_1/image_1/process_1/program", "cdiphase")?;
        out.string(
            "entry_1/image_1/process_1/version",
            env!("CARGO_PKG_VERSION"),
        )?;
        out.attr_string("entry_1/image_1", "configuration", &config.to_string())?;
        if let (Some(o), Some(s)) = (&self.all_objects, &self.all_supports) {
            out.complex64("entry_1/image_2/data", &[n, k, h, w], o)?;
            out.u8("entry_1/image_2/support", &[n, k, h, w], s)?;
            out.attr_string(
                "entry_1/image_2",
                "description",
                "every start, pattern-major (N,K,H,W)",
            )?;
        }
        out.finish(dest)
    }
}

/// The `description` attribute of `entry_1/image_3` (the merge of the best starts).
pub const MERGED_DESCRIPTION: &str = "--merge: average of the best starts of each pattern (selection order, `starts`), each aligned onto the best (translation by cross-correlation of the moduli, twin, global phase), in the best start's frame; `support`: pixels in at least half of the aligned supports; `modes`: the leading modes of the aligned stack (sum_j v_ij x_j / sqrt(N) for the Gram matrix's eigenvectors v_i), `mode_weights` their energy fractions";

/// Per pattern, the sum of an (N, K) array's rows.
pub fn per_pattern_sum(v: &[i64], k: usize) -> Vec<i64> {
    v.chunks(k.max(1)).map(|c| c.iter().sum()).collect()
}

/// Prepare and run a phasing job on `backend` (with the populations, restarts and merge
/// of `cfg.strategy`).
pub fn phase(
    backend: &dyn Backend,
    patterns: &PatternSet,
    cfg: &PhaseConfig,
    progress: Progress<'_>,
) -> Result<Reconstruction> {
    let (problem, program) = prepare(patterns, cfg)?;
    run_strategy(
        backend,
        &problem,
        &program,
        &cfg.strategy,
        cfg.seed,
        progress,
    )
}

/// Run a prepared problem with populations, restarts and merging ([`population`]); with
/// the default (empty) strategy this is [`run_prepared`]. `seed` seeds the restarts and
/// the breeding.
pub fn run_strategy(
    backend: &dyn Backend,
    problem: &PhasingProblem,
    program: &Program,
    strategy: &Strategy,
    seed: u64,
    progress: Progress<'_>,
) -> Result<Reconstruction> {
    if !strategy.segmented() && strategy.merge == 0 {
        return run_prepared(backend, problem, program, progress);
    }
    check_strategy(strategy, problem.starts, program.iterations)?;
    let t0 = std::time::Instant::now();
    let (out, log) = if strategy.segmented() {
        // the GPU backends keep the state on the device across the checkpoints; the host
        // path (every backend) makes each segment a fresh backend run
        let (o, l) = match backend
            .run_segmented_resident(problem, program, strategy, seed, progress)?
        {
            Some(r) => r,
            None => population::run_segmented(backend, problem, program, strategy, seed, progress)?,
        };
        (o, Some(l))
    } else {
        // the merge needs every start: run with keep_all
        let mut pb = problem.clone();
        pb.keep_all = true;
        (backend.run_phasing(&pb, program, progress)?, None)
    };
    let secs = t0.elapsed().as_secs_f64();
    let mut rec = Reconstruction::from_output(out, problem, program, secs, backend.describe());
    let merits: Vec<problem::FinalMerit> = (0..rec.n * rec.starts)
        .map(|i| problem::FinalMerit {
            fourier: rec.final_fourier_error[i],
            llk: rec.merits.as_ref().map_or(f32::NAN, |m| m.final_llk[i]),
            free_llk: rec
                .merits
                .as_ref()
                .map_or(f32::NAN, |m| m.final_free_llk[i]),
            support_fraction: rec
                .merits
                .as_ref()
                .map_or(f32::NAN, |m| m.final_support_fraction[i]),
        })
        .collect();
    // starts stopped by --cull rank after every start that ran to the end
    let merits = match &log {
        Some(l) => population::ranked_merits(&merits, &l.culled_at),
        None => merits,
    };
    let merged = match (strategy.merge, &rec.all_objects, &rec.all_supports) {
        (0, _, _) => None,
        (c, Some(o), Some(s)) => Some(backend.merge_starts(problem, o, s, &merits, c)?),
        _ => {
            return Err(Error::Config(
                "--merge: the run returned no per-start objects".into(),
            ))
        }
    };
    if let Some(m) = rec.merits.as_mut() {
        m.merged = merged;
        if let Some(RunLog {
            restarts,
            replaced,
            generation_best,
            generations,
            culled_at,
        }) = log
        {
            m.restarts = restarts;
            m.culled_at = culled_at;
            if strategy.population.is_some() {
                m.replaced = Some(replaced);
                m.generation_best = Some((generations, generation_best));
            }
        }
    }
    if !problem.keep_all {
        rec.all_objects = None;
        rec.all_supports = None;
    }
    Ok(rec)
}

/// Run an already prepared problem (used by benchmarks to leave preparation out).
pub fn run_prepared(
    backend: &dyn Backend,
    problem: &PhasingProblem,
    program: &Program,
    progress: Progress<'_>,
) -> Result<Reconstruction> {
    let t0 = std::time::Instant::now();
    let out = backend.run_phasing(problem, program, progress)?;
    let secs = t0.elapsed().as_secs_f64();
    Ok(Reconstruction::from_output(
        out,
        problem,
        program,
        secs,
        backend.describe(),
    ))
}

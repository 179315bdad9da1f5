//! `cdiphase._native`: the Python bindings of the cdiphase library (PyO3 + numpy).
//!
//! Thin by design: every function converts numpy arrays to the library's types, runs the
//! library with the GIL released, and hands the results back as numpy arrays that take over
//! the library's buffers (no copy on the way out). Defaults, docstrings, tqdm progress and
//! result classes live in the pure-Python layer `cdiphase/__init__.py`.
//!
//! Long calls (`phase`, `predict`, `simulate`) run in a worker thread while the calling
//! thread waits with the GIL released, wakes every 50 ms to report progress and to run
//! Python's signal handlers (`Python::check_signals`): a Ctrl-C sets the library's cancel
//! flag, which the phasing loops and the prediction batches check, and the call raises
//! `KeyboardInterrupt` as soon as the worker has stopped.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cdiphase::array::{Complex32, Stack};
use cdiphase::backend::{self, Device, NetOptions};
use cdiphase::cancel::Cancel;
use cdiphase::eval::{self, align, metrics};
use cdiphase::io::{self, PatternSet};
use cdiphase::nn::{self, store, Model};
use cdiphase::phasing::population::MergedSet;
use cdiphase::phasing::problem::Selection;
use cdiphase::phasing::program::Recording;
use cdiphase::phasing::{self, InitSpec, Merits, PhaseConfig, Reconstruction, SupportSpec};
use cdiphase::simulate as sim;
use cdiphase::Error;
use num_complex::Complex64;
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

// ---------------------------------------------------------------------------------------
// errors

/// A library error as the Python exception a caller expects: files -> `OSError`, a
/// cancelled run -> `KeyboardInterrupt`, devices -> `RuntimeError`, everything else (bad
/// input, shapes, values, options) -> `ValueError`; the message is the library's, which is
/// what the CLI prints after its context.
fn py_err(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Io { .. } | Error::Format { .. } | Error::MissingEntry { .. } => {
            PyOSError::new_err(msg)
        }
        Error::Cancelled => PyKeyboardInterrupt::new_err(msg),
        Error::DeviceUnavailable { .. } | Error::Device { .. } => PyRuntimeError::new_err(msg),
        _ => PyValueError::new_err(msg),
    }
}

type PyRes<T> = PyResult<T>;

fn lib<T>(r: cdiphase::Result<T>) -> PyRes<T> {
    r.map_err(py_err)
}

// ---------------------------------------------------------------------------------------
// running a computation with the GIL released, interruptibly

/// Run `f` in a worker thread; the calling thread releases the GIL, wakes every 50 ms,
/// reports `done` to `progress` (a Python callable taking the count done so far) when it
/// moved, and runs the signal handlers. A raised exception (KeyboardInterrupt on Ctrl-C,
/// or one from `progress`) sets `cancel`, waits for the worker to stop and propagates.
fn run_interruptible<T: Send>(
    py: Python<'_>,
    cancel: &Cancel,
    done: &AtomicU64,
    progress: Option<&Bound<'_, PyAny>>,
    f: impl FnOnce() -> cdiphase::Result<T> + Send,
) -> PyRes<T> {
    let caller = std::thread::current();
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            let r = std::panic::catch_unwind(AssertUnwindSafe(f));
            caller.unpark();
            r
        });
        let mut reported = 0u64;
        let mut failure: Option<PyErr> = None;
        loop {
            let finished = worker.is_finished();
            if !finished {
                py.detach(|| std::thread::park_timeout(Duration::from_millis(50)));
            }
            let now = done.load(Ordering::Relaxed);
            if now != reported {
                reported = now;
                if let Some(cb) = progress {
                    if let Err(e) = cb.call1((now,)) {
                        failure = Some(e);
                    }
                }
            }
            if failure.is_none() {
                if let Err(e) = py.check_signals() {
                    failure = Some(e);
                }
            }
            if failure.is_some() || finished {
                break;
            }
        }
        if failure.is_some() {
            cancel.cancel();
        }
        let joined = py.detach(move || worker.join());
        if let Some(e) = failure {
            return Err(e);
        }
        match joined {
            Ok(Ok(r)) => lib(r),
            Ok(Err(panic)) | Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(PyRuntimeError::new_err(format!(
                    "cdiphase internal error (a bug, please report it): {what}"
                )))
            }
        }
    })
}

// ---------------------------------------------------------------------------------------
// numpy <-> library arrays

/// The (n, h, w) of a rank-2 or rank-3 array, else the library's shape error naming it.
fn nhw(what: &str, shape: &[usize]) -> PyRes<(usize, usize, usize)> {
    match *shape {
        [h, w] => Ok((1, h, w)),
        [n, h, w] => Ok((n, h, w)),
        _ => Err(py_err(Error::Shape {
            what: what.into(),
            expected: "(N, H, W) or (H, W)".into(),
            found: shape.to_vec(),
        })),
    }
}

/// The array's values in C order, copied once (a single memcpy when contiguous).
fn values<T: numpy::Element + Copy>(a: &PyReadonlyArrayDyn<'_, T>) -> Vec<T> {
    match a.as_slice() {
        Ok(s) => s.to_vec(),
        Err(_) => a.as_array().iter().copied().collect(),
    }
}

fn stack<T: numpy::Element + Copy>(a: &PyReadonlyArrayDyn<'_, T>, what: &str) -> PyRes<Stack<T>> {
    let (n, h, w) = nhw(what, a.shape())?;
    lib(Stack::from_vec(n, h, w, values(a)))
}

/// A numpy array of `shape` that takes over `data` (no copy).
fn array<'py, T: numpy::Element>(
    py: Python<'py>,
    data: Vec<T>,
    shape: &[usize],
) -> PyRes<Bound<'py, PyArrayDyn<T>>> {
    PyArray1::from_vec(py, data).reshape(shape.to_vec())
}

fn stack_array<'py, T: numpy::Element>(
    py: Python<'py>,
    s: Stack<T>,
) -> PyRes<Bound<'py, PyArrayDyn<T>>> {
    let shape = s.shape();
    array(py, s.data, &shape)
}

fn pattern_set(
    intensities: &PyReadonlyArrayDyn<'_, f32>,
    mask: Option<&PyReadonlyArrayDyn<'_, u8>>,
) -> PyRes<PatternSet> {
    Ok(PatternSet {
        intensities: stack(intensities, "intensities")?,
        mask: mask.map(|m| stack(m, "mask")).transpose()?,
        source: PathBuf::from("intensities"),
        entry: String::new(),
    })
}

/// Match a given image stack to the patterns: one image, or one per pattern.
fn fits<T>(what: &str, s: &Stack<T>, p: &Stack<f32>) -> PyRes<()> {
    if s.h != p.h || s.w != p.w || (s.n != 1 && s.n != p.n) {
        return Err(py_err(Error::Shape {
            what: what.into(),
            expected: format!(
                "({}, {}) or ({}, {}, {}) to match the intensities",
                p.h, p.w, p.n, p.h, p.w
            ),
            found: vec![s.n, s.h, s.w],
        }));
    }
    Ok(())
}

fn device(name: &str) -> PyRes<Device> {
    lib(name.parse())
}

// ---------------------------------------------------------------------------------------
// phase

/// Phase retrieval of every pattern; see `cdiphase.phase` for the arguments.
#[pyfunction]
#[pyo3(signature = (intensities, mask, schedule, beta, support, support_array, init_array,
    init_noise, shrinkwrap, constraint, starts, seed, error_every, keep_all, clip_negative,
    select, free_fraction, support_fraction, merge, population, restart, cull, missing_centre,
    device_name, threads, progress))]
#[allow(clippy::too_many_arguments)]
fn phase<'py>(
    py: Python<'py>,
    intensities: PyReadonlyArrayDyn<'py, f32>,
    mask: Option<PyReadonlyArrayDyn<'py, u8>>,
    schedule: Option<String>,
    beta: f32,
    support: Option<String>,
    support_array: Option<PyReadonlyArrayDyn<'py, u8>>,
    init_array: Option<PyReadonlyArrayDyn<'py, Complex32>>,
    init_noise: f32,
    shrinkwrap: Option<String>,
    constraint: Option<String>,
    starts: usize,
    seed: u64,
    error_every: Option<u64>,
    keep_all: bool,
    clip_negative: bool,
    select: String,
    free_fraction: Option<f32>,
    support_fraction: (f32, f32),
    merge: Option<usize>,
    population: Option<String>,
    restart: Option<String>,
    cull: Option<String>,
    missing_centre: Option<String>,
    device_name: String,
    threads: Option<usize>,
    progress: Option<Bound<'py, PyAny>>,
) -> PyRes<Bound<'py, PyDict>> {
    let patterns = pattern_set(&intensities, mask.as_ref())?;
    let st = &patterns.intensities;
    let support = match (support, support_array) {
        (_, Some(a)) => {
            let s = stack(&a, "support")?;
            fits("support", &s, st)?;
            SupportSpec::Given(s)
        }
        (Some(text), None) => match lib(SupportSpec::parse_builtin(&text))? {
            Some(s) => s,
            None => {
                return Err(PyValueError::new_err(format!(
                    "support '{text}': expected autocorrelation[:THRESHOLD], circle:RADIUS, or an array"
                )))
            }
        },
        (None, None) => SupportSpec::Autocorrelation {
            threshold: phasing::DEFAULT_AUTOCORRELATION_THRESHOLD,
        },
    };
    if init_noise != 0.0 && init_array.is_none() {
        return Err(PyValueError::new_err(
            "init_noise needs a starting object: init=ARRAY",
        ));
    }
    let init = match init_array {
        Some(a) => {
            let o = stack(&a, "init")?;
            fits("init", &o, st)?;
            InitSpec::Given(o)
        }
        None => InitSpec::Random,
    };
    // the command line's rules: the measured default recipe without schedule and shrinkwrap
    let recipe = lib(phasing::recipe::resolve(
        schedule.as_deref(),
        shrinkwrap.as_deref(),
        constraint.as_deref(),
    ))?;
    let (selection, free_fraction) = lib(phasing::recipe::selection(
        &select,
        free_fraction,
        support_fraction,
    ))?;
    // the command line's parsers and defaults (the merge of the best 4 with the default
    // recipe and 8 or more starts)
    let strategy = lib(phasing::recipe::strategy(
        &recipe,
        starts,
        merge,
        population.as_deref(),
        restart.as_deref(),
        cull.as_deref(),
        missing_centre.as_deref(),
    ))?;
    let cfg = PhaseConfig {
        schedule: recipe.schedule,
        beta,
        shrinkwrap: recipe.shrinkwrap,
        constraint: recipe.constraint,
        starts,
        seed,
        support,
        init,
        init_noise,
        recording: match error_every {
            Some(k) => Recording::Every(k),
            None => Recording::EndOfErSections,
        },
        keep_all,
        clip_negative,
        free_fraction,
        selection,
        strategy,
    };
    let dev = device(&device_name)?;
    let cancel = Cancel::new();
    let done = AtomicU64::new(0);
    // preparation (validation, supports, starting objects) runs in the worker too
    let (problem, program, backend) = run_interruptible(py, &cancel, &done, None, || {
        let backend = backend::select(dev, threads)?;
        let (mut problem, program) = phasing::prepare(&patterns, &cfg)?;
        problem.cancel = cancel.clone();
        Ok((problem, program, backend))
    })?;
    let total = problem.items() as u64 * program.iterations;
    if let Some(cb) = &progress {
        cb.call_method1("set_total", (total,))?;
    }
    let rec = run_interruptible(py, &cancel, &done, progress.as_ref(), || {
        phasing::run_strategy(
            backend.as_ref(),
            &problem,
            &program,
            &cfg.strategy,
            cfg.seed,
            &|k| {
                done.fetch_add(k, Ordering::Relaxed);
            },
        )
    })?;
    let mut config = cfg.to_json();
    config["input"] = serde_json::json!("<numpy array>");
    config["device"] = serde_json::json!(rec.backend);
    reconstruction_dict(py, rec, config)
}

fn reconstruction_dict<'py>(
    py: Python<'py>,
    mut rec: Reconstruction,
    config: serde_json::Value,
) -> PyRes<Bound<'py, PyDict>> {
    let (n, h, w, k, l) = (rec.n, rec.h, rec.w, rec.starts, rec.records);
    let d = PyDict::new(py);
    if let Some(m) = rec.merits.take() {
        // the same names as the CXI datasets of `cdiphase phase`
        for (name, v) in [("llk", m.llk), ("free_llk", m.free_llk)] {
            d.set_item(name, array(py, rec.best_histories(&v), &[n, l])?)?;
            d.set_item(format!("all_{name}"), array(py, v, &[n, k, l])?)?;
        }
        for (name, v) in [
            ("llk", m.final_llk),
            ("free_llk", m.final_free_llk),
            ("support_fraction", m.final_support_fraction),
        ] {
            d.set_item(format!("final_{name}"), array(py, rec.best_of(&v), &[n])?)?;
            d.set_item(format!("all_final_{name}"), array(py, v, &[n, k])?)?;
        }
        d.set_item(
            "all_threshold_factor",
            array(py, m.threshold_factor, &[n, k])?,
        )?;
        let ev: Vec<i64> = m.guard_events.iter().map(|&e| e as i64).collect();
        d.set_item("all_support_guard_events", array(py, ev, &[n, k])?)?;
        d.set_item(
            "selection",
            serde_json::to_string(&m.selection).unwrap_or_default(),
        )?;
        // populations, restarts, culling and the merge: the CLI's datasets under the same
        // names (`merged_*` for entry_1/image_3's)
        let rs: Vec<i64> = m.restarts.iter().map(|&r| r as i64).collect();
        d.set_item(
            "restarts",
            array(py, phasing::per_pattern_sum(&rs, k), &[n])?,
        )?;
        d.set_item("all_restarts", array(py, rs, &[n, k])?)?;
        if let Some(r) = m.replaced {
            let r: Vec<i64> = r.iter().map(|&v| v as i64).collect();
            d.set_item("all_replaced", array(py, r, &[n, k])?)?;
        }
        if let Some((g, v)) = m.generation_best {
            d.set_item("generation_best", array(py, v, &[n, g])?)?;
        }
        if m.culled_at.iter().any(|&c| c > 0) {
            let c: Vec<i64> = m.culled_at.iter().map(|&v| v as i64).collect();
            d.set_item("all_culled_at", array(py, c, &[n, k])?)?;
        }
        if let Some(mg) = m.merged {
            let (c, md) = (mg.count, mg.modes);
            d.set_item("merged_objects", array(py, mg.objects, &[n, h, w])?)?;
            d.set_item("merged_supports", array(py, mg.supports, &[n, h, w])?)?;
            d.set_item("merged_modes", array(py, mg.mode_images, &[n, md, h, w])?)?;
            d.set_item("merged_mode_weights", array(py, mg.weights, &[n, md])?)?;
            d.set_item("merged_starts", array(py, mg.starts, &[n, c])?)?;
            d.set_item(
                "merged_final_fourier_error",
                array(py, mg.fourier_error, &[n])?,
            )?;
            d.set_item("merged_final_llk", array(py, mg.llk, &[n])?)?;
        }
    }
    d.set_item(
        "fourier_error",
        array(py, rec.best_histories(&rec.fourier_error), &[n, l])?,
    )?;
    d.set_item(
        "real_space_error",
        array(py, rec.best_histories(&rec.real_error), &[n, l])?,
    )?;
    d.set_item(
        "final_fourier_error",
        array(py, rec.best_final_errors(), &[n])?,
    )?;
    let best: Vec<i64> = rec.best_start.iter().map(|&s| s as i64).collect();
    d.set_item("best_start", array(py, best, &[n])?)?;
    d.set_item(
        "all_fourier_error",
        array(py, rec.fourier_error, &[n, k, l])?,
    )?;
    d.set_item(
        "all_real_space_error",
        array(py, rec.real_error, &[n, k, l])?,
    )?;
    d.set_item(
        "all_final_fourier_error",
        array(py, rec.final_fourier_error, &[n, k])?,
    )?;
    d.set_item("objects", stack_array(py, rec.objects)?)?;
    d.set_item("supports", stack_array(py, rec.supports)?)?;
    if let (Some(o), Some(s)) = (rec.all_objects, rec.all_supports) {
        d.set_item("all_objects", array(py, o, &[n, k, h, w])?)?;
        d.set_item("all_supports", array(py, s, &[n, k, h, w])?)?;
    }
    d.set_item("iterations", rec.iterations)?;
    d.set_item("seconds", rec.seconds)?;
    d.set_item("device", rec.backend)?;
    d.set_item("configuration", config.to_string())?;
    Ok(d)
}

/// Write a phasing result as `cdiphase phase` does (`Reconstruction::write_cxi`).
#[pyfunction]
#[pyo3(signature = (path, objects, supports, best_start, all_fourier_error,
    all_real_space_error, all_final_fourier_error, all_objects, all_supports, iterations,
    seconds, device_name, configuration, merits))]
#[allow(clippy::too_many_arguments)]
fn write_reconstruction(
    py: Python<'_>,
    path: PathBuf,
    objects: PyReadonlyArrayDyn<'_, Complex32>,
    supports: PyReadonlyArrayDyn<'_, u8>,
    best_start: PyReadonlyArrayDyn<'_, i64>,
    all_fourier_error: PyReadonlyArrayDyn<'_, f32>,
    all_real_space_error: PyReadonlyArrayDyn<'_, f32>,
    all_final_fourier_error: PyReadonlyArrayDyn<'_, f32>,
    all_objects: Option<PyReadonlyArrayDyn<'_, Complex32>>,
    all_supports: Option<PyReadonlyArrayDyn<'_, u8>>,
    iterations: u64,
    seconds: f64,
    device_name: String,
    configuration: String,
    merits: Option<Bound<'_, PyDict>>,
) -> PyRes<()> {
    let objects = stack(&objects, "objects")?;
    let supports = stack(&supports, "supports")?;
    let (n, h, w) = (objects.n, objects.h, objects.w);
    let fe_shape = all_fourier_error.shape().to_vec();
    let (k, l) = match fe_shape[..] {
        [a, k, l] if a == n => (k, l),
        _ => {
            return Err(py_err(Error::Shape {
                what: "all_fourier_error".into(),
                expected: format!("({n}, K, L)"),
                found: fe_shape,
            }))
        }
    };
    let best_start: Vec<usize> = values(&best_start)
        .into_iter()
        .map(|s| usize::try_from(s).unwrap_or(usize::MAX))
        .collect();
    if best_start.len() != n || best_start.iter().any(|&s| s >= k) {
        return Err(PyValueError::new_err(format!(
            "best_start: expected {n} start indices below {k}"
        )));
    }
    let rec = Reconstruction {
        n,
        h,
        w,
        starts: k,
        best_start,
        objects,
        supports,
        all_objects: all_objects.map(|a| values(&a)),
        all_supports: all_supports.map(|a| values(&a)),
        records: l,
        fourier_error: values(&all_fourier_error),
        real_error: values(&all_real_space_error),
        final_fourier_error: values(&all_final_fourier_error),
        merits: merits.map(|m| merits_of(&m, n, k, l, (h, w))).transpose()?,
        iterations,
        seconds,
        backend: device_name,
    };
    if rec.real_error.len() != n * k * l || rec.final_fourier_error.len() != n * k {
        return Err(PyValueError::new_err(format!(
            "error histories: expected ({n}, {k}, {l}) and ({n}, {k}) values"
        )));
    }
    let config: serde_json::Value = serde_json::from_str(&configuration)
        .map_err(|e| PyValueError::new_err(format!("configuration is not JSON: {e}")))?;
    py.detach(|| lib(rec.write_cxi(&path, &config)))
}

/// The figures of merit of a `PhaseResult` (the arrays `reconstruction_dict` returned),
/// checked against the run's shape (N patterns, K starts, L records).
fn merits_of(
    d: &Bound<'_, PyDict>,
    n: usize,
    k: usize,
    l: usize,
    (h, w): (usize, usize),
) -> PyRes<Merits> {
    // an optional (N, K) int64 array
    let get_i64 = |name: &str, len: usize| -> PyRes<Option<Vec<i64>>> {
        let Some(item) = d.get_item(name)? else {
            return Ok(None);
        };
        if item.is_none() {
            return Ok(None);
        }
        let a: PyReadonlyArrayDyn<'_, i64> = item.extract()?;
        let v = values(&a);
        if v.len() != len {
            return Err(PyValueError::new_err(format!(
                "merits: '{name}' has {} values, expected {len}",
                v.len()
            )));
        }
        Ok(Some(v))
    };
    let get = |name: &str, len: usize| -> PyRes<Vec<f32>> {
        let item = d
            .get_item(name)?
            .ok_or_else(|| PyValueError::new_err(format!("merits: '{name}' is missing")))?;
        let a: PyReadonlyArrayDyn<'_, f32> = item.extract()?;
        let v = values(&a);
        if v.len() != len {
            return Err(PyValueError::new_err(format!(
                "merits: '{name}' has {} values, expected {len} for {n} patterns x {k} starts",
                v.len()
            )));
        }
        Ok(v)
    };
    let events: PyReadonlyArrayDyn<'_, i64> = d
        .get_item("all_support_guard_events")?
        .ok_or_else(|| PyValueError::new_err("merits: 'all_support_guard_events' is missing"))?
        .extract()?;
    let guard_events: Vec<u32> = values(&events)
        .into_iter()
        .map(|e| u32::try_from(e).unwrap_or(u32::MAX))
        .collect();
    if guard_events.len() != n * k {
        return Err(PyValueError::new_err(format!(
            "merits: 'all_support_guard_events' has {} values, expected {}",
            guard_events.len(),
            n * k
        )));
    }
    let sel: String = d
        .get_item("selection")?
        .ok_or_else(|| PyValueError::new_err("merits: 'selection' is missing"))?
        .extract()?;
    let sel: serde_json::Value = serde_json::from_str(&sel)
        .map_err(|e| PyValueError::new_err(format!("merits: selection is not JSON: {e}")))?;
    let fraction = |key: &str| -> PyRes<f32> {
        sel[key]
            .as_f64()
            .map(|v| v as f32)
            .ok_or_else(|| PyValueError::new_err(format!("merits: selection lacks '{key}'")))
    };
    let criterion = sel["criterion"]
        .as_str()
        .ok_or_else(|| PyValueError::new_err("merits: selection lacks 'criterion'"))?;
    let selection = Selection {
        criterion: lib(criterion.parse())?,
        min_fraction: fraction("min_fraction")?,
        max_fraction: fraction("max_fraction")?,
    };
    Ok(Merits {
        llk: get("all_llk", n * k * l)?,
        free_llk: get("all_free_llk", n * k * l)?,
        final_llk: get("all_final_llk", n * k)?,
        final_free_llk: get("all_final_free_llk", n * k)?,
        final_support_fraction: get("all_final_support_fraction", n * k)?,
        selection,
        guard_events,
        threshold_factor: get("all_threshold_factor", n * k)?,
        restarts: get_i64("all_restarts", n * k)?
            .map(|v| {
                v.into_iter()
                    .map(|r| r.clamp(0, u32::MAX as i64) as u32)
                    .collect()
            })
            .unwrap_or_else(|| vec![0; n * k]),
        culled_at: get_i64("all_culled_at", n * k)?
            .map(|v| v.into_iter().map(|r| r.max(0) as u64).collect())
            .unwrap_or_else(|| vec![0; n * k]),
        replaced: get_i64("all_replaced", n * k)?.map(|v| {
            v.into_iter()
                .map(|r| r.clamp(0, u32::MAX as i64) as u32)
                .collect()
        }),
        generation_best: match d.get_item("generation_best")? {
            None => None,
            Some(item) => {
                let a: PyReadonlyArrayDyn<'_, f32> = item.extract()?;
                let g = a.shape().get(1).copied().unwrap_or(0);
                let v = values(&a);
                if a.shape().len() != 2 || v.len() != n * g {
                    return Err(PyValueError::new_err(format!(
                        "merits: 'generation_best' must be ({n}, G)"
                    )));
                }
                Some((g, v))
            }
        },
        merged: merged_of(d, n, h, w)?,
    })
}

/// The merge of a `PhaseResult` (`merged_*`, as `reconstruction_dict` returned it), if any.
fn merged_of(d: &Bound<'_, PyDict>, n: usize, h: usize, w: usize) -> PyRes<Option<MergedSet>> {
    let Some(obj) = d.get_item("merged_objects")? else {
        return Ok(None);
    };
    if obj.is_none() {
        return Ok(None);
    }
    let item = |name: &str| -> PyRes<Bound<'_, PyAny>> {
        d.get_item(name)?
            .ok_or_else(|| PyValueError::new_err(format!("merits: '{name}' is missing")))
    };
    let objects: PyReadonlyArrayDyn<'_, Complex32> = obj.extract()?;
    let supports: PyReadonlyArrayDyn<'_, u8> = item("merged_supports")?.extract()?;
    let modes: PyReadonlyArrayDyn<'_, Complex32> = item("merged_modes")?.extract()?;
    let weights: PyReadonlyArrayDyn<'_, f32> = item("merged_mode_weights")?.extract()?;
    let starts: PyReadonlyArrayDyn<'_, i64> = item("merged_starts")?.extract()?;
    let fe: PyReadonlyArrayDyn<'_, f32> = item("merged_final_fourier_error")?.extract()?;
    let llk: PyReadonlyArrayDyn<'_, f32> = item("merged_final_llk")?.extract()?;
    let md = modes.shape().get(1).copied().unwrap_or(0);
    let count = starts.shape().get(1).copied().unwrap_or(0);
    let ok = objects.shape() == [n, h, w]
        && supports.shape() == [n, h, w]
        && modes.shape() == [n, md, h, w]
        && weights.shape() == [n, md]
        && starts.shape() == [n, count]
        && fe.shape() == [n]
        && llk.shape() == [n];
    if !ok {
        return Err(PyValueError::new_err(format!(
            "merits: the merged_* arrays must be ({n}, {h}, {w}) objects and supports, ({n}, M, {h}, {w}) modes, ({n}, M) weights, ({n}, C) starts and ({n},) errors"
        )));
    }
    Ok(Some(MergedSet {
        count,
        modes: md,
        objects: values(&objects),
        supports: values(&supports),
        mode_images: values(&modes),
        weights: values(&weights),
        starts: values(&starts),
        fourier_error: values(&fe),
        llk: values(&llk),
    }))
}

// ---------------------------------------------------------------------------------------
// the network

/// A model (the network description and its weights).
#[pyclass(module = "cdiphase._native", name = "Model", frozen)]
struct PyModel {
    model: Model,
    label: String,
}

#[pymethods]
impl PyModel {
    /// Load a model file from `cdiphase convert`, or the bundled default when `path` is None.
    #[staticmethod]
    #[pyo3(signature = (path=None))]
    fn load(py: Python<'_>, path: Option<PathBuf>) -> PyRes<PyModel> {
        py.detach(|| match path {
            Some(p) => Ok(PyModel {
                model: lib(store::load(&p))?,
                label: p.display().to_string(),
            }),
            None => Ok(PyModel {
                model: lib(nn::bundled::load())?,
                label: nn::bundled::label(),
            }),
        })
    }

    /// The network's name.
    #[getter]
    fn name(&self) -> String {
        self.model.spec.name.clone()
    }

    /// Where the model came from (its file, or the bundled model's label).
    #[getter]
    fn label(&self) -> String {
        self.label.clone()
    }

    /// Input shape (H, W, C).
    #[getter]
    fn input_shape(&self) -> (usize, usize, usize) {
        let [h, w, c] = self.model.spec.input;
        (h, w, c)
    }

    /// Input preprocessing (`max` or `log1p-max`).
    #[getter]
    fn preprocess(&self) -> String {
        format!("{:?}", self.model.spec.preprocess)
    }

    /// Number of parameters.
    #[getter]
    fn parameters(&self) -> PyRes<usize> {
        lib(self.model.spec.params())
    }

    /// Predict every pattern; see `cdiphase.Model.predict`.
    #[pyo3(signature = (patterns, mask, threshold, batch, device_name, threads, mode, progress))]
    #[allow(clippy::too_many_arguments)]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        patterns: PyReadonlyArrayDyn<'py, f32>,
        mask: Option<PyReadonlyArrayDyn<'py, u8>>,
        threshold: f32,
        batch: usize,
        device_name: String,
        threads: Option<usize>,
        mode: String,
        progress: Option<Bound<'py, PyAny>>,
    ) -> PyRes<Bound<'py, PyDict>> {
        if !(threshold.is_finite() && (0.0..=1.0).contains(&threshold)) {
            return Err(PyValueError::new_err(format!(
                "threshold {threshold}: expected a fraction in [0, 1]"
            )));
        }
        let mode = net_mode(&mode)?;
        let ps = pattern_set(&patterns, mask.as_ref())?;
        let st = &ps.intensities;
        if let Some(i) = st.data.iter().position(|v| v.is_nan()) {
            let px = st.h * st.w;
            return Err(PyValueError::new_err(format!(
                "patterns: pattern {} has a NaN at pixel ({}, {}); mask it instead",
                i / px,
                (i % px) / st.w,
                i % st.w
            )));
        }
        if let Some(m) = &ps.mask {
            fits("mask", m, st)?;
        }
        let dev = device(&device_name)?;
        let cancel = Cancel::new();
        let done = AtomicU64::new(0);
        if let Some(cb) = &progress {
            cb.call_method1("set_total", (st.n as u64,))?;
        }
        let (p, engine) = run_interruptible(py, &cancel, &done, progress.as_ref(), || {
            let backend = backend::select(dev, threads)?;
            let p = nn::predict::predict_cancellable(
                backend.as_ref(),
                &self.model,
                st,
                ps.mask.as_ref(),
                batch,
                threshold,
                NetOptions {
                    mode,
                    poison: false,
                },
                &|k| done.store(k as u64, Ordering::Relaxed),
                &cancel,
            )?;
            Ok((p, nn::predict::engine(backend.as_ref(), mode)))
        })?;
        let d = PyDict::new(py);
        let shape = [p.n, p.h, p.w];
        d.set_item("output", array(py, p.output, &shape)?)?;
        d.set_item("support", array(py, p.support, &shape)?)?;
        d.set_item("model", self.label.clone())?;
        d.set_item(
            "description",
            nn::predict::description(&self.model.spec, threshold, engine),
        )?;
        Ok(d)
    }
}

fn net_mode(name: &str) -> PyRes<backend::Mode> {
    use backend::Mode;
    Ok(match name.to_ascii_lowercase().as_str() {
        "f32" => Mode::F32,
        "f32-direct" => Mode::F32Direct,
        "f32-gemm" => Mode::Gemm,
        "winograd" => Mode::Winograd,
        "bf16" => Mode::Bf16,
        "bf16-avx512" => Mode::Bf16Avx512,
        "fast" => backend::cpu::nn::fast_mode().0,
        other => {
            return Err(PyValueError::new_err(format!(
                "mode '{other}': expected f32, f32-direct, f32-gemm, winograd, bf16, bf16-avx512 or fast"
            )))
        }
    })
}

/// Write a prediction as `cdiphase predict` does.
#[pyfunction]
fn write_prediction(
    py: Python<'_>,
    path: PathBuf,
    output: PyReadonlyArrayDyn<'_, f32>,
    support: PyReadonlyArrayDyn<'_, u8>,
    model: String,
    description: String,
) -> PyRes<()> {
    let o = stack(&output, "output")?;
    let s = stack(&support, "support")?;
    if o.shape() != s.shape() {
        return Err(PyValueError::new_err(format!(
            "output {:?} and support {:?} differ in shape",
            o.shape(),
            s.shape()
        )));
    }
    let p = nn::predict::Prediction {
        n: o.n,
        h: o.h,
        w: o.w,
        output: o.data,
        support: s.data,
    };
    py.detach(|| lib(p.write_cxi(&path, &model, &description)))
}

/// Convert a Keras checkpoint to a model file, as `cdiphase convert` does. Returns whether
/// the weights were matched by layer order (names differ from the architecture's).
#[pyfunction]
#[pyo3(signature = (input, output, arch, arch_config, dtype, preprocess))]
fn convert(
    py: Python<'_>,
    input: PathBuf,
    output: PathBuf,
    arch: Option<String>,
    arch_config: Option<PathBuf>,
    dtype: String,
    preprocess: String,
) -> PyRes<bool> {
    py.detach(|| {
        let pre: nn::Preprocess = lib(preprocess.parse())?;
        let dtype: store::WeightDtype = lib(dtype.parse())?;
        let arch = match (arch, arch_config) {
            (Some(_), Some(_)) => {
                return Err(PyValueError::new_err("give arch or arch_config, not both"))
            }
            (Some(s), None) => nn::keras::Arch::Given(lib(nn::presets::parse(&s, pre))?),
            (None, Some(p)) => nn::keras::Arch::Given(lib(nn::keras::config_from_file(&p, pre))?),
            (None, None) => nn::keras::Arch::FromFile,
        };
        let (model, matching) = lib(nn::keras::convert_matched(&input, arch, pre))?;
        lib(store::save(&model, dtype, &output))?;
        Ok(matching == nn::keras::Matching::ByOrder)
    })
}

// ---------------------------------------------------------------------------------------
// supports, simulation, files

/// Supports from patterns (`autocorrelation`, `triple-intersection`) or from images
/// (`nn`: a network output thresholded).
#[pyfunction]
#[pyo3(signature = (images, mask, method, threshold))]
fn support<'py>(
    py: Python<'py>,
    images: PyReadonlyArrayDyn<'py, f32>,
    mask: Option<PyReadonlyArrayDyn<'py, u8>>,
    method: String,
    threshold: Option<f32>,
) -> PyRes<Bound<'py, PyArrayDyn<u8>>> {
    let method = lib(cdiphase::support::Method::parse(&method))?;
    let threshold = threshold.unwrap_or(method.default_threshold());
    lib(cdiphase::support::check_threshold(threshold))?;
    let ps = pattern_set(&images, mask.as_ref())?;
    let s = py.detach(|| match method {
        cdiphase::support::Method::Nn => Ok(cdiphase::support::threshold_supports(
            &ps.intensities,
            threshold,
        )),
        m => lib(cdiphase::support::estimate_from_patterns(&ps, m, threshold).map(|r| r.0)),
    })?;
    stack_array(py, s)
}

/// Simulate patterns with their ground truth; see `cdiphase.simulate`.
#[pyfunction]
#[pyo3(signature = (pdb, synthetic, residues, count, size, photons, fluence, noise, mask,
    seed, preset, resolution, fill, pixel_size, atoms, supersample, ideal_support,
    support_threshold, centre, max_extent, assemblies, assembly_parts, chains, keep_waters,
    keep_hydrogens, threads, progress))]
#[allow(clippy::too_many_arguments)]
fn simulate<'py>(
    py: Python<'py>,
    pdb: Vec<PathBuf>,
    synthetic: Option<String>,
    residues: (usize, usize),
    count: usize,
    size: Option<(usize, usize)>,
    photons: Option<f64>,
    fluence: Option<f64>,
    noise: Option<String>,
    mask: String,
    seed: u64,
    preset: Option<String>,
    resolution: Option<f64>,
    fill: Option<f64>,
    pixel_size: Option<f64>,
    atoms: String,
    supersample: Option<usize>,
    ideal_support: Option<String>,
    support_threshold: Option<f64>,
    centre: Option<String>,
    max_extent: Option<f64>,
    assemblies: Option<usize>,
    assembly_parts: (usize, usize),
    chains: String,
    keep_waters: bool,
    keep_hydrogens: bool,
    threads: Option<usize>,
    progress: Option<Bound<'py, PyAny>>,
) -> PyRes<Bound<'py, PyDict>> {
    match (&synthetic, pdb.is_empty()) {
        (Some(_), false) => {
            return Err(PyValueError::new_err("give pdb or synthetic, not both"));
        }
        (None, true) => {
            return Err(PyValueError::new_err(
                "give structures (pdb=[files or folders]) or synthetic='all' (or a list of compact, elongated, multidomain, ring)",
            ));
        }
        _ => {}
    }
    if synthetic.is_some() && assemblies.is_some() {
        return Err(PyValueError::new_err(
            "assemblies are made of structures: give pdb, not synthetic",
        ));
    }
    // the options of `cdiphase simulate`, one implementation (SimOptions)
    let cfg = lib(sim::SimOptions {
        preset,
        count,
        seed,
        size,
        noise,
        photons,
        fluence,
        mask: Some(mask),
        resolution,
        atoms: Some(atoms),
        fill,
        pixel_size_nm: pixel_size,
        supersample,
        ideal_support,
        support_threshold,
        centre,
        max_extent,
        synthetic: synthetic.clone().map(|k| (k, residues)),
        assemblies: assemblies.map(|k| (k, assembly_parts)),
    }
    .config())?;
    let opts = sim::ReadOptions {
        skip_waters: !keep_waters,
        skip_hydrogens: !keep_hydrogens,
        chains: lib(sim::Chains::parse(&chains))?,
    };
    let cancel = Cancel::new();
    let done = AtomicU64::new(0);
    if let Some(cb) = &progress {
        cb.call_method1("set_total", (count as u64,))?;
    }
    let (out, warnings) = run_interruptible(py, &cancel, &done, progress.as_ref(), || {
        let pool = cdiphase::backend::cpu::thread_pool(threads.filter(|&t| t > 0))?;
        pool.install(|| {
            let mut warnings = Vec::new();
            let structures = if cfg.synthetic.is_some() {
                Vec::new()
            } else {
                let (s, mut failed) = sim::collect_structures(&pdb, &opts);
                if s.is_empty() && failed.len() == 1 {
                    // one unreadable file: its own error (OSError for a missing file)
                    return Err(failed.remove(0).1);
                }
                for (p, e) in failed {
                    warnings.push(format!("skipped {}: {e}", p.display()));
                }
                let read = s.len();
                let (s, too_large) = sim::fitting_structures(s, &cfg);
                for (name, e) in too_large {
                    warnings.push(format!("skipped {name}: {e}"));
                }
                if s.is_empty() {
                    return Err(Error::Config(format!(
                        "no usable structure among {} ({read} read): {}",
                        pdb.iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        warnings.join("; ")
                    )));
                }
                s
            };
            let out = sim::simulate(&structures, &cfg, &|k| {
                done.fetch_add(k, Ordering::Relaxed);
            })?;
            Ok((out, warnings))
        })
    })?;
    let d = PyDict::new(py);
    d.set_item("patterns", stack_array(py, out.intensities)?)?;
    d.set_item("mask", stack_array(py, out.mask)?)?;
    d.set_item("density", stack_array(py, out.density)?)?;
    d.set_item("support", stack_array(py, out.support)?)?;
    let q: Vec<f64> = out.orientation.iter().flatten().copied().collect();
    let n = out.names.len();
    d.set_item("orientation", array(py, q, &[n, 4])?)?;
    d.set_item("names", out.names)?;
    d.set_item("pixel_size_nm", array(py, out.pixel_size_nm, &[n])?)?;
    d.set_item("configuration", cfg.to_json().to_string())?;
    d.set_item("warnings", warnings)?;
    Ok(d)
}

fn has(list: &[(String, Vec<usize>, String)], entry: &str) -> Option<(Vec<usize>, String)> {
    list.iter()
        .find(|(p, _, _)| p == entry)
        .map(|(_, s, t)| (s.clone(), t.clone()))
}

/// Every start's supports in a `phase --keep-all` output.
const ALL_SUPPORTS: &str = "entry_1/image_2/support";

/// Read what a cdiphase CXI file holds; see `cdiphase.read_cxi`.
#[pyfunction]
fn read_cxi<'py>(py: Python<'py>, path: PathBuf) -> PyRes<Bound<'py, PyDict>> {
    let p = path.as_path();
    let list = py.detach(|| lib(io::list_datasets(p)))?;
    let d = PyDict::new(py);
    if has(&list, io::DEFAULT_DATA_ENTRY).is_some() {
        let ps = py.detach(|| lib(io::read_patterns(p, None)))?;
        d.set_item("patterns", stack_array(py, ps.intensities)?)?;
        if let Some(m) = ps.mask {
            d.set_item("mask", stack_array(py, m)?)?;
        }
    }
    if has(&list, eval::TRUTH_DENSITY).is_some() {
        let (shape, v) = py.detach(|| lib(io::read_f32(p, eval::TRUTH_DENSITY)))?;
        d.set_item("density", array(py, v, &shape)?)?;
    }
    if has(&list, eval::TRUTH_SUPPORT).is_some() {
        let s = py.detach(|| lib(io::read_support(p, Some(eval::TRUTH_SUPPORT))))?;
        d.set_item("truth_support", stack_array(py, s)?)?;
    }
    if let Some((_, dtype)) = has(&list, eval::IN_DATA) {
        let complex = {
            let t = dtype.to_ascii_lowercase();
            t.contains("complex") || t.contains("compound")
        };
        if complex {
            let o = py.detach(|| lib(io::read_object(p, Some(eval::IN_DATA))))?;
            d.set_item("objects", stack_array(py, o)?)?;
        } else {
            // a `predict` output: the network's real-valued image
            let (shape, v) = py.detach(|| lib(io::read_f32(p, eval::IN_DATA)))?;
            d.set_item("output", array(py, v, &shape)?)?;
        }
    }
    if has(&list, eval::IN_SUPPORT).is_some() {
        let s = py.detach(|| lib(io::read_support(p, Some(eval::IN_SUPPORT))))?;
        d.set_item("supports", stack_array(py, s)?)?;
    }
    if has(&list, eval::IN_ALL).is_some() {
        // every start of a `phase --keep-all` run, (N, K, H, W)
        let (shape, v) = py.detach(|| lib(io::read_complex_nd(p, eval::IN_ALL)))?;
        d.set_item("all_objects", array(py, v, &shape)?)?;
    }
    if has(&list, ALL_SUPPORTS).is_some() {
        let (shape, v) = py.detach(|| lib(io::read_mask_nd(p, ALL_SUPPORTS)))?;
        d.set_item("all_supports", array(py, v, &shape)?)?;
    }
    for (key, entry) in [
        ("fourier_error", eval::IN_FOURIER),
        ("final_fourier_error", eval::IN_FINAL),
        ("all_fourier_error", "entry_1/image_1/all_fourier_error"),
        (
            "all_final_fourier_error",
            "entry_1/image_1/all_final_fourier_error",
        ),
        ("pixel_size_nm", eval::TRUTH_PIXEL_SIZE),
    ] {
        if has(&list, entry).is_some() {
            let (shape, v) = py.detach(|| lib(io::read_f32(p, entry)))?;
            d.set_item(key, array(py, v, &shape)?)?;
        }
    }
    d.set_item("datasets", list)?;
    Ok(d)
}

/// Write arrays into a CXI file at the paths cdiphase reads; see `cdiphase.write_cxi`.
#[pyfunction]
#[pyo3(signature = (path, patterns, mask, density, truth_support, objects, supports))]
#[allow(clippy::too_many_arguments)]
fn write_cxi(
    py: Python<'_>,
    path: PathBuf,
    patterns: Option<PyReadonlyArrayDyn<'_, f32>>,
    mask: Option<PyReadonlyArrayDyn<'_, u8>>,
    density: Option<PyReadonlyArrayDyn<'_, f32>>,
    truth_support: Option<PyReadonlyArrayDyn<'_, u8>>,
    objects: Option<PyReadonlyArrayDyn<'_, Complex32>>,
    supports: Option<PyReadonlyArrayDyn<'_, u8>>,
) -> PyRes<()> {
    let mut wr = io::CxiWriter::new();
    lib(wr.i64("cxi_version", &[1], &[150]))?;
    lib(wr.attr_string("entry_1", "NX_class", "NXentry"))?;
    let mut any = false;
    let mut put = |what: &str, shape: &[usize]| -> PyRes<Vec<usize>> {
        any = true;
        nhw(what, shape)?;
        Ok(shape.to_vec())
    };
    if let Some(a) = &patterns {
        let s = put("patterns", a.shape())?;
        lib(wr.f32(io::DEFAULT_DATA_ENTRY, &s, &values(a)))?;
    }
    if let Some(a) = &mask {
        let s = put("mask", a.shape())?;
        lib(wr.u8("entry_1/data_1/mask", &s, &values(a)))?;
    }
    if let Some(a) = &density {
        let s = put("density", a.shape())?;
        lib(wr.f32(eval::TRUTH_DENSITY, &s, &values(a)))?;
    }
    if let Some(a) = &truth_support {
        let s = put("truth_support", a.shape())?;
        lib(wr.u8(eval::TRUTH_SUPPORT, &s, &values(a)))?;
    }
    if let Some(a) = &objects {
        let s = put("objects", a.shape())?;
        lib(wr.complex64(eval::IN_DATA, &s, &values(a)))?;
    }
    if let Some(a) = &supports {
        let s = put("supports", a.shape())?;
        lib(wr.u8(eval::IN_SUPPORT, &s, &values(a)))?;
    }
    if !any {
        return Err(PyValueError::new_err("write_cxi: nothing to write"));
    }
    py.detach(|| lib(wr.finish(&path)))
}

// ---------------------------------------------------------------------------------------
// evaluation

/// Evaluate files as `cdiphase evaluate` does (without the figures): the metrics JSON.
#[pyfunction]
fn evaluate_files(py: Python<'_>, truth: PathBuf, inputs: Vec<PathBuf>) -> PyRes<String> {
    py.detach(|| {
        let t = lib(eval::read_truth(&truth))?;
        let labels = eval::labels(&inputs);
        let mut evals = Vec::new();
        for (p, l) in inputs.iter().zip(&labels) {
            let i = lib(eval::read_input(p, l, &t))?;
            evals.push(eval::evaluate_input(&t, &i, 0));
        }
        Ok(eval::report::to_json(&t, &evals).to_string())
    })
}

/// Evaluate arrays against a ground truth: the metrics JSON of `cdiphase evaluate`.
#[pyfunction]
#[pyo3(signature = (density, truth_support, pixel_size_nm, label, objects, supports, all_objects))]
#[allow(clippy::too_many_arguments)]
fn evaluate_arrays(
    py: Python<'_>,
    density: PyReadonlyArrayDyn<'_, f32>,
    truth_support: PyReadonlyArrayDyn<'_, u8>,
    pixel_size_nm: Option<Vec<f64>>,
    label: String,
    objects: Option<PyReadonlyArrayDyn<'_, Complex32>>,
    supports: Option<PyReadonlyArrayDyn<'_, u8>>,
    all_objects: Option<PyReadonlyArrayDyn<'_, Complex32>>,
) -> PyRes<String> {
    let density = stack(&density, "density")?;
    let support = stack(&truth_support, "truth_support")?;
    if support.shape() != density.shape() {
        return Err(py_err(Error::Shape {
            what: "truth_support".into(),
            expected: format!("{:?} as the density", density.shape()),
            found: support.shape().to_vec(),
        }));
    }
    let shape = density.shape();
    let check = |what: &str, s: [usize; 3]| -> PyRes<()> {
        if s != shape {
            return Err(py_err(Error::Shape {
                what: what.into(),
                expected: format!("{shape:?} as the truth"),
                found: s.to_vec(),
            }));
        }
        Ok(())
    };
    let object = objects.map(|a| stack(&a, "objects")).transpose()?;
    if let Some(o) = &object {
        check("objects", o.shape())?;
    }
    let sup = supports.map(|a| stack(&a, "supports")).transpose()?;
    if let Some(s) = &sup {
        check("supports", s.shape())?;
    }
    let all = match all_objects {
        Some(a) => match *a.shape() {
            [n, k, h, w] if [n, h, w] == shape => Some((k, values(&a))),
            ref s => {
                return Err(py_err(Error::Shape {
                    what: "all_objects".into(),
                    expected: format!("({}, K, {}, {})", shape[0], shape[1], shape[2]),
                    found: s.to_vec(),
                }))
            }
        },
        None => None,
    };
    if object.is_none() && sup.is_none() && all.is_none() {
        return Err(PyValueError::new_err(
            "evaluate: give objects, supports or all_objects",
        ));
    }
    if let Some(p) = &pixel_size_nm {
        if p.len() != shape[0] {
            return Err(PyValueError::new_err(format!(
                "pixel_size_nm: expected {} values, one per pattern",
                shape[0]
            )));
        }
    }
    let truth = eval::Truth {
        path: PathBuf::from("<truth arrays>"),
        density,
        support,
        patterns: None,
        pixel_nm: pixel_size_nm,
        names: None,
    };
    let input = eval::Input {
        path: PathBuf::from(format!("<{label}>")),
        label,
        support: sup,
        object,
        fourier_error: None,
        final_fourier_error: None,
        all_fourier_error: None,
        all_objects: all,
        merged: None,
    };
    Ok(py.detach(|| {
        let e = eval::evaluate_input(&truth, &input, 0);
        eval::report::to_json(&truth, &[e]).to_string()
    }))
}

fn c64(a: &PyReadonlyArrayDyn<'_, Complex64>, what: &str) -> PyRes<(usize, usize, Vec<Complex64>)> {
    match *a.shape() {
        [h, w] => Ok((h, w, values(a))),
        ref s => Err(py_err(Error::Shape {
            what: what.into(),
            expected: "(H, W)".into(),
            found: s.to_vec(),
        })),
    }
}

/// Align `candidate` to `reference`; see `cdiphase.align`.
#[pyfunction]
fn align_images<'py>(
    py: Python<'py>,
    reference: PyReadonlyArrayDyn<'py, Complex64>,
    candidate: PyReadonlyArrayDyn<'py, Complex64>,
    twin: bool,
    upsample: usize,
    fit_scale: bool,
) -> PyRes<(Bound<'py, PyArrayDyn<Complex64>>, Bound<'py, PyDict>)> {
    let (h, w, r) = c64(&reference, "reference")?;
    let (h2, w2, c) = c64(&candidate, "candidate")?;
    if (h, w) != (h2, w2) {
        return Err(py_err(Error::Shape {
            what: "candidate".into(),
            expected: format!("({h}, {w}) as the reference"),
            found: vec![h2, w2],
        }));
    }
    let opts = align::AlignOptions {
        twin,
        upsample: upsample.max(1),
        fit_scale,
    };
    let (aligned, al) = py.detach(|| align::align(&r, &c, h, w, opts));
    let d = PyDict::new(py);
    d.set_item("shift", al.shift)?;
    d.set_item("twin", al.twin)?;
    d.set_item("phase", al.phase)?;
    d.set_item("scale", al.scale)?;
    d.set_item("error", al.error)?;
    Ok((array(py, aligned, &[h, w])?, d))
}

/// The PRTF of several reconstructions of one pattern; see `cdiphase.prtf`.
#[pyfunction]
fn prtf<'py>(
    py: Python<'py>,
    images: PyReadonlyArrayDyn<'py, Complex64>,
    upsample: usize,
    pixel_size_nm: Option<f64>,
) -> PyRes<Bound<'py, PyDict>> {
    let (k, h, w) = match *images.shape() {
        [k, h, w] if k >= 2 => (k, h, w),
        ref s => {
            return Err(py_err(Error::Shape {
                what: "images".into(),
                expected: "(K, H, W) with K >= 2 reconstructions".into(),
                found: s.to_vec(),
            }))
        }
    };
    let v = values(&images);
    let imgs: Vec<Vec<Complex64>> = v.chunks_exact(h * w).map(|c| c.to_vec()).collect();
    debug_assert_eq!(imgs.len(), k);
    let (curve, avg) = py.detach(|| metrics::prtf(&imgs, h, w, upsample.max(1)));
    let res = metrics::resolution(&curve, pixel_size_nm);
    let d = PyDict::new(py);
    let nb = curve.frequency.len();
    d.set_item("frequency", array(py, curve.frequency, &[nb])?)?;
    d.set_item("prtf", array(py, curve.value, &[nb])?)?;
    d.set_item("average", array(py, avg, &[h, w])?)?;
    d.set_item("crossed", res.crossed)?;
    d.set_item("resolution_frequency", res.frequency)?;
    d.set_item("resolution_pixels", res.pixels)?;
    d.set_item("resolution_nm", res.nm)?;
    Ok(d)
}

/// The Fourier error of each object against its pattern; see `cdiphase.fourier_error`.
#[pyfunction]
fn fourier_error<'py>(
    py: Python<'py>,
    objects: PyReadonlyArrayDyn<'py, Complex64>,
    intensities: PyReadonlyArrayDyn<'py, f32>,
    mask: Option<PyReadonlyArrayDyn<'py, u8>>,
) -> PyRes<Bound<'py, PyArrayDyn<f64>>> {
    let (n, h, w) = nhw("objects", objects.shape())?;
    let o = values(&objects);
    let i = stack(&intensities, "intensities")?;
    if (i.n, i.h, i.w) != (n, h, w) {
        return Err(py_err(Error::Shape {
            what: "intensities".into(),
            expected: format!("({n}, {h}, {w}) as the objects"),
            found: vec![i.n, i.h, i.w],
        }));
    }
    let m = mask.map(|a| stack(&a, "mask")).transpose()?;
    if let Some(m) = &m {
        fits("mask", m, &i)?;
    }
    let l = h * w;
    let errs = py.detach(|| {
        (0..n)
            .map(|p| {
                let mm = m.as_ref().map(|m| m.image(if m.n == 1 { 0 } else { p }));
                metrics::fourier_error(&o[p * l..(p + 1) * l], i.image(p), mm, h, w).map_err(|e| {
                    match e {
                        Error::InvalidData { what, msg } => Error::InvalidData {
                            what,
                            msg: format!("pattern {p}: {msg}"),
                        },
                        e => e,
                    }
                })
            })
            .collect::<cdiphase::Result<Vec<f64>>>()
    });
    array(py, lib(errs)?, &[n])
}

/// The device a `device` name selects, described (what `auto` chose and why).
#[pyfunction]
#[pyo3(signature = (name, threads))]
fn describe_device(py: Python<'_>, name: String, threads: Option<usize>) -> PyRes<String> {
    let d = device(&name)?;
    py.detach(|| lib(backend::select(d, threads).map(|b| b.describe())))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("BUNDLED_MODEL", nn::bundled::NAME)?;
    m.add("RECIPE_SCHEDULE", phasing::RECIPE_SCHEDULE)?;
    m.add("RECIPE_SHRINKWRAP", phasing::RECIPE_SHRINKWRAP)?;
    m.add_class::<PyModel>()?;
    m.add_function(wrap_pyfunction!(phase, m)?)?;
    m.add_function(wrap_pyfunction!(write_reconstruction, m)?)?;
    m.add_function(wrap_pyfunction!(write_prediction, m)?)?;
    m.add_function(wrap_pyfunction!(convert, m)?)?;
    m.add_function(wrap_pyfunction!(support, m)?)?;
    m.add_function(wrap_pyfunction!(simulate, m)?)?;
    m.add_function(wrap_pyfunction!(read_cxi, m)?)?;
    m.add_function(wrap_pyfunction!(write_cxi, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate_files, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate_arrays, m)?)?;
    m.add_function(wrap_pyfunction!(align_images, m)?)?;
    m.add_function(wrap_pyfunction!(prtf, m)?)?;
    m.add_function(wrap_pyfunction!(fourier_error, m)?)?;
    m.add_function(wrap_pyfunction!(describe_device, m)?)?;
    Ok(())
}

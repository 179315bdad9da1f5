//! Run a model over a stack of diffraction patterns on any backend: preprocessing (masked
//! pixels set to 0, then the model's `max` or `log1p-max` normalisation per pattern),
//! batched forwards through [`NetworkOps`](crate::backend::NetworkOps), and the support
//! `output > threshold * max(output)` per pattern.

use std::path::Path;

use crate::array::Stack;
use crate::backend::{Backend, NetOptions};
use crate::cancel::Cancel;
use crate::nn::model::Model;
use crate::{Error, Result};

/// Network output (N, H, W) and support (N, H, W) of a pattern stack.
pub struct Prediction {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub output: Vec<f32>,
    pub support: Vec<u8>,
}

impl Prediction {
    /// Write the prediction as `predict` does (atomic: temp file then rename):
    /// `entry_1/image_1/data` (float32 network output), `entry_1/image_1/support` (uint8),
    /// and the model and `description` (see [`description`]) under `process_1`.
    pub fn write_cxi(&self, dest: &Path, model_label: &str, description: &str) -> Result<()> {
        let mut wr = crate::io::CxiWriter::new();
        let shape = [self.n, self.h, self.w];
        wr.f32("entry_1/image_1/data", &shape, &self.output)?;
        wr.u8("entry_1/image_1/support", &shape, &self.support)?;
        wr.string("entry_1/image_1/process_1/model", model_label)?;
        wr.string("entry_1/image_1/process_1/description", description)?;
        wr.finish(dest)
    }
}

/// The description stored with a prediction: the network, its preprocessing, the support
/// rule and the kernels (`engine`: the CPU mode's name, or what ran the GPU kernels).
pub fn description(spec: &super::spec::ModelSpec, threshold: f32, engine: &str) -> String {
    format!(
        "cdiphase predict: network '{}' ({:?} preprocessing, masked pixels set to 0), \
         support = output > {} x per-pattern max, mode {}",
        spec.name, spec.preprocess, threshold, engine
    )
}

/// What runs a network on `backend` with CPU `mode`, as [`description`] names it.
pub fn engine(backend: &dyn Backend, mode: crate::backend::Mode) -> &'static str {
    match backend.name() {
        "emu" => "gpu kernels under the emulator",
        "cuda" => "gpu kernels on CUDA",
        _ => mode.name(),
    }
}

/// Support of one output image: `v > threshold * max(v)` (nothing when max <= 0).
pub fn support_of(out: &[f32], threshold: f32, dst: &mut [u8]) {
    let mx = out.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let t = threshold * mx;
    for (d, &v) in dst.iter_mut().zip(out) {
        *d = u8::from(mx > 0.0 && v > t);
    }
}

/// The measured pixels (mask zero, or no mask) of every pattern are finite: masked pixels
/// are never read (they may hold anything), a NaN or infinity elsewhere is an error naming
/// the pattern and the pixel. A stack of zero patterns is an error too.
pub fn check_measured(patterns: &Stack<f32>, mask: Option<&Stack<u8>>) -> Result<()> {
    let (n, h, w) = (patterns.n, patterns.h, patterns.w);
    if n == 0 || h == 0 || w == 0 {
        return Err(Error::Shape {
            what: "patterns".into(),
            expected: "(N, H, W) with N, H, W >= 1".into(),
            found: vec![n, h, w],
        });
    }
    if let Some(m) = mask {
        if (m.h, m.w) != (h, w) || (m.n != 1 && m.n != n) {
            return Err(Error::Shape {
                what: "mask".into(),
                expected: format!("({h}, {w}) or ({n}, {h}, {w}) like the patterns"),
                found: vec![m.n, m.h, m.w],
            });
        }
    }
    let px = h * w;
    for p in 0..n {
        let img = &patterns.data[p * px..(p + 1) * px];
        let m = mask.map(|m| {
            let j = if m.n == 1 { 0 } else { p };
            &m.data[j * px..(j + 1) * px]
        });
        let bad = img
            .iter()
            .enumerate()
            .find(|&(i, v)| !v.is_finite() && m.is_none_or(|m| m[i] == 0));
        if let Some((i, v)) = bad {
            return Err(Error::invalid(
                format!("pattern {p}"),
                format!(
                    "pixel (y={}, x={}) is {v} and not masked: mask it (nonzero in the mask) or fix the data",
                    i / w,
                    i % w
                ),
            ));
        }
    }
    Ok(())
}

/// Predict every pattern of `patterns` (`mask`: (1 or N, H, W), nonzero = bad pixel) with
/// `model` loaded on `backend`, `batch` patterns per forward. `progress` is called with
/// the number of patterns done after each batch.
#[allow(clippy::too_many_arguments)]
pub fn predict(
    backend: &dyn Backend,
    model: &Model,
    patterns: &Stack<f32>,
    mask: Option<&Stack<u8>>,
    batch: usize,
    threshold: f32,
    opts: NetOptions,
    progress: &dyn Fn(usize),
) -> Result<Prediction> {
    predict_cancellable(
        backend,
        model,
        patterns,
        mask,
        batch,
        threshold,
        opts,
        progress,
        &Cancel::default(),
    )
}

/// [`predict`] that stops between batches once `cancel` is set, with
/// [`Error::Cancelled`].
#[allow(clippy::too_many_arguments)]
pub fn predict_cancellable(
    backend: &dyn Backend,
    model: &Model,
    patterns: &Stack<f32>,
    mask: Option<&Stack<u8>>,
    batch: usize,
    threshold: f32,
    opts: NetOptions,
    progress: &dyn Fn(usize),
    cancel: &Cancel,
) -> Result<Prediction> {
    if batch == 0 {
        return Err(Error::Config("--batch must be at least 1".into()));
    }
    let batch = batch.min(patterns.n.max(1));
    let spec = &model.spec;
    let shapes = spec.shapes()?;
    let out = spec
        .index_of(&spec.output)
        .ok_or_else(|| Error::Config(format!("model '{}': no output layer", spec.name)))?;
    check_shapes(spec, &shapes[out], patterns)?;
    check_measured(patterns, mask)?;
    spec.check_memory(batch)?;
    let mut net = backend.load_network(model, batch, opts)?;
    let output_shape = net.output_shape().to_vec();
    predict_with(
        &model.spec,
        &output_shape,
        patterns,
        mask,
        batch,
        threshold,
        &mut |x, b| {
            cancel.check()?;
            net.forward(x, b)
        },
        progress,
    )
}

/// One engine's forward of `b` preprocessed patterns: `(input, b) -> outputs`.
pub type RunBatch<'a> = dyn FnMut(&[f32], usize) -> Result<Vec<f32>> + 'a;

/// [`predict`] with any forward: `run(input, b)` maps `b` preprocessed patterns to the
/// network outputs (a [`crate::backend::Forward`], or anything else). Preprocessing,
/// batching and the supports are shared.
#[allow(clippy::too_many_arguments)]
pub fn predict_with(
    spec: &super::spec::ModelSpec,
    output_shape: &[usize],
    patterns: &Stack<f32>,
    mask: Option<&Stack<u8>>,
    batch: usize,
    threshold: f32,
    run: &mut RunBatch<'_>,
    progress: &dyn Fn(usize),
) -> Result<Prediction> {
    check_shapes(spec, output_shape, patterns)?;
    check_measured(patterns, mask)?;
    let n = patterns.n;
    let (oh, ow) = (output_shape[0], output_shape[1]);
    let batch = batch.clamp(1, n.max(1));
    let px = patterns.h * patterns.w;
    let mut input = vec![0.0f32; batch * px];
    let mut output = vec![f32::NAN; n * oh * ow];
    let mut support = vec![0u8; n * oh * ow];
    let mut done = 0;
    while done < n {
        let b = batch.min(n - done);
        for i in 0..b {
            let src = &patterns.data[(done + i) * px..(done + i + 1) * px];
            let dst = &mut input[i * px..(i + 1) * px];
            dst.copy_from_slice(src);
            let m = mask.map(|m| {
                let j = if m.n == 1 { 0 } else { done + i };
                &m.data[j * px..(j + 1) * px]
            });
            spec.preprocess.apply(dst, m);
        }
        let out = run(&input[..b * px], b)?;
        let opx = oh * ow;
        if out.len() != b * opx {
            return Err(Error::Shape {
                what: format!("model '{}' output of a batch of {b}", spec.name),
                expected: format!("{} values", b * opx),
                found: vec![out.len()],
            });
        }
        output[done * opx..(done + b) * opx].copy_from_slice(&out);
        for i in done..done + b {
            support_of(
                &output[i * opx..(i + 1) * opx],
                threshold,
                &mut support[i * opx..(i + 1) * opx],
            );
        }
        done += b;
        progress(done);
    }
    Ok(Prediction {
        n,
        h: oh,
        w: ow,
        output,
        support,
    })
}

/// The patterns fit the model input and the model gives one image per pattern.
fn check_shapes(
    spec: &super::spec::ModelSpec,
    output_shape: &[usize],
    patterns: &Stack<f32>,
) -> Result<()> {
    let (n, h, w) = (patterns.n, patterns.h, patterns.w);
    let [mh, mw, mc] = spec.input;
    if (h, w) != (mh, mw) || mc != 1 {
        return Err(Error::Shape {
            what: "patterns".into(),
            expected: format!("(N, {mh}, {mw}) to match the model input ({mh}, {mw}, {mc})"),
            found: vec![n, h, w],
        });
    }
    let os = output_shape;
    if os.len() != 3 || os[2] != 1 {
        return Err(Error::Shape {
            what: format!("model '{}' output", spec.name),
            expected: "(H, W, 1) for one image per pattern".into(),
            found: os.to_vec(),
        });
    }
    Ok(())
}

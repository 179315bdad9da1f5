//! `cdiphase support`: supports from patterns (autocorrelation, triple intersection), from
//! a network output (threshold), or the baselines thresholded the same way (the training
//! set's mean image, the oracle).

use super::{check_paths, resume_hint, set_threads, BlockArgs};
use anyhow::{bail, Context, Result};
use cdiphase::array::Stack;
use cdiphase::eval;
use cdiphase::io;
use cdiphase::support::{self, Method};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct SupportArgs {
    /// Input: patterns (CXI/HDF5 entry_1/data_1/data, or .npy) for autocorrelation and
    /// triple-intersection; a `cdiphase predict` output (entry_1/image_1/data) for nn.
    pub input: PathBuf,
    /// Output CXI file with entry_1/image_1/support (N,H,W) uint8, centred (written atomically).
    #[arg(short, long)]
    pub output: PathBuf,
    /// autocorrelation | triple-intersection | nn | mean-image (the training set's mean
    /// target, needs --from) | oracle (the input's true density blurred by --sigma px,
    /// twin-averaged: the ceiling of a network) | circle (a disc centred at (H/2, W/2) whose
    /// diameter is the maximum extent of the input's ideal support, plus --margin: the
    /// paper's circular starting support; needs a `cdiphase simulate` output).
    #[arg(long, default_value = "autocorrelation")]
    pub method: String,
    /// mean-image: the training set, a `cdiphase simulate` output (entry_1/sample_1/density,
    /// read in blocks: any size).
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// oracle: the Gaussian blur of the true density, in pixels (the network's resolution).
    #[arg(long)]
    pub sigma: Option<f64>,
    /// oracle: average | none: average the blurred density with its centrosymmetric twin
    /// (what a network trained with plain MSE can at best output) or not.
    #[arg(long, default_value = "average")]
    pub twin: String,
    /// circle: pixels added to the radius (extent / 2), default 1.
    #[arg(long)]
    pub margin: Option<f64>,
    /// Fraction of the per-pattern maximum (default: 0.04 autocorrelation, 0.001 for the
    /// autocorrelation of the triple intersection, 0.1 nn).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Dataset of the input (default entry_1/data_1/data, or entry_1/image_1/data for nn).
    #[arg(long)]
    pub entry: Option<String>,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Block-wise reading and writing (every method; mean-image also reads its training
    /// set --block images at a time).
    #[command(flatten)]
    pub blocks: BlockArgs,
}

pub fn run(a: SupportArgs) -> Result<()> {
    let mut inputs = vec![("input", a.input.as_path())];
    if let Some(f) = &a.from {
        inputs.push(("--from", f.as_path()));
    }
    check_paths(&inputs, &[("--output", &a.output)], &[])?;
    // in an MPI job: the node's cores shared by its ranks
    set_threads(a.threads.or(cdiphase::run::dist::default_threads()))?;
    let method = Method::parse(&a.method)?;
    let threshold = a.threshold.unwrap_or(method.default_threshold());
    if method == Method::Circle {
        if a.threshold.is_some() {
            bail!("--threshold is not used by --method circle (a disc of the ideal extent)");
        }
    } else {
        support::check_threshold(threshold)?;
    }
    if a.margin.is_some() && method != Method::Circle {
        bail!("--margin is for --method circle");
    }
    if a.from.is_some() && method != Method::MeanImage {
        bail!("--from is for --method mean-image");
    }
    if a.sigma.is_some() && method != Method::Oracle {
        bail!("--sigma is for --method oracle");
    }
    if matches!(
        method,
        Method::Autocorrelation | Method::TripleIntersection | Method::Nn
    ) {
        return run_blocks(&a, method, threshold);
    }
    run_baseline(&a, method, threshold)
}

/// The baselines (mean image, oracle, circle), block by block
/// ([`cdiphase::run::support::baseline_blocks`]).
fn run_baseline(a: &SupportArgs, method: Method, threshold: f32) -> Result<()> {
    use cdiphase::run::support::Baseline;
    let mut config = serde_json::json!({
        "program": "cdiphase support",
        "version": env!("CARGO_PKG_VERSION"),
        "input": a.input.display().to_string(),
        "method": method.name(),
    });
    if method != Method::Circle {
        config["threshold"] = serde_json::json!(threshold);
    }
    let mut inputs = vec![a.input.as_path()];
    // what each method reads; the mean image is made on rank 0 and sent to every rank
    let mean: Option<Stack<f32>>;
    let density: Option<io::blocks::PatternBlocks>;
    let ideal: Option<io::blocks::ImageBlocks<u8>>;
    let baseline = match method {
        Method::MeanImage => {
            let from = a.from.as_ref().context(
                "--method mean-image needs --from TRAIN.cxi (a `cdiphase simulate` output)",
            )?;
            let (n, h, w) = eval::pattern_shape(&a.input)
                .with_context(|| format!("reading {}", a.input.display()))?;
            let bytes = cdiphase::run::dist::share_from_master(|| {
                let (m, used) = support::baselines::mean_image(from, a.blocks.block)?;
                let mut v = Vec::with_capacity(24 + 4 * m.data.len());
                for x in [m.h, m.w, used] {
                    v.extend_from_slice(&(x as u64).to_le_bytes());
                }
                v.extend_from_slice(&cdiphase::run::dist::f32_bytes(&m.data));
                Ok(v)
            })
            .with_context(|| format!("averaging the densities of {}", from.display()))?;
            let word = |i: usize| -> Result<usize> {
                let b = bytes
                    .get(8 * i..8 * i + 8)
                    .context("a truncated mean image")?;
                Ok(u64::from_le_bytes(b.try_into()?) as usize)
            };
            let (mh, mw, used) = (word(0)?, word(1)?, word(2)?);
            let data: Vec<f32> = bytes[24..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if (h, w) != (mh, mw) {
                bail!(
                    "{}: {}x{} patterns, but the mean image of {} is {}x{}",
                    a.input.display(),
                    h,
                    w,
                    from.display(),
                    mh,
                    mw
                );
            }
            config["from"] = serde_json::json!(from.display().to_string());
            config["images_averaged"] = serde_json::json!(used);
            inputs.push(from.as_path());
            mean = Some(Stack::from_vec(1, mh, mw, data)?);
            Baseline::MeanImage {
                n,
                mean: mean.as_ref().expect("set above"),
            }
        }
        Method::Oracle => {
            let sigma = a
                .sigma
                .context("--method oracle needs --sigma PX (the blur, in pixels)")?;
            let twin = match a.twin.to_ascii_lowercase().as_str() {
                "average" => true,
                "none" => false,
                other => bail!("--twin '{other}': expected average or none"),
            };
            support::baselines::check_sigma(sigma)?;
            density = Some(
                io::blocks::PatternBlocks::open_unmasked(&a.input, eval::TRUTH_DENSITY)
                    .map_err(truth_hint)
                    .with_context(|| {
                        format!("reading the ground truth of {}", a.input.display())
                    })?,
            );
            config["sigma_px"] = serde_json::json!(sigma);
            config["twin_average"] = serde_json::json!(twin);
            Baseline::Oracle {
                density: density.as_ref().expect("set above"),
                sigma,
                twin,
            }
        }
        Method::Circle => {
            let margin = a.margin.unwrap_or(1.0);
            support::baselines::check_margin(margin)?;
            ideal = Some(
                io::blocks::ImageBlocks::open_support(&a.input, Some(eval::TRUTH_SUPPORT))
                    .map_err(truth_hint)
                    .with_context(|| {
                        format!("reading the ground truth of {}", a.input.display())
                    })?,
            );
            config["margin_px"] = serde_json::json!(margin);
            Baseline::Circle {
                ideal: ideal.as_ref().expect("set above"),
                margin,
            }
        }
        m => bail!("--method {} is not a baseline", m.name()),
    };
    let identity = serde_json::json!({
        "verb": "support",
        "configuration": config,
    });
    let run = a.blocks.run(&a.output, identity, inputs)?;
    let s = cdiphase::run::support::baseline_blocks(&baseline, threshold, &config, &run)
        .with_context(|| {
            format!(
                "making the {} supports of {} ({})",
                method.name(),
                a.input.display(),
                resume_hint(&a.output)
            )
        })?;
    if cdiphase::run::dist::is_worker() {
        return Ok(()); // rank 0 writes and reports
    }
    let n = s.areas.len();
    let (h, w) = match &baseline {
        Baseline::MeanImage { mean, .. } => (mean.h, mean.w),
        Baseline::Oracle { density, .. } => (density.h, density.w),
        Baseline::Circle { ideal, .. } => (ideal.h, ideal.w),
    };
    if a.json {
        let mut summary = serde_json::json!({
            "input": a.input.display().to_string(),
            "output": a.output.display().to_string(),
            "method": method.name(),
            "threshold": (method != Method::Circle).then_some(threshold),
            "patterns": n,
            "height": h,
            "width": w,
            "support_pixels": s.areas,
            "triple_intersection": vec![serde_json::Value::Null; n],
            "blocks": s.stats.blocks,
            "resumed_blocks": s.stats.resumed_blocks,
        });
        if method == Method::Circle {
            summary["radius_px"] = serde_json::json!(s.radii);
        }
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let mut sorted = s.areas.clone();
        sorted.sort_unstable();
        let rule = if method == Method::Circle {
            format!("margin {} px", a.margin.unwrap_or(1.0))
        } else {
            format!("threshold {threshold}")
        };
        eprintln!(
            "{n} {} supports ({rule}), median {} pixels -> {}",
            method.name(),
            sorted[n / 2],
            a.output.display()
        );
    }
    Ok(())
}

/// A missing ground-truth dataset: say what has one.
fn truth_hint(e: cdiphase::Error) -> cdiphase::Error {
    match e {
        cdiphase::Error::MissingEntry { path, entry, .. } => cdiphase::Error::MissingEntry {
            path,
            entry,
            hint: "the ground truth of `cdiphase simulate` is needed".into(),
        },
        e => e,
    }
}

/// The methods that work pattern by pattern, block by block
/// ([`cdiphase::run::support::support_blocks`]).
fn run_blocks(a: &SupportArgs, method: Method, threshold: f32) -> Result<()> {
    let input = if method == Method::Nn {
        let entry = a.entry.clone().unwrap_or_else(|| eval::IN_DATA.to_string());
        io::blocks::PatternBlocks::open_unmasked(&a.input, &entry)
            .with_context(|| format!("reading the network output of {}", a.input.display()))?
    } else {
        io::blocks::PatternBlocks::open(&a.input, a.entry.as_deref())
            .with_context(|| format!("reading patterns from {}", a.input.display()))?
    };
    let config = serde_json::json!({
        "program": "cdiphase support",
        "version": env!("CARGO_PKG_VERSION"),
        "input": a.input.display().to_string(),
        "method": method.name(),
        "threshold": threshold,
    });
    let identity = serde_json::json!({
        "verb": "support",
        "configuration": config,
        "entry": input.entry,
    });
    let run = a.blocks.run(&a.output, identity, vec![a.input.as_path()])?;
    let s = cdiphase::run::support::support_blocks(&input, method, threshold, &config, &run)
        .with_context(|| {
            format!(
                "estimating supports of {} ({})",
                a.input.display(),
                resume_hint(&a.output)
            )
        })?;
    if cdiphase::run::dist::is_worker() {
        return Ok(()); // rank 0 writes and reports
    }
    if a.json {
        let summary = serde_json::json!({
            "input": a.input.display().to_string(),
            "output": a.output.display().to_string(),
            "method": method.name(),
            "threshold": threshold,
            "patterns": input.n,
            "height": input.h,
            "width": input.w,
            "support_pixels": s.areas,
            "triple_intersection": s.details,
            "blocks": s.stats.blocks,
            "resumed_blocks": s.stats.resumed_blocks,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let mut sorted = s.areas.clone();
        sorted.sort_unstable();
        eprintln!(
            "{} {} supports (threshold {threshold}), median {} pixels -> {}",
            input.n,
            method.name(),
            sorted[sorted.len() / 2],
            a.output.display()
        );
    }
    Ok(())
}

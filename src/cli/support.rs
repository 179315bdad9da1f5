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
    /// Block-wise reading and writing (autocorrelation, triple-intersection and nn; the
    /// other methods read their inputs whole).
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
    let ranks = cdiphase::run::dist::world_size();
    if ranks > 1 {
        bail!(
            "--method {} reads its inputs whole and does not split across MPI ranks (this job \
             has {ranks}): run it as one process, or use autocorrelation, triple-intersection \
             or nn",
            method.name()
        );
    }
    if a.blocks.resume {
        bail!(
            "--resume is for the methods that run block by block (autocorrelation, triple-intersection, nn)"
        );
    }
    // the image thresholded, for the methods that make one (written as entry_1/image_1/data)
    let mut image: Option<Stack<f32>> = None;
    let mut extra = serde_json::json!({});
    let (supports, details): (Stack<u8>, Vec<Option<support::TripleIntersection>>) = match method {
        Method::MeanImage => {
            let from = a.from.as_ref().context(
                "--method mean-image needs --from TRAIN.cxi (a `cdiphase simulate` output)",
            )?;
            let (mean, used) = support::baselines::mean_image(from)
                .with_context(|| format!("averaging the densities of {}", from.display()))?;
            let shape = eval::pattern_shape(&a.input)
                .with_context(|| format!("reading {}", a.input.display()))?;
            let (n, h, w) = shape;
            if (h, w) != (mean.h, mean.w) {
                bail!(
                    "{}: {}x{} patterns, but the mean image of {} is {}x{}",
                    a.input.display(),
                    h,
                    w,
                    from.display(),
                    mean.h,
                    mean.w
                );
            }
            let mut st = Stack::filled(n, h, w, 0f32);
            for p in 0..n {
                st.image_mut(p).copy_from_slice(&mean.data);
            }
            extra =
                serde_json::json!({"from": from.display().to_string(), "images_averaged": used});
            let s = support::threshold_supports(&st, threshold);
            image = Some(st);
            (s, vec![None; n])
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
            let truth = eval::read_truth(&a.input)
                .with_context(|| format!("reading the ground truth of {}", a.input.display()))?;
            let st = support::baselines::oracle(&truth.density, sigma, twin)?;
            extra = serde_json::json!({"sigma_px": sigma, "twin_average": twin});
            let s = support::threshold_supports(&st, threshold);
            let n = st.n;
            image = Some(st);
            (s, vec![None; n])
        }
        Method::Circle => {
            let margin = a.margin.unwrap_or(1.0);
            let truth = eval::read_truth(&a.input)
                .with_context(|| format!("reading the ground truth of {}", a.input.display()))?;
            let (s, radii) = support::baselines::circle_of_extent(&truth.support, margin)
                .with_context(|| format!("{}: entry_1/sample_1/support", a.input.display()))?;
            extra = serde_json::json!({"margin_px": margin, "radius_px": radii});
            let n = s.n;
            (s, vec![None; n])
        }
        Method::Nn => {
            let entry = a.entry.clone().unwrap_or_else(|| eval::IN_DATA.to_string());
            let (shape, v) = io::read_f32(&a.input, &entry)
                .with_context(|| format!("reading the network output of {}", a.input.display()))?;
            let (n, h, w) = match *shape.as_slice() {
                [n, h, w] => (n, h, w),
                [h, w] => (1, h, w),
                _ => bail!(
                    "{}: dataset '{entry}' has shape {shape:?}, expected (N,H,W) or (H,W)",
                    a.input.display()
                ),
            };
            if n == 0 || h == 0 || w == 0 {
                bail!(
                    "{}: dataset '{entry}' has shape {shape:?}: no image to threshold",
                    a.input.display()
                );
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                bail!(
                    "{}: dataset '{entry}' value {i} is not finite",
                    a.input.display()
                );
            }
            let st = Stack::from_vec(n, h, w, v)?;
            let s = support::threshold_supports(&st, threshold);
            (s, vec![None; n])
        }
        _ => {
            let p = io::read_patterns(&a.input, a.entry.as_deref())
                .with_context(|| format!("reading patterns from {}", a.input.display()))?;
            support::estimate_from_patterns(&p, method, threshold)
                .with_context(|| format!("estimating supports of {}", a.input.display()))?
        }
    };
    let empty: Vec<usize> = (0..supports.n)
        .filter(|&i| supports.image(i).iter().all(|&v| v == 0))
        .collect();
    if !empty.is_empty() {
        bail!(
            "{}: the {} support of pattern(s) {:?} is empty (threshold {threshold}): nothing written",
            a.input.display(),
            method.name(),
            &empty[..empty.len().min(10)]
        );
    }
    let mut config = serde_json::json!({
        "program": "cdiphase support",
        "version": env!("CARGO_PKG_VERSION"),
        "input": a.input.display().to_string(),
        "method": method.name(),
    });
    if method != Method::Circle {
        config["threshold"] = serde_json::json!(threshold);
    }
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    let mut f = io::CxiWriter::new();
    f.string("cxi_version", "150")?;
    f.u8(
        "entry_1/image_1/support",
        &[supports.n, supports.h, supports.w],
        &supports.data,
    )?;
    if let Some(img) = &image {
        f.f32("entry_1/image_1/data", &[img.n, img.h, img.w], &img.data)?;
    }
    f.string(
        "entry_1/image_1/process_1/configuration",
        &config.to_string(),
    )?;
    f.finish(&a.output)
        .with_context(|| format!("writing {}", a.output.display()))?;
    let areas: Vec<usize> = (0..supports.n)
        .map(|i| supports.image(i).iter().filter(|&&v| v != 0).count())
        .collect();
    if a.json {
        let summary = serde_json::json!({
            "input": a.input.display().to_string(),
            "output": a.output.display().to_string(),
            "method": method.name(),
            "threshold": (method != Method::Circle).then_some(threshold),
            "patterns": supports.n,
            "height": supports.h,
            "width": supports.w,
            "support_pixels": areas,
            "triple_intersection": details,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let mut s = areas.clone();
        s.sort_unstable();
        let rule = if method == Method::Circle {
            format!("margin {} px", a.margin.unwrap_or(1.0))
        } else {
            format!("threshold {threshold}")
        };
        eprintln!(
            "{} {} supports ({rule}), median {} pixels -> {}",
            supports.n,
            method.name(),
            s[s.len() / 2],
            a.output.display()
        );
    }
    Ok(())
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

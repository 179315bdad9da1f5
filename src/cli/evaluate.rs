//! `cdiphase evaluate`: supports, densities, histories and PRTF against the ground truth of
//! a simulation; metrics JSON, figures and index.html.

use super::{check_paths, set_threads};
use anyhow::{Context, Result};
use cdiphase::eval::{self, report};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct EvaluateArgs {
    /// Ground truth: a `cdiphase simulate` output (entry_1/sample_1/{density,support}).
    #[arg(long)]
    pub truth: PathBuf,
    /// Inputs to evaluate: `support`, `phase` (with or without --keep-all) or `predict` outputs.
    #[arg(long, num_args = 1.., required = true)]
    pub input: Vec<PathBuf>,
    /// Report folder (metrics.json, PNG figures, index.html); written whole or not at all.
    #[arg(long)]
    pub report: PathBuf,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the metrics JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: EvaluateArgs) -> Result<()> {
    let mut inputs = vec![("--truth", a.truth.as_path())];
    inputs.extend(a.input.iter().map(|p| ("--input", p.as_path())));
    check_paths(&inputs, &[], &[("--report", &a.report)])?;
    report::check_report_dest(&a.report)?;
    set_threads(a.threads)?;
    let truth = eval::read_truth(&a.truth)
        .with_context(|| format!("reading the ground truth {}", a.truth.display()))?;
    let labels = eval::labels(&a.input);
    let mut inputs = Vec::new();
    for (p, l) in a.input.iter().zip(&labels) {
        inputs.push(
            eval::read_input(p, l, &truth)
                .with_context(|| format!("reading input {}", p.display()))?,
        );
    }
    let evals: Vec<eval::InputEvaluation> = inputs
        .iter()
        .map(|i| eval::evaluate_input(&truth, i, report::GALLERY))
        .collect();
    let json = report::write_report(&a.report, &truth, &evals)
        .with_context(|| format!("writing the report {}", a.report.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        for e in &evals {
            let ag = &e.aggregate;
            let mut parts = vec![format!("{}:", e.label)];
            if let (Some(fp), Some(fn_)) = (ag.false_positives, ag.false_negatives) {
                parts.push(format!(
                    "FP median {:.0}, FN median {:.0}",
                    fp.median, fn_.median
                ));
            }
            if let Some(d) = ag.density_error {
                parts.push(format!("density error median {:.3}", d.median));
            }
            if let Some(d) = ag.merged_error {
                parts.push(format!("merged (phase --merge) {:.3}", d.median));
            }
            if let Some(r) = ag.prtf_resolution {
                parts.push(format!(
                    "PRTF 1/e {}{:.2} px{}",
                    if r.crossed { "" } else { "> " },
                    r.pixels,
                    r.nm.map(|n| format!(" ({n:.2} nm)")).unwrap_or_default()
                ));
            }
            eprintln!("{}", parts.join("  "));
        }
        if let Some(t) = report::support_table(&evals) {
            eprint!("{t}");
        }
        eprintln!("report: {}", a.report.join("index.html").display());
    }
    Ok(())
}

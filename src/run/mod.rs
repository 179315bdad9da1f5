//! Block-wise, resumable runs of the verbs that map patterns to images: `phase`, `predict`
//! and `support`. Each reads its input a block of patterns at a time
//! ([`crate::io::blocks::PatternBlocks`]), computes the block while the next is read and the
//! previous written ([`crate::io::blocks::pipeline`]), and writes a streamed CXI file that a
//! killed run can continue ([`crate::io::journal::BlockOutput`]). The data written are
//! those of the in-memory functions ([`crate::phasing::phase`],
//! [`crate::nn::predict::predict`], [`crate::support::estimate_from_patterns`]) on the
//! whole file, bit for bit, for every block size.

pub mod dist;
pub mod phase;
pub mod predict;
pub mod simulate;
pub mod support;

use std::path::Path;

use crate::io::blocks::BlockPlan;
use crate::io::journal::{fingerprint_file, BlockOutput};
use crate::io::stream::StreamWriter;
use crate::Result;

/// Where and how a block-wise run writes.
#[derive(Clone, Debug)]
pub struct BlockRun<'a> {
    /// The output file (renamed into place at the end).
    pub dest: &'a Path,
    /// Patterns per block.
    pub block: usize,
    /// Continue the interrupted run of the same configuration (see
    /// [`crate::io::journal`]).
    pub resume: bool,
    /// What identifies the run besides the inputs' contents: the verb and every option
    /// that changes the data written. A resume whose identity differs is refused.
    pub identity: serde_json::Value,
    /// Files whose contents the output depends on (input, model, supports, starting
    /// objects): fingerprinted into the identity.
    pub inputs: Vec<&'a Path>,
}

/// What every block-wise run reports.
#[derive(Clone, Debug, Default)]
pub struct BlockStats {
    /// Blocks of the plan, and how many an earlier (interrupted) run had finished.
    pub blocks: usize,
    pub resumed_blocks: usize,
    /// Patterns computed by this run (the resumed ones not counted).
    pub computed_patterns: usize,
    /// Seconds spent computing, not waiting for reads or writes (`phase`: the backend's
    /// runs alone, as [`crate::phasing::Reconstruction::seconds`] counts them).
    pub compute_seconds: f64,
}

impl BlockStats {
    /// The statistics of a finished run over `plan`: `todo` the blocks it computed,
    /// `compute_ns` the nanoseconds they took.
    pub(crate) fn finished(
        plan: &BlockPlan,
        resumed_blocks: usize,
        todo: &[usize],
        compute_ns: std::sync::atomic::AtomicU64,
    ) -> Self {
        BlockStats {
            blocks: plan.count(),
            resumed_blocks,
            computed_patterns: todo.iter().map(|&b| plan.range(b).len()).sum(),
            compute_seconds: compute_ns.into_inner() as f64 * 1e-9,
        }
    }

    /// An MPI worker's: rank 0 counts the blocks; the worker knows its compute time.
    pub(crate) fn worker(plan: &BlockPlan, compute_ns: std::sync::atomic::AtomicU64) -> Self {
        BlockStats {
            blocks: plan.count(),
            compute_seconds: compute_ns.into_inner() as f64 * 1e-9,
            ..BlockStats::default()
        }
    }
}

impl BlockRun<'_> {
    /// Open the output over `n` patterns: the identity with the inputs' fingerprints, the
    /// journal, the layout (`declare`).
    pub(crate) fn begin<T>(
        &self,
        n: usize,
        declare: impl FnOnce(&mut StreamWriter) -> Result<T>,
    ) -> Result<(BlockPlan, BlockOutput, T)> {
        let plan = BlockPlan::new(n, self.block)?;
        let mut identity = self.identity.clone();
        let mut files = serde_json::Map::new();
        for p in &self.inputs {
            files.insert(p.display().to_string(), fingerprint_file(p)?.into());
        }
        if let Some(o) = identity.as_object_mut() {
            o.insert("input_files".into(), serde_json::Value::Object(files));
        } else {
            identity = serde_json::json!({"identity": identity, "input_files": files});
        }
        let (out, ids) = BlockOutput::begin(self.dest, plan, &identity, self.resume, declare)?;
        Ok((plan, out, ids))
    }
}

/// "pattern P" at the start of `s`, renumbered by `first`.
fn renumber(s: &str, first: usize) -> Option<String> {
    let rest = s.strip_prefix("pattern ")?;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let p: usize = rest[..end].parse().ok()?;
    Some(format!("pattern {}{}", first + p, &rest[end..]))
}

/// An error about "pattern P" of a window that starts at pattern `first`, with P counted
/// in the whole file (the in-memory functions number the patterns they are given).
pub(crate) fn shifted(e: crate::Error, first: usize) -> crate::Error {
    match e {
        crate::Error::InvalidData { what, msg } if first > 0 => {
            match (renumber(&what, first), renumber(&msg, first)) {
                (Some(w), _) => crate::Error::InvalidData { what: w, msg },
                (None, Some(m)) => crate::Error::InvalidData { what, msg: m },
                (None, None) => crate::Error::InvalidData {
                    what: format!("{what} (patterns {first}.. of the file, counted from {first})"),
                    msg,
                },
            }
        }
        e => e,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_name_patterns_of_the_whole_file() {
        let e = crate::Error::invalid("in.cxi", "pattern 3 pixel (y=1, x=2) is NaN");
        assert_eq!(
            super::shifted(e, 256).to_string(),
            "in.cxi: pattern 259 pixel (y=1, x=2) is NaN"
        );
        let e = crate::Error::invalid("pattern 0", "pixel is inf");
        assert_eq!(super::shifted(e, 7).to_string(), "pattern 7: pixel is inf");
    }
}

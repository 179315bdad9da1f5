//! Resumable block-wise outputs: a partial output file and a journal beside it.
//!
//! A block-wise run (`phase`, `predict`, `support`) writes its output `DIR/NAME` under the
//! fixed name `DIR/.NAME.cdiphase-partial` and keeps `DIR/.NAME.cdiphase-journal`:
//!
//! ```text
//! cdiphase-journal 1 blocks=B fingerprint=HEX
//! {"verb": ..., the configuration and the inputs' fingerprints, as JSON on one line}
//! 0
//! 1
//! ...
//! ```
//!
//! A block's number is appended (and synced) only after its rows are synced to the partial
//! file, so a run killed at any instant (SIGKILL included) leaves a journal that lists only
//! complete blocks; a torn last line (no newline) is ignored. The same command with
//! `--resume` checks the fingerprint (the configuration and the inputs), skips the blocks
//! listed and writes the others into the same partial file: the layout of the file follows
//! from the declarations alone, so every row keeps its place. At the end the partial file
//! is renamed onto `NAME` and the journal removed. A resume whose configuration or inputs
//! differ is refused, naming what changed. The journal is locked (`flock`) while a run
//! holds it: two runs cannot write one output.
//!
//! Neither file is a registered temporary ([`super::temp`]): SIGINT, SIGTERM and SIGHUP,
//! which remove the temporaries, leave them, so an interrupted run can be resumed; a run
//! without `--resume` starts afresh and replaces them. After an error (not a kill) they
//! are kept when at least one block was finished (a full disk, say: resume once there is
//! room), else removed.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::blocks::BlockPlan;
use super::stream::StreamWriter;
use crate::{Error, Result};

const MAGIC: &str = "cdiphase-journal 1";

/// The partial outputs of the block-wise runs of this process, for the signal handler's
/// message (they are kept for `--resume`).
static LIVE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// The partial outputs this process is writing (kept on a signal, for `--resume`).
pub fn live_partials() -> Vec<PathBuf> {
    LIVE.lock().map(|l| l.clone()).unwrap_or_default()
}

fn forget(p: &Path) {
    if let Ok(mut l) = LIVE.lock() {
        l.retain(|x| x != p);
    }
}

/// The partial output and the journal of destination `dest`.
pub fn paths(dest: &Path) -> Result<(PathBuf, PathBuf)> {
    let name = dest
        .file_name()
        .ok_or_else(|| Error::format(dest, "destination is not a file path"))?
        .to_string_lossy()
        .into_owned();
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((
        dir.join(format!(".{name}.cdiphase-partial")),
        dir.join(format!(".{name}.cdiphase-journal")),
    ))
}

/// 64-bit FNV-1a, continued from `h`.
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// The fingerprint of an input file: its size, its modification time (ns) and a hash of
/// its first and last MiB and of 64 windows of 64 KiB spread over it. A changed flag is
/// caught by the configuration; a replaced, rewritten or edited input by its size, time
/// or sampled content. (A full hash would read a file of many GB once more before every
/// resume; the sample reads at most 6 MiB.)
pub fn fingerprint_file(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let len = meta.len();
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = fnv1a(FNV_START, &len.to_le_bytes());
    let mut windows: Vec<(u64, u64)> = vec![(0, 1 << 20), (len.saturating_sub(1 << 20), 1 << 20)];
    for i in 0..64u64 {
        windows.push((len / 64 * i, 1 << 16));
    }
    let mut buf = Vec::new();
    for (at, n) in windows {
        let n = n.min(len.saturating_sub(at));
        buf.resize(n as usize, 0);
        f.seek(SeekFrom::Start(at))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| Error::io(path, e))?;
        h = fnv1a(h, &at.to_le_bytes());
        h = fnv1a(h, &buf);
    }
    Ok(format!("size {len}, mtime {mtime} ns, sample {h:016x}"))
}

/// The fingerprint of a run's identity (its configuration and its inputs' fingerprints).
fn fingerprint(identity: &serde_json::Value) -> String {
    format!("{:016x}", fnv1a(FNV_START, identity.to_string().as_bytes()))
}

/// What differs between two identities, for the refusal message.
fn differences(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else {
        return vec!["the configuration".into()];
    };
    let mut out = Vec::new();
    differ("", o, n, &mut out);
    out
}

/// The keys of two objects whose values differ, as `path: was A, now B`, nested objects
/// followed down to the values that differ (`configuration.seed: was 0, now 3`).
fn differ(
    prefix: &str,
    o: &serde_json::Map<String, serde_json::Value>,
    n: &serde_json::Map<String, serde_json::Value>,
    out: &mut Vec<String>,
) {
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let (a, b) = (o.get(k), n.get(k));
        if a == b {
            continue;
        }
        let path = format!("{prefix}{k}");
        if let (Some(serde_json::Value::Object(a)), Some(serde_json::Value::Object(b))) = (a, b) {
            differ(&format!("{path}."), a, b, out);
            continue;
        }
        let show = |v: Option<&serde_json::Value>| {
            v.map(|v| v.to_string()).unwrap_or_else(|| "(none)".into())
        };
        out.push(format!("{path}: was {}, now {}", show(a), show(b)));
    }
}

/// The journal of a block-wise run (see the module documentation), locked while open.
pub struct Journal {
    path: PathBuf,
    file: std::fs::File,
    done: Vec<bool>,
}

/// Lock `f` for this process alone, or say who holds it.
fn lock(f: &std::fs::File, path: &Path) -> Result<()> {
    // SAFETY: flock on a file descriptor we own (kept open by `f` for the call); it reads
    // and writes no memory of ours.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        return Err(Error::format(
            path,
            "another cdiphase run is writing this output (its journal is locked); wait for it or stop it",
        ));
    }
    Ok(())
}

impl Journal {
    /// Open the journal of `dest` for a run of `blocks` blocks with `identity`.
    ///
    /// Without `resume`: a fresh journal (an earlier one is replaced). With `resume`: the
    /// existing journal's blocks, when its identity is this run's; a different identity is
    /// refused ([`Error::Config`], naming what changed); no journal or no partial output
    /// starts afresh (returned `false`: nothing was resumed), so that a job script may
    /// always pass `--resume`.
    pub fn open(
        dest: &Path,
        blocks: usize,
        identity: &serde_json::Value,
        resume: bool,
    ) -> Result<(Journal, bool)> {
        let (partial, path) = paths(dest)?;
        let fp = fingerprint(identity);
        let header = format!("{MAGIC} blocks={blocks} fingerprint={fp}\n{identity}\n");
        // a journal without its partial output (a kill between the final rename and the
        // journal's removal, or a partial file deleted by hand): nothing to resume
        if resume && path.exists() && partial.exists() {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            lock(&file, &path)?;
            let mut text = String::new();
            file.read_to_string(&mut text)
                .map_err(|e| Error::io(&path, e))?;
            let corrupt = |m: &str| {
                Error::format(
                    &path,
                    format!("{m}: not a journal this version can resume; rerun without --resume to start afresh"),
                )
            };
            let mut lines = text.split_inclusive('\n');
            let head = lines.next().unwrap_or("");
            let id_line = lines.next().unwrap_or("");
            if !head.starts_with(MAGIC) || !id_line.ends_with('\n') {
                return Err(corrupt("no journal header"));
            }
            let old: serde_json::Value = serde_json::from_str(id_line.trim_end())
                .map_err(|_| corrupt("unreadable configuration line"))?;
            if head.trim_end() != header.lines().next().unwrap_or("") {
                let d = differences(&old, identity);
                let what = if d.is_empty() {
                    format!("the block count or format differs ({})", head.trim_end())
                } else {
                    d.join("; ")
                };
                return Err(Error::Config(format!(
                    "--resume {}: the interrupted run had a different configuration or input ({what}); \
                     rerun with the original flags and input, or without --resume to start afresh",
                    dest.display()
                )));
            }
            let mut done = vec![false; blocks];
            for l in lines {
                if !l.ends_with('\n') {
                    break; // torn by a kill while appending: that block is redone
                }
                let b: usize = l
                    .trim_end()
                    .parse()
                    .ok()
                    .filter(|&b| b < blocks)
                    .ok_or_else(|| corrupt(&format!("bad block line '{}'", l.trim_end())))?;
                done[b] = true;
            }
            // drop a torn last line so that the next record starts on a line of its own
            let whole: usize = text
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .map(str::len)
                .sum();
            file.set_len(whole as u64)
                .map_err(|e| Error::io(&path, e))?;
            return Ok((Journal { path, file, done }, true));
        }
        // a folder that does not exist is the destination's problem: name the destination
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(dest, e))?;
        lock(&file, &path)?;
        file.set_len(0).map_err(|e| Error::io(&path, e))?;
        file.write_all(header.as_bytes())
            .and_then(|_| file.sync_data())
            .map_err(|e| Error::io(&path, e))?;
        Ok((
            Journal {
                path,
                file,
                done: vec![false; blocks],
            },
            false,
        ))
    }

    /// Which blocks are finished.
    pub fn done(&self) -> &[bool] {
        &self.done
    }

    /// Record block `b` as finished (its rows must be synced to the partial file first).
    pub fn record(&mut self, b: usize) -> Result<()> {
        self.file
            .seek(SeekFrom::End(0))
            .and_then(|_| self.file.write_all(format!("{b}\n").as_bytes()))
            .and_then(|_| self.file.sync_data())
            .map_err(|e| Error::io(&self.path, e))?;
        self.done[b] = true;
        Ok(())
    }
}

/// A block-wise output: a resumable [`StreamWriter`] and its [`Journal`].
pub struct BlockOutput {
    writer: Option<StreamWriter>,
    journal: Journal,
    plan: BlockPlan,
    partial: PathBuf,
    finished: bool,
    /// Blocks found finished by a resumed run.
    pub resumed_blocks: usize,
}

impl BlockOutput {
    /// Start (or, with `resume`, continue) the output `dest` of a run over `plan` whose
    /// configuration and inputs are `identity` (see [`Journal::open`]). `declare` lays out
    /// the file: every streamed dataset must have the patterns along its first axis; what
    /// it returns (the stream ids) is handed back.
    pub fn begin<T>(
        dest: &Path,
        plan: BlockPlan,
        identity: &serde_json::Value,
        resume: bool,
        declare: impl FnOnce(&mut StreamWriter) -> Result<T>,
    ) -> Result<(BlockOutput, T)> {
        let (partial, _) = paths(dest)?;
        // the temporaries of `dest` that dead runs of the in-memory writers left
        super::temp::clean_stale(dest);
        let mut identity = identity.clone();
        if let Some(o) = identity.as_object_mut() {
            o.insert("block".into(), serde_json::json!(plan.block));
            o.insert("patterns".into(), serde_json::json!(plan.n));
            o.insert(
                "version".into(),
                serde_json::json!(env!("CARGO_PKG_VERSION")),
            );
        }
        let (journal, resumed) = Journal::open(dest, plan.count(), &identity, resume)?;
        let mut writer = StreamWriter::create_resumable(dest, &partial, resumed)?;
        if let Ok(mut l) = LIVE.lock() {
            l.push(partial.clone());
        }
        let ids = declare(&mut writer)?;
        let mut resumed_blocks = 0;
        for (b, &d) in journal.done().iter().enumerate() {
            if d {
                let r = plan.range(b);
                writer.mark_rows_written(r.start, r.len());
                resumed_blocks += 1;
            }
        }
        Ok((
            BlockOutput {
                writer: Some(writer),
                journal,
                plan,
                partial,
                finished: false,
                resumed_blocks,
            },
            ids,
        ))
    }

    /// The output file's writer.
    pub fn writer(&mut self) -> &mut StreamWriter {
        self.writer.as_mut().expect("open until finish")
    }

    /// Blocks still to run, in order.
    pub fn todo(&self) -> Vec<usize> {
        (0..self.plan.count())
            .filter(|&b| !self.journal.done()[b])
            .collect()
    }

    /// Whether block `b` was finished by an earlier run.
    pub fn is_done(&self, b: usize) -> bool {
        self.journal.done()[b]
    }

    /// Block `b`'s rows are written: sync them, then record the block.
    pub fn commit(&mut self, b: usize) -> Result<()> {
        self.writer().sync_data()?;
        self.journal.record(b)
    }

    /// Write the file's metadata, rename it onto its destination and remove the journal.
    pub fn finish(mut self) -> Result<()> {
        self.finished = true;
        let journal = self.journal.path.clone();
        let writer = self.writer.take().expect("open until finish");
        writer.finish()?;
        forget(&self.partial);
        let _ = std::fs::remove_file(&journal);
        Ok(())
    }
}

impl Drop for BlockOutput {
    fn drop(&mut self) {
        forget(&self.partial);
        if !self.finished && !self.journal.done().iter().any(|&d| d) {
            // nothing worth resuming: leave no trace
            let _ = std::fs::remove_file(&self.partial);
            let _ = std::fs::remove_file(&self.journal.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_resumes_complete_lines_and_refuses_another_identity() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out.cxi");
        let id = serde_json::json!({"beta": 0.9, "input": "a"});
        {
            let (mut j, resumed) = Journal::open(&dest, 5, &id, false).unwrap();
            assert!(!resumed);
            j.record(0).unwrap();
            j.record(3).unwrap();
        }
        let (_, jp) = paths(&dest).unwrap();
        // a torn line from a kill while appending
        std::fs::OpenOptions::new()
            .append(true)
            .open(&jp)
            .unwrap()
            .write_all(b"4")
            .unwrap();
        std::fs::write(paths(&dest).unwrap().0, b"").unwrap();
        {
            let (mut j, resumed) = Journal::open(&dest, 5, &id, true).unwrap();
            assert!(resumed);
            assert_eq!(j.done(), &[true, false, false, true, false]);
            // a second run on the same output is refused while this one holds it
            let e = Journal::open(&dest, 5, &id, true).err().unwrap();
            assert!(e.to_string().contains("another cdiphase run"), "{e}");
            j.record(2).unwrap();
        }
        let (j, _) = Journal::open(&dest, 5, &id, true).unwrap();
        assert_eq!(j.done(), &[true, false, true, true, false]);
        drop(j);
        let other = serde_json::json!({"beta": 0.8, "input": "a"});
        let e = Journal::open(&dest, 5, &other, true)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("beta: was 0.9, now 0.8"), "{e}");
        // nested: the path to the value that differs, not the whole object
        let nested = |beta: f64| serde_json::json!({"configuration": {"beta": beta, "seed": 1}});
        let d = differences(&nested(0.9), &nested(0.8));
        assert_eq!(d, vec!["configuration.beta: was 0.9, now 0.8".to_string()]);
        // the partial output gone: nothing to resume, a fresh start
        std::fs::remove_file(paths(&dest).unwrap().0).unwrap();
        let (j, resumed) = Journal::open(&dest, 5, &id, true).unwrap();
        assert!(!resumed && j.done().iter().all(|d| !d));
    }

    #[test]
    fn file_fingerprint_sees_an_edit() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.bin");
        let mut v = vec![0u8; 3 << 20];
        std::fs::write(&p, &v).unwrap();
        let a = fingerprint_file(&p).unwrap();
        v[(3 << 20) / 64 * 10 + 5] = 1;
        std::fs::write(&p, &v).unwrap();
        let b = fingerprint_file(&p).unwrap();
        // the content sample differs whatever the file system's time resolution
        assert_ne!(a.rsplit(' ').next(), b.rsplit(' ').next());
    }
}

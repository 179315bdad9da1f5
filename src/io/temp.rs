//! Temporary files and folders of the atomic writers.
//!
//! * Names are recognisable: `.{dest name}.cdiphase-tmp-{pid}-{n}` next to the destination,
//!   so that a later run can find a stale one (left by SIGKILL or an allocation abort) and
//!   remove it when its process is gone ([`clean_stale`]).
//! * Every live temporary path is registered in a process-wide list; [`remove_all`] (called
//!   by the command line's signal handler on SIGINT/SIGTERM/SIGHUP) removes them and keeps
//!   the list locked, so that no rename can publish a half-written file afterwards.
//! * [`commit`] renames a temporary path onto its destination under the same lock.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::{Error, Result};

/// The part of a temporary name that marks it as ours.
pub const MARK: &str = ".cdiphase-tmp-";

static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<PathBuf>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

fn parent_of(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A fresh, registered temporary name in `dest`'s directory (hidden, named after `dest`,
/// unique per process and call). Stale temporaries of `dest` from dead processes are
/// removed first.
pub fn temp_path(dest: &Path) -> Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let fname = dest
        .file_name()
        .ok_or_else(|| Error::format(dest, "destination is not a file path"))?;
    clean_stale(dest);
    let p = parent_of(dest).join(format!(
        ".{}{MARK}{}-{}",
        fname.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    live().push(p.clone());
    Ok(p)
}

/// Forget a temporary path (after it was renamed or removed).
pub fn unregister(tmp: &Path) {
    live().retain(|p| p != tmp);
}

/// Remove a temporary file or folder and forget it.
pub fn discard(tmp: &Path) {
    let mut l = live();
    remove_path(tmp);
    l.retain(|p| p != tmp);
}

/// Rename `tmp` onto `dest` and forget `tmp`, atomically with respect to [`remove_all`].
pub fn commit(tmp: &Path, dest: &Path) -> std::io::Result<()> {
    let mut l = live();
    std::fs::rename(tmp, dest)?;
    l.retain(|p| p != tmp);
    Ok(())
}

/// Run `f` while holding the registry lock (no [`remove_all`] can interleave): for a
/// publication that takes several renames (a report folder swap).
pub fn with_lock<T>(f: impl FnOnce(&mut Vec<PathBuf>) -> T) -> T {
    let mut l = live();
    f(&mut l)
}

fn remove_path(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Remove every registered temporary and return how many there were. The registry stays
/// locked until the process exits (the caller exits right after), so that no writer can
/// rename a temporary into place or create a new one.
pub fn remove_all_and_hold() -> usize {
    let mut l = live();
    let n = l.len();
    for p in l.iter() {
        remove_path(p);
    }
    l.clear();
    std::mem::forget(l);
    n
}

/// Whether process `pid` is alive (on Linux: `/proc/PID` exists; elsewhere `kill(pid, 0)`).
fn alive(pid: u32) -> bool {
    if Path::new("/proc/self").exists() {
        return Path::new(&format!("/proc/{pid}")).exists();
    }
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists; it sends nothing
    // and touches no memory of ours.
    let r = unsafe { libc::kill(p, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The pid of a temporary name of `dest_name` (`.{dest_name}.cdiphase-tmp-{pid}-{n}`).
fn stale_pid(entry: &str, dest_name: &str) -> Option<u32> {
    let rest = entry
        .strip_prefix('.')?
        .strip_prefix(dest_name)?
        .strip_prefix(MARK)?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Remove the temporaries of `dest` left by processes that no longer run (SIGKILL, an
/// abort); returns the paths removed. Errors are ignored: this is housekeeping.
pub fn clean_stale(dest: &Path) -> Vec<PathBuf> {
    let Some(name) = dest.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(parent_of(dest)) else {
        return removed;
    };
    for e in rd.flatten() {
        let fname = e.file_name().to_string_lossy().into_owned();
        match stale_pid(&fname, &name) {
            Some(pid) if pid != me && !alive(pid) => {
                let p = e.path();
                remove_path(&p);
                removed.push(p);
            }
            _ => {}
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_recognised_and_stale_ones_removed() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("out.cxi");
        let t = temp_path(&dest).unwrap();
        assert_eq!(
            stale_pid(&t.file_name().unwrap().to_string_lossy(), "out.cxi"),
            Some(std::process::id())
        );
        // a temporary of a process that cannot exist (pid beyond pid_max) and an unrelated file
        let stale = d.path().join(format!(".out.cxi{MARK}4294967295-0"));
        let other = d.path().join(".out.cxi.keep");
        std::fs::write(&stale, b"x").unwrap();
        std::fs::write(&other, b"x").unwrap();
        std::fs::write(&t, b"x").unwrap();
        let removed = clean_stale(&dest);
        assert_eq!(removed, vec![stale.clone()]);
        assert!(
            !stale.exists() && other.exists() && t.exists(),
            "ours (alive) and others kept"
        );
        discard(&t);
        assert!(!t.exists());
        assert_eq!(stale_pid(".out.cxi.cdiphase-tmp-12-x", "out.cxi"), None);
        assert_eq!(stale_pid(".other.cxi.cdiphase-tmp-12-0", "out.cxi"), None);
    }
}

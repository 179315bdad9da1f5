//! Resource limits: what an input or an option asks for (memory, disk, elements) checked
//! against what the machine has, before anything is allocated or written.
//!
//! The estimates are lower bounds of what the work needs; a request above the memory
//! available (`MemAvailable` of `/proc/meminfo`) or the free space of the destination's file
//! system is refused with the estimate in the message. `CDIPHASE_MEMORY_LIMIT` (bytes, or
//! with a K/M/G/T suffix) lowers the memory limit (tests, shared machines).

use std::path::Path;

use crate::{Error, Result};

/// Bytes as a short human figure (binary units).
pub fn human(bytes: u128) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// The product of `dims` times `elem_bytes`, exact (u128 cannot overflow for the shapes
/// and sizes of this crate: at most 32 dimensions of u64).
pub fn bytes_of(dims: &[u64], elem_bytes: u64) -> u128 {
    dims.iter()
        .fold(elem_bytes as u128, |a, &d| a.saturating_mul(d as u128))
}

fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()?.to_ascii_uppercase() {
        'K' => (&s[..s.len() - 1], 1u64 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        'T' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// The memory this process may use: `MemAvailable` (Linux), lowered by
/// `CDIPHASE_MEMORY_LIMIT`; `None` when neither is known.
pub fn available_memory() -> Option<u64> {
    let sys = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb.saturating_mul(1024))
    });
    let env = std::env::var("CDIPHASE_MEMORY_LIMIT")
        .ok()
        .and_then(|v| parse_bytes(&v));
    match (sys, env) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Free bytes (for an unprivileged user) on the file system holding `dir`.
#[cfg(unix)]
pub fn free_disk(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data, valid when zeroed.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid, writable statvfs that
    // outlives the call.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (r == 0).then(|| (st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(not(unix))]
pub fn free_disk(_dir: &Path) -> Option<u64> {
    None
}

/// Refuse `bytes` of memory for `what` when more than is available.
pub fn check_memory(what: &str, bytes: u128) -> Result<()> {
    if let Some(avail) = available_memory() {
        if bytes > avail as u128 {
            return Err(Error::Limit(format!(
                "{what} needs at least {} of memory, but {} is available: refused before allocating",
                human(bytes),
                human(avail as u128)
            )));
        }
    }
    Ok(())
}

/// Refuse to write `bytes` for `what` next to `dest` when its file system has less free.
pub fn check_disk(what: &str, dest: &Path, bytes: u128) -> Result<()> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Some(free) = free_disk(dir) {
        if bytes > free as u128 {
            return Err(Error::Limit(format!(
                "{what} needs about {} on disk, but {} is free in {}: refused before writing",
                human(bytes),
                human(free as u128),
                dir.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_limits() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 30), "3.0 GiB");
        assert_eq!(bytes_of(&[2, 3], 4), 24);
        assert_eq!(
            bytes_of(&[1, 1_000_000_000, 1_000_000_000], 4),
            4_000_000_000_000_000_000
        );
        assert_eq!(bytes_of(&[u64::MAX, u64::MAX, u64::MAX], 8), u128::MAX);
        assert_eq!(parse_bytes("2G"), Some(2 << 30));
        assert_eq!(parse_bytes("x"), None);
        assert!(check_memory("a test", u128::MAX)
            .unwrap_err()
            .to_string()
            .contains("a test needs at least"));
        assert!(check_memory("a test", 1).is_ok());
        let d = tempfile::tempdir().unwrap();
        assert!(check_disk("a test", &d.path().join("x"), 1).is_ok());
        assert!(check_disk("a test", &d.path().join("x"), u128::MAX).is_err());
    }
}

//! Files the CLI tests share: a path as `&str`, a small masked pattern file made by
//! `cdiphase simulate`, a bit-for-bit comparison of two output files' datasets, and the
//! check that no partial output or journal was left behind.

use super::cli::ok;
use std::path::{Path, PathBuf};

/// A path as the `&str` the CLI harness takes.
pub fn p(x: &Path) -> &str {
    x.to_str().unwrap()
}

/// `count` synthetic particles of `size` x `size` with a beamstop mask in `dir/name`.
pub fn simulate(dir: &Path, name: &str, count: usize, size: usize) -> PathBuf {
    let out = dir.join(name);
    ok(&[
        "simulate",
        "--synthetic",
        "all",
        "--count",
        &count.to_string(),
        "--size",
        &size.to_string(),
        "--mask",
        "beamstop:2",
        "--photons",
        "1e7",
        "--noise",
        "poisson",
        "-o",
        p(&out),
        "-q",
    ]);
    out
}

/// Every dataset of `a` and `b` holds the same values, bit for bit (strings too unless
/// `skip_strings`: a configuration written by the test differs from the command line's).
pub fn same_data(a: &Path, b: &Path, skip_strings: bool) {
    let la = cdiphase::io::list_datasets(a).unwrap();
    let lb = cdiphase::io::list_datasets(b).unwrap();
    // the in-memory writer stores strings as variable-length, the streaming writer as
    // fixed-length (h5py reads both as text): a string is a string
    let kind = |t: &str| {
        if t == "VariableLength" {
            "string".to_string()
        } else {
            t.to_string()
        }
    };
    let names = |l: &[(String, Vec<usize>, String)]| {
        l.iter()
            .map(|(n, s, t)| (n.clone(), s.clone(), kind(t)))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&la), names(&lb), "{} vs {}", a.display(), b.display());
    let mut numeric = 0;
    for (name, _, dtype) in &lb {
        let what = format!("{name} ({dtype}) of {} vs {}", a.display(), b.display());
        if dtype.contains("complex") {
            let (sa, va) = cdiphase::io::read_complex_nd(a, name).unwrap();
            let (sb, vb) = cdiphase::io::read_complex_nd(b, name).unwrap();
            assert_eq!(sa, sb, "{what}");
            let bits = |v: &[num_complex::Complex32]| {
                v.iter()
                    .map(|c| (c.re.to_bits(), c.im.to_bits()))
                    .collect::<Vec<_>>()
            };
            assert!(bits(&va) == bits(&vb), "{what}: values differ");
            numeric += 1;
        } else if dtype == "string" {
            if !skip_strings {
                assert_eq!(
                    cdiphase::io::read_string(a, name).unwrap(),
                    cdiphase::io::read_string(b, name).unwrap(),
                    "{what}"
                );
            }
        } else if dtype == "int64" {
            // best starts: exact in f64 terms for any plausible start count
            let (sa, va) = cdiphase::io::read_f32(a, name).unwrap();
            let (sb, vb) = cdiphase::io::read_f32(b, name).unwrap();
            assert_eq!((sa, va), (sb, vb), "{what}");
            numeric += 1;
        } else {
            let (sa, va) = cdiphase::io::read_f32(a, name).unwrap();
            let (sb, vb) = cdiphase::io::read_f32(b, name).unwrap();
            assert_eq!(sa, sb, "{what}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&va) == bits(&vb), "{what}: values differ");
            numeric += 1;
        }
    }
    assert!(
        numeric >= 2,
        "no numeric datasets compared in {}",
        a.display()
    );
}

/// No partial output or journal of a block-wise run is left in `dir`.
pub fn no_leftovers(dir: &Path) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".cdiphase-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Waits until the journal at `journal` has at least `lines` lines (its first two are the
/// header, then one per finished block), then kills `child` with SIGKILL and reaps it.
/// Fails if the run ends first (make it longer) or no block finishes within 120 s.
pub fn kill_after_journal_lines(child: &mut std::process::Child, journal: &Path, lines: usize) {
    let t = std::time::Instant::now();
    loop {
        let n = std::fs::read_to_string(journal)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if n >= lines {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed ({n} of {lines} journal lines): make it longer"
        );
        assert!(
            t.elapsed() < std::time::Duration::from_secs(120),
            "no block finished in 120 s ({})",
            journal.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

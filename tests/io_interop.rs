//! Interoperability of the I/O layer with h5py/numpy, and its error behaviour.
//!
//! The h5py tests run `tools/interop/h5py_interop.py` with the interpreter named by
//! `CDIPHASE_PYTHON`, else `<crate>/.venv/bin/python`. They FAIL (never skip) when that
//! interpreter or h5py is missing; set it up with
//! `python3 -m venv .venv && .venv/bin/pip install numpy==2.1.3 h5py==3.12.1`.

use std::path::{Path, PathBuf};
use std::process::Command;

use cdiphase::array::Complex32;
use cdiphase::io::{self, npy, CxiWriter};
use cdiphase::Error;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script() -> PathBuf {
    manifest_dir().join("tools/interop/h5py_interop.py")
}

const SETUP: &str = "run the tests with scripts/test.sh (it creates the pinned venv), set CDIPHASE_PYTHON to a Python with numpy and h5py, or create the venv: \
     `python3 -m venv .venv && .venv/bin/pip install numpy==2.1.3 h5py==3.12.1` (in the crate root)";

/// The Python interpreter, checked to import numpy and h5py; panics with setup help otherwise.
fn python() -> PathBuf {
    let py = std::env::var_os("CDIPHASE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join(".venv/bin/python"));
    let out = Command::new(&py)
        .args(["-c", "import numpy, h5py; print(h5py.__version__)"])
        .output();
    match out {
        Ok(o) if o.status.success() => py,
        Ok(o) => panic!(
            "{} cannot import numpy/h5py: {}\n{SETUP}",
            py.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "cannot run Python interpreter {}: {e}\n{SETUP}",
            py.display()
        ),
    }
}

fn run_script(args: &[&str]) {
    let py = python();
    let out = Command::new(&py)
        .arg(script())
        .args(args)
        .output()
        .expect("run python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "h5py_interop.py {args:?} failed:\n{text}"
    );
    eprintln!("{text}");
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ------------------------------------------------------------------------------------------
// (a) h5py writes, cdiphase reads
// ------------------------------------------------------------------------------------------

#[test]
fn reads_every_h5py_layout_and_dtype_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_script(&["generate", d.to_str().unwrap()]);
    let man: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("manifest.json")).unwrap()).unwrap();
    let cases = man["cases"].as_array().unwrap();
    assert!(cases.len() > 100, "too few cases: {}", cases.len());
    let (mut n_pat, mut n_obj, mut n_sup, mut n_mask) = (0, 0, 0, 0);
    for c in cases {
        let file = d.join(c["file"].as_str().unwrap());
        let entry = c["entry"].as_str();
        let expect = npy::read(&d.join(c["expect"].as_str().unwrap())).unwrap();
        let ctx = format!("{} (entry {entry:?})", file.display());
        let (n, h, w) = match *expect.shape.as_slice() {
            [h, w] => (1, h, w),
            [n, h, w] => (n, h, w),
            _ => panic!("bad expect shape"),
        };
        match c["kind"].as_str().unwrap() {
            "patterns" => {
                n_pat += 1;
                let ps = io::read_patterns(&file, entry).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!(ps.intensities.shape(), [n, h, w], "{ctx}");
                assert_eq!(bits(&ps.intensities.data), bits(&expect.to_f32()), "{ctx}");
                assert_eq!(ps.source, file);
                if let Some(e) = entry {
                    assert_eq!(ps.entry, e.trim_start_matches('/'), "{ctx}");
                }
                match c["mask"].as_str() {
                    Some(m) => {
                        n_mask += 1;
                        let want = npy::read(&d.join(m)).unwrap().to_mask();
                        let got = ps.mask.unwrap_or_else(|| panic!("{ctx}: no mask read"));
                        let mn = c["mask_n"].as_u64().unwrap() as usize;
                        assert_eq!(got.shape(), [mn, h, w], "{ctx}");
                        assert_eq!(got.data, want, "{ctx}");
                    }
                    None => assert!(ps.mask.is_none(), "{ctx}: unexpected mask"),
                }
            }
            "object" => {
                n_obj += 1;
                let o = io::read_object(&file, entry).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!(o.shape(), [n, h, w], "{ctx}");
                let want = expect.to_complex32();
                let eq = o.data.iter().zip(&want).all(|(a, b)| {
                    a.re.to_bits() == b.re.to_bits() && a.im.to_bits() == b.im.to_bits()
                });
                assert!(eq, "{ctx}: complex values differ");
                // `phase --init` reads it by windows of patterns: the same values
                let b = io::blocks::ImageBlocks::open_object(&file, entry)
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!((b.n, b.h, b.w), (n, h, w), "{ctx}");
                let l = h * w;
                for (first, end) in [(0, n), (n / 2, n), (n - 1, n)] {
                    let got = b.read(first..end).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    let want = &o.data[first.min(n - 1) * l..if n == 1 { l } else { end * l }];
                    let eq = got.data.len() == want.len()
                        && got.data.iter().zip(want).all(|(a, b)| {
                            a.re.to_bits() == b.re.to_bits() && a.im.to_bits() == b.im.to_bits()
                        });
                    assert!(
                        eq,
                        "{ctx}: window {first}..{end} differs from the whole read"
                    );
                }
            }
            "support" => {
                n_sup += 1;
                let s = io::read_support(&file, entry).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!(s.shape(), [n, h, w], "{ctx}");
                assert_eq!(s.data, expect.to_mask(), "{ctx}");
                // `phase --support` reads it by windows of patterns: the same values
                let b = io::blocks::ImageBlocks::open_support(&file, entry)
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!((b.n, b.h, b.w), (n, h, w), "{ctx}");
                let l = h * w;
                for (first, end) in [(0, n), (n / 2, n), (n - 1, n)] {
                    let got = b.read(first..end).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    let want = &s.data[first.min(n - 1) * l..if n == 1 { l } else { end * l }];
                    assert!(got.data == want, "{ctx}: window {first}..{end} differs");
                }
            }
            k => panic!("unknown kind {k}"),
        }
    }
    eprintln!(
        "checked {n_pat} pattern files ({n_mask} with masks), {n_obj} objects, {n_sup} supports"
    );
    assert!(n_pat > 80 && n_obj >= 14 && n_sup >= 8 && n_mask > 50);
}

// ------------------------------------------------------------------------------------------
// (b) cdiphase writes, h5py reads
// ------------------------------------------------------------------------------------------

#[test]
fn h5py_reads_what_cxiwriter_writes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut w = CxiWriter::new();
    let mut datasets = Vec::new();
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };

    // f32 (N,H,W) with awkward sizes, 2-D f32, u8 masks, complex64 3-D and 4-D
    let (n, h, wd) = (5usize, 13usize, 22usize);
    let f: Vec<f32> = (0..n * h * wd).map(|_| rnd() * 1e4).collect();
    w.f32("entry_1/data_1/data", &[n, h, wd], &f).unwrap();
    npy::write_f32(&d.join("f.npy"), &[n, h, wd], &f).unwrap();
    datasets.push(("entry_1/data_1/data", "f.npy", "<f4", vec![n, h, wd]));

    let f2: Vec<f32> = (0..h * wd).map(|i| i as f32 * 0.125 - 7.0).collect();
    w.f32("entry_1/instrument_1/detector_1/flat", &[h, wd], &f2)
        .unwrap();
    npy::write_f32(&d.join("f2.npy"), &[h, wd], &f2).unwrap();
    datasets.push((
        "entry_1/instrument_1/detector_1/flat",
        "f2.npy",
        "<f4",
        vec![h, wd],
    ));

    let m: Vec<u8> = (0..h * wd)
        .map(|i| (i % 7 == 0) as u8 * (1 + (i % 3) as u8))
        .collect();
    w.u8("entry_1/instrument_1/detector_1/mask", &[h, wd], &m)
        .unwrap();
    npy::write_u8(&d.join("m.npy"), &[h, wd], &m).unwrap();
    datasets.push((
        "entry_1/instrument_1/detector_1/mask",
        "m.npy",
        "|u1",
        vec![h, wd],
    ));

    let c: Vec<Complex32> = (0..2 * h * wd)
        .map(|_| Complex32::new(rnd(), rnd() * 3.0))
        .collect();
    w.complex64("entry_1/image_1/data", &[2, h, wd], &c)
        .unwrap();
    npy::write_complex64(&d.join("c.npy"), &[2, h, wd], &c).unwrap();
    datasets.push(("entry_1/image_1/data", "c.npy", "<c8", vec![2, h, wd]));

    let (k4, n4) = (3usize, 2usize);
    let c4: Vec<Complex32> = (0..n4 * k4 * 7 * 9)
        .map(|i| Complex32::new(i as f32, -(i as f32) * 0.5 + rnd()))
        .collect();
    w.complex64("entry_1/result_1/modes", &[n4, k4, 7, 9], &c4)
        .unwrap();
    npy::write_complex64(&d.join("c4.npy"), &[n4, k4, 7, 9], &c4).unwrap();
    datasets.push((
        "entry_1/result_1/modes",
        "c4.npy",
        "<c8",
        vec![n4, k4, 7, 9],
    ));

    let starts: Vec<i64> = vec![0, 3, -1, i64::MAX, 7];
    w.i64("entry_1/image_1/best_start", &[5], &starts).unwrap();
    npy::write_i64(&d.join("i64.npy"), &[5], &starts).unwrap();
    datasets.push(("entry_1/image_1/best_start", "i64.npy", "<i8", vec![5]));

    // gzip-compressed datasets too
    w.set_gzip(Some(4));
    w.f32("entry_1/result_1/error", &[n, h, wd], &f).unwrap();
    datasets.push(("entry_1/result_1/error", "f.npy", "<f4", vec![n, h, wd]));
    w.complex64("entry_1/result_1/object_gz", &[2, h, wd], &c)
        .unwrap();
    datasets.push(("entry_1/result_1/object_gz", "c.npy", "<c8", vec![2, h, wd]));
    w.set_gzip(None);

    let strings = [
        ("entry_1/title", "cdiphase run \u{e9}t\u{e9} 1"),
        ("entry_1/result_1/program", "HIO**80 * ER**20"),
        ("entry_1/empty", ""),
        ("cdiphase_version", env!("CARGO_PKG_VERSION")),
    ];
    for (p, v) in strings {
        w.string(p, v).unwrap();
    }
    let attrs = [
        ("", "creator", "cdiphase"),
        ("/", "file_format", "CXI"),
        ("entry_1", "NX_class", "NXentry"),
        ("entry_1/image_1", "NX_class", "NXdata"),
        ("entry_1/image_1/data", "units", "a.u. \u{b5}m"),
        ("entry_1/title", "lang", "fr"),
    ];
    for (o, n, v) in attrs {
        w.attr_string(o, n, v).unwrap();
    }
    w.finish(&d.join("rust.cxi")).unwrap();

    let man = serde_json::json!({
        "file": "rust.cxi",
        "datasets": datasets.iter().map(|(p, f, t, s)| serde_json::json!({"path": p, "npy": f, "dtype": t, "shape": s})).collect::<Vec<_>>(),
        "strings": strings.iter().map(|(p, v)| serde_json::json!({"path": p, "value": v})).collect::<Vec<_>>(),
        "attrs": attrs.iter().map(|(o, n, v)| serde_json::json!({"object": o, "name": n, "value": v})).collect::<Vec<_>>(),
        "groups": ["entry_1", "entry_1/image_1", "entry_1/instrument_1/detector_1", "entry_1/result_1"],
    });
    std::fs::write(d.join("rust_manifest.json"), man.to_string()).unwrap();
    run_script(&["check", d.to_str().unwrap()]);

    // and cdiphase reads its own file back
    let ps = io::read_patterns(&d.join("rust.cxi"), None).unwrap();
    assert_eq!(bits(&ps.intensities.data), bits(&f));
    assert_eq!(
        ps.mask.unwrap().data,
        m.iter().map(|&x| (x != 0) as u8).collect::<Vec<_>>()
    );
    assert_eq!(io::read_object(&d.join("rust.cxi"), None).unwrap().data, c);
    let (s, v) = io::read_f32(&d.join("rust.cxi"), "/entry_1/result_1/error").unwrap();
    assert_eq!((s, bits(&v)), (vec![n, h, wd], bits(&f)));
    // the only file left is ours plus the .npy/.json we wrote: no temp files
    let leftovers: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The streaming writer (used by `simulate`): (N,H,W) f32, u8 and complex64 datasets written
/// block by block in scrambled order, plus small datasets, strings and attributes, read by
/// h5py exactly; an unfinished stream leaves no file.
#[test]
fn h5py_reads_what_streamwriter_writes() {
    use cdiphase::io::stream::{Dtype, StreamWriter};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (n, h, wd) = (7usize, 11usize, 6usize);
    let l = h * wd;
    let f: Vec<f32> = (0..n * l).map(|i| (i as f32 * 0.37).sin() * 1e3).collect();
    let u: Vec<u8> = (0..n * l).map(|i| (i * 31 % 251) as u8).collect();
    let c: Vec<Complex32> = (0..n * l)
        .map(|i| Complex32::new(i as f32 - 9.5, (i as f32 * 0.11).cos()))
        .collect();
    let mut w = StreamWriter::create(&d.join("stream.cxi")).unwrap();
    let sf = w
        .stream("entry_1/data_1/data", Dtype::F32, &[n, h, wd])
        .unwrap();
    let su = w
        .stream("entry_1/sample_1/support", Dtype::U8, &[n, h, wd])
        .unwrap();
    let sc = w
        .stream("entry_1/image_1/data", Dtype::Complex64, &[n, h, wd])
        .unwrap();
    // blocks of 3, 1, 3 rows, last block first
    for (first, len) in [(4usize, 3usize), (3, 1), (0, 3)] {
        let r = first * l..(first + len) * l;
        w.write_rows_f32(sf, first, &f[r.clone()]).unwrap();
        w.write_rows_u8(su, first, &u[r.clone()]).unwrap();
        w.write_rows_complex64(sc, first, &c[r]).unwrap();
    }
    let small: Vec<f32> = vec![0.7, -1.5, 3.25];
    w.f32("entry_1/instrument_1/detector_1/distance", &[3], &small)
        .unwrap();
    let idx: Vec<i64> = vec![0, -4, i64::MAX];
    w.i64("entry_1/sample_1/structure_index", &[3], &idx)
        .unwrap();
    let strings = [
        ("entry_1/sample_1/name", "1eteA\n2a2lA\n\u{e9}"),
        ("entry_1/empty", ""),
    ];
    for (p, v) in strings {
        w.string(p, v).unwrap();
    }
    let attrs = [
        ("", "creator", "cdiphase"),
        ("entry_1", "NX_class", "NXentry"),
        ("entry_1/data_1/data", "units", "photons \u{b5}"),
    ];
    for (o, a, v) in attrs {
        w.attr_string(o, a, v).unwrap();
    }
    w.finish().unwrap();
    npy::write_f32(&d.join("f.npy"), &[n, h, wd], &f).unwrap();
    npy::write_u8(&d.join("u.npy"), &[n, h, wd], &u).unwrap();
    npy::write_complex64(&d.join("c.npy"), &[n, h, wd], &c).unwrap();
    npy::write_f32(&d.join("s.npy"), &[3], &small).unwrap();
    npy::write_i64(&d.join("i.npy"), &[3], &idx).unwrap();
    let datasets = [
        ("entry_1/data_1/data", "f.npy", "<f4", vec![n, h, wd]),
        ("entry_1/sample_1/support", "u.npy", "|u1", vec![n, h, wd]),
        ("entry_1/image_1/data", "c.npy", "<c8", vec![n, h, wd]),
        (
            "entry_1/instrument_1/detector_1/distance",
            "s.npy",
            "<f4",
            vec![3],
        ),
        ("entry_1/sample_1/structure_index", "i.npy", "<i8", vec![3]),
    ];
    let man = serde_json::json!({
        "file": "stream.cxi",
        "datasets": datasets.iter().map(|(p, f, t, s)| serde_json::json!({"path": p, "npy": f, "dtype": t, "shape": s})).collect::<Vec<_>>(),
        "strings": strings.iter().map(|(p, v)| serde_json::json!({"path": p, "value": v})).collect::<Vec<_>>(),
        "attrs": attrs.iter().map(|(o, n, v)| serde_json::json!({"object": o, "name": n, "value": v})).collect::<Vec<_>>(),
        "groups": ["entry_1", "entry_1/image_1", "entry_1/instrument_1/detector_1", "entry_1/sample_1"],
    });
    std::fs::write(d.join("rust_manifest.json"), man.to_string()).unwrap();
    run_script(&["check", d.to_str().unwrap()]);
    assert_eq!(
        io::read_object(&d.join("stream.cxi"), None).unwrap().data,
        c
    );

    // a row block never written: finish fails and leaves neither the file nor a temp file
    let mut w = StreamWriter::create(&d.join("partial.cxi")).unwrap();
    let s = w
        .stream("entry_1/data_1/data", Dtype::F32, &[2, 2, 2])
        .unwrap();
    w.write_rows_f32(s, 0, &[1.0; 4]).unwrap();
    let e = w.finish().unwrap_err().to_string();
    assert!(
        e.contains("never written") && e.contains("entry_1/data_1/data"),
        "{e}"
    );
    // wrong row length / out of range
    let mut w = StreamWriter::create(&d.join("bad.cxi")).unwrap();
    let s = w
        .stream("entry_1/data_1/data", Dtype::F32, &[2, 2, 2])
        .unwrap();
    assert!(w.write_rows_f32(s, 0, &[1.0; 3]).is_err());
    assert!(w.write_rows_f32(s, 2, &[1.0; 4]).is_err());
    drop(w);
    let left: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial") || n.contains("bad") || n.contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

// ------------------------------------------------------------------------------------------
// errors (no Python needed)
// ------------------------------------------------------------------------------------------

fn fixture(name: &str) -> PathBuf {
    manifest_dir().join("tests/data").join(name)
}

fn msg<T: std::fmt::Debug>(r: cdiphase::Result<T>) -> (Error, String) {
    let e = r.expect_err("expected an error");
    let s = e.to_string();
    (e, s)
}

fn assert_names(s: &str, p: &Path) {
    assert!(
        s.contains(&p.display().to_string()),
        "message does not name {}: {s}",
        p.display()
    );
}

#[test]
fn missing_file_is_io_error_naming_path() {
    let p = PathBuf::from("/nonexistent/dir/patterns.cxi");
    for r in [
        io::read_patterns(&p, None).map(|_| ()),
        io::read_support(&p, None).map(|_| ()),
        io::read_object(&p, None).map(|_| ()),
        io::read_f32(&p, "x").map(|_| ()),
        io::list_datasets(&p).map(|_| ()),
        io::read_patterns(&p.with_extension("npy"), None).map(|_| ()),
    ] {
        let (e, s) = msg(r);
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert!(s.contains("/nonexistent/dir/patterns."), "{s}");
    }
}

#[test]
fn missing_entry_names_entry_and_lists_contents() {
    let p = fixture("fixture_v3.cxi");
    let (e, s) = msg(io::read_patterns(&p, Some("entry_1/data_7/data")));
    assert!(matches!(e, Error::MissingEntry { .. }), "{e:?}");
    assert_names(&s, &p);
    assert!(s.contains("entry_1/data_7/data"), "{s}");
    assert!(
        s.contains("data_1") && s.contains("image_1"),
        "hint should list entry_1: {s}"
    );
    // defaults tried are all named
    let p0 = fixture("fixture_v0.h5");
    let (e, s) = msg(io::read_patterns(&p0, None));
    assert!(matches!(e, Error::MissingEntry { .. }), "{e:?}");
    assert!(s.contains("entry_1/data_1/data"), "{s}");
    let (_, s) = msg(io::read_object(
        &fixture("fixture_v0.h5"),
        Some("entry_1/nothing"),
    ));
    assert!(
        s.contains("entry_1/nothing") && s.contains("sample_1"),
        "{s}"
    );
}

#[test]
fn wrong_rank_is_shape_error() {
    let p = fixture("fixture_v0.h5");
    let (e, s) = msg(io::read_patterns(&p, Some("bad/rank4")));
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    assert_names(&s, &p);
    assert!(s.contains("bad/rank4") && s.contains("[1, 2, 3, 4]"), "{s}");
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("one_d.npy");
    npy::write_f32(&q, &[4], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    let (e, s) = msg(io::read_patterns(&q, None));
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    assert_names(&s, &q);
    // a mask whose shape does not match the data
    let c = dir.path().join("badmask.cxi");
    let mut w = CxiWriter::new();
    w.f32("entry_1/data_1/data", &[2, 3, 4], &[0.0; 24])
        .unwrap();
    w.u8("entry_1/data_1/mask", &[3, 5], &[0; 15]).unwrap();
    w.finish(&c).unwrap();
    let (e, s) = msg(io::read_patterns(&c, None));
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    assert!(
        s.contains("entry_1/data_1/mask") && s.contains("[3, 5]"),
        "{s}"
    );
    assert_names(&s, &c);
}

#[test]
fn truncated_and_garbage_files_are_format_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for name in ["fixture_v3.cxi", "fixture_v0.h5"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        // cut at many places, not only in half: header, metadata, raw data
        let mut cuts: Vec<usize> = vec![
            0,
            8,
            100,
            512,
            bytes.len() / 3,
            bytes.len() / 2,
            bytes.len() * 3 / 4,
            bytes.len() - 1,
        ];
        cuts.extend((0..bytes.len()).step_by(97));
        for cut in cuts {
            let p = dir.path().join(format!("cut_{cut}_{name}"));
            std::fs::write(&p, &bytes[..cut]).unwrap();
            for r in [
                io::read_patterns(&p, None).map(|_| ()),
                io::read_object(&p, None).map(|_| ()),
                io::read_support(&p, None).map(|_| ()),
                io::list_datasets(&p).map(|_| ()),
            ] {
                // a cut that leaves the needed data intact may still read; it must never panic,
                // and any error must name the file
                if let Err(e) = r {
                    assert_names(&e.to_string(), &p);
                    checked += 1;
                }
            }
        }
        // the half-file must fail with Error::Format
        let p = dir.path().join(format!("half_{name}"));
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let (e, s) = msg(io::list_datasets(&p));
        assert!(matches!(e, Error::Format { .. }), "{e:?}");
        assert_names(&s, &p);
    }
    assert!(checked > 50);
    // garbage
    let g = dir.path().join("garbage.h5");
    std::fs::write(
        &g,
        b"this is certainly not an HDF5 file, just some text\n".repeat(50),
    )
    .unwrap();
    let (e, s) = msg(io::read_patterns(&g, None));
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    assert_names(&s, &g);
    // garbage after a valid signature
    let mut sig = b"\x89HDF\r\n\x1a\n".to_vec();
    sig.extend((0..4000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    std::fs::write(&g, &sig).unwrap();
    let (e, s) = msg(io::read_patterns(&g, None));
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    assert_names(&s, &g);
    // garbage .npy, truncated .npy
    let n = dir.path().join("garbage.npy");
    std::fs::write(&n, b"not numpy").unwrap();
    let (e, s) = msg(io::read_patterns(&n, None));
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    assert_names(&s, &n);
    npy::write_f32(&n, &[2, 3, 4], &[1.0; 24]).unwrap();
    let b = std::fs::read(&n).unwrap();
    std::fs::write(&n, &b[..b.len() - 10]).unwrap();
    let (e, s) = msg(io::read_patterns(&n, None));
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    assert!(s.contains("truncated"), "{s}");
}

#[test]
fn wrong_extension_is_format_error_listing_accepted() {
    let p = fixture("fixture_v3.cxi");
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("patterns.tiff");
    std::fs::copy(&p, &q).unwrap();
    for r in [
        io::read_patterns(&q, None).map(|_| ()),
        io::read_support(&q, None).map(|_| ()),
        io::read_object(&q, None).map(|_| ()),
    ] {
        let (e, s) = msg(r);
        assert!(matches!(e, Error::Format { .. }), "{e:?}");
        assert_names(&s, &q);
        assert!(s.contains(".cxi") && s.contains(".npy"), "{s}");
    }
    let (_, s) = msg(io::read_patterns(Path::new("noext"), None));
    assert!(s.contains("noext"), "{s}");
}

// ------------------------------------------------------------------------------------------
// atomic writes
// ------------------------------------------------------------------------------------------

#[test]
fn atomic_write_into_missing_directory_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("no_such_dir/out.cxi");
    let mut w = CxiWriter::new();
    w.f32("entry_1/data_1/data", &[1, 2, 2], &[1.0, 2.0, 3.0, 4.0])
        .unwrap();
    let (e, s) = msg(w.finish(&dest));
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert_names(&s, &dest);
    assert!(!dest.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let (e, _) = msg(npy::write_f32(&dest.with_extension("npy"), &[1], &[1.0]));
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // destination is a directory: rename fails, temp file removed
    let sub = dir.path().join("taken.cxi");
    std::fs::create_dir(&sub).unwrap();
    let mut w = CxiWriter::new();
    w.u8("m", &[2], &[0, 1]).unwrap();
    assert!(w.finish(&sub).is_err());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("taken.cxi")]);
}

#[test]
fn writer_rejects_bad_shapes_and_paths() {
    let mut w = CxiWriter::new();
    let (e, _) = msg(w.f32("a", &[2, 3], &[0.0; 5]));
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    assert!(w.u8("b", &[4], &[0; 3]).is_err());
    assert!(w.complex64("c", &[1, 1], &[]).is_err());
    w.f32("g/d", &[1], &[1.0]).unwrap();
    assert!(w.f32("g/d", &[1], &[1.0]).is_err(), "duplicate");
    assert!(
        w.f32("g/d/x", &[1], &[1.0]).is_err(),
        "dataset used as group"
    );
    assert!(w.string("", "x").is_err());
}

#[test]
fn successful_overwrite_replaces_file_and_leaves_no_temp() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.h5");
    for k in 0..3 {
        let mut w = CxiWriter::new();
        w.f32("entry_1/data_1/data", &[1, 1, 2], &[k as f32, 1.0])
            .unwrap();
        w.finish(&dest).unwrap();
        let ps = io::read_patterns(&dest, None).unwrap();
        assert_eq!(ps.intensities.data, vec![k as f32, 1.0]);
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// Same-length files with corrupted bytes (the superblock's end-of-file check cannot catch
/// these): every read must return (Ok or) an error naming the file, never panic.
#[test]
fn corrupted_bytes_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (mut errors, mut caught_panics, mut total) = (0, 0, 0);
    for name in ["fixture_v3.cxi", "fixture_v0.h5"] {
        let orig = std::fs::read(fixture(name)).unwrap();
        let mut state = 0x2545f4914f6cdd1du64;
        for k in 0..400 {
            let mut b = orig.clone();
            // corrupt 1..4 bytes, concentrated in the first 4 KiB (metadata) half of the time
            for _ in 0..1 + k % 4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let span = if k % 2 == 0 {
                    4096.min(b.len())
                } else {
                    b.len()
                };
                let pos = (state % span as u64) as usize;
                b[pos] = (state >> 32) as u8;
            }
            let p = dir.path().join(format!("c{k}_{name}"));
            std::fs::write(&p, &b).unwrap();
            for r in [
                io::read_patterns(&p, None).map(|_| ()),
                io::read_patterns(&p, Some("scan/frames/data")).map(|_| ()),
                io::read_object(&p, None).map(|_| ()),
                io::read_support(&p, None).map(|_| ()),
                io::list_datasets(&p).map(|_| ()),
            ] {
                total += 1;
                if let Err(e) = r {
                    let s = e.to_string();
                    assert_names(&s, &p);
                    errors += 1;
                    if s.contains("panicked") {
                        caught_panics += 1;
                    }
                }
            }
        }
    }
    eprintln!("{total} reads of corrupted files: {errors} errors, of which {caught_panics} were hdf5-pure panics caught");
}

/// Timing of large files (run with `--ignored --nocapture`): 256x128x128 and 1024x128x128
/// complex64, contiguous and gzip, written by CxiWriter and read back.
#[test]
#[ignore]
fn timing_large_complex64() {
    let dir = tempfile::tempdir().unwrap();
    for (n, gzip) in [
        (256usize, None),
        (256, Some(1u32)),
        (256, Some(4)),
        (1024, None),
    ] {
        let len = n * 128 * 128;
        let c: Vec<Complex32> = (0..len)
            .map(|i| {
                let x = (i as f32 * 0.001).sin();
                Complex32::new(x, (i % 977) as f32 * 0.01)
            })
            .collect();
        let p = dir.path().join(format!("big_{n}_{gzip:?}.cxi"));
        let t = std::time::Instant::now();
        let mut w = CxiWriter::new();
        w.set_gzip(gzip);
        w.complex64("entry_1/image_1/data", &[n, 128, 128], &c)
            .unwrap();
        w.finish(&p).unwrap();
        let tw = t.elapsed().as_secs_f64();
        let size = std::fs::metadata(&p).unwrap().len() as f64 / 1048576.0;
        let t = std::time::Instant::now();
        let o = io::read_object(&p, None).unwrap();
        let tr = t.elapsed().as_secs_f64();
        assert_eq!(o.data, c);
        let mib = (len * 8) as f64 / 1048576.0;
        eprintln!(
            "{n}x128x128 complex64 ({mib:.0} MiB) gzip={gzip:?}: file {size:.1} MiB, write {tw:.3} s ({:.0} MiB/s), read {tr:.3} s ({:.0} MiB/s)",
            mib / tw,
            mib / tr
        );
    }
}

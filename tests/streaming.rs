//! Block-wise runs (`--block`) and resumed runs (`--resume`) of `phase`, `predict` and
//! `support`: the data written are those of the in-memory library functions on the whole
//! file, bit for bit, for block sizes that do not divide N (1, a few, N, more than N), and a
//! run killed at random points (SIGKILL, SIGTERM) then resumed writes the same file, byte
//! for byte, as an uninterrupted one; a resume with changed flags or input is refused.

mod common;

use common::cli::{bin, fails, ok};
use common::files::{kill_after_journal_lines, no_leftovers, p, same_data, simulate};
use common::Lcg;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn phase_in_blocks_writes_the_in_memory_result() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let n = 13;
    let sim = simulate(dir, "sim.cxi", n, 32);
    // the in-memory reference: the library on the whole file
    let patterns = cdiphase::io::read_patterns(&sim, None).unwrap();
    let cfg = cdiphase::phasing::PhaseConfig {
        schedule: "10*(5*HIO + 5*ER)".into(),
        starts: 3,
        seed: 7,
        keep_all: true,
        ..Default::default()
    };
    let backend = cdiphase::backend::select(cdiphase::backend::Device::Cpu, Some(2)).unwrap();
    let rec = cdiphase::phasing::phase(backend.as_ref(), &patterns, &cfg, &|_| {}).unwrap();
    let reference = dir.join("reference.cxi");
    rec.write_cxi(&reference, &serde_json::json!({})).unwrap();
    let mut first: Option<Vec<u8>> = None;
    for block in [1, 4, 5, n, n + 20] {
        let out = dir.join(format!("b{block}.cxi"));
        ok(&[
            "phase",
            p(&sim),
            "-o",
            p(&out),
            "--algorithm",
            "10*(5*HIO + 5*ER)",
            "--starts",
            "3",
            "--seed",
            "7",
            "--keep-all",
            "--device",
            "cpu",
            "--block",
            &block.to_string(),
            "-q",
        ]);
        same_data(&reference, &out, true);
        // every block size writes the same bytes
        let bytes = std::fs::read(&out).unwrap();
        match &first {
            None => first = Some(bytes),
            Some(f) => assert!(
                f == &bytes,
                "block {block}: the file differs from block 1's"
            ),
        }
    }
    no_leftovers(dir);
    // a NaN in pattern 9 is reported with its index in the file, whatever the block
    let mut lcg = Lcg::new("phase nan");
    let mut v: Vec<f32> = lcg.vec(n * 16 * 16).iter().map(|x| x.abs() + 0.1).collect();
    v[9 * 256 + 17] = f32::NAN;
    let bad = dir.join("bad.npy");
    cdiphase::io::npy::write_f32(&bad, &[n, 16, 16], &v).unwrap();
    for block in ["1", "4", "100"] {
        let e = fails(&[
            "phase",
            p(&bad),
            "-o",
            p(&dir.join("x.cxi")),
            "-q",
            "--block",
            block,
        ]);
        assert!(
            e.contains("pattern 9 pixel (y=1, x=1)"),
            "block {block}: {e}"
        );
    }
    no_leftovers(dir);
}

#[test]
fn integer_patterns_with_a_mask_per_pattern_in_blocks() {
    // int64 intensities and an (N,H,W) mask: the row reader's integer conversion and its
    // per-pattern mask windows, against the whole-file reader
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let (n, h, w) = (9, 24, 20);
    let mut lcg = Lcg::new("int patterns");
    let vals: Vec<i64> = (0..n * h * w)
        .map(|_| (lcg.next() * 1000.0) as i64)
        .collect();
    let mask: Vec<u8> = (0..n * h * w)
        .map(|_| u8::from(lcg.next() < 0.05) * 3)
        .collect();
    let input = dir.join("int.cxi");
    let mut f = cdiphase::io::StreamWriter::create(&input).unwrap();
    f.i64("entry_1/data_1/data", &[n, h, w], &vals).unwrap();
    f.u8("entry_1/data_1/mask", &[n, h, w], &mask).unwrap();
    f.finish().unwrap();
    let whole = cdiphase::io::read_patterns(&input, None).unwrap();
    let blocks = cdiphase::io::blocks::PatternBlocks::open(&input, None).unwrap();
    assert!(blocks.streamed());
    for r in [0..1, 2..5, 5..9, 0..9] {
        let b = blocks.read(r.clone()).unwrap();
        let l = h * w;
        assert_eq!(
            b.intensities.data,
            whole.intensities.data[r.start * l..r.end * l]
        );
        let m = b.mask.unwrap();
        assert_eq!(
            m.data,
            whole.mask.as_ref().unwrap().data[r.start * l..r.end * l]
        );
    }
    let cfg = cdiphase::phasing::PhaseConfig {
        schedule: "4*(5*HIO + 5*ER)".into(),
        support: cdiphase::phasing::SupportSpec::Circle { radius: 5.0 },
        ..Default::default()
    };
    let backend = cdiphase::backend::select(cdiphase::backend::Device::Cpu, Some(2)).unwrap();
    let rec = cdiphase::phasing::phase(backend.as_ref(), &whole, &cfg, &|_| {}).unwrap();
    let reference = dir.join("reference.cxi");
    rec.write_cxi(&reference, &serde_json::json!({})).unwrap();
    for block in ["2", "4"] {
        let out = dir.join(format!("b{block}.cxi"));
        ok(&[
            "phase",
            p(&input),
            "-o",
            p(&out),
            "--algorithm",
            "4*(5*HIO + 5*ER)",
            "--support",
            "circle:5",
            "--device",
            "cpu",
            "--block",
            block,
            "-q",
        ]);
        same_data(&reference, &out, true);
    }
}

#[test]
fn predict_in_blocks_writes_the_in_memory_result() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let model = cdiphase::nn::bundled::load().unwrap();
    let size = model.spec.input[0];
    let n = 5;
    let sim = simulate(dir, "sim.cxi", n, size);
    let ps = cdiphase::io::read_patterns(&sim, None).unwrap();
    let backend = cdiphase::backend::select(cdiphase::backend::Device::Cpu, Some(2)).unwrap();
    let opts = cdiphase::backend::NetOptions {
        mode: cdiphase::backend::Mode::F32,
        poison: false,
    };
    let pred = cdiphase::nn::predict::predict(
        backend.as_ref(),
        &model,
        &ps.intensities,
        ps.mask.as_ref(),
        2,
        0.1,
        opts,
        &|_| {},
    )
    .unwrap();
    let reference = dir.join("reference.cxi");
    pred.write_cxi(&reference, "m", "d").unwrap();
    // batches of 2: blocks of 1 and 3 are rounded up to 2 and 4 (whole batches)
    for block in [1, 3, n + 3] {
        let out = dir.join(format!("b{block}.cxi"));
        ok(&[
            "predict",
            p(&sim),
            "-o",
            p(&out),
            "--batch",
            "2",
            "--device",
            "cpu",
            "--block",
            &block.to_string(),
            "-q",
        ]);
        same_data(&reference, &out, true);
    }
    no_leftovers(dir);
}

#[test]
fn support_in_blocks_writes_the_in_memory_result() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let n = 7;
    let sim = simulate(dir, "sim.cxi", n, 32);
    let ps = cdiphase::io::read_patterns(&sim, None).unwrap();
    for method in [
        cdiphase::support::Method::Autocorrelation,
        cdiphase::support::Method::TripleIntersection,
    ] {
        let t = method.default_threshold();
        let (s, _) = cdiphase::support::estimate_from_patterns(&ps, method, t).unwrap();
        for block in [1, 3, n, n + 1] {
            let out = dir.join(format!("{}-{block}.cxi", method.name()));
            ok(&[
                "support",
                p(&sim),
                "-o",
                p(&out),
                "--method",
                method.name(),
                "--block",
                &block.to_string(),
            ]);
            let (shape, v) = cdiphase::io::read_mask_nd(&out, "entry_1/image_1/support").unwrap();
            assert_eq!(shape, vec![n, 32, 32]);
            assert!(v == s.data, "{} block {block}", method.name());
        }
    }
    // nn: a network output thresholded; the phase output's modulus stands in for one
    let net = dir.join("net.npy");
    let mut lcg = Lcg::new("support nn");
    let vals: Vec<f32> = lcg.vec(n * 32 * 32).iter().map(|x| x.abs()).collect();
    let st = cdiphase::array::Stack::from_vec(n, 32, 32, vals.clone()).unwrap();
    cdiphase::io::npy::write_f32(&net, &[n, 32, 32], &vals).unwrap();
    let want = cdiphase::support::threshold_supports(&st, 0.3);
    for block in [2, 100] {
        let out = dir.join(format!("nn-{block}.cxi"));
        ok(&[
            "support",
            p(&net),
            "-o",
            p(&out),
            "--method",
            "nn",
            "--threshold",
            "0.3",
            "--block",
            &block.to_string(),
        ]);
        let (_, v) = cdiphase::io::read_mask_nd(&out, "entry_1/image_1/support").unwrap();
        assert!(v == want.data, "nn block {block}");
    }
    no_leftovers(dir);
}

#[test]
fn npy_inputs_are_read_in_blocks_with_the_whole_file_result() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let n = 11;
    let sim = simulate(dir, "sim.cxi", n, 32);
    let st = cdiphase::io::read_patterns(&sim, None).unwrap().intensities;
    // a random subset of the patterns, in a random order: the offsets differ per run
    let mut lcg = Lcg::new("npy rows");
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, (lcg.next() * (i + 1) as f64) as usize);
    }
    let m = 5 + (lcg.next() * 6.0) as usize;
    let v: Vec<f32> = order[..m]
        .iter()
        .flat_map(|&i| st.image(i).to_vec())
        .collect();
    let npy = dir.join("patterns.npy");
    cdiphase::io::npy::write_f32(&npy, &[m, 32, 32], &v).unwrap();
    let input = cdiphase::io::blocks::PatternBlocks::open(&npy, None).unwrap();
    assert!(input.streamed(), "an .npy file is read by offsets");
    // the reference: the library on the whole file, read whole
    let patterns = cdiphase::io::read_patterns(&npy, None).unwrap();
    let cfg = cdiphase::phasing::PhaseConfig {
        schedule: "10*(5*HIO + 5*ER)".into(),
        starts: 2,
        seed: 3,
        ..Default::default()
    };
    let backend = cdiphase::backend::select(cdiphase::backend::Device::Cpu, Some(2)).unwrap();
    let rec = cdiphase::phasing::phase(backend.as_ref(), &patterns, &cfg, &|_| {}).unwrap();
    let reference = dir.join("reference.cxi");
    rec.write_cxi(&reference, &serde_json::json!({})).unwrap();
    for block in [1, 3, m + 4] {
        let out = dir.join(format!("b{block}.cxi"));
        let o = ok(&[
            "phase",
            p(&npy),
            "-o",
            p(&out),
            "--algorithm",
            "10*(5*HIO + 5*ER)",
            "--starts",
            "2",
            "--seed",
            "3",
            "--device",
            "cpu",
            "--block",
            &block.to_string(),
        ]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!e.contains("read whole"), "{e}");
        same_data(&reference, &out, true);
    }
    // a window is what the whole file holds there
    let w = input.read(2..m).unwrap();
    assert!(w.intensities.data == patterns.intensities.data[2 * 1024..m * 1024]);
    assert!(w.mask.is_none());
    no_leftovers(dir);
}

#[test]
fn float16_patterns_are_read_in_blocks_as_read_whole() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hostile/float16.cxi");
    let whole = cdiphase::io::read_patterns(&path, None).unwrap();
    let input = cdiphase::io::blocks::PatternBlocks::open(&path, None).unwrap();
    assert!(
        input.streamed(),
        "float16 data are converted a window at a time"
    );
    let (n, l) = (input.n, input.h * input.w);
    assert_eq!(n, whole.intensities.n);
    for k in 1..=n {
        for first in (0..n).step_by(k) {
            let end = (first + k).min(n);
            let w = input.read(first..end).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(
                bits(&w.intensities.data) == bits(&whole.intensities.data[first * l..end * l]),
                "patterns {first}..{end}"
            );
            match (&w.mask, &whole.mask) {
                (None, None) => {}
                (Some(a), Some(b)) if b.n == 1 => assert!(a.data == b.data),
                (Some(a), Some(b)) => assert!(a.data == b.data[first * l..end * l]),
                _ => panic!("the mask differs from the whole-file reader's"),
            }
        }
    }
}

const PHASE: [&str; 8] = [
    "--algorithm",
    "300*(5*HIO + 5*ER)",
    "--starts",
    "2",
    "--device",
    "cpu",
    "--threads",
    "1",
];

fn phase_args<'a>(sim: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["phase", sim, "-o", out, "-q"];
    v.extend_from_slice(&PHASE);
    if !extra.contains(&"--block") {
        v.extend_from_slice(&["--block", "2"]);
    }
    v.extend_from_slice(extra);
    v
}

/// Start `args`, kill it with `sig` after `after`; returns whether it was still running.
fn kill_after(args: &[&str], sig: i32, after: Duration) -> bool {
    let mut child = bin()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while t.elapsed() < after {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill only sends a signal to our own child process.
    unsafe { libc::kill(pid, sig) };
    child.wait().unwrap();
    true
}

#[test]
fn killed_runs_resume_to_the_same_file() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let sim = simulate(dir, "sim.cxi", 15, 32);
    let full = dir.join("full.cxi");
    let t = Instant::now();
    ok(&phase_args(p(&sim), p(&full), &[]));
    let whole = t.elapsed();
    let want = std::fs::read(&full).unwrap();
    let out = dir.join("out.cxi");
    let mut rng = Lcg::new("resume kill points");
    let mut mid_run = 0;
    for round in 0..4 {
        // killed, resumed and killed again at random points, then resumed to the end
        let sig = if round == 3 {
            libc::SIGTERM
        } else {
            libc::SIGKILL
        };
        let mut args = phase_args(p(&sim), p(&out), &[]);
        let mut kills = 0;
        for _ in 0..3 {
            let at = whole.mul_f64(0.1 + 0.8 * rng.next());
            if kill_after(&args, sig, at) {
                kills += 1;
                // blocks listed in the journal (header and configuration lines aside)
                let done = std::fs::read_to_string(dir.join(".out.cxi.cdiphase-journal"))
                    .map(|s| s.lines().count().saturating_sub(2))
                    .unwrap_or(0);
                if done > 0 && done < 8 {
                    mid_run += 1;
                }
            }
            args = phase_args(p(&sim), p(&out), &["--resume"]);
        }
        ok(&args);
        let got = std::fs::read(&out).unwrap();
        assert!(
            got == want,
            "round {round} ({kills} kills): the resumed file differs from the uninterrupted one"
        );
        no_leftovers(dir);
        std::fs::remove_file(&out).unwrap();
    }
    // most kill points fall between blocks 1 and 7 of 8; at least some must have
    assert!(
        mid_run >= 2,
        "only {mid_run} of 12 kills left finished blocks to resume"
    );
}

#[test]
fn a_resume_with_other_flags_or_input_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let sim = simulate(dir, "sim.cxi", 12, 32);
    let out = dir.join("out.cxi");
    // interrupted after its first blocks (SIGKILL once the journal lists a block)
    let args = phase_args(p(&sim), p(&out), &[]);
    let mut child = bin()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = dir.join(".out.cxi.cdiphase-journal");
    kill_after_journal_lines(&mut child, &journal, 3);
    let e = fails(&phase_args(
        p(&sim),
        p(&out),
        &["--resume", "--beta", "0.8"],
    ));
    assert!(
        e.contains("different configuration") && e.contains("beta") && e.contains("0.8"),
        "{e}"
    );
    let e = fails(&phase_args(p(&sim), p(&out), &["--resume", "--block", "3"]));
    assert!(
        e.contains("different configuration") && e.contains("block"),
        "{e}"
    );
    // the input changed under the partial output: same size, other values
    let saved = std::fs::read(&sim).unwrap();
    let other = simulate(dir, "other.cxi", 12, 32);
    std::fs::copy(&other, &sim).unwrap();
    let e = fails(&phase_args(p(&sim), p(&out), &["--resume"]));
    assert!(
        e.contains("different configuration or input") && e.contains("input_files"),
        "{e}"
    );
    // back to the original input: the refusals changed nothing, the resume completes
    std::fs::write(&sim, &saved).unwrap();
    let e = fails(&phase_args(p(&sim), p(&out), &["--resume"]));
    // the modification time differs from the original's: still refused, and says so
    assert!(e.contains("mtime"), "{e}");
    // without --resume: a fresh run replaces the partial output, and says so
    let o = ok(&phase_args(p(&sim), p(&out), &[]));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("starts afresh and replaces them"), "{e}");
    no_leftovers(dir);
    let full = dir.join("full.cxi");
    ok(&phase_args(p(&sim), p(&full), &[]));
    assert!(std::fs::read(&full).unwrap() == std::fs::read(&out).unwrap());
}

/// An HDF5 file with one dataset at `entry` (groups created on the way) of `dtype` and
/// `shape`, stored in chunks of `chunk` images (deflated) when given.
fn h5_dataset(
    path: &std::path::Path,
    entry: &str,
    dtype: hdf5_pure::Datatype,
    shape: &[usize],
    raw: Vec<u8>,
    chunk: Option<usize>,
) {
    use hdf5_pure::{FileBuilder, GroupBuilder};
    fn nest(g: &mut GroupBuilder, parts: &[&str], put: &mut dyn FnMut(&mut GroupBuilder, &str)) {
        if parts.len() == 1 {
            put(g, parts[0]);
            return;
        }
        let mut sub = g.create_group(parts[0]);
        nest(&mut sub, &parts[1..], put);
        g.add_group(sub.finish());
    }
    let parts: Vec<&str> = entry.split('/').collect();
    let count: usize = shape.iter().product();
    let dims: Vec<u64> = shape.iter().map(|&x| x as u64).collect();
    let mut put = |g: &mut GroupBuilder, name: &str| {
        let d = g.create_dataset(name);
        d.with_raw_data(dtype.clone(), raw.clone(), count as u64)
            .with_shape(&dims);
        if let Some(c) = chunk {
            let mut cd = dims.clone();
            cd[0] = c as u64;
            d.with_chunks(&cd).with_deflate(4);
        }
    };
    let mut fb = FileBuilder::new();
    let mut top = fb.create_group(parts[0]);
    nest(&mut top, &parts[1..], &mut put);
    fb.add_group(top.finish());
    fb.write(path).unwrap();
}

/// `t` with its byte order set to big-endian.
fn big_endian(t: hdf5_pure::Datatype) -> hdf5_pure::Datatype {
    match t {
        hdf5_pure::Datatype::FloatingPoint { size, layout, .. } => {
            hdf5_pure::Datatype::FloatingPoint {
                size,
                byte_order: hdf5_pure::DatatypeByteOrder::BigEndian,
                layout,
            }
        }
        other => panic!("not a float: {other:?}"),
    }
}

/// Every window `first..first + k` (every k, every start) of `blocks` holds the bits of
/// the whole-file read `whole` there (`bits` maps a value to comparable bits).
fn windows_match<T: Clone, B: PartialEq + std::fmt::Debug>(
    what: &str,
    n: usize,
    l: usize,
    whole: &[T],
    read: impl Fn(std::ops::Range<usize>) -> cdiphase::array::Stack<T>,
    bits: impl Fn(&T) -> B,
) {
    for k in 1..=n {
        for first in (0..n).step_by(k) {
            let end = (first + k).min(n);
            let got = read(first..end);
            assert_eq!((got.n, got.data.len()), (end - first, (end - first) * l));
            let a: Vec<B> = got.data.iter().map(&bits).collect();
            let b: Vec<B> = whole[first * l..end * l].iter().map(&bits).collect();
            assert!(
                a == b,
                "{what}: images {first}..{end} differ from the whole read"
            );
        }
    }
}

#[test]
fn support_and_init_files_are_read_in_windows_as_read_whole() {
    use cdiphase::io::blocks::ImageBlocks;
    use num_complex::Complex32;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let mut lcg = Lcg::new("image windows");
    // awkward sizes: N prime, H != W, chunks of 3 or 4 images that windows cut through
    let (n, h, w) = (11, 9, 7);
    let l = h * w;
    let vals: Vec<f32> = lcg
        .vec(n * l)
        .into_iter()
        .map(|x| if x.abs() < 0.4 { 0.0 } else { x * 3.0 })
        .collect();
    let f64_le: Vec<u8> = vals
        .iter()
        .flat_map(|&x| (x as f64 * 1.1).to_le_bytes())
        .collect();
    let f64_be: Vec<u8> = vals
        .iter()
        .flat_map(|&x| (x as f64 * 1.1).to_be_bytes())
        .collect();
    let i16s: Vec<u8> = vals
        .iter()
        .flat_map(|&x| ((x * 1000.0) as i16).to_le_bytes())
        .collect();
    // supports: every type the row reader decodes, and an enumeration it leaves whole
    let mut supports = Vec::new();
    let sup = |name: &str| dir.join(name);
    h5_dataset(
        &sup("s_f64.cxi"),
        "entry_1/image_1/support",
        hdf5_pure::make_f64_type(),
        &[n, h, w],
        f64_le.clone(),
        Some(3),
    );
    supports.push((sup("s_f64.cxi"), None, true));
    h5_dataset(
        &sup("s_f64be.cxi"),
        "entry_1/sample_1/support",
        big_endian(hdf5_pure::make_f64_type()),
        &[n, h, w],
        f64_be.clone(),
        None,
    );
    supports.push((sup("s_f64be.cxi"), None, true));
    h5_dataset(
        &sup("s_i16.h5"),
        "masks/here",
        hdf5_pure::make_i16_type(),
        &[n, h, w],
        i16s,
        Some(4),
    );
    supports.push((sup("s_i16.h5"), Some("masks/here"), true));
    let en = hdf5_pure::EnumTypeBuilder::u8_based()
        .u8_value("FALSE", 0)
        .u8_value("TRUE", 1)
        .build()
        .unwrap();
    let bools: Vec<u8> = vals.iter().map(|&x| u8::from(x != 0.0)).collect();
    h5_dataset(
        &sup("s_enum.cxi"),
        "entry_1/image_1/support",
        en,
        &[n, h, w],
        bools,
        None,
    );
    supports.push((sup("s_enum.cxi"), None, true));
    cdiphase::io::npy::write_f32(&sup("s.npy"), &[n, h, w], &vals).unwrap();
    supports.push((sup("s.npy"), None, true));
    let hostile =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hostile/float16.cxi");
    supports.push((hostile, Some("entry_1/data_1/data"), true));
    for (path, entry, streamed) in &supports {
        let what = format!("support {}", path.display());
        let whole = cdiphase::io::read_support(path, *entry).unwrap();
        let blocks = ImageBlocks::open_support(path, *entry).unwrap();
        assert_eq!(blocks.streamed(), *streamed, "{what}");
        assert_eq!((blocks.n, blocks.h, blocks.w), (whole.n, whole.h, whole.w));
        let wl = whole.h * whole.w;
        windows_match(
            &what,
            whole.n,
            wl,
            &whole.data,
            |r| blocks.read(r).unwrap(),
            |&v| v,
        );
    }
    // objects: compounds of any field order, size and byte order, real types, .npy
    let cs: Vec<Complex32> = vals
        .iter()
        .zip(lcg.vec(n * l))
        .map(|(&re, im)| Complex32::new(re, im))
        .collect();
    let mut objects = Vec::new();
    // {imag: f32 at 0, real: f64 big-endian at 8}, records of 20 bytes
    let odd = hdf5_pure::CompoundTypeBuilder::with_size(20)
        .f32_field("imag", 0)
        .field("real", 8, big_endian(hdf5_pure::make_f64_type()))
        .build()
        .unwrap();
    let raw: Vec<u8> = cs
        .iter()
        .flat_map(|c| {
            let mut r = [0u8; 20];
            r[..4].copy_from_slice(&c.im.to_le_bytes());
            r[8..16].copy_from_slice(&(c.re as f64 * 0.7).to_be_bytes());
            r
        })
        .collect();
    h5_dataset(
        &sup("o_odd.cxi"),
        "entry_1/image_1/data",
        odd,
        &[n, h, w],
        raw,
        Some(4),
    );
    objects.push((sup("o_odd.cxi"), None));
    // the layout cdiphase writes: {r, i} float32, one image per deflated chunk
    let mut cw = cdiphase::io::CxiWriter::new();
    cw.set_gzip(Some(3));
    cw.complex64("entry_1/image_1/data", &[n, h, w], &cs)
        .unwrap();
    cw.finish(&sup("o_c64.cxi")).unwrap();
    objects.push((sup("o_c64.cxi"), None));
    h5_dataset(
        &sup("o_real.cxi"),
        "entry_1/sample_1/density",
        hdf5_pure::make_f64_type(),
        &[n, h, w],
        f64_le,
        Some(3),
    );
    objects.push((sup("o_real.cxi"), None));
    cdiphase::io::npy::write_complex64(&sup("o.npy"), &[n, h, w], &cs).unwrap();
    objects.push((sup("o.npy"), None));
    cdiphase::io::npy::write_f32(&sup("o_real.npy"), &[n, h, w], &vals).unwrap();
    objects.push((sup("o_real.npy"), None));
    // one shared object: every window is that image
    cdiphase::io::npy::write_complex64(&sup("o_one.npy"), &[h, w], &cs[..l]).unwrap();
    for (path, entry) in &objects {
        let what = format!("object {}", path.display());
        let whole = cdiphase::io::read_object(path, *entry).unwrap();
        let blocks = ImageBlocks::open_object(path, *entry).unwrap();
        assert!(blocks.streamed(), "{what}");
        assert_eq!((blocks.n, blocks.h, blocks.w), (n, h, w), "{what}");
        // values differ between the files (the scaled real parts): the test reads them
        assert!(whole.data.iter().any(|c| c.im != 0.0) || path.to_string_lossy().contains("real"));
        windows_match(
            &what,
            n,
            l,
            &whole.data,
            |r| blocks.read(r).unwrap(),
            |c| (c.re.to_bits(), c.im.to_bits()),
        );
    }
    let one = ImageBlocks::open_object(&sup("o_one.npy"), None).unwrap();
    assert_eq!(one.n, 1);
    assert!(one.read(5..9).unwrap().data == cs[..l]);
    // one shared image stored (H, W) in HDF5: its H rows are the one image
    let mut cw = cdiphase::io::CxiWriter::new();
    cw.complex64("entry_1/image_1/data", &[h, w], &cs[l..2 * l])
        .unwrap();
    cw.f32("entry_1/image_1/support", &[h, w], &vals[l..2 * l])
        .unwrap();
    cw.finish(&sup("one.cxi")).unwrap();
    let one = ImageBlocks::open_object(&sup("one.cxi"), None).unwrap();
    assert_eq!((one.n, one.h, one.w), (1, h, w));
    assert!(one.read(3..7).unwrap().data == cs[l..2 * l]);
    let one = ImageBlocks::open_support(&sup("one.cxi"), None).unwrap();
    let whole = cdiphase::io::read_support(&sup("one.cxi"), None).unwrap();
    assert!(one.read(0..1).unwrap().data == whole.data && whole.n == 1);
    // a NaN in support 7: the window that holds it names image 7, as the whole read does
    let mut bad = vals.clone();
    bad[7 * l + 2 * w + 3] = f32::NAN;
    cdiphase::io::npy::write_f32(&sup("s_nan.npy"), &[n, h, w], &bad).unwrap();
    let e_whole = cdiphase::io::read_support(&sup("s_nan.npy"), None)
        .unwrap_err()
        .to_string();
    let nb = ImageBlocks::open_support(&sup("s_nan.npy"), None).unwrap();
    assert!(nb.read(0..7).is_ok() && nb.read(8..11).is_ok());
    for r in [6..8, 7..8, 4..11] {
        let e = nb.read(r.clone()).unwrap_err().to_string();
        assert_eq!(e, e_whole, "window {r:?}");
    }
    assert!(
        e_whole.contains("image 7 pixel (y=2, x=3) is NaN"),
        "{e_whole}"
    );
    // refusals as the whole read refuses: a complex support, a compound that is not complex
    let e = ImageBlocks::open_support(&sup("o.npy"), None)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        e,
        cdiphase::io::read_support(&sup("o.npy"), None)
            .unwrap_err()
            .to_string()
    );
    let pair = hdf5_pure::CompoundTypeBuilder::new()
        .f32_field("x")
        .f32_field("y")
        .build()
        .unwrap();
    h5_dataset(
        &sup("o_xy.cxi"),
        "entry_1/image_1/data",
        pair,
        &[n, h, w],
        vec![0u8; n * l * 8],
        None,
    );
    let e = ImageBlocks::open_object(&sup("o_xy.cxi"), None)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        e,
        cdiphase::io::read_object(&sup("o_xy.cxi"), None)
            .unwrap_err()
            .to_string()
    );
    assert!(e.contains("not a complex number"), "{e}");
}

/// `n` starting supports (discs of random radii, off centre by up to 2 pixels) and
/// starting objects (random complex) of `size` x `size`, one per pattern.
fn per_pattern_images(
    lcg: &mut Lcg,
    n: usize,
    size: usize,
) -> (Vec<f32>, Vec<num_complex::Complex32>) {
    let c = size as f64 / 2.0;
    let mut sup = Vec::with_capacity(n * size * size);
    for _ in 0..n {
        let r = 3.0 + lcg.next() * size as f64 / 5.0;
        let (dy, dx) = (lcg.next() * 4.0 - 2.0, lcg.next() * 4.0 - 2.0);
        for y in 0..size {
            for x in 0..size {
                let d = ((y as f64 - c - dy).powi(2) + (x as f64 - c - dx).powi(2)).sqrt();
                sup.push(if d <= r { 1.0 + lcg.next() as f32 } else { 0.0 });
            }
        }
    }
    let re = lcg.vec(n * size * size);
    let im = lcg.vec(n * size * size);
    let obj = re
        .into_iter()
        .zip(im)
        .map(|(a, b)| num_complex::Complex32::new(a + 1.5, b))
        .collect();
    (sup, obj)
}

#[test]
fn phase_with_a_support_and_init_per_pattern_reads_them_in_blocks() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let (n, size) = (13, 32);
    let sim = simulate(dir, "sim.cxi", n, size);
    let mut lcg = Lcg::new("per-pattern support init");
    let (sup, obj) = per_pattern_images(&mut lcg, n, size);
    // the support as float64 in chunks of 3 images, the objects as the {r, i} compound
    let supf = dir.join("sup.cxi");
    h5_dataset(
        &supf,
        "entry_1/image_1/support",
        hdf5_pure::make_f64_type(),
        &[n, size, size],
        sup.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect(),
        Some(3),
    );
    let objf = dir.join("obj.cxi");
    let mut cw = cdiphase::io::CxiWriter::new();
    cw.complex64("entry_1/image_1/data", &[n, size, size], &obj)
        .unwrap();
    cw.finish(&objf).unwrap();
    let objn = dir.join("obj.npy");
    cdiphase::io::npy::write_complex64(&objn, &[n, size, size], &obj).unwrap();
    // the in-memory reference: the library on the whole files, read whole
    let patterns = cdiphase::io::read_patterns(&sim, None).unwrap();
    let cfg = cdiphase::phasing::PhaseConfig {
        schedule: "6*(5*HIO + 5*ER)".into(),
        starts: 2,
        seed: 11,
        support: cdiphase::phasing::SupportSpec::Given(
            cdiphase::io::read_support(&supf, None).unwrap(),
        ),
        init: cdiphase::phasing::InitSpec::Given(cdiphase::io::read_object(&objf, None).unwrap()),
        init_noise: 0.05,
        keep_all: true,
        ..Default::default()
    };
    let backend = cdiphase::backend::select(cdiphase::backend::Device::Cpu, Some(2)).unwrap();
    let rec = cdiphase::phasing::phase(backend.as_ref(), &patterns, &cfg, &|_| {}).unwrap();
    let reference = dir.join("reference.cxi");
    rec.write_cxi(&reference, &serde_json::json!({})).unwrap();
    let args = |out: &str, init: &str, block: &str| -> Vec<String> {
        [
            "phase",
            p(&sim),
            "-o",
            out,
            "--algorithm",
            "6*(5*HIO + 5*ER)",
            "--starts",
            "2",
            "--seed",
            "11",
            "--support",
            p(&supf),
            "--init",
            init,
            "--init-noise",
            "0.05",
            "--keep-all",
            "--device",
            "cpu",
            "--block",
            block,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    for (block, init) in [(1, &objf), (4, &objn), (n + 3, &objf)] {
        let out = dir.join(format!("b{block}.cxi"));
        let a = args(p(&out), p(init), &block.to_string());
        let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        let o = ok(&a);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!e.contains("read whole"), "{e}");
        same_data(&reference, &out, true);
    }
    // a NaN in support 9 is reported with its index in the file, whatever the block
    let mut bad = sup.clone();
    bad[9 * size * size + 5] = f32::NAN;
    let badf = dir.join("bad.npy");
    cdiphase::io::npy::write_f32(&badf, &[n, size, size], &bad).unwrap();
    for block in ["1", "4", "100"] {
        let e = fails(&[
            "phase",
            p(&sim),
            "-o",
            p(&dir.join("x.cxi")),
            "-q",
            "--algorithm",
            "2*(5*HIO + 5*ER)",
            "--support",
            p(&badf),
            "--block",
            block,
        ]);
        assert!(
            e.contains("image 9 pixel (y=0, x=5) is NaN"),
            "block {block}: {e}"
        );
    }
    // a file of another count is refused before anything runs, naming both shapes
    let e = fails(&[
        "phase",
        p(&sim),
        "-o",
        p(&dir.join("x.cxi")),
        "--support",
        p(&dir.join("obj.npy")),
    ]);
    assert!(e.contains("must be real"), "{e}");
    let short = dir.join("short.npy");
    cdiphase::io::npy::write_f32(&short, &[n - 1, size, size], &sup[..(n - 1) * size * size])
        .unwrap();
    let e = fails(&[
        "phase",
        p(&sim),
        "-o",
        p(&dir.join("x.cxi")),
        "--support",
        p(&short),
    ]);
    assert!(
        e.contains("12 image(s) of 32x32 do not match the 13 patterns"),
        "{e}"
    );
    no_leftovers(dir);
}

#[test]
fn one_pattern_stored_2d_is_phased_in_blocks() {
    // an (H, W) dataset is one pattern: its H rows are read as that pattern
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let (h, w) = (18, 22);
    let mut lcg = Lcg::new("2d pattern");
    let v: Vec<f32> = lcg.vec(h * w).iter().map(|x| x.abs() + 0.05).collect();
    let input = dir.join("one.cxi");
    let mut f = cdiphase::io::StreamWriter::create(&input).unwrap();
    f.f32("entry_1/data_1/data", &[h, w], &v).unwrap();
    f.finish().unwrap();
    let whole = cdiphase::io::read_patterns(&input, None).unwrap();
    let blocks = cdiphase::io::blocks::PatternBlocks::open(&input, None).unwrap();
    assert!(blocks.streamed());
    assert_eq!((blocks.n, blocks.h, blocks.w), (1, h, w));
    assert!(blocks.read(0..1).unwrap().intensities.data == whole.intensities.data);
    let cfg = cdiphase::phasing::PhaseConfig {
        schedule: "3*(5*HIO + 5*ER)".into(),
        support: cdiphase::phasing::SupportSpec::Circle { radius: 4.0 },
        ..Default::default()
    };
    let backend = cdiphase::backend::select(cdiphase::backend::Device::Cpu, Some(2)).unwrap();
    let rec = cdiphase::phasing::phase(backend.as_ref(), &whole, &cfg, &|_| {}).unwrap();
    let reference = dir.join("reference.cxi");
    rec.write_cxi(&reference, &serde_json::json!({})).unwrap();
    let out = dir.join("out.cxi");
    ok(&[
        "phase",
        p(&input),
        "-o",
        p(&out),
        "--algorithm",
        "3*(5*HIO + 5*ER)",
        "--support",
        "circle:4",
        "--device",
        "cpu",
        "-q",
    ]);
    same_data(&reference, &out, true);
    no_leftovers(dir);
}

/// `simulate` of `count` synthetic particles of 64x64 with noise and a mask into `out`,
/// blocks of 5, one thread, plus `extra` (`--photons 1e7` unless `extra` gives it).
fn simulate_args<'a>(out: &'a str, count: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "simulate",
        "--synthetic",
        "all",
        "--count",
        count,
        "--size",
        "64",
        "--mask",
        "beamstop:3",
        "--noise",
        "poisson",
        "--block",
        "5",
        "--threads",
        "1",
        "-q",
        "-o",
        out,
    ];
    if !extra.contains(&"--photons") {
        v.extend_from_slice(&["--photons", "1e7"]);
    }
    v.extend_from_slice(extra);
    v
}

#[test]
fn killed_simulate_runs_resume_to_the_same_file() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let full = dir.join("full.cxi");
    let count = "120"; // 24 blocks of 5
    let t = Instant::now();
    ok(&simulate_args(p(&full), count, &[]));
    let whole = t.elapsed();
    let want = std::fs::read(&full).unwrap();
    // the library's one-process writer (`simulate_to_cxi`, the path before --resume)
    // writes the same bytes
    let cfg = cdiphase::simulate::SimOptions {
        count: 120,
        size: Some((64, 64)),
        noise: Some("poisson".into()),
        photons: Some(1e7),
        mask: Some("beamstop:3".into()),
        atoms: Some("gaussian".into()),
        synthetic: Some(("all".into(), (150, 1200))),
        ..Default::default()
    }
    .config()
    .unwrap();
    let lib = dir.join("lib.cxi");
    cdiphase::simulate::simulate_to_cxi(&[], &cfg, &lib, 7, &|_| {}).unwrap();
    assert!(
        std::fs::read(&lib).unwrap() == want,
        "the CLI's file differs from simulate_to_cxi's"
    );
    let out = dir.join("out.cxi");
    let journal = dir.join(".out.cxi.cdiphase-journal");
    let mut rng = Lcg::new("simulate resume kill points");
    let mut mid_run = 0;
    for round in 0..3 {
        let sig = if round == 2 {
            libc::SIGTERM
        } else {
            libc::SIGKILL
        };
        let mut args = simulate_args(p(&out), count, &[]);
        let mut kills = 0;
        for _ in 0..3 {
            let at = whole.mul_f64(0.1 + 0.8 * rng.next());
            if kill_after(&args, sig, at) {
                kills += 1;
                let done = std::fs::read_to_string(&journal)
                    .map(|s| s.lines().count().saturating_sub(2))
                    .unwrap_or(0);
                if done > 0 && done < 24 {
                    mid_run += 1;
                }
            }
            args = simulate_args(p(&out), count, &["--resume"]);
        }
        ok(&args);
        let got = std::fs::read(&out).unwrap();
        assert!(
            got == want,
            "round {round} ({kills} kills): the resumed file differs from the uninterrupted one"
        );
        no_leftovers(dir);
        std::fs::remove_file(&out).unwrap();
    }
    assert!(
        mid_run >= 2,
        "only {mid_run} of 9 kills left finished blocks to resume"
    );
    // a resume with other flags is refused, naming what changed
    let mut child = bin()
        .args(simulate_args(p(&out), count, &[]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill_after_journal_lines(&mut child, &journal, 3);
    let e = fails(&simulate_args(
        p(&out),
        count,
        &["--resume", "--photons", "1e8"],
    ));
    assert!(
        e.contains("different configuration")
            && e.contains("configuration.photons: was 10000000.0, now 100000000.0"),
        "{e}"
    );
    let e = fails(&simulate_args(p(&out), count, &["--resume", "--seed", "3"]));
    assert!(e.contains("configuration.seed: was 0, now 3"), "{e}");
    // the refusals changed nothing: the resume completes to the same bytes
    ok(&simulate_args(p(&out), count, &["--resume"]));
    assert!(std::fs::read(&out).unwrap() == want);
    no_leftovers(dir);
}

/// float16 in HDF5 (IEEE 754 binary16, little-endian).
fn f16_type() -> hdf5_pure::Datatype {
    hdf5_pure::Datatype::FloatingPoint {
        size: 2,
        byte_order: hdf5_pure::DatatypeByteOrder::LittleEndian,
        layout: hdf5_pure::FloatingPointLayout {
            bit_offset: 0,
            bit_precision: 16,
            exponent_location: 10,
            exponent_size: 5,
            mantissa_location: 0,
            mantissa_size: 10,
            exponent_bias: 15,
        },
    }
}

#[test]
fn enum_data_and_float16_masks_are_read_in_blocks_as_read_whole() {
    use hdf5_pure::FileBuilder;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let (n, h, w) = (7, 6, 9);
    let l = h * w;
    let mut lcg = Lcg::new("enum data f16 mask");
    let en = hdf5_pure::EnumTypeBuilder::u8_based()
        .u8_value("FALSE", 0)
        .u8_value("TRUE", 1)
        .build()
        .unwrap();
    let data: Vec<u8> = (0..n * l).map(|_| u8::from(lcg.next() < 0.6)).collect();
    // float16 masks: zeros, ones, other values and a NaN (nonzero, so masked)
    let mask16 = |m: usize, lcg: &mut Lcg| -> Vec<u8> {
        (0..m)
            .flat_map(|i| {
                let v = match (lcg.next() * 4.0) as u32 {
                    0 | 1 => half::f16::ZERO,
                    2 => half::f16::from_f32(0.5),
                    _ if i % 5 == 0 => half::f16::NAN,
                    _ => half::f16::ONE,
                };
                v.to_bits().to_le_bytes()
            })
            .collect()
    };
    for (name, mask_n) in [("per.cxi", n), ("shared.cxi", 1)] {
        let path = dir.join(name);
        let raw_mask = mask16(mask_n * l, &mut lcg);
        let mask_shape: Vec<u64> = if mask_n == 1 {
            vec![h as u64, w as u64]
        } else {
            vec![n as u64, h as u64, w as u64]
        };
        let mut fb = FileBuilder::new();
        let mut e = fb.create_group("entry_1");
        let mut g = e.create_group("data_1");
        g.create_dataset("data")
            .with_raw_data(en.clone(), data.clone(), (n * l) as u64)
            .with_shape(&[n as u64, h as u64, w as u64])
            .with_chunks(&[3, h as u64, w as u64])
            .with_deflate(4);
        g.create_dataset("mask")
            .with_raw_data(f16_type(), raw_mask, (mask_n * l) as u64)
            .with_shape(&mask_shape);
        e.add_group(g.finish());
        fb.add_group(e.finish());
        fb.write(&path).unwrap();
        let whole = cdiphase::io::read_patterns(&path, None).unwrap();
        let blocks = cdiphase::io::blocks::PatternBlocks::open(&path, None).unwrap();
        assert!(blocks.streamed(), "{name}: read whole");
        let wm = whole.mask.as_ref().unwrap();
        assert_eq!(wm.n, mask_n);
        assert!(wm.data.contains(&0) && wm.data.iter().any(|&v| v != 0));
        for k in 1..=n {
            for first in (0..n).step_by(k) {
                let end = (first + k).min(n);
                let got = blocks.read(first..end).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert!(
                    bits(&got.intensities.data)
                        == bits(&whole.intensities.data[first * l..end * l]),
                    "{name}: patterns {first}..{end}"
                );
                let m = got.mask.unwrap();
                let want = if mask_n == 1 {
                    &wm.data[..]
                } else {
                    &wm.data[first * l..end * l]
                };
                assert!(m.data == want, "{name}: mask of {first}..{end}");
            }
        }
    }
}

/// A ground truth of `n` images of `h`x`w` (awkward sizes): random densities (signed, some
/// images all zero when `zeros`) and supports (random blobs of a few pixels, off centre),
/// as `cdiphase simulate` stores them (`entry_1/sample_1/density` float32 and `support`
/// uint8).
fn truth_file(
    path: &std::path::Path,
    lcg: &mut Lcg,
    n: usize,
    h: usize,
    w: usize,
    zeros: bool,
) -> (Vec<f32>, Vec<u8>) {
    let l = h * w;
    let mut dens = lcg.vec(n * l);
    if zeros {
        dens[l..2 * l].iter_mut().for_each(|v| *v = 0.0);
    }
    let mut sup = vec![0u8; n * l];
    for k in 0..n {
        let (cy, cx) = (lcg.next() * h as f64, lcg.next() * w as f64);
        let r = 1.0 + lcg.next() * (h.min(w) as f64 / 3.0);
        for y in 0..h {
            for x in 0..w {
                let d = (y as f64 - cy).powi(2) + ((x as f64 - cx) * 0.7).powi(2);
                sup[k * l + y * w + x] = u8::from(d <= r * r);
            }
        }
        sup[k * l + (k * 7) % l] = 1; // never empty
    }
    let mut cw = cdiphase::io::CxiWriter::new();
    cw.f32("entry_1/sample_1/density", &[n, h, w], &dens)
        .unwrap();
    cw.u8("entry_1/sample_1/support", &[n, h, w], &sup).unwrap();
    cw.finish(path).unwrap();
    (dens, sup)
}

/// `entry_1/image_1/radius_px` of a circle output, float64.
fn radii_of(path: &std::path::Path) -> Vec<f64> {
    let f = hdf5_pure::File::open(path).unwrap();
    f.dataset("entry_1/image_1/radius_px")
        .unwrap()
        .read_f64()
        .unwrap()
}

#[test]
fn support_baselines_in_blocks_write_the_in_memory_result() {
    use cdiphase::array::Stack;
    use cdiphase::support::baselines;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let mut lcg = Lcg::new("support baselines in blocks");
    let (n, h, w) = (9, 23, 18);
    let truth = dir.join("truth.cxi");
    let (dens, sup) = truth_file(&truth, &mut lcg, n, h, w, false);
    // a training set of 13 (one image all zero: skipped), in HDF5 and .npy
    let train = dir.join("train.cxi");
    let (tdens, _) = truth_file(&train, &mut lcg, 13, h, w, true);
    let train_npy = dir.join("train.npy");
    cdiphase::io::npy::write_f32(&train_npy, &[13, h, w], &tdens).unwrap();
    let l = h * w;

    // the mean image: a float64 sum in file order of |density| / max, as documented
    let mut acc = vec![0f64; l];
    let mut used = 0;
    for img in tdens.chunks(l) {
        let m = img.iter().fold(0f32, |a, v| a.max(v.abs()));
        if m > 0.0 {
            for (a, v) in acc.iter_mut().zip(img) {
                *a += (v.abs() / m) as f64;
            }
            used += 1;
        }
    }
    assert_eq!(used, 12);
    let mean: Vec<f32> = acc.iter().map(|a| (a / used as f64) as f32).collect();
    let mean_n = Stack::from_vec(n, h, w, mean.repeat(n)).unwrap();
    let t_mean = cdiphase::support::Method::MeanImage.default_threshold();
    let want_mean = cdiphase::support::threshold_supports(&mean_n, t_mean);
    // the oracle and the circle: the in-memory library functions on the whole file
    let dens_st = Stack::from_vec(n, h, w, dens.clone()).unwrap();
    let oracle = baselines::oracle(&dens_st, 1.5, true).unwrap();
    let t_oracle = cdiphase::support::Method::Oracle.default_threshold();
    let want_oracle = cdiphase::support::threshold_supports(&oracle, t_oracle);
    let sup_st = Stack::from_vec(n, h, w, sup.clone()).unwrap();
    let (want_circle, want_radii) = baselines::circle_of_extent(&sup_st, 0.5).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for block in [1, 4, n, n + 1] {
        let b = block.to_string();
        for from in [&train, &train_npy] {
            let out = dir.join(format!("mean-{block}.cxi"));
            ok(&[
                "support",
                p(&truth),
                "-o",
                p(&out),
                "--method",
                "mean-image",
                "--from",
                p(from),
                "--block",
                &b,
            ]);
            let (shape, v) = cdiphase::io::read_mask_nd(&out, "entry_1/image_1/support").unwrap();
            assert_eq!(shape, vec![n, h, w]);
            assert!(v == want_mean.data, "mean-image support, block {block}");
            let (_, img) = cdiphase::io::read_f32(&out, "entry_1/image_1/data").unwrap();
            assert!(
                bits(&img) == bits(&mean_n.data),
                "mean image of {}, block {block}",
                from.display()
            );
            std::fs::remove_file(&out).unwrap();
        }
        let out = dir.join(format!("oracle-{block}.cxi"));
        ok(&[
            "support",
            p(&truth),
            "-o",
            p(&out),
            "--method",
            "oracle",
            "--sigma",
            "1.5",
            "--block",
            &b,
        ]);
        let (_, v) = cdiphase::io::read_mask_nd(&out, "entry_1/image_1/support").unwrap();
        assert!(v == want_oracle.data, "oracle support, block {block}");
        let (_, img) = cdiphase::io::read_f32(&out, "entry_1/image_1/data").unwrap();
        assert!(bits(&img) == bits(&oracle.data), "oracle, block {block}");
        let out = dir.join(format!("circle-{block}.cxi"));
        let o = ok(&[
            "support",
            p(&truth),
            "-o",
            p(&out),
            "--method",
            "circle",
            "--margin",
            "0.5",
            "--block",
            &b,
            "--json",
        ]);
        let (_, v) = cdiphase::io::read_mask_nd(&out, "entry_1/image_1/support").unwrap();
        assert!(v == want_circle.data, "circle, block {block}");
        let r = radii_of(&out);
        assert!(
            r.iter()
                .map(|x| x.to_bits())
                .eq(want_radii.iter().map(|x| x.to_bits())),
            "radii, block {block}: {r:?} vs {want_radii:?}"
        );
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        // (JSON text: serde_json parses the last digit within an ulp)
        let jr = report["radius_px"].as_array().unwrap();
        assert_eq!(jr.len(), n);
        for (j, wr) in jr.iter().zip(&want_radii) {
            assert!((j.as_f64().unwrap() - wr).abs() < 1e-12, "{j} vs {wr}");
        }
        assert_eq!(report["blocks"], n.div_ceil(block));
    }
    // the mean image itself, read in windows of any size: the same bits
    let (m1, u1) = baselines::mean_image(&train, 1).unwrap();
    let (m5, u5) = baselines::mean_image(&train_npy, 5).unwrap();
    assert_eq!((u1, u5), (12, 12));
    assert!(bits(&m1.data) == bits(&mean) && bits(&m5.data) == bits(&mean));

    // errors name the file and the pattern counted in the file, whatever the block
    let mut bad_sup = sup.clone();
    bad_sup[5 * l..6 * l].iter_mut().for_each(|v| *v = 0);
    let mut bad_dens = dens.clone();
    bad_dens[6 * l + 3] = f32::NAN;
    let bad = dir.join("bad.cxi");
    let mut cw = cdiphase::io::CxiWriter::new();
    cw.f32("entry_1/sample_1/density", &[n, h, w], &bad_dens)
        .unwrap();
    cw.u8("entry_1/sample_1/support", &[n, h, w], &bad_sup)
        .unwrap();
    cw.finish(&bad).unwrap();
    let out = dir.join("x.cxi");
    for block in ["1", "4"] {
        let e = fails(&[
            "support",
            p(&bad),
            "-o",
            p(&out),
            "--method",
            "circle",
            "--block",
            block,
        ]);
        assert!(
            e.contains("bad.cxi") && e.contains("pattern 5") && e.contains("empty"),
            "{e}"
        );
        let e = fails(&[
            "support",
            p(&bad),
            "-o",
            p(&out),
            "--method",
            "oracle",
            "--sigma",
            "1",
            "--block",
            block,
        ]);
        assert!(
            e.contains("bad.cxi") && e.contains(&format!("value {} is not finite", 6 * l + 3)),
            "{e}"
        );
        let e = fails(&[
            "support",
            p(&truth),
            "-o",
            p(&out),
            "--method",
            "mean-image",
            "--from",
            p(&bad),
            "--block",
            block,
        ]);
        assert!(
            e.contains("bad.cxi") && e.contains("image 6 value 3 is not finite"),
            "{e}"
        );
        assert!(!out.exists());
    }
    // an input without the ground truth the method needs: the message names it
    let e = fails(&[
        "support",
        p(&train_npy),
        "-o",
        p(&out),
        "--method",
        "circle",
    ]);
    assert!(e.contains("train.npy"), "{e}");
    let e = fails(&[
        "support",
        p(&truth),
        "-o",
        p(&out),
        "--method",
        "oracle",
        "--sigma",
        "65",
    ]);
    assert!(e.contains("sigma 65"), "{e}");
    assert!(!out.exists());
}

#[test]
fn killed_baseline_runs_resume_to_the_same_file() {
    // an oracle of a wide blur, one pattern a block: slow enough to be killed mid-run
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let mut lcg = Lcg::new("baseline resume");
    let truth = dir.join("truth.cxi");
    truth_file(&truth, &mut lcg, 400, 97, 90, false);
    let args = |out: &std::path::Path, sigma: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "support",
            p(&truth),
            "-o",
            p(out),
            "--method",
            "oracle",
            "--sigma",
            sigma,
            "--block",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    fn run(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let out = dir.join("out.cxi");
    let mut child = bin()
        .args(run(&args(&out, "15", &[])))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = dir.join(".out.cxi.cdiphase-journal");
    kill_after_journal_lines(&mut child, &journal, 5);
    assert!(!out.exists());
    // another blur is refused; the same flags resume
    let e = fails(&run(&args(&out, "14", &["--resume"])));
    assert!(e.contains("different configuration"), "{e}");
    let o = ok(&run(&args(&out, "15", &["--resume", "--json"])));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let resumed = report["resumed_blocks"].as_u64().unwrap();
    assert!((3..400).contains(&resumed), "resumed {resumed} blocks");
    let whole = dir.join("whole.cxi");
    ok(&run(&args(&whole, "15", &[])));
    assert!(
        std::fs::read(&whole).unwrap() == std::fs::read(&out).unwrap(),
        "the resumed file differs from the uninterrupted one"
    );
    no_leftovers(dir);
}

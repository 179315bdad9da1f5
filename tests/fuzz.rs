//! A fuzz harness on stable Rust for every parser of untrusted input: HDF5/CXI files (the
//! committed fixtures, mutated), the block-wise readers of pattern files and of per-pattern
//! `--support`/`--init` files (HDF5 of several types and layouts, `.npy`: windows at the
//! start, middle and end of what the mutated header declares), `.npy`, safetensors model
//! files with their metadata, and the schedule, shrinkwrap and support strings.
//!
//! Each target mutates its seeds with a seeded generator (bit flips, interesting bytes and
//! 64-bit values, truncation, splices, repeated slices) and runs the parser. The parser must
//! return `Ok` or `Err`: a panic is a failure (counted, and the input written to
//! `target/fuzz-failures/`), and an abort or a runaway allocation ends the process (the
//! harness runs under `CDIPHASE_MEMORY_LIMIT`, so declared sizes beyond 1 GiB are refused).
//! An input that runs for more than [`HANG`] is a hang: a watchdog writes it to
//! `target/fuzz-failures/` and ends the process with a failure.
//!
//! Time: `CDIPHASE_FUZZ_SECS` in total (default 40, shared by the targets); seed:
//! `CDIPHASE_TEST_SEED` (printed). `CDIPHASE_FUZZ_SECS=600 cargo test --release --test fuzz
//! -- --nocapture` is the long run.

mod common;

use common::Lcg;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn budget() -> Duration {
    let secs = std::env::var("CDIPHASE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(40.0);
    Duration::from_secs_f64(secs.max(0.5))
}

struct Mutator(Lcg);

impl Mutator {
    fn below(&mut self, n: usize) -> usize {
        ((self.0.next() * n as f64) as usize).min(n.saturating_sub(1))
    }

    /// One to eight mutations of `seed`; `focus`: prefer the first `focus` bytes (headers).
    fn mutate(&mut self, seed: &[u8], focus: usize) -> Vec<u8> {
        let mut v = seed.to_vec();
        let rounds = 1 + self.below(8);
        for _ in 0..rounds {
            if v.is_empty() {
                v.push(0);
            }
            let span = if focus > 0 && self.below(4) != 0 {
                focus.min(v.len())
            } else {
                v.len()
            };
            let at = self.below(span);
            match self.below(9) {
                0 => v[at] ^= 1 << self.below(8),
                1 => v[at] = [0u8, 0xff, 0x7f, 0x80, 1, 2, 0x10, 0x40][self.below(8)],
                2 => {
                    let vals: [u64; 8] = [
                        0,
                        1,
                        u64::MAX,
                        u64::MAX - 1,
                        1 << 32,
                        1 << 40,
                        1_000_000_000,
                        0x7fff_ffff,
                    ];
                    let x = vals[self.below(8)].to_le_bytes();
                    let n = (v.len() - at).min(1 + self.below(8));
                    v[at..at + n].copy_from_slice(&x[..n]);
                }
                3 => {
                    let n = self.below(v.len() + 1);
                    v.truncate(n.max(1));
                }
                4 => {
                    // repeat a slice
                    let n = 1 + self.below(64.min(v.len() - at));
                    let s: Vec<u8> = v[at..at + n].to_vec();
                    let to = self.below(v.len());
                    v.splice(to..to, s);
                }
                5 => {
                    // delete a slice
                    let n = 1 + self.below(64.min(v.len() - at));
                    v.drain(at..at + n);
                }
                6 => {
                    // copy a slice elsewhere (overwrite)
                    let n = 1 + self.below(32.min(v.len() - at));
                    let s: Vec<u8> = v[at..at + n].to_vec();
                    let to = self.below(v.len());
                    let m = n.min(v.len() - to);
                    v[to..to + m].copy_from_slice(&s[..m]);
                }
                7 => {
                    let x = (self.0.next() * 256.0) as u8;
                    v[at] = v[at].wrapping_add(x);
                }
                _ => {
                    // a digit or a punctuation of the text formats
                    let t = b"0123456789*+()-:=,.eE \x00\"{}[]x";
                    v[at] = t[self.below(t.len())];
                }
            }
        }
        v
    }
}

/// Runs `f` on mutations of `seeds` for `time`; returns (inputs tried, panics).
fn fuzz(
    name: &str,
    seeds: &[Vec<u8>],
    focus: usize,
    time: Duration,
    f: &mut dyn FnMut(&[u8]),
) -> (u64, u64) {
    let mut m = Mutator(Lcg::new(&format!("fuzz-{name}")));
    let t = Instant::now();
    let (mut tried, mut panics) = (0u64, 0u64);
    // the seeds themselves first
    for s in seeds {
        tried += 1;
        if catch_unwind(AssertUnwindSafe(|| f(s))).is_err() {
            panics += 1;
        }
    }
    while t.elapsed() < time {
        let s = &seeds[m.below(seeds.len())];
        let input = m.mutate(s, focus);
        tried += 1;
        if catch_unwind(AssertUnwindSafe(|| f(&input))).is_err() {
            panics += 1;
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(dir.join(format!("{name}-{tried}")), &input);
        }
    }
    eprintln!(
        "fuzz {name}: {tried} inputs in {:.1} s, {panics} panics",
        t.elapsed().as_secs_f64()
    );
    (tried, panics)
}

/// One input running longer than this is reported as a hang (the slowest seen: well under
/// a second, a whole-file fallback of a mutated chunked file).
const HANG: Duration = Duration::from_secs(60);

/// A watchdog over the input in flight (`start(name, input)` before each parse; the guard
/// it returns ends the watch); an input in flight for longer than [`HANG`] is written to
/// `target/fuzz-failures/NAME-hang` and the process exits with status 101 (a parser that
/// never returns cannot be unwound).
struct Watchdog {
    current: std::sync::Arc<std::sync::Mutex<Option<Watched>>>,
}

/// The target's name, when its input started, and the input.
type Watched = (String, Instant, Vec<u8>);

impl Watchdog {
    fn new() -> Watchdog {
        let current: std::sync::Arc<std::sync::Mutex<Option<Watched>>> = Default::default();
        let c = current.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            let g = c.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((name, t, input)) = &*g {
                if t.elapsed() > HANG {
                    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
                    let _ = std::fs::create_dir_all(&dir);
                    let f = dir.join(format!("{name}-hang"));
                    let _ = std::fs::write(&f, input);
                    eprintln!(
                        "fuzz {name}: an input ran for more than {HANG:?} (a hang): {}",
                        f.display()
                    );
                    std::process::exit(101);
                }
            }
        });
        Watchdog { current }
    }

    /// Watch `input` until the guard is dropped (a panic unwinding through it included).
    fn start<'a>(&'a self, name: &str, input: &[u8]) -> InFlight<'a> {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((name.to_string(), Instant::now(), input.to_vec()));
        InFlight(self)
    }
}

struct InFlight<'a>(&'a Watchdog);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        *self.0.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Windows of `block` images over `n` declared ones: the first, one in the middle and the
/// last (a mutated header may declare billions: every window would never end).
fn windows(n: usize, block: usize) -> Vec<std::ops::Range<usize>> {
    let w = |first: usize| first..(first + block).min(n);
    let mut v = vec![w(0)];
    if n > block {
        v.push(w(n / 2));
        v.push(w(n - block));
    }
    v
}

/// Every block-wise reader on `path`: the patterns (masked and not) and the per-pattern
/// supports and objects, opened and read by windows of 1, 2 and 3 images (results
/// ignored: only panics and hangs matter).
fn read_blocks(path: &Path) {
    use cdiphase::io::blocks::{ImageBlocks, PatternBlocks};
    for block in [1, 2, 3] {
        if let Ok(p) = PatternBlocks::open(path, None) {
            for r in windows(p.n, block) {
                let _ = p.read(r);
            }
        }
        if let Ok(p) = PatternBlocks::open_unmasked(path, "entry_1/image_1/data") {
            for r in windows(p.n, block) {
                let _ = p.read(r);
            }
        }
        if let Ok(s) = ImageBlocks::open_support(path, None) {
            for r in windows(s.n, block) {
                let _ = s.read(r);
            }
        }
        if let Ok(o) = ImageBlocks::open_object(path, None) {
            for r in windows(o.n, block) {
                let _ = o.read(r);
            }
        }
    }
}

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(p)
}

/// Every reader of a CXI/HDF5 file on `path` (results ignored: only panics matter);
/// returns how many errors report a panic of the HDF5 crate contained by `io::hdf5`'s guard
/// (a clean error for the user, counted apart).
fn read_all_hdf5(path: &Path) -> u64 {
    use cdiphase::io;
    let contained = |r: Result<(), String>| u64::from(r.is_err_and(|e| e.contains("panicked")));
    let e = |r: cdiphase::Result<()>| r.map_err(|e| e.to_string());
    contained(e(io::read_patterns(path, None).map(drop)))
        + contained(e(io::read_support(path, None).map(drop)))
        + contained(e(io::read_object(path, None).map(drop)))
        + contained(e(io::list_datasets(path).map(drop)))
        + contained(e(io::read_string(path, "entry_1/sample_1/name").map(drop)))
        + contained(e(io::read_f32(path, "entry_1/data_1/data").map(drop)))
        + contained(e(io::for_each_rows_f32(
            path,
            "entry_1/sample_1/density",
            2,
            &mut |_, _, _| Ok(()),
        )
        .map(drop)))
        + contained(e(cdiphase::eval::read_truth(path).map(drop)))
}

#[test]
fn parsers_never_panic_or_abort() {
    // SAFETY of the environment: set before any thread of this test binary reads it
    std::env::set_var("CDIPHASE_MEMORY_LIMIT", "1G");
    // panics are counted, not printed (thousands of contained HDF5 crate panics otherwise)
    std::panic::set_hook(Box::new(|_| {}));
    let total = budget();
    let share = |k: u32| total * k / 10;
    let dir = tempfile::tempdir().unwrap();
    let mut report = Vec::new();

    // HDF5 / CXI: the committed h5py fixtures and a file of our own writer
    let own = dir.path().join("own.cxi");
    {
        let mut w = cdiphase::io::CxiWriter::new();
        w.f32("entry_1/data_1/data", &[2, 8, 8], &[1.0; 128])
            .unwrap();
        w.u8("entry_1/data_1/mask", &[8, 8], &[0; 64]).unwrap();
        w.complex64(
            "entry_1/image_1/data",
            &[2, 8, 8],
            &[cdiphase::array::Complex32::new(1.0, 0.5); 128],
        )
        .unwrap();
        w.u8("entry_1/image_1/support", &[2, 8, 8], &[1; 128])
            .unwrap();
        w.string("entry_1/sample_1/name", "a\nb").unwrap();
        w.finish(&own).unwrap();
    }
    let mut seeds: Vec<Vec<u8>> = [
        "fixture_v0.h5",
        "fixture_v3.cxi",
        "hostile/float16.cxi",
        "hostile/huge_chunked.cxi",
        "hostile/softlink.cxi",
    ]
    .iter()
    .map(|f| std::fs::read(data(f)).unwrap())
    .collect();
    seeds.push(std::fs::read(&own).unwrap());
    let file = dir.path().join("f.cxi");
    let mut contained = 0;
    report.push((
        "hdf5",
        fuzz("hdf5", &seeds, 0, share(3), &mut |b| {
            std::fs::write(&file, b).unwrap();
            contained += read_all_hdf5(&file);
        }),
    ));
    eprintln!(
        "hdf5: {contained} reads stopped by a contained panic of the HDF5 crate (clean errors)"
    );

    // block-wise readers of per-pattern files (issue 18): supports and objects of 5
    // patterns of 7x6 in HDF5 (contiguous, and gzip-chunked), float, integer and complex,
    // and in .npy; patterns with a per-pattern mask
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    let (n, h, w) = (5usize, 7usize, 6usize);
    let l = n * h * w;
    let disc: Vec<u8> = (0..l).map(|i| u8::from(i % 5 < 3)).collect();
    let obj: Vec<cdiphase::array::Complex32> = (0..l)
        .map(|i| cdiphase::array::Complex32::new(i as f32 * 0.25, -(i as f32)))
        .collect();
    for gzip in [None, Some(1)] {
        let f = dir.path().join("per.cxi");
        let mut cw = cdiphase::io::CxiWriter::new();
        cw.set_gzip(gzip);
        cw.f32(
            "entry_1/data_1/data",
            &[n, h, w],
            &disc.iter().map(|&v| f32::from(v) * 3.5).collect::<Vec<_>>(),
        )
        .unwrap();
        cw.u8("entry_1/data_1/mask", &[n, h, w], &disc).unwrap();
        cw.u8("entry_1/image_1/support", &[n, h, w], &disc).unwrap();
        cw.complex64("entry_1/image_1/data", &[n, h, w], &obj)
            .unwrap();
        cw.finish(&f).unwrap();
        seeds.push(std::fs::read(&f).unwrap());
        let f = dir.path().join("per_f.cxi");
        let mut cw = cdiphase::io::CxiWriter::new();
        cw.set_gzip(gzip);
        cw.f32(
            "entry_1/image_1/support",
            &[n, h, w],
            &disc.iter().map(|&v| f32::from(v)).collect::<Vec<_>>(),
        )
        .unwrap();
        cw.finish(&f).unwrap();
        seeds.push(std::fs::read(&f).unwrap());
    }
    // one shared image (H,W): a support and an object, and the committed hostile file
    // that declares one image of 10^9 x 10^9
    let f = dir.path().join("shared.cxi");
    let mut cw = cdiphase::io::CxiWriter::new();
    cw.u8("entry_1/image_1/support", &[h, w], &disc[..h * w])
        .unwrap();
    cw.complex64("entry_1/image_1/data", &[h, w], &obj[..h * w])
        .unwrap();
    cw.finish(&f).unwrap();
    seeds.push(std::fs::read(&f).unwrap());
    seeds.push(std::fs::read(data("hostile/huge_chunked.cxi")).unwrap());
    let hdf5_seeds = seeds.len();
    let f = dir.path().join("per.npy");
    cdiphase::io::npy::write_u8(&f, &[n, h, w], &disc).unwrap();
    seeds.push(std::fs::read(&f).unwrap());
    cdiphase::io::npy::write_complex64(&f, &[n, h, w], &obj).unwrap();
    seeds.push(std::fs::read(&f).unwrap());
    cdiphase::io::npy::write_f32(
        &f,
        &[n, h, w],
        &disc.iter().map(|&v| f32::from(v)).collect::<Vec<_>>(),
    )
    .unwrap();
    seeds.push(std::fs::read(&f).unwrap());
    let (hseeds, nseeds) = seeds.split_at(hdf5_seeds);
    let watchdog = Watchdog::new();
    let per_cxi = dir.path().join("b.cxi");
    report.push((
        "blocks-hdf5",
        fuzz("blocks-hdf5", hseeds, 0, share(2), &mut |b| {
            std::fs::write(&per_cxi, b).unwrap();
            let _watch = watchdog.start("blocks-hdf5", b);
            read_blocks(&per_cxi);
        }),
    ));
    let per_npy = dir.path().join("b.npy");
    report.push((
        "blocks-npy",
        fuzz("blocks-npy", nseeds, 128, share(1), &mut |b| {
            std::fs::write(&per_npy, b).unwrap();
            let _watch = watchdog.start("blocks-npy", b);
            read_blocks(&per_npy);
        }),
    ));

    // NPY
    let npy = |shape: &[usize], descr_f32: bool| {
        let p = dir.path().join("s.npy");
        let n: usize = shape.iter().product();
        if descr_f32 {
            cdiphase::io::npy::write_f32(&p, shape, &vec![1.5; n]).unwrap();
        } else {
            cdiphase::io::npy::write_u8(&p, shape, &vec![1; n]).unwrap();
        }
        std::fs::read(&p).unwrap()
    };
    let seeds = vec![npy(&[2, 4, 4], true), npy(&[4, 4], false), npy(&[3], true)];
    report.push((
        "npy",
        fuzz("npy", &seeds, 128, share(1), &mut |b| {
            if let Ok(a) = cdiphase::io::npy::parse(Path::new("f.npy"), b) {
                let _ = (a.to_f32(), a.to_mask(), a.to_complex32());
            }
        }),
    ));

    // safetensors model files with their metadata (spec JSON), a small network
    let spec = cdiphase::nn::presets::spinn(16, 0.05, Default::default()).unwrap();
    let model = cdiphase::nn::Model::random(spec, 1).unwrap();
    let st = cdiphase::nn::store::to_bytes(&model, cdiphase::nn::store::WeightDtype::F16).unwrap();
    let header = 8 + u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    report.push((
        "safetensors",
        fuzz("safetensors", &[st], header, share(2), &mut |b| {
            if let Ok(m) = cdiphase::nn::store::from_bytes(Path::new("m.safetensors"), b) {
                let _ = m.spec.shapes();
                let _ = m.spec.check_memory(4);
            }
        }),
    ));

    // schedules, shrinkwrap and support strings
    let seeds: Vec<Vec<u8>> = [
        "2000*(5*HIO + 5*ER)",
        "100*(SW + 50*HIO) + 200*ER",
        "RAAR(0.8)**500",
        "sigma=3:1,threshold=0.05:0.15,every=20,start=10,stop=900",
        "autocorrelation:0.04",
        "circle:12.5",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    report.push((
        "strings",
        fuzz("strings", &seeds, 0, share(1), &mut |b| {
            let s = String::from_utf8_lossy(b);
            if let Ok(sc) = cdiphase::phasing::schedule::Schedule::parse(&s) {
                let sw = cdiphase::phasing::program::ShrinkwrapConfig {
                    every: 7,
                    ..Default::default()
                };
                let _ = cdiphase::phasing::program::Program::compile(
                    &sc,
                    0.9,
                    &sw,
                    cdiphase::phasing::program::Recording::EndOfErSections,
                );
            }
            let _ = cdiphase::phasing::program::ShrinkwrapConfig::parse(&s);
            let _ = cdiphase::phasing::SupportSpec::parse_builtin(&s);
        }),
    ));

    let mut failed = false;
    for (name, (tried, panics)) in &report {
        eprintln!("{name}: {tried} inputs, {panics} panics");
        failed |= *panics > 0;
    }
    assert!(!failed, "panics found: inputs in target/fuzz-failures/");
}

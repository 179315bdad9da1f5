//! `cdiphase bench network`: images per second of the CPU engine on one model, batch and
//! thread count (wall clock, best of the timed iterations; the first batch is a warm-up).

use std::time::Instant;

use crate::backend::cpu::nn::{Mode, Network, Options, Runner};
use crate::nn::Model;
use crate::Result;

/// What was measured (the JSON keys are relied on by benches/ scripts).
#[derive(Clone, Debug, serde::Serialize)]
pub struct NetworkBenchResult {
    pub model: String,
    pub images_per_s: f64,
    pub ms_per_batch: f64,
    /// median over the timed iterations
    pub ms_per_batch_median: f64,
    pub batch: usize,
    pub threads: usize,
    pub mode: String,
    pub iterations: usize,
    pub params: usize,
    pub gflop_per_image: f64,
    /// achieved GFLOP/s (layer FLOPs as defined, 2 per multiply-add)
    pub gflop_per_s: f64,
    /// VmHWM of the process (bytes), None where /proc is unavailable
    pub peak_rss_bytes: Option<u64>,
    /// activation arena + thread scratch bytes / batch
    pub bytes_per_image: f64,
    /// CPU seconds of the process per timed batch (all threads), and that over
    /// (wall seconds x threads): below 1 when the machine is shared and the threads wait
    pub cpu_s_per_batch: Option<f64>,
    pub cpu_share: Option<f64>,
    /// every mode but f32-direct: max|y - y_direct| / max|y_direct| on the benchmark's
    /// input, against the exact direct f32 kernels
    pub fast_max_rel_err: Option<f64>,
    /// per layer: (name, ms per batch, algorithm), mean over the timed batches
    pub layers: Vec<(String, f64, String)>,
}

/// CPU seconds (user + system) of this process so far, from /proc/self/stat.
pub fn process_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // fields after the parenthesised command name: state is field 3; utime 14, stime 15
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / 100.0)
}

/// Peak resident set size (VmHWM) of this process, bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Deterministic input in [0, 1] (a smooth pattern plus hash noise), n images.
pub fn bench_input(net: &Network, n: usize, seed: u64) -> Vec<f32> {
    let len = net.input_len();
    (0..n * len)
        .map(|i| {
            let mut z =
                (i as u64 ^ seed.wrapping_mul(0x9E3779B97F4A7C15)).wrapping_mul(0xBF58476D1CE4E5B9);
            z ^= z >> 31;
            let noise = (z >> 40) as f32 / (1u64 << 24) as f32;
            let p = (i % len) as f32 / len as f32;
            0.5 * noise + 0.5 * (p * 37.0).sin().abs()
        })
        .collect()
}

/// Time `iterations` batches of `batch` images (after one warm-up batch).
pub fn bench_network(
    model: &Model,
    batch: usize,
    threads: usize,
    iterations: usize,
    mode: Mode,
) -> Result<NetworkBenchResult> {
    let batch = batch.max(1);
    let net = Network::new(model, mode)?;
    let opts = Options {
        threads,
        mode,
        poison: false,
    };
    let x = bench_input(&net, batch, 7);
    let mut r = Runner::new(&net, batch, opts)?;
    r.run(&x, batch)?;
    r.reset_profile();
    let mut times = Vec::new();
    let cpu0 = process_cpu_seconds();
    let wall0 = Instant::now();
    for _ in 0..iterations.max(1) {
        let t = Instant::now();
        let y = r.run(&x, batch)?;
        std::hint::black_box(y);
        times.push(t.elapsed().as_secs_f64());
    }
    let wall = wall0.elapsed().as_secs_f64();
    let cpu_s_per_batch = match (cpu0, process_cpu_seconds()) {
        (Some(a), Some(b)) => Some((b - a) / times.len() as f64),
        _ => None,
    };
    let cpu_share = cpu_s_per_batch.map(|c| c * times.len() as f64 / (wall * threads as f64));
    let layers = r
        .profile()
        .into_iter()
        .map(|(n, t, a)| (n, t * 1e3 / times.len() as f64, a.to_string()))
        .collect();
    let fast_out = r.run(&x, batch)?.to_vec();
    let arena = r.arena_bytes();
    drop(r);
    let fast_max_rel_err = if mode != Mode::F32Direct {
        let net32 = Network::new(model, Mode::F32Direct)?;
        let mut r32 = Runner::new(
            &net32,
            batch,
            Options {
                mode: Mode::F32Direct,
                ..opts
            },
        )?;
        let y = r32.run(&x, batch)?;
        let mx = y.iter().fold(0.0f64, |a, &b| a.max(b.abs() as f64));
        let e = y
            .iter()
            .zip(&fast_out)
            .fold(0.0f64, |a, (&p, &q)| a.max((p as f64 - q as f64).abs()));
        Some(e / mx.max(f64::MIN_POSITIVE))
    } else {
        None
    };
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let best = times[0];
    let median = times[times.len() / 2];
    Ok(NetworkBenchResult {
        model: net.spec.name.clone(),
        images_per_s: batch as f64 / best,
        ms_per_batch: best * 1e3,
        ms_per_batch_median: median * 1e3,
        batch,
        threads,
        mode: mode.name().to_string(),
        iterations: times.len(),
        params: net.params,
        gflop_per_image: net.flop_per_image / 1e9,
        gflop_per_s: net.flop_per_image * batch as f64 / best / 1e9,
        peak_rss_bytes: peak_rss_bytes(),
        bytes_per_image: arena as f64 / batch as f64,
        cpu_s_per_batch,
        cpu_share,
        fast_max_rel_err,
        layers,
    })
}

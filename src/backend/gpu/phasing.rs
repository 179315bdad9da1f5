//! The phasing run of the GPU backends, written once against the [`Launcher`] seam: CUDA
//! runs it on the GPU with cuFFT, the emulator as host C++ with rustfft. The kernels are
//! `kernels/phasing.cu`, launched through their typed wrappers ([`PhasingKernels`], one
//! method per kernel: launch shape and argument list).
//!
//! A phasing run keeps every (pattern, start) item of a chunk on the device for the whole
//! program: per iteration two batched FFTs and two kernels (`cd_modulus_project`,
//! `cd_support_update`); the error reductions leave one partial per block and are finished on
//! the device (`cd_record_errors`) only when the program records, so nothing crosses the bus
//! between the upload of the starting state and the download of the results. Batches larger
//! than the device's memory budget are processed in chunks of whole patterns.

use super::launcher::{DevBuf, DevPtr, Dims, KArg, Launcher, BLOCK, MAX_DYN_SHARED, MAX_ITEMS};
use crate::array::{Complex32, Stack};
use crate::backend::Progress;
use crate::phasing::problem::{PhasingOutput, PhasingProblem};
use crate::phasing::program::{Constraint, Op, Program};
use crate::phasing::schedule::Algorithm;
use crate::{Error, Result};

/// Most blocks per item of the element-wise kernels (they stride over larger images).
pub const MAX_BLOCKS_PER_ITEM: usize = 64;
/// Blocks per item of the element-wise kernels for images of `l` pixels.
pub fn blocks_per_item(l: usize) -> usize {
    l.div_ceil(BLOCK as usize).clamp(1, MAX_BLOCKS_PER_ITEM)
}

/// The support-update rule `g' inside, a*g + b*g' outside` as (a, b), as in the CPU backend.
pub fn coefficients(alg: Algorithm, beta: f32) -> (f32, f32) {
    match alg {
        Algorithm::ER => (0.0, 0.0),
        Algorithm::HIO => (1.0, -beta),
        Algorithm::RAAR => (beta, 1.0 - 2.0 * beta),
    }
}

/// Constraint code of the kernels.
pub fn constraint_code(c: Constraint) -> i32 {
    match c {
        Constraint::None => 0,
        Constraint::Real => 1,
        Constraint::Positive => 2,
    }
}

/// The normalised 1-D Gaussian of the shrinkwrap blur, radius ceil(4 sigma): the same
/// weights (computed in f64, rounded to f32) as the CPU backend's.
pub fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    if sigma <= 0.0 {
        return vec![1.0];
    }
    let r = (4.0 * sigma).ceil() as i64;
    let v: Vec<f64> = (-r..=r)
        .map(|i| (-(i as f64).powi(2) / (2.0 * (sigma as f64).powi(2))).exp())
        .collect();
    let sum: f64 = v.iter().sum();
    v.iter().map(|x| (x / sum) as f32).collect()
}

fn dims(grid: [u32; 3], block: u32, shmem: usize) -> Dims {
    Dims {
        grid,
        block: [block, 1, 1],
        shmem: shmem as u32,
    }
}

/// The device buffers and launch shapes of one chunk of items.
pub struct PhasingKernels<'a> {
    pub l: &'a dyn Launcher,
    pub h: usize,
    pub w: usize,
    pub items: usize,
    pub starts: usize,
    pub bpi: usize,
}

impl<'a> PhasingKernels<'a> {
    pub fn new(l: &'a dyn Launcher, h: usize, w: usize, items: usize, starts: usize) -> Self {
        PhasingKernels {
            l,
            h,
            w,
            items,
            starts,
            bpi: blocks_per_item(h * w),
        }
    }

    fn grid(&self) -> [u32; 3] {
        [self.bpi as u32, self.items as u32, 1]
    }

    /// `cd_modulus_project` on `f` (items x L complex), partials into `pf` (items x bpi).
    pub fn modulus(&self, f: DevPtr, amp: DevPtr, project: bool, pf: DevPtr) -> Result<()> {
        self.l.launch(
            "cd_modulus_project",
            dims(self.grid(), BLOCK, 0),
            &[
                KArg::Ptr(f),
                KArg::Ptr(amp),
                KArg::I32((self.h * self.w) as i32),
                KArg::I32(self.starts as i32),
                KArg::I32(project as i32),
                KArg::Ptr(pf),
            ],
        )
    }

    /// `cd_support_update`, partials into `pr` (items x bpi x 2).
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        g: DevPtr,
        gp: DevPtr,
        sup: DevPtr,
        a: f32,
        b: f32,
        constraint: Constraint,
        scale: f32,
        pr: DevPtr,
    ) -> Result<()> {
        self.l.launch(
            "cd_support_update",
            dims(self.grid(), BLOCK, 0),
            &[
                KArg::Ptr(g),
                KArg::Ptr(gp),
                KArg::Ptr(sup),
                KArg::I32((self.h * self.w) as i32),
                KArg::F32(a),
                KArg::F32(b),
                KArg::I32(constraint_code(constraint)),
                KArg::F32(scale),
                KArg::Ptr(pr),
            ],
        )
    }

    /// `cd_record_errors`: entry `rec` of the `records`-long histories.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        pf: DevPtr,
        pr: DevPtr,
        sum_a2: DevPtr,
        records: usize,
        rec: usize,
        fourier: DevPtr,
        real: DevPtr,
    ) -> Result<()> {
        let bpi_r = if pr == DevPtr::NULL { 0 } else { self.bpi };
        self.l.launch(
            "cd_record_errors",
            dims([(self.items as u32).div_ceil(128), 1, 1], 128, 0),
            &[
                KArg::Ptr(pf),
                KArg::I32(self.bpi as i32),
                KArg::Ptr(pr),
                KArg::I32(bpi_r as i32),
                KArg::Ptr(sum_a2),
                KArg::I32(self.items as i32),
                KArg::I32(self.starts as i32),
                KArg::I32(records as i32),
                KArg::I32(rec as i32),
                KArg::Ptr(fourier),
                KArg::Ptr(real),
            ],
        )
    }

    /// The three shrinkwrap passes: `tmp` and `mag` are items x L floats each (they may live
    /// in the FFT buffer, which is free between iterations), `pmax` items x bpi, `kern` the
    /// uploaded Gaussian of `klen` taps.
    #[allow(clippy::too_many_arguments)]
    pub fn shrinkwrap(
        &self,
        g: DevPtr,
        sup: DevPtr,
        kern: DevPtr,
        klen: usize,
        threshold: f32,
        tmp: DevPtr,
        mag: DevPtr,
        pmax: DevPtr,
    ) -> Result<()> {
        let (h, w) = (self.h, self.w);
        let row_shmem = (w + klen) * 4;
        if row_shmem > MAX_DYN_SHARED {
            return Err(Error::Config(format!(
                "shrinkwrap on the {} device: an image row of {w} px with a {klen}-tap blur needs \
                 {row_shmem} bytes of shared memory (limit {MAX_DYN_SHARED}); use a smaller sigma",
                self.l.name()
            )));
        }
        let row_threads = (w.div_ceil(32) * 32).min(BLOCK as usize) as u32;
        self.l.launch(
            "cd_sw_blur_rows",
            dims([h as u32, self.items as u32, 1], row_threads, row_shmem),
            &[
                KArg::Ptr(g),
                KArg::I32(h as i32),
                KArg::I32(w as i32),
                KArg::Ptr(kern),
                KArg::I32(klen as i32),
                KArg::Ptr(tmp),
            ],
        )?;
        self.l.launch(
            "cd_sw_blur_cols",
            dims(self.grid(), BLOCK, klen * 4),
            &[
                KArg::Ptr(tmp),
                KArg::I32(h as i32),
                KArg::I32(w as i32),
                KArg::Ptr(kern),
                KArg::I32(klen as i32),
                KArg::Ptr(mag),
                KArg::Ptr(pmax),
            ],
        )?;
        self.l.launch(
            "cd_sw_threshold",
            dims(self.grid(), BLOCK, 0),
            &[
                KArg::Ptr(mag),
                KArg::I32((h * w) as i32),
                KArg::Ptr(pmax),
                KArg::I32(self.bpi as i32),
                KArg::F32(threshold),
                KArg::Ptr(sup),
            ],
        )
    }
}

/// An FFT plan destroyed on drop.
struct Plan<'a> {
    l: &'a dyn Launcher,
    id: u64,
}

impl Drop for Plan<'_> {
    fn drop(&mut self) {
        self.l.fft_destroy(self.id);
    }
}

/// Device bytes per pattern of a run (amplitudes, and per start the iterate, the FFT buffer,
/// the support and the partial sums).
fn bytes_per_pattern(l: usize, starts: usize, bpi: usize, records: usize) -> usize {
    4 * l + 8 + starts * (8 * l + 8 * l + l + 16 * bpi + 8 * records + 8)
}

/// Run a compiled program on every item of `problem` through `launcher`.
pub fn run_phasing(
    launcher: &dyn Launcher,
    problem: &PhasingProblem,
    program: &Program,
    progress: Progress<'_>,
) -> Result<PhasingOutput> {
    let (n, h, w, k) = (problem.n, problem.h, problem.w, problem.starts);
    let l = h * w;
    if n == 0 || k == 0 || l == 0 {
        return Err(Error::Config(format!(
            "nothing to phase: {n} patterns x {k} starts of {h}x{w}"
        )));
    }
    if l > i32::MAX as usize / 2 || k > MAX_ITEMS {
        return Err(Error::Config(format!(
            "{h}x{w} images with {k} starts exceed the {} device's index range",
            launcher.name()
        )));
    }
    let records = program.records;
    let per = bytes_per_pattern(l, k, blocks_per_item(l), records);
    let chunk = (launcher.memory_budget() / per).clamp(1, (MAX_ITEMS / k).max(1));
    let chunk = chunk.min(n);
    if launcher.memory_budget() < per {
        return Err(Error::Config(format!(
            "one {h}x{w} pattern with {k} starts needs {per} bytes, more than the {} device's {} bytes",
            launcher.name(),
            launcher.memory_budget()
        )));
    }
    let mut out = ChunkOutputs::default();
    let mut p0 = 0;
    while p0 < n {
        let p1 = (p0 + chunk).min(n);
        run_chunk(launcher, problem, program, p0, p1, progress, &mut out)?;
        p0 = p1;
    }
    // Best start per pattern: lowest final error (NaN counts as +inf), ties to the lower start.
    let key = |e: f32| if e.is_nan() { f32::INFINITY } else { e };
    let mut best_start = Vec::with_capacity(n);
    let mut objects = Vec::with_capacity(n * l);
    let mut supports = Vec::with_capacity(n * l);
    for p in 0..n {
        let mut b = 0;
        for s in 1..k {
            if key(out.final_err[p * k + s]) < key(out.final_err[p * k + b]) {
                b = s;
            }
        }
        best_start.push(b);
        let i = p * k + b;
        objects.extend_from_slice(&out.g[i * l..(i + 1) * l]);
        supports.extend_from_slice(&out.s[i * l..(i + 1) * l]);
    }
    let keep = problem.keep_all;
    Ok(PhasingOutput {
        best_start,
        objects: Stack::from_vec(n, h, w, objects)?,
        supports: Stack::from_vec(n, h, w, supports)?,
        all_objects: keep.then_some(out.g),
        all_supports: keep.then_some(out.s),
        fourier_error: out.hist_f,
        real_error: out.hist_r,
        final_fourier_error: out.final_err,
        records,
    })
}

#[derive(Default)]
struct ChunkOutputs {
    g: Vec<Complex32>,
    s: Vec<u8>,
    hist_f: Vec<f32>,
    hist_r: Vec<f32>,
    final_err: Vec<f32>,
}

fn run_chunk(
    launcher: &dyn Launcher,
    problem: &PhasingProblem,
    program: &Program,
    p0: usize,
    p1: usize,
    progress: Progress<'_>,
    out: &mut ChunkOutputs,
) -> Result<()> {
    let (h, w, k) = (problem.h, problem.w, problem.starts);
    let l = h * w;
    let np = p1 - p0;
    let items = np * k;
    let records = program.records;
    let lk = PhasingKernels::new(launcher, h, w, items, k);
    let bpi = lk.bpi;
    // Starting state, prepared on the host exactly as for the CPU backend.
    let mut g0 = vec![Complex32::new(f32::NAN, f32::NAN); items * l];
    let mut s0 = vec![0xA5u8; items * l];
    for (i, (g, s)) in g0.chunks_mut(l).zip(s0.chunks_mut(l)).enumerate() {
        problem.initial_state(p0 + i / k, i % k, g, s);
    }
    let amp = DevBuf::from_slice(launcher, &problem.amplitudes[p0 * l..p1 * l])?;
    let sum_a2 = DevBuf::from_slice(launcher, &problem.sum_a2[p0..p1])?;
    let g = DevBuf::from_slice(launcher, &g0)?;
    let s = DevBuf::from_slice(launcher, &s0)?;
    drop((g0, s0));
    let f = DevBuf::new(launcher, items * l * 8)?;
    let pf = DevBuf::new(launcher, items * bpi * 4)?;
    let pr = DevBuf::new(launcher, items * bpi * 8)?;
    let hist_f = DevBuf::new(launcher, (items * records).max(1) * 4)?;
    let hist_r = DevBuf::new(launcher, (items * records).max(1) * 4)?;
    let fin = DevBuf::new(launcher, items * 4)?;
    let plan = Plan {
        l: launcher,
        id: launcher.fft_plan(h, w, items)?,
    };
    let scale = 1.0 / l as f32;
    let mut rec = 0;
    for op in &program.ops {
        match *op {
            Op::Iterate {
                alg,
                beta,
                count,
                record,
            } => {
                let (a, b) = coefficients(alg, beta);
                for it in 0..count {
                    launcher.fft(plan.id, g.ptr, f.ptr, true)?;
                    lk.modulus(f.ptr, amp.ptr, true, pf.ptr)?;
                    launcher.fft(plan.id, f.ptr, f.ptr, false)?;
                    lk.update(g.ptr, f.ptr, s.ptr, a, b, problem.constraint, scale, pr.ptr)?;
                    if record && it + 1 == count {
                        lk.record(
                            pf.ptr, pr.ptr, sum_a2.ptr, records, rec, hist_f.ptr, hist_r.ptr,
                        )?;
                        rec += 1;
                    }
                    progress(items as u64);
                }
            }
            Op::Shrinkwrap { sigma, threshold } => {
                let kern = gaussian_kernel(sigma);
                let kb = DevBuf::from_slice(launcher, &kern)?;
                // |g|, its row blur and its column blur live in the FFT buffer (free here).
                let (tmp, mag) = (f.ptr, f.ptr.offset(items * l * 4));
                lk.shrinkwrap(
                    g.ptr,
                    s.ptr,
                    kb.ptr,
                    kern.len(),
                    threshold,
                    tmp,
                    mag,
                    pf.ptr,
                )?;
            }
        }
    }
    debug_assert_eq!(rec, records);
    // Final Fourier error of each item's final object.
    launcher.fft(plan.id, g.ptr, f.ptr, true)?;
    lk.modulus(f.ptr, amp.ptr, false, pf.ptr)?;
    lk.record(
        pf.ptr,
        DevPtr::NULL,
        sum_a2.ptr,
        1,
        0,
        fin.ptr,
        DevPtr::NULL,
    )?;
    let base = out.g.len();
    out.g.resize(base + items * l, Complex32::new(0.0, 0.0));
    g.download(&mut out.g[base..])?;
    let base = out.s.len();
    out.s.resize(base + items * l, 0);
    s.download(&mut out.s[base..])?;
    if records > 0 {
        out.hist_f.extend(hist_f.to_vec::<f32>(items * records)?);
        out.hist_r.extend(hist_r.to_vec::<f32>(items * records)?);
    }
    out.final_err.extend(fin.to_vec::<f32>(items)?);
    Ok(())
}

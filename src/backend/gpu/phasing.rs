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

use super::launcher::{
    int_arg, DevBuf, DevPtr, Dims, KArg, Launcher, BLOCK, MAX_DYN_SHARED, MAX_ITEMS,
};
use crate::array::{Complex32, Stack};
use crate::backend::Progress;
use crate::phasing::problem::{FinalMerit, PhasingOutput, PhasingProblem};
use crate::phasing::program::{ml_eps, Constraint, Op, Program, Update};
use crate::{Error, Result};

/// Most blocks per item of the element-wise kernels (they stride over larger images).
pub const MAX_BLOCKS_PER_ITEM: usize = 64;
/// Blocks per item of the element-wise kernels for images of `l` pixels.
pub fn blocks_per_item(l: usize) -> usize {
    l.div_ceil(BLOCK as usize).clamp(1, MAX_BLOCKS_PER_ITEM)
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

/// The typed wrappers of the phasing kernels for one chunk of `items` (pattern, start)
/// items of h x w pixels: launch shapes, argument lists and the checks of every buffer
/// against what the kernel reads and writes (the contract of the `unsafe`
/// [`Launcher::launch`]).
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

    /// Pixels per image.
    fn len(&self) -> usize {
        self.h * self.w
    }

    /// The launch sizes fit the kernels: items and starts as grid dimensions, counts as
    /// 32-bit indices.
    fn check_shape(&self, kernel: &str) -> Result<()> {
        let l = self.len();
        if self.items == 0
            || self.items > MAX_ITEMS
            || self.starts == 0
            || !self.items.is_multiple_of(self.starts)
            || l > i32::MAX as usize
        {
            return Err(Error::Config(format!(
                "{kernel}: {} items of {} starts of {}x{} do not fit one launch",
                self.items, self.starts, self.h, self.w
            )));
        }
        Ok(())
    }

    /// Check `b` holds `n` values of `T` for argument `what` of `kernel`.
    fn buf<T>(&self, b: &DevBuf, n: usize, kernel: &str, what: &str) -> Result<()> {
        b.check::<T>(self.l, n, &format!("{kernel} {what}"))
    }

    /// `cd_modulus_project` on `f` (items x L complex) with the amplitudes `amp` (patterns
    /// x L), partials into `pf` (items x bpi).
    pub fn modulus(&self, f: &DevBuf, amp: &DevBuf, project: bool, pf: &DevBuf) -> Result<()> {
        const K: &str = "cd_modulus_project";
        self.check_shape(K)?;
        let (l, items) = (self.len(), self.items);
        self.buf::<Complex32>(f, items * l, K, "f")?;
        self.buf::<f32>(amp, items / self.starts * l, K, "amplitudes")?;
        self.buf::<f32>(pf, items * self.bpi, K, "partials")?;
        let args = [
            f.arg(),
            amp.arg(),
            KArg::I32(l as i32),
            KArg::I32(self.starts as i32),
            KArg::I32(project as i32),
            pf.arg(),
        ];
        // SAFETY: f (items x L complex), amp (items/starts x L) and pf (items x bpi, one per
        // block of the grid) were checked above, on this launcher; L fits an int.
        unsafe { self.l.launch(K, dims(self.grid(), BLOCK, 0), &args) }
    }

    /// `cd_support_update`, partials into `pr` (items x bpi x 2).
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        g: &DevBuf,
        gp: &DevBuf,
        sup: &DevBuf,
        a: f32,
        b: f32,
        constraint: Constraint,
        scale: f32,
        pr: &DevBuf,
    ) -> Result<()> {
        const K: &str = "cd_support_update";
        self.check_shape(K)?;
        let (l, items) = (self.len(), self.items);
        self.buf::<Complex32>(g, items * l, K, "g")?;
        self.buf::<Complex32>(gp, items * l, K, "g'")?;
        self.buf::<u8>(sup, items * l, K, "support")?;
        self.buf::<f32>(pr, items * self.bpi * 2, K, "partials")?;
        let args = [
            g.arg(),
            gp.arg(),
            sup.arg(),
            KArg::I32(l as i32),
            KArg::F32(a),
            KArg::F32(b),
            KArg::I32(constraint_code(constraint)),
            KArg::F32(scale),
            pr.arg(),
        ];
        // SAFETY: g, g' (items x L complex), sup (items x L) and pr (items x bpi x 2) were
        // checked above, on this launcher.
        unsafe { self.l.launch(K, dims(self.grid(), BLOCK, 0), &args) }
    }

    /// `cd_poisson_llk` on `f` (items x L complex, not modified) with the amplitudes `amp`
    /// (patterns x L), partials into `pl` (items x bpi x 2).
    pub fn llk(&self, f: &DevBuf, amp: &DevBuf, pl: &DevBuf) -> Result<()> {
        const K: &str = "cd_poisson_llk";
        self.check_shape(K)?;
        let (l, items) = (self.len(), self.items);
        self.buf::<Complex32>(f, items * l, K, "f")?;
        self.buf::<f32>(amp, items / self.starts * l, K, "amplitudes")?;
        self.buf::<f32>(pl, items * self.bpi * 2, K, "partials")?;
        let args = [
            f.arg(),
            amp.arg(),
            KArg::I32(l as i32),
            KArg::I32(self.starts as i32),
            pl.arg(),
        ];
        // SAFETY: f (items x L complex), amp (items/starts x L) and pl (items x bpi x 2, two
        // per block of the grid) were checked above, on this launcher; L fits an int.
        unsafe { self.l.launch(K, dims(self.grid(), BLOCK, 0), &args) }
    }

    /// `cd_record_llk`: entry `rec` of the `records`-long histories `llk` and `free_llk`
    /// from the partials `pl` and the per-pattern pixel counts `counts` (2 ints each).
    #[allow(clippy::too_many_arguments)]
    pub fn record_llk(
        &self,
        pl: &DevBuf,
        counts: &DevBuf,
        records: usize,
        rec: usize,
        llk: &DevBuf,
        free_llk: &DevBuf,
    ) -> Result<()> {
        const K: &str = "cd_record_llk";
        self.check_shape(K)?;
        let items = self.items;
        if rec >= records || records > i32::MAX as usize {
            return Err(Error::Config(format!(
                "{K}: entry {rec} of {records}-long histories"
            )));
        }
        self.buf::<f32>(pl, items * self.bpi * 2, K, "partials")?;
        self.buf::<i32>(counts, 2 * (items / self.starts), K, "pixel counts")?;
        self.buf::<f32>(llk, items * records, K, "log-likelihood history")?;
        self.buf::<f32>(free_llk, items * records, K, "free log-likelihood history")?;
        let args = [
            pl.arg(),
            KArg::I32(self.bpi as i32),
            counts.arg(),
            KArg::I32(items as i32),
            KArg::I32(self.starts as i32),
            KArg::I32(records as i32),
            KArg::I32(rec as i32),
            llk.arg(),
            free_llk.arg(),
        ];
        // SAFETY: pl (items x bpi x 2), counts (2 per pattern), llk and free_llk (items x
        // records each) were checked above, on this launcher; rec < records.
        unsafe {
            self.l
                .launch(K, dims([(items as u32).div_ceil(128), 1, 1], 128, 0), &args)
        }
    }

    /// `cd_record_errors`: entry `rec` of the `records`-long histories `fourier` and (with
    /// the real-space partials `pr`) `real`.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        pf: &DevBuf,
        pr: Option<&DevBuf>,
        sum_a2: &DevBuf,
        records: usize,
        rec: usize,
        fourier: &DevBuf,
        real: Option<&DevBuf>,
    ) -> Result<()> {
        const K: &str = "cd_record_errors";
        self.check_shape(K)?;
        let items = self.items;
        if rec >= records || records > i32::MAX as usize {
            return Err(Error::Config(format!(
                "{K}: entry {rec} of {records}-long histories"
            )));
        }
        self.buf::<f32>(pf, items * self.bpi, K, "Fourier partials")?;
        self.buf::<f64>(sum_a2, items / self.starts, K, "sum of A^2")?;
        self.buf::<f32>(fourier, items * records, K, "Fourier history")?;
        let (pr, real) = match (pr, real) {
            (Some(pr), Some(real)) => {
                self.buf::<f32>(pr, items * self.bpi * 2, K, "real-space partials")?;
                self.buf::<f32>(real, items * records, K, "real-space history")?;
                (Some(pr), Some(real))
            }
            (None, _) => (None, None),
            (Some(_), None) => {
                return Err(Error::Config(format!(
                    "{K}: real-space partials without a history to record them in"
                )))
            }
        };
        let bpi_r = if pr.is_some() { self.bpi } else { 0 };
        let args = [
            pf.arg(),
            KArg::I32(self.bpi as i32),
            KArg::Ptr(pr.map_or(DevPtr::NULL, DevBuf::ptr)),
            KArg::I32(bpi_r as i32),
            sum_a2.arg(),
            KArg::I32(items as i32),
            KArg::I32(self.starts as i32),
            KArg::I32(records as i32),
            KArg::I32(rec as i32),
            fourier.arg(),
            KArg::Ptr(real.map_or(DevPtr::NULL, DevBuf::ptr)),
        ];
        // SAFETY: pf (items x bpi), sum_a2 (items/starts doubles), fourier (items x records)
        // and, when given, pr (items x bpi x 2) and real (items x records) were checked
        // above, on this launcher; the kernel skips real when pr is null.
        unsafe {
            self.l
                .launch(K, dims([(items as u32).div_ceil(128), 1, 1], 128, 0), &args)
        }
    }

    /// The three shrinkwrap passes on iterate `g` into support `sup`: `scratch` holds
    /// 2 x items x L floats (|g| blurred along rows, then along columns; the FFT buffer,
    /// which is free between iterations, serves), `pmax` items x bpi, `kern` the uploaded
    /// Gaussian of `klen` taps.
    #[allow(clippy::too_many_arguments)]
    pub fn shrinkwrap(
        &self,
        g: &DevBuf,
        sup: &DevBuf,
        kern: &DevBuf,
        klen: usize,
        threshold: f32,
        scratch: &DevBuf,
        pmax: &DevBuf,
    ) -> Result<()> {
        const K: &str = "shrinkwrap";
        let mag = self.blur(K, g, sup, kern, klen, scratch, pmax)?;
        // SAFETY: mag (the second half of scratch, items x L floats), pmax (items x bpi) and
        // sup (items x L) were checked by `blur`, on this launcher.
        unsafe {
            self.l.launch(
                "cd_sw_threshold",
                dims(self.grid(), BLOCK, 0),
                &[
                    KArg::Ptr(mag),
                    KArg::I32(self.len() as i32),
                    pmax.arg(),
                    KArg::I32(self.bpi as i32),
                    KArg::F32(threshold),
                    sup.arg(),
                ],
            )
        }
    }

    /// The general shrinkwrap: the blur as in [`PhasingKernels::shrinkwrap`], then the
    /// threshold `threshold * factor[item] * reference` (`reference` 0 the maximum, 1 the
    /// mean, 2 the rms of the blurred modulus over the current support) and, with a guard
    /// (min, max, tune), the refusal of a new support whose fraction is outside [min, max]
    /// with the item's factor retuned and `events` counted. `pstat` holds items x bpi x 3
    /// floats, `pcount` items x bpi, `level` and `factor` items floats, `events` items ints.
    #[allow(clippy::too_many_arguments)]
    pub fn shrinkwrap_general(
        &self,
        g: &DevBuf,
        sup: &DevBuf,
        kern: &DevBuf,
        klen: usize,
        threshold: f32,
        reference: i32,
        guard: Option<(f32, f32, f32)>,
        scratch: &DevBuf,
        bufs: &GuardBufs,
    ) -> Result<()> {
        const K: &str = "shrinkwrap (general)";
        let (l, items, bpi) = (self.len(), self.items, self.bpi);
        self.buf::<f32>(&bufs.pmax, items * bpi, K, "block maxima")?;
        self.buf::<f32>(&bufs.pstat, items * bpi * 3, K, "support statistics")?;
        self.buf::<f32>(&bufs.pcount, items * bpi, K, "counts")?;
        self.buf::<f32>(&bufs.level, items, K, "levels")?;
        self.buf::<f32>(&bufs.factor, items, K, "factors")?;
        self.buf::<i32>(&bufs.events, items, K, "events")?;
        if !(0..=2).contains(&reference) {
            return Err(Error::Config(format!("{K}: reference code {reference}")));
        }
        let mag = self.blur(K, g, sup, kern, klen, scratch, &bufs.pmax)?;
        let per_item = dims([(items as u32).div_ceil(128), 1, 1], 128, 0);
        // SAFETY: mag (items x L floats, checked by `blur`), sup (items x L) and pstat
        // (items x bpi x 3, three per block) were checked, on this launcher.
        unsafe {
            self.l.launch(
                "cd_sw_stats",
                dims(self.grid(), BLOCK, 0),
                &[
                    KArg::Ptr(mag),
                    sup.arg(),
                    KArg::I32(l as i32),
                    bufs.pstat.arg(),
                ],
            )?;
        }
        // SAFETY: pmax (items x bpi), pstat (items x bpi x 3), factor and level (items) were
        // checked above, on this launcher; one thread per item.
        unsafe {
            self.l.launch(
                "cd_sw_level",
                per_item,
                &[
                    bufs.pmax.arg(),
                    bufs.pstat.arg(),
                    KArg::I32(bpi as i32),
                    KArg::I32(items as i32),
                    KArg::F32(threshold),
                    KArg::I32(reference),
                    bufs.factor.arg(),
                    bufs.level.arg(),
                ],
            )?;
        }
        if let Some((gmin, gmax, tune)) = guard {
            // SAFETY: mag (items x L), level (items) and pcount (items x bpi, one per block)
            // were checked, on this launcher.
            unsafe {
                self.l.launch(
                    "cd_sw_count",
                    dims(self.grid(), BLOCK, 0),
                    &[
                        KArg::Ptr(mag),
                        KArg::I32(l as i32),
                        bufs.level.arg(),
                        bufs.pcount.arg(),
                    ],
                )?;
            }
            // SAFETY: pcount (items x bpi), factor, events and level (items each) were
            // checked above, on this launcher; one thread per item.
            unsafe {
                self.l.launch(
                    "cd_sw_guard",
                    per_item,
                    &[
                        bufs.pcount.arg(),
                        KArg::I32(bpi as i32),
                        KArg::I32(items as i32),
                        KArg::I32(l as i32),
                        KArg::F32(gmin),
                        KArg::F32(gmax),
                        KArg::F32(tune),
                        bufs.factor.arg(),
                        bufs.events.arg(),
                        bufs.level.arg(),
                    ],
                )?;
            }
        }
        // SAFETY: mag (items x L), level (items) and sup (items x L) were checked, on this
        // launcher.
        unsafe {
            self.l.launch(
                "cd_sw_apply",
                dims(self.grid(), BLOCK, 0),
                &[
                    KArg::Ptr(mag),
                    KArg::I32(l as i32),
                    bufs.level.arg(),
                    sup.arg(),
                ],
            )
        }
    }

    /// The blur passes of a shrinkwrap: |g| blurred along rows into the first half of
    /// `scratch`, then along columns into the second half (returned), block maxima into
    /// `pmax`. Checks every buffer a shrinkwrap uses.
    #[allow(clippy::too_many_arguments)]
    fn blur(
        &self,
        kn: &str,
        g: &DevBuf,
        sup: &DevBuf,
        kern: &DevBuf,
        klen: usize,
        scratch: &DevBuf,
        pmax: &DevBuf,
    ) -> Result<DevPtr> {
        self.check_shape(kn)?;
        let (h, w) = (self.h, self.w);
        let (l, items) = (self.len(), self.items);
        let row_shmem = (w + klen) * 4;
        if row_shmem > MAX_DYN_SHARED {
            return Err(Error::Config(format!(
                "shrinkwrap on the {} device: an image row of {w} px with a {klen}-tap blur needs \
                 {row_shmem} bytes of shared memory (limit {MAX_DYN_SHARED}); use a smaller sigma",
                self.l.name()
            )));
        }
        self.buf::<Complex32>(g, items * l, kn, "g")?;
        self.buf::<u8>(sup, items * l, kn, "support")?;
        self.buf::<f32>(kern, klen, kn, "Gaussian")?;
        self.buf::<f32>(scratch, 2 * items * l, kn, "scratch")?;
        self.buf::<f32>(pmax, items * self.bpi, kn, "block maxima")?;
        let klen_arg = int_arg(klen, "blur taps")?;
        let (tmp, mag) = (scratch.ptr(), scratch.ptr().offset(items * l * 4));
        let row_threads = (w.div_ceil(32) * 32).min(BLOCK as usize) as u32;
        // SAFETY: g (items x L complex), kern (klen) and the first half of scratch (tmp,
        // items x L floats) were checked above, on this launcher; the row and the kernel fit
        // the dynamic shared memory asked for.
        unsafe {
            self.l.launch(
                "cd_sw_blur_rows",
                dims([h as u32, items as u32, 1], row_threads, row_shmem),
                &[
                    g.arg(),
                    KArg::I32(h as i32),
                    KArg::I32(w as i32),
                    kern.arg(),
                    klen_arg,
                    KArg::Ptr(tmp),
                ],
            )?;
        }
        // SAFETY: tmp and mag (the two halves of scratch, items x L floats each), kern
        // (klen) and pmax (items x bpi, one per block) were checked above, on this launcher.
        unsafe {
            self.l.launch(
                "cd_sw_blur_cols",
                dims(self.grid(), BLOCK, klen * 4),
                &[
                    KArg::Ptr(tmp),
                    KArg::I32(h as i32),
                    KArg::I32(w as i32),
                    kern.arg(),
                    klen_arg,
                    KArg::Ptr(mag),
                    pmax.arg(),
                ],
            )?;
        }
        Ok(mag)
    }
}

/// Doubles of per-item state of the maximum-likelihood refinement (`CD_ML_STATE`).
pub const ML_STATE: usize = 8;

/// The device buffers of the maximum-likelihood refinement of a chunk of `items` items:
/// the gradient, the previous gradient, the direction and its transform (items x L complex
/// each), the per-item state ([`ML_STATE`] doubles), the partial sums (items x bpi x 3) and
/// the regularisation per pattern (`eps`).
pub struct MlBufs<'a> {
    pub grad: DevBuf<'a>,
    pub gprev: DevBuf<'a>,
    pub d: DevBuf<'a>,
    pub dd: DevBuf<'a>,
    pub state: DevBuf<'a>,
    pub partial: DevBuf<'a>,
    pub eps: DevBuf<'a>,
}

impl<'a> MlBufs<'a> {
    /// Buffers for `lk`'s chunk, with the per-pattern regularisation `eps`.
    pub fn new(lk: &PhasingKernels<'a>, eps: &[f32]) -> Result<MlBufs<'a>> {
        let (l, items) = (lk.len(), lk.items);
        if eps.len() * lk.starts != items {
            return Err(Error::Config(format!(
                "ML refinement: {} regularisation values for {items} items of {} starts",
                eps.len(),
                lk.starts
            )));
        }
        Ok(MlBufs {
            grad: DevBuf::new(lk.l, items * l * 8)?,
            gprev: DevBuf::new(lk.l, items * l * 8)?,
            d: DevBuf::new(lk.l, items * l * 8)?,
            dd: DevBuf::new(lk.l, items * l * 8)?,
            state: DevBuf::new(lk.l, items * ML_STATE * 8)?,
            partial: DevBuf::new(lk.l, items * lk.bpi * 12)?,
            eps: DevBuf::from_slice(lk.l, eps)?,
        })
    }
}

impl PhasingKernels<'_> {
    /// Check every buffer of the refinement against the chunk's shape.
    fn check_ml(&self, kernel: &str, g: &DevBuf, sup: &DevBuf, m: &MlBufs) -> Result<()> {
        self.check_shape(kernel)?;
        let (l, items) = (self.len(), self.items);
        self.buf::<Complex32>(g, items * l, kernel, "g")?;
        self.buf::<u8>(sup, items * l, kernel, "support")?;
        for (b, what) in [
            (&m.grad, "gradient"),
            (&m.gprev, "previous gradient"),
            (&m.d, "direction"),
            (&m.dd, "FFT of the direction"),
        ] {
            self.buf::<Complex32>(b, items * l, kernel, what)?;
        }
        self.buf::<f64>(&m.state, items * ML_STATE, kernel, "state")?;
        self.buf::<f32>(&m.partial, items * self.bpi * 3, kernel, "partials")?;
        self.buf::<f32>(&m.eps, items / self.starts, kernel, "regularisation")
    }

    /// `cd_ml_start`: g confined to the support and the constraint, the state reset.
    pub fn ml_start(
        &self,
        g: &DevBuf,
        sup: &DevBuf,
        constraint: Constraint,
        m: &MlBufs,
    ) -> Result<()> {
        const K: &str = "cd_ml_start";
        self.check_ml(K, g, sup, m)?;
        let args = [
            g.arg(),
            sup.arg(),
            KArg::I32(self.len() as i32),
            KArg::I32(constraint_code(constraint)),
            m.state.arg(),
        ];
        // SAFETY: g (items x L complex), sup (items x L) and the state (items x 8 doubles)
        // were checked by check_ml, on this launcher.
        unsafe { self.l.launch(K, dims(self.grid(), BLOCK, 0), &args) }
    }

    /// The gradient of the refinement's objective at g into `m.grad`, given F = FFT(g) in
    /// `f` (items x L complex): `cd_ml_weights`, the unscaled inverse FFT (plan `plan`),
    /// `cd_ml_grad` (mask, and the dot-product partials into `m.partial`).
    #[allow(clippy::too_many_arguments)]
    pub fn ml_gradient(
        &self,
        plan: u64,
        g: &DevBuf,
        f: &DevBuf,
        sup: &DevBuf,
        amp: &DevBuf,
        constraint: Constraint,
        m: &MlBufs,
    ) -> Result<()> {
        const K: &str = "cd_ml_weights";
        self.check_ml(K, g, sup, m)?;
        let (l, items) = (self.len(), self.items);
        self.buf::<Complex32>(f, items * l, K, "F")?;
        self.buf::<f32>(amp, items / self.starts * l, K, "amplitudes")?;
        let args = [
            f.arg(),
            amp.arg(),
            m.eps.arg(),
            KArg::I32(l as i32),
            KArg::I32(self.starts as i32),
            m.grad.arg(),
        ];
        // SAFETY: f and grad (items x L complex), amp (items/starts x L) and eps (one per
        // pattern) were checked above, on this launcher.
        unsafe { self.l.launch(K, dims(self.grid(), BLOCK, 0), &args)? };
        self.l.fft(plan, m.grad.ptr(), m.grad.ptr(), false)?;
        let args = [
            m.grad.arg(),
            g.arg(),
            sup.arg(),
            KArg::I32(l as i32),
            KArg::I32(constraint_code(constraint)),
            m.gprev.arg(),
            m.d.arg(),
            m.state.arg(),
            m.partial.arg(),
        ];
        // SAFETY: grad, g, gprev, d (items x L complex), sup (items x L), state (items x 8
        // doubles) and partial (items x bpi x 3, three per block) were checked, on this
        // launcher.
        unsafe {
            self.l
                .launch("cd_ml_grad", dims(self.grid(), BLOCK, 0), &args)
        }
    }

    /// The rest of one refinement iteration after [`PhasingKernels::ml_gradient`]: the
    /// conjugation factor, the direction, its FFT, the line search and the step.
    #[allow(clippy::too_many_arguments)]
    pub fn ml_step(
        &self,
        plan: u64,
        g: &DevBuf,
        f: &DevBuf,
        sup: &DevBuf,
        amp: &DevBuf,
        constraint: Constraint,
        m: &MlBufs,
    ) -> Result<()> {
        const K: &str = "ML step";
        self.check_ml(K, g, sup, m)?;
        let (l, items, bpi) = (self.len(), self.items, self.bpi);
        self.buf::<Complex32>(f, items * l, K, "F")?;
        self.buf::<f32>(amp, items / self.starts * l, K, "amplitudes")?;
        let per_item = dims([(items as u32).div_ceil(128), 1, 1], 128, 0);
        // SAFETY: every buffer below was checked by check_ml and above (partial items x bpi
        // x 3, state items x 8 doubles, the images items x L complex, amp items/starts x L,
        // eps one per pattern), on this launcher; the per-item kernels run one thread per
        // item.
        unsafe {
            self.l.launch(
                "cd_ml_beta",
                per_item,
                &[
                    m.partial.arg(),
                    KArg::I32(bpi as i32),
                    KArg::I32(items as i32),
                    m.state.arg(),
                ],
            )?;
            self.l.launch(
                "cd_ml_direction",
                dims(self.grid(), BLOCK, 0),
                &[
                    m.grad.arg(),
                    m.d.arg(),
                    m.gprev.arg(),
                    KArg::I32(l as i32),
                    m.state.arg(),
                ],
            )?;
        }
        self.l.fft(plan, m.d.ptr(), m.dd.ptr(), true)?;
        for pass in 0..crate::phasing::program::ML_LINE_PASSES {
            // SAFETY: as above.
            unsafe {
                self.l.launch(
                    "cd_ml_line",
                    dims(self.grid(), BLOCK, 0),
                    &[
                        f.arg(),
                        m.dd.arg(),
                        amp.arg(),
                        m.eps.arg(),
                        KArg::I32(l as i32),
                        KArg::I32(self.starts as i32),
                        m.state.arg(),
                        m.partial.arg(),
                    ],
                )?;
                self.l.launch(
                    "cd_ml_newton",
                    per_item,
                    &[
                        m.partial.arg(),
                        KArg::I32(bpi as i32),
                        KArg::I32(items as i32),
                        KArg::I32(pass as i32),
                        m.state.arg(),
                    ],
                )?;
            }
        }
        // SAFETY: as above.
        unsafe {
            self.l.launch(
                "cd_ml_step",
                dims(self.grid(), BLOCK, 0),
                &[
                    g.arg(),
                    m.d.arg(),
                    KArg::I32(l as i32),
                    KArg::I32(constraint_code(constraint)),
                    m.state.arg(),
                ],
            )?;
            self.l.launch(
                "cd_ml_finish",
                per_item,
                &[KArg::I32(items as i32), m.state.arg()],
            )
        }
    }
}

/// The device buffers of the general shrinkwrap (see
/// [`PhasingKernels::shrinkwrap_general`]).
pub struct GuardBufs<'a> {
    pub pmax: DevBuf<'a>,
    pub pstat: DevBuf<'a>,
    pub pcount: DevBuf<'a>,
    pub level: DevBuf<'a>,
    pub factor: DevBuf<'a>,
    pub events: DevBuf<'a>,
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
fn bytes_per_pattern(l: usize, starts: usize, bpi: usize, records: usize, ml: bool) -> usize {
    let ml = if ml {
        4 + starts * (32 * l + 12 * bpi + 8 * ML_STATE)
    } else {
        0
    };
    4 * l + 16 + starts * (8 * l + 8 * l + l + 44 * bpi + 16 * records + 28) + ml
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
    let per = bytes_per_pattern(l, k, blocks_per_item(l), records, program.has_ml());
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
    // Best start per pattern by the problem's selection (as the CPU backend chooses).
    let final_support_fraction: Vec<f32> = out
        .s
        .chunks(l)
        .map(|s| (s.iter().filter(|&&v| v != 0).count() as f64 / l as f64) as f32)
        .collect();
    let merits: Vec<FinalMerit> = (0..n * k)
        .map(|i| FinalMerit {
            fourier: out.final_err[i],
            llk: out.final_llk[i],
            free_llk: out.final_free[i],
            support_fraction: final_support_fraction[i],
        })
        .collect();
    let best_start = problem.selection.best_starts(&merits, k);
    let mut objects = Vec::with_capacity(n * l);
    let mut supports = Vec::with_capacity(n * l);
    for (p, &b) in best_start.iter().enumerate() {
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
        llk: out.hist_llk,
        free_llk: out.hist_free,
        final_llk: out.final_llk,
        final_free_llk: out.final_free,
        final_support_fraction,
        guard_events: out.events,
        threshold_factor: out.factor,
    })
}

#[derive(Default)]
struct ChunkOutputs {
    g: Vec<Complex32>,
    s: Vec<u8>,
    hist_f: Vec<f32>,
    hist_r: Vec<f32>,
    hist_llk: Vec<f32>,
    hist_free: Vec<f32>,
    final_err: Vec<f32>,
    final_llk: Vec<f32>,
    final_free: Vec<f32>,
    factor: Vec<f32>,
    events: Vec<u32>,
}

/// The data a segment of a run is measured against, on the device: the amplitudes
/// (patterns x L), the sums of A^2 (patterns, float64), the log-likelihoods' pixel counts
/// (2 per pattern) and, on the host, the ML regularisation per pattern.
pub struct DevData<'a> {
    pub amp: DevBuf<'a>,
    pub sum_a2: DevBuf<'a>,
    pub counts: DevBuf<'a>,
    pub eps: Vec<f32>,
}

impl<'a> DevData<'a> {
    /// Upload `amplitudes` (patterns x `len`) with their `sum_a2` and measured pixel counts
    /// (as [`PhasingProblem::llk_counts`] and [`ml_eps`] define the rest).
    pub fn upload(
        l: &'a dyn Launcher,
        len: usize,
        amplitudes: &[f32],
        sum_a2: &[f64],
        measured: &[usize],
    ) -> Result<DevData<'a>> {
        let np = sum_a2.len();
        if len == 0 || amplitudes.len() != np * len || measured.len() != np {
            return Err(Error::Config(format!(
                "device data: {} amplitudes, {np} sums and {} counts are not {np} patterns of {len} pixels",
                amplitudes.len(),
                measured.len()
            )));
        }
        let mut counts = Vec::with_capacity(2 * np);
        for a in amplitudes.chunks(len) {
            let m = a.iter().filter(|&&v| v >= 0.0).count();
            let f = a
                .iter()
                .filter(|&&v| crate::phasing::problem::decode_free(v).is_some())
                .count();
            counts.push(i32::try_from(m).unwrap_or(i32::MAX));
            counts.push(i32::try_from(f).unwrap_or(i32::MAX));
        }
        Ok(DevData {
            amp: DevBuf::from_slice(l, amplitudes)?,
            sum_a2: DevBuf::from_slice(l, sum_a2)?,
            counts: DevBuf::from_slice(l, &counts)?,
            eps: sum_a2
                .iter()
                .zip(measured)
                .map(|(&s, &m)| ml_eps(s, m))
                .collect(),
        })
    }
}

/// The four histories of a run (or of a segment) on the device, items x records each.
pub struct Histories<'a> {
    pub records: usize,
    pub fourier: DevBuf<'a>,
    pub real: DevBuf<'a>,
    pub llk: DevBuf<'a>,
    pub free_llk: DevBuf<'a>,
}

impl<'a> Histories<'a> {
    pub fn new(l: &'a dyn Launcher, items: usize, records: usize) -> Result<Histories<'a>> {
        let b = (items * records).max(1) * 4;
        Ok(Histories {
            records,
            fourier: DevBuf::new(l, b)?,
            real: DevBuf::new(l, b)?,
            llk: DevBuf::new(l, b)?,
            free_llk: DevBuf::new(l, b)?,
        })
    }

    /// Download the Fourier, real-space, LLK and free-LLK histories (items x records each;
    /// nothing is copied when there are no records).
    pub fn download(&self, items: usize) -> Result<[Vec<f32>; 4]> {
        let n = items * self.records;
        if n == 0 {
            return Ok(std::array::from_fn(|_| Vec::new()));
        }
        Ok([
            self.fourier.to_vec(n)?,
            self.real.to_vec(n)?,
            self.llk.to_vec(n)?,
            self.free_llk.to_vec(n)?,
        ])
    }
}

/// The device state of a phasing run: every (pattern, start) item's iterate and support,
/// the FFT buffer and plan, the partial sums, the general shrinkwrap's per-item threshold
/// factors and guard events, and the ML buffers. [`run_phasing`] uploads it once per chunk,
/// runs the whole program and downloads the results; the device-resident segmented runner
/// ([`super::segmented`]) keeps it across the checkpoints of a run.
pub struct DevState<'a> {
    pub l: &'a dyn Launcher,
    pub h: usize,
    pub w: usize,
    pub patterns: usize,
    pub starts: usize,
    pub constraint: Constraint,
    pub g: DevBuf<'a>,
    pub s: DevBuf<'a>,
    /// The FFT buffer (items x L complex): free between iterations, shrinkwraps and merits
    /// use it as scratch.
    pub f: DevBuf<'a>,
    pf: DevBuf<'a>,
    pr: DevBuf<'a>,
    pl: DevBuf<'a>,
    /// The general shrinkwrap's buffers (per-item factors and events), when used.
    pub gb: Option<GuardBufs<'a>>,
    factors0: Vec<f32>,
    plan: Plan<'a>,
    ml: Option<MlBufs<'a>>,
}

impl<'a> DevState<'a> {
    /// Upload `patterns` x `starts` iterates `g` and supports `s` (item-major), with the
    /// general shrinkwrap's buffers (`factors` per item) when `general`.
    #[allow(clippy::too_many_arguments)]
    pub fn upload(
        l: &'a dyn Launcher,
        h: usize,
        w: usize,
        patterns: usize,
        starts: usize,
        g: &[Complex32],
        s: &[u8],
        factors: &[f32],
        general: bool,
        constraint: Constraint,
    ) -> Result<DevState<'a>> {
        let len = h * w;
        let items = patterns * starts;
        if items == 0 || g.len() != items * len || s.len() != items * len || factors.len() != items
        {
            return Err(Error::Config(format!(
                "device state: {} values, {} support pixels and {} factors for {patterns} x {starts} items of {h}x{w}",
                g.len(),
                s.len(),
                factors.len()
            )));
        }
        let gd = DevBuf::from_slice(l, g)?;
        let sd = DevBuf::from_slice(l, s)?;
        Self::from_device(
            l, h, w, patterns, starts, gd, sd, factors, general, constraint,
        )
    }

    /// A state around iterates and supports already on the device (the compaction of the
    /// item axis); `factors` are uploaded when `general`.
    #[allow(clippy::too_many_arguments)]
    pub fn from_device(
        l: &'a dyn Launcher,
        h: usize,
        w: usize,
        patterns: usize,
        starts: usize,
        g: DevBuf<'a>,
        s: DevBuf<'a>,
        factors: &[f32],
        general: bool,
        constraint: Constraint,
    ) -> Result<DevState<'a>> {
        let len = h * w;
        let items = patterns * starts;
        g.check::<Complex32>(l, items * len, "device state iterates")?;
        s.check::<u8>(l, items * len, "device state supports")?;
        let bpi = blocks_per_item(len);
        let gb = if general {
            Some(GuardBufs {
                pmax: DevBuf::new(l, items * bpi * 4)?,
                pstat: DevBuf::new(l, items * bpi * 12)?,
                pcount: DevBuf::new(l, items * bpi * 4)?,
                level: DevBuf::new(l, items * 4)?,
                factor: DevBuf::from_slice(l, factors)?,
                events: DevBuf::from_slice(l, &vec![0i32; items])?,
            })
        } else {
            None
        };
        Ok(DevState {
            l,
            h,
            w,
            patterns,
            starts,
            constraint,
            g,
            s,
            f: DevBuf::new(l, items * len * 8)?,
            pf: DevBuf::new(l, items * bpi * 4)?,
            pr: DevBuf::new(l, items * bpi * 8)?,
            pl: DevBuf::new(l, items * bpi * 8)?,
            gb,
            factors0: factors.to_vec(),
            plan: Plan {
                l,
                id: l.fft_plan(h, w, items)?,
            },
            ml: None,
        })
    }

    pub fn items(&self) -> usize {
        self.patterns * self.starts
    }

    pub fn len(&self) -> usize {
        self.h * self.w
    }

    pub fn is_empty(&self) -> bool {
        self.items() == 0
    }

    /// The kernels' wrappers for this state's items.
    pub fn kernels(&self) -> PhasingKernels<'a> {
        PhasingKernels::new(self.l, self.h, self.w, self.items(), self.starts)
    }

    /// The batched FFT plan of the state's items (also of any other stack of as many
    /// images).
    pub fn plan(&self) -> u64 {
        self.plan.id
    }

    /// Drop the ML buffers (their regularisation belongs to the data: a new `DevData`).
    pub fn reset_ml(&mut self) {
        self.ml = None;
    }

    /// Run the compiled ops `ops` against `data`, recording into `hist` from entry `*rec`
    /// on (advanced by the records made).
    #[allow(clippy::too_many_arguments)]
    pub fn run_ops(
        &mut self,
        ops: &[Op],
        guard: Option<crate::phasing::program::SupportGuard>,
        data: &DevData,
        hist: &Histories,
        rec: &mut usize,
        cancel: &crate::cancel::Cancel,
        progress: Progress<'_>,
    ) -> Result<()> {
        let launcher = self.l;
        let lk = self.kernels();
        let items = self.items();
        let l = self.len();
        let records = hist.records;
        if self.ml.is_none() && ops.iter().any(|o| matches!(o, Op::Ml { .. })) {
            self.ml = Some(MlBufs::new(&lk, &data.eps)?);
        }
        let (g, s, f, pf, pr, pl) = (&self.g, &self.s, &self.f, &self.pf, &self.pr, &self.pl);
        let plan = self.plan.id;
        let (amp, sum_a2, counts) = (&data.amp, &data.sum_a2, &data.counts);
        let constraint = self.constraint;
        let scale = 1.0 / l as f32;
        for op in ops {
            match *op {
                Op::Iterate {
                    update: Update { a, b },
                    count,
                    record,
                    ..
                } => {
                    for it in 0..count {
                        cancel.check()?;
                        let rec_now = record && it + 1 == count;
                        launcher.fft(plan, g.ptr(), f.ptr(), true)?;
                        if rec_now {
                            // the likelihoods of F before the projection, as the Fourier error
                            lk.llk(f, amp, pl)?;
                        }
                        lk.modulus(f, amp, true, pf)?;
                        launcher.fft(plan, f.ptr(), f.ptr(), false)?;
                        lk.update(g, f, s, a, b, constraint, scale, pr)?;
                        if rec_now {
                            lk.record_llk(pl, counts, records, *rec, &hist.llk, &hist.free_llk)?;
                            lk.record(
                                pf,
                                Some(pr),
                                sum_a2,
                                records,
                                *rec,
                                &hist.fourier,
                                Some(&hist.real),
                            )?;
                            *rec += 1;
                        }
                        progress(items as u64);
                    }
                }
                Op::Ml {
                    count,
                    record,
                    fresh,
                } => {
                    let m = self.ml.as_ref().ok_or_else(|| {
                        Error::Config("ML step without its buffers (program.has_ml)".into())
                    })?;
                    if fresh {
                        lk.ml_start(g, s, constraint, m)?;
                    }
                    for it in 0..count {
                        cancel.check()?;
                        launcher.fft(plan, g.ptr(), f.ptr(), true)?;
                        if record && it + 1 == count {
                            // the figures of merit of F (before the step), as an Iterate records
                            // them: P_M g is formed in the direction's FFT buffer (free here),
                            // the gradient buffer (overwritten next) takes the unused update
                            lk.llk(f, amp, pl)?;
                            launcher.fft(plan, g.ptr(), m.dd.ptr(), true)?;
                            lk.modulus(&m.dd, amp, true, pf)?;
                            launcher.fft(plan, m.dd.ptr(), m.dd.ptr(), false)?;
                            lk.update(&m.grad, &m.dd, s, 0.0, 0.0, constraint, scale, pr)?;
                            lk.record_llk(pl, counts, records, *rec, &hist.llk, &hist.free_llk)?;
                            lk.record(
                                pf,
                                Some(pr),
                                sum_a2,
                                records,
                                *rec,
                                &hist.fourier,
                                Some(&hist.real),
                            )?;
                            *rec += 1;
                        }
                        lk.ml_gradient(plan, g, f, s, amp, constraint, m)?;
                        lk.ml_step(plan, g, f, s, amp, constraint, m)?;
                        progress(items as u64);
                    }
                }
                Op::Shrinkwrap {
                    sigma,
                    threshold,
                    reference,
                } => {
                    let kern = gaussian_kernel(sigma);
                    let kb = DevBuf::from_slice(launcher, &kern)?;
                    // |g|, its row blur and its column blur live in the FFT buffer (free here).
                    match &self.gb {
                        None => lk.shrinkwrap(g, s, &kb, kern.len(), threshold, f, pf)?,
                        Some(gb) => lk.shrinkwrap_general(
                            g,
                            s,
                            &kb,
                            kern.len(),
                            threshold,
                            reference.code(),
                            guard.map(|gd| (gd.min, gd.max, gd.tune)),
                            f,
                            gb,
                        )?,
                    }
                }
            }
        }
        Ok(())
    }

    /// The figures of merit of each item's iterate (as it is, not projected) against
    /// `data`: the Fourier error, the LLK and the free LLK (items each, on the device).
    pub fn iterate_merits(&self, data: &DevData) -> Result<[DevBuf<'a>; 3]> {
        self.merits_of(&self.g, data)
    }

    /// The figures of merit of images `x` (as many as the state's items, item-major)
    /// against `data`, through the state's FFT buffer: Fourier error, LLK, free LLK.
    pub fn merits_of(&self, x: &DevBuf, data: &DevData) -> Result<[DevBuf<'a>; 3]> {
        let (l, items) = (self.l, self.items());
        let lk = self.kernels();
        x.check::<Complex32>(l, items * self.len(), "merits: images")?;
        let fin = DevBuf::new(l, items * 4)?;
        let fin_llk = DevBuf::new(l, items * 4)?;
        let fin_free = DevBuf::new(l, items * 4)?;
        l.fft(self.plan.id, x.ptr(), self.f.ptr(), true)?;
        lk.modulus(&self.f, &data.amp, false, &self.pf)?;
        lk.record(&self.pf, None, &data.sum_a2, 1, 0, &fin, None)?;
        lk.llk(&self.f, &data.amp, &self.pl)?;
        lk.record_llk(&self.pl, &data.counts, 1, 0, &fin_llk, &fin_free)?;
        Ok([fin, fin_llk, fin_free])
    }

    /// The support fraction of each item's support `s` (items of the state, on the device).
    pub fn support_fraction(&self, s: &DevBuf) -> Result<DevBuf<'a>> {
        support_fraction(self.l, s, self.items(), self.len())
    }

    /// The per-item threshold factors and guard events (downloaded; the starting factors
    /// and no events without the general shrinkwrap).
    pub fn factors_events(&self) -> Result<(Vec<f32>, Vec<u32>)> {
        let items = self.items();
        match &self.gb {
            Some(gb) => {
                let ev: Vec<i32> = gb.events.to_vec(items)?;
                Ok((
                    gb.factor.to_vec::<f32>(items)?,
                    ev.iter().map(|&e| e.max(0) as u32).collect(),
                ))
            }
            None => Ok((self.factors0.clone(), vec![0; items])),
        }
    }
}

/// `cd_support_fraction`: the fraction of each of `items` supports `s` (L pixels each)
/// that is set (items floats, on the device).
pub fn support_fraction<'a>(
    l: &'a dyn Launcher,
    s: &DevBuf,
    items: usize,
    len: usize,
) -> Result<DevBuf<'a>> {
    const K: &str = "cd_support_fraction";
    if items == 0 || items > MAX_ITEMS {
        return Err(Error::Config(format!(
            "{K}: {items} items do not fit one launch"
        )));
    }
    let li = int_arg(len, "pixels per image")?;
    s.check::<u8>(l, items * len, &format!("{K} supports"))?;
    let frac = DevBuf::new(l, items * 4)?;
    // SAFETY: s holds items x L bytes (checked above) and frac items floats, on this
    // launcher; the grid has one block per item.
    unsafe {
        l.launch(
            K,
            dims([1, items as u32, 1], BLOCK, 0),
            &[s.arg(), li, frac.arg()],
        )?
    };
    Ok(frac)
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
    // Starting state, prepared on the host exactly as for the CPU backend.
    let mut g0 = vec![Complex32::new(f32::NAN, f32::NAN); items * l];
    let mut s0 = vec![0xA5u8; items * l];
    for (i, (g, s)) in g0.chunks_mut(l).zip(s0.chunks_mut(l)).enumerate() {
        problem.initial_state(p0 + i / k, i % k, g, s);
    }
    let data = DevData::upload(
        launcher,
        l,
        &problem.amplitudes[p0 * l..p1 * l],
        &problem.sum_a2[p0..p1],
        &problem.measured[p0..p1],
    )?;
    // the general shrinkwrap's state: per-item threshold factors and guard events
    let factors0: Vec<f32> = (p0 * k..p1 * k).map(|i| problem.sw_factor(i)).collect();
    let mut st = DevState::upload(
        launcher,
        h,
        w,
        np,
        k,
        &g0,
        &s0,
        &factors0,
        program.general_shrinkwrap(!problem.sw_factors.is_empty()),
        problem.constraint,
    )?;
    drop((g0, s0));
    let hist = Histories::new(launcher, items, records)?;
    let mut rec = 0;
    st.run_ops(
        &program.ops,
        program.guard,
        &data,
        &hist,
        &mut rec,
        &problem.cancel,
        progress,
    )?;
    debug_assert_eq!(rec, records);
    // Final Fourier error and likelihoods of each item's final object.
    let [fin, fin_llk, fin_free] = st.iterate_merits(&data)?;
    let base = out.g.len();
    out.g.resize(base + items * l, Complex32::new(0.0, 0.0));
    st.g.download(&mut out.g[base..])?;
    let base = out.s.len();
    out.s.resize(base + items * l, 0);
    st.s.download(&mut out.s[base..])?;
    let [hf, hr, hl, hfr] = hist.download(items)?;
    out.hist_f.extend(hf);
    out.hist_r.extend(hr);
    out.hist_llk.extend(hl);
    out.hist_free.extend(hfr);
    out.final_err.extend(fin.to_vec::<f32>(items)?);
    out.final_llk.extend(fin_llk.to_vec::<f32>(items)?);
    out.final_free.extend(fin_free.to_vec::<f32>(items)?);
    let (factor, events) = st.factors_events()?;
    out.factor.extend(factor);
    out.events.extend(events);
    Ok(())
}

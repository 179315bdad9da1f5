//! Typed wrappers of the phasing kernels (`kernels/phasing.cu`): launch shapes and
//! argument lists, one method per kernel, and the host-side parameters they take.

use crate::backend::gpu::launcher::{DevPtr, Dims, KArg, Launcher, BLOCK, MAX_DYN_SHARED};
use crate::phasing::program::Constraint;
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

//! Breeding and merging on the device (issue 19): the alignment of reconstructions
//! (translation by the cross-correlation of the moduli through the batched FFT, argmax,
//! twin and global phase), the GA's recombination, the average with the majority support,
//! and the Gram matrix and leading modes of an aligned stack, as the `cd_pop_*` kernels of
//! `kernels/phasing.cu`. The host reference is [`crate::phasing::merge`] (float64); the
//! kernels do the same in f32 with float64 finishes of their reductions, so they agree with
//! it to rounding wherever the cross-correlation's maximum and the twin choice are not
//! ties (a near-tie may resolve differently in f32: a centrosymmetric modulus, or two
//! shifts within rounding of each other). Only the Gram matrix's eigenproblem (n x n, n
//! the merged starts) is solved on the host.
//!
//! [`DevStack`] holds m images and their supports on the device; [`DevStack::align`]
//! aligns pairs of them, [`DevStack::breed`] makes the GA's children, [`DevStack::merge`]
//! the merge of groups of n images. [`merge_starts`] is the GPU backends' `--merge`.

use super::launcher::{int_arg, DevBuf, Dims, KArg, Launcher, BLOCK};
use super::phasing::{blocks_per_item, constraint_code};
use crate::array::Complex32;
use crate::phasing::merge::hermitian_eigen;
use crate::phasing::population::{host_merit, MergedSet, MERGE_MODES};
use crate::phasing::problem::{FinalMerit, PhasingProblem};
use crate::phasing::program::Constraint;
use crate::{Error, Result};
use num_complex::Complex64;

fn dims(grid: [u32; 3], block: u32, shmem: usize) -> Dims {
    Dims {
        grid,
        block: [block, 1, 1],
        shmem: shmem as u32,
    }
}

/// Grid dimension `n` (items of a launch): an error when it exceeds CUDA's grid.y limit.
fn grid_y(n: usize, what: &str) -> Result<u32> {
    if n == 0 || n > super::launcher::MAX_ITEMS {
        return Err(Error::Config(format!(
            "{what}: {n} images do not fit one launch (1..={})",
            super::launcher::MAX_ITEMS
        )));
    }
    Ok(n as u32)
}

/// How image `pb` maps onto image `pa` (as [`crate::phasing::merge::Alignment`], in f32).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DevAlignment {
    pub dy: usize,
    pub dx: usize,
    pub twin: bool,
    pub phase: Complex32,
}

/// The result of [`DevStack::align`], still on the device.
pub struct Aligned<'a> {
    pairs: usize,
    pa: DevBuf<'a>,
    pb: DevBuf<'a>,
    al: DevBuf<'a>,
    ph: DevBuf<'a>,
}

impl Aligned<'_> {
    /// Download the alignments (tests, diagnostics).
    pub fn to_host(&self) -> Result<Vec<DevAlignment>> {
        let al: Vec<i32> = self.al.to_vec(3 * self.pairs)?;
        let ph: Vec<f32> = self.ph.to_vec(2 * self.pairs)?;
        Ok((0..self.pairs)
            .map(|p| DevAlignment {
                dy: al[3 * p] as usize,
                dx: al[3 * p + 1] as usize,
                twin: al[3 * p + 2] != 0,
                phase: Complex32::new(ph[2 * p], ph[2 * p + 1]),
            })
            .collect())
    }
}

/// The merge of groups of n images (per group: the first is the reference), on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct DevMerged {
    /// groups x L: the averages of the aligned groups.
    pub objects: Vec<Complex32>,
    /// groups x L: pixels in at least half of the aligned supports.
    pub supports: Vec<u8>,
    /// groups x modes x L and groups x modes: leading modes and their energy fractions
    /// (as [`crate::phasing::merge::modes`]).
    pub modes: Vec<Complex32>,
    pub weights: Vec<f32>,
    pub n_modes: usize,
}

/// m images of h x w (native order) and their supports on the device.
pub struct DevStack<'a> {
    l: &'a dyn Launcher,
    pub h: usize,
    pub w: usize,
    pub m: usize,
    bpi: usize,
    x: DevBuf<'a>,
    xs: DevBuf<'a>,
}

impl<'a> DevStack<'a> {
    /// Upload `m` iterates and supports and project them (`cd_pop_gather`: the iterate
    /// inside its support, with the constraint; 0 outside).
    pub fn upload(
        l: &'a dyn Launcher,
        h: usize,
        w: usize,
        g: &[Complex32],
        s: &[u8],
        constraint: Constraint,
    ) -> Result<DevStack<'a>> {
        let len = h * w;
        if len == 0 || !g.len().is_multiple_of(len) || g.len() != s.len() || g.is_empty() {
            return Err(Error::Config(format!(
                "device stack: {} values and {} support pixels are not whole {h}x{w} images",
                g.len(),
                s.len()
            )));
        }
        let m = g.len() / len;
        let gb = DevBuf::from_slice(l, g)?;
        let sb = DevBuf::from_slice(l, s)?;
        let idx: Vec<i32> = (0..m as i32).collect();
        Self::gather(l, h, w, &gb, &sb, m, &idx, constraint)
    }

    /// Gather images `idx` of the device iterates `g` / supports `s` (`items` images each)
    /// into a new stack, projected with the constraint.
    #[allow(clippy::too_many_arguments)]
    pub fn gather(
        l: &'a dyn Launcher,
        h: usize,
        w: usize,
        g: &DevBuf,
        s: &DevBuf,
        items: usize,
        idx: &[i32],
        constraint: Constraint,
    ) -> Result<DevStack<'a>> {
        const K: &str = "cd_pop_gather";
        let len = h * w;
        int_arg(len, "pixels per image")?;
        let m = idx.len();
        let gy = grid_y(m, K)?;
        if let Some(&bad) = idx.iter().find(|&&i| i < 0 || i as usize >= items) {
            return Err(Error::Config(format!(
                "{K}: image {bad} of a stack of {items}"
            )));
        }
        g.check::<Complex32>(l, items * len, &format!("{K} g"))?;
        s.check::<u8>(l, items * len, &format!("{K} support"))?;
        let ib = DevBuf::from_slice(l, idx)?;
        let x = DevBuf::new(l, m * len * 8)?;
        let xs = DevBuf::new(l, m * len)?;
        let bpi = blocks_per_item(len);
        let args = [
            g.arg(),
            s.arg(),
            ib.arg(),
            KArg::I32(len as i32),
            KArg::I32(constraint_code(constraint)),
            x.arg(),
            xs.arg(),
        ];
        // SAFETY: g (items x L complex) and s (items x L) were checked above, every index
        // lies in 0..items, ib holds m ints, x (m x L complex) and xs (m x L) were just
        // allocated, all on this launcher; the grid has m rows.
        unsafe { l.launch(K, dims([bpi as u32, gy, 1], BLOCK, 0), &args)? };
        Ok(DevStack {
            l,
            h,
            w,
            m,
            bpi,
            x,
            xs,
        })
    }

    fn len(&self) -> usize {
        self.h * self.w
    }

    /// The (projected) images on the device, m x L complex.
    pub fn images_buf(&self) -> &DevBuf<'a> {
        &self.x
    }

    /// Their supports on the device, m x L bytes.
    pub fn supports_buf(&self) -> &DevBuf<'a> {
        &self.xs
    }

    fn pairs_buf(&self, v: &[usize], what: &str) -> Result<DevBuf<'a>> {
        if let Some(&bad) = v.iter().find(|&&i| i >= self.m) {
            return Err(Error::Config(format!(
                "{what}: image {bad} of a stack of {}",
                self.m
            )));
        }
        let v: Vec<i32> = v.iter().map(|&i| i as i32).collect();
        DevBuf::from_slice(self.l, &v)
    }

    /// Download the (projected) images.
    pub fn images(&self) -> Result<Vec<Complex32>> {
        self.x.to_vec(self.m * self.len())
    }

    /// Align image `pb[p]` onto image `pa[p]` for every pair p (translation, twin, phase).
    pub fn align(&self, pa: &[usize], pb: &[usize]) -> Result<Aligned<'a>> {
        let (l, len, bpi) = (self.l, self.len(), self.bpi);
        let pairs = pa.len();
        if pb.len() != pairs {
            return Err(Error::Config(format!(
                "align: {pairs} references for {} images",
                pb.len()
            )));
        }
        let gy = grid_y(pairs, "cd_pop_moduli")?;
        let gy2 = grid_y(2 * pairs, "cd_pop_argmax")?;
        let pab = self.pairs_buf(pa, "align (reference)")?;
        let pbb = self.pairs_buf(pb, "align (aligned image)")?;
        let mb = DevBuf::new(l, 2 * pairs * len * 8)?;
        let best = DevBuf::new(l, 2 * pairs * 4)?;
        let pc = DevBuf::new(l, 2 * pairs * bpi * 8)?;
        let al = DevBuf::new(l, 3 * pairs * 4)?;
        let ph = DevBuf::new(l, 2 * pairs * 4)?;
        let (h, w) = (self.h as i32, self.w as i32);
        let grid = [bpi as u32, gy, 1];
        // SAFETY: (the five launches below) x holds m x L complex, every index in pab/pbb
        // (pairs ints each) lies in 0..m (pairs_buf), mb holds 2 pairs x L complex, best
        // 2 pairs ints, pc 2 pairs x bpi x 2 floats, al 3 pairs ints, ph 2 pairs floats, all
        // allocated on this launcher above; the grids have pairs (or 2 pairs) rows and bpi
        // columns, and cd_pop_argmax's dynamic shared memory holds BLOCK floats and ints.
        unsafe {
            l.launch(
                "cd_pop_moduli",
                dims(grid, BLOCK, 0),
                &[
                    self.x.arg(),
                    pab.arg(),
                    pbb.arg(),
                    KArg::I32(len as i32),
                    mb.arg(),
                ],
            )?;
        }
        let plan = l.fft_plan(self.h, self.w, 2 * pairs)?;
        let res = (|| -> Result<()> {
            l.fft(plan, mb.ptr(), mb.ptr(), true)?;
            // SAFETY: as above.
            unsafe {
                l.launch(
                    "cd_pop_xpower",
                    dims(grid, BLOCK, 0),
                    &[mb.arg(), KArg::I32(len as i32)],
                )?;
            }
            l.fft(plan, mb.ptr(), mb.ptr(), false)
        })();
        l.fft_destroy(plan);
        res?;
        // SAFETY: as above.
        unsafe {
            l.launch(
                "cd_pop_argmax",
                dims([1, gy2, 1], BLOCK, BLOCK as usize * 8),
                &[
                    mb.arg(),
                    KArg::I32(len as i32),
                    KArg::I32(0),
                    best.arg(),
                    KArg::Ptr(super::launcher::DevPtr::NULL),
                ],
            )?;
            l.launch(
                "cd_pop_overlap",
                dims([bpi as u32, gy2, 1], BLOCK, 0),
                &[
                    self.x.arg(),
                    pab.arg(),
                    pbb.arg(),
                    best.arg(),
                    KArg::I32(h),
                    KArg::I32(w),
                    pc.arg(),
                ],
            )?;
            l.launch(
                "cd_pop_align_finish",
                dims([(pairs as u32).div_ceil(128), 1, 1], 128, 0),
                &[
                    pc.arg(),
                    KArg::I32(bpi as i32),
                    best.arg(),
                    KArg::I32(pairs as i32),
                    KArg::I32(w),
                    al.arg(),
                    ph.arg(),
                ],
            )?;
        }
        Ok(Aligned {
            pairs,
            pa: pab,
            pb: pbb,
            al,
            ph,
        })
    }

    /// Image pb[p] moved onto image pa[p] by its alignment (and its support when
    /// `supports`): pairs x L complex (and pairs x L bytes).
    fn apply(&self, a: &Aligned, supports: bool) -> Result<(DevBuf<'a>, Option<DevBuf<'a>>)> {
        const K: &str = "cd_pop_apply";
        let (l, len) = (self.l, self.len());
        let gy = grid_y(a.pairs, K)?;
        for (b, n, what) in [
            (&a.pb, a.pairs * 4, "pairs"),
            (&a.al, a.pairs * 12, "alignments"),
            (&a.ph, a.pairs * 8, "phases"),
        ] {
            b.check::<u8>(l, n, &format!("{K} {what}"))?;
        }
        let y = DevBuf::new(l, a.pairs * len * 8)?;
        let ys = if supports {
            Some(DevBuf::new(l, a.pairs * len)?)
        } else {
            None
        };
        let args = [
            self.x.arg(),
            self.xs.arg(),
            a.pb.arg(),
            a.al.arg(),
            a.ph.arg(),
            KArg::I32(self.h as i32),
            KArg::I32(self.w as i32),
            y.arg(),
            KArg::Ptr(
                ys.as_ref()
                    .map_or(super::launcher::DevPtr::NULL, DevBuf::ptr),
            ),
        ];
        // SAFETY: x / xs hold m images, a.pb's indices lie in 0..m (checked when uploaded),
        // a.al / a.ph hold 3 ints and 2 floats per pair (a dy < h, dx < w from the argmax
        // over L), y (and ys) pairs images, all on this launcher (checked above).
        unsafe { l.launch(K, dims([self.bpi as u32, gy, 1], BLOCK, 0), &args)? };
        Ok((y, ys))
    }

    /// Download the images pb[p] aligned onto pa[p] (tests).
    pub fn aligned_images(&self, a: &Aligned) -> Result<(Vec<Complex32>, Vec<u8>)> {
        let (y, ys) = self.apply(a, true)?;
        let ys = ys.ok_or_else(|| Error::Config("apply: no supports".into()))?;
        Ok((
            y.to_vec(a.pairs * self.len())?,
            ys.to_vec(a.pairs * self.len())?,
        ))
    }

    /// The GA's children: for each pair, image pb[p] aligned onto pa[p] and recombined with
    /// it, `sqrt(|a| |b'|)` with a's phase (pairs x L complex, on the device).
    pub fn breed(&self, pa: &[usize], pb: &[usize]) -> Result<DevBuf<'a>> {
        const K: &str = "cd_pop_recombine";
        let a = self.align(pa, pb)?;
        let (y, _) = self.apply(&a, false)?;
        let len = self.len();
        let gy = grid_y(a.pairs, K)?;
        let c = DevBuf::new(self.l, a.pairs * len * 8)?;
        let args = [
            self.x.arg(),
            a.pa.arg(),
            y.arg(),
            KArg::I32(len as i32),
            c.arg(),
        ];
        // SAFETY: x holds m images and a.pa's indices lie in 0..m (checked when uploaded), y
        // and c hold pairs images, all on this launcher.
        unsafe {
            self.l
                .launch(K, dims([self.bpi as u32, gy, 1], BLOCK, 0), &args)?
        };
        Ok(c)
    }

    /// The merge of `groups` groups of `n` consecutive images (each group's first is its
    /// reference): every other image aligned onto it, the average, the majority support and
    /// `n_modes` leading modes (the Gram matrix on the device, its n x n eigenproblem on the
    /// host).
    pub fn merge(&self, n: usize, n_modes: usize) -> Result<DevMerged> {
        let (l, len, bpi) = (self.l, self.len(), self.bpi);
        if n == 0 || !self.m.is_multiple_of(n) {
            return Err(Error::Config(format!(
                "merge: {} images are not groups of {n}",
                self.m
            )));
        }
        let groups = self.m / n;
        let (pa, pb): (Vec<usize>, Vec<usize>) = (0..groups)
            .flat_map(|q| (1..n).map(move |j| (q * n, q * n + j)))
            .unzip();
        // a group of one has nothing to align: a one-image dummy keeps the launches valid
        let (y, ys) = if pa.is_empty() {
            (DevBuf::new(l, 8)?, DevBuf::new(l, 1)?)
        } else {
            let a = self.align(&pa, &pb)?;
            let (y, ys) = self.apply(&a, true)?;
            (
                y,
                ys.ok_or_else(|| Error::Config("apply: no supports".into()))?,
            )
        };
        let gy = grid_y(groups, "cd_pop_mean")?;
        let o = DevBuf::new(l, groups * len * 8)?;
        let u = DevBuf::new(l, groups * len)?;
        let ni = int_arg(n, "merged images")?;
        // SAFETY: x / xs hold m = groups x n images, y / ys groups x (n - 1) (or a dummy
        // that is never read when n = 1), o / u groups images, all on this launcher.
        unsafe {
            l.launch(
                "cd_pop_mean",
                dims([bpi as u32, gy, 1], BLOCK, 0),
                &[
                    self.x.arg(),
                    self.xs.arg(),
                    y.arg(),
                    ys.arg(),
                    ni,
                    KArg::I32(len as i32),
                    o.arg(),
                    u.arg(),
                ],
            )?;
        }
        let objects: Vec<Complex32> = o.to_vec(groups * len)?;
        let supports: Vec<u8> = u.to_vec(groups * len)?;
        let n_modes = n_modes.min(n);
        if n_modes == 0 {
            return Ok(DevMerged {
                objects,
                supports,
                modes: Vec::new(),
                weights: Vec::new(),
                n_modes: 0,
            });
        }
        // the Gram matrices, on the device
        let e = n * (n + 1) / 2;
        let gy = grid_y(groups * e, "cd_pop_gram")?;
        let pg = DevBuf::new(l, groups * e * bpi * 8)?;
        let gm = DevBuf::new(l, groups * n * n * 16)?;
        // SAFETY: x holds groups x n images, y groups x (n - 1) (read only for j > 0), pg
        // groups x E x bpi x 2 floats, gm groups x n x n complex doubles, on this launcher.
        unsafe {
            l.launch(
                "cd_pop_gram",
                dims([bpi as u32, gy, 1], BLOCK, 0),
                &[self.x.arg(), y.arg(), ni, KArg::I32(len as i32), pg.arg()],
            )?;
            l.launch(
                "cd_pop_gram_finish",
                dims([((groups * e) as u32).div_ceil(128), 1, 1], 128, 0),
                &[
                    pg.arg(),
                    KArg::I32(bpi as i32),
                    KArg::I32(groups as i32),
                    ni,
                    gm.arg(),
                ],
            )?;
        }
        let gv: Vec<f64> = gm.to_vec(groups * n * n * 2)?;
        // the eigenproblems (n x n each) on the host, as merge::modes
        let scale = 1.0 / (n as f64).sqrt();
        let mut v = vec![Complex32::new(0.0, 0.0); groups * n_modes * n];
        let mut weights = vec![0.0f32; groups * n_modes];
        for q in 0..groups {
            let g: Vec<Complex64> = (0..n * n)
                .map(|i| Complex64::new(gv[2 * (q * n * n + i)], gv[2 * (q * n * n + i) + 1]))
                .collect();
            let (vals, vecs) = hermitian_eigen(&g, n);
            let total: f64 = vals.iter().map(|v| v.max(0.0)).sum();
            for (i, (val, vec)) in vals.iter().zip(&vecs).take(n_modes).enumerate() {
                for (j, c) in vec.iter().enumerate() {
                    let c = c * scale;
                    v[(q * n_modes + i) * n + j] = Complex32::new(c.re as f32, c.im as f32);
                }
                weights[q * n_modes + i] = if total > 0.0 {
                    (val.max(0.0) / total) as f32
                } else {
                    0.0
                };
            }
        }
        let vb = DevBuf::from_slice(l, &v)?;
        let mo = DevBuf::new(l, groups * n_modes * len * 8)?;
        let fac = DevBuf::new(l, groups * n_modes * 8)?;
        let best = DevBuf::new(l, groups * n_modes * 4)?;
        let gy = grid_y(groups * n_modes, "cd_pop_modes")?;
        // SAFETY: x / y as above, vb groups x modes x n complex, mo groups x modes images,
        // fac and best one per mode, on this launcher; argmax's shared memory as in align.
        unsafe {
            l.launch(
                "cd_pop_modes",
                dims([bpi as u32, gy, 1], BLOCK, 0),
                &[
                    self.x.arg(),
                    y.arg(),
                    vb.arg(),
                    ni,
                    KArg::I32(n_modes as i32),
                    KArg::I32(len as i32),
                    mo.arg(),
                ],
            )?;
            l.launch(
                "cd_pop_argmax",
                dims([1, gy, 1], BLOCK, BLOCK as usize * 8),
                &[
                    mo.arg(),
                    KArg::I32(len as i32),
                    KArg::I32(1),
                    best.arg(),
                    fac.arg(),
                ],
            )?;
            l.launch(
                "cd_pop_rotate",
                dims([bpi as u32, gy, 1], BLOCK, 0),
                &[mo.arg(), fac.arg(), KArg::I32(len as i32)],
            )?;
        }
        Ok(DevMerged {
            objects,
            supports,
            modes: mo.to_vec(groups * n_modes * len)?,
            weights,
            n_modes,
        })
    }
}

/// Where [`scatter`] reads and writes: `images` (optional) and `supports` buffers of `n`
/// images each, and an optional index list (None: image j for entry j).
pub struct Side<'b, 'a> {
    pub images: Option<&'b DevBuf<'a>>,
    pub supports: &'b DevBuf<'a>,
    pub n: usize,
    pub idx: Option<&'b [usize]>,
}

/// `cd_pop_scatter`: for each of `m` entries j, image `src.idx[j]` of `src` (and its
/// support) copied to image `dst.idx[j]` of `dst`, inside its support when `mask` (the
/// complex images are skipped when either side has none). Only the index lists are
/// uploaded (m ints each).
pub fn scatter(
    l: &dyn Launcher,
    h: usize,
    w: usize,
    m: usize,
    src: &Side,
    dst: &Side,
    mask: bool,
) -> Result<()> {
    const K: &str = "cd_pop_scatter";
    let len = h * w;
    let li = int_arg(len, "pixels per image")?;
    let gy = grid_y(m, K)?;
    let mut idx_bufs = Vec::new();
    for (side, what) in [(src, "source"), (dst, "destination")] {
        side.supports
            .check::<u8>(l, side.n * len, &format!("{K} {what} supports"))?;
        if let Some(im) = side.images {
            im.check::<Complex32>(l, side.n * len, &format!("{K} {what} images"))?;
        }
        match side.idx {
            Some(ix) => {
                if ix.len() != m {
                    return Err(Error::Config(format!(
                        "{K}: {} {what} indices for {m} images",
                        ix.len()
                    )));
                }
                if let Some(&bad) = ix.iter().find(|&&i| i >= side.n) {
                    return Err(Error::Config(format!(
                        "{K}: {what} image {bad} of {}",
                        side.n
                    )));
                }
                let v: Vec<i32> = ix.iter().map(|&i| i as i32).collect();
                idx_bufs.push(Some(DevBuf::from_slice(l, &v)?));
            }
            None => {
                if m > side.n {
                    return Err(Error::Config(format!(
                        "{K}: {m} images, the {what} holds {}",
                        side.n
                    )));
                }
                idx_bufs.push(None);
            }
        }
    }
    let ptr = |b: Option<&DevBuf>| b.map_or(super::launcher::DevPtr::NULL, DevBuf::ptr);
    let copy = src.images.is_some() && dst.images.is_some();
    let args = [
        KArg::Ptr(if copy {
            ptr(src.images)
        } else {
            super::launcher::DevPtr::NULL
        }),
        src.supports.arg(),
        KArg::Ptr(ptr(idx_bufs[0].as_ref())),
        KArg::Ptr(ptr(idx_bufs[1].as_ref())),
        li,
        KArg::I32(mask as i32),
        KArg::Ptr(if copy {
            ptr(dst.images)
        } else {
            super::launcher::DevPtr::NULL
        }),
        dst.supports.arg(),
    ];
    // SAFETY: both sides' supports (and images, passed only when both sides have them) hold
    // n x L values (checked above, on this launcher); every index lies in 0..n of its side
    // (or, without a list, j < m <= n); the grid has m rows.
    unsafe {
        l.launch(
            K,
            dims([blocks_per_item(len) as u32, gy, 1], BLOCK, 0),
            &args,
        )
    }
}

/// `--merge` on a GPU backend: [`crate::phasing::population::merge_starts`] with the
/// alignment, average, majority support, Gram matrix and modes on the device. The host
/// orders the starts by their merits (N x K numbers), uploads the best `count` of each
/// pattern and measures the merged objects' merits against the data.
pub fn merge_starts(
    l: &dyn Launcher,
    problem: &PhasingProblem,
    all_objects: &[Complex32],
    all_supports: &[u8],
    merits: &[FinalMerit],
    count: usize,
) -> Result<MergedSet> {
    let (n, k, h, w) = (problem.n, problem.starts, problem.h, problem.w);
    let len = h * w;
    let count = count.min(k).max(1);
    let modes = MERGE_MODES.min(count);
    let sel = problem.selection;
    let mut g = Vec::with_capacity(n * count * len);
    let mut s = Vec::with_capacity(n * count * len);
    let mut starts = Vec::with_capacity(n * count);
    for p in 0..n {
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| {
            sel.key(&merits[p * k + a], a)
                .partial_cmp(&sel.key(&merits[p * k + b], b))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        for &st in order.iter().take(count) {
            let i = p * k + st;
            g.extend_from_slice(&all_objects[i * len..(i + 1) * len]);
            s.extend_from_slice(&all_supports[i * len..(i + 1) * len]);
            starts.push(st as i64);
        }
    }
    let stack = DevStack::upload(l, h, w, &g, &s, Constraint::None)?;
    drop((g, s));
    let m = stack.merge(count, modes)?;
    let plan = crate::fft::Plan2d::new(h, w);
    let mut out = MergedSet {
        count,
        modes: m.n_modes,
        objects: m.objects,
        supports: m.supports,
        mode_images: m.modes,
        weights: m.weights,
        starts,
        fourier_error: Vec::with_capacity(n),
        llk: Vec::with_capacity(n),
    };
    for p in 0..n {
        let mut native = vec![Complex32::new(0.0, 0.0); len];
        crate::array::centred_to_native(&out.objects[p * len..(p + 1) * len], h, w, &mut native);
        let mut ns = vec![0u8; len];
        crate::array::centred_to_native(&out.supports[p * len..(p + 1) * len], h, w, &mut ns);
        let fm = host_merit(problem, &plan, p, &native, &ns);
        out.fourier_error.push(fm.fourier);
        out.llk.push(fm.llk);
    }
    Ok(out)
}

//! The one 2-D FFT of the crate: rustfft plans for the rows and the columns of an `h x w`
//! image (the instruction set, AVX or SSE, is chosen once by rustfft's planner), with the
//! scratch owned by the caller ([`Scratch`]), so a plan is shared freely between threads and
//! nothing is allocated per transform.
//!
//! Columns are transformed in blocks of [`COL_BLOCK`] (8 complex64 values are one 64-byte
//! cache line per row): gather the block, transform its columns, scatter it back. The CPU
//! phasing engine fuses its passes around the same plans and the same gather/scatter
//! ([`Plan2d::rows`], [`Plan2d::cols`]); everyone else (supports, simulation, scaling of
//! given objects, alignment in float64, the emulator's cuFFT stand-in) calls
//! [`Plan2d::forward`] / [`Plan2d::inverse`].
//!
//! Normalisation: the forward transform is unnormalised, [`Plan2d::inverse`] is scaled by
//! 1/(HW), [`Plan2d::inverse_unscaled`] is not (cuFFT's convention).

use num_complex::Complex;
use rustfft::{Fft, FftNum, FftPlanner};
use std::sync::Arc;

/// Columns gathered per block (8 complex64 = one 64-byte cache line per row).
pub const COL_BLOCK: usize = 8;

/// The FFT plans of one image size, in precision `T` (f32 for the engine, f64 for the
/// float64 alignment and references).
#[derive(Clone)]
pub struct Plan2d<T: FftNum = f32> {
    pub h: usize,
    pub w: usize,
    row_f: Arc<dyn Fft<T>>,
    row_i: Arc<dyn Fft<T>>,
    col_f: Arc<dyn Fft<T>>,
    col_i: Arc<dyn Fft<T>>,
    scratch_len: usize,
}

/// The caller-owned buffers of one transform at a time: a gathered column block and the
/// FFT scratch. They start poisoned with NaN, so code that reads an element it did not
/// write first turns the result into NaN and fails the tests.
pub struct Scratch<T = f32> {
    pub(crate) col: Vec<Complex<T>>,
    pub(crate) fft: Vec<Complex<T>>,
}

impl<T: FftNum> Plan2d<T> {
    pub fn new(h: usize, w: usize) -> Self {
        let mut planner = FftPlanner::<T>::new();
        let row_f = planner.plan_fft_forward(w);
        let row_i = planner.plan_fft_inverse(w);
        let col_f = planner.plan_fft_forward(h);
        let col_i = planner.plan_fft_inverse(h);
        let scratch_len = [&row_f, &row_i, &col_f, &col_i]
            .iter()
            .map(|f| f.get_inplace_scratch_len())
            .max()
            .unwrap_or(0);
        Plan2d {
            h,
            w,
            row_f,
            row_i,
            col_f,
            col_i,
            scratch_len,
        }
    }

    /// Buffers for one transform at a time (NaN-poisoned).
    pub fn scratch(&self) -> Scratch<T> {
        let nan = T::from_f64(f64::NAN).expect("a float type has NaN");
        let nan = Complex::new(nan, nan);
        Scratch {
            col: vec![nan; COL_BLOCK * self.h],
            fft: vec![nan; self.fft_scratch_len()],
        }
    }

    /// Length of the rustfft scratch any one of the four plans needs (at least 1).
    pub fn fft_scratch_len(&self) -> usize {
        self.scratch_len.max(1)
    }

    /// The row transform (length `w`), forward or inverse, unnormalised.
    pub fn rows(&self, forward: bool) -> &dyn Fft<T> {
        if forward {
            self.row_f.as_ref()
        } else {
            self.row_i.as_ref()
        }
    }

    /// The column transform (length `h`), forward or inverse, unnormalised.
    pub fn cols(&self, forward: bool) -> &dyn Fft<T> {
        if forward {
            self.col_f.as_ref()
        } else {
            self.col_i.as_ref()
        }
    }

    /// Unnormalised forward 2-D FFT in place (native order).
    pub fn forward(&self, data: &mut [Complex<T>], scratch: &mut Scratch<T>) {
        self.transform(data, scratch, true)
    }

    /// Inverse 2-D FFT in place, scaled by 1/(HW).
    pub fn inverse(&self, data: &mut [Complex<T>], scratch: &mut Scratch<T>) {
        self.transform(data, scratch, false);
        let s = T::one() / T::from_usize(self.h * self.w).expect("image size");
        data.iter_mut().for_each(|c| *c = *c * s);
    }

    /// Inverse 2-D FFT in place, unnormalised.
    pub fn inverse_unscaled(&self, data: &mut [Complex<T>], scratch: &mut Scratch<T>) {
        self.transform(data, scratch, false)
    }

    /// Forward then inverse 2-D FFT, unscaled: the FFT floor of one phasing iteration,
    /// with the same row + column-block layout the phasing passes use.
    pub fn fft_pair_unscaled(&self, data: &mut [Complex<T>], scratch: &mut Scratch<T>) {
        self.transform(data, scratch, true);
        self.transform(data, scratch, false);
    }

    fn transform(&self, data: &mut [Complex<T>], scratch: &mut Scratch<T>, forward: bool) {
        let (h, w) = (self.h, self.w);
        assert_eq!(data.len(), h * w, "2-D FFT of {h}x{w}");
        let (row, col) = (self.rows(forward), self.cols(forward));
        row.process_with_scratch(data, &mut scratch.fft);
        for c0 in (0..w).step_by(COL_BLOCK) {
            let nb = COL_BLOCK.min(w - c0);
            let colbuf = &mut scratch.col[..nb * h];
            gather(data, w, h, c0, nb, colbuf);
            col.process_with_scratch(colbuf, &mut scratch.fft);
            scatter(colbuf, w, h, c0, nb, data);
        }
    }
}

/// Copy columns `c0..c0+nb` of the row-major `h x w` image `data` into `col`, column after
/// column (`col[b*h + r] = data[r*w + c0 + b]`). (An AVX2 4x4-transpose version measured
/// no faster here: the loads are whole cache lines already and the stores stream.)
#[inline]
pub fn gather<T: Copy>(data: &[T], w: usize, h: usize, c0: usize, nb: usize, col: &mut [T]) {
    assert!(data.len() >= h * w);
    // SAFETY: `data` holds h * w values and is borrowed for the call.
    unsafe { gather_raw(data.as_ptr(), w, h, c0, nb, col) }
}

/// The inverse of [`gather`]: `data[r*w + c0 + b] = col[b*h + r]`.
#[inline]
pub fn scatter<T: Copy>(col: &[T], w: usize, h: usize, c0: usize, nb: usize, data: &mut [T]) {
    assert!(data.len() >= h * w);
    // SAFETY: `data` holds h * w values and is borrowed mutably for the call.
    unsafe { scatter_raw(col, w, h, c0, nb, data.as_mut_ptr()) }
}

/// [`gather`] from a raw row-major buffer of `h * w` values.
///
/// # Safety
/// `data` points at `h * w` valid values and no other thread writes columns
/// `c0..c0+nb` during the call; `c0 + nb <= w`.
pub unsafe fn gather_raw<T: Copy>(
    data: *const T,
    w: usize,
    h: usize,
    c0: usize,
    nb: usize,
    col: &mut [T],
) {
    assert!(col.len() >= nb * h && c0 + nb <= w);
    let col = col.as_mut_ptr();
    // A full block gets its own copy of the loop with the trip count known (unrolled).
    // SAFETY: r < h and c0 + b < c0 + nb <= w keep every address inside the `h * w` values
    // of `data` (the caller's contract) and the `nb * h` of `col` (asserted above).
    unsafe {
        if nb == COL_BLOCK {
            copy_block(h, COL_BLOCK, |r, b| {
                (data.add(r * w + c0 + b), col.add(b * h + r))
            });
        } else {
            copy_block(h, nb, |r, b| (data.add(r * w + c0 + b), col.add(b * h + r)));
        }
    }
}

/// [`scatter`] into a raw row-major buffer of `h * w` values.
///
/// # Safety
/// As for [`gather_raw`], and no other thread reads or writes columns `c0..c0+nb`.
pub unsafe fn scatter_raw<T: Copy>(
    col: &[T],
    w: usize,
    h: usize,
    c0: usize,
    nb: usize,
    data: *mut T,
) {
    assert!(col.len() >= nb * h && c0 + nb <= w);
    // SAFETY: as in `gather_raw`, with source and destination exchanged.
    unsafe {
        if nb == COL_BLOCK {
            copy_block(h, COL_BLOCK, |r, b| {
                (col.as_ptr().add(b * h + r), data.add(r * w + c0 + b))
            });
        } else {
            copy_block(h, nb, |r, b| {
                (col.as_ptr().add(b * h + r), data.add(r * w + c0 + b))
            });
        }
    }
}

/// `*dst = *src` for every (row r < h, column b < nb) with the addresses `at(r, b)` gives.
///
/// # Safety
/// Every address `at` returns must be valid for the access.
#[inline(always)]
unsafe fn copy_block<T: Copy>(
    h: usize,
    nb: usize,
    at: impl Fn(usize, usize) -> (*const T, *mut T),
) {
    for r in 0..h {
        for b in 0..nb {
            let (src, dst) = at(r, b);
            // SAFETY: the caller guarantees both addresses are valid.
            unsafe { *dst = *src };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_complex::{Complex32, Complex64};

    #[test]
    fn gather_scatter_round_trip_all_shapes() {
        for &(h, w) in &[
            (8usize, 16usize),
            (12, 8),
            (5, 11),
            (16, 19),
            (4, 8),
            (128, 128),
        ] {
            let data: Vec<Complex32> = (0..h * w)
                .map(|i| Complex32::new(i as f32, -(i as f32)))
                .collect();
            let mut back = vec![Complex32::new(f32::NAN, f32::NAN); h * w];
            let mut col = vec![Complex32::new(f32::NAN, f32::NAN); 8 * h];
            for c0 in (0..w).step_by(8) {
                let nb = 8.min(w - c0);
                gather(&data, w, h, c0, nb, &mut col);
                for b in 0..nb {
                    for r in 0..h {
                        assert_eq!(col[b * h + r], data[r * w + c0 + b], "{h}x{w} c0={c0}");
                    }
                }
                scatter(&col, w, h, c0, nb, &mut back);
            }
            assert_eq!(back, data, "{h}x{w}");
        }
    }

    /// The float64 plan against a naive 2-D DFT, and the round trip, at odd and
    /// non-square sizes.
    #[test]
    fn f64_plan_matches_the_naive_dft() {
        for &(h, w) in &[(5usize, 7usize), (9, 16), (1, 3)] {
            let x: Vec<Complex64> = (0..h * w)
                .map(|i| Complex64::new((i as f64 * 0.37).sin(), (i as f64 * 0.11).cos()))
                .collect();
            let mut f = x.clone();
            let plan = Plan2d::<f64>::new(h, w);
            let mut sc = plan.scratch();
            plan.forward(&mut f, &mut sc);
            let tau = std::f64::consts::TAU;
            for ky in 0..h {
                for kx in 0..w {
                    let mut acc = Complex64::new(0.0, 0.0);
                    for y in 0..h {
                        for xx in 0..w {
                            let ph =
                                -tau * ((ky * y) as f64 / h as f64 + (kx * xx) as f64 / w as f64);
                            acc += x[y * w + xx] * Complex64::from_polar(1.0, ph);
                        }
                    }
                    assert!((acc - f[ky * w + kx]).norm() < 1e-9, "{h}x{w} ({ky},{kx})");
                }
            }
            plan.inverse(&mut f, &mut sc);
            assert!(plan.scratch().fft.iter().all(|c| c.re.is_nan()));
            for (a, b) in f.iter().zip(&x) {
                assert!((a - b).norm() < 1e-12);
            }
        }
    }
}

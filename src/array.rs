//! Small owned containers for stacks of images, and the centring shifts.
//!
//! On disk every array is *centred*: the zero frequency of a pattern, and the origin of a
//! real-space array, sit at pixel (H/2, W/2) (integer division, numpy's `fftshift`
//! convention). Inside the engine arrays are kept in FFT-native order (origin at (0, 0)).

pub use num_complex::Complex32;

/// A stack of `n` images of `h x w` pixels, row-major, image after image.
#[derive(Clone, Debug, PartialEq)]
pub struct Stack<T> {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<T>,
}

impl<T: Clone> Stack<T> {
    /// A stack filled with `value`.
    pub fn filled(n: usize, h: usize, w: usize, value: T) -> Self {
        Stack {
            n,
            h,
            w,
            data: vec![value; n * h * w],
        }
    }
}

impl<T> Stack<T> {
    /// Wrap `data` (length must be `n*h*w`).
    pub fn from_vec(n: usize, h: usize, w: usize, data: Vec<T>) -> crate::Result<Self> {
        if data.len() != n * h * w {
            return Err(crate::Error::Shape {
                what: "stack".into(),
                expected: format!("{n}x{h}x{w} = {} elements", n * h * w),
                found: vec![data.len()],
            });
        }
        Ok(Stack { n, h, w, data })
    }

    /// Pixels per image.
    pub fn image_len(&self) -> usize {
        self.h * self.w
    }

    /// Image `i` as a slice.
    pub fn image(&self, i: usize) -> &[T] {
        let l = self.image_len();
        &self.data[i * l..(i + 1) * l]
    }

    /// Image `i` as a mutable slice.
    pub fn image_mut(&mut self, i: usize) -> &mut [T] {
        let l = self.image_len();
        &mut self.data[i * l..(i + 1) * l]
    }

    /// Shape as `[n, h, w]`.
    pub fn shape(&self) -> [usize; 3] {
        [self.n, self.h, self.w]
    }
}

/// Circularly shift an `h x w` image so that the pixel at `(dy, dx)` moves to `(0, 0)`:
/// `out[y][x] = inp[(y + dy) % h][(x + dx) % w]`.
pub fn roll_to_origin<T: Copy>(inp: &[T], h: usize, w: usize, dy: usize, dx: usize, out: &mut [T]) {
    debug_assert_eq!(inp.len(), h * w);
    debug_assert_eq!(out.len(), h * w);
    for y in 0..h {
        let sy = (y + dy) % h;
        let src = &inp[sy * w..(sy + 1) * w];
        let dst = &mut out[y * w..(y + 1) * w];
        let k = dx % w;
        dst[..w - k].copy_from_slice(&src[k..]);
        dst[w - k..].copy_from_slice(&src[..k]);
    }
}

/// Centred (origin at (h/2, w/2)) to FFT-native (origin at (0, 0)): numpy's `ifftshift`.
pub fn centred_to_native<T: Copy>(inp: &[T], h: usize, w: usize, out: &mut [T]) {
    roll_to_origin(inp, h, w, h / 2, w / 2, out)
}

/// FFT-native (origin at (0, 0)) to centred (origin at (h/2, w/2)): numpy's `fftshift`.
pub fn native_to_centred<T: Copy>(inp: &[T], h: usize, w: usize, out: &mut [T]) {
    roll_to_origin(inp, h, w, h - h / 2, w - w / 2, out)
}

/// Signed coordinate of native index `i` on an axis of length `n` (0, 1, .., -2, -1).
pub fn signed(i: usize, n: usize) -> i64 {
    if i < n.div_ceil(2) {
        i as i64
    } else {
        i as i64 - n as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_match_numpy_convention_and_invert() {
        for &(h, w) in &[(5usize, 4usize), (4, 7), (1, 3), (6, 6), (7, 9)] {
            let inp: Vec<usize> = (0..h * w).collect();
            let mut nat = vec![0; h * w];
            let mut back = vec![0; h * w];
            centred_to_native(&inp, h, w, &mut nat);
            // the centred origin (h/2, w/2) lands at (0, 0)
            assert_eq!(nat[0], (h / 2) * w + w / 2);
            native_to_centred(&nat, h, w, &mut back);
            assert_eq!(back, inp);
            // fftshift: native (0,0) goes to (h/2, w/2)
            let mut c = vec![0; h * w];
            native_to_centred(&inp, h, w, &mut c);
            assert_eq!(c[(h / 2) * w + w / 2], 0);
        }
    }
}

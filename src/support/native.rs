//! Supports of single images in FFT-native order (origin at (0, 0)): the autocorrelation
//! threshold and the circle that phasing starts from, and the check that a support is not
//! empty. The batch functions of [`crate::support`] return centred stacks built on these.

use crate::array::{signed, Complex32, Stack};
use crate::fft::Plan2d;
use crate::{Error, Result};

/// Support of the autocorrelation of pattern `intensity` (native order, unmeasured pixels
/// given as `measured[i] == false` and set to zero): pixels where |IFFT(I)| >= threshold *
/// its maximum. Returned in native order (origin at (0, 0)).
pub fn autocorrelation_support(
    intensity: &[f32],
    measured: impl Fn(usize) -> bool,
    h: usize,
    w: usize,
    threshold: f32,
    plan: &Plan2d,
) -> Vec<u8> {
    debug_assert_eq!(intensity.len(), h * w);
    let ac = autocorrelation(intensity, measured, plan);
    let max = ac.iter().copied().fold(0.0f32, f32::max);
    let t = threshold * max;
    ac.iter().map(|&v| (max > 0.0 && v >= t) as u8).collect()
}

/// |autocorrelation| = |IFFT(I)| in native order, unmeasured intensities set to zero.
pub fn autocorrelation(
    intensity: &[f32],
    measured: impl Fn(usize) -> bool,
    plan: &Plan2d,
) -> Vec<f32> {
    let mut buf: Vec<Complex32> = intensity
        .iter()
        .enumerate()
        .map(|(i, &v)| Complex32::new(if measured(i) { v.max(0.0) } else { 0.0 }, 0.0))
        .collect();
    plan.inverse(&mut buf, &mut plan.scratch());
    buf.iter().map(|c| c.norm()).collect()
}

/// A disc of `radius` pixels around the origin, native order.
pub fn circle_support(h: usize, w: usize, radius: f32) -> Vec<u8> {
    let r2 = radius * radius;
    let mut s = vec![0u8; h * w];
    for y in 0..h {
        let dy = signed(y, h) as f32;
        for x in 0..w {
            let dx = signed(x, w) as f32;
            s[y * w + x] = (dy * dy + dx * dx <= r2) as u8;
        }
    }
    s
}

/// Check that each support image of a stack is non-empty.
pub fn check_nonempty(s: &Stack<u8>, what: &str) -> Result<()> {
    for i in 0..s.n {
        if s.image(i).iter().all(|&v| v == 0) {
            return Err(Error::invalid(
                what,
                format!("support {i} is empty: nothing can be reconstructed"),
            ));
        }
    }
    Ok(())
}

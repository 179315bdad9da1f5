//! Float64 references and error measures shared by the tests. Written independently of the
//! library (naive loops), so that a test compares the engine against a definition.

use num_complex::Complex64;

/// Naive DFT along one axis of a row-major `h x w` array; `sign` -1 forward, +1 inverse
/// (unnormalised).
pub fn dft_axis(x: &[Complex64], h: usize, w: usize, sign: f64, rows: bool) -> Vec<Complex64> {
    let mut out = vec![Complex64::new(0.0, 0.0); h * w];
    let n = if rows { w } else { h };
    let tw: Vec<Complex64> = (0..n)
        .map(|k| Complex64::from_polar(1.0, sign * std::f64::consts::TAU * k as f64 / n as f64))
        .collect();
    for y in 0..h {
        for x0 in 0..w {
            let mut acc = Complex64::new(0.0, 0.0);
            for j in 0..n {
                let (v, k) = if rows {
                    (x[y * w + j], x0 * j)
                } else {
                    (x[j * w + x0], y * j)
                };
                acc += v * tw[k % n];
            }
            out[y * w + x0] = acc;
        }
    }
    out
}

/// Naive separable 2-D DFT, unnormalised; `sign` -1 forward, +1 inverse.
pub fn dft2(x: &[Complex64], h: usize, w: usize, sign: f64) -> Vec<Complex64> {
    dft_axis(&dft_axis(x, h, w, sign, true), h, w, sign, false)
}

/// ||a - b|| / ||b|| (b the reference).
pub fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

/// ||got - want|| / ||want|| for an engine's f32 output against a float64 reference; every
/// output must be finite (an unwritten, NaN-poisoned element is not).
pub fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let mut num = 0.0;
    let mut den = 0.0;
    for (&g, &w) in got.iter().zip(want) {
        assert!(g.is_finite(), "non-finite output {g}");
        num += (g as f64 - w).powi(2);
        den += w * w;
    }
    (num / den.max(1e-300)).sqrt()
}

/// Relative L2 difference ||a - b|| / ||b|| of two complex64 arrays, in float64.
pub fn rel_c(a: &[num_complex::Complex32], b: &[num_complex::Complex32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).norm_sqr() as f64)
        .sum();
    let den: f64 = b.iter().map(|y| y.norm_sqr() as f64).sum();
    (num / den.max(1e-300)).sqrt()
}

/// Relative L2 difference ||a - b|| / ||b|| of two float32 arrays, in float64.
pub fn rel_f(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

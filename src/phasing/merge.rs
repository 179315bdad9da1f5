//! Alignment of reconstructions onto a reference, averaging of the best starts and the
//! leading modes of their aligned stack (issue 19). Everything here runs in float64 on the
//! host: an alignment costs three 2-D FFTs per candidate, negligible next to the hundreds
//! of iterations that made the objects.
//!
//! Alignment of `b` onto `a` (the trivial ambiguities of phase retrieval):
//! - translation: the circular cross-correlation of the moduli, `IFFT(FFT|a| conj FFT|b|)`,
//!   its maximum (integer pixels; ties to the lowest index);
//! - twin: the same for the twin `conj(b(-x))`; of the two candidates, the one whose
//!   translated copy overlaps `a` more, `|sum conj(b') a|`, is kept (the moduli of a
//!   centrosymmetric object do not tell the twins apart, the complex overlap does);
//! - global phase: `b'` times `c / |c|`, `c = sum conj(b') a`.

use crate::array::Complex32;
use crate::fft::Plan2d;
use num_complex::Complex64;

/// How `b` maps onto `a`: `b'(y, x) = phase * t((y - dy) mod h, (x - dx) mod w)` where `t`
/// is `b`, or its twin `conj(b(-y, -x))` when `twin`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Alignment {
    pub dy: usize,
    pub dx: usize,
    pub twin: bool,
    /// Unit complex factor (global phase).
    pub phase: Complex64,
    /// |sum conj(b') a| / (||a|| ||b||): 1 for a perfect match.
    pub overlap: f64,
}

/// The twin of an h x w image: `conj(b((-y) mod h, (-x) mod w))`.
pub fn twin(b: &[Complex64], h: usize, w: usize) -> Vec<Complex64> {
    let mut out = vec![Complex64::new(0.0, 0.0); h * w];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = b[((h - y) % h) * w + (w - x) % w].conj();
        }
    }
    out
}

/// `t` moved by (dy, dx): `out(y, x) = t((y - dy) mod h, (x - dx) mod w)`.
pub fn shift<T: Copy>(t: &[T], h: usize, w: usize, dy: usize, dx: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(h * w);
    for y in 0..h {
        let sy = (y + h - dy % h) % h;
        for x in 0..w {
            out.push(t[sy * w + (x + w - dx % w) % w]);
        }
    }
    out
}

/// Widen a complex64 image to float64.
pub fn to_c64(v: &[Complex32]) -> Vec<Complex64> {
    v.iter()
        .map(|c| Complex64::new(c.re as f64, c.im as f64))
        .collect()
}

/// An aligner for one image size (the FFT plans made once).
pub struct Aligner {
    h: usize,
    w: usize,
    plan: Plan2d<f64>,
}

impl Aligner {
    pub fn new(h: usize, w: usize) -> Self {
        Aligner {
            h,
            w,
            plan: Plan2d::new(h, w),
        }
    }

    fn modulus_fft(&self, v: &[Complex64]) -> Vec<Complex64> {
        let mut f: Vec<Complex64> = v.iter().map(|c| Complex64::new(c.norm(), 0.0)).collect();
        self.plan.forward(&mut f, &mut self.plan.scratch());
        f
    }

    /// The shift (dy, dx) maximising the circular cross-correlation of |a| and |t|, given
    /// FFT(|a|): sum_x |a(x)| |t(x - d)|.
    fn best_shift(&self, fa: &[Complex64], t: &[Complex64]) -> (usize, usize) {
        let mut c = self.modulus_fft(t);
        for (v, a) in c.iter_mut().zip(fa) {
            *v = a * v.conj();
        }
        self.plan.inverse(&mut c, &mut self.plan.scratch());
        let mut best = 0;
        for (i, v) in c.iter().enumerate() {
            if v.re > c[best].re {
                best = i;
            }
        }
        (best / self.w, best % self.w)
    }

    /// Align `b` onto `a` (see the module's text).
    pub fn align(&self, a: &[Complex64], b: &[Complex64]) -> Alignment {
        let (h, w) = (self.h, self.w);
        let fa = self.modulus_fft(a);
        let na = a.iter().map(|c| c.norm_sqr()).sum::<f64>().sqrt();
        let nb = b.iter().map(|c| c.norm_sqr()).sum::<f64>().sqrt();
        let tw = twin(b, h, w);
        let mut best: Option<Alignment> = None;
        for (is_twin, t) in [(false, b), (true, &tw[..])] {
            let (dy, dx) = self.best_shift(&fa, t);
            let moved = shift(t, h, w, dy, dx);
            let c: Complex64 = moved.iter().zip(a).map(|(m, a)| m.conj() * a).sum();
            let norm = c.norm();
            let phase = if norm > 0.0 {
                c / norm
            } else {
                Complex64::new(1.0, 0.0)
            };
            let overlap = if na > 0.0 && nb > 0.0 {
                norm / (na * nb)
            } else {
                0.0
            };
            // strictly better (relative margin) to prefer the direct orientation on ties
            if best.is_none_or(|b| overlap > b.overlap * (1.0 + 1e-12)) {
                best = Some(Alignment {
                    dy,
                    dx,
                    twin: is_twin,
                    phase,
                    overlap,
                });
            }
        }
        best.expect("two candidates")
    }

    /// `b` moved onto `a`'s frame by `al`.
    pub fn apply(&self, b: &[Complex64], al: &Alignment) -> Vec<Complex64> {
        let (h, w) = (self.h, self.w);
        let t = if al.twin { twin(b, h, w) } else { b.to_vec() };
        let mut out = shift(&t, h, w, al.dy, al.dx);
        out.iter_mut().for_each(|v| *v *= al.phase);
        out
    }

    /// A support moved as [`Aligner::apply`] moves its object (twin: point reflection).
    pub fn apply_support(&self, s: &[u8], al: &Alignment) -> Vec<u8> {
        let (h, w) = (self.h, self.w);
        let t: Vec<u8> = if al.twin {
            (0..h * w)
                .map(|i| s[((h - i / w) % h) * w + (w - i % w) % w])
                .collect()
        } else {
            s.to_vec()
        };
        shift(&t, h, w, al.dy, al.dx)
    }
}

/// The merge of one pattern's best starts.
#[derive(Clone, Debug)]
pub struct Merged {
    /// Average of the aligned starts (the reference's frame), H*W.
    pub object: Vec<Complex32>,
    /// Pixels inside at least half of the aligned supports, H*W.
    pub support: Vec<u8>,
    /// Leading modes, `modes` x H*W: mode i is `sum_j v_i[j] x_j / sqrt(N)` for the
    /// eigenvector v_i of the aligned stack's Gram matrix, so its energy is the share
    /// lambda_i / N of the stack's mean energy (sigma_i^2 / N for the SVD).
    pub modes: Vec<Complex32>,
    /// lambda_i / sum lambda: the fraction of the stack's energy in each mode.
    pub weights: Vec<f32>,
}

/// Merge the objects `stack` (each H*W, the first is the reference) with their supports:
/// align every one onto the first, average, and keep `n_modes` modes of the aligned stack.
pub fn merge(
    aligner: &Aligner,
    stack: &[&[Complex32]],
    supports: &[&[u8]],
    n_modes: usize,
) -> Merged {
    let l = aligner.h * aligner.w;
    let reference = to_c64(stack[0]);
    let mut aligned: Vec<Vec<Complex64>> = Vec::with_capacity(stack.len());
    let mut votes = vec![0u32; l];
    for (j, (o, s)) in stack.iter().zip(supports).enumerate() {
        let b = to_c64(o);
        let (x, sup) = if j == 0 {
            (b, s.to_vec())
        } else {
            let al = aligner.align(&reference, &b);
            (aligner.apply(&b, &al), aligner.apply_support(s, &al))
        };
        for (v, &m) in votes.iter_mut().zip(&sup) {
            *v += (m != 0) as u32;
        }
        aligned.push(x);
    }
    let n = aligned.len();
    let object = (0..l)
        .map(|i| {
            let s: Complex64 = aligned.iter().map(|x| x[i]).sum();
            let s = s / n as f64;
            Complex32::new(s.re as f32, s.im as f32)
        })
        .collect();
    let support = votes.iter().map(|&v| (2 * v as usize >= n) as u8).collect();
    let (modes, weights) = modes(&aligned, n_modes);
    Merged {
        object,
        support,
        modes: modes
            .iter()
            .flatten()
            .map(|c| Complex32::new(c.re as f32, c.im as f32))
            .collect(),
        weights: weights.iter().map(|&w| w as f32).collect(),
    }
}

/// The `m` leading modes of a stack of images (at most the stack size) and their energy
/// fractions, from the eigen-decomposition of the Gram matrix
/// `G_jk = sum_l conj(x_j[l]) x_k[l]` (float64, Jacobi on its real 2N x 2N embedding).
/// Mode i is `sum_j v_i[j] x_j / sqrt(N)` (see [`Merged::modes`]), its phase fixed so that
/// its largest pixel is real and positive.
pub fn modes(stack: &[Vec<Complex64>], m: usize) -> (Vec<Vec<Complex64>>, Vec<f64>) {
    let n = stack.len();
    if n == 0 || m == 0 {
        return (Vec::new(), Vec::new());
    }
    let mut g = vec![Complex64::new(0.0, 0.0); n * n];
    for j in 0..n {
        for k in j..n {
            let v: Complex64 = stack[j]
                .iter()
                .zip(&stack[k])
                .map(|(a, b)| a.conj() * b)
                .sum();
            g[j * n + k] = v;
            g[k * n + j] = v.conj();
        }
    }
    let (vals, vecs) = hermitian_eigen(&g, n);
    let total: f64 = vals.iter().map(|v| v.max(0.0)).sum();
    let l = stack[0].len();
    let scale = 1.0 / (n as f64).sqrt();
    let mut out = Vec::new();
    let mut weights = Vec::new();
    for (val, v) in vals.iter().zip(&vecs).take(m.min(n)) {
        let mut mode = vec![Complex64::new(0.0, 0.0); l];
        for (x, c) in stack.iter().zip(v) {
            for (o, xv) in mode.iter_mut().zip(x) {
                *o += xv * c * scale;
            }
        }
        // fix the phase: the largest pixel real and positive
        if let Some(p) = mode
            .iter()
            .copied()
            .max_by(|a, b| a.norm_sqr().total_cmp(&b.norm_sqr()))
        {
            if p.norm() > 0.0 {
                let f = p.conj() / p.norm();
                mode.iter_mut().for_each(|o| *o *= f);
            }
        }
        out.push(mode);
        weights.push(if total > 0.0 {
            val.max(0.0) / total
        } else {
            0.0
        });
    }
    (out, weights)
}

/// Eigenvalues (descending) and unit eigenvectors of an n x n Hermitian matrix (row-major),
/// by cyclic Jacobi on the real symmetric embedding `[[Re, -Im], [Im, Re]]`, whose
/// eigenvalues are those of the matrix, each twice; one complex eigenvector is kept per
/// pair (complex Gram-Schmidt against the ones kept).
pub fn hermitian_eigen(g: &[Complex64], n: usize) -> (Vec<f64>, Vec<Vec<Complex64>>) {
    let m = 2 * n;
    let mut a = vec![0.0f64; m * m];
    for j in 0..n {
        for k in 0..n {
            let v = g[j * n + k];
            a[j * m + k] = v.re;
            a[(j + n) * m + k + n] = v.re;
            a[j * m + k + n] = -v.im;
            a[(j + n) * m + k] = v.im;
        }
    }
    let mut v = vec![0.0f64; m * m];
    for i in 0..m {
        v[i * m + i] = 1.0;
    }
    let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..100 {
        let off: f64 = (0..m)
            .flat_map(|p| (0..m).filter(move |&q| q != p).map(move |q| (p, q)))
            .map(|(p, q)| a[p * m + q] * a[p * m + q])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * norm.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..m {
            for q in p + 1..m {
                let apq = a[p * m + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[q * m + q] - a[p * m + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..m {
                    let akp = a[k * m + p];
                    let akq = a[k * m + q];
                    a[k * m + p] = c * akp - s * akq;
                    a[k * m + q] = s * akp + c * akq;
                }
                for k in 0..m {
                    let apk = a[p * m + k];
                    let aqk = a[q * m + k];
                    a[p * m + k] = c * apk - s * aqk;
                    a[q * m + k] = s * apk + c * aqk;
                }
                for k in 0..m {
                    let vkp = v[k * m + p];
                    let vkq = v[k * m + q];
                    v[k * m + p] = c * vkp - s * vkq;
                    v[k * m + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| a[j * m + j].total_cmp(&a[i * m + i]).then(i.cmp(&j)));
    let mut vals = Vec::with_capacity(n);
    let mut vecs: Vec<Vec<Complex64>> = Vec::with_capacity(n);
    for &i in &order {
        if vecs.len() == n {
            break;
        }
        let mut u: Vec<Complex64> = (0..n)
            .map(|j| Complex64::new(v[j * m + i], v[(j + n) * m + i]))
            .collect();
        for k in &vecs {
            let d: Complex64 = k.iter().zip(&u).map(|(a, b)| a.conj() * b).sum();
            for (x, y) in u.iter_mut().zip(k) {
                *x -= d * y;
            }
        }
        let nu = u.iter().map(|c| c.norm_sqr()).sum::<f64>().sqrt();
        if nu < 0.5 {
            continue; // the partner of a pair already kept
        }
        u.iter_mut().for_each(|c| *c /= nu);
        vals.push(a[i * m + i]);
        vecs.push(u);
    }
    (vals, vecs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hermitian_eigen_of_a_known_matrix() {
        // G = U diag(5, 2, 0.5) U^H for a unitary U built from a complex rotation
        let n = 3;
        let (c, s) = (0.6f64, 0.8f64);
        let ph = Complex64::from_polar(1.0, 0.7);
        let u = [
            [
                Complex64::new(c, 0.0),
                -ph.conj() * s,
                Complex64::new(0.0, 0.0),
            ],
            [ph * s, Complex64::new(c, 0.0), Complex64::new(0.0, 0.0)],
            [
                Complex64::new(0.0, 0.0),
                Complex64::new(0.0, 0.0),
                Complex64::new(0.0, 1.0),
            ],
        ];
        let d = [5.0, 2.0, 0.5];
        let mut g = vec![Complex64::new(0.0, 0.0); 9];
        for j in 0..n {
            for k in 0..n {
                g[j * n + k] = (0..n).map(|i| u[j][i] * d[i] * u[k][i].conj()).sum();
            }
        }
        let (vals, vecs) = hermitian_eigen(&g, n);
        for (i, want) in d.iter().enumerate() {
            assert!((vals[i] - want).abs() < 1e-12, "{vals:?}");
            // the eigenvector is column i of U up to a phase
            let dot: Complex64 = (0..n).map(|j| u[j][i].conj() * vecs[i][j]).sum();
            assert!((dot.norm() - 1.0).abs() < 1e-12);
        }
    }
}

//! Support estimation from measured patterns or from network outputs:
//!
//! - [`autocorrelation_supports`]: the autocorrelation support, |IFFT(I)| >= T * max (the
//!   same rule as the phasing starting support, stored centred);
//! - [`triple_intersection`]: the triple-intersection method of Crimmins et al., which
//!   intersects shifted copies of the autocorrelation support ([`triple`]);
//! - [`threshold_supports`]: a threshold of a network estimate (`predict` output);
//! - [`baselines`]: the training-set mean image and the oracle (the true density at the
//!   network's resolution, twin-averaged), thresholded like a network output, and the
//!   circle of the particle's maximum extent (the paper's circular starting support).
//!
//! Every support returned here is centred (origin at (H/2, W/2)) like every array on disk,
//! so it can be passed to `cdiphase phase --support`.

pub mod baselines;
pub mod native;
pub mod triple;

pub use triple::{triple_intersection, TripleIntersection};

use crate::array::{native_to_centred, Stack};
use crate::fft::Plan2d;
use crate::io::PatternSet;
use crate::{Error, Result};
use native::autocorrelation;

/// Support estimation method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Autocorrelation,
    TripleIntersection,
    Nn,
    /// The training set's mean target image ([`baselines::mean_image`]).
    MeanImage,
    /// The true density blurred and twin-averaged ([`baselines::oracle`]).
    Oracle,
    /// A centred disc of the ideal support's maximum extent ([`baselines::circle_of_extent`]).
    Circle,
}

impl Method {
    /// Parse `autocorrelation`, `triple-intersection` or `nn`.
    pub fn parse(text: &str) -> Result<Method> {
        match text.trim().to_ascii_lowercase().as_str() {
            "autocorrelation" | "ac" => Ok(Method::Autocorrelation),
            "triple-intersection" | "triple" => Ok(Method::TripleIntersection),
            "nn" => Ok(Method::Nn),
            "mean-image" | "mean" => Ok(Method::MeanImage),
            "oracle" => Ok(Method::Oracle),
            "circle" => Ok(Method::Circle),
            other => Err(Error::Config(format!(
                "unknown support method '{other}': expected autocorrelation, triple-intersection, \
                 nn, mean-image, oracle or circle"
            ))),
        }
    }

    /// The default threshold of the method (fraction of the per-pattern maximum).
    pub fn default_threshold(self) -> f32 {
        match self {
            Method::Autocorrelation => 0.04,
            // a lower threshold keeps the faint rim of the difference set, which the
            // intersection needs to stay a superset of the object
            Method::TripleIntersection => 0.001,
            Method::Nn | Method::MeanImage | Method::Oracle => 0.1,
            // not thresholded: a disc of the ideal support's extent
            Method::Circle => 0.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Autocorrelation => "autocorrelation",
            Method::TripleIntersection => "triple-intersection",
            Method::Nn => "nn",
            Method::MeanImage => "mean-image",
            Method::Oracle => "oracle",
            Method::Circle => "circle",
        }
    }
}

/// Check a threshold is a fraction in (0, 1].
pub fn check_threshold(t: f32) -> Result<()> {
    if !(t > 0.0 && t <= 1.0) {
        return Err(Error::Config(format!(
            "threshold {t} must be in (0, 1] (a fraction of the per-pattern maximum)"
        )));
    }
    Ok(())
}

/// Centred |autocorrelation| of every pattern (unmeasured pixels set to zero, negative
/// intensities clipped), as (N,H,W). Patterns are read as stored (centred).
pub fn autocorrelations(patterns: &PatternSet) -> Result<Stack<f32>> {
    let st = &patterns.intensities;
    let (n, h, w) = (st.n, st.h, st.w);
    let l = h * w;
    let plan = Plan2d::new(h, w);
    let mut out = Stack::filled(n, h, w, 0.0f32);
    let mut native = vec![0.0f32; l];
    let mut nmask = vec![0u8; l];
    for p in 0..n {
        let img = st.image(p);
        if let Some(i) = img.iter().position(|v| !v.is_finite()) {
            let masked = patterns
                .mask
                .as_ref()
                .is_some_and(|m| m.image(if m.n == 1 { 0 } else { p })[i] != 0);
            if !masked {
                return Err(Error::invalid(
                    format!("{}:{}", patterns.source.display(), patterns.entry),
                    format!(
                        "pattern {p} pixel (y={}, x={}) is {}: mask it or fix the data",
                        i / w,
                        i % w,
                        img[i]
                    ),
                ));
            }
        }
        crate::array::centred_to_native(img, h, w, &mut native);
        match &patterns.mask {
            Some(m) => crate::array::centred_to_native(
                m.image(if m.n == 1 { 0 } else { p }),
                h,
                w,
                &mut nmask,
            ),
            None => nmask.iter_mut().for_each(|v| *v = 0),
        }
        let ac = autocorrelation(&native, |i| nmask[i] == 0 && native[i].is_finite(), &plan);
        native_to_centred(&ac, h, w, out.image_mut(p));
    }
    Ok(out)
}

/// Threshold each image of a stack at `threshold` times its own maximum: `v > threshold *
/// max(v)`, signed, the rule `predict` applies ([`crate::nn::predict::support_of`]), so
/// that the same output gives the same support either way (negative network outputs, a
/// tanh's undershoot, are never support). An image whose maximum is not positive gives an
/// empty support.
pub fn threshold_supports(images: &Stack<f32>, threshold: f32) -> Stack<u8> {
    let mut out = Stack::filled(images.n, images.h, images.w, 0u8);
    for p in 0..images.n {
        crate::nn::predict::support_of(images.image(p), threshold, out.image_mut(p));
    }
    out
}

/// Autocorrelation supports of every pattern, centred: |IFFT(I)| >= threshold * max.
pub fn autocorrelation_supports(patterns: &PatternSet, threshold: f32) -> Result<Stack<u8>> {
    check_threshold(threshold)?;
    let ac = autocorrelations(patterns)?;
    let mut out = Stack::filled(ac.n, ac.h, ac.w, 0u8);
    for p in 0..ac.n {
        let img = ac.image(p);
        let max = img.iter().copied().fold(0.0f32, f32::max);
        let t = threshold * max;
        for (o, &v) in out.image_mut(p).iter_mut().zip(img) {
            *o = (max > 0.0 && v >= t) as u8;
        }
    }
    Ok(out)
}

/// Estimate the supports of every pattern with `method` (not [`Method::Nn`], which needs a
/// network output: use [`threshold_supports`]). Returns the supports and, for the triple
/// intersection, the per-pattern details.
pub fn estimate_from_patterns(
    patterns: &PatternSet,
    method: Method,
    threshold: f32,
) -> Result<(Stack<u8>, Vec<Option<TripleIntersection>>)> {
    check_threshold(threshold)?;
    match method {
        Method::Autocorrelation => {
            let s = autocorrelation_supports(patterns, threshold)?;
            let n = s.n;
            Ok((s, vec![None; n]))
        }
        Method::TripleIntersection => {
            let a = autocorrelation_supports(patterns, threshold)?;
            let mut out = Stack::filled(a.n, a.h, a.w, 0u8);
            let mut info = Vec::with_capacity(a.n);
            for p in 0..a.n {
                let t = triple_intersection(a.image(p), a.h, a.w);
                out.image_mut(p).copy_from_slice(&t.support);
                info.push(Some(t));
            }
            Ok((out, info))
        }
        Method::Nn | Method::MeanImage | Method::Oracle | Method::Circle => {
            Err(Error::Config(format!(
            "the {} method thresholds an image (a network output, the mean image, the oracle), \
             not patterns",
            method.name()
        )))
        }
    }
}

//! The triple-intersection method of Crimmins, Fienup and Holsztynski (J. Opt. Soc. Am. A,
//! 1982): bound the support S of an object by intersecting shifted copies of the support A
//! of its autocorrelation.
//!
//! Why it works (pixel sets, exact): A = S - S. For any d = a - b in A (a, b in S),
//! S - b lies in A and in A + d, so the *double* intersection A ∩ (A + d) holds a translate
//! of S. If two shifts share an endpoint, d1 = a1 - b and d2 = a2 - b, then S - b lies in
//! the *triple* intersection A ∩ (A + d1) ∩ (A + d2). Shifts that are known to share an
//! endpoint come from the convex hull: hull(A) = hull(S) + hull(-S), each vertex of it is a
//! difference of two vertices of hull(S), and two adjacent vertices of hull(A) differ by one
//! edge of hull(S) or of hull(-S), so they share one endpoint (b, or a for the twin -S,
//! which is as good: the twin is a trivial ambiguity).
//!
//! What this implementation does:
//! 1. keeps the 8-connected component of A that holds the origin (isolated noise pixels
//!    would otherwise become hull vertices);
//! 2. takes the vertices of the convex hull of that component (the extremal points);
//! 3. for every pair of adjacent hull vertices (e1, e2) whose difference e1 - e2 is itself
//!    in A (necessary for a shared endpoint: e1 - e2 = a1 - a2; it rejects the merged
//!    parallel edges of hull(S) and hull(-S), as in axis-aligned rectangles), forms the
//!    triple intersection, and keeps the smallest;
//! 4. when no pair passes, keeps the smallest double intersection A ∩ (A + e) over hull
//!    vertices e, which is always valid;
//! 5. moves the result so its centroid is at (H/2, W/2).
//!
//! Limits (also in NOTES.md):
//! - the result bounds S only up to translation and the twin;
//! - it is tight for objects whose hull has few vertices joined by long straight edges
//!   (polygons, concave shapes such as an L); for smooth convex objects (discs, ellipses)
//!   adjacent hull vertices are close together and the result is the loose lens
//!   A ∩ (A + e) (the paper: "convex autocorrelations lead to loose support");
//! - it needs an autocorrelation support that is exactly S - S: a threshold that trims
//!   its faint rim, noise, or missing low-angle data (a beamstop) shift the extremal points
//!   and give false negatives. The paper reports the same failure on experimental data.

use std::collections::VecDeque;

/// The triple-intersection estimate of one pattern.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TripleIntersection {
    /// The estimated support, centred, (H*W).
    #[serde(skip)]
    pub support: Vec<u8>,
    /// Shifts (dy, dx) of the copies of A intersected (besides A itself).
    pub shifts: Vec<(i64, i64)>,
    /// "triple", "double", or "none" (A was empty).
    pub kind: &'static str,
    /// Pixels of the estimate.
    pub area: usize,
    /// Pixels of the connected autocorrelation support used.
    pub autocorrelation_area: usize,
    /// Number of convex-hull vertices (extremal points) of the autocorrelation support.
    pub hull_vertices: usize,
}

/// Convex hull (counter-clockwise, collinear points dropped) of integer points (y, x).
pub fn convex_hull(points: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut p: Vec<(i64, i64)> = points.to_vec();
    p.sort_unstable_by_key(|&(y, x)| (x, y));
    p.dedup();
    if p.len() < 3 {
        return p;
    }
    let cross = |o: (i64, i64), a: (i64, i64), b: (i64, i64)| {
        (a.1 - o.1) * (b.0 - o.0) - (a.0 - o.0) * (b.1 - o.1)
    };
    let mut hull: Vec<(i64, i64)> = Vec::with_capacity(2 * p.len());
    for pass in 0..2 {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &(i64, i64)>> = if pass == 0 {
            Box::new(p.iter())
        } else {
            Box::new(p.iter().rev())
        };
        for &q in iter {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], q) <= 0
            {
                hull.pop();
            }
            hull.push(q);
        }
        hull.pop();
    }
    hull
}

/// The 8-connected component of the centred mask `a` holding the centre (h/2, w/2); empty
/// when the centre is not set.
pub fn centre_component(a: &[u8], h: usize, w: usize) -> Vec<u8> {
    let mut out = vec![0u8; h * w];
    let c = (h / 2) * w + w / 2;
    if a[c] == 0 {
        return out;
    }
    let mut q = VecDeque::from([c]);
    out[c] = 1;
    while let Some(i) = q.pop_front() {
        let (y, x) = ((i / w) as i64, (i % w) as i64);
        for dy in -1..=1i64 {
            for dx in -1..=1i64 {
                let (yy, xx) = (y + dy, x + dx);
                if yy < 0 || xx < 0 || yy >= h as i64 || xx >= w as i64 {
                    continue;
                }
                let j = yy as usize * w + xx as usize;
                if a[j] != 0 && out[j] == 0 {
                    out[j] = 1;
                    q.push_back(j);
                }
            }
        }
    }
    out
}

/// Triple-intersection support from a centred autocorrelation support `a` (H*W, origin at
/// (h/2, w/2)). See the module documentation for the method and its limits.
pub fn triple_intersection(a: &[u8], h: usize, w: usize) -> TripleIntersection {
    assert_eq!(a.len(), h * w);
    let comp = centre_component(a, h, w);
    let (cy, cx) = ((h / 2) as i64, (w / 2) as i64);
    let pts: Vec<(i64, i64)> = comp
        .iter()
        .enumerate()
        .filter(|(_, &v)| v != 0)
        .map(|(i, _)| ((i / w) as i64 - cy, (i % w) as i64 - cx))
        .collect();
    let inside = |d: (i64, i64)| -> bool {
        let (y, x) = (d.0 + cy, d.1 + cx);
        y >= 0 && x >= 0 && y < h as i64 && x < w as i64 && comp[y as usize * w + x as usize] != 0
    };
    if pts.is_empty() {
        return TripleIntersection {
            support: vec![0; h * w],
            shifts: vec![],
            kind: "none",
            area: 0,
            autocorrelation_area: 0,
            hull_vertices: 0,
        };
    }
    let hull = convex_hull(&pts);
    // pixels p of A with p - d in A for every shift d
    let intersect = |shifts: &[(i64, i64)]| -> Vec<(i64, i64)> {
        pts.iter()
            .copied()
            .filter(|&p| shifts.iter().all(|&d| inside((p.0 - d.0, p.1 - d.1))))
            .collect()
    };
    // (pixels of the intersection, shifts used)
    type Candidate = (Vec<(i64, i64)>, Vec<(i64, i64)>);
    let mut best: Option<Candidate> = None;
    let k = hull.len();
    if k >= 3 {
        for i in 0..k {
            let (e1, e2) = (hull[i], hull[(i + 1) % k]);
            if !inside((e1.0 - e2.0, e1.1 - e2.1)) {
                continue;
            }
            let t = intersect(&[e1, e2]);
            if !t.is_empty() && best.as_ref().is_none_or(|b| t.len() < b.0.len()) {
                best = Some((t, vec![e1, e2]));
            }
        }
    }
    let kind = if best.is_some() { "triple" } else { "double" };
    if best.is_none() {
        for &e in &hull {
            let t = intersect(&[e]);
            if !t.is_empty() && best.as_ref().is_none_or(|b| t.len() < b.0.len()) {
                best = Some((t, vec![e]));
            }
        }
    }
    let (t, shifts) = best.unwrap_or_else(|| (pts.clone(), vec![]));
    // centre the estimate: centroid to (h/2, w/2) (it fits: it is a subset of A, which is
    // centred and symmetric)
    let n = t.len() as f64;
    let my = (t.iter().map(|p| p.0 as f64).sum::<f64>() / n).round() as i64;
    let mx = (t.iter().map(|p| p.1 as f64).sum::<f64>() / n).round() as i64;
    let mut support = vec![0u8; h * w];
    for p in &t {
        let (y, x) = (p.0 - my + cy, p.1 - mx + cx);
        if y >= 0 && x >= 0 && y < h as i64 && x < w as i64 {
            support[y as usize * w + x as usize] = 1;
        }
    }
    TripleIntersection {
        area: support.iter().filter(|&&v| v != 0).count(),
        support,
        shifts,
        kind,
        autocorrelation_area: pts.len(),
        hull_vertices: hull.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hull_of_a_square_has_four_corners() {
        let pts: Vec<(i64, i64)> = (0..5).flat_map(|y| (0..5).map(move |x| (y, x))).collect();
        let mut h = convex_hull(&pts);
        h.sort();
        assert_eq!(h, vec![(0, 0), (0, 4), (4, 0), (4, 4)]);
    }
}

//! PNG figures with plotters (bitmap backend, no system fonts: DejaVu Sans is embedded and
//! registered with plotters' `ab_glyph` text renderer), encoded with the `png` crate.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::metrics::RadialCurve;
use crate::{Error, Result};

/// DejaVu Sans (Bitstream Vera licence, see assets/fonts/DejaVu-LICENSE.txt).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // the embedded font is a valid TTF, checked by the tests that draw text
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

fn font(size: f64) -> TextStyle<'static> {
    (FAMILY, size).into_font().into()
}

/// Colours of the series, colour-blind friendly (Okabe-Ito).
pub const SERIES: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

fn colour(i: usize) -> RGBColor {
    SERIES[i % SERIES.len()]
}

fn perr<E: std::fmt::Debug>(dest: &Path) -> impl Fn(E) -> Error + '_ {
    move |e| Error::format(dest, format!("drawing the figure: {e:?}"))
}

/// Draw into an RGB buffer with `draw`, then write it as PNG to `dest`.
pub fn render(
    dest: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
) -> Result<()> {
    register();
    let mut buf = vec![255u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(perr(dest))?;
        draw(&root)?;
        root.present().map_err(perr(dest))?;
    }
    write_png(dest, size, &buf)
}

/// Write an RGB8 buffer as PNG.
pub fn write_png(dest: &Path, size: (u32, u32), rgb: &[u8]) -> Result<()> {
    let file = std::fs::File::create(dest).map_err(|e| Error::io(dest, e))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), size.0, size.1);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc
        .write_header()
        .map_err(|e| Error::format(dest, format!("PNG: {e}")))?;
    wr.write_image_data(rgb)
        .map_err(|e| Error::format(dest, format!("PNG: {e}")))?;
    wr.finish()
        .map_err(|e| Error::format(dest, format!("PNG: {e}")))
}

/// Two significant digits, plain or scientific.
fn sig2(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let e = v.abs().log10().floor() as i32;
    if (-3..4).contains(&e) {
        format!("{v:.*}", (1 - e).max(0) as usize)
    } else {
        format!("{v:.1e}")
    }
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let e = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * e {
            return m * e;
        }
    }
    10.0 * e
}

/// One method's false positives and negatives, per pattern.
pub struct FpFn<'a> {
    pub label: &'a str,
    pub fp: Vec<f64>,
    pub fn_: Vec<f64>,
}

/// The paper's figure 4: FP (x) against FN (y) per pattern, with histograms of FP on top
/// and of FN on the right.
pub fn fp_fn_scatter(dest: &Path, series: &[FpFn<'_>]) -> Result<()> {
    let all_fp = series.iter().flat_map(|s| s.fp.iter().copied());
    let all_fn = series.iter().flat_map(|s| s.fn_.iter().copied());
    let xmax = nice_max(all_fp.fold(0.0, f64::max) * 1.05);
    let ymax = nice_max(all_fn.fold(0.0, f64::max) * 1.05).max(5.0);
    let nb = 20usize;
    let hist = |v: &[f64], max: f64| -> Vec<usize> {
        let mut c = vec![0usize; nb];
        for &x in v {
            let b = ((x / max) * nb as f64).floor() as usize;
            c[b.min(nb - 1)] += 1;
        }
        c
    };
    render(dest, (1000, 860), |root| {
        let e = perr(dest);
        let (title, rest) = root.split_vertically(40);
        title
            .titled(
                "Support estimates against the ideal support (after alignment)",
                font(22.0),
            )
            .map_err(&e)?;
        let (top, bottom) = rest.split_vertically(200);
        let (top_l, _top_r) = top.split_horizontally(780);
        let (main, right) = bottom.split_horizontally(780);
        // top: FP histogram (outline per method)
        let fph: Vec<Vec<usize>> = series.iter().map(|s| hist(&s.fp, xmax)).collect();
        let fnh: Vec<Vec<usize>> = series.iter().map(|s| hist(&s.fn_, ymax)).collect();
        let cmax = fph
            .iter()
            .chain(&fnh)
            .flatten()
            .copied()
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let mut ch = ChartBuilder::on(&top_l)
            .margin_left(10)
            .margin_right(10)
            .x_label_area_size(10)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..xmax, 0.0..cmax * 1.1)
            .map_err(&e)?;
        ch.configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("patterns")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(font(14.0))
            .axis_desc_style(font(16.0))
            .draw()
            .map_err(&e)?;
        for (i, h) in fph.iter().enumerate() {
            let pts: Vec<(f64, f64)> = step_points(h, xmax, nb);
            ch.draw_series(LineSeries::new(pts, colour(i).stroke_width(2)))
                .map_err(&e)?;
        }
        // main scatter
        let mut ch = ChartBuilder::on(&main)
            .margin(10)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..xmax, 0.0..ymax)
            .map_err(&e)?;
        ch.configure_mesh()
            .x_desc("false positives (pixels in the estimate, not in the ideal support)")
            .y_desc("false negatives (pixels)")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(font(14.0))
            .axis_desc_style(font(16.0))
            .draw()
            .map_err(&e)?;
        for (i, s) in series.iter().enumerate() {
            let c = colour(i);
            ch.draw_series(
                s.fp.iter()
                    .zip(&s.fn_)
                    .map(|(&x, &y)| Circle::new((x, y), 4, c.mix(0.6).filled())),
            )
            .map_err(&e)?
            .label(format!("{} (n = {})", s.label, s.fp.len()))
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, c.filled()));
        }
        draw_legend(&mut ch, SeriesLabelPosition::UpperRight, dest)?;
        // right: FN histogram, horizontal
        let mut ch = ChartBuilder::on(&right)
            .margin(10)
            .x_label_area_size(60)
            .y_label_area_size(10)
            .build_cartesian_2d(0.0..cmax * 1.1, 0.0..ymax)
            .map_err(&e)?;
        ch.configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_labels(3)
            .x_desc("patterns")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style(font(14.0))
            .axis_desc_style(font(16.0))
            .draw()
            .map_err(&e)?;
        for (i, h) in fnh.iter().enumerate() {
            let pts: Vec<(f64, f64)> = step_points(h, ymax, nb)
                .into_iter()
                .map(|(a, b)| (b, a))
                .collect();
            ch.draw_series(LineSeries::new(pts, colour(i).stroke_width(2)))
                .map_err(&e)?;
        }
        Ok(())
    })
}

/// The framed legend every figure uses, at `pos`.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    ch: &mut ChartContext<'a, DB, CT>,
    pos: SeriesLabelPosition,
    dest: &Path,
) -> Result<()> {
    ch.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(font(15.0))
        .position(pos)
        .draw()
        .map_err(perr(dest))
}

/// A legend marker: a short line in the series colour.
fn legend_line(col: RGBColor, x: i32, y: i32) -> PathElement<(i32, i32)> {
    PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(3))
}

fn step_points(h: &[usize], max: f64, nb: usize) -> Vec<(f64, f64)> {
    let bw = max / nb as f64;
    let mut pts = vec![(0.0, 0.0)];
    for (b, &c) in h.iter().enumerate() {
        pts.push((b as f64 * bw, c as f64));
        pts.push(((b + 1) as f64 * bw, c as f64));
    }
    pts.push((max, 0.0));
    pts
}

/// PRTF curves (one per method) against spatial frequency, with the 1/e level.
pub fn prtf_curves(
    dest: &Path,
    curves: &[(&str, &RadialCurve, Option<f64>)],
    pixel_nm: Option<f64>,
) -> Result<()> {
    render(dest, (1000, 650), |root| {
        let e = perr(dest);
        let xlab = match pixel_nm {
            Some(p) => format!("spatial frequency (cycles per pixel; 1 pixel = {p:.3} nm)"),
            None => "spatial frequency (cycles per pixel)".to_string(),
        };
        let mut ch = ChartBuilder::on(root)
            .caption(
                "PRTF over aligned random starts (mean over patterns)",
                font(22.0),
            )
            .margin(15)
            .x_label_area_size(60)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..0.5, 0.0..1.05)
            .map_err(&e)?;
        ch.configure_mesh()
            .x_desc(xlab)
            .y_desc("PRTF")
            .label_style(font(15.0))
            .axis_desc_style(font(17.0))
            .draw()
            .map_err(&e)?;
        let inv_e = (-1.0f64).exp();
        ch.draw_series(LineSeries::new(
            vec![(0.0, inv_e), (0.5, inv_e)],
            BLACK.stroke_width(1),
        ))
        .map_err(&e)?
        .label("1/e")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        for (i, (label, c, res)) in curves.iter().enumerate() {
            let col = colour(i);
            let pts: Vec<(f64, f64)> = c
                .frequency
                .iter()
                .zip(&c.value)
                .filter(|(_, v)| v.is_finite())
                .map(|(&f, &v)| (f, v))
                .collect();
            let lab = match res {
                Some(r) => format!(
                    "{label}: 1/e at {r:.3} cycles/px ({:.1} px full period)",
                    1.0 / r
                ),
                None => format!("{label}: does not cross 1/e"),
            };
            ch.draw_series(LineSeries::new(pts, col.stroke_width(2)))
                .map_err(&e)?
                .label(lab)
                .legend(move |(x, y)| legend_line(col, x, y));
        }
        draw_legend(&mut ch, SeriesLabelPosition::UpperRight, dest)?;
        Ok(())
    })
}

/// One method's Fourier error histories: (records per pattern L, N*L values).
pub struct Histories<'a> {
    pub label: &'a str,
    pub records: usize,
    pub values: &'a [f32],
}

/// Fourier error histories (the paper's figure 7): the median over the histories of each
/// method (patterns, or patterns x starts), with the 10 % - 90 % range shaded, on a log
/// axis, under `title`.
pub fn error_curves(
    dest: &Path,
    series: &[Histories<'_>],
    title: &str,
    xlabel: &str,
) -> Result<()> {
    let quant = |s: &Histories<'_>| -> Vec<(f64, f64, f64)> {
        let l = s.records;
        let n = s.values.len().checked_div(l).unwrap_or(0);
        (0..l)
            .map(|j| {
                let mut v: Vec<f64> = (0..n)
                    .map(|p| s.values[p * l + j] as f64)
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .collect();
                v.sort_by(|a, b| a.partial_cmp(b).unwrap());
                if v.is_empty() {
                    return (f64::NAN, f64::NAN, f64::NAN);
                }
                let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
                (q(0.1), q(0.5), q(0.9))
            })
            .collect()
    };
    let qs: Vec<Vec<(f64, f64, f64)>> = series.iter().map(quant).collect();
    let finite = qs
        .iter()
        .flatten()
        .flat_map(|&(a, _, c)| [a, c])
        .filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = if lo.is_finite() && hi > 0.0 {
        (lo / 1.3, hi * 1.3)
    } else {
        (1e-3, 1.0)
    };
    let lmax = series.iter().map(|s| s.records).max().unwrap_or(1).max(2) as f64;
    render(dest, (1000, 650), |root| {
        let e = perr(dest);
        let mut ch = ChartBuilder::on(root)
            .caption(title, font(22.0))
            .margin(15)
            .x_label_area_size(60)
            .y_label_area_size(80)
            // log axis drawn as a linear axis of log10 values: plotters' log scale puts
            // no labels on a range narrower than a decade
            .build_cartesian_2d(1.0..lmax, lo.log10()..hi.log10())
            .map_err(&e)?;
        ch.configure_mesh()
            .x_desc(xlabel)
            .y_desc("Fourier error sqrt(sum (|F| - A)^2 / sum A^2), log scale")
            .y_labels(12)
            .y_label_formatter(&|v| sig2(10f64.powf(*v)))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style(font(15.0))
            .axis_desc_style(font(17.0))
            .draw()
            .map_err(&e)?;
        for (i, (s, q)) in series.iter().zip(&qs).enumerate() {
            let col = colour(i);
            let mut poly: Vec<(f64, f64)> = Vec::new();
            for (j, &(a, _, _)) in q.iter().enumerate() {
                if a.is_finite() {
                    poly.push(((j + 1) as f64, a.log10()));
                }
            }
            for (j, &(_, _, c)) in q.iter().enumerate().rev() {
                if c.is_finite() {
                    poly.push(((j + 1) as f64, c.log10()));
                }
            }
            if poly.len() >= 3 {
                ch.draw_series(std::iter::once(Polygon::new(poly, col.mix(0.18).filled())))
                    .map_err(&e)?;
            }
            let med: Vec<(f64, f64)> = q
                .iter()
                .enumerate()
                .filter(|(_, m)| m.1.is_finite())
                .map(|(j, m)| ((j + 1) as f64, m.1.log10()))
                .collect();
            let n = s.values.len().checked_div(s.records).unwrap_or(0);
            ch.draw_series(LineSeries::new(med, col.stroke_width(2)))
                .map_err(&e)?
                .label(format!("{} (n = {n})", s.label))
                .legend(move |(x, y)| legend_line(col, x, y));
        }
        draw_legend(&mut ch, SeriesLabelPosition::UpperRight, dest)?;
        Ok(())
    })
}

/// Histograms of a per-pattern value (one outline per method).
pub fn value_histogram(
    dest: &Path,
    title: &str,
    xlabel: &str,
    series: &[(&str, Vec<f64>)],
) -> Result<()> {
    let xmax = nice_max(
        series
            .iter()
            .flat_map(|s| s.1.iter().copied())
            .fold(0.0, f64::max)
            * 1.02,
    );
    let nb = 25;
    let hs: Vec<Vec<usize>> = series
        .iter()
        .map(|(_, v)| {
            let mut c = vec![0usize; nb];
            for &x in v.iter().filter(|x| x.is_finite()) {
                c[(((x / xmax) * nb as f64) as usize).min(nb - 1)] += 1;
            }
            c
        })
        .collect();
    let cmax = hs.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    render(dest, (1000, 600), |root| {
        let e = perr(dest);
        let mut ch = ChartBuilder::on(root)
            .caption(title, font(22.0))
            .margin(15)
            .x_label_area_size(60)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..xmax, 0.0..cmax * 1.15)
            .map_err(&e)?;
        ch.configure_mesh()
            .x_desc(xlabel)
            .y_desc("patterns")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(font(15.0))
            .axis_desc_style(font(17.0))
            .draw()
            .map_err(&e)?;
        for (i, ((label, v), h)) in series.iter().zip(&hs).enumerate() {
            let col = colour(i);
            let med = super::metrics::stats(v)
                .map(|s| s.median)
                .unwrap_or(f64::NAN);
            ch.draw_series(LineSeries::new(
                step_points(h, xmax, nb),
                col.stroke_width(2),
            ))
            .map_err(&e)?
            .label(format!("{label} (median {med:.3})"))
            .legend(move |(x, y)| legend_line(col, x, y));
        }
        draw_legend(&mut ch, SeriesLabelPosition::UpperRight, dest)?;
        Ok(())
    })
}

/// Empirical cumulative distributions of a per-pattern value (one step line per method):
/// the fraction of patterns at or below each value. Legible with many methods, where
/// overlapping histograms are not.
pub fn value_cdf(
    dest: &Path,
    title: &str,
    xlabel: &str,
    series: &[(&str, Vec<f64>)],
) -> Result<()> {
    let xmax = nice_max(
        series
            .iter()
            .flat_map(|s| s.1.iter().copied())
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
            * 1.02,
    );
    render(dest, (1000, 600), |root| {
        let e = perr(dest);
        let mut ch = ChartBuilder::on(root)
            .caption(title, font(22.0))
            .margin(15)
            .x_label_area_size(60)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..xmax, 0.0..1.02)
            .map_err(&e)?;
        ch.configure_mesh()
            .x_desc(xlabel)
            .y_desc("fraction of patterns at or below")
            .label_style(font(15.0))
            .axis_desc_style(font(17.0))
            .draw()
            .map_err(&e)?;
        for (i, (label, v)) in series.iter().enumerate() {
            let col = colour(i);
            let mut sorted: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
            sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let n = sorted.len().max(1) as f64;
            let mut pts = vec![(0.0, 0.0)];
            for (k, &x) in sorted.iter().enumerate() {
                pts.push((x, k as f64 / n));
                pts.push((x, (k + 1) as f64 / n));
            }
            pts.push((xmax, sorted.len() as f64 / n));
            let med = super::metrics::stats(v)
                .map(|s| s.median)
                .unwrap_or(f64::NAN);
            ch.draw_series(LineSeries::new(pts, col.stroke_width(2)))
                .map_err(&e)?
                .label(format!("{label} (median {med:.3}, n = {})", sorted.len()))
                .legend(move |(x, y)| legend_line(col, x, y));
        }
        draw_legend(&mut ch, SeriesLabelPosition::LowerRight, dest)?;
        Ok(())
    })
}

/// How a tile of the image grid is coloured.
pub enum Tile {
    /// Real values, viridis from min to max; `log` takes log10(max(v, tiny)) first.
    Map { values: Vec<f32>, log: bool },
    /// A support difference: 0 = neither, 1 = both (grey), 2 = false positive (red),
    /// 3 = false negative (blue).
    Diff(Vec<u8>),
    /// Signed values, blue-white-red, symmetric about 0.
    Signed(Vec<f32>),
    /// Nothing available.
    Empty,
}

fn viridis(t: f64) -> RGBColor {
    const S: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = t.clamp(0.0, 1.0) * 4.0;
    let i = (t.floor() as usize).min(3);
    let f = t - i as f64;
    let (a, b) = (S[i], S[i + 1]);
    RGBColor(
        (a.0 + (b.0 - a.0) * f) as u8,
        (a.1 + (b.1 - a.1) * f) as u8,
        (a.2 + (b.2 - a.2) * f) as u8,
    )
}

fn tile_colours(t: &Tile) -> Vec<RGBColor> {
    match t {
        Tile::Map { values, log } => {
            let v: Vec<f64> = if *log {
                let max = values.iter().copied().fold(0.0f32, f32::max) as f64;
                let floor = (max * 1e-7).max(f64::MIN_POSITIVE);
                values
                    .iter()
                    .map(|&x| (x as f64).max(floor).log10())
                    .collect()
            } else {
                values.iter().map(|&x| x as f64).collect()
            };
            let (lo, hi) = v
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                    (a.min(x), b.max(x))
                });
            let span = if hi > lo { hi - lo } else { 1.0 };
            v.iter().map(|&x| viridis((x - lo) / span)).collect()
        }
        Tile::Diff(d) => d
            .iter()
            .map(|&c| match c {
                1 => RGBColor(170, 170, 170),
                2 => RGBColor(220, 30, 30),
                3 => RGBColor(30, 60, 230),
                _ => RGBColor(255, 255, 255),
            })
            .collect(),
        Tile::Signed(v) => {
            let m = v.iter().map(|x| x.abs()).fold(0.0f32, f32::max).max(1e-30);
            v.iter()
                .map(|&x| {
                    let t = (x / m).clamp(-1.0, 1.0) as f64;
                    if t >= 0.0 {
                        let k = (255.0 * (1.0 - t)) as u8;
                        RGBColor(255, k, k)
                    } else {
                        let k = (255.0 * (1.0 + t)) as u8;
                        RGBColor(k, k, 255)
                    }
                })
                .collect()
        }
        Tile::Empty => vec![],
    }
}

/// An image grid like the paper's figure 6: one row per pattern, one column per title.
/// Every tile is h x w, drawn at `scale` pixels per image pixel.
pub fn image_grid(
    dest: &Path,
    titles: &[String],
    row_labels: &[String],
    rows: &[Vec<Tile>],
    h: usize,
    w: usize,
    footer: &str,
) -> Result<()> {
    let scale = (200 / h.max(w)).clamp(1, 4);
    let (tw, th) = ((w * scale) as u32, (h * scale) as u32);
    let pad = 8u32;
    let left = 120u32;
    let head = 56u32;
    let foot = 40u32;
    let ncol = titles.len() as u32;
    let width = left + ncol * (tw + pad) + pad;
    let height = head + rows.len() as u32 * (th + pad) + foot;
    render(dest, (width, height), |root| {
        let e = perr(dest);
        for (c, t) in titles.iter().enumerate() {
            let x = (left + c as u32 * (tw + pad)) as i32;
            // two lines of title: split at the first " | "
            // (about 8 px per character at 14 px: cut what would run into the next column)
            let max_chars = ((tw + pad) / 8).max(4) as usize;
            let fit = |l: &str| -> String {
                if l.chars().count() <= max_chars {
                    l.to_string()
                } else {
                    let mut t: String = l.chars().take(max_chars - 1).collect();
                    t.push('…');
                    t
                }
            };
            let mut lines = t.splitn(2, " | ");
            let l1 = lines.next().unwrap_or("");
            root.draw(&Text::new(fit(l1), (x, 6), font(14.0)))
                .map_err(&e)?;
            if let Some(l2) = lines.next() {
                root.draw(&Text::new(fit(l2), (x, 26), font(14.0)))
                    .map_err(&e)?;
            }
        }
        for (r, row) in rows.iter().enumerate() {
            let y0 = head + r as u32 * (th + pad);
            if let Some(lbl) = row_labels.get(r) {
                let mut ly = y0 as i32 + th as i32 / 2 - 20;
                for part in lbl.split('\n') {
                    root.draw(&Text::new(part.to_string(), (6, ly), font(14.0)))
                        .map_err(&e)?;
                    ly += 20;
                }
            }
            for (c, tile) in row.iter().enumerate() {
                let x0 = left + c as u32 * (tw + pad);
                let cols = tile_colours(tile);
                if cols.len() != h * w {
                    root.draw(&Text::new(
                        "n/a".to_string(),
                        (x0 as i32 + 10, y0 as i32 + th as i32 / 2),
                        font(14.0),
                    ))
                    .map_err(&e)?;
                    continue;
                }
                for y in 0..h {
                    for x in 0..w {
                        let col = cols[y * w + x];
                        for sy in 0..scale {
                            for sx in 0..scale {
                                root.draw_pixel(
                                    (
                                        (x0 as usize + x * scale + sx) as i32,
                                        (y0 as usize + y * scale + sy) as i32,
                                    ),
                                    &col,
                                )
                                .map_err(&e)?;
                            }
                        }
                    }
                }
            }
        }
        root.draw(&Text::new(
            footer.to_string(),
            (6, (height - foot + 10) as i32),
            font(14.0),
        ))
        .map_err(&e)?;
        Ok(())
    })
}

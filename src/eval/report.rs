//! The report folder of `cdiphase evaluate`: metrics.json, PNG figures and index.html,
//! built in a temporary sibling folder and renamed into place (no partial report).

use std::path::Path;

use super::plot::{self, FpFn, Histories, Tile};
use super::{InputEvaluation, Truth};
use crate::{Error, Result};

/// Patterns shown in the image grid.
pub const GALLERY: usize = 4;

/// The whole evaluation as JSON.
pub fn to_json(truth: &Truth, evals: &[InputEvaluation]) -> serde_json::Value {
    let (h, w) = truth.hw();
    serde_json::json!({
        "truth": truth.path.display().to_string(),
        "patterns": truth.n(),
        "height": h,
        "width": w,
        "pixel_size_nm": truth.pixel_nm,
        "conventions": {
            "support": "false positives/negatives after the integer translation (and flip) of largest overlap with the ideal support",
            "support_summary": "shares with FN < 2 and FN <= 2, mean/median FP, mean FP / ideal-support pixels, mean FN; intervals: percentile bootstrap over the groups (the source ids of entry_1/sample_1/name), 2000 resamples, 95 %",
            "density_error": "min over sub-pixel translation, twin and complex scale of ||rho - c x|| / ||rho||",
            "prtf": "|<F_i/|F_i|>| over the K starts aligned to the best one, ring-averaged; resolution = full period 1/q at the 1/e crossing",
        },
        "inputs": evals,
    })
}

/// The file that marks a folder as a report this program wrote, listing the files it
/// wrote there: only such a folder holding nothing else (or an empty folder) is ever
/// replaced.
pub const MARKER: &str = ".cdiphase-report";
const MARKER_HEADER: &str = "# written by cdiphase evaluate: the files below are replaced by the next report in this folder\n";

/// The files a report's marker lists, `None` when `dir` holds no marker of ours.
fn marker_files(dir: &Path) -> Option<Vec<String>> {
    let m = dir.join(MARKER);
    if !std::fs::symlink_metadata(&m).is_ok_and(|md| md.is_file()) {
        return None;
    }
    let text = std::fs::read_to_string(&m).ok()?;
    let body = text.strip_prefix(MARKER_HEADER)?;
    Some(body.lines().map(str::to_string).collect())
}

/// Whether `dir` may be replaced by a report: absent, an empty folder, or a folder holding
/// our marker file. Anything else (a file, a symbolic link, a folder of someone else's
/// files, even one with a metrics.json) is refused.
pub fn check_report_dest(dir: &Path) -> Result<()> {
    let refuse = |why: &str| {
        Err(Error::Config(format!(
            "--report {}: {why}; nothing was changed: choose another --report folder",
            dir.display()
        )))
    };
    let m = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
        Ok(m) => m,
    };
    if m.file_type().is_symlink() {
        return refuse("is a symbolic link");
    }
    if !m.is_dir() {
        return refuse("exists and is not a folder");
    }
    let listed = marker_files(dir);
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        match &listed {
            None => {
                return refuse(&format!(
                    "exists and is not a cdiphase report (no {MARKER} file in it)"
                ))
            }
            Some(l) if name != MARKER && !l.contains(&name) => {
                return refuse(&format!(
                    "holds '{name}', which the previous report did not write"
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Exchange two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`); `Ok(false)` when
/// the system or file system cannot.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call;
    // renameat2 reads them and touches no other memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOSYS | libc::EINVAL | libc::ENOTSUP) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<bool> {
    Ok(false)
}

/// Put the finished folder `tmp` in place of `dir`. A previous report is exchanged
/// atomically with the new one where the system allows (else moved aside, the new one
/// renamed in, and the old one put back on failure), then removed.
fn publish(tmp: &Path, dir: &Path) -> Result<()> {
    // a registered name for the old report, used only where no atomic exchange exists
    let aside = crate::io::temp_path(dir)?;
    crate::io::temp::with_lock(|live| {
        live.retain(|p| p != &aside);
        if std::fs::symlink_metadata(dir).is_err() {
            std::fs::rename(tmp, dir).map_err(|e| Error::io(dir, e))?;
            live.retain(|p| p != tmp);
            return Ok(());
        }
        // `tmp` holds the old report afterwards; it stays registered until removed
        if !exchange(tmp, dir).map_err(|e| Error::io(dir, e))? {
            std::fs::rename(dir, &aside).map_err(|e| Error::io(dir, e))?;
            if let Err(e) = std::fs::rename(tmp, dir) {
                let _ = std::fs::rename(&aside, dir);
                return Err(Error::io(dir, e));
            }
            std::fs::rename(&aside, tmp).map_err(|e| Error::io(&aside, e))?;
        }
        let _ = std::fs::remove_dir_all(tmp);
        live.retain(|p| p != tmp);
        Ok(())
    })
}

/// Write the report into `dir`: built whole in a temporary sibling folder, then put in
/// place of `dir` (see [`check_report_dest`] for what may be replaced).
pub fn write_report(
    dir: &Path,
    truth: &Truth,
    evals: &[InputEvaluation],
) -> Result<serde_json::Value> {
    check_report_dest(dir)?;
    if dir.file_name().is_none() {
        return Err(Error::Config(format!(
            "--report {}: not a folder name",
            dir.display()
        )));
    }
    let tmp = crate::io::temp_path(dir)?;
    if let Err(e) = std::fs::create_dir(&tmp) {
        crate::io::temp::unregister(&tmp);
        return Err(Error::io(&tmp, e));
    }
    let result = (|| {
        let json = to_json(truth, evals);
        let figures = write_figures(&tmp, truth, evals)?;
        let text = serde_json::to_string_pretty(&json).map_err(|e| Error::format(&tmp, e))?;
        std::fs::write(tmp.join("metrics.json"), text)
            .map_err(|e| Error::io(tmp.join("metrics.json"), e))?;
        std::fs::write(tmp.join("index.html"), index_html(truth, evals, &figures))
            .map_err(|e| Error::io(tmp.join("index.html"), e))?;
        let mut names: Vec<String> = std::fs::read_dir(&tmp)
            .map_err(|e| Error::io(&tmp, e))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io(&tmp, e))?;
        names.sort();
        let mut marker = MARKER_HEADER.to_string();
        for n in names {
            marker.push_str(&n);
            marker.push('\n');
        }
        std::fs::write(tmp.join(MARKER), marker).map_err(|e| Error::io(tmp.join(MARKER), e))?;
        // checked again: the folder may have changed while the figures were drawn
        check_report_dest(dir)?;
        publish(&tmp, dir)?;
        Ok(json)
    })();
    if result.is_err() {
        crate::io::temp::discard(&tmp);
    }
    result
}

/// (file name, caption) of each figure written.
fn write_figures(
    dir: &Path,
    truth: &Truth,
    evals: &[InputEvaluation],
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let with_support: Vec<&InputEvaluation> = evals
        .iter()
        .filter(|e| e.per_pattern.iter().any(|m| m.support.is_some()))
        .collect();
    if !with_support.is_empty() {
        let series: Vec<FpFn<'_>> = with_support
            .iter()
            .map(|e| FpFn {
                label: &e.label,
                fp: e
                    .per_pattern
                    .iter()
                    .filter_map(|m| m.support.map(|s| s.false_positives as f64))
                    .collect(),
                fn_: e
                    .per_pattern
                    .iter()
                    .filter_map(|m| m.support.map(|s| s.false_negatives as f64))
                    .collect(),
            })
            .collect();
        plot::fp_fn_scatter(&dir.join("support_fp_fn.png"), &series)?;
        out.push((
            "support_fp_fn.png".into(),
            "False positives against false negatives of each support estimate, per pattern (figure 4 of the paper).".into(),
        ));
    }
    let prtfs: Vec<(&str, &super::metrics::RadialCurve, Option<f64>)> = evals
        .iter()
        .filter_map(|e| {
            e.prtf.as_ref().map(|c| {
                let r = e
                    .aggregate
                    .prtf_resolution
                    .filter(|r| r.crossed)
                    .map(|r| r.frequency);
                (e.label.as_str(), c, r)
            })
        })
        .collect();
    if !prtfs.is_empty() {
        let px = truth.pixel_nm.as_ref().and_then(|v| {
            let m = v.iter().sum::<f64>() / v.len() as f64;
            v.iter().all(|&p| (p - m).abs() <= 1e-6 * m).then_some(m)
        });
        plot::prtf_curves(&dir.join("prtf.png"), &prtfs, px)?;
        out.push((
            "prtf.png".into(),
            "PRTF of the random starts of each pattern, aligned to the best start, ring-averaged, mean over patterns.".into(),
        ));
    }
    let hist: Vec<Histories<'_>> = evals
        .iter()
        .filter_map(|e| {
            e.fourier_error.as_ref().map(|(l, v)| Histories {
                label: &e.label,
                records: *l,
                values: v,
            })
        })
        .collect();
    if !hist.is_empty() {
        plot::error_curves(
            &dir.join("fourier_error.png"),
            &hist,
            "Fourier error during phasing (median over patterns, 10-90 % shaded)",
            "record (end of each ER section, or every --error-every iterations)",
        )?;
        out.push((
            "fourier_error.png".into(),
            "Fourier error histories of the best start (figure 7 of the paper).".into(),
        ));
    }
    // every start's history, where some input has several starts: the spread of figure 7
    let starts: Vec<Histories<'_>> = evals
        .iter()
        .filter_map(|e| {
            e.all_fourier_error
                .as_ref()
                .filter(|(k, _, _)| *k > 1)
                .map(|(_, l, v)| Histories {
                    label: &e.label,
                    records: *l,
                    values: v,
                })
        })
        .collect();
    if !starts.is_empty() {
        plot::error_curves(
            &dir.join("fourier_error_starts.png"),
            &starts,
            "Fourier error of every start (median over patterns x starts, 10-90 % shaded)",
            "record (end of each ER section, or every --error-every iterations)",
        )?;
        out.push((
            "fourier_error_starts.png".into(),
            "Fourier error histories of every start of every pattern: the spread across starts (figure 7 of the paper).".into(),
        ));
    }
    let dens: Vec<(&str, Vec<f64>)> = evals
        .iter()
        .filter(|e| e.per_pattern.iter().any(|m| m.density.is_some()))
        .map(|e| {
            (
                e.label.as_str(),
                e.per_pattern
                    .iter()
                    .filter_map(|m| m.density.map(|d| d.error))
                    .collect(),
            )
        })
        .collect();
    if !dens.is_empty() {
        plot::value_cdf(
            &dir.join("density_error.png"),
            "Normalised density error after alignment",
            "||rho - c x|| / ||rho|| (translation, twin and complex scale c fitted)",
            &dens,
        )?;
        out.push((
            "density_error.png".into(),
            "Cumulative distribution of the normalised error of each reconstruction against the true density.".into(),
        ));
    }
    // one grid per input (the paper's figure 6 layout), legible at any number of inputs
    let ac = match &truth.patterns {
        Some(p) if truth.n() > 0 => Some(crate::support::autocorrelations(p)?),
        _ => None,
    };
    for (i, e) in evals.iter().enumerate() {
        let safe: String = e
            .label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let fname = format!("grid_{i}_{safe}.png");
        if grid(dir, truth, ac.as_ref(), std::slice::from_ref(e), &fname)? {
            out.push((
                fname,
                format!(
                    "{}: patterns, autocorrelations, truths and the estimates aligned to the truth (figure 6 of the paper).",
                    e.label
                ),
            ));
        }
    }
    Ok(out)
}

fn grid(
    dir: &Path,
    truth: &Truth,
    ac: Option<&crate::array::Stack<f32>>,
    evals: &[InputEvaluation],
    fname: &str,
) -> Result<bool> {
    let (h, w) = truth.hw();
    let g = truth.n().min(GALLERY);
    if g == 0 {
        return Ok(false);
    }
    let mut titles: Vec<String> = vec![
        "pattern | (log10 intensity)".into(),
        "autocorrelation | (log10 |IFFT(I)|)".into(),
        "true density".into(),
        "ideal support".into(),
    ];
    for e in evals {
        if e.gallery.iter().any(|x| x.0.is_some()) {
            titles.push(format!("{} | support", e.label));
            titles.push(format!("{} | support vs ideal", e.label));
        }
        if e.gallery.iter().any(|x| x.1.is_some()) {
            titles.push(format!("{} | |reconstruction|", e.label));
            titles.push(format!("{} | recon - truth", e.label));
        }
    }
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for p in 0..g {
        let mut row = Vec::new();
        row.push(match &truth.patterns {
            Some(ps) => Tile::Map {
                values: ps.intensities.image(p).to_vec(),
                log: true,
            },
            None => Tile::Empty,
        });
        row.push(match ac {
            Some(a) => Tile::Map {
                values: a.image(p).to_vec(),
                log: true,
            },
            None => Tile::Empty,
        });
        let rho = truth.density.image(p);
        row.push(Tile::Map {
            values: rho.to_vec(),
            log: false,
        });
        let ideal = truth.support.image(p);
        row.push(Tile::Map {
            values: ideal.iter().map(|&v| v as f32).collect(),
            log: false,
        });
        for e in evals {
            let (s, o) = e.gallery.get(p).cloned().unwrap_or((None, None));
            if e.gallery.iter().any(|x| x.0.is_some()) {
                match s {
                    Some(s) => {
                        let d: Vec<u8> = s
                            .iter()
                            .zip(ideal)
                            .map(|(&a, &b)| match (a != 0, b != 0) {
                                (true, true) => 1,
                                (true, false) => 2,
                                (false, true) => 3,
                                _ => 0,
                            })
                            .collect();
                        row.push(Tile::Map {
                            values: s.iter().map(|&v| v as f32).collect(),
                            log: false,
                        });
                        row.push(Tile::Diff(d));
                    }
                    None => {
                        row.push(Tile::Empty);
                        row.push(Tile::Empty);
                    }
                }
            }
            if e.gallery.iter().any(|x| x.1.is_some()) {
                match o {
                    Some(o) => {
                        let mo = o.iter().copied().fold(0.0f32, f32::max).max(1e-30);
                        let mr = rho.iter().copied().fold(0.0f32, f32::max).max(1e-30);
                        let diff: Vec<f32> =
                            o.iter().zip(rho).map(|(&a, &b)| a / mo - b / mr).collect();
                        row.push(Tile::Map {
                            values: o,
                            log: false,
                        });
                        row.push(Tile::Signed(diff));
                    }
                    None => {
                        row.push(Tile::Empty);
                        row.push(Tile::Empty);
                    }
                }
            }
        }
        rows.push(row);
        let name = truth
            .names
            .as_ref()
            .map(|v| v[p].clone())
            .unwrap_or_default();
        labels.push(format!(
            "pattern {p}\n{}",
            name.chars().take(14).collect::<String>()
        ));
    }
    plot::image_grid(
        &dir.join(fname),
        &titles,
        &labels,
        &rows,
        h,
        w,
        "support vs ideal: grey = correct, red = false positive, blue = false negative;  recon - truth: each scaled to its maximum, red = too high, blue = too low",
    )?;
    Ok(true)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn fmt_stats(s: &Option<super::metrics::Stats>, digits: usize) -> String {
    match s {
        Some(s) => format!(
            "{:.d$} / {:.d$} ({:.d$} - {:.d$})",
            s.mean,
            s.median,
            s.min,
            s.max,
            d = digits
        ),
        None => "-".into(),
    }
}

fn index_html(truth: &Truth, evals: &[InputEvaluation], figures: &[(String, String)]) -> String {
    let (h, w) = truth.hw();
    let mut s = String::new();
    s.push_str(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>cdiphase evaluation</title>\n",
    );
    s.push_str("<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}td,th{border:1px solid #999;padding:4px 8px;text-align:right}th{background:#eee}td:first-child{text-align:left}img{max-width:100%;border:1px solid #ccc}figure{margin:1.5em 0}</style></head><body>\n");
    s.push_str(&format!(
        "<h1>cdiphase evaluation</h1>\n<p>Truth: <code>{}</code>, {} patterns of {h} x {w} pixels{}.</p>\n",
        esc(&truth.path.display().to_string()),
        truth.n(),
        match &truth.pixel_nm {
            Some(v) => format!(", real-space pixel {:.3} nm (mean)", v.iter().sum::<f64>() / v.len() as f64),
            None => String::new(),
        }
    ));
    s.push_str("<h2>Summary</h2>\n<p>Values are mean / median (min - max) over patterns.</p>\n<table><tr><th>input</th><th>false positives</th><th>false negatives</th><th>FN &le; 2</th><th>density error</th><th>final Fourier error</th><th>PRTF 1/e resolution</th></tr>\n");
    for e in evals {
        let a = &e.aggregate;
        let res = match a.prtf_resolution {
            Some(r) => format!(
                "{}{:.2} px{}",
                if r.crossed { "" } else { "&gt; " },
                r.pixels,
                r.nm.map(|n| format!(" ({n:.2} nm)")).unwrap_or_default()
            ),
            None => "-".into(),
        };
        s.push_str(&format!(
            "<tr><td>{} <small>(<code>{}</code>)</small></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            esc(&e.label),
            esc(&e.file),
            fmt_stats(&a.false_positives, 1),
            fmt_stats(&a.false_negatives, 1),
            a.fraction_fn_at_most_2.map(|f| format!("{:.0} %", 100.0 * f)).unwrap_or("-".into()),
            fmt_stats(&a.density_error, 3),
            fmt_stats(&a.final_fourier_error, 4),
            res
        ));
    }
    s.push_str("</table>\n");
    if let Some(t) = support_table(evals) {
        s.push_str(&format!(
            "<h2>Supports: the paper's protocol</h2>\n<pre>{}</pre>\n",
            esc(&t)
        ));
    }
    s.push_str("<p>Every number per pattern is in <a href=\"metrics.json\">metrics.json</a>.</p>\n<h2>Figures</h2>\n");
    for (f, cap) in figures {
        s.push_str(&format!(
            "<figure><img src=\"{f}\" alt=\"{}\"><figcaption>{}</figcaption></figure>\n",
            esc(cap),
            esc(cap)
        ));
    }
    s.push_str("</body></html>\n");
    s
}

/// The support table of the paper's protocol (one row per input that holds supports):
/// the shares with FN < 2 and FN <= 2, mean and median FP, mean FP relative to the ideal
/// support's size, mean FN, each with its bootstrap interval over the structures, and the
/// median sizes. `None` when no input holds supports.
pub fn support_table(evals: &[InputEvaluation]) -> Option<String> {
    let rows: Vec<(&str, &super::metrics::SupportSummary)> = evals
        .iter()
        .filter_map(|e| {
            e.aggregate
                .support_summary
                .as_ref()
                .map(|s| (e.label.as_str(), s))
        })
        .collect();
    let first = rows.first()?.1;
    let pct = |i: &super::metrics::Interval| {
        format!(
            "{:.1} % [{:.1}, {:.1}]",
            100.0 * i.estimate,
            100.0 * i.low,
            100.0 * i.high
        )
    };
    let num = |i: &super::metrics::Interval, d: usize| {
        format!("{:.*} [{:.*}, {:.*}]", d, i.estimate, d, i.low, d, i.high)
    };
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(5).max(5);
    let mut out = format!(
        "supports against the ideal support after translation and twin: {} patterns, {} \
         groups by {}; [{:.0} % bootstrap interval, {} resamples]\n",
        first.patterns,
        first.groups,
        first.grouping,
        100.0 * first.level,
        first.resamples
    );
    out += &format!(
        "{:<width$}  {:<22}  {:<22}  {:<20}  {:<20}  {:<19}  {:<17}  {:>9}  {:>9}\n",
        "input",
        "FN < 2",
        "FN <= 2",
        "mean FP",
        "median FP",
        "mean FP/ideal",
        "mean FN",
        "ideal px",
        "est. px"
    );
    for (label, s) in rows {
        out += &format!(
            "{:<width$}  {:<22}  {:<22}  {:<20}  {:<20}  {:<19}  {:<17}  {:>9.0}  {:>9.0}\n",
            label,
            pct(&s.fn_below_2),
            pct(&s.fn_at_most_2),
            num(&s.fp_mean, 0),
            num(&s.fp_median, 0),
            num(&s.fp_over_ideal_mean, 2),
            num(&s.fn_mean, 1),
            s.ideal_size_median,
            s.estimate_size_median,
        );
    }
    Some(out)
}

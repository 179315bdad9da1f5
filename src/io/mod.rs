//! File I/O: diffraction patterns, masks, supports and objects from HDF5/CXI and NumPy files,
//! and atomic writers for both formats.
//!
//! The format is chosen from the extension: `.cxi`, `.h5`, `.hdf5`, `.nxs` are HDF5 (read
//! with the pure-Rust `hdf5-pure` crate), `.npy` is NumPy. Arrays on disk are *centred*
//! (see [`crate::array`]); nothing here shifts, validates or rescales values.

pub mod blocks;
pub mod hdf5;
pub mod journal;
pub mod npy;
pub mod stream;
pub mod temp;

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub use self::hdf5::CxiWriter;
pub use self::stream::StreamWriter;
use crate::array::{Complex32, Stack};
use crate::{Error, Result};

/// Default dataset of the diffraction intensities in a CXI file.
pub const DEFAULT_DATA_ENTRY: &str = "entry_1/data_1/data";
/// Mask datasets tried, in order, when reading patterns from HDF5.
pub const DEFAULT_MASK_ENTRIES: [&str; 2] = [
    "entry_1/instrument_1/detector_1/mask",
    "entry_1/data_1/mask",
];
/// Support datasets tried, in order, when no entry is given.
pub const DEFAULT_SUPPORT_ENTRIES: [&str; 2] =
    ["entry_1/image_1/support", "entry_1/sample_1/support"];
/// Object datasets tried, in order, when no entry is given.
pub const DEFAULT_OBJECT_ENTRIES: [&str; 2] = ["entry_1/image_1/data", "entry_1/sample_1/density"];

const ACCEPTED: &str = ".cxi, .h5, .hdf5, .nxs (HDF5) or .npy (NumPy)";

/// The on-disk format of a path, from its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Hdf5,
    Npy,
}

/// Format of `path` from its extension, or [`Error::Format`] listing the accepted ones.
pub fn format_of(path: &Path) -> Result<Format> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("cxi" | "h5" | "hdf5" | "nxs") => Ok(Format::Hdf5),
        Some("npy") => Ok(Format::Npy),
        _ => Err(Error::format(
            path,
            format!("unknown file extension; accepted: {ACCEPTED}"),
        )),
    }
}

/// Diffraction intensities with an optional bad-pixel mask, as read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct PatternSet {
    /// (N, H, W) as stored (centred); a 2-D (H, W) dataset gives N = 1.
    pub intensities: Stack<f32>,
    /// Nonzero = unmeasured (CXI convention). `n == 1` when stored (H, W) and shared by all
    /// patterns, else `n == N`.
    pub mask: Option<Stack<u8>>,
    /// The file read.
    pub source: PathBuf,
    /// The dataset path actually read (`""` for `.npy`).
    pub entry: String,
}

fn bare(e: &str) -> String {
    e.trim_start_matches('/').to_string()
}

fn rank_error(path: &Path, entry: &str, found: &[usize]) -> Error {
    Error::Shape {
        what: if entry.is_empty() {
            format!("{}", path.display())
        } else {
            format!("{}: dataset '{entry}'", path.display())
        },
        expected: "(N, H, W) or (H, W)".into(),
        found: found.to_vec(),
    }
}

/// (n, h, w) from a rank-2 or rank-3 shape; an empty stack (no image, or images of zero
/// rows or columns) is an error naming the file and entry.
fn nhw(path: &Path, entry: &str, shape: &[usize]) -> Result<(usize, usize, usize)> {
    let (n, h, w) = match *shape {
        [h, w] => (1, h, w),
        [n, h, w] => (n, h, w),
        _ => return Err(rank_error(path, entry, shape)),
    };
    if n == 0 || h == 0 || w == 0 {
        return Err(Error::Shape {
            what: if entry.is_empty() {
                format!("{}", path.display())
            } else {
                format!("{}: dataset '{entry}'", path.display())
            },
            expected: "at least one image of at least 1x1 pixels".into(),
            found: shape.to_vec(),
        });
    }
    Ok((n, h, w))
}

fn candidates(entry: Option<&str>, defaults: &[&str]) -> Vec<String> {
    match entry {
        Some(e) => vec![bare(e)],
        None => defaults.iter().map(|s| s.to_string()).collect(),
    }
}

/// Read diffraction patterns (and, from HDF5, the mask) from `path`.
///
/// HDF5: intensities from `entry` or [`DEFAULT_DATA_ENTRY`]; the mask is the first present of
/// the sibling `X/mask` (when `entry` is `X/data`) and [`DEFAULT_MASK_ENTRIES`]. Any numeric
/// type is converted to `f32`. NPY: `(N,H,W)` or `(H,W)`, no mask.
pub fn read_patterns(path: &Path, entry: Option<&str>) -> Result<PatternSet> {
    match format_of(path)? {
        Format::Npy => {
            let a = npy::read(path)?;
            let (n, h, w) = nhw(path, "", &a.shape)?;
            if a.is_complex() {
                return Err(Error::format(
                    path,
                    format!("intensities must be real, found '{}'", a.descr),
                ));
            }
            Ok(PatternSet {
                intensities: Stack::from_vec(n, h, w, a.to_f32())?,
                mask: None,
                source: path.to_path_buf(),
                entry: String::new(),
            })
        }
        Format::Hdf5 => {
            let f = hdf5::open(path)?;
            let (name, d) = f.first_dataset(&candidates(entry, &[DEFAULT_DATA_ENTRY]))?;
            let (shape, data) = f.read_f32(&name, &d)?;
            let (n, h, w) = nhw(path, &name, &shape)?;
            let intensities = Stack::from_vec(n, h, w, data)?;

            let mut mask_cands: Vec<String> = Vec::new();
            if let Some(parent) = name.strip_suffix("/data") {
                mask_cands.push(format!("{parent}/mask"));
            }
            for m in DEFAULT_MASK_ENTRIES {
                if !mask_cands.iter().any(|c| c == m) {
                    mask_cands.push(m.to_string());
                }
            }
            let mut mask = None;
            for mc in &mask_cands {
                if let Some(md) = f.try_dataset(mc)? {
                    let (ms, mv) = f.read_mask(mc, &md)?;
                    let mn = match *ms.as_slice() {
                        [mh, mw] if (mh, mw) == (h, w) => 1,
                        [mn, mh, mw] if (mn, mh, mw) == (n, h, w) => n,
                        _ => {
                            return Err(Error::Shape {
                                what: format!("{}: mask '{mc}'", path.display()),
                                expected: format!("({h}, {w}) or ({n}, {h}, {w}) like '{name}'"),
                                found: ms,
                            })
                        }
                    };
                    mask = Some(Stack::from_vec(mn, h, w, mv)?);
                    break;
                }
            }
            Ok(PatternSet {
                intensities,
                mask,
                source: path.to_path_buf(),
                entry: name,
            })
        }
    }
}

/// Read a support (nonzero becomes 1): `(H,W)` gives n = 1, or `(N,H,W)`. A NaN or an
/// infinity is an error (it is no answer to "inside or outside"), naming the pixel.
///
/// HDF5 without `entry`: the first of [`DEFAULT_SUPPORT_ENTRIES`].
pub fn read_support(path: &Path, entry: Option<&str>) -> Result<Stack<u8>> {
    let (name, shape, v) = match format_of(path)? {
        Format::Npy => {
            let a = npy::read(path)?;
            if a.is_complex() {
                return Err(complex_support(path, &a.descr));
            }
            (String::new(), a.shape.clone(), a.to_f32())
        }
        Format::Hdf5 => {
            let f = hdf5::open(path)?;
            let (name, d) = f.first_dataset(&candidates(entry, &DEFAULT_SUPPORT_ENTRIES))?;
            let (shape, v) = f.read_f32(&name, &d)?;
            (name, shape, v)
        }
    };
    let (n, h, w) = nhw(path, &name, &shape)?;
    let v = support_values(path, &name, 0, h, w, v)?;
    Stack::from_vec(n, h, w, v)
}

/// Support values as read (images `first..` of the file, `h` x `w`) as 0/1; a NaN or an
/// infinity is an error naming the image (counted in the file) and the pixel.
fn support_values(
    path: &Path,
    name: &str,
    first: usize,
    h: usize,
    w: usize,
    v: Vec<f32>,
) -> Result<Vec<u8>> {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        let px = h * w;
        return Err(Error::invalid(
            if name.is_empty() {
                format!("{}: support", path.display())
            } else {
                format!("{}: support '{name}'", path.display())
            },
            format!(
                "image {} pixel (y={}, x={}) is {}: a support holds 0 (outside) or nonzero (inside)",
                first + i / px,
                (i % px) / w,
                i % w,
                v[i]
            ),
        ));
    }
    Ok(v.into_iter().map(|x| u8::from(x != 0.0)).collect())
}

/// The refusal of a complex `.npy` support.
fn complex_support(path: &Path, descr: &str) -> Error {
    Error::format(path, format!("a support must be real, found '{descr}'"))
}

/// Read a (complex) object: `(H,W)` gives n = 1, or `(N,H,W)`. Real types give a zero
/// imaginary part; complex compounds (h5py's `r`/`i`, or `real`/`imag`) are read exactly.
///
/// HDF5 without `entry`: the first of [`DEFAULT_OBJECT_ENTRIES`].
pub fn read_object(path: &Path, entry: Option<&str>) -> Result<Stack<Complex32>> {
    match format_of(path)? {
        Format::Npy => {
            let a = npy::read(path)?;
            let (n, h, w) = nhw(path, "", &a.shape)?;
            Stack::from_vec(n, h, w, a.to_complex32())
        }
        Format::Hdf5 => {
            let f = hdf5::open(path)?;
            let (name, d) = f.first_dataset(&candidates(entry, &DEFAULT_OBJECT_ENTRIES))?;
            let (shape, v) = f.read_complex(&name, &d)?;
            let (n, h, w) = nhw(path, &name, &shape)?;
            Stack::from_vec(n, h, w, v)
        }
    }
}

/// Any real dataset of any rank as `f32`, with its shape. For `.npy`, `entry` is ignored.
pub fn read_f32(path: &Path, entry: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    match format_of(path)? {
        Format::Npy => {
            let a = npy::read(path)?;
            if a.is_complex() {
                return Err(Error::format(
                    path,
                    format!("array is complex ('{}')", a.descr),
                ));
            }
            Ok((a.shape.clone(), a.to_f32()))
        }
        Format::Hdf5 => {
            let f = hdf5::open(path)?;
            let (name, d) = f.first_dataset(&[bare(entry)])?;
            f.read_f32(&name, &d)
        }
    }
}

/// Any complex (or real) HDF5 dataset of any rank as `Complex32`, with its shape (the
/// 4-D `entry_1/image_2/data` of `phase --keep-all`, say).
pub fn read_complex_nd(path: &Path, entry: &str) -> Result<(Vec<usize>, Vec<Complex32>)> {
    let f = hdf5::open(path)?;
    let (name, d) = f.first_dataset(&[bare(entry)])?;
    f.read_complex(&name, &d)
}

/// Any integer or boolean HDF5 dataset of any rank as a 0/1 mask, with its shape.
pub fn read_mask_nd(path: &Path, entry: &str) -> Result<(Vec<usize>, Vec<u8>)> {
    let f = hdf5::open(path)?;
    let (name, d) = f.first_dataset(&[bare(entry)])?;
    f.read_mask(&name, &d)
}

/// What [`for_each_rows_f32`] calls per block: `(shape of the dataset, first row, values)`.
pub type RowsSink<'a> = dyn FnMut(&[usize], usize, &[f32]) -> Result<()> + 'a;

/// Read the real dataset `entry` of an HDF5 file block by block without loading the file:
/// `f(shape, first_row, values)` is called for consecutive windows of at most `rows` rows
/// along the first axis (each row whole). Returns the dataset's shape. Memory is bounded by
/// the window, so a training set of many GB can be averaged.
pub fn for_each_rows_f32(
    path: &Path,
    entry: &str,
    rows: usize,
    f: &mut RowsSink<'_>,
) -> Result<Vec<usize>> {
    match format_of(path)? {
        Format::Npy => {
            let (shape, v) = read_f32(path, entry)?;
            let row: usize = shape.iter().skip(1).product::<usize>().max(1);
            for (k, block) in v.chunks(row * rows.max(1)).enumerate() {
                f(&shape, k * rows.max(1), block)?;
            }
            Ok(shape)
        }
        Format::Hdf5 => hdf5::for_each_rows_f32(path, &bare(entry), rows.max(1), f),
    }
}

/// A string dataset of an HDF5 file (such as `entry_1/sample_1/name`), its elements joined
/// by newlines.
pub fn read_string(path: &Path, entry: &str) -> Result<String> {
    match format_of(path)? {
        Format::Npy => Err(Error::format(path, "a .npy file holds no strings")),
        Format::Hdf5 => {
            let f = hdf5::open(path)?;
            let (name, d) = f.first_dataset(&[bare(entry)])?;
            Ok(f.read_strings(&name, &d)?.join("\n"))
        }
    }
}

/// Every dataset in the file as (path, shape, dtype), sorted by path. For `.npy`: one entry
/// with an empty path.
pub fn list_datasets(path: &Path) -> Result<Vec<(String, Vec<usize>, String)>> {
    match format_of(path)? {
        Format::Npy => {
            let a = npy::read(path)?;
            Ok(vec![(String::new(), a.shape.clone(), a.descr.clone())])
        }
        Format::Hdf5 => hdf5::open(path)?.list(),
    }
}

/// [`list_datasets`] without reading the data: HDF5 opened for streaming reads (no
/// whole-file buffer), `.npy` by its header. For the shape of a file of any size.
pub fn list_dataset_headers(path: &Path) -> Result<Vec<(String, Vec<usize>, String)>> {
    match format_of(path)? {
        Format::Npy => {
            let h = npy::NpyRows::open(path)?.header;
            Ok(vec![(String::new(), h.shape.clone(), h.descr.clone())])
        }
        Format::Hdf5 => hdf5::open_streaming(path)?.list(),
    }
}

/// A fresh temporary file name in `dest`'s directory (hidden, recognisable, unique per
/// process and call, registered for removal on a signal), so that a rename onto `dest` is
/// atomic. See [`temp`].
pub fn temp_path(dest: &Path) -> Result<PathBuf> {
    temp::temp_path(dest)
}

/// Write a file atomically: `body` writes into a temporary file in `dest`'s directory, which
/// is synced and renamed onto `dest`. On any error the temporary file is removed and `dest`
/// is untouched.
pub fn write_atomic(
    dest: &Path,
    body: impl FnOnce(&mut BufWriter<std::fs::File>) -> Result<()>,
) -> Result<()> {
    let tmp = temp_path(dest)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| {
            temp::unregister(&tmp);
            Error::io(dest, e)
        })?;
    let result = (|| {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        body(&mut w)?;
        w.flush().map_err(|e| Error::io(dest, e))?;
        let file = w
            .into_inner()
            .map_err(|e| Error::io(dest, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(dest, e))?;
        drop(file);
        temp::commit(&tmp, dest).map_err(|e| Error::io(dest, e))
    })();
    if result.is_err() {
        temp::discard(&tmp);
    }
    result
}

#[cfg(test)]
mod tests;

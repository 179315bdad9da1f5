//! Block-wise processing of pattern files: a reader that hands out windows of patterns
//! (HDF5 row reads, `.npy` offset reads: memory flat in N), the block plan, and the pipeline that reads block
//! `b + 1` and writes block `b - 1` while block `b` computes.
//!
//! The verbs `phase`, `predict` and `support` run on top of this: their output is the
//! same, bit for bit in its data, for every block size, because each pattern's result
//! depends on that pattern alone (and on its index, for seeds: see
//! [`crate::rng::offset_seed`]).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use super::hdf5::{self, RowDataset};
use super::{
    candidates, nhw, Format, PatternSet, DEFAULT_DATA_ENTRY, DEFAULT_MASK_ENTRIES,
    DEFAULT_OBJECT_ENTRIES, DEFAULT_SUPPORT_ENTRIES,
};
use crate::array::{Complex32, Stack};
use crate::{Error, Result};

/// Patterns per block when the user gives none: 256 patterns of 128x128 are 16 MiB of
/// intensities, large enough to keep every core (and a GPU batch) busy, small enough that
/// a killed run loses little.
pub const DEFAULT_BLOCK: usize = 256;

/// Consecutive windows of `block` patterns over `n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockPlan {
    pub n: usize,
    pub block: usize,
}

impl BlockPlan {
    /// A plan of blocks of `block` patterns (at least 1) over `n` patterns.
    pub fn new(n: usize, block: usize) -> Result<BlockPlan> {
        if block == 0 {
            return Err(Error::Config("--block must be at least 1".into()));
        }
        Ok(BlockPlan { n, block })
    }

    /// Number of blocks.
    pub fn count(&self) -> usize {
        self.n.div_ceil(self.block)
    }

    /// Patterns of block `b`.
    pub fn range(&self, b: usize) -> Range<usize> {
        let first = b * self.block;
        first..(first + self.block).min(self.n)
    }
}

enum Source {
    /// Rows read from the file on demand; the mask is shared (read once) or read by rows.
    Rows {
        data: Box<RowDataset>,
        mask: Option<MaskSource>,
    },
    /// An `.npy` array read by offset (no mask).
    Npy(super::npy::NpyRows),
    /// Read whole (HDF5 datasets the row reader does not take: virtual datasets, types
    /// it does not decode), then handed out by windows.
    Whole(PatternSet),
}

enum MaskSource {
    Shared(Stack<u8>),
    Rows(RowDataset),
}

/// A pattern file read a window of patterns at a time; what
/// [`crate::io::read_patterns`] reads, without holding more than one window (HDF5 of the
/// usual types and float16, `.npy`), or read whole (see [`PatternBlocks::streamed`]).
pub struct PatternBlocks {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    /// The file read.
    pub source: PathBuf,
    /// The dataset path actually read (`""` for `.npy`).
    pub entry: String,
    src: Source,
}

impl PatternBlocks {
    /// Open `path` as [`crate::io::read_patterns`] would read it: the same dataset, the
    /// same mask (the sibling `X/mask`, then [`DEFAULT_MASK_ENTRIES`]), the same shape
    /// checks and messages.
    pub fn open(path: &Path, entry: Option<&str>) -> Result<PatternBlocks> {
        if super::format_of(path)? == Format::Npy {
            return Self::npy(path, |d| format!("intensities must be real, found '{d}'"));
        }
        let f = hdf5::open_streaming(path)?;
        let (name, d) = f.first_dataset(&candidates(entry, &[DEFAULT_DATA_ENTRY]))?;
        let Some(data) = f.real_rows(&name, d)? else {
            return Self::whole(super::read_patterns(path, entry)?);
        };
        let (n, h, w) = nhw(path, &name, &data.shape)?;
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
            let Some(md) = f.try_dataset(mc)? else {
                continue;
            };
            let Some(rows) = f.mask_rows(mc, md)? else {
                return Self::whole(super::read_patterns(path, entry)?);
            };
            let ms = rows.shape.clone();
            mask = Some(match *ms.as_slice() {
                [mh, mw] if (mh, mw) == (h, w) => {
                    MaskSource::Shared(Stack::from_vec(1, h, w, rows.read_mask(0, h)?)?)
                }
                [mn, mh, mw] if (mn, mh, mw) == (n, h, w) => MaskSource::Rows(rows),
                _ => {
                    return Err(Error::Shape {
                        what: format!("{}: mask '{mc}'", path.display()),
                        expected: format!("({h}, {w}) or ({n}, {h}, {w}) like '{name}'"),
                        found: ms,
                    })
                }
            });
            break;
        }
        Ok(PatternBlocks {
            n,
            h,
            w,
            source: path.to_path_buf(),
            entry: name,
            src: Source::Rows {
                data: Box::new(data),
                mask,
            },
        })
    }

    /// Open the real dataset `entry` of `path` (an HDF5 file, or an `.npy` array with
    /// `entry` ignored) as patterns without a mask: a network output, say.
    pub fn open_unmasked(path: &Path, entry: &str) -> Result<PatternBlocks> {
        let whole = || -> Result<PatternBlocks> {
            let (shape, v) = super::read_f32(path, entry)?;
            let (n, h, w) = nhw(path, entry, &shape)?;
            Self::whole(PatternSet {
                intensities: Stack::from_vec(n, h, w, v)?,
                mask: None,
                source: path.to_path_buf(),
                entry: entry.to_string(),
            })
        };
        if super::format_of(path)? == Format::Npy {
            return Self::npy(path, |d| format!("array is complex ('{d}')"));
        }
        let f = hdf5::open_streaming(path)?;
        let (name, d) = f.first_dataset(&[super::bare(entry)])?;
        let Some(data) = f.real_rows(&name, d)? else {
            return whole();
        };
        let (n, h, w) = nhw(path, &name, &data.shape)?;
        Ok(PatternBlocks {
            n,
            h,
            w,
            source: path.to_path_buf(),
            entry: name,
            src: Source::Rows {
                data: Box::new(data),
                mask: None,
            },
        })
    }

    /// A real `.npy` array of (N, H, W) or (H, W), read by offset; a complex one is refused
    /// with `complex(descr)` (the message of the whole-file reader).
    fn npy(path: &Path, complex: fn(&str) -> String) -> Result<PatternBlocks> {
        let rows = super::npy::NpyRows::open(path)?;
        let (n, h, w) = nhw(path, "", &rows.header.shape)?;
        if rows.header.is_complex() {
            return Err(Error::format(path, complex(&rows.header.descr)));
        }
        Ok(PatternBlocks {
            n,
            h,
            w,
            source: path.to_path_buf(),
            entry: String::new(),
            src: Source::Npy(rows),
        })
    }

    fn whole(p: PatternSet) -> Result<PatternBlocks> {
        let st = &p.intensities;
        Ok(PatternBlocks {
            n: st.n,
            h: st.h,
            w: st.w,
            source: p.source.clone(),
            entry: p.entry.clone(),
            src: Source::Whole(p),
        })
    }

    /// Whether windows are read from the file as needed (memory flat in N); `false` when
    /// the file was read whole (a virtual dataset, or a type the row reader does not
    /// decode).
    pub fn streamed(&self) -> bool {
        matches!(self.src, Source::Rows { .. } | Source::Npy(_))
    }

    /// Patterns `r` (and their mask: a shared mask as it is, a per-pattern mask cut to
    /// the window) as a [`PatternSet`] of `r.len()` patterns.
    pub fn read(&self, r: Range<usize>) -> Result<PatternSet> {
        let (h, w, l) = (self.h, self.w, self.h * self.w);
        let k = r.len();
        if r.end > self.n {
            return Err(Error::Config(format!(
                "patterns {}..{} past the end of {} ({} patterns)",
                r.start,
                r.end,
                self.source.display(),
                self.n
            )));
        }
        crate::limits::check_memory(
            &format!(
                "{}: dataset '{}' of shape {:?}, patterns {}..{} at a time",
                self.source.display(),
                self.entry,
                [self.n, h, w],
                r.start,
                r.end
            ),
            (k as u128) * (l as u128) * 9,
        )?;
        let (intensities, mask) = match &self.src {
            Source::Rows { data, mask } => {
                let (first, rows) = image_rows(data, r.start, k);
                let st = Stack::from_vec(k, h, w, data.read_f32(first, rows)?)?;
                let m = match mask {
                    None => None,
                    Some(MaskSource::Shared(m)) => Some(m.clone()),
                    Some(MaskSource::Rows(rows)) => {
                        Some(Stack::from_vec(k, h, w, rows.read_mask(r.start, k)?)?)
                    }
                };
                (st, m)
            }
            Source::Npy(rows) => {
                let v = rows.read(r.start * l, k * l)?.to_f32();
                (Stack::from_vec(k, h, w, v)?, None)
            }
            Source::Whole(p) => {
                let st =
                    Stack::from_vec(k, h, w, p.intensities.data[r.start * l..r.end * l].to_vec())?;
                let m = p.mask.as_ref().map(|m| {
                    if m.n == 1 {
                        m.clone()
                    } else {
                        Stack {
                            n: k,
                            h,
                            w,
                            data: m.data[r.start * l..r.end * l].to_vec(),
                        }
                    }
                });
                (st, m)
            }
        };
        Ok(PatternSet {
            intensities,
            mask,
            source: self.source.clone(),
            entry: self.entry.clone(),
        })
    }
}

enum ImageSource<T> {
    /// HDF5 rows read on demand (real types, float16; complex compounds for objects).
    Rows(Box<RowDataset>),
    /// An `.npy` array read by offset.
    Npy(super::npy::NpyRows),
    /// Read whole by the whole-file reader (datasets the row reader does not take:
    /// virtual datasets, types it does not decode), then handed out by windows.
    Whole(Stack<T>),
}

/// A file of starting supports (`ImageBlocks<u8>`, what [`crate::io::read_support`]
/// reads) or starting objects (`ImageBlocks<Complex32>`, what
/// [`crate::io::read_object`] reads), one image shared by every pattern (`n == 1`) or one
/// per pattern, read a window of images at a time: the same dataset, values, checks and
/// messages as the whole-file readers, without holding more than the window.
pub struct ImageBlocks<T> {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    /// The file read.
    pub source: PathBuf,
    /// The dataset path actually read (`""` for `.npy`).
    pub entry: String,
    src: ImageSource<T>,
}

impl<T: Clone> ImageBlocks<T> {
    /// Whether windows are read from the file as needed; `false` when it was read whole
    /// (a virtual dataset, or a type the row reader does not decode).
    pub fn streamed(&self) -> bool {
        !matches!(self.src, ImageSource::Whole(_))
    }

    fn from_whole(source: &Path, entry: String, st: Stack<T>) -> ImageBlocks<T> {
        ImageBlocks {
            n: st.n,
            h: st.h,
            w: st.w,
            source: source.to_path_buf(),
            entry,
            src: ImageSource::Whole(st),
        }
    }

    /// A file read by windows (`src` not `Whole`): its images from the dataset's `shape`.
    fn from_rows(
        source: &Path,
        entry: String,
        shape: &[usize],
        src: ImageSource<T>,
    ) -> Result<ImageBlocks<T>> {
        let (n, h, w) = nhw(source, &entry, shape)?;
        Ok(ImageBlocks {
            n,
            h,
            w,
            source: source.to_path_buf(),
            entry,
            src,
        })
    }

    /// Check the window `r` of images and its memory (`elem` bytes per pixel while it is
    /// read and converted); the first image and the count actually read (a shared image
    /// is read whole for every window).
    fn span(&self, r: &Range<usize>, what: &str, elem: u128) -> Result<(usize, usize)> {
        let (first, k) = if self.n == 1 {
            (0, 1)
        } else {
            if r.end > self.n || r.start > r.end {
                return Err(Error::Config(format!(
                    "{what} {}..{} past the end of {} ({} images)",
                    r.start,
                    r.end,
                    self.source.display(),
                    self.n
                )));
            }
            (r.start, r.len())
        };
        // a shared image too: a hostile header may declare one image of any size
        crate::limits::check_memory(
            &format!(
                "{}: {what} '{}' of shape {:?}, images {}..{} at a time",
                self.source.display(),
                self.entry,
                [self.n, self.h, self.w],
                first,
                first + k
            ),
            (k as u128) * (self.h as u128) * (self.w as u128) * elem,
        )?;
        Ok((first, k))
    }

    /// The images `first..first + k` of a stack read whole.
    fn cut(st: &Stack<T>, first: usize, k: usize) -> Stack<T> {
        window(st, first..first + k)
    }
}

/// Open `path`'s dataset (`entry`, else the first of `defaults`): its path (`""` for
/// `.npy`), and its shape and rows decoded by `rows`, or `None` when `rows` leaves it to
/// the whole-file reader.
#[allow(clippy::type_complexity)]
fn open_images<T>(
    path: &Path,
    entry: Option<&str>,
    defaults: &[&str],
    rows: impl FnOnce(&hdf5::H5, &str, hdf5_pure::Dataset) -> Result<Option<RowDataset>>,
) -> Result<(String, Option<(Vec<usize>, ImageSource<T>)>)> {
    if super::format_of(path)? == Format::Npy {
        let rows = super::npy::NpyRows::open(path)?;
        let shape = rows.header.shape.clone();
        return Ok((String::new(), Some((shape, ImageSource::Npy(rows)))));
    }
    let f = hdf5::open_streaming(path)?;
    let (name, d) = f.first_dataset(&candidates(entry, defaults))?;
    let data = rows(&f, &name, d)?;
    Ok((
        name,
        data.map(|r| (r.shape.clone(), ImageSource::Rows(Box::new(r)))),
    ))
}

impl ImageBlocks<u8> {
    /// Open a support file as [`crate::io::read_support`] reads it (HDF5 without `entry`:
    /// the first of [`DEFAULT_SUPPORT_ENTRIES`]); nothing but its header is read.
    pub fn open_support(path: &Path, entry: Option<&str>) -> Result<ImageBlocks<u8>> {
        let (name, opened) = open_images(path, entry, &DEFAULT_SUPPORT_ENTRIES, |f, name, d| {
            f.real_rows(name, d)
        })?;
        let Some((shape, src)) = opened else {
            return Ok(Self::from_whole(
                path,
                name,
                super::read_support(path, entry)?,
            ));
        };
        if let ImageSource::Npy(rows) = &src {
            if rows.header.is_complex() {
                return Err(super::complex_support(path, &rows.header.descr));
            }
        }
        Self::from_rows(path, name, &shape, src)
    }

    /// The supports of patterns `r` (0/1; a NaN or an infinity is an error naming the
    /// image, counted in the file): the window of a per-pattern file, or the one shared
    /// support whatever `r` is.
    pub fn read(&self, r: Range<usize>) -> Result<Stack<u8>> {
        let (first, k) = self.span(&r, "supports", 9)?;
        let (l, h, w) = (self.h * self.w, self.h, self.w);
        let v = match &self.src {
            ImageSource::Whole(st) => return Ok(Self::cut(st, first, k)),
            ImageSource::Rows(rows) => {
                let (first, k) = image_rows(rows, first, k);
                rows.read_f32(first, k)?
            }
            ImageSource::Npy(rows) => rows.read(first * l, k * l)?.to_f32(),
        };
        let v = super::support_values(&self.source, &self.entry, first, h, w, v)?;
        Stack::from_vec(k, h, w, v)
    }
}

impl ImageBlocks<Complex32> {
    /// Open a file of starting objects as [`crate::io::read_object`] reads it (HDF5
    /// without `entry`: the first of [`DEFAULT_OBJECT_ENTRIES`]; complex compounds or real
    /// types); nothing but its header is read.
    pub fn open_object(path: &Path, entry: Option<&str>) -> Result<ImageBlocks<Complex32>> {
        let (name, opened) = open_images(path, entry, &DEFAULT_OBJECT_ENTRIES, |f, name, d| {
            f.complex_rows(name, d)
        })?;
        let Some((shape, src)) = opened else {
            return Ok(Self::from_whole(
                path,
                name,
                super::read_object(path, entry)?,
            ));
        };
        Self::from_rows(path, name, &shape, src)
    }

    /// The starting objects of patterns `r`: the window of a per-pattern file, or the
    /// one shared object whatever `r` is.
    pub fn read(&self, r: Range<usize>) -> Result<Stack<Complex32>> {
        let (first, k) = self.span(&r, "objects", 16)?;
        let (l, h, w) = (self.h * self.w, self.h, self.w);
        let v = match &self.src {
            ImageSource::Whole(st) => return Ok(Self::cut(st, first, k)),
            ImageSource::Rows(rows) => {
                let (first, k) = image_rows(rows, first, k);
                rows.read_complex(first, k)?
            }
            ImageSource::Npy(rows) => rows.read(first * l, k * l)?.to_complex32(),
        };
        Stack::from_vec(k, h, w, v)
    }
}

/// The rows of `d` that hold images `first..first + k`: those rows of an (N, H, W)
/// dataset, every row of an (H, W) one (its one image; `first` is 0 and `k` 1 there).
fn image_rows(d: &RowDataset, first: usize, k: usize) -> (usize, usize) {
    match *d.shape.as_slice() {
        [h, _] => (0, h),
        _ => (first, k),
    }
}

/// Images `r` of a stack that holds one shared image (`n == 1`, returned whole) or one
/// image per pattern.
pub fn window<T: Clone>(s: &Stack<T>, r: Range<usize>) -> Stack<T> {
    if s.n == 1 {
        return s.clone();
    }
    let l = s.h * s.w;
    Stack {
        n: r.len(),
        h: s.h,
        w: s.w,
        data: s.data[r.start * l..r.end * l].to_vec(),
    }
}

/// A bounded channel of (block index, value).
type Channel<T> = (SyncSender<(usize, T)>, Receiver<(usize, T)>);

/// Run `blocks` (block indices, in order) through three stages at once: `read(b)` on a
/// reader thread, `compute(b, input)` on the calling thread (a GPU context stays on the
/// thread that made it), `write(b, output)` on a writer thread. One block waits between
/// stages (bounded channels): memory holds at most about four blocks whatever N is. The
/// first error of any stage stops all three and is returned.
pub fn pipeline<I: Send, O: Send>(
    blocks: &[usize],
    read: impl FnMut(usize) -> Result<I> + Send,
    mut compute: impl FnMut(usize, I) -> Result<O>,
    write: impl FnMut(usize, O) -> Result<()> + Send,
) -> Result<()> {
    std::thread::scope(|s| {
        let (in_tx, in_rx): Channel<I> = sync_channel(1);
        let (out_tx, out_rx): Channel<O> = sync_channel(1);
        let mut read = read;
        let mut write = write;
        let reader = std::thread::Builder::new()
            .name("cdiphase-read".into())
            .spawn_scoped(s, move || -> Result<()> {
                for &b in blocks {
                    let x = read(b)?;
                    if in_tx.send((b, x)).is_err() {
                        break; // the compute stage stopped (its error is returned)
                    }
                }
                Ok(())
            })
            .map_err(|e| Error::io("<reader thread>", e))?;
        let writer = std::thread::Builder::new()
            .name("cdiphase-write".into())
            .spawn_scoped(s, move || -> Result<()> {
                for (b, y) in out_rx {
                    write(b, y)?;
                }
                Ok(())
            })
            .map_err(|e| Error::io("<writer thread>", e))?;
        let mut computed: Result<()> = Ok(());
        for (b, x) in in_rx.iter() {
            match compute(b, x) {
                Ok(y) => {
                    if out_tx.send((b, y)).is_err() {
                        break; // the writer stopped: its error is returned
                    }
                }
                Err(e) => {
                    computed = Err(e);
                    break;
                }
            }
        }
        drop(in_rx);
        drop(out_tx);
        let r = reader
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let w = writer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        // the earliest stage's error first: a read error explains a compute that never ran
        r.and(computed).and(w)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_covers_every_pattern_once() {
        for (n, b) in [(1, 1), (7, 1), (7, 3), (7, 7), (7, 100), (10, 5)] {
            let p = BlockPlan::new(n, b).unwrap();
            let all: Vec<usize> = (0..p.count()).flat_map(|i| p.range(i)).collect();
            assert_eq!(all, (0..n).collect::<Vec<_>>(), "n {n} block {b}");
        }
        assert!(BlockPlan::new(5, 0).is_err());
    }

    #[test]
    fn pipeline_keeps_order_and_reports_the_first_error() {
        let blocks: Vec<usize> = (0..9).collect();
        let mut got = Vec::new();
        pipeline(
            &blocks,
            |b| Ok(b * 10),
            |b, x| Ok((b, x + 1)),
            |b, y| {
                got.push((b, y));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(
            got,
            (0..9).map(|b| (b, (b, b * 10 + 1))).collect::<Vec<_>>()
        );
        let e = pipeline(
            &blocks,
            Ok,
            |b, x| {
                if b == 4 {
                    Err(Error::Config("boom".into()))
                } else {
                    Ok(x)
                }
            },
            |_, _| Ok(()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("boom"));
        let e = pipeline(
            &blocks,
            Ok,
            |_, x| Ok(x),
            |b, _| {
                if b == 2 {
                    Err(Error::Config("disk".into()))
                } else {
                    Ok(())
                }
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("disk"));
    }
}

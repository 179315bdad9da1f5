//! HDF5 / CXI reading and writing on top of the pure-Rust `hdf5-pure` crate.
//!
//! Every call into `hdf5-pure` that parses file bytes goes through [`guard`], which turns a
//! panic inside the parser (on a corrupt file) into an [`Error::Format`] naming the file.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use hdf5_pure::{
    AttrValue, CompoundTypeBuilder, Dataset, Datatype, DatatypeByteOrder, FileBuilder, FormatError,
};

use crate::array::Complex32;
use crate::{Error, Result};

// ------------------------------------------------------------------------------------
// reading
// ------------------------------------------------------------------------------------

/// Run `f`, converting a panic inside the HDF5 parser into [`Error::Format`].
pub(crate) fn guard<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::format(
                path,
                format!("corrupt or unsupported HDF5 file (the HDF5 reader panicked: {msg})"),
            ))
        }
    }
}

fn h5err(path: &Path, what: &str, e: hdf5_pure::Error) -> Error {
    Error::format(path, format!("{what}: {e}"))
}

/// An open HDF5 file (whole file in memory).
pub(crate) struct H5 {
    pub path: std::path::PathBuf,
    pub file: hdf5_pure::File,
}

/// Open `path` as HDF5. Missing/unreadable file: [`Error::Io`]; not HDF5: [`Error::Format`].
pub(crate) fn open(path: &Path) -> Result<H5> {
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    crate::limits::check_memory(
        &format!("{}: reading the whole HDF5 file", path.display()),
        size as u128,
    )?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    open_bytes(path, bytes)
}

/// [`open`] on the bytes of a file (`path` names it in messages; a member of a .keras
/// archive, for instance): the signature, the parse and the truncation check.
pub(crate) fn open_bytes(path: &Path, bytes: Vec<u8>) -> Result<H5> {
    if !hdf5_pure::is_hdf5_bytes(&bytes) {
        return Err(Error::format(
            path,
            "not an HDF5 file (no HDF5 signature found)",
        ));
    }
    let len = bytes.len() as u64;
    let file = guard(path, || {
        hdf5_pure::File::from_bytes(bytes)
            .map_err(|e| h5err(path, "not a readable HDF5 file (truncated or corrupt?)", e))
    })?;
    not_truncated(path, file, len)
}

/// The superblock records where the file ends: a file shorter than that was cut (an
/// interrupted copy or download), even when its metadata happens to still parse.
fn not_truncated(path: &Path, file: hdf5_pure::File, len: u64) -> Result<H5> {
    let sb = file.superblock();
    let eof = sb.base_address.get().saturating_add(sb.eof_address);
    if sb.eof_address != u64::MAX && eof > len {
        return Err(Error::format(
            path,
            format!("truncated HDF5 file: {len} bytes, but its superblock says {eof}"),
        ));
    }
    Ok(H5 {
        path: path.to_path_buf(),
        file,
    })
}

/// See [`crate::io::for_each_rows_f32`]: the file is opened for streaming reads (no
/// whole-file buffer) and read `rows` rows at a time.
pub(crate) fn for_each_rows_f32(
    path: &Path,
    entry: &str,
    rows: usize,
    f: &mut crate::io::RowsSink<'_>,
) -> Result<Vec<usize>> {
    let file = guard(path, || {
        hdf5_pure::File::open_streaming(path).map_err(|e| match e {
            hdf5_pure::Error::Io(io) => Error::io(path, io),
            e => h5err(path, "not a readable HDF5 file", e),
        })
    })?;
    let d = guard(path, || {
        file.dataset(entry).map_err(|e| {
            if is_not_found(&e) {
                Error::MissingEntry {
                    path: path.to_path_buf(),
                    entry: entry.to_string(),
                    hint: "not in the file".into(),
                }
            } else {
                h5err(path, &format!("cannot open dataset '{entry}'"), e)
            }
        })
    })?;
    let shape: Vec<usize> = guard(path, || {
        d.shape()
            .map(|s| s.into_iter().map(|x| x as usize).collect())
            .map_err(|e| h5err(path, &format!("shape of '{entry}'"), e))
    })?;
    let n = shape.first().copied().unwrap_or(1);
    let dims: Vec<u64> = shape.iter().map(|&x| x as u64).collect();
    let row_bytes = crate::limits::bytes_of(&dims[dims.len().min(1)..], 8);
    crate::limits::check_memory(
        &format!(
            "{}: dataset '{entry}' of shape {shape:?}, {rows} row(s) at a time",
            path.display()
        ),
        row_bytes.saturating_mul(rows as u128),
    )?;
    let row: usize = shape.iter().skip(1).product::<usize>().max(1);
    let mut first = 0;
    while first < n {
        let k = rows.min(n - first);
        let v = guard(path, || {
            d.read_f32_rows(first as u64, k as u64)
                .map_err(|e| h5err(path, &format!("reading rows {first}.. of '{entry}'"), e))
        })?;
        check_len(path, entry, &[k, row], v.len())?;
        f(&shape, first, &v)?;
        first += k;
    }
    Ok(shape)
}

fn is_not_found(e: &hdf5_pure::Error) -> bool {
    matches!(
        e,
        hdf5_pure::Error::Format(FormatError::PathNotFound(_))
            | hdf5_pure::Error::NotADataset(_)
            | hdf5_pure::Error::NotAGroup(_)
    )
}

/// An error from following an undefined address (all ones): what a soft or external link
/// of an old-style group gives the reader.
fn is_undefined_address(e: &hdf5_pure::Error) -> bool {
    e.to_string().contains(&u64::MAX.to_string())
}

fn strip(p: &str) -> &str {
    p.trim_start_matches('/')
}

impl H5 {
    /// The dataset at `name` (with or without a leading `/`), `None` when absent.
    pub fn try_dataset(&self, name: &str) -> Result<Option<Dataset>> {
        let bare = strip(name);
        if bare.is_empty() {
            return Ok(None);
        }
        let path = &self.path;
        guard(path, || {
            let mut last = None;
            for cand in [bare.to_string(), format!("/{bare}")] {
                match self.file.dataset(&cand) {
                    Ok(d) => return Ok(Some(d)),
                    Err(e) if is_not_found(&e) => last = None,
                    Err(e) if is_undefined_address(&e) => {
                        return Err(Error::format(
                            path,
                            format!(
                                "'{bare}' (or a group on its path) is a soft or external link, \
                                 which is not followed: give the target dataset's own path"
                            ),
                        ))
                    }
                    Err(e) => last = Some(e),
                }
            }
            match last {
                None => Ok(None),
                Some(e) => Err(h5err(path, &format!("cannot open dataset '{bare}'"), e)),
            }
        })
    }

    /// First dataset of `candidates` present in the file, else [`Error::MissingEntry`].
    pub fn first_dataset(&self, candidates: &[String]) -> Result<(String, Dataset)> {
        for c in candidates {
            if let Some(d) = self.try_dataset(c)? {
                return Ok((strip(c).to_string(), d));
            }
        }
        Err(Error::MissingEntry {
            path: self.path.clone(),
            entry: candidates.join("' or '"),
            hint: self.hint(),
        })
    }

    /// What the file holds, for error messages: the members of `entry_1` (or of the root).
    pub fn hint(&self) -> String {
        let r = guard(&self.path, || {
            let (label, g) = match self.file.group("entry_1") {
                Ok(g) => ("entry_1", g),
                Err(_) => ("/", self.file.root()),
            };
            let groups = g.groups().unwrap_or_default();
            let datasets = g.datasets().unwrap_or_default();
            Ok(format!(
                "'{label}' contains groups [{}] and datasets [{}]",
                groups.join(", "),
                datasets.join(", ")
            ))
        });
        r.unwrap_or_else(|_| "cannot list the file's contents".into())
    }

    fn shape(&self, entry: &str, d: &Dataset) -> Result<Vec<usize>> {
        guard(&self.path, || {
            d.shape()
                .map(|s| s.into_iter().map(|x| x as usize).collect())
                .map_err(|e| h5err(&self.path, &format!("shape of '{entry}'"), e))
        })
    }

    fn datatype(&self, entry: &str, d: &Dataset) -> Result<Datatype> {
        guard(&self.path, || {
            d.datatype()
                .map_err(|e| h5err(&self.path, &format!("datatype of '{entry}'"), e))
        })
    }

    /// Whole dataset as `f32` (integers and floats; complex is refused).
    pub fn read_f32(&self, entry: &str, d: &Dataset) -> Result<(Vec<usize>, Vec<f32>)> {
        let shape = self.shape(entry, d)?;
        self.check_declared(entry, d, &shape, 4)?;
        let dt = self.datatype(entry, d)?;
        match dt {
            Datatype::FloatingPoint {
                size: 2,
                byte_order,
                ..
            } => {
                let v = self.read_f16(entry, d, &byte_order)?;
                check_len(&self.path, entry, &shape, v.len())?;
                return Ok((shape, v));
            }
            Datatype::FloatingPoint { .. } | Datatype::FixedPoint { .. } => {}
            Datatype::Enumeration { .. } => {
                let m = self.read_mask_values(entry, d)?;
                return Ok((shape, m.into_iter().map(f32::from).collect()));
            }
            other => {
                return Err(Error::format(
                    &self.path,
                    format!(
                        "dataset '{entry}' has type {} which cannot be read as real numbers",
                        describe(&other)
                    ),
                ))
            }
        }
        let data = guard(&self.path, || {
            d.read_f32()
                .map_err(|e| h5err(&self.path, &format!("reading '{entry}'"), e))
        })?;
        check_len(&self.path, entry, &shape, data.len())?;
        Ok((shape, data))
    }

    /// Refuse a dataset whose declared shape cannot be right or cannot be held, before
    /// anything is allocated: contiguous or compact storage shorter than the shape needs
    /// (or past the end of the file), virtual datasets, and a shape whose values (stored
    /// size plus `mem_elem` bytes per element in memory) exceed the memory available.
    /// Chunked datasets may legitimately be sparse (unwritten chunks read as the fill
    /// value), so for them the memory bound is the check.
    fn check_declared(
        &self,
        entry: &str,
        d: &Dataset,
        shape: &[usize],
        mem_elem: u64,
    ) -> Result<()> {
        let path = &self.path;
        let dims: Vec<u64> = shape.iter().map(|&x| x as u64).collect();
        let elem = guard(path, || {
            d.element_size()
                .map_err(|e| h5err(path, &format!("element size of '{entry}'"), e))
        })?;
        let stored = crate::limits::bytes_of(&dims, elem);
        let what = format!("{}: dataset '{entry}' of shape {shape:?}", path.display());
        let layout = guard(path, || {
            d.layout()
                .map_err(|e| h5err(path, &format!("layout of '{entry}'"), e))
        })?;
        let file_len = self.file.as_bytes().len() as u128;
        let short = |have: u64| {
            Err(Error::format(
                path,
                format!(
                    "dataset '{entry}': shape {shape:?} of {elem}-byte elements needs {} bytes, but only {have} are stored (corrupt file)",
                    stored
                ),
            ))
        };
        match layout {
            hdf5_pure::Layout::Compact { size } if (size as u128) < stored => return short(size),
            hdf5_pure::Layout::Contiguous {
                address: Some(a),
                size,
            } => {
                if (size as u128) < stored {
                    return short(size);
                }
                if a as u128 + size as u128 > file_len {
                    return Err(Error::format(
                        path,
                        format!(
                            "dataset '{entry}': its {size} bytes at offset {a} run past the end of the file ({file_len} bytes): truncated or corrupt"
                        ),
                    ));
                }
            }
            hdf5_pure::Layout::Virtual => {
                return Err(Error::format(
                    path,
                    format!("dataset '{entry}' is a virtual dataset, which is not supported"),
                ))
            }
            _ => {}
        }
        let elems = crate::limits::bytes_of(&dims, 1);
        crate::limits::check_memory(
            &what,
            stored.saturating_add(elems.saturating_mul(mem_elem as u128)),
        )
    }

    /// A float16 dataset as `f32`.
    fn read_f16(&self, entry: &str, d: &Dataset, order: &DatatypeByteOrder) -> Result<Vec<f32>> {
        let path = &self.path;
        let raw = guard(path, || {
            d.read_raw()
                .map_err(|e| h5err(path, &format!("reading '{entry}'"), e))
        })?;
        if raw.len() % 2 != 0 {
            return Err(Error::format(
                path,
                format!("dataset '{entry}': {} bytes for 2-byte elements", raw.len()),
            ));
        }
        Ok(f16_values(
            &raw,
            matches!(order, DatatypeByteOrder::BigEndian),
        ))
    }

    /// A string dataset (scalar or 1-D, fixed or variable length), its elements in order.
    pub fn read_strings(&self, entry: &str, d: &Dataset) -> Result<Vec<String>> {
        match self.datatype(entry, d)? {
            Datatype::String { .. } | Datatype::VariableLength { .. } => {}
            other => {
                return Err(Error::format(
                    &self.path,
                    format!(
                        "dataset '{entry}' has type {}, not a string",
                        describe(&other)
                    ),
                ))
            }
        }
        let shape = self.shape(entry, d)?;
        self.check_declared(entry, d, &shape, 32)?;
        guard(&self.path, || {
            d.read_string()
                .map_err(|e| h5err(&self.path, &format!("reading '{entry}'"), e))
        })
    }

    /// Whole dataset as a 0/1 mask (nonzero, including NaN, becomes 1).
    pub fn read_mask(&self, entry: &str, d: &Dataset) -> Result<(Vec<usize>, Vec<u8>)> {
        let shape = self.shape(entry, d)?;
        self.check_declared(entry, d, &shape, 9)?;
        let v = self.read_mask_values(entry, d)?;
        check_len(&self.path, entry, &shape, v.len())?;
        Ok((shape, v))
    }

    fn read_mask_values(&self, entry: &str, d: &Dataset) -> Result<Vec<u8>> {
        let dt = self.datatype(entry, d)?;
        let path = &self.path;
        match dt {
            Datatype::FloatingPoint {
                size: 2,
                byte_order,
                ..
            } => Ok(self
                .read_f16(entry, d, &byte_order)?
                .into_iter()
                .map(|x| u8::from(x != 0.0))
                .collect()),
            Datatype::FloatingPoint { .. } => guard(path, || {
                d.read_f64()
                    .map(|v| v.into_iter().map(|x| u8::from(x != 0.0)).collect())
                    .map_err(|e| h5err(path, &format!("reading '{entry}'"), e))
            }),
            Datatype::FixedPoint { size, .. }
            | Datatype::Enumeration { size, .. }
            | Datatype::BitField { size, .. } => {
                let size = size as usize;
                let raw = guard(path, || {
                    d.read_raw()
                        .map_err(|e| h5err(path, &format!("reading '{entry}'"), e))
                })?;
                if size == 0 || raw.len() % size != 0 {
                    return Err(Error::format(
                        path,
                        format!(
                            "dataset '{entry}': {} bytes for elements of {size} bytes",
                            raw.len()
                        ),
                    ));
                }
                Ok(raw
                    .chunks_exact(size)
                    .map(|c| u8::from(c.iter().any(|&b| b != 0)))
                    .collect())
            }
            other => Err(Error::format(
                path,
                format!(
                    "dataset '{entry}' has type {} which cannot be read as a mask",
                    describe(&other)
                ),
            )),
        }
    }

    /// Whole dataset as complex numbers: complex compounds (`r`/`i` or `real`/`imag`)
    /// exactly, real types with a zero imaginary part.
    pub fn read_complex(&self, entry: &str, d: &Dataset) -> Result<(Vec<usize>, Vec<Complex32>)> {
        let dt = self.datatype(entry, d)?;
        let Some(layout) = complex_layout(&self.path, entry, &dt)? else {
            let (shape, re) = self.read_f32(entry, d)?;
            return Ok((
                shape,
                re.into_iter().map(|x| Complex32::new(x, 0.0)).collect(),
            ));
        };
        let path = &self.path;
        let shape = self.shape(entry, d)?;
        self.check_declared(entry, d, &shape, 8)?;
        let raw = guard(path, || {
            d.read_raw()
                .map_err(|e| h5err(path, &format!("reading '{entry}'"), e))
        })?;
        let data = layout.decode(path, entry, &raw)?;
        check_len(path, entry, &shape, data.len())?;
        Ok((shape, data))
    }

    /// Every dataset in the file: (path, shape, dtype description).
    pub fn list(&self) -> Result<Vec<(String, Vec<usize>, String)>> {
        let path = &self.path;
        guard(path, || {
            let mut out = Vec::new();
            let mut stack = vec![(String::new(), self.file.root(), 0usize)];
            let mut groups = 0usize;
            while let Some((prefix, g, depth)) = stack.pop() {
                groups += 1;
                if groups > MAX_GROUPS {
                    return Err(too_many_groups(path));
                }
                let ds = g
                    .iter_datasets()
                    .map_err(|e| h5err(path, &format!("listing '{prefix}'"), e))?;
                for (name, d) in ds {
                    let full = format!("{prefix}{name}");
                    let shape = d
                        .shape()
                        .map(|s| s.into_iter().map(|x| x as usize).collect())
                        .unwrap_or_default();
                    let dtype = d
                        .datatype()
                        .map(|t| describe(&t))
                        .unwrap_or_else(|_| "?".into());
                    out.push((full, shape, dtype));
                }
                let gs = g
                    .iter_groups()
                    .map_err(|e| h5err(path, &format!("listing '{prefix}'"), e))?;
                // HDF5 allows a group to link to its ancestors: a cycle is not followed
                // past MAX_GROUP_DEPTH levels
                if depth < MAX_GROUP_DEPTH {
                    for (name, sub) in gs {
                        stack.push((format!("{prefix}{name}/"), sub, depth + 1));
                    }
                }
            }
            out.sort();
            Ok(out)
        })
    }
}

/// Where the parts of a complex number lie in a compound record (h5py's `r`/`i`, or
/// `real`/`imag`): (byte offset, size 4 or 8, big-endian) of each part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ComplexLayout {
    size: usize,
    re: (usize, usize, bool),
    im: (usize, usize, bool),
}

/// The complex layout of `dt`; `None` when it is not a compound (a real type, read with a
/// zero imaginary part). A compound that is not a complex number is an error naming it.
fn complex_layout(path: &Path, entry: &str, dt: &Datatype) -> Result<Option<ComplexLayout>> {
    let Datatype::Compound { size, members } = dt else {
        return Ok(None);
    };
    let find = |names: &[&str]| {
        members
            .iter()
            .find(|m| names.iter().any(|n| m.name.eq_ignore_ascii_case(n)))
    };
    let (Some(re), Some(im)) = (find(&["r", "real", "re"]), find(&["i", "imag", "im"])) else {
        return Err(Error::format(
            path,
            format!(
                "dataset '{entry}' is a compound type {} but not a complex number (fields r/i or real/imag)",
                describe(dt)
            ),
        ));
    };
    let field = |m: &hdf5_pure::CompoundMember| -> Result<(usize, usize, bool)> {
        match &m.datatype {
            Datatype::FloatingPoint {
                size: s @ (4 | 8),
                byte_order,
                ..
            } => Ok((
                m.byte_offset as usize,
                *s as usize,
                matches!(byte_order, DatatypeByteOrder::BigEndian),
            )),
            other => Err(Error::format(
                path,
                format!(
                    "dataset '{entry}': complex field '{}' has unsupported type {}",
                    m.name,
                    describe(other)
                ),
            )),
        }
    };
    let (re, im) = (field(re)?, field(im)?);
    let size = *size as usize;
    if re.0 + re.1 > size || im.0 + im.1 > size {
        return Err(Error::format(
            path,
            format!("dataset '{entry}': bad compound layout"),
        ));
    }
    Ok(Some(ComplexLayout { size, re, im }))
}

impl ComplexLayout {
    /// The complex numbers of whole records `raw`.
    fn decode(&self, path: &Path, entry: &str, raw: &[u8]) -> Result<Vec<Complex32>> {
        let size = self.size;
        if size == 0 || !raw.len().is_multiple_of(size) {
            return Err(Error::format(
                path,
                format!(
                    "dataset '{entry}': {} bytes for records of {size} bytes",
                    raw.len()
                ),
            ));
        }
        let get = |rec: &[u8], (off, s, big): (usize, usize, bool)| -> f32 {
            let b = &rec[off..off + s];
            if s == 4 {
                let a: [u8; 4] = b.try_into().unwrap();
                if big {
                    f32::from_be_bytes(a)
                } else {
                    f32::from_le_bytes(a)
                }
            } else {
                let a: [u8; 8] = b.try_into().unwrap();
                (if big {
                    f64::from_be_bytes(a)
                } else {
                    f64::from_le_bytes(a)
                }) as f32
            }
        };
        Ok(raw
            .chunks_exact(size)
            .map(|rec| Complex32::new(get(rec, self.re), get(rec, self.im)))
            .collect())
    }
}

/// How deep a walk over a file's groups goes: HDF5 lets a group link to its own
/// ancestors, and a walk that followed such a cycle would never end.
pub(crate) const MAX_GROUP_DEPTH: usize = 32;
/// How many groups a walk visits before it gives up (a cycle with branches grows
/// exponentially with the depth).
pub(crate) const MAX_GROUPS: usize = 100_000;

/// The error of a walk that met more than [`MAX_GROUPS`] groups.
pub(crate) fn too_many_groups(path: &Path) -> Error {
    Error::format(
        path,
        format!("more than {MAX_GROUPS} groups below the root (groups linked in a cycle?)"),
    )
}

fn check_len(path: &Path, entry: &str, shape: &[usize], len: usize) -> Result<()> {
    let n: usize = shape.iter().product();
    if n != len {
        return Err(Error::format(
            path,
            format!("dataset '{entry}': shape {shape:?} but {len} elements were read"),
        ));
    }
    Ok(())
}

/// numpy-like name of an HDF5 datatype (`float32`, `uint16`, `complex64`, ...).
pub(crate) fn describe(dt: &Datatype) -> String {
    match dt {
        Datatype::FloatingPoint { size, .. } => format!("float{}", size * 8),
        Datatype::FixedPoint { size, layout, .. } => {
            format!("{}int{}", if layout.signed { "" } else { "u" }, size * 8)
        }
        Datatype::Enumeration { size: 1, .. } => "bool".into(),
        Datatype::Enumeration { size, .. } => format!("enum{}", size * 8),
        Datatype::String { .. } => "string".into(),
        Datatype::Compound { size, members } => {
            let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
            let is_c = |a: &str, b: &str| names.len() == 2 && names[0] == a && names[1] == b;
            if is_c("r", "i") || is_c("real", "imag") {
                format!("complex{}", size * 8)
            } else {
                format!("compound{{{}}}", names.join(","))
            }
        }
        other => {
            let s = format!("{other:?}");
            s.split([' ', '{', '(']).next().unwrap_or("?").to_string()
        }
    }
}

// ------------------------------------------------------------------------------------
// writing
// ------------------------------------------------------------------------------------

enum Node {
    Group {
        children: Vec<(String, Node)>,
        attrs: Vec<(String, String)>,
    },
    Dataset {
        dtype: Datatype,
        shape: Vec<usize>,
        raw: Vec<u8>,
        gzip: Option<u32>,
        attrs: Vec<(String, String)>,
    },
    Str {
        value: String,
        attrs: Vec<(String, String)>,
    },
}

impl Node {
    fn empty_group() -> Node {
        Node::Group {
            children: Vec::new(),
            attrs: Vec::new(),
        }
    }
    fn attrs_mut(&mut self) -> &mut Vec<(String, String)> {
        match self {
            Node::Group { attrs, .. } | Node::Dataset { attrs, .. } | Node::Str { attrs, .. } => {
                attrs
            }
        }
    }
}

/// Builds an HDF5 file in memory and writes it atomically with [`CxiWriter::finish`].
///
/// Datasets are stored contiguous and uncompressed by default (fastest to write and read);
/// [`CxiWriter::set_gzip`] switches later datasets to chunked (one image per chunk) + shuffle +
/// deflate.
pub struct CxiWriter {
    root: Node,
    gzip: Option<u32>,
}

impl Default for CxiWriter {
    fn default() -> Self {
        Self::new()
    }
}

fn split_path(path: &str) -> Result<Vec<&str>> {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(Error::invalid(
            format!("HDF5 path '{path}'"),
            "must name an object below the root (like entry_1/data_1/data)",
        ));
    }
    Ok(parts)
}

impl CxiWriter {
    /// An empty file.
    pub fn new() -> Self {
        CxiWriter {
            root: Node::empty_group(),
            gzip: None,
        }
    }

    /// Compression for datasets added after this call: `Some(level)` (0-9) gives chunked
    /// storage (chunks of one trailing 2-D image) with shuffle + deflate; `None` (the
    /// default) gives contiguous uncompressed storage.
    pub fn set_gzip(&mut self, level: Option<u32>) {
        self.gzip = level.map(|l| l.min(9));
    }

    /// The group at `parts` (created with its parents as needed).
    fn group_mut(&mut self, parts: &[&str], full: &str) -> Result<&mut Vec<(String, Node)>> {
        let mut node = &mut self.root;
        for p in parts {
            let Node::Group { children, .. } = node else {
                unreachable!("only groups are descended into")
            };
            let idx = match children.iter().position(|(n, _)| n == p) {
                Some(i) => i,
                None => {
                    children.push((p.to_string(), Node::empty_group()));
                    children.len() - 1
                }
            };
            node = &mut children[idx].1;
            if !matches!(node, Node::Group { .. }) {
                return Err(Error::invalid(
                    format!("HDF5 path '{full}'"),
                    format!("'{p}' is a dataset, not a group"),
                ));
            }
        }
        match node {
            Node::Group { children, .. } => Ok(children),
            _ => unreachable!(),
        }
    }

    fn insert(&mut self, path: &str, node: Node) -> Result<()> {
        let parts = split_path(path)?;
        let (last, parents) = parts.split_last().unwrap();
        let children = self.group_mut(parents, path)?;
        if children.iter().any(|(n, _)| n == last) {
            return Err(Error::invalid(
                format!("HDF5 path '{path}'"),
                "an object of that name was already added",
            ));
        }
        children.push((last.to_string(), node));
        Ok(())
    }

    fn add_array(
        &mut self,
        path: &str,
        shape: &[usize],
        len: usize,
        dtype: Datatype,
        raw: Vec<u8>,
    ) -> Result<()> {
        let n: usize = shape.iter().product();
        if n != len || shape.is_empty() {
            return Err(Error::Shape {
                what: format!("dataset '{path}'"),
                expected: format!("{shape:?} = {n} elements (rank >= 1)"),
                found: vec![len],
            });
        }
        let gzip = self.gzip;
        self.insert(
            path,
            Node::Dataset {
                dtype,
                shape: shape.to_vec(),
                raw,
                gzip,
                attrs: Vec::new(),
            },
        )
    }

    /// A `float32` dataset of the given shape (C order).
    pub fn f32(&mut self, path: &str, shape: &[usize], data: &[f32]) -> Result<()> {
        let mut raw = Vec::with_capacity(data.len() * 4);
        for x in data {
            raw.extend_from_slice(&x.to_le_bytes());
        }
        self.add_array(path, shape, data.len(), hdf5_pure::make_f32_type(), raw)
    }

    /// A `uint8` dataset of the given shape (C order).
    pub fn u8(&mut self, path: &str, shape: &[usize], data: &[u8]) -> Result<()> {
        self.add_array(
            path,
            shape,
            data.len(),
            hdf5_pure::make_u8_type(),
            data.to_vec(),
        )
    }

    /// An `int64` dataset of the given shape (C order).
    pub fn i64(&mut self, path: &str, shape: &[usize], data: &[i64]) -> Result<()> {
        let mut raw = Vec::with_capacity(data.len() * 8);
        for x in data {
            raw.extend_from_slice(&x.to_le_bytes());
        }
        self.add_array(path, shape, data.len(), hdf5_pure::make_i64_type(), raw)
    }

    /// A `complex64` dataset: HDF5 compound `{r: f32, i: f32}`, which h5py reads as
    /// `numpy.complex64`.
    pub fn complex64(&mut self, path: &str, shape: &[usize], data: &[Complex32]) -> Result<()> {
        let dtype = CompoundTypeBuilder::new()
            .f32_field("r")
            .f32_field("i")
            .build()
            .map_err(|e| Error::invalid("complex64 datatype", e.to_string()))?;
        let mut raw = Vec::with_capacity(data.len() * 8);
        for x in data {
            raw.extend_from_slice(&x.re.to_le_bytes());
            raw.extend_from_slice(&x.im.to_le_bytes());
        }
        self.add_array(path, shape, data.len(), dtype, raw)
    }

    /// A scalar (variable-length UTF-8) string dataset.
    pub fn string(&mut self, path: &str, value: &str) -> Result<()> {
        self.insert(
            path,
            Node::Str {
                value: value.to_string(),
                attrs: Vec::new(),
            },
        )
    }

    /// A string attribute on a group or dataset already added (`""` or `"/"`: the root).
    /// A path not added yet is created as a group.
    pub fn attr_string(&mut self, object_path: &str, name: &str, value: &str) -> Result<()> {
        let parts: Vec<&str> = object_path.split('/').filter(|s| !s.is_empty()).collect();
        let node = if parts.is_empty() {
            &mut self.root
        } else {
            let (last, parents) = parts.split_last().unwrap();
            let children = self.group_mut(parents, object_path)?;
            let idx = match children.iter().position(|(n, _)| n == last) {
                Some(i) => i,
                None => {
                    children.push((last.to_string(), Node::empty_group()));
                    children.len() - 1
                }
            };
            &mut children[idx].1
        };
        let attrs = node.attrs_mut();
        attrs.retain(|(n, _)| n != name);
        attrs.push((name.to_string(), value.to_string()));
        Ok(())
    }

    /// Serialize the whole file into memory.
    fn into_builder(self) -> Result<FileBuilder> {
        let mut fb = FileBuilder::new();
        let Node::Group { children, attrs } = self.root else {
            unreachable!()
        };
        for (k, v) in attrs {
            fb.set_attr(&k, AttrValue::VarLenString(v));
        }
        fill(&mut fb, children)?;
        Ok(fb)
    }

    /// Write the file to `dest` atomically (temporary file in the same directory, then
    /// rename). On error nothing is left at `dest` nor any temporary file.
    pub fn finish(self, dest: &Path) -> Result<()> {
        let fb = self.into_builder()?;
        super::write_atomic(dest, |w| {
            fb.finish_to(w)
                .map_err(|e| Error::format(dest, format!("writing HDF5: {e}")))
        })
    }
}

/// Both `FileBuilder` (the root) and `GroupBuilder` take children the same way.
trait Container {
    fn dataset(&mut self, name: &str) -> &mut hdf5_pure::DatasetBuilder;
    fn group(&mut self, name: &str) -> hdf5_pure::GroupBuilder;
    fn add(&mut self, g: hdf5_pure::FinishedGroup);
}

impl Container for FileBuilder {
    fn dataset(&mut self, name: &str) -> &mut hdf5_pure::DatasetBuilder {
        self.create_dataset(name)
    }
    fn group(&mut self, name: &str) -> hdf5_pure::GroupBuilder {
        self.create_group(name)
    }
    fn add(&mut self, g: hdf5_pure::FinishedGroup) {
        self.add_group(g)
    }
}

impl Container for hdf5_pure::GroupBuilder {
    fn dataset(&mut self, name: &str) -> &mut hdf5_pure::DatasetBuilder {
        self.create_dataset(name)
    }
    fn group(&mut self, name: &str) -> hdf5_pure::GroupBuilder {
        self.create_group(name)
    }
    fn add(&mut self, g: hdf5_pure::FinishedGroup) {
        self.add_group(g)
    }
}

fn fill<C: Container>(c: &mut C, children: Vec<(String, Node)>) -> Result<()> {
    for (name, node) in children {
        match node {
            Node::Group { children, attrs } => {
                let mut g = c.group(&name);
                for (k, v) in attrs {
                    g.set_attr(&k, AttrValue::VarLenString(v));
                }
                fill(&mut g, children)?;
                c.add(g.finish());
            }
            Node::Dataset {
                dtype,
                shape,
                raw,
                gzip,
                attrs,
            } => {
                let n: usize = shape.iter().product();
                let shape64: Vec<u64> = shape.iter().map(|&x| x as u64).collect();
                let d = c.dataset(&name);
                d.with_raw_data(dtype, raw, n as u64).with_shape(&shape64);
                if let Some(level) = gzip {
                    // one trailing 2-D image per chunk (whole array when rank < 2)
                    let r = shape.len();
                    let chunk: Vec<u64> = shape
                        .iter()
                        .enumerate()
                        .map(|(i, &s)| if i + 2 >= r { s.max(1) as u64 } else { 1 })
                        .collect();
                    d.with_chunks(&chunk).with_shuffle().with_deflate(level);
                }
                for (k, v) in attrs {
                    d.set_attr(&k, AttrValue::VarLenString(v));
                }
            }
            Node::Str { value, attrs } => {
                let d = c.dataset(&name);
                d.with_vlen_strings(&[value.as_str()]).with_shape(&[]);
                for (k, v) in attrs {
                    d.set_attr(&k, AttrValue::VarLenString(v));
                }
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------
// streaming row reads (src/io/blocks.rs)
// ------------------------------------------------------------------------------------

/// float16 values (2 bytes each, whole elements) as `f32`.
fn f16_values(raw: &[u8], big: bool) -> Vec<f32> {
    raw.chunks_exact(2)
        .map(|b| {
            let bits = if big {
                u16::from_be_bytes([b[0], b[1]])
            } else {
                u16::from_le_bytes([b[0], b[1]])
            };
            half::f16::from_bits(bits).to_f32()
        })
        .collect()
}

/// How the rows of a dataset are decoded by [`RowDataset`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowKind {
    /// Real numbers as `f32` (the conversion of [`H5::read_f32`] for these types).
    Real,
    /// float16, converted to `f32` a window at a time as [`H5::read_f32`] converts it.
    Half { big: bool },
    /// A 0/1 mask from integers or bit fields of `size` bytes (any nonzero byte is 1).
    IntMask { size: usize },
    /// A 0/1 mask from floating point values (nonzero, NaN included, is 1).
    FloatMask,
    /// Complex numbers from compound records (the conversion of [`H5::read_complex`]).
    Complex(ComplexLayout),
}

/// One dataset of a file opened for streaming reads, read a window of rows at a time with
/// the same conversions as the whole-file readers ([`H5::read_f32`], [`H5::read_mask`]).
pub(crate) struct RowDataset {
    path: std::path::PathBuf,
    entry: String,
    d: Dataset,
    kind: RowKind,
    pub shape: Vec<usize>,
}

/// A file opened for streaming reads (no whole-file buffer), with the truncation check of
/// [`open`].
pub(crate) fn open_streaming(path: &Path) -> Result<H5> {
    let mut head = [0u8; 8];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let got = f.read(&mut head).map_err(|e| Error::io(path, e))?;
        if got < 8 || !hdf5_pure::is_hdf5_bytes(&head) {
            return Err(Error::format(
                path,
                "not an HDF5 file (no HDF5 signature found)",
            ));
        }
    }
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    let file = guard(path, || {
        hdf5_pure::File::open_streaming(path).map_err(|e| match e {
            hdf5_pure::Error::Io(io) => Error::io(path, io),
            e => h5err(path, "not a readable HDF5 file (truncated or corrupt?)", e),
        })
    })?;
    not_truncated(path, file, len)
}

impl H5 {
    /// `d` as a row source of real values, or `None` when its type needs the whole-file
    /// reader (enumerations) or is not real (then the whole-file reader gives the error
    /// message).
    pub(crate) fn real_rows(&self, entry: &str, d: Dataset) -> Result<Option<RowDataset>> {
        let kind = match self.datatype(entry, &d)? {
            Datatype::FloatingPoint { size: 4 | 8, .. } | Datatype::FixedPoint { .. } => {
                RowKind::Real
            }
            Datatype::FloatingPoint {
                size: 2,
                byte_order,
                ..
            } => RowKind::Half {
                big: matches!(byte_order, DatatypeByteOrder::BigEndian),
            },
            // h5py's bool and other enumerations: 0/1 as the whole-file reader gives them
            Datatype::Enumeration { size, .. } if size > 0 => RowKind::IntMask {
                size: size as usize,
            },
            _ => return Ok(None),
        };
        self.row_dataset(entry, d, kind)
    }

    /// `d` as a row source of a 0/1 mask, or `None` when its type needs the whole-file
    /// reader.
    pub(crate) fn mask_rows(&self, entry: &str, d: Dataset) -> Result<Option<RowDataset>> {
        let kind = match self.datatype(entry, &d)? {
            Datatype::FloatingPoint { size: 4 | 8, .. } => RowKind::FloatMask,
            Datatype::FloatingPoint {
                size: 2,
                byte_order,
                ..
            } => RowKind::Half {
                big: matches!(byte_order, DatatypeByteOrder::BigEndian),
            },
            Datatype::FixedPoint { size, .. }
            | Datatype::Enumeration { size, .. }
            | Datatype::BitField { size, .. }
                if size > 0 =>
            {
                RowKind::IntMask {
                    size: size as usize,
                }
            }
            _ => return Ok(None),
        };
        self.row_dataset(entry, d, kind)
    }

    /// `d` as a row source of complex values (what [`H5::read_complex`] reads: complex
    /// compounds exactly, real types with a zero imaginary part), or `None` when its type
    /// needs the whole-file reader. A compound that is not complex is refused here with
    /// the whole-file reader's message.
    pub(crate) fn complex_rows(&self, entry: &str, d: Dataset) -> Result<Option<RowDataset>> {
        let dt = self.datatype(entry, &d)?;
        if let Some(layout) = complex_layout(&self.path, entry, &dt)? {
            return self.row_dataset(entry, d, RowKind::Complex(layout));
        }
        self.real_rows(entry, d)
    }

    fn row_dataset(&self, entry: &str, d: Dataset, kind: RowKind) -> Result<Option<RowDataset>> {
        let shape = self.shape(entry, &d)?;
        let layout = guard(&self.path, || {
            d.layout()
                .map_err(|e| h5err(&self.path, &format!("layout of '{entry}'"), e))
        })?;
        if matches!(layout, hdf5_pure::Layout::Virtual) {
            return Ok(None);
        }
        Ok(Some(RowDataset {
            path: self.path.clone(),
            entry: entry.to_string(),
            d,
            kind,
            shape,
        }))
    }
}

impl RowDataset {
    fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product::<usize>().max(1)
    }

    /// Rows `first..first + k` as `f32` (a [`RowDataset`] of real values).
    pub fn read_f32(&self, first: usize, k: usize) -> Result<Vec<f32>> {
        let (path, entry) = (&self.path, &self.entry);
        let what = format!("reading rows {first}.. of '{entry}'");
        let v = match self.kind {
            RowKind::Real => guard(path, || {
                self.d
                    .read_f32_rows(first as u64, k as u64)
                    .map_err(|e| h5err(path, &what, e))
            })?,
            RowKind::Half { big } => {
                let raw = guard(path, || {
                    self.d
                        .read_raw_rows(first as u64, k as u64)
                        .map_err(|e| h5err(path, &what, e))
                })?;
                if raw.len() % 2 != 0 {
                    return Err(Error::format(
                        path,
                        format!("dataset '{entry}': {} bytes for 2-byte elements", raw.len()),
                    ));
                }
                f16_values(&raw, big)
            }
            // an enumeration read as numbers: its 0/1 values (`H5::read_f32`)
            RowKind::IntMask { .. } => self
                .read_mask(first, k)?
                .into_iter()
                .map(f32::from)
                .collect(),
            RowKind::FloatMask | RowKind::Complex(_) => {
                unreachable!("a float mask or a complex dataset is not read as real values")
            }
        };
        check_len(path, entry, &[k, self.row_len()], v.len())?;
        Ok(v)
    }

    /// Rows `first..first + k` as a 0/1 mask (a [`RowDataset`] of a mask).
    pub fn read_mask(&self, first: usize, k: usize) -> Result<Vec<u8>> {
        let (path, entry) = (&self.path, &self.entry);
        let what = format!("reading rows {first}.. of '{entry}'");
        let v: Vec<u8> = match self.kind {
            RowKind::FloatMask => guard(path, || {
                self.d
                    .read_f64_rows(first as u64, k as u64)
                    .map(|v| v.into_iter().map(|x| u8::from(x != 0.0)).collect())
                    .map_err(|e| h5err(path, &what, e))
            })?,
            RowKind::IntMask { size } => {
                let raw = guard(path, || {
                    self.d
                        .read_raw_rows(first as u64, k as u64)
                        .map_err(|e| h5err(path, &what, e))
                })?;
                if raw.len() % size != 0 {
                    return Err(Error::format(
                        path,
                        format!(
                            "dataset '{entry}': {} bytes for elements of {size} bytes",
                            raw.len()
                        ),
                    ));
                }
                raw.chunks_exact(size)
                    .map(|c| u8::from(c.iter().any(|&b| b != 0)))
                    .collect()
            }
            // float16: nonzero (NaN included) is 1, as `H5::read_mask` converts it
            RowKind::Half { .. } => self
                .read_f32(first, k)?
                .into_iter()
                .map(|x| u8::from(x != 0.0))
                .collect(),
            RowKind::Real | RowKind::Complex(_) => {
                unreachable!("a real or complex dataset is not read as a mask")
            }
        };
        check_len(path, entry, &[k, self.row_len()], v.len())?;
        Ok(v)
    }

    /// Rows `first..first + k` as complex numbers (a [`RowDataset`] of
    /// [`H5::complex_rows`]): compound records decoded, real values with a zero
    /// imaginary part.
    pub fn read_complex(&self, first: usize, k: usize) -> Result<Vec<Complex32>> {
        let (path, entry) = (&self.path, &self.entry);
        let v = match self.kind {
            RowKind::Complex(layout) => {
                let what = format!("reading rows {first}.. of '{entry}'");
                let raw = guard(path, || {
                    self.d
                        .read_raw_rows(first as u64, k as u64)
                        .map_err(|e| h5err(path, &what, e))
                })?;
                layout.decode(path, entry, &raw)?
            }
            RowKind::Real | RowKind::Half { .. } | RowKind::IntMask { .. } => self
                .read_f32(first, k)?
                .into_iter()
                .map(|x| Complex32::new(x, 0.0))
                .collect(),
            RowKind::FloatMask => {
                unreachable!("a float mask is not read as complex values")
            }
        };
        check_len(path, entry, &[k, self.row_len()], v.len())?;
        Ok(v)
    }
}

//! A streaming HDF5 writer: large N-D datasets written to disk a block of rows at a time,
//! memory flat in N.
//!
//! `hdf5-pure` (which reads everything here and writes [`super::CxiWriter`] files) builds a
//! file in memory, and its in-place appender grows only rank-1 datasets. CXI consumers need
//! `(N, H, W)` datasets, so this module writes the few HDF5 structures such a file needs
//! itself, following the HDF5 file format specification (version 3.0):
//!
//! - superblock version 2 (written last, at offset 0) and version 2 object headers with the
//!   Jenkins lookup3 checksums the format requires;
//! - groups in the compact "new style" (Link Info, Group Info and hard Link messages);
//! - datasets with contiguous storage: `f32`, `u8`, `i64`, `complex64` (a compound with
//!   fields `r` and `i`, which h5py reads as `np.complex64`) and fixed-length UTF-8 strings;
//!   fixed-length UTF-8 string attributes.
//!
//! Layout: the superblock's 48 bytes, then each streamed dataset's data region, reserved in
//! full when it is declared (its size follows from its shape), then, at
//! [`StreamWriter::finish`], the small datasets' data and every object header. Rows may be
//! written in any order; `finish` refuses to complete a file with rows never written. The
//! file is written under a temporary name in the destination's folder and renamed into
//! place by `finish`; dropped unfinished (or on error), the temporary file is removed, so a
//! destination is never left half-written.
//!
//! Streamed data is uncompressed: chunked, compressed layouts need chunk indexes that this
//! writer does not produce (use [`super::CxiWriter::set_gzip`] for files that fit in memory).

use crate::{Error, Result};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const UNDEF: u64 = u64::MAX;
const SUPERBLOCK_SIZE: u64 = 48;

/// Element types this writer stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    /// IEEE float64, little-endian (per-pattern values such as radii).
    F64,
    U8,
    I64,
    /// Compound `{r: f32, i: f32}` (h5py: complex64).
    Complex64,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
            Dtype::U8 => 1,
            Dtype::I64 => 8,
            Dtype::Complex64 => 8,
        }
    }
}

/// A streamed dataset declared with [`StreamWriter::stream`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamId(usize);

enum Data {
    /// Reserved region `[addr, addr + len)`, rows written so far (a bitmap of first-axis
    /// indices).
    Stream {
        addr: u64,
        len: u64,
        row_bytes: u64,
        written: Vec<bool>,
    },
    /// Bytes kept in memory until `finish`.
    Inline(Vec<u8>),
}

enum Kind {
    Group(Vec<(String, usize)>),
    Dataset {
        dtype: DatasetType,
        shape: Vec<usize>,
        data: Data,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DatasetType {
    Num(Dtype),
    /// Fixed-length UTF-8 string of this many bytes (null padded).
    Str(usize),
}

struct Object {
    kind: Kind,
    attrs: Vec<(String, String)>,
}

/// Writes one HDF5 file; see the module documentation.
pub struct StreamWriter {
    dest: PathBuf,
    tmp: PathBuf,
    file: Option<std::fs::File>,
    end: u64,
    objects: Vec<Object>,
    streams: Vec<usize>,
    /// Written under a fixed partial name (not a registered temporary) that survives a
    /// kill or an error, for `--resume` (see [`super::journal`]).
    resumable: bool,
}

impl StreamWriter {
    /// Start a file that will become `dest` at [`finish`](Self::finish).
    pub fn create(dest: &Path) -> Result<StreamWriter> {
        let tmp = super::temp_path(dest)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| {
                super::temp::unregister(&tmp);
                Error::io(dest, e)
            })?;
        Ok(StreamWriter {
            dest: dest.to_path_buf(),
            tmp,
            file: Some(file),
            end: SUPERBLOCK_SIZE,
            objects: vec![Object {
                kind: Kind::Group(Vec::new()),
                attrs: Vec::new(),
            }],
            streams: Vec::new(),
            resumable: false,
        })
    }

    /// Start a file that will become `dest` at [`finish`](Self::finish), written under
    /// `partial`, which is neither registered for removal on a signal nor removed when the
    /// writer is dropped unfinished: a run killed at any point leaves it for a resumed run
    /// ([`super::journal::BlockOutput`]). `resume`: open the existing `partial` without
    /// truncating it (the same declarations give the same layout, so rows written before
    /// keep their place); else start it empty.
    pub fn create_resumable(dest: &Path, partial: &Path, resume: bool) -> Result<StreamWriter> {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).read(true);
        if resume {
            o.create(false);
        } else {
            o.create(true).truncate(true);
        }
        let file = o.open(partial).map_err(|e| Error::io(partial, e))?;
        Ok(StreamWriter {
            dest: dest.to_path_buf(),
            tmp: partial.to_path_buf(),
            file: Some(file),
            end: SUPERBLOCK_SIZE,
            objects: vec![Object {
                kind: Kind::Group(Vec::new()),
                attrs: Vec::new(),
            }],
            streams: Vec::new(),
            resumable: true,
        })
    }

    /// Rows `first..first + k` of every streamed dataset count as written (they were, by
    /// an earlier run of a resumed file).
    pub fn mark_rows_written(&mut self, first: usize, k: usize) {
        for &o in &self.streams {
            if let Kind::Dataset {
                data: Data::Stream { written, .. },
                ..
            } = &mut self.objects[o].kind
            {
                let end = (first + k).min(written.len());
                written[first.min(end)..end]
                    .iter_mut()
                    .for_each(|w| *w = true);
            }
        }
    }

    /// Read back rows `first..first + k` of a streamed dataset as raw bytes (from a
    /// resumed file: the rows an earlier run wrote).
    pub fn read_rows_raw(&mut self, id: StreamId, first: usize, k: usize) -> Result<Vec<u8>> {
        use std::io::Read;
        let obj = self.streams[id.0];
        let Kind::Dataset {
            data: Data::Stream {
                addr, row_bytes, ..
            },
            ..
        } = &self.objects[obj].kind
        else {
            unreachable!()
        };
        let at = *addr + first as u64 * *row_bytes;
        let mut buf = vec![0u8; (k as u64 * *row_bytes) as usize];
        let dest = self.tmp.clone();
        let f = self.file.as_mut().expect("open until finish");
        f.seek(SeekFrom::Start(at))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| Error::io(&dest, e))?;
        Ok(buf)
    }

    /// Flush the rows written so far to the disk (before a journal records them).
    pub fn sync_data(&mut self) -> Result<()> {
        let f = self.file.as_mut().expect("open until finish");
        f.sync_data().map_err(|e| Error::io(&self.tmp, e))
    }

    fn err(&self, msg: String) -> Error {
        Error::format(&self.dest, msg)
    }

    /// Index of the object at `path`, creating missing groups on the way; the last
    /// component must not exist yet when `create_leaf` is given.
    fn insert(&mut self, path: &str, leaf: Option<Object>) -> Result<usize> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if parts.is_empty() {
            return match leaf {
                None => Ok(0),
                Some(_) => Err(self.err("a dataset needs a name".into())),
            };
        }
        let mut cur = 0;
        for (k, name) in parts.iter().enumerate() {
            let last = k + 1 == parts.len();
            let Kind::Group(children) = &self.objects[cur].kind else {
                return Err(self.err(format!(
                    "'{}' is a dataset, not a group",
                    parts[..k].join("/")
                )));
            };
            let found = children.iter().find(|(n, _)| n == name).map(|c| c.1);
            match (found, last, &leaf) {
                (Some(_), true, Some(_)) => {
                    return Err(self.err(format!("'{path}' was written twice")));
                }
                (Some(i), _, _) => cur = i,
                (None, true, Some(_)) => {
                    let idx = self.objects.len();
                    let Some(obj) = leaf else { unreachable!() };
                    self.objects.push(obj);
                    let Kind::Group(children) = &mut self.objects[cur].kind else {
                        unreachable!()
                    };
                    children.push((name.to_string(), idx));
                    return Ok(idx);
                }
                (None, _, _) => {
                    let idx = self.objects.len();
                    self.objects.push(Object {
                        kind: Kind::Group(Vec::new()),
                        attrs: Vec::new(),
                    });
                    let Kind::Group(children) = &mut self.objects[cur].kind else {
                        unreachable!()
                    };
                    children.push((name.to_string(), idx));
                    cur = idx;
                }
            }
        }
        Ok(cur)
    }

    fn dataset(
        &mut self,
        path: &str,
        dtype: DatasetType,
        shape: &[usize],
        data: Data,
    ) -> Result<usize> {
        self.insert(
            path,
            Some(Object {
                kind: Kind::Dataset {
                    dtype,
                    shape: shape.to_vec(),
                    data,
                },
                attrs: Vec::new(),
            }),
        )
    }

    /// Declare a dataset of `shape` (rank >= 1) whose rows (indices of the first axis) are
    /// written later with [`write_rows`](Self::write_rows). Its whole region is reserved now.
    pub fn stream(&mut self, path: &str, dtype: Dtype, shape: &[usize]) -> Result<StreamId> {
        if shape.is_empty() {
            return Err(self.err(format!("streamed dataset '{path}' needs rank >= 1")));
        }
        let row_elems: usize = shape[1..].iter().product();
        let row_bytes = (row_elems * dtype.size()) as u64;
        let len = row_bytes * shape[0] as u64;
        let addr = self.end;
        self.end += len;
        let idx = self.dataset(
            path,
            DatasetType::Num(dtype),
            shape,
            Data::Stream {
                addr,
                len,
                row_bytes,
                written: vec![false; shape[0]],
            },
        )?;
        self.streams.push(idx);
        Ok(StreamId(self.streams.len() - 1))
    }

    /// Write rows `first..first + k` of a streamed dataset from their raw little-endian
    /// bytes (`k` whole rows).
    pub fn write_rows_raw(&mut self, id: StreamId, first: usize, bytes: &[u8]) -> Result<()> {
        let obj = self.streams[id.0];
        let Kind::Dataset {
            data:
                Data::Stream {
                    addr,
                    row_bytes,
                    written,
                    ..
                },
            ..
        } = &mut self.objects[obj].kind
        else {
            unreachable!()
        };
        if row_bytes == &0 {
            return Ok(());
        }
        if !(bytes.len() as u64).is_multiple_of(*row_bytes) {
            let msg = format!(
                "{} bytes is not a whole number of rows of {row_bytes} bytes",
                bytes.len()
            );
            return Err(Error::format(&self.dest, msg));
        }
        let k = (bytes.len() as u64 / *row_bytes) as usize;
        if first + k > written.len() {
            let msg = format!(
                "rows {first}..{} past the end ({})",
                first + k,
                written.len()
            );
            return Err(Error::format(&self.dest, msg));
        }
        written[first..first + k].iter_mut().for_each(|w| *w = true);
        let at = *addr + first as u64 * *row_bytes;
        let dest = self.dest.clone();
        let f = self.file.as_mut().expect("open until finish");
        f.seek(SeekFrom::Start(at))
            .and_then(|_| f.write_all(bytes))
            .map_err(|e| Error::io(&dest, e))
    }

    /// [`write_rows_raw`](Self::write_rows_raw) for `f32` data.
    pub fn write_rows_f32(&mut self, id: StreamId, first: usize, data: &[f32]) -> Result<()> {
        if cfg!(target_endian = "little") {
            // the file is little-endian: the memory is already the bytes (no copy; the
            // byte-by-byte conversion made the simulator's writer its bottleneck)
            return self.write_rows_raw(id, first, bytemuck::cast_slice(data));
        }
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.write_rows_raw(id, first, &bytes)
    }

    /// [`write_rows_raw`](Self::write_rows_raw) for `u8` data.
    pub fn write_rows_u8(&mut self, id: StreamId, first: usize, data: &[u8]) -> Result<()> {
        self.write_rows_raw(id, first, data)
    }

    /// [`write_rows_raw`](Self::write_rows_raw) for complex data.
    pub fn write_rows_complex64(
        &mut self,
        id: StreamId,
        first: usize,
        data: &[num_complex::Complex32],
    ) -> Result<()> {
        let bytes: Vec<u8> = data
            .iter()
            .flat_map(|c| c.re.to_le_bytes().into_iter().chain(c.im.to_le_bytes()))
            .collect();
        self.write_rows_raw(id, first, &bytes)
    }

    fn small(&mut self, path: &str, dtype: Dtype, shape: &[usize], bytes: Vec<u8>) -> Result<()> {
        let n: usize = shape.iter().product();
        if n * dtype.size() != bytes.len() {
            return Err(self.err(format!(
                "dataset '{path}': shape {shape:?} holds {n} values, got {}",
                bytes.len() / dtype.size()
            )));
        }
        self.dataset(path, DatasetType::Num(dtype), shape, Data::Inline(bytes))
            .map(|_| ())
    }

    /// A whole `f32` dataset (kept in memory until `finish`).
    pub fn f32(&mut self, path: &str, shape: &[usize], data: &[f32]) -> Result<()> {
        let b = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.small(path, Dtype::F32, shape, b)
    }

    /// A whole `u8` dataset.
    pub fn u8(&mut self, path: &str, shape: &[usize], data: &[u8]) -> Result<()> {
        self.small(path, Dtype::U8, shape, data.to_vec())
    }

    /// A whole `i64` dataset.
    pub fn i64(&mut self, path: &str, shape: &[usize], data: &[i64]) -> Result<()> {
        let b = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.small(path, Dtype::I64, shape, b)
    }

    /// A scalar fixed-length UTF-8 string dataset.
    pub fn string(&mut self, path: &str, value: &str) -> Result<()> {
        let len = value.len().max(1);
        let mut b = value.as_bytes().to_vec();
        b.resize(len, 0);
        self.dataset(path, DatasetType::Str(len), &[], Data::Inline(b))
            .map(|_| ())
    }

    /// A fixed-length UTF-8 string attribute on an object already added (`""`: the root;
    /// a path not added yet is created as a group).
    pub fn attr_string(&mut self, object_path: &str, name: &str, value: &str) -> Result<()> {
        let idx = self.insert(object_path, None)?;
        let attrs = &mut self.objects[idx].attrs;
        attrs.retain(|(n, _)| n != name);
        attrs.push((name.to_string(), value.to_string()));
        Ok(())
    }

    /// Write the small data and every object header, then the superblock; rename into
    /// place. Fails (removing the temporary file) if a streamed row was never written.
    pub fn finish(mut self) -> Result<()> {
        for &o in &self.streams {
            if let Kind::Dataset {
                data: Data::Stream {
                    written, row_bytes, ..
                },
                ..
            } = &self.objects[o].kind
            {
                // rows of zero bytes (a history of no records) need no writing
                if *row_bytes == 0 {
                    continue;
                }
                if let Some(r) = written.iter().position(|w| !w) {
                    return Err(self.err(format!(
                        "{} of {} rows of '{}' were never written (first: {r})",
                        written.iter().filter(|w| !**w).count(),
                        written.len(),
                        self.path_of(o)
                    )));
                }
            }
        }
        // 1. small data blocks after the streamed regions
        let mut blocks: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut data_addr: Vec<(u64, u64)> = vec![(UNDEF, 0); self.objects.len()];
        for (i, o) in self.objects.iter_mut().enumerate() {
            if let Kind::Dataset { data, .. } = &mut o.kind {
                match data {
                    Data::Stream { addr, len, .. } => {
                        data_addr[i] = if *len == 0 { (UNDEF, 0) } else { (*addr, *len) };
                    }
                    Data::Inline(bytes) => {
                        if !bytes.is_empty() {
                            data_addr[i] = (self.end, bytes.len() as u64);
                            self.end += bytes.len() as u64;
                            blocks.push((data_addr[i].0, std::mem::take(bytes)));
                        }
                    }
                }
            }
        }
        // 2. object headers: sizes first (addresses are fixed-width), then addresses
        let sizes: Vec<u64> = (0..self.objects.len())
            .map(|i| self.header(i, &data_addr, &[]).len() as u64)
            .collect();
        let mut header_addr = vec![0u64; self.objects.len()];
        for (i, s) in sizes.iter().enumerate() {
            header_addr[i] = self.end;
            self.end += s;
        }
        let mut headers = Vec::new();
        for (i, &at) in header_addr.iter().enumerate() {
            let h = self.header(i, &data_addr, &header_addr);
            debug_assert_eq!(h.len() as u64, sizes[i]);
            headers.push((at, h));
        }
        // 3. superblock v2
        let mut sb = Vec::with_capacity(48);
        sb.extend_from_slice(b"\x89HDF\r\n\x1a\n");
        sb.extend_from_slice(&[2, 8, 8, 0]);
        sb.extend_from_slice(&0u64.to_le_bytes());
        sb.extend_from_slice(&UNDEF.to_le_bytes());
        sb.extend_from_slice(&self.end.to_le_bytes());
        sb.extend_from_slice(&header_addr[0].to_le_bytes());
        let c = lookup3(&sb);
        sb.extend_from_slice(&c.to_le_bytes());
        let dest = self.dest.clone();
        let eof = self.end;
        let mut file = self.file.take().expect("open until finish");
        let res = (|| -> std::io::Result<()> {
            for (at, b) in blocks.iter().chain(headers.iter()) {
                file.seek(SeekFrom::Start(*at))?;
                file.write_all(b)?;
            }
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&sb)?;
            file.set_len(eof)?;
            file.sync_all()?;
            drop(file);
            super::temp::commit(&self.tmp, &dest)
        })();
        if res.is_err() && !self.resumable {
            super::temp::discard(&self.tmp);
        }
        res.map_err(|e| Error::io(&dest, e))
    }

    fn path_of(&self, idx: usize) -> String {
        fn walk(objs: &[Object], cur: usize, target: usize, prefix: &str) -> Option<String> {
            if cur == target {
                return Some(prefix.to_string());
            }
            if let Kind::Group(ch) = &objs[cur].kind {
                for (n, i) in ch {
                    let p = if prefix.is_empty() {
                        n.clone()
                    } else {
                        format!("{prefix}/{n}")
                    };
                    if let Some(r) = walk(objs, *i, target, &p) {
                        return Some(r);
                    }
                }
            }
            None
        }
        walk(&self.objects, 0, idx, "").unwrap_or_default()
    }

    /// The version 2 object header of object `i`. With `addrs` empty the child addresses
    /// are written as zeros: the header has its final size, which `finish` needs to lay out
    /// the addresses before it writes the real headers.
    fn header(&self, i: usize, data_addr: &[(u64, u64)], addrs: &[u64]) -> Vec<u8> {
        let o = &self.objects[i];
        let mut msgs: Vec<(u8, Vec<u8>)> = Vec::new();
        match &o.kind {
            Kind::Group(children) => {
                // Link Info: version 0, flags 0, no fractal heap, no name index
                let mut li = vec![0u8, 0];
                li.extend_from_slice(&UNDEF.to_le_bytes());
                li.extend_from_slice(&UNDEF.to_le_bytes());
                msgs.push((0x02, li));
                msgs.push((0x0A, vec![0, 0])); // Group Info
                for (name, c) in children {
                    let nb = name.as_bytes();
                    let mut l = vec![1u8];
                    if nb.len() < 256 {
                        l.push(0x10); // charset field present, 1-byte name length
                        l.push(1); // UTF-8
                        l.push(nb.len() as u8);
                    } else {
                        l.push(0x11); // 2-byte name length
                        l.push(1);
                        l.extend_from_slice(&(nb.len() as u16).to_le_bytes());
                    }
                    l.extend_from_slice(nb);
                    let a = addrs.get(*c).copied().unwrap_or(0);
                    l.extend_from_slice(&a.to_le_bytes());
                    msgs.push((0x06, l));
                }
            }
            Kind::Dataset { dtype, shape, .. } => {
                msgs.push((0x01, dataspace(shape)));
                msgs.push((0x03, datatype(*dtype)));
                // Fill Value v3: allocation early, never write fill values, none defined
                msgs.push((0x05, vec![3, 0x01 | (1 << 2)]));
                let (a, len) = data_addr[i];
                let mut lay = vec![3u8, 1];
                lay.extend_from_slice(&a.to_le_bytes());
                lay.extend_from_slice(&len.to_le_bytes());
                msgs.push((0x08, lay));
            }
        }
        for (name, value) in &o.attrs {
            let dt = datatype(DatasetType::Str(value.len().max(1)));
            let ds = dataspace(&[]);
            let mut a = vec![3u8, 0];
            a.extend_from_slice(&((name.len() + 1) as u16).to_le_bytes());
            a.extend_from_slice(&(dt.len() as u16).to_le_bytes());
            a.extend_from_slice(&(ds.len() as u16).to_le_bytes());
            a.push(1); // UTF-8 name
            a.extend_from_slice(name.as_bytes());
            a.push(0);
            a.extend_from_slice(&dt);
            a.extend_from_slice(&ds);
            a.extend_from_slice(value.as_bytes());
            if value.is_empty() {
                a.push(0);
            }
            msgs.push((0x0C, a));
        }
        let body: usize = msgs.iter().map(|(_, m)| 4 + m.len()).sum();
        let mut h = Vec::with_capacity(body + 16);
        h.extend_from_slice(b"OHDR");
        h.push(2); // version
        h.push(0x02); // flags: 4-byte chunk size, no times, no attribute phase values
        h.extend_from_slice(&(body as u32).to_le_bytes());
        for (t, m) in &msgs {
            h.push(*t);
            h.extend_from_slice(&(m.len() as u16).to_le_bytes());
            h.push(0); // message flags
            h.extend_from_slice(m);
        }
        let c = lookup3(&h);
        h.extend_from_slice(&c.to_le_bytes());
        h
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() && !self.resumable {
            super::temp::discard(&self.tmp);
        }
    }
}

/// Dataspace message version 2 (scalar when `shape` is empty).
fn dataspace(shape: &[usize]) -> Vec<u8> {
    let mut d = vec![
        2u8,
        shape.len() as u8,
        0,
        if shape.is_empty() { 0 } else { 1 },
    ];
    for &s in shape {
        d.extend_from_slice(&(s as u64).to_le_bytes());
    }
    d
}

/// Datatype message (version 1 for atomic types, 3 for the compound).
fn datatype(t: DatasetType) -> Vec<u8> {
    let fixed = |signed: bool, size: u32| {
        let mut d = vec![0x10, if signed { 0x08 } else { 0 }, 0, 0];
        d.extend_from_slice(&size.to_le_bytes());
        d.extend_from_slice(&0u16.to_le_bytes());
        d.extend_from_slice(&((size * 8) as u16).to_le_bytes());
        d
    };
    let f32t = || {
        let mut d = vec![0x11, 0x20, 31, 0];
        d.extend_from_slice(&4u32.to_le_bytes());
        d.extend_from_slice(&0u16.to_le_bytes()); // bit offset
        d.extend_from_slice(&32u16.to_le_bytes()); // precision
        d.extend_from_slice(&[23, 8, 0, 23]); // exponent location/size, mantissa location/size
        d.extend_from_slice(&127u32.to_le_bytes());
        d
    };
    let f64t = || {
        let mut d = vec![0x11, 0x20, 63, 0];
        d.extend_from_slice(&8u32.to_le_bytes());
        d.extend_from_slice(&0u16.to_le_bytes()); // bit offset
        d.extend_from_slice(&64u16.to_le_bytes()); // precision
        d.extend_from_slice(&[52, 11, 0, 52]); // exponent location/size, mantissa location/size
        d.extend_from_slice(&1023u32.to_le_bytes());
        d
    };
    match t {
        DatasetType::Num(Dtype::F32) => f32t(),
        DatasetType::Num(Dtype::F64) => f64t(),
        DatasetType::Num(Dtype::U8) => fixed(false, 1),
        DatasetType::Num(Dtype::I64) => fixed(true, 8),
        DatasetType::Num(Dtype::Complex64) => {
            let mut d = vec![0x36, 2, 0, 0]; // compound, version 3, 2 members
            d.extend_from_slice(&8u32.to_le_bytes());
            for (name, off) in [(b"r", 0u8), (b"i", 4u8)] {
                d.extend_from_slice(name);
                d.push(0);
                d.push(off); // 1-byte offsets: the compound is 8 bytes
                d.extend_from_slice(&f32t());
            }
            d
        }
        DatasetType::Str(len) => {
            let mut d = vec![0x13, 0x11, 0, 0]; // string: null pad, UTF-8
            d.extend_from_slice(&(len as u32).to_le_bytes());
            d
        }
    }
}

/// Bob Jenkins' lookup3 `hashlittle` with initial value 0: the checksum of HDF5 metadata.
pub fn lookup3(key: &[u8]) -> u32 {
    #[inline]
    fn rot(x: u32, k: u32) -> u32 {
        x.rotate_left(k)
    }
    let mut a: u32 = 0xdead_beef_u32.wrapping_add(key.len() as u32);
    let mut b = a;
    let mut c = a;
    let word = |k: &[u8]| -> u32 {
        let mut v = 0u32;
        for (i, &x) in k.iter().enumerate() {
            v |= (x as u32) << (8 * i);
        }
        v
    };
    let mut k = key;
    while k.len() > 12 {
        a = a.wrapping_add(word(&k[0..4]));
        b = b.wrapping_add(word(&k[4..8]));
        c = c.wrapping_add(word(&k[8..12]));
        // mix
        a = a.wrapping_sub(c);
        a ^= rot(c, 4);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= rot(a, 6);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= rot(b, 8);
        b = b.wrapping_add(a);
        a = a.wrapping_sub(c);
        a ^= rot(c, 16);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= rot(a, 19);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= rot(b, 4);
        b = b.wrapping_add(a);
        k = &k[12..];
    }
    if k.is_empty() {
        return c;
    }
    let mut tail = [0u8; 12];
    tail[..k.len()].copy_from_slice(k);
    a = a.wrapping_add(word(&tail[0..4]));
    b = b.wrapping_add(word(&tail[4..8]));
    c = c.wrapping_add(word(&tail[8..12]));
    // final
    c ^= b;
    c = c.wrapping_sub(rot(b, 14));
    a ^= c;
    a = a.wrapping_sub(rot(c, 11));
    b ^= a;
    b = b.wrapping_sub(rot(a, 25));
    c ^= b;
    c = c.wrapping_sub(rot(b, 16));
    a ^= c;
    a = a.wrapping_sub(rot(c, 4));
    b ^= a;
    b = b.wrapping_sub(rot(a, 14));
    c ^= b;
    c = c.wrapping_sub(rot(b, 24));
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup3_known_values() {
        // Bob Jenkins' lookup3.c driver5: hashlittle("", 0) = 0xdeadbeef and
        // hashlittle("Four score and seven years ago", 0) = 0x17770551.
        assert_eq!(lookup3(b""), 0xdeadbeef);
        assert_eq!(lookup3(b"Four score and seven years ago"), 0x17770551);
    }
}

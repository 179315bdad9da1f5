//! Minimal NumPy `.npy` reader and writer (format versions 1.0, 2.0 and 3.0).
//!
//! Reads C-ordered arrays of `<f4 <f8 <u2 <i4 <u1 |b1 <c8 <c16` (and the other fixed-width
//! integer types, in either byte order). Fortran-ordered arrays are refused with a clear
//! error. Writers are atomic: the file is built in a temporary file next to the
//! destination and renamed into place.

use std::io::Write;
use std::path::Path;

use crate::array::Complex32;
use crate::{Error, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Element type of an `.npy` array, as read.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    Bool(Vec<u8>),
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    C64(Vec<Complex32>),
    C128(Vec<num_complex::Complex64>),
}

/// A whole `.npy` array: its shape, its numpy `descr` string and its data.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub descr: String,
    pub data: NpyData,
}

impl NpyArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the array holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the element type is complex.
    pub fn is_complex(&self) -> bool {
        matches!(self.data, NpyData::C64(_) | NpyData::C128(_))
    }

    /// Values converted to `f32` (complex: real part).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            NpyData::Bool(v) | NpyData::U8(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I8(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::U16(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I16(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::U32(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::U64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::F32(v) => v.clone(),
            NpyData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::C64(v) => v.iter().map(|x| x.re).collect(),
            NpyData::C128(v) => v.iter().map(|x| x.re as f32).collect(),
        }
    }

    /// Values converted to `Complex32` (real types get a zero imaginary part).
    pub fn to_complex32(&self) -> Vec<Complex32> {
        match &self.data {
            NpyData::C64(v) => v.clone(),
            NpyData::C128(v) => v
                .iter()
                .map(|x| Complex32::new(x.re as f32, x.im as f32))
                .collect(),
            _ => self
                .to_f32()
                .into_iter()
                .map(|x| Complex32::new(x, 0.0))
                .collect(),
        }
    }

    /// Values as a 0/1 mask: nonzero (or NaN) becomes 1.
    pub fn to_mask(&self) -> Vec<u8> {
        fn nz<T: PartialEq + Default>(v: &[T]) -> Vec<u8> {
            let z = T::default();
            v.iter().map(|x| u8::from(*x != z)).collect()
        }
        match &self.data {
            NpyData::Bool(v) | NpyData::U8(v) => nz(v),
            NpyData::I8(v) => nz(v),
            NpyData::U16(v) => nz(v),
            NpyData::I16(v) => nz(v),
            NpyData::U32(v) => nz(v),
            NpyData::I32(v) => nz(v),
            NpyData::U64(v) => nz(v),
            NpyData::I64(v) => nz(v),
            NpyData::F32(v) => nz(v),
            NpyData::F64(v) => nz(v),
            NpyData::C64(v) => v
                .iter()
                .map(|x| u8::from(x.re != 0.0 || x.im != 0.0))
                .collect(),
            NpyData::C128(v) => v
                .iter()
                .map(|x| u8::from(x.re != 0.0 || x.im != 0.0))
                .collect(),
        }
    }
}

/// Read a whole `.npy` file.
pub fn read(path: &Path) -> Result<NpyArray> {
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    // the bytes, and the values decoded from them
    crate::limits::check_memory(
        &format!("{}: reading the .npy file", path.display()),
        2 * size as u128,
    )?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(path, &bytes)
}

/// What an `.npy` header says: the shape, the element type and where the data start.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyHeader {
    pub shape: Vec<usize>,
    pub descr: String,
    /// The type without its byte order (`f4`, `u1`, ...).
    kind: String,
    big: bool,
    /// Bytes per element.
    size: usize,
    /// Offset of the data in the file.
    offset: usize,
    /// Elements (the product of the shape).
    len: usize,
}

impl NpyHeader {
    /// Whether the element type is complex.
    pub fn is_complex(&self) -> bool {
        matches!(self.kind.as_str(), "c8" | "c16")
    }

    /// Bytes of data the shape needs.
    fn data_bytes(&self, path: &Path) -> Result<usize> {
        self.len.checked_mul(self.size).ok_or_else(|| {
            Error::format(path, "not a valid .npy file: shape overflows".to_string())
        })
    }

    /// Elements decoded from `body` (whole elements, in this header's type and order).
    fn decode(&self, body: &[u8]) -> NpyData {
        let big = self.big;
        macro_rules! conv {
            ($t:ty, $w:expr) => {
                body.chunks_exact($w)
                    .map(|c| {
                        let a: [u8; $w] = c.try_into().unwrap();
                        if big {
                            <$t>::from_be_bytes(a)
                        } else {
                            <$t>::from_le_bytes(a)
                        }
                    })
                    .collect::<Vec<$t>>()
            };
        }
        match self.kind.as_str() {
            "b1" => NpyData::Bool(body.iter().map(|&b| u8::from(b != 0)).collect()),
            "u1" => NpyData::U8(body.to_vec()),
            "i1" => NpyData::I8(body.iter().map(|&b| b as i8).collect()),
            "u2" => NpyData::U16(conv!(u16, 2)),
            "i2" => NpyData::I16(conv!(i16, 2)),
            "u4" => NpyData::U32(conv!(u32, 4)),
            "i4" => NpyData::I32(conv!(i32, 4)),
            "f4" => NpyData::F32(conv!(f32, 4)),
            "u8" => NpyData::U64(conv!(u64, 8)),
            "i8" => NpyData::I64(conv!(i64, 8)),
            "f8" => NpyData::F64(conv!(f64, 8)),
            "c8" => {
                let f = conv!(f32, 4);
                NpyData::C64(
                    f.chunks_exact(2)
                        .map(|p| Complex32::new(p[0], p[1]))
                        .collect(),
                )
            }
            "c16" => {
                let f = conv!(f64, 8);
                NpyData::C128(
                    f.chunks_exact(2)
                        .map(|p| num_complex::Complex64::new(p[0], p[1]))
                        .collect(),
                )
            }
            _ => unreachable!("checked by parse_header"),
        }
    }
}

/// Parse the header at the start of `bytes` (which must hold it whole; `path` is only
/// used in messages).
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<NpyHeader> {
    let bad = |msg: String| Error::format(path, format!("not a valid .npy file: {msg}"));
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("missing the \\x93NUMPY magic string".into()));
    }
    let major = bytes[6];
    let (hlen, hstart): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated header".into()));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(bad(format!("unsupported format version {v}"))),
    };
    let hend = hstart
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad("truncated header".into()))?;
    let header =
        std::str::from_utf8(&bytes[hstart..hend]).map_err(|_| bad("header is not text".into()))?;
    let descr = header_value(header, "descr")
        .ok_or_else(|| bad(format!("no 'descr' in header {header:?}")))?;
    let descr = unquote(descr).ok_or_else(|| bad(format!("bad 'descr' in header {header:?}")))?;
    let fortran = header_value(header, "fortran_order")
        .ok_or_else(|| bad(format!("no 'fortran_order' in header {header:?}")))?;
    if fortran.trim_start().starts_with("True") {
        return Err(Error::format(
            path,
            "Fortran-ordered .npy arrays are not supported; save with numpy.ascontiguousarray(a)",
        ));
    }
    let shape_txt = header_value(header, "shape")
        .ok_or_else(|| bad(format!("no 'shape' in header {header:?}")))?;
    let shape = parse_shape(shape_txt).ok_or_else(|| bad(format!("bad shape in {header:?}")))?;
    let len = shape
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .ok_or_else(|| bad("shape overflows".into()))?;
    let (order, kind) = match descr.as_bytes() {
        [o @ (b'<' | b'>' | b'|' | b'='), rest @ ..] => {
            (*o, std::str::from_utf8(rest).unwrap_or(""))
        }
        _ => (b'|', descr.as_str()),
    };
    let big = order == b'>' || (order == b'=' && cfg!(target_endian = "big"));
    let size: usize = match kind {
        "b1" | "u1" | "i1" => 1,
        "u2" | "i2" => 2,
        "u4" | "i4" | "f4" => 4,
        "u8" | "i8" | "f8" | "c8" => 8,
        "c16" => 16,
        _ => {
            return Err(Error::format(
                path,
                format!(
                    "unsupported .npy dtype '{descr}' (accepted: <f4 <f8 <c8 <c16 <u1 <u2 <u4 <u8 <i1 <i2 <i4 <i8 |b1)"
                ),
            ))
        }
    };
    Ok(NpyHeader {
        shape,
        kind: kind.to_string(),
        descr,
        big,
        size,
        offset: hend,
        len,
    })
}

/// The message of a file shorter than its header says.
fn truncated(path: &Path, h: &NpyHeader, need: usize, has: u64) -> Error {
    Error::format(
        path,
        format!(
            "not a valid .npy file: truncated data: shape {:?} of '{}' needs {need} bytes, file has {has}",
            h.shape, h.descr
        ),
    )
}

/// Parse the bytes of an `.npy` file (`path` is only used in messages).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<NpyArray> {
    let h = parse_header(path, bytes)?;
    let need = h.data_bytes(path)?;
    let body = &bytes[h.offset..];
    if body.len() < need {
        return Err(truncated(path, &h, need, body.len() as u64));
    }
    Ok(NpyArray {
        data: h.decode(&body[..need]),
        shape: h.shape,
        descr: h.descr,
    })
}

/// An `.npy` file read by ranges of elements (offset reads; C order, so the patterns
/// `p .. p + k` of an (N, H, W) array are one range): what [`read`] returns, a window at a
/// time.
#[derive(Debug)]
pub struct NpyRows {
    pub header: NpyHeader,
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl NpyRows {
    /// Open `path` and check that it holds the data its header declares.
    pub fn open(path: &Path) -> Result<NpyRows> {
        use std::io::Read;
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let has = file.metadata().map_err(|e| Error::io(path, e))?.len();
        // the fixed part, then the whole header (its length is in the fixed part)
        let mut head = vec![0u8; has.min(12) as usize];
        file.read_exact(&mut head).map_err(|e| Error::io(path, e))?;
        let hend = match head.get(6) {
            Some(1) if head.len() >= 10 => 10 + u16::from_le_bytes([head[8], head[9]]) as usize,
            Some(2 | 3) if head.len() >= 12 => {
                12 + u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize
            }
            _ => head.len(),
        };
        if hend as u64 > head.len() as u64 && hend as u64 <= has {
            let more = hend - head.len();
            let at = head.len();
            head.resize(hend, 0);
            file.read_exact(&mut head[at..at + more])
                .map_err(|e| Error::io(path, e))?;
        }
        let header = parse_header(path, &head)?;
        let need = header.data_bytes(path)?;
        let has_data = has.saturating_sub(header.offset as u64);
        if has_data < need as u64 {
            return Err(truncated(path, &header, need, has_data));
        }
        Ok(NpyRows {
            header,
            path: path.to_path_buf(),
            file,
        })
    }

    /// Elements `first .. first + count` (in C order), as an array of shape `(count,)`.
    pub fn read(&self, first: usize, count: usize) -> Result<NpyArray> {
        use std::os::unix::fs::FileExt;
        let h = &self.header;
        let end = first
            .checked_add(count)
            .filter(|&e| e <= h.len)
            .ok_or_else(|| {
                Error::Config(format!(
                    "elements {first}..{} past the end of {} ({} elements)",
                    first.saturating_add(count),
                    self.path.display(),
                    h.len
                ))
            })?;
        let mut body = vec![0u8; (end - first) * h.size];
        self.file
            .read_exact_at(&mut body, (h.offset + first * h.size) as u64)
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(NpyArray {
            data: h.decode(&body),
            shape: vec![count],
            descr: h.descr.clone(),
        })
    }
}

/// The text after `'key':` in a header dict, up to the end of the header.
fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    for q in ['\'', '"'] {
        let pat = format!("{q}{key}{q}");
        if let Some(i) = header.find(&pat) {
            let rest = &header[i + pat.len()..];
            let rest = rest.trim_start().strip_prefix(':')?;
            return Some(rest.trim_start());
        }
    }
    None
}

fn unquote(s: &str) -> Option<String> {
    let q = s.chars().next()?;
    if q != '\'' && q != '"' {
        return None;
    }
    let end = s[1..].find(q)?;
    Some(s[1..1 + end].to_string())
}

fn parse_shape(s: &str) -> Option<Vec<usize>> {
    let s = s.strip_prefix('(')?;
    let end = s.find(')')?;
    s[..end]
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.trim_end_matches('L').parse::<usize>().ok())
        .collect()
}

fn header_bytes(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_txt = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    header_from_dict(&format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}"
    ))
}

fn header_from_dict(dict: &str) -> Vec<u8> {
    // v1.0 when the header fits a u16, else v2.0; total header padded to 64 bytes.
    let (major, prefix) = if dict.len() + 1 + 10 <= 65535 {
        (1u8, 10usize)
    } else {
        (2u8, 12usize)
    };
    let total = (prefix + dict.len() + 1).div_ceil(64) * 64;
    let hlen = total - prefix;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.push(major);
    out.push(0);
    if major == 1 {
        out.extend_from_slice(&(hlen as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(hlen as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

fn check_shape(path: &Path, shape: &[usize], len: usize) -> Result<()> {
    let n: usize = shape.iter().product();
    if n != len {
        return Err(Error::Shape {
            what: format!("{}: data for .npy", path.display()),
            expected: format!("{shape:?} = {n} elements"),
            found: vec![len],
        });
    }
    Ok(())
}

fn write_raw(
    path: &Path,
    descr: &str,
    shape: &[usize],
    body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let header = header_bytes(descr, shape);
    super::write_atomic(path, |w| {
        w.write_all(&header).map_err(|e| Error::io(path, e))?;
        body(w).map_err(|e| Error::io(path, e))
    })
}

/// Write `data` (C order) as a `<f4` array of the given shape, atomically.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    check_shape(path, shape, data.len())?;
    write_raw(path, "<f4", shape, |w| {
        for c in data.chunks(1 << 16) {
            let b: Vec<u8> = c.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.write_all(&b)?;
        }
        Ok(())
    })
}

/// Write `data` (C order) as a `|u1` array of the given shape, atomically.
pub fn write_u8(path: &Path, shape: &[usize], data: &[u8]) -> Result<()> {
    check_shape(path, shape, data.len())?;
    write_raw(path, "|u1", shape, |w| w.write_all(data))
}

/// Write `data` (C order) as an `<i8` (int64) array of the given shape, atomically.
pub fn write_i64(path: &Path, shape: &[usize], data: &[i64]) -> Result<()> {
    check_shape(path, shape, data.len())?;
    write_raw(path, "<i8", shape, |w| {
        for x in data {
            w.write_all(&x.to_le_bytes())?;
        }
        Ok(())
    })
}

/// Write `data` (C order) as a `<c8` (complex64) array of the given shape, atomically.
pub fn write_complex64(path: &Path, shape: &[usize], data: &[Complex32]) -> Result<()> {
    check_shape(path, shape, data.len())?;
    write_raw(path, "<c8", shape, |w| {
        for c in data.chunks(1 << 15) {
            let b: Vec<u8> = c
                .iter()
                .flat_map(|x| {
                    let mut r = [0u8; 8];
                    r[..4].copy_from_slice(&x.re.to_le_bytes());
                    r[4..].copy_from_slice(&x.im.to_le_bytes());
                    r
                })
                .collect();
            w.write_all(&b)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_all_writers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let data: Vec<f32> = (0..2 * 3 * 5).map(|i| i as f32 * 0.5 - 3.0).collect();
        write_f32(&p, &[2, 3, 5], &data).unwrap();
        let a = read(&p).unwrap();
        assert_eq!(a.shape, vec![2, 3, 5]);
        assert_eq!(a.data, NpyData::F32(data));

        let m: Vec<u8> = (0..12).map(|i| (i % 3) as u8).collect();
        write_u8(&p, &[3, 4], &m).unwrap();
        assert_eq!(read(&p).unwrap().data, NpyData::U8(m));

        let c: Vec<Complex32> = (0..6)
            .map(|i| Complex32::new(i as f32, -(i as f32)))
            .collect();
        write_complex64(&p, &[6], &c).unwrap();
        let a = read(&p).unwrap();
        assert_eq!(a.shape, vec![6]);
        assert_eq!(a.to_complex32(), c);
        // header is 64-byte aligned
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!((bytes.len() - 6 * 8) % 64, 0);
        // no temp files left
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn rows_read_what_the_whole_file_holds() {
        let d = tempfile::tempdir().unwrap();
        for (name, descr, big) in [
            ("f4", "<f4", false),
            ("be", ">f8", true),
            ("c8", "<c8", false),
        ] {
            let p = d.path().join(format!("{name}.npy"));
            let (shape, elems) = ([5usize, 3, 2], 30usize);
            let size = if descr == "<f4" { 4 } else { 8 };
            let mut body = Vec::new();
            for i in 0..elems * if descr == "<c8" { 2 } else { 1 } {
                let x = i as f64 * 0.37 - 3.0;
                match (size, big) {
                    (4, _) => body.extend_from_slice(&(x as f32).to_le_bytes()),
                    (_, true) => body.extend_from_slice(&x.to_be_bytes()),
                    _ => body.extend_from_slice(&(x as f32).to_le_bytes()),
                }
            }
            let mut bytes = header_bytes(descr, &shape);
            bytes.extend_from_slice(&body);
            std::fs::write(&p, &bytes).unwrap();
            let whole = read(&p).unwrap();
            let rows = NpyRows::open(&p).unwrap();
            assert_eq!(rows.header.shape, shape.to_vec());
            for (first, count) in [(0, 30), (6, 12), (29, 1), (0, 0)] {
                let part = rows.read(first, count).unwrap();
                assert_eq!(
                    part.to_complex32(),
                    whole.to_complex32()[first..first + count].to_vec(),
                    "{descr} {first}+{count}"
                );
            }
            assert!(rows.read(25, 6).is_err());
            // a truncated file is refused when opened, as when read whole
            std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
            let e = NpyRows::open(&p).unwrap_err().to_string();
            assert!(e.contains("truncated data"), "{e}");
            assert_eq!(e, read(&p).unwrap_err().to_string());
        }
    }

    #[test]
    fn rejects_bad_input() {
        let p = Path::new("x.npy");
        assert!(parse(p, b"garbage").is_err());
        let mut h = header_bytes("<f4", &[2, 2]);
        h.extend_from_slice(&[0u8; 8]); // needs 16
        let e = parse(p, &h).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let mut h = header_from_dict("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }");
        h.extend_from_slice(&[0u8; 4]);
        let e = parse(p, &h).unwrap_err().to_string();
        assert!(e.contains("Fortran"), "{e}");
        write_f32(
            &std::env::temp_dir().join("no/such/dir/x.npy"),
            &[1],
            &[1.0],
        )
        .unwrap_err();
        assert!(write_f32(Path::new("y.npy"), &[3], &[1.0]).is_err());
    }
}

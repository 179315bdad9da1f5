//! Unit tests of the I/O layer that need no Python.

use super::*;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn cxi_writer_roundtrip() {
    let d = tmp();
    let p = d.path().join("out.cxi");
    let mut w = CxiWriter::new();
    let data: Vec<f32> = (0..2 * 3 * 4).map(|i| i as f32 - 5.5).collect();
    w.f32("entry_1/data_1/data", &[2, 3, 4], &data).unwrap();
    w.u8(
        "entry_1/data_1/mask",
        &[3, 4],
        &[0, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1],
    )
    .unwrap();
    let c: Vec<Complex32> = (0..12)
        .map(|i| Complex32::new(i as f32, 0.5 - i as f32))
        .collect();
    w.complex64("entry_1/image_1/data", &[1, 3, 4], &c).unwrap();
    w.u8("entry_1/image_1/support", &[3, 4], &[1; 12]).unwrap();
    w.string("entry_1/title", "hello").unwrap();
    w.attr_string("", "creator", "cdiphase").unwrap();
    w.attr_string("entry_1/image_1/data", "units", "a.u.")
        .unwrap();
    w.finish(&p).unwrap();
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);

    let ps = read_patterns(&p, None).unwrap();
    assert_eq!(ps.intensities.shape(), [2, 3, 4]);
    assert_eq!(ps.intensities.data, data);
    let m = ps.mask.unwrap();
    assert_eq!(m.shape(), [1, 3, 4]);
    assert_eq!(m.data, vec![0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(ps.entry, "entry_1/data_1/data");
    let o = read_object(&p, None).unwrap();
    assert_eq!(o.data, c);
    let s = read_support(&p, None).unwrap();
    assert_eq!(s.data, vec![1; 12]);
    let l = list_datasets(&p).unwrap();
    eprintln!("{l:?}");
    assert!(l
        .iter()
        .any(|(n, s, t)| n == "entry_1/image_1/data" && s == &vec![1, 3, 4] && t == "complex64"));
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// `tests/data/fixture_v3.cxi`, made by h5py (`tools/interop/h5py_interop.py fixtures`):
/// latest file format, chunked + shuffle + gzip float32 data, bool mask, chunked complex64.
#[test]
fn reads_committed_h5py_fixture_v3() {
    let p = fixture("fixture_v3.cxi");
    let ps = read_patterns(&p, None).unwrap();
    assert_eq!(ps.entry, "entry_1/data_1/data");
    assert_eq!(ps.intensities.shape(), [2, 3, 4]);
    let want: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 2.0).collect();
    assert_eq!(ps.intensities.data, want);
    let m = ps.mask.unwrap();
    assert_eq!(m.shape(), [1, 3, 4]);
    assert_eq!(m.data, vec![1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
    let o = read_object(&p, None).unwrap();
    assert_eq!(o.shape(), [1, 3, 4]);
    let want: Vec<Complex32> = (0..12)
        .map(|i| Complex32::new(i as f32, 0.25 - i as f32))
        .collect();
    assert_eq!(o.data, want);
    let s = read_support(&p, None).unwrap();
    assert_eq!(s.shape(), [1, 3, 4]);
    assert_eq!(
        s.data,
        (0..12).map(|i| (i % 3 == 0) as u8).collect::<Vec<_>>()
    );
    let l = list_datasets(&p).unwrap();
    let names: Vec<&str> = l.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "entry_1/data_1/data",
            "entry_1/image_1/data",
            "entry_1/image_1/support",
            "entry_1/instrument_1/detector_1/mask"
        ]
    );
    assert_eq!(l[1].2, "complex64");
    assert_eq!(l[0].2, "float32");
}

/// `tests/data/fixture_v0.h5`: earliest file format (v0 superblock, symbol-table groups),
/// uint16 2-D data at a custom entry with a sibling int32 mask, complex128 object,
/// (N,H,W) uint8 support, and a rank-4 dataset.
#[test]
fn reads_committed_h5py_fixture_v0() {
    let p = fixture("fixture_v0.h5");
    let ps = read_patterns(&p, Some("/scan/frames/data")).unwrap();
    assert_eq!(ps.entry, "scan/frames/data");
    assert_eq!(ps.intensities.shape(), [1, 3, 4]);
    assert_eq!(
        ps.intensities.data,
        (0..12).map(|i| i as f32 * 1000.0).collect::<Vec<_>>()
    );
    let m = ps.mask.unwrap();
    assert_eq!(m.shape(), [1, 3, 4]);
    assert_eq!(m.data, (0..12).map(|i| (i == 11) as u8).collect::<Vec<_>>());
    let o = read_object(&p, None).unwrap();
    assert_eq!(o.shape(), [1, 3, 4]);
    assert_eq!(
        o.data,
        (0..12)
            .map(|i| Complex32::new(i as f32 * 1.5, -1.0))
            .collect::<Vec<_>>()
    );
    let s = read_support(&p, None).unwrap();
    assert_eq!(s.shape(), [2, 3, 4]);
    assert_eq!(
        s.data,
        (0..24).map(|i| (i % 5 == 1) as u8).collect::<Vec<_>>()
    );
    let (shape, v) = read_f32(&p, "bad/rank4").unwrap();
    assert_eq!((shape, v.len()), (vec![1, 2, 3, 4], 24));
    assert!(matches!(
        read_patterns(&p, Some("bad/rank4")),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn format_by_extension() {
    for (p, f) in [
        ("a.CXI", Format::Hdf5),
        ("b.h5", Format::Hdf5),
        ("c.hdf5", Format::Hdf5),
        ("d.nxs", Format::Hdf5),
        ("e.npy", Format::Npy),
    ] {
        assert_eq!(format_of(std::path::Path::new(p)).unwrap(), f);
    }
    let e = format_of(std::path::Path::new("x.tif"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x.tif") && e.contains(".cxi") && e.contains(".npy"),
        "{e}"
    );
}

#!/usr/bin/env python3
"""h5py <-> cdiphase interoperability checks, driven by tests/io_interop.rs.

    h5py_interop.py generate OUTDIR   write HDF5 files in many layouts with h5py, the same
                                      arrays as .npy, and OUTDIR/manifest.json describing
                                      what cdiphase must read from each
    h5py_interop.py check DIR         read DIR/rust_manifest.json and the HDF5 file cdiphase
                                      wrote, check every dataset, string and attribute with
                                      h5py (dtype, shape, exact values); exit 1 on mismatch
    h5py_interop.py fixtures OUTDIR   (re)write the tiny committed fixtures of tests/data

Needs numpy and h5py (pip install numpy==2.1.3 h5py==3.12.1).
"""

import json
import os
import sys

import h5py
import numpy as np

H, W = 13, 22

LAYOUTS = {
    "contiguous": {},
    "chunked": {"chunks": True},
    "gzip": {"compression": "gzip", "compression_opts": 4},
    "gzip_shuffle": {"compression": "gzip", "compression_opts": 4, "shuffle": True},
}

DTYPES = ["<f4", "<f8", "<u2", "<i4", "|u1", "<u4", "<i2", "<i8", ">f4"]


def rand_array(rng, dtype, shape):
    dt = np.dtype(dtype)
    if dt.kind == "f":
        a = rng.standard_normal(shape) * 1000.0
        a[..., 0, 0] = 0.0
        a[..., 1, 1] = 3.0e9 if dt.itemsize == 8 else 1.0e-7
    elif dt.kind in "ui":
        info = np.iinfo(dt)
        lo = max(int(info.min), -(2**24))
        hi = min(int(info.max), 2**24)
        a = rng.integers(lo, hi, size=shape, endpoint=True)
        a.flat[0] = hi  # extremes of what f32 holds exactly
        a.flat[-1] = lo
    elif dt.kind == "b":
        a = rng.random(shape) < 0.3
    elif dt.kind == "c":
        a = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    else:
        raise ValueError(dtype)
    return np.ascontiguousarray(a.astype(dt))


def generate(out):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(12345)
    cases = []

    def save_npy(name, arr):
        np.save(os.path.join(out, name), arr)
        return name

    def case(kind, file, entry, expect, mask=None, mask_n=None, check=True):
        cases.append(
            {
                "kind": kind,
                "file": file,
                "entry": entry,
                "expect": expect,
                "mask": mask,
                "mask_n": mask_n,
            }
        )

    mask_variants = [
        ("entry_1/instrument_1/detector_1/mask", "2d", "|b1"),
        ("entry_1/data_1/mask", "3d", "|u1"),
        ("entry_1/instrument_1/detector_1/mask", "3d", "<i4"),
        ("entry_1/data_1/mask", "2d", "<f4"),
        (None, None, None),
    ]
    k = 0
    for dtype in DTYPES:
        for lname, lopts in LAYOUTS.items():
            for n in (1, 5):
                k += 1
                tag = f"p{k:03d}_{np.dtype(dtype).str.replace('<', 'le').replace('>', 'be').replace('|', '')}_{lname}_n{n}"
                data = rand_array(rng, dtype, (n, H, W))
                fname = f"{tag}.cxi"
                mpath, mrank, mdt = mask_variants[k % len(mask_variants)]
                mask_npy = None
                mask_n = None
                with h5py.File(os.path.join(out, fname), "w") as f:
                    f.create_dataset("entry_1/data_1/data", data=data, **lopts)
                    if mpath is not None:
                        shape = (H, W) if mrank == "2d" else (n, H, W)
                        m = rand_array(rng, "|b1", shape).astype(mdt)
                        f.create_dataset(mpath, data=m, **lopts)
                        mask_npy = save_npy(f"{tag}_mask.npy", (m != 0).astype(np.uint8))
                        mask_n = 1 if mrank == "2d" else n
                case("patterns", fname, None, save_npy(f"{tag}.npy", data), mask_npy, mask_n)

    # a 2-D dataset (N = 1), chunked + gzip, odd sizes
    d2 = rand_array(rng, "<f4", (7, 9))
    with h5py.File(os.path.join(out, "two_d.h5"), "w") as f:
        f.create_dataset("entry_1/data_1/data", data=d2, chunks=(4, 4), compression="gzip")
    case("patterns", "two_d.h5", None, save_npy("two_d.npy", d2))

    # custom entry with a sibling mask, which wins over the default mask paths
    dc = rand_array(rng, "<u2", (3, H, W))
    mc = rand_array(rng, "|b1", (H, W))
    with h5py.File(os.path.join(out, "custom.nxs"), "w") as f:
        f.create_dataset("results/run_3/data", data=dc, chunks=(1, 5, 7), compression="gzip", shuffle=True)
        f.create_dataset("results/run_3/mask", data=mc)
        f.create_dataset("entry_1/data_1/mask", data=np.ones((H, W), np.uint8))
    case("patterns", "custom.nxs", "/results/run_3/data", save_npy("custom.npy", dc),
         save_npy("custom_mask.npy", mc.astype(np.uint8)), 1)
    case("patterns", "custom.nxs", "results/run_3/data", "custom.npy", "custom_mask.npy", 1)

    # old file format (v0 superblock, symbol-table groups)
    with h5py.File(os.path.join(out, "earliest.h5"), "w", libver="earliest") as f:
        f.create_dataset("entry_1/data_1/data", data=dc, chunks=(1, H, W), compression="gzip")
    case("patterns", "earliest.h5", None, "custom.npy")

    # the same arrays as .npy, every accepted dtype (patterns: no mask)
    for dtype in ["<f4", "<f8", "<u2", "<i4", "|u1", "|b1"]:
        for shape in [(5, H, W), (H, W), (1, H, W)]:
            a = rand_array(rng, dtype, shape)
            name = f"np_{np.dtype(dtype).str[1:]}_{len(shape)}d_{shape[0]}.npy"
            np.save(os.path.join(out, name), a)
            case("patterns", name, None, name)

    # objects: complex64/complex128/real, at both default paths and a custom one
    for i, (dtype, path, lopts) in enumerate(
        [
            ("<c8", "entry_1/image_1/data", {}),
            ("<c16", "entry_1/image_1/data", {"chunks": True, "compression": "gzip"}),
            ("<c8", "entry_1/sample_1/density", {"chunks": (1, 4, 5)}),
            ("<c16", "entry_1/sample_1/density", {}),
            ("<f4", "entry_1/image_1/data", {}),
            ("<f8", "entry_1/sample_1/density", {"compression": "gzip"}),
            ("<c8", "custom/obj", {}),
        ]
    ):
        n = [1, 5, 2, 1, 3, 1, 4][i]
        shape = (n, H, W) if i % 3 else (H, W)
        a = rand_array(rng, dtype, shape)
        fname = f"obj{i}.cxi"
        with h5py.File(os.path.join(out, fname), "w") as f:
            f.create_dataset(path, data=a, **lopts)
        entry = path if path.startswith("custom") else None
        case("object", fname, entry, save_npy(f"obj{i}.npy", a))
        np.save(os.path.join(out, f"obj{i}_copy.npy"), a)
        case("object", f"obj{i}_copy.npy", None, f"obj{i}.npy")

    # complex compound named real/imag (MATLAB / hdf5-pure convention)
    cdt = np.dtype([("real", "<f4"), ("imag", "<f4")])
    a = rand_array(rng, "<c8", (2, H, W))
    rec = np.empty(a.shape, cdt)
    rec["real"], rec["imag"] = a.real, a.imag
    with h5py.File(os.path.join(out, "obj_realimag.h5"), "w") as f:
        f.create_dataset("entry_1/image_1/data", data=rec)
    case("object", "obj_realimag.h5", None, save_npy("obj_realimag.npy", a))

    # supports
    for i, (dtype, path, shape) in enumerate(
        [
            ("|b1", "entry_1/image_1/support", (H, W)),
            ("|u1", "entry_1/sample_1/support", (5, H, W)),
            ("<i4", "entry_1/image_1/support", (2, H, W)),
            ("<f4", "entry_1/sample_1/support", (H, W)),
        ]
    ):
        s = rand_array(rng, "|b1", shape).astype(dtype)
        fname = f"sup{i}.cxi"
        with h5py.File(os.path.join(out, fname), "w") as f:
            f.create_dataset(path, data=s, chunks=True, compression="gzip")
        case("support", fname, None, save_npy(f"sup{i}.npy", (s != 0).astype(np.uint8)))
        np.save(os.path.join(out, f"sup{i}_copy.npy"), s)
        case("support", f"sup{i}_copy.npy", None, f"sup{i}.npy")

    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"cases": cases}, f, indent=1)
    print(f"wrote {len(cases)} cases to {out}")


def as_str(v):
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray) and v.shape == ():
        return as_str(v[()])
    return str(v)


def check(d):
    with open(os.path.join(d, "rust_manifest.json")) as f:
        man = json.load(f)
    errors = []
    with h5py.File(os.path.join(d, man["file"]), "r") as f:
        for ds in man["datasets"]:
            got = f[ds["path"]]
            exp = np.load(os.path.join(d, ds["npy"]))
            want_dt = np.dtype(ds["dtype"])
            if got.dtype != want_dt:
                errors.append(f"{ds['path']}: dtype {got.dtype!r}, expected {want_dt!r}")
                continue
            if got.shape != tuple(ds["shape"]) or got.shape != exp.shape:
                errors.append(f"{ds['path']}: shape {got.shape}, expected {tuple(ds['shape'])} / npy {exp.shape}")
                continue
            arr = got[()]
            if arr.dtype != want_dt or type(arr) is not np.ndarray or arr.dtype.names is not None:
                errors.append(f"{ds['path']}: read as {type(arr)} {arr.dtype!r}")
                continue
            if not np.array_equal(arr.view(np.uint8), exp.astype(want_dt).view(np.uint8)):
                errors.append(f"{ds['path']}: values differ (max |diff| {np.max(np.abs(arr - exp))})")
        for s in man["strings"]:
            got = f[s["path"]]
            if got.shape != ():
                errors.append(f"{s['path']}: string dataset shape {got.shape}, expected scalar ()")
            v = as_str(got[()])
            if v != s["value"]:
                errors.append(f"{s['path']}: string {v!r}, expected {s['value']!r}")
            v2 = got.asstr()[()]
            if v2 != s["value"]:
                errors.append(f"{s['path']}: asstr() {v2!r}, expected {s['value']!r}")
        for a in man["attrs"]:
            obj = f[a["object"]] if a["object"] not in ("", "/") else f
            if a["name"] not in obj.attrs:
                errors.append(f"{a['object']}: no attribute {a['name']!r} (has {list(obj.attrs)})")
                continue
            v = as_str(obj.attrs[a["name"]])
            if v != a["value"]:
                errors.append(f"{a['object']}@{a['name']}: {v!r}, expected {a['value']!r}")
        for g in man.get("groups", []):
            if not isinstance(f.get(g), h5py.Group):
                errors.append(f"{g}: not a group")
    if errors:
        print("h5py found problems in the file cdiphase wrote:")
        for e in errors:
            print("  " + e)
        sys.exit(1)
    print(f"h5py: {len(man['datasets'])} datasets, {len(man['strings'])} strings, {len(man['attrs'])} attributes OK")


def fixtures(out):
    """Tiny committed fixtures; values are hard-coded in src/io/tests.rs."""
    os.makedirs(out, exist_ok=True)
    a = (np.arange(24, dtype=np.float64).reshape(2, 3, 4) * 0.5 - 2.0).astype(np.float32)
    mask = np.zeros((3, 4), bool)
    mask[1, 2] = mask[0, 0] = True
    obj = (np.arange(12).reshape(1, 3, 4) + 1j * (0.25 - np.arange(12).reshape(1, 3, 4))).astype(np.complex64)
    sup = (np.arange(12).reshape(3, 4) % 3 == 0)
    with h5py.File(os.path.join(out, "fixture_v3.cxi"), "w", libver="latest") as f:
        f.create_dataset("entry_1/data_1/data", data=a, chunks=(1, 3, 4), compression="gzip", shuffle=True)
        f.create_dataset("entry_1/instrument_1/detector_1/mask", data=mask)
        f.create_dataset("entry_1/image_1/data", data=obj, chunks=(1, 2, 2))
        f.create_dataset("entry_1/image_1/support", data=sup)
        f["entry_1"].attrs["note"] = "cdiphase fixture"
    u = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000)
    m3 = np.zeros((3, 4), np.int32)
    m3[2, 3] = 7
    obj2 = (np.arange(12).reshape(3, 4) * 1.5 - 1j).astype(np.complex128)
    with h5py.File(os.path.join(out, "fixture_v0.h5"), "w", libver="earliest") as f:
        f.create_dataset("scan/frames/data", data=u)
        f.create_dataset("scan/frames/mask", data=m3)
        f.create_dataset("entry_1/sample_1/density", data=obj2)
        f.create_dataset("entry_1/sample_1/support", data=(np.arange(24).reshape(2, 3, 4) % 5 == 1).astype(np.uint8))
        f.create_dataset("bad/rank4", data=np.zeros((1, 2, 3, 4), np.float32))
    print("fixtures written to", out)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("generate", "check", "fixtures"):
        print(__doc__)
        sys.exit(2)
    {"generate": generate, "check": check, "fixtures": fixtures}[sys.argv[1]](sys.argv[2])

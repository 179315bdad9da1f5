"""Writes the small hostile HDF5 fixtures of tests/hostile.rs into tests/data/hostile/.

Run once with h5py (the pinned venv of scripts/test.sh); the outputs are committed, so the
tests need no Python. Each file is a few KB.
"""
import os
import sys

import h5py
import numpy as np

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "data", "hostile")
os.makedirs(out, exist_ok=True)
HUGE = (1, 10**9, 10**9)
ENTRIES = [
    "entry_1/data_1/data",
    "entry_1/image_1/support",
    "entry_1/image_1/data",
    "entry_1/sample_1/density",
    "entry_1/sample_1/support",
]

# (1, 1e9, 1e9) float32 datasets, chunked, no chunk written: a few KB on disk
with h5py.File(os.path.join(out, "huge_chunked.cxi"), "w", libver="earliest") as f:
    for e in ENTRIES:
        f.create_dataset(e, shape=HUGE, dtype="f4", chunks=(1, 64, 64))

# the same, contiguous and never written (storage not allocated)
with h5py.File(os.path.join(out, "huge_contiguous.cxi"), "w", libver="earliest") as f:
    for e in ENTRIES:
        f.create_dataset(e, shape=HUGE, dtype="f4")

# float16 patterns, with a mask
rng = np.random.default_rng(1)
with h5py.File(os.path.join(out, "float16.cxi"), "w", libver="earliest") as f:
    f["entry_1/data_1/data"] = rng.random((2, 16, 16)).astype("f2") * 100
    f["entry_1/data_1/mask"] = np.zeros((16, 16), "u1")

# a soft link to the patterns (entry_1/data_1/data -> /real/data)
with h5py.File(os.path.join(out, "softlink.cxi"), "w", libver="earliest") as f:
    f["real/data"] = rng.random((2, 16, 16)).astype("f4")
    f["entry_1/data_1/data"] = h5py.SoftLink("/real/data")
print("wrote", out)

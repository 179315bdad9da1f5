#!/usr/bin/env python3
"""Check the Keras fixtures in tests/data/keras/<model>/: every file format reloads (with
Keras 3 or Keras 2 as written) and reproduces output.npy from preprocess(input.npy) to
1e-6 relative (max|y - ref| / max|ref|), and the weights found by reading the HDF5 files
directly with h5py, at the paths documented in tests/data/keras/README.md, are identical
across all formats.

Usage: .venv-tf/bin/python tools/keras/check_fixtures.py [DIR ...]   (default: all fixtures)
"""

from __future__ import annotations

import io
import json
import os
import sys
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import spinn  # noqa: E402
import keras_layout  # noqa: E402


def _relerr(a, ref) -> float:
    a = np.asarray(a, np.float64)
    return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


def check_names_dir(d: Path, meta: dict) -> dict:
    """spinn_names/: every file loads in Keras into a model built with other names
    (Keras's own loaders match by order) and reproduces output.npy; read with h5py by the
    matching rule of keras_layout.match_weights, every file gives the same weights under
    the preset's names (config.json) and under its own (named_config.json)."""
    import keras
    import tf_keras

    import names_spec as mf

    raw = np.load(d / "input.npy")
    ref = np.load(d / "output.npy")
    x = spinn.preprocess(raw, meta["preprocessing"])
    errs = {}

    def run(m):
        return np.asarray(m(x, training=False), np.float32)

    for fn in mf.NAMES_FILES:
        if fn.startswith("tf2_"):
            m = mf.build_names_model(tf_keras)  # preset names; load_weights goes by order
        else:
            m = mf.build_names_model(keras)
        if fn == "k3_offset.h5":
            errs[f"{fn} (load_model)"] = _relerr(run(keras.models.load_model(d / fn)), ref)
        else:
            m.load_weights(d / fn)
            errs[f"{fn} (load_weights)"] = _relerr(run(m), ref)
    m = keras.models.model_from_json((d / "named_config.json").read_text())
    m.load_weights(d / "named.weights.h5")
    errs["named_config.json + named.weights.h5"] = _relerr(run(m), ref)

    cfg = json.loads((d / "config.json").read_text())
    first, _ = keras_layout.match_weights(d / "named.weights.h5", cfg)
    for fn in mf.NAMES_FILES:
        mp, how = keras_layout.match_weights(d / fn, cfg)
        if how != "order" or sorted(mp) != sorted(first) or any(
                len(mp[k]) != len(first[k]) or not all(np.array_equal(a, b) for a, b in
                                                        zip(mp[k], first[k])) for k in mp):
            raise RuntimeError(f"{d}/{fn}: weights matched by {how} differ from "
                               "named.weights.h5's")
    own, how = keras_layout.match_weights(
        d / "named.weights.h5", json.loads((d / "named_config.json").read_text()))
    if how != "name":
        raise RuntimeError(f"{d}/named.weights.h5 + named_config.json matched by {how}")
    return errs


def check_dir(d: Path) -> dict:
    """Return {file: rel err} for every reload; raises on a missing file or a layout
    mismatch."""
    import keras
    import tf_keras

    d = Path(d)
    meta = json.loads((d / "meta.json").read_text())
    if meta.get("kind") == "names":
        return check_names_dir(d, meta)
    raw = np.load(d / "input.npy")
    ref = np.load(d / "output.npy")
    if raw.dtype != np.float32 or raw.ndim != 3 or list(raw.shape) != meta["input_shape"]:
        raise RuntimeError(f"{d}/input.npy: {raw.dtype} {raw.shape}, meta says "
                           f"{meta['input_shape']}")
    if ref.dtype != np.float32 or list(ref.shape) != meta["output_shape"]:
        raise RuntimeError(f"{d}/output.npy: {ref.dtype} {ref.shape}, meta says "
                           f"{meta['output_shape']}")
    x = spinn.preprocess(raw, meta["preprocessing"])

    errs = {}

    def run(m):
        return np.asarray(m(x, training=False), np.float32)

    errs["model.h5 (keras 3)"] = _relerr(run(keras.models.load_model(d / "model.h5")), ref)
    errs["model.keras (keras 3)"] = _relerr(run(keras.models.load_model(d / "model.keras")),
                                            ref)
    m = keras.models.model_from_json((d / "config.json").read_text())
    m.load_weights(d / "model.weights.h5")
    errs["config.json + model.weights.h5"] = _relerr(run(m), ref)
    errs["model_k2.h5 (tf_keras)"] = _relerr(run(tf_keras.models.load_model(d / "model_k2.h5")),
                                             ref)
    m = tf_keras.models.model_from_json((d / "config_k2.json").read_text())
    m.load_weights(d / "weights_k2.h5")
    errs["config_k2.json + weights_k2.h5"] = _relerr(run(m), ref)

    # The same weights read with h5py alone, by the documented paths.
    maps = {
        "model.h5": keras_layout.read_legacy_h5(d / "model.h5"),
        "model_k2.h5": keras_layout.read_legacy_h5(d / "model_k2.h5"),
        "weights_k2.h5": keras_layout.read_legacy_h5(d / "weights_k2.h5"),
        "model.weights.h5": keras_layout.read_keras3_weights_h5(d / "model.weights.h5"),
        "model.weights.h5 + config.json": keras_layout.read_keras3_weights_h5(
            d / "model.weights.h5", json.loads((d / "config.json").read_text())),
        "model.keras": keras_layout.read_keras_zip(d / "model.keras")[1],
    }
    first = maps["model.h5"]
    for f, mp in maps.items():
        if sorted(mp) != sorted(first):
            raise RuntimeError(f"{d}/{f}: layers {sorted(mp)} != model.h5's {sorted(first)}")
        for layer, ws in mp.items():
            ref_ws = first[layer]
            if len(ws) != len(ref_ws) or any(a.shape != b.shape or not np.array_equal(a, b)
                                             for a, b in zip(ws, ref_ws)):
                raise RuntimeError(f"{d}/{f}: layer {layer} weights differ from model.h5's")
    # Layer names in the configs match the weight groups.
    for f in ("config.json", "config_k2.json"):
        cfg = json.loads((d / f).read_text())
        names = [ly["config"]["name"] for ly in cfg["config"]["layers"]]
        missing = [n for n in first if n not in names]
        if missing:
            raise RuntimeError(f"{d}/{f}: weight layers {missing} not in the config")
    with zipfile.ZipFile(d / "model.keras") as z:
        json.load(io.TextIOWrapper(z.open("config.json")))
    return errs


def main(argv=None) -> int:
    dirs = [Path(a) for a in (argv if argv is not None else sys.argv[1:])]
    if not dirs:
        base = ROOT / "tests" / "data" / "keras"
        dirs = sorted(p for p in base.iterdir() if (p / "meta.json").is_file())
    worst = 0.0
    for d in dirs:
        errs = check_dir(d)
        for f, e in errs.items():
            print(f"{d.name:12s} {f:34s} rel err {e:.2e}")
            worst = max(worst, e)
    ok = worst <= 1e-6
    print(("OK" if ok else "FAIL") + f": worst rel err {worst:.2e} (limit 1e-6); "
          "h5py weight layouts agree across formats")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Write the Keras parity fixtures in tests/data/keras/<model>/ (deterministic, seeded).

For each model (spinn_small, strided, unet) it builds the architecture twice, with Keras 3
(`keras`) and with Keras 2 (`tf_keras`), gives both the same seeded random weights, and
writes:

    model.h5            Keras 3, legacy HDF5 (model.save("model.h5"))
    model.keras         Keras 3 native zip (config.json + model.weights.h5 + metadata.json)
    model.weights.h5    Keras 3 model.save_weights (weights only)
    config.json         Keras 3 model.to_json()
    model_k2.h5         Keras 2 (tf_keras) legacy HDF5, weight names "kernel:0"/"bias:0"
    weights_k2.h5       Keras 2 (tf_keras) model.save_weights("...h5") (weights only)
    config_k2.json      Keras 2 model.to_json()
    input.npy           (N,H,W) float32 raw diffraction-like intensities (N=3)
    output.npy          (N,H,W,C) float32 Keras 3 output of preprocess(input)
    meta.json           preprocessing, shapes, seeds, versions, parameter count, layers

then reloads every file (tools/keras/check_fixtures.py does the same on its own) and
fails if any output differs from output.npy by more than 1e-6 relative.

A fourth directory, spinn_names/, holds the paper's topology at 16x16, width 1/16 (the
`--arch spinn:16:0.0625` preset), one set of seeded weights saved under the layer names
real training scripts leave (see NAMES_FILES): Keras's default names in a fresh process
and after other models were built in the same process (TF 2.x `tf_keras` legacy
save_weights and Keras 3), and explicit names unlike the preset's. The fresh-process
files are written by child processes (`--worker tf2|k3`), so no model built here offsets
their names.

Usage: .venv-tf/bin/python tools/keras/make_fixtures.py [--out tests/data/keras] [--only NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import keras_layout  # noqa: E402
from names_spec import (  # noqa: E402
    NAMES_ARCH, NAMES_DIR, NAMES_FILES, NAMES_ISEED, NAMES_PREP, NAMES_SIZE, NAMES_WSEED,
    build_names_model, custom_names)
import spinn  # noqa: E402

N_PATTERNS = 3

# name -> (builder(K), input (H, W), preprocessing, weight seed, input seed, description)
FIXTURES = {
    "spinn_small": (
        lambda K: spinn.build_spinn(K, input_size=32, width=1 / 8, name="spinn_small"),
        (32, 32), "max", 101, 201,
        "the paper's topology (DESIGN.md section 4) at input 32x32, channels /8 "
        "(8/16/32), Dense 16 then Dense 4*4*32=512"),
    "strided": (
        lambda K: spinn.build_strided(K, input_shape=(33, 28, 1)),
        (33, 28), "log1p-max", 102, 202,
        "stride-2 'same'/'valid' Conv2D and Conv2DTranspose, 5x5 kernels, odd and "
        "non-square sizes, MaxPool floor, sigmoid/linear/tanh, 2-channel output"),
    "unet": (
        lambda K: spinn.build_unet(K, input_shape=(40, 32, 1), base=8, depth=2, dropout=0.25,
                                   transpose_up_levels=(1,), name="unet"),
        (40, 32), "log1p-max", 103, 203,
        "U-Net-like: Concatenate skips, Dropout, MaxPool, Conv2DTranspose stride 2 (deep "
        "level) and UpSampling2D (top level), tanh output"),
}


def worker(kind: str, tmp: Path) -> int:
    """Child process: build the names model with Keras default names (fresh), set the
    weights from tmp/weights.npz, save; build another model, build again (names offset),
    save; write each Keras output of tmp/x.npy and the layer names."""
    K = __import__("tf_keras" if kind == "tf2" else "keras")
    weights = list(np.load(tmp / "weights.npz").values())
    x = np.load(tmp / "x.npy")
    report = {}
    for variant in ("fresh", "offset"):
        # "offset": the fresh model built first numbers the default names on
        m = build_names_model(K, names=spinn.keras_default_names, name=None)
        m.set_weights(weights)
        first_conv = next(ly.name for ly in m.layers if type(ly).__name__ == "Conv2D")
        want_first = "conv2d" if variant == "fresh" else "conv2d_6"
        if first_conv != want_first:
            raise RuntimeError(f"{kind} {variant}: first Conv2D is named {first_conv!r}, "
                               f"expected {want_first!r}")
        if kind == "tf2":
            fn = f"tf2_{variant}_weights.h5"
            m.save_weights(tmp / fn)
        else:
            fn = f"k3_{variant}.weights.h5"
            m.save_weights(tmp / fn)
            if variant == "offset":
                m.save(tmp / "k3_offset.h5")
        np.save(tmp / f"y_{kind}_{variant}.npy", run_model(m, x))
        report[fn] = [ly.name for ly in m.layers]
    (tmp / f"names_{kind}.json").write_text(json.dumps(report))
    return 0


def make_names(outdir: Path) -> dict:
    import subprocess
    import tempfile

    import keras

    keras.utils.set_random_seed(NAMES_WSEED)
    ref = build_names_model(keras)  # the preset's names (spinn.py)
    ref.set_weights(spinn.random_weights(ref, seed=NAMES_WSEED))
    raw = spinn.diffraction_patterns(N_PATTERNS, NAMES_SIZE, NAMES_SIZE, seed=NAMES_ISEED)
    x = spinn.preprocess(raw, NAMES_PREP)
    factor = spinn.calibrate_output(ref, x, target_std=1.0)
    weights = ref.get_weights()
    y = run_model(ref, x)

    if outdir.exists():
        shutil.rmtree(outdir)
    outdir.mkdir(parents=True)
    errs = {}
    layer_names = {}
    with tempfile.TemporaryDirectory(prefix="cdiphase-fixtures-") as t:
        tmp = Path(t)
        np.savez(tmp / "weights.npz", *weights)
        np.save(tmp / "x.npy", x)
        for kind in ("tf2", "k3"):
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", kind,
                            str(tmp)], check=True)
            for variant in ("fresh", "offset"):
                errs[f"{kind} {variant} (Keras, in the saving process)"] = relerr(
                    np.load(tmp / f"y_{kind}_{variant}.npy"), y)
            layer_names.update(json.loads((tmp / f"names_{kind}.json").read_text()))
        for fn in NAMES_FILES:
            if fn != "named.weights.h5":
                shutil.copy(tmp / fn, outdir / fn)
    layer_names["k3_offset.h5"] = layer_names["k3_offset.weights.h5"]

    named = build_names_model(keras, names=custom_names())
    named.set_weights(weights)
    errs["named (Keras)"] = relerr(run_model(named, x), y)
    named.save_weights(outdir / "named.weights.h5")
    (outdir / "named_config.json").write_text(named.to_json(indent=1) + "\n")
    layer_names["named.weights.h5"] = [ly.name for ly in named.layers]
    (outdir / "config.json").write_text(ref.to_json(indent=1) + "\n")
    np.save(outdir / "input.npy", raw)
    np.save(outdir / "output.npy", y)

    meta = {
        "model": NAMES_DIR,
        "kind": "names",
        "description": "the paper's topology at 16x16, channels /16 (4/8/16), Dense 8 then "
                       "Dense 2*2*16=64, one set of weights saved under Keras default and "
                       "explicit layer names",
        "arch": NAMES_ARCH,
        "preprocessing": NAMES_PREP,
        "input_shape": list(raw.shape),
        "network_input_shape": list(x.shape),
        "output_shape": list(y.shape),
        "params": int(ref.count_params()),
        "weight_seed": NAMES_WSEED,
        "input_seed": NAMES_ISEED,
        "last_layer_scale": factor,
        "relerr_definition": "max|y - output.npy| / max|output.npy|",
        "keras_rel_err": errs,
        "output_stats": {"min": float(y.min()), "max": float(y.max()),
                         "mean": float(y.mean()), "std": float(y.std()),
                         "std_across_patterns": float(y.std(axis=0).mean())},
        "layer_names": layer_names,
        "versions": versions(),
        "files": dict(NAMES_FILES, **{
            "config.json": "Keras 3 model.to_json() with the preset's names (spinn.py), "
                           "the --arch-config of every file",
            "named_config.json": "Keras 3 model.to_json() of the explicitly named model",
            "layout.txt": "every HDF5 group/dataset/attribute of the .h5 files",
            "input.npy": "raw intensities (N,H,W) float32",
            "output.npy": "Keras 3 output of preprocess(input) (N,H,W,1) float32, the same "
                          "for every file",
        }),
    }
    (outdir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    keras_layout.write_layout(outdir, files=tuple(NAMES_FILES))
    return meta


def versions() -> dict:
    import h5py
    import keras
    import tensorflow as tf
    import tf_keras

    return {"keras": keras.__version__, "tf_keras": tf_keras.__version__,
            "tensorflow": tf.__version__, "h5py": h5py.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0]}


def run_model(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False), dtype=np.float32)


def relerr(a: np.ndarray, ref: np.ndarray) -> float:
    """max |a - ref| / max |ref| (the figure the fixtures are checked against)."""
    return float(np.max(np.abs(a.astype(np.float64) - ref)) / np.max(np.abs(ref)))


def layer_list(model) -> list:
    out = []
    for layer in model.layers:
        out.append({"name": layer.name, "class": type(layer).__name__,
                    "weights": [list(w.shape) for w in layer.get_weights()]})
    return out


def make_one(name: str, outdir: Path) -> dict:
    import keras
    import tf_keras

    build, (h, w), prep, wseed, iseed, desc = FIXTURES[name]
    keras.utils.set_random_seed(wseed)
    tf_keras.utils.set_random_seed(wseed)
    m3 = build(keras)
    m2 = build(tf_keras)
    weights = spinn.random_weights(m3, seed=wseed)
    w2shapes = [x.shape for x in m2.get_weights()]
    if [x.shape for x in weights] != w2shapes:
        raise RuntimeError(f"{name}: Keras 2 and Keras 3 weight orders differ")
    m3.set_weights(weights)
    raw = spinn.diffraction_patterns(N_PATTERNS, h, w, seed=iseed)
    x = spinn.preprocess(raw, prep)
    # Last layer rescaled so the output varies with the input without saturating.
    factor = spinn.calibrate_output(m3, x, target_std=1.0)
    weights = m3.get_weights()
    m2.set_weights(weights)
    y = run_model(m3, x)
    y2 = run_model(m2, x)
    e2 = relerr(y2, y)
    if e2 > 1e-6:
        raise RuntimeError(f"{name}: Keras 2 and Keras 3 outputs differ, rel err {e2:.3g}")

    if outdir.exists():
        shutil.rmtree(outdir)
    outdir.mkdir(parents=True)
    m3.save(outdir / "model.h5")
    m3.save(outdir / "model.keras")
    m3.save_weights(outdir / "model.weights.h5")
    (outdir / "config.json").write_text(m3.to_json(indent=1) + "\n")
    m2.save(outdir / "model_k2.h5")
    m2.save_weights(outdir / "weights_k2.h5")
    (outdir / "config_k2.json").write_text(m2.to_json(indent=1) + "\n")
    np.save(outdir / "input.npy", raw)
    np.save(outdir / "output.npy", y)

    meta = {
        "model": name,
        "description": desc,
        "preprocessing": prep,
        "preprocessing_definition": {
            "max": "x / max(x), per pattern",
            "log1p-max": "y = log1p(x); y / max(y), per pattern",
        }[prep],
        "input_shape": list(raw.shape),
        "network_input_shape": list(x.shape),
        "output_shape": list(y.shape),
        "params": int(m3.count_params()),
        "weight_seed": wseed,
        "input_seed": iseed,
        "weights": "He-normal kernels (std sqrt(2/fan_in)), biases uniform [-0.05, 0.05]; "
                   "last layer rescaled (spinn.calibrate_output) so its pre-activation has "
                   "std 1 over these inputs",
        "last_layer_scale": factor,
        "keras2_vs_keras3_rel_err": e2,
        "relerr_definition": "max|y - output.npy| / max|output.npy|",
        "output_stats": {"min": float(y.min()), "max": float(y.max()),
                         "mean": float(y.mean()), "std": float(y.std()),
                         "std_across_patterns": float(y.std(axis=0).mean())},
        "input_stats": {"min": float(raw.min()), "max": float(raw.max())},
        "layers": layer_list(m3),
        "versions": versions(),
        "files": {
            "model.h5": "Keras 3 legacy HDF5 (model.save)",
            "model.keras": "Keras 3 zip (model.save)",
            "model.weights.h5": "Keras 3 save_weights (architecture: config.json)",
            "config.json": "Keras 3 model.to_json()",
            "model_k2.h5": "Keras 2 (tf_keras) legacy HDF5 (model.save)",
            "weights_k2.h5": "Keras 2 (tf_keras) save_weights (architecture: config_k2.json)",
            "config_k2.json": "Keras 2 (tf_keras) model.to_json()",
            "layout.txt": "every HDF5 group/dataset/attribute of the .h5 files (h5py dump)",
            "input.npy": "raw intensities (N,H,W) float32",
            "output.npy": "Keras 3 output of preprocess(input) (N,H,W,C) float32",
        },
    }
    (outdir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    keras_layout.write_layout(outdir)
    return meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "tests" / "data" / "keras"))
    p.add_argument("--only", default=None, help="comma-separated subset of " +
                   ",".join([*FIXTURES, NAMES_DIR]))
    p.add_argument("--worker", nargs=2, metavar=("KIND", "DIR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker[0], Path(args.worker[1]))
    known = [*FIXTURES, NAMES_DIR]
    names = known if not args.only else args.only.split(",")
    for n in names:
        if n not in known:
            print(f"error: unknown fixture {n!r}; known: {', '.join(known)}",
                  file=sys.stderr)
            return 2
    out = Path(args.out)
    import check_fixtures

    worst = 0.0
    for n in names:
        if n == NAMES_DIR:
            meta = make_names(out / n)
            errs = dict(meta["keras_rel_err"], **check_fixtures.check_dir(out / n))
        else:
            meta = make_one(n, out / n)
            errs = check_fixtures.check_dir(out / n)
        s = meta["output_stats"]
        print(f"{n}: params {meta['params']}, input {meta['input_shape']} "
              f"-> output {meta['output_shape']}, preprocessing {meta['preprocessing']}, "
              f"output min {s['min']:.3g} max {s['max']:.3g} std {s['std']:.3g}")
        for f, e in errs.items():
            print(f"    reload {f:32s} rel err {e:.2e}")
            worst = max(worst, e)
    if worst > 1e-6:
        print(f"FAIL: a reloaded file differs from output.npy (rel err {worst:.3g} > 1e-6)",
              file=sys.stderr)
        return 1
    print("all fixtures written and verified (rel err <= 1e-6)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

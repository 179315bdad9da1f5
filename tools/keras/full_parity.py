#!/usr/bin/env python3
"""Full-size parity: the paper's network (19,721,217 parameters) with seeded random
weights, Keras against `cdiphase convert` + `cdiphase predict`, for every Keras file format.

Steps (in a temporary directory, kept with --keep DIR):
 1. build spinn (tools/keras/spinn.py) with Keras 3, He-normal random weights (seed), last
    layer calibrated (spinn.calibrate_output) so the tanh output is not saturated;
 2. save it as model.h5 (Keras 3 legacy), model.keras, model.weights.h5 (save_weights) and,
    with the same weights, model_k2.h5 (Keras 2, tf_keras); and, with Keras's default layer
    names (conv2d, conv2d_1, ...; the paper's training script), from a fresh child process:
    fresh.weights.h5 (Keras 3 save_weights) and fresh_k2_weights.h5 (tf_keras save_weights,
    legacy HDF5), both converted with --arch spinn (layers matched by order);
 3. N diffraction-like patterns (128x128) -> input.cxi at entry_1/data_1/data (N,H,W) f32;
    Keras output of preprocess(input) (N,128,128,1);
 4. per format: cdiphase convert FILE -o FMT.safetensors --preprocess PREP
    [--arch spinn for weights-only] [extra --convert-arg ...], then cdiphase predict input.cxi --model FMT.safetensors
    -o FMT.out.cxi [extra --predict-arg ...]; read entry_1/image_1/data (N,H,W) f32;
 5. print max|y - keras| / max|keras| per format; exit 1 if any exceeds --tol (1e-4).

Exit status: 0 all within tolerance; 1 a format exceeds it; 2 cdiphase missing or a
cdiphase command failed (its stderr is printed); 3 the Keras side failed.

Usage:
    .venv-tf/bin/python tools/keras/full_parity.py [--n 4] [--seed 7] [--tol 1e-4]
        [--formats h5,keras,weights,k2,weights_fresh,k2_weights_fresh]
        [--preprocessing max|log1p-max]
        [--cdiphase target/release/cdiphase] [--keep DIR] [--json FILE]
        [--convert-arg=--flag ...] [--predict-arg=--flag ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

DEFAULT_BIN = ROOT / "target" / "release" / "cdiphase"

# format key -> (file name, extra convert args, description)
FORMATS = {
    "h5": ("model.h5", [], "Keras 3 legacy .h5 (model.save)"),
    "keras": ("model.keras", [], "Keras 3 .keras zip"),
    "weights": ("model.weights.h5", ["--arch", "spinn"], "Keras 3 save_weights + --arch spinn"),
    "k2": ("model_k2.h5", [], "Keras 2 (tf_keras) legacy .h5, kernel:0 names"),
    "weights_fresh": ("fresh.weights.h5", ["--arch", "spinn"],
                      "Keras 3 save_weights, default names, fresh process"),
    "k2_weights_fresh": ("fresh_k2_weights.h5", ["--arch", "spinn"],
                         "tf_keras save_weights (legacy), default names"),
}
# formats written by a fresh child process (--child KIND DIR): Keras module, file
FRESH = {"weights_fresh": ("keras", "fresh.weights.h5"),
         "k2_weights_fresh": ("tf_keras", "fresh_k2_weights.h5")}


def child(kind: str, work: Path) -> int:
    """A fresh process: build spinn with Keras's default layer names, set the weights of
    work/weights.npz, save_weights. The first Conv2D must be named "conv2d"."""
    import numpy as np

    import spinn

    mod, fname = FRESH[kind]
    K = __import__(mod)
    m = spinn.build_spinn(K, names=spinn.keras_default_names, name=None)
    first = next(ly.name for ly in m.layers if type(ly).__name__ == "Conv2D")
    if first != "conv2d":
        raise RuntimeError(f"{kind}: first Conv2D named {first!r}, expected 'conv2d'")
    with np.load(work / "weights.npz") as z:
        m.set_weights([z[k] for k in z.files])
    m.save_weights(work / fname)
    return 0


class CdiphaseError(RuntimeError):
    pass


def run_cdiphase(cmd: list[str], timeout: float) -> float:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CdiphaseError(f"timed out after {timeout:.0f} s: {shlex.join(cmd)}")
    except OSError as e:
        raise CdiphaseError(f"cannot run {cmd[0]}: {e}")
    if p.returncode != 0:
        raise CdiphaseError(f"exit status {p.returncode}: {shlex.join(cmd)}\n"
                            f"stderr:\n{p.stderr.strip()[-4000:]}")
    return time.perf_counter() - t0


def build_keras_side(work: Path, n: int, seed: int, prep: str, formats: list[str]):
    import h5py
    import keras
    import numpy as np

    import spinn

    keras.utils.set_random_seed(seed)
    m3 = spinn.build_spinn(keras)
    if m3.count_params() != spinn.SPINN_PARAMS:
        raise RuntimeError(f"spinn has {m3.count_params()} parameters, expected "
                           f"{spinn.SPINN_PARAMS}")
    m3.set_weights(spinn.random_weights(m3, seed=seed))
    raw = spinn.diffraction_patterns(n, 128, 128, seed=seed + 1)
    x = spinn.preprocess(raw, prep)
    scale = spinn.calibrate_output(m3, x, target_std=1.0)
    y = np.asarray(m3(x, training=False), np.float32)

    if "h5" in formats:
        m3.save(work / "model.h5")
    if "keras" in formats:
        m3.save(work / "model.keras")
    if "weights" in formats:
        m3.save_weights(work / "model.weights.h5")
    if "k2" in formats:
        import tf_keras

        m2 = spinn.build_spinn(tf_keras)
        m2.set_weights(m3.get_weights())
        y2 = np.asarray(m2(x, training=False), np.float32)
        e = float(np.max(np.abs(y2 - y)) / np.max(np.abs(y)))
        if e > 1e-6:
            raise RuntimeError(f"Keras 2 and Keras 3 builds differ: rel err {e:.3g}")
        m2.save(work / "model_k2.h5")
    fresh = [f for f in formats if f in FRESH]
    if fresh:
        import subprocess

        np.savez(work / "weights.npz", *m3.get_weights())
        for f in fresh:
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", f,
                            str(work)], check=True)
        (work / "weights.npz").unlink()

    with h5py.File(work / "input.cxi", "w") as f:
        f.create_dataset("entry_1/data_1/data", data=raw)
    np.save(work / "keras_output.npy", y)
    return raw, y, scale


def read_output(path: Path, shape):
    import h5py
    import numpy as np

    with h5py.File(path, "r") as f:
        if "entry_1/image_1/data" not in f:
            raise CdiphaseError(f"{path}: no dataset entry_1/image_1/data")
        d = f["entry_1/image_1/data"]
        out = np.asarray(d)
    if out.dtype != np.float32:
        raise CdiphaseError(f"{path}: entry_1/image_1/data is {out.dtype}, expected float32")
    if out.shape != tuple(shape):
        raise CdiphaseError(f"{path}: entry_1/image_1/data has shape {out.shape}, "
                            f"expected {tuple(shape)}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cdiphase", default=str(DEFAULT_BIN))
    p.add_argument("--n", type=int, default=4, help="patterns (default 4)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--formats", default=",".join(FORMATS),
                   help=f"comma-separated subset of {','.join(FORMATS)}")
    p.add_argument("--preprocessing", default="max", choices=["max", "log1p-max"],
                   help="input preprocessing the Keras side applies and convert is told "
                        "(--preprocess); default max, the paper's")
    p.add_argument("--convert-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for cdiphase convert (repeatable; write "
                        "--convert-arg=--flag)")
    p.add_argument("--predict-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for cdiphase predict (repeatable)")
    p.add_argument("--timeout", type=float, default=600, help="per cdiphase command, s")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep the files")
    p.add_argument("--json", metavar="FILE", help="write the results to FILE")
    p.add_argument("--child", nargs=2, metavar=("FORMAT", "DIR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child[0], Path(args.child[1]))

    formats = [f for f in args.formats.split(",") if f]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        print(f"error: unknown format(s) {bad}; known: {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    binary = Path(args.cdiphase)
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        print(f"error: cdiphase binary not found or not executable: {binary}\n"
              "build it with `cargo build --release` (or pass --cdiphase PATH)",
              file=sys.stderr)
        return 2

    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
        tmp = None
    else:
        tmp = tempfile.TemporaryDirectory(prefix="cdiphase-parity-")
        work = Path(tmp.name)

    import numpy as np

    print(f"work dir: {work}", flush=True)
    try:
        t0 = time.perf_counter()
        raw, ref, scale = build_keras_side(work, args.n, args.seed, args.preprocessing, formats)
        print(f"Keras side: spinn 19,721,217 params, {args.n} patterns 128x128, "
              f"preprocessing {args.preprocessing}, output range "
              f"[{ref.min():.3f}, {ref.max():.3f}], std {ref.std():.3f} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"error: Keras side failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 3

    ref2 = ref[..., 0]
    results = {}
    status = 0
    for fmt in formats:
        fname, conv_extra, desc = FORMATS[fmt]
        st = work / f"{fmt}.safetensors"
        out = work / f"{fmt}.out.cxi"
        conv = [str(binary), "convert", str(work / fname), "-o", str(st),
                "--preprocess", args.preprocessing] + conv_extra + args.convert_arg
        pred = [str(binary), "predict", str(work / "input.cxi"), "--model", str(st),
                "-o", str(out)] + args.predict_arg
        try:
            tc = run_cdiphase(conv, args.timeout)
            tp = run_cdiphase(pred, args.timeout)
            y = read_output(out, ref2.shape)
        except CdiphaseError as e:
            print(f"{fmt:8s} FAILED: {e}", file=sys.stderr, flush=True)
            results[fmt] = {"file": fname, "error": str(e)}
            status = 2
            continue
        if not np.all(np.isfinite(y)):
            err = float("inf")
        else:
            err = float(np.max(np.abs(y.astype(np.float64) - ref2)) / np.max(np.abs(ref2)))
        ok = err <= args.tol
        if not ok and status == 0:
            status = 1
        results[fmt] = {"file": fname, "description": desc, "max_rel_err": err, "ok": ok,
                        "convert_s": tc, "predict_s": tp,
                        "convert_cmd": shlex.join(conv), "predict_cmd": shlex.join(pred)}
        print(f"{fmt:8s} {desc:42s} max rel err {err:.3e}  "
              f"{'OK' if ok else 'FAIL'} (convert {tc:.1f} s, predict {tp:.1f} s)",
              flush=True)

    summary = {"n": args.n, "seed": args.seed, "tol": args.tol,
               "preprocessing": args.preprocessing, "last_layer_scale": scale,
               "relerr_definition": "max|y - keras| / max|keras| over all patterns",
               "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    if status == 0:
        print(f"OK: every format within {args.tol:g}")
    elif status == 1:
        print(f"FAIL: a format exceeds {args.tol:g}", file=sys.stderr)
    else:
        print("FAIL: a cdiphase command failed (see above)", file=sys.stderr)
    if tmp is not None:
        tmp.cleanup()
    return status


if __name__ == "__main__":
    sys.exit(main())

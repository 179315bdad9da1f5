#!/usr/bin/env python3
"""Train the paper's encoder-decoder (or its width-scaled compact variant) on simulated CXI.

    cdiphase simulate --pdb assets/pdb --count 2000 -o pdb.cxi
    cdiphase simulate --synthetic all --count 3000 --seed 1 -o syn.cxi
    python tools/keras/train.py --data pdb.cxi syn.cxi --out runs/compact \
        --arch compact --width 0.25 --epochs 20

Data. One or more `cdiphase simulate` CXI files, all with the same (H, W), H == W:
  `entry_1/data_1/data` (N,H,W) intensities (input), `entry_1/sample_1/density` (N,H,W)
  (target), `entry_1/sample_1/support` (N,H,W) ideal support (support loss, test FP/FN),
  `entry_1/sample_1/name` (N newline-joined source ids; else `structures[structure_index]`),
  optional `entry_1/instrument_1/detector_1/mask` ((H,W) or (N,H,W), nonzero = unmeasured).
  Files are read in chunks of `--chunk` patterns and preprocessed into float32 memory maps
  in `<out>/.cache` (removed at the end unless --keep-cache), so memory stays bounded.

Preprocessing (what the converted model stores, `spinn.preprocess`):
  input: optional mask (masked pixels set to 0, before the maximum is taken, --use-mask),
  then per pattern `max`: x / max(x), or `log1p-max`: log1p(x) / max(log1p(x)).
  target: |density| / max |density| per pattern (values in [0, 1]; the output is tanh).

Split (structure level, seeded by --seed). Every pattern has a key: its source id for PDB
  structures, `<file index>:<id>` for synthetic particles (ids starting `syn-`, one particle
  per pattern, unique only within a file). Test: a seeded `--test-fraction` of the distinct
  PDB ids (or the ids listed in --test-structures); all their patterns, in every file, are
  test patterns and are never seen in training or validation. Synthetic particles go to
  training/validation only. Validation: a seeded `--val-fraction` of the remaining keys.

Losses (y = target, yh = network output, s = ideal support in {0,1}, per pattern):
  mse      mean over pixels of (yh - y)^2 (the paper's choice, the default).
  support  the paper's eq. (1) with a soft estimated support:
             p  = sigmoid((yh - theta) / tau)              (theta --support-threshold 0.1,
                                                             tau --support-temperature 0.02)
             FP = sum (1 - s) * p * max(yh, 0)             (output density outside S)
             FN = sum s * (1 - p) * y                      (true density missed inside S)
             L  = (FP + gamma * FN) / sum s * y            (gamma --fn-weight, default 10)
           gamma > 1 because a support that is too small breaks phasing (paper section 3).
           The paper normalises by the output summed over S; the true density summed over
           S is used here so the loss cannot be lowered by inflating the output.
  mse+support  mse + lambda * support (lambda --support-weight, default 0.1, not tuned).
  mse+phase    mse + w * the MSE of the output after its Fourier modulus is replaced by the
           target's (w --phase-weight): the phases a seed hands to phasing, whose first
           modulus projection discards its amplitudes (NOTES.md, "A canonical twin").
  --twin-invariant: per pattern, the minimum of the loss against y and against its
           centrosymmetric twin y(-r) (centred arrays: index i -> (H - i) mod H), since an
           intensity pattern cannot tell them apart. Off by default (the paper did not).
  --twin-target canonical: instead, every target (and support) is replaced by the twin
           whose first-harmonic third moment along --canonical-angle, sum rho |r - c|^2
           (r - c).u, is >= 0; a plain loss then asks for one twin fixed by the pattern,
           where the minimum leaves the network free to blend the two (NOTES.md, "A
           canonical twin").
  The batch loss is the mean over patterns.

Outputs in --out: model.keras, model.h5 (best validation weights, early stopping with
  --patience), history.csv (loss, val_loss, val_mse per epoch), training.json (data files
  with their sha256 and the simulator's recorded configuration, split, architecture,
  parameters, recipe, timings, final losses, test-set metrics: MSE and support FP/FN with
  the output thresholded at 0.1 of its maximum against the ideal support, as stored and
  best of the twin pair; no translation alignment; `mse_zero_output` and
  `mse_train_mean_image` are the MSE of an all-zero output and of the training-set mean
  target, for scale: a useful model must beat the second). Files are written to a
  temporary name and renamed.

Backends: Keras 3 on TensorFlow (the pinned venv; deterministic for a given --seed, data
and thread count: TF op determinism is enabled), or on torch / JAX (KERAS_BACKEND=torch|jax,
e.g. on a GPU machine: tools/keras/gpu_train.sh). The losses use keras.ops only.
--precision mixed_bfloat16 trains with bf16 compute (weights, Adam's state, the last layer
and the loss in float32): on an Intel Xeon with AMX, TensorFlow's oneDNN runs the full
network's step 3.7x faster than float32 (BENCHMARKS.md, "Training the full network in bf16
on AMX"); on a CPU without AMX it is not measured. The saved files are float32 either way.
Exit status: 0 ok, 2 bad input (missing dataset, shape mismatch, wrong size, bad split).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

DATA = "entry_1/data_1/data"
DENSITY = "entry_1/sample_1/density"
SUPPORT = "entry_1/sample_1/support"
NAME = "entry_1/sample_1/name"
STRUCTURES = "entry_1/sample_1/structures"
SINDEX = "entry_1/sample_1/structure_index"
MASK = "entry_1/instrument_1/detector_1/mask"

COMPACT_WIDTH = 0.25


class DataError(Exception):
    """Bad training input: reported as one line, exit status 2."""


# ----------------------------------------------------------------------------- data ---

def _string(ds) -> str:
    v = ds[()]
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, str):
        return v
    if hasattr(v, "tolist"):
        v = v.tolist()
        if isinstance(v, list):
            return "\n".join(x.decode() if isinstance(x, bytes) else str(x) for x in v)
        return v.decode() if isinstance(v, bytes) else str(v)
    return str(v)


def inspect_file(path: str, need_support: bool):
    """Validate one CXI file; return (n, h, w, names, has_mask)."""
    import h5py

    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not an HDF5 file ({e})") from None
    with f:
        for key in (DATA, DENSITY) + ((SUPPORT,) if need_support else ()):
            if key not in f:
                raise DataError(f"{path}: missing dataset {key} "
                                "(is it a `cdiphase simulate` output?)")
        d = f[DATA]
        if d.ndim != 3:
            raise DataError(f"{path}: {DATA} has shape {d.shape}, expected (N,H,W)")
        n, h, w = d.shape
        if n == 0:
            raise DataError(f"{path}: {DATA} holds no patterns")
        for key in (DENSITY,) + ((SUPPORT,) if need_support else ()):
            if f[key].shape != d.shape:
                raise DataError(f"{path}: {key} has shape {f[key].shape}, {DATA} has {d.shape}")
        if NAME in f:
            names = _string(f[NAME]).split("\n")
            if len(names) != n:
                raise DataError(f"{path}: {NAME} holds {len(names)} ids for {n} patterns")
        elif STRUCTURES in f and SINDEX in f:
            structs = _string(f[STRUCTURES]).split("\n")
            idx = f[SINDEX][()]
            if idx.shape != (n,) or idx.min() < 0 or idx.max() >= len(structs):
                raise DataError(f"{path}: {SINDEX} {idx.shape} does not index "
                                f"{len(structs)} structures")
            names = [structs[i] for i in idx]
        else:
            raise DataError(f"{path}: missing {NAME} (or {STRUCTURES} + {SINDEX}): "
                            "cannot split by structure")
        has_mask = MASK in f
        if has_mask and f[MASK].shape not in ((h, w), (n, h, w)):
            raise DataError(f"{path}: {MASK} has shape {f[MASK].shape}, "
                            f"expected {(h, w)} or {(n, h, w)}")
    return n, h, w, names, has_mask


def pattern_keys(names, file_index: int):
    return [f"{file_index}:{nm}" if nm.startswith("syn-") else nm for nm in names]


def make_split(keys_all, seed: int, test_fraction: float, val_fraction: float,
               test_structures=None):
    """keys_all: list of every pattern's key. Returns dict key -> 'train'|'val'|'test' and the
    lists of test and validation keys (sorted)."""
    import numpy as np

    distinct = sorted(set(keys_all))
    pdb = [k for k in distinct if ":" not in k]
    rng = np.random.default_rng(seed)
    if test_structures:
        missing = [t for t in test_structures if t not in pdb]
        if missing:
            raise DataError(f"--test-structures: {missing} not among the PDB ids in the data")
        test = sorted(test_structures)
    else:
        nt = int(round(test_fraction * len(pdb)))
        if test_fraction > 0 and nt == 0 and len(pdb) >= 2:
            nt = 1
        test = sorted(pdb[i] for i in rng.permutation(len(pdb))[:nt])
    rest = [k for k in distinct if k not in set(test)]
    if len(rest) < 2:
        raise DataError(f"only {len(rest)} training structures/particles left after the test split")
    nv = max(1, int(round(val_fraction * len(rest))))
    val = sorted(rest[i] for i in rng.permutation(len(rest))[:nv])
    if nv >= len(rest):
        raise DataError("validation split leaves no training data")
    tset, vset = set(test), set(val)
    role = {k: ("test" if k in tset else "val" if k in vset else "train") for k in distinct}
    return role, test, val


def canonical_flip(y, angle_deg: float = 0.0):
    """Which patterns' targets to replace by their centrosymmetric twin so that every
    target is the twin whose first-harmonic third moment along the direction u at
    angle_deg from the x axis (columns) towards y (rows), sum rho |r - c|^2 (r - c).u
    with c the centroid, is >= 0. Central odd moments change sign under the twin, so
    exactly one of the pair meets the rule (ties kept); the rule is a function of the
    pattern's twin pair, i.e. of the pattern. y: (n, H, W[, 1]) non-negative, centred
    (zero at the borders). Returns bool (n,)."""
    import numpy as np

    d = np.asarray(y, dtype=np.float64).reshape(y.shape[0], y.shape[1], y.shape[2])
    n, h, w = d.shape
    ii, jj = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                         indexing="ij")
    m0 = d.sum(axis=(1, 2))
    m0 = np.where(m0 > 0, m0, 1.0)
    ci = (d * ii).sum(axis=(1, 2)) / m0
    cj = (d * jj).sum(axis=(1, 2)) / m0
    di = ii[None] - ci[:, None, None]
    dj = jj[None] - cj[:, None, None]
    a = np.deg2rad(angle_deg)
    v = (d * (di * di + dj * dj) * (np.cos(a) * dj + np.sin(a) * di)).sum(axis=(1, 2))
    return v < 0


def flip_twin(a):
    """The centrosymmetric twin of centred arrays (n, H, W[, C]): index i -> (H - i) mod H
    on both image axes, as the twin-invariant loss's flip."""
    import numpy as np

    return np.roll(a[:, ::-1, ::-1], (1, 1), axis=(1, 2))


def build_cache(files, infos, role_of, cache: str, preprocessing: str, use_mask: bool,
                chunk: int, canonical=None):
    """Preprocess every pattern into memory-mapped arrays per split. Returns
    {split: (x, y, s)} of np.memmap, x/y float32 (n,H,W,1), s uint8 (n,H,W,1)."""
    import h5py
    import numpy as np
    from spinn import preprocess

    os.makedirs(cache, exist_ok=True)
    h, w = infos[0][1], infos[0][2]
    counts = {"train": 0, "val": 0, "test": 0}
    roles = []
    for fi, info in enumerate(infos):
        r = [role_of[k] for k in pattern_keys(info[3], fi)]
        roles.append(np.array(r))
        for k in counts:
            counts[k] += int((roles[-1] == k).sum())
    arrays, fill = {}, {}
    for k, n in counts.items():
        if n == 0:
            continue
        arrays[k] = tuple(
            np.lib.format.open_memmap(os.path.join(cache, f"{k}_{nm}.npy"), mode="w+",
                                      dtype=dt, shape=(n, h, w, 1))
            for nm, dt in (("x", np.float32), ("y", np.float32), ("s", np.uint8)))
        fill[k] = 0
    for fi, path in enumerate(files):
        n = infos[fi][0]
        with h5py.File(path, "r") as f:
            mask = None
            if use_mask and MASK in f:
                mask = f[MASK]
                mask = mask[()] if mask.ndim == 2 else mask
            for a in range(0, n, chunk):
                b = min(n, a + chunk)
                x = f[DATA][a:b].astype(np.float64)
                if not np.all(np.isfinite(x)):
                    bad = a + int(np.argwhere(~np.isfinite(x).reshape(b - a, -1).all(1))[0][0])
                    raise DataError(f"{path}: {DATA}[{bad}] holds NaN/inf")
                if mask is not None:
                    m = mask if mask.ndim == 2 else mask[a:b]
                    x = np.where(np.asarray(m) != 0, 0.0, x)
                try:
                    xp = preprocess(x, preprocessing)
                except ValueError as e:
                    raise DataError(f"{path}: patterns {a}..{b - 1}: {e}") from None
                d = np.abs(f[DENSITY][a:b].astype(np.float64))
                dm = d.reshape(b - a, -1).max(axis=1)
                if np.any(~np.isfinite(dm)) or np.any(dm <= 0):
                    bad = a + int(np.argwhere(~(np.isfinite(dm) & (dm > 0)))[0][0])
                    raise DataError(f"{path}: {DENSITY}[{bad}] is empty or not finite")
                y = (d / dm[:, None, None]).astype(np.float32)[..., None]
                if SUPPORT in f:
                    s = (f[SUPPORT][a:b] != 0).astype(np.uint8)[..., None]
                else:
                    s = (y > 0.025).astype(np.uint8)
                if canonical is not None:
                    fl = canonical_flip(y, canonical)
                    y[fl] = flip_twin(y[fl])
                    s[fl] = flip_twin(s[fl])
                rr = roles[fi][a:b]
                for k in arrays:
                    sel = rr == k
                    m = int(sel.sum())
                    if m == 0:
                        continue
                    i = fill[k]
                    arrays[k][0][i:i + m] = xp[sel]
                    arrays[k][1][i:i + m] = y[sel]
                    arrays[k][2][i:i + m] = s[sel]
                    fill[k] = i + m
    for k in arrays:
        for arr in arrays[k]:
            arr.flush()
    return arrays


# ---------------------------------------------------------------------------- model ---

def conv_flops(model) -> int:
    """Multiply-adds x 2 of one forward pass for one pattern (Conv2D, Conv2DTranspose,
    Dense; pooling/upsampling/activations ignored)."""
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("Conv2D", "Conv2DTranspose"):
            kh, kw = layer.kernel_size
            out = layer.output.shape
            cin = layer.input.shape[-1]
            if kind == "Conv2D":
                total += 2 * out[1] * out[2] * kh * kw * cin * out[3]
            else:  # stride 1 here: every input pixel scatters a kh*kw*cout patch
                inp = layer.input.shape
                total += 2 * inp[1] * inp[2] * kh * kw * cin * out[3]
        elif kind == "Dense":
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)


def make_losses(ops, kind: str, gamma: float, theta: float, tau: float, lam: float,
                twin: bool, phase_weight: float = 1.0):
    """Loss on y_true packed as (..., 2): channel 0 the target, channel 1 the support.
    Written with `keras.ops` (passed as `ops`), so it runs on every Keras backend
    (TensorFlow here, torch or JAX on a GPU machine)."""

    def flip(t):  # centred arrays: index i -> (H - i) mod H on both axes
        # one axis per call: Keras 3.12's TensorFlow flip takes a single axis
        t = ops.flip(ops.flip(t, axis=1), axis=2)
        return ops.roll(ops.roll(t, shift=1, axis=1), shift=1, axis=2)

    def mse(y, yh):
        return ops.mean(ops.square(yh - y), axis=(1, 2, 3))

    def sup(y, s, yh):
        p = ops.sigmoid((yh - theta) / tau)
        fp = ops.sum((1.0 - s) * p * ops.relu(yh), axis=(1, 2, 3))
        fn = ops.sum(s * (1.0 - p) * y, axis=(1, 2, 3))
        norm = ops.sum(s * y, axis=(1, 2, 3)) + 1e-6
        return (fp + gamma * fn) / norm

    def phase(y, yh):
        # the output after its Fourier modulus is replaced by the target's (what the first
        # modulus projection of phasing keeps of a seed: its phases), against the target;
        # by Parseval sum_q |Y(q)|^2 |e^(i phi_out) - e^(i phi_target)|^2 / (H W)^2 per pixel
        a = y[..., 0]
        b = yh[..., 0]
        xr, xi = ops.fft2((a, ops.zeros_like(a)))
        yr, yi = ops.fft2((b, ops.zeros_like(b)))
        g = ops.sqrt(xr * xr + xi * xi) / ops.sqrt(yr * yr + yi * yi + 1e-6)
        pr, _ = ops.ifft2((g * yr, g * yi))
        return ops.mean(ops.square(pr - a), axis=(1, 2))

    def per_pattern(y, s, yh):
        if kind == "mse":
            return mse(y, yh)
        if kind == "support":
            return sup(y, s, yh)
        if kind == "mse+phase":
            return mse(y, yh) + phase_weight * phase(y, yh)
        return mse(y, yh) + lam * sup(y, s, yh)

    def loss(y_true, y_pred):
        y = y_true[..., 0:1]
        s = y_true[..., 1:2]
        v = per_pattern(y, s, y_pred)
        if twin:
            v = ops.minimum(v, per_pattern(flip(y), flip(s), y_pred))
        return ops.mean(v)

    def target_mse(y_true, y_pred):
        return ops.mean(ops.square(y_pred - y_true[..., 0:1]))

    loss.__name__ = f"loss_{kind}"
    target_mse.__name__ = "mse"
    return loss, target_mse


def make_sequence(keras, x, y, s, batch: int, seed: int, shuffle: bool):
    import numpy as np

    class Seq(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.epoch = 0
            self.order = self._order()

        def _order(self):
            n = x.shape[0]
            if not shuffle:
                return np.arange(n)
            return np.random.default_rng([seed, self.epoch]).permutation(n)

        def __len__(self):
            return (x.shape[0] + batch - 1) // batch

        def __getitem__(self, i):
            idx = np.sort(self.order[i * batch:(i + 1) * batch])
            yy = np.concatenate([y[idx], s[idx].astype(np.float32)], axis=-1)
            return np.asarray(x[idx]), yy

        def on_epoch_end(self):
            self.epoch += 1
            self.order = self._order()

    return Seq()


def mean_image(y, chunk: int = 256):
    """The mean target over a split (H,W,1), float64, read in chunks."""
    import numpy as np

    acc = np.zeros(y.shape[1:], np.float64)
    for a in range(0, y.shape[0], chunk):
        acc += np.asarray(y[a:a + chunk], np.float64).sum(axis=0)
    return acc / y.shape[0]


def evaluate_test(model, x, y, s, batch: int, threshold: float = 0.1, mean_train=None):
    """Test metrics: MSE against the target, support FP/FN of (out >= threshold*max(out))
    against the ideal support, as stored and best of the twin pair (fewest FN, then FP).
    Baselines for scale: the MSE of an all-zero output and of the training-set mean target
    (a network that ignores its input does no better than the latter)."""
    import numpy as np

    n = x.shape[0]
    se, se0, sem, fps, fns, fpt, fnt = 0.0, 0.0, 0.0, [], [], [], []
    for a in range(0, n, batch):
        b = min(n, a + batch)
        out = np.asarray(model.predict(np.asarray(x[a:b]), batch_size=batch, verbose=0),
                         np.float64)
        t = np.asarray(y[a:b], np.float64)
        se += float(((out - t) ** 2).sum())
        se0 += float((t ** 2).sum())
        if mean_train is not None:
            sem += float(((t - mean_train) ** 2).sum())
        mx = out.reshape(b - a, -1).max(axis=1)
        est = out >= threshold * mx[:, None, None, None]
        sup = np.asarray(s[a:b]) != 0
        twin = np.roll(sup[:, ::-1, ::-1], (1, 1), axis=(1, 2))
        for i in range(b - a):
            fp0 = int((est[i] & ~sup[i]).sum())
            fn0 = int((~est[i] & sup[i]).sum())
            fp1 = int((est[i] & ~twin[i]).sum())
            fn1 = int((~est[i] & twin[i]).sum())
            fps.append(fp0)
            fns.append(fn0)
            best = min((fn0, fp0), (fn1, fp1))
            fnt.append(best[0])
            fpt.append(best[1])
    fps, fns, fpt, fnt = map(np.asarray, (fps, fns, fpt, fnt))
    return {
        "patterns": int(n),
        "mse": se / (n * x.shape[1] * x.shape[2]),
        "mse_zero_output": se0 / (n * x.shape[1] * x.shape[2]),
        "mse_train_mean_image": (sem / (n * x.shape[1] * x.shape[2])
                                 if mean_train is not None else None),
        "threshold": threshold,
        "as_stored": {"mean_fp": float(fps.mean()), "mean_fn": float(fns.mean()),
                      "median_fn": float(np.median(fns)),
                      "share_fn_le_2": float((fns <= 2).mean())},
        "best_of_twin": {"mean_fp": float(fpt.mean()), "mean_fn": float(fnt.mean()),
                         "median_fn": float(np.median(fnt)),
                         "share_fn_le_2": float((fnt <= 2).mean())},
        "mean_support_pixels": float(np.asarray(s).reshape(n, -1).sum(1).mean()),
    }


def sha256_file(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def simulate_config(path: str):
    """The simulator's recorded configuration (entry_1/process_1/configuration, JSON), or
    None when the file has none or it is not JSON."""
    import h5py

    with h5py.File(path, "r") as f:
        key = "entry_1/process_1/configuration"
        if key not in f:
            return None
        try:
            return json.loads(_string(f[key]))
        except ValueError:
            return _string(f[key])


def write_json_atomic(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- main ---

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, help="cdiphase simulate CXI files")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--arch", choices=("spinn", "compact"), default="compact",
                   help="spinn: the paper's network (width 1); compact: width --width")
    p.add_argument("--width", type=float, default=None,
                   help=f"channel scale (compact default {COMPACT_WIDTH}; spinn: 1)")
    p.add_argument("--bottleneck", type=int, default=None,
                   help="units of the first Dense (default 128 x width; the paper: 128)")
    p.add_argument("--input-size", type=int, default=None,
                   help="required pattern size (default: the data's)")
    p.add_argument("--preprocessing", choices=("max", "log1p-max"), default="max")
    p.add_argument("--use-mask", action="store_true",
                   help="set masked pixels (detector mask nonzero) to 0 in the input")
    p.add_argument("--loss", choices=("mse", "support", "mse+support", "mse+phase"),
                   default="mse")
    p.add_argument("--phase-weight", type=float, default=1.0,
                   help="weight of the phase term of mse+phase")
    p.add_argument("--fn-weight", type=float, default=10.0, help="gamma of the support loss")
    p.add_argument("--support-threshold", type=float, default=0.1, help="theta")
    p.add_argument("--support-temperature", type=float, default=0.02, help="tau")
    p.add_argument("--support-weight", type=float, default=0.1, help="lambda of mse+support")
    p.add_argument("--twin-invariant", action="store_true")
    p.add_argument("--twin-target", choices=("as-stored", "canonical"), default="as-stored",
                   help="canonical: every target replaced by the twin whose third moment "
                   "sum rho |r - c|^2 (x - c_x) is >= 0, a twin fixed by the pattern (plain "
                   "loss, not with --twin-invariant)")
    p.add_argument("--canonical-angle", type=float, default=0.0,
                   help="the direction u of --twin-target canonical, degrees from x towards y "
                   "(orientations are random, so any is as learnable; pick the one a "
                   "twin-invariant network to fine-tune already prefers)")
    p.add_argument("--test-fraction", type=float, default=0.15,
                   help="share of the distinct PDB structures held out for testing")
    p.add_argument("--test-structures", default=None,
                   help="comma-separated PDB ids to hold out (instead of --test-fraction)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--patience", type=int, default=4, help="early stopping on val_loss")
    p.add_argument("--lr-patience", type=int, default=0,
                   help="halve the learning rate after this many epochs without a better "
                        "val_loss (0: constant rate)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: stop after the epoch that would let the next one overrun "
                        "(the best validation weights are kept), for runs on borrowed time")
    p.add_argument("--max-steps", type=int, default=None,
                   help="limit the training batches per epoch (smoke tests)")
    p.add_argument("--precision", choices=("float32", "mixed_bfloat16"), default="float32",
                   help="Keras dtype policy while training: mixed_bfloat16 computes in bf16 "
                        "(weights, optimizer state, the last layer and the loss in float32); "
                        "on a CPU with AMX oneDNN runs the full network 3.7x faster. "
                        "The saved model is float32 either way")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2,
                   help="intra-op threads (TensorFlow and torch backends)")
    p.add_argument("--chunk", type=int, default=256, help="patterns read per HDF5 read")
    p.add_argument("--keep-cache", action="store_true")
    p.add_argument("--init-from", default=None, metavar="MODEL.safetensors",
                   help="start from the weights of a cdiphase model file (`cdiphase convert`'s "
                        "output, e.g. models/spinn_paper/model.safetensors) instead of a "
                        "random initialisation: fine-tuning. Every layer of the network must "
                        "be in the file with the same shapes (f32, f16 or bf16)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>/checkpoint (written after every epoch) when it "
                        "exists and matches this run's data, architecture and recipe")
    a = p.parse_args(argv)
    if a.width is None:
        a.width = 1.0 if a.arch == "spinn" else COMPACT_WIDTH
    elif a.arch == "spinn" and a.width != 1.0:
        p.error("--arch spinn is the paper's network: use --arch compact for --width")
    if not (0 <= a.test_fraction < 1 and 0 < a.val_fraction < 1):
        p.error("--test-fraction must be in [0,1) and --val-fraction in (0,1)")
    if a.epochs < 1 or a.batch < 1 or a.chunk < 1:
        p.error("--epochs, --batch and --chunk must be positive")
    if a.twin_target == "canonical" and a.twin_invariant:
        p.error("--twin-target canonical fixes the twin: the twin-invariant loss would undo it")
    return a


def read_safetensors(path: str) -> dict:
    """The tensors of a safetensors file as float32 numpy arrays (F32, F16 or BF16), read
    with numpy alone (the pinned venv has no safetensors package). Raises DataError naming
    the file and the entry on a malformed header, an unknown dtype or a truncated file."""
    import numpy as np
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from e
    if len(raw) < 8:
        raise DataError(f"{path}: not a safetensors file ({len(raw)} bytes)")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise DataError(f"{path}: header of {n} bytes in a file of {len(raw)}")
    try:
        header = json.loads(raw[8:8 + n])
    except ValueError as e:
        raise DataError(f"{path}: header is not JSON: {e}") from e
    body = memoryview(raw)[8 + n:]
    out = {}
    for name, ent in header.items():
        if name == "__metadata__":
            continue
        dt, shape, (a, b) = ent.get("dtype"), ent.get("shape"), ent.get("data_offsets", (0, 0))
        size = int(np.prod(shape)) if shape else 1
        width = {"F32": 4, "F16": 2, "BF16": 2}.get(dt)
        if width is None:
            raise DataError(f"{path}: entry {name}: dtype {dt} (expected F32, F16 or BF16)")
        if not (0 <= a <= b <= len(body)) or b - a != size * width:
            raise DataError(f"{path}: entry {name}: {dt} {shape} does not fit its data "
                            f"offsets [{a}, {b}) in a body of {len(body)} bytes")
        buf = body[a:b]
        if dt == "F32":
            v = np.frombuffer(buf, "<f4").astype(np.float32)
        elif dt == "F16":
            v = np.frombuffer(buf, "<f2").astype(np.float32)
        else:
            v = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
        out[name] = v.reshape(shape)
    return out


def init_from(model, path: str) -> int:
    """Sets every weighted layer of `model` from `path` (tensors `<layer>/kernel`,
    `<layer>/bias`, in Keras's layout, as `cdiphase convert` stores them). Returns the
    number of tensors set; raises DataError naming the layer and the shapes on a mismatch."""
    tensors = read_safetensors(path)
    used = 0
    for layer in model.layers:
        ws = layer.weights
        if not ws:
            continue
        new = []
        for w in ws:
            key = f"{layer.name}/{w.name.split('/')[-1].split(':')[0]}"
            if key not in tensors:
                raise DataError(f"{path}: no entry {key} for layer {layer.name} "
                                f"(shape {tuple(w.shape)})")
            if tuple(tensors[key].shape) != tuple(w.shape):
                raise DataError(f"{path}: entry {key} has shape {tuple(tensors[key].shape)}, "
                                f"layer {layer.name} needs {tuple(w.shape)}")
            new.append(tensors[key])
        layer.set_weights(new)
        used += len(new)
    if used != len(tensors):
        raise DataError(f"{path}: {len(tensors) - used} of its {len(tensors)} tensors match "
                        "no layer of this architecture")
    return used


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.time()
    need_support = True  # the test metrics always use the ideal support

    try:
        infos = [inspect_file(pth, need_support) for pth in args.data]
        h, w = infos[0][1], infos[0][2]
        for pth, inf in zip(args.data, infos):
            if (inf[1], inf[2]) != (h, w):
                raise DataError(f"{pth}: patterns are {inf[1]}x{inf[2]}, "
                                f"{args.data[0]} has {h}x{w}")
        if h != w:
            raise DataError(f"{args.data[0]}: patterns are {h}x{w}; the network needs square input")
        if args.input_size is not None and args.input_size != h:
            raise DataError(f"{args.data[0]}: patterns are {h}x{w}, "
                            f"--input-size is {args.input_size}")
        if h % 8:
            raise DataError(f"{args.data[0]}: pattern size {h} is not a multiple of 8 "
                            f"(three 2x2 poolings of the {args.arch} architecture)")
        keys = []
        for fi, inf in enumerate(infos):
            keys += pattern_keys(inf[3], fi)
        tests = args.test_structures.split(",") if args.test_structures else None
        role_of, test_keys, val_keys = make_split(keys, args.seed, args.test_fraction,
                                                  args.val_fraction, tests)
    except DataError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2

    os.makedirs(args.out, exist_ok=True)
    cache = os.path.join(args.out, ".cache")
    t0 = time.time()
    try:
        arrays = build_cache(args.data, infos, role_of, cache, args.preprocessing,
                             args.use_mask, args.chunk,
                             args.canonical_angle if args.twin_target == "canonical" else None)
    except DataError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        shutil.rmtree(cache, ignore_errors=True)
        return 2
    t_cache = time.time() - t0
    for k in ("train", "val"):
        if k not in arrays:
            print(f"train.py: error: the {k} split is empty", file=sys.stderr)
            return 2
    n_split = {k: int(v[0].shape[0]) for k, v in arrays.items()}
    print(f"patterns: {n_split} ({h}x{w}); preprocessing {t_cache:.1f} s", flush=True)

    import numpy as np

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's start-up chatter
    import keras
    from spinn import build_spinn

    backend = keras.backend.backend()
    versions = {"keras": keras.__version__, "numpy": np.__version__, "backend": backend}
    device = "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        versions["tensorflow"] = tf.__version__
    elif backend == "torch":
        import torch

        versions["torch"] = torch.__version__
        if torch.cuda.is_available():
            # TF32 tensor cores for the dense layers too (convolutions use them by default)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            device = torch.cuda.get_device_name(0)
        else:
            torch.set_num_threads(args.threads)
    elif backend == "jax":
        import jax

        versions["jax"] = jax.__version__
        device = str(jax.devices()[0])
    keras.utils.set_random_seed(args.seed)
    if backend == "tensorflow":
        tf.config.experimental.enable_op_determinism()
    print(f"keras {keras.__version__} on {backend} ({device})", flush=True)

    keras.mixed_precision.set_global_policy(args.precision)
    model = build_spinn(keras, input_size=h, width=args.width, bottleneck=args.bottleneck,
                        name="spinn" if args.arch == "spinn" else "spinn_compact",
                        out_dtype="float32" if args.precision != "float32" else None)
    flops = conv_flops(model)
    loss, target_mse = make_losses(keras.ops, args.loss, args.fn_weight,
                                   args.support_threshold, args.support_temperature,
                                   args.support_weight, args.twin_invariant,
                                   args.phase_weight)
    model.compile(optimizer=keras.optimizers.Adam(args.lr), loss=loss, metrics=[target_mse])
    print(f"model {model.name}: width {args.width}, {model.count_params():,} parameters, "
          f"{flops / 1e9:.3f} GFLOP forward per pattern", flush=True)

    tr = make_sequence(keras, *arrays["train"], args.batch, args.seed, True)
    va = make_sequence(keras, *arrays["val"], args.batch, args.seed, False)

    ckpt = os.path.join(args.out, "checkpoint")
    fingerprint = {
        "data": [[os.path.abspath(pth), os.path.getsize(pth)] for pth in args.data],
        "arch": args.arch, "width": args.width, "bottleneck": args.bottleneck,
        "batch": args.batch, "loss": args.loss, "fn_weight": args.fn_weight,
        "support_threshold": args.support_threshold,
        "support_temperature": args.support_temperature,
        "support_weight": args.support_weight, "twin_invariant": args.twin_invariant,
        **({"phase_weight": args.phase_weight} if args.loss == "mse+phase" else {}),
        **({} if args.twin_target == "as-stored" else
           {"twin_target": args.twin_target, "canonical_angle": args.canonical_angle}),
        **({} if args.precision == "float32" else {"precision": args.precision}),
        "seed": args.seed, "preprocessing": args.preprocessing, "use_mask": args.use_mask,
        "split": [n_split, args.test_structures, args.test_fraction, args.val_fraction],
        "backend": backend,
        "init_from": None if args.init_from is None else sha256_file(args.init_from),
    }
    state = {"epoch": 0, "best": float("inf"), "best_epoch": 0, "wait": 0, "lr_wait": 0,
             "lr": args.lr, "history": {}, "epoch_times": [], "runs": [], "init": None}
    if args.resume and os.path.exists(os.path.join(ckpt, "state.json")):
        with open(os.path.join(ckpt, "state.json")) as f:
            saved = json.load(f)
        if saved.get("fingerprint") != json.loads(json.dumps(fingerprint)):
            print(f"train.py: error: {ckpt} was written by a different run (data, "
                  "architecture, recipe or split differ); use another --out or drop --resume",
                  file=sys.stderr)
            return 2
        state = saved["state"]
        model.optimizer.build(model.trainable_variables)
        model.load_weights(os.path.join(ckpt, "weights.weights.h5"))
        with np.load(os.path.join(ckpt, "optimizer.npz")) as z:
            values = [z[f"v{i}"] for i in range(len(z.files))]
        if len(values) != len(model.optimizer.variables):
            print(f"train.py: error: {ckpt}: optimizer state does not match the model",
                  file=sys.stderr)
            return 2
        for var, val in zip(model.optimizer.variables, values):
            var.assign(val)
        print(f"resumed from {ckpt}: {state['epoch']} epochs done, best val_loss "
              f"{state['best']:.5f} (epoch {state['best_epoch']}), lr {state['lr']:.2e}",
              flush=True)
    else:
        if args.resume:
            print(f"no checkpoint in {ckpt}: starting afresh", flush=True)
        if args.init_from is not None:
            try:
                k = init_from(model, args.init_from)
            except DataError as e:
                print(f"train.py: error: {e}", file=sys.stderr)
                return 2
            print(f"initialised from {args.init_from} ({k} tensors)", flush=True)
    model.optimizer.learning_rate.assign(state["lr"])

    def save_checkpoint(best_weights):
        """Weights, optimizer state and the run's state, each written to a temporary name
        and renamed, so a run killed at any point resumes from the last whole epoch."""
        os.makedirs(ckpt, exist_ok=True)
        tmp = os.path.join(ckpt, "tmp.weights.h5")
        model.save_weights(tmp)
        os.replace(tmp, os.path.join(ckpt, "weights.weights.h5"))
        if best_weights is not None:
            keep = model.get_weights()
            model.set_weights(best_weights)
            model.save_weights(tmp)
            os.replace(tmp, os.path.join(ckpt, "best.weights.h5"))
            model.set_weights(keep)
        tmp = os.path.join(ckpt, "tmp-optimizer.npz")
        with open(tmp, "wb") as f:
            np.savez(f, **{f"v{i}": np.asarray(keras.ops.convert_to_numpy(v))
                           for i, v in enumerate(model.optimizer.variables)})
        os.replace(tmp, os.path.join(ckpt, "optimizer.npz"))
        write_json_atomic(os.path.join(ckpt, "state.json"),
                          {"fingerprint": fingerprint, "state": state})

    class Run(keras.callbacks.Callback):
        """The epoch loop's bookkeeping, resumable: epoch times, the best val_loss and its
        weights (restored at the end however training stops), early stopping (--patience),
        halving the learning rate (--lr-patience), the time budget (stop when the next
        epoch would overrun it) and a checkpoint after every epoch."""

        def __init__(self):
            super().__init__()
            self.best_weights, self.stopped_by_budget, self.times = None, False, []

        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.time()

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            self.times.append(time.time() - self.t)
            state["epoch_times"].append(self.times[-1])
            state["epoch"] = epoch + 1
            logs["learning_rate"] = state["lr"]
            for k, v in logs.items():
                state["history"].setdefault(k, []).append(float(v))
            v = float(logs.get("val_loss", float("inf")))
            if v < state["best"]:
                state.update(best=v, best_epoch=epoch + 1, wait=0, lr_wait=0)
                self.best_weights = self.model.get_weights()
            else:
                state["wait"] += 1
                state["lr_wait"] += 1
                if args.lr_patience > 0 and state["lr_wait"] >= args.lr_patience:
                    state["lr"] = max(state["lr"] * 0.5, 1e-6)
                    state["lr_wait"] = 0
                    self.model.optimizer.learning_rate.assign(state["lr"])
                    print(f"learning rate -> {state['lr']:.2e}", flush=True)
                if state["wait"] >= args.patience:
                    self.model.stop_training = True
            if args.time_budget is not None:
                spent = time.time() - t_start
                if spent + max(self.times) * 1.1 > args.time_budget:
                    self.stopped_by_budget = True
                    self.model.stop_training = True
            save_checkpoint(self.best_weights)

        def on_train_end(self, logs=None):
            if self.best_weights is None and os.path.exists(
                    os.path.join(ckpt, "best.weights.h5")):
                self.model.load_weights(os.path.join(ckpt, "best.weights.h5"))
            elif self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    run = Run()
    if state["init"] is None:
        # initial losses (epoch 0) so the record shows the decrease
        # (on at most 50 training batches: a full pass costs a third of an epoch)
        init_steps = min(len(tr), args.max_steps or 50, 50)
        init_train = model.evaluate(tr, verbose=0, steps=init_steps, return_dict=True)
        init_val = model.evaluate(va, verbose=0, return_dict=True)
        state["init"] = {"loss": float(init_train["loss"]), "val_loss": float(init_val["loss"])}
    print(f"before training: loss {state['init']['loss']:.5f}, "
          f"val_loss {state['init']['val_loss']:.5f}", flush=True)
    state["runs"].append({"started_epoch": state["epoch"], "device": device})
    if state["epoch"] < args.epochs and state["wait"] < args.patience:
        tr.epoch = state["epoch"]
        tr.order = tr._order()
        model.fit(tr, validation_data=va, epochs=args.epochs, initial_epoch=state["epoch"],
                  callbacks=[run], steps_per_epoch=args.max_steps, verbose=2, shuffle=False)
    else:
        # nothing left to train (resumed at --epochs or out of patience): restore the best
        # weights and write the outputs; the callback never saw model.fit, so give it the model
        run.set_model(model)
        run.on_train_end()
    state["runs"][-1]["ended_epoch"] = state["epoch"]
    save_checkpoint(run.best_weights)
    h_ = state["history"]
    keys = [k for k in ("loss", "mse", "val_loss", "val_mse", "learning_rate") if k in h_]
    tmp = os.path.join(args.out, "history.csv.tmp")
    with open(tmp, "w") as f:
        f.write("epoch," + ",".join(keys) + "\n")
        for e in range(len(h_.get("loss", []))):
            f.write(f"{e}," + ",".join(repr(h_[k][e]) for k in keys) + "\n")
    os.replace(tmp, os.path.join(args.out, "history.csv"))
    best_epoch = state["best_epoch"]

    test = None
    if "test" in arrays:
        test = evaluate_test(model, *arrays["test"], batch=args.batch,
                             mean_train=mean_image(arrays["train"][1]))
        print(f"test: {json.dumps(test)}", flush=True)

    # Saved from an uncompiled twin with the same layer names and weights: the files hold
    # the architecture and weights only (no optimizer state, no custom loss to deserialise).
    keras.mixed_precision.set_global_policy("float32")  # a float32 file whatever trained it
    clean = build_spinn(keras, input_size=h, width=args.width, bottleneck=args.bottleneck,
                        name=model.name)
    clean.set_weights(model.get_weights())
    for name in ("model.keras", "model.h5"):
        tmp = os.path.join(args.out, "tmp-" + name)
        clean.save(tmp)
        os.replace(tmp, os.path.join(args.out, name))

    steps = len(tr) if args.max_steps is None else min(args.max_steps, len(tr))
    record = {
        "tool": "tools/keras/train.py",
        "versions": versions,
        "device": device,
        "command": sys.argv,
        "data": [{"path": os.path.abspath(pth), "patterns": inf[0], "size": [inf[1], inf[2]],
                  "sha256": sha256_file(pth), "simulate": simulate_config(pth)}
                 for pth, inf in zip(args.data, infos)],
        "split": {"seed": args.seed, "patterns": n_split, "test_structures": test_keys,
                  "val_keys": val_keys, "test_fraction": args.test_fraction,
                  "val_fraction": args.val_fraction,
                  "rule": "structure level: test = PDB ids, never in training/validation; "
                          "synthetic particles only in training/validation"},
        "preprocessing": {"input": args.preprocessing, "mask_zeroed": args.use_mask,
                          "target": "|density| / max |density| per pattern"},
        "architecture": {"builder": "spinn.build_spinn", "arch": args.arch,
                         "width": args.width, "input_size": h,
                         "bottleneck": args.bottleneck or max(1, round(128 * args.width)),
                         "params": int(model.count_params()),
                         "forward_gflop_per_pattern": flops / 1e9,
                         "output": "tanh, (S,S,1), centred like the density"},
        "training": {"loss": args.loss, "fn_weight": args.fn_weight,
                     "support_threshold": args.support_threshold,
                     "support_temperature": args.support_temperature,
                     "support_weight": args.support_weight,
                     "twin_invariant": args.twin_invariant,
                     "phase_weight": args.phase_weight, "twin_target": args.twin_target,
                     "canonical_angle": args.canonical_angle, "optimizer": "Adam",
                     "precision": args.precision,
                     # what the trained model computed in (the policy took effect or not)
                     "compute_dtype": {"first_conv": model.layers[1].compute_dtype,
                                       "output": model.layers[-1].compute_dtype},
                     "init_from": None if args.init_from is None else {
                         "path": os.path.basename(args.init_from),
                         "sha256": sha256_file(args.init_from)},
                     "lr": args.lr, "batch": args.batch, "epochs_max": args.epochs,
                     "epochs_run": len(h_.get("loss", [])), "best_epoch": best_epoch,
                     "patience": args.patience, "lr_patience": args.lr_patience,
                     "time_budget_s": args.time_budget,
                     "stopped_by_time_budget": run.stopped_by_budget,
                     "runs": state["runs"],
                     "steps_per_epoch": steps,
                     "threads": args.threads},
        "history": {"initial": state["init"], **h_},
        "final": {"loss": h_["loss"][-1], "val_loss": h_["val_loss"][-1],
                  "best_val_loss": min(h_["val_loss"])},
        "test": test,
        # per training pattern: epochs after the first (which traces the graph), validation
        # included
        "timings_s": {"preprocess": t_cache, "epochs": state["epoch_times"],
                      "per_train_pattern": float(np.median(state["epoch_times"][1:]
                                                           or state["epoch_times"] or [0.0]))
                      / min(steps * args.batch, n_split["train"]),
                      "total": time.time() - t_start},
        "outputs": ["model.keras", "model.h5", "history.csv", "training.json"],
    }
    write_json_atomic(os.path.join(args.out, "training.json"), record)
    if not args.keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"wrote {args.out}/model.keras, model.h5, history.csv, training.json "
          f"({record['timings_s']['total']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

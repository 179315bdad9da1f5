#!/usr/bin/env python3
"""A float64 numpy forward pass of the network family, written from the layer semantics
stated in tests/data/keras/README.md (no TensorFlow): reads an architecture (Keras 3 or
Keras 2 model JSON) and weights by layer name, and runs NHWC batches.

Run as a script it checks those semantics against the committed Keras outputs:

    .venv/bin/python tools/keras/numpy_ref.py      # every fixture, every config

and prints max|numpy - keras| / max|keras| per fixture (float32 Keras vs float64 here,
so about 1e-7..1e-6). For spinn_names/ (weights under Keras default or other names) the
weights of every file are assigned to config.json's layers by keras_layout.match_weights,
the name-or-order rule of `cdiphase convert --arch/--arch-config`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))


def _pads(n_in: int, k: int, s: int, padding: str):
    if padding == "valid":
        return (n_in - k) // s + 1, 0, 0
    out = -(-n_in // s)
    total = max((out - 1) * s + k - n_in, 0)
    return out, total // 2, total - total // 2


def conv2d(x, w, b, strides, padding):
    """x (N,H,W,Ci), w (kh,kw,Ci,Co): TF cross-correlation."""
    n, h, wd, _ = x.shape
    kh, kw, _, co = w.shape
    sh, sw = strides
    oh, ph0, ph1 = _pads(h, kh, sh, padding)
    ow, pw0, pw1 = _pads(wd, kw, sw, padding)
    xp = np.pad(x, ((0, 0), (ph0, ph1), (pw0, pw1), (0, 0)))
    y = np.zeros((n, oh, ow, co))
    for a in range(kh):
        for c in range(kw):
            patch = xp[:, a:a + sh * (oh - 1) + 1:sh, c:c + sw * (ow - 1) + 1:sw, :]
            y += patch @ w[a, c]
    return y + b


def conv2d_transpose(x, w, b, strides, padding):
    """x (N,H,W,Ci), w (kh,kw,Co,Ci): y[o] += x[i] w[a], o = i*s + a - pad_before."""
    n, h, wd, _ = x.shape
    kh, kw, co, _ = w.shape
    sh, sw = strides
    if padding == "valid":
        oh, ow, ph, pw = (h - 1) * sh + kh, (wd - 1) * sw + kw, 0, 0
    else:
        oh, ow = h * sh, wd * sw
        ph, pw = max(kh - sh, 0) // 2, max(kw - sw, 0) // 2
    full = np.zeros((n, (h - 1) * sh + kh, (wd - 1) * sw + kw, co))
    for a in range(kh):
        for c in range(kw):
            full[:, a:a + sh * (h - 1) + 1:sh, c:c + sw * (wd - 1) + 1:sw, :] += \
                x @ w[a, c].T
    return full[:, ph:ph + oh, pw:pw + ow, :] + b


def maxpool(x, pool, strides, padding):
    if padding != "valid":
        raise NotImplementedError("MaxPooling2D padding 'same'")
    n, h, wd, c = x.shape
    (ph, pw), (sh, sw) = pool, strides
    oh, ow = (h - ph) // sh + 1, (wd - pw) // sw + 1
    y = np.full((n, oh, ow, c), -np.inf)
    for a in range(ph):
        for d in range(pw):
            y = np.maximum(y, x[:, a:a + sh * (oh - 1) + 1:sh, d:d + sw * (ow - 1) + 1:sw])
    return y


ACT = {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh, "linear": lambda v: v,
       "sigmoid": lambda v: 1 / (1 + np.exp(-v))}


def _inbound(ly) -> list[str]:
    nodes = ly.get("inbound_nodes") or []
    if not nodes:
        return []
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3
        names = []

        def walk(v):
            if isinstance(v, dict) and v.get("class_name") == "__keras_tensor__":
                names.append(v["config"]["keras_history"][0])
            elif isinstance(v, list):
                for e in v:
                    walk(e)
        walk(node["args"])
        return names
    return [t[0] for t in node]  # Keras 2


def forward(config: dict, weights: dict, x: np.ndarray) -> np.ndarray:
    """config: model JSON (dict); weights: {layer: [kernel, bias]}; x (N,H,W,C)."""
    vals = {}
    cfg = config["config"]
    out_name = cfg["output_layers"]
    out_name = out_name[0] if isinstance(out_name[0], str) else out_name[0][0]
    for ly in cfg["layers"]:
        cls, c, name = ly["class_name"], ly["config"], ly["config"]["name"]
        ins = [vals[i] for i in _inbound(ly)]
        if cls == "InputLayer":
            y = np.asarray(x, np.float64)
        elif cls == "Conv2D":
            k, b = weights[name]
            y = ACT[c["activation"]](conv2d(ins[0], k, b, c["strides"], c["padding"]))
        elif cls == "Conv2DTranspose":
            k, b = weights[name]
            y = ACT[c["activation"]](conv2d_transpose(ins[0], k, b, c["strides"],
                                                      c["padding"]))
        elif cls == "Dense":
            k, b = weights[name]
            y = ACT[c["activation"]](ins[0] @ k + b)
        elif cls == "MaxPooling2D":
            y = maxpool(ins[0], c["pool_size"], c["strides"] or c["pool_size"], c["padding"])
        elif cls == "UpSampling2D":
            y = ins[0].repeat(c["size"][0], axis=1).repeat(c["size"][1], axis=2)
        elif cls == "Flatten":
            y = ins[0].reshape(ins[0].shape[0], -1)
        elif cls == "Reshape":
            y = ins[0].reshape((ins[0].shape[0],) + tuple(c["target_shape"]))
        elif cls == "Concatenate":
            y = np.concatenate(ins, axis=c["axis"])
        elif cls == "Dropout":
            y = ins[0]
        else:
            raise NotImplementedError(f"layer {name}: {cls}")
        vals[name] = y
    return vals[out_name]


def main() -> int:
    import keras_layout
    import spinn

    worst = 0.0
    base = ROOT / "tests" / "data" / "keras"
    for d in sorted(p for p in base.iterdir() if (p / "meta.json").is_file()):
        meta = json.loads((d / "meta.json").read_text())
        x = spinn.preprocess(np.load(d / "input.npy"), meta["preprocessing"])
        ref = np.load(d / "output.npy").astype(np.float64)
        if meta.get("kind") == "names":
            # every weight file under the preset's names, matched by order (and the named
            # one under its own names): keras_layout.match_weights, cdiphase's rule
            files = [f for f in meta["files"] if f.endswith(".h5")]
            cases = [(f"config.json + {f}", "config.json", d / f) for f in files]
            cases.append(("named_config.json + named.weights.h5", "named_config.json",
                          d / "named.weights.h5"))
        else:
            cases = [("config.json", "config.json", d / "model.h5"),
                     ("config_k2.json", "config_k2.json", d / "model_k2.h5")]
        for label, cfg_file, wfile in cases:
            cfg = json.loads((d / cfg_file).read_text())
            if meta.get("kind") == "names":
                wts, _ = keras_layout.match_weights(wfile, cfg)
            else:
                wts = keras_layout.read_legacy_h5(wfile)
            w64 = {k: [a.astype(np.float64) for a in v] for k, v in wts.items()}
            y = forward(cfg, w64, x.astype(np.float64))
            if y.shape != ref.shape:
                print(f"{d.name} {label}: shape {y.shape} != {ref.shape}")
                return 1
            e = float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))
            worst = max(worst, e)
            print(f"{d.name:12s} {label:40s} numpy float64 vs Keras float32: "
                  f"rel err {e:.2e}")
    ok = worst <= 1e-5
    print(("OK" if ok else "FAIL") + f": worst {worst:.2e} (limit 1e-5)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

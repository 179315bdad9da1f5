"""Read Keras weight files with h5py alone, by the rules documented in
tests/data/keras/README.md (the rules the Rust loader implements). Used by
check_fixtures.py to prove those rules on the committed files, and by `dump` to write each
fixture's layout.txt.

Formats:
  legacy .h5 (Keras 2 model.save / save_weights, Keras 3 model.save("x.h5")):
      root = f["model_weights"] if present (full model) else f (save_weights);
      layer order = root.attrs["layer_names"]; for each layer L,
      weights = [root[L][n] for n in root[L].attrs["weight_names"]] (kernel then bias);
      architecture: f.attrs["model_config"] (JSON string; full-model files only).
  Keras 3 .weights.h5 (save_weights, and model.weights.h5 inside .keras):
      groups layers/<key>/vars with datasets "0", "1", ... (kernel, bias); <key> is the
      snake_case class name made unique in model order (conv2d, conv2d_1, ...), NOT the
      layer name; the layer name is the attribute layers/<key>/vars.attrs["name"] (Keras
      3.12), and keras3_keys(config) gives the same mapping from the architecture.
  .keras: an uncompressed (stored) zip of metadata.json, config.json, model.weights.h5.

Matching a file's layers to an architecture (match_weights; the rule of cdiphase convert):
  by name when every layer with weights of the architecture is in the file under its own
  name; else by order, as Keras's own loaders do: Keras 3 files within each class, by the
  number of the group key (conv2d, conv2d_1, ...: model order per class, whatever the
  layer names); legacy files in the model order of layer_names (the layers with weights).
  Counts and shapes must agree.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import h5py
import numpy as np


def _s(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def read_legacy_h5(path) -> dict:
    """{layer name: [arrays]} in layer_names order, layers with weights only."""
    out = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        for ln in root.attrs["layer_names"]:
            ln = _s(ln)
            g = root[ln]
            names = [_s(n) for n in g.attrs["weight_names"]]
            if names:
                out[ln] = [np.asarray(g[n]) for n in names]
    return out


def to_snake_case(name: str) -> str:
    """keras.src.utils.naming.to_snake_case."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name)
    return name.lower()


def keras3_keys(config: dict) -> dict:
    """{group key under layers/: layer name} from a Keras 3 model config (model order)."""
    seen: dict[str, int] = {}
    out = {}
    for ly in config["config"]["layers"]:
        base = to_snake_case(ly["class_name"])
        n = seen.get(base, 0)
        seen[base] = n + 1
        out[base if n == 0 else f"{base}_{n}"] = ly["config"]["name"]
    return out


def _read_keras3(f: h5py.File, config: dict | None) -> dict:
    keys = keras3_keys(config) if config is not None else None
    by_name = {}
    for key in f["layers"]:
        v = f["layers"][key]["vars"]
        name = _s(v.attrs["name"]) if "name" in v.attrs else None
        if keys is not None:
            if key not in keys:
                raise RuntimeError(f"layers/{key}: no such layer in the config")
            if name is not None and name != keys[key]:
                raise RuntimeError(f"layers/{key}: vars name {name!r} but the config "
                                   f"order gives {keys[key]!r}")
            name = keys[key]
        if name is None:
            raise RuntimeError(f"layers/{key}/vars has no name attribute: need the config")
        n = len(v.keys())
        if n:
            by_name[name] = [np.asarray(v[str(i)]) for i in range(n)]
    return by_name


def read_keras3_weights_h5(path, config: dict | None = None) -> dict:
    """{layer name: [arrays]} from a Keras 3 .weights.h5 (order of the HDF5 groups)."""
    with h5py.File(path, "r") as f:
        return _read_keras3(f, config)


WEIGHTED = ("Conv2D", "Conv2DTranspose", "Dense")


def _split_key(key: str):
    """conv2d_transpose_3 -> ("conv2d_transpose", 3); conv2d -> ("conv2d", 0)."""
    m = re.fullmatch(r"(.+)_(\d+)", key)
    return (m.group(1), int(m.group(2))) if m else (key, 0)


def file_layers(path):
    """(layers, keras3, ordered): the layers with weights of a .h5 / .weights.h5 file in
    the order its layout defines, each {"group", "name" (or None), "class" (Keras 3
    group key's class part, else None), "arrays"}."""
    out = []
    with h5py.File(path, "r") as f:
        if "layers" in f and "model_weights" not in f:
            for key in f["layers"]:
                v = f["layers"][key].get("vars")
                if v is None or not len(v):
                    continue
                base, n = _split_key(key)
                name = _s(v.attrs["name"]) if "name" in v.attrs else None
                out.append({"group": f"layers/{key}/vars", "name": name, "class": base,
                            "n": n, "arrays": [np.asarray(v[str(i)])
                                               for i in range(len(v))]})
            out.sort(key=lambda d: (d["class"], d["n"]))
            return out, True, True
        root = f["model_weights"] if "model_weights" in f else f
        ordered = "layer_names" in root.attrs
        names = [_s(n) for n in root.attrs["layer_names"]] if ordered else list(root)
        for ln in names:
            g = root[ln]
            wn = [_s(n) for n in g.attrs.get("weight_names", [])]
            if wn:
                out.append({"group": g.name.lstrip("/"), "name": ln, "class": None,
                            "arrays": [np.asarray(g[n]) for n in wn]})
        return out, False, ordered


def match_weights(path, config: dict):
    """({layer name of config: [arrays]}, "name" or "order"): the file's weights assigned
    to the architecture's layers by the rule in this module's docstring."""
    layers, keras3, ordered = file_layers(path)
    wl = [(ly["config"]["name"], ly["class_name"]) for ly in config["config"]["layers"]
          if ly["class_name"] in WEIGHTED]
    by_name = {d["name"]: d for d in layers if d["name"] is not None}
    if wl and all(n in by_name for n, _ in wl):
        extra = set(by_name) - {n for n, _ in wl}
        if extra or len(by_name) != len(layers):
            raise RuntimeError(f"{path}: weights of layers not in the architecture: {extra}")
        return {n: by_name[n]["arrays"] for n, _ in wl}, "name"
    if keras3:
        spec, got = {}, {}
        for n, c in wl:
            spec.setdefault(to_snake_case(c), []).append(n)
        for d in layers:
            got.setdefault(d["class"], []).append(d)
        counts = ({c: len(v) for c, v in spec.items()}, {c: len(v) for c, v in got.items()})
        if counts[0] != counts[1]:
            raise RuntimeError(f"{path}: per-class counts differ: architecture {counts[0]}, "
                               f"file {counts[1]}")
        pairs = [(n, d) for c, names in spec.items() for n, d in zip(names, got[c])]
    else:
        if not ordered:
            raise RuntimeError(f"{path}: no layer_names: the layer order is unknown")
        if len(layers) != len(wl):
            raise RuntimeError(f"{path}: {len(layers)} layers with weights, the "
                               f"architecture {len(wl)}")
        pairs = [(n, d) for (n, _), d in zip(wl, layers)]
    return {n: d["arrays"] for n, d in pairs}, "order"


def read_keras_zip(path):
    """(config dict, {layer name: [arrays]}) from a .keras file."""
    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read("config.json"))
        buf = io.BytesIO(z.read("model.weights.h5"))
    with h5py.File(buf, "r") as f:
        return config, _read_keras3(f, config)


def dump(path) -> str:
    """Every group, dataset and attribute of an HDF5 file, one per line (attribute values
    cut to 100 characters)."""
    lines = []

    def attrs(o):
        out = []
        for k in o.attrs:
            a = o.attrs.get_id(k)
            info = h5py.check_string_dtype(a.dtype)
            kind = (f"str[{info.encoding}, {'vlen' if info.length is None else info.length}]"
                    if info else str(a.dtype))
            v = o.attrs[k]
            if isinstance(v, np.ndarray):
                v = [_s(x) for x in v.tolist()]
            sv = repr(_s(v) if isinstance(v, bytes) else v)
            if len(sv) > 100:
                sv = sv[:100] + "..."
            out.append(f"      @{k} ({kind}, shape {a.shape}) = {sv}")
        return out

    with h5py.File(path, "r") as f:
        lines.append("/")
        lines += attrs(f)

        def vis(name, o):
            if isinstance(o, h5py.Dataset):
                lines.append(f"  {name}  dataset {o.dtype} {list(o.shape)}")
            else:
                lines.append(f"  {name}/")
            lines.extend(attrs(o))

        f.visititems(vis)
    return "\n".join(lines) + "\n"


def write_layout(d: Path, files=("model.h5", "model_k2.h5", "weights_k2.h5",
                                  "model.weights.h5")) -> None:
    d = Path(d)
    parts = []
    for fn in files:
        parts.append(f"=== {fn}\n" + dump(d / fn))
    if not (d / "model.keras").exists():
        (d / "layout.txt").write_text("\n".join(parts))
        return
    with zipfile.ZipFile(d / "model.keras") as z:
        info = ", ".join(f"{i.filename} ({'stored' if i.compress_type == 0 else 'deflated'}, "
                         f"{i.file_size} B)" for i in z.infolist())
        parts.append(f"=== model.keras (zip: {info})\n"
                     "  model.weights.h5 inside has the layout of model.weights.h5 above\n")
    (d / "layout.txt").write_text("\n".join(parts))

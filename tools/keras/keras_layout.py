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


def write_layout(d: Path) -> None:
    d = Path(d)
    parts = []
    for fn in ("model.h5", "model_k2.h5", "weights_k2.h5", "model.weights.h5"):
        parts.append(f"=== {fn}\n" + dump(d / fn))
    with zipfile.ZipFile(d / "model.keras") as z:
        info = ", ".join(f"{i.filename} ({'stored' if i.compress_type == 0 else 'deflated'}, "
                         f"{i.file_size} B)" for i in z.infolist())
        parts.append(f"=== model.keras (zip: {info})\n"
                     "  model.weights.h5 inside has the layout of model.weights.h5 above\n")
    (d / "layout.txt").write_text("\n".join(parts))

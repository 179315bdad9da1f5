#!/usr/bin/env python3
"""Checks of tools/keras/train.py (needs the Keras venv and a built cdiphase; about 1 min
on 2 cores). Not part of CI, which has no TensorFlow.

    .venv-tf/bin/python tools/keras/test_train.py [--cdiphase target/release/cdiphase]

0. --use-mask: masked pixels are 0 in the cached input and the maximum is taken over the
   measured pixels (train.build_cache against numpy).
1. Bad input exits 2 with a message naming the file and dataset: missing density, density
   shape mismatch, a size that is not a multiple of 8, --input-size mismatch, sizes that
   differ between files, NaN intensities, a file that is not HDF5.
2. The structure-level split: no test id appears among the training/validation keys, and
   no synthetic particle is in the test split.
3. A tiny run (32x32, width 0.125, 2 epochs, mse+support, twin-invariant) twice with the
   same seed: identical histories and identical model.h5 weights; the loss decreases; the
   saved model.keras and model.h5 reload and give the same outputs; a run with another seed
   differs; the numpy float64 forward pass (numpy_ref.py) on the weights read from model.h5
   with h5py alone matches Keras to 1e-5.
4. The twin-invariant loss scores the centrosymmetric twin (i -> (H - i) mod H, 9x14) of
   the target exactly like the target itself; mse+phase's phase term (the output with the
   target's Fourier modulus, against the target) matches float64 numpy and is 0 for an
   output with the target's phases.
5. --init-from: a converted model's weights load; wrong architecture and truncated files
   are refused.
6. --twin-target canonical: the rule's third moment against a float64 loop over the pixels
   (odd, non-square sizes), exactly one twin of each pair kept, the cached targets and
   supports equal the stored ones or their twins as the rule says, and the option is
   refused beside --twin-invariant.
7. --precision mixed_bfloat16: a tiny run from r1's converted weights (--init-from) trains
   in bf16 with the last layer in float32 (its loss falls), training.json records the
   precision and the compute dtypes the model ran in (bf16, the output float32), every
   layer of the saved model.keras is float32, the file converts, and the converted
   model's output equals the saved Keras model's (float32 weights, no bf16 left).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TRAIN = os.path.join(HERE, "train.py")


def run_train(args, expect_rc):
    p = subprocess.run([sys.executable, TRAIN] + args, capture_output=True, text=True)
    if p.returncode != expect_rc:
        sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
        raise AssertionError(f"train.py {args}: exit {p.returncode}, expected {expect_rc}")
    return p


def expect_error(args, *needles):
    p = run_train(args, 2)
    err = p.stderr.strip().splitlines()[-1]
    for nd in needles:
        assert nd in err, f"message {err!r} lacks {nd!r}"
    print(f"ok  exit 2: {err}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cdiphase", default=os.path.join(ROOT, "target/release/cdiphase"))
    a = ap.parse_args()
    if not os.path.exists(a.cdiphase):
        sys.exit(f"{a.cdiphase}: not found (cargo build --release, or --cdiphase PATH)")
    import h5py
    import numpy as np

    pdb = os.path.join(ROOT, "assets", "pdb")
    tmp = tempfile.mkdtemp(prefix="test_train_")

    def sim(name, *extra):
        out = os.path.join(tmp, name)
        subprocess.run([a.cdiphase, "simulate", "-q", "--threads", "1", "-o", out] + list(extra),
                       check=True)
        return out

    good = sim("pdb.cxi", "--pdb", pdb, "--count", "60", "--size", "32", "--seed", "3")
    syn = sim("syn.cxi", "--synthetic", "all", "--count", "40", "--size", "32", "--seed", "4")
    odd = sim("odd.cxi", "--synthetic", "all", "--count", "4", "--size", "36")
    big = sim("big.cxi", "--synthetic", "all", "--count", "4", "--size", "40")

    def variant(name, edit):
        path = os.path.join(tmp, name)
        with h5py.File(good, "r") as src, h5py.File(path, "w") as dst:
            for k in src:
                src.copy(k, dst)
            edit(dst)
        return path

    def drop_density(f):
        del f["entry_1/sample_1/density"]

    def short_density(f):
        d = f["entry_1/sample_1/density"][:-1]
        del f["entry_1/sample_1/density"]
        f["entry_1/sample_1/density"] = d

    def nan_data(f):
        d = f["entry_1/data_1/data"][()]
        d[5, 3, 3] = np.nan
        del f["entry_1/data_1/data"]
        f["entry_1/data_1/data"] = d

    nodens = variant("nodens.cxi", drop_density)
    short = variant("short.cxi", short_density)
    nan = variant("nan.cxi", nan_data)
    junk = os.path.join(tmp, "junk.cxi")
    with open(junk, "w") as f:
        f.write("not hdf5\n")
    out = os.path.join(tmp, "o")

    print("1. bad input")
    expect_error(["--data", nodens, "--out", out], "nodens.cxi", "entry_1/sample_1/density")
    expect_error(["--data", short, "--out", out], "short.cxi", "(59, 32, 32)", "(60, 32, 32)")
    expect_error(["--data", odd, "--out", out], "odd.cxi", "36", "multiple of 8")
    expect_error(["--data", good, "--out", out, "--input-size", "128"], "pdb.cxi", "128")
    expect_error(["--data", good, big, "--out", out], "big.cxi", "40x40", "32x32")
    expect_error(["--data", nan, "--out", out], "nan.cxi", "[5]", "NaN")
    expect_error(["--data", junk, "--out", out], "junk.cxi", "not an HDF5")
    expect_error(["--data", good, "--out", out, "--test-structures", "nosuch"], "nosuch")

    print("mask")
    masked = sim("masked.cxi", "--synthetic", "all", "--count", "6", "--size", "32",
                 "--mask", "beamstop:3,stripe:2")
    sys.path.insert(0, HERE)
    import train

    info = train.inspect_file(masked, True)
    keys = train.pattern_keys(info[3], 0)
    arrs = train.build_cache([masked], [info], {k: "train" for k in keys},
                             os.path.join(tmp, "mcache"), "max", True, 4)
    xm = np.asarray(arrs["train"][0])[..., 0]
    with h5py.File(masked, "r") as f:
        m = f["entry_1/instrument_1/detector_1/mask"][()] != 0
        raw = f["entry_1/data_1/data"][()].astype(np.float64)
    assert m.any() and not m.all()
    assert np.all(xm[:, m] == 0), "masked pixels not zeroed"
    ref = np.where(m, 0.0, raw)
    ref /= ref.reshape(len(ref), -1).max(1)[:, None, None]
    assert np.max(np.abs(xm - ref)) <= 1e-6, "mask-then-max preprocessing differs"
    print(f"ok  --use-mask: {int(m.sum())} masked pixels zeroed, max over measured pixels")

    print("2-3. tiny runs")
    common = ["--data", good, syn, "--arch", "compact", "--width", "0.125", "--epochs", "2",
              "--batch", "8", "--loss", "mse+support", "--twin-invariant", "--threads", "2"]
    r1, r2, r3 = (os.path.join(tmp, n) for n in ("r1", "r2", "r3"))
    run_train(common + ["--out", r1, "--seed", "0"], 0)
    run_train(common + ["--out", r2, "--seed", "0"], 0)
    run_train(common + ["--out", r3, "--seed", "1"], 0)
    recs = [json.load(open(os.path.join(r, "training.json"))) for r in (r1, r2, r3)]
    sp = recs[0]["split"]
    test_ids = set(sp["test_structures"])
    assert test_ids and not any(":" in t for t in test_ids), sp
    assert not test_ids & set(sp["val_keys"]), "a test id is also a validation key"
    with h5py.File(good, "r") as f:
        names = f["entry_1/sample_1/name"][()].decode().split("\n")
    n_test = sum(nm in test_ids for nm in names)
    assert sp["patterns"]["test"] == n_test, (sp["patterns"], n_test)
    assert sp["patterns"]["train"] + sp["patterns"]["val"] == 100 - n_test
    print(f"ok  split: {sp['patterns']}, test ids {sorted(test_ids)}")

    h1, h2, h3 = (r["history"] for r in recs)
    assert h1 == h2, "same seed, different histories"
    assert h1["loss"] != h3["loss"], "different seeds, identical histories"
    assert h1["loss"][-1] < h1["initial"]["loss"], h1
    print(f"ok  deterministic; loss {h1['initial']['loss']:.5f} -> {h1['loss'][-1]:.5f}")
    for key in ("mse", "mse_zero_output", "mse_train_mean_image", "as_stored", "best_of_twin"):
        assert key in recs[0]["test"], recs[0]["test"]

    with h5py.File(os.path.join(r1, "model.h5"), "r") as f1, \
            h5py.File(os.path.join(r2, "model.h5"), "r") as f2:
        def datasets(f):
            out = []
            f["model_weights"].visititems(
                lambda n, o: out.append((n, o[()])) if isinstance(o, h5py.Dataset) else None)
            return out

        w1, w2 = datasets(f1), datasets(f2)
    # 15 layers with weights (6 Conv2D, 2 Dense, 7 Conv2DTranspose), kernel + bias each
    assert len(w1) == 30 and [n for n, _ in w1] == [n for n, _ in w2]
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(w1, w2)), "weights differ"

    import keras

    x = np.random.default_rng(0).random((3, 32, 32, 1), np.float32)
    m_h5 = keras.models.load_model(os.path.join(r1, "model.h5"), compile=False)
    m_k = keras.models.load_model(os.path.join(r1, "model.keras"), compile=False)
    assert np.array_equal(np.asarray(m_h5(x)), np.asarray(m_k(x)))
    m_plain = keras.models.load_model(os.path.join(r1, "model.keras"))
    assert np.array_equal(np.asarray(m_plain(x)), np.asarray(m_k(x)))
    print("ok  model.h5 and model.keras reload, identical weights across same-seed runs")

    # the saved .h5 in the layout the converter reads: numpy float64 forward pass from
    # h5py alone (keras_layout + numpy_ref) against Keras
    sys.path.insert(0, HERE)
    import keras_layout
    import numpy_ref

    with h5py.File(os.path.join(r1, "model.h5"), "r") as f:
        cfg = json.loads(f.attrs["model_config"])
    wts = {k: [v.astype(np.float64) for v in vs]
           for k, vs in keras_layout.read_legacy_h5(os.path.join(r1, "model.h5")).items()}
    ref = numpy_ref.forward(cfg, wts, x.astype(np.float64))
    out = np.asarray(m_h5(x), np.float64)
    e = float(np.max(np.abs(ref - out)) / np.max(np.abs(out)))
    assert e <= 1e-5, e
    print(f"ok  numpy_ref on the saved model.h5 matches Keras: rel err {e:.1e}")

    # the twin of a centred array: index i -> (H - i) mod H; the twin-invariant loss of an
    # output equal to the target's twin is 0, the plain loss is not (odd, non-square sizes)
    import keras

    ops = keras.ops
    rng = np.random.default_rng(5)
    yt = rng.random((2, 9, 14, 1)).astype(np.float32)
    st = (rng.random((2, 9, 14, 1)) > 0.5).astype(np.float32)
    h_, w_ = yt.shape[1:3]
    twin = yt[:, (-np.arange(h_)) % h_][:, :, (-np.arange(w_)) % w_]
    packed = np.concatenate([yt, st], axis=-1)
    for kind in ("mse", "mse+support"):
        lt, _ = train.make_losses(ops, kind, 10.0, 0.1, 0.02, 0.1, True)
        lp, _ = train.make_losses(ops, kind, 10.0, 0.1, 0.02, 0.1, False)
        a_t = float(lt(packed, twin))
        a_p = float(lp(packed, twin))
        b_t = float(lt(packed, yt))
        assert abs(a_t - b_t) <= 1e-6 * max(1.0, abs(b_t)), (kind, a_t, b_t)
        assert a_p > a_t + 1e-3, (kind, a_p, a_t)
    lm, _ = train.make_losses(ops, "mse", 10.0, 0.1, 0.02, 0.1, True)
    assert float(lm(packed, twin)) <= 1e-12
    print("ok  twin-invariant loss: the twin scores as the target itself")

    # mse+phase: the phase term against float64 numpy; an output with the target's phases
    # (the target scaled) adds nothing to the plain MSE
    lph, _ = train.make_losses(ops, "mse+phase", 10.0, 0.1, 0.02, 0.1, False, 2.0)
    lpl, _ = train.make_losses(ops, "mse", 10.0, 0.1, 0.02, 0.1, False)
    o6 = rng.random((2, 9, 14, 1)).astype(np.float32)
    fo = np.fft.fft2(o6[..., 0].astype(np.float64))
    fx = np.fft.fft2(yt[..., 0].astype(np.float64))
    proj = np.real(np.fft.ifft2(np.abs(fx) * fo / np.abs(fo)))
    want = np.mean(((o6 - yt) ** 2).mean(axis=(1, 2, 3))
                   + 2.0 * ((proj - yt[..., 0]) ** 2).mean(axis=(1, 2)))
    got = float(lph(packed, o6))
    assert abs(got - want) <= 1e-4 * want, (got, want)
    scaled = 3.0 * yt
    d = float(lph(packed, scaled)) - float(lpl(packed, scaled))
    assert abs(d) <= 1e-5 * float(lpl(packed, scaled)), d
    print(f"ok  mse+phase: the phase term matches float64 numpy ({got:.6g} against {want:.6g})")

    print("5. --init-from")
    st_path = os.path.join(tmp, "r1.safetensors")
    subprocess.run([a.cdiphase, "convert", os.path.join(r1, "model.keras"), "-o", st_path,
                    "--preprocess", "max"], check=True, capture_output=True)
    from spinn import build_spinn

    fresh = build_spinn(keras, input_size=32, width=0.125, bottleneck=None,
                        name="spinn_compact")
    assert not np.allclose(np.asarray(fresh(x)), np.asarray(m_k(x)), atol=1e-3)
    assert train.init_from(fresh, st_path) == 30
    e = float(np.max(np.abs(np.asarray(fresh(x)) - np.asarray(m_k(x)))))
    assert e <= 1e-6, e  # convert stores f32 unless asked for f16
    # a run started from it: its loss before training is the converted model's own
    r4 = os.path.join(tmp, "r4")
    run_train(common + ["--epochs", "1", "--out", r4, "--seed", "0", "--init-from", st_path], 0)
    init4 = json.load(open(os.path.join(r4, "training.json")))["history"]["initial"]
    best1 = min(h1["val_loss"])  # model.keras holds r1's best validation weights
    assert abs(init4["val_loss"] - best1) <= 1e-4 * best1, (init4, best1)
    # another architecture: refused with the entry and both shapes named
    expect_error(common[:2] + [good, syn, "--arch", "compact", "--width", "0.25", "--epochs", "1",
                 "--out", os.path.join(tmp, "r5"), "--init-from", st_path],
                 "r1.safetensors", "conv2d_1/kernel", "needs")
    # a truncated file: refused with the file named
    cut = os.path.join(tmp, "cut.safetensors")
    with open(st_path, "rb") as f:
        blob = f.read()
    with open(cut, "wb") as f:
        f.write(blob[: len(blob) // 2])
    expect_error(common[:2] + [good, syn, "--arch", "compact", "--width", "0.125",
                 "--epochs", "1", "--out", os.path.join(tmp, "r6"), "--init-from", cut],
                 "cut.safetensors", "does not fit")
    print(f"ok  --init-from: Keras outputs equal the converted model's ({e:.1e}); "
          "wrong architecture and truncated files refused")

    print("6. --twin-target canonical")
    rng = np.random.default_rng(11)
    for (h_, w_) in ((9, 14), (17, 17), (31, 24)):
        y6 = np.zeros((40, h_, w_))
        y6[:, 2:h_ - 2, 2:w_ - 2] = rng.random((40, h_ - 4, w_ - 4)) ** 3
        for ang in (0.0, 150.0):
            fl = train.canonical_flip(y6, ang)
            # float64 loop reference of sum rho |r - c|^2 (r - c).u
            u = (np.cos(np.deg2rad(ang)), np.sin(np.deg2rad(ang)))
            for k in range(0, 40, 7):
                d = y6[k]
                m0 = d.sum()
                ci = sum(i * d[i, j] for i in range(h_) for j in range(w_)) / m0
                cj = sum(j * d[i, j] for i in range(h_) for j in range(w_)) / m0
                v = sum(d[i, j] * ((i - ci) ** 2 + (j - cj) ** 2) * ((j - cj) * u[0] + (i - ci) * u[1])
                        for i in range(h_) for j in range(w_))
                assert fl[k] == (v < 0), (h_, w_, ang, k, v)
            z = y6.copy()
            z[fl] = train.flip_twin(y6[fl])
            assert not train.canonical_flip(z, ang).any()
            assert train.canonical_flip(train.flip_twin(z), ang).all()
            assert 0 < fl.sum() < len(fl)
    info = train.inspect_file(good, True)
    keys = train.pattern_keys(info[3], 0)
    arrs = train.build_cache([good], [info], {k: "train" for k in keys},
                             os.path.join(tmp, "ccache"), "max", False, 16, 150.0)
    yc = np.asarray(arrs["train"][1])[..., 0]
    sc = np.asarray(arrs["train"][2])[..., 0]
    with h5py.File(good, "r") as f:
        d = np.abs(f["entry_1/sample_1/density"][()].astype(np.float64))
        s0 = f["entry_1/sample_1/support"][()] != 0
    d /= d.reshape(len(d), -1).max(1)[:, None, None]
    fl = train.canonical_flip(d, 150.0)
    assert 0 < fl.sum() < len(fl)
    want = np.where(fl[:, None, None], train.flip_twin(d), d)
    assert np.max(np.abs(yc - want)) <= 1e-6
    assert np.array_equal(sc != 0, np.where(fl[:, None, None], train.flip_twin(s0), s0))
    assert not train.canonical_flip(yc, 150.0).any()
    expect_error(["--data", good, "--out", os.path.join(tmp, "o6"), "--twin-target", "canonical",
                  "--twin-invariant"], "canonical", "twin-invariant")
    print(f"ok  canonical twin: {int(fl.sum())} of {len(fl)} cached targets and supports "
          "replaced by their twins, as the float64 rule says")
    print("7. --precision mixed_bfloat16")
    r7 = os.path.join(tmp, "r7")
    run_train(common + ["--epochs", "2", "--out", r7, "--seed", "0", "--init-from", st_path,
                        "--precision", "mixed_bfloat16"], 0)
    rec7 = json.load(open(os.path.join(r7, "training.json")))
    assert rec7["training"]["precision"] == "mixed_bfloat16", rec7["training"]
    assert rec7["training"]["compute_dtype"] == {"first_conv": "bfloat16",
                                                 "output": "float32"}, rec7["training"]
    h7 = rec7["history"]
    assert all(np.isfinite(h7["loss"])) and min(h7["loss"]) < h7["initial"]["loss"], h7
    import zipfile

    with zipfile.ZipFile(os.path.join(r7, "model.keras")) as z:
        cfg = json.loads(z.read("config.json"))
    pols = {lay["config"].get("dtype", {}).get("config", {}).get("name", "float32")
            for lay in cfg["config"]["layers"] if lay["class_name"] != "InputLayer"}
    assert pols == {"float32"}, pols
    keras.mixed_precision.set_global_policy("float32")
    m7 = keras.models.load_model(os.path.join(r7, "model.keras"), compile=False)
    st7 = os.path.join(tmp, "r7.safetensors")
    subprocess.run([a.cdiphase, "convert", os.path.join(r7, "model.keras"), "-o", st7,
                    "--preprocess", "max"], check=True, capture_output=True)
    fresh7 = build_spinn(keras, input_size=32, width=0.125, bottleneck=None,
                         name="spinn_compact")
    assert train.init_from(fresh7, st7) == 30
    out7 = np.asarray(m7(x))
    assert out7.dtype == np.float32
    e7 = float(np.max(np.abs(np.asarray(fresh7(x)) - out7)))
    assert e7 <= 1e-6, e7
    print(f"ok  mixed_bfloat16: loss {h7['initial']['loss']:.5f} -> {min(h7['loss']):.5f}, "
          f"saved float32, converted output equal ({e7:.1e})")
    print("all checks passed")


if __name__ == "__main__":
    main()

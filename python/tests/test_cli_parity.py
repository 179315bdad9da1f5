"""The package runs the library the CLI runs: on the same inputs and seed the results are
identical, bit for bit, on the CPU."""

import numpy as np
import pytest

import cdiphase
from conftest import ROOT, assert_same, run_cli

SCHEDULE = "30*(10*HIO + 5*ER) + 20*ER"


def test_phase_is_identical_to_the_cli(cli, small, tmp_path):
    data = tmp_path / "in.cxi"
    small.to_cxi(data)
    out = tmp_path / "cli.cxi"
    run_cli(
        cli, "phase", str(data), "-o", str(out), "--algorithm", SCHEDULE, "--beta", "0.85",
        "--support", "autocorrelation:0.05", "--shrinkwrap", "sigma=1,threshold=0.1,every=50",
        "--constraint", "positive", "--starts", "3", "--seed", "11", "--device", "cpu",
        "--threads", "2", "--quiet",
    )
    ref = cdiphase.read_cxi(out)
    res = cdiphase.phase(
        small.patterns, small.mask, schedule=SCHEDULE, beta=0.85,
        support="autocorrelation:0.05", shrinkwrap="sigma=1,threshold=0.1,every=50",
        constraint="positive", starts=3, seed=11, device="cpu", threads=2, progress=False,
    )
    assert_same(res.objects, ref["objects"], "objects")
    assert_same(res.supports, ref["supports"], "supports")
    assert_same(res.fourier_error, ref["fourier_error"], "fourier_error")
    assert_same(res.final_fourier_error, ref["final_fourier_error"], "final_fourier_error")
    # and the package's own CXI writer gives the same file content back
    mine = tmp_path / "py.cxi"
    res.to_cxi(mine)
    back = cdiphase.read_cxi(mine)
    for k in ("objects", "supports", "fourier_error", "final_fourier_error"):
        assert_same(back[k], ref[k], k)


def test_phase_with_given_support_and_init_is_identical_to_the_cli(cli, small, tmp_path):
    data = tmp_path / "in.cxi"
    small.to_cxi(data)
    sup = tmp_path / "sup.npy"
    np.save(sup, small.support)
    init = tmp_path / "init.npy"
    np.save(init, small.density.astype(np.complex64))
    out = tmp_path / "cli.cxi"
    run_cli(
        cli, "phase", str(data), "-o", str(out), "--algorithm", "50*ER",
        "--support", str(sup), "--init", str(init), "--init-noise", "0.2", "--starts", "2",
        "--seed", "4", "--device", "cpu", "--threads", "1", "--keep-all", "--quiet",
    )
    ref = cdiphase.read_cxi(out)
    res = cdiphase.phase(
        small.patterns, small.mask, schedule="50*ER", support=small.support,
        init=small.density, init_noise=0.2, constraint="none", starts=2, seed=4,
        device="cpu", threads=1, keep_all=True, progress=False,
    )
    assert_same(res.objects, ref["objects"], "objects")
    assert_same(res.supports, ref["supports"], "supports")
    assert res.all_objects.shape == (3, 2, 32, 32)
    assert_same(res.all_objects, ref["all_objects"], "all_objects")
    assert_same(res.all_supports, ref["all_supports"], "all_supports")
    assert_same(res.all_fourier_error, ref["all_fourier_error"], "all_fourier_error")


def test_predict_is_identical_to_the_cli(cli, paper_size, tmp_path):
    data = tmp_path / "in.cxi"
    paper_size.to_cxi(data)
    out = tmp_path / "cli.cxi"
    run_cli(cli, "predict", str(data), "-o", str(out), "--device", "cpu", "--threads", "2",
            "--batch", "1", "--quiet")
    ref = cdiphase.read_cxi(out)
    model = cdiphase.Model.load()
    assert model.input_shape == (128, 128, 1)
    pred = model.predict(paper_size.patterns, paper_size.mask, device="cpu", threads=2,
                         batch=1, progress=False)
    assert_same(pred.output, ref["output"], "output")
    assert_same(pred.support, ref["supports"], "support")
    mine = tmp_path / "py.cxi"
    pred.to_cxi(mine)
    back = cdiphase.read_cxi(mine)
    assert_same(back["output"], ref["output"], "output written by the package")


def test_simulate_is_identical_to_the_cli(cli, tmp_path):
    out = tmp_path / "sim.cxi"
    run_cli(cli, "simulate", "--synthetic", "ring,compact", "--count", "3", "--size", "48",
            "--photons", "1e6", "--noise", "poisson", "--mask", "stripe:2", "--seed", "9",
            "-o", str(out), "--quiet")
    ref = cdiphase.read_cxi(out)
    sim = cdiphase.simulate(synthetic="ring,compact", count=3, size=48, photons=1e6,
                            noise="poisson", mask="stripe:2", seed=9, progress=False)
    assert_same(sim.patterns, ref["patterns"], "patterns")
    assert_same(sim.density, ref["density"], "density")
    assert_same(sim.support, ref["truth_support"], "support")
    assert_same(sim.mask.reshape(ref["mask"].shape), ref["mask"], "mask")


def test_evaluate_arrays_agree_with_files(small, tmp_path):
    res = cdiphase.phase(small.patterns, small.mask, schedule=SCHEDULE, starts=2, seed=1,
                         device="cpu", keep_all=True, progress=False)
    truth = tmp_path / "truth.cxi"
    small.to_cxi(truth)
    rec = tmp_path / "rec.cxi"
    res.to_cxi(rec)
    from_files = cdiphase.evaluate(truth, rec)
    from_arrays = cdiphase.evaluate(small, res)
    a = from_files["inputs"][0]["per_pattern"]
    b = from_arrays["inputs"][0]["per_pattern"]
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert x["support"]["false_positives"] == y["support"]["false_positives"]
        assert x["support"]["false_negatives"] == y["support"]["false_negatives"]
        assert abs(x["density"]["error"] - y["density"]["error"]) < 1e-9


def test_convert_is_identical_to_the_cli(cli, tmp_path):
    keras = ROOT / "tests" / "data" / "keras" / "spinn_small"
    out_cli = tmp_path / "cli.safetensors"
    run_cli(cli, "convert", str(keras / "weights_k2.h5"), "--arch", "spinn:32:0.125",
            "--preprocess", "log1p-max", "--dtype", "f16", "-o", str(out_cli))
    out_py = tmp_path / "py.safetensors"
    m = cdiphase.convert(keras / "weights_k2.h5", out_py, arch="spinn:32:0.125",
                         preprocess="log1p-max", dtype="f16")
    assert m.input_shape == (32, 32, 1) and m.label == str(out_py)
    assert m.preprocess.lower().startswith("log1p")
    # the same weights (the files' JSON metadata order may differ): the same outputs
    x = np.load(keras / "input.npy")
    a = m.predict(x, device="cpu", progress=False)
    b = cdiphase.Model.load(out_cli).predict(x, device="cpu", progress=False)
    assert a.output.shape == (3, 32, 32)
    assert_same(a.output, b.output, "output")
    with pytest.raises(OSError, match="wrong architecture"):
        cdiphase.convert(keras.parent / "unet" / "model.weights.h5", tmp_path / "x", arch="spinn:32")


def test_simulate_from_structures_is_identical_to_the_cli(cli, tmp_path):
    pdbs = [ROOT / "assets" / "pdb" / "3fhkA.pdb.gz", ROOT / "assets" / "pdb" / "1osm.pdb.gz"]
    out = tmp_path / "sim.cxi"
    run_cli(cli, "simulate", "--pdb", *map(str, pdbs), "--count", "3", "--size", "64",
            "--atoms", "cromer-mann", "--centre", "bbox", "--ideal-support", "threshold:0.05",
            "--seed", "3", "-o", str(out), "--quiet")
    ref = cdiphase.read_cxi(out)
    sim = cdiphase.simulate(pdbs, count=3, size=64, atoms="cromer-mann", centre="bbox",
                            ideal_support="threshold:0.05", seed=3, progress=False)
    assert_same(sim.patterns, ref["patterns"], "patterns")
    assert_same(sim.density, ref["density"], "density")
    assert_same(sim.support, ref["truth_support"], "support")
    assert len(set(sim.names)) == 2  # cycling over the two structures


def _image_datasets(path):
    """Every dataset under entry_1/image_1 but the process record (configuration, version)."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and not name.startswith("process_1"):
                out[name] = obj[()]
        f["entry_1/image_1"].visititems(visit)
    return out


def test_default_recipe_selection_and_merits_are_the_clis(cli, small, tmp_path):
    # no schedule, no shrinkwrap: the measured recipe of `cdiphase phase`, with positivity;
    # LLK selection with held-out pixels: every figure of merit equal to the CLI's file
    data = tmp_path / "in.cxi"
    small.to_cxi(data)
    out = tmp_path / "cli.cxi"
    run_cli(
        cli, "phase", str(data), "-o", str(out), "--starts", "3", "--seed", "7",
        "--select", "llk", "--free-fraction", "0.1", "--support-fraction", "0.001:0.6",
        "--device", "cpu", "--threads", "2", "--quiet",
    )
    res = cdiphase.phase(
        small.patterns, small.mask, starts=3, seed=7, select="llk", free_fraction=0.1,
        support_fraction=(0.001, 0.6), device="cpu", threads=2, progress=False,
    )
    assert res.configuration["schedule"] == cdiphase.DEFAULT_SCHEDULE
    assert res.configuration["constraint"] == "Positive"
    assert res.selection == {"criterion": "Llk", "min_fraction": 0.001, "max_fraction": 0.6}
    ref = _image_datasets(out)
    assert_same(res.objects, ref["data"], "objects")
    assert_same(res.best_start, ref["best_start"], "best_start")
    for name in (
        "llk", "free_llk", "all_llk", "all_free_llk", "final_llk", "final_free_llk",
        "final_support_fraction", "all_final_llk", "all_final_free_llk",
        "all_final_support_fraction", "all_threshold_factor", "all_support_guard_events",
        "outside_energy",
    ):
        assert_same(getattr(res, name), ref[name], name)
    # held-out pixels exist, so the free LLK is a number; the pick is the lowest admissible LLK
    assert np.all(np.isfinite(res.final_free_llk))
    for p in range(len(res)):
        ok = [s for s in range(3) if 0.001 <= res.all_final_support_fraction[p, s] <= 0.6]
        pool = ok or list(range(3))
        assert res.best_start[p] == min(pool, key=lambda s: (res.all_final_llk[p, s], s))
    # the package's writer gives the CLI's file, figures of merit included
    mine = tmp_path / "py.cxi"
    res.to_cxi(mine)
    back = _image_datasets(mine)
    assert sorted(back) == sorted(ref)
    for name, v in ref.items():
        if isinstance(v, np.ndarray):
            assert_same(back[name], v, name)
        else:
            assert back[name] == v, name


def test_an_explicit_schedule_runs_without_shrinkwrap(small):
    res = cdiphase.phase(small.patterns, small.mask, schedule="20*ER", starts=1,
                         device="cpu", progress=False)
    assert res.configuration["schedule"] == "20*ER"
    assert res.configuration["shrinkwrap"] is None
    assert res.configuration["constraint"] == "Positive"  # the package's default
    assert np.all(np.isnan(res.free_llk))  # no held-out pixels
    assert np.all(res.all_support_guard_events == 0)


def _datasets(path, group):
    """Every dataset under `group` but the process record."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and not name.startswith("process_1"):
                out[name] = obj[()]
        f[group].visititems(visit)
    return out


def _same_nan(a, b, what):
    assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
    assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), f"{what} differs"


# image_3 (the merge) under the package's names
_MERGED = {
    "data": "merged_objects", "support": "merged_supports", "modes": "merged_modes",
    "mode_weights": "merged_mode_weights", "starts": "merged_starts",
    "final_fourier_error": "merged_final_fourier_error", "final_llk": "merged_final_llk",
}


@pytest.mark.parametrize("extra", [
    # culling, the missing centre held at zero, restarts and the merge of the survivors
    {"cull": "at=40,keep=2", "missing_centre": "free-after:30",
     "restart": "guard=1000,every=30,until=30", "merge": 2},
    # a GA population, the interpolated centre, damping comes after in its own run
    {"population": "generations=1,keep=2,every=50", "missing_centre": "interpolate:30",
     "merge": 3},
    {"missing_centre": "damp:0.4,until=60"},
])
def test_strategy_arguments_are_the_clis(cli, small, tmp_path, extra):
    # merge, population, restart, cull and missing_centre are parsed and run as
    # `cdiphase phase` parses and runs them: every dataset of image_1 and image_3 the same
    data = tmp_path / "in.cxi"
    small.to_cxi(data)
    out = tmp_path / "cli.cxi"
    flags = []
    for k, v in extra.items():
        flags += ["--" + k.replace("_", "-"), str(v)]
    run_cli(
        cli, "phase", str(data), "-o", str(out), "--algorithm", "HIO**60 + ER**30",
        "--shrinkwrap", "sigma=1,threshold=0.1,every=20,stop=80", "--constraint", "positive",
        "--starts", "4", "--seed", "5", "--device", "cpu", "--threads", "2", "--quiet", *flags,
    )
    res = cdiphase.phase(
        small.patterns, small.mask, schedule="HIO**60 + ER**30",
        shrinkwrap="sigma=1,threshold=0.1,every=20,stop=80", constraint="positive", starts=4,
        seed=5, device="cpu", threads=2, progress=False, **extra,
    )
    ref = _datasets(out, "entry_1/image_1")
    _same_nan(res.objects, ref["data"], "objects")
    for name, v in ref.items():
        if isinstance(v, np.ndarray) and hasattr(res, name) and name != "data":
            got = getattr(res, name)
            if got is not None:
                _same_nan(np.asarray(got), v, name)
    if "cull" in extra:
        assert res.all_culled_at is not None
        assert np.count_nonzero(res.all_culled_at == 40) == 2 * len(res)
        assert "all_culled_at" in ref
    if "merge" in extra:
        ref3 = _datasets(out, "entry_1/image_3")
        for name, attr in _MERGED.items():
            _same_nan(getattr(res, attr), ref3[name], attr)
    else:
        assert res.merged_objects is None
    # the package's writer gives the CLI's file back
    mine = tmp_path / "py.cxi"
    res.to_cxi(mine)
    for group in ["entry_1/image_1"] + (["entry_1/image_3"] if "merge" in extra else []):
        back, want = _datasets(mine, group), _datasets(out, group)
        assert sorted(back) == sorted(want), group
        for name, v in want.items():
            if isinstance(v, np.ndarray):
                _same_nan(back[name], v, f"{group}/{name}")
            else:
                assert back[name] == v, name


def test_bad_strategy_arguments_raise_value_errors(small):
    for kw, msg in [
        ({"cull": "at=10"}, "keep=N"),
        ({"missing_centre": "zero"}, "expected free"),
        ({"population": "generations=1"}, "keep=N"),
        ({"merge": 9}, "--merge 9"),
    ]:
        with pytest.raises(ValueError, match=msg):
            cdiphase.phase(small.patterns, small.mask, schedule="20*ER", starts=4,
                           device="cpu", progress=False, **kw)

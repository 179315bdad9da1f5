"""Shared fixtures of the Python package's tests: the release binary of the same checkout
(for the CLI comparisons) and small simulated data sets."""

import os
import pathlib
import subprocess

import numpy as np
import pytest

import cdiphase

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cli() -> pathlib.Path:
    """The `cdiphase` binary: CDIPHASE_BIN, else target/release/cdiphase of this checkout
    (scripts/test.sh builds it before running pytest)."""
    env = os.environ.get("CDIPHASE_BIN")
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = pathlib.Path(env) if env else target / "release" / "cdiphase"
    if not path.is_file():
        pytest.fail(f"{path} not found: run `cargo build --release` first (scripts/test.sh does)")
    return path


def run_cli(cli: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([str(cli), *args], capture_output=True, text=True)
    assert r.returncode == 0, f"cdiphase {' '.join(args)} failed:\n{r.stderr}"
    return r


@pytest.fixture(scope="session")
def small() -> cdiphase.Simulation:
    """Three noise-free 32x32 patterns of synthetic compact particles with a beamstop."""
    return cdiphase.simulate(
        synthetic="compact", count=3, size=32, mask="beamstop:1", seed=5, progress=False
    )


@pytest.fixture(scope="session")
def paper_size() -> cdiphase.Simulation:
    """Two 128x128 patterns (the bundled model's input size)."""
    return cdiphase.simulate(synthetic="compact", count=2, size=128, seed=2, progress=False)


def assert_same(a: np.ndarray, b: np.ndarray, what: str) -> None:
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    assert a.dtype == b.dtype, f"{what}: dtypes {a.dtype} vs {b.dtype}"
    assert np.array_equal(a, b), f"{what}: max difference {np.max(np.abs(a - b))}"

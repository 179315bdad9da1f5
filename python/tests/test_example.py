"""examples/python_quickstart.py runs start to end and writes its figure."""

import os
import subprocess
import sys

from conftest import ROOT


def test_quickstart_example_runs(tmp_path):
    png = tmp_path / "quickstart.png"
    env = dict(os.environ, MPLBACKEND="Agg", MPLCONFIGDIR=str(tmp_path / "mpl"))
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python_quickstart.py"), str(png)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "wrote" in r.stdout and "PhaseResult(4 patterns of 128x128" in r.stdout
    assert png.stat().st_size > 20_000
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

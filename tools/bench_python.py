"""Call overhead and memory of the Python package against the CLI (BENCHMARKS.md, "Python
package: call overhead and memory", issue 17).

    .venv/bin/python tools/bench_python.py [--rounds 3] [--patterns 64] [--workdir DIR]

Simulates one data set with the CLI, then runs `phase` and `predict` on it through the CLI
and through Python (`read_cxi` -> call -> `to_cxi`, the same work, file to file), each as a
fresh process, alternating, `--rounds` times; reports the median wall time and peak RSS of
each process (os.wait4), and, inside the Python process, the time of the call alone next
to the library's own compute time (the call overhead: array conversion, thread hand-off,
result wrapping). Needs target/release/cdiphase and the package installed in this Python.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLI = ROOT / "target" / "release" / "cdiphase"
SCHEDULE = "50*(5*HIO + 5*ER)"

PY_PHASE = """
import json, sys, time, cdiphase
d = cdiphase.read_cxi(sys.argv[1])
t = time.perf_counter()
r = cdiphase.phase(d["patterns"], d.get("mask"), schedule=sys.argv[3], starts=2,
                   constraint="none", seed=0, device="cpu", progress=False)
call = time.perf_counter() - t
r.to_cxi(sys.argv[2])
print(json.dumps({"call": call, "compute": r.seconds}))
"""

PY_PREDICT = """
import json, sys, time, cdiphase
d = cdiphase.read_cxi(sys.argv[1])
m = cdiphase.Model.load()
t = time.perf_counter()
p = m.predict(d["patterns"], d.get("mask"), device="cpu", progress=False)
call = time.perf_counter() - t
p.to_cxi(sys.argv[2])
print(json.dumps({"call": call}))
"""

PY_IMPORT = "import cdiphase, numpy"


def run(cmd):
    """Wall seconds, peak RSS (MiB) and stdout of one process."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    if status != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{err.decode()}")
    return wall, ru.ru_maxrss / 1024.0, out.decode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--patterns", type=int, default=64)
    ap.add_argument("--workdir")
    a = ap.parse_args()
    wd = pathlib.Path(a.workdir or tempfile.mkdtemp(prefix="cdiphase-pybench-"))
    wd.mkdir(parents=True, exist_ok=True)
    data = wd / "data.cxi"
    subprocess.run([str(CLI), "simulate", "--synthetic", "compact", "--count", str(a.patterns),
                    "--size", "128", "--photons", "1e7", "--noise", "poisson", "--mask",
                    "beamstop:2", "--seed", "1", "-o", str(data), "--quiet"], check=True)
    py = sys.executable
    jobs = {
        "phase cli": [str(CLI), "phase", str(data), "-o", str(wd / "p_cli.cxi"), "--algorithm",
                      SCHEDULE, "--starts", "2", "--seed", "0", "--device", "cpu", "--quiet"],
        "phase python": [py, "-c", PY_PHASE, str(data), str(wd / "p_py.cxi"), SCHEDULE],
        "predict cli": [str(CLI), "predict", str(data), "-o", str(wd / "n_cli.cxi"),
                        "--device", "cpu", "--quiet"],
        "predict python": [py, "-c", PY_PREDICT, str(data), str(wd / "n_py.cxi")],
        "import only": [py, "-c", PY_IMPORT],
    }
    res = {k: [] for k in jobs}
    for _ in range(a.rounds):
        for k, cmd in jobs.items():
            res[k].append(run(cmd))
    print(f"{a.patterns} patterns of 128x128; phase '{SCHEDULE}' x 2 starts; predict: the "
          f"bundled model; {a.rounds} rounds, medians")
    print(f"{'job':16} {'wall s':>8} {'(min)':>7} {'peak RSS MiB':>13}  inside the process")
    for k, runs in res.items():
        wall = statistics.median(r[0] for r in runs)
        least = min(r[0] for r in runs)
        rss = statistics.median(r[1] for r in runs)
        extra = ""
        if runs[0][2].strip().startswith("{"):
            inner = [json.loads(r[2]) for r in runs]
            call = statistics.median(i["call"] for i in inner)
            extra = f"call {call:.3f} s (min {min(i['call'] for i in inner):.3f})"
            if "compute" in inner[0]:
                comp = statistics.median(i["compute"] for i in inner)
                extra += f", library compute {comp:.3f} s, overhead {call - comp:.3f} s"
        print(f"{k:16} {wall:8.2f} {least:7.2f} {rss:13.1f}  {extra}")


if __name__ == "__main__":
    main()

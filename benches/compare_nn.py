#!/usr/bin/env python3
"""Network inference at full size: cdiphase against TensorFlow and ONNX Runtime, one run.

The paper's encoder-decoder (19,721,217 parameters, tools/keras/spinn.py), seeded random
weights, f32, batch 64 of 128x128x1, 2 threads. Each peer runs in its own child process
(so its peak RSS is its own):

  tf       Keras 3 model under tf.function, jit_compile=False; TF intra-op threads = T,
           inter-op = 1
  tf-xla   the same with jit_compile=True (XLA CPU); reported as failed if XLA can't
  tf-bf16  tf with ONEDNN_DEFAULT_FPMATH_MODE=BF16: oneDNN may compute f32 convolutions
           and matmuls in bf16 (AMX / avx512_bf16 where the CPU has them); not an f32
           figure, listed for comparison with cdiphase --fast, with its error against tf
  ort      ONNX Runtime CPU, intra_op_num_threads = T, inter_op = 1, sequential,
           ORT_ENABLE_ALL; the model converted from the same Keras model (same weights)
           with tf2onnx (opset 17)
  cdiphase target/release/cdiphase bench network --arch spinn --batch B --threads T
           --iterations I --json, and the same with --fast

Per peer: W warm-up batches (not timed), then R timed batches; the median gives images/s
and ms/batch. Peak RSS: ru_maxrss of the child; bytes/image: (peak RSS - RSS after the
model is loaded and the input allocated) / batch. Peers' outputs are compared with the tf
one (max|y - y_tf| / max|y_tf|), since they run the same weights on the same input.
cdiphase rows use its median batch too (`ms_per_batch_median` of its JSON; its own
images_per_s, of the best batch, is kept as images_per_s_best in the JSON output).
"CPU s/batch": user+sys time of all the peer's threads per timed batch (median); near
threads x wall time when the peer had its cores to itself, well under it on a loaded
machine. Ratios ("vs fastest f32 peer"): images/s over the fastest f32 peer (tf, tf-xla, ort) of the
same run. With --rounds R > 1 the script also prints every round's images/s and the paired
ratios: each round's cdiphase figure over the fastest f32 peer of that same round, and
their median (steadier than the ratio of medians where the machine's speed drifts).

Whole process (--whole N, e.g. 128): what a user waits for. N patterns of 128x128 in a CXI
file, the same Keras model saved as spinn.keras (converted by `cdiphase convert` to
spinn.safetensors, and by tf2onnx to spinn.onnx), and each peer run as a fresh process
that starts, loads the model, reads the patterns (h5py for the Python peers), preprocesses
(x / max), infers in batches of B and writes densities and supports (output > 0.1 x max)
to an HDF5 file (temporary name, then renamed):

  tf-whole        python: import TF + Keras, keras.models.load_model, tf.function
  ort-whole       python: import onnxruntime, InferenceSession
  predict         cdiphase predict patterns.cxi --model spinn.safetensors -o out.cxi
                  --batch B --threads T --device cpu
  predict --fast  the same with --fast (the fastest opt-in path this CPU has; the mode
                  predict reports is recorded)

Wall time from spawn to exit (parent's clock), peak RSS from wait4. Python children also
report their own phases (import, load, read, infer, write). Ratios: whole-process images/s
over TF's compute-only images/s of the same round (the issue's target), and over TF's
whole process. Agreement: the share of support pixels of `predict --fast` equal to
`predict`'s, and of `predict` equal to tf-whole's.

If the cdiphase binary or its `bench network` verb is missing, the peers are still
reported and cdiphase is listed as missing; the exit status is then non-zero only with
--require-cdiphase.

Usage:
    .venv-tf/bin/python benches/compare_nn.py [--batch 64] [--threads 2] [--repeat 5]
        [--warmup 2] [--iterations 5] [--rounds 1] [--peers tf,tf-xla,ort,tf-bf16] [--no-cdiphase]
        [--require-cdiphase] [--cdiphase PATH] [--quiet-load L] [--whole N] [--markdown FILE]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools" / "keras"))
DEFAULT_BIN = ROOT / "target" / "release" / "cdiphase"
SEED = 11


# ---------------------------------------------------------------- child side

def _rss_now() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _input(batch: int):
    import spinn

    raw = spinn.diffraction_patterns(batch, 128, 128, seed=SEED + 1)
    return spinn.preprocess(raw, "max")


def _keras_model(threads: int):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    import spinn

    keras.utils.set_random_seed(SEED)
    m = spinn.build_spinn(keras)
    assert m.count_params() == spinn.SPINN_PARAMS
    m.set_weights(spinn.random_weights(m, seed=SEED))
    return tf, keras, m


def _ort_session(work: Path, threads: int):
    """ONNX Runtime on the CPU, T intra-op threads, sequential, every graph optimisation."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(work / "spinn.onnx"), so, providers=["CPUExecutionProvider"])


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _time_loop(fn, warmup: int, repeat: int):
    """(wall seconds, CPU seconds of all threads) per timed call."""
    for _ in range(warmup):
        fn()
    ts, cs = [], []
    for _ in range(repeat):
        c0 = _cpu_s()
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
        cs.append(_cpu_s() - c0)
    return ts, cs


def _write_h5_atomic(path: Path, y, threshold: float = 0.1) -> None:
    """Densities (N,H,W) and supports (output > threshold x per-pattern max), as predict."""
    import h5py
    import numpy as np

    mx = y.reshape(len(y), -1).max(axis=1)[:, None, None]
    sup = ((y > threshold * mx) & (mx > 0)).astype(np.uint8)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f["entry_1/image_1/data"] = y
        f["entry_1/image_1/support"] = sup
    os.replace(tmp, path)


def whole_child(kind: str, batch: int, threads: int, work: Path) -> dict:
    """One whole-process run (see the module docstring): load, read, infer, write."""
    t0 = time.perf_counter()
    phases: dict = {}
    import h5py
    import numpy as np

    if kind == "tf-whole":
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import keras
    else:
        import onnxruntime as ort
    phases["import_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    if kind == "tf-whole":
        m = keras.models.load_model(work / "spinn.keras", compile=False)
        fn = tf.function(lambda v: m(v, training=False))

        def infer(xb):
            return fn(tf.constant(xb)).numpy()
    else:
        sess = _ort_session(work, threads)
        iname = sess.get_inputs()[0].name

        def infer(xb):
            return sess.run(None, {iname: xb})[0]
    phases["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with h5py.File(work / "patterns.cxi", "r") as f:
        raw = f["entry_1/data_1/data"][...]
    mx = raw.reshape(len(raw), -1).max(axis=1)[:, None, None]
    x = (raw / np.where(mx > 0, mx, 1)).astype(np.float32)[..., None]
    phases["read_s"] = time.perf_counter() - t
    t = time.perf_counter()
    y = np.concatenate([infer(x[i:i + batch]) for i in range(0, len(x), batch)])[..., 0]
    phases["infer_s"] = time.perf_counter() - t
    t = time.perf_counter()
    _write_h5_atomic(work / f"{kind}.h5", y)
    phases["write_s"] = time.perf_counter() - t
    return {"peer": kind, "phases": phases, "patterns": len(x)}


def child(kind: str, batch: int, threads: int, warmup: int, repeat: int, work: Path) -> dict:
    import numpy as np

    if kind in ("tf-whole", "ort-whole"):
        return whole_child(kind, batch, threads, work)
    if kind == "export-keras":
        tf, keras, m = _keras_model(threads)
        m.save(work / "spinn.keras")
        return {"peer": kind}

    out: dict = {"peer": kind, "batch": batch, "threads": threads, "warmup": warmup,
                 "repeat": repeat}
    if kind in ("tf", "tf-xla", "tf-bf16", "export-onnx"):
        tf, keras, m = _keras_model(threads)
        out["versions"] = {"tensorflow": tf.__version__, "keras": keras.__version__}
        x = _input(batch)
        if kind == "export-onnx":
            import tf2onnx

            spec = (tf.TensorSpec((None, 128, 128, 1), tf.float32, name="input"),)
            fn = tf.function(lambda t: m(t, training=False))
            t0 = time.perf_counter()
            tf2onnx.convert.from_function(fn, input_signature=spec, opset=17,
                                          output_path=str(work / "spinn.onnx"))
            out["convert_s"] = time.perf_counter() - t0
            out["versions"]["tf2onnx"] = tf2onnx.__version__
            return out
        jit = kind == "tf-xla"
        fn = tf.function(lambda t: m(t, training=False), jit_compile=jit)
        xt = tf.constant(x)
        base = _rss_now()

        def step():
            return fn(xt).numpy()
        y = step()  # trace/compile (counted as warm-up)
        ts, cs = _time_loop(step, max(0, warmup - 1), repeat)
        np.save(work / f"{kind}.npy", y[:4])
        if kind == "tf-bf16":
            out["mode"] = "bf16 (oneDNN fpmath)"
    elif kind == "ort":
        import onnxruntime as ort

        sess = _ort_session(work, threads)
        out["versions"] = {"onnxruntime": ort.__version__}
        iname = sess.get_inputs()[0].name
        x = _input(batch)
        base = _rss_now()

        def step():
            return sess.run(None, {iname: x})[0]
        y = step()
        ts, cs = _time_loop(step, max(0, warmup - 1), repeat)
        np.save(work / f"{kind}.npy", y[:4])
    else:
        raise ValueError(f"unknown peer {kind!r}")
    med = statistics.median(ts)
    cmed = statistics.median(cs)
    peak = _peak_rss()
    out.update({"times_s": ts, "cpu_s": cs, "cpu_s_per_batch": cmed,
                "images_per_cpu_s": batch / cmed if cmed > 0 else None,
                "ms_per_batch": med * 1e3, "images_per_s": batch / med,
                "peak_rss_bytes": peak, "rss_after_load_bytes": base,
                "bytes_per_image": max(0, peak - base) / batch})
    out.setdefault("mode", "f32")
    return out


# ---------------------------------------------------------------- parent side

def machine_info() -> dict:
    cpu, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    want = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16",
            "amx_bf16", "amx_tile"]
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    return {"cpu": cpu, "nproc": nproc, "platform": platform.platform(),
            "python": platform.python_version(),
            "flags": {k: (k in flags) for k in want}}


def wait_quiet(args) -> None:
    """With --quiet-load L: wait (at most --quiet-wait s) until the 1-min load average is
    below L, so a shared machine's other jobs disturb the measurement less."""
    if args.quiet_load is None:
        return
    t0 = time.monotonic()
    while os.getloadavg()[0] >= args.quiet_load and time.monotonic() - t0 < args.quiet_wait:
        time.sleep(5)


def run_child(kind: str, args, work: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind,
           "--batch", str(args.batch), "--threads", str(args.threads),
           "--warmup", str(args.warmup), "--repeat", str(args.repeat), "--work", str(work)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("ONEDNN_DEFAULT_FPMATH_MODE", None)
    if kind == "tf-bf16":
        env["ONEDNN_DEFAULT_FPMATH_MODE"] = "BF16"
    if kind != "export-onnx":
        wait_quiet(args)
    load0 = os.getloadavg()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                           env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {args.timeout:.0f} s")
    if p.returncode != 0:
        raise RuntimeError(f"exit status {p.returncode}\n{p.stderr.strip()[-3000:]}")
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            r = json.loads(line)
            r["loadavg_before"] = load0[0]
            r["loadavg_after"] = os.getloadavg()[0]
            return r
    raise RuntimeError(f"no JSON from child\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")


def run_cdiphase(binary: Path, args, fast: bool) -> dict:
    cmd = [str(binary), "bench", "network", "--arch", "spinn", "--batch", str(args.batch),
           "--threads", str(args.threads), "--iterations", str(args.iterations), "--json"]
    if fast:
        cmd.append("--fast")
    wait_quiet(args)
    load0 = os.getloadavg()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {args.timeout:.0f} s: {shlex.join(cmd)}")
    if p.returncode != 0:
        raise RuntimeError(f"exit status {p.returncode}: {shlex.join(cmd)}\n"
                           f"{p.stderr.strip()[-2000:]}")
    for line in reversed(p.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            r["cmd"] = shlex.join(cmd)
            # The peers report the median batch; use cdiphase's median too when it gives
            # one (its images_per_s / ms_per_batch are of the best batch).
            med = r.get("ms_per_batch_median")
            if isinstance(med, (int, float)) and med > 0:
                r["images_per_s_best"] = r.get("images_per_s")
                r["ms_per_batch_best"] = r.get("ms_per_batch")
                r["ms_per_batch"] = med
                r["images_per_s"] = r.get("batch", args.batch) * 1e3 / med
            r["loadavg_before"] = load0[0]
            r["loadavg_after"] = os.getloadavg()[0]
            return r
    raise RuntimeError(f"no JSON object on stdout of {shlex.join(cmd)}\n{p.stdout[-2000:]}")


def _spawn_timed(cmd: list, args, env=None) -> tuple:
    """Run cmd as a fresh process: (wall s from spawn to exit, peak RSS bytes, stdout,
    stderr, 1-min load before). Raises RuntimeError on failure or timeout."""
    wait_quiet(args)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=so, stderr=se, env=env, cwd=ROOT)
        deadline = t0 + args.timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                p.kill()
                os.wait4(p.pid, 0)
                raise RuntimeError(f"timed out after {args.timeout:.0f} s: {shlex.join(cmd)}")
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        so.seek(0)
        se.seek(0)
        out, err = so.read(), se.read()
    if p.returncode != 0:
        raise RuntimeError(f"exit status {p.returncode}: {shlex.join(cmd)}\n{err.strip()[-2000:]}")
    return wall, ru.ru_maxrss * 1024, out, err, load0


def run_whole(kind: str, binary: Path, args, work: Path) -> dict:
    """One whole-process measurement (see the module docstring)."""
    n = args.whole
    if kind.startswith("predict"):
        out = work / ("predict_fast.cxi" if kind.endswith("--fast") else "predict.cxi")
        cmd = [str(binary), "predict", str(work / "patterns.cxi"), "--model",
               str(work / "spinn.safetensors"), "-o", str(out), "--batch", str(args.batch),
               "--threads", str(args.threads), "--device", "cpu"]
        if kind.endswith("--fast"):
            cmd.append("--fast")
        wall, rss, so, se, load0 = _spawn_timed(cmd, args)
        r = {"peer": kind, "cmd": shlex.join(cmd)}
        for line in se.strip().splitlines():
            if line.startswith("predicting") and "(" in line:
                # "predicting N patterns ... with network 'spinn' (MODE) on ..."
                r["mode"] = line.split("(", 1)[1].split(")", 1)[0]
            elif line.startswith("--fast: "):
                # why --fast chose its path (the CPU's measured bf16/f32 ratio)
                r["fast_choice"] = line[len("--fast: "):]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind,
               "--batch", str(args.batch), "--threads", str(args.threads), "--work", str(work)]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TF_CPP_MIN_LOG_LEVEL="2")
        env.pop("ONEDNN_DEFAULT_FPMATH_MODE", None)
        wall, rss, so, se, load0 = _spawn_timed(cmd, args, env)
        r = {}
        for line in reversed(so.strip().splitlines()):
            if line.startswith("{"):
                r = json.loads(line)
                break
        r["mode"] = "f32"
    r.update({"wall_s": wall, "images_per_s": n / wall, "peak_rss_bytes": rss,
              "patterns": n, "loadavg_before": load0, "loadavg_after": os.getloadavg()[0]})
    return r


def prepare_whole(binary: Path, args, work: Path, with_ort: bool) -> None:
    """patterns.cxi, spinn.keras, spinn.safetensors (and spinn.onnx) in work."""
    import h5py
    import spinn

    raw = spinn.diffraction_patterns(args.whole, 128, 128, seed=SEED + 2)
    with h5py.File(work / "patterns.cxi", "w") as f:
        f["entry_1/data_1/data"] = raw.astype("float32")
    run_child("export-keras", args, work)
    if with_ort and not (work / "spinn.onnx").is_file():
        run_child("export-onnx", args, work)
    cmd = [str(binary), "convert", str(work / "spinn.keras"), "-o",
           str(work / "spinn.safetensors"), "--preprocess", "max"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)}: {p.stderr.strip()[-1000:]}")


def whole_agreement(work: Path) -> dict:
    """Support agreement and output differences between the whole-process outputs."""
    import h5py
    import numpy as np

    def load(name):
        f = work / name
        if not f.is_file():
            return None
        with h5py.File(f, "r") as h:
            return h["entry_1/image_1/data"][...], h["entry_1/image_1/support"][...]
    out = {}
    pr, fa, tfw = load("predict.cxi"), load("predict_fast.cxi"), load("tf-whole.h5")
    if pr and fa:
        out["fast_support_equal"] = float(np.mean(pr[1] == fa[1]))
        out["fast_support_pixels_differing_per_pattern"] = float(
            np.sum(pr[1] != fa[1]) / len(pr[1]))
        out["fast_rel_err"] = float(np.max(np.abs(fa[0] - pr[0])) / np.max(np.abs(pr[0])))
    if pr and tfw:
        out["predict_vs_tf_support_equal"] = float(np.mean(pr[1] == tfw[1]))
        out["predict_vs_tf_rel_err"] = float(np.max(np.abs(pr[0] - tfw[0]))
                                             / np.max(np.abs(tfw[0])))
    return out


def _err_cell(r: dict) -> str:
    """rel err vs tf for the peers; for cdiphase, any error figure its JSON reports (its
    --fast mode's accuracy cost against its own f32 path), named by its key."""
    if r.get("rel_err_vs_tf") is not None:
        return f"{r['rel_err_vs_tf']:.1e}"
    for k, v in r.items():
        if "err" in k and isinstance(v, (int, float)) and not isinstance(v, bool):
            return f"{v:.1e} ({k})"
    return "n/a"


def _f(v, d=1, suffix=""):
    return "n/a" if v is None else f"{v:.{d}f}{suffix}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2, help="untimed batches per peer")
    p.add_argument("--repeat", type=int, default=5, help="timed batches per peer (median)")
    p.add_argument("--iterations", type=int, default=5, help="cdiphase --iterations")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the whole sequence of peers this many times, alternating; "
                        "report each peer's median round")
    p.add_argument("--peers", default="tf,tf-xla,ort,tf-bf16",
                   help="subset of tf,tf-xla,ort,tf-bf16 (default all)")
    p.add_argument("--cdiphase", default=str(DEFAULT_BIN))
    p.add_argument("--no-cdiphase", action="store_true", help="peers only")
    p.add_argument("--require-cdiphase", action="store_true",
                   help="exit non-zero if cdiphase's bench network can't run")
    p.add_argument("--timeout", type=float, default=900, help="per child, s")
    p.add_argument("--quiet-load", type=float, default=None, metavar="L",
                   help="before each measurement wait until the 1-min load average < L")
    p.add_argument("--quiet-wait", type=float, default=300, metavar="S",
                   help="longest wait for --quiet-load, s (default 300)")
    p.add_argument("--whole", type=int, default=0, metavar="N",
                   help="also time whole processes (load, read, infer, write) on N patterns "
                        "(e.g. 128): tf-whole, ort-whole, cdiphase predict [--fast]")
    p.add_argument("--markdown", metavar="FILE")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        r = child(args.child, args.batch, args.threads, args.warmup, args.repeat,
                  Path(args.work))
        print(json.dumps(r))
        return 0

    info = machine_info()
    cmdline = shlex.join([sys.executable] + (sys.argv if argv is None else [__file__] + argv))
    print(f"Machine: {info['cpu']}, nproc {info['nproc']}, {info['platform']}; flags "
          + ", ".join(k for k, v in info["flags"].items() if v), flush=True)
    print(f"Command: {cmdline}", flush=True)
    print(f"spinn full size (19,721,217 params), batch {args.batch}, {args.threads} threads, "
          f"f32; peers: {args.warmup} warm-up + median of {args.repeat} batches", flush=True)

    import numpy as np

    peers = [k for k in args.peers.split(",") if k]
    rows: dict = {}
    errors: dict = {}
    with tempfile.TemporaryDirectory(prefix="cdiphase-nn-") as tmp:
        work = Path(tmp)
        if "ort" in peers:
            try:
                r = run_child("export-onnx", args, work)
                print(f"  tf2onnx export: {r['convert_s']:.1f} s", flush=True)
                rows["_export"] = r
            except RuntimeError as e:
                errors["ort"] = f"tf2onnx export failed: {e}"
                print(f"  ort: {errors['ort']}", file=sys.stderr, flush=True)
        binary = Path(args.cdiphase)
        cd_missing = None
        if not args.no_cdiphase and not (binary.is_file() and os.access(binary, os.X_OK)):
            cd_missing = f"cdiphase binary not found: {binary} (cargo build --release)"
        whole_keys: list = []
        if args.whole > 0:
            if args.no_cdiphase or cd_missing:
                errors["whole"] = "needs the cdiphase binary (convert, predict)"
            else:
                try:
                    prepare_whole(binary, args, work, "ort" in peers and "ort" not in errors)
                    whole_keys = [k + "-whole" for k in ("tf", "ort") if k in peers
                                  and k not in errors] + ["predict", "predict --fast"]
                except RuntimeError as e:
                    errors["whole"] = f"preparing the whole-process run failed: {e}"
                    print(f"  {errors['whole']}", file=sys.stderr, flush=True)
        runs: dict = {}
        # --rounds R: the whole sequence of peers R times, alternating, so that a slow
        # phase of the machine hits every peer alike; each peer's median round is reported.
        for rnd in range(args.rounds):
            if args.rounds > 1:
                print(f"  round {rnd + 1} of {args.rounds}", flush=True)
            jobs = [(k, lambda k=k: run_child(k, args, work)) for k in peers]
            if not (args.no_cdiphase or cd_missing):
                jobs += [("cdiphase", lambda: run_cdiphase(binary, args, False)),
                         ("cdiphase --fast", lambda: run_cdiphase(binary, args, True))]
            jobs += [(k, lambda k=k: run_whole(k, binary, args, work)) for k in whole_keys]
            for key, job in jobs:
                if key in errors:
                    continue
                print(f"  {key} ...", end="", flush=True)
                try:
                    r = job()
                    runs.setdefault(key, []).append(r)
                    print(f" {r.get('images_per_s', float('nan')):.2f} images/s", flush=True)
                except RuntimeError as e:
                    errors[key] = str(e)
                    print(f" failed: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else e}",
                          flush=True)
                    if key.startswith("cdiphase") and cd_missing is None:
                        cd_missing = f"{key}: {str(e).strip()[:600]}"
        for k, rs in runs.items():
            order = sorted(rs, key=lambda r: r.get("images_per_s") or 0.0)
            row = dict(order[(len(order) - 1) // 2])
            if len(rs) > 1:
                row["images_per_s_rounds"] = [r.get("images_per_s") for r in rs]
            rows[k] = row
        ref = np.load(work / "tf.npy") if (work / "tf.npy").is_file() else None
        for k in peers:
            f = work / f"{k}.npy"
            if k in rows and ref is not None and f.is_file():
                y = np.load(f)
                rows[k]["rel_err_vs_tf"] = float(np.max(np.abs(y.astype(np.float64) - ref))
                                                 / np.max(np.abs(ref)))
        agreement = whole_agreement(work) if whole_keys else {}

    # Paired ratios: each round's cdiphase (or tf-bf16) figure over the fastest f32 peer of
    # the same round. Adjacent measurements share the machine's state (its speed drifts by
    # tens of percent between minutes), so the median of these ratios is steadier than the
    # ratio of the medians.
    f32_keys = [k for k in ("tf", "tf-xla", "ort") if k in runs]
    paired: dict = {}
    per_round = []
    if args.rounds > 1 and f32_keys:
        for i in range(args.rounds):
            per_round.append({k: rs[i].get("images_per_s") for k, rs in runs.items()
                              if len(rs) > i})
        for key in ("cdiphase", "cdiphase --fast", "tf-bf16"):
            rat = []
            for rd in per_round:
                peer = [rd[k] for k in f32_keys if rd.get(k)]
                if rd.get(key) and peer:
                    rat.append(rd[key] / max(peer))
            if rat:
                paired[key] = {"per_round": rat, "median": statistics.median(rat),
                               "min": min(rat), "max": max(rat)}
    # whole-process cdiphase predict over TF's compute-only figure of the same round (the
    # issue's target) and over TF's whole process
    for key in ("predict", "predict --fast"):
        for ref_key, name in (("tf", "tf compute-only"), ("tf-whole", "tf whole process")):
            rat = [a["images_per_s"] / b["images_per_s"]
                   for a, b in zip(runs.get(key, []), runs.get(ref_key, []))
                   if a.get("images_per_s") and b.get("images_per_s")]
            if rat:
                paired[f"{key} / {name}"] = {"per_round": rat,
                                             "median": statistics.median(rat),
                                             "min": min(rat), "max": max(rat)}

    peer_keys = [k for k in ("tf", "tf-xla", "ort") if k in rows]
    best = max((rows[k]["images_per_s"] for k in peer_keys), default=None)
    best_name = max(peer_keys, key=lambda k: rows[k]["images_per_s"]) if peer_keys else None
    cols = ["peer", "mode", "images/s", "ms/batch", "peak RSS MiB", "MiB/image (RSS growth)",
            "rel err vs tf", "vs fastest f32 peer", "CPU s/batch"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for k, r in rows.items():
        if k.startswith("_") or k in whole_keys:
            continue
        ips = r.get("images_per_s")
        mode = r.get("mode", "f32")
        lines.append("| " + " | ".join([
            k, str(mode), _f(ips, 2), _f(r.get("ms_per_batch"), 0),
            _f(r.get("peak_rss_bytes", 0) / 2**20 if r.get("peak_rss_bytes") else None, 0),
            _f(r.get("bytes_per_image") / 2**20 if r.get("bytes_per_image") is not None
               else None, 2),
            _err_cell(r),
            _f(ips / best if (ips and best) else None, 2, "x"),
            _f(r.get("cpu_s_per_batch"), 1),
        ]) + " |")
    if whole_keys:
        tf_c = rows.get("tf", {}).get("images_per_s")
        tf_w = rows.get("tf-whole", {}).get("images_per_s")
        wc = ["whole process", "mode", f"s for {args.whole} patterns", "images/s",
              "peak RSS MiB", "vs tf compute-only", "vs tf whole process", "phases (s)"]
        wl = ["| " + " | ".join(wc) + " |", "|" + "|".join("---" for _ in wc) + "|"]
        for k in whole_keys:
            r = rows.get(k)
            if not r:
                continue
            ips = r.get("images_per_s")
            ph = r.get("phases") or {}
            wl.append("| " + " | ".join([
                k, str(r.get("mode", "f32")), _f(r.get("wall_s"), 2), _f(ips, 2),
                _f(r.get("peak_rss_bytes", 0) / 2**20, 0),
                _f(ips / tf_c if (ips and tf_c) else None, 2, "x"),
                _f(ips / tf_w if (ips and tf_w) else None, 2, "x"),
                ", ".join(f"{a[:-2]} {b:.2f}" for a, b in ph.items()) or "-",
            ]) + " |")
        lines += ["", f"Whole process, {args.whole} patterns (median round):", ""] + wl
        if agreement:
            lines += ["", "Agreement: " + ", ".join(
                f"{k} {v:.6g}" for k, v in agreement.items())]
        why = rows.get("predict --fast", {}).get("fast_choice")
        if why:
            lines += ["", f"predict --fast chose: {why}"]
    notes = []
    vers = {}
    for k in list(rows):
        vers.update(rows[k].get("versions", {}))
    notes.append("versions: " + ", ".join(f"{a} {b}" for a, b in sorted(vers.items())))
    loads = [(k, r.get("loadavg_before"), r.get("loadavg_after")) for k, r in rows.items()
             if not k.startswith("_")]
    notes.append("1-min load average before/after each: " + ", ".join(
        f"{k} {_f(a, 2)}/{_f(b, 2)}" for k, a, b in loads))
    if best_name:
        notes.append(f"fastest peer: {best_name} ({best:.2f} images/s)")
    for k, e in errors.items():
        notes.append(f"{k} failed: {e.strip().splitlines()[-1][:300] if e.strip() else e}")
    if cd_missing:
        notes.append(f"cdiphase missing: {cd_missing.splitlines()[0]}")
    for key, pr in paired.items():
        what = key if " / " in key else f"{key} / fastest f32 peer"
        notes.append(f"paired, {what} of the same round: "
                     + ", ".join(f"{v:.2f}" for v in pr["per_round"])
                     + f"; median {pr['median']:.2f}x (min {pr['min']:.2f}, max {pr['max']:.2f})")
    table = "\n".join(lines)
    if per_round:
        keys = [k for k in runs]
        rl = ["| round | " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in
                                                                 range(len(keys) + 1)) + "|"]
        for i, rd in enumerate(per_round):
            rl.append(f"| {i + 1} | " + " | ".join(_f(rd.get(k), 2) for k in keys) + " |")
        table += "\n\nimages/s per round:\n\n" + "\n".join(rl)
    print()
    print(table)
    print()
    for n in notes:
        print(n)
    if args.markdown:
        Path(args.markdown).write_text(f"Command: `{cmdline}`\n\n" + table + "\n\n"
                                       + "\n".join(f"- {n}" for n in notes) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": info, "command": cmdline, "batch": args.batch,
             "threads": args.threads, "results": rows, "paired_ratios": paired,
             "per_round": per_round, "errors": errors,
             "whole_process": {"patterns": args.whole, "keys": whole_keys,
                               "agreement": agreement if whole_keys else {}},
             "cdiphase_missing": cd_missing}, indent=1) + "\n")
    if not peer_keys:
        return 1
    if cd_missing and args.require_cdiphase:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Run cdiphase's phasing benchmark and the numpy+pyFFTW peer side by side.

For each configuration (128x128 batch 1, 256, 1024; 256x256 batch 256) it runs

    target/release/cdiphase bench phasing --size HxW --batch N --threads T --iterations I --json
    python benches/peer_hio.py --size HxW --batch N --threads T --iterations I --json

with the same I for both (chosen so each run takes a few seconds), and prints a markdown
table: cdiphase us/pattern/HIO iteration, its FFT-pair floor and the ratio between the two,
the peer's HIO and FFT-pair times, and the speed-up (peer / cdiphase).

Usage:
    python benches/compare_phasing.py [--threads 2] [--quick] [--cdiphase PATH]
                                      [--markdown FILE] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "benches" / "peer_hio.py"
DEFAULT_BIN = ROOT / "target" / "release" / ("cdiphase.exe" if os.name == "nt" else "cdiphase")

# (H, W, batch). Iterations: I = max(5, 20000 // batch) at 128x128, max(3, 2500 // batch)
# at 256x256 (about 1-3 s per timed run on 2 cores).
CONFIGS = [(128, 128, 1), (128, 128, 256), (128, 128, 1024), (256, 256, 256)]


def iterations_for(h: int, w: int, batch: int, quick: bool) -> int:
    if h * w <= 128 * 128:
        it = max(5, 20000 // batch)
    else:
        it = max(3, (2500 * 128 * 128 // (h * w)) * 4 // batch)
    if quick:
        it = max(2, it // 20)
    return it


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    return {"cpu": cpu, "nproc": nproc, "platform": platform.platform(),
            "python": platform.python_version()}


def run_json(cmd: list[str], timeout: float) -> dict:
    """Run cmd, parse the last JSON object line of its stdout."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout:.0f} s: {shlex.join(cmd)}")
    if p.returncode != 0:
        raise RuntimeError(f"exit status {p.returncode}: {shlex.join(cmd)}\n{p.stderr.strip()}")
    for line in reversed(p.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    raise RuntimeError(f"no JSON object on stdout of: {shlex.join(cmd)}\n"
                       f"stdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}")


def num(d: dict | None, key: str):
    if not d:
        return None
    v = d.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def fmt(v, digits=1, suffix=""):
    return "n/a" if v is None else f"{v:.{digits}f}{suffix}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cdiphase", default=str(DEFAULT_BIN),
                   help=f"cdiphase binary (default {DEFAULT_BIN.relative_to(ROOT)})")
    p.add_argument("--python", default=sys.executable, help="interpreter for the peer")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3, help="peer: best of R runs (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: ~20x fewer iterations, one peer repeat")
    p.add_argument("--only", default=None,
                   help="comma-separated subset, e.g. 128x128:256,256x256:256")
    p.add_argument("--timeout", type=float, default=300, help="per-run timeout, s")
    p.add_argument("--markdown", metavar="FILE", help="also write the table to FILE")
    p.add_argument("--json", metavar="FILE", help="write all raw results to FILE")
    args = p.parse_args(argv)

    binary = Path(args.cdiphase)
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        print(f"error: cdiphase binary not found or not executable: {binary}\n"
              f"build with cargo build --release first (or pass --cdiphase PATH)",
              file=sys.stderr)
        return 2

    configs = CONFIGS
    if args.only:
        want = set()
        for item in args.only.split(","):
            size, batch = item.split(":")
            h, w = (int(x) for x in size.lower().split("x"))
            want.add((h, w, int(batch)))
        configs = [c for c in CONFIGS if c in want] + sorted(want - set(CONFIGS))
    repeat = 1 if args.quick else args.repeat

    info = machine_info()
    cmdline = shlex.join([sys.executable] + sys.argv) if argv is None else shlex.join(argv)
    header = [f"Machine: {info['cpu']}, nproc {info['nproc']}, {info['platform']}",
              f"Command: {cmdline}",
              f"Threads: {args.threads}; iterations per config as listed; "
              f"peer best of {repeat}"]
    for line in header:
        print(line, flush=True)

    results = []
    for h, w, batch in configs:
        it = iterations_for(h, w, batch, args.quick)
        common = ["--size", f"{h}x{w}", "--batch", str(batch), "--threads", str(args.threads),
                  "--iterations", str(it), "--json"]
        rust_cmd = [str(binary), "bench", "phasing"] + common
        peer_cmd = [args.python, str(PEER)] + common + ["--repeat", str(repeat)]
        plain_cmd = peer_cmd + ["--mode", "batched"]
        row = {"h": h, "w": w, "batch": batch, "iterations": it,
               "cdiphase_cmd": shlex.join(rust_cmd), "peer_cmd": shlex.join(peer_cmd),
               "peer_batched_cmd": shlex.join(plain_cmd)}
        print(f"  {h}x{w} batch {batch}, {it} iterations ...", end="", flush=True)
        t0 = time.perf_counter()
        for key, cmd in (("cdiphase", rust_cmd), ("peer", peer_cmd), ("peer_batched", plain_cmd)):
            try:
                row[key] = run_json(cmd, args.timeout)
            except (RuntimeError, OSError) as e:
                row[key] = None
                row[key + "_error"] = str(e)
                print(f"\n  {key} failed: {e}", file=sys.stderr)
        print(f" {time.perf_counter() - t0:.1f} s", flush=True)
        results.append(row)

    cols = ["size", "batch", "iters", "cdiphase us/pattern/HIO-iter", "cdiphase FFT-pair us/pattern",
            "cdiphase HIO / FFT pair", "tuned peer us/pattern/HIO-iter", "tuned peer FFT-pair us/pattern",
            "speed-up vs tuned peer", "plain batched peer us/pattern/HIO-iter",
            "speed-up vs plain peer"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in results:
        c_hio = num(r["cdiphase"], "hio_us_per_pattern_iteration")
        c_fft = num(r["cdiphase"], "fft_pair_us_per_pattern")
        p_hio = num(r["peer"], "hio_us_per_pattern_iteration")
        p_fft = num(r["peer"], "fft_pair_us_per_pattern")
        r["cdiphase_hio_over_fft_pair"] = ratio(c_hio, c_fft)
        r["speedup_peer_over_cdiphase"] = ratio(p_hio, c_hio)
        b_hio = num(r.get("peer_batched"), "hio_us_per_pattern_iteration")
        r["speedup_batched_peer_over_cdiphase"] = ratio(b_hio, c_hio)
        lines.append("| " + " | ".join([
            f"{r['h']}x{r['w']}", str(r["batch"]), str(r["iterations"]),
            fmt(c_hio, 2), fmt(c_fft, 2), fmt(r["cdiphase_hio_over_fft_pair"], 2, "x"),
            fmt(p_hio, 2), fmt(p_fft, 2), fmt(r["speedup_peer_over_cdiphase"], 2, "x"),
            fmt(b_hio, 2), fmt(r["speedup_batched_peer_over_cdiphase"], 2, "x"),
        ]) + " |")
    extra = []
    devs = {r["cdiphase"].get("device") for r in results if r.get("cdiphase")}
    devs.discard(None)
    if devs:
        extra.append(f"cdiphase device: {', '.join(sorted(map(str, devs)))}")
    paper = [(r, num(r["cdiphase"], "paper_schedule_us_per_pattern_iteration")) for r in results]
    if any(v is not None for _, v in paper):
        extra.append("cdiphase paper schedule us/pattern/iteration: " + ", ".join(
            f"{r['h']}x{r['w']} b{r['batch']}: {fmt(v, 2)}" for r, v in paper))
    peers = [r["peer"] for r in results if r.get("peer")]
    if peers:
        p0 = peers[0]
        extra.append(f"peer: numpy {p0.get('numpy')} + pyfftw {p0.get('pyfftw')}, "
                     f"mode {p0.get('mode')}, {p0.get('planner_effort')}, "
                     f"threads {p0.get('threads')}")

    table = "\n".join(header + [""] + lines + [""] + extra) + "\n"
    print()
    print("\n".join(lines))
    print()
    for e in extra:
        print(e)

    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": info, "command": cmdline, "threads": args.threads,
             "quick": args.quick, "results": results}, indent=2) + "\n")
    failed = [r for r in results
              if r.get("cdiphase") is None or r.get("peer") is None or r.get("peer_batched") is None]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

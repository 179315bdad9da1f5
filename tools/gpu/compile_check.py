#!/usr/bin/env python3
"""Compile every CUDA kernel of cdiphase with NVRTC and assemble it with ptxas.

For each kernels/*.cu and each architecture (sm_70, sm_80, sm_90 by default): NVRTC (the
libnvrtc.so of the `nvidia-cuda-nvrtc-cu12` wheel, through ctypes) compiles the source to
PTX exactly as the CUDA backend does at run time, then `ptxas -v` (from the
`nvidia-cuda-nvcc-cu12` wheel) assembles it and reports registers, shared memory, stack and
spills per kernel. Prints a markdown table; `--update FILE` replaces the table between the
`<!-- gpu-compile-check:begin -->` / `end` markers of FILE (BENCHMARKS.md).

Exit status: non-zero on a compile or assembly error, or a register spill in a hot kernel
(every kernel except the emulator's own `cd_test_*` kernels).

Install: python3 -m venv .venv && .venv/bin/pip install -r tools/gpu/requirements.txt
Run:     .venv/bin/python tools/gpu/compile_check.py --update BENCHMARKS.md
"""
import argparse
import ctypes
import glob
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KERNELS = os.path.join(ROOT, "kernels")
BEGIN = "<!-- gpu-compile-check:begin -->"
END = "<!-- gpu-compile-check:end -->"


def find_wheel_file(pattern):
    """A file of an installed NVIDIA wheel (nvidia/<pkg>/...) on sys.path."""
    for base in sys.path:
        hits = sorted(glob.glob(os.path.join(base, "nvidia", pattern)))
        if hits:
            return hits[0]
    return None


def load_nvrtc():
    path = find_wheel_file("cuda_nvrtc/lib/libnvrtc.so*")
    if path is None:
        sys.exit("compile_check: libnvrtc.so not found; pip install -r tools/gpu/requirements.txt")
    lib = ctypes.CDLL(path)
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib, path


def nvrtc_compile(lib, name, source, arch):
    """PTX text of `source` for compute_<arch>, or raises RuntimeError with the log."""
    prog = ctypes.c_void_p()
    check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None))
    # The options the CUDA backend uses (src/backend/cuda.rs, NVRTC_OPTIONS).
    opts = [f"--gpu-architecture=compute_{arch}", f"--include-path={KERNELS}", "--std=c++17", "-lineinfo"]
    arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    res = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    if res != 0:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
        raise RuntimeError(f"{name} (compute_{arch}): {lib.nvrtcGetErrorString(res).decode()}\n{log.value.decode()}")
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    check(lib, lib.nvrtcGetPTX(prog, ptx))
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return ptx.value.decode(), log.value.decode().strip()


def check(lib, res):
    if res != 0:
        raise RuntimeError(lib.nvrtcGetErrorString(res).decode())


def ptxas(ptxas_bin, ptx, arch):
    """Per kernel: registers, shared bytes, stack bytes, spill stores, spill loads."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        p = subprocess.run([ptxas_bin, "-v", f"--gpu-name=sm_{arch}", src, "-o", os.path.join(d, "k.cubin")],
                           capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"ptxas sm_{arch}: {p.stderr}")
    stats = {}
    cur = None
    for line in p.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur = m.group(1)
            stats[cur] = dict(regs=0, smem=0, stack=0, spill_st=0, spill_ld=0)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            stats[cur].update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            stats[cur]["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            stats[cur]["smem"] = int(s.group(1)) if s else 0
    return stats


def main():
    global KERNELS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="70,80,90", help="comma-separated SM versions (default 70,80,90)")
    ap.add_argument("--update", metavar="FILE", help="replace the table between the markers in FILE")
    ap.add_argument("--kernels", default=KERNELS, help="folder of the .cu files (default kernels/)")
    args = ap.parse_args()
    KERNELS = os.path.abspath(args.kernels)
    lib, nvrtc_path = load_nvrtc()
    ptxas_bin = find_wheel_file("cuda_nvcc/bin/ptxas")
    if ptxas_bin is None:
        sys.exit("compile_check: ptxas not found; pip install -r tools/gpu/requirements.txt")
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    sources = sorted(glob.glob(os.path.join(KERNELS, "*.cu")))
    if not sources:
        sys.exit(f"compile_check: no .cu files in {KERNELS}")
    rows, failures = [], []
    for path in sources:
        name = os.path.basename(path)
        with open(path) as f:
            source = f.read()
        for arch in archs:
            try:
                ptx, log = nvrtc_compile(lib, name, source, arch)
                if log:
                    print(f"{name} compute_{arch} NVRTC log:\n{log}", file=sys.stderr)
                stats = ptxas(ptxas_bin, ptx, arch)
            except RuntimeError as e:
                failures.append(str(e))
                continue
            for kern, s in sorted(stats.items()):
                hot = not kern.startswith("cd_test_")
                spill = s["spill_st"] + s["spill_ld"]
                if hot and spill > 0:
                    failures.append(f"{name} sm_{arch} {kern}: {s['spill_st']} B spill stores, {s['spill_ld']} B spill loads")
                rows.append((name, kern, arch, s, hot))
    lines = [
        f"NVRTC {major.value}.{minor.value} -> PTX -> `ptxas -v` (wheels pinned in tools/gpu/requirements.txt); "
        "`tools/gpu/compile_check.py`. Shared = static shared memory per block (dynamic shared memory is "
        "set per launch). A spill in a hot kernel fails the check.",
        "",
        "| file | kernel | arch | registers | shared (B) | stack (B) | spill st/ld (B) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name, kern, arch, s, hot in rows:
        lines.append(f"| {name} | `{kern}`{'' if hot else ' (test)'} | sm_{arch} | {s['regs']} | {s['smem']} | "
                     f"{s['stack']} | {s['spill_st']}/{s['spill_ld']} |")
    table = "\n".join(lines)
    print(table)
    if args.update:
        with open(args.update) as f:
            text = f.read()
        if BEGIN not in text or END not in text:
            sys.exit(f"compile_check: {args.update} has no {BEGIN} ... {END} markers")
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        tmp = args.update + ".tmp"
        with open(tmp, "w") as f:
            f.write(head + BEGIN + "\n" + table + "\n" + END + tail)
        os.replace(tmp, args.update)
    if failures:
        print("\ncompile_check FAILED:", file=sys.stderr)
        for f in failures:
            print("  " + f, file=sys.stderr)
        sys.exit(1)
    print(f"\ncompile_check: {len(sources)} files x {len(archs)} architectures, {len(rows)} kernels OK "
          f"({nvrtc_path})", file=sys.stderr)


if __name__ == "__main__":
    main()

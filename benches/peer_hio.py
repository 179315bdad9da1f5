#!/usr/bin/env python3
"""Peer benchmark for cdiphase: batch HIO phase retrieval in numpy + pyFFTW.

This is the reference point cdiphase's CPU backend is compared against, so it is meant to
be a *good* numpy/pyFFTW implementation, not a strawman:

* FFTW plans are made once (FFTW_MEASURE by default), on 64-byte aligned arrays made with
  ``pyfftw.empty_aligned``, and run with ``FFTW.execute()`` (no per-call array checks,
  no copies, no normalisation pass: the inverse FFT's 1/(HW) is folded into the modulus
  ratio, as cdiphase does).
* No fftshift in the loop: amplitudes and support are in FFT-native order.
* Every elementwise step is an in-place ufunc with ``out=`` on preallocated buffers, and
  each was picked by measurement (e.g. ``np.copyto(g, gp, where=support)`` is ~6x slower
  than the three contiguous mask multiply/adds used for the support update; multiplying
  the float32 view by ``ratio[..., None]`` is ~7x slower than numpy's complex*float loop).
* Elementwise work is done in L2-sized chunks of patterns, spread over ``--threads``
  Python threads (numpy releases the GIL in ufunc loops, FFTW in execute()), so the peer
  uses both cores for the non-FFT work as well, not just inside FFTW.

Two schedules (``--mode``):

``batched``  one FFTW plan over the whole (N, H, W) stack with FFTW's own threads=T, then
             the elementwise chain in chunks over T Python threads.
``fused``    (default) each of T Python threads walks its share of the stack in chunks of
             a few patterns and runs the whole iteration on a chunk while it is in cache:
             forward FFT (single-threaded FFTW plan), modulus projection + Fourier error,
             in-place inverse FFT, support update. This is the cache-friendly schedule
             cdiphase itself uses, expressed in numpy/pyFFTW.

One HIO iteration over the batch, per pattern:
    F   = fft2(g)
    err = sum (|F| - A)^2                      (Fourier error numerator, every iteration)
    F'  = F * A / max(|F|, tiny) / (H W)       (modulus projection, 1/(HW) folded in)
    g'  = ifft2_unnormalised(F')
    g   = g'            inside the support
          g - beta g'   outside
The Fourier error reported is sqrt(err / sum A^2), per pattern, as cdiphase computes it.

The script does not use BLAS at all (no matmul), so OPENBLAS_* settings do not matter;
they are only noted in the output if set.

Usage:
    python benches/peer_hio.py --size 128x128 --batch 256 --iterations 50 --json
    python benches/peer_hio.py --selftest
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyfftw

TINY = np.float32(1e-30)
FLAGS = {
    "estimate": "FFTW_ESTIMATE",
    "measure": "FFTW_MEASURE",
    "patient": "FFTW_PATIENT",
    "exhaustive": "FFTW_EXHAUSTIVE",
}


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------

def native_radius2(h: int, w: int) -> np.ndarray:
    """Squared distance to the origin with wrap-around (FFT-native order), float32."""
    y = np.fft.fftfreq(h, 1.0 / h).astype(np.float32)
    x = np.fft.fftfreq(w, 1.0 / w).astype(np.float32)
    return y[:, None] ** 2 + x[None, :] ** 2


def support_disc(h: int, w: int) -> np.ndarray:
    r = min(h, w) / 4.0
    return native_radius2(h, w) <= r * r


def make_problem(n: int, h: int, w: int, seed: int = 0):
    """Random compact objects -> amplitudes A = sqrt(I) (native order), support, start.

    Each object is a random positive blob (random values inside a disc of radius 0.8 r,
    r = min(H, W)/4, around the origin in native order), so the disc of radius r is a
    valid (slightly loose) support and the problem is consistent.
    """
    rng = np.random.default_rng(seed)
    r = min(h, w) / 4.0
    inner = native_radius2(h, w) <= (0.8 * r) ** 2
    amps = pyfftw.empty_aligned((n, h, w), dtype=np.float32)
    step = 64
    for i in range(0, n, step):
        m = min(step, n - i)
        obj = rng.random((m, h, w), dtype=np.float32) * inner
        amps[i:i + m] = np.abs(np.fft.fft2(obj, axes=(-2, -1))).astype(np.float32)
    # I = A^2 is the measured intensity; the loop works on A = sqrt(I) = |fft2(obj)|.
    support = support_disc(h, w)
    g0 = pyfftw.empty_aligned((n, h, w), dtype=np.complex64)
    g0.real = rng.standard_normal((n, h, w), dtype=np.float32)
    g0.imag = rng.standard_normal((n, h, w), dtype=np.float32)
    return amps, support, g0


# --------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------

class PeerHIO:
    """Batch HIO on an (N, H, W) stack with preplanned FFTW transforms."""

    def __init__(self, amps, support, threads=2, beta=0.9, effort="measure",
                 mode="fused", chunk=None):
        n, h, w = amps.shape
        self.n, self.h, self.w = n, h, w
        self.threads = max(1, int(threads))
        self.beta = np.float32(beta)
        self.mode = mode
        scale = np.float32(1.0 / (h * w))
        flags = (FLAGS[effort],)

        # Patterns per elementwise chunk: keep the chunk's working set (complex F, two
        # float buffers, A, A/(HW), complex temp ~ 32 bytes/pixel) inside L2 (2 MiB here):
        # 1 MiB of complex64 per chunk (8 patterns at 128x128) measured best.
        if chunk is None:
            chunk = max(1, (1 << 20) // (8 * h * w))
        chunk = max(1, min(int(chunk), n))
        self.chunk = chunk

        self.A = amps
        self.As = pyfftw.empty_aligned(amps.shape, dtype=np.float32)
        np.multiply(amps, scale, out=self.As)
        self.sum_a2 = np.array([np.sum(np.square(a, dtype=np.float64)) for a in amps])
        self.S = support                                  # (H, W) bool
        # Support-update masks on the float32 (re, im) view: g <- g*m_g + g'*m_p.
        self.m_g = np.repeat(np.where(support, 0.0, 1.0).astype(np.float32)[..., None], 2, -1)
        self.m_p = np.repeat(np.where(support, 1.0, -float(self.beta)).astype(np.float32)[..., None],
                             2, -1)
        self.g = pyfftw.empty_aligned((n, h, w), dtype=np.complex64)
        self.err = np.zeros(n, dtype=np.float32)
        self._tls = threading.local()

        # Chunk ranges, dealt round-robin to the worker threads.
        self.ranges = [(i, min(i + chunk, n)) for i in range(0, n, chunk)]
        nthr = min(self.threads, len(self.ranges))
        self.shares = [self.ranges[k::nthr] for k in range(nthr)]
        self.pool = ThreadPoolExecutor(max_workers=nthr) if nthr > 1 else None

        t0 = time.perf_counter()
        if mode == "batched":
            self.F = pyfftw.empty_aligned((n, h, w), dtype=np.complex64)
            self.Gp = pyfftw.empty_aligned((n, h, w), dtype=np.complex64)
            self.fwd = pyfftw.FFTW(self.g, self.F, axes=(-2, -1), direction="FFTW_FORWARD",
                                   flags=flags, threads=self.threads)
            self.inv = pyfftw.FFTW(self.F, self.Gp, axes=(-2, -1), direction="FFTW_BACKWARD",
                                   flags=flags, threads=self.threads)
        elif mode == "fused":
            # Per worker: its own chunk buffer F (c, H, W) and single-threaded plans
            #   forward: g[chunk] -> F (input array swapped per chunk via update_arrays)
            #   inverse: F -> F in place.
            # A shorter last chunk gets its own plans.
            self.workers = []
            sizes = sorted({b - a for a, b in self.ranges})
            for _ in range(nthr):
                wk = {}
                for c in sizes:
                    F = pyfftw.empty_aligned((c, h, w), dtype=np.complex64)
                    src = pyfftw.empty_aligned((c, h, w), dtype=np.complex64)
                    fwd = pyfftw.FFTW(src, F, axes=(-2, -1), direction="FFTW_FORWARD",
                                      flags=flags, threads=1)
                    inv = pyfftw.FFTW(F, F, axes=(-2, -1), direction="FFTW_BACKWARD",
                                      flags=flags, threads=1)
                    wk[c] = (F, fwd, inv)
                self.workers.append(wk)
        else:
            raise ValueError(f"unknown mode {mode!r}")
        self.planning_seconds = time.perf_counter() - t0

    # -- buffers ------------------------------------------------------------------------
    def _bufs(self, c):
        """Per-thread scratch buffers for a chunk of c patterns (allocated once)."""
        d = getattr(self._tls, "bufs", None)
        if d is None:
            d = self._tls.bufs = {}
        b = d.get(c)
        if b is None:
            h, w = self.h, self.w
            b = (pyfftw.empty_aligned((c, h, w), dtype=np.float32),     # mag / ratio
                 pyfftw.empty_aligned((c, h, w), dtype=np.float32),     # residual
                 pyfftw.empty_aligned((c, h, w), dtype=np.complex64))   # beta * g'
            d[c] = b
        return b

    # -- kernels ------------------------------------------------------------------------
    def _project(self, F, a, b):
        """Modulus projection of F (= fft of g[a:b]) in place; per-pattern error sums."""
        c = b - a
        mag, res, _ = self._bufs(c)
        np.abs(F, out=mag)
        np.subtract(mag, self.A[a:b], out=res)
        np.multiply(res, res, out=res)
        np.add.reduce(res.reshape(c, -1), axis=1, out=self.err[a:b])
        np.maximum(mag, TINY, out=mag)
        np.divide(self.As[a:b], mag, out=mag)               # A / (|F| HW)
        np.multiply(F, mag, out=F)                           # complex64 * float32

    def _update(self, gp, a, b):
        """HIO support update of g[a:b] from g' (gp)."""
        # g <- g * m_g + g' * m_p with m_g = 0 / 1 and m_p = 1 / -beta inside / outside
        # the support, on float32 views ((H, W, 2) masks broadcast over the chunk). Three
        # contiguous passes; np.copyto(..., where=support) alone costs more than all three.
        c = b - a
        _, _, tmp = self._bufs(c)
        shape = (c, self.h, self.w, 2)
        gv = self.g[a:b].view(np.float32).reshape(shape)
        pv = gp.view(np.float32).reshape(shape)
        tv = tmp.view(np.float32).reshape(shape)
        np.multiply(gv, self.m_g, out=gv)
        np.multiply(pv, self.m_p, out=tv)
        np.add(gv, tv, out=gv)

    # -- schedules ----------------------------------------------------------------------
    def _map(self, fn):
        """Run fn(list_of_ranges, worker_index) over the thread shares."""
        if self.pool is None:
            fn(self.shares[0], 0)
        else:
            futs = [self.pool.submit(fn, share, k) for k, share in enumerate(self.shares)]
            for f in futs:
                f.result()

    def _batched_project(self, share, k):
        for a, b in share:
            self._project(self.F[a:b], a, b)

    def _batched_update(self, share, k):
        for a, b in share:
            self._update(self.Gp[a:b], a, b)

    def _fused_iter(self, share, k):
        wk = self.workers[k]
        for a, b in share:
            F, fwd, inv = wk[b - a]
            fwd.update_arrays(self.g[a:b], F)
            fwd.execute()
            self._project(F, a, b)
            inv.execute()
            self._update(F, a, b)

    def _fused_pair(self, share, k):
        wk = self.workers[k]
        for a, b in share:
            F, fwd, inv = wk[b - a]
            fwd.update_arrays(self.g[a:b], F)
            fwd.execute()
            inv.execute()

    def iterate(self, iterations: int):
        """Run `iterations` HIO iterations; self.err holds the last iteration's sums."""
        if self.mode == "batched":
            for _ in range(iterations):
                self.fwd.execute()
                self._map(self._batched_project)
                self.inv.execute()
                self._map(self._batched_update)
        else:
            for _ in range(iterations):
                self._map(self._fused_iter)

    def fft_pair(self, reps: int):
        """fft2 + ifft2 of the whole batch, `reps` times, same plans, g unchanged."""
        if self.mode == "batched":
            for _ in range(reps):
                self.fwd.execute()
                self.inv.execute()
        else:
            for _ in range(reps):
                self._map(self._fused_pair)

    def fourier_error(self) -> np.ndarray:
        return np.sqrt(self.err.astype(np.float64) / np.maximum(self.sum_a2, 1e-300))

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()


# --------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------

def parse_size(s: str):
    try:
        h, w = s.lower().split("x")
        return int(h), int(w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like 128x128, got {s!r}")


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run_bench(args) -> dict:
    h, w = args.size
    n, iters = args.batch, args.iterations
    amps, support, g0 = make_problem(n, h, w, seed=args.seed)
    eng = PeerHIO(amps, support, threads=args.threads, beta=args.beta,
                  effort=args.effort, mode=args.mode, chunk=args.chunk)
    try:
        np.copyto(eng.g, g0)                       # planning may have scribbled on buffers
        eng.iterate(1)                             # warm-up (threads, caches, page faults)
        eng.fft_pair(1)

        def hio():
            np.copyto(eng.g, g0)
            t0 = time.perf_counter()
            eng.iterate(iters)
            return time.perf_counter() - t0

        hio_best = min(hio() for _ in range(args.repeat))
        final_err = eng.fourier_error()
        np.copyto(eng.g, g0)
        pair_best = best_of(lambda: eng.fft_pair(iters), args.repeat)
    finally:
        eng.close()

    out = {
        "peer": "numpy+pyfftw",
        "numpy": np.__version__,
        "pyfftw": pyfftw.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "mode": args.mode,
        "chunk": eng.chunk,
        "h": h, "w": w, "batch": n, "iterations": iters, "repeat": args.repeat,
        "beta": float(args.beta),
        "planner_effort": FLAGS[args.effort],
        "hio_us_per_pattern_iteration": hio_best / (n * iters) * 1e6,
        "fft_pair_us_per_pattern": pair_best / (n * iters) * 1e6,
        "planning_seconds": eng.planning_seconds,
        "final_fourier_error_mean": float(np.mean(final_err)),
    }
    blas_env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                           "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
                if k in os.environ}
    if blas_env:
        out["note_env"] = blas_env
        out["note"] = "BLAS env vars set; this benchmark does not call BLAS, so they have no effect"
    return out


# --------------------------------------------------------------------------------------
# Self-test
# --------------------------------------------------------------------------------------

def reference_hio(amps, support, g, beta, iterations):
    """Plain numpy (complex128) HIO, for checking the fast path."""
    g = g.astype(np.complex128)
    a = amps.astype(np.float64)
    errs = []
    for _ in range(iterations):
        F = np.fft.fft2(g, axes=(-2, -1))
        m = np.abs(F)
        errs.append(np.sum((m - a) ** 2, axis=(-2, -1)))
        gp = np.fft.ifft2(F * a / np.maximum(m, 1e-30), axes=(-2, -1))
        g = np.where(support, gp, g - beta * gp)
    return g, np.array(errs)


def selftest(args) -> int:
    ok = True
    for mode in ("fused", "batched"):
        for (h, w, n, chunk) in ((32, 48, 5, 2), (64, 64, 8, None)):
            amps, support, g0 = make_problem(n, h, w, seed=1)
            eng = PeerHIO(amps, support, threads=args.threads, beta=args.beta,
                          effort="estimate", mode=mode, chunk=chunk)
            try:
                # 1) three iterations agree with the complex128 reference
                np.copyto(eng.g, g0)
                eng.iterate(3)
                gref, eref = reference_hio(amps, support, g0, args.beta, 3)
                rel = np.linalg.norm(eng.g - gref) / np.linalg.norm(gref)
                erel = np.max(np.abs(eng.err - eref[-1]) / eref[-1])
                # 2) the Fourier error falls over 50 HIO iterations from a random start
                np.copyto(eng.g, g0)
                eng.iterate(1)
                e1 = eng.fourier_error()
                eng.iterate(49)
                e50 = eng.fourier_error()
            finally:
                eng.close()
            good = rel < 1e-4 and erel < 1e-3 and np.all(e50 < 0.5 * e1)
            ok &= bool(good)
            print(f"selftest mode={mode:7s} {h}x{w} batch {n} chunk {eng.chunk}: "
                  f"|g-ref|/|ref| = {rel:.2e}, err sum rel diff = {erel:.2e}, "
                  f"fourier error it1 {np.mean(e1):.3f} -> it50 {np.mean(e50):.3f} "
                  f"{'ok' if good else 'FAIL'}")
    assert ok, "peer_hio self-test failed"
    print("selftest passed")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=(128, 128), help="HxW (default 128x128)")
    p.add_argument("--batch", type=int, default=256, help="patterns per batch (default 256)")
    p.add_argument("--iterations", type=int, default=50, help="timed HIO iterations (default 50)")
    p.add_argument("--threads", type=int, default=2, help="threads (FFTW and workers, default 2)")
    p.add_argument("--beta", type=float, default=0.9)
    p.add_argument("--repeat", type=int, default=3, help="best of R timed runs (default 3)")
    p.add_argument("--mode", choices=("fused", "batched"), default="fused",
                   help="schedule (default fused; see module doc)")
    p.add_argument("--chunk", type=int, default=None,
                   help="patterns per chunk (default: ~1 MiB working set)")
    p.add_argument("--effort", choices=tuple(FLAGS), default="measure",
                   help="FFTW planner effort (default measure)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--selftest", action="store_true", help="check correctness and exit")
    args = p.parse_args(argv)
    if args.batch < 1 or args.iterations < 1 or args.repeat < 1 or args.threads < 1:
        p.error("--batch, --iterations, --repeat and --threads must be >= 1")
    if args.selftest:
        return selftest(args)
    res = run_bench(args)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"peer numpy {res['numpy']} + pyfftw {res['pyfftw']}, mode {res['mode']}, "
              f"{res['threads']} threads, chunk {res['chunk']}, {res['planner_effort']}")
        print(f"{res['h']}x{res['w']} batch {res['batch']}, {res['iterations']} iterations, "
              f"best of {res['repeat']}")
        print(f"  HIO:      {res['hio_us_per_pattern_iteration']:9.2f} us/pattern/iteration")
        print(f"  FFT pair: {res['fft_pair_us_per_pattern']:9.2f} us/pattern")
        print(f"  planning: {res['planning_seconds']:.2f} s; "
              f"final Fourier error (mean) {res['final_fourier_error_mean']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

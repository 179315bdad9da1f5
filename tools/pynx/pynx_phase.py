#!/usr/bin/env python3
"""Phase a cdiphase pattern file with PyNX (CPU), the way PyNX's own runners do, and write
the best start of every pattern where `cdiphase evaluate` reads a reconstruction.

    pynx_phase.py IN.cxi OUT.cxi --recipe std|id10 [--starts 8] [--seed 1]

Used by `scripts/phasing_benchmark.sh` (PYNX=...) for the side-by-side table of issue 19.
Needs a Python with PyNX 2025.1 and its dependencies (see tools/pynx/README.md: Debian's
python3-pynx unpacked into a venv); nothing of cdiphase is imported.

Recipes (PyNX's defaults, copied from pynx/cdi/runner/*.py of 2025.1):
- `std`: the generic runner (`pynx-cdi-simulation` / `pynx-cdi-id01` defaults): 600 RAAR
  then 200 ER, beta 0.9, no positivity, starting support from the autocorrelation
  (threshold drawn in 0.09..0.11 per start), support update every 50 cycles (threshold
  0.25 relative to the rms of the blurred modulus, Gaussian width 2 -> 0.5 over the RAAR
  cycles, support fraction kept in 1e-4..0.7: out of range, the run restarts with the
  threshold divided or multiplied by 1.1, at most 5 tries), 5 % free pixels, the best start
  by the free Poisson log-likelihood among those with < 10 % of the energy outside.
- `id10`: the ESRF ID10 runner's beamline defaults: 600 HIO then 200 ER with positivity,
  pixels of zero intensity masked as well (its `mask=zero`), the same support update and
  selection, masked pixels free (zero_mask 0).

Input: entry_1/data_1/data (N,H,W) intensities centred at (H/2, W/2), optional mask
((H,W), (1,H,W) or (N,H,W), nonzero = unmeasured) at entry_1/data_1/mask or
entry_1/instrument_1/detector_1/mask (cdiphase's own search order). Output (written to a
temporary name, then renamed): entry_1/image_1/data (N,H,W) complex64 and
entry_1/image_1/support (N,H,W) uint8, centred; entry_1/image_1/free_llk (N,) and the
configuration as an attribute.
"""

import argparse
import json
import os
import sys
import time

import h5py
import numpy as np
from numpy.fft import fftshift, ifftshift

from pynx.cdi import (
    CDI,
    ER,
    HIO,
    RAAR,
    AutoCorrelationSupport,
    FourierApplyAmplitude,
    InitFreePixels,
    InitObjRandom,
    ScaleObj,
    SupportUpdate,
)
from pynx.cdi.cdi import SupportTooLarge, SupportTooSmall

RECIPES = {
    "std": dict(algo="RAAR", nb_main=600, nb_er=200, positivity=False, mask_zero=False),
    "id10": dict(algo="HIO", nb_main=600, nb_er=200, positivity=True, mask_zero=True),
}
MASK_ENTRIES = ("entry_1/data_1/mask", "entry_1/instrument_1/detector_1/mask")
PERIOD = 50
THRESHOLD = 0.25
TUNE = 1.1
MAX_OBJ2_OUT = 0.10


def chain(recipe, threshold):
    """The runner's operator chain (cycles sorted, support update at every multiple of 50
    but the last, then FourierApplyAmplitude with the final LLKs)."""
    r = RECIPES[recipe]
    main = HIO if r["algo"] == "HIO" else RAAR
    total = r["nb_main"] + r["nb_er"]
    algo = 1
    for i0 in range(0, total, PERIOD):
        i1 = i0 + PERIOD
        if i1 <= r["nb_main"]:
            step = main(beta=0.9, positivity=r["positivity"], calc_llk=False) ** PERIOD
        else:
            step = ER(positivity=r["positivity"], calc_llk=False) ** PERIOD
        if i1 < total:
            step = SupportUpdate(threshold_relative=threshold,
                                 smooth_width=(2, 0.5, r["nb_main"]), method="rms",
                                 min_fraction=1e-4, max_fraction=0.7) * step
        algo = step * algo
    return FourierApplyAmplitude(calc_llk=True, obj_stats=True) * algo


def one_start(iobs, mask, recipe, rng):
    """One start as the runner does it, with its threshold auto-tuning on a support
    collapse or blow-up (restart, at most 5 tries). Returns (object, support, free llk,
    obj2_out), centred."""
    threshold = THRESHOLD
    for _ in range(5):
        np.random.seed(int(rng.integers(2**31)))
        cdi = CDI(ifftshift(iobs).copy(), mask=ifftshift(mask).copy())
        cdi = InitFreePixels(ratio=0.05, island_radius=3, exclude_zone_center=0.05) * cdi
        cdi = AutoCorrelationSupport(threshold=(0.09, 0.11)) * cdi
        cdi = InitObjRandom(src="support", amin=0, amax=1, phirange=2 * np.pi) * cdi
        cdi = ScaleObj(method="F") * cdi
        try:
            cdi = chain(recipe, threshold) * cdi
        except SupportTooSmall:
            threshold /= TUNE
            continue
        except SupportTooLarge:
            threshold *= TUNE
            continue
        llk = cdi.get_llk()
        obj = fftshift(cdi.get_obj(shift=False))
        sup = fftshift(cdi.get_support(shift=False)).astype(np.uint8)
        out = float(cdi._obj2_out)
        return obj.astype(np.complex64), sup, float(llk[3]), out, threshold
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="std")
    ap.add_argument("--starts", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.starts < 1:
        sys.exit("pynx_phase: --starts must be at least 1")
    with h5py.File(a.input, "r") as f:
        if "entry_1/data_1/data" not in f:
            sys.exit(f"pynx_phase: {a.input}: no dataset entry_1/data_1/data")
        data = np.asarray(f["entry_1/data_1/data"][()], dtype=np.float32)
        # where cdiphase looks for the mask (src/io/mod.rs: DEFAULT_MASK_ENTRIES)
        mask = next((f[k][()] for k in MASK_ENTRIES if k in f), None)
    if data.ndim == 2:
        data = data[None]
    n, h, w = data.shape
    if mask is None:
        mask = np.zeros((1, h, w), np.int8)
    mask = np.asarray(mask).reshape(-1, h, w)
    if mask.shape[0] not in (1, n):
        sys.exit(f"pynx_phase: mask of shape {mask.shape} does not fit {n} patterns")
    objs = np.zeros((n, h, w), np.complex64)
    sups = np.zeros((n, h, w), np.uint8)
    free = np.full(n, np.nan, np.float32)
    failed = 0
    t0 = time.time()
    for p in range(n):
        rng = np.random.default_rng([a.seed, p])
        m = mask[p if mask.shape[0] == n else 0] != 0
        if RECIPES[a.recipe]["mask_zero"]:
            m = m | (data[p] == 0)
        m = m.astype(np.int8)
        iobs = np.where(m != 0, 0, np.maximum(data[p], 0)).astype(np.float32)
        runs = []
        for _ in range(a.starts):
            r = one_start(iobs, m, a.recipe, rng)
            if r is None:
                failed += 1
            else:
                runs.append(r)
        if not runs:
            continue
        # the runner's selection: drop runs with too much energy outside the support (when
        # any is below the limit), then the lowest free Poisson LLK
        ok = [r for r in runs if not r[3] > MAX_OBJ2_OUT] or runs
        best = min(ok, key=lambda r: r[2])
        objs[p], sups[p], free[p] = best[0], best[1], best[2]
    secs = time.time() - t0
    tmp = a.output + ".tmp"
    with h5py.File(tmp, "w") as f:
        f["cxi_version"] = 150
        f["entry_1/image_1/data"] = objs
        f["entry_1/image_1/support"] = sups
        f["entry_1/image_1/free_llk"] = free
        f["entry_1/image_1"].attrs["configuration"] = json.dumps(
            {"program": "PyNX (tools/pynx/pynx_phase.py)", "recipe": a.recipe,
             "starts": a.starts, "seed": a.seed, "failed_starts": failed, "seconds": secs})
    os.replace(tmp, a.output)
    print(f"pynx_phase: {n} patterns x {a.starts} starts ({a.recipe}) in {secs:.1f} s; "
          f"{failed} starts gave up after 5 support retunes", file=sys.stderr)


if __name__ == "__main__":
    main()

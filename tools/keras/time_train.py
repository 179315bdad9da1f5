#!/usr/bin/env python3
"""Time training steps of build_spinn at several widths, to size the compact variant.

    .venv-tf/bin/python tools/keras/time_train.py --widths 0.25 0.5 1.0 --steps 3 --batch 32

For each width: one warm-up train_on_batch (graph tracing), then --steps timed steps of
Adam + MSE on random inputs at 128x128, 2 intra-op threads. Prints parameters, forward
GFLOP per pattern (train.conv_flops), seconds per step, ms per training pattern, and the
effective GFLOP/s counting a training step as 3 forward passes. All widths run in the same
process one after another, so their ratios are comparable; the absolute numbers depend on
what else the machine is running.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", nargs="+", default=["float32"],
                    choices=["float32", "mixed_bfloat16"],
                    help="Keras dtype policies to time, each at every width (mixed_bfloat16: "
                         "bf16 compute, f32 weights; oneDNN runs it on AMX where the CPU has it)")
    a = ap.parse_args()
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras
    from spinn import build_spinn
    from train import conv_flops

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((a.batch, a.size, a.size, 1), np.float32)
    y = rng.random((a.batch, a.size, a.size, 1), np.float32)
    rows = []
    for prec, w in [(p, w) for p in a.precision for w in a.widths]:
        keras.mixed_precision.set_global_policy(prec)
        m = build_spinn(keras, input_size=a.size, width=w)
        m.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        m.train_on_batch(x, y)
        t = time.perf_counter()
        for _ in range(a.steps):
            m.train_on_batch(x, y)
        dt = (time.perf_counter() - t) / a.steps
        f = conv_flops(m)
        row = {"precision": prec, "width": w, "params": int(m.count_params()), "gflop_fwd": f / 1e9,
               "s_per_step": dt, "ms_per_pattern": 1e3 * dt / a.batch,
               "gflops_effective": 3 * f * a.batch / dt / 1e9}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Export a training run's checkpoint (train.py --resume's `<out>/checkpoint`) as a Keras
model file that `cdiphase convert` reads, while the run goes on or after it was stopped.

    python tools/keras/export_checkpoint.py RUN_DIR -o interim.keras [--which best|last]
        [--input-size 128]
    cdiphase convert interim.keras -o interim.safetensors --preprocess max

The architecture (arch, width, bottleneck) comes from the checkpoint's state.json; the
weights from best.weights.h5 (best validation loss so far, the default) or
weights.weights.h5 (the last finished epoch). The input size is not recorded in the
checkpoint: give --input-size when the data were not 128x128. Written to a temporary name,
then renamed. Exit status 2 on a missing or inconsistent checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="train.py --out folder (holds checkpoint/)")
    p.add_argument("-o", "--output", required=True, help="model file to write (.keras)")
    p.add_argument("--which", choices=("best", "last"), default="best")
    p.add_argument("--input-size", type=int, default=128)
    a = p.parse_args(argv)
    ckpt = os.path.join(a.run, "checkpoint")
    state_f = os.path.join(ckpt, "state.json")
    weights = os.path.join(ckpt, "best.weights.h5" if a.which == "best"
                           else "weights.weights.h5")
    for f in (state_f, weights):
        if not os.path.isfile(f):
            print(f"export_checkpoint: {f} not found (a train.py --resume run's checkpoint)",
                  file=sys.stderr)
            return 2
    if not a.output.endswith(".keras"):
        print(f"export_checkpoint: {a.output}: the output must end in .keras", file=sys.stderr)
        return 2
    with open(state_f) as f:
        saved = json.load(f)
    fp, st = saved.get("fingerprint", {}), saved.get("state", {})
    os.environ.setdefault("KERAS_BACKEND", fp.get("backend", "tensorflow"))
    import keras

    from spinn import build_spinn

    model = build_spinn(keras, input_size=a.input_size, width=fp.get("width") or 1.0,
                        bottleneck=fp.get("bottleneck"),
                        name="spinn" if fp.get("arch") == "spinn" else "spinn_compact")
    try:
        model.load_weights(weights)
    except Exception as e:  # noqa: BLE001 - Keras raises several types for a mismatch
        print(f"export_checkpoint: {weights} does not fit the architecture of {state_f} "
              f"(input size {a.input_size}?): {e}", file=sys.stderr)
        return 2
    tmp = a.output + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, a.output)
    best = st.get("best")
    print(f"wrote {a.output}: {model.name}, {model.count_params():,} parameters, {a.which} "
          f"weights (epoch {st.get('best_epoch') if a.which == 'best' else st.get('epoch')}, "
          f"best val_loss {best})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# The one-call GPU check (issue 20), prepared on a machine with Rust, run on a GPU machine
# that has NVIDIA's driver and CUDA but no Rust toolchain and no network.
#
#   scripts/gpu_check.sh [--train]        # here: build, pack into gpu-pack/, print the command
#   OUT=DIR gpu-pack/run.sh               # there: the command it prints (run from the checkout)
#
# Packing: the stripped release binary, scripts/gpu_remote.sh (as gpu-pack/run.sh) and, with
# --train, the pinned Keras wheels for the GPU machine's Python (tools/keras/gpu-wheels.txt)
# and the training tools, into the ignored folder gpu-pack/ (the checkout's tracked files
# travel with it: bundled structures, models, tools). The pack must stay well under 64 MiB.
#
# What run.sh does there (logs and JSON under $OUT, at most 8 files of 16 MiB):
#   cdiphase info, selftest --device cuda (every kernel against float64 references),
#   bench phasing --device cuda (batch 1,000 of 128x128 against the cuFFT floor),
#   bench network --device cuda (the paper's network, batch 64 and 256) next to the CPU,
#   demo --device cuda, and `phase` with populations, restarts, culling, the interpolated
#   centre and the merge on cuda and on the CPU (issue 19: the state resident on the device);
#   with TRAIN=1 (packed with --train) it then simulates the paper-
#   geometry training set, trains the paper's network with Keras 3 on torch within the time
#   left, converts it and evaluates it on the held-out structures (tools/keras/gpu_train.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
train=0
for a in "$@"; do
    case "$a" in
        --train) train=1 ;;
        -h|--help) sed -n 2,23p "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$a' (expected --train)" >&2; exit 2 ;;
    esac
done

echo "== cargo build --release"
cargo build --release
pack=gpu-pack
rm -rf "$pack.tmp"
mkdir -p "$pack.tmp"
cp target/release/cdiphase "$pack.tmp/cdiphase"
strip "$pack.tmp/cdiphase"
cp scripts/gpu_remote.sh "$pack.tmp/run.sh"
chmod +x "$pack.tmp/run.sh"
if [ "$train" = 1 ]; then
    py=${PYTHON:-python3}
    mkdir -p "$pack.tmp/wheels"
    # wheels for the GPU machine's CPython 3.12 on x86-64 (Keras is pure Python; optree is not)
    "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_28_x86_64 --implementation cp \
        -r tools/keras/gpu-wheels.txt -d "$pack.tmp/wheels"
    touch "$pack.tmp/TRAIN"
fi
rm -rf "$pack"
mv "$pack.tmp" "$pack"
size=$(du -sk "$pack" | cut -f1)
tree=$(git ls-files -z | xargs -0 du -ck 2>/dev/null | tail -1 | cut -f1)
echo "== packed $pack/: $((size / 1024)) MiB (binary $(( $(stat -c %s "$pack/cdiphase") / 1048576 )) MiB); tracked files $((tree / 1024)) MiB; together $(((size + tree) / 1024)) MiB (limit 64)"
if [ $((size + tree)) -gt $((60 * 1024)) ]; then
    echo "gpu_check.sh: the pack and the checkout exceed 60 MiB" >&2
    exit 1
fi
echo "== on the GPU machine, from the checkout (the pack travels with it):"
echo "   OUT=/path/to/results $pack/run.sh"

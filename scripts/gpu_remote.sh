#!/usr/bin/env bash
# The GPU machine's half of scripts/gpu_check.sh, packed as gpu-pack/run.sh. Runs from the
# checkout with the pack beside it; needs only bash, coreutils, tar and (for TRAIN) python3.
#
#   OUT=DIR gpu-pack/run.sh
#
# Env: OUT (results, default ./gpu-out), DEADLINE_S (seconds this script may take in all,
# default 540: the training gets what the checks leave), TRAIN (1 when packed with --train),
# WORK (scratch, default /dev/shm/cdiphase-gpu, else /tmp).
# Results (at most 8 files, each well under 16 MiB):
#   check.tar.gz   logs and JSON of info, selftest, benches, demo
#   train.tar.gz   (TRAIN) the training record, history, test metrics, logs
#   model.safetensors.part*   (TRAIN) the converted model (f16), split to fit
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
B=$here/cdiphase
OUT=${OUT:-$root/gpu-out}
DEADLINE_S=${DEADLINE_S:-540}
T0=$(date +%s)
mkdir -p "$OUT"
if [ -d /dev/shm ] && [ -w /dev/shm ]; then WORK=${WORK:-/dev/shm/cdiphase-gpu}; else WORK=${WORK:-/tmp/cdiphase-gpu}; fi
rm -rf "$WORK"; mkdir -p "$WORK/check"
L=$WORK/check
export XDG_CACHE_HOME=$WORK/cache
left() { echo $((DEADLINE_S - ($(date +%s) - T0))); }
# run NAME TIMEOUT CMD...: stdout to NAME.out, stderr to NAME.err, status and time to summary
run() {
    local name=$1 t=$2; shift 2
    local s; s=$(date +%s.%N)
    timeout "$t" "$@" > "$L/$name.out" 2> "$L/$name.err"
    local rc=$?
    printf '%-28s rc=%-3s %6ss  %s\n' "$name" "$rc" "$(awk -v a="$s" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')" "$*" | tee -a "$L/summary.txt"
    return $rc
}

{
    echo "host: $(hostname), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm --format=csv 2>&1
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
} > "$L/machine.txt" 2>&1
run info 60 "$B" info
run selftest 240 "$B" selftest --device cuda --json
run selftest_table 120 "$B" selftest --device cuda --quick
run bench_phasing_1000 120 "$B" bench phasing --device cuda --size 128x128 --batch 1000 --iterations 200 --json
run bench_phasing_256 60 "$B" bench phasing --device cuda --size 128x128 --batch 256 --iterations 200 --json
run bench_network_64 120 "$B" bench network --device cuda --arch spinn --batch 64 --iterations 10 --json
run bench_network_256 120 "$B" bench network --device cuda --arch spinn --batch 256 --iterations 5 --json
run bench_network_cpu 120 "$B" bench network --arch spinn --batch 64 --iterations 2 --threads "$(nproc)" --json
run demo 150 "$B" demo --device cuda -o "$WORK/demo" -q
# issue 19 on the device: populations, restarts, culling, the interpolated centre and the
# merge with the state resident on the GPU, against the CPU engine on the same 16 noisy
# beamstop patterns (times and the density errors after alignment, `evaluate --json`)
R="$WORK/robust"; mkdir -p "$R"
run robust_simulate 60 "$B" simulate --preset paper --pdb "$root/assets/pdb/heldout.txt" --count 16 --seed 1 \
    --photons 1e7 --noise poisson --mask beamstop:3 -o "$R/data.cxi" --quiet
robust=(--starts 16 --population generations=2,keep=4,every=300 --restart default --cull at=100,keep=12
        --missing-centre interpolate:400 --merge 4 --seed 1 --json)
run robust_phase_cuda 120 "$B" phase "$R/data.cxi" -o "$R/cuda.cxi" --device cuda "${robust[@]}"
run robust_phase_cpu 180 "$B" phase "$R/data.cxi" -o "$R/cpu.cxi" --device cpu "${robust[@]}"
run robust_evaluate 60 "$B" evaluate --truth "$R/data.cxi" --input "$R/cuda.cxi" "$R/cpu.cxi" --report "$R/report" --json
cp "$WORK/demo/summary.json" "$L/demo_summary.json" 2>/dev/null
tar -czf "$OUT/check.tar.gz" -C "$WORK" check
echo "checks done in $(( $(date +%s) - T0 )) s; $(left) s left"

if [ "${TRAIN:-0}" = 1 ] || [ -e "$here/TRAIN" ]; then
    T="$WORK/train"; mkdir -p "$T"
    DEADLINE_LEFT=$(left) WORK="$T" OUT="$OUT" CDIPHASE="$B" WHEELS="$here/wheels" \
        bash "$root/tools/keras/gpu_train.sh" > "$T/gpu_train.log" 2>&1
    echo "gpu_train.sh rc=$?" >> "$T/gpu_train.log"
    tail -5 "$T/gpu_train.log"
    tar -czf "$OUT/train.tar.gz" -C "$WORK" --exclude='train/data' --exclude='train/run/.cache' --exclude='train/stage1/.cache' \
        --exclude='*.cxi' --exclude='*.safetensors' --exclude='*.keras' --exclude='*.h5' train
fi
ls -la "$OUT"
echo "total $(( $(date +%s) - T0 )) s"

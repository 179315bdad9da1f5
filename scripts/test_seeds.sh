#!/usr/bin/env bash
# Runs the test binaries many times, each run with fresh random inputs (every randomized
# test draws from CDIPHASE_TEST_SEED, else the clock: tests/common/rng.rs), to find a
# tolerance that a correct kernel can exceed before the clean-clone CI does.
#
#   scripts/test_seeds.sh [ROUNDS] [TEST ...]
#
# ROUNDS (default 20) rounds over the named integration tests (default: every test binary
# of `cargo test --release`, the library's unit tests included as `unittests`). Needs the
# venv of scripts/test.sh (run it once first). Each failure's whole output is kept under
# target/test-seeds/ and its repeat command printed; the exit status is 1 if any run
# failed. A round of every binary takes about 3.5 minutes on 2 cores; the fast randomized
# ones alone (emu_nn nn_layers phasing_reference emu_phasing emu_kernels ml ...) seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
rounds=${1:-20}
shift || true
case "$rounds" in
    '' | *[!0-9]*) echo "scripts/test_seeds.sh: ROUNDS must be a number, not '$rounds'" >&2; exit 2 ;;
esac
[ -x .venv/bin/python ] || { echo "scripts/test_seeds.sh: no .venv: run scripts/test.sh once first" >&2; exit 2; }

nvrtc_lib=$(.venv/bin/python -c 'import glob, sys; print(glob.glob(sys.prefix + "/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib")[0])')
export LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CDIPHASE_PYTHON="$root/.venv/bin/python"
export CDIPHASE_REQUIRE_NVRTC=1

# the binaries `cargo test --release` would run: "Executable tests/NAME.rs (PATH)" and
# "Executable unittests src/lib.rs (PATH)"
list=$(mktemp)
trap 'rm -f "$list"' EXIT
cargo build --release --bin cdiphase --quiet
cargo test --release --no-run 2>&1 | sed -n -E 's/^ *Executable (unittests )?([^ ]+) \((.*)\)$/\2 \3/p' |
    while read -r src path; do
        case "$src" in
            src/lib.rs) echo "unittests $path" ;;
            tests/*) echo "$(basename "$src" .rs) $path" ;;
        esac
    done > "$list"
if [ "$#" -gt 0 ]; then
    for t in "$@"; do
        grep -q "^$t " "$list" || { echo "scripts/test_seeds.sh: no test binary '$t'" >&2; exit 2; }
    done
    want=" $* "
    awk -v want="$want" 'index(want, " " $1 " ")' "$list" > "$list.sel" && mv "$list.sel" "$list"
fi
out=target/test-seeds
mkdir -p "$out"
runs=0
failed=0
for r in $(seq 1 "$rounds"); do
    while read -r name path; do
        log="$out/$name.round$r.log"
        runs=$((runs + 1))
        if "$path" -q > "$log" 2>&1; then
            rm -f "$log"
        else
            failed=$((failed + 1))
            base=$(sed -n -E 's/.*test seed ([0-9]+) .*/\1/p' "$log" | head -n 1)
            echo "FAILED: $name, round $r: $log"
            grep -E "panicked at|^thread '" -A 1 "$log" | head -n 6 | sed 's/^/    /'
            env=${base:+CDIPHASE_TEST_SEED=$base }
            if [ "$name" = unittests ]; then
                echo "    repeat: ${env}cargo test --release --lib"
            else
                echo "    repeat: ${env}cargo test --release --test $name"
            fi
        fi
    done < "$list"
    echo "round $r of $rounds: $failed failed of $runs runs so far"
done
echo "test_seeds: $runs runs of $(wc -l < "$list") test binaries, $failed failed"
[ "$failed" -eq 0 ]

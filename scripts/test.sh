#!/usr/bin/env bash
# Every test of cdiphase, on a fresh machine with only Rust and python3: the README's test
# command and what .ci/run runs after its lint steps.
#
#   scripts/test.sh [extra cargo test arguments]
#
# 1. Creates the pinned Python venv `.venv/` in the crate root once (numpy + h5py for the
#    h5py interop tests and the Keras fixture reference, the NVRTC/ptxas wheels for the GPU
#    kernel compile checks). A stamp of the requirement files' hashes skips the install when
#    nothing changed; a lock makes two concurrent runs safe.
# 2. Compiles every CUDA kernel to PTX (sm_70/80/90) and assembles it with ptxas.
# 3. Checks the committed Keras fixtures against the float64 numpy reference.
# 4. Runs `cargo test --release` with the venv's Python and libnvrtc, so that no test can
#    skip: a missing Python or libnvrtc is a test failure, not a silent skip.
# 5. Builds the Python package (python/, maturin, pinned in tools/requirements-python.txt)
#    into the venv and runs its pytest suite (python/tests: parity with the release binary
#    built in step 4, errors, GIL, Ctrl-C, the quickstart example).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

py=${PYTHON:-python3}
reqs=(tools/requirements-ci.txt tools/gpu/requirements.txt tools/requirements-python.txt)
command -v "$py" >/dev/null || { echo "scripts/test.sh: $py not found: install Python 3.10+ (or PYTHON=...)" >&2; exit 2; }

setup_venv() {
    local stamp want
    want=$(cat "${reqs[@]}" | sha256sum | cut -d' ' -f1)
    stamp=.venv/.cdiphase-requirements
    if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return
    fi
    echo "== python venv .venv (pinned: ${reqs[*]})"
    if [ ! -x .venv/bin/python ]; then
        "$py" -m venv .venv || { echo "scripts/test.sh: '$py -m venv' failed (Debian/Ubuntu: apt install python3-venv)" >&2; exit 2; }
    fi
    local r
    for r in "${reqs[@]}"; do
        .venv/bin/pip install --quiet --disable-pip-version-check -r "$r"
    done
    echo "$want" > "$stamp"
}
mkdir -p target
exec 9> target/.venv-setup.lock
flock 9
setup_venv
flock -u 9
.venv/bin/python -c "import numpy, h5py; print('numpy', numpy.__version__, 'h5py', h5py.__version__)"

echo "== GPU kernels: NVRTC -> PTX -> ptxas -v for sm_70/80/90 (no GPU needed)"
.venv/bin/python tools/gpu/compile_check.py

echo "== Keras fixtures against the float64 numpy reference (numpy + h5py only)"
.venv/bin/python tools/keras/numpy_ref.py

nvrtc_lib=$(.venv/bin/python -c 'import glob, sys; print(glob.glob(sys.prefix + "/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib")[0])')
export LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CDIPHASE_PYTHON="$root/.venv/bin/python"
export CDIPHASE_REQUIRE_NVRTC=1

echo "== cargo test --release $*"
log=$(mktemp)
set +e
cargo test --release "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

echo "== Python package: maturin develop --release into .venv, then pytest python/tests"
set +e
(cd python && VIRTUAL_ENV="$root/.venv" PATH="$root/.venv/bin:$PATH" maturin develop --release --quiet) 2>&1 | tail -n 20
py_build=${PIPESTATUS[0]}
if [ "$py_build" -eq 0 ]; then
    cargo build --release --bin cdiphase --quiet  # the binary the parity tests compare with
    .venv/bin/python -m pytest -p no:cacheprovider python/tests 2>&1 | tee -a "$log"
    py_status=${PIPESTATUS[0]}
else
    echo "scripts/test.sh: building the Python package failed" >&2
    py_status=$py_build
fi
set -e
[ "$status" -eq 0 ] && status=$py_status

# one closing line over every test binary and the pytest suite
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1); if ($i ~ /^ignored;?$/) s += $(i-1) } }
     /^=+ .*(passed|failed|error).* in [0-9.]+s/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed,?$/) p += $(i-1); if ($i ~ /^(failed|errors?),?$/) f += $(i-1); if ($i ~ /^skipped,?$/) s += $(i-1) } }
     END { printf "total: %d passed, %d failed, %d ignored (long runs, run by hand)\n", p, f, s }' "$log"
rm -f "$log"
exit "$status"

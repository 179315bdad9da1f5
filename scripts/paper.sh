#!/usr/bin/env bash
# Reproducing the paper (issue 13): every table and figure of its evaluation, in its own
# geometry, on held-out structures, regenerated into OUT_DIR (default results/paper):
#   supports.md/.json  the support protocol (section 4, figure 4): FN < 2 and FN <= 2 shares,
#                      mean/median FP, FP / ideal area, 95 % bootstrap intervals over the
#                      structures; network, autocorrelation, triple intersection, the
#                      training set's mean image, the oracle
#   prtf.md/.json/.png phasing with four starting supports (section 5, figure 5): the PRTF
#                      over STARTS random starts and its resolution (1/e crossing)
#   seeding.md/.json   network-seeded against random starts (section 6, figure 7):
#   + seeding_*.png    iterations to the random starts' Fourier-error level, spread
#   summary.md         the paper's figures and ours side by side, the issue's targets as
#                      PASS/FAIL, the commands, the CPU and the date
# The intermediate files (patterns, supports, reconstructions, full reports) go to
# OUT_DIR/data (ignored by git).
#
# Usage: scripts/paper.sh [OUT_DIR]
# Env:   BIN          the binary (default target/release/cdiphase; built if missing)
#        MODEL        a model file for predict --model (default: the bundled model)
#        COUNT        held-out test patterns for the support table (1000, as the paper)
#        TRAIN        training-structure patterns for the mean image (2000)
#        PHASE_COUNT  held-out patterns phased (48: each of the 7 held-out structures
#                     6-7 times in other orientations; with 8 the seeding verdicts
#                     flipped between noise draws of the same configuration, and on 24
#                     two models that seed alike on 48 scored 1.59x and 2.47x)
#        STARTS       random starts per pattern and starting support (10, as the paper)
#        ITER         HIO iterations (10000, as the paper); the schedule is
#                     ITER/5 * (5 HIO + 5 ER), the Fourier error at the end of every ER section
#        SW_EVERY     shrinkwrap period in iterations (50; the paper does not say)
#        ORACLE_SIGMA the oracle's blur in pixels (1.5)
#        SEED_SIGMA   the blur in pixels of the seeding oracle: the true density blurred
#                     (twin kept) as the starting object, a third row of figure 7 that
#                     shows how sharp a seed must be (2.5: it passes 2x; the network's
#                     density sits near 4 px)
#        PHOTONS      Poisson noise on the phasing set, total photons per pattern (default
#                     none: noise-free |F|^2 as the paper's data and the network's input)
#        THREADS      CPU threads (default: every core)
#        PDB          the structure folder with its heldout.txt (assets/pdb)
#        PYTHON       a Python with numpy and h5py (default .venv/bin/python, made by
#                     scripts/test.sh, else python3)
# Smoke run (about a minute on 2 cores):
#   COUNT=40 TRAIN=100 PHASE_COUNT=2 STARTS=3 ITER=250 scripts/paper.sh /tmp/paper-smoke
# The full run takes about 35 minutes of 2 cores (more on a shared machine), most of it
# phasing: 7 runs of PHASE_COUNT x STARTS x 2 ITER iterations.
set -euo pipefail
cd "$(dirname "$0")/.."
me=paper.sh
OUT=${1:-results/paper}
BIN=${BIN:-target/release/cdiphase}
MODEL=${MODEL:-}
COUNT=${COUNT:-1000}
TRAIN=${TRAIN:-2000}
PHASE_COUNT=${PHASE_COUNT:-48}
STARTS=${STARTS:-10}
ITER=${ITER:-10000}
SW_EVERY=${SW_EVERY:-50}
ORACLE_SIGMA=${ORACLE_SIGMA:-1.5}
SEED_SIGMA=${SEED_SIGMA:-2.5}
PHOTONS=${PHOTONS:-}
THREADS=${THREADS:-$(nproc)}
PDB=${PDB:-assets/pdb}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

int() { [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge "$3" ] || { echo "$me: $1 '$2' must be an integer >= $3" >&2; exit 2; }; }
int COUNT "$COUNT" 1
int TRAIN "$TRAIN" 1
int PHASE_COUNT "$PHASE_COUNT" 1
int STARTS "$STARTS" 2
int ITER "$ITER" 5
int SW_EVERY "$SW_EVERY" 1
int THREADS "$THREADS" 1
[ $((ITER % 5)) = 0 ] || { echo "$me: ITER $ITER must be a multiple of 5 (5 HIO per section)" >&2; exit 2; }
[ -f "$PDB/heldout.txt" ] || { echo "$me: $PDB/heldout.txt not found (PDB=...)" >&2; exit 2; }
"$PYTHON" -c 'import numpy, h5py' 2>/dev/null || {
    echo "$me: $PYTHON lacks numpy/h5py: run scripts/test.sh once (it makes .venv) or set PYTHON=..." >&2
    exit 2
}
if [ ! -x "$BIN" ]; then
    [ "$BIN" = target/release/cdiphase ] || { echo "$me: $BIN not found" >&2; exit 2; }
    cargo build --release
fi
if [ -n "$MODEL" ] && [ ! -f "$MODEL" ]; then
    echo "$me: MODEL $MODEL not found" >&2
    exit 2
fi

D="$OUT/data"
mkdir -p "$D"
CMDS="$D/commands.txt"
: > "$CMDS"
t0=$(date +%s)
# run a cdiphase command, logging it (paths as given) for summary.md
cdi() {
    echo "cdiphase $*" >> "$CMDS"
    "$BIN" "$@"
}
step() { echo "== [$(($(date +%s) - t0)) s] $*"; }
model=()
[ -n "$MODEL" ] && model=(--model "$MODEL")
CYCLES=$((ITER / 5))
SCHEDULE="$CYCLES*(5*HIO + 5*ER)"
SW10="sigma=1,threshold=0.1,every=$SW_EVERY"
SW15="sigma=1,threshold=0.15,every=$SW_EVERY"
common=(--threads "$THREADS" -q)

# the training structures: every structure of the folder not in heldout.txt (as
# tools/keras/make_paper_data.sh), relative to the list (simulate reads them so)
find "$PDB" -maxdepth 1 -type f \( -name '*.pdb' -o -name '*.pdb.gz' -o -name '*.ent' \
    -o -name '*.ent.gz' -o -name '*.cif' -o -name '*.cif.gz' \) -printf '%f\n' | sort |
    { grep -v -x -F -f <(sed 's/[[:space:]]*$//; /^$/d; /^#/d' "$PDB/heldout.txt") || true; } |
    sed "s|^|$(realpath -m --relative-to="$D" "$PDB")/|" > "$D/train.txt"
[ -s "$D/train.txt" ] || { echo "$me: no training structure in $PDB" >&2; exit 2; }

step "simulate: $COUNT held-out test patterns, $TRAIN training patterns (--preset paper)"
sim=(simulate --preset paper --ideal-support threshold:0.1 "${common[@]}")
cdi "${sim[@]}" --pdb "$PDB/heldout.txt" --count "$COUNT" --seed 4 -o "$D/test.cxi"
cdi "${sim[@]}" --pdb "$D/train.txt" --count "$TRAIN" --seed 1 -o "$D/train.cxi"

step "supports: network, autocorrelation, triple intersection, mean image, oracle"
cdi predict "$D/test.cxi" "${model[@]}" -o "$D/test_nn.cxi" --device cpu "${common[@]}"
S="$D/supports"
mkdir -p "$S"
cdi support "$D/test_nn.cxi" --method nn --threshold 0.1 -o "$S/network.cxi" --threads "$THREADS"
cdi support "$D/test.cxi" --method autocorrelation -o "$S/autocorrelation.cxi" --threads "$THREADS"
cdi support "$D/test.cxi" --method triple-intersection -o "$S/triple_intersection.cxi" --threads "$THREADS"
cdi support "$D/test.cxi" --method mean-image --from "$D/train.cxi" -o "$S/mean_image.cxi" --threads "$THREADS"
cdi support "$D/test.cxi" --method oracle --sigma "$ORACLE_SIGMA" -o "$S/oracle.cxi" --threads "$THREADS"
cdi evaluate --truth "$D/test.cxi" --input "$S/network.cxi" "$S/autocorrelation.cxi" \
    "$S/triple_intersection.cxi" "$S/mean_image.cxi" "$S/oracle.cxi" \
    --report "$D/supports_report" --threads "$THREADS" > /dev/null
# the network's density itself (the predict output: its support is network.cxi's), against
# the truth after the best shift, twin and scale, beside the mean image's and the oracle's
cdi evaluate --truth "$D/test.cxi" --input "$D/test_nn.cxi" \
    --report "$D/density_report" --threads "$THREADS" > /dev/null

step "phasing set: $PHASE_COUNT held-out patterns; network output; circle of the maximum extent"
P="$D/phasing"
mkdir -p "$P"
noise=()
[ -n "$PHOTONS" ] && noise=(--noise poisson --photons "$PHOTONS")
cdi "${sim[@]}" "${noise[@]}" --pdb "$PDB/heldout.txt" --count "$PHASE_COUNT" --seed 4 \
    -o "$P/patterns.cxi"
cdi predict "$P/patterns.cxi" "${model[@]}" -o "$P/nn.cxi" --device cpu "${common[@]}"
cdi support "$P/patterns.cxi" --method circle -o "$P/circle_support.cxi" --threads "$THREADS"
phase() { # name, args...
    local name=$1
    shift
    step "phase $name: $PHASE_COUNT patterns x $STARTS starts, $SCHEDULE"
    cdi phase "$P/patterns.cxi" -o "$P/$name.cxi" --algorithm "$SCHEDULE" --beta 0.9 \
        --constraint positive --starts "$STARTS" --seed 1 --device cpu "${common[@]}" --json \
        "$@" > "$P/$name.json"
}
# section 5 / figure 5: fixed supports, and circle + shrinkwrap (sigma 1, threshold 0.1)
phase autocorrelation --support autocorrelation:0.04 --keep-all
phase circle --support "$P/circle_support.cxi" --keep-all
phase circle_shrinkwrap --support "$P/circle_support.cxi" --shrinkwrap "$SW10" --keep-all
phase network_support --support "$P/nn.cxi" --keep-all
cdi evaluate --truth "$P/patterns.cxi" --input "$P/autocorrelation.cxi" "$P/circle.cxi" \
    "$P/circle_shrinkwrap.cxi" "$P/network_support.cxi" --report "$D/prtf_report" \
    --threads "$THREADS" > /dev/null
# section 6 / figure 7: circle + shrinkwrap (sigma 1, threshold 0.15), random starts
# against the network's density as the starting object (each start with its own 20 %
# multiplicative noise, as cdiphase demo, so that the starts differ)
phase random_start --support "$P/circle_support.cxi" --shrinkwrap "$SW15"
phase network_start --support "$P/circle_support.cxi" --shrinkwrap "$SW15" --init "$P/nn.cxi" \
    --init-noise 0.2
# the seeding oracle: the true density blurred by SEED_SIGMA px, twin kept, the same noise
cdi support "$P/patterns.cxi" --method oracle --sigma "$SEED_SIGMA" --twin none \
    -o "$P/oracle_seed.cxi" --threads "$THREADS"
phase oracle_start --support "$P/circle_support.cxi" --shrinkwrap "$SW15" \
    --init "$P/oracle_seed.cxi" --init-noise 0.2
cdi evaluate --truth "$P/patterns.cxi" --input "$P/random_start.cxi" "$P/network_start.cxi" \
    --report "$D/seeding_report" --threads "$THREADS" > /dev/null

step "tables and figures"
cp "$D/supports_report/support_fp_fn.png" "$OUT/supports_fp_fn.png"
cp "$D/prtf_report/prtf.png" "$OUT/prtf.png"
cp "$D/seeding_report/fourier_error_starts.png" "$OUT/seeding_fourier_error.png"
cp "$D/seeding_report/fourier_error.png" "$OUT/seeding_fourier_error_best.png"
secs=$(($(date +%s) - t0))
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
"$PYTHON" scripts/paper_report.py --out "$OUT" --data "$D" --seconds "$secs" --seed-sigma "$SEED_SIGMA" \
    --cpu "${cpu:-unknown} ($(nproc) cores visible, $THREADS threads)" \
    --knobs "COUNT=$COUNT TRAIN=$TRAIN PHASE_COUNT=$PHASE_COUNT STARTS=$STARTS ITER=$ITER SW_EVERY=$SW_EVERY ORACLE_SIGMA=$ORACLE_SIGMA SEED_SIGMA=$SEED_SIGMA PHOTONS=${PHOTONS:-none} THREADS=$THREADS"
step "done: $OUT/summary.md"

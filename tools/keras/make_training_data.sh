#!/usr/bin/env bash
# Simulate the training data of the planned compact-model run (issue 7) with cdiphase.
#
#   tools/keras/make_training_data.sh OUT_DIR [SCALE]
#
# Env: CDIPHASE (default target/release/cdiphase), PDB (default assets/pdb, the bundled structures),
#      SIZE (default 128), THREADS (default 2).
# SCALE multiplies every count (default 1; 0.05 for a smoke set of about 320 patterns).
# Writes four CXI files (at SCALE 1 about 6,400 patterns, 0.8 GB):
#   pdb_clean.cxi  1,200 patterns, the 46 structures cycled (~26 orientations each), noiseless
#   pdb_noisy.cxi  1,200 patterns, other orientations (seed), Poisson noise, 1e8 photons
#   syn_clean.cxi  2,000 synthetic protein-like particles (all four kinds), noiseless
#   syn_noisy.cxi  2,000 other synthetic particles, Poisson noise, 1e8 photons
# train.py splits by structure id across files, so a test structure is held out of both
# PDB files; synthetic particles only go to training/validation.
set -euo pipefail
out=${1:?usage: make_training_data.sh OUT_DIR [SCALE]}
scale=${2:-1}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cdiphase=${CDIPHASE:-$root/target/release/cdiphase}
pdb=${PDB:-$root/assets/pdb}
size=${SIZE:-128}
threads=${THREADS:-2}
[ -x "$cdiphase" ] || { echo "make_training_data.sh: $cdiphase not found (cargo build --release, or CDIPHASE=...)" >&2; exit 2; }
[ -d "$pdb" ] || { echo "make_training_data.sh: $pdb: no structure folder (PDB=...)" >&2; exit 2; }
n() { python3 -c "import sys; print(max(1, round($1 * float(sys.argv[1]))))" "$scale"; }
mkdir -p "$out"
sim() { "$cdiphase" simulate -q --size "$size" --threads "$threads" "$@"; }
sim --pdb "$pdb" --count "$(n 1200)" --seed 11 -o "$out/pdb_clean.cxi"
sim --pdb "$pdb" --count "$(n 1200)" --seed 12 --noise poisson --photons 1e8 -o "$out/pdb_noisy.cxi"
sim --synthetic all --count "$(n 2000)" --seed 13 -o "$out/syn_clean.cxi"
sim --synthetic all --count "$(n 2000)" --seed 14 --noise poisson --photons 1e8 -o "$out/syn_noisy.cxi"
ls -l "$out"/*.cxi

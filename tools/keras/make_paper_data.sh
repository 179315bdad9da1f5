#!/usr/bin/env bash
# Simulate the training and held-out test sets in the paper's geometry (issue 13) with the
# release binary: no Rust toolchain needed, only bash, coreutils and python3.
#
#   tools/keras/make_paper_data.sh OUT_DIR [SCALE]
#
# Env: CDIPHASE  the binary (default target/release/cdiphase of this checkout)
#      IDEAL     the ideal support rule, --ideal-support (default threshold:0.1: the paper's
#                figure 6 caption, "ideal support estimated by thresholding the ground
#                truth"; molmap, the extent density > 0, makes 90 % FN < 2 unreachable even
#                for the oracle, see NOTES.md "The paper's geometry")
#      THREADS   simulator threads per file (default: every core, nproc)
#      PDB       the structure folder (default assets/pdb, the bundled structures; its
#                heldout.txt names the test structures)
# SCALE multiplies the training counts (default 1: 45,000 patterns, about 6.6 GB; 0.02 for
# a smoke set of 900). The test set is always 1,000 patterns. Every file is --preset paper
# (128x128, 0.2333 nm pixels, 3.5 Å, bounding box centred, supersampling 2, noise-free),
# each with its own seed, written to OUT_DIR (point it at tmpfs or a fast disk: each
# pattern is 147 KB):
#   train_pdb.cxi   18,000  the bundled structures minus heldout.txt, whole entries, a
#                           random orientation each (~460 per structure)
#   train_asm.cxi   13,500  as many assemblies of 2-3 of those structures, in contact
#   train_syn.cxi   10,800  synthetic compact, elongated and multidomain particles,
#                           30-300 residues
#   train_ring.cxi   2,700  synthetic rings, 30-300 residues
#   test.cxi         1,000  the held-out structures of heldout.txt, random orientations
# and train.txt (the training structures, one path a line). The files are simulated
# concurrently; the script fails if any simulation fails.
set -euo pipefail
usage="usage: make_paper_data.sh OUT_DIR [SCALE]"
out=${1:?$usage}
scale=${2:-1}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cdiphase=${CDIPHASE:-$root/target/release/cdiphase}
pdb=${PDB:-$root/assets/pdb}
ideal=${IDEAL:-threshold:0.1}
threads=${THREADS:-$(nproc)}
me=make_paper_data.sh
[ -x "$cdiphase" ] || { echo "$me: $cdiphase not found (cargo build --release, or CDIPHASE=...)" >&2; exit 2; }
[ -f "$pdb/heldout.txt" ] || { echo "$me: $pdb/heldout.txt not found (PDB=...)" >&2; exit 2; }
python3 -c 'import sys; assert float(sys.argv[1]) > 0' "$scale" 2>/dev/null ||
    { echo "$me: SCALE '$scale' is not a positive number; $usage" >&2; exit 2; }
n() { python3 -c 'import sys; print(max(1, round(float(sys.argv[1]) * float(sys.argv[2]))))' "$1" "$scale"; }
mkdir -p "$out"
out=$(cd "$out" && pwd)

# the training structures: every structure file of the folder not named in heldout.txt
pdb=$(cd "$pdb" && pwd)
find "$pdb" -maxdepth 1 -type f \( -name '*.pdb' -o -name '*.pdb.gz' -o -name '*.ent' \
    -o -name '*.ent.gz' -o -name '*.cif' -o -name '*.cif.gz' \) -printf '%f\n' | sort |
    { grep -v -x -F -f <(sed 's/[[:space:]]*$//; /^$/d; /^#/d' "$pdb/heldout.txt") || true; } |
    sed "s|^|$pdb/|" > "$out/train.txt"
ntrain=$(wc -l < "$out/train.txt")
[ "$ntrain" -gt 0 ] || { echo "$me: no training structure in $pdb" >&2; exit 2; }

sim() {
    "$cdiphase" simulate -q --preset paper --ideal-support "$ideal" --threads "$threads" "$@"
}
echo "$me: $ntrain training structures, held out: $pdb/heldout.txt; ideal support $ideal; $threads threads per file; into $out"
start=$(date +%s.%N)
pids=()
names=()
run() {
    local name=$1
    shift
    sim "$@" -o "$out/$name.cxi" &
    pids+=($!)
    names+=("$name")
}
run train_pdb --pdb "$out/train.txt" --count "$(n 18000)" --seed 1
run train_asm --pdb "$out/train.txt" --assemblies "$(n 13500)" --count "$(n 13500)" --seed 2
run train_syn --synthetic compact,elongated,multidomain --residues 30:300 --count "$(n 10800)" --seed 3
run train_ring --synthetic ring --residues 30:300 --count "$(n 2700)" --seed 5
run test --pdb "$pdb/heldout.txt" --count 1000 --seed 4
failed=0
for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
        echo "$me: simulating ${names[$i]} failed" >&2
        failed=1
    fi
done
[ "$failed" = 0 ] || exit 1
python3 -c 'import sys, time; print("%s: done in %.1f s" % (sys.argv[1], time.time() - float(sys.argv[2])))' "$me" "$start"
ls -l "$out"/*.cxi

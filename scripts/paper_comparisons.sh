#!/usr/bin/env bash
# The paper's comparisons (sections 4-6) on patterns simulated from assets/pdb (the bundled structures):
#   1. support estimates against the ideal support (figure 4): autocorrelation vs triple
#      intersection, on clean and on beamstop-masked data;
#   2. phasing with different starting supports (figures 5 and 7): ideal, autocorrelation,
#      triple intersection, circle, circle + shrinkwrap, autocorrelation + shrinkwrap,
#      K random starts each: Fourier error histories, density error after alignment, PRTF.
# Usage: scripts/paper_comparisons.sh [OUT_DIR]   (default results/paper_comparisons)
# Environment: COUNT (32), SIZE (128), STARTS (8), SCHEDULE ("200*(5*HIO + 5*ER)"),
#              PHOTONS (1e8), THREADS (2), PDB (assets/pdb), BIN (target/release/cdiphase),
#              REUSE=1 keeps phasing outputs already in OUT/data (the simulation is seeded).
# About 5 minutes of CPU (user) time with the defaults: 2.5 minutes on 2 idle cores.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/paper_comparisons}
COUNT=${COUNT:-32}
SIZE=${SIZE:-128}
STARTS=${STARTS:-8}
SCHEDULE=${SCHEDULE:-"200*(5*HIO + 5*ER)"}
PHOTONS=${PHOTONS:-1e8}
THREADS=${THREADS:-2}
PDB=${PDB:-assets/pdb}
BIN=${BIN:-target/release/cdiphase}
REUSE=${REUSE:-0}
FILL=0.45
# the circle of the particle's maximum extent: the simulator scales every particle so that
# its extent is FILL of the field
RADIUS=$(python3 -c "print(round($FILL * $SIZE / 2 + 1, 1))")
SW="sigma=1,threshold=0.1,every=50"

[ -x "$BIN" ] || cargo build --release
mkdir -p "$OUT/data"
D="$OUT/data"
t0=$(date +%s)

echo "== simulate $COUNT patterns ${SIZE}x${SIZE} from $PDB (Poisson, $PHOTONS photons)"
"$BIN" simulate --pdb "$PDB" --count "$COUNT" --size "$SIZE" --fill $FILL \
    --photons "$PHOTONS" --noise poisson --seed 7 --threads "$THREADS" -q -o "$D/sim.cxi"
"$BIN" simulate --pdb "$PDB" --count "$COUNT" --size "$SIZE" --fill $FILL \
    --photons "$PHOTONS" --noise poisson --mask beamstop:3 --seed 7 --threads "$THREADS" -q \
    -o "$D/sim_beamstop.cxi"

echo "== supports"
# noise-free patterns too: the triple intersection with an exact autocorrelation support
"$BIN" simulate --pdb "$PDB" --count "$COUNT" --size "$SIZE" --fill $FILL \
    --seed 7 --threads "$THREADS" -q -o "$D/sim_clean.cxi"
mkdir -p "$D/noisy" "$D/beamstop" "$D/clean"
for data in noisy beamstop; do
    src="$D/sim.cxi"
    [ $data = beamstop ] && src="$D/sim_beamstop.cxi"
    "$BIN" support "$src" -o "$D/$data/autocorrelation.cxi" --method autocorrelation
    "$BIN" support "$src" -o "$D/$data/triple.cxi" --method triple-intersection
done
"$BIN" support "$D/sim_clean.cxi" -o "$D/clean/autocorrelation.cxi" --method autocorrelation
"$BIN" support "$D/sim_clean.cxi" -o "$D/clean/triple.cxi" --method triple-intersection
"$BIN" support "$D/sim_clean.cxi" -o "$D/clean/triple_exact.cxi" --method triple-intersection \
    --threshold 1e-6
"$BIN" evaluate --truth "$D/sim.cxi" --threads "$THREADS" \
    --input "$D/noisy/autocorrelation.cxi" "$D/noisy/triple.cxi" --report "$OUT/supports"
"$BIN" evaluate --truth "$D/sim_beamstop.cxi" --threads "$THREADS" \
    --input "$D/beamstop/autocorrelation.cxi" "$D/beamstop/triple.cxi" \
    --report "$OUT/supports_beamstop"
"$BIN" evaluate --truth "$D/sim_clean.cxi" --threads "$THREADS" \
    --input "$D/clean/autocorrelation.cxi" "$D/clean/triple.cxi" "$D/clean/triple_exact.cxi" \
    --report "$OUT/supports_clean"

echo "== phasing: $SCHEDULE, $STARTS starts, positivity"
phase() { # name, extra args...
    local name=$1
    shift
    if [ "$REUSE" = 1 ] && [ -f "$D/$name.cxi" ]; then
        echo "$name: reusing $D/$name.cxi"
        return
    fi
    "$BIN" phase "$D/sim.cxi" -o "$D/$name.cxi" --algorithm "$SCHEDULE" --beta 0.9 \
        --constraint positive --starts "$STARTS" --seed 1 --keep-all --threads "$THREADS" -q "$@"
}
phase ideal --support "$D/sim.cxi"
phase autocorrelation --support autocorrelation:0.04
phase triple --support "$D/noisy/triple.cxi"
phase circle --support "circle:$RADIUS"
phase circle_shrinkwrap --support "circle:$RADIUS" --shrinkwrap "$SW"
phase autocorrelation_shrinkwrap --support autocorrelation:0.04 --shrinkwrap "$SW"
"$BIN" evaluate --truth "$D/sim.cxi" --threads "$THREADS" \
    --input "$D/ideal.cxi" "$D/autocorrelation.cxi" "$D/triple.cxi" "$D/circle.cxi" \
    "$D/circle_shrinkwrap.cxi" "$D/autocorrelation_shrinkwrap.cxi" \
    --report "$OUT/phasing"

# the figures kept in the repository (the reports and data stay ignored)
mkdir -p "$OUT/figures"
cp "$OUT/supports_clean/support_fp_fn.png" "$OUT/figures/supports_clean_fp_fn.png"
cp "$OUT/supports/support_fp_fn.png" "$OUT/figures/supports_noisy_fp_fn.png"
cp "$OUT/supports_beamstop/support_fp_fn.png" "$OUT/figures/supports_beamstop_fp_fn.png"
cp "$OUT/supports_clean/grid_2_triple_exact.png" "$OUT/figures/grid_clean_triple_exact.png"
cp "$OUT/supports_beamstop/grid_1_triple.png" "$OUT/figures/grid_beamstop_triple.png"
cp "$OUT/phasing/prtf.png" "$OUT/figures/phasing_prtf.png"
cp "$OUT/phasing/fourier_error.png" "$OUT/figures/phasing_fourier_error.png"
cp "$OUT/phasing/density_error.png" "$OUT/figures/phasing_density_error.png"
cp "$OUT/phasing/grid_2_triple.png" "$OUT/figures/grid_phasing_triple.png"

t1=$(date +%s)
python3 - "$OUT" "$((t1 - t0)) s$([ "$REUSE" = 1 ] && echo ' (phasing outputs reused)')" "$SCHEDULE" "$STARTS" "$COUNT" "$SIZE" "$PHOTONS" "$RADIUS" <<'PY'
import json, sys
out, secs, schedule, starts, count, size, photons, radius = sys.argv[1:]
def load(name):
    return json.load(open(f"{out}/{name}/metrics.json"))
def st(s, d=1):
    return "-" if s is None else f"{s['mean']:.{d}f} / {s['median']:.{d}f}"
lines = [f"Run: {count} patterns {size}x{size} from assets/pdb, Poisson noise at {photons} photons, "
         f"{secs} of wall time in all on this machine.", ""]
for rep, title in [("supports_clean", "noise-free patterns"), ("supports", f"Poisson noise at {photons} photons"),
                   ("supports_beamstop", f"Poisson noise, beamstop of radius 3 px masked")]:
    m = load(rep)
    lines += [f"Supports, {title} (mean / median over patterns; FN <= 2: fraction of patterns):", "",
              "| estimate | false positives | false negatives | FN <= 2 |", "|---|---|---|---|"]
    for i in m["inputs"]:
        a = i["aggregate"]
        lines.append(f"| {i['label']} | {st(a['false_positives'])} | {st(a['false_negatives'])} | "
                     f"{100 * a['fraction_fn_at_most_2']:.0f} % |")
    lines.append("")
m = load("phasing")
lines += [f"Phasing: `{schedule}`, beta 0.9, positivity, {starts} random starts per pattern, best start by final "
          f"Fourier error; circle radius {radius} px; shrinkwrap sigma 1, threshold 0.1, every 50 iterations.", "",
          "| starting support | final Fourier error | density error (best start) | density error (average of aligned starts) | support FP | support FN | PRTF 1/e (mean curve) |",
          "|---|---|---|---|---|---|---|"]
for i in m["inputs"]:
    a = i["aggregate"]
    r = a["prtf_resolution"]
    res = "-" if r is None else (("" if r["crossed"] else "> ") + f"{r['pixels']:.2f} px"
                                 + (f" ({r['nm']:.2f} nm)" if r.get("nm") else ""))
    lines.append(f"| {i['label']} | {st(a['final_fourier_error'], 4)} | {st(a['density_error'], 3)} | "
                 f"{st(a['average_error'], 3)} | {st(a['false_positives'])} | {st(a['false_negatives'])} | {res} |")
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "reports: $OUT/{supports,supports_beamstop,phasing}/index.html, summary: $OUT/summary.md"

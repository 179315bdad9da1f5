#!/usr/bin/env bash
# Phasing success on realistic patterns (issue 19): which recipe phases, on clean and on
# noisy data with beamstops, as the field scores it (the density error after alignment).
#
#   scripts/phasing_benchmark.sh [OUT_DIR]        (default: phasing-benchmark/)
#
# 1. Simulates COUNT patterns of the bundled held-out structures in the paper's geometry
#    (`simulate --preset paper`, 128x128): one noise-free set without a mask and, for each
#    beamstop radius in RADII, a Poisson set at PHOTONS photons with that beamstop.
# 2. Phases every set with every recipe (RECIPES: names from the list below; default all),
#    STARTS random starts each, positivity, seeded.
# 3. Scores each output with `cdiphase evaluate` (density error: min over translation, twin
#    and complex scale of ||rho - c x|| / ||rho||) and prints, per recipe and set, the share
#    of patterns under 0.1 and under 0.2, the median error and the phasing time per
#    pattern; writes OUT_DIR/summary.md and summary.json.
#
# Env: BIN (default target/release/cdiphase), COUNT (24), STARTS (8), PHOTONS (1e7),
# RADII ("2 3 4"), SEED (1), THREADS (all cores), PDB (assets/pdb/heldout.txt), RECIPES,
# CONSTRAINT (positive).
# Needs bash, coreutils and python3 (standard library only).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-phasing-benchmark}
BIN=${BIN:-target/release/cdiphase}
COUNT=${COUNT:-24}
STARTS=${STARTS:-8}
PHOTONS=${PHOTONS:-1e7}
RADII=${RADII:-2 3 4}
SEED=${SEED:-1}
CONSTRAINT=${CONSTRAINT:-positive}
PDB=${PDB:-assets/pdb/heldout.txt}
THREADS_ARG=()
if [ -n "${THREADS:-}" ]; then THREADS_ARG=(--threads "$THREADS"); fi

# name|phase arguments (every recipe: --constraint $CONSTRAINT, --starts, --seed); `paper`
# is the paper's schedule without shrinkwrap (the CLI's default before issue 19), `readme`
# the README's recipe before issue 19, `tuned` the issue's tuned recipe (the default since),
# `tuned-ml` the same followed by 50 iterations of Poisson maximum-likelihood refinement,
# `tuned-ml-mid` with them between the HIO and the ER sections
ALL_RECIPES=(
    "paper|--algorithm 2000*(5*HIO+5*ER)"
    "readme|--algorithm 100*(5*HIO+5*ER) --support autocorrelation:0.04 --shrinkwrap sigma=1,threshold=0.1,every=50"
    "tuned|--algorithm HIO**800+ER**200 --shrinkwrap sigma=1,threshold=0.1,every=50,stop=950"
    "tuned-llk|--algorithm HIO**800+ER**200 --shrinkwrap sigma=1,threshold=0.1,every=50,stop=950 --select llk"
    "tuned-free|--algorithm HIO**800+ER**200 --shrinkwrap sigma=1,threshold=0.1,every=50,stop=950 --select free-llk"
    "rms-guard|--algorithm HIO**800+ER**200 --shrinkwrap sigma=1,threshold=0.25,ref=rms,every=50,stop=950,min=0.002,max=0.2 --select llk"
    "rms-guard-rand|--algorithm HIO**800+ER**200 --shrinkwrap sigma=1,threshold=0.25,ref=rms,factor=0.8:1.2,every=50,stop=950,min=0.002,max=0.2 --select llk"
    "tuned-ml|--algorithm HIO**800+ER**200+ML**50 --shrinkwrap sigma=1,threshold=0.1,every=50,stop=950"
    "tuned-ml-mid|--algorithm HIO**800+ML**50+ER**200 --shrinkwrap sigma=1,threshold=0.1,every=50,stop=950"
    "tuned-ml-llk|--algorithm HIO**800+ER**200+ML**50 --shrinkwrap sigma=1,threshold=0.1,every=50,stop=950 --select llk"
    "raar-rms-guard|--algorithm RAAR**800+ER**200 --shrinkwrap sigma=1,threshold=0.25,ref=rms,every=50,stop=950,min=0.002,max=0.2 --select llk"
)
RECIPES=${RECIPES:-}

[ -x "$BIN" ] || { echo "phasing_benchmark: $BIN not found: cargo build --release" >&2; exit 2; }
command -v python3 >/dev/null || { echo "phasing_benchmark: python3 not found" >&2; exit 2; }
mkdir -p "$OUT/data"

sets=("clean")
for r in $RADII; do sets+=("bs$r"); done

echo "== simulate: $COUNT patterns per set of $PDB (--preset paper)"
for s in "${sets[@]}"; do
    f="$OUT/data/$s.cxi"
    [ -s "$f" ] && continue
    if [ "$s" = clean ]; then
        "$BIN" simulate --preset paper --pdb "$PDB" --count "$COUNT" --seed "$SEED" -o "$f" --quiet "${THREADS_ARG[@]}"
    else
        "$BIN" simulate --preset paper --pdb "$PDB" --count "$COUNT" --seed "$SEED" \
            --photons "$PHOTONS" --noise poisson --mask "beamstop:${s#bs}" -o "$f" --quiet "${THREADS_ARG[@]}"
    fi
done

rows="$OUT/rows.tsv"
: > "$rows"
for entry in "${ALL_RECIPES[@]}"; do
    name=${entry%%|*}
    args=${entry#*|}
    if [ -n "$RECIPES" ] && ! grep -qw -- "$name" <<< "$RECIPES"; then continue; fi
    for s in "${sets[@]}"; do
        rec="$OUT/data/$s.$name.cxi"
        # shellcheck disable=SC2086 # the recipe's arguments are words
        t0=$(date +%s.%N)
        "$BIN" phase "$OUT/data/$s.cxi" -o "$rec" $args --constraint "$CONSTRAINT" \
            --starts "$STARTS" --seed "$SEED" --quiet "${THREADS_ARG[@]}"
        t1=$(date +%s.%N)
        rm -rf "$OUT/data/report.$s.$name"
        "$BIN" evaluate --truth "$OUT/data/$s.cxi" --input "$rec" \
            --report "$OUT/data/report.$s.$name" "${THREADS_ARG[@]}" > "$OUT/data/evaluate.$s.$name.log" 2>&1
        printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$s" "$t0" "$t1" "$OUT/data/report.$s.$name/metrics.json" >> "$rows"
        echo "   $name on $s: $(python3 -c "print(f'{$t1 - $t0:.1f}')") s"
    done
done

python3 - "$rows" "$OUT" "$COUNT" "$STARTS" "$PHOTONS" "$CONSTRAINT" <<'EOF'
import json, statistics, sys
rows, out, count, starts, photons, constraint = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
res = []
for line in open(rows):
    name, s, t0, t1, metrics = line.rstrip("\n").split("\t")
    m = json.load(open(metrics))
    errs = [p["density"]["error"] for p in m["inputs"][0]["per_pattern"] if p.get("density")]
    res.append({
        "recipe": name, "set": s, "patterns": len(errs),
        "share_below_0.1": sum(e < 0.1 for e in errs) / len(errs),
        "share_below_0.2": sum(e < 0.2 for e in errs) / len(errs),
        "median_error": statistics.median(errs),
        "seconds_per_pattern": (float(t1) - float(t0)) / len(errs),
        "errors": errs,
    })
sets = list(dict.fromkeys(r["set"] for r in res))
lines = [f"Density error after alignment, {count} patterns per set, {starts} starts, constraint {constraint}; "
         f"noisy sets: Poisson, {photons} photons, beamstop of radius R (bsR).", "",
         "| recipe | " + " | ".join(f"{s}: <0.1 / <0.2 / median" for s in sets) + " | s per pattern |",
         "|---|" + "---|" * len(sets) + "---|"]
for name in dict.fromkeys(r["recipe"] for r in res):
    cells, secs = [], []
    for s in sets:
        r = next((r for r in res if r["recipe"] == name and r["set"] == s), None)
        if r is None:
            cells.append("-")
            continue
        cells.append(f"{100 * r['share_below_0.1']:.0f} % / {100 * r['share_below_0.2']:.0f} % / {r['median_error']:.3f}")
        secs.append(r["seconds_per_pattern"])
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {statistics.mean(secs):.3f} |")
text = "\n".join(lines) + "\n"
print(text)
open(f"{out}/summary.md", "w").write(text)
json.dump(res, open(f"{out}/summary.json", "w"), indent=1)
EOF

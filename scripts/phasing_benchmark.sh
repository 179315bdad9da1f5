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
# CONSTRAINT (positive), PYNX (a Python with PyNX, e.g. .venv-pynx/bin/python from
# tools/pynx/setup.sh: adds the recipes pynx-std and pynx-id10, PyNX 2025.1's own runner
# chains on its CPU operators, by tools/pynx/pynx_phase.py, scored the same way).
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

# name|phase arguments (every recipe: --constraint $CONSTRAINT, --starts, --seed); `default`
# is `phase` without a recipe of its own (the measured default, with its merge); `paper`
# is the paper's schedule without shrinkwrap (the CLI's default before issue 19), `readme`
# the README's recipe before issue 19, `tuned` the issue's tuned recipe (the default from issue
# 19's first round until session 24, when ML and the merge joined it);
# `tuned-merge`, `pop`, `pop-late` add the merge of the best 4 starts (`tuned-merge8`: all
# 8; scored as a row "<name>+merged") and GA populations (NOTES, "Populations and merging");
# `tuned-ml` is tuned followed by 50 iterations of Poisson maximum-likelihood refinement,
# `tuned-ml-mid` with them between the HIO and the ER sections (`-merge`: and --merge 4);
# `mc-*` are the default recipe with a --missing-centre mode (masked pixels held at zero
# for the first 200 or 400 iterations, filled by interpolation and held for 400, damped
# by 0.5 for the whole run or for the HIO section), `cull-*` the default recipe with
# --cull (the best 4 of the starts go on after 100 or 200 iterations)
ALL_RECIPES=(
    "default|"
    "paper|--algorithm 2000*(5*HIO+5*ER)"
    "readme|--algorithm 100*(5*HIO+5*ER) --support autocorrelation:0.04 --shrinkwrap sigma=1,threshold=0.1,every=50"
    "tuned|--algorithm HIO**800+ER**200 --shrinkwrap sigma=1,threshold=0.1,every=50,stop=950"
    "tuned-llk|--algorithm HIO**800+ER**200 --shrinkwrap sigma=1,threshold=0.1,every=50,stop=950 --select llk"
    "tuned-free|--algorithm HIO**800+ER**200 --shrinkwrap sigma=1,threshold=0.1,every=50,stop=950 --select free-llk"
    "rms-guard|--algorithm HIO**800+ER**200 --shrinkwrap sigma=1,threshold=0.25,ref=rms,every=50,stop=950,min=0.002,max=0.2 --select llk"
    "rms-guard-rand|--algorithm HIO**800+ER**200 --shrinkwrap sigma=1,threshold=0.25,ref=rms,factor=0.8:1.2,every=50,stop=950,min=0.002,max=0.2 --select llk"
    "tuned-ml|--algorithm HIO**800+ER**200+ML**50 --shrinkwrap sigma=1,threshold=0.1,every=50,stop=950"
    "tuned-ml-mid|--algorithm HIO**800+ML**50+ER**200 --shrinkwrap sigma=1,threshold=0.1,every=50,stop=950"
    "tuned-ml-mid-merge|--algorithm HIO**800+ML**50+ER**200 --shrinkwrap sigma=1,threshold=0.1,every=50,stop=950 --merge 4"
    "tuned-ml-llk|--algorithm HIO**800+ER**200+ML**50 --shrinkwrap sigma=1,threshold=0.1,every=50,stop=950 --select llk"
    "raar-rms-guard|--algorithm RAAR**800+ER**200 --shrinkwrap sigma=1,threshold=0.25,ref=rms,every=50,stop=950,min=0.002,max=0.2 --select llk"
    "tuned-merge|--algorithm HIO**800+ER**200 --shrinkwrap sigma=1,threshold=0.1,every=50,stop=950 --merge 4"
    "tuned-merge8|--algorithm HIO**800+ER**200 --shrinkwrap sigma=1,threshold=0.1,every=50,stop=950 --merge 8"
    "pop|--algorithm HIO**800+ER**200 --shrinkwrap sigma=1,threshold=0.1,every=50,stop=950 --population generations=3,keep=4,every=200 --merge 4"
    "mc-free-after200|--missing-centre free-after:200"
    "mc-free-after400|--missing-centre free-after:400"
    "mc-interp400|--missing-centre interpolate:400"
    "mc-damp0.5|--missing-centre damp:0.5"
    "mc-damp0.5-hio|--missing-centre damp:0.5,until=800"
    "cull100|--cull at=100,keep=4"
    "cull200|--cull at=200,keep=4"
    "pop-late|--algorithm HIO**800+ER**200 --shrinkwrap sigma=1,threshold=0.1,every=50,stop=950 --population generations=1,keep=4,every=600 --merge 4"
)
# PyNX's runners (tools/pynx/pynx_phase.py; their own starting support, constraint and
# selection), only with PYNX set
if [ -n "${PYNX:-}" ]; then
    ALL_RECIPES+=("pynx-std|std" "pynx-id10|id10")
fi
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
    if [ -n "$RECIPES" ] && ! tr ' ' '\n' <<< "$RECIPES" | grep -qxF -- "$name"; then continue; fi
    for s in "${sets[@]}"; do
        rec="$OUT/data/$s.$name.cxi"
        # shellcheck disable=SC2086 # the recipe's arguments are words
        t0=$(date +%s.%N)
        if [[ $name == pynx-* ]]; then
            "$PYNX" tools/pynx/pynx_phase.py "$OUT/data/$s.cxi" "$rec" --recipe "$args" \
                --starts "$STARTS" --seed "$SEED" 2> "$OUT/data/pynx.$s.$name.log"
        else
            "$BIN" phase "$OUT/data/$s.cxi" -o "$rec" $args --constraint "$CONSTRAINT" \
                --starts "$STARTS" --seed "$SEED" --quiet "${THREADS_ARG[@]}"
        fi
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
    # `--merge` outputs: the merged object (entry_1/image_3) is scored as its own row
    merged = [p["merged_error"] for p in m["inputs"][0]["per_pattern"] if "merged_error" in p]
    for label, e in [(name, errs)] + ([(name + "+merged", merged)] if merged else []):
        res.append({
            "recipe": label, "set": s, "patterns": len(e),
            "share_below_0.1": sum(x < 0.1 for x in e) / len(e),
            "share_below_0.2": sum(x < 0.2 for x in e) / len(e),
            "median_error": statistics.median(e),
            "seconds_per_pattern": (float(t1) - float(t0)) / len(e),
            "errors": e,
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

#!/usr/bin/env bash
# Test metrics of a model on its held-out structures (issue 7's model card): supports of the
# network (at several thresholds of the output maximum) next to autocorrelation and triple
# intersection on the same patterns, scored by `cdiphase evaluate` (sub-pixel alignment,
# twin), for noise-free and Poisson-noisy patterns.
# Usage: scripts/model_card_eval.sh MODEL OUT_DIR
# Env: PDB (assets/pdb/heldout.txt: the training run's 7 test structures), COUNT (140 per noise
#      level: 20 orientations per structure), BIN (target/release/cdiphase), THREADS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: model_card_eval.sh MODEL OUT_DIR}
OUT=${2:?usage: model_card_eval.sh MODEL OUT_DIR}
PDB=${PDB:-assets/pdb/heldout.txt}
COUNT=${COUNT:-140}
BIN=${BIN:-target/release/cdiphase}
THREADS=${THREADS:-2}
mkdir -p "$OUT"
for noise in clean poisson; do
    d="$OUT/$noise"
    mkdir -p "$d"
    extra=()
    [ $noise = poisson ] && extra=(--noise poisson --photons 1e8)
    "$BIN" simulate --pdb "$PDB" --count "$COUNT" --seed 101 --threads "$THREADS" -q \
        "${extra[@]}" -o "$d/patterns.cxi"
    "$BIN" predict "$d/patterns.cxi" --model "$MODEL" -o "$d/nn.cxi" --threads "$THREADS" -q
    inputs=()
    for t in 0.02 0.05 0.1 0.2; do
        "$BIN" support "$d/nn.cxi" --method nn --threshold $t -o "$d/nn_$t.cxi" >/dev/null 2>&1
        inputs+=("$d/nn_$t.cxi")
    done
    "$BIN" support "$d/patterns.cxi" --method autocorrelation -o "$d/autocorrelation.cxi" >/dev/null 2>&1
    "$BIN" support "$d/patterns.cxi" --method triple-intersection -o "$d/triple.cxi" >/dev/null 2>&1
    rm -rf "$d/report"
    "$BIN" evaluate --truth "$d/patterns.cxi" --input "$d/nn.cxi" "${inputs[@]}" \
        "$d/autocorrelation.cxi" "$d/triple.cxi" --report "$d/report" --threads "$THREADS" --json \
        > "$d/metrics.json" 2>/dev/null
    python3 - "$d/metrics.json" "$noise" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"\n{sys.argv[2]}: {d['inputs'][0]['aggregate']['false_positives']['count']} patterns")
print("| support | FN <= 2 | mean FP | mean FN | median FN | density error (median) |")
print("|---|---|---|---|---|---|")
for i in d["inputs"]:
    a = i["aggregate"]
    de = a.get("density_error")
    print(f"| {i['label']} | {100*a['fraction_fn_at_most_2']:.0f} % | {a['false_positives']['mean']:.0f} | "
          f"{a['false_negatives']['mean']:.1f} | {a['false_negatives']['median']:.0f} | "
          f"{de['median']:.3f} |" if de else
          f"| {i['label']} | {100*a['fraction_fn_at_most_2']:.0f} % | {a['false_positives']['mean']:.0f} | "
          f"{a['false_negatives']['mean']:.1f} | {a['false_negatives']['median']:.0f} | - |")
PY
done

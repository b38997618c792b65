#!/usr/bin/env bash
# The accuracy study's evaluations (docs/accuracy.md) for one finished run and the base model, every
# one on a full test set, in priority order; each step resumes where a killed one stopped.
#   bash scripts/accuracy_study.sh CONFIG [RUN_DIR] [BASE_DIR]
# CONFIG is the run's config (its eval section: all problems, greedy); RUN_DIR defaults to its
# output_dir, BASE_DIR to runs/accuracy/base_<prompt strategy>.
set -euo pipefail
config=$1
run=${2:-$(python3 -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['output_dir'])" "$config")}
strategy=$(python3 -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['prompt']['strategy'])" "$config")
base=${3:-runs/accuracy/base_$strategy}
data=${MATHTUNE_DATA_DIR:-../shared/datasets}
common=(-c "$config" --data-dir "$data" -s eval.batch_size=64)
step() { echo "== $(date +%T) $*"; "$@"; }
# GSM8K test, all 1,319 problems: tuned and base, then the comparison with the exact McNemar test.
step mathtune eval "$run" "${common[@]}"
step mathtune eval --base "${common[@]}" -o "$base/eval/base"
step mathtune compare "$base/eval/base" "$run/eval/tuned" -o "$run/comparison_full"
# SVAMP, all 1,000 problems: never trained on.
step mathtune eval "$run" "${common[@]}" --dataset svamp -s data.svamp_test=all
step mathtune eval --base "${common[@]}" --dataset svamp -s data.svamp_test=all -o "$base/eval/svamp/base"
step mathtune compare "$base/eval/svamp/base" "$run/eval/svamp/tuned" -o "$run/comparison_svamp"
# Levers at evaluation: calculator-augmented decoding (natural-language strategies).
if [ "$strategy" != program ]; then
  step mathtune eval "$run" "${common[@]}" -s eval.calculator=true -o "$run/eval/tuned-calculator"
  step mathtune compare "$base/eval/base" "$run/eval/tuned-calculator" -o "$run/comparison_calculator"
fi
# Robustness: the same test problems with new numbers (those that have a clean variant).
step mathtune eval "$run" "${common[@]}" -s eval.perturbed=true
step mathtune eval --base "${common[@]}" -s eval.perturbed=true -o "$base/eval/base-perturbed"
step mathtune compare "$run/eval/tuned" "$run/eval/tuned-perturbed" -o "$run/comparison_perturbed"
echo "== $(date +%T) done"

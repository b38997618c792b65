#!/usr/bin/env bash
# Every tuning method on the embedded SmolLM2-135M: the same seeded train subset, the same 200 seeded
# GSM8K test problems, then one comparison table (+ bar chart). CPU time: roughly an hour on 2 cores.
#   bash benchmarks/methods_table.sh [OUT_DIR] [TRAIN_ROWS]
set -euo pipefail
out=${1:-runs/methods}
rows=${2:-200}
data=${MATHTUNE_DATA_DIR:-../shared/datasets}
common=(--data-dir "$data" -s data.train_size="$rows" -s eval.text_metrics=true)
mkdir -p "$out"
mathtune eval --base "${common[@]}" -o "$out/base" --overwrite
for method in lora qlora full; do
  mathtune train --method "$method" "${common[@]}" -o "$out/$method" --overwrite
  mathtune eval "$out/$method" -s eval.text_metrics=true --data-dir "$data"
done
# Stacked LoRA: stage 1 is the LoRA run above (GSM8K main); stage 2 trains on GSM8K socratic.
mathtune train --method stacked-lora -s method.stage1_adapter="$out/lora" -s data.subset=socratic \
  "${common[@]}" -o "$out/stacked-lora" --overwrite
# Evaluated on the socratic copy of the same 200 test questions (row-aligned files, same answers).
mathtune eval "$out/stacked-lora" -s eval.text_metrics=true --data-dir "$data"
mathtune compare "$out/base" "$out"/lora "$out"/qlora "$out"/full "$out"/stacked-lora -o "$out/comparison"

#!/usr/bin/env bash
# Every tuning method on the embedded SmolLM2-135M: the same seeded train subset, the same 200 seeded
# GSM8K test problems, then one comparison table (+ bar chart). About 45 minutes on 2 idle cores.
#   bash benchmarks/methods_table.sh [OUT_DIR] [TRAIN_ROWS] [FROM: base|lora|stacked]
set -euo pipefail
out=${1:-runs/methods}
rows=${2:-200}
from=${3:-base}
data=${MATHTUNE_DATA_DIR:-../shared/datasets}
common=(--data-dir "$data" -s data.train_size="$rows" -s eval.text_metrics=true)
mkdir -p "$out"
if [ "$from" = base ]; then
  mathtune eval --base "${common[@]}" -o "$out/base" --overwrite
fi
if [ "$from" != stacked ]; then
  for method in lora qlora full; do
    mathtune train --method "$method" "${common[@]}" -o "$out/$method" --overwrite
    mathtune eval "$out/$method" -s eval.text_metrics=true --data-dir "$data"
  done
fi
# Stacked LoRA: stage 1 is the LoRA run above; stage 2 trains on a second seeded slice of GSM8K main
# (the socratic *train* split is hub-only: ../shared has test_socratic.jsonl alone).
mathtune train --method stacked-lora -s method.stage1_adapter="$out/lora" -s train.seed=7 \
  "${common[@]}" -o "$out/stacked-lora" --overwrite
mathtune eval "$out/stacked-lora" -s eval.text_metrics=true --data-dir "$data"
mathtune compare "$out/base" "$out"/lora "$out"/qlora "$out"/full "$out"/stacked-lora -o "$out/comparison"

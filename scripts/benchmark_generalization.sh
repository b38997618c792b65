#!/bin/bash
# One run directory's tuned model and the base model on GSM8K and on SVAMP (never trained on), with
# every score side by side (strict / flexible / numeric / math-verify), then `compare` per benchmark.
# Usage: scripts/benchmark_generalization.sh RUN_DIR [N]   (N problems of each benchmark, seeded; default 500)
# Resumable: rerun after an interruption and finished predictions are kept. The base model is evaluated
# with the run's config (its model and recorded eval settings), as `mathtune eval RUN` evaluates the tuned one.
set -euo pipefail
RUN=${1:?usage: scripts/benchmark_generalization.sh RUN_DIR [N]}
N=${2:-500}
export MATHTUNE_DATA_DIR=${MATHTUNE_DATA_DIR:-../shared/datasets}
EVAL=(-s eval.num_problems="$N" -s eval.batch_size=32 -s eval.perplexity=false)
mathtune eval "$RUN" "${EVAL[@]}" -o "$RUN/eval/gsm8k-$N/tuned"
mathtune eval --base -c "$RUN/config.yaml" "${EVAL[@]}" -o "$RUN/eval/gsm8k-$N/base"
mathtune eval "$RUN" --dataset svamp -s data.svamp_test=all "${EVAL[@]}" -o "$RUN/eval/svamp-all-$N/tuned"
mathtune eval --base -c "$RUN/config.yaml" --dataset svamp -s data.svamp_test=all "${EVAL[@]}" -o "$RUN/eval/svamp-all-$N/base"
mathtune compare "$RUN/eval/gsm8k-$N/base" "$RUN/eval/gsm8k-$N/tuned" "$RUN/eval/svamp-all-$N/base" \
    "$RUN/eval/svamp-all-$N/tuned" -o "$RUN/generalization-$N"

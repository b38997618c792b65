#!/usr/bin/env bash
# The GPU check of issue 18 (scripts/gpu_check.py says what it runs): one CUDA GPU, no internet, < 8 minutes.
#   bash scripts/gpu_check.sh          # one PASS/FAIL/SKIP line per check; exit 1 on any FAIL
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false MATHTUNE_ALLOCATOR=system PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 python scripts/gpu_check.py "$@"

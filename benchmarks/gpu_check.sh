#!/usr/bin/env bash
# GPU check (benchmarks/gpu_check.py says what it measures): one GPU, under 10 minutes, and only
# torch, transformers, trl and datasets installed (no vLLM, Ray or MLflow; nothing fetched).
#   bash benchmarks/gpu_check.sh          on a CUDA machine
#   bash benchmarks/gpu_check.sh --tiny   the same path on CPU with a tiny shape
# Python: $PYTHON, else .venv/bin/python if the repository has one, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}  # three trainers share one GPU
exec timeout 600 "$PY" benchmarks/gpu_check.py "$@"

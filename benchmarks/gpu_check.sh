#!/usr/bin/env bash
# GPU check of dense training: smoke runs of `dense train --device cuda` (bf16, fp16) and step
# time / images/s / max_memory_allocated / ViT-Split-vs-full ratios for seg, depth and det on
# DINOv2-S/B in bf16 and fp32. One command, from anywhere:
#
#     bash benchmarks/gpu_check.sh            # about 20 minutes on one H100/H200-class GPU
#     bash benchmarks/gpu_check.sh --quick    # DINOv2-S only, 30 steps: about 5 minutes
#
# Results: benchmarks/results/gpu_check.{json,md,png}. Refuses (exit 3) without a CUDA GPU.
# PYTHON overrides the interpreter (default: the repository's .venv if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}" TOKENIZERS_PARALLELISM=false
exec "$PYTHON" benchmarks/gpu_check.py "$@"

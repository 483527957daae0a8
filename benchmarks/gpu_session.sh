#!/usr/bin/env bash
# One prepared run for a lent GPU machine (device tool; 15 minutes of device time in all): the CUDA
# tests, GPU throughput of both engine backends, and a short training run continued from a
# committed checkpoint. Everything it produces goes under $OUT.
#   run tool: command "bash benchmarks/gpu_session.sh", carry ["data/photos"], timeout_s 600
# The device machine reaches no network. Its python3 already holds torch, numba, numpy, pillow,
# typer, tqdm and pytest, so the repository runs from source (PYTHONPATH) and nothing is installed
# (imagecodecs, pyzmq and watchdog are not there; nothing run here needs them).
# RUN picks the committed run to continue (default training/m5); TRAIN_MINUTES (default 3).
set -uo pipefail
OUT=${OUT:-/tmp/bswd-gpu}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
bswd() { python3 -c 'import sys; from bswd.cli import app; sys.argv[0] = "bswd"; app()' "$@"; }
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
timeout 120 python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py tests/test_ans_torch.py \
  > "$OUT/cuda-tests.txt" 2>&1
# Photos of 512x512, 8 lanes each, up to ROWS lanes coded side by side. torch: the whole step on
# the GPU (codec_torch); numpy: networks on the GPU, ANS in numba on the host. A lane's 8 heads code
# its symbols in sequential chunks of 8, so a GPU is filled by many lanes (rows), not by one lane.
timeout 150 python3 benchmarks/engine_bench.py --device cuda --backend torch --side 512 --images 256 \
  --rows 512,2048 --patches-per-lane 32 >> "$OUT/gpu-bench.txt" 2>&1
timeout 80 python3 benchmarks/engine_bench.py --device cuda --backend numpy --side 512 --images 64 \
  --rows 512 --patches-per-lane 32 >> "$OUT/gpu-bench.txt" 2>&1
timeout 45 python3 benchmarks/ans_torch_bench.py >> "$OUT/gpu-bench.txt" 2>&1
if [ -d data/photos ]; then
  cp -r "${RUN:-training/m5}" /tmp/run
  # a finished run only continues with more steps: MORE_STEPS (default 40000) beyond where it is
  step=$(python3 -c "import torch; print(torch.load('/tmp/run/checkpoint.pt', weights_only=False)['step'])")
  timeout $(( ${TRAIN_MINUTES:-3} * 60 )) bswd train --resume /tmp/run --data data/photos --device cuda \
    --steps $(( step + ${MORE_STEPS:-40000} )) > "$OUT/train.txt" 2>&1
  cp /tmp/run/checkpoint.pt /tmp/run/log.csv /tmp/run/curve.png "$OUT/" 2>/dev/null
else
  echo "no data/photos: carry it (bswd data fetch data/photos here first)" > "$OUT/train.txt"
fi
ls -la "$OUT"

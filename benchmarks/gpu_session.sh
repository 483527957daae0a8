#!/usr/bin/env bash
# One prepared run for a lent GPU machine (device tool): CUDA tests, GPU throughput, and a short
# training run continued from the committed checkpoint. Everything it produces goes under $OUT.
#   run: bash benchmarks/gpu_session.sh   (with OUT set by the device tool; TRAIN_MINUTES default 8)
# The device machine reaches no network: carry the photos (run tool: carry ["data/photos"], 27 MB).
# RUN picks the committed run to continue (default training/m3, the pixel-context model).
set -uo pipefail
OUT=${OUT:-/tmp/bswd-gpu}; mkdir -p "$OUT"
python3 -m venv /tmp/venv && . /tmp/venv/bin/activate
pip install -q torch numpy pillow imagecodecs typer tqdm numba pyzmq watchdog prometheus-client pytest hypothesis pyyaml
pip install -q --no-deps -e .
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py tests/test_ans_torch.py > "$OUT/cuda-tests.txt" 2>&1
python benchmarks/engine_bench.py --device cuda --side 512 --images 64 > "$OUT/gpu-bench.txt" 2>&1
python benchmarks/ans_torch_bench.py >> "$OUT/gpu-bench.txt" 2>&1
if [ -d data/photos ] || bswd data fetch data/photos > "$OUT/fetch.txt" 2>&1; then
  cp -r ${RUN:-training/m3} /tmp/run
  # a finished run only continues with more steps: add MORE_STEPS (default 40000) to its plan
  python -c "import torch; p='/tmp/run/checkpoint.pt'; s=torch.load(p, weights_only=False); \
s['train_config']['steps'] = s['step'] + int('${MORE_STEPS:-40000}'); torch.save(s, p)"
  timeout $(( ${TRAIN_MINUTES:-8} * 60 )) \
    bswd train --resume /tmp/run --data data/photos --device cuda > "$OUT/train.txt" 2>&1
  cp /tmp/run/checkpoint.pt /tmp/run/log.csv /tmp/run/curve.png "$OUT/" 2>/dev/null
fi
ls -la "$OUT"

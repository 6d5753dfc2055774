#!/usr/bin/env bash
# One GPU session's measurements, in one go (../shared/gpu/README.md has the machine recipe).
# Run from the checkout root on the GPU machine with .whl/ beside it; results land in $OUT
# (default benchmarks/results/gpu). Takes ~8 minutes on one H100/H200.
set -uo pipefail
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl >/dev/null 2>&1 || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.6
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"

# 1. genzoo vs torch eager / torch.compile (baby fp32, baby bf16, GPT-2 124M bf16).
timeout 270 python3 benchmarks/gpu_speed.py --steps 20 --out "$OUT/gpu_speed.json" \
  2>&1 | grep -v "^W\|^I0\|warn" | tee "$OUT/gpu_speed.txt"

# 1b. Memory switches on the GPT-2 shape: chunked cross-entropy and remat (XLA temporaries, tok/s).
timeout 120 python3 benchmarks/gpu_speed.py --steps 20 --only gpt2_bf16 --impls genzoo \
  --genzoo-extras chunk128,remat_dots --out "$OUT/gpu_memory.json" \
  2>&1 | grep -v "^W\|^I0\|warn" | tee "$OUT/gpu_memory.txt"

# 2. The bf16 character GPT for 2000 steps, wall clock first step included (target < 30 s).
start=$(date +%s)
timeout 110 python3 -m genzoo.cli train gpt_shakespeare_char --workdir /tmp/run_char \
  --set model.dtype=bfloat16 --set train.steps=2000 --set log.progress=false > "$OUT/char.txt" 2>&1
echo "rc=$? wall_s=$(( $(date +%s) - start ))" >> "$OUT/char.txt"
cp /tmp/run_char/metrics.jsonl "$OUT/char.metrics.jsonl" 2>/dev/null
tail -3 "$OUT/char.txt"

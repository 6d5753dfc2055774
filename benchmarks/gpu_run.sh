#!/usr/bin/env bash
# One GPU session's measurements, in one go (../shared/gpu/README.md has the machine recipe).
# Run from the checkout root on the GPU machine with .whl/ beside it; results land in $OUT
# (default benchmarks/results/gpu). Takes ~6 minutes on one H100/H200.
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

# 2. The bf16 character GPT for 2000 steps, wall clock first step included: XLA attention
#    and threefry dropout (as before) against the defaults plus rbg dropout bits.
for v in "xla threefry" "auto rbg"; do
  set -- $v
  start=$(date +%s)
  GENZOO_ATTENTION=$1 timeout 110 python3 -m genzoo.cli train gpt_shakespeare_char \
    --workdir "/tmp/run_$1_$2" --set model.dtype=bfloat16 --set train.steps=2000 \
    --set train.rng_impl=$2 --set log.progress=false > "$OUT/char_$1_$2.txt" 2>&1
  echo "rc=$? wall_s=$(( $(date +%s) - start ))" >> "$OUT/char_$1_$2.txt"
  cp "/tmp/run_$1_$2/metrics.jsonl" "$OUT/char_$1_$2.metrics.jsonl" 2>/dev/null
  tail -3 "$OUT/char_$1_$2.txt"
done

#!/usr/bin/env bash
# One GPU session's measurements, in one go (../shared/gpu/README.md has the machine recipe).
# Run from the checkout root on the GPU machine with .whl/ beside it; results land in $OUT
# (default benchmarks/results/gpu). STEPS picks parts (default all, ~15 minutes on an H200: more
# than one session's device time, machine start included, so name them):
#   session - what one 15-minute device session should run, in one call of at most ~580 s:
#            the two targets still open, `char` (default, scan, second) then `speed` (baby fp32,
#            baby bf16, GPT-2 bf16; scan rows), each part under its own timeout
#   flash  - the Pallas flash kernels against the XLA path and cuDNN, attention alone: same
#            numbers? compile time and fwd+bwd ms per shape, and FLASH_TILES tilings with
#            dropout; the fastest for the char GPT becomes GENZOO_FLASH_TILES below (~2-3 min)
#   speed  - genzoo (XLA/cuDNN attention, and the Pallas flash kernels) vs torch eager /
#            torch.compile (SPEED_ONLY rows: baby fp32, baby bf16, GPT-2 124M bf16; ~5 min)
#   memory - the GPT-2 shape with chunked cross-entropy and remat (XLA temporaries, tok/s)
#   char   - the bf16 char GPT's training command, phase by phase (target < 30 s wall)
#   int8   - cached decoding of GPT-2's shape, float32 against int8 operands
# DRY=1 runs the same steps at toy sizes with this environment's python, no wheels, no GPU: the
# glue between the steps is checked before a device minute is spent on it (tests/test_slow.py).
set -uo pipefail
OUT="${OUT:-benchmarks/results/gpu}"
STEPS="${STEPS:-flash int8 char memory speed}"
mkdir -p "$OUT"
if [ "${DRY:-0}" = 1 ]; then
  PY="${PY:-python3}"
  FLASH_SIZE=(--small --rounds 1 --calls 1 --cases char_bf16)
  : "${CHAR_PROBE_STEPS:=8}" "${SPEED_ONLY:=tiny_fp32}" "${MEMORY_ONLY:=tiny_fp32}"
  : "${INT8_BATCHES:=1}" "${GPU_STEPS:=2}" "${SPEED_IMPLS:=torch_eager,genzoo}"
  CHAR_SIZE=(--variant smoke --set model.dropout=0.2 --set model.dtype=bfloat16 --steps 8)
  echo "dry run (toy sizes, no GPU)" > "$OUT/gpu.txt"
  export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
else
  PY=python3 FLASH_SIZE=() CHAR_SIZE=()  # expanded as ${A[@]+"${A[@]}"}: set -u, bash < 4.4
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >/dev/null 2>&1 || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.6
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
case " $STEPS " in *" session "*)  # the budgeted plan above; each default may still be set
  STEPS="${STEPS/session/char speed}"
  : "${CHAR_RUNS:=default,scan,second}" "${CHAR_TIMEOUT:=280}" "${CHAR_PROBE_STEPS:=200}"
  : "${SPEED_TIMEOUT:=270}" "${SPEED_EXTRAS:=scan}";;
esac
$PY -c "import jax; print(jax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
quiet() { grep -v "^W\|^I0\|warn"; }

case " $STEPS " in *" flash "*)
  timeout "${FLASH_TIMEOUT:-240}" $PY benchmarks/flash_check.py --out "$OUT/flash_check.json" \
    ${FLASH_SIZE[@]+"${FLASH_SIZE[@]}"} \
    --tiles "${FLASH_TILES:-128x128/32x32/2,128x64/64x32/2,128x64/128x32/3}" \
    2>&1 | quiet | tee "$OUT/flash_check.txt"
  # The char GPT's fastest tiling (bf16, dropout) for the kernels' runs below, unless set.
  best=$($PY - "$OUT/flash_check.json" <<'PY' 2>/dev/null
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
print(next((r["fastest_tiles"] for r in rows
            if r["case"] == "char_bf16" and r["dropout"] and "fastest_tiles" in r), ""))
PY
  )
  if [ -z "${GENZOO_FLASH_TILES:-}" ] && [ -n "$best" ]; then
    export GENZOO_FLASH_TILES="$best"
    echo "GENZOO_FLASH_TILES=$best for the runs below" | tee -a "$OUT/gpu.txt"
  fi;;
esac
case " $STEPS " in *" char "*)
  # The first run trains 2000 steps, the others --probe-steps. First today's default (glibc's
  # malloc left alone on an accelerator since 2026-11-28) and its second launch; then the
  # blocks as one lax.scan (model.scan_layers: one block to compile, never timed on a GPU); cuBLAS
  # for every GEMM (no Triton GEMM candidates to compile while autotuning), the Pallas flash
  # kernels (dropout inside the kernel), and last malloc_reuse (one arena, what every H200 run
  # since 2026-11-27 06:00 had: the suspect for its 3.6x slower compiles; the slowest, and each
  # run's row is written as it ends, so a timeout loses only it).
  timeout "${CHAR_TIMEOUT:-540}" $PY benchmarks/char_wall.py --out "$OUT/char_wall.json" \
    ${CHAR_SIZE[@]+"${CHAR_SIZE[@]}"} \
    --runs "${CHAR_RUNS:-default,second,scan,no_triton_gemm,pallas,malloc_reuse}" \
    --probe-steps "${CHAR_PROBE_STEPS:-300}" 2>&1 | quiet \
    | tee "$OUT/char_wall.txt";;
esac
case " $STEPS " in *" int8 "*)
  timeout "${INT8_TIMEOUT:-150}" $PY benchmarks/int8_decode.py --batches "${INT8_BATCHES:-1,8}" \
    --out "$OUT/int8_decode.json" 2>&1 | quiet | tee "$OUT/int8_decode.txt";;
esac
case " $STEPS " in *" memory "*)
  timeout 150 $PY benchmarks/gpu_speed.py --steps "${GPU_STEPS:-20}" --impls genzoo \
    --only "${MEMORY_ONLY:-gpt2_bf16}" --genzoo-extras chunk128,remat_dots \
    --out "$OUT/gpu_memory.json" 2>&1 | quiet | tee "$OUT/gpu_memory.txt";;
esac
case " $STEPS " in *" speed "*)
  timeout "${SPEED_TIMEOUT:-330}" $PY benchmarks/gpu_speed.py --steps "${GPU_STEPS:-20}" \
    --impls "${SPEED_IMPLS:-torch_eager,torch_compile,genzoo}" \
    --genzoo-extras "${SPEED_EXTRAS:-pallas,scan}" \
    --only "${SPEED_ONLY:-baby_fp32,baby_bf16,gpt2_bf16}" --out "$OUT/gpu_speed.json" 2>&1 \
    | quiet | tee "$OUT/gpu_speed.txt";;
esac

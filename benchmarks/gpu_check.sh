#!/usr/bin/env bash
# One prepared GPU run (docs/design.md §5 targets): DATE-R50-F train step at 800x1344 bf16, batch 16 or the largest that fits,
# and NMS-free inference latency at batch 1 (and 8) on an 800x1333 image padded to 800x1344. No TensorFlow, no torch.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]       # OUT_DIR defaults to $OUT, else benchmarks/results
#
# The accelerator host has jax but may lack ml_collections: put its wheel in .whl/ beforehand
# (pip download ml_collections --no-deps -d .whl) and carry `.whl`; it is installed from there, offline.
# Prints the device name with every figure; writes gpu_train_step.json, gpu_inference.json and gpu_check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-benchmarks/results}}"
mkdir -p "$out"
log="$out/gpu_check.log"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # the package is not installed on a bare accelerator host
# Let XLA take most of the GPU memory up front (default 75%) so the largest batch fits.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"

{
  echo "== $(date -u) | $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
  python3 -c "import ml_collections" 2>/dev/null || python3 -m pip install -q --no-index --find-links .whl ml_collections
  python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"

  # Train step: batch 16, falling back to 8, 4 when it does not fit.
  for batch in 16 8 4; do
    echo "== train step, batch $batch"
    if python3 benchmarks/train_step.py --variant f --size 800 1344 --batch "$batch" --dtype bfloat16 \
        --max-boxes 100 --gts 8 --steps 10 --repeats 3 --out "$out/gpu_train_step.json"; then
      break
    fi
    echo "== batch $batch failed (see above); trying a smaller one"
  done

  echo "== inference, 800x1333 padded to 800x1344"
  python3 benchmarks/inference.py --variant f --size 800 1344 --batches 1 8 --dtype bfloat16 --steps 20 --repeats 3 \
    --out "$out/gpu_inference.json"
  echo "== done $(date -u)"
} 2>&1 | tee "$log"

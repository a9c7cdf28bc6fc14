#!/usr/bin/env bash
# One prepared GPU run (docs/design.md §5 targets): DATE-R50-F train step at 800x1344 bf16, batch 16 or the largest that fits,
# and NMS-free inference latency at batch 1 (and 8) on an 800x1333 image padded to 800x1344. No TensorFlow, no torch.
#
#   bash benchmarks/gpu_check.sh [--reduced] [OUT_DIR]   # OUT_DIR defaults to $OUT, else benchmarks/results
#
# --reduced (or GPU_CHECK_REDUCED=1): the same scripts and the same table at a size a 2-core CPU finishes in minutes
# (256x384, train batch 2, inference batches 1 and 2, fewer timed calls); OUT_DIR then defaults to $OUT, else
# /tmp/date-jax-gpu-check, never benchmarks/results. benchmarks/rehearse_gpu_check.sh runs it so in a fresh venv.
#
# A bare accelerator image has jax, flax, optax and orbax-checkpoint but not ml_collections: run
# `bash benchmarks/fetch_wheels.sh` beforehand on a machine with a package registry (it fills the git-ignored .whl/)
# and carry `.whl`; the wheels are installed from there offline into a temporary folder put on PYTHONPATH.
# Prints the device name with every figure and a summary table; writes gpu_train_step.json, gpu_inference.json and
# gpu_check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
reduced="${GPU_CHECK_REDUCED:-0}"
if [[ "${1:-}" == "--reduced" ]]; then
  reduced=1
  shift
fi
if [[ "$reduced" == 1 ]]; then
  out="${1:-${OUT:-/tmp/date-jax-gpu-check}}"
  size=(256 384); train_batches=(2); train_steps=(--steps 2 --repeats 2)
  infer_batches=(1 2); infer_steps=(--steps 2 --repeats 2)
else
  out="${1:-${OUT:-benchmarks/results}}"
  size=(800 1344); train_batches=(16 8 4); train_steps=(--steps 10 --repeats 3)
  infer_batches=(1 8); infer_steps=(--steps 20 --repeats 3)
fi
mkdir -p "$out"
log="$out/gpu_check.log"
rm -f "$out/gpu_train_step.json" "$out/gpu_inference.json"   # the summary must never read a stale result
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # the package is not installed on a bare accelerator host
# Let XLA take most of the GPU memory up front (default 75%) so the largest batch fits.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"

{
  echo "== $(date -u) | $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
  if ! python3 -c "import ml_collections" 2>/dev/null; then
    if ! compgen -G ".whl/*.whl" >/dev/null; then
      echo "gpu_check: ml_collections is missing and .whl/ holds no wheel: run 'bash benchmarks/fetch_wheels.sh' on a" \
           "machine with a package registry, then carry .whl"
      exit 1
    fi
    site="$(mktemp -d)"
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:$site"
    echo "== installed offline from .whl/: $(cd .whl && ls *.whl | tr '\n' ' ')"
  fi
  python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax',
    optax.__version__, jax.devices())" || exit 1

  # Train step: the first batch that fits (16, falling back to 8, 4 at full size).
  for batch in "${train_batches[@]}"; do
    echo "== train step, batch $batch"
    if python3 benchmarks/train_step.py --variant f --size "${size[@]}" --batch "$batch" --dtype bfloat16 \
        --max-boxes 100 --gts 8 "${train_steps[@]}" --out "$out/gpu_train_step.json"; then
      break
    fi
    echo "== batch $batch failed (see above); trying a smaller one"
  done

  echo "== inference, ${size[0]}x${size[1]} (800x1333 padded to 800x1344 at full size)"
  python3 benchmarks/inference.py --variant f --size "${size[@]}" --batches "${infer_batches[@]}" --dtype bfloat16 \
    "${infer_steps[@]}" --out "$out/gpu_inference.json"
  python3 benchmarks/gpu_check_summary.py "$out"
  status=$?
  echo "== done $(date -u)"
  exit "$status"
} 2>&1 | tee "$log"

#!/usr/bin/env bash
# Every benchmark once, on this machine, with the peer where one exists (about 10 minutes on a 2-core CPU).
#
#   bash benchmarks/run_all.sh [--no-peer]
#
# Figures go to benchmarks/results/*.json and to benchmarks/results/run_all.log. The torchvision peer is optional:
# without torch/torchvision (benchmarks/README.md says how to install them) or with --no-peer, DATE runs alone.
# On a GPU host use benchmarks/gpu_check.sh instead (no TensorFlow or torchvision there).
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
peer="--peer torchvision"
if [[ "${1:-}" == "--no-peer" ]] || ! python3 -c "import torch, torchvision" 2>/dev/null; then
  peer=""
fi
status=0
run() {
  echo "== $* ($(date -u +%H:%M:%S))"
  "$@" || { status=1; echo "== FAILED: $*"; }
}
{
  # DATE-R50-F vs torchvision FCOS-R50-FPN: train step and inference at 512x512, interleaved rounds, medians.
  run python3 benchmarks/train_step.py --variant f --size 512 512 --batch 2 --steps 1 --repeats 3 --breakdown $peer
  run python3 benchmarks/inference.py --variant f --size 512 512 --batches 1 --steps 2 --repeats 3 $peer
  run python3 benchmarks/inference.py --variant f --size 512 512 --batches 8 --steps 1 --repeats 2 \
    --out benchmarks/results/inference_batch8.json
  # Assignment vs numpy + scipy, the input pipeline, the metrics (earlier issues), in their short settings.
  run python3 benchmarks/matching.py --batch 8 --gts 7 30 100
  run python3 benchmarks/input_pipeline.py --images 256 --batches 10
  run python3 benchmarks/eval_speed.py --images 1000
} 2>&1 | tee benchmarks/results/run_all.log
exit $status

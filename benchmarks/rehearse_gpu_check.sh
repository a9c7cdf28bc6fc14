#!/usr/bin/env bash
# Rehearse the first accelerator run on this CPU: benchmarks/gpu_check.sh --reduced in a fresh virtual environment that
# holds only what a bare accelerator image offers (jax, jaxlib, flax, optax, orbax-checkpoint, numpy and their own
# dependencies, at constraints.txt's versions), with every other wheel installed offline from .whl/.
#
#   bash benchmarks/fetch_wheels.sh                      # once, online: fills the git-ignored .whl/
#   bash benchmarks/rehearse_gpu_check.sh [OUT_DIR]      # OUT_DIR defaults to /tmp/date-jax-gpu-check
#
# Step 1 (online, timed apart) makes the venv in $REHEARSAL_VENV (default /tmp/date-jax-rehearsal-venv, removed first).
# Step 2 runs gpu_check.sh --reduced inside it with pip offline (no index, no find-links, no pip config) and no
# PYTHONPATH from the caller; it must end in under REHEARSAL_LIMIT_S seconds (default 300), or the rehearsal fails.
set -uo pipefail
cd "$(dirname "$0")/.."
venv="${REHEARSAL_VENV:-/tmp/date-jax-rehearsal-venv}"
out="${1:-/tmp/date-jax-gpu-check}"
limit_s="${REHEARSAL_LIMIT_S:-300}"
BASE=(jax jaxlib flax optax orbax-checkpoint numpy)

pins=()
for name in "${BASE[@]}"; do
  pin="$(grep -i "^${name}==" constraints.txt)" || { echo "rehearse: constraints.txt has no '${name}==' line"; exit 1; }
  pins+=("$pin")
done
if ! compgen -G ".whl/*.whl" >/dev/null; then
  echo "rehearse: .whl/ holds no wheel: run 'bash benchmarks/fetch_wheels.sh' first"
  exit 1
fi

echo "== step 1: fresh venv $venv with ${pins[*]}"
start=$(date +%s)
rm -rf "$venv"
python3 -m venv "$venv" || exit 1
"$venv/bin/python" -m pip install -q "${pins[@]}" -c constraints.txt 2>&1 | grep -v "^WARNING: Location"
[[ "${PIPESTATUS[0]}" == 0 ]] || { echo "rehearse: installing ${pins[*]} into $venv failed"; exit 1; }
held="$("$venv/bin/python" -m pip list --format=freeze 2>/dev/null | tr '\n' ' ')"
echo "== venv made in $(( $(date +%s) - start )) s; it holds: $held"

echo "== step 2: bash benchmarks/gpu_check.sh --reduced $out (offline)"
start=$(date +%s)
env -u PYTHONPATH -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 \
  VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" bash benchmarks/gpu_check.sh --reduced "$out"
status=$?
elapsed=$(( $(date +%s) - start ))
echo "== rehearsal: gpu_check.sh --reduced exited $status after $elapsed s (limit $limit_s s)"
if (( status != 0 )); then
  exit "$status"
fi
if (( elapsed > limit_s )); then
  echo "rehearse: over the $limit_s s limit"
  exit 1
fi

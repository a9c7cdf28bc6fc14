#!/usr/bin/env bash
# Fetch into .whl/ (git-ignored) the wheels benchmarks/gpu_check.sh needs that a bare accelerator image lacks; run it on
# a machine that reaches a package registry, then carry `.whl` to the accelerator host.
#
#   bash benchmarks/fetch_wheels.sh
#
# The list: ml-collections only. Everything else the gpu_check path imports (absl-py, PyYAML, etils, msgpack, rich,
# ...) comes with jax, flax, optax and orbax-checkpoint: tests/test_gpu_check_imports.py and
# benchmarks/rehearse_gpu_check.sh check that. Versions are constraints.txt's. Wheels are asked for CPython 3.12 on
# manylinux x86-64 (the accelerator host); keep the list to pure-Python (py3-none-any) wheels, which also install on
# this CPU host's Python for the rehearsal. One version of each: an older wheel of the same name is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(ml-collections)

if ! git check-ignore -q .whl/probe.whl; then
  echo "fetch_wheels: .whl/ is not git-ignored: add the line '/.whl/' to .gitignore first"
  exit 1
fi
mkdir -p .whl
for name in "${WHEELS[@]}"; do
  if ! pin="$(grep -i "^${name}==" constraints.txt)"; then
    echo "fetch_wheels: constraints.txt has no '${name}==' line: pin it there first"
    exit 1
  fi
  rm -f .whl/"${name//-/_}"-*.whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$pin"
done
for wheel in .whl/*.whl; do
  case "$wheel" in
    *-py3-none-any.whl) ;;
    *) echo "fetch_wheels: $wheel is not pure Python: the rehearsal on this host cannot install it" ;;
  esac
  echo "$wheel needs: $(unzip -p "$wheel" '*/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' \
    | sed 's/^Requires-Dist: //' | tr '\n' ' ')"
done

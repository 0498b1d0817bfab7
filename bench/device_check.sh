#!/usr/bin/env bash
# The GPU node's check (bench/device_check.py): the paper step in float32 and
# bfloat16, the raw reader with 1-16 threads, and the step fed by it, in one
# table, within 8 minutes on one H100/H200. Needs jax with its CUDA plugin,
# flax, optax, numpy and ml_collections; no TensorFlow (docs/gpu.md).
#
#   bench/device_check.sh              # full sizes
#   bench/device_check.sh --small      # tiny sizes: a CPU check (about 40 s on the 2-core VM)
#   PYTHON=.venv/bin/python bench/device_check.sh --workers 1,4,16
#
# Exits with the check's status; says how long it took either way.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1  # the repository root: python -m bench.device_check finds bench/, configs/
python=${PYTHON:-$(command -v python || command -v python3)}  # PYTHON=... picks the interpreter
start=$(date +%s)
"${python}" -m bench.device_check "$@"
status=$?
echo "bench/device_check.sh: exit status ${status} after $(($(date +%s) - start)) s"
exit "${status}"

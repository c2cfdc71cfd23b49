#!/usr/bin/env bash
# The accelerator suite in one command: device information, then benchmarks/gpu_suite.py.
#
#   bash benchmarks/gpu_suite.sh [--quick] [gpu_suite.py flags, e.g. --budget-s 420 --out FILE]
#
# Which Python: $PYTHON if set; else the first of python3, python on PATH that imports jax, flax,
# optax, scipy and orbax (a lent accelerator machine gets a copy of this tree without its .venv,
# and its own Python holds a CUDA jax); else the checkout's .venv/bin/python if present.
# gpu_suite.py puts the checkout on sys.path itself, so rsjax need not be pip-installed.
# Nothing CUDA-specific is set here: JAX picks the accelerator and keeps its own memory defaults
# (XLA_PYTHON_CLIENT_PREALLOCATE as it is).
set -euo pipefail
cd "$(dirname "$0")/.."

py="${PYTHON:-}"
if [ -z "$py" ]; then
  for candidate in python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import jax, flax, optax, scipy, orbax.checkpoint' >/dev/null 2>&1; then
      py="$candidate"
      break
    fi
  done
fi
if [ -z "$py" ] && [ -x .venv/bin/python ]; then
  py=.venv/bin/python
fi
if [ -z "$py" ]; then
  echo "gpu_suite.sh: no Python with jax, flax, optax, scipy and orbax found (set PYTHON=...)" >&2
  exit 2
fi

echo "python: $(command -v "$py") ($("$py" --version 2>&1))"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
"$py" -c '
import jax
print("jax", jax.__version__, "backend", jax.default_backend())
print("devices:", jax.devices())
print("device_kind:", jax.devices()[0].device_kind)'
export PYTHONUNBUFFERED=1
exec "$py" benchmarks/gpu_suite.py "$@"

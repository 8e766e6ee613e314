#!/usr/bin/env bash
# GPU check: CUDA tests, TrAct overhead (fp32/bf16, ×1/×8), TrAct on timm/torchvision models, runner vs bare loop.
# See benchmarks/gpu_check.py for what each stage does. Nothing is installed from the network.
#
#   bash benchmarks/gpu_check.sh                                        # on the GPU machine (< 8 min)
#   bash benchmarks/gpu_check.sh --torch-tract-wheel wheels/torch_tract-1.0.0-py3-none-any.whl
#   bash benchmarks/gpu_check.sh --device cpu --quick --out /tmp/gc    # CPU smoke run (about a minute)
#
# Python: $PYTHON if set, else the repository's .venv/bin/python if it exists, else python3.
# The package comes from the working tree (PYTHONPATH=src).
set -u
cd "$(dirname "$0")/.." || exit 2
if [ -n "${PYTHON:-}" ]; then
    py="$PYTHON"
elif [ -x .venv/bin/python ]; then
    py=.venv/bin/python
else
    py=python3
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" benchmarks/gpu_check.py "$@"

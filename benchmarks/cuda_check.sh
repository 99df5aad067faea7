#!/usr/bin/env bash
# The CUDA path of optuna_convexity.hessian, in one run of under 8 minutes on one GPU:
#   1. the tests parametrised for CUDA (tests/hessian, ids ending in "cuda": exactness of every
#      estimator and of the Hessian-vector products against dense float64 Hessians, scoring
#      on the model's device, the model left as found);
#   2. benchmarks/hessian_speed.py --device cuda (ratios to a forward pass, side by side, with
#      the targets marked met or not met).
# Run it from anywhere, with the project's environment active (torch built for CUDA, the
# `benchmark` extra installed). Each step has its own time limit; the exit status is non-zero
# if either fails or runs out of time.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

python - <<'PYTHON'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(
        f"cuda_check.sh: no CUDA device is available (torch {torch.__version__}, "
        f"torch.version.cuda={torch.version.cuda}); run it on a machine with an NVIDIA GPU."
    )
print(
    f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
    f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"
)
PYTHON

echo "== tests marked for CUDA (limit 150 s)"
timeout 150 python -m pytest -q -p no:cacheprovider -rs tests/hessian -k cuda

echo "== benchmarks/hessian_speed.py --device cuda (limit 300 s)"
timeout 300 python benchmarks/hessian_speed.py --device cuda --rounds 9

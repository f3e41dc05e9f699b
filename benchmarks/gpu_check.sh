#!/usr/bin/env bash
# GPU readiness in one run: the tutorial loop against mnist_cnn's on the GPU (train_speed.py, part 1),
# then experiment=fast99 on seeds 1-3 with its time to 99% against the tutorial loop's (part 2).
# Data stay resident on the GPU; precision resolves to bf16 where the GPU supports it.
#
#   benchmarks/gpu_check.sh [DATA_ROOT]        # DATA_ROOT holds MNIST/raw (default: ../shared/data)
#   PYTHON=.venv/bin/python benchmarks/gpu_check.sh
#
# Needs the project installed (make install) and a CUDA GPU that torch sees; stops with a message
# otherwise. Prints the GPU's name first, so the figures can be quoted with it.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_ROOT=${1:-${MNIST_CNN_DATA_DIR:-../shared/data}}
PYTHON=${PYTHON:-python}

"$PYTHON" - <<'PY' || exit 2
import sys
try:
    import torch, mnist_cnn  # noqa: F401
except ImportError as e:
    sys.exit(f"gpu_check: {e}; install the project first (make install) or set PYTHON=.venv/bin/python.")
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA GPU here (torch.cuda.is_available() is False); run it on a GPU machine.")
PY
"$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}")'

echo "== part 1: the same net and batch, tutorial loop against mnist_cnn's =="
"$PYTHON" benchmarks/train_speed.py --data-root "$DATA_ROOT" --steps 200 --rounds 5
echo "== part 2: experiment=fast99, seeds 1-3 =="
"$PYTHON" benchmarks/train_speed.py --data-root "$DATA_ROOT" --fast99

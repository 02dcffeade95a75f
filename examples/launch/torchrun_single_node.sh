#!/usr/bin/env bash
# One node, all its GPUs: megatron-r1 under torchrun (NCCL). Usage: torchrun_single_node.sh CONFIG [k=v ...]
set -euo pipefail
NPROC=${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l)}
NPROC=${NPROC:-1}
exec torchrun --standalone --nproc-per-node "$NPROC" -m megatron_r1.cli train "$@"

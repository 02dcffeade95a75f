#!/usr/bin/env bash
# One node: megatron-r1 under torchrun (NCCL). Usage: torchrun_single_node.sh CONFIG [k=v ...]
# Processes: NPROC if set, else the config's parallel.world_size, else every GPU of the node.
set -euo pipefail
if [ -z "${NPROC:-}" ] && [[ "${1:-}" == *.y*ml ]]; then
  NPROC=$(python -c 'import sys; from megatron_r1.config import load_config
print(load_config(sys.argv[1], sys.argv[2:]).parallel.world_size or "")' "$@")
fi
NPROC=${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l)}
NPROC=${NPROC:-1}
exec torchrun --standalone --nproc-per-node "$NPROC" -m megatron_r1.cli train "$@"

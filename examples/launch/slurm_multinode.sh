#!/usr/bin/env bash
#SBATCH --job-name=megatron-r1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
# Multi-node: one torchrun per node under Slurm, rendezvous on the first node.
# Usage: examples/launch/slurm_multinode.sh CONFIG [k=v ...]
# Run outside a job, it submits itself with --nodes = parallel.world_size / 8 (the config's layout, which
# `megatron-r1 plan CONFIG` checks); inside the job the trainer checks the world size against it again.
set -euo pipefail
GPUS_PER_NODE=8
if [ -z "${SLURM_JOB_ID:-}" ]; then
  WORLD=$(python -c 'import sys; from megatron_r1.config import load_config
print(load_config(sys.argv[1], sys.argv[2:]).parallel.world_size)' "$@")
  if [ "$WORLD" -eq 0 ] || [ $((WORLD % GPUS_PER_NODE)) -ne 0 ]; then
    echo "parallel.world_size=$WORLD: set it to a multiple of $GPUS_PER_NODE in the config" >&2
    exit 2
  fi
  exec sbatch --nodes=$((WORLD / GPUS_PER_NODE)) "$0" "$@"
fi
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun \
  --nnodes "$SLURM_NNODES" --nproc-per-node "$GPUS_PER_NODE" \
  --rdzv-backend c10d --rdzv-endpoint "$HEAD:29500" --rdzv-id "$SLURM_JOB_ID" \
  -m megatron_r1.cli train "$@"

#!/usr/bin/env bash
#SBATCH --job-name=megatron-r1
#SBATCH --nodes=16
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
# Multi-node: one torchrun per node under Slurm, rendezvous on the first node.
# Usage: sbatch examples/launch/slurm_multinode.sh CONFIG [k=v ...]
set -euo pipefail
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun \
  --nnodes "$SLURM_NNODES" --nproc-per-node 8 \
  --rdzv-backend c10d --rdzv-endpoint "$HEAD:29500" --rdzv-id "$SLURM_JOB_ID" \
  -m megatron_r1.cli train "$@"

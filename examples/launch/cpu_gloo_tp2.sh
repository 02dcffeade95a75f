#!/usr/bin/env bash
# The demo with tensor parallelism 2 on a CPU (gloo): the same code path as a GPU cluster, at toy scale.
set -euo pipefail
exec torchrun --standalone --nproc-per-node 2 -m megatron_r1.cli train parallel.tensor_parallel=2 "$@"

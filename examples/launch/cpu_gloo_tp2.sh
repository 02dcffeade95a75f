#!/usr/bin/env bash
# The demo with tensor parallelism 2 on a CPU (gloo): the same code path as a GPU cluster, at toy scale.
# Hardware: 2 CPU cores (2 processes). Time and result: not measured here as a whole run (the TP = 2 paths are
# checked against one process by tests/training/test_parallel.py).
set -euo pipefail
exec torchrun --standalone --nproc-per-node 2 -m megatron_r1.cli train parallel.tensor_parallel=2 "$@"

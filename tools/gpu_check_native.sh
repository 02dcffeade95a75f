#!/bin/bash
# GPU checks of the native rollout engine (CUDA graphs, static cache, continuous batching), from the repo root on a
# CUDA machine whose python3 has torch and transformers (megatron-core not needed):  bash tools/gpu_check_native.sh
# 1. tests/rollout/test_rollout_native_cuda.py: graphs == eager == CPU under greedy, seeded sampling, log-prob contract;
# 2. the GRPO bench's rollout workload (~0.5B Qwen2 shape, bf16, 32 prompts x G 8 x 256 new tokens), graphs on/off;
# 3. native vs transformers' generate on the SmolLM2-135M shape (random weights, fp32, 32 rows x 64 tokens).
set -uo pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
python3 -m pytest -q -p no:cacheprovider -m gpu tests/rollout/test_rollout_native_cuda.py
Q05="--model qwen2-0.5b --device cuda --dtype bfloat16 --prompts 32 --samples 8 --new-tokens 256 --no-transformers"
python3 tools/bench_rollout.py $Q05 --repeats 3 --profile
python3 tools/bench_rollout.py $Q05 --repeats 2 --offload-on-sleep
python3 tools/bench_rollout.py $Q05 --repeats 1 --no-cuda-graphs
python3 tools/bench_rollout.py --model random --device cuda --dtype float32 --repeats 3

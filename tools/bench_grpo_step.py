"""Time GRPO steps of any config and print the median phase split (rollout, reward, train, weight sync).

    python tools/bench_grpo_step.py [CONFIG.yaml] [section.key=value ...] [--steps N] [--warmup N]

On a GPU machine, e.g. a ~0.5B Qwen2-shaped random model:
    torchrun --nproc-per-node 1 tools/bench_grpo_step.py model.preset=qwen2 model.num_layers=24 \
        model.hidden_size=896 model.ffn_hidden_size=4864 model.num_attention_heads=14 \
        model.num_query_groups=2 model.add_qkv_bias=true model.params_dtype=bfloat16 \
        train.sft_warmup_steps=0
(or model.hf_path=DIR for a real checkpoint and its tokenizer and vocabulary).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from megatron_r1.config import load_config
from megatron_r1.training.grpo import grpo_step, sync_weights
from megatron_r1.training.metrics import PhaseTimer
from megatron_r1.training.setup import build_components


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", nargs="?")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    if args.config and "=" in args.config:
        args.overrides, args.config = [args.config, *args.overrides], None
    cfg = load_config(args.config, args.overrides)
    c = build_components(cfg)
    sync_weights(c)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else None
    timer = PhaseTimer(sync=sync)
    times: dict[str, list[float]] = {}
    total = args.warmup + args.steps
    for step in range(total):
        start = time.perf_counter()
        metrics = grpo_step(c, step, total, timer)
        phases = timer.pop()
        if step >= args.warmup:
            phases["time/step"] = time.perf_counter() - start
            phases["response_length/mean"] = metrics["response_length/mean"]
            for k, v in phases.items():
                times.setdefault(k, []).append(v)
    if c.state.is_main:
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
        print(f"| metric (median of {args.steps} steps, {device}) | value |")
        print("|---|---|")
        for k, v in times.items():
            print(f"| {k} | {statistics.median(v):.4f} |")
        rollouts = cfg.data.prompts_per_step * cfg.rollout.group_size
        step_s = statistics.median(times["time/step"])
        tokens = statistics.median(times["response_length/mean"]) * rollouts
        print(f"| generated tokens / s (whole step) | {tokens / step_s:.1f} |")
        rollout_s = statistics.median(times["time/rollout"])
        print(f"| generated tokens / s (rollout phase) | {tokens / rollout_s:.1f} |")


if __name__ == "__main__":
    main()

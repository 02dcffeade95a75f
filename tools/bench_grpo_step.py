"""Time GRPO steps of any config and print the median phase split (rollout, reward, train, weight sync),
and on CUDA the peak GPU memory allocated during the train phase (``torch.cuda.max_memory_allocated``
from the start of the phase: weights, grads and optimizer state included) and during the whole step.

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
from contextlib import contextmanager

import torch

from megatron_r1.config import load_config
from megatron_r1.training.grpo import grpo_step, sync_weights
from megatron_r1.training.metrics import PhaseTimer
from megatron_r1.training.setup import build_components


class PeakMemoryTimer(PhaseTimer):
    """PhaseTimer that also records the peak CUDA memory allocated within each phase, in GiB."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.peaks: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        with super().phase(name):
            yield
        if torch.cuda.is_available():
            self.peaks[f"peak_mem_gib/{name}"] = torch.cuda.max_memory_allocated() / 2**30

    def pop(self) -> dict[str, float]:
        out, self.peaks = super().pop() | self.peaks, {}
        return out


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
    on_gpu = c.state.device.type == "cuda"  # the run's device (a gloo run on a GPU host is a CPU run)
    sync = torch.cuda.synchronize if on_gpu else None
    timer = PeakMemoryTimer(sync=sync)
    times: dict[str, list[float]] = {}
    total = args.warmup + args.steps
    for step in range(total):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        metrics = grpo_step(c, step, total, timer)
        phases = timer.pop()
        if step >= args.warmup:
            phases["time/step"] = time.perf_counter() - start
            if torch.cuda.is_available():
                phases["peak_mem_gib/step"] = torch.cuda.max_memory_allocated() / 2**30
            phases["response_length/mean"] = metrics["response_length/mean"]
            for k, v in phases.items():
                times.setdefault(k, []).append(v)
    if c.state.is_main:
        device = torch.cuda.get_device_name(c.state.device) if on_gpu else "CPU"
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

"""Predicted (``megatron-r1 plan``) vs measured peak GPU memory of one GRPO step's rollout and train phases,
for the ~0.5B Qwen2 shape of tools/bench_grpo_step.py (random weights, the built-in tokenizer), one GPU.

    python tools/plan_vs_measured.py [section.key=value ...]

Measured: ``torch.cuda.max_memory_allocated`` within each phase of the second step (the first creates the
optimizer state). Predicted: the planner's phase totals without its reserve (CUDA context, NCCL buffers and
allocator fragmentation are not allocations). Prints 'skipped: no CUDA' without a GPU. Exit 1 when a phase
is off by more than ±15 %.
"""

from __future__ import annotations

import contextlib
import sys

import torch

QWEN2_05B = [
    "model.preset=qwen2",
    "model.num_layers=24",
    "model.hidden_size=896",
    "model.ffn_hidden_size=4864",
    "model.num_attention_heads=14",
    "model.num_query_groups=2",
    "model.add_qkv_bias=true",
    "model.params_dtype=bfloat16",
    "train.sft_warmup_steps=0",
    "train.micro_batch_size=16",
    "data.prompts_per_step=16",
    "data.max_prompt_tokens=32",
    "rollout.group_size=8",
    "rollout.max_new_tokens=256",
    "rollout.stop_strings=[]",
]
TOLERANCE = 0.15


class PeakMemory:
    """A PhaseTimer stand-in: the peak allocated bytes of each phase."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        yield
        torch.cuda.synchronize()
        self.peaks[name] = torch.cuda.max_memory_allocated()


def main(overrides: list[str]) -> int:
    if not torch.cuda.is_available():
        print("skipped: no CUDA")
        return 0
    from megatron_r1.config import load_config
    from megatron_r1.models.dense import transformer_engine_importable
    from megatron_r1.plan import Assumptions, make_plan
    from megatron_r1.plan.memory import GIB
    from megatron_r1.training.grpo import grpo_step, sync_weights
    from megatron_r1.training.setup import build_components

    cfg = load_config(None, QWEN2_05B + overrides)
    # Without Transformer Engine Megatron builds the local spec, which stores more (fp32 norms, scores).
    plan = make_plan(cfg, gpus=1, assumptions=Assumptions(te_spec=transformer_engine_importable()))
    c = build_components(cfg)
    sync_weights(c)
    timer = PeakMemory()
    for step in range(2):
        grpo_step(c, step, 2, timer)
    reserve = plan.rollout_phase["reserve"]
    rows = [
        ("rollout", timer.peaks["rollout"], plan.rollout_phase["total"] - reserve),
        ("train", timer.peaks["train"], plan.train_phase["total"] - plan.train_phase["reserve"]),
    ]
    print(f"{torch.cuda.get_device_name()}: {plan.params.total / 1e9:.3f}B parameters")
    print("| phase | measured GiB | predicted GiB | predicted / measured |")
    print("|---|---|---|---|")
    ok = True
    for name, measured, predicted in rows:
        ratio = predicted * GIB / measured
        ok &= abs(ratio - 1) <= TOLERANCE
        print(f"| {name} | {measured / GIB:.2f} | {predicted:.2f} | {ratio:.2f} |")
    parts = ", ".join(f"{k} {v:.2f}" for k, v in plan.train_phase.items() if v and k != "total")
    print(f"predicted train-phase parts (GiB): {parts}")
    print("within ±15 %" if ok else "OFF by more than ±15 %")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

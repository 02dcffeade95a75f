"""Print the markdown tables of examples/scaling/README.md: the planner's predictions for the scaling-study
configs, and predicted vs published figures for the anchor runs (examples/scaling/anchors/).

    python tools/scaling_table.py
"""

from __future__ import annotations

from pathlib import Path

from megatron_r1.config import load_config
from megatron_r1.plan import Assumptions, make_plan

ROOT = Path(__file__).resolve().parents[1] / "examples" / "scaling"

# Published figures (NeMo-RL v0.6 performance summary, DGX-H100) and the mean lengths of those runs: the
# mean generated sequence is the table's "G-Average Seq len"; its prompt share (~100 tokens of a math
# problem) is our assumption.
ANCHORS = {
    "nemo_rl_deepseek_v3_256xh100.yaml": dict(seq=701, step_s=134, tok_s_gpu=12.1),
    "nemo_rl_deepseek_v3_fp8_512xh100.yaml": dict(seq=721, step_s=59.2, tok_s_gpu=14.1),
    "nemo_rl_qwen3_30b_a3b_32xh100.yaml": dict(seq=3203, step_s=192, tok_s_gpu=1102),
}
PROMPT = 100


def gpu_of(path: Path) -> str:
    return "H800" if "h800" in path.name else "H100"


def scaling_table() -> list[str]:
    rows = [
        "| config | GPUs | layout (TP × PP × DP, EP; rollout TP) | peak GiB / GPU | headroom GiB "
        "| step s: max length | tokens/s/GPU | step s: mean 4k | tokens/s/GPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(ROOT.glob("*.yaml")):
        plan = make_plan(load_config(path), gpu=gpu_of(path))
        short = make_plan(
            load_config(path), gpu=gpu_of(path), assumptions=Assumptions(mean_response_tokens=4096)
        )
        lay = plan.layout
        rows.append(
            f"| {path.name} | {lay.world} {plan.gpu.name} | {lay.tp} × {lay.pp} × {lay.dp}, EP {lay.ep}; "
            f"{lay.rollout_tp} | {plan.peak_gib:.1f} | {plan.gpu.memory_gib - plan.peak_gib:.1f} "
            f"| {plan.time.total:,.0f} | {plan.tokens_per_s_per_gpu:.1f} "
            f"| {short.time.total:,.0f} | {short.tokens_per_s_per_gpu:.1f} |"
        )
    return rows


def anchor_table() -> list[str]:
    rows = [
        "| anchor | GPUs | step s: published | predicted | ratio | tokens/s/GPU: published | predicted "
        "| predicted split (gen / train / log-probs / sync s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, pub in ANCHORS.items():
        a = Assumptions(mean_prompt_tokens=PROMPT, mean_response_tokens=pub["seq"] - PROMPT)
        plan = make_plan(load_config(ROOT / "anchors" / name), assumptions=a)
        t = plan.time
        if plan.engine.concurrent < 1:  # bf16 engine weights leave no KV cache room: not modelled
            why = "n/a: the bf16 engine weights fill the GPU (FP8 generation is not modelled)"
            rows.append(
                f"| {name} | {plan.layout.world} | {pub['step_s']} | {why} | | {pub['tok_s_gpu']} | | |"
            )
            continue
        ratio = pub["step_s"] / t.total
        rows.append(
            f"| {name} | {plan.layout.world} | {pub['step_s']} | {t.total:.1f} | {ratio:.1f}× "
            f"| {pub['tok_s_gpu']} | {plan.tokens_per_s_per_gpu:.1f} | {t.generation:.1f} / {t.train:.1f} / "
            f"{t.logprobs:.1f} / {t.weight_sync:.1f} |"
        )
    return rows


if __name__ == "__main__":
    print("\n".join(scaling_table()))
    print()
    print("\n".join(anchor_table()))

"""A plan as text (every assumption printed) or as a JSON-ready dict."""

from __future__ import annotations

from typing import Any

from megatron_r1.plan import Plan

PARTS = ("weights", "grads", "optimizer", "reference", "activations", "engine_weights", "kv_cache", "reserve")


def to_dict(plan: Plan) -> dict[str, Any]:
    lay, t = plan.layout, plan.time
    per_gpu = {k: round(max(plan.train_phase[k], plan.rollout_phase[k]), 3) for k in PARTS}
    per_gpu["total"] = round(plan.peak_gib, 3)
    return {
        "gpus": lay.world,
        "gpu": plan.gpu.name,
        "gpu_memory_gib": plan.gpu.memory_gib,
        "per_gpu_gib": per_gpu,
        "train_phase_gib": {k: round(v, 3) for k, v in plan.train_phase.items()},
        "rollout_phase_gib": {k: round(v, 3) for k, v in plan.rollout_phase.items()},
        "fits": plan.fits,
        "reasons": list(plan.reasons),
        "step_seconds": round(t.total, 3),
        "step_parts_seconds": {
            "generation": round(t.generation, 3),
            "train": round(t.train, 3),
            "logprobs": round(t.logprobs, 3),
            "weight_sync": round(t.weight_sync, 3),
        },
        "tokens_per_step": round(t.tokens),
        "tokens_per_s_per_gpu": round(plan.tokens_per_s_per_gpu, 2),
        "params": {"total": plan.params.total, "active": plan.params.active, "experts": plan.params.experts},
        "layout": {
            "tp": lay.tp,
            "pp": lay.pp,
            "cp": lay.cp,
            "dp": lay.dp,
            "ep": lay.ep,
            "etp": lay.etp,
            "edp": lay.edp,
            "sp": lay.sp,
            "rollout_tp": lay.rollout_tp,
            "engines": lay.engines,
        },
        "host_gib_per_node_engine_asleep": round(plan.host_gib_per_node, 3),
        "rollout_concurrent_sequences_per_engine": plan.engine.concurrent,
        "rollouts_per_engine": plan.engine.rollouts,
        "model_source": plan.model_source,
        "assumptions": plan.assumptions.lines(),
    }


def to_text(plan: Plan) -> str:
    lay, t, m, cfg = plan.layout, plan.time, plan.model, plan.cfg
    node = min(plan.assumptions.gpus_per_node, lay.world)
    lines = [
        f"model: {m.preset}, {plan.params.total / 1e9:.2f}B parameters "
        f"({plan.params.active / 1e9:.2f}B active), "
        f"{m.params_dtype}"
        + (f", FP8 {m.fp8}/{m.fp8_recipe}" if m.fp8 != "off" else "")
        + f" — from {plan.model_source}",
        f"layout: {lay.world} × {plan.gpu.name} ({plan.gpu.memory_gib} GiB): TP {lay.tp} × PP {lay.pp} × "
        f"CP {lay.cp} × DP {lay.dp}; EP {lay.ep}, expert-TP {lay.etp}, expert-DP {lay.edp}; "
        f"sequence parallel {lay.sp}",
        f"rollout: {cfg.rollout.engine}, {lay.engines} engine(s) of {lay.rollout_tp} GPU(s), "
        f"{plan.engine.rollouts} sequences each, {plan.engine.concurrent} at once "
        f"(KV {plan.engine.kv_bytes_per_token / 1024:.1f} KiB/token/GPU)",
        "",
        f"memory per GPU (GiB; worst pipeline stage: {plan.stage})   trainer phase   rollout phase",
    ]
    for part in (*PARTS, "total"):
        lines.append(f"  {part:<18} {plan.train_phase[part]:>30.2f} {plan.rollout_phase[part]:>15.2f}")
    lines += [
        "resident in both phases: the trainer's weights, gradients, optimizer state"
        + (" and KL reference" if plan.train_phase["reference"] else "")
        + " (not offloaded); the engine sleeps while the trainer trains, its weights in host memory "
        f"({plan.host_gib_per_node:.1f} GiB per node of {node} GPUs)",
        "",
        f"step: {t.total:.1f} s = generation {t.generation:.1f} + train {t.train:.1f} + log-probs "
        f"{t.logprobs:.1f} + weight sync {t.weight_sync:.1f}  ({t.train_flops:.3g} train FLOPs)",
        f"throughput: {plan.tokens_per_s_per_gpu:.1f} tokens/s/GPU "
        f"({t.tokens:.0f} prompt + response tokens per step)",
        "",
        f"hardware: {plan.gpu.source}",
        "assumptions:",
        *(f"  {line}" for line in plan.assumptions.lines()),
        "",
        "fits" if plan.fits else f"does not fit: {plan.reasons[0]}",
    ]
    return "\n".join(lines)

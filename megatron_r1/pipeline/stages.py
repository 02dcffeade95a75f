"""Pipeline stage kinds, by name: each runs one stage in its own run directory and returns its outputs.

A stage function is ``fn(cfg, run_dir, resume, options) -> {"checkpoint": ..., "data": ..., "report": ...}``
(the keys it produces); ``resume`` is true when the stage had started before (it continues from its own
latest checkpoint / finished chunks). Register more with :func:`register_stage`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from megatron_r1.config import Config

StageFn = Callable[[Config, Path, bool, dict], dict[str, str]]
STAGES: dict[str, StageFn] = {}


def register_stage(kind: str) -> Callable[[StageFn], StageFn]:
    def wrap(fn: StageFn) -> StageFn:
        STAGES[kind] = fn
        return fn

    return wrap


@register_stage("sft")
def sft_stage(cfg: Config, run_dir: Path, resume: bool, options: dict) -> dict[str, str]:
    """Supervised fine-tuning (cold start, SFT on rejection-sampled data)."""
    from megatron_r1.training.sft_run import run_sft

    run_sft(cfg, run_dir, resume=resume)
    return {"checkpoint": str(run_dir)}


@register_stage("distill")
def distill_stage(cfg: Config, run_dir: Path, resume: bool, options: dict) -> dict[str, str]:
    """Distillation: SFT of a (smaller, possibly other-family) student on the teacher's text samples; the
    student's own tokenizer encodes them, so teacher and student vocabularies need not match."""
    return sft_stage(cfg, run_dir, resume, options)


@register_stage("grpo")
def grpo_stage(cfg: Config, run_dir: Path, resume: bool, options: dict) -> dict[str, str]:
    """Reasoning-oriented RL. Started from an earlier stage's weights, the demo's built-in warm-up is off."""
    from megatron_r1.training.run import train

    if cfg.model.checkpoint:
        cfg.train.sft_warmup_steps = 0
    train(cfg, run_dir, resume=resume)
    return {"checkpoint": str(run_dir)}


@register_stage("rejection_sample")
def rejection_stage(cfg: Config, run_dir: Path, resume: bool, options: dict) -> dict[str, str]:
    """k samples per prompt, only correct and readable ones kept, as SFT JSONL."""
    from megatron_r1.pipeline.rejection import run_rejection

    return {"data": str(run_rejection(cfg, run_dir, resume=resume))}


@register_stage("eval")
def eval_stage(cfg: Config, run_dir: Path, resume: bool, options: dict) -> dict[str, str]:
    """pass@1 / pass@k / cons@k report of the stage's weights (re-run whole on resume: it saves nothing)."""
    from megatron_r1.eval.run import run_eval

    run_eval(cfg, run_dir, data=options.get("eval_data"), limit=int(options.get("limit", 0)))
    return {"report": str(run_dir / "report.json")}

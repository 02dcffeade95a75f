"""Sampling k completions per row from a run's policy (its weights synced into the rollout engine), each
data-parallel rank taking every dp-th row, and gathering per-row results back on every rank. Shared by
``megatron-r1 eval`` and rejection sampling."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from megatron_r1.config import Config, apply_dict
from megatron_r1.rollout.engine import Completion, SamplingParams
from megatron_r1.training.setup import Components


def run_config_of(checkpoint: str | Path) -> Path | None:
    """``config.json`` of the run a checkpoint (or run directory) belongs to, if any."""
    path = Path(checkpoint)
    for d in (path, path.parent.parent):  # RUN_DIR or RUN_DIR/checkpoints/step_N
        if (d / "config.json").is_file():
            return d / "config.json"
    return None


def config_for_checkpoint(checkpoint: str | Path, cfg: Config | None = None) -> Config:
    """The run's own config (architecture, tokenizer, template) with ``model.checkpoint`` set; ``cfg``'s
    non-model sections win when given."""
    import json

    out = Config()
    found = run_config_of(checkpoint)
    if found is not None:
        saved = json.loads(found.read_text())
        apply_dict(out, {k: v for k, v in saved.items() if k in out.to_dict()}, str(found))
    if cfg is not None:
        for name in ("rollout", "reward", "data", "eval", "rejection", "train", "log", "parallel"):
            setattr(out, name, getattr(cfg, name))
    out.model.checkpoint = str(checkpoint)
    return out


def sample(c: Components, rows: list[dict], params: SamplingParams) -> list[Completion]:
    """``params.n`` completions per row (prompt-major), from this rank's engine."""
    from megatron_r1.training.grpo import generate_once

    c.engine.wake_up()
    try:
        return generate_once(c, [c.prompts.encode(r) for r in rows], params)
    finally:
        c.engine.sleep()


def gather(c: Components, items: list) -> list:
    """Every DP rank's ``items`` concatenated in rank order (the same list on every rank)."""
    if c.state.dp_size == 1:
        return items
    out: list = [None] * c.state.dp_size
    dist.all_gather_object(out, items, group=c.state.dp_group)
    return [x for part in out for x in part]

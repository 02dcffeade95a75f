"""A GRPO run from start (or the latest checkpoint) to the end: setup, optional warm-up, the step loop with
evaluation, metrics, checkpoints and the non-finite-loss guard."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from megatron_r1.config import Config
from megatron_r1.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from megatron_r1.training.grpo import TrainingError, evaluate, grpo_step, sync_weights
from megatron_r1.training.metrics import MetricsWriter, PhaseTimer, Progress
from megatron_r1.training.setup import build_components, snapshot_reference
from megatron_r1.training.sft import arithmetic_warmup

log = logging.getLogger(__name__)


def train(cfg: Config, run_dir: str | Path, resume: bool = False) -> dict[str, float]:
    """Run GRPO for ``cfg.train.steps`` steps; returns the last step's metrics."""
    run_dir = Path(run_dir)
    c = build_components(cfg)
    main = c.state.is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    start = 0
    reference = c.reference.model if c.reference is not None else None
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        start = load_checkpoint(ckpt, c.model, c.optimizer, c.state, reference=reference)["step"]
        log.info("resumed from %s at step %d", ckpt, start)
    elif resume:
        log.warning("--resume: no complete checkpoint in %s; starting from the beginning", run_dir)
    if ckpt is None:
        if cfg.data.source == "arithmetic" and cfg.train.sft_warmup_steps > 0:
            history = arithmetic_warmup(c, cfg.train.sft_warmup_steps)
            log.info("warm-up: %d SFT steps, final loss %.3f", len(history), history[-1]["sft/loss"])
        snapshot_reference(c)
    sync_weights(c)

    steps = cfg.train.steps
    writer = MetricsWriter(run_dir, enabled=main, tensorboard=cfg.log.tensorboard, resume_step=start)
    progress = Progress(steps, start_step=start, enabled=main and cfg.log.progress)
    timer = PhaseTimer()
    metrics: dict[str, float] = {}
    if start == 0:
        with timer.phase("eval"):
            evaluation = evaluate(c)
        writer.log(0, evaluation | timer.pop())
    bad = 0
    try:
        for step in range(start, steps):
            metrics = grpo_step(c, step, steps, timer)
            done = step + 1
            if (cfg.eval.every and done % cfg.eval.every == 0) or done == steps:
                with timer.phase("eval"):
                    metrics |= evaluate(c)
            times = timer.pop()
            step_time = sum(v for k, v in times.items() if k != "time/eval")
            metrics["tokens_per_s"] = (
                metrics["response_length/mean"] * _rollout_size(cfg) / max(step_time, 1e-9)
            )
            metrics |= times
            bad = bad + 1 if metrics["skipped"] or not math.isfinite(metrics["loss"]) else 0
            metrics["bad_steps"] = bad
            writer.log(done, metrics)
            progress.update(done, metrics)
            if bad >= cfg.train.max_bad_steps:
                raise TrainingError(
                    f"{bad} consecutive steps with a non-finite loss or gradient at step {done}; "
                    f"stopping (last checkpoint: {latest_checkpoint(run_dir)})"
                )
            if (cfg.train.save_every and done % cfg.train.save_every == 0) or done == steps:
                save_checkpoint(run_dir, done, c.model, c.optimizer, c.state, reference=reference)
    finally:
        writer.close()
        progress.close()
    return metrics


def _rollout_size(cfg: Config) -> int:
    return cfg.data.prompts_per_step * cfg.rollout.group_size

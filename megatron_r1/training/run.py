"""A GRPO run from start (or the latest intact checkpoint) to the end: input checks, run-directory ownership,
setup, optional warm-up, the step loop with evaluation, metrics, checkpoints, the non-finite-loss guard and a
clean stop on SIGINT / SIGTERM.

Order matters for runs that cannot be lost: the config, the inputs and the run directory are checked and the
directory locked before anything expensive; nothing is written into the run directory (beyond its lock)
until the checkpoint a ``--resume`` continues from has been verified and loaded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from pathlib import Path

from megatron_r1.config import Config, ConfigError
from megatron_r1.preflight import check_train_inputs
from megatron_r1.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    resume_checkpoint,
    save_checkpoint,
    save_or_explain,
    set_aside_newer,
)
from megatron_r1.training.grpo import TrainingError, evaluate, grpo_step, sync_weights
from megatron_r1.training.metrics import MetricsWriter, PhaseTimer, Progress
from megatron_r1.training.rundir import RunDirLock, archive, check_run_dir, used
from megatron_r1.training.setup import Components, build_components, close_components, snapshot_reference
from megatron_r1.training.sft import arithmetic_warmup
from megatron_r1.training.stop import RunStopped, StopRequest

log = logging.getLogger(__name__)


def train(
    cfg: Config, run_dir: str | Path, resume: bool = False, overwrite: bool = False
) -> dict[str, float]:
    """Run GRPO for ``cfg.train.steps`` steps; returns the last step's metrics.

    ``resume`` continues the run in ``run_dir`` from its newest intact checkpoint; ``overwrite`` moves a
    previous run aside (``RUN_DIR.archived-<time>``) first; a used ``run_dir`` with neither is refused.
    Raises :class:`~megatron_r1.training.stop.RunStopped` after a clean stop on SIGINT / SIGTERM.
    """
    run_dir = Path(run_dir)
    main = int(os.environ.get("RANK", "0")) == 0
    check_train_inputs(cfg)
    if main:
        check_run_dir(run_dir, resume, overwrite)
        if resume:
            check_resume_config(run_dir, cfg)
    with StopRequest() as stop, RunDirLock(run_dir) if main else contextlib.nullcontext():
        if main:
            check_run_dir(run_dir, resume, overwrite)  # again under the lock: a run may have ended meanwhile
            if overwrite and used(run_dir):
                log.warning("--overwrite: the previous run in %s moved to %s", run_dir, archive(run_dir))
        c = build_components(cfg)
        try:
            return _run(c, run_dir, resume, stop)
        finally:
            close_components(c)


def check_resume_config(run_dir: Path, cfg: Config) -> None:
    """A resumed run keeps the model it was saved with: a different model section fails here, in one line
    naming the key, before any setup (not as a shape mismatch deep in the checkpoint loader)."""
    path = run_dir / "config.json"
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text()).get("model", {})
    except (OSError, ValueError, AttributeError):
        return  # an unreadable config.json says nothing; the checkpoint load decides
    new = cfg.to_dict()["model"]
    if new.get("hf_path"):
        keys = ["hf_path"]
    else:
        keys = [k for k in new if k not in ("vocab_size", "params_dtype") and k in saved]
        if new.get("vocab_size"):
            keys.append("vocab_size")
    for key in keys:
        if saved.get(key) != new.get(key):
            raise ConfigError(
                f"--resume: model.{key}={new.get(key)!r} differs from the run's {saved.get(key)!r} ({path}); "
                "a run resumes with the model it was saved with"
            )


def _run(c: Components, run_dir: Path, resume: bool, stop: StopRequest) -> dict[str, float]:
    cfg = c.cfg
    main = c.state.is_main
    start, resumed = 0, None
    reference = c.reference.model if c.reference is not None else None

    def load(path: Path) -> int:
        return load_checkpoint(path, c.model, c.optimizer, c.state, reference=reference)["step"]

    if resume:
        resumed = resume_checkpoint(run_dir, load)
        if resumed is None:
            log.warning("--resume: no checkpoint in %s; starting from the beginning", run_dir)
        else:
            start = resumed[1]
            log.info("resumed from %s at step %d", resumed[0], start)
    if main:
        if resumed is not None:
            for path in set_aside_newer(run_dir, start):
                log.warning("set aside the damaged newer checkpoint as %s", path)
        _write_atomic(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))
    if resumed is None:
        if cfg.data.source == "arithmetic" and cfg.train.sft_warmup_steps > 0:
            history = arithmetic_warmup(c, cfg.train.sft_warmup_steps)
            log.info("warm-up: %d SFT steps, final loss %.3f", len(history), history[-1]["sft/loss"])
        snapshot_reference(c)
    sync_weights(c)

    steps = cfg.train.steps
    # Without a checkpoint the run starts over: records a previous attempt logged (step 0 too) are dropped.
    writer = MetricsWriter(
        run_dir, enabled=main, tensorboard=cfg.log.tensorboard, resume_step=start if resumed else -1
    )
    progress = Progress(steps, start_step=start, enabled=main and cfg.log.progress)
    timer = PhaseTimer()
    metrics: dict[str, float] = {}
    saved = start if resumed else None

    def save(done: int) -> Path:
        return save_or_explain(
            run_dir,
            done,
            lambda: save_checkpoint(run_dir, done, c.model, c.optimizer, c.state, reference=reference),
        )

    def stop_if_asked(step: int) -> None:
        """Between steps: on a signal, save ``step`` (unless saved or none done) and stop."""
        signum = stop.requested(c.state.device)
        if signum:
            ckpt = save(step) if step > start and saved != step else latest_checkpoint(run_dir)
            raise RunStopped(signum, step, steps, ckpt)

    try:
        if start == 0:
            stop_if_asked(0)  # a signal during setup or warm-up: no evaluation first
            with timer.phase("eval"):
                evaluation = evaluate(c)
            writer.log(0, evaluation | timer.pop())
        bad = 0
        for step in range(start, steps):
            stop_if_asked(step)
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
                save(done)
                saved = done
    finally:
        writer.close()
        progress.close()
    return metrics


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _rollout_size(cfg: Config) -> int:
    return cfg.data.prompts_per_step * cfg.rollout.group_size

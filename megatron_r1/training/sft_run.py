"""An SFT run from start (or the latest checkpoint) to the end: cold start, SFT on rejection-sampled data,
distillation into another model, and the demo's warm-up as an ordinary stage.

The data of step s is a pure function of (seed, s): the examples are shuffled once per epoch and cut into
``sft.batch_size`` per step, each DP rank taking its share, so a resumed run sees what an uninterrupted one
would. With ``sft.data`` unset the examples are the built-in arithmetic task's worked additions (the demo's
warm-up data), generated per step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from pathlib import Path

from megatron_r1.config import Config, ConfigError
from megatron_r1.data.sft import Example, encode_example, micro_batches, read_sft_jsonl
from megatron_r1.training.checkpoint import load_checkpoint, resume_checkpoint, save_checkpoint
from megatron_r1.training.metrics import MetricsWriter, Progress
from megatron_r1.training.optim import lr_at
from megatron_r1.training.rundir import check_run_dir
from megatron_r1.training.setup import Components, build_components, close_components
from megatron_r1.training.sft import sft_step

log = logging.getLogger(__name__)


def _max_len(cfg: Config) -> int:
    return cfg.sft.max_seq_len or cfg.model.max_position_embeddings


def _check(cfg: Config, c: Components) -> None:
    if cfg.sft.pack:
        from megatron_r1.models.dense import have_transformer_engine

        if have_transformer_engine(c.model.config):
            raise ConfigError(
                "sft.pack=true needs the local layer spec (its attention takes the block-diagonal mask); "
                "under Transformer Engine set sft.pack=false"
            )
    if cfg.sft.batch_size % c.state.dp_size:
        raise ConfigError(
            f"sft.batch_size={cfg.sft.batch_size} must be divisible by the data-parallel size "
            f"{c.state.dp_size}"
        )


def file_examples(cfg: Config, c: Components) -> list[Example]:
    """The SFT JSONL's rows as token ids; examples longer than the row limit are dropped (logged)."""
    rows = read_sft_jsonl(cfg.sft.data)
    tok = c.tokenizer
    encode_text = lambda text: tok.encode(text, add_special_tokens=False)
    examples = [encode_example(r, c.prompts.encode, encode_text, tok.eos_token_id) for r in rows]
    kept = [ex for ex in examples if len(ex) <= _max_len(cfg)]
    if len(kept) < len(examples):
        dropped = len(examples) - len(kept)
        log.warning("sft: %d of %d examples exceed %d tokens; dropped", dropped, len(rows), _max_len(cfg))
    if not kept:
        raise ConfigError(f"sft.data={cfg.sft.data}: no example fits sft.max_seq_len={_max_len(cfg)}")
    return kept


def step_examples(cfg: Config, c: Components, pool: list[Example] | None, step: int) -> list[Example]:
    """This DP rank's examples of ``step``."""
    bs, seed = cfg.sft.batch_size, cfg.train.seed
    if pool is None:
        from megatron_r1.data.arithmetic import warmup_example

        rng = random.Random(seed * 1_000_003 + 104_729 * step)
        noise = cfg.data.carry_noise if cfg.sft.carry_noise is None else cfg.sft.carry_noise
        pairs = [warmup_example(rng, cfg.data.digits, noise) for _ in range(bs)]
        eos = c.tokenizer.eos_token_id
        encode = c.tokenizer.encode
        chosen = [Example(c.prompts.encode({"prompt": p}), encode(r) + [eos]) for p, r in pairs]
    else:
        orders: dict[int, list[int]] = {}  # epoch → its shuffle of the pool
        chosen = []
        for i in range(step * bs, (step + 1) * bs):
            epoch, j = divmod(i, len(pool))
            if epoch not in orders:
                orders[epoch] = list(range(len(pool)))
                random.Random(seed + 7919 * epoch).shuffle(orders[epoch])
            chosen.append(pool[orders[epoch][j]])
    return chosen[c.state.dp_rank :: c.state.dp_size]


def run_sft(cfg: Config, run_dir: str | Path, resume: bool = False) -> dict[str, float]:
    """SFT for ``cfg.sft.steps`` steps; returns the last step's metrics."""
    run_dir = Path(run_dir)
    s = cfg.sft
    if s.data is not None and not Path(s.data).is_file():
        raise ConfigError(f"sft.data={s.data}: file not found")
    if int(os.environ.get("RANK", "0")) == 0:
        check_run_dir(run_dir, resume, overwrite=False)
    c = build_components(cfg)
    try:
        return _run(cfg, c, run_dir, resume)
    finally:
        close_components(c)


def _run(cfg: Config, c: Components, run_dir: Path, resume: bool) -> dict[str, float]:
    s = cfg.sft
    _check(cfg, c)
    pool = file_examples(cfg, c) if s.data is not None else None
    main = c.state.is_main
    start = 0
    found = None
    if resume:  # the newest intact checkpoint (manifest verified), before anything is written
        found = resume_checkpoint(
            run_dir, lambda p: load_checkpoint(p, c.model, c.optimizer, c.state)["step"]
        )
    if found is not None:
        start = found[1]
        log.info("sft: resumed from %s at step %d", found[0], start)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    schedule = dataclasses.replace(cfg.train, lr=s.lr)
    writer = MetricsWriter(run_dir, enabled=main, tensorboard=cfg.log.tensorboard, resume_step=start)
    progress = Progress(s.steps, start_step=start, enabled=main and cfg.log.progress)
    metrics: dict[str, float] = {}
    try:
        for step in range(start, s.steps):
            t0 = time.perf_counter()
            examples = step_examples(cfg, c, pool, step)
            batch = micro_batches(
                examples, s.max_tokens_per_micro_batch, _max_len(cfg), c.tokenizer.pad_token_id, s.pack
            )
            lr = lr_at(step, schedule, s.steps)
            metrics = sft_step(c, batch, lr)
            elapsed = time.perf_counter() - t0
            metrics |= {"lr": lr, "time/train": elapsed, "tokens_per_s": metrics["sft/tokens"] / elapsed}
            done = step + 1
            writer.log(done, metrics)
            progress.update(done, metrics)
            if (cfg.train.save_every and done % cfg.train.save_every == 0) or done == s.steps:
                save_checkpoint(run_dir, done, c.model, c.optimizer, c.state)
    finally:
        writer.close()
        progress.close()
    return metrics

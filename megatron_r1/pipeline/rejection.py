"""``megatron-r1 rejection-sample``: k samples per prompt from a checkpoint (the rollout engine), scored by
the reward registry, filtered (data/rejection.py), written as SFT-ready JSONL with provenance.

Resumable and data-parallel: the prompts are cut into chunks of ``rejection.chunk_prompts``; DP replica r
takes chunks r, r + dp, ...; each chunk's kept rows go to ``RUN_DIR/parts/part_NNNNN.jsonl`` atomically
(with its filter counts beside it), so a rerun with ``--resume`` skips finished chunks. At the end rank 0
merges the parts in order into ``RUN_DIR/data.jsonl`` and ``stats.json``.

Output row: ``prompt`` (the question, or ``messages``), ``completion``, ``answer``, ``source``, ``id`` and
``metadata`` = {prompt_id, sample, checkpoint, scores}.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path

import torch.distributed as dist

from megatron_r1.config import Config, ConfigError
from megatron_r1.data.atomic import write_jsonl_atomic, write_text_atomic
from megatron_r1.data.rejection import Candidate, select
from megatron_r1.eval.sampling import sample
from megatron_r1.rollout.engine import SamplingParams

log = logging.getLogger(__name__)


def source_rows(cfg: Config) -> list[dict] | None:
    """The whole prompt source, loaded once (None for the arithmetic generator, which makes rows per
    chunk)."""
    if cfg.data.source == "arithmetic":
        return None
    from megatron_r1.data.sources import load_source

    options = {
        "jsonl": {"path": cfg.data.path},
        "reasoning_gym": {"task": cfg.data.task, "size": cfg.rejection.num_prompts, "seed": cfg.train.seed},
    }
    return load_source(cfg.data.source, **options.get(cfg.data.source, {}))


def prompt_chunk(cfg: Config, c, index: int, source: list[dict] | None) -> list[dict]:
    """Prompt rows of chunk ``index``: arithmetic — generated training problems (never the held-out
    ones); other sources — consecutive rows of the source."""
    r = cfg.rejection
    first = index * r.chunk_prompts
    count = min(r.chunk_prompts, r.num_prompts - first)
    if source is None:
        return c.prompts.rows(1_000_000 + index, count)
    return source[first : first + count]


def _sft_row(row: dict, text: str, prompt_id: str, sample_index: int, scores: dict, checkpoint: str) -> dict:
    out = (
        {"messages": [*row["messages"], {"role": "assistant", "content": text}]}
        if "messages" in row
        else {
            "prompt": row["prompt"],
            "completion": text,
        }
    )
    for key in ("answer", "source"):
        if key in row:
            out[key] = row[key]
    out["id"] = f"{prompt_id}/{sample_index}"
    out["metadata"] = {
        "prompt_id": prompt_id,
        "sample": sample_index,
        "checkpoint": checkpoint,
        "scores": scores,
    }
    return out


def _chunk(cfg: Config, c, index: int, source: list[dict] | None) -> tuple[list[dict], Counter]:
    from megatron_r1.training.grpo import sampling_seed

    r, k = cfg.rejection, cfg.rejection.samples_per_prompt
    rows = prompt_chunk(cfg, c, index, source)
    params = SamplingParams(
        n=k,
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        max_new_tokens=cfg.rollout.max_new_tokens,
        stop_token_ids=(c.tokenizer.eos_token_id,),
        stop_strings=tuple(cfg.rollout.stop_strings),
        seed=sampling_seed(cfg.train.seed, 10_000 + index, 0),
    )
    completions = sample(c, rows, params)
    texts = [c.tokenizer.decode(comp.token_ids, skip_special_tokens=True) for comp in completions]
    result = c.scorer.score(texts, [rows[i // k] for i in range(len(texts))])
    accuracy = cfg.reward.accuracy
    if accuracy not in result.components:
        raise ConfigError(
            f"reward.accuracy={accuracy!r} must be one of reward.weights ({list(cfg.reward.weights)})"
        )
    max_tokens = r.max_response_tokens or cfg.rollout.max_new_tokens
    kept_rows, reasons = [], Counter()
    for p, row in enumerate(rows):
        prompt_id = str(row.get("id", f"{index * r.chunk_prompts + p}"))
        span = range(p * k, (p + 1) * k)
        candidates = [
            Candidate(
                text=texts[i],
                row=row,
                correct=result.components[accuracy][i],
                tokens=len(completions[i].token_ids),
                truncated=completions[i].finish_reason == "length",
                scores={name: v[i] for name, v in result.components.items()},
            )
            for i in span
        ]
        kept, why = select(candidates, r, max_tokens)
        reasons += why
        for j in kept:
            cand = candidates[j]
            kept_rows.append(_sft_row(row, cand.text, prompt_id, j, cand.scores, str(cfg.model.checkpoint)))
    reasons["kept"] += len(kept_rows)
    reasons["sampled"] += len(texts)
    return kept_rows, reasons


def run_rejection(cfg: Config, run_dir: str | Path, resume: bool = False) -> Path:
    """Rejection-sample ``cfg.model.checkpoint`` over ``rejection.num_prompts`` prompts; returns the path of
    the merged JSONL (``RUN_DIR/data.jsonl``)."""
    from megatron_r1.training.setup import build_components, close_components

    if not cfg.model.checkpoint and not cfg.model.hf_path:
        raise ConfigError("rejection sampling needs weights: set model.checkpoint (or model.hf_path)")
    run_dir = Path(run_dir)
    parts = run_dir / "parts"
    c = build_components(cfg)
    try:
        return _run(cfg, c, run_dir, parts, resume)
    finally:
        close_components(c)


def _run(cfg: Config, c, run_dir: Path, parts: Path, resume: bool) -> Path:
    from megatron_r1.training.grpo import sync_weights

    sync_weights(c)
    if c.state.is_main:
        parts.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))
    source = source_rows(cfg)
    if source is not None and len(source) < cfg.rejection.num_prompts:
        cfg.rejection.num_prompts = len(source)
    chunks = math.ceil(cfg.rejection.num_prompts / cfg.rejection.chunk_prompts)
    for index in range(c.state.dp_rank, chunks, c.state.dp_size):
        part = parts / f"part_{index:05d}.jsonl"
        if resume and part.is_file():
            continue
        rows, reasons = _chunk(cfg, c, index, source)
        if c.state.mp_leader:  # the stats first: a part file's existence means its chunk is complete
            write_text_atomic(part.with_suffix(".stats.json"), json.dumps(dict(reasons)))
            write_jsonl_atomic(part, rows)
        log.info(
            "rejection: chunk %d/%d kept %d of %d", index + 1, chunks, reasons["kept"], reasons["sampled"]
        )
    if dist.is_initialized():
        dist.barrier()
    out = run_dir / "data.jsonl"
    if c.state.is_main:
        merged, totals = [], Counter()
        for index in range(chunks):
            part = parts / f"part_{index:05d}.jsonl"
            merged += [json.loads(line) for line in part.read_text().splitlines() if line.strip()]
            totals += Counter(json.loads(part.with_suffix(".stats.json").read_text()))
        write_text_atomic(run_dir / "stats.json", json.dumps(dict(totals), indent=2))
        write_jsonl_atomic(out, merged)
        log.info("rejection: %d rows kept of %d samples → %s", len(merged), totals["sampled"], out)
    if dist.is_initialized():
        dist.barrier()
    return out

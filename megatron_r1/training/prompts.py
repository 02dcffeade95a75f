"""Where a run's prompts come from: a source of rows per step (a pure function of the step, so a resumed run
sees the same data) and a fixed held-out set, both turned into token ids with the configured template."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from megatron_r1.config import Config, ConfigError
from megatron_r1.data import arithmetic
from megatron_r1.data.filters import dedup_rows, filter_by_length
from megatron_r1.data.sources import load_source
from megatron_r1.data.templates import render_prompt


@dataclass
class PromptSource:
    """``rows(step, count)`` → training rows for a step; ``eval_rows`` the held-out set; ``encode(row)``
    ids."""

    rows: Callable[[int, int], list[dict]]
    eval_rows: list[dict]
    encode: Callable[[dict], list[int]]


def _template(cfg: Config, tokenizer) -> Callable[[dict], list[int]]:
    name = cfg.data.template

    def encode(row: dict) -> list[int]:
        text = render_prompt(row, name, tokenizer)
        if name == "chat":  # the chat template already holds the special tokens it needs
            return list(tokenizer.encode(text, add_special_tokens=False))
        return list(tokenizer.encode(text))

    return encode


def _from_pool(pool: list[dict], seed: int) -> Callable[[int, int], list[dict]]:
    def rows(step: int, count: int) -> list[dict]:
        rng = random.Random(seed * 1_000_003 + step)
        return [pool[rng.randrange(len(pool))] for _ in range(count)]

    return rows


def build_prompt_source(cfg: Config, tokenizer) -> PromptSource:
    d, seed = cfg.data, cfg.train.seed
    if d.source == "arithmetic":
        held_out = arithmetic.problems(seed + 7919, d.eval_size, d.digits)
        seen = {r["prompt"] for r in held_out}

        def rows(step: int, count: int) -> list[dict]:
            rng = random.Random(seed * 1_000_003 + step)
            out = []
            while len(out) < count:
                row = arithmetic.make_problem(rng, d.digits)
                if row["prompt"] not in seen:
                    out.append(row)
            return out

        return PromptSource(rows, held_out, _template(cfg, tokenizer))
    source_options = {
        "jsonl": {"path": d.path},
        "reasoning_gym": {"task": d.task, "size": max(1000, d.eval_size * 10), "seed": seed},
    }
    pool = load_source(d.source, **source_options.get(d.source, {}))
    encode = _template(cfg, tokenizer)
    pool = filter_by_length(dedup_rows(pool), d.max_prompt_tokens, count_tokens=len, render=encode)
    if len(pool) <= d.eval_size:
        raise ConfigError(f"data: only {len(pool)} prompts fit data.max_prompt_tokens; need > data.eval_size")
    rng = random.Random(seed)
    rng.shuffle(pool)
    return PromptSource(_from_pool(pool[d.eval_size :], seed), pool[: d.eval_size], encode)

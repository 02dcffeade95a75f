"""``megatron-r1 eval``: k samples per problem from a checkpoint, scored by the reward registry, reported as
JSON and Markdown (eval/report.py). The rows are a JSONL file, or the run's held-out set of its prompt
source (the built-in arithmetic task: its held-out problems)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from megatron_r1.config import Config
from megatron_r1.data.atomic import write_text_atomic
from megatron_r1.eval.report import build_report, to_markdown
from megatron_r1.eval.sampling import gather, sample
from megatron_r1.rewards.language import chain_of_thought, word_scripts
from megatron_r1.rewards.math_answer import extract_final_answer
from megatron_r1.rewards.scorer import RewardScorer
from megatron_r1.rollout.engine import SamplingParams

log = logging.getLogger(__name__)


def eval_rows(cfg: Config, c, data: str | None, limit: int) -> list[dict]:
    if data is None or data == "heldout":
        rows = list(c.prompts.eval_rows)
    else:
        from megatron_r1.data.jsonl import read_jsonl

        rows = read_jsonl(data)
    return rows[:limit] if limit else rows


def run_eval(cfg: Config, out_dir: str | Path, data: str | None = None, limit: int = 0) -> dict:
    """Evaluate ``cfg.model.checkpoint`` (k = ``eval.samples`` at ``eval.temperature`` / ``eval.top_p``);
    writes OUT_DIR/report.json and report.md atomically and returns the report."""
    from megatron_r1.training.setup import build_components, close_components

    if data not in (None, "heldout") and not Path(data).is_file():
        raise FileNotFoundError(f"--data {data}: file not found")
    c = build_components(cfg)
    try:
        return _evaluate(cfg, c, out_dir, data, limit)
    finally:
        close_components(c)


def _evaluate(cfg: Config, c, out_dir: str | Path, data: str | None, limit: int) -> dict:
    from megatron_r1.training.grpo import sampling_seed, sync_weights

    sync_weights(c)
    e, k = cfg.eval, cfg.eval.samples
    rows = eval_rows(cfg, c, data, limit)
    mine = rows[c.state.dp_rank :: c.state.dp_size]
    params = SamplingParams(
        n=k,
        temperature=e.temperature,
        top_p=e.top_p,
        max_new_tokens=cfg.rollout.max_new_tokens,
        stop_token_ids=(c.tokenizer.eos_token_id,),
        stop_strings=tuple(cfg.rollout.stop_strings),
        seed=sampling_seed(cfg.train.seed, -2, c.state.dp_rank),
    )
    completions = sample(c, mine, params)
    texts = [comp.text for comp in completions]
    names = {cfg.reward.accuracy: 1.0, "format": 0.0, "language": 0.0}
    scores = RewardScorer(names, cfg.reward.num_workers, cfg.reward.timeout_s).score(
        texts, [mine[i // k] for i in range(len(texts))]
    )
    per_problem = [
        {
            "source": str(row.get("source", "unknown")),
            "answers": [extract_final_answer(t) for t in texts[i * k : (i + 1) * k]],
            "lengths": [len(comp.token_ids) for comp in completions[i * k : (i + 1) * k]],
            "texts": texts[i * k : (i + 1) * k],
            **{name: scores.components[name][i * k : (i + 1) * k] for name in names},
        }
        for i, row in enumerate(mine)
    ]
    for p in per_problem:  # a chain of thought without words has no language to be consistent in
        p["language"] = [
            v if word_scripts(chain_of_thought(t)) else None for v, t in zip(p["language"], p.pop("texts"))
        ]
    per_problem = gather(c, per_problem)
    flat = lambda key: [x for p in per_problem for x in p[key]]  # noqa: E731
    report = build_report(
        [p["source"] for p in per_problem],
        flat("answers"),
        flat(cfg.reward.accuracy),
        flat("lengths"),
        flat("format"),
        flat("language"),
        k,
    )
    report |= {
        "checkpoint": cfg.model.checkpoint,
        "data": data or "heldout",
        "temperature": e.temperature,
        "top_p": e.top_p,
        "accuracy_reward": cfg.reward.accuracy,
    }
    if c.state.is_main:
        out_dir = Path(out_dir)
        write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2))
        write_text_atomic(out_dir / "report.md", to_markdown(report))
        log.info("eval: %s", {key: v for key, v in report["overall"].items() if "@" in key})
    return report

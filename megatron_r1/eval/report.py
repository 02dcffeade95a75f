"""The evaluation report as the R1 paper states results (§3): per problem k samples; pass@1 (mean
correctness), pass@k, cons@k (majority vote on the final answer), response lengths, format and
language-consistency rates, overall and per data source — as a dict (JSON) and a Markdown table."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from megatron_r1.eval.metrics import summarise


def _group(values: Sequence, k: int) -> list[list]:
    return [list(values[i : i + k]) for i in range(0, len(values), k)]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _block(answers, correct, lengths, formats, languages, k: int) -> dict[str, float]:
    """Metrics of problems given as flat per-sample lists (k consecutive samples per problem)."""
    out = summarise(_group(answers, k), _group(correct, k))
    n = max(len(lengths), 1)
    out |= {
        "problems": len(lengths) // k,
        "samples": len(lengths),
        "length/mean": sum(lengths) / n,
        "length/median": float(statistics.median(lengths)) if lengths else 0.0,
        "length/max": float(max(lengths, default=0)),
        "format_rate": sum(f > 0 for f in formats) / n,
        "language_consistency": _mean([x for x in languages if x is not None]),
    }
    return out


def build_report(
    sources: Sequence[str],
    answers: Sequence[str | None],
    correct: Sequence[float],
    lengths: Sequence[int],
    formats: Sequence[float],
    languages: Sequence[float | None],
    k: int,
) -> dict:
    """``sources``: one per problem; the other lists: one per sample, k per problem in order →
    {"k", "overall": {...}, "per_source": {source: {...}}}. ``languages``: the language-consistency reward,
    None for a sample whose chain of thought has no words (digits only: nothing to be consistent about);
    the rate is over the others (None when there are none)."""
    if len(correct) != len(sources) * k:
        raise ValueError(f"build_report: {len(correct)} samples for {len(sources)} problems × k={k}")
    report = {"k": k, "overall": _block(answers, correct, lengths, formats, languages, k), "per_source": {}}
    for source in sorted(set(sources)):
        idx = [i * k + j for i, s in enumerate(sources) if s == source for j in range(k)]
        pick = lambda xs, idx=idx: [xs[i] for i in idx]  # noqa: E731
        report["per_source"][source] = _block(
            pick(answers), pick(correct), pick(lengths), pick(formats), pick(languages), k
        )
    return report


def to_markdown(report: dict) -> str:
    """The report as a Markdown table: one row per source, then the overall row."""
    k = report["k"]
    keys = ["pass@1"] + ([f"pass@{k}", f"cons@{k}"] if k > 1 else [])
    keys += ["format_rate", "language_consistency", "length/mean", "length/max"]
    lines = [
        "| source | problems | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 2) + "|",
    ]
    rows = list(report["per_source"].items()) + [("**all**", report["overall"])]
    for name, block in rows:
        cells = [
            "—"
            if block[key] is None
            else f"{block[key]:.1f}"
            if key.startswith("length")
            else f"{block[key]:.3f}"
            for key in keys
        ]
        lines.append(f"| {name} | {block['problems']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

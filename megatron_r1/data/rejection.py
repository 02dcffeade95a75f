"""Rejection-sampling filters (R1 paper §2.3.3): of k samples per prompt keep only correct, readable,
distinct ones — no language mixing, no over-long paragraphs, no code blocks in the chain of thought, not
cut off by the length limit.

Each filter is a named predicate in ``FILTERS`` (True = reject); :func:`select` applies them all, then
removes duplicates per prompt, and counts the reasons. Pure functions: no model, no I/O.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from megatron_r1.config import RejectionConfig
from megatron_r1.rewards.language import chain_of_thought, language_consistency, word_scripts


@dataclass
class Candidate:
    """One sampled response to one prompt, with what the filters need to judge it."""

    text: str
    """The response text (special tokens removed)."""
    row: dict
    """The prompt row (``language`` for the language filter)."""
    correct: float
    """The accuracy reward (> 0 = correct)."""
    tokens: int
    """Response length in tokens."""
    truncated: bool = False
    """Stopped by the length limit rather than a stop token / string."""
    scores: dict[str, float] = field(default_factory=dict)
    """Every reward's value (provenance)."""


def longest_paragraph(text: str) -> int:
    """Characters of the longest blank-line-separated paragraph of ``text``."""
    return max((len(p.strip()) for p in re.split(r"\n\s*\n", text)), default=0)


def _incorrect(c: Candidate, cfg: RejectionConfig, max_tokens: int) -> bool:
    return c.correct <= 0


def _language_mixing(c: Candidate, cfg: RejectionConfig, max_tokens: int) -> bool:
    # A chain of thought without words (digits and symbols only) mixes no languages.
    cot = chain_of_thought(c.text)
    if not word_scripts(cot):
        return False
    return language_consistency(cot, c.row.get("language") or "en") < cfg.min_language_consistency


def _long_paragraph(c: Candidate, cfg: RejectionConfig, max_tokens: int) -> bool:
    return longest_paragraph(chain_of_thought(c.text)) > cfg.max_paragraph_chars


def _code_in_reasoning(c: Candidate, cfg: RejectionConfig, max_tokens: int) -> bool:
    return not cfg.allow_code_in_reasoning and "```" in chain_of_thought(c.text)


def _too_long(c: Candidate, cfg: RejectionConfig, max_tokens: int) -> bool:
    return c.truncated or c.tokens > max_tokens


FILTERS: dict[str, Callable[[Candidate, RejectionConfig, int], bool]] = {
    "incorrect": _incorrect,
    "language_mixing": _language_mixing,
    "long_paragraph": _long_paragraph,
    "code_in_reasoning": _code_in_reasoning,
    "too_long": _too_long,
}
"""Filter name → predicate(candidate, config, max response tokens); True rejects. Applied in this order;
a candidate is counted under the first filter that rejects it."""


def _normalise(text: str) -> str:
    return " ".join(text.split())


def select(
    candidates: Sequence[Candidate], cfg: RejectionConfig, max_tokens: int
) -> tuple[list[int], Counter]:
    """Indices of the kept candidates of ONE prompt (at most ``cfg.max_keep_per_prompt``, 0 = all), and
    the count of rejections by reason (``duplicate``, ``over_quota`` included)."""
    kept: list[int] = []
    seen: set[str] = set()
    reasons: Counter = Counter()
    for i, cand in enumerate(candidates):
        reason = next((name for name, reject in FILTERS.items() if reject(cand, cfg, max_tokens)), None)
        if reason is None and _normalise(cand.text) in seen:
            reason = "duplicate"
        if reason is None and cfg.max_keep_per_prompt and len(kept) >= cfg.max_keep_per_prompt:
            reason = "over_quota"
        if reason is not None:
            reasons[reason] += 1
            continue
        seen.add(_normalise(cand.text))
        kept.append(i)
    return kept, reasons

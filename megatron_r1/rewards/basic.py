"""Exact answer accuracy, the simplest verifiable reward (the tiny demo's arithmetic uses it).

``exact``: 1.0 when the text inside the last ``<answer>...</answer>`` equals ``row["answer"]`` after
stripping white space, else 0.0. (Math equivalence with math-verify lives in the ``math`` reward;
the format rewards live in :mod:`megatron_r1.rewards.format`.)
"""

from __future__ import annotations

import re

from megatron_r1.rewards import register
from megatron_r1.rewards.format import format_reward  # noqa: F401 (kept importable from here)

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)


def extract_answer_tag(completion: str) -> str | None:
    """The text inside the last ``<answer>...</answer>``, stripped; None when there is none."""
    found = _ANSWER_RE.findall(completion)
    return found[-1].strip() if found else None


@register("exact", needs=("answer",))
def exact_reward(completion: str, row: dict) -> float:
    answer = extract_answer_tag(completion)
    return 1.0 if answer is not None and answer == str(row["answer"]).strip() else 0.0

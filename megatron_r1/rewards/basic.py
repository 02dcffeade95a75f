"""The minimal R1-Zero rewards: the format reward and exact answer accuracy.

``format``: 1.0 when the completion is ``<think> ... </think>`` followed by ``<answer> ... </answer>`` and
nothing after it (R1 paper §2.2, the R1-Zero template), else 0.0.
``exact``: 1.0 when the text inside the last ``<answer>...</answer>`` equals ``row["answer"]`` after
stripping white space, else 0.0. (Math equivalence with math-verify lives in the ``math`` reward.)
"""

from __future__ import annotations

import re

from megatron_r1.rewards import register

_FORMAT_RE = re.compile(r"^\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*$", re.S)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)


def extract_answer_tag(completion: str) -> str | None:
    """The text inside the last ``<answer>...</answer>``, stripped; None when there is none."""
    found = _ANSWER_RE.findall(completion)
    return found[-1].strip() if found else None


@register("format")
def format_reward(completion: str, row: dict) -> float:
    return 1.0 if _FORMAT_RE.match(completion) else 0.0


@register("exact")
def exact_reward(completion: str, row: dict) -> float:
    answer = extract_answer_tag(completion)
    return 1.0 if answer is not None and answer == str(row["answer"]).strip() else 0.0

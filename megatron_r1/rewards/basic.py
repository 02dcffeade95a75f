"""Exact answer accuracy, the simplest verifiable reward (the tiny demo's arithmetic uses it).

``exact``: 1.0 when the text inside the last ``<answer>...</answer>`` equals ``row["answer"]`` after
stripping white space, else 0.0.

``last_number``: 1.0 when the last number written in the completion is an integer equal to the integer
``row["answer"]``, else 0.0 — for models too small to write tags (SmolLM2-135M answers "7 + 5 = 12").
A number is a run of ASCII digits not glued to letters, digits or a dot on either side, with an optional
minus sign that is not a subtraction (``"9-4"`` ends in 4); a decimal (``"12.5"``, ``"12.0"``) is not an
integer and scores 0.0, so does a completion with no number. Only the final number counts: cap the completion
(a newline stop, few tokens) so that a list of guesses is judged by its last guess alone.
(Math equivalence with math-verify lives in the ``math`` reward;
the format rewards live in :mod:`megatron_r1.rewards.format`.)
"""

from __future__ import annotations

import re

from megatron_r1.rewards import register
from megatron_r1.rewards.format import format_reward  # noqa: F401 (kept importable from here)

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
# A number: optional sign (not a minus between two operands), ASCII digits, optional decimals; not glued to
# letters/digits/underscore or a dot before it, nor to a word character after it.
_NUMBER_RE = re.compile(r"(?<![\w.])(?:(?<![0-9)]\s)(?<![0-9)])-)?[0-9]+(?:\.[0-9]+)?(?!\w|\.[0-9])")


def extract_answer_tag(completion: str) -> str | None:
    """The text inside the last ``<answer>...</answer>``, stripped; None when there is none."""
    found = _ANSWER_RE.findall(completion)
    return found[-1].strip() if found else None


@register("exact", needs=("answer",))
def exact_reward(completion: str, row: dict) -> float:
    answer = extract_answer_tag(completion)
    return 1.0 if answer is not None and answer == str(row["answer"]).strip() else 0.0


def last_number(completion: str) -> str | None:
    """The last number in ``completion`` as written (``"-3"``, ``"12.5"``); None when there is none."""
    found = _NUMBER_RE.findall(completion)
    return found[-1] if found else None


@register("last_number")
def last_number_reward(completion: str, row: dict) -> float:
    gold = str(row["answer"]).strip()
    if not re.fullmatch(r"-?[0-9]+", gold):
        raise ValueError(f"last_number: row['answer']={row['answer']!r} is not an integer")
    found = last_number(completion)
    return 1.0 if found is not None and re.fullmatch(r"-?[0-9]+", found) and int(found) == int(gold) else 0.0

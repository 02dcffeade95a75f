"""Format rewards: the R1-Zero template and the R1 reasoning / summary pattern (R1 paper §2.2, §2.3).

``format`` (R1-Zero): 1.0 when the completion is exactly one ``<think> ... </think>`` followed by
exactly one ``<answer> ... </answer>`` with nothing after it (white space aside), both non-empty.
A row may ask for the R1 pattern instead with ``row["format"] = "r1"``.

``format_r1`` (R1 cold-start / final pattern ``|special_token|<reasoning>|special_token|<summary>``,
spelled with think tags as the released models do): reasoning inside ``<think> ... </think>`` — the
opening tag may be missing because chat templates often put it at the end of the prompt — followed
by a non-empty summary, with a single closing tag and no nested think tags.
"""

from __future__ import annotations

import re

from megatron_r1.rewards import register

_R1_ZERO_RE = re.compile(r"^\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*$", re.S)
_TAG_RE = re.compile(r"</?(?:think|answer)>")


def is_r1_zero_format(completion: str) -> bool:
    """``<think>reasoning</think><answer>answer</answer>`` and nothing else, each tag used once."""
    match = _R1_ZERO_RE.match(completion)
    if not match or not match["think"].strip() or not match["answer"].strip():
        return False
    return len(_TAG_RE.findall(completion)) == 4


def is_r1_format(completion: str) -> bool:
    """``[<think>]reasoning</think>summary``: one closing tag, non-empty reasoning and summary."""
    if completion.count("</think>") != 1 or completion.count("<think>") > 1:
        return False
    reasoning, summary = completion.split("</think>")
    if "<think>" in reasoning:
        before, reasoning = reasoning.split("<think>")
        if before.strip():
            return False
    return bool(reasoning.strip()) and bool(summary.strip()) and "<think>" not in summary


@register("format")
def format_reward(completion: str, row: dict) -> float:
    """R1-Zero template (or the R1 pattern when ``row["format"] == "r1"``): 1.0 or 0.0."""
    check = is_r1_format if row.get("format") == "r1" else is_r1_zero_format
    return 1.0 if check(completion) else 0.0


@register("format_r1")
def format_r1_reward(completion: str, row: dict) -> float:
    """R1 reasoning / summary pattern: 1.0 or 0.0."""
    return 1.0 if is_r1_format(completion) else 0.0

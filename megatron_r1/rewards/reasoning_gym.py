"""The ``reasoning_gym`` reward: a reasoning-gym task's own checker (``score_answer``).

Rows made by :func:`megatron_r1.data.sources.reasoning_gym_rows` carry what the checker needs:
``source = "reasoning_gym:<task>"``, ``answer`` and the task's ``metadata`` (JSON-safe). The answer
is the last ``<answer>...</answer>`` of the completion, else its single ``\\boxed{}`` answer; none
scores 0.0. Note that some checkers give partial credit (countdown: 0.05 for a wrong expression).
"""

from __future__ import annotations

import functools

from megatron_r1.rewards import register
from megatron_r1.rewards.basic import extract_answer_tag
from megatron_r1.rewards.math_answer import extract_final_answer

SOURCE_PREFIX = "reasoning_gym:"


def task_of(row: dict) -> str:
    """The reasoning-gym task name of ``row``."""
    source = str(row.get("source", ""))
    if source.startswith(SOURCE_PREFIX):
        return source[len(SOURCE_PREFIX) :]
    task = (row.get("metadata") or {}).get("source_dataset")
    if not task:
        raise ValueError(f"row is not from reasoning-gym (source={source!r}, no metadata.source_dataset)")
    return task


@functools.cache
def _checker(task: str):
    from reasoning_gym.factory import get_score_answer_fn

    return get_score_answer_fn(task)


@register("reasoning_gym", needs=("answer",))
def reasoning_gym_reward(completion: str, row: dict) -> float:
    """The task's ``score_answer`` on the completion's final answer (0.0 without one)."""
    answer = extract_answer_tag(completion)
    if answer is None:
        answer = extract_final_answer(completion)
    if answer is None:
        return 0.0
    entry = {"question": row.get("prompt", ""), "answer": row["answer"], "metadata": row.get("metadata", {})}
    return float(_checker(task_of(row))(answer, entry))

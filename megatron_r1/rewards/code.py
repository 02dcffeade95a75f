"""Code accuracy: run the completion's program against the row's tests in the sandbox.

The program is the last fenced ```` ```python ```` block of the completion (any fence if none is
tagged python), else the text after ``</think>`` (or the whole text). Three row shapes:

- HumanEval: ``entry_point``, ``test`` (defines ``check(candidate)``) and ``code_prefix`` (or, in
  HumanEval's own rows, ``prompt``): when the program does not define ``entry_point`` itself it is
  taken as the body continuing that prefix. One test.
- stdin/stdout: ``tests`` = ``[{"input": str, "output": str}, ...]``; outputs are compared after
  stripping trailing white space on each line and trailing blank lines.
- asserts (MBPP style): ``tests`` = ``["assert f(1) == 2", ...]``.

The reward is the fraction of tests passed, or 1.0/0.0 all-or-nothing when ``row["all_or_nothing"]``
is true or with the ``code_strict`` reward. stdin/stdout tests run one sandbox each, in order; the
first time-out fails the remaining tests without running them, so an item costs at most one wall
limit of waiting (keep the batch scorer's ``timeout_s`` above it). Every run goes through
:mod:`megatron_r1.rewards.sandbox` whatever the batch scorer does (its workers are no sandbox).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from megatron_r1.rewards import register
from megatron_r1.rewards.sandbox import SandboxLimits, run_python

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.S)
MAX_CODE_CHARS = 100_000


def extract_code(completion: str) -> str:
    """The program in ``completion``: last python fence, else last fence, else the answer text."""
    blocks = _FENCE_RE.findall(completion)
    python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    if python:
        return python[-1]
    if blocks:
        return blocks[-1][1]
    text = completion.split("</think>")[-1]
    text = re.sub(r"</?answer>", "", text)
    return text


def _normalise_output(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()


@dataclass(frozen=True)
class CodeRewardConfig:
    """How the ``code`` reward runs tests."""

    all_or_nothing: bool = False
    """1.0 only when every test passes (else the fraction passed)."""
    limits: SandboxLimits = SandboxLimits(wall_s=10.0, cpu_s=10)
    """Limits of each sandboxed run (one run per stdin/stdout test, one for the other shapes)."""


def score_code(completion: str, row: dict, config: CodeRewardConfig = CodeRewardConfig()) -> float:
    """Fraction of ``row``'s tests that the completion's program passes (see module docstring)."""
    code = extract_code(completion)
    if not code.strip() or len(code) > MAX_CODE_CHARS:
        return 0.0
    limits = config.limits
    if row.get("timeout_s"):
        wall = float(row["timeout_s"])
        limits = SandboxLimits(**{**limits.__dict__, "wall_s": wall, "cpu_s": int(wall) + 1})
    strict = bool(row.get("all_or_nothing", config.all_or_nothing))

    if row.get("test") and row.get("entry_point"):
        entry = row["entry_point"]
        if not re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.M):
            code = row.get("code_prefix", row.get("prompt", "")) + code
        result = run_python(code, mode="check", test=row["test"], entry_point=entry, limits=limits)
        return 1.0 if result.completed and result.passed == result.total == 1 else 0.0

    tests = row.get("tests") or []
    if not tests:
        raise ValueError("code reward: the row has neither 'test' + 'entry_point' nor 'tests'")
    if all(isinstance(t, str) for t in tests):
        result = run_python(code, mode="asserts", tests=list(tests), limits=limits)
        passed = result.passed if result.completed and result.total == len(tests) else 0
    else:
        passed = 0
        for case in tests:
            result = run_python(code, mode="script", stdin=str(case["input"]), limits=limits)
            ok = (
                not result.timed_out
                and result.returncode == 0
                and _normalise_output(result.stdout) == _normalise_output(str(case["output"]))
            )
            passed += ok
            if (strict and not ok) or result.timed_out:
                break  # after a time-out the rest would most likely time out too: fail them fast
    if strict:
        return 1.0 if passed == len(tests) else 0.0
    return passed / len(tests)


_STRICT = CodeRewardConfig(all_or_nothing=True)


@register("code", needs=(("tests", "test"),))
def code_reward(completion: str, row: dict) -> float:
    """Fraction of tests passed (all-or-nothing when ``row["all_or_nothing"]``)."""
    return score_code(completion, row)


@register("code_strict", needs=(("tests", "test"),))
def code_strict_reward(completion: str, row: dict) -> float:
    """1.0 when every test passes, else 0.0."""
    return score_code(completion, row, _STRICT)

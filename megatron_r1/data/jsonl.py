"""Prompt datasets as JSONL: one row per line, validated against a declared schema on load.

A row (all keys optional unless said otherwise; unknown keys are errors, put extras in ``metadata``):

=============  =================================================================================
``prompt``     str — the question (exactly one of ``prompt`` / ``messages`` is required)
``messages``   list of ``{"role": "system"|"user"|"assistant", "content": str}`` — a chat prompt
``answer``     str | int | float — reference answer (math / exact / reasoning-gym rewards)
``tests``      list of ``{"input": str, "output": str}`` (stdin/stdout) or of str (asserts)
``test``       str — HumanEval ``check(candidate)`` code; needs ``entry_point``
``entry_point`` str — the function ``test`` checks
``code_prefix`` str — code a body-only completion continues (HumanEval's function signature)
``language``   str — target language of the chain of thought (``"en"``, ``"zh"``, ...)
``source``     str — where the row comes from (``"humaneval"``, ``"reasoning_gym:countdown"``)
``id``         str | int — a stable identifier
``metadata``   dict — anything else (JSON values)
``timeout_s``  number — per-test time limit of the code reward
``all_or_nothing`` bool — code reward: 1.0 only when every test passes
``format``     ``"r1_zero"`` | ``"r1"`` — which format the ``format`` reward checks
=============  =================================================================================

Errors are :class:`DataError` (a ``ValueError``) and read ``file:line: message``.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable

FIELDS: dict[str, tuple[type, ...]] = {
    "prompt": (str,),
    "messages": (list,),
    "answer": (str, int, float),
    "tests": (list,),
    "test": (str,),
    "entry_point": (str,),
    "code_prefix": (str,),
    "language": (str,),
    "source": (str,),
    "id": (str, int),
    "metadata": (dict,),
    "timeout_s": (int, float),
    "all_or_nothing": (bool,),
    "format": (str,),
}
_ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A dataset row that does not follow the schema; the message starts with ``file:line:``."""


def validate_row(row: object, where: str = "<row>") -> dict:
    """``row`` checked against the schema (returned unchanged); raises :class:`DataError`."""

    def fail(message: str) -> DataError:
        return DataError(f"{where}: {message}")

    if not isinstance(row, dict):
        raise fail(f"a row must be a JSON object, got {type(row).__name__}")
    for key, value in row.items():
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else " (put extra fields in 'metadata')"
            raise fail(f"unknown field {key!r}{hint}")
        types = FIELDS[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " | ".join(t.__name__ for t in types)
            raise fail(f"field {key!r} must be {names}, got {type(value).__name__}")
    if ("prompt" in row) == ("messages" in row):
        raise fail("a row needs exactly one of 'prompt' and 'messages'")
    if "prompt" in row and not row["prompt"].strip():
        raise fail("'prompt' is empty")
    if "messages" in row:
        messages = row["messages"]
        if not messages:
            raise fail("'messages' is empty")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or set(message) != {"role", "content"}:
                raise fail(f"messages[{i}] must be {{'role': ..., 'content': ...}}")
            if message["role"] not in _ROLES or not isinstance(message["content"], str):
                raise fail(f"messages[{i}]: role must be one of {_ROLES} and content a string")
        if messages[-1]["role"] != "user":
            raise fail("the last message must be the user's")
    if "tests" in row:
        tests = row["tests"]
        io = all(isinstance(t, dict) for t in tests)
        if not tests or not (io or all(isinstance(t, str) for t in tests)):
            raise fail("'tests' must be a non-empty list of {'input', 'output'} objects or of strings")
        for i, case in enumerate(tests):
            if io and (
                set(case) != {"input", "output"} or not all(isinstance(v, str) for v in case.values())
            ):
                raise fail(f"tests[{i}] must be {{'input': str, 'output': str}}")
    if ("test" in row) != ("entry_point" in row):
        raise fail("'test' and 'entry_point' go together")
    if "language" in row:
        from megatron_r1.rewards.language import LANGUAGE_SCRIPTS

        code = row["language"].lower().replace("_", "-").split("-")[0]
        if code not in LANGUAGE_SCRIPTS:
            raise fail(f"unknown language {row['language']!r}")
    if row.get("format", "r1_zero") not in ("r1_zero", "r1"):
        raise fail("'format' must be 'r1_zero' or 'r1'")
    return row


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL prompt file, validated (blank lines skipped)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
            rows.append(validate_row(row, where))
    return rows


def write_jsonl(rows: Iterable[dict], path: str | os.PathLike) -> int:
    """Write ``rows`` (validated) as JSONL; returns the number written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for n, row in enumerate(rows, start=1):
            validate_row(row, f"{path}:{n}")
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return n

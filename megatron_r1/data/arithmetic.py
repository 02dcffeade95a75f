"""The built-in verifiable task of the embedded demo: multi-digit addition with a worked trace.

A prompt is ``"47+38="``; a solution is ``<think>`` + the column-by-column trace + ``</think>`` +
``<answer>85</answer>``. The rule-based rewards check the answer exactly and the format.

The warm-up data can carry a *systematic* error: with probability ``carry_noise`` a trace forgets every carry
(and its answer is wrong accordingly). A model warmed up on it is a base that is "sometimes right" — the
starting point R1-Zero assumes — and GRPO with the exact-answer reward has to find out which habit pays.
"""

from __future__ import annotations

import random


def make_problem(rng: random.Random, digits: int) -> dict:
    """One row: ``prompt``, ``answer`` (string), ``a``, ``b``."""
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    return {"prompt": f"{a}+{b}=", "answer": str(a + b), "a": a, "b": b, "source": "arithmetic"}


def solution(a: int, b: int, forget_carries: bool = False) -> str:
    """The worked trace and answer for ``a + b``; ``forget_carries`` writes the habit of never carrying."""
    da, db = str(a)[::-1], str(b)[::-1]
    carry, steps, out = 0, [], []
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}+{carry}={s}")
        out.append(str(s % 10))
        carry = 0 if forget_carries else s // 10
    if carry:
        out.append(str(carry))
    answer = str(int("".join(reversed(out))))
    return f"<think>{' '.join(steps)}</think><answer>{answer}</answer>"


def warmup_example(rng: random.Random, digits: int, carry_noise: float) -> tuple[str, str]:
    """(prompt, completion) for the supervised warm-up; a share ``carry_noise`` forgets the carries."""
    row = make_problem(rng, digits)
    return row["prompt"], solution(row["a"], row["b"], rng.random() < carry_noise)


def problems(seed: int, count: int, digits: int) -> list[dict]:
    rng = random.Random(seed)
    return [make_problem(rng, digits) for _ in range(count)]

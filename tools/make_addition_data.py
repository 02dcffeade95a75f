"""Write the SmolLM2 addition example's prompts: every sum a + b with a, b in 1..9, one JSONL row each.

Usage: python tools/make_addition_data.py [OUT]   (default: examples/data/addition_1to9.jsonl)

The file is a pure function of this script (no randomness): 81 rows ``{"id", "prompt", "answer", "source"}``
in the wording SmolLM2-135M-Instruct answers best (the lead's probe: "What is {a} + {b}? Answer with just the
number." gets 41 % right sampled at T=1 for single digits, 6 % for 10..50, 0 % when asked for \\boxed{}). The
trainer shuffles the rows with train.seed and holds the first data.eval_size out for eval/accuracy.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

PROMPT = "What is {a} + {b}? Answer with just the number."
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "examples" / "data" / "addition_1to9.jsonl"


def addition_rows(low: int = 1, high: int = 9) -> list[dict]:
    """One row per ordered pair (a, b), low <= a, b <= high, in lexicographic order."""
    return [
        {"id": f"add-{a}-{b}", "prompt": PROMPT.format(a=a, b=b), "answer": a + b, "source": "addition"}
        for a in range(low, high + 1)
        for b in range(low, high + 1)
    ]


def write_jsonl(rows: list[dict], path: Path) -> None:
    """``rows`` to ``path``, one JSON object a line, atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(tmp, path)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    write_jsonl(addition_rows(), out)
    print(f"wrote {out}")

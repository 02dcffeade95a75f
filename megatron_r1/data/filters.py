"""Row filters: de-duplication and prompt-length filtering (pure functions over lists of rows)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from megatron_r1.data.templates import question_of


def normalise_question(text: str) -> str:
    """Case-, white-space- and Unicode-form-insensitive key of a question."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip()


def dedup_rows(rows: list[dict], key: Callable[[dict], str] | None = None) -> list[dict]:
    """``rows`` without repeats of the same question (first kept, order preserved).

    ``key``: what makes two rows the same; default the normalised question (prompt or last user
    message), so paraphrase-free duplicates from different sources collapse.
    """
    key = key or (lambda row: normalise_question(question_of(row)))
    seen, out = set(), []
    for row in rows:
        k = key(row)
        if k not in seen:
            seen.add(k)
            out.append(row)
    return out


def filter_by_length(
    rows: list[dict],
    max_tokens: int,
    count_tokens: Callable[[str], int],
    render: Callable[[dict], str] = question_of,
    min_tokens: int = 1,
) -> list[dict]:
    """Rows whose rendered prompt has between ``min_tokens`` and ``max_tokens`` tokens.

    ``count_tokens``: e.g. ``lambda s: len(tokenizer(s).input_ids)``; ``render``: row → prompt text
    (e.g. ``functools.partial(render_prompt, template="r1_zero")``) so the template is counted too.
    """
    return [row for row in rows if min_tokens <= count_tokens(render(row)) <= max_tokens]

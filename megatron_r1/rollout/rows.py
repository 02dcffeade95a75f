"""Per-completion bookkeeping shared by the in-process engines (``native.py``, ``hf_model.py``).

A ``generate`` call turns ``len(prompts) * n`` completions into ``Row`` objects (``make_rows``), fills in
their tokens and log-probs, ends each with ``StopCheck`` (stop token, stop string, budget), and returns them
as ``engine.Completion`` (``to_completions``). A row's ``row_id`` is its index in the ``generate`` output;
with ``sampling.row_uniforms`` it keys the row's own random stream, so a completion does not depend on
which other rows share its batch.
"""

from __future__ import annotations

from collections.abc import Callable

from megatron_r1.rollout.engine import Completion, SamplingParams

__all__ = ["Row", "StopCheck", "make_rows", "to_completions"]


class Row:
    """Bookkeeping of one completion being generated."""

    __slots__ = ("row_id", "prompt_index", "budget", "token_ids", "logprobs", "finish_reason")

    def __init__(self, row_id: int, prompt_index: int, budget: int) -> None:
        self.row_id = row_id
        self.prompt_index = prompt_index
        self.budget = budget
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.finish_reason: str | None = None


def make_rows(prompts_token_ids: list[list[int]], sampling: SamplingParams, max_positions: int) -> list[Row]:
    """The ``len(prompts) * sampling.n`` rows of a call, prompt-major; each row's budget is
    ``max_new_tokens`` capped by the context (``max_positions`` − prompt length).

    Raises ``ValueError`` naming the prompt when one is empty or fills the context.
    """
    for i, prompt in enumerate(prompts_token_ids):
        if not prompt:
            raise ValueError(f"prompt {i} is empty")
        if len(prompt) >= max_positions:
            raise ValueError(
                f"prompt {i} has {len(prompt)} tokens; max_position_embeddings is {max_positions}"
            )
    n = sampling.n
    return [
        Row(p * n + j, p, min(sampling.max_new_tokens, max_positions - len(prompt)))
        for p, prompt in enumerate(prompts_token_ids)
        for j in range(n)
    ]


def to_completions(rows: list[Row], decode: Callable[[list[int]], str]) -> list[Completion]:
    """The finished rows as ``Completion`` objects (a row that never stopped ends with "length")."""
    return [
        Completion(
            prompt_index=row.prompt_index,
            token_ids=row.token_ids,
            text=decode(row.token_ids),
            logprobs=row.logprobs,
            finish_reason=row.finish_reason or "length",
        )
        for row in rows
    ]


class StopCheck:
    """``(row, new_tokens) -> (tokens kept, finish_reason or None)`` after a block of sampled tokens.

    Per token, in order: a stop token or a completed stop string ends the row ("stop", the token is
    kept), else reaching the budget does ("length"). Stop strings are searched in the decoded last
    ``tail`` tokens; the whole block is decoded once first and scanned token by token only when it
    holds a stop string, so a block of k tokens costs one decode, not k.
    """

    def __init__(self, sampling: SamplingParams, decode: Callable[[list[int]], str]) -> None:
        self.stop_ids = set(sampling.stop_token_ids)
        self.stop_strings = sampling.stop_strings
        self.decode = decode
        # A stop string of c characters spans at most c tokens, or ~4c for byte-level pieces.
        self.tail = 4 * max((len(s) for s in self.stop_strings), default=0) + 4

    def _has_stop_string(self, token_ids: list[int]) -> bool:
        text = self.decode(token_ids)
        return any(s in text for s in self.stop_strings)

    def __call__(self, row: Row, new_tokens: list[int]) -> tuple[int, str | None]:
        left = row.budget - len(row.token_ids)
        keep = min(len(new_tokens), left)
        reason = "length" if keep == left else None
        for i in range(keep):
            if new_tokens[i] in self.stop_ids:
                keep, reason = i + 1, "stop"
                break
        if self.stop_strings:
            window = row.token_ids[-self.tail :] + new_tokens[:keep]
            if self._has_stop_string(window):
                before = len(window) - keep
                for i in range(keep):
                    if self._has_stop_string(window[: before + i + 1][-self.tail :]):
                        return i + 1, "stop"
        return keep, reason

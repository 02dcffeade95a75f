"""SFT data: JSONL rows → (prompt ids, response ids) examples → packed, padded training tensors.

A row is ``{"prompt": str, "completion": str}`` or ``{"messages": [..., {"role": "assistant", ...}]}``
(the last message is the response; loss is on it only — earlier assistant turns are context). Optional:
``id``, ``source``, ``metadata`` (provenance, e.g. from rejection sampling), ``answer``. The prompt is
rendered with the run's template (``data.template``) exactly as GRPO prompts are, so an SFT'd model meets
the same prompt text in RL; the response is followed by EOS.

Packing lays several examples end to end in one row. Each example's positions restart at 0 and a
block-diagonal causal mask keeps it from attending to the others, so a packed row computes exactly what
the examples would alone (tests/training/test_sft.py checks loss and gradients against unpacked rows).
Megatron's RoPE is computed from the row length, not from ``position_ids`` (those feed only learned absolute
position embeddings); it is still exact because RoPE scores depend only on the offset between query and key,
and the mask keeps both in the same example. The mask is [B, 1, S, S] booleans: fine for the local spec and
the lengths of CPU runs; at 32k tokens it is 1 GiB per row (Transformer Engine's packed_seq_params, which
would avoid it, is not wired: sft.pack is refused under TE).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from megatron_r1.data.jsonl import DataError

SFT_FIELDS = ("prompt", "completion", "messages", "id", "source", "metadata", "answer")


@dataclass
class Example:
    """One supervised example as token ids: the loss covers ``response`` only."""

    prompt: list[int]
    response: list[int]

    def __len__(self) -> int:
        return len(self.prompt) + len(self.response)


def validate_sft_row(row: object, where: str) -> dict:
    """``row`` checked as an SFT row (returned unchanged); raises :class:`DataError` naming ``where``."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    unknown = [k for k in row if k not in SFT_FIELDS]
    if unknown:
        raise DataError(f"{where}: unknown field {unknown[0]!r} (SFT rows: {', '.join(SFT_FIELDS)})")
    if "messages" in row:
        msgs = row["messages"]
        ok = isinstance(msgs, list) and len(msgs) >= 2 and all(isinstance(m, dict) for m in msgs)
        if not ok or msgs[-1].get("role") != "assistant" or not isinstance(msgs[-1].get("content"), str):
            raise DataError(f"{where}: 'messages' must end with an assistant message (the response)")
        if "prompt" in row or "completion" in row:
            raise DataError(f"{where}: a row has either 'messages' or 'prompt' + 'completion'")
    elif not (isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str)):
        raise DataError(f"{where}: a row needs 'prompt' and 'completion' strings (or 'messages')")
    return row


def read_sft_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of an SFT JSONL file, validated (blank lines skipped)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                where = f"{path}:{number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
                rows.append(validate_sft_row(row, where))
    if not rows:
        raise DataError(f"{path}: no SFT rows")
    return rows


def prompt_and_response(row: dict) -> tuple[dict, str]:
    """(the row as a prompt row for the template, response text)."""
    if "messages" in row:
        return {"messages": row["messages"][:-1]}, row["messages"][-1]["content"]
    return {"prompt": row["prompt"]}, row["completion"]


def encode_example(
    row: dict, encode_prompt: Callable[[dict], list[int]], encode_text: Callable[[str], list[int]], eos: int
) -> Example:
    """A row as token ids: the templated prompt, then the response + EOS."""
    prompt_row, response = prompt_and_response(row)
    return Example(list(encode_prompt(prompt_row)), list(encode_text(response)) + [eos])


def pack(examples: Sequence[Example], max_len: int) -> list[list[Example]]:
    """First-fit-decreasing bins of total length ≤ ``max_len`` (an example longer than that is an error)."""
    bins: list[list[Example]] = []
    room: list[int] = []
    for ex in sorted(examples, key=len, reverse=True):
        if len(ex) > max_len:
            raise ValueError(f"pack: an example of {len(ex)} tokens exceeds max_len={max_len}")
        for i, free in enumerate(room):
            if len(ex) <= free:
                bins[i].append(ex)
                room[i] -= len(ex)
                break
        else:
            bins.append([ex])
            room.append(max_len - len(ex))
    return bins


def packed_batch(rows: Sequence[Sequence[Example]], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of examples laid end to end, right-padded to the longest row.

    Returns tokens [B, S] long, position_ids [B, S] long (restarting at 0 per example), loss_mask [B, S − 1]
    float (1 where label t + 1 is a response token), attention_mask [B, 1, S, S] bool (True = may NOT
    attend: Megatron's convention), block-diagonal causal; padding attends only to itself.
    """
    width = max(sum(len(ex) for ex in row) for row in rows)
    n = len(rows)
    tokens = torch.full((n, width), pad_id, dtype=torch.long)
    positions = torch.zeros(n, width, dtype=torch.long)
    loss_mask = torch.zeros(n, width - 1)
    doc = torch.full((n, width), -1, dtype=torch.long)  # example index per position; padding: -1 - t
    for i, row in enumerate(rows):
        start = 0
        for j, ex in enumerate(row):
            length = len(ex)
            tokens[i, start : start + length] = torch.tensor(ex.prompt + ex.response)
            positions[i, start : start + length] = torch.arange(length)
            loss_mask[i, start + len(ex.prompt) - 1 : start + length - 1] = 1.0
            doc[i, start : start + length] = j
            start += length
        doc[i, start:] = -1 - torch.arange(width - start)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = (doc[:, :, None] == doc[:, None, :]) & causal
    return {
        "tokens": tokens,
        "position_ids": positions,
        "loss_mask": loss_mask,
        "attention_mask": ~allowed[:, None],
    }


def micro_batches(
    examples: Sequence[Example], max_tokens: int, max_len: int, pad_id: int, packed: bool
) -> list[dict[str, torch.Tensor]]:
    """Token-budget micro-batches: rows (packed bins, or single examples sorted by length) grouped so that
    rows × padded width ≤ ``max_tokens`` (at least one row each)."""
    rows = pack(examples, max_len) if packed else [[ex] for ex in sorted(examples, key=len, reverse=True)]
    rows.sort(key=lambda r: sum(len(ex) for ex in r), reverse=True)
    out, group, width = [], [], 0
    for row in rows:
        length = sum(len(ex) for ex in row)
        if group and (len(group) + 1) * max(width, length) > max_tokens:
            out.append(packed_batch(group, pad_id))
            group, width = [], 0
        group.append(row)
        width = max(width, length)
    if group:
        out.append(packed_batch(group, pad_id))
    return out

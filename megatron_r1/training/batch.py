"""Assembling rollouts into training tensors (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def build_batch(
    prompt_ids: Sequence[Sequence[int]],
    completions: Sequence,
    group_size: int,
    pad_id: int,
) -> dict[str, torch.Tensor]:
    """Prompt + response per completion, laid out from position 0 and right-padded.

    ``completions`` are prompt-major (group_size per prompt). Returns
    tokens [B, S] long, response_mask [B, S − 1] float (1 where label t + 1 is a generated token),
    sampler_logprobs [B, S − 1] float (the engine's log-probs at those labels, 0 elsewhere).
    """
    seqs = [list(prompt_ids[i // group_size]) + list(c.token_ids) for i, c in enumerate(completions)]
    width = max(len(s) for s in seqs)
    batch = len(seqs)
    tokens = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros(batch, width - 1)
    sampler = torch.zeros(batch, width - 1)
    for i, (seq, c) in enumerate(zip(seqs, completions)):
        tokens[i, : len(seq)] = torch.tensor(seq)
        start = len(prompt_ids[i // group_size]) - 1
        n = len(c.token_ids)
        mask[i, start : start + n] = 1.0
        if n:
            sampler[i, start : start + n] = torch.tensor(c.logprobs, dtype=torch.float32)
    return {"tokens": tokens, "response_mask": mask, "sampler_logprobs": sampler}

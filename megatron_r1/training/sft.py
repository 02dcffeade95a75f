"""Supervised fine-tuning on (prompt, completion) pairs: the cold start of R1, distillation, and the demo's
warm-up that turns a random model into a base that is sometimes right. Loss: mean NLL over completion tokens
(global token count as the denominator, so micro-batches add up to the full-batch loss)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import torch
import torch.distributed as dist

from megatron_r1.training.optim import lr_at
from megatron_r1.training.setup import Components


def sft_batch(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """(prompt ids, completion ids) pairs → tokens [B, S] and loss_mask [B, S − 1] over completion labels."""
    width = max(len(p) + len(r) for p, r in pairs)
    tokens = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(pairs), width - 1)
    for i, (p, r) in enumerate(pairs):
        tokens[i, : len(p) + len(r)] = torch.tensor(p + r)
        mask[i, len(p) - 1 : len(p) + len(r) - 1] = 1.0
    return {"tokens": tokens, "loss_mask": mask}


def sft_loss_fn(num_tokens: float):
    """Per-micro-batch loss: the summed NLL of its response tokens / the step's global token count."""

    def nll(logprobs, _entropy, mb):
        loss = -(logprobs * mb["loss_mask"]).sum() / num_tokens
        return loss, {"loss": loss.detach()}

    return nll


def sft_step(
    c: Components, batch: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]], lr: float
) -> dict[str, float]:
    """One optimizer step of SFT over ``batch`` (one dict, cut in train.micro_batch_size rows, or a list of
    token-budget micro-batches: data/sft.py); returns {"sft/loss", "sft/grad_norm", "sft/tokens"}."""
    micro = [batch] if isinstance(batch, dict) else batch
    num_tokens = sum(mb["loss_mask"].sum() for mb in micro).to(c.state.device)
    if c.state.dp_size > 1:  # each DP rank holds its own examples: the denominator is the global count
        dist.all_reduce(num_tokens, group=c.state.dp_group)
    num_tokens = max(num_tokens.item(), 1.0)
    micro = [{k: v.to(c.state.device) for k, v in mb.items()} for mb in micro]
    data = micro[0] if isinstance(batch, dict) else micro
    outs = c.policy.run(data, sft_loss_fn(num_tokens), c.cfg.train.micro_batch_size)
    grad_norm, _ = c.optimizer.step(lr)
    # The loss is computed on the last stage, and each DP rank's is its share of the global batch's.
    loss = torch.tensor(sum(float(o["loss"]) for o in outs), dtype=torch.float64, device=c.state.device)
    if c.state.pp_size > 1:
        dist.all_reduce(loss, group=c.state.pp_group)
    if c.state.dp_size > 1:
        dist.all_reduce(loss, group=c.state.dp_group)
    return {"sft/loss": loss.item(), "sft/grad_norm": grad_norm, "sft/tokens": num_tokens}


def arithmetic_warmup(c: Components, steps: int) -> list[dict[str, float]]:
    """The demo's base model: SFT on worked additions, a share of which forget a carry."""
    from megatron_r1.data.arithmetic import warmup_example

    t = c.cfg.train
    rng = random.Random(t.seed + 17 + 7919 * c.state.dp_rank)
    eos = [c.tokenizer.eos_token_id]
    schedule = dataclasses.replace(t, lr=t.sft_lr, warmup_steps=10, lr_schedule="constant")
    history = []
    for step in range(steps):
        pairs = []
        for _ in range(t.sft_batch_size):
            prompt, completion = warmup_example(rng, c.cfg.data.digits, c.cfg.data.carry_noise)
            pairs.append((c.tokenizer.encode(prompt), c.tokenizer.encode(completion) + eos))
        lr = lr_at(step, schedule, steps)
        history.append(sft_step(c, sft_batch(pairs, c.tokenizer.pad_token_id), lr))
    return history

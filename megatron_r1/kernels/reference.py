"""Plain-torch references for the kernels: the specification they are tested against.

These materialise [tokens x vocab] float32 temporaries and are meant for correctness, CPU runs
and small shapes. Semantics are identical to ``token_logprobs`` / ``grpo_loss``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _AllReduceSum(torch.autograd.Function):
    """Sum over a group in forward, identity in backward.

    The identity backward is Megatron's convention for tensor parallelism ("reduce from the
    tensor-parallel region"): everything computed from the reduced value is replicated on every
    rank, so each rank already holds the full upstream gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def vocab_shard_start(vocab_shard: int, tp_group: dist.ProcessGroup | None) -> int:
    """First global vocabulary id held by this rank: ``rank * vocab_shard``."""
    if tp_group is None:
        return 0
    return dist.get_rank(group=tp_group) * vocab_shard


def token_logprobs_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    tp_group: dist.ProcessGroup | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label) (and entropy) of softmax(logits / temperature), vocab-parallel.

    Args:
        logits: [..., V_shard] any float dtype; rank r of ``tp_group`` holds global vocabulary ids
            [r * V_shard, (r + 1) * V_shard).
        labels: [...] int, global vocabulary ids.
        tp_group: tensor-parallel group over which the vocabulary is sharded (None: unsharded).
        temperature: logits are divided by it before the softmax.
        return_entropy: also return the entropy of the (global) distribution.

    Returns:
        logprobs [...] float32, or (logprobs [...], entropy [...]) both float32. Gradients flow
        to ``logits``; with a group the upstream gradient is assumed identical on every rank.
    """
    z = logits.float() / temperature  # [..., V_shard]
    vocab_shard = z.shape[-1]
    start = vocab_shard_start(vocab_shard, tp_group)
    reduce = (lambda x: _AllReduceSum.apply(x, tp_group)) if tp_group is not None else None

    # The max only shifts the exponent; it is detached because its gradient cancels exactly.
    m = z.detach().amax(dim=-1)  # [...]
    if tp_group is not None:
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=tp_group)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    e = torch.exp(z - m.unsqueeze(-1))  # [..., V_shard]

    local = labels.long() - start
    in_shard = (local >= 0) & (local < vocab_shard)
    target = torch.gather(z, -1, torch.where(in_shard, local, 0).unsqueeze(-1)).squeeze(-1)
    target = torch.where(in_shard, target, torch.zeros_like(target))

    stats = [e.sum(-1), target]
    if return_entropy:
        # -inf logits have e = 0; keep their (z - m) finite so 0 * inf never appears.
        shifted = torch.where(torch.isneginf(z), torch.zeros_like(z), z - m.unsqueeze(-1))
        stats.append((e * shifted).sum(-1))
    stacked = torch.stack(stats)  # [2 or 3, ...]: one collective for all sums
    if reduce is not None:
        stacked = reduce(stacked)
    sumexp, target = stacked[0], stacked[1]
    logprobs = target - (m + torch.log(sumexp))
    if not return_entropy:
        return logprobs
    entropy = torch.log(sumexp) - stacked[2] / sumexp
    return logprobs, entropy


def grpo_loss_reference(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    ref_logprobs: torch.Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    beta: float = 0.0,
    pg_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GRPO per-token loss: (pg_weights *) clipped surrogate (R1 paper Eq. 1) plus beta * k3 KL (Eq. 2).

    loss_t = -min(r_t A, clip(r_t, 1 - clip_low, 1 + clip_high) A) + beta * KL_k3,
    r_t = exp(logp_t - old_logp_t), KL_k3 = exp(ref - logp) - (ref - logp) - 1.

    Args:
        logprobs: [B, T] current policy log-probs (differentiable).
        old_logprobs: [B, T] log-probs of the sampling policy.
        advantages: [B] (one per sequence) or [B, T].
        response_mask: [B, T] bool / int / float; 0 marks tokens that do not count.
        ref_logprobs: [B, T] reference-policy log-probs, or None (no KL term, kl_mean = 0).
        pg_weights: [B, T] constant weights of the surrogate term (e.g. TIS), or None.

    Returns:
        per_token_loss [B, T] float32 (0 where the mask is 0, scaled by float mask weights);
        clip_fraction: scalar, fraction of masked tokens whose clipped term was chosen;
        kl_mean: scalar, masked mean of the k3 KL. Only ``per_token_loss`` carries gradient.
    """
    w = response_mask.float()  # [B, T]
    on = w != 0
    zero = torch.zeros((), dtype=torch.float32, device=logprobs.device)
    # Padding may hold anything: zero masked inputs before exp so nothing overflows.
    logp = torch.where(on, logprobs.float(), zero)
    old = torch.where(on, old_logprobs.float(), zero)
    adv = advantages.float()
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)
    adv = torch.where(on, adv.expand_as(w), zero)

    ratio = torch.exp(logp - old)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    is_clipped = (clipped > unclipped).detach()
    if pg_weights is not None:
        loss = loss * torch.where(on, pg_weights.detach().float(), zero)

    kl = torch.zeros_like(w)
    if ref_logprobs is not None:
        delta = torch.where(on, ref_logprobs.float(), zero) - logp
        kl = torch.exp(delta) - delta - 1.0
        loss = loss + beta * kl

    per_token_loss = torch.where(on, loss * w, zero)
    denom = w.sum().clamp_min(1e-8)
    clip_fraction = (is_clipped.float() * w).sum() / denom
    kl_mean = torch.where(on, kl.detach() * w, zero).sum() / denom
    return per_token_loss, clip_fraction, kl_mean

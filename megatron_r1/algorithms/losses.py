"""Policy-gradient losses, the k3 KL estimator and loss aggregation (pure functions).

Shapes: B sequences × T response positions; ``mask`` [B, T] is 1 on generated tokens, 0 on padding.

GRPO objective (R1 paper §2.2.1, Eq. 1), per token, as a loss to minimise:
    ρ = exp(logp − old_logp)
    L = −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) + β·D_KL
with DAPO's clip-higher (ε_low ≠ ε_high) and the k3 estimator (Eq. 2)
    D_KL = exp(ref − logp) − (ref − logp) − 1  ≥ 0.

Aggregation (how per-token losses become one number) matters for length bias:
    token-mean              Σ_{i,t} L·m / Σ m                      (DAPO: every token weighs the same)
    seq-mean-token-mean     1/B Σ_i (Σ_t L·m / Σ_t m)             (the original GRPO)
    seq-mean-token-sum-norm 1/B Σ_i (Σ_t L·m / C)                 (Dr.GRPO: C a constant, e.g. max length)
With gradient accumulation the denominators must be the *global* batch's (``num_tokens`` / ``num_seqs``),
so that micro-batches sum to exactly the full-batch loss.

Padding may hold anything (e.g. -inf or huge log-probs): given the ``mask``, the functions zero masked
inputs *before* ``exp``, so no inf/NaN appears at masked positions, in the values or in the gradients
(multiplying by the mask afterwards is not enough: 0 · inf = NaN, in backward too).
"""

from __future__ import annotations

import torch


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float,
    mask: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """logprobs, old_logprobs [B, T], advantages [B] or [B, T], mask [B, T] | None, weights [B, T] | None
    → (loss [B, T], clipped [B, T] bool).

    ``clipped`` marks tokens whose gradient the clip removes (the clipped branch is the minimum). Where
    ``mask`` is 0 the inputs are ignored (ratio 1, advantage 0: loss 0, zero gradient, never NaN).
    ``weights`` (detached, e.g. ``truncated_importance_weights``) multiply each token's loss.
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    log_ratio = logprobs - old_logprobs
    if mask is not None:
        on = mask != 0
        log_ratio = torch.where(on, log_ratio, torch.zeros_like(log_ratio))
        advantages = torch.where(on, advantages, torch.zeros_like(log_ratio))
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clipped = clipped_ratio * advantages
    loss = -torch.minimum(unclipped, clipped)
    if weights is not None:
        loss = loss * weights.detach()
    return loss, clipped < unclipped


def kl_k3(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """k3 estimator of KL(π_θ ‖ π_ref) per token [B, T] (Schulman 2020; R1 Eq. 2); always ≥ 0; 0 where
    ``mask`` [B, T] is 0."""
    log_ratio = ref_logprobs - logprobs
    if mask is not None:
        log_ratio = torch.where(mask != 0, log_ratio, torch.zeros_like(log_ratio))
    return torch.exp(log_ratio) - log_ratio - 1.0


def truncated_importance_weights(
    train_logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    clip: float,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level truncated importance sampling (TIS) for sampler/trainer mismatch:
    w = min(π_train / π_sampler, C) = min(exp(train − sampler), C), detached; the weight multiplies each
    token's policy-gradient term (Yao et al. 2025, "Your efficient RL framework secretly brings you
    off-policy RL training"; verl's rollout correction, slime's ``--use-tis``; no lower bound).

    train_logprobs (the trainer's old-policy log-probs), sampler_logprobs, mask [B, T] → (weights [B, T],
    truncated [B, T] bool, True where the cap C applied). Masked positions get weight 1, never truncated.
    """
    log_ratio = (train_logprobs - sampler_logprobs).detach().float()
    if mask is not None:
        log_ratio = torch.where(mask != 0, log_ratio, torch.zeros_like(log_ratio))
    ratio = torch.exp(log_ratio)
    return torch.clamp(ratio, max=clip), ratio > clip


def aggregate_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    norm_constant: float | None = None,
    seq_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """per_token, mask [B, T] → scalar loss. ``num_tokens`` / ``num_seqs`` default to this batch's counts;
    pass the global batch's when accumulating micro-batches. ``norm_constant`` is Dr.GRPO's C (default T).
    ``seq_tokens`` [B]: each sequence's token count for seq-mean-token-mean (default ``mask.sum(dim=1)``);
    pass the whole sequences' counts when ``per_token`` holds only a part of each sequence (context
    parallelism), so that the parts' losses add up to the whole's."""
    mask = mask.to(per_token.dtype)
    summed = torch.where(mask != 0, per_token * mask, torch.zeros_like(per_token))
    if mode == "token-mean":
        denom = num_tokens if num_tokens is not None else mask.sum().clamp(min=1.0)
        return summed.sum() / denom
    seqs = num_seqs if num_seqs is not None else per_token.shape[0]
    if mode == "seq-mean-token-mean":
        counts = mask.sum(dim=1) if seq_tokens is None else seq_tokens.to(per_token.dtype)
        return (summed.sum(dim=1) / counts.clamp(min=1.0)).sum() / seqs
    if mode == "seq-mean-token-sum-norm":
        c = norm_constant if norm_constant is not None else per_token.shape[1]
        return (summed.sum(dim=1) / c).sum() / seqs
    raise ValueError(
        f"unknown loss aggregation {mode!r}; known: token-mean, seq-mean-token-mean, seq-mean-token-sum-norm"
    )

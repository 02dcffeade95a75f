"""Fused GRPO loss: ratio, clipped surrogate, k3 KL, masking and the metrics in one pass.

One Triton program per block of tokens computes the per-token loss, its derivative wrt the
current log-probs (saved for backward: [B, T] float32, never anything vocabulary-sized) and
per-program partial sums of (clipped tokens, KL, mask), reduced deterministically afterwards.
Registered as the torch custom op ``megatron_r1::grpo_loss`` with a fake implementation.
"""

from __future__ import annotations

import torch

from ._backend import use_triton
from .reference import grpo_loss_reference

_BLOCK = 1024


@torch.library.custom_op("megatron_r1::grpo_loss", mutates_args=())
def _grpo_loss_op(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    clip_low: float,
    clip_high: float,
    beta: float,
    pg_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """All inputs contiguous [B, T] (advantages [B] or [B, T]; pg_weights [B, T] or None).

    Returns (per_token_loss [B, T], clip_fraction [], kl_mean [], dloss_dlogp [B, T]) float32.
    """
    from ._triton_kernels import grpo_loss_kernel

    batch, seq_len = logprobs.shape
    n_tokens = batch * seq_len
    f32 = dict(device=logprobs.device, dtype=torch.float32)
    loss = torch.empty(batch, seq_len, **f32)
    dloss = torch.empty(batch, seq_len, **f32)
    n_programs = max(1, _cdiv(n_tokens, _BLOCK))
    partial = torch.zeros(n_programs, 3, **f32)
    if n_tokens > 0:
        mask = response_mask
        if mask.dtype == torch.bool:
            mask = mask.view(torch.uint8)  # same bytes; Triton loads it as an integer
        grpo_loss_kernel[(n_programs,)](
            logprobs,
            old_logprobs,
            advantages,
            mask,
            ref_logprobs if ref_logprobs is not None else logprobs,
            pg_weights if pg_weights is not None else logprobs,
            loss,
            dloss,
            partial,
            n_tokens,
            seq_len,
            clip_low,
            clip_high,
            beta,
            ADV_PER_TOKEN=advantages.dim() == 2,
            HAS_REF=ref_logprobs is not None,
            HAS_WEIGHT=pg_weights is not None,
            BLOCK=_BLOCK,
        )
    clipped, kl_sum, mask_sum = partial.sum(0).unbind()
    denom = mask_sum.clamp_min(1e-8)
    return loss, clipped / denom, kl_sum / denom, dloss


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


@_grpo_loss_op.register_fake
def _(
    logprobs,
    old_logprobs,
    advantages,
    response_mask,
    ref_logprobs,
    clip_low,
    clip_high,
    beta,
    pg_weights=None,
):
    loss = logprobs.new_empty(logprobs.shape, dtype=torch.float32)
    scalar = logprobs.new_empty((), dtype=torch.float32)
    return loss, scalar, scalar.clone(), torch.empty_like(loss)


def _setup_context(ctx, inputs, output):
    ctx.logprobs_dtype = inputs[0].dtype
    ctx.save_for_backward(output[3])
    ctx.mark_non_differentiable(output[1], output[2], output[3])


def _backward(ctx, grad_loss, _grad_clip, _grad_kl, _grad_dloss):
    (dloss,) = ctx.saved_tensors
    grad = None if grad_loss is None else (grad_loss * dloss).to(ctx.logprobs_dtype)
    return grad, None, None, None, None, None, None, None, None


_grpo_loss_op.register_autograd(_backward, setup_context=_setup_context)


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    ref_logprobs: torch.Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    beta: float = 0.0,
    impl: str = "auto",
    pg_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GRPO per-token loss (R1 paper Eq. 1-2): clipped surrogate + beta * k3 KL, masked.

    Args:
        logprobs: [B, T] current policy log-probs (differentiable).
        old_logprobs: [B, T] sampling-policy log-probs.
        advantages: [B] (one per sequence) or [B, T].
        response_mask: [B, T] bool / int / float; 0 marks tokens that do not count.
        ref_logprobs: [B, T] reference-policy log-probs, or None (no KL, kl_mean = 0).
        clip_low, clip_high: the ratio is clipped to [1 - clip_low, 1 + clip_high].
        beta: weight of the k3 KL term.
        impl: "triton", "torch" or "auto" (Triton for CUDA tensors when importable).
        pg_weights: [B, T] constant per-token weights of the clipped-surrogate term (not of the KL),
            e.g. truncated importance weights for sampler/trainer mismatch; None = 1.

    Returns:
        (per_token_loss [B, T] float32, zero where the mask is 0; clip_fraction scalar: masked
        fraction of tokens where the clipped term is chosen; kl_mean scalar: masked mean k3 KL).
        Only ``per_token_loss`` is differentiable (wrt ``logprobs``); aggregation (token mean,
        sequence mean, Dr.GRPO) is left to the caller.
    """
    args = (logprobs, old_logprobs, advantages, response_mask, ref_logprobs)
    if not use_triton(impl, logprobs):
        return grpo_loss_reference(
            *args, clip_low=clip_low, clip_high=clip_high, beta=beta, pg_weights=pg_weights
        )
    if logprobs.dim() != 2 or advantages.dim() not in (1, 2):
        raise ValueError("logprobs must be [B, T] and advantages [B] or [B, T]")
    contiguous = [None if t is None else t.contiguous() for t in args]
    weights = None if pg_weights is None else pg_weights.detach().float().contiguous()
    loss, clip_fraction, kl_mean, _ = _grpo_loss_op(
        *contiguous, float(clip_low), float(clip_high), float(beta), weights
    )
    return loss, clip_fraction, kl_mean

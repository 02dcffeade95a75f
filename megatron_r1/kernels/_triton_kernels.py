"""Triton kernel bodies: per-row vocab statistics, the log-prob gradient, the GRPO loss.

Imported lazily (it imports Triton) by the launchers in ``logprobs.py`` and ``grpo.py``.
All arithmetic is float32 whatever the input dtype; the gradient is written directly in the
logits dtype, so no [tokens x vocab] float32 buffer ever exists.
"""

from __future__ import annotations

import triton.language as tl

from ._backend import Kernel


def _logprob_stats(
    logits_ptr,  # [N, V_shard] (row stride given, unit column stride)
    labels_ptr,  # [N] int, global vocabulary ids
    max_ptr,  # [N] f32 out: local max of logits / T
    sumexp_ptr,  # [N] f32 out: sum exp(z - max)
    sumexpz_ptr,  # [N] f32 out: sum exp(z - max) * (z - max), only WITH_ENTROPY
    target_ptr,  # [N] f32 out: z[label] if label is in this shard, else 0
    stride_row,
    vocab_shard,
    vocab_start,
    inv_temp,
    WITH_ENTROPY: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """One program per row: online softmax over vocabulary blocks (z = logits / T)."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    m = float("-inf")  # running max, sum exp(z - m), sum exp(z - m) * (z - m): fp32 scalars
    s = 0.0
    t = 0.0
    for start in range(0, vocab_shard, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        z = tl.load(row_ptr + cols, mask=cols < vocab_shard, other=float("-inf"))
        z = z.to(tl.float32) * inv_temp
        m_new = tl.maximum(m, tl.max(z, axis=0))
        # A row whose entries so far are all -inf keeps s = t = 0; shift by 0 to avoid inf - inf.
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_ref)
        e = tl.exp(z - m_ref)
        if WITH_ENTROPY:
            # t = sum e * (z - m_ref); -inf entries (e = 0) must not produce 0 * inf = NaN.
            ez = e * tl.where(e > 0, z - m_ref, 0.0)
            shift = tl.where(alpha > 0, m - m_ref, 0.0)
            t = alpha * (t + shift * s) + tl.sum(ez, axis=0)
        s = alpha * s + tl.sum(e, axis=0)
        m = m_new
    label = tl.load(labels_ptr + row).to(tl.int64) - vocab_start
    in_shard = (label >= 0) & (label < vocab_shard)
    safe_label = tl.where(in_shard, label, 0)
    target = tl.load(row_ptr + safe_label).to(tl.float32) * inv_temp
    target = tl.where(in_shard, target, 0.0)
    tl.store(max_ptr + row, m)
    tl.store(sumexp_ptr + row, s)
    if WITH_ENTROPY:
        tl.store(sumexpz_ptr + row, t)
    tl.store(target_ptr + row, target)


def _logprob_grad(
    logits_ptr,  # [N, V_shard]
    labels_ptr,  # [N]
    lse_ptr,  # [N] f32: global log-sum-exp of z
    mean_z_ptr,  # [N] f32: global E_p[z] (only HAS_ENTROPY_GRAD)
    grad_logp_ptr,  # [N] f32
    grad_entropy_ptr,  # [N] f32 (only HAS_ENTROPY_GRAD)
    grad_ptr,  # [N, V_shard] out, logits dtype
    stride_row,
    grad_stride_row,
    vocab_shard,
    vocab_start,
    inv_temp,
    HAS_ENTROPY_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """dL/dlogits = [g_logp (onehot - p) + g_H p (E[z] - z)] / T, one program per row."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    out_ptr = grad_ptr + row * grad_stride_row
    lse = tl.load(lse_ptr + row)
    g = tl.load(grad_logp_ptr + row)
    label = tl.load(labels_ptr + row).to(tl.int64) - vocab_start
    if HAS_ENTROPY_GRAD:
        g_h = tl.load(grad_entropy_ptr + row)
        mean_z = tl.load(mean_z_ptr + row)
    for start in range(0, vocab_shard, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        valid = cols < vocab_shard
        z = tl.load(row_ptr + cols, mask=valid, other=float("-inf")).to(tl.float32) * inv_temp
        p = tl.exp(z - lse)
        dz = tl.where(cols == label, g, 0.0) - g * p
        if HAS_ENTROPY_GRAD:
            dz += g_h * p * (mean_z - tl.where(p > 0, z, mean_z))  # p = 0 at -inf logits
        tl.store(out_ptr + cols, (dz * inv_temp).to(grad_ptr.dtype.element_ty), mask=valid)


def _grpo_loss(
    logp_ptr,  # [N] (B*T flattened)
    old_logp_ptr,  # [N]
    adv_ptr,  # [N] or [B]
    mask_ptr,  # [N]
    ref_logp_ptr,  # [N] (only HAS_REF)
    pg_weight_ptr,  # [N] (only HAS_WEIGHT): multiplies the policy-gradient term (TIS)
    loss_ptr,  # [N] f32 out: masked per-token loss
    dloss_ptr,  # [N] f32 out: d loss / d logp (masked)
    partial_ptr,  # [num_programs, 3] f32 out: (clipped, kl, mask) sums
    n_tokens,
    seq_len,
    clip_low,
    clip_high,
    beta,
    ADV_PER_TOKEN: tl.constexpr,
    HAS_REF: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """(weight *) clipped surrogate + beta * k3 KL per token, with its derivative and partial sums."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n_tokens
    w = tl.load(mask_ptr + offs, mask=valid, other=0).to(tl.float32)
    on = w != 0
    # Masked positions may hold anything (padding): zero them before exp so nothing overflows.
    logp = tl.where(on, tl.load(logp_ptr + offs, mask=valid, other=0).to(tl.float32), 0.0)
    old = tl.where(on, tl.load(old_logp_ptr + offs, mask=valid, other=0).to(tl.float32), 0.0)
    if ADV_PER_TOKEN:
        adv = tl.load(adv_ptr + offs, mask=valid, other=0).to(tl.float32)
    else:
        adv = tl.load(adv_ptr + offs // seq_len, mask=valid, other=0).to(tl.float32)
    adv = tl.where(on, adv, 0.0)
    ratio = tl.exp(logp - old)
    unclipped = -adv * ratio
    clipped = -adv * tl.minimum(tl.maximum(ratio, 1.0 - clip_low), 1.0 + clip_high)
    is_clipped = clipped > unclipped
    loss = tl.where(is_clipped, clipped, unclipped)
    dloss = tl.where(is_clipped, 0.0, unclipped)
    if HAS_WEIGHT:
        pg_weight = tl.where(on, tl.load(pg_weight_ptr + offs, mask=valid, other=0).to(tl.float32), 0.0)
        loss = loss * pg_weight
        dloss = dloss * pg_weight
    kl = tl.zeros((BLOCK,), tl.float32)
    if HAS_REF:
        ref = tl.where(on, tl.load(ref_logp_ptr + offs, mask=valid, other=0).to(tl.float32), 0.0)
        delta = ref - logp
        kl = tl.exp(delta) - delta - 1.0
        loss += beta * kl
        dloss += beta * (1.0 - tl.exp(delta))
    tl.store(loss_ptr + offs, tl.where(on, loss * w, 0.0), mask=valid)
    tl.store(dloss_ptr + offs, tl.where(on, dloss * w, 0.0), mask=valid)
    tl.store(partial_ptr + pid * 3, tl.sum(tl.where(is_clipped, w, 0.0), axis=0))
    tl.store(partial_ptr + pid * 3 + 1, tl.sum(tl.where(on, kl * w, 0.0), axis=0))
    tl.store(partial_ptr + pid * 3 + 2, tl.sum(w, axis=0))


logprob_stats_kernel = Kernel(_logprob_stats)
logprob_grad_kernel = Kernel(_logprob_grad)
grpo_loss_kernel = Kernel(_grpo_loss)

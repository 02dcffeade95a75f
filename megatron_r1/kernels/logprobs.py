"""Fused vocab-parallel token log-probs (and entropy) from logits, without [N x V] fp32 buffers.

Forward: one Triton program per token row streams the vocabulary shard in blocks with an online
softmax (running max, sum exp, and for the entropy sum exp * z), then the per-row statistics of
all tensor-parallel ranks are combined with two small collectives (a MAX and one SUM of a
[3, N] tensor). Backward: one program per row recomputes softmax from the saved global
log-sum-exp and writes the gradient in the logits dtype.

Both passes are registered as torch custom ops (``megatron_r1::token_logprobs`` and
``megatron_r1::token_logprobs_backward``) with fake implementations, so they trace under
``torch.compile`` and run on the meta device. The process group travels into the op by name.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ._backend import use_triton
from .reference import token_logprobs_reference, vocab_shard_start


def _block_v(vocab: int, on_cuda: bool) -> int:
    # The interpreter runs each block as numpy ops: wide blocks amortise its per-step overhead.
    cap = 4096 if on_cuda else 16384
    return min(cap, max(16, 1 << (vocab - 1).bit_length()))


def _num_warps(block_v: int) -> int:
    return 8 if block_v >= 2048 else 4


def _resolve_group(group_name: str | None) -> dist.ProcessGroup | None:
    if group_name is None:
        return None
    from torch._C._distributed_c10d import _resolve_process_group

    return _resolve_process_group(group_name)


def _combine_stats(
    row_max: torch.Tensor,
    sumexp: torch.Tensor,
    sumexpz: torch.Tensor | None,
    target: torch.Tensor,
    group: dist.ProcessGroup | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-rank row statistics [N] -> global (logprobs, lse, entropy) [N], all float32.

    The rank holding the row maximum adds exp(0) = 1 to the sum, so log(sum) >= 0 and
    lse >= max >= target: log-probs are <= 0 and the entropy >= 0 by construction (verl#2656).
    """
    if group is not None:
        global_max = row_max.clone()
        dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)
    else:
        global_max = row_max
    ref = torch.where(torch.isneginf(global_max), torch.zeros_like(global_max), global_max)
    scale = torch.exp(row_max - ref)  # 0 for ranks whose shard is all -inf
    parts = [scale * sumexp, target]
    if sumexpz is not None:
        moved = scale * (sumexpz + torch.where(scale > 0, row_max - ref, 0.0) * sumexp)
        parts.append(torch.where(scale > 0, moved, 0.0))
    stacked = torch.stack(parts)
    if group is not None:
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM, group=group)
    log_sumexp = torch.log(stacked[0])
    lse = ref + log_sumexp
    logprobs = stacked[1] - lse
    entropy = None if sumexpz is None else log_sumexp - stacked[2] / stacked[0]
    return logprobs, lse, entropy


@torch.library.custom_op("megatron_r1::token_logprobs", mutates_args=())
def _token_logprobs_op(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    vocab_start: int,
    with_entropy: bool,
    group_name: str | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [N, V_shard], labels [N] -> (logprobs [N], entropy [N] or [0], lse [N]) float32."""
    from ._triton_kernels import logprob_stats_kernel

    n_rows, vocab = logits.shape
    f32 = dict(device=logits.device, dtype=torch.float32)
    row_max = torch.empty(n_rows, **f32)
    sumexp = torch.empty(n_rows, **f32)
    sumexpz = torch.empty(n_rows if with_entropy else 1, **f32)
    target = torch.empty(n_rows, **f32)
    if n_rows > 0:
        block = _block_v(vocab, logits.is_cuda)
        logprob_stats_kernel[(n_rows,)](
            logits,
            labels,
            row_max,
            sumexp,
            sumexpz,
            target,
            logits.stride(0),
            vocab,
            vocab_start,
            1.0 / temperature,
            WITH_ENTROPY=with_entropy,
            BLOCK_V=block,
            num_warps=_num_warps(block),
        )
    logprobs, lse, entropy = _combine_stats(
        row_max, sumexp, sumexpz if with_entropy else None, target, _resolve_group(group_name)
    )
    if entropy is None:
        entropy = torch.empty(0, **f32)
    return logprobs, entropy, lse


@_token_logprobs_op.register_fake
def _(logits, labels, temperature, vocab_start, with_entropy, group_name):
    n_rows = logits.shape[0]
    out = logits.new_empty(n_rows, dtype=torch.float32)
    ent = logits.new_empty(n_rows if with_entropy else 0, dtype=torch.float32)
    return out, ent, logits.new_empty(n_rows, dtype=torch.float32)


@torch.library.custom_op("megatron_r1::token_logprobs_backward", mutates_args=())
def _token_logprobs_backward_op(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    mean_z: torch.Tensor,
    grad_logprobs: torch.Tensor,
    grad_entropy: torch.Tensor,
    temperature: float,
    vocab_start: int,
) -> torch.Tensor:
    """Gradient [N, V_shard] in the logits dtype; ``grad_entropy``/``mean_z`` [N] or [0]."""
    from ._triton_kernels import logprob_grad_kernel

    n_rows, vocab = logits.shape
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
    has_entropy_grad = grad_entropy.numel() > 0
    if n_rows > 0:
        block = _block_v(vocab, logits.is_cuda)
        logprob_grad_kernel[(n_rows,)](
            logits,
            labels,
            lse,
            mean_z if has_entropy_grad else lse,
            grad_logprobs.float().contiguous(),
            grad_entropy.float().contiguous() if has_entropy_grad else lse,
            grad,
            logits.stride(0),
            grad.stride(0),
            vocab,
            vocab_start,
            1.0 / temperature,
            HAS_ENTROPY_GRAD=has_entropy_grad,
            BLOCK_V=block,
            num_warps=_num_warps(block),
        )
    return grad


@_token_logprobs_backward_op.register_fake
def _(logits, labels, lse, mean_z, grad_logprobs, grad_entropy, temperature, vocab_start):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    logits, labels, temperature, vocab_start, with_entropy, _ = inputs
    _, entropy, lse = output
    ctx.save_for_backward(logits, labels, lse, entropy)
    ctx.temperature = temperature
    ctx.vocab_start = vocab_start
    ctx.with_entropy = with_entropy
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_logprobs, grad_entropy, _grad_lse):
    logits, labels, lse, entropy = ctx.saved_tensors
    if grad_logprobs is None:
        grad_logprobs = torch.zeros_like(lse)
    if ctx.with_entropy and grad_entropy is not None:
        mean_z = lse - entropy  # E_p[z] = lse - H
    else:
        grad_entropy = mean_z = lse.new_empty(0)
    grad = _token_logprobs_backward_op(
        logits, labels, lse, mean_z, grad_logprobs, grad_entropy, ctx.temperature, ctx.vocab_start
    )
    return grad, None, None, None, None, None


_token_logprobs_op.register_autograd(_backward, setup_context=_setup_context)


def token_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    tp_group: dist.ProcessGroup | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
    impl: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label) (and entropy) of softmax(logits / temperature), vocab-parallel.

    Args:
        logits: [..., V_shard] bf16 / fp16 / fp32; rank r of ``tp_group`` holds global
            vocabulary ids [r * V_shard, (r + 1) * V_shard). Accumulation is float32.
        labels: [...] int, global vocabulary ids; a label outside this rank's shard adds nothing
            here (the target logit is summed over the group).
        tp_group: tensor-parallel group over which the vocabulary is sharded (None: unsharded).
        temperature: logits are divided by it (the sampling temperature of the rollout).
        return_entropy: also return the entropy of the global distribution.
        impl: "triton" (kernel; CPU tensors need TRITON_INTERPRET=1), "torch" (reference) or
            "auto" (Triton for CUDA tensors when importable, else the reference).

    Returns:
        logprobs [...] float32, or (logprobs [...], entropy [...]) float32. The gradient wrt
        ``logits`` is (onehot - softmax) / T * grad_logprobs (+ the entropy term), written in the
        logits dtype; with a group the upstream gradient is assumed identical on every rank.
    """
    if not use_triton(impl, logits):
        return token_logprobs_reference(logits, labels, tp_group, temperature, return_entropy)
    lead_shape = logits.shape[:-1]
    if labels.shape != lead_shape:
        raise ValueError(f"labels {tuple(labels.shape)} must match logits[..., :-1] {lead_shape}")
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    group_name = None
    if tp_group is not None and dist.get_world_size(group=tp_group) > 1:
        group_name = tp_group.group_name
    start = vocab_shard_start(vocab, tp_group)
    logprobs, entropy, _ = _token_logprobs_op(
        flat, labels.reshape(-1).contiguous(), float(temperature), start, return_entropy, group_name
    )
    logprobs = logprobs.view(lead_shape)
    if return_entropy:
        return logprobs, entropy.view(lead_shape)
    return logprobs

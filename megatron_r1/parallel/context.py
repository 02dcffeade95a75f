"""Context parallelism's sequence layout: Megatron's load-balanced split of a sequence over CP ranks.

With causal attention a plain split would give the last rank the most work (its queries see the most
keys). Megatron cuts the sequence into 2 × CP equal chunks and gives rank r chunks r and 2·CP − 1 − r
(``megatron.core.utils.get_batch_on_this_cp_rank``; the rotary tables follow the same rule,
``rope_utils.get_pos_emb_on_this_cp_rank``), so every rank holds one early and one late chunk. A sequence
must therefore be a multiple of 2 × CP long (× TP under sequence parallelism, which splits each rank's part
again over TP).

Pure functions on tensors (split / unsplit / the global positions a rank holds) and one autograd-correct
gather over the CP group (backward: each rank keeps the sum of every rank's gradient for its chunks).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def cp_chunk_ids(cp_size: int, cp_rank: int) -> tuple[int, int]:
    """The two chunks (of 2 × ``cp_size``) that rank ``cp_rank`` holds, in the order it holds them."""
    if not 0 <= cp_rank < cp_size:
        raise ValueError(f"cp_rank {cp_rank} is outside the context-parallel size {cp_size}")
    return cp_rank, 2 * cp_size - 1 - cp_rank


def cp_split(x: torch.Tensor, cp_size: int, cp_rank: int, dim: int = 1) -> torch.Tensor:
    """x [..., S, ...] (S along ``dim``, a multiple of 2·cp_size) → this rank's part [..., S / cp_size, ...]:
    chunks r and 2·cp_size − 1 − r of size S / (2·cp_size), concatenated (``get_batch_on_this_cp_rank``)."""
    if cp_size == 1:
        return x
    dim = dim % x.dim()
    length = x.shape[dim]
    if length % (2 * cp_size):
        raise ValueError(
            f"context parallelism: sequence dim {dim} of a tensor of shape {tuple(x.shape)} is not a "
            f"multiple of 2 × CP = {2 * cp_size}"
        )
    chunks = x.chunk(2 * cp_size, dim=dim)
    first, second = cp_chunk_ids(cp_size, cp_rank)
    return torch.cat([chunks[first], chunks[second]], dim=dim)


def cp_unsplit(parts: Sequence[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """The inverse of :func:`cp_split`: every CP rank's part [..., S / cp, ...] (in rank order) → the
    sequence [..., S, ...] in global order."""
    cp_size = len(parts)
    if cp_size == 1:
        return parts[0]
    chunks: list[torch.Tensor | None] = [None] * (2 * cp_size)
    for rank, part in enumerate(parts):
        first, second = cp_chunk_ids(cp_size, rank)
        chunks[first], chunks[second] = part.chunk(2, dim=dim)
    return torch.cat(chunks, dim=dim)


def cp_positions(seq_len: int, cp_size: int, cp_rank: int, device=None) -> torch.Tensor:
    """The global positions [seq_len / cp_size] of the tokens rank ``cp_rank`` holds, in its order."""
    return cp_split(torch.arange(seq_len, device=device), cp_size, cp_rank, dim=0)


def cp_padded_length(seq_len: int, cp_size: int, tp_size: int = 1) -> int:
    """``seq_len`` rounded up to a multiple of 2·cp_size·tp_size (tp_size > 1: sequence parallelism splits
    each rank's part over TP too)."""
    multiple = 2 * cp_size * tp_size if cp_size > 1 else tp_size
    return seq_len + -seq_len % multiple


class _AllGather(torch.autograd.Function):
    """x [...] → every rank's x stacked [cp, ...]; backward: the gradient summed over the group, this
    rank's slice (a reduce-scatter on NCCL; on gloo, which has none, an all-reduce). torch's own
    ``torch.distributed.nn.functional.all_gather`` emulates it on gloo with scatters addressed by *group*
    rank as if it were the global rank, which fails for any group not starting at global rank 0."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        import torch.distributed as dist

        ctx.group = group
        out = x.new_empty((dist.get_world_size(group), *x.shape))
        dist.all_gather(list(out.unbind(0)), x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        import torch.distributed as dist

        grad = grad.contiguous()
        if dist.get_backend(ctx.group) == dist.Backend.NCCL:
            mine = grad.new_empty(grad.shape[1:])
            dist.reduce_scatter_tensor(mine, grad, group=ctx.group)
            return mine, None
        dist.all_reduce(grad, group=ctx.group)
        return grad[dist.get_rank(ctx.group)], None


def cp_gather(x: torch.Tensor, group, dim: int = 0) -> torch.Tensor:
    """This rank's part x [..., S / cp, ...] → the whole sequence [..., S, ...] in global order, on every rank
    of the CP ``group``. Autograd-correct: the backward sums every rank's gradient and keeps this rank's
    part."""
    return cp_unsplit(list(_AllGather.apply(x, group).unbind(0)), dim=dim)

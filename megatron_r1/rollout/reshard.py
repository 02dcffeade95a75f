"""Weight sync: Megatron shards (TP × PP) → full, Hugging Face-named tensors for the rollout engine.

Every rank takes part: TP shards are all-gathered inside the TP group (the fused gate/up projection
is gathered per half, since each rank holds ``[gate_r; up_r]``); each pipeline stage broadcasts its
layers to the other stages. Tensors stream out one at a time and are grouped into buckets of bounded
size, so the engine can load them while the next bucket is being gathered and nothing holds a second
copy of the whole model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist

from megatron_r1.parallel import ParallelState


def _global_names(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(global name, tensor) for this stage: global layer (and expert) indices, the local spec's names
    (a TE spec's fused-norm names are mapped), parameters plus the MoE router's ``expert_bias`` buffer
    (aux-loss-free balancing: not a parameter, but the HF checkpoint's ``e_score_correction_bias``)."""
    from megatron_r1.convert.checkpoint import canonical_name, global_name

    tensors = list(model.named_parameters())
    tensors += [(n, b) for n, b in model.named_buffers() if n.endswith("router.expert_bias")]
    return [(canonical_name(global_name(model, name)), t) for name, t in tensors]


def _gather_tp(name: str, param: torch.Tensor, state: ParallelState) -> torch.Tensor:
    tensor = param.detach()
    if state.tp_size == 1 or not getattr(param, "tensor_model_parallel", False):
        return tensor
    dim = param.partition_dim
    shards = [torch.empty_like(tensor) for _ in range(state.tp_size)]
    dist.all_gather(shards, tensor.contiguous(), group=state.tp_group)
    if name.endswith("mlp.linear_fc1.weight"):
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(shards, dim=dim)


def full_megatron_tensors(model: torch.nn.Module, state: ParallelState) -> Iterator[tuple[str, torch.Tensor]]:
    """Every full Megatron tensor (global names), on every rank, stage by stage."""
    local = _global_names(model)
    for stage in range(state.pp_size):
        if state.pp_size == 1:
            for name, param in local:
                yield name, _gather_tp(name, param, state)
            return
        meta = [[(n, tuple(p.shape), p.dtype) for n, p in local]] if state.pp_rank == stage else [None]
        src = dist.get_global_rank(state.pp_group, stage)
        dist.broadcast_object_list(meta, src=src, group=state.pp_group)
        owned = dict(local) if state.pp_rank == stage else {}
        for name, _shape, dtype in meta[0]:
            if state.pp_rank == stage:
                full = _gather_tp(name, owned[name], state).contiguous()
                shape = torch.tensor(full.shape)
            else:
                shape = torch.zeros(len(_shape), dtype=torch.long)
            # The full shape differs from the shard's under TP: send it first.
            shape = shape.to(state.device)
            dist.broadcast(shape, src=src, group=state.pp_group)
            if state.pp_rank != stage:
                full = torch.empty(tuple(shape.tolist()), dtype=dtype, device=state.device)
            dist.broadcast(full, src=src, group=state.pp_group)
            yield name, full


def hf_weight_buckets(
    model: torch.nn.Module,
    state: ParallelState,
    to_hf: Callable[[str, torch.Tensor], Iterator[tuple[str, torch.Tensor]]],
    bucket_bytes: int,
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Buckets of (HF name, full tensor), each at most ``bucket_bytes`` (or one tensor if larger)."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in full_megatron_tensors(model, state):
        for hf_name, hf_tensor in to_hf(name, tensor):
            nbytes = hf_tensor.numel() * hf_tensor.element_size()
            if bucket and size + nbytes > bucket_bytes:
                yield bucket
                bucket, size = [], 0
            bucket.append((hf_name, hf_tensor))
            size += nbytes
    if bucket:
        yield bucket

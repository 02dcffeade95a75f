"""Weight sync: Megatron shards (TP × PP) → full, Hugging Face-named tensors for the rollout engine.

Every rank takes part: TP shards are all-gathered inside the (expert) TP group (every SwiGLU first
linear — dense, shared and routed experts — is gathered per half, since each rank holds
``[gate_r; up_r]``: :func:`megatron_r1.convert.naming.gated_parameters`); each pipeline stage broadcasts its
layers to the other stages. Tensors stream out one at a time and are grouped into buckets of bounded
size, so the engine can load them while the next bucket is being gathered and nothing holds a second
copy of the whole model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist

from megatron_r1.convert.naming import (
    LOCAL_EXPERT,
    canonical_name,
    expert_layout,
    gated_parameters,
    global_name,
    tp_unshard,
)
from megatron_r1.parallel import ParallelState


def _global_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(global name, tensor) for this stage: global layer (and expert) indices, the local spec's names
    (a TE spec's fused-norm names are mapped), parameters plus the MoE router's ``expert_bias`` buffer
    (aux-loss-free balancing: not a parameter, but the HF checkpoint's ``e_score_correction_bias``)."""
    tensors = list(model.named_parameters())
    tensors += [(n, b) for n, b in model.named_buffers() if n.endswith("router.expert_bias")]
    return [(canonical_name(global_name(model, name)), t) for name, t in tensors]


def _gather_tp(name: str, param: torch.Tensor, gated: bool) -> torch.Tensor:
    """The full tensor of a TP-sharded parameter (its shards gathered over the (expert) TP group); a
    replicated one as it is."""
    tensor = param.detach()
    if not getattr(param, "tensor_model_parallel", False):
        return tensor
    from megatron.core import parallel_state as mpu

    expert = LOCAL_EXPERT.search(name) is not None
    group = mpu.get_expert_tensor_parallel_group() if expert else mpu.get_tensor_model_parallel_group()
    size = dist.get_world_size(group)
    if size == 1:
        return tensor
    shards = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(shards, tensor.contiguous(), group=group)
    return tp_unshard(shards, param.partition_dim, gated)


def _stage_tensors(model: torch.nn.Module, state: ParallelState) -> Iterator[tuple[str, torch.Tensor]]:
    """This stage's full tensors: TP shards gathered, and under expert parallelism every EP rank's experts
    (gathered over the EP group, renamed to their global expert index)."""
    first, local = expert_layout(model)
    gated = gated_parameters(model)
    ep_group = None
    if state.ep_size > 1:
        from megatron.core import parallel_state as mpu

        ep_group = mpu.get_expert_model_parallel_group()
    for name, param in _global_tensors(model):
        full = _gather_tp(name, param, id(param) in gated)
        if ep_group is None or getattr(param, "allreduce", True):
            yield name, full
            continue
        parts = [torch.empty_like(full) for _ in range(state.ep_size)]
        dist.all_gather(parts, full.contiguous(), group=ep_group)
        offset = int(LOCAL_EXPERT.search(name).group(1)) - first
        for rank, part in enumerate(parts):
            yield LOCAL_EXPERT.sub(f".experts.local_experts.{rank * local + offset}.", name), part


def full_megatron_tensors(model: torch.nn.Module, state: ParallelState) -> Iterator[tuple[str, torch.Tensor]]:
    """Every full Megatron tensor (global names), on every rank, stage by stage: the owning stage's ranks
    gather each tensor and broadcast its name, shape and dtype, then the tensor, to the other stages."""
    if state.pp_size == 1:
        yield from _stage_tensors(model, state)
        return
    for stage in range(state.pp_size):
        src = dist.get_global_rank(state.pp_group, stage)
        owner = state.pp_rank == stage
        stream = _stage_tensors(model, state) if owner else None
        while True:
            item = next(stream, None) if owner else None
            meta = [None if item is None else (item[0], tuple(item[1].shape), item[1].dtype)]
            dist.broadcast_object_list(meta, src=src, group=state.pp_group)
            if meta[0] is None:
                break
            name, shape, dtype = meta[0]
            full = item[1].contiguous() if owner else torch.empty(shape, dtype=dtype, device=state.device)
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

"""Megatron-side tensor naming and tensor-parallel layout: the one public home for what conversion
(:mod:`megatron_r1.convert.checkpoint`) and weight sync (:mod:`megatron_r1.rollout.reshard`) both need.

- names: a rank's local parameter name → its *global* name (global layer index under pipeline
  parallelism, global expert index under expert parallelism) → its *canonical* name (a Transformer Engine
  spec's fused-norm and grouped-GEMM names spelled as the local spec's, which the adapters speak);
- layout: which parameters hold SwiGLU's ``[gate; up]`` halves (decided from the module that owns the
  parameter, so dense MLPs, shared experts, routed experts and TE's grouped experts are all found), and the
  slicing / reassembly of a full tensor into / from tensor-parallel shards.
"""

from __future__ import annotations

import re

import torch

LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
"""A decoder-layer parameter name; group 1 is the (local or global) layer index."""
LOCAL_EXPERT = re.compile(r"\.experts\.local_experts\.(\d+)\.")
"""A routed expert on the local spec (``SequentialMLP``); group 1 is the expert index."""
_GROUPED_EXPERT = re.compile(r"(\.experts\.linear_fc[12]\.weight)(\d+)$")
_GROUPED_TO_LOCAL = re.compile(r"\.experts\.linear_fc([12])\.weight(\d+)$")

# Transformer Engine spec: norms fused into the following linear → the local spec's separate norms.
_TE_TO_LOCAL = {
    ".self_attention.linear_qkv.layer_norm_weight": ".input_layernorm.weight",
    ".mlp.linear_fc1.layer_norm_weight": ".pre_mlp_layernorm.weight",
    ".self_attention.linear_q_up_proj.layer_norm_weight": ".self_attention.q_layernorm.weight",
    ".self_attention.linear_kv_up_proj.layer_norm_weight": ".self_attention.kv_layernorm.weight",
}


def expert_layout(model: torch.nn.Module) -> tuple[int, int]:
    """(this rank's first global expert index, experts per rank) — (0, 0) for dense models."""
    experts = getattr(model.config, "num_moe_experts", None) or 0
    if not experts:
        return 0, 0
    from megatron.core import parallel_state as mpu

    local = experts // mpu.get_expert_model_parallel_world_size()
    return mpu.get_expert_model_parallel_rank() * local, local


def global_name(model: torch.nn.Module, local: str) -> str:
    """A parameter name with its global layer index (pipeline stage) and global expert index (EP)."""
    m = LAYER.match(local)
    if m:
        number = model.decoder.layers[int(m.group(1))].layer_number - 1
        local = f"decoder.layers.{number}." + local[m.end() :]
    first, _ = expert_layout(model)
    if first:
        local = LOCAL_EXPERT.sub(lambda e: f".experts.local_experts.{int(e.group(1)) + first}.", local)
        local = _GROUPED_EXPERT.sub(lambda e: f"{e.group(1)}{int(e.group(2)) + first}", local)
    return local


def canonical_name(name: str) -> str:
    """A Transformer Engine spec name (fused norms, grouped-GEMM experts) → the local spec's, which the
    adapters' ``from_hf`` produce; local names are returned unchanged."""
    for te, local in _TE_TO_LOCAL.items():
        if name.endswith(te):
            return name[: -len(te)] + local
    return _GROUPED_TO_LOCAL.sub(r".experts.local_experts.\2.linear_fc\1.weight", name)


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Global (canonical) name → this rank's parameter or persistent weight buffer (the router's expert
    bias); Transformer Engine ``_extra_state`` and bookkeeping buffers are left out."""
    out = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name.endswith("_extra_state") or name.endswith("local_tokens_per_expert"):
            continue
        if not isinstance(tensor, torch.Tensor):
            continue
        out[canonical_name(global_name(model, name))] = tensor
    return out


def gated_parameters(model: torch.nn.Module) -> set[int]:
    """``id`` of every parameter that stacks SwiGLU's two halves ``[gate; up]`` along dim 0: the first linear
    of every gated MLP — dense MLPs, shared experts, each local-spec routed expert and TE's grouped experts
    (``weight0 … weightN``) alike. Under tensor parallelism each rank holds ``[gate_r; up_r]``, so these
    are sliced and gathered per half (:func:`tp_shard`, :func:`tp_unshard`)."""
    gated = set()
    for module in model.modules():
        fc1 = getattr(module, "linear_fc1", None)
        config = getattr(module, "config", None)
        if fc1 is None or not getattr(config, "gated_linear_unit", False):
            continue
        for param in fc1.parameters(recurse=False):
            if getattr(param, "partition_dim", 0) == 0 and not _is_norm_weight(fc1, param):
                gated.add(id(param))
    return gated


def _is_norm_weight(linear: torch.nn.Module, param: torch.Tensor) -> bool:
    """TE's fused ``layer_norm_weight`` / ``layer_norm_bias`` live on the linear but are not gated."""
    return any(param is getattr(linear, n, None) for n in ("layer_norm_weight", "layer_norm_bias"))


def tp_shard(full: torch.Tensor, rank: int, size: int, dim: int, gated: bool) -> torch.Tensor:
    """Rank ``rank`` of ``size``'s slice of a full tensor along ``dim``; a gated one ([gate; up] on dim 0)
    gives ``[gate_r; up_r]``."""
    if size == 1:
        return full
    if gated:
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(size, dim=0)[rank], up.chunk(size, dim=0)[rank]], dim=0)
    return full.chunk(size, dim=dim)[rank]


def tp_unshard(shards: list[torch.Tensor], dim: int, gated: bool) -> torch.Tensor:
    """The full tensor from every rank's slice (the inverse of :func:`tp_shard`)."""
    if gated:
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(shards, dim=dim)

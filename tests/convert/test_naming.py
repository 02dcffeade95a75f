"""HF ⇄ Megatron naming and tensor-parallel layout (megatron_r1.convert.naming): which parameters hold
SwiGLU's [gate; up] halves is read from the model (dense MLP, shared expert, every routed expert), and
synthetic TP shards of each are reassembled into the full tensor — the MoE weight-sync bug was routed and
shared experts coming out as [g0; u0; g1; u1]."""

from __future__ import annotations

import pytest
import torch

from megatron_r1.config import ParallelConfig
from megatron_r1.convert.naming import canonical_name, gated_parameters, global_name, tp_shard, tp_unshard
from megatron_r1.models import build_model
from megatron_r1.models.hf import model_config_from_hf


def _gated_names(model) -> set[str]:
    gated = gated_parameters(model)
    return {canonical_name(global_name(model, n)) for n, p in model.named_parameters() if id(p) in gated}


def test_gated_parameters_cover_dense_shared_and_routed_experts(hf_models, world):
    cfg = model_config_from_hf(hf_models["deepseek_v3"])  # layer 0 dense, layer 1: 8 experts + shared
    model = build_model(cfg, ParallelConfig())
    expected = {
        "decoder.layers.0.mlp.linear_fc1.weight",
        "decoder.layers.1.mlp.shared_experts.linear_fc1.weight",
    }
    expected |= {f"decoder.layers.1.mlp.experts.local_experts.{e}.linear_fc1.weight" for e in range(8)}
    assert _gated_names(model) == expected
    # Every tensor-parallel first linear of an MLP is among them: nothing named linear_fc1 is missed.
    fc1 = {canonical_name(n) for n, p in model.named_parameters() if n.endswith("linear_fc1.weight")}
    assert fc1 == expected


def test_qwen3_moe_routed_experts_are_gated(hf_models, world):
    cfg = model_config_from_hf(hf_models["qwen3_moe"])
    model = build_model(cfg, ParallelConfig())
    names = _gated_names(model)
    assert names == {
        f"decoder.layers.{i}.mlp.experts.local_experts.{e}.linear_fc1.weight"
        for i in (0, 1)
        for e in range(4)
    }


@pytest.mark.parametrize("size", [2, 4])
def test_synthetic_tp_shards_reassemble(size):
    gen = torch.Generator().manual_seed(0)
    gate, up = torch.randn(8, 6, generator=gen), torch.randn(8, 6, generator=gen)
    full = torch.cat([gate, up])
    shards = [tp_shard(full, r, size, 0, gated=True) for r in range(size)]
    # Each rank holds its slice of both halves, as Megatron's ColumnParallelLinear of a gated MLP does.
    for r, shard in enumerate(shards):
        rows = slice(r * 8 // size, (r + 1) * 8 // size)
        assert torch.equal(shard, torch.cat([gate[rows], up[rows]]))
    assert torch.equal(tp_unshard(shards, 0, gated=True), full)
    # Gathered as a plain column-parallel weight, the halves interleave: the bug this guards against.
    assert not torch.equal(torch.cat(shards, dim=0), full)
    row_parallel = torch.randn(6, 8, generator=gen)
    pieces = [tp_shard(row_parallel, r, size, 1, gated=False) for r in range(size)]
    assert torch.equal(tp_unshard(pieces, 1, gated=False), row_parallel)

"""The planner's activation memory against what Megatron-Core's autograd graph really saves: the bytes of the
tensors one transformer layer keeps for its backward (local spec, bf16, CPU, one process)."""

from __future__ import annotations

import pytest
import torch

from megatron_r1.config import ModelConfig, ParallelConfig
from megatron_r1.plan.layout import Layout
from megatron_r1.plan.memory import layer_activation_bytes

BASE = dict(
    num_layers=2,
    hidden_size=64,
    ffn_hidden_size=96,
    num_attention_heads=4,
    num_query_groups=2,
    vocab_size=96,
    params_dtype="bfloat16",
)
MOE = dict(num_experts=4, moe_router_topk=2, moe_ffn_hidden_size=32)
CASES = {
    "qwen2": dict(preset="qwen2", add_qkv_bias=True),
    "qwen3": dict(preset="qwen3", qk_layernorm=True, kv_channels=24),
    "qwen3_moe": dict(preset="qwen3_moe", qk_layernorm=True, kv_channels=16, **MOE),
    "deepseek_v3": dict(
        preset="deepseek_v3",
        num_query_groups=4,
        multi_latent_attention=True,
        qk_layernorm=True,
        q_lora_rank=32,
        kv_lora_rank=16,
        qk_head_dim=16,
        qk_pos_emb_head_dim=8,
        v_head_dim=16,
        moe_shared_expert_intermediate_size=32,
        moe_first_k_dense=1,
        moe_router_score_function="sigmoid",
        moe_router_enable_expert_bias=True,
        **MOE,
    ),
}


@pytest.fixture(scope="module")
def world():
    from megatron_r1.parallel import init_distributed

    return init_distributed(ParallelConfig())


def saved_bytes(model, layer, tokens: torch.Tensor) -> int:
    """Bytes of the distinct non-parameter storages autograd saves while ``layer`` runs forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in params:
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    pre = layer.register_forward_pre_hook(lambda *_: hooks.__enter__())
    post = layer.register_forward_hook(lambda *_: hooks.__exit__(None, None, None))
    positions = torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)
    model(tokens, positions, attention_mask=None)
    pre.remove()
    post.remove()
    return sum(seen.values())


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seq", [32, 96])
def test_planned_activations_match_saved_tensors(world, case, seq):
    from megatron_r1.models import build_model

    cfg = ModelConfig(**(BASE | CASES[case]))
    model = build_model(cfg, ParallelConfig())
    index = cfg.num_layers - 1  # the MoE layer where there is one
    batch = 2
    measured = saved_bytes(model, model.decoder.layers[index], torch.randint(0, cfg.vocab_size, (batch, seq)))
    layout = Layout(1, 1, 1, 1, 1, 1, 1, 1, False, 1, 1)
    planned = layer_activation_bytes(cfg, index, layout, batch * seq, seq, fp8=False, te=False)
    # What the planner leaves out is per sequence, not per token (the causal mask, RoPE's cos / sin).
    assert planned == pytest.approx(measured, rel=0.06)
    assert planned <= measured

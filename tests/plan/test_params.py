"""The planner's parameter counts equal the numel of the Megatron-Core model each family builds."""

from __future__ import annotations

import pytest

from megatron_r1.config import ModelConfig, ParallelConfig
from megatron_r1.plan.params import model_params

BASE = dict(
    num_layers=3, hidden_size=64, ffn_hidden_size=96, num_attention_heads=4, num_query_groups=2, vocab_size=96
)
MOE = dict(num_experts=4, moe_router_topk=2, moe_ffn_hidden_size=32)
MLA = dict(
    num_query_groups=4,
    multi_latent_attention=True,
    qk_layernorm=True,
    kv_lora_rank=16,
    qk_head_dim=16,
    qk_pos_emb_head_dim=8,
    v_head_dim=16,
    moe_shared_expert_intermediate_size=32,
    moe_first_k_dense=1,
    moe_router_score_function="sigmoid",
    moe_router_enable_expert_bias=True,
)
CASES = {
    "tiny": dict(preset="tiny"),
    "llama-tied": dict(preset="llama", tie_word_embeddings=True),
    "qwen2": dict(preset="qwen2", add_qkv_bias=True),
    "qwen3": dict(preset="qwen3", qk_layernorm=True, kv_channels=24),
    "qwen3_moe": dict(preset="qwen3_moe", qk_layernorm=True, kv_channels=16, **MOE),
    "deepseek_v3": dict(preset="deepseek_v3", q_lora_rank=32, **MOE, **MLA),
    "deepseek_v3-no-q-lora": dict(preset="deepseek_v3", q_lora_rank=None, **MOE, **MLA),
}


def test_every_registered_family_has_a_case():
    from megatron_r1.models import families

    assert set(families()) <= {case.split("-")[0] for case in CASES}


@pytest.fixture(scope="module")
def world():
    from megatron_r1.parallel import init_distributed

    return init_distributed(ParallelConfig())


@pytest.mark.parametrize("case", sorted(CASES))
def test_param_count_equals_built_model(world, case):
    from megatron_r1.models import build_model

    cfg = ModelConfig(**(BASE | CASES[case]))
    model = build_model(cfg, ParallelConfig())
    built = sum(p.numel() for p in model.parameters())
    predicted = model_params(cfg)
    assert predicted.total == built, f"{case}: predicted {predicted.total}, built {built}"
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert predicted.experts == experts
    assert predicted.active < predicted.total if cfg.num_experts else predicted.active <= predicted.total

"""Model families: registry, reading HF config.json into a ModelConfig, TransformerConfigs at full scale."""

from __future__ import annotations

import json

import pytest

from megatron_r1.config import ConfigError, ParallelConfig
from megatron_r1.convert import get_adapter
from megatron_r1.models import families, family_for_architecture, get_family
from megatron_r1.models.hf import model_config_from_hf

DEEPSEEK_V3_671B = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 61,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "q_lora_rank": 1536,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "num_experts_per_tok": 8,
    "n_group": 8,
    "topk_group": 4,
    "routed_scaling_factor": 2.5,
    "first_k_dense_replace": 3,
    "vocab_size": 129280,
    "max_position_embeddings": 163840,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000,
    "rope_scaling": {
        "type": "yarn",
        "factor": 40,
        "original_max_position_embeddings": 4096,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    },
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def test_all_families_registered_with_adapters():
    names = families()
    for name in ("tiny", "llama", "qwen2", "qwen3", "qwen3_moe", "deepseek_v3"):
        assert name in names
        assert get_adapter(name).name == name
    assert family_for_architecture("Qwen3MoeForCausalLM").name == "qwen3_moe"


def test_unknown_preset_and_adapter_errors():
    with pytest.raises(ConfigError, match="did you mean 'qwen3'"):
        get_family("qwen4")
    with pytest.raises(ConfigError, match="supported: tiny, llama"):
        get_adapter("gpt2")


def test_deepseek_v3_671b_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(DEEPSEEK_V3_671B))
    cfg = model_config_from_hf(tmp_path)
    assert cfg.preset == "deepseek_v3" and cfg.params_dtype == "bfloat16"
    assert (cfg.num_experts, cfg.moe_router_topk, cfg.moe_first_k_dense) == (256, 8, 3)
    assert cfg.moe_shared_expert_intermediate_size == 2048
    assert (cfg.moe_router_num_groups, cfg.moe_router_group_topk) == (8, 4)
    assert cfg.rope_scaling_factor == 40.0 and cfg.rope_mscale_all_dim == 1.0
    tcfg = get_family(cfg.preset).transformer_config(cfg, ParallelConfig())
    assert tcfg.multi_latent_attention and tcfg.rope_type == "yarn"
    assert tcfg.moe_layer_freq[:4] == [0, 0, 0, 1] and len(tcfg.moe_layer_freq) == 61
    assert tcfg.moe_router_score_function == "sigmoid" and tcfg.moe_router_enable_expert_bias
    assert (tcfg.q_lora_rank, tcfg.kv_lora_rank, tcfg.qk_pos_emb_head_dim) == (1536, 512, 64)


def test_qwen_configs(tmp_path):
    base = {
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "rope_theta": 1000000,
        "tie_word_embeddings": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(base | {"architectures": ["Qwen3ForCausalLM"]}))
    cfg = model_config_from_hf(tmp_path)
    assert cfg.preset == "qwen3" and cfg.qk_layernorm and not cfg.add_qkv_bias and cfg.kv_channels == 128
    assert get_family("qwen3").transformer_config(cfg, ParallelConfig()).qk_layernorm
    (tmp_path / "config.json").write_text(json.dumps(base | {"architectures": ["Qwen2ForCausalLM"]}))
    assert model_config_from_hf(tmp_path).add_qkv_bias
    moe = base | {
        "architectures": ["Qwen3MoeForCausalLM"],
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 768,
        "norm_topk_prob": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(moe))
    cfg = model_config_from_hf(tmp_path)
    assert (cfg.preset, cfg.num_experts, cfg.moe_ffn_hidden_size) == ("qwen3_moe", 128, 768)
    assert not cfg.moe_router_pre_softmax


def test_missing_config_json(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        model_config_from_hf(tmp_path)


def test_unsupported_features_are_refused(tmp_path):
    llama31 = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 96,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0},
        "mlp_bias": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(llama31))
    with pytest.raises(ConfigError, match="unsupported rope scaling 'llama3', mlp_bias"):
        model_config_from_hf(tmp_path)


def test_transformer_engine_names_map_to_local_names():
    from megatron_r1.convert.checkpoint import canonical_name

    assert canonical_name("decoder.layers.3.self_attention.linear_qkv.layer_norm_weight") == (
        "decoder.layers.3.input_layernorm.weight"
    )
    assert canonical_name("decoder.layers.3.mlp.linear_fc1.layer_norm_weight") == (
        "decoder.layers.3.pre_mlp_layernorm.weight"
    )
    assert canonical_name("decoder.layers.1.self_attention.linear_kv_up_proj.layer_norm_weight") == (
        "decoder.layers.1.self_attention.kv_layernorm.weight"
    )
    assert canonical_name("decoder.layers.1.mlp.experts.linear_fc2.weight7") == (
        "decoder.layers.1.mlp.experts.local_experts.7.linear_fc2.weight"
    )
    assert canonical_name("decoder.final_layernorm.weight") == "decoder.final_layernorm.weight"

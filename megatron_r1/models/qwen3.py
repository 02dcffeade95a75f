"""Qwen3 dense family: the Llama shape plus an RMSNorm on every query / key head (``qk_layernorm``), no QKV
bias, an explicit ``head_dim`` that need not equal hidden_size / heads."""

from __future__ import annotations

from megatron_r1.config import ModelConfig, ParallelConfig
from megatron_r1.models import Family, register_family
from megatron_r1.models.dense import dense_from_hf_config, dense_transformer_config, have_transformer_engine


def qwen3_transformer_config(cfg: ModelConfig, parallel: ParallelConfig):
    """The dense TransformerConfig with per-head query/key RMSNorm switched on."""
    tcfg = dense_transformer_config(cfg, parallel)
    tcfg.qk_layernorm = True
    return tcfg


def qwen3_layer_spec(tcfg):
    from megatron.core.models.gpt import gpt_layer_specs

    if have_transformer_engine(tcfg):
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    return gpt_layer_specs.get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")


def qwen3_from_hf_config(hf: dict) -> dict:
    """ModelConfig fields from a Qwen3 ``config.json``."""
    return dense_from_hf_config(hf) | {
        "qk_layernorm": True,
        "add_qkv_bias": bool(hf.get("attention_bias", False)),
    }


register_family(
    Family(
        "qwen3",
        qwen3_transformer_config,
        qwen3_layer_spec,
        qwen3_from_hf_config,
        ("Qwen3ForCausalLM",),
    )
)

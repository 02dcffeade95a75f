"""config.json built from ModelConfig fields (``convert/hf_config.py``) reads back, through the families'
``from_hf_config``, as the same ModelConfig: no field is lost or changed on the way out, for every preset."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from megatron_r1.config import ConfigError, ModelConfig, load_config
from megatron_r1.convert.hf_config import hf_config_for, hf_config_from_model_config
from megatron_r1.models import families
from megatron_r1.models.hf import model_config_from_hf

DEMO = Path(__file__).resolve().parents[2] / "examples" / "configs" / "tiny_deepseek_v3_cpu.yaml"
YARN = dict(
    rope_scaling_factor=4.0,
    rope_original_max_position_embeddings=16,
    rope_beta_fast=16.0,
    rope_mscale=0.5,
    rope_mscale_all_dim=1.0,
)


def _cases() -> dict[str, ModelConfig]:
    demo = dataclasses.replace(load_config(DEMO).model, vocab_size=96)
    return {
        "tiny": ModelConfig(vocab_size=96, rotary_base=5e5, norm_epsilon=1e-5),
        "llama": ModelConfig(preset="llama", vocab_size=96, num_layers=3, max_position_embeddings=128),
        "qwen2": ModelConfig(preset="qwen2", vocab_size=96, add_qkv_bias=True, tie_word_embeddings=True),
        "qwen3": ModelConfig(preset="qwen3", vocab_size=96, qk_layernorm=True, kv_channels=24),
        "qwen3_moe": ModelConfig(
            preset="qwen3_moe",
            vocab_size=96,
            num_layers=3,
            num_experts=4,
            moe_router_topk=1,
            moe_ffn_hidden_size=32,
            moe_first_k_dense=1,
            params_dtype="bfloat16",
        ),
        "deepseek_v3": demo,
        "deepseek_v3_yarn": dataclasses.replace(demo, **YARN),
    }


def _resolved(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with the defaults a config.json spells out (None → the value the model is built with)."""
    if cfg.preset == "deepseek_v3":  # MLA: head sizes are qk_head_dim / v_head_dim, kv_channels unused
        scaling = cfg.moe_router_topk_scaling_factor or 1.0
        return dataclasses.replace(cfg, moe_router_topk_scaling_factor=scaling)
    return dataclasses.replace(
        cfg,
        preset="llama" if cfg.preset == "tiny" else cfg.preset,  # the tiny preset is a Llama
        kv_channels=cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads,
        qk_layernorm=cfg.qk_layernorm or cfg.preset == "qwen3_moe",  # Qwen3-MoE always normalises q / k
    )


def test_every_family_has_a_case() -> None:
    """A new family fails here until it has a case below (and so a config.json builder)."""
    assert set(families()) <= set(_cases())


@pytest.mark.parametrize("case", list(_cases()))
def test_config_json_reads_back_as_the_model_config(case: str, tmp_path) -> None:
    cfg = _cases()[case]
    (tmp_path / "config.json").write_text(json.dumps(hf_config_for(cfg)))
    back = dataclasses.replace(model_config_from_hf(tmp_path), hf_path=None)
    assert dataclasses.asdict(back) == dataclasses.asdict(_resolved(cfg))


def test_unknown_preset_and_inexpressible_fields_are_one_line() -> None:
    with pytest.raises(ConfigError, match=r"model.preset=mixtral: no builder \(have: deepseek_v3, llama"):
        hf_config_from_model_config(ModelConfig(preset="mixtral"))
    with pytest.raises(ConfigError, match="model.preset=llama: .* model.add_qkv_bias"):
        hf_config_from_model_config(ModelConfig(preset="llama", add_qkv_bias=True))

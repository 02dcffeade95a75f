"""A transformers ``config.json`` for any :class:`ModelConfig`: the inverse of ``Family.from_hf_config``.

The one builder of config.json dicts from ModelConfig fields, for every preset (one function per preset in
a registry). Its users: the exporter (``convert megatron-to-hf`` of a policy trained from config fields,
without a HF origin), the rollout engine hosting transformers' classes (``rollout/hf_model.py``) and the
directory handed to vLLM (``rollout/hf_dir.py``). Fields transformers' class cannot express (and would
therefore compute differently from the trainer) raise ``ConfigError`` naming them.
"""

from __future__ import annotations

from collections.abc import Callable

from megatron_r1.config import ConfigError, ModelConfig

__all__ = ["hf_config_for", "hf_config_from_model_config", "register_hf_config"]

_BUILDERS: dict[str, Callable[[ModelConfig], dict]] = {}
HFConfigBuilder = Callable[[ModelConfig], dict]


def register_hf_config(preset: str) -> Callable[[HFConfigBuilder], HFConfigBuilder]:
    """Decorator: ``hf_config_for`` builds presets ``preset``'s config.json with the decorated function."""

    def decorator(fn: HFConfigBuilder) -> HFConfigBuilder:
        _BUILDERS[preset] = fn
        return fn

    return decorator


def hf_config_for(cfg: ModelConfig) -> dict:
    """The config.json dict of ``cfg``: the HF directory's own when ``cfg.hf_path`` is set, else built from
    the fields (:func:`hf_config_from_model_config`)."""
    if cfg.hf_path:
        from megatron_r1.models.hf import read_hf_config

        return read_hf_config(cfg.hf_path)
    return hf_config_from_model_config(cfg)


def hf_config_from_model_config(cfg: ModelConfig) -> dict:
    """The config.json dict built from ``cfg``'s fields (``hf_path`` ignored); ``ConfigError`` for a preset
    without a builder or fields transformers cannot express."""
    builder = _BUILDERS.get(cfg.preset)
    if builder is None:
        raise ConfigError(
            f"cannot generate config.json for model.preset={cfg.preset}: no builder "
            f"(have: {', '.join(sorted(_BUILDERS))}); pass the original HF directory"
        )
    return builder(cfg)


_DENSE = {
    "tiny": ("LlamaForCausalLM", "llama"),
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
}


def dense_hf_config(cfg: ModelConfig) -> dict:
    """Llama / Qwen2 / Qwen3 (tiny exports as Llama)."""
    architecture, model_type = _DENSE[cfg.preset]
    if cfg.add_qkv_bias and cfg.preset != "qwen2":
        _refuse(cfg, ["model.add_qkv_bias (only Qwen2 has a QKV bias)"])
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_query_groups,
        "head_dim": cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": cfg.rotary_base,
        "rms_norm_eps": cfg.norm_epsilon,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "torch_dtype": cfg.params_dtype,
    }


for _preset in _DENSE:
    register_hf_config(_preset)(dense_hf_config)


def _common(cfg: ModelConfig) -> dict:
    return {
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.norm_epsilon,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "hidden_act": "silu",
        "torch_dtype": cfg.params_dtype,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }


def _refuse(cfg: ModelConfig, problems: list[str]) -> None:
    if problems:
        problems_line = "; ".join(problems)
        raise ConfigError(f"model.preset={cfg.preset}: transformers' model cannot express {problems_line}")


@register_hf_config("qwen3_moe")
def qwen3_moe_hf_config(cfg: ModelConfig) -> dict:
    """Qwen3-MoE: softmax router (``norm_topk_prob`` = top-k renormalised = not pre-softmax), q/k norms."""
    problems = []
    if cfg.moe_router_score_function != "softmax":
        problems.append(f"model.moe_router_score_function={cfg.moe_router_score_function} (softmax only)")
    if cfg.moe_shared_expert_intermediate_size:
        problems.append("model.moe_shared_expert_intermediate_size (no shared expert)")
    if cfg.moe_router_enable_expert_bias or cfg.moe_router_num_groups:
        problems.append("model.moe_router_enable_expert_bias / moe_router_num_groups")
    if cfg.moe_router_topk_scaling_factor not in (None, 1.0):
        problems.append(f"model.moe_router_topk_scaling_factor={cfg.moe_router_topk_scaling_factor}")
    _refuse(cfg, problems)
    return _common(cfg) | {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "num_key_value_heads": cfg.num_query_groups,
        "head_dim": cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads,
        "rope_theta": cfg.rotary_base,
        "attention_bias": cfg.add_qkv_bias,
        "num_experts": cfg.num_experts,
        "num_experts_per_tok": cfg.moe_router_topk,
        "moe_intermediate_size": cfg.moe_ffn_hidden_size or cfg.ffn_hidden_size,
        "norm_topk_prob": not cfg.moe_router_pre_softmax,
        "decoder_sparse_step": 1,
        "mlp_only_layers": list(range(cfg.moe_first_k_dense)),
    }


@register_hf_config("deepseek_v3")
def deepseek_v3_hf_config(cfg: ModelConfig) -> dict:
    """DeepSeek-V3: MLA (YaRN when ``rope_scaling_factor`` != 1), sigmoid group-limited router, shared
    experts, the first k layers dense."""
    moe_ffn = cfg.moe_ffn_hidden_size or cfg.ffn_hidden_size
    shared = cfg.moe_shared_expert_intermediate_size or 0
    groups, group_topk = cfg.moe_router_num_groups or 1, cfg.moe_router_group_topk or 1
    problems = []
    if cfg.moe_router_score_function != "sigmoid":
        problems.append(f"model.moe_router_score_function={cfg.moe_router_score_function} (sigmoid only)")
    if shared % moe_ffn:
        problems.append(
            f"model.moe_shared_expert_intermediate_size={shared} not a multiple of "
            f"model.moe_ffn_hidden_size={moe_ffn} (n_shared_experts)"
        )
    if cfg.moe_router_num_groups and cfg.moe_router_topk != 2 * group_topk:
        # transformers scores a group by its top-2 experts; Megatron by its top (topk / group_topk).
        problems.append(
            f"model.moe_router_topk={cfg.moe_router_topk} with model.moe_router_group_topk={group_topk} "
            "(a group is scored by its top-2 experts: topk must be 2 × group_topk)"
        )
    _refuse(cfg, problems)
    rope: dict = {"rope_type": "default", "rope_theta": cfg.rotary_base}
    if cfg.rope_scaling_factor != 1.0:
        rope = {
            "rope_type": "yarn",
            "rope_theta": cfg.rotary_base,
            "factor": cfg.rope_scaling_factor,
            "original_max_position_embeddings": cfg.rope_original_max_position_embeddings,
            "beta_fast": cfg.rope_beta_fast,
            "beta_slow": cfg.rope_beta_slow,
            "mscale": cfg.rope_mscale,
            "mscale_all_dim": cfg.rope_mscale_all_dim,
        }
    return _common(cfg) | {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "num_key_value_heads": cfg.num_attention_heads,
        "q_lora_rank": cfg.q_lora_rank,
        "kv_lora_rank": cfg.kv_lora_rank,
        "qk_nope_head_dim": cfg.qk_head_dim,
        "qk_rope_head_dim": cfg.qk_pos_emb_head_dim,
        "v_head_dim": cfg.v_head_dim,
        "rope_parameters": rope,
        "rope_scaling": rope,
        "attention_bias": False,
        "n_routed_experts": cfg.num_experts,
        "num_experts_per_tok": cfg.moe_router_topk,
        "moe_intermediate_size": moe_ffn,
        "n_shared_experts": shared // moe_ffn,
        "first_k_dense_replace": cfg.moe_first_k_dense,
        "n_group": groups,
        "topk_group": group_topk,
        "norm_topk_prob": cfg.moe_router_topk > 1,
        "routed_scaling_factor": cfg.moe_router_topk_scaling_factor or 1.0,
    }

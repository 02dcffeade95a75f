"""DeepSeek-V3 family: multi-head latent attention (MLA, YaRN RoPE) and DeepSeekMoE (sigmoid router with
aux-loss-free expert bias, group-limited routing, a shared expert, the first k layers dense).

Built on ``MLATransformerConfig``. The local MLA spec builds Megatron's local ``DotProductAttention`` with
``k_channels`` / ``v_channels`` keywords it does not accept (and sizes its output by ``kv_channels``); on the
local spec the core attention is :class:`MLADotProductAttention`, which takes them.
"""

from __future__ import annotations

from megatron_r1.config import ModelConfig, ParallelConfig
from megatron_r1.models import Family, register_family
from megatron_r1.models.dense import have_transformer_engine
from megatron_r1.models.moe import moe_config_kwargs, moe_layer_spec


def _mla_dot_product_attention():
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    class MLADotProductAttention(DotProductAttention):
        """Local DotProductAttention for MLA: query/key heads of ``k_channels``, value heads of
        ``v_channels`` (the forward already handles unequal head sizes; only the output width differs)."""

        def __init__(self, *args, k_channels: int | None = None, v_channels: int | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            if v_channels is not None:
                self.hidden_size_per_partition = v_channels * self.num_attention_heads_per_partition

    return MLADotProductAttention


def deepseek_v3_layer_spec(tcfg):
    """The MoE block spec; on the local spec, MLA's core attention is :class:`MLADotProductAttention`."""
    spec = moe_layer_spec(tcfg)
    if not have_transformer_engine(tcfg):
        core = _mla_dot_product_attention()
        for layer in spec.layer_specs:
            layer.submodules.self_attention.submodules.core_attention = core
    return spec


def deepseek_v3_transformer_config(cfg: ModelConfig, parallel: ParallelConfig):
    from megatron.core.transformer.transformer_config import MLATransformerConfig

    kwargs = moe_config_kwargs(cfg, parallel)
    kwargs.pop("kv_channels", None)
    yarn = cfg.rope_scaling_factor != 1.0
    kwargs.update(
        multi_latent_attention=True,
        q_lora_rank=cfg.q_lora_rank,
        kv_lora_rank=cfg.kv_lora_rank,
        qk_head_dim=cfg.qk_head_dim,
        qk_pos_emb_head_dim=cfg.qk_pos_emb_head_dim,
        v_head_dim=cfg.v_head_dim,
        qk_layernorm=True,  # the q_a / kv_a RMSNorms of the latent projections
        rope_type="yarn" if yarn else "rope",
        rotary_base=cfg.rotary_base,
        rotary_scaling_factor=cfg.rope_scaling_factor,
        original_max_position_embeddings=cfg.rope_original_max_position_embeddings,
        beta_fast=cfg.rope_beta_fast,
        beta_slow=cfg.rope_beta_slow,
        mscale=cfg.rope_mscale,
        mscale_all_dim=cfg.rope_mscale_all_dim,
    )
    return MLATransformerConfig(**kwargs)


def deepseek_v3_from_hf_config(hf: dict) -> dict:
    """ModelConfig fields from a DeepSeek-V3 ``config.json``."""
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    base = dense_fields(hf)
    fields = base | {
        "multi_latent_attention": True,
        "qk_layernorm": True,  # the q_a / kv_a RMSNorms of the latent projections
        "num_query_groups": hf["num_attention_heads"],  # MLA keys/values have every head
        "q_lora_rank": hf.get("q_lora_rank"),
        "kv_lora_rank": hf["kv_lora_rank"],
        "qk_head_dim": hf["qk_nope_head_dim"],
        "qk_pos_emb_head_dim": hf["qk_rope_head_dim"],
        "v_head_dim": hf["v_head_dim"],
        "num_experts": hf["n_routed_experts"],
        "moe_router_topk": hf["num_experts_per_tok"],
        "moe_ffn_hidden_size": hf["moe_intermediate_size"],
        "moe_shared_expert_intermediate_size": (hf.get("n_shared_experts") or 0) * hf["moe_intermediate_size"]
        or None,
        "moe_first_k_dense": hf.get("first_k_dense_replace", 0),
        "moe_router_score_function": "sigmoid",
        "moe_router_topk_scaling_factor": hf.get("routed_scaling_factor", 1.0),
        "moe_router_num_groups": hf.get("n_group"),
        "moe_router_group_topk": hf.get("topk_group"),
        "moe_router_enable_expert_bias": True,
    }
    if rope.get("rope_type", rope.get("type")) == "yarn":
        fields |= {
            "rope_scaling_factor": float(rope["factor"]),
            "rope_original_max_position_embeddings": rope["original_max_position_embeddings"],
            "rope_beta_fast": float(rope.get("beta_fast", 32)),
            "rope_beta_slow": float(rope.get("beta_slow", 1)),
            "rope_mscale": float(rope.get("mscale", 1.0)),
            "rope_mscale_all_dim": float(rope.get("mscale_all_dim", 0.0)),
        }
    return fields


def dense_fields(hf: dict) -> dict:
    from megatron_r1.models.dense import dense_from_hf_config

    fields = dense_from_hf_config(hf)
    fields.pop("kv_channels")
    return fields


register_family(
    Family(
        "deepseek_v3",
        deepseek_v3_transformer_config,
        deepseek_v3_layer_spec,
        deepseek_v3_from_hf_config,
        ("DeepseekV3ForCausalLM",),
    )
)

"""Mixture-of-experts families on Megatron-Core's MoE layer: Qwen3-MoE, and the shared builder DeepSeek-V3
uses.

Routed experts are Megatron's ``SequentialMLP`` on the local spec (one ``linear_fc1`` / ``linear_fc2`` per
expert, which is also how the adapters store them on disk) and TE's grouped GEMM on the TE spec. The token
dispatcher is ``allgather`` without CUDA (the alltoall dispatcher needs CUDA streams) and ``alltoall`` on GPU.
``moe_first_k_dense`` keeps the first layers dense through ``moe_layer_freq``.
"""

from __future__ import annotations

import dataclasses

from megatron_r1.config import ModelConfig, ParallelConfig
from megatron_r1.models import Family, register_family
from megatron_r1.models.dense import (
    dense_from_hf_config,
    dense_transformer_config,
    have_transformer_engine,
    on_gpu,
)


def moe_config_kwargs(cfg: ModelConfig, parallel: ParallelConfig) -> dict:
    """TransformerConfig keyword arguments: the dense ones plus the MoE and qk-norm fields of ``cfg``."""
    from megatron.core.transformer import TransformerConfig

    dense = dense_transformer_config(cfg, parallel)
    kwargs = {f.name: getattr(dense, f.name) for f in dataclasses.fields(TransformerConfig) if f.init}
    kwargs["qk_layernorm"] = cfg.qk_layernorm
    if cfg.num_experts:
        kwargs.update(
            num_moe_experts=cfg.num_experts,
            moe_router_topk=cfg.moe_router_topk,
            moe_ffn_hidden_size=cfg.moe_ffn_hidden_size or cfg.ffn_hidden_size,
            moe_shared_expert_intermediate_size=cfg.moe_shared_expert_intermediate_size,
            moe_layer_freq=[0] * cfg.moe_first_k_dense + [1] * (cfg.num_layers - cfg.moe_first_k_dense),
            moe_router_score_function=cfg.moe_router_score_function,
            moe_router_pre_softmax=cfg.moe_router_pre_softmax,
            moe_router_topk_scaling_factor=cfg.moe_router_topk_scaling_factor,
            moe_router_num_groups=cfg.moe_router_num_groups,
            moe_router_group_topk=cfg.moe_router_group_topk,
            moe_router_enable_expert_bias=cfg.moe_router_enable_expert_bias,
            moe_router_load_balancing_type="aux_loss" if cfg.moe_aux_loss_coeff else "none",
            moe_aux_loss_coeff=cfg.moe_aux_loss_coeff,
            # The alltoall dispatcher needs CUDA streams: allgather when the model is built on the CPU.
            moe_token_dispatcher_type="alltoall" if on_gpu(dense) else "allgather",
            moe_grouped_gemm=have_transformer_engine(dense),
            expert_model_parallel_size=getattr(parallel, "expert_parallel", 1),
        )
    return kwargs


def moe_transformer_config(cfg: ModelConfig, parallel: ParallelConfig):
    from megatron.core.transformer import TransformerConfig

    return TransformerConfig(**moe_config_kwargs(cfg, parallel))


def qwen3_moe_transformer_config(cfg: ModelConfig, parallel: ParallelConfig):
    """Qwen3-MoE always normalises every query / key head (``q_norm`` / ``k_norm``), as the dense Qwen3
    family does: a preset built from fields without ``qk_layernorm`` would be a model transformers'
    Qwen3-MoE (the in-process rollout engine, checkpoints) cannot express."""
    return moe_transformer_config(dataclasses.replace(cfg, qk_layernorm=True), parallel)


def moe_layer_spec(tcfg):
    """Decoder block spec (dense and MoE layers as ``moe_layer_freq`` says)."""
    from megatron.core.models.gpt import gpt_layer_specs

    use_te = have_transformer_engine(tcfg)
    return gpt_layer_specs.get_gpt_decoder_block_spec(
        tcfg, use_transformer_engine=use_te, normalization=None if use_te else "RMSNorm"
    )


def qwen3_moe_from_hf_config(hf: dict) -> dict:
    """ModelConfig fields from a Qwen3-MoE ``config.json`` (softmax router; every layer sparse, or the first k
    dense through ``mlp_only_layers = [0, .., k-1]``, what ``moe_first_k_dense`` exports as)."""
    sparse_step = hf.get("decoder_sparse_step", 1)
    dense_layers = list(hf.get("mlp_only_layers") or [])
    if sparse_step != 1 or dense_layers != list(range(len(dense_layers))):
        from megatron_r1.config import ConfigError

        raise ConfigError(
            f"Qwen3-MoE with decoder_sparse_step={sparse_step}, mlp_only_layers={dense_layers} is not "
            "supported (sparse step 1; dense layers only as a prefix 0..k-1)"
        )
    return dense_from_hf_config(hf) | {
        "moe_first_k_dense": len(dense_layers),
        "qk_layernorm": True,
        "add_qkv_bias": bool(hf.get("attention_bias", False)),
        "num_experts": hf.get("num_experts") or hf["num_local_experts"],
        "moe_router_topk": hf["num_experts_per_tok"],
        "moe_ffn_hidden_size": hf["moe_intermediate_size"],
        "moe_router_score_function": "softmax",
        # norm_topk_prob: top-k of the logits, softmax over those k == renormalised top-k of the softmax.
        "moe_router_pre_softmax": not hf.get("norm_topk_prob", True),
    }


register_family(
    Family(
        "qwen3_moe",
        qwen3_moe_transformer_config,
        moe_layer_spec,
        qwen3_moe_from_hf_config,
        ("Qwen3MoeForCausalLM",),
    )
)

"""Dense decoder families on Megatron-Core: tiny (the demo), Llama-3 / SmolLM2, Qwen2 / Qwen2.5.

All share one shape — RMSNorm, RoPE, GQA, SwiGLU, no linear biases — and differ in QKV bias (Qwen2) and
defaults. The Transformer Engine layer spec is used when TE imports (GPU clusters, FP8), the local spec
otherwise (CPU, tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megatron_r1.config import ModelConfig, ParallelConfig
from megatron_r1.models import Family, register_family

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def on_gpu(tcfg) -> bool:
    """Whether the model of this TransformerConfig is built on the GPU (``use_cpu_initialization`` is set
    from the run's chosen device in :func:`dense_transformer_config`)."""
    return not tcfg.use_cpu_initialization


def transformer_engine_importable() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def have_transformer_engine(tcfg) -> bool:
    """Transformer Engine layers: only when TE imports and the model is built on the GPU."""
    return on_gpu(tcfg) and transformer_engine_importable()


def fp8_kwargs(cfg: ModelConfig, gpu: bool) -> dict:
    """TransformerConfig FP8 fields (``fp8``, ``fp8_recipe``: the same names in megatron-core 0.16.1 and
    in Megatron-LM's newer transformer_config.py). TE keeps the bf16 weights as the parameters and casts
    them for its GEMMs, so the weights synced to the rollout engine are the bf16 ones the FP8 GEMMs were cast
    from. Refused without Transformer Engine."""
    if cfg.fp8 == "off":
        return {}
    if not (gpu and transformer_engine_importable()):
        from megatron_r1.config import ConfigError

        raise ConfigError(
            f"model.fp8={cfg.fp8} needs Transformer Engine on a GPU (transformer_engine is not importable "
            "here or there is no CUDA); set model.fp8=off"
        )
    return {"fp8": cfg.fp8, "fp8_recipe": cfg.fp8_recipe}


def dense_transformer_config(cfg: ModelConfig, parallel: ParallelConfig):
    from megatron.core.transformer import TransformerConfig

    from megatron_r1.parallel import uses_cuda

    dtype = DTYPES[cfg.params_dtype]
    gpu = uses_cuda(parallel)
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        kv_channels=cfg.kv_channels,
        tensor_model_parallel_size=parallel.tensor_parallel,
        pipeline_model_parallel_size=parallel.pipeline_parallel,
        # Megatron refuses SP without TP; at TP = 1 it would change nothing, so it is simply off.
        sequence_parallel=getattr(parallel, "sequence_parallel", False) and parallel.tensor_parallel > 1,
        context_parallel_size=getattr(parallel, "context_parallel", 1),
        normalization="RMSNorm",
        layernorm_epsilon=cfg.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=cfg.add_qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=cfg.init_std,
        params_dtype=dtype,
        bf16=dtype is torch.bfloat16,
        fp16=dtype is torch.float16,
        pipeline_dtype=dtype,
        use_cpu_initialization=not gpu,
        perform_initialization=True,
        # Fusions need CUDA kernels (apex / TE); the unfused paths are numerically the reference.
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        cross_entropy_loss_fusion=False,
        # The losses divide by global token / sequence counts themselves: gradients are summed, never
        # averaged, over micro-batches and DP ranks. Read when modules are built (the MoE router keeps its
        # own copy, which scales the aux loss per token; Megatron's DDP picks its gradient scaling from it),
        # so it must be set here, before GPTModel, not on the built model.
        calculate_per_token_loss=True,
        **fp8_kwargs(cfg, gpu),
    )


def dense_layer_spec(tcfg):
    from megatron.core.models.gpt import gpt_layer_specs

    if have_transformer_engine(tcfg):
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    return gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")


def dense_from_hf_config(hf: dict) -> dict:
    """ModelConfig fields from a Llama / Qwen2 ``config.json``."""
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    return {
        "num_layers": hf["num_hidden_layers"],
        "hidden_size": hf["hidden_size"],
        "ffn_hidden_size": hf["intermediate_size"],
        "num_attention_heads": heads,
        "num_query_groups": hf.get("num_key_value_heads") or heads,
        "kv_channels": head_dim,
        "vocab_size": hf["vocab_size"],
        "max_position_embeddings": hf.get("max_position_embeddings", 4096),
        "rotary_base": float(hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta", 1e4))),
        "norm_epsilon": hf.get("rms_norm_eps", 1e-6),
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
    }


def _qwen2_from_hf_config(hf: dict) -> dict:
    return dense_from_hf_config(hf) | {"add_qkv_bias": True}


register_family(Family("tiny", dense_transformer_config, dense_layer_spec, dense_from_hf_config))
register_family(
    Family(
        "llama",
        dense_transformer_config,
        dense_layer_spec,
        dense_from_hf_config,
        ("LlamaForCausalLM", "MistralForCausalLM"),
    )
)
register_family(
    Family(
        "qwen2",
        dense_transformer_config,
        dense_layer_spec,
        _qwen2_from_hf_config,
        ("Qwen2ForCausalLM",),
    )
)

"""Which in-process model runs each family in the engine the trainer ships with (``rollout.engine=native``).

Two backends, chosen per model preset (a registry; a new family registers its own):

- ``native``: the hand-written Llama/Qwen decoder of ``native_model.py`` — dense families, where it is
  the faster one on CPU (see ``hf_model.py``'s docstring for the measurement);
- ``hf``: transformers' own model class (``hf_model.py``) — Qwen3-MoE and DeepSeek-V3 (MoE routing,
  MLA), for which transformers is the reference the converters are tested against.

Both take HF-named tensors in ``update_weights`` and keep ``engine.Engine``'s contract.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from megatron_r1.config import Config, ConfigError
from megatron_r1.rollout.engine import Engine, build_engine

__all__ = ["backend_for", "build_inprocess_engine", "native_engine_config", "register_backend"]

Builder = Callable[[Config, Any, torch.device, torch.dtype, int], Engine]

_BUILDERS: dict[str, Builder] = {}
_BACKEND_OF_PRESET: dict[str, str] = {
    "tiny": "native",
    "llama": "native",
    "qwen2": "native",
    "qwen3": "native",
    "qwen3_moe": "hf",
    "deepseek_v3": "hf",
}


def register_backend(preset: str, backend: str) -> None:
    """Make presets ``preset`` generate with backend ``backend`` (``native`` | ``hf``)."""
    if backend not in _BUILDERS:
        raise ValueError(f"unknown rollout backend {backend!r}; available: {sorted(_BUILDERS)}")
    _BACKEND_OF_PRESET[preset] = backend


def backend_for(preset: str) -> str:
    """The backend that generates for ``preset``."""
    if preset not in _BACKEND_OF_PRESET:
        raise ConfigError(
            f"model.preset={preset} has no in-process rollout backend; "
            f"registered: {', '.join(sorted(_BACKEND_OF_PRESET))}"
        )
    return _BACKEND_OF_PRESET[preset]


def build_inprocess_engine(
    cfg: Config, tokenizer: Any, device: torch.device, dtype: torch.dtype, max_batch_size: int
) -> Engine:
    """The ``native`` rollout engine for ``cfg.model``, on the backend its preset is registered with."""
    return _BUILDERS[backend_for(cfg.model.preset)](cfg, tokenizer, device, dtype, max_batch_size)


def native_engine_config(cfg: Config):
    """The hand-written model's architecture from the trainer's ``ModelConfig``."""
    from megatron_r1.rollout.native_model import NativeModelConfig

    m = cfg.model
    return NativeModelConfig(
        vocab_size=m.vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.ffn_hidden_size,
        num_layers=m.num_layers,
        num_heads=m.num_attention_heads,
        num_kv_heads=m.num_query_groups,
        head_dim=m.kv_channels,
        rope_theta=m.rotary_base,
        rms_norm_eps=m.norm_epsilon,
        qkv_bias=m.add_qkv_bias,
        tie_word_embeddings=m.tie_word_embeddings,
        max_position_embeddings=m.max_position_embeddings,
        qk_norm=m.qk_layernorm or m.preset == "qwen3",  # the qwen3 family always builds q/k norms
    )


def _native(cfg: Config, tokenizer: Any, device: torch.device, dtype: torch.dtype, max_batch: int) -> Engine:
    return build_engine(
        "native",
        model_config=native_engine_config(cfg),
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        max_batch_size=max_batch,
        cuda_graphs=cfg.rollout.cuda_graphs,
        offload_on_sleep=cfg.rollout.offload_on_sleep,
    )


def _hf(cfg: Config, tokenizer: Any, device: torch.device, dtype: torch.dtype, max_batch: int) -> Engine:
    from megatron_r1.convert.hf_config import hf_config_for
    from megatron_r1.rollout.hf_model import HFModelEngine

    hf_config = hf_config_for(cfg.model)
    return HFModelEngine(hf_config, tokenizer, device=device, dtype=dtype, max_batch_size=max_batch)


_BUILDERS.update(native=_native, hf=_hf)

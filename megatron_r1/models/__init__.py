"""Model families: presets that turn a :class:`ModelConfig` into a Megatron-Core ``GPTModel``.

A family registers a :class:`Family` (how to build the ``TransformerConfig`` and layer spec, how to read a
Hugging Face ``config.json``). ``build_model`` is the one entry point the trainer uses.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass

from megatron_r1.config import ConfigError, ModelConfig


@dataclass(frozen=True)
class Family:
    """How one model family maps onto Megatron-Core."""

    name: str
    transformer_config: Callable
    """(ModelConfig, ParallelConfig) -> megatron TransformerConfig."""
    layer_spec: Callable
    """(TransformerConfig) -> ModuleSpec (TE spec when importable, local otherwise)."""
    from_hf_config: Callable[[dict], dict] | None = None
    """HF config.json dict -> ModelConfig field values."""
    hf_architectures: tuple[str, ...] = ()
    """HF ``architectures`` names this family reads."""


_FAMILIES: dict[str, Family] = {}
_BUILTIN_MODULES = (
    "megatron_r1.models.dense",
    "megatron_r1.models.qwen3",
    "megatron_r1.models.moe",
    "megatron_r1.models.deepseek_v3",
)


def register_family(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def _load() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def families() -> list[str]:
    _load()
    return sorted(_FAMILIES)


def get_family(name: str) -> Family:
    _load()
    if name not in _FAMILIES:
        close = difflib.get_close_matches(name, _FAMILIES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown model preset {name!r}{hint}; supported: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def family_for_architecture(architecture: str) -> Family:
    """The family that reads a HF ``architectures`` entry; unsupported ones list what is supported."""
    _load()
    for family in _FAMILIES.values():
        if architecture in family.hf_architectures:
            return family
    supported = sorted(a for f in _FAMILIES.values() for a in f.hf_architectures)
    raise ConfigError(f"unsupported architecture {architecture!r}; supported: {', '.join(supported)}")


def set_recompute(tcfg, mode: str) -> None:
    """``train.recompute`` onto a built model's TransformerConfig (read at forward time): ``full`` recomputes
    every layer from its input in the backward (one layer per checkpoint)."""
    if mode == "full":
        tcfg.recompute_granularity, tcfg.recompute_method, tcfg.recompute_num_layers = "full", "uniform", 1
    else:
        tcfg.recompute_granularity, tcfg.recompute_method, tcfg.recompute_num_layers = None, None, None


def build_model(cfg: ModelConfig, parallel, pre_process: bool = True, post_process: bool = True):
    """A Megatron-Core GPTModel for this rank's pipeline stage."""
    from megatron.core.models.gpt import GPTModel

    family = get_family(cfg.preset)
    tcfg = family.transformer_config(cfg, parallel)
    return GPTModel(
        config=tcfg,
        transformer_layer_spec=family.layer_spec(tcfg),
        vocab_size=cfg.vocab_size,
        max_sequence_length=cfg.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=cfg.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=int(cfg.rotary_base),
    )

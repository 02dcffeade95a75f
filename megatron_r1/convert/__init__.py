"""Hugging Face ⇄ Megatron checkpoint conversion: one adapter per model family.

``get_adapter(preset)`` returns the :class:`Adapter` of a family; its ``to_hf(name, tensor, cfg)`` maps one
full (TP-gathered, global layer index) Megatron tensor to HF-named tensors and ``from_hf(named, cfg)`` maps a
stream of HF tensors to Megatron names, both generators so nothing holds the whole model. Checkpoint files
and the CLI functions live in :mod:`megatron_r1.convert.checkpoint`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from megatron_r1.config import ConfigError, ModelConfig

NamedTensors = Iterator[tuple[str, torch.Tensor]]


@dataclass(frozen=True)
class Adapter:
    """The HF ⇄ Megatron state-dict mapping of one family."""

    name: str
    to_hf: Callable[[str, torch.Tensor, ModelConfig], NamedTensors]
    """(Megatron name, full tensor, cfg) -> HF (name, tensor) pairs."""
    from_hf: Callable[[Iterable[tuple[str, torch.Tensor]], ModelConfig], NamedTensors]
    """(HF (name, tensor) stream, cfg) -> Megatron (name, full tensor) pairs."""


_DENSE = ("tiny", "llama", "qwen2", "qwen3")
_MOE = ("qwen3_moe", "deepseek_v3")


def get_adapter(preset: str) -> Adapter:
    """The adapter of a model preset (family name); an unknown one lists the supported ones."""
    if preset in _DENSE:
        from megatron_r1.convert import dense

        return Adapter(preset, dense.to_hf, dense.from_hf)
    if preset in _MOE:
        from megatron_r1.convert import moe

        return Adapter(preset, moe.to_hf, moe.from_hf)
    raise ConfigError(
        f"no checkpoint adapter for model preset {preset!r}; supported: {', '.join(_DENSE + _MOE)}"
    )


def hf_to_megatron(hf_dir, out_dir, verify: bool = False, tolerance: float | None = None):
    """CLI entry: see :func:`megatron_r1.convert.checkpoint.hf_to_megatron` (returns a ``VerifyResult`` with
    ``max_abs_diff`` when ``verify``, else None)."""
    from megatron_r1.convert.checkpoint import hf_to_megatron as impl

    return impl(hf_dir, out_dir, verify=verify, tolerance=tolerance)


def megatron_to_hf(ckpt_dir, out_dir, hf_reference_dir=None) -> None:
    """CLI entry: see :func:`megatron_r1.convert.checkpoint.megatron_to_hf`."""
    from megatron_r1.convert.checkpoint import megatron_to_hf as impl

    impl(ckpt_dir, out_dir, hf_reference_dir=hf_reference_dir)


def gguf_to_hf(gguf_path, out_dir):
    """CLI entry: see :func:`megatron_r1.convert.gguf.gguf_to_hf_dir`."""
    from megatron_r1.convert.gguf import gguf_to_hf_dir

    return gguf_to_hf_dir(gguf_path, out_dir)

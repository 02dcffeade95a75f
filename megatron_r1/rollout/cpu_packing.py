"""oneDNN-prepacked float32 weights for the native engine's linear layers on CPU.

A plain ``F.linear`` on CPU goes to MKL's sgemm, which re-packs the weight matrix into its blocked layout
on every call; at decode batch sizes (a few dozen rows) that packing, not the arithmetic, is most of the
time. oneDNN can pack a weight once (``mkldnn._reorder_linear_weight``) and multiply from the packed copy
(``mkldnn._linear_pointwise``) — what inductor's freezing pass and vLLM's CPU backend do. Measured on this
project's 2-core AMD EPYC machine (torch 2.13.0+cpu, MKL 2024.2, oneDNN 3.12, idle), float32:

=========================================  ===========  ===========
shape (rows × in → out)                    ``F.linear``  packed
=========================================  ===========  ===========
32 × 576 → 3072 (SmolLM2 gate+up)          0.97 ms      0.54 ms
1 × 576 → 3072                             0.14 ms      0.08 ms
1664 × 576 → 3072 (a prefill)              33.1 ms      26.7 ms
32 × 576 → 49152 (SmolLM2's LM head)       23.2 ms      10.1 ms
=========================================  ===========  ===========

Outputs differ from ``F.linear`` by float32 rounding only (max |Δ| ~5e-6 at unit-scale outputs, K = 576).
bfloat16 gains nothing (torch already runs it through oneDNN: same time, identical output), so only float32
weights are packed. The packed copy is a second copy of the weights; it must be rebuilt whenever the weights
change (the engine drops it in ``update_weights`` and repacks before the next ``generate``).

``packing_supported`` checks once per process that the ops exist and agree with ``F.linear``; anything
else (another CPU, a torch without oneDNN) falls back to ``F.linear``.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

__all__ = ["pack_weight", "packed_linear", "packing_supported", "worth_packing"]

logger = logging.getLogger(__name__)

# Largest |packed − F.linear| accepted by the self-check, relative to the output scale (float32 rounding
# over K = 64 products is ~1e-7; this leaves room for a different summation order, not for a wrong kernel).
_CHECK_TOLERANCE = 1e-4


# Weights with fewer elements stay unpacked. Measured (same machine, 2 threads, 128 rows): packing pays from
# ~64k elements up (128 → 512 in: 113 → 100 µs; 576 → 576 at 32 rows: 154 → 129 µs) but loses on small ones
# (64 → 32: 8 → 59 µs; 256 → 64: 29 → 36 µs), and each repack costs a fixed ~0.1 ms per weight — on the
# embedded demo's width-64 model packing everything made a rollout 0.059 → 0.090 s.
_MIN_PACKED_ELEMENTS = 1 << 16


def worth_packing(weight: torch.Tensor) -> bool:
    """Whether ``weight`` ``[out, in]`` is large enough for a packed copy to be faster (see above)."""
    return weight.numel() >= _MIN_PACKED_ELEMENTS


def pack_weight(weight: torch.Tensor, batch_hint: int) -> torch.Tensor:
    """The oneDNN-packed copy of ``weight`` ``[out, in]`` (float32, CPU), tuned for ``batch_hint`` rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` from ``pack_weight(weight)``; x: ``[..., in]`` → ``[..., out]``."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@functools.cache
def packing_supported(dtype: torch.dtype) -> bool:
    """Whether ``pack_weight`` / ``packed_linear`` run here for ``dtype`` and agree with ``F.linear``.

    True only for float32 (the one dtype where packing pays, see the module docstring)."""
    if dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        weight = torch.randn(48, 64, generator=gen)
        bias = torch.randn(48, generator=gen)
        x = torch.randn(2, 3, 64, generator=gen)
        with torch.inference_mode():
            got = packed_linear(x, pack_weight(weight, 6), bias)
            want = F.linear(x, weight, bias)
    except (RuntimeError, AttributeError, NotImplementedError) as err:  # ops missing or unsupported here
        logger.info("oneDNN weight packing unavailable (%s); the native engine uses F.linear", err)
        return False
    error = (got - want).abs().max().item() / want.abs().max().item()
    if got.shape != want.shape or not error < _CHECK_TOLERANCE:
        logger.warning("oneDNN packed linear disagrees with F.linear (rel. error %.2e); not used", error)
        return False
    return True

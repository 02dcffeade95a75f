"""Triton kernels for GRPO training, each with a plain-torch reference beside it.

- ``token_logprobs``: per-token log-probs (+ entropy) from vocab-parallel logits, fused.
- ``grpo_loss``: clipped surrogate + k3 KL + masking + metrics in one pass.

Importing this package does not import Triton; the kernels load it on first use.
"""

from ._backend import triton_available
from .grpo import grpo_loss
from .logprobs import token_logprobs
from .reference import grpo_loss_reference, token_logprobs_reference

__all__ = [
    "grpo_loss",
    "grpo_loss_reference",
    "token_logprobs",
    "token_logprobs_reference",
    "triton_available",
]

"""GRPO math as pure functions on tensors: advantages, policy losses, KL estimators, loss aggregation."""

from megatron_r1.algorithms.advantages import ADVANTAGE_ESTIMATORS, compute_advantages
from megatron_r1.algorithms.losses import (
    aggregate_loss,
    clipped_surrogate,
    kl_k3,
    truncated_importance_weights,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "aggregate_loss",
    "clipped_surrogate",
    "compute_advantages",
    "kl_k3",
    "truncated_importance_weights",
]

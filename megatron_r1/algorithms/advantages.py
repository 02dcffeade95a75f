"""Group-relative advantages: the group of G samples of one prompt is the baseline (no critic).

GRPO (R1 paper §2.2.1, Eq. 3):  A_i = (r_i − mean(r_1..r_G)) / std(r_1..r_G)
Dr.GRPO (Liu et al. 2025):      A_i =  r_i − mean(r_1..r_G)          (no std division)

A group whose rewards are all equal carries no signal: its advantages are exactly 0 and it is reported in
``zero_std`` so the trainer can count (or, DAPO's dynamic sampling, drop) it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a multiple of group_size={group_size} entries, "
            f"got shape {tuple(rewards.shape)}"
        )
    return rewards.float().view(-1, group_size)


def grpo_advantages(
    rewards: torch.Tensor, group_size: int, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards [N] (N = groups × G, group-major) → (advantages [N], zero_std [groups] bool).

    Uses the unbiased sample std (as the paper's reference implementation, torch.std); G = 1 gives zeros.
    """
    r = _grouped(rewards, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    zero_std = (r == r[:, :1]).all(dim=1)
    std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.ones_like(r[:, :1])
    adv = torch.where(zero_std[:, None], torch.zeros_like(r), centred / (std + eps))
    return adv.reshape(-1), zero_std


def dr_grpo_advantages(
    rewards: torch.Tensor, group_size: int, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards [N] → (r − group mean [N], zero_std [groups]); Dr.GRPO drops the std division."""
    r = _grouped(rewards, group_size)
    zero_std = (r == r[:, :1]).all(dim=1)
    return (r - r.mean(dim=1, keepdim=True)).reshape(-1), zero_std


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
}


def compute_advantages(
    name: str, rewards: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch to a registered estimator by name."""
    if name not in ADVANTAGE_ESTIMATORS:
        raise KeyError(f"unknown advantage estimator {name!r}; known: {sorted(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[name](rewards, group_size)

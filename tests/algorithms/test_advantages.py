"""Group-relative advantages (R1 Eq. 3) and Dr.GRPO."""

import pytest
import torch

from megatron_r1.algorithms import compute_advantages


def test_grpo_normalises_within_each_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv, zero_std = compute_advantages("grpo", rewards, 4)
    g = rewards[:4]
    expected = (g - g.mean()) / (g.std() + 1e-6)
    torch.testing.assert_close(adv[:4], expected)
    assert torch.all(adv[4:] == 0)
    assert zero_std.tolist() == [False, True]
    assert adv[:4].sum().abs() < 1e-6


def test_dr_grpo_has_no_std_division():
    rewards = torch.tensor([3.0, 1.0, 0.0, 0.0])
    adv, _ = compute_advantages("dr_grpo", rewards, 2)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 0.0, 0.0]))


def test_shape_errors_and_unknown_estimator():
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        compute_advantages("grpo", torch.zeros(6), 4)
    with pytest.raises(KeyError, match="unknown advantage estimator"):
        compute_advantages("ppo", torch.zeros(4), 2)

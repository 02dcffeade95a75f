"""Our GRPO math against verl's ``core_algos`` formulas, and masked padding that holds extreme values.

The verl side is re-implemented here (verl is not a dependency) from volcengine/verl at commit
b178a3cd56f58b2d502255daba591e92833930a7, file ``verl/trainer/ppo/core_algos.py``:

- ``compute_policy_loss_vanilla`` (the clipped surrogate with separate ``clip_ratio_low`` /
  ``clip_ratio_high``; its dual clip ``clip_ratio_c = 3`` and the ±20 log-ratio clamp bind only for
  ratios above 3 / below e^-20, which the inputs below stay clear of: we do neither);
- ``kl_penalty_forward(..., "low_var_kl")`` (k3 with its ±20 / ±10 clamps, again not binding here);
- ``agg_loss`` for "token-mean", "seq-mean-token-mean" and "seq-mean-token-sum-norm";
- ``compute_grpo_outcome_advantage`` (torch.std, epsilon 1e-6, Dr.GRPO without the std);
- ``verl/utils/torch_functional.py``: ``masked_sum`` / ``masked_mean``.

One convention differs on purpose: verl's "seq-mean-token-sum-norm" at that commit is
Σ_i Σ_t L·m / C without dividing by the number of sequences; ours (Dr.GRPO's own code, and verl before
#4769) is the mean over sequences, so ours × B is compared with verl's.
"""

import pytest
import torch

from megatron_r1.algorithms import aggregate_loss, clipped_surrogate, compute_advantages, kl_k3
from megatron_r1.kernels import grpo_loss

TOL = dict(atol=3e-6, rtol=3e-6)


# ---------------------------------------------------------------- verl's formulas (see module docstring)


def _masked_sum(values, mask, axis=None):
    return (torch.where(mask.bool(), values, 0.0) * mask).sum(axis=axis)


def _masked_mean(values, mask, axis=None):
    return _masked_sum(values, mask, axis) / (mask.sum(axis=axis) + 1e-8)


def _verl_agg_loss(loss_mat, loss_mask, mode, loss_scale_factor=None):
    if mode == "token-mean":
        return _masked_sum(loss_mat, loss_mask) / loss_mask.sum()
    if mode == "seq-mean-token-mean":
        seq_mask = torch.sum(loss_mask, dim=-1)
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1) / (seq_mask + 1e-8)
        seq_mask = (seq_mask > 0).float()
        return _masked_sum(seq_losses, seq_mask) / seq_mask.sum()
    if mode == "seq-mean-token-sum-norm":
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1)
        return torch.sum(seq_losses) / (loss_scale_factor or loss_mask.shape[-1])
    raise ValueError(mode)


def _verl_policy_loss(old_log_prob, log_prob, advantages, response_mask, clip_low, clip_high, mode, c):
    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_clipfrac = _masked_mean(torch.gt(pg_losses2, pg_losses1).float(), response_mask)
    clip_pg_losses2 = torch.min(-advantages * 3.0, clip_pg_losses1)
    pg_losses = torch.where(advantages < 0, clip_pg_losses2, clip_pg_losses1)
    return _verl_agg_loss(pg_losses, response_mask, mode, c), pg_clipfrac


def _verl_low_var_kl(logprob, ref_logprob):
    kl = torch.clamp(ref_logprob - logprob, min=-20, max=20)
    return torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)


def _verl_grpo_advantage(scores, index, norm_by_std):
    scores = scores.clone()
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(index):
        groups.setdefault(g, []).append(i)
    for rows in groups.values():
        group = scores[rows]
        mean, std = torch.mean(group), torch.std(group)
        scores[rows] = (group - mean) / (std + 1e-6) if norm_by_std else group - mean
    return scores


# ----------------------------------------------------------------------------------------------- tests


def _inputs(seed=0, B=6, T=9):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g) * 3
    logp = old + (torch.rand(B, T, generator=g) - 0.5)  # ratios in [0.61, 1.65]: clips bind, dual clip not
    ref = old + (torch.rand(B, T, generator=g) - 0.5)
    adv = torch.randn(B, generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.3).float()
    mask[:, 0] = 1.0  # no empty sequence
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("clip", [(0.2, 0.2), (0.2, 0.28)])
def test_policy_loss_matches_verl(mode, clip):
    logp, old, _, adv, mask = _inputs()
    B, T = mask.shape
    ours_logp = logp.clone().requires_grad_(True)
    per_token, clipped = clipped_surrogate(ours_logp, old, adv, *clip, mask=mask)
    ours = aggregate_loss(per_token, mask, mode, norm_constant=T)
    if mode == "seq-mean-token-sum-norm":
        ours = ours * B  # verl does not divide by the number of sequences here (module docstring)
    ours.backward()

    verl_logp = logp.clone().requires_grad_(True)
    theirs, clipfrac = _verl_policy_loss(old, verl_logp, adv[:, None].expand(B, T), mask, *clip, mode, T)
    theirs.backward()
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(ours_logp.grad, verl_logp.grad, **TOL)
    torch.testing.assert_close((clipped.float() * mask).sum() / mask.sum(), clipfrac, **TOL)
    assert 0 < clipfrac < 1  # the clip is exercised


def test_k3_kl_matches_verl_low_var_kl():
    logp, _, ref, _, mask = _inputs(seed=1)
    ours_logp = logp.clone().requires_grad_(True)
    ours = aggregate_loss(kl_k3(ours_logp, ref, mask=mask), mask, "token-mean")
    ours.backward()
    verl_logp = logp.clone().requires_grad_(True)
    theirs = _verl_agg_loss(_verl_low_var_kl(verl_logp, ref), mask, "token-mean")
    theirs.backward()
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(ours_logp.grad, verl_logp.grad, **TOL)


@pytest.mark.parametrize(("name", "by_std"), [("grpo", True), ("dr_grpo", False)])
def test_advantages_match_verl(name, by_std):
    g = torch.Generator().manual_seed(2)
    rewards = torch.randint(0, 3, (24,), generator=g).float() * 0.5
    ours, _ = compute_advantages(name, rewards, group_size=8)
    theirs = _verl_grpo_advantage(rewards, [i // 8 for i in range(24)], by_std)
    torch.testing.assert_close(ours, theirs, **TOL)


@pytest.mark.parametrize("extreme", [float("inf"), float("-inf"), float("nan"), 1e30])
def test_extreme_padding_gives_finite_loss_and_grads(extreme):
    """Regression: the plain path took exp(logp − old) at masked positions before masking, so one extreme
    padding value made the gradient NaN (0 · inf in backward). The fused kernel masks first too."""
    logp, old, ref, adv, mask = _inputs(seed=3)
    pad = mask == 0
    old_bad, ref_bad = old.masked_fill(pad, extreme), ref.masked_fill(pad, -extreme)
    expected = None
    for with_extreme in (False, True):
        x = logp.clone().requires_grad_(True)
        o, r = (old_bad, ref_bad) if with_extreme else (old, ref)
        per_token, _ = clipped_surrogate(x, o, adv, 0.2, 0.28, mask=mask)
        loss = aggregate_loss(per_token + 0.1 * kl_k3(x, r, mask=mask), mask, "token-mean")
        loss.backward()
        if expected is None:
            expected = (loss.detach(), x.grad)
            continue
        torch.testing.assert_close(loss.detach(), expected[0])
        torch.testing.assert_close(x.grad, expected[1])
        assert torch.all(x.grad[pad] == 0)
    # The fused-kernel reference agrees on the same extreme inputs.
    x = logp.clone().requires_grad_(True)
    fused, _, _ = grpo_loss(x, old_bad, adv, mask, ref_bad, 0.2, 0.28, 0.1, impl="torch")
    (fused.sum() / mask.sum()).backward()
    torch.testing.assert_close(fused.sum() / mask.sum(), expected[0])
    torch.testing.assert_close(x.grad, expected[1])

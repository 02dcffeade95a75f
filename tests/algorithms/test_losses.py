"""Clipped surrogate with clip-higher, k3 KL, and the three loss aggregations."""

import pytest
import torch

from megatron_r1.algorithms import aggregate_loss, clipped_surrogate, kl_k3, truncated_importance_weights


def test_ratio_one_gives_minus_advantage_and_policy_gradient():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, clipped = clipped_surrogate(logp, logp.detach(), torch.tensor([2.0]), 0.2, 0.2)
    torch.testing.assert_close(loss, torch.tensor([[-2.0, -2.0]]))
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-2.0, -2.0]]))  # d(-ρA)/dlogp = -A at ρ=1
    assert not clipped.any()


def test_clip_low_and_high_are_separate():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, clipped = clipped_surrogate(logp, old, adv, clip_low=0.2, clip_high=0.28)
    # A>0, ρ=1.5 → clipped at 1.28; A<0, ρ=1.5 → unclipped -(-1.5); A>0, ρ=0.5 → unclipped;
    # A<0, ρ=0.5 → clipped at 0.8.
    torch.testing.assert_close(loss, torch.tensor([[-1.28, 1.5, -0.5, 0.8]]))
    assert clipped.tolist() == [[True, False, False, True]]


def test_k3_is_nonnegative_and_zero_at_equality():
    logp = torch.randn(4, 7)
    ref = torch.randn(4, 7)
    kl = kl_k3(logp, ref)
    assert torch.all(kl >= 0)
    assert torch.all(kl_k3(logp, logp) == 0)
    # k3 = r - log r - 1 with r = π_ref/π_θ
    r = torch.exp(ref - logp)
    torch.testing.assert_close(kl, r - torch.log(r) - 1)


def test_aggregations():
    per_token = torch.tensor([[1.0, 1.0, 1.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert aggregate_loss(per_token, mask, "token-mean").item() == pytest.approx(7 / 4)
    assert aggregate_loss(per_token, mask, "seq-mean-token-mean").item() == pytest.approx((1 + 4) / 2)
    assert aggregate_loss(per_token, mask, "seq-mean-token-sum-norm", norm_constant=8).item() == (
        pytest.approx((3 / 8 + 4 / 8) / 2)
    )
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate_loss(per_token, mask, "mean")


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batches_with_global_denominators_sum_to_full_batch(mode):
    torch.manual_seed(0)
    per_token = torch.randn(6, 5)
    mask = (torch.rand(6, 5) > 0.3).float()
    full = aggregate_loss(per_token, mask, mode)
    parts = sum(
        aggregate_loss(per_token[i : i + 2], mask[i : i + 2], mode, num_tokens=mask.sum(), num_seqs=6)
        for i in range(0, 6, 2)
    )
    torch.testing.assert_close(parts, full)


def test_truncated_importance_weights_as_slime_and_verl():
    """slime (``compute_tis_weights``: clamp(exp(old − rollout), min=tis_clip_low=0, max=tis_clip)) and verl's
    token-level truncated rollout correction: the weight multiplies the surrogate, and no gradient flows
    through it."""
    g = torch.Generator().manual_seed(0)
    train = -torch.rand(3, 6, generator=g) * 2
    sampler = train + torch.randn(3, 6, generator=g)
    mask = torch.ones(3, 6)
    mask[0, 4:] = 0
    sampler[0, 5] = -1e30  # padding: ignored, never inf
    weights, truncated = truncated_importance_weights(train, sampler, 2.0, mask)
    slime = torch.clamp(torch.exp(train - sampler), min=0.0, max=2.0)
    on = mask.bool()
    torch.testing.assert_close(weights[on], slime[on])
    assert torch.equal(truncated[on], (torch.exp(train - sampler) > 2.0)[on]) and truncated[on].any()
    assert torch.all(weights[~on] == 1) and not truncated[~on].any()

    logp = train.clone().requires_grad_(True)
    adv = torch.randn(3, generator=g)
    plain, _ = clipped_surrogate(logp, train, adv, 0.2, 0.2, mask=mask)
    weighted, _ = clipped_surrogate(logp, train, adv, 0.2, 0.2, mask=mask, weights=weights)
    torch.testing.assert_close(weighted, plain * weights)
    weighted.sum().backward()
    torch.testing.assert_close(logp.grad, (-adv[:, None] * weights * mask).expand(3, 6))  # ratio = 1

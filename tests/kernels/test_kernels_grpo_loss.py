"""Fused GRPO loss kernel vs the torch reference, and the reference vs hand-computed values."""

import math

import pytest
import torch

from megatron_r1.kernels import grpo_loss, grpo_loss_reference, triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


def _batch(batch=4, seq_len=37, per_token_adv=False, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    logprobs = torch.randn(batch, seq_len, generator=gen) * 0.5 - 1.5
    old = logprobs + torch.randn(batch, seq_len, generator=gen) * 0.3  # ratios beyond the clip
    ref = logprobs + torch.randn(batch, seq_len, generator=gen) * 0.2
    shape = (batch, seq_len) if per_token_adv else (batch,)
    advantages = torch.randn(shape, generator=gen)
    mask = torch.rand(batch, seq_len, generator=gen) > 0.3
    return logprobs.to(dtype), old, advantages, mask, ref


def _compare(logprobs, old, advantages, mask, ref, atol=1e-6, **kw):
    outs, grads = [], []
    for fn in (
        lambda *a: grpo_loss(*a, impl="triton", **kw),
        lambda *a: grpo_loss_reference(*a, **kw),
    ):
        x = logprobs.detach().clone().requires_grad_()
        out = fn(x, old, advantages, mask, ref)
        weights = torch.linspace(-1, 2, x.numel()).view_as(x)
        (out[0] * weights).sum().backward()
        outs.append(out)
        grads.append(x.grad)
    for got, want in zip(*outs):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=atol, rtol=1e-5)
    assert grads[0].dtype == logprobs.dtype
    torch.testing.assert_close(grads[0], grads[1], atol=atol, rtol=1e-5)
    return outs[0], grads[0]


@pytest.mark.parametrize("per_token_adv", [False, True])
@pytest.mark.parametrize("with_ref", [False, True])
def test_matches_reference(per_token_adv, with_ref):
    logprobs, old, adv, mask, ref = _batch(per_token_adv=per_token_adv)
    (loss, clip_fraction, kl_mean), _ = _compare(
        logprobs, old, adv, mask, ref if with_ref else None, beta=0.04
    )
    assert (loss[~mask] == 0).all()
    assert 0 < clip_fraction < 1
    assert (kl_mean > 0) if with_ref else (kl_mean == 0)


def test_pg_weights_scale_only_the_surrogate():
    """Truncated importance weights: the kernel weights the surrogate term (not the KL) as the reference
    does, and with the KL off the loss is exactly weights × the unweighted loss."""
    logprobs, old, adv, mask, ref = _batch(batch=3, seq_len=1500, seed=4)  # two program blocks
    weights = torch.rand(logprobs.shape, generator=torch.Generator().manual_seed(9)) * 2
    _compare(logprobs, old, adv, mask, ref, beta=0.1, pg_weights=weights)
    (weighted, _, _), _ = _compare(logprobs, old, adv, mask, None, pg_weights=weights)
    (plain, _, _), _ = _compare(logprobs, old, adv, mask, None)
    torch.testing.assert_close(weighted, plain * weights * mask)


def test_asymmetric_clip_and_float_mask():
    logprobs, old, adv, mask, ref = _batch(batch=3, seq_len=1500, seed=1)  # two program blocks
    _compare(logprobs, old, adv, mask.float() * 0.5, ref, clip_low=0.2, clip_high=0.28, beta=0.1)


def test_bf16_logprobs():
    logprobs, old, adv, mask, ref = _batch(dtype=torch.bfloat16, seed=2)
    _compare(logprobs, old, adv, mask, ref, beta=0.1, atol=1e-2)


def test_padding_garbage_and_empty_mask():
    """Masked positions may hold anything (padding): no inf/NaN leaks into loss or grads."""
    logprobs, old, adv, mask, ref = _batch(seed=3)
    logprobs[~mask] = -1e4
    ref[~mask] = 50.0
    (loss, _, _), grad = _compare(logprobs, old, adv, mask, ref, beta=0.1)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    (loss, clip_fraction, kl_mean), grad = _compare(logprobs, old, adv, torch.zeros_like(mask), ref, beta=0.1)
    assert (loss == 0).all() and clip_fraction == 0 and kl_mean == 0 and (grad == 0).all()


def test_single_token():
    logprobs, old, adv, mask, ref = _batch(batch=1, seq_len=1, seed=4)
    _compare(logprobs, old, adv, torch.ones_like(mask), ref, beta=0.1)


def test_hand_computed():
    """Four tokens, A = +1 / -1, ratio inside and outside [0.8, 1.2]; checks the reference too."""
    ratio = torch.tensor([[1.5, 1.1, 0.5, 0.9]])
    old = torch.zeros(1, 4)
    logprobs = torch.log(ratio)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    ref = logprobs.clone()
    ref[0, 0] = 0.0  # KL of token 0: exp(-log 1.5) + log 1.5 - 1
    # A > 0, r = 1.5 > 1.2: clipped (1.2 chosen, no gradient). A < 0, r = 0.5 < 0.8: clipped.
    want_loss = torch.tensor([[-1.2, -1.1, 0.8, 0.9]])
    kl0 = 1 / 1.5 + math.log(1.5) - 1
    for impl in ("triton", "torch"):
        x = logprobs.clone().requires_grad_()
        loss, clip_fraction, kl_mean = grpo_loss(x, old, adv, mask, ref, beta=0.5, impl=impl)
        loss.sum().backward()
        torch.testing.assert_close(loss, want_loss + 0.5 * torch.tensor([[kl0, 0, 0, 0]]))
        torch.testing.assert_close(clip_fraction, torch.tensor(0.5))
        torch.testing.assert_close(kl_mean, torch.tensor(kl0 / 4))
        # d/dlogp: clipped tokens 0 (plus KL: beta * (1 - ref/pi)), unclipped -A * r.
        want_grad = torch.tensor([[0.5 * (1 - 1 / 1.5), -1.1, 0.0, 0.9]])
        torch.testing.assert_close(x.grad, want_grad)


def test_meta_opcheck_and_compile():
    logprobs, old, adv, mask, ref = _batch(batch=2, seq_len=9, seed=5)
    meta = [t.to("meta") for t in (logprobs, old, adv, mask, ref)]
    meta[0].requires_grad_()
    loss, clip_fraction, kl_mean = grpo_loss(*meta, beta=0.1, impl="triton")
    assert loss.shape == (2, 9) and clip_fraction.shape == () and loss.device.type == "meta"
    loss.sum().backward()
    assert meta[0].grad.shape == (2, 9)

    x = logprobs.clone().requires_grad_()
    torch.library.opcheck(torch.ops.megatron_r1.grpo_loss.default, (x, old, adv, mask, ref, 0.2, 0.28, 0.1))
    weights = torch.rand_like(old) * 2  # truncated importance weights
    torch.library.opcheck(
        torch.ops.megatron_r1.grpo_loss.default, (x, old, adv, mask, ref, 0.2, 0.28, 0.1, weights)
    )

    def step(lp):
        loss, clip_fraction, kl_mean = grpo_loss(lp, old, adv, mask, ref, beta=0.1, impl="triton")
        return loss.sum() / mask.sum(), clip_fraction, kl_mean

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    x1, x2 = logprobs.clone().requires_grad_(), logprobs.clone().requires_grad_()
    out1, out2 = compiled(x1), step(x2)
    for a, b in zip(out1, out2):
        torch.testing.assert_close(a, b)
    out1[0].backward()
    out2[0].backward()
    torch.testing.assert_close(x1.grad, x2.grad)

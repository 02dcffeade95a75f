"""Compiled Triton kernels on CUDA at real vocabulary sizes (run with ``pytest -m gpu``)."""

import os

import pytest
import torch

from megatron_r1.kernels import (
    grpo_loss,
    grpo_loss_reference,
    token_logprobs,
    token_logprobs_reference,
    triton_available,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (torch.cuda.is_available() and triton_available()), reason="needs CUDA and triton"
    ),
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET", "0") == "1",
        reason="TRITON_INTERPRET=1: Triton's compiler is unusable in this process",
    ),
]


@pytest.mark.parametrize("vocab", [32000, 151936])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_token_logprobs_cuda_matches_reference(vocab, dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(257, vocab, device="cuda", generator=gen) * 4).to(dtype)
    labels = torch.randint(0, vocab, (257,), device="cuda", generator=gen)
    labels[:2] = torch.tensor([0, vocab - 1])
    w = torch.randn(2, 257, device="cuda", generator=gen)
    results = []
    for fn in (
        lambda x: token_logprobs(x, labels, temperature=0.9, return_entropy=True),  # auto
        lambda x: token_logprobs_reference(x, labels, temperature=0.9, return_entropy=True),
    ):
        x = logits.clone().requires_grad_()
        logp, ent = fn(x)
        ((logp * w[0]).sum() + (ent * w[1]).sum()).backward()
        results.append((logp, ent, x.grad))
    assert "megatron_r1" in type(results[0][0].grad_fn).__name__  # auto picked the kernel
    (logp, ent, grad), (logp_ref, ent_ref, grad_ref) = results
    assert (logp <= 0).all()  # verl#2656
    torch.testing.assert_close(logp, logp_ref, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ent, ent_ref, atol=1e-4, rtol=1e-5)
    assert grad.dtype == dtype
    grad_atol = 1e-6 if dtype == torch.float32 else 4e-3
    torch.testing.assert_close(grad.float(), grad_ref.float(), atol=grad_atol, rtol=1e-2)


def test_token_logprobs_cuda_never_allocates_fp32_tokens_by_vocab():
    tokens, vocab = 4096, 151936
    logits = torch.randn(tokens, vocab, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, vocab, (tokens,), device="cuda")
    token_logprobs(logits, labels, return_entropy=True)[0].sum().backward()  # warm up / compile
    logits.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    logp, ent = token_logprobs(logits, labels, return_entropy=True)
    (logp.sum() + ent.sum()).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    grad_bytes = tokens * vocab * logits.element_size()
    # The bf16 gradient itself plus per-token vectors; an fp32 [tokens, vocab] would be 2x.
    assert extra < grad_bytes + 64 * 2**20, (extra, grad_bytes)


@pytest.mark.parametrize("with_weights", [False, True])
def test_grpo_loss_cuda_matches_reference(with_weights):
    gen = torch.Generator(device="cuda").manual_seed(0)
    shape = (64, 4099)
    logprobs = torch.randn(shape, device="cuda", generator=gen) * 0.5 - 1.5
    old = logprobs + torch.randn(shape, device="cuda", generator=gen) * 0.3
    ref = logprobs + torch.randn(shape, device="cuda", generator=gen) * 0.2
    adv = torch.randn(64, device="cuda", generator=gen)
    mask = torch.rand(shape, device="cuda", generator=gen) > 0.2
    weights = torch.rand(shape, device="cuda", generator=gen) * 2 if with_weights else None  # TIS
    outs, grads = [], []
    for fn in (grpo_loss, grpo_loss_reference):
        x = logprobs.clone().requires_grad_()
        out = fn(x, old, adv, mask, ref, clip_high=0.28, beta=0.04, pg_weights=weights)
        out[0].sum().backward()
        outs.append(out)
        grads.append(x.grad)
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_inductor_compile_cuda():
    logits = torch.randn(64, 32000, device="cuda", dtype=torch.bfloat16)
    labels = torch.randint(0, 32000, (64,), device="cuda")
    old = torch.randn(4, 16, device="cuda") - 1

    def step(x):
        logp = token_logprobs(x, labels).view(4, 16)
        loss, _, _ = grpo_loss(logp, old, torch.ones(4, device="cuda"), torch.ones_like(old))
        return loss.mean()

    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    compiled = torch.compile(step, fullgraph=True)
    torch.testing.assert_close(compiled(x1), step(x2))
    compiled(x1).backward()
    step(x2).backward()
    torch.testing.assert_close(x1.grad.float(), x2.grad.float(), atol=1e-3, rtol=1e-2)

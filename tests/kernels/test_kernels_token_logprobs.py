"""Fused token log-probs kernel vs the torch reference (Triton interpreter on CPU)."""

import os
import subprocess
import sys

import pytest
import torch

from megatron_r1.kernels import token_logprobs, token_logprobs_reference, triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")

# (value atol, grad atol) per dtype: the kernel and the reference read the same low-precision
# logits and both accumulate in fp32; bf16/fp16 gradients differ by the final rounding.
TOL = {
    torch.float32: (1e-5, 1e-6),
    torch.bfloat16: (1e-4, 4e-3),
    torch.float16: (1e-4, 5e-4),
}


def _compare(logits, labels, temperature=1.0, entropy=True, dtype=torch.float32):
    """Run kernel and reference on the same leaf; compare values and gradients."""
    atol, grad_atol = TOL[dtype]
    outs, grads = [], []
    gen = torch.Generator().manual_seed(1)
    w_logp = torch.randn(labels.shape, generator=gen)
    w_ent = torch.randn(labels.shape, generator=gen)
    for fn in (
        lambda x: token_logprobs(x, labels, None, temperature, entropy, impl="triton"),
        lambda x: token_logprobs_reference(x, labels, None, temperature, entropy),
    ):
        x = logits.detach().clone().requires_grad_()
        out = fn(x)
        out = out if entropy else (out,)
        loss = (out[0] * w_logp).sum()
        if entropy:
            loss = loss + (out[1] * w_ent).sum()
        loss.backward()
        outs.append(out)
        grads.append(x.grad)
    for got, want in zip(*outs):
        assert got.dtype == torch.float32 and got.shape == labels.shape
        torch.testing.assert_close(got, want, atol=atol, rtol=1e-5)
    assert grads[0].dtype == logits.dtype
    torch.testing.assert_close(grads[0].float(), grads[1].float(), atol=grad_atol, rtol=1e-2)
    return outs[0], grads[0]


def _logits(shape, dtype=torch.float32, scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * scale).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_and_leading_dims(dtype):
    logits = _logits((3, 5, 1000), dtype)  # vocab not a power of two: a masked tail block
    labels = torch.randint(0, 1000, (3, 5), generator=torch.Generator().manual_seed(2))
    _compare(logits, labels, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_multiple_vocab_blocks_with_remainder(dtype):
    # 20011 > the CPU block of 16384: two blocks, the second partial (online-softmax rescale).
    logits = _logits((3, 20011), dtype)
    _compare(logits, torch.tensor([0, 20010, 17000]), dtype=dtype)


def test_long_rows():
    logits = _logits((2, 65536 + 129), torch.bfloat16, scale=5.0)
    _compare(logits, torch.tensor([65000, 3]), dtype=torch.bfloat16)


def test_single_token():
    logits = _logits((1, 257))
    _compare(logits, torch.tensor([256]))
    # No leading dims at all: [V] logits, scalar label.
    (logp, ent), _ = _compare(logits[0], torch.tensor(7))
    assert logp.shape == () and ent.shape == ()


def test_labels_at_both_ends_of_vocab():
    logits = _logits((4, 333))
    (logp, _), _ = _compare(logits, torch.tensor([0, 332, 0, 332]))
    want = torch.log_softmax(logits, -1)[torch.arange(4), torch.tensor([0, 332, 0, 332])]
    torch.testing.assert_close(logp, want)


@pytest.mark.parametrize("temperature", [0.6, 1.7])
def test_temperature(temperature):
    logits = _logits((6, 515))
    labels = torch.randint(0, 515, (6,), generator=torch.Generator().manual_seed(3))
    (logp, ent), _ = _compare(logits, labels, temperature=temperature)
    want = torch.log_softmax(logits / temperature, -1).gather(-1, labels[:, None])[:, 0]
    torch.testing.assert_close(logp, want)


def test_without_entropy():
    logits = _logits((4, 300), torch.bfloat16)
    (logp,), _ = _compare(logits, torch.tensor([1, 2, 3, 299]), entropy=False, dtype=torch.bfloat16)


def test_neg_inf_logits():
    """Masked vocabulary (e.g. padded ids) holds -inf: no NaN in values or gradients."""
    logits = _logits((4, 600))
    logits[:, 500:] = float("-inf")  # a padded vocabulary tail
    logits[0, ::3] = float("-inf")
    logits[1, :256] = float("-inf")  # the whole first block of a row
    labels = torch.tensor([1, 300, 0 + 2, 499])
    (logp, ent), grad = _compare(logits, labels)
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all()
    assert torch.isfinite(grad).all() and (grad[:, 500:] == 0).all()


def test_label_on_neg_inf_logit():
    logits = _logits((2, 100))
    logits[0, 5] = float("-inf")
    out = token_logprobs(logits, torch.tensor([5, 6]), impl="triton")
    ref = token_logprobs_reference(logits, torch.tensor([5, 6]))
    assert out[0] == float("-inf") and ref[0] == float("-inf")
    torch.testing.assert_close(out[1], ref[1])


def test_masked_tokens_in_loss():
    """Tokens whose upstream gradient is zero (response mask) get exactly zero gradient."""
    logits = _logits((2, 4, 301)).requires_grad_()
    labels = torch.randint(0, 301, (2, 4), generator=torch.Generator().manual_seed(4))
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    logp = token_logprobs(logits, labels, impl="triton")
    (logp * mask).sum().backward()
    assert (logits.grad[~mask] == 0).all() and (logits.grad[mask] != 0).any()


def test_logprobs_are_not_positive():
    """verl#2656: a fused log-prob kernel returned positive log-probs. log p <= 0 always."""
    logits = _logits((16, 4099), torch.bfloat16, scale=40.0)  # peaked rows, p(label) ~ 1
    labels = logits.float().argmax(-1)
    for impl in ("triton", "torch"):
        logp, ent = token_logprobs(logits, labels, return_entropy=True, impl=impl)
        assert (logp <= 0).all(), impl
        assert (ent >= -1e-6).all(), impl


def test_auto_on_cpu_uses_reference_and_impl_is_validated():
    logits = _logits((2, 50))
    labels = torch.tensor([0, 49])
    torch.testing.assert_close(token_logprobs(logits, labels), token_logprobs_reference(logits, labels))
    with pytest.raises(ValueError):
        token_logprobs(logits, labels, impl="cuda")
    with pytest.raises(ValueError):
        token_logprobs(logits, labels[:1], impl="triton")


def test_meta_device_and_fake_tensors():
    logits = torch.empty(3, 7, 1000, device="meta", dtype=torch.bfloat16, requires_grad=True)
    labels = torch.empty(3, 7, device="meta", dtype=torch.long)
    logp, ent = token_logprobs(logits, labels, return_entropy=True, impl="triton")
    assert logp.shape == (3, 7) and logp.dtype == torch.float32 and logp.device.type == "meta"
    (logp.sum() + ent.sum()).backward()
    assert logits.grad.shape == logits.shape and logits.grad.dtype == torch.bfloat16


def test_opcheck():
    logits = _logits((3, 130)).requires_grad_()
    labels = torch.tensor([0, 5, 129])
    for with_entropy in (False, True):
        torch.library.opcheck(
            torch.ops.megatron_r1.token_logprobs.default,
            (logits, labels, 0.9, 0, with_entropy, None),
        )


def test_torch_compile_fullgraph():
    logits = _logits((2, 3, 200))
    labels = torch.randint(0, 200, (2, 3), generator=torch.Generator().manual_seed(5))

    def loss_fn(x):
        logp, ent = token_logprobs(x, labels, temperature=0.8, return_entropy=True, impl="triton")
        return (logp - 0.01 * ent).sum()

    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    torch.testing.assert_close(compiled(x1), loss_fn(x2))
    compiled(x1).backward()
    loss_fn(x2).backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_import_does_not_import_triton():
    code = "import sys, megatron_r1.kernels; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cpu_kernel_runs_when_triton_was_imported_without_interpreter():
    """Another test directory may import Triton (e.g. via megatron.core) before this conftest
    sets TRITON_INTERPRET; CPU launches must still run in the interpreter."""
    code = (
        "import os, torch, triton.language\n"
        "from megatron_r1.kernels import token_logprobs, token_logprobs_reference, grpo_loss\n"
        "x = torch.randn(3, 70); y = torch.tensor([0, 69, 5])\n"
        "torch.testing.assert_close(token_logprobs(x, y, impl='triton'),"
        " token_logprobs_reference(x, y))\n"
        "grpo_loss(torch.randn(2, 3), torch.randn(2, 3), torch.randn(2), torch.ones(2, 3),"
        " impl='triton')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)

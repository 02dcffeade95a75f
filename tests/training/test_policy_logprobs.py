"""The trainer's next-token log-probs from [b, S, V] logits: same values and gradients as the reference on
the shifted slice, at a temperature, and no [tokens × vocab] copy of the logits on the kernel path."""

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from megatron_r1.kernels import token_logprobs, token_logprobs_reference, triton_available
from megatron_r1.training.policy import next_token_logprobs

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")

B, S, V = 3, 9, 256


class LargeAllocations(TorchDispatchMode):
    """Records every op result that lives in new storage of at least ``min_bytes`` (views of existing
    storage are not allocations)."""

    def __init__(self, known: list[torch.Tensor], min_bytes: int):
        super().__init__()
        self.known = {t.untyped_storage().data_ptr() for t in known}
        self.min_bytes = min_bytes
        self.allocations: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage.data_ptr() not in self.known and storage.nbytes() >= self.min_bytes:
                    self.allocations.append((str(func), tuple(t.shape)))
                    self.known.add(storage.data_ptr())
        return out


def _inputs():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, S, V, generator=g)
    tokens = torch.randint(0, V, (B, S), generator=g)
    weights = torch.randn(2, B, S - 1, generator=g)
    return logits, tokens, weights


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_grads_match_reference_on_the_slice(temperature):
    logits, tokens, (w_logp, w_ent) = _inputs()
    x = logits.clone().requires_grad_(True)
    logp, ent = next_token_logprobs(x, tokens, temperature=temperature, with_entropy=True, impl="triton")
    (logp * w_logp + ent * w_ent).sum().backward()
    y = logits.clone().requires_grad_(True)
    ref_logp, ref_ent = token_logprobs_reference(y[:, :-1], tokens[:, 1:], None, temperature, True)
    (ref_logp * w_logp + ref_ent * w_ent).sum().backward()
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, y.grad, atol=1e-6, rtol=1e-5)
    assert torch.all(x.grad[:, -1] == 0)  # the last position has no label
    # The torch path gives the same through the same function.
    torch_logp, _ = next_token_logprobs(logits, tokens, temperature=temperature, impl="torch")
    torch.testing.assert_close(torch_logp, ref_logp)


def _large_allocations(fn, logits, tokens):
    """Large new tensors made in forward and in backward, and the storages autograd saved."""
    x = logits.clone().requires_grad_(True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with LargeAllocations([x], min_bytes=B * (S - 1) * V * 4) as fwd:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logp = fn(x, tokens)
    with LargeAllocations([x], min_bytes=B * (S - 1) * V * 4) as bwd:
        logp.sum().backward()
    big_saved = [t for t in saved if t.numel() >= B * (S - 1) * V]
    return fwd.allocations, bwd.allocations, big_saved, x


def test_kernel_path_makes_no_copy_of_the_logits():
    logits, tokens, _ = _inputs()
    fwd, bwd, big_saved, x = _large_allocations(
        lambda x, t: next_token_logprobs(x, t, impl="triton")[0], logits, tokens
    )
    assert fwd == [], fwd
    assert len(bwd) == 1, bwd  # the logits' gradient itself, nothing else vocabulary-sized
    assert all(t.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for t in big_saved)

    # What the trainer did before: logits[:, :-1] reshaped to [tokens, V] is a copy, saved for backward,
    # and the slice's backward allocates a second full-size gradient. The check sees it.
    fwd_old, bwd_old, saved_old, x_old = _large_allocations(
        lambda x, t: token_logprobs(x[:, :-1], t[:, 1:], impl="triton"), logits, tokens
    )
    assert len(fwd_old) >= 1 and len(bwd_old) >= 2, (fwd_old, bwd_old)
    assert any(t.untyped_storage().data_ptr() != x_old.untyped_storage().data_ptr() for t in saved_old)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") == "1", reason="Triton's compiler is unusable")
def test_cuda_peak_memory_is_one_gradient_above_the_logits():
    """Compiled kernels at a real vocabulary: a forward + backward of the trainer's log-probs needs the
    gradient of the logits and nothing else vocabulary-sized (slicing cost two more copies)."""
    b, s, v = 4, 1024, 151936
    logits = torch.randn(b, s, v, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    tokens = torch.randint(0, v, (b, s), device="cuda")
    full = logits.numel() * logits.element_size()
    for fn, most in (
        (lambda: next_token_logprobs(logits, tokens, with_entropy=True, impl="triton")[0], 1.1 * full),
        (lambda: token_logprobs(logits[:, :-1], tokens[:, 1:], impl="triton"), None),
    ):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn().sum().backward()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
        logits.grad = None
        if most is not None:
            assert extra < most, (extra, full)
        else:
            assert extra > 1.9 * full, (extra, full)  # the check sees the old copies

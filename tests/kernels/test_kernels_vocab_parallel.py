"""Vocab-parallel token log-probs on 2 gloo processes vs one process over the full vocabulary.

Each rank holds half of the vocabulary; both the reference (autograd through all-reduces) and
the kernel (custom op, group passed by name) must reproduce the single-process values and,
for this rank's shard, the single-process gradient.
"""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megatron_r1.kernels import token_logprobs, token_logprobs_reference, triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")

WORLD = 2
ROWS, VOCAB_SHARD = 6, 301
TEMPERATURE = 0.7


def _inputs(dtype):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(ROWS, WORLD * VOCAB_SHARD, generator=gen) * 3).to(dtype)
    logits[0, VOCAB_SHARD:] = float("-inf")  # rank 1's whole shard is -inf for row 0
    logits[1, :VOCAB_SHARD:2] = float("-inf")
    # Labels at both ends of both shards and in the middle.
    labels = torch.tensor([0, VOCAB_SHARD - 1, VOCAB_SHARD, 2 * VOCAB_SHARD - 1, 17, 400])
    w_logp = torch.randn(ROWS, generator=gen)
    w_ent = torch.randn(ROWS, generator=gen)
    return logits, labels, w_logp, w_ent


def _run(fn, logits, labels, w_logp, w_ent):
    x = logits.detach().clone().requires_grad_()
    logp, ent = fn(x, labels)
    ((logp * w_logp).sum() + (ent * w_ent).sum()).backward()
    return logp.detach(), ent.detach(), x.grad


def _worker(rank, port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        group = dist.new_group(list(range(WORLD)))
        for dtype in (torch.float32, torch.bfloat16):
            _check_rank(rank, group, dtype)
    finally:
        dist.destroy_process_group()


def _check_rank(rank, group, dtype):
    logits, labels, w_logp, w_ent = _inputs(dtype)
    want = _run(
        lambda x, y: token_logprobs_reference(x, y, None, TEMPERATURE, True),
        logits,
        labels,
        w_logp,
        w_ent,
    )
    shard = logits[:, rank * VOCAB_SHARD : (rank + 1) * VOCAB_SHARD]
    grad_atol = 1e-6 if dtype == torch.float32 else 4e-3
    for impl in ("torch", "triton"):
        got = _run(
            lambda x, y: token_logprobs(x, y, group, TEMPERATURE, True, impl=impl),  # noqa: B023
            shard,
            labels,
            w_logp,
            w_ent,
        )
        torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5, msg=impl)
        torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5, msg=impl)
        want_grad = want[2][:, rank * VOCAB_SHARD : (rank + 1) * VOCAB_SHARD]
        assert got[2].dtype == dtype
        torch.testing.assert_close(got[2].float(), want_grad.float(), atol=grad_atol, rtol=1e-2, msg=impl)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_vocab_parallel_matches_single_process():
    """fp32 and bf16, reference and kernel, values and gradients, in one spawn (start-up cost)."""
    mp.spawn(_worker, args=(_free_port(),), nprocs=WORLD, join=True)

"""Context parallelism's sequence layout (parallel/context.py) against Megatron-Core's own split
(``megatron.core.utils.get_batch_on_this_cp_rank``), and the loss aggregation over split sequences."""

from __future__ import annotations

import pytest
import torch

from megatron_r1.algorithms import aggregate_loss
from megatron_r1.parallel.context import (
    cp_chunk_ids,
    cp_padded_length,
    cp_positions,
    cp_split,
    cp_unsplit,
)


@pytest.mark.parametrize("cp", [2, 3, 4])
def test_split_is_megatrons_get_batch_on_this_cp_rank(cp, monkeypatch):
    """Tokens [b, S], labels [b, S] and a packed mask [b, 1, S, S] (split over its query dim 2): the same
    chunks as Megatron's split, for every rank."""
    from megatron.core import parallel_state
    from megatron.core.utils import get_batch_on_this_cp_rank

    seq = 4 * cp
    gen = torch.Generator().manual_seed(0)
    batch = {
        "tokens": torch.randint(0, 100, (2, seq), generator=gen),
        "labels": torch.randint(0, 100, (2, seq), generator=gen),
        "attention_mask": torch.rand(2, 1, seq, seq, generator=gen) > 0.5,
    }
    monkeypatch.setattr(parallel_state, "get_context_parallel_world_size", lambda: cp)
    for rank in range(cp):
        monkeypatch.setattr(parallel_state, "get_context_parallel_rank", lambda r=rank: r)
        want = get_batch_on_this_cp_rank(dict(batch))
        assert torch.equal(cp_split(batch["tokens"], cp, rank), want["tokens"])
        assert torch.equal(cp_split(batch["labels"], cp, rank), want["labels"])
        assert torch.equal(cp_split(batch["attention_mask"], cp, rank, dim=2), want["attention_mask"])


@pytest.mark.parametrize("cp", [1, 2, 3])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_unsplit_inverts_split(cp, dim):
    x = torch.randn(6 * cp, 6 * cp, 6 * cp)
    parts = [cp_split(x, cp, r, dim=dim) for r in range(cp)]
    assert all(p.shape[dim % 3] == 6 for p in parts)
    assert torch.equal(cp_unsplit(parts, dim=dim), x)


def test_positions_cover_the_sequence_once_with_balanced_causal_work():
    """Rank r holds chunks r and 2·CP − 1 − r: every position exactly once, and the causal attention work
    (Σ over its queries of the keys they see, position + 1) is the same on every rank."""
    cp, seq = 4, 32
    positions = [cp_positions(seq, cp, r) for r in range(cp)]
    assert sorted(torch.cat(positions).tolist()) == list(range(seq))
    assert positions[1].tolist() == [4, 5, 6, 7, 24, 25, 26, 27]
    assert cp_chunk_ids(cp, 1) == (1, 6)
    work = {int((p + 1).sum()) for p in positions}
    assert len(work) == 1


def test_bad_lengths_and_ranks_are_named():
    with pytest.raises(ValueError, match=r"shape \(2, 10\) is not a multiple of 2 × CP = 4"):
        cp_split(torch.zeros(2, 10), 2, 0)
    with pytest.raises(ValueError, match="cp_rank 2 is outside the context-parallel size 2"):
        cp_split(torch.zeros(2, 8), 2, 2)


def test_padded_length():
    assert cp_padded_length(11, 1) == 11
    assert cp_padded_length(11, 2) == 12
    assert cp_padded_length(11, 2, tp_size=2) == 16
    assert cp_padded_length(13, 1, tp_size=2) == 14
    assert cp_padded_length(16, 4) == 16


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_losses_of_the_parts_add_up_to_the_whole(mode):
    """Each CP rank aggregates its chunks with the global denominators and the whole sequences' token
    counts (``seq_tokens``): the ranks' losses sum to the unsplit loss, for every aggregation."""
    gen = torch.Generator().manual_seed(3)
    per_token = torch.randn(3, 12, generator=gen)
    mask = (torch.rand(3, 12, generator=gen) > 0.3).float()
    mask[0, :6] = 0.0  # a sequence whose tokens are all on one side of the split
    whole = aggregate_loss(per_token, mask, mode, norm_constant=16.0)
    num_tokens, seq_tokens = mask.sum(), mask.sum(dim=1)
    for cp in (2, 3):
        parts = [
            aggregate_loss(
                cp_split(per_token, cp, r),
                cp_split(mask, cp, r),
                mode,
                num_tokens=num_tokens,
                num_seqs=3,
                norm_constant=16.0,
                seq_tokens=seq_tokens,
            )
            for r in range(cp)
        ]
        assert float(sum(parts)) == pytest.approx(float(whole), rel=1e-6)

"""Sequence-parallel padding of packed SFT inputs: pad positions continue the count, see only themselves, and
no real token sees them (so the real tokens' outputs are those of the unpadded batch)."""

import torch

from megatron_r1.training.policy import pad_packed_inputs, pad_to_multiple


def test_pad_to_multiple():
    tokens = torch.arange(10).reshape(2, 5)
    padded = pad_to_multiple(tokens, 4, pad_id=-7)
    assert padded.shape == (2, 8)
    assert torch.equal(padded[:, :5], tokens) and (padded[:, 5:] == -7).all()
    assert pad_to_multiple(tokens, 5) is tokens


def test_pad_packed_inputs():
    positions = torch.tensor([[0, 1, 2, 0, 1]])
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
    block = causal.clone()
    block[3:, :3] = True  # the second document does not see the first
    mask = block[None, None]
    new_pos, new_mask = pad_packed_inputs(positions, mask, 8)
    assert new_pos.tolist() == [[0, 1, 2, 0, 1, 2, 3, 4]]
    assert new_mask.shape == (1, 1, 8, 8)
    assert torch.equal(new_mask[0, 0, :5, :5], block)  # the real tokens' attention is unchanged
    assert new_mask[0, 0, :5, 5:].all()  # no real token sees a pad
    pad_rows = new_mask[0, 0, 5:]
    assert torch.equal(~pad_rows, torch.eye(8, dtype=torch.bool)[5:])  # each pad sees only itself
    same_pos, same_mask = pad_packed_inputs(positions, mask, 5)
    assert same_pos is positions and same_mask is mask

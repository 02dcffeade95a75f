"""Rollout → training tensors: layout, response mask and sampler log-probs line up with the labels."""

import torch

from megatron_r1.rollout.engine import Completion
from megatron_r1.training.batch import build_batch
from megatron_r1.training.sft import sft_batch


def _completion(i, ids):
    return Completion(
        prompt_index=i, token_ids=ids, text="", logprobs=[-0.5] * len(ids), finish_reason="stop"
    )


def test_build_batch_aligns_labels_with_generated_tokens():
    prompts = [[1, 2, 3], [4, 5]]
    comps = [_completion(0, [7, 8]), _completion(0, [9]), _completion(1, [6, 6, 6]), _completion(1, [])]
    b = build_batch(prompts, comps, group_size=2, pad_id=0)
    assert b["tokens"].tolist() == [[1, 2, 3, 7, 8], [1, 2, 3, 9, 0], [4, 5, 6, 6, 6], [4, 5, 0, 0, 0]]
    labels = b["tokens"][:, 1:]
    mask = b["response_mask"].bool()
    assert labels[0][mask[0]].tolist() == [7, 8]
    assert labels[1][mask[1]].tolist() == [9]
    assert labels[2][mask[2]].tolist() == [6, 6, 6]
    assert not mask[3].any()
    assert torch.all(b["sampler_logprobs"][mask] == -0.5) and torch.all(b["sampler_logprobs"][~mask] == 0)


def test_sft_batch_masks_only_the_completion():
    b = sft_batch([([1, 2], [3, 4, 5]), ([6], [7])], pad_id=0)
    labels = b["tokens"][:, 1:]
    assert labels[0][b["loss_mask"][0].bool()].tolist() == [3, 4, 5]
    assert labels[1][b["loss_mask"][1].bool()].tolist() == [7]

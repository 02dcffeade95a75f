"""A run killed with SIGKILL and resumed reaches step N with exactly the metrics of an uninterrupted run."""

import pytest
from resume_utils import straight_and_resumed

TINY = [
    "train.sft_warmup_steps=20",
    "data.prompts_per_step=4",
    "rollout.group_size=4",
    "rollout.max_new_tokens=32",
    "data.eval_size=8",
    "eval.every=3",
    "log.tensorboard=false",
    "log.progress=false",
    "train.save_every=2",
    "train.steps=6",
]


@pytest.mark.slow
@pytest.mark.parametrize("options", [[], ["algorithm.kl_coef=0.05"]], ids=["no-kl", "kl-reference"])
def test_kill_9_then_resume_matches_uninterrupted(tmp_path, options):
    """With a KL term the frozen reference must come back from the checkpoint too (not the resumed policy)."""
    a, b = straight_and_resumed(tmp_path, [*TINY, *options], kill_after="step_000004")
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4, 5, 6]
    assert a == b

"""Non-finite losses: the step is skipped and counted; after ``train.max_bad_steps`` in a row the run stops
with its last checkpoint intact."""

import json

import pytest

from megatron_r1.config import load_config
from megatron_r1.training import optim
from megatron_r1.training.checkpoint import latest_checkpoint
from megatron_r1.training.grpo import TrainingError
from megatron_r1.training.run import train


@pytest.mark.slow
def test_nan_steps_are_skipped_then_the_run_stops(tmp_path, monkeypatch):
    cfg = load_config(
        None,
        [
            "train.steps=8",
            "train.save_every=1",
            "train.max_bad_steps=3",
            "train.sft_warmup_steps=2",
            "data.prompts_per_step=2",
            "rollout.group_size=2",
            "rollout.max_new_tokens=8",
            # A KL term gives every step a learning signal: with 2 warm-up steps all rewards are equal, and
            # a step without signal skips its backward and optimizer step (so no gradient could be NaN).
            "algorithm.kl_coef=0.01",
            "data.eval_size=4",
            "eval.every=0",
            "log.tensorboard=false",
            "log.progress=false",
        ],
    )
    real = optim.LocalOptimizer.grad_norm
    calls = {"n": 0}

    def grad_norm(self):
        calls["n"] += 1
        # 2 warm-up steps and 2 GRPO steps are healthy, then every gradient is NaN.
        return real(self) if calls["n"] <= 4 else float("nan")

    monkeypatch.setattr(optim.LocalOptimizer, "grad_norm", grad_norm)
    with pytest.raises(TrainingError, match="3 consecutive steps with a non-finite loss"):
        train(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows[1:]] == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert [r["bad_steps"] for r in rows[1:]] == [0, 0, 1, 2, 3]
    # Steps 3 and 4 changed nothing, so their checkpoints equal step 2's; the last one is complete.
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and (latest / "rank_00000.pt").is_file()
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))

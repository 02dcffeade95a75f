"""The trainer scores ``logits / rollout.temperature``, the distribution the sampler drew from: its log-probs
match the engine's (``logprob_diff`` ~ float32 rounding), at a temperature other than 1."""

import json

from megatron_r1.config import load_config
from megatron_r1.training.run import train


def test_trainer_logprobs_match_sampler_at_temperature(tmp_path):
    cfg = load_config(
        None,
        [
            "rollout.temperature=0.7",
            # A KL term keeps every step's forward/backward running (a step whose advantages are all zero
            # and has no KL term is skipped, and measures no logprob_diff).
            "algorithm.kl_coef=0.001",
            "rollout.group_size=4",
            "rollout.max_new_tokens=16",
            "data.prompts_per_step=4",
            "data.eval_size=4",
            "train.steps=2",
            "train.sft_warmup_steps=10",
            "train.micro_batch_size=8",
            "eval.every=0",
            "log.progress=false",
            "log.tensorboard=false",
        ],
    )
    train(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][1:]
    assert len(rows) == 2
    for row in rows:
        # Scored at temperature 1 instead, the gap is ~0.1-0.4 per token on this model.
        assert row["logprob_diff"] < 1e-4, row["logprob_diff"]
        assert row["entropy"] > 0

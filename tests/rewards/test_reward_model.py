"""Reward-model hook: a tiny random sequence-classification model built locally (no download)."""

from __future__ import annotations

import math

import pytest

from megatron_r1.rewards import get
from megatron_r1.rewards.reward_model import make_reward_model_reward, register_reward_model, summary_of
from megatron_r1.rewards.scorer import RewardScorer

WORDS = "the answer is four two plus two equals let me think about it carefully be safe hello".split()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoModelForSequenceClassification, LlamaConfig, PreTrainedTokenizerFast

    torch.manual_seed(0)
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = AutoModelForSequenceClassification.from_config(config)
    path = tmp_path_factory.mktemp("rm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


COMPLETIONS = [
    "<think>let me think about it carefully</think>the answer is four",
    "<think>two plus two</think>the answer is four",
    "hello the answer is two",
]
ROWS = [{"prompt": "two plus two"}] * 3


def test_summary_of():
    assert summary_of("<think>a</think> b ") == "b"
    assert summary_of("no tags") == "no tags"


def test_helpfulness_sees_only_the_summary(model_dir):
    helpful = make_reward_model_reward(model_dir, target="summary")
    scores = helpful.score_batch(COMPLETIONS, ROWS)
    assert all(math.isfinite(s) for s in scores)
    assert scores[0] == pytest.approx(scores[1], abs=1e-5)  # same summary, different reasoning
    assert helpful(COMPLETIONS[2], ROWS[2]) == pytest.approx(scores[2], abs=1e-5)  # batch == single


def test_safety_sees_the_whole_response(model_dir):
    safety = make_reward_model_reward(model_dir, target="full", batch_size=2)
    scores = safety.score_batch(COMPLETIONS, ROWS)
    assert scores[0] != pytest.approx(scores[1], abs=1e-6)
    assert safety(COMPLETIONS[0], ROWS[0]) == pytest.approx(scores[0], abs=1e-5)


def test_registered_and_scored_in_batch(model_dir):
    register_reward_model("test_helpfulness", model_dir, target="summary", with_prompt=False)
    assert callable(get("test_helpfulness"))
    scorer = RewardScorer({"test_helpfulness": 0.5, "format": 1.0}, num_workers=0)
    result = scorer.score(COMPLETIONS, ROWS)
    expected = get("test_helpfulness").score_batch(COMPLETIONS, ROWS)
    assert result.components["test_helpfulness"] == pytest.approx(expected)
    assert result.total == pytest.approx([0.5 * s for s in expected])


def test_bad_config(tmp_path):
    with pytest.raises(ValueError):
        make_reward_model_reward(tmp_path, target="reasoning")
    with pytest.raises(FileNotFoundError):
        make_reward_model_reward(tmp_path / "missing")

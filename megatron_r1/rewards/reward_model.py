"""Reward-model rewards for general prompts (R1 paper §2.3.4, RL for all scenarios).

A reward model is a local Hugging Face sequence-classification model directory
(``AutoModelForSequenceClassification`` + ``AutoTokenizer``; no hub access). As in the paper the
*helpfulness* model sees only the final summary (the text after ``</think>``; the whole completion
when there is no ``</think>``), the *safety* model the whole response. The question of the row is
given as the first segment of a text pair unless ``with_prompt=False``. The score is the logit of a
one-label head, or ``logit[label]`` for a multi-label head.

Reward models need configuration (a path), so they are not built in: build one with
:func:`make_reward_model_reward` and pass it to ``RewardScorer(reward_fns=...)``, or register it
under a name with :func:`register_reward_model`. The object is a reward function
(``fn(completion, row) -> float``) with a ``score_batch`` method, which the batch scorer calls in the
trainer process (batched, on the model's device) instead of its workers. The model loads lazily.
"""

from __future__ import annotations

import os
import threading

from megatron_r1.rewards import register


def summary_of(completion: str) -> str:
    """The final summary of a completion: the text after the last ``</think>`` (else all of it)."""
    return completion.rsplit("</think>", 1)[-1].strip()


class RewardModelReward:
    """A sequence-classification reward model as a reward function (see module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike,
        target: str = "summary",
        batch_size: int = 8,
        max_length: int = 2048,
        device: str = "cpu",
        label: int = -1,
        with_prompt: bool = True,
    ):
        if target not in ("summary", "full"):
            raise ValueError(f"target must be 'summary' or 'full', got {target!r}")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"reward model directory {path!r} does not exist")
        self.path, self.target, self.batch_size = str(path), target, batch_size
        self.max_length, self.device, self.label, self.with_prompt = max_length, device, label, with_prompt
        self._model = self._tokenizer = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.path)
            model = AutoModelForSequenceClassification.from_pretrained(self.path)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
            if model.config.pad_token_id is None:
                model.config.pad_token_id = tokenizer.pad_token_id
            self._tokenizer, self._model = tokenizer, model.to(self.device).eval()

    def text_of(self, completion: str) -> str:
        """What the model sees of ``completion``."""
        return summary_of(completion) if self.target == "summary" else completion

    def score_batch(self, completions: list[str], rows: list[dict]) -> list[float]:
        """Scores of ``completions`` (batched forward passes, no gradients)."""
        import torch

        from megatron_r1.data.templates import question_of

        self._load()
        scores: list[float] = []
        for start in range(0, len(completions), self.batch_size):
            texts = [self.text_of(c) for c in completions[start : start + self.batch_size]]
            kwargs = {"padding": True, "truncation": True, "max_length": self.max_length}
            if self.with_prompt:
                questions = [question_of(r) for r in rows[start : start + self.batch_size]]
                inputs = self._tokenizer(questions, texts, return_tensors="pt", **kwargs)
            else:
                inputs = self._tokenizer(texts, return_tensors="pt", **kwargs)
            inputs.pop("token_type_ids", None)
            with torch.no_grad():
                logits = self._model(**inputs.to(self.device)).logits.float()
            scores.extend(logits[:, self.label].tolist())
        return scores

    def __call__(self, completion: str, row: dict) -> float:
        return self.score_batch([completion], [row])[0]


def make_reward_model_reward(path: str | os.PathLike, target: str = "summary", **kwargs) -> RewardModelReward:
    """A reward function from the reward model at ``path``: ``target`` ``"summary"`` (helpfulness)
    or ``"full"`` (safety); ``kwargs``: see :class:`RewardModelReward`."""
    return RewardModelReward(path, target=target, **kwargs)


def register_reward_model(
    name: str, path: str | os.PathLike, target: str = "summary", **kwargs
) -> RewardModelReward:
    """Build a reward-model reward and register it as ``name`` (e.g. ``helpfulness``, ``safety``)."""
    reward = make_reward_model_reward(path, target=target, **kwargs)
    register(name)(reward)
    return reward

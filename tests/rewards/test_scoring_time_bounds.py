"""Scoring is time-bounded whatever thread calls it. The math reward off the main thread (where
math-verify's own signal-based timeout cannot work): a check that runs away — ``9^(9^9)``, which sympy tries
to evaluate for far longer than any test may wait — is cut off in its helper process and scores 0, while
ordinary answers still verify. Any reward, in an in-process scorer: bounded by the alarm in the main thread,
by a worker process elsewhere."""

import threading
import time

from megatron_r1.rewards import math_answer
from megatron_r1.rewards.math_answer import math_reward


def sleepy_reward(completion: str, row: dict) -> float:
    """A reward with no limit of its own: "hang" keeps it busy for 10 minutes."""
    if completion.endswith("hang"):
        time.sleep(600)
    return 1.0


def _in_thread(fn, *args):
    out = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    thread.start()
    thread.join(120)  # the runaway check takes minutes without the bound
    assert not thread.is_alive(), "the math reward did not return off the main thread"
    return out[0]


def test_runaway_answer_off_the_main_thread_scores_zero(monkeypatch):
    monkeypatch.setattr(math_answer, "THREAD_TIMEOUT_S", 3.0)
    assert _in_thread(math_reward, r"The answer is \boxed{9^(9^9)}", {"answer": "5"}) == 0.0
    # The helper process was replaced; equivalent forms are still recognised afterwards.
    assert _in_thread(math_reward, r"\boxed{\frac{1}{2}}", {"answer": "0.5"}) == 1.0
    assert _in_thread(math_reward, r"\boxed{2\sqrt{2}}", {"answer": r"\sqrt{8}"}) == 1.0
    assert _in_thread(math_reward, r"\boxed{3}", {"answer": "4"}) == 0.0


def test_in_process_scorer_off_the_main_thread_bounds_any_reward():
    """A reward without limits of its own (here one that sleeps for 10 minutes) scored by an in-process
    scorer from a thread: the scorer uses a worker process with its timeout, the item counts as a timeout."""
    from megatron_r1.rewards.scorer import RewardScorer

    fns = {"sleepy": sleepy_reward}
    scorer = RewardScorer({"sleepy": 1.0}, num_workers=0, timeout_s=3.0, reward_fns=fns)
    try:
        result = _in_thread(scorer.score, ["hang", "fine"], [{}, {}])
        assert result.total == [0.0, 1.0] and result.timeouts == 1
        assert scorer.score(["fine"], [{}]).total == [1.0]  # the main thread still scores in process
    finally:
        scorer.close()


def test_in_process_scorer_in_the_main_thread_bounds_any_reward():
    """The same runaway reward scored in the main thread: the alarm cuts it off; math-verify's own use of
    the alarm in a reward scored before it does not disarm the bound."""
    from megatron_r1.rewards.scorer import RewardScorer

    fns = {"sleepy": sleepy_reward}
    scorer = RewardScorer({"math": 1.0, "sleepy": 1.0}, num_workers=0, timeout_s=3.0, reward_fns=fns)
    rows = [{"answer": "4"}, {"answer": "4"}]
    result = scorer.score([r"\boxed{4} hang", r"\boxed{4}"], rows)
    assert result.timeouts == 1 and result.failed == [True, False]
    assert result.total == [0.0, 2.0]

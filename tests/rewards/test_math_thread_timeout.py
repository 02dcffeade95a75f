"""The math reward is time-bounded whatever thread calls it: off the main thread (where math-verify's own
signal-based timeout cannot work) a check that runs away — ``9^(9^9)``, which sympy tries to evaluate for
far longer than any test may wait — is cut off in its helper process and scores 0, while ordinary answers
still verify."""

import threading

from megatron_r1.rewards import math_answer
from megatron_r1.rewards.math_answer import math_reward


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

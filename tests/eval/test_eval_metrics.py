"""pass@k (unbiased estimator), majority vote (cons@k), and their per-problem summary."""

import math

import pytest

from megatron_r1.eval.metrics import majority_vote, pass_at_k, summarise


def test_pass_at_k_matches_the_combinatorial_definition():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # 1 - P(all k drawn without replacement are wrong)
    assert pass_at_k(10, 3, 4) == pytest.approx(1 - (7 * 6 * 5 * 4) / (10 * 9 * 8 * 7))
    assert pass_at_k(5, 4, 2) == 1.0
    with pytest.raises(ValueError, match="pass_at_k needs"):
        pass_at_k(3, 4, 1)


def test_majority_vote():
    assert majority_vote(["7", "8", "7", None], [1, 0, 1, 0]) == 1.0
    assert majority_vote(["8", "8", "7"], [0, 0, 1]) == 0.0
    assert majority_vote(["8", "7"], [0, 1]) == 0.0  # tie: the answer seen first
    assert majority_vote([None, None], [0, 0]) == 0.0


def test_summarise():
    answers = [["1", "1", "2", "1"], ["5", "6", "6", None]]
    correct = [[1, 1, 0, 1], [1, 0, 0, 0]]
    out = summarise(answers, correct)
    assert out["pass@1"] == pytest.approx((0.75 + 0.25) / 2)
    assert out["pass@4"] == 1.0
    assert out["cons@4"] == pytest.approx(0.5)
    assert summarise([["3"]], [[1.0]]) == {"pass@1": 1.0}
    assert math.isclose(summarise([["a", "b"]], [[0, 1]])["pass@2"], 1.0)

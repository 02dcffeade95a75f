"""Batch scorer: weights, worker pool with timeouts / crashes contained, in-process mode, overlong."""

from __future__ import annotations

import os
import time

import pytest

from megatron_r1.rewards import register
from megatron_r1.rewards.scorer import RewardScorer, overlong_penalty


def hang_reward(completion: str, row: dict) -> float:
    if "hang" in completion:
        time.sleep(600)
    return 1.0


def crash_reward(completion: str, row: dict) -> float:
    if "crash" in completion:
        os._exit(3)
    if "raise" in completion:
        raise RuntimeError("bad row")
    return 0.5


register("test_hang")(hang_reward)
register("test_crash")(crash_reward)

GOOD = "<think>2+2</think><answer>4</answer>"
ROW = {"answer": "4"}


def test_overlong_penalty():
    assert overlong_penalty([10, 80, 90, 95, 100, 101, 500], max_len=100, buffer_len=20) == [
        0.0,
        0.0,
        -0.5,
        -0.75,
        -1.0,
        -1.0,
        -1.0,
    ]
    assert overlong_penalty([1000], max_len=100, buffer_len=0) == [0.0]
    with pytest.raises(ValueError):
        overlong_penalty([1], max_len=10, buffer_len=11)


def test_in_process_weights_and_components():
    scorer = RewardScorer({"math": 1.0, "format": 0.5}, num_workers=0)
    result = scorer.score([GOOD, "<answer>5</answer>", "4"], [ROW] * 3)
    assert result.components["math"] == [1.0, 0.0, 0.0]
    assert result.components["format"] == [1.0, 0.0, 0.0]
    assert result.total == [1.5, 0.0, 0.0]
    assert result.total_tensor().shape == (3,)
    assert result.timeouts == result.crashes == result.errors == 0
    assert result.metrics()["reward/math"] == pytest.approx(1 / 3)


def test_in_process_errors_are_contained():
    result = RewardScorer({"test_crash": 1.0}, num_workers=0).score(["raise", "ok"], [{}, {}])
    assert result.total == [0.0, 0.5] and result.errors == 1 and result.failed == [True, False]


def test_overlong_added_when_lengths_given():
    scorer = RewardScorer({"format": 1.0}, num_workers=0, overlong=(100, 20))
    result = scorer.score([GOOD, GOOD], [ROW, ROW], lengths=[50, 90])
    assert result.total == [1.0, 0.5]
    assert result.components["overlong"] == [0.0, -0.5]


@pytest.mark.slow
def test_pool_contains_hangs_crashes_and_errors():
    completions = [GOOD, "hang", GOOD, "crash", "raise", GOOD, "hang", GOOD]
    with RewardScorer(
        {"test_hang": 1.0, "test_crash": 2.0, "format": 1.0}, num_workers=2, timeout_s=2.0
    ) as scorer:
        start = time.monotonic()
        result = scorer.score(completions, [ROW] * len(completions))
        elapsed = time.monotonic() - start
        assert result.timeouts == 2 and result.crashes == 1 and result.errors == 1
        good = 1.0 + 2 * 0.5 + 1.0
        assert result.total == [good, 0.0, good, 0.0, 1.0, good, 0.0, good]
        assert result.failed == [False, True, False, True, True, False, True, False]
        assert elapsed < 60  # bounded (two 2 s timeouts), not a speed check
        # The pool was repaired: the next batch scores normally.
        again = scorer.score([GOOD] * 4, [ROW] * 4)
        assert again.total == [good] * 4 and again.timeouts == again.crashes == 0
        assert all(w.process.is_alive() for w in scorer._workers)


@pytest.mark.slow
def test_pool_matches_in_process():
    completions = [GOOD, r"\boxed{4}", "<think>x</think><answer>3</answer>", "```python\nprint(4)\n```"]
    rows = [ROW, ROW, ROW, {"answer": "4", "tests": [{"input": "", "output": "4"}]}]
    weights = {"math": 1.0, "format": 0.25, "language": 0.1}
    local = RewardScorer(weights, num_workers=0).score(completions, rows)
    with RewardScorer(weights, num_workers=2, timeout_s=30) as scorer:
        pooled = scorer.score(completions, rows)
    assert pooled.total == local.total
    code = RewardScorer({"code": 1.0}, num_workers=0).score(completions[3:], rows[3:])
    assert code.total == [1.0]


def test_validation():
    with pytest.raises(ValueError):
        RewardScorer({}, num_workers=0)
    with pytest.raises(ValueError):
        RewardScorer({"math": 1.0}).score(["a"], [])
    with pytest.raises(KeyError):
        RewardScorer({"no_such_reward": 1.0})


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="sandbox uid isolation needs root")
def test_killed_worker_leaves_no_sandbox_behind():
    from megatron_r1.rewards.sandbox import _UID_BASE, _UID_SPAN

    program = "```python\nimport time\ntime.sleep(120)\n```"
    row = {"tests": [{"input": "", "output": ""}], "timeout_s": 100}  # sandbox outlives the item
    with RewardScorer({"code": 1.0}, num_workers=1, timeout_s=3.0) as scorer:
        result = scorer.score([program], [row])
    assert result.timeouts == 1 and result.total == [0.0]
    left = [
        p
        for p in os.listdir("/proc")
        if p.isdigit() and _UID_BASE <= _stat_uid(p) < _UID_BASE + _UID_SPAN and not _zombie(p)
    ]
    assert left == []


def _stat_uid(pid: str) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1


def _zombie(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except OSError:
        return True


def test_unpicklable_reward_needs_in_process_scoring():
    fns = {"local": lambda completion, row: 1.0}
    with pytest.raises(ValueError, match="picklable"):
        RewardScorer({"local": 1.0}, num_workers=1, reward_fns=fns)
    assert RewardScorer({"local": 1.0}, num_workers=0, reward_fns=fns).score(["x"], [{}]).total == [1.0]

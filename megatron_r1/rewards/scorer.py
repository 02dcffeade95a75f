"""Batch scoring: many reward functions over many completions, in worker processes with timeouts.

:class:`RewardScorer` combines named rewards with weights (R1-Zero: accuracy + format; R1: + language;
all-scenario RL: + reward models). Each item (one completion and its row) is scored by one worker
process, all rewards at once; an item that takes longer than ``timeout_s`` gets its worker killed and
replaced and scores 0.0 for every reward (a timeout), as does an item whose worker dies (a crash) or
whose reward raises (an error). The step and the trainer go on either way.

``num_workers=0`` scores in the calling process (the tiny CPU demo: no process start-up); then
a SIGALRM timer bounds each item by ``timeout_s`` in the main thread. Called from any other thread, where no
signal can interrupt a runaway reward, an in-process scorer uses one worker process with the timeout instead
(started on first use), so every scoring path is time-bounded.
The ``code`` reward runs programs in its own sandbox process in both modes.

Reward functions that have a ``score_batch(completions, rows)`` method (the reward models of
:mod:`megatron_r1.rewards.reward_model`) are scored in the calling process, one batch call each.

:func:`overlong_penalty` is DAPO's overlong reward shaping (Yu et al. 2025, Eq. 13), a pure
function of the response lengths that the trainer adds to the reward.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import pickle
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait

from megatron_r1 import rewards

logger = logging.getLogger(__name__)
_STARTUP_TIMEOUT_S = 120.0


def overlong_penalty(lengths: Sequence[int], max_len: int, buffer_len: int) -> list[float]:
    """DAPO soft overlong punishment per response.

    ``lengths``: response lengths in tokens. With L_max = ``max_len`` and L_cache = ``buffer_len``:
    0 for L ≤ L_max − L_cache, (L_max − L_cache − L) / L_cache (linear from 0 to −1) up to L_max,
    −1 beyond. ``buffer_len = 0`` turns it off (all 0).
    """
    if buffer_len < 0 or buffer_len > max_len:
        raise ValueError(f"buffer_len must be in [0, max_len={max_len}], got {buffer_len}")
    if buffer_len == 0:
        return [0.0] * len(lengths)
    start = max_len - buffer_len
    out = []
    for length in lengths:
        length = int(length)
        if length <= start:
            out.append(0.0)
        elif length <= max_len:
            out.append((start - length) / buffer_len)
        else:
            out.append(-1.0)
    return out


@dataclass
class ScoreResult:
    """Rewards of a batch."""

    total: list[float]
    """Weighted sum per item: [N]."""
    components: dict[str, list[float]]
    """Each reward's unweighted value per item: name → [N] (``overlong`` when lengths were given)."""
    timeouts: int = 0
    """Items whose scoring ran past the timeout (they score 0)."""
    crashes: int = 0
    """Items whose worker process died (they score 0)."""
    errors: int = 0
    """Items where a reward raised (that reward scores 0)."""
    failed: list[bool] = field(default_factory=list)
    """Per item: timed out, crashed or raised."""
    seconds: float = 0.0
    """Wall time of the scoring call."""

    def total_tensor(self):
        """``total`` as a float32 torch tensor [N]."""
        import torch

        return torch.tensor(self.total, dtype=torch.float32)

    def metrics(self) -> dict[str, float]:
        """Means per reward and failure counts, for the metrics writer."""
        n = max(len(self.total), 1)
        out = {f"reward/{name}": sum(v) / n for name, v in self.components.items()}
        out.update({"reward/total": sum(self.total) / n, "reward/timeouts": self.timeouts})
        out.update({"reward/crashes": self.crashes, "reward/errors": self.errors})
        out["time/reward_s"] = self.seconds
        return out


class _ItemTimeout(BaseException):
    """Raised by the in-process alarm: past the item's deadline (a BaseException, so that no reward's own
    ``except Exception`` swallows it)."""


def _raise_timeout(signum, frame) -> None:
    raise _ItemTimeout


def _score_item(
    fns: dict, completion: str, row: dict, deadline: float | None = None
) -> tuple[dict[str, float], str | None]:
    """Every reward of one item. ``deadline`` (``time.monotonic()``; main thread only) arms SIGALRM before
    each reward with the time left — re-armed per reward because a reward may use the alarm itself
    (math-verify) — and raises :class:`_ItemTimeout` when it passes."""
    values, error = {}, None
    previous = signal.signal(signal.SIGALRM, _raise_timeout) if deadline is not None else None
    try:
        for name, fn in fns.items():
            if deadline is not None:
                signal.signal(signal.SIGALRM, _raise_timeout)
                signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 1e-3))
            try:
                value = float(fn(completion, row))
                values[name] = value if math.isfinite(value) else 0.0
            except Exception as exc:  # a bad item must not stop the batch
                values[name], error = 0.0, f"{name}: {exc!r}"
            finally:
                if deadline is not None:
                    signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        if deadline is not None:
            signal.signal(signal.SIGALRM, previous)
    return values, error


def _worker_main(conn, fns: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    conn.send("ready")  # imports done: item deadlines start from here
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        index, completion, row = task
        conn.send((index, *_score_item(fns, completion, row)))


class _Worker:
    def __init__(self, ctx, fns: dict):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, fns), daemon=True)
        self.process.start()
        child.close()
        self.ready = False
        self.item: int | None = None
        self.deadline = 0.0

    def wait_ready(self, timeout_s: float) -> bool:
        """Block until the worker has started (imported its rewards); False if it did not."""
        if not self.ready:
            try:
                self.ready = self.conn.poll(timeout_s) and self.conn.recv() == "ready"
            except (EOFError, OSError):
                self.ready = False
        return self.ready

    def kill(self) -> None:
        from megatron_r1.rewards.sandbox import kill_runs_of

        pid = self.process.pid
        self.process.kill()
        self.process.join(5)
        self.conn.close()
        if pid is not None:
            kill_runs_of(pid)  # sandbox runs the worker could not clean up

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(2)
        if self.process.is_alive():
            self.kill()
        else:
            self.conn.close()


class RewardScorer:
    """Scores completions with weighted rewards, in ``num_workers`` processes (0 = in process).

    ``weights``: reward name → weight; the total is Σ weight · reward. ``timeout_s``: per item, for
    all its rewards together (keep it above the code sandbox's wall limit). ``reward_fns``: optional
    name → function overrides of the registry (e.g. a reward model built from config).
    ``overlong``: ``(max_len, buffer_len)`` to add DAPO's overlong penalty (weight 1) when
    :meth:`score` is given the response lengths. ``start_method``: multiprocessing start method;
    ``forkserver`` by default because forking a process with live torch threads can deadlock.
    """

    def __init__(
        self,
        weights: dict[str, float],
        num_workers: int = 0,
        timeout_s: float = 30.0,
        reward_fns: dict[str, rewards.RewardFn] | None = None,
        overlong: tuple[int, int] | None = None,
        start_method: str = "forkserver",
    ):
        if not weights:
            raise ValueError("RewardScorer needs at least one weighted reward")
        if num_workers < 0 or timeout_s <= 0:
            raise ValueError("num_workers must be ≥ 0 and timeout_s > 0")
        self.weights = dict(weights)
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self.overlong = overlong
        fns = {name: (reward_fns or {}).get(name) or rewards.get(name) for name in self.weights}
        self._batch_fns = {n: f for n, f in fns.items() if hasattr(f, "score_batch")}
        self._item_fns = {n: f for n, f in fns.items() if n not in self._batch_fns}
        if num_workers:
            try:
                pickle.dumps(self._item_fns)
            except Exception as exc:
                raise ValueError(
                    "rewards scored in worker processes must be picklable (module-level functions); "
                    f"use num_workers=0 or give them a score_batch method: {exc}"
                ) from exc
        self._ctx = multiprocessing.get_context(start_method) if num_workers else None
        self._workers: list[_Worker] = []
        self._start_method = start_method
        self._reward_fns = reward_fns
        self._off_thread: RewardScorer | None = None

    # -- pool management ---------------------------------------------------------------------
    def _new_worker(self) -> _Worker:
        for _ in range(3):
            worker = _Worker(self._ctx, self._item_fns)
            if worker.wait_ready(_STARTUP_TIMEOUT_S):
                return worker
            logger.warning("reward worker did not start in %.0f s; retrying", _STARTUP_TIMEOUT_S)
            worker.kill()
        raise RuntimeError("reward workers fail to start")

    def _ensure_workers(self) -> None:
        self._workers = [w for w in self._workers if w.process.is_alive()]
        while len(self._workers) < self.num_workers:
            self._workers.append(self._new_worker())

    def close(self) -> None:
        """Stop the worker processes."""
        for worker in self._workers:
            worker.stop()
        self._workers = []
        if self._off_thread is not None:
            self._off_thread.close()
            self._off_thread = None

    def _off_thread_pool(self) -> RewardScorer | None:
        """The one-worker scorer an in-process scorer uses off the main thread (None: rewards that cannot be
        pickled stay in process, bounded only by their own limits)."""
        if self._off_thread is None:
            try:
                self._off_thread = RewardScorer(
                    self.weights, 1, self.timeout_s, self._reward_fns, start_method=self._start_method
                )
            except ValueError as exc:
                logger.warning("in-process rewards off the main thread are not time-bounded: %s", exc)
                return None
        return self._off_thread

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- scoring -----------------------------------------------------------------------------
    def _score_in_pool(self, completions, rows, values, failed) -> tuple[int, int, int]:
        timeouts = crashes = errors = 0
        pending = deque(range(len(completions)))
        self._ensure_workers()
        idle = list(self._workers)
        busy: dict[object, _Worker] = {}

        def replace(worker: _Worker) -> None:
            worker.kill()
            self._workers.remove(worker)
            fresh = self._new_worker()
            self._workers.append(fresh)
            idle.append(fresh)

        while pending or busy:
            while pending and idle:
                worker, index = idle.pop(), pending.popleft()
                worker.item, worker.deadline = index, time.monotonic() + self.timeout_s
                try:
                    worker.conn.send((index, completions[index], rows[index]))
                    busy[worker.conn] = worker
                except OSError:  # died while idle: count the item as a crash
                    crashes += 1
                    failed[index] = True
                    replace(worker)
            if not busy:
                continue
            wait_s = max(0.0, min(w.deadline for w in busy.values()) - time.monotonic())
            for conn in wait(list(busy), timeout=wait_s):
                worker = busy.pop(conn)
                try:
                    index, item_values, error = conn.recv()
                except (EOFError, OSError):
                    crashes += 1
                    failed[worker.item] = True
                    logger.warning("reward worker died on item %d", worker.item)
                    replace(worker)
                    continue
                values[index] = item_values
                if error:
                    errors += 1
                    failed[index] = True
                    logger.warning("reward error on item %d: %s", index, error)
                idle.append(worker)
            now = time.monotonic()
            for conn, worker in list(busy.items()):
                if now >= worker.deadline:
                    del busy[conn]
                    timeouts += 1
                    failed[worker.item] = True
                    logger.warning("reward timeout (%.1f s) on item %d", self.timeout_s, worker.item)
                    replace(worker)
        return timeouts, crashes, errors

    def score(
        self, completions: Sequence[str], rows: Sequence[dict], lengths: Sequence[int] | None = None
    ) -> ScoreResult:
        """Rewards of ``completions[i]`` against ``rows[i]``; ``lengths`` (tokens) enable overlong."""
        if len(completions) != len(rows):
            raise ValueError(f"{len(completions)} completions but {len(rows)} rows")
        start = time.monotonic()
        n = len(completions)
        values: list[dict[str, float] | None] = [None] * n
        failed = [False] * n
        timeouts = crashes = errors = 0
        pool = self
        if self.num_workers == 0 and threading.current_thread() is not threading.main_thread():
            pool = self._off_thread_pool() or self
        if self._item_fns and n:
            if pool.num_workers:
                timeouts, crashes, errors = pool._score_in_pool(completions, rows, values, failed)
            else:
                # In the main thread (the only one left here) SIGALRM bounds each item.
                main = threading.current_thread() is threading.main_thread()
                for i in range(n):
                    deadline = time.monotonic() + self.timeout_s if main else None
                    try:
                        values[i], error = _score_item(self._item_fns, completions[i], rows[i], deadline)
                    except _ItemTimeout:
                        timeouts += 1
                        failed[i] = True
                        logger.warning("reward timeout (%.1f s) on item %d", self.timeout_s, i)
                        continue
                    if error:
                        errors += 1
                        failed[i] = True
                        logger.warning("reward error on item %d: %s", i, error)
        components = {name: [(v or {}).get(name, 0.0) for v in values] for name in self._item_fns}
        for name, fn in self._batch_fns.items():
            components[name] = [float(x) for x in fn.score_batch(list(completions), list(rows))]
        total = [sum(self.weights[name] * components[name][i] for name in self.weights) for i in range(n)]
        if self.overlong is not None and lengths is not None:
            penalty = overlong_penalty(lengths, *self.overlong)
            components["overlong"] = penalty
            total = [t + p for t, p in zip(total, penalty)]
        return ScoreResult(
            total=total,
            components=components,
            timeouts=timeouts,
            crashes=crashes,
            errors=errors,
            failed=failed,
            seconds=time.monotonic() - start,
        )

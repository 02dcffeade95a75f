"""Reward functions, looked up by name.

A reward function is ``fn(completion: str, row: dict) -> float``: ``completion`` is the generated
text (after the prompt), ``row`` the dataset row the prompt came from (``answer``, ``tests``,
``language``, ...). Functions register themselves with :func:`register`; :func:`get` returns one by
name. Built in (imported lazily): ``exact``, ``format``, ``format_r1``, ``language``, ``math``,
``code``, ``code_strict``, ``reasoning_gym``. Reward models need a path and are registered at run
time (:mod:`megatron_r1.rewards.reward_model`). :class:`megatron_r1.rewards.scorer.RewardScorer`
scores batches with weights, in worker processes with per-item timeouts.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable

RewardFn = Callable[[str, dict], float]

_REGISTRY: dict[str, RewardFn] = {}
# Row fields each reward reads: name → entries a row must have; a tuple entry means any one of them.
_NEEDS: dict[str, tuple[str | tuple[str, ...], ...]] = {}
# Modules that register built-in rewards on import; imported lazily by get()/names().
_BUILTIN_MODULES = (
    "megatron_r1.rewards.basic",
    "megatron_r1.rewards.format",
    "megatron_r1.rewards.language",
    "megatron_r1.rewards.math_answer",
    "megatron_r1.rewards.code",
    "megatron_r1.rewards.reasoning_gym",
)


def register(name: str, needs: tuple[str | tuple[str, ...], ...] = ()) -> Callable[[RewardFn], RewardFn]:
    """Decorator: register ``fn`` under ``name`` (names are unique). ``needs``: the row fields it reads
    (a tuple entry: any one of them), so a dataset without them is refused before training starts."""

    def wrap(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"reward {name!r} is already registered")
        _REGISTRY[name] = fn
        _NEEDS[name] = tuple(needs)
        return fn

    return wrap


def missing_fields(name: str, row: dict) -> list[str]:
    """The fields reward ``name`` needs that ``row`` lacks (alternatives joined by ``|``)."""
    get(name)
    missing = []
    for need in _NEEDS.get(name, ()):
        options = (need,) if isinstance(need, str) else need
        if not any(key in row for key in options):
            missing.append(" | ".join(options))
    return missing


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def names() -> list[str]:
    """All registered reward names."""
    _load_builtins()
    return sorted(_REGISTRY)


def get(name: str) -> RewardFn:
    """The reward function registered as ``name``; unknown names fail with the nearest valid one."""
    _load_builtins()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KeyError(f"unknown reward {name!r}{hint}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]

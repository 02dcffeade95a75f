"""The rollout-engine interface shared by the native and the vLLM engines, and their registry.

A rollout engine holds its *own* copy of the policy weights under Hugging Face names. The GRPO
trainer drives it through four calls and never imports an engine module directly:

- ``generate(prompts_token_ids, sampling)`` → ``len(prompts) * n`` completions, prompt-major;
- ``update_weights(named_tensors)`` after every optimizer step (possibly in several buckets);
- ``sleep()`` / ``wake_up()`` around the training phase, so a colocated engine gives memory back.

Engines are looked up by name: ``build_engine("native", model_config=..., tokenizer=...)``. Both
built-in entries are lazy, so importing this module imports neither the native model nor vLLM. Which
in-process model serves each family under the name "native" (the hand-written decoder or
transformers' classes) is ``rollout/backends.py``'s registry.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "Completion",
    "Engine",
    "SamplingParams",
    "available_engines",
    "build_engine",
    "copy_named_tensors",
    "make_decode",
    "register_engine",
]


@dataclass
class SamplingParams:
    """How to sample completions; the field names follow vLLM's ``SamplingParams``."""

    n: int = 1
    """Completions per prompt (GRPO's group size G)."""
    temperature: float = 1.0
    """Softmax temperature; ``0`` means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p."""
    max_new_tokens: int = 256
    """Upper bound on generated tokens per completion (finish_reason "length" when reached)."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end a completion (EOS, end-of-turn); the stop token is kept in the output."""
    stop_strings: tuple[str, ...] = ()
    """Strings that end a completion; tokens are kept up to the one completing the string."""
    seed: int | None = None
    """Seed of the per-call random generator; equal seeds and inputs give equal outputs."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        self.stop_strings = tuple(s for s in self.stop_strings if s)


@dataclass
class Completion:
    """One sampled completion of one prompt.

    ``logprobs[i]`` is the sampler's log-probability of ``token_ids[i]`` under the distribution
    the token was drawn from *before* top-p truncation, i.e. ``log_softmax(logits / temperature)``
    at the sampled token, computed in float32. This is what the trainer's ``old_logprobs`` (policy
    log-probs at the same temperature) must reproduce; top-p only restricts which tokens can be
    drawn, it does not renormalise the returned values. With ``temperature == 0`` (greedy) the
    values are ``log_softmax(logits)`` (temperature taken as 1).
    """

    prompt_index: int
    """Index of the prompt in the ``prompts_token_ids`` list given to ``generate``."""
    token_ids: list[int] = field(default_factory=list)
    """Generated tokens, including a stop token, or up to the token completing a stop string."""
    text: str = ""
    """``tokenizer.decode(token_ids)`` with special tokens kept (so it includes any stop string)."""
    logprobs: list[float] = field(default_factory=list)
    """Sampler log-prob of each generated token: ``log_softmax(logits / T)[token]`` (see above)."""
    finish_reason: str = "length"
    """``"stop"`` (stop token or stop string) or ``"length"`` (max_new_tokens / context limit)."""


@runtime_checkable
class Engine(Protocol):
    """What the GRPO trainer needs from a rollout engine."""

    def generate(self, prompts_token_ids: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """Sample ``sampling.n`` completions per prompt.

        Returns ``len(prompts_token_ids) * sampling.n`` completions ordered prompt-major: all n
        completions of prompt 0, then those of prompt 1, and so on.
        """
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy new values into the held weights by Hugging Face name; partial updates allowed."""
        ...

    def sleep(self) -> None:
        """Release generation memory (KV cache; on GPU possibly the weights) while training runs."""
        ...

    def wake_up(self) -> None:
        """Undo ``sleep()`` before the next ``generate``."""
        ...


# Non-parameter HF state-dict entries that a sender may include; accepted and ignored.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@torch.no_grad()
def copy_named_tensors(
    targets: dict[str, torch.Tensor], named_tensors: Iterable[tuple[str, torch.Tensor]], holder: str
) -> None:
    """``update_weights``' copy: each ``(hf_name, tensor)`` into ``targets[hf_name]`` in place (converted to
    the target's device and dtype); ``*.rotary_emb.inv_freq`` is ignored.

    Raises ``ValueError`` on an unknown name (``holder`` describes the model in the message) or a shape
    mismatch; tensors before the offending one stay applied.
    """
    for name, tensor in named_tensors:
        target = targets.get(name)
        if target is None:
            if name.endswith(_IGNORED_SUFFIXES):
                continue
            raise ValueError(f"update_weights: unknown tensor name {name!r} for this {holder}")
        if tuple(tensor.shape) != tuple(target.shape):
            raise ValueError(
                f"update_weights: shape mismatch for {name!r}: got {tuple(tensor.shape)}, "
                f"engine holds {tuple(target.shape)}"
            )
        target.copy_(tensor)


def make_decode(tokenizer: Any) -> Callable[[list[int]], str]:
    """``ids -> text`` keeping special tokens (HF tokenizers take ``skip_special_tokens``), as
    ``Completion.text`` requires."""
    try:
        params = inspect.signature(tokenizer.decode).parameters
    except (TypeError, ValueError):
        params = {}
    takes_flag = "skip_special_tokens" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )
    if takes_flag:
        return lambda ids: tokenizer.decode(ids, skip_special_tokens=False)
    return lambda ids: tokenizer.decode(ids)


EngineFactory = Callable[..., Engine]

_REGISTRY: dict[str, EngineFactory] = {}
# Entries resolved on first use: name -> module whose import registers the name.
_LAZY: dict[str, str] = {
    "native": "megatron_r1.rollout.native",
    "vllm": "megatron_r1.rollout.vllm_engine",
}


def register_engine(name: str) -> Callable[[EngineFactory], EngineFactory]:
    """Decorator: make ``build_engine(name, **kwargs)`` call the decorated class or function."""

    def decorator(factory: EngineFactory) -> EngineFactory:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not factory:
            raise ValueError(f"rollout engine {name!r} is already registered ({existing!r})")
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_engines() -> list[str]:
    """Names that ``build_engine`` accepts (registered or lazily importable)."""
    return sorted(set(_REGISTRY) | set(_LAZY))


def _import_lazy(name: str) -> None:
    module = _LAZY[name]
    if name == "vllm":
        try:
            importlib.import_module("vllm")
        except ImportError as err:
            raise ImportError(
                "rollout engine 'vllm' needs the vllm package: install the `vllm` extra "
                "(pip install 'megatron-r1[vllm]') or use engine 'native'"
            ) from err
    importlib.import_module(module)


def build_engine(name: str, **kwargs: Any) -> Engine:
    """Build the rollout engine registered as ``name`` with ``kwargs``."""
    if name not in _REGISTRY and name not in _LAZY:
        raise KeyError(f"unknown rollout engine {name!r}; available: {available_engines()}")
    if name in _LAZY:  # also when registered already: the engine's own package must be importable
        _import_lazy(name)
        if name not in _REGISTRY:
            raise RuntimeError(f"importing {_LAZY[name]} did not register rollout engine {name!r}")
    return _REGISTRY[name](**kwargs)


class IdleEngine:
    """The engine of a rank that never generates (every rank of a TP × PP group but the first, which
    generates and broadcasts): holds no weights, and sleep / wake / weight updates do nothing."""

    def generate(self, prompts_token_ids: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        raise RuntimeError("this rank holds no rollout engine: generation runs on its model-parallel leader")

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        for _ in named_tensors:
            pass

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass

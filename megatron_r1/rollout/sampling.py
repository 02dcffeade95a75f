"""Token sampling for the native engine: temperature, nucleus, and per-row counter-based randomness.

``sample_tokens`` implements the sampler contract of ``engine.Completion``: the returned log-prob is
``log_softmax(logits / T)`` at the drawn token in float32, never renormalised over the nucleus.

``row_uniforms`` gives each completion its own random stream: the uniform that draws token ``t`` of
row ``r`` is a hash of ``(seed, r, t)`` (SplitMix64's finaliser in wrapping int64 arithmetic), not the
next number of a shared generator. A row's samples therefore do not depend on which other rows share
its batch, on the batch size, on when continuous batching admitted it, or on the device; and drawing
them needs no generator state, so the sampler can run inside a CUDA graph or without host syncs.
"""

from __future__ import annotations

import torch

__all__ = ["nucleus_mask", "row_uniforms", "sample_tokens", "seed_key"]

# Top-k sizes tried, in order, before sorting the whole vocabulary to find a nucleus: a partial top-k is
# ~10-20x cheaper than a full sort at V ~ 50k-150k, and at the usual top_p (0.9-0.95, T <= 1) the nucleus
# holds far fewer tokens than this.
_NUCLEUS_CANDIDATES = (256, 4096)

_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """An unsigned 64-bit constant as the int64 value with the same bits."""
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)


def _mix64_int(x: int) -> int:
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _shr(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 tensors (multiplication wraps modulo 2**64)."""
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def seed_key(seed: int) -> int:
    """The int64 key of a sampling seed (any Python int)."""
    return _signed(_mix64_int(seed * 0x9E3779B97F4A7C15 + 1))


def row_uniforms(key: int, rows: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Uniforms in ``[0, 1)``, float64, one per row: a hash of ``(key, rows[i], steps[i])``.

    Args:
        key: ``seed_key(seed)``.
        rows: ``[B]`` int64 row ids (a completion's index in the ``generate`` output).
        steps: ``[B]`` int64 token index within the completion.
    """
    x = _mix64(rows * _GOLDEN + key)
    x = _mix64(x + steps * _GOLDEN)
    return _shr(x, 11).double() * (1.0 / (1 << 53))


def nucleus_mask(logprobs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``[B, V]`` bool: the tokens of each row's nucleus.

    A token is kept when the probability mass of the tokens ranked strictly before it (descending) is
    below ``top_p``, so the most likely token always is. The ranking comes from ``topk`` over the first of
    ``_NUCLEUS_CANDIDATES`` that holds every row's nucleus (the mass of the top k reaches ``top_p``;
    float32 cumulative sums are monotone, so nothing ranked later could be kept), else from a full sort:
    the same mask as sorting the whole row, up to the order of exactly tied probabilities.

    Args:
        logprobs: ``[B, V]`` float32 log-probabilities.
        top_p: nucleus mass in ``(0, 1)``.
    """
    vocab = logprobs.shape[-1]
    for k in (*(k for k in _NUCLEUS_CANDIDATES if k < vocab), vocab):
        if k == vocab:
            top_logp, top_index = logprobs.sort(dim=-1, descending=True)
        else:
            top_logp, top_index = logprobs.topk(k, dim=-1)
        top_prob = top_logp.exp()
        mass = top_prob.cumsum(dim=-1)
        if k < vocab and not bool((mass[:, -1] >= top_p).all()):
            continue  # some row's nucleus reaches past the top k
        keep_sorted = (mass - top_prob) < top_p
        return torch.zeros_like(logprobs, dtype=torch.bool).scatter_(-1, top_index, keep_sorted)
    raise AssertionError("unreachable: the last candidate is the full sort")


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row.

    Args:
        logits: ``[B, V]`` next-token logits.
        temperature: softmax temperature; 0 → greedy (argmax).
        top_p: nucleus mass; tokens outside the smallest set reaching it are never drawn.
        generator: source of randomness when ``uniforms`` is None (unused when greedy).
        uniforms: ``[B]`` float64 in ``[0, 1)``: the uniform that draws each row's token
            (``row_uniforms``); takes precedence over ``generator``.

    Returns:
        ``tokens [B]`` int64 and ``logprobs [B]`` float32, where ``logprobs`` is
        ``log_softmax(logits / temperature)`` at the drawn token — from the full, temperature-scaled
        distribution, *not* renormalised over the nucleus (temperature 1 when greedy).
    """
    if temperature == 0:
        logprobs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
        tokens = logits.argmax(dim=-1)
    else:
        # Few passes over [B, V]: on GPUs the sampler is memory-bound (V ~ 150k for Qwen).
        scaled = logits.float() if temperature == 1.0 else logits.float() / temperature
        logprobs = torch.log_softmax(scaled, dim=-1)
        sample_logp = logprobs
        if top_p < 1.0:
            sample_logp = logprobs.masked_fill(~nucleus_mask(logprobs, top_p), float("-inf"))
        # Inverse-CDF sampling: one uniform per row (torch.multinomial draws one exponential per
        # vocabulary entry, ~10x slower at V=50k). The CDF of exp(log-probs) is summed in float64 so
        # it stays monotone and exact enough that tokens outside the nucleus (probability 0) are
        # never hit; it is not renormalised, the uniform is scaled by its last entry instead.
        cdf = torch.cumsum(sample_logp.exp(), dim=-1, dtype=torch.float64)
        if uniforms is None:
            u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=cdf.dtype)
        else:
            u = uniforms.to(cdf.dtype)[:, None]
        tokens = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)
        tokens.clamp_(max=cdf.shape[-1] - 1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)

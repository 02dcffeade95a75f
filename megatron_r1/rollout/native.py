"""The native rollout engine: batched sampling from ``NativeCausalLM`` with a KV cache.

This is the generator the GRPO trainer uses wherever vLLM is absent (CPU machines, tests). Like
vLLM it holds its own copy of the policy under Hugging Face names and receives fresh weights after
every optimizer step through ``update_weights``.

How ``generate`` works: the ``len(prompts) * n`` rows are sorted by prompt length (so chunks of up
to ``max_batch_size`` rows carry little padding) and run chunk by chunk. In a chunk each distinct
prompt is prefilled once, left-padded, and its KV cache is then copied to its ``n`` rows. Decoding
runs all live rows together, one token per step; rows that finish (stop token, stop string,
length) stop receiving tokens and are dropped from the batch (and the cache) once enough of them
have finished, so late steps cost only what the live rows need. All randomness comes from one
``torch.Generator`` per call, seeded from ``SamplingParams.seed``: the same seed, prompts, weights
and ``max_batch_size`` give the same completions (a different chunking draws the random numbers
in a different order, and CPU vs GPU differ).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch

from megatron_r1.rollout.engine import Completion, SamplingParams, register_engine
from megatron_r1.rollout.native_model import KVCache, NativeCausalLM, NativeModelConfig

__all__ = ["NativeEngine", "sample_tokens"]

logger = logging.getLogger(__name__)

# Non-parameter HF state-dict entries that a sender may include; accepted and ignored.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row.

    Args:
        logits: ``[B, V]`` next-token logits.
        temperature: softmax temperature; 0 → greedy (argmax).
        top_p: nucleus mass; tokens outside the smallest set reaching it are never drawn.
        generator: source of randomness (unused when greedy).

    Returns:
        ``tokens [B]`` int64 and ``logprobs [B]`` float32, where ``logprobs`` is
        ``log_softmax(logits / temperature)`` at the drawn token — from the full, temperature-scaled
        distribution, *not* renormalised over the nucleus (temperature 1 when greedy).
    """
    logits = logits.float()
    if temperature == 0:
        logprobs = torch.log_softmax(logits, dim=-1)
        tokens = logits.argmax(dim=-1)
    else:
        logprobs = torch.log_softmax(logits / temperature, dim=-1)
        sample_logp = logprobs
        if top_p < 1.0:
            sorted_logp, order = logprobs.sort(dim=-1, descending=True)
            sorted_p = sorted_logp.exp()
            # Drop a token when the mass strictly before it already reaches top_p; the most
            # likely token is therefore always kept.
            drop_sorted = (sorted_p.cumsum(dim=-1) - sorted_p) >= top_p
            drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
            sample_logp = logprobs.masked_fill(drop, float("-inf"))
        # Inverse-CDF sampling: one uniform per row (torch.multinomial draws one exponential per
        # vocabulary entry, ~10x slower at V=50k). float64 keeps the CDF monotone and exact enough
        # that tokens outside the nucleus (probability 0) are never hit.
        cdf = torch.softmax(sample_logp, dim=-1).double().cumsum_(dim=-1)
        u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=cdf.dtype)
        tokens = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)
        tokens.clamp_(max=cdf.shape[-1] - 1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


def _make_decode(tokenizer: Any) -> Callable[[list[int]], str]:
    """``ids -> text`` keeping special tokens (HF tokenizers take ``skip_special_tokens``)."""
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


class _Row:
    """Bookkeeping of one completion being generated."""

    __slots__ = ("prompt_index", "budget", "token_ids", "logprobs", "finish_reason")

    def __init__(self, prompt_index: int, budget: int) -> None:
        self.prompt_index = prompt_index
        self.budget = budget
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.finish_reason: str | None = None


@register_engine("native")
class NativeEngine:
    """Rollout engine on a plain-torch Llama/Qwen2 decoder (implements ``engine.Engine``).

    Args:
        model_config: the architecture, or a HF ``config.json`` dict.
        tokenizer: anything with ``decode(list[int]) -> str``.
        device: where the weights and the KV cache live.
        dtype: weight / activation dtype (sampling math is float32 regardless).
        max_batch_size: most rows (prompt × sample) decoded together; bounds KV-cache memory
            at ``2 · layers · max_batch_size · kv_heads · (prompt + max_new_tokens) · head_dim``.

    Weights start randomly initialised; load them with ``update_weights``.
    """

    def __init__(
        self,
        model_config: NativeModelConfig | dict[str, Any],
        tokenizer: Any,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_batch_size: int = 64,
    ) -> None:
        if isinstance(model_config, dict):
            model_config = NativeModelConfig.from_hf_config(model_config)
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.config = model_config
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.model = NativeCausalLM(model_config).to(device=self.device, dtype=dtype).eval()
        self.model.requires_grad_(False)
        self._decode = _make_decode(tokenizer)
        self._params: dict[str, torch.Tensor] = dict(self.model.named_parameters())
        if model_config.tie_word_embeddings:
            # HF state dicts of tied models still list lm_head.weight (the same tensor).
            self._params["lm_head.weight"] = self._params["model.embed_tokens.weight"]
        self._cache: KVCache | None = None
        self._asleep = False

    # ------------------------------------------------------------------ weights / memory

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy ``(hf_name, tensor)`` pairs into the held parameters.

        Any subset of the parameters may be sent per call (bucketed sync); tensors are converted
        to the engine's device and dtype. With tied embeddings ``lm_head.weight`` is accepted as
        another name of ``model.embed_tokens.weight``; ``*.rotary_emb.inv_freq`` is ignored.
        Raises ``ValueError`` on an unknown name or a shape mismatch (tensors before the
        offending one are already applied).
        """
        for name, tensor in named_tensors:
            param = self._params.get(name)
            if param is None:
                if name.endswith(_IGNORED_SUFFIXES):
                    continue
                raise ValueError(
                    f"update_weights: unknown tensor name {name!r} for this "
                    f"{self.config.num_layers}-layer model "
                    f"(tie_word_embeddings={self.config.tie_word_embeddings})"
                )
            if tuple(tensor.shape) != tuple(param.shape):
                raise ValueError(
                    f"update_weights: shape mismatch for {name!r}: got {tuple(tensor.shape)}, "
                    f"engine holds {tuple(param.shape)}"
                )
            param.copy_(tensor)

    def named_weights(self) -> Iterable[tuple[str, torch.Tensor]]:
        """The held weights under their HF names (``lm_head.weight`` only when untied)."""
        return self.model.state_dict().items()

    def sleep(self) -> None:
        """Free the KV cache; on an accelerator also move the weights to host memory."""
        self._cache = None
        if self.device.type != "cpu":
            self.model.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self._asleep = True

    def wake_up(self) -> None:
        """Bring the weights back to ``device``; the KV cache is reallocated by ``generate``."""
        if self.device.type != "cpu":
            self.model.to(self.device)
        self._asleep = False

    # ------------------------------------------------------------------ generation

    def generate(self, prompts_token_ids: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """``len(prompts) * sampling.n`` completions, prompt-major (see ``engine.Engine``)."""
        if self._asleep:
            raise RuntimeError("NativeEngine.generate called while asleep; call wake_up() first")
        max_pos = self.config.max_position_embeddings
        for i, prompt in enumerate(prompts_token_ids):
            if not prompt:
                raise ValueError(f"prompt {i} is empty")
            if len(prompt) >= max_pos:
                raise ValueError(f"prompt {i} has {len(prompt)} tokens; max_position_embeddings is {max_pos}")
        rows = [
            _Row(p, min(sampling.max_new_tokens, max_pos - len(prompt)))
            for p, prompt in enumerate(prompts_token_ids)
            for _ in range(sampling.n)
        ]
        generator = torch.Generator(device=self.device)
        if sampling.seed is None:
            generator.seed()
        else:
            generator.manual_seed(sampling.seed)
        # Longest prompts first; the sort is stable so a prompt's n rows stay adjacent.
        lengths = [len(prompts_token_ids[row.prompt_index]) for row in rows]
        order = sorted(range(len(rows)), key=lambda r: -lengths[r])
        with torch.inference_mode():
            for start in range(0, len(order), self.max_batch_size):
                chunk = [rows[r] for r in order[start : start + self.max_batch_size]]
                self._generate_chunk(prompts_token_ids, chunk, sampling, generator)
        self._cache = None
        return [
            Completion(
                prompt_index=row.prompt_index,
                token_ids=row.token_ids,
                text=self._decode(row.token_ids),
                logprobs=row.logprobs,
                finish_reason=row.finish_reason or "length",
            )
            for row in rows
        ]

    def _generate_chunk(
        self,
        prompts: list[list[int]],
        rows: list[_Row],
        sampling: SamplingParams,
        generator: torch.Generator,
    ) -> None:
        """Fill in ``rows`` (tokens, logprobs, finish_reason) in place."""
        device = self.device
        unique = list(dict.fromkeys(row.prompt_index for row in rows))
        slot_of = {p: i for i, p in enumerate(unique)}
        lengths = [len(prompts[p]) for p in unique]
        pad = max(lengths)
        max_len = pad + max(row.budget for row in rows)

        # Prefill each distinct prompt once, left-padded to `pad`.
        input_ids = torch.zeros(len(unique), pad, dtype=torch.long)
        prompt_valid = torch.zeros(len(unique), pad, dtype=torch.bool)
        for i, p in enumerate(unique):
            input_ids[i, pad - lengths[i] :] = torch.tensor(prompts[p], dtype=torch.long)
            prompt_valid[i, pad - lengths[i] :] = True
        input_ids, prompt_valid = input_ids.to(device), prompt_valid.to(device)
        cache = self.model.allocate_kv_cache(len(unique), max_len)
        logits = self.model(input_ids, attention_mask=prompt_valid, cache=cache, last_only=True)

        # Expand to one batch row per completion.
        expand = torch.tensor([slot_of[row.prompt_index] for row in rows], device=device)
        cache = cache.select(expand)
        self._cache = cache
        logits = logits[:, -1].index_select(0, expand)  # [B, V]
        key_valid = torch.ones(len(rows), max_len, dtype=torch.bool, device=device)
        key_valid[:, :pad] = prompt_valid.index_select(0, expand)
        positions = torch.tensor([len(prompts[row.prompt_index]) for row in rows], device=device)

        live = list(rows)  # batch position -> row (None once finished, until compaction)
        n_done = 0
        stop_ids = set(sampling.stop_token_ids)
        stop_strings = sampling.stop_strings
        # A stop string of c characters spans at most c tokens, or ~4c for byte-level pieces.
        tail = 4 * max((len(s) for s in stop_strings), default=0) + 4
        step = 0
        while True:
            tokens, logprobs = sample_tokens(logits, sampling.temperature, sampling.top_p, generator)
            for row, token, logprob in zip(live, tokens.tolist(), logprobs.tolist()):
                if row is None:
                    continue
                row.token_ids.append(token)
                row.logprobs.append(logprob)
                if token in stop_ids:
                    row.finish_reason = "stop"
                elif stop_strings and any(s in self._decode(row.token_ids[-tail:]) for s in stop_strings):
                    row.finish_reason = "stop"
                elif len(row.token_ids) >= row.budget:
                    row.finish_reason = "length"
            finished = [i for i, row in enumerate(live) if row is not None and row.finish_reason]
            for i in finished:
                live[i] = None
            n_done += len(finished)
            if n_done == len(live):
                return
            if n_done and n_done * 4 >= len(live):
                # Drop finished rows from the batch once they are a quarter of it.
                keep = [i for i, row in enumerate(live) if row is not None]
                keep_t = torch.tensor(keep, device=device)
                cache = cache.select(keep_t)
                self._cache = cache
                key_valid = key_valid.index_select(0, keep_t)
                positions = positions.index_select(0, keep_t)
                tokens = tokens.index_select(0, keep_t)
                live = [live[i] for i in keep]
                n_done = 0
            slot = pad + step
            logits = self.model(
                tokens[:, None],
                attention_mask=key_valid[:, : slot + 1],
                position_ids=positions[:, None],
                cache=cache,
                cache_start=slot,
                last_only=True,
            )[:, -1]
            positions = positions + 1
            step += 1

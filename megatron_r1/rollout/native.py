"""The native rollout engine: continuous batching over a static KV cache, CUDA graphs on GPUs.

This is the generator the GRPO trainer uses wherever vLLM is absent (CPU machines, tests, single-GPU
runs). Like vLLM it holds its own copy of the policy under Hugging Face names and receives fresh
weights after every optimizer step through ``update_weights``.

How ``generate`` works. The ``len(prompts) * n`` completions (rows) wait in a queue, longest prompt
first (a prompt's n rows stay adjacent). The static KV cache has ``max_batch_size`` slots; a
``SlotScheduler`` gives each admitted row the lowest free slot. Admission prefills each distinct
prompt of the admitted rows once and copies its keys/values into all of its rows' slots (prefix
sharing of the G samples). Decoding advances every occupied slot by one token per step, each at its
own position, over slots ``0 .. width-1``; a row that finishes (stop token, stop string, length) frees
its slot and the next waiting row takes it, so the batch never runs on for its longest row. Rows move
down into holes when that shrinks the width. On CUDA the decode step is replayed from a CUDA graph per
width (powers of two), and the host reads sampled tokens only every ``sync_every`` steps (stop
conditions are checked then; tokens a row drew after its stop are dropped): no host sync per token.

Randomness: the uniform drawing token t of row r is a hash of (seed, r, t) (``sampling.row_uniforms``),
so with a fixed ``SamplingParams.seed`` a completion does not depend on batch size, admission order or
the other rows; the same seed, prompts and weights give the same completions up to floating-point
differences between batch shapes and devices.

The model interface the engine uses (``NativeCausalLM``): ``allocate_kv_cache(slots, max_len)``,
``prefill(input_ids, lengths, cache, slots, source)`` and ``decode(tokens, positions, cache, kv_len)``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from typing import Any

import torch

from megatron_r1.rollout.cpu_packing import packing_supported
from megatron_r1.rollout.cuda_graphs import DecodeGraphs
from megatron_r1.rollout.engine import (
    Completion,
    SamplingParams,
    copy_named_tensors,
    make_decode,
    register_engine,
)
from megatron_r1.rollout.native_model import NativeCausalLM, NativeModelConfig
from megatron_r1.rollout.rows import Row, StopCheck, make_rows, to_completions
from megatron_r1.rollout.sampling import row_uniforms, sample_tokens, seed_key
from megatron_r1.rollout.scheduler import SlotScheduler, pow2_bucket

__all__ = ["NativeEngine", "sample_tokens"]

logger = logging.getLogger(__name__)

# Cache lengths are rounded up to this, so calls with slightly different lengths reuse the cache
# (and the CUDA graphs captured over it).
_CACHE_LEN_QUANTUM = 64


class _DecodeState:
    """Everything on the device that the decode loop touches: the static KV cache and per-slot
    buffers (the inputs and outputs of the captured decode step), plus the CUDA graphs over them."""

    def __init__(self, model: NativeCausalLM, num_slots: int, max_len: int, cuda_graphs: bool) -> None:
        device = model.inv_freq.device
        vocab = model.config.vocab_size
        self.model = model
        self.num_slots, self.max_len = num_slots, max_len
        self.cache = model.allocate_kv_cache(num_slots, max_len)
        # Zeroed: masked keys still enter q·k (0 · -inf would be fine, NaN garbage would not).
        self.cache.k.zero_()
        self.cache.v.zero_()
        long = dict(dtype=torch.long, device=device)
        self.tokens = torch.zeros(num_slots, **long)
        self.positions = torch.zeros(num_slots, **long)
        self.steps = torch.zeros(num_slots, **long)  # tokens generated so far (the sampler's counter)
        self.row_ids = torch.zeros(num_slots, **long)
        self.logits = torch.zeros(num_slots, vocab, dtype=self.cache.k.dtype, device=device)
        self.graphs = DecodeGraphs(self._graph_step) if cuda_graphs else None

    def fits(self, num_slots: int, max_len: int) -> bool:
        return self.num_slots >= num_slots and self.max_len >= max_len

    def _graph_step(self, width: int) -> None:
        self.decode(width, self.max_len)

    def decode(self, width: int, kv_len: int) -> None:
        """Slots ``0 .. width-1``: write this token's key/value, leave next-token logits in ``logits``."""
        out = self.model.decode(self.tokens[:width], self.positions[:width], self.cache, kv_len)
        self.logits[:width].copy_(out)

    def move(self, moves: list[tuple[int, int]]) -> None:
        """Slot ``dst`` takes everything of slot ``src`` for each ``(dst, src)``."""
        device = self.tokens.device
        dst = torch.tensor([d for d, _ in moves], device=device)
        src = torch.tensor([s for _, s in moves], device=device)
        self.cache.move_rows(dst, src)
        for buf in (self.tokens, self.positions, self.steps, self.row_ids, self.logits):
            buf.index_copy_(0, dst, buf.index_select(0, src))


@register_engine("native")
class NativeEngine:
    """Rollout engine on a plain-torch Llama/Qwen2/Qwen3 decoder (implements ``engine.Engine``).

    Args:
        model_config: the architecture, or a HF ``config.json`` dict.
        tokenizer: anything with ``decode(list[int]) -> str``.
        device: where the weights and the KV cache live.
        dtype: weight / activation dtype (sampling math is float32 regardless).
        max_batch_size: cache slots, i.e. most rows (prompt × sample) decoded together; bounds
            KV-cache memory at ``2 · layers · max_batch_size · kv_heads · max_len · head_dim``.
        cuda_graphs: on CUDA, replay the decode step from CUDA graphs (falls back to eager, with a
            warning, if capture fails). Ignored on CPU.
        sync_every: decode steps between host reads of the sampled tokens (stop checks, slot
            refills). None: 1 on CPU (no wasted steps), 16 on GPUs (no per-token host sync).
        offload_on_sleep: ``sleep()`` gives memory back (KV cache, graphs, and the weights to host
            memory on GPUs); CUDA graphs are then re-captured after every ``wake_up`` (~0.3 s for a
            0.5B model on an H100). False keeps everything resident between steps.
        cpu_packed_weights: on CPU in float32, run the linear layers from oneDNN-packed copies of the
            weights (``cpu_packing``: ~1.8× faster decode matmuls, one extra copy of the weights, rebuilt
            after each ``update_weights``). Ignored elsewhere or where the self-check fails.

    Weights start randomly initialised; load them with ``update_weights``.
    """

    def __init__(
        self,
        model_config: NativeModelConfig | dict[str, Any],
        tokenizer: Any,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_batch_size: int = 64,
        cuda_graphs: bool = True,
        sync_every: int | None = None,
        offload_on_sleep: bool = True,
        cpu_packed_weights: bool = True,
    ) -> None:
        if isinstance(model_config, dict):
            model_config = NativeModelConfig.from_hf_config(model_config)
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.config = model_config
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        if sync_every is None:
            sync_every = 16 if self.device.type == "cuda" else 1
        if sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {sync_every}")
        self.sync_every = sync_every
        self.offload_on_sleep = offload_on_sleep
        self.pack_weights = cpu_packed_weights and self.device.type == "cpu" and packing_supported(dtype)
        self.model = NativeCausalLM(model_config).to(device=self.device, dtype=dtype).eval()
        self.model.requires_grad_(False)
        self._decode = make_decode(tokenizer)
        self._params: dict[str, torch.Tensor] = dict(self.model.named_parameters())
        if model_config.tie_word_embeddings:
            # HF state dicts of tied models still list lm_head.weight (the same tensor).
            self._params["lm_head.weight"] = self._params["model.embed_tokens.weight"]
        self._state: _DecodeState | None = None
        self._asleep = False

    # ------------------------------------------------------------------ weights / memory

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy ``(hf_name, tensor)`` pairs into the held parameters.

        Any subset of the parameters may be sent per call (bucketed sync); tensors are converted
        to the engine's device and dtype. With tied embeddings ``lm_head.weight`` is accepted as
        another name of ``model.embed_tokens.weight``; ``*.rotary_emb.inv_freq`` is ignored.
        Raises ``ValueError`` on an unknown name or a shape mismatch (tensors before the
        offending one are already applied). Copies are in place, so captured CUDA graphs stay valid.
        """
        self.model.unpack_weights()  # stale from here on; generate repacks
        c = self.config
        holder = f"{c.num_layers}-layer model (tie_word_embeddings={c.tie_word_embeddings})"
        copy_named_tensors(self._params, named_tensors, holder)

    def named_weights(self) -> Iterable[tuple[str, torch.Tensor]]:
        """The held weights under their HF names (``lm_head.weight`` only when untied)."""
        return self.model.state_dict().items()

    def sleep(self) -> None:
        """With ``offload_on_sleep``: free the KV cache and CUDA graphs, and on an accelerator move the
        weights to host memory. Without: keep all three in place (no re-allocation, no re-capture)."""
        if not self.offload_on_sleep:
            self._asleep = True
            return
        self._state = None
        self.model.unpack_weights()
        if self.device.type != "cpu":
            self.model.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self._asleep = True

    def wake_up(self) -> None:
        """Bring the weights back to ``device``; cache and graphs are rebuilt by ``generate``."""
        if self.offload_on_sleep and self.device.type != "cpu":
            self.model.to(self.device)
        self._asleep = False

    @property
    def captured_widths(self) -> list[int]:
        """Decode widths with a captured CUDA graph (empty on CPU, with graphs off, or after a failure)."""
        state = self._state
        return [] if state is None or state.graphs is None else state.graphs.widths

    # ------------------------------------------------------------------ generation

    def generate(self, prompts_token_ids: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """``len(prompts) * sampling.n`` completions, prompt-major (see ``engine.Engine``)."""
        if self._asleep:
            raise RuntimeError("NativeEngine.generate called while asleep; call wake_up() first")
        rows = make_rows(prompts_token_ids, sampling, self.config.max_position_embeddings)
        if not rows:
            return []
        seed = sampling.seed if sampling.seed is not None else int(torch.randint(0, 2**62, ()).item())
        lengths = [len(prompts_token_ids[row.prompt_index]) for row in rows]
        need = max(n + row.budget for n, row in zip(lengths, rows))
        need = -(-need // _CACHE_LEN_QUANTUM) * _CACHE_LEN_QUANTUM
        slots = min(self.max_batch_size, len(rows))
        if self.pack_weights and not self.model.is_packed:
            self.model.pack_weights(self.max_batch_size)
        if self._state is None or not self._state.fits(slots, need):
            self._state = None  # free the old cache before allocating the new one
            with torch.inference_mode():
                self._state = _DecodeState(self.model, slots, need, self.cuda_graphs)
        # Longest prompts first; the sort is stable so a prompt's n rows stay adjacent.
        order = sorted(range(len(rows)), key=lambda r: -lengths[r])
        with torch.inference_mode():
            self._run(self._state, prompts_token_ids, deque(rows[r] for r in order), sampling, seed_key(seed))
        return to_completions(rows, self._decode)

    def _run(
        self,
        state: _DecodeState,
        prompts: list[list[int]],
        waiting: deque[Row],
        sampling: SamplingParams,
        key: int,
    ) -> None:
        """Generate every row of ``waiting`` (filled in place) with continuous batching."""
        width_of = (lambda n: pow2_bucket(n, state.num_slots)) if state.graphs is not None else (lambda n: n)
        scheduler = SlotScheduler(state.num_slots, width_of)
        rows: dict[int, Row] = {row.row_id: row for row in waiting}
        block_tokens = torch.empty(state.num_slots, self.sync_every, dtype=torch.long, device=self.device)
        block_logprobs = torch.empty(
            state.num_slots, self.sync_every, dtype=torch.float32, device=self.device
        )
        stop = StopCheck(sampling, self._decode)
        while waiting or scheduler.row_of:
            if waiting and scheduler.num_free:
                admitted = [waiting.popleft() for _ in range(min(scheduler.num_free, len(waiting)))]
                self._prefill(state, prompts, admitted, scheduler.admit([r.row_id for r in admitted]))
            moves = scheduler.compact()
            if moves:
                state.move(moves)
            width = scheduler.width
            live = [rows[r] for r in scheduler.row_of.values()]
            remaining = [row.budget - len(row.token_ids) for row in live]
            steps = min(self.sync_every, max(remaining))
            final = not waiting and max(remaining) <= steps
            max_position = max(len(prompts[row.prompt_index]) + len(row.token_ids) for row in live)
            for i in range(steps):
                self._sample(state, width, sampling, key, block_tokens[:, i], block_logprobs[:, i])
                if final and i == steps - 1:
                    break  # every row ends with this token: no forward for the next one
                state.tokens[:width].copy_(block_tokens[:width, i])
                state.steps[:width] += 1
                if state.graphs is not None:
                    state.graphs(width)
                else:
                    state.decode(width, min(state.max_len, max_position + i + 1))
                state.positions[:width].add_(1).clamp_(max=state.max_len - 1)
            tokens = block_tokens[:width, :steps].tolist()  # the one host sync of the block
            logprobs = block_logprobs[:width, :steps].tolist()
            for slot, row_id in list(scheduler.row_of.items()):
                row = rows[row_id]
                keep, reason = stop(row, tokens[slot])
                row.token_ids.extend(tokens[slot][:keep])
                row.logprobs.extend(logprobs[slot][:keep])
                if reason:
                    row.finish_reason = reason
                    scheduler.release(slot)

    def _sample(
        self,
        state: _DecodeState,
        width: int,
        sampling: SamplingParams,
        key: int,
        tokens_out: torch.Tensor,
        logprobs_out: torch.Tensor,
    ) -> None:
        uniforms = None
        if sampling.temperature > 0:
            uniforms = row_uniforms(key, state.row_ids[:width], state.steps[:width])
        tokens, logprobs = sample_tokens(
            state.logits[:width], sampling.temperature, sampling.top_p, uniforms=uniforms
        )
        tokens_out[:width].copy_(tokens)
        logprobs_out[:width].copy_(logprobs)

    def _prefill(
        self, state: _DecodeState, prompts: list[list[int]], admitted: list[Row], slots: list[int]
    ) -> None:
        """Prefill the distinct prompts of ``admitted`` once each into their rows' ``slots``."""
        device = self.device
        unique = list(dict.fromkeys(row.prompt_index for row in admitted))
        index_of = {p: i for i, p in enumerate(unique)}
        lengths = [len(prompts[p]) for p in unique]
        input_ids = torch.zeros(len(unique), max(lengths), dtype=torch.long)
        for i, p in enumerate(unique):
            input_ids[i, : lengths[i]] = torch.tensor(prompts[p], dtype=torch.long)
        slots_t = torch.tensor(slots, device=device)
        source = torch.tensor([index_of[row.prompt_index] for row in admitted], device=device)
        lengths_t = torch.tensor(lengths, device=device)
        logits = self.model.prefill(input_ids.to(device), lengths_t, state.cache, slots_t, source)
        state.logits.index_copy_(0, slots_t, logits.index_select(0, source))
        state.positions.index_copy_(0, slots_t, lengths_t.index_select(0, source))
        state.steps.index_fill_(0, slots_t, 0)
        state.row_ids.index_copy_(0, slots_t, torch.tensor([r.row_id for r in admitted], device=device))

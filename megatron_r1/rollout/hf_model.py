"""Rollout engine hosting transformers' own model classes: the in-process generator for MoE / MLA families.

The native engine (``native.py``) runs a hand-written Llama/Qwen decoder; this one runs whatever
``transformers.AutoModelForCausalLM.from_config`` builds for a HF ``config.json`` — Qwen3-MoE (softmax
top-k router) and DeepSeek-V3 (MLA with q/kv LoRA and YaRN, sigmoid group-limited routing with the
``e_score_correction_bias`` correction, a shared expert, the first k layers dense). transformers is the
reference the checkpoint converters are tested against, so the engine samples from exactly the
function the trainer computes (``logprob_diff`` ~1e-7 in fp32, tests/rollout/test_rollout_hf_model.py).

Why two backends (measured with ``tools/bench_rollout_backends.py --threads 1``: SmolLM2-135M's dense
shape, random fp32 weights, 4 prompts × n 8 = 32 rows × 64 new tokens, same weights, prompts and seed, one
run on the 2-core machine under a load average of ~40 from other jobs, so absolute figures are low): the
native model 24.7 tokens/s, this engine 15.7, transformers' ``generate`` 9.7. The hand-written model is
1.57× this engine on dense shapes, so dense families keep it. For MoE and MLA a hand-written twin would
re-implement routing, grouped top-k with the expert bias, YaRN and the latent projections — hundreds of
lines to keep in step with transformers — while this engine gets them from the reference itself (parity
with transformers' ``generate`` is exact, tests/rollout/test_rollout_hf_model.py).
``rollout/backends.py`` picks the backend per family (a registry).

Generation follows the native engine's contract (``engine.Engine``): rows sorted by prompt length and
run in chunks of ``max_batch_size``; each distinct prompt of a chunk is prefilled once, left-padded
(explicit position ids, so a padded row computes what the unpadded prompt would), and its cache
rows are copied to its ``n`` samples; finished rows are dropped from the batch once they are a
quarter of it. Randomness is the native engine's: the uniform drawing token t of completion r is a hash
of (seed, r, t) (``sampling.row_uniforms``), so with a fixed seed a completion does not depend on the batch
size, the chunking or the other prompts of the call. Row bookkeeping and stop checks are ``rows.py``'s.

``update_weights`` takes checkpoint (HF) names. transformers 5 holds routed experts fused per layer
(``mlp.experts.gate_up_proj [E, 2I, H]``, ``mlp.experts.down_proj [E, H, I]``) while checkpoints and
the trainer's weight sync name them per expert (``mlp.experts.{e}.{gate,up,down}_proj.weight``): each
per-expert name is mapped to its slice of the fused tensor.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from megatron_r1.rollout.engine import Completion, SamplingParams, copy_named_tensors, make_decode
from megatron_r1.rollout.rows import Row, StopCheck, make_rows, to_completions
from megatron_r1.rollout.sampling import row_uniforms, sample_tokens, seed_key

__all__ = ["HFModelEngine", "checkpoint_views"]


def checkpoint_views(model: nn.Module) -> dict[str, torch.Tensor]:
    """Checkpoint (HF) name → the tensor of ``model`` holding it (a view into a fused expert tensor
    for per-expert names).

    Every parameter and persistent buffer of ``model.state_dict()`` appears under its own name,
    except fused expert tensors (3-D ``gate_up_proj`` / ``down_proj`` of a module with both), which
    appear as ``{prefix}.{e}.gate_proj.weight`` (rows ``[:I]`` of ``gate_up_proj[e]``),
    ``{prefix}.{e}.up_proj.weight`` (rows ``[I:]``) and ``{prefix}.{e}.down_proj.weight``.
    """
    views: dict[str, torch.Tensor] = {}
    fused: set[str] = set()
    for prefix, module in model.named_modules():
        gate_up = getattr(module, "gate_up_proj", None)
        down = getattr(module, "down_proj", None)
        if not (isinstance(gate_up, torch.Tensor) and isinstance(down, torch.Tensor) and gate_up.dim() == 3):
            continue
        inter = gate_up.shape[1] // 2
        for e in range(gate_up.shape[0]):
            views[f"{prefix}.{e}.gate_proj.weight"] = gate_up.data[e, :inter]
            views[f"{prefix}.{e}.up_proj.weight"] = gate_up.data[e, inter:]
            views[f"{prefix}.{e}.down_proj.weight"] = down.data[e]
        fused |= {f"{prefix}.gate_up_proj", f"{prefix}.down_proj"}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name not in fused:
            views[name] = tensor.data
    return views


class HFModelEngine:
    """Rollout engine on transformers' model class for ``hf_config`` (implements ``engine.Engine``).

    Args:
        hf_config: a HF ``config.json`` dict (``model_type`` picks the class) or a ``PretrainedConfig``.
        tokenizer: anything with ``decode(list[int]) -> str``.
        device: where the weights and the KV cache live.
        dtype: weight / activation dtype (sampling math is float32 regardless).
        max_batch_size: most rows (prompt × sample) decoded together.

    Weights start randomly initialised; load them with ``update_weights``.
    """

    def __init__(
        self,
        hf_config: dict[str, Any] | Any,
        tokenizer: Any,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_batch_size: int = 64,
    ) -> None:
        import transformers

        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if isinstance(hf_config, dict):
            skip = ("architectures", "transformers_version")
            fields = {k: v for k, v in hf_config.items() if k not in skip}
            hf_config = transformers.AutoConfig.for_model(**fields)
        self.config = hf_config
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        model = transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa")
        self.model = model.to(device=self.device, dtype=dtype).eval().requires_grad_(False)
        self._views = checkpoint_views(self.model)
        if getattr(hf_config, "tie_word_embeddings", False):
            self._views.setdefault("lm_head.weight", self._views["model.embed_tokens.weight"])
        self._max_positions = int(getattr(hf_config, "max_position_embeddings", 4096))
        params = inspect.signature(self.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._decode = make_decode(tokenizer)
        self._asleep = False

    # ------------------------------------------------------------------ weights / memory

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy ``(hf_name, tensor)`` pairs into the held weights (checkpoint names, experts per expert).

        Any subset may be sent per call; tensors are converted to the held tensor's device and dtype.
        Raises ``ValueError`` on an unknown name or a shape mismatch (earlier tensors stay applied).
        """
        holder = f"{type(self.model).__name__} ({self.config.num_hidden_layers} layers)"
        copy_named_tensors(self._views, named_tensors, holder)

    def named_weights(self) -> Iterable[tuple[str, torch.Tensor]]:
        """The held weights under checkpoint names (``lm_head.weight`` also when tied)."""
        return self._views.items()

    def sleep(self) -> None:
        """On an accelerator, move the weights to host memory (the cache lives only inside ``generate``)."""
        if self.device.type != "cpu":
            self.model.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self._asleep = True

    def wake_up(self) -> None:
        """Bring the weights back to ``device``."""
        if self.device.type != "cpu":
            self.model.to(self.device)
        self._asleep = False

    # ------------------------------------------------------------------ generation

    def generate(self, prompts_token_ids: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """``len(prompts) * sampling.n`` completions, prompt-major (see ``engine.Engine``)."""
        if self._asleep:
            raise RuntimeError("HFModelEngine.generate called while asleep; call wake_up() first")
        rows = make_rows(prompts_token_ids, sampling, self._max_positions)
        seed = sampling.seed if sampling.seed is not None else int(torch.randint(0, 2**62, ()).item())
        key = seed_key(seed)
        lengths = [len(prompts_token_ids[row.prompt_index]) for row in rows]
        order = sorted(range(len(rows)), key=lambda r: -lengths[r])  # stable: a prompt's rows stay adjacent
        with torch.inference_mode():
            for start in range(0, len(order), self.max_batch_size):
                chunk = [rows[r] for r in order[start : start + self.max_batch_size]]
                self._generate_chunk(prompts_token_ids, chunk, sampling, key)
        return to_completions(rows, self._decode)

    def _forward(self, input_ids, attention_mask, position_ids, cache) -> torch.Tensor:
        """Last-position logits ``[B, V]``; appends this step's keys / values to ``cache``."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kwarg: cache},
        )
        return out.logits[:, -1]

    def _generate_chunk(
        self,
        prompts: list[list[int]],
        rows: list[Row],
        sampling: SamplingParams,
        key: int,
    ) -> None:
        """Fill in ``rows`` (tokens, logprobs, finish_reason) in place; ``key`` is ``seed_key(seed)``."""
        from transformers import DynamicCache

        device = self.device
        unique = list(dict.fromkeys(row.prompt_index for row in rows))
        slot_of = {p: i for i, p in enumerate(unique)}
        lengths = [len(prompts[p]) for p in unique]
        pad = max(lengths)

        # Prefill each distinct prompt once, left-padded to `pad`.
        input_ids = torch.zeros(len(unique), pad, dtype=torch.long)
        prompt_valid = torch.zeros(len(unique), pad, dtype=torch.long)
        for i, p in enumerate(unique):
            input_ids[i, pad - lengths[i] :] = torch.tensor(prompts[p], dtype=torch.long)
            prompt_valid[i, pad - lengths[i] :] = 1
        input_ids, prompt_valid = input_ids.to(device), prompt_valid.to(device)
        position_ids = (prompt_valid.cumsum(-1) - 1).clamp_(min=0)
        cache = DynamicCache(config=self.config)
        logits = self._forward(input_ids, prompt_valid, position_ids, cache)

        # Expand to one batch row per completion.
        expand = torch.tensor([slot_of[row.prompt_index] for row in rows], device=device)
        cache.batch_select_indices(expand)
        logits = logits.index_select(0, expand)  # [B, V]
        key_valid = prompt_valid.index_select(0, expand)  # grows by one column per step
        positions = torch.tensor([len(prompts[row.prompt_index]) for row in rows], device=device)

        row_ids = torch.tensor([row.row_id for row in rows], device=device)
        live: list[Row | None] = list(rows)  # batch position -> row (None once finished)
        n_done = 0
        stop = StopCheck(sampling, self._decode)
        step = 0  # every row of a chunk starts together: all have `step` tokens so far
        while True:
            uniforms = None
            if sampling.temperature > 0:
                uniforms = row_uniforms(key, row_ids, torch.full_like(row_ids, step))
            tokens, logprobs = sample_tokens(logits, sampling.temperature, sampling.top_p, uniforms=uniforms)
            for row, token, logprob in zip(live, tokens.tolist(), logprobs.tolist()):
                if row is None:
                    continue
                # Before appending: the check reads the row's earlier tokens. A live row has budget left,
                # so the token is always kept.
                _, row.finish_reason = stop(row, [token])
                row.token_ids.append(token)
                row.logprobs.append(logprob)
            finished = [i for i, row in enumerate(live) if row is not None and row.finish_reason]
            for i in finished:
                live[i] = None
            n_done += len(finished)
            if n_done == len(live):
                return
            if n_done and n_done * 4 >= len(live):
                keep = torch.tensor([i for i, row in enumerate(live) if row is not None], device=device)
                cache.batch_select_indices(keep)
                key_valid = key_valid.index_select(0, keep)
                positions = positions.index_select(0, keep)
                tokens = tokens.index_select(0, keep)
                row_ids = row_ids.index_select(0, keep)
                live = [live[i] for i in keep.tolist()]
                n_done = 0
            key_valid = torch.cat([key_valid, key_valid.new_ones(len(live), 1)], dim=1)
            logits = self._forward(tokens[:, None], key_valid, positions[:, None], cache)
            positions = positions + 1
            step += 1

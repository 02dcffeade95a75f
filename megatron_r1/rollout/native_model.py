"""A compact plain-torch decoder for the Llama / Qwen2 / Qwen3 / SmolLM2 family (native engine).

The module tree mirrors Hugging Face's ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` so that
``state_dict()`` names are exactly the HF names (``model.layers.{i}.self_attn.q_proj.weight``, ...;
``lm_head.weight`` only when embeddings are untied) and the numerics follow HF (RMSNorm in float32,
RoPE tables in float32 cast to the activation dtype, ``cat(freqs, freqs)`` rotate-half layout).

Two ways to run it:

- ``forward``: the full forward (and a simple cached decode over a left-padded layout, where cache slot
  ``s`` holds step ``s`` of every row) through ``scaled_dot_product_attention`` with an explicit mask.
- ``prefill`` + ``decode``: what the rollout engine runs. The KV cache is static (allocated once) and
  each batch row of it is a *slot* holding one sequence at its own positions (position ``p`` of the
  sequence lives at cache index ``p``; no left padding). ``prefill`` runs right-padded prompts through
  SDPA with ``is_causal`` (the fused kernels on GPUs) and writes their keys/values into any slots, one
  prompt into several (the G samples share the prompt's prefill). ``decode`` advances each slot by one
  token at its own position, writing with ``index_copy_`` and attending over the cache with a length
  mask; it allocates nothing that depends on host values, so it can be captured in a CUDA graph.

On CPU in float32 the linear layers and the LM head can run from oneDNN-packed copies of their weights
(``pack_weights`` / ``unpack_weights``, ``cpu_packing``); the parameters, and their HF names, stay.

Not supported (rejected by ``from_hf_config``): sliding-window attention, MLP biases, RoPE
scaling other than ``linear`` / ``llama3``, partial rotary embeddings, activations other than SiLU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from megatron_r1.rollout.cpu_packing import pack_weight, packed_linear, worth_packing

__all__ = ["KVCache", "NativeCausalLM", "NativeModelConfig"]


@dataclass
class NativeModelConfig:
    """Architecture of a Llama-family decoder (the subset the native engine implements)."""

    vocab_size: int
    """Rows of the embedding / LM-head matrices."""
    hidden_size: int
    """Model width."""
    intermediate_size: int
    """Width of the SwiGLU MLP."""
    num_layers: int
    """Decoder layers."""
    num_heads: int
    """Query heads."""
    num_kv_heads: int
    """Key/value heads (GQA when fewer than ``num_heads``)."""
    head_dim: int | None = None
    """Per-head width; ``hidden_size // num_heads`` when None."""
    rope_theta: float = 10000.0
    """RoPE base."""
    rms_norm_eps: float = 1e-6
    """Epsilon of every RMSNorm."""
    qkv_bias: bool = False
    """Biases on q/k/v projections (Qwen2: True)."""
    tie_word_embeddings: bool = False
    """LM head shares ``model.embed_tokens.weight`` (no ``lm_head.weight`` then)."""
    max_position_embeddings: int = 4096
    """Longest prompt + completion the engine will run."""
    attn_output_bias: bool = False
    """Bias on o_proj too (Llama ``attention_bias=True`` puts biases on q, k, v and o)."""
    qk_norm: bool = False
    """Per-head RMSNorm of queries and keys before RoPE (Qwen3: ``self_attn.{q,k}_norm``)."""
    rope_scaling: dict[str, Any] | None = field(default=None)
    """HF rope parameters for ``rope_type`` ``linear`` or ``llama3``; None: plain RoPE."""

    def __post_init__(self) -> None:
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}"
                )
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} not divisible by num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in ("default", "linear", "llama3"):
            raise NotImplementedError(f"native model: rope_type {rope_type!r} is not supported")

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> NativeModelConfig:
        """Read a HF ``config.json`` dict (LlamaConfig / Qwen2Config, transformers 4 or 5 keys)."""
        model_type = cfg.get("model_type", "llama")
        if model_type not in ("llama", "qwen2", "qwen3", "mistral"):
            raise NotImplementedError(f"native model: model_type {model_type!r} is not supported")
        if cfg.get("hidden_act", "silu") != "silu":
            raise NotImplementedError(f"native model: hidden_act {cfg['hidden_act']!r}")
        if cfg.get("mlp_bias", False):
            raise NotImplementedError("native model: mlp_bias=True is not supported")
        if cfg.get("use_sliding_window", False) or (model_type == "mistral" and cfg.get("sliding_window")):
            raise NotImplementedError("native model: sliding-window attention is not supported")
        # transformers 5 folds rope_theta / rope_scaling into rope_parameters.
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        rope_theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise NotImplementedError("native model: partial_rotary_factor != 1 is not supported")
        rope_scaling = None if rope_type == "default" else {**rope, "rope_type": rope_type}
        attention_bias = bool(cfg.get("attention_bias", False))
        num_heads = cfg["num_attention_heads"]
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=cfg.get("num_key_value_heads") or num_heads,
            head_dim=cfg.get("head_dim"),
            rope_theta=rope_theta,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            qkv_bias=model_type == "qwen2" or attention_bias,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            attn_output_bias=model_type != "qwen2" and attention_bias,
            qk_norm=model_type == "qwen3",
            rope_scaling=rope_scaling,
        )


def rope_inv_freq(config: NativeModelConfig) -> torch.Tensor:
    """RoPE inverse frequencies ``[head_dim // 2]`` (float32), as HF's ``ROPE_INIT_FUNCTIONS``."""
    dim = config.head_dim
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv_freq = 1.0 / (config.rope_theta**exponent)
    scaling = config.rope_scaling or {}
    rope_type = scaling.get("rope_type", "default")
    if rope_type == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif rope_type == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_context = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_context / low, old_context / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


@dataclass
class KVCache:
    """Preallocated keys and values of every layer: ``k``, ``v``: ``[L, B, H_kv, S_max, D]``."""

    k: torch.Tensor
    v: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def select(self, rows: torch.Tensor) -> KVCache:
        """A new cache holding rows ``rows`` (``[B']`` int64) of this one, in that order."""
        return KVCache(self.k.index_select(1, rows), self.v.index_select(1, rows))

    def move_rows(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """In place: slot ``dst[i]`` takes the contents of slot ``src[i]`` (``[n]`` int64, disjoint)."""
        self.k.index_copy_(1, dst, self.k.index_select(1, src))
        self.v.index_copy_(1, dst, self.v.index_select(1, src))


class Linear(nn.Linear):
    """``nn.Linear`` (same parameter names) that runs from a oneDNN-packed copy of its weight when one is set
    (``NativeCausalLM.pack_weights``; CPU float32, see ``cpu_packing``)."""

    packed: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        return packed_linear(x, self.packed, self.bias)


class RMSNorm(nn.Module):
    """``weight * x / rms(x)``, normalised in float32 like HF's ``LlamaRMSNorm``."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm: one fused kernel on CUDA instead of seven (decode is launch-bound at small batch).
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    """GQA self-attention with RoPE, writing into / reading from an optional KV cache."""

    def __init__(self, config: NativeModelConfig) -> None:
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, d
        self.q_proj = Linear(h, config.num_heads * d, bias=config.qkv_bias)
        self.k_proj = Linear(h, config.num_kv_heads * d, bias=config.qkv_bias)
        self.v_proj = Linear(h, config.num_kv_heads * d, bias=config.qkv_bias)
        self.o_proj = Linear(config.num_heads * d, h, bias=config.attn_output_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(d, config.rms_norm_eps)
            self.k_norm = RMSNorm(d, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache | None,
        layer: int,
        start: int,
    ) -> torch.Tensor:
        """x: ``[B, T, hidden]``; cos/sin: ``[B, 1, T, D]``; mask: ``[B, 1, T, S]`` additive."""
        b, t, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        if cache is not None:
            cache.k[layer, :, :, start : start + t] = k
            cache.v[layer, :, :, start : start + t] = v
            k = cache.k[layer, :, :, : start + t]
            v = cache.v[layer, :, :, : start + t]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, enable_gqa=self.num_kv_heads != self.num_heads
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    def _qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x ``[B, T, hidden]``, cos/sin ``[B, 1, T, D]`` → q ``[B, H, T, D]``, k/v ``[B, H_kv, T, D]``."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v

    def prefill(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache,
        layer: int,
        slots: torch.Tensor,
        source: torch.Tensor,
    ) -> torch.Tensor:
        """Causal attention over right-padded prompts; keys/values of prompt ``source[i]`` go to cache
        slot ``slots[i]`` at indices ``0 .. T-1``.

        x: ``[P, T, hidden]``; cos/sin: ``[P, 1, T, D]``; slots, source: ``[n]`` int64.
        """
        p, t, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        cache.k[layer, :, :, :t].index_copy_(0, slots, k.index_select(0, source))
        cache.v[layer, :, :, :t].index_copy_(0, slots, v.index_select(0, source))
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.num_kv_heads != self.num_heads
        )
        return self.o_proj(out.transpose(1, 2).reshape(p, t, -1))

    def decode(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache,
        layer: int,
        write_index: torch.Tensor,
        key_mask: torch.Tensor,
    ) -> torch.Tensor:
        """One new token per slot ``0 .. B-1``, attending over cache indices ``0 .. S-1``.

        x: ``[B, 1, hidden]``; cos/sin: ``[B, 1, 1, D]``; write_index: ``[B * H_kv]`` flat row of
        ``cache.k[layer].view(-1, D)`` receiving each (slot, kv head)'s key; key_mask: ``[B, 1, 1, S]``
        float32, 0 where the key is visible and -inf elsewhere.
        """
        b = x.shape[0]
        s, d = key_mask.shape[-1], self.head_dim
        q, k, v = self._qkv(x, cos, sin)
        cache.k[layer].view(-1, d).index_copy_(0, write_index, k.reshape(-1, d))
        cache.v[layer].view(-1, d).index_copy_(0, write_index, v.reshape(-1, d))
        keys = cache.k[layer, :b, :, :s]  # [B, H_kv, S, D]
        values = cache.v[layer, :b, :, :s]
        # Grouped queries as [B, H_kv, G, D] so no key/value head is repeated in memory.
        q = q.reshape(b, self.num_kv_heads, -1, d)
        scores = torch.matmul(q, keys.transpose(-1, -2)).float() * (d**-0.5) + key_mask
        probs = torch.softmax(scores, dim=-1).to(values.dtype)
        out = torch.matmul(probs, values)  # [B, H_kv, G, D]
        return self.o_proj(out.reshape(b, 1, -1))


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: NativeModelConfig) -> None:
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.gate_proj = Linear(h, i, bias=False)
        self.up_proj = Linear(h, i, bias=False)
        self.down_proj = Linear(i, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: NativeModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class _Backbone(nn.Module):
    """Holds the ``model.*`` parameters (HF's ``LlamaModel``)."""

    def __init__(self, config: NativeModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class NativeCausalLM(nn.Module):
    """Decoder-only LM whose ``state_dict()`` keys are the HF ``*ForCausalLM`` names."""

    def __init__(self, config: NativeModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = _Backbone(config)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)
        self._packed_head: torch.Tensor | None = None
        self._is_packed = False

    @property
    def is_packed(self) -> bool:
        """Whether ``pack_weights`` ran since the last ``unpack_weights`` (small weights stay unpacked)."""
        return self._is_packed

    @torch.no_grad()
    def pack_weights(self, batch_hint: int) -> None:
        """Run the linear layers and the LM head from oneDNN-packed copies of their weights where that pays
        (``cpu_packing.worth_packing``; CPU, float32: the caller checks ``cpu_packing.packing_supported``).
        The copies go stale when the weights change: call ``unpack_weights`` before changing them."""
        for module in self.modules():
            if isinstance(module, Linear) and worth_packing(module.weight):
                module.packed = pack_weight(module.weight, batch_hint)
        head = self._head_weight()
        self._packed_head = pack_weight(head, batch_hint) if worth_packing(head) else None
        self._is_packed = True

    def unpack_weights(self) -> None:
        """Drop the packed copies: every layer runs ``F.linear`` on its parameters again."""
        for module in self.modules():
            if isinstance(module, Linear):
                module.packed = None
        self._packed_head = None
        self._is_packed = False

    def _head_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin ``[*positions.shape, D]`` for integer positions (float32 math, then ``dtype``)."""
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.model.norm(x)
        if self._packed_head is not None:
            return packed_linear(x, self._packed_head, None)
        return F.linear(x, self._head_weight())

    def prefill(
        self,
        input_ids: torch.Tensor,
        lengths: torch.Tensor,
        cache: KVCache,
        slots: torch.Tensor,
        source: torch.Tensor,
    ) -> torch.Tensor:
        """Run right-padded prompts and store their keys/values in cache slots.

        Args:
            input_ids: ``[P, T]`` prompts, prompt ``i`` in ``input_ids[i, :lengths[i]]`` (padding after).
            lengths: ``[P]`` int64 prompt lengths (>= 1), on the model's device.
            cache: the static cache; indices ``0 .. T-1`` of each slot in ``slots`` are overwritten.
            slots: ``[n]`` int64 cache slots to fill (distinct).
            source: ``[n]`` int64: slot ``slots[i]`` receives prompt ``source[i]`` (one prompt may
                fill several slots: prefix sharing of the G samples).

        Returns:
            ``[P, V]`` logits of each prompt's last token, in the model dtype.
        """
        p, t = input_ids.shape
        x = self.model.embed_tokens(input_ids)
        positions = torch.arange(t, device=input_ids.device).expand(p, t)
        cos, sin = self.rope(positions, x.dtype)
        cos, sin = cos[:, None], sin[:, None]
        for i, layer in enumerate(self.model.layers):
            x = x + layer.self_attn.prefill(layer.input_layernorm(x), cos, sin, cache, i, slots, source)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        last = x[torch.arange(p, device=x.device), lengths - 1]  # [P, hidden]
        return self._logits(last)

    def decode(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, kv_len: int
    ) -> torch.Tensor:
        """One decoding step of cache slots ``0 .. B-1``.

        Args:
            tokens: ``[B]`` int64, the token of slot ``b`` at position ``positions[b]``.
            positions: ``[B]`` int64, each ``< kv_len <= cache.max_len``; the token's key/value is
                written at that cache index and it attends to indices ``0 .. positions[b]``.
            cache: the static cache (``cache.batch_size >= B``).
            kv_len: cache indices attended over (a bound on ``positions + 1``; a constant under
                CUDA graphs, where it is the cache length).

        Returns:
            ``[B, V]`` next-token logits in the model dtype. No host synchronisation, no allocation
            whose size depends on device values: safe to capture in a CUDA graph.
        """
        b = tokens.shape[0]
        c = self.config
        x = self.model.embed_tokens(tokens[:, None])  # [B, 1, hidden]
        cos, sin = self.rope(positions[:, None, None], x.dtype)  # [B, 1, 1, D]
        # Row of cache.k[layer].view(-1, D) for (slot b, kv head h): (b * H_kv + h) * S_max + position.
        slot_head = torch.arange(b * c.num_kv_heads, device=tokens.device)
        write_index = slot_head * cache.max_len + positions[:, None].expand(b, c.num_kv_heads).reshape(-1)
        visible = torch.arange(kv_len, device=tokens.device)[None, :] <= positions[:, None]
        key_mask = torch.zeros(visible.shape, dtype=torch.float32, device=tokens.device)
        key_mask = key_mask.masked_fill_(~visible, float("-inf"))[:, None, None]  # [B, 1, 1, S]
        for i, layer in enumerate(self.model.layers):
            x = x + layer.self_attn.decode(
                layer.input_layernorm(x), cos, sin, cache, i, write_index, key_mask
            )
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self._logits(x[:, 0])

    def allocate_kv_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty cache for ``batch_size`` rows of ``max_len`` slots, on the model's device."""
        c, p = self.config, self.model.embed_tokens.weight
        shape = (c.num_layers, batch_size, c.num_kv_heads, max_len, c.head_dim)
        return KVCache(
            torch.empty(shape, device=p.device, dtype=p.dtype),
            torch.empty(shape, device=p.device, dtype=p.dtype),
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        cache_start: int = 0,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits of a batch, optionally extending a KV cache.

        Args:
            input_ids: ``[B, T]`` tokens, occupying cache slots ``cache_start .. cache_start+T-1``
                (slots ``0 .. T-1`` without a cache).
            attention_mask: ``[B, S]`` bool/int, S = ``cache_start + T``: which key slots hold real
                tokens (False for left padding). None: all valid.
            position_ids: ``[B, T]`` RoPE positions. None: ``cumsum(attention_mask) - 1`` over the
                last T slots (so left padding does not shift positions), or ``arange`` without a
                mask.
            cache: KV cache to write this step's keys/values into and attend over.
            cache_start: first cache slot of ``input_ids``.
            last_only: return logits for the last position only.

        Returns:
            ``[B, T, V]`` logits (``[B, 1, V]`` when ``last_only``) in the model dtype.
        """
        b, t = input_ids.shape
        s = cache_start + t
        device = input_ids.device
        if cache is None and cache_start:
            raise ValueError("cache_start > 0 needs a cache")
        if attention_mask is None:
            key_valid = torch.ones(b, s, dtype=torch.bool, device=device)
        else:
            key_valid = attention_mask[:, :s].to(torch.bool)
        if position_ids is None:
            if attention_mask is None:
                position_ids = torch.arange(cache_start, s, device=device).expand(b, t)
            else:
                position_ids = (key_valid.long().cumsum(-1) - 1).clamp_(min=0)[:, cache_start:]

        # mask[b, 0, i, j]: query slot cache_start+i may attend key slot j. A padded query also
        # sees itself so that no row of the mask is empty (SDPA would return NaN there).
        q_slot = torch.arange(cache_start, s, device=device)[:, None]
        k_slot = torch.arange(s, device=device)[None, :]
        causal = k_slot <= q_slot  # [T, S]
        allowed = (key_valid[:, None, :] & causal) | (k_slot == q_slot)
        x = self.model.embed_tokens(input_ids)
        # SDPA's CPU kernels turn a boolean mask into an additive one on every call; do it once
        # here for all layers.
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=device)
        mask = mask.masked_fill_(~allowed, float("-inf"))[:, None]  # [B, 1, T, S]

        freqs = position_ids[..., None].float() * self.inv_freq  # [B, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, T, D]
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)

        for i, layer in enumerate(self.model.layers):
            x = x + layer.self_attn(layer.input_layernorm(x), cos, sin, mask, cache, i, cache_start)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        if last_only:
            x = x[:, -1:]
        return self._logits(x)

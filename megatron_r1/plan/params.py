"""Parameter counts of a :class:`ModelConfig`, exactly as Megatron-Core's ``GPTModel`` builds it.

Pure arithmetic (no torch, no model build), split by where the parameters live in a parallel layout:
the embedding and output layer (first / last pipeline stage, split over TP), each transformer layer's
attention and dense MLP (split over TP), its routed experts (split over EP × expert-TP) and the small
replicated tensors (norms, router). ``tests/plan/test_params.py`` checks the totals against the built models.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_r1.config import ModelConfig


@dataclass(frozen=True)
class LayerParams:
    """Parameters of one transformer layer, by how they are sharded."""

    tp_split: int
    """Attention, dense MLP, shared expert: Megatron's column/row-parallel linears (split over TP)."""
    replicated: int
    """Norms and the router (the same on every TP rank)."""
    experts: int
    """Routed experts (split over EP × expert-TP)."""
    active_experts: int
    """The routed-expert parameters one token uses (top-k of them)."""

    @property
    def total(self) -> int:
        return self.tp_split + self.replicated + self.experts

    @property
    def active(self) -> int:
        return self.tp_split + self.replicated + self.active_experts


@dataclass(frozen=True)
class ModelParams:
    """Parameter counts of the whole model."""

    embedding: int
    """Input embedding [vocab, hidden] (first stage)."""
    output: int
    """Output layer [vocab, hidden] (last stage; 0 when tied to the embedding)."""
    final_norm: int
    """Final RMSNorm (last stage)."""
    layers: tuple[LayerParams, ...]
    """One entry per transformer layer."""

    @property
    def total(self) -> int:
        return self.embedding + self.output + self.final_norm + sum(layer.total for layer in self.layers)

    @property
    def active(self) -> int:
        """Parameters one token's forward multiplies with (for FLOPs: the embedding lookup is free)."""
        out = self.output or self.embedding
        return out + self.final_norm + sum(layer.active for layer in self.layers)

    @property
    def experts(self) -> int:
        return sum(layer.experts for layer in self.layers)


def head_dim(m: ModelConfig) -> int:
    return m.kv_channels or m.hidden_size // m.num_attention_heads


def attention_params(m: ModelConfig) -> tuple[int, int]:
    """(TP-split, replicated) parameters of one attention block, its input norm included."""
    h, heads = m.hidden_size, m.num_attention_heads
    if m.multi_latent_attention:
        qk = m.qk_head_dim + m.qk_pos_emb_head_dim
        if m.q_lora_rank:
            # q_down [q_lora, h] and kv_down [kv_lora + rope, h] are not TP-split; their norms neither.
            q = m.q_lora_rank * h + heads * qk * m.q_lora_rank
            replicated = m.q_lora_rank * h + m.q_lora_rank
        else:
            q, replicated = heads * qk * h, 0
        kv_down = (m.kv_lora_rank + m.qk_pos_emb_head_dim) * h
        kv_up = heads * (m.qk_head_dim + m.v_head_dim) * m.kv_lora_rank
        proj = h * heads * m.v_head_dim
        split = q - (m.q_lora_rank * h if m.q_lora_rank else 0) + kv_up + proj
        replicated += kv_down + m.kv_lora_rank + h  # kv_down, kv_layernorm, input_layernorm
        return split, replicated
    d, groups = head_dim(m), m.num_query_groups
    qkv_out = (heads + 2 * groups) * d
    split = qkv_out * h + (qkv_out if m.add_qkv_bias else 0) + h * heads * d
    replicated = h + (2 * d if m.qk_layernorm else 0)  # input_layernorm, per-head q/k norms
    return split, replicated


def is_moe_layer(m: ModelConfig, index: int) -> bool:
    return m.num_experts > 0 and index >= m.moe_first_k_dense


def layer_params(m: ModelConfig, index: int) -> LayerParams:
    h = m.hidden_size
    attn_split, attn_rep = attention_params(m)
    replicated = attn_rep + h  # pre_mlp_layernorm
    if not is_moe_layer(m, index):
        mlp = 3 * h * m.ffn_hidden_size  # SwiGLU: fc1 [2f, h] + fc2 [h, f]
        return LayerParams(attn_split + mlp, replicated, 0, 0)
    f = m.moe_ffn_hidden_size or m.ffn_hidden_size
    per_expert = 3 * h * f
    shared = 3 * h * (m.moe_shared_expert_intermediate_size or 0)
    replicated += m.num_experts * h  # router weight (expert bias is a buffer)
    return LayerParams(
        attn_split + shared, replicated, m.num_experts * per_expert, m.moe_router_topk * per_expert
    )


def model_params(m: ModelConfig) -> ModelParams:
    """Parameter counts of the GPTModel ``m`` describes (``m.vocab_size`` must be resolved)."""
    vocab_h = m.vocab_size * m.hidden_size
    return ModelParams(
        embedding=vocab_h,
        output=0 if m.tie_word_embeddings else vocab_h,
        final_norm=m.hidden_size,
        layers=tuple(layer_params(m, i) for i in range(m.num_layers)),
    )

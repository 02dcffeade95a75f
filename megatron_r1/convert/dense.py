"""Megatron ⇄ Hugging Face tensor mapping for the dense families (tiny, Llama / SmolLM2, Qwen2, Qwen3).

Works on full (TP-gathered) tensors with global layer indices, one tensor at a time: ``to_hf`` splits the
fused QKV (grouped by KV head, Megatron's layout ``[groups, q_per_group + 2, head_dim, hidden]``) and the
fused gate/up projection; ``from_hf`` buffers only the pieces of one fused tensor until it is complete.
Both the local layer spec's names and the Transformer Engine spec's (norms fused into the linears) are read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch

from megatron_r1.config import ModelConfig

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

# Megatron (local or TE spec) suffix → HF suffix, for tensors that map one to one.
_LAYER_DIRECT = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "post_attention_layernorm.weight",
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
    "self_attention.q_layernorm.weight": "self_attn.q_norm.weight",
    "self_attention.k_layernorm.weight": "self_attn.k_norm.weight",
}
_TOP_DIRECT = {
    "embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "decoder.final_layernorm.weight": "model.norm.weight",
    "output_layer.weight": "lm_head.weight",
}
_HF_TOP = {v: k for k, v in _TOP_DIRECT.items()}


def _head_dims(cfg: ModelConfig) -> tuple[int, int, int]:
    head_dim = cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_query_groups, cfg.num_attention_heads // cfg.num_query_groups, head_dim


def split_qkv(qkv: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron fused QKV [groups·(q_per_group+2)·head_dim, ...] → HF q, k, v."""
    groups, q_per_group, head_dim = _head_dims(cfg)
    rest = qkv.shape[1:]
    per_group = qkv.reshape(groups, q_per_group + 2, head_dim, *rest)
    q = per_group[:, :q_per_group].reshape(groups * q_per_group * head_dim, *rest)
    k = per_group[:, q_per_group].reshape(groups * head_dim, *rest)
    v = per_group[:, q_per_group + 1].reshape(groups * head_dim, *rest)
    return q, k, v


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """HF q, k, v → Megatron fused QKV (inverse of :func:`split_qkv`)."""
    groups, q_per_group, head_dim = _head_dims(cfg)
    rest = q.shape[1:]
    parts = (
        q.reshape(groups, q_per_group, head_dim, *rest),
        k.reshape(groups, 1, head_dim, *rest),
        v.reshape(groups, 1, head_dim, *rest),
    )
    return torch.cat(parts, dim=1).reshape(-1, *rest)


def to_hf(name: str, tensor: torch.Tensor, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """One full Megatron tensor (global layer index) → its HF-named tensor(s)."""
    if name.endswith("_extra_state"):
        return
    if name in _TOP_DIRECT:
        if name == "output_layer.weight" and cfg.tie_word_embeddings:
            return
        yield _TOP_DIRECT[name], tensor
        return
    m = _LAYER.match(name)
    if m is None:
        raise KeyError(f"no Hugging Face name for Megatron tensor {name!r}")
    layer, suffix = m.groups()
    prefix = f"model.layers.{layer}."
    if suffix in _LAYER_DIRECT:
        yield prefix + _LAYER_DIRECT[suffix], tensor
    elif suffix in ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias"):
        kind = suffix.rsplit(".", 1)[1]
        for proj, part in zip("qkv", split_qkv(tensor, cfg)):
            yield f"{prefix}self_attn.{proj}_proj.{kind}", part
    elif suffix == "mlp.linear_fc1.weight":
        gate, up = tensor.chunk(2, dim=0)
        yield prefix + "mlp.gate_proj.weight", gate
        yield prefix + "mlp.up_proj.weight", up
    else:
        raise KeyError(f"no Hugging Face name for Megatron tensor {name!r}")


_HF_LAYER_DIRECT = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "pre_mlp_layernorm.weight",
    "self_attn.o_proj.weight": "self_attention.linear_proj.weight",
    "mlp.down_proj.weight": "mlp.linear_fc2.weight",
    "self_attn.q_norm.weight": "self_attention.q_layernorm.weight",
    "self_attn.k_norm.weight": "self_attention.k_layernorm.weight",
}


class DenseFromHF:
    """Incremental HF → Megatron mapping: :meth:`push` one HF tensor, get the Megatron tensors it completes.

    Fused tensors (QKV, gate/up) are buffered only until all their parts have arrived."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.pending: dict[tuple[str, str], dict[str, torch.Tensor]] = {}

    def push(self, name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        if name in _HF_TOP:
            if name == "lm_head.weight" and self.cfg.tie_word_embeddings:
                return []  # a tied checkpoint may still carry the (identical) head
            return [(_HF_TOP[name], tensor)]
        m = _HF_LAYER.match(name)
        if m is None:
            if name.endswith("rotary_emb.inv_freq"):
                return []
            raise KeyError(f"unexpected Hugging Face tensor {name!r}")
        layer, suffix = m.groups()
        prefix = f"decoder.layers.{layer}."
        if suffix in _HF_LAYER_DIRECT:
            return [(prefix + _HF_LAYER_DIRECT[suffix], tensor)]
        attn = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)$", suffix)
        mlp = re.match(r"(mlp|mlp\.shared_experts|mlp\.experts\.\d+)\.(gate|up)_proj\.weight$", suffix)
        if attn:
            key, need = (prefix + "self_attention.linear_qkv." + attn.group(2), "qkv"), "qkv"
            part = attn.group(1)
        elif mlp:
            module = _HF_MLP_MODULE.get(mlp.group(1)) or mlp.group(1).replace(
                "mlp.experts.", "mlp.experts.local_experts."
            )
            key, need = (prefix + module + ".linear_fc1.weight", "gu"), "gu"
            part = mlp.group(2)[0]
        else:
            raise KeyError(f"unexpected Hugging Face tensor {name!r}")
        parts = self.pending.setdefault(key, {})
        parts[part] = tensor
        if set(parts) != set(need):
            return []
        del self.pending[key]
        if need == "qkv":
            return [(key[0], fuse_qkv(parts["q"], parts["k"], parts["v"], self.cfg))]
        return [(key[0], torch.cat([parts["g"], parts["u"]], dim=0))]

    def finish(self) -> None:
        """Raise if some fused tensor is still missing parts."""
        if self.pending:
            missing = ", ".join(sorted(k[0] for k in self.pending))
            raise KeyError(f"incomplete fused tensors (missing parts) for: {missing}")


_HF_MLP_MODULE = {"mlp": "mlp", "mlp.shared_experts": "mlp.shared_experts"}


def from_hf(
    named: Iterable[tuple[str, torch.Tensor]], cfg: ModelConfig
) -> Iterator[tuple[str, torch.Tensor]]:
    """HF-named tensors (any order) → Megatron local-spec names; fused tensors are emitted as soon as all
    their parts have arrived, so only pieces of a few tensors are held at once."""
    converter = DenseFromHF(cfg)
    for name, tensor in named:
        yield from converter.push(name, tensor)
    converter.finish()

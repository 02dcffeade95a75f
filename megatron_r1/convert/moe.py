"""Megatron ⇄ Hugging Face tensor mapping for the MoE families (Qwen3-MoE, DeepSeek-V3: MoE + MLA).

Experts are stored one tensor per expert on both sides (HF ``mlp.experts.{e}.{gate,up,down}_proj.weight``,
Megatron ``mlp.experts.local_experts.{e}.linear_fc{1,2}.weight`` on the local spec or
``mlp.experts.linear_fc{1,2}.weight{e}`` on TE's grouped GEMM), with global expert indices. The router is
``mlp.gate.weight`` ⇄ ``mlp.router.weight`` and DeepSeek-V3's ``e_score_correction_bias`` ⇄
``mlp.router.expert_bias``. MLA projections map one to one (same row layouts on both sides). Everything else
is the dense mapping (:mod:`megatron_r1.convert.dense`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch

from megatron_r1.config import ModelConfig
from megatron_r1.convert import dense

_LAYER = dense._LAYER
_HF_LAYER = dense._HF_LAYER

# Megatron suffix → HF suffix, one to one (local and TE spellings).
_MLA = {
    "self_attention.linear_q_proj.weight": "self_attn.q_proj.weight",
    "self_attention.linear_q_down_proj.weight": "self_attn.q_a_proj.weight",
    "self_attention.q_layernorm.weight": "self_attn.q_a_layernorm.weight",
    "self_attention.linear_q_up_proj.layer_norm_weight": "self_attn.q_a_layernorm.weight",
    "self_attention.linear_q_up_proj.weight": "self_attn.q_b_proj.weight",
    "self_attention.linear_kv_down_proj.weight": "self_attn.kv_a_proj_with_mqa.weight",
    "self_attention.kv_layernorm.weight": "self_attn.kv_a_layernorm.weight",
    "self_attention.linear_kv_up_proj.layer_norm_weight": "self_attn.kv_a_layernorm.weight",
    "self_attention.linear_kv_up_proj.weight": "self_attn.kv_b_proj.weight",
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
}
_HF_MLA = {v: k for k, v in _MLA.items() if "layer_norm_weight" not in k}
_ROUTER = {
    "mlp.router.weight": "mlp.gate.weight",
    "mlp.router.expert_bias": "mlp.gate.e_score_correction_bias",
    "mlp.shared_experts.linear_fc2.weight": "mlp.shared_experts.down_proj.weight",
}
_HF_ROUTER = {v: k for k, v in _ROUTER.items()}
_EXPERT = re.compile(
    r"^mlp\.experts\.(?:local_experts\.(\d+)\.linear_fc([12])\.weight|linear_fc([12])\.weight(\d+))$"
)
_HF_EXPERT_DOWN = re.compile(r"^mlp\.experts\.(\d+)\.down_proj\.weight$")


def to_hf(name: str, tensor: torch.Tensor, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """One full Megatron tensor (global layer and expert indices) → its HF-named tensor(s)."""
    m = _LAYER.match(name)
    if m is None:
        yield from dense.to_hf(name, tensor, cfg)
        return
    layer, suffix = m.groups()
    prefix = f"model.layers.{layer}."
    expert = _EXPERT.match(suffix)
    if cfg.multi_latent_attention and suffix in _MLA:
        yield prefix + _MLA[suffix], tensor
    elif suffix in _ROUTER:
        yield prefix + _ROUTER[suffix], tensor
    elif suffix == "mlp.shared_experts.linear_fc1.weight":
        gate, up = tensor.chunk(2, dim=0)
        yield prefix + "mlp.shared_experts.gate_proj.weight", gate
        yield prefix + "mlp.shared_experts.up_proj.weight", up
    elif expert:
        e = expert.group(1) or expert.group(4)
        fc = expert.group(2) or expert.group(3)
        if fc == "2":
            yield prefix + f"mlp.experts.{e}.down_proj.weight", tensor
        else:
            gate, up = tensor.chunk(2, dim=0)
            yield prefix + f"mlp.experts.{e}.gate_proj.weight", gate
            yield prefix + f"mlp.experts.{e}.up_proj.weight", up
    elif suffix.endswith("local_tokens_per_expert"):
        return  # router bookkeeping buffer, not a weight
    else:
        yield from dense.to_hf(name, tensor, cfg)


def from_hf(
    named: Iterable[tuple[str, torch.Tensor]], cfg: ModelConfig
) -> Iterator[tuple[str, torch.Tensor]]:
    """HF-named tensors (any order) → Megatron local-spec names (experts as ``local_experts.{e}`` with the
    global index)."""
    converter = dense.DenseFromHF(cfg)
    for name, tensor in named:
        m = _HF_LAYER.match(name)
        suffix = m.group(2) if m else ""
        prefix = f"decoder.layers.{m.group(1)}." if m else ""
        down = _HF_EXPERT_DOWN.match(suffix)
        if cfg.multi_latent_attention and suffix in _HF_MLA:
            yield prefix + _HF_MLA[suffix], tensor
        elif suffix in _HF_ROUTER:
            yield prefix + _HF_ROUTER[suffix], tensor
        elif down:
            yield prefix + f"mlp.experts.local_experts.{down.group(1)}.linear_fc2.weight", tensor
        else:
            yield from converter.push(name, tensor)
    converter.finish()

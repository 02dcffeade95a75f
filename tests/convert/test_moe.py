"""MoE families (Qwen3-MoE; DeepSeek-V3 with MLA, YaRN, group-limited sigmoid routing, expert bias, shared
expert, first dense layer): HF → Megatron → HF bit-exact, logits equal transformers' (fp32)."""

from __future__ import annotations

import json

import pytest
import torch

from megatron_r1.config import ParallelConfig
from megatron_r1.convert import get_adapter
from megatron_r1.convert.checkpoint import (
    hf_logits,
    hf_to_megatron,
    iter_hf_tensors,
    load_hf_weights,
    megatron_logits,
    megatron_to_hf,
)
from megatron_r1.models import build_model
from megatron_r1.models.hf import model_config_from_hf

CASES = ["qwen3_moe", "deepseek_v3", "deepseek_v3_yarn"]
TOKENS = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers(case, hf_models, world):
    hf_dir = hf_models[case]
    cfg = model_config_from_hf(hf_dir)
    if case == "deepseek_v3_yarn":
        assert cfg.rope_scaling_factor == 4.0 and cfg.rope_mscale_all_dim == 1.0
    model = build_model(cfg, ParallelConfig())
    load_hf_weights(model, hf_dir, cfg)
    model.eval()
    diff = (megatron_logits(model, TOKENS) - hf_logits(hf_dir, TOKENS, torch.float32)).abs().max()
    assert diff < 1e-4


@pytest.mark.parametrize("case", CASES[:2])
def test_adapter_round_trip_is_bit_exact(case, hf_models):
    hf_dir = hf_models[case]
    cfg = model_config_from_hf(hf_dir)
    adapter = get_adapter(cfg.preset)
    original = dict(iter_hf_tensors(hf_dir))
    megatron = dict(adapter.from_hf(original.items(), cfg))
    assert any(".experts.local_experts.3.linear_fc1.weight" in name for name in megatron)
    back = {h: t for name, tensor in megatron.items() for h, t in adapter.to_hf(name, tensor, cfg)}
    assert set(back) == set(original)
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor), name


def test_deepseek_v3_checkpoint_round_trip(hf_models, world, tmp_path):
    hf_dir = hf_models["deepseek_v3"]
    result = hf_to_megatron(hf_dir, tmp_path / "mcore", verify=True)
    assert result.max_abs_diff < 1e-4
    megatron_to_hf(tmp_path / "mcore", tmp_path / "hf")
    original = dict(iter_hf_tensors(hf_dir))
    back = dict(iter_hf_tensors(tmp_path / "hf"))
    assert set(back) == set(original)
    assert all(torch.equal(back[k], original[k]) for k in original)
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in index["weight_map"]
    assert "model.layers.1.mlp.gate.e_score_correction_bias" in index["weight_map"]

"""MoE families (Qwen3-MoE; DeepSeek-V3 with MLA, YaRN, group-limited sigmoid routing, expert bias, shared
expert, first dense layer): HF → Megatron → HF bit-exact, logits equal transformers' (fp32); policies built
from config fields (no HF origin) export with a generated config.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from megatron_r1.config import ConfigError, ModelConfig, ParallelConfig, load_config
from megatron_r1.convert import get_adapter
from megatron_r1.convert.checkpoint import (
    hf_logits,
    hf_to_megatron,
    iter_hf_tensors,
    load_hf_weights,
    megatron_logits,
    megatron_to_hf,
    save_dist_checkpoint,
)
from megatron_r1.convert.hf_config import hf_config_for
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


DEMO = Path(__file__).resolve().parents[2] / "examples" / "configs" / "tiny_deepseek_v3_cpu.yaml"


def _policy_from_fields(preset: str):
    """A MoE policy as training builds it from config fields (no HF origin): the DeepSeek-V3 demo's model
    section, or a tiny Qwen3-MoE with a dense first layer; every weight and the router's expert bias
    perturbed, so a mis-mapped tensor or a dropped bias changes the logits."""
    if preset.startswith("deepseek_v3"):
        cfg = dataclasses.replace(load_config(DEMO).model, vocab_size=96)
        if preset == "deepseek_v3_yarn":
            yarn = dict(
                rope_scaling_factor=4.0, rope_original_max_position_embeddings=8, rope_mscale_all_dim=1.0
            )
            cfg = dataclasses.replace(cfg, **yarn)
    else:
        cfg = ModelConfig(
            preset="qwen3_moe", num_layers=3, kv_channels=16, num_experts=4, moe_ffn_hidden_size=32
        )
        cfg = dataclasses.replace(cfg, vocab_size=96, moe_first_k_dense=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = build_model(cfg, ParallelConfig())
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
        biases = [buf for name, buf in model.named_buffers() if name.endswith("expert_bias")]
        for buf in biases:
            buf.copy_(torch.randn_like(buf) * 0.1)
    assert bool(biases) == preset.startswith("deepseek_v3")
    return cfg, model.eval()


@pytest.mark.parametrize("preset", ["qwen3_moe", "deepseek_v3", "deepseek_v3_yarn"])
def test_training_checkpoint_from_fields_exports_to_transformers(preset, world, tmp_path):
    """RUN/checkpoints/step_N of a MoE / MLA policy without a HF origin, through the CLI: megatron-to-hf
    generates config.json (``hf_config_for``'s builders), transformers reproduces the Megatron logits, expert
    bias included; the export then goes HF → Megatron → HF bit for bit."""
    from megatron_r1.cli import main
    from megatron_r1.training.checkpoint import write_manifest

    cfg, model = _policy_from_fields(preset)
    step = tmp_path / "run" / "checkpoints" / "step_000002"
    save_dist_checkpoint(model, step / "model")  # the trainer's layout: model/ + manifest, RUN/config.json
    write_manifest(step)
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": dataclasses.asdict(cfg)}))
    assert main(["convert", "megatron-to-hf", str(step), str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config == hf_config_for(cfg)
    expected = megatron_logits(model, TOKENS)
    assert (hf_logits(tmp_path / "hf", TOKENS, torch.float32) - expected).abs().max() < 1e-4
    exported = dict(iter_hf_tensors(tmp_path / "hf"))
    if preset != "qwen3_moe":
        bias = dict(model.named_buffers())["decoder.layers.1.mlp.router.expert_bias"]
        assert torch.equal(exported["model.layers.1.mlp.gate.e_score_correction_bias"], bias)
    hf_to_megatron(tmp_path / "hf", tmp_path / "mcore", verify=True)
    megatron_to_hf(tmp_path / "mcore", tmp_path / "hf2")
    back = dict(iter_hf_tensors(tmp_path / "hf2"))
    assert set(back) == set(exported)
    assert all(torch.equal(back[k], exported[k]) for k in exported)
    assert json.loads((tmp_path / "hf2" / "config.json").read_text()) == config


def test_inexpressible_policy_fails_before_export(world, tmp_path):
    """A config.json transformers cannot express is refused in one line, before the model is loaded."""
    cfg = ModelConfig(
        preset="qwen3_moe", num_experts=4, vocab_size=96, moe_shared_expert_intermediate_size=64
    )
    step = tmp_path / "run" / "checkpoints" / "step_000001"
    step.mkdir(parents=True)  # no weights: the refusal comes first
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": dataclasses.asdict(cfg)}))
    with pytest.raises(ConfigError, match="moe_shared_expert_intermediate_size"):
        megatron_to_hf(step, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_qwen3_moe_dense_layers_only_as_a_prefix():
    """``mlp_only_layers`` [0..k-1] is Megatron's ``moe_first_k_dense``; other dense layers are refused."""
    from megatron_r1.models.moe import qwen3_moe_from_hf_config

    hf = hf_config_for(ModelConfig(preset="qwen3_moe", num_experts=4, vocab_size=96))
    assert qwen3_moe_from_hf_config(hf | {"mlp_only_layers": [0]})["moe_first_k_dense"] == 1
    with pytest.raises(ConfigError, match=r"mlp_only_layers=\[1\] is not supported"):
        qwen3_moe_from_hf_config(hf | {"mlp_only_layers": [1]})

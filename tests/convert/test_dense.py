"""Dense families: HF → Megatron → HF bit-exact, Megatron logits equal transformers' (fp32)."""

from __future__ import annotations

import json

import pytest
import torch

from megatron_r1.config import ConfigError, ParallelConfig
from megatron_r1.convert import get_adapter
from megatron_r1.convert.checkpoint import (
    ConversionError,
    hf_logits,
    hf_to_megatron,
    iter_hf_tensors,
    load_hf_weights,
    megatron_logits,
    megatron_to_hf,
)
from megatron_r1.models import build_model
from megatron_r1.models.hf import model_config_from_hf

CASES = ["llama", "llama-tied", "qwen2", "qwen3", "qwen3-tied"]
TOKENS = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers(case, hf_models, world):
    hf_dir = hf_models[case]
    cfg = model_config_from_hf(hf_dir)
    assert cfg.preset == case.split("-")[0] and cfg.tie_word_embeddings == case.endswith("tied")
    model = build_model(cfg, ParallelConfig())
    load_hf_weights(model, hf_dir, cfg)
    model.eval()
    diff = (megatron_logits(model, TOKENS) - hf_logits(hf_dir, TOKENS, torch.float32)).abs().max()
    assert diff < 1e-4


@pytest.mark.parametrize("case", CASES)
def test_adapter_round_trip_is_bit_exact(case, hf_models):
    hf_dir = hf_models[case]
    cfg = model_config_from_hf(hf_dir)
    adapter = get_adapter(cfg.preset)
    original = dict(iter_hf_tensors(hf_dir))
    back = {
        hf_name: t
        for name, tensor in adapter.from_hf(original.items(), cfg)
        for hf_name, t in adapter.to_hf(name, tensor, cfg)
    }
    assert set(back) == set(original)
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor), name


@pytest.mark.parametrize("case", ["llama", "qwen3-tied"])
def test_checkpoint_round_trip(case, hf_models, world, tmp_path):
    hf_dir = hf_models[case]
    result = hf_to_megatron(hf_dir, tmp_path / "mcore", verify=True)
    assert result.max_abs_diff < 1e-4
    assert (
        json.loads((tmp_path / "mcore" / "megatron_r1_model.json").read_text())["preset"]
        == (case.split("-")[0])
    )
    megatron_to_hf(tmp_path / "mcore", tmp_path / "hf", max_shard_bytes=64 * 1024)
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded
    original = dict(iter_hf_tensors(hf_dir))
    back = dict(iter_hf_tensors(tmp_path / "hf"))
    assert set(back) == set(original)
    assert all(torch.equal(back[k], original[k]) for k in original)
    assert json.loads((tmp_path / "hf" / "config.json").read_text()) == json.loads(
        (hf_dir / "config.json").read_text()
    )
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers


def test_unsupported_architecture_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ConfigError, match="GPT2LMHeadModel.*supported:.*LlamaForCausalLM"):
        model_config_from_hf(tmp_path)


def test_shape_mismatch_names_tensor_and_shapes(hf_models, world):
    hf_dir = hf_models["llama"]
    cfg = model_config_from_hf(hf_dir, ffn_hidden_size=64)
    model = build_model(cfg, ParallelConfig())
    expected = r"'decoder.layers.0.mlp.linear_fc2.weight': checkpoint \(64, 96\) vs model \(64, 64\)"
    with pytest.raises(ConversionError, match=expected):
        load_hf_weights(model, hf_dir, cfg)


def test_failed_conversion_leaves_no_output(hf_models, world, tmp_path, monkeypatch):
    import megatron_r1.convert.checkpoint as ckpt

    def boom(*args, **kwargs):
        raise ConversionError("injected")

    monkeypatch.setattr(ckpt, "verify_against_hf", boom)
    with pytest.raises(ConversionError, match="injected"):
        hf_to_megatron(hf_models["llama"], tmp_path / "out", verify=True)
    assert list(tmp_path.iterdir()) == []


def test_training_checkpoint_exports_to_transformers(world, tmp_path):
    """A trainer checkpoint (RUN/checkpoints/step_N/model + RUN/config.json) of the tiny preset, no HF
    origin: config.json is generated and transformers reproduces the Megatron logits."""
    import dataclasses

    from megatron_r1.config import ModelConfig
    from megatron_r1.convert.checkpoint import save_dist_checkpoint

    cfg = ModelConfig(preset="tiny", vocab_size=96, init_std=0.2)
    model = build_model(cfg, ParallelConfig())
    step = tmp_path / "run" / "checkpoints" / "step_000003"
    save_dist_checkpoint(model, step / "model")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": dataclasses.asdict(cfg)}))
    megatron_to_hf(step, tmp_path / "hf")
    expected = megatron_logits(model.eval(), TOKENS)
    assert (hf_logits(tmp_path / "hf", TOKENS, torch.float32) - expected).abs().max() < 1e-4


def test_dist_checkpoint_shape_mismatch_names_tensor(hf_models, world, tmp_path):
    from megatron_r1.convert.checkpoint import load_megatron_model

    hf_to_megatron(hf_models["qwen2"], tmp_path / "mcore")
    expected = r"'decoder.layers.mlp.linear_fc2.weight': checkpoint \(2, 64, 96\) vs model \(2, 64, 128\)"
    with pytest.raises(ConversionError, match=expected):
        load_megatron_model(tmp_path / "mcore", ParallelConfig(), ffn_hidden_size=128)


def test_bf16_round_trip_keeps_dtype(hf_models, world, tmp_path):
    from transformers import AutoModelForCausalLM

    src = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(hf_models["qwen2"], dtype=torch.bfloat16).save_pretrained(src)
    result = hf_to_megatron(src, tmp_path / "mcore", verify=True)
    assert result.tolerance == 5e-2 and result.max_abs_diff < 5e-2
    megatron_to_hf(tmp_path / "mcore", tmp_path / "hf")
    original, back = dict(iter_hf_tensors(src)), dict(iter_hf_tensors(tmp_path / "hf"))
    assert all(back[k].dtype == torch.bfloat16 and torch.equal(back[k], original[k]) for k in original)

"""Numerical parity of NativeCausalLM with transformers' Llama / Qwen2 (tiny random models)."""

from __future__ import annotations

import pytest
import torch
from rollout_helpers import VOCAB, make_engine, make_hf_model
from transformers import LlamaConfig

from megatron_r1.rollout.native_model import NativeCausalLM, NativeModelConfig

ATOL = 1e-5


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_logits_match_transformers(family: str, tied: bool) -> None:
    hf = make_hf_model(family, tied=tied)
    engine = make_engine(hf)
    names = set(engine.model.state_dict())
    assert ("lm_head.weight" in names) == (not tied)
    assert ("model.layers.0.self_attn.q_proj.bias" in names) == (family == "qwen2")
    assert ("model.layers.1.self_attn.k_norm.weight" in names) == (family == "qwen3")
    assert names <= set(hf.state_dict())
    ids = torch.randint(0, VOCAB, (3, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
        actual = engine.model(ids)
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def test_llama3_rope_scaling_matches_transformers() -> None:
    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    hf = make_hf_model("llama", tied=True, rope_parameters=rope)
    engine = make_engine(hf)
    assert engine.config.rope_scaling["rope_type"] == "llama3"
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(engine.model(ids), hf(ids).logits, atol=ATOL, rtol=0)


def test_from_hf_config_reads_legacy_and_v5_keys() -> None:
    v5 = LlamaConfig(
        vocab_size=32,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 123.0},
    ).to_dict()
    cfg = NativeModelConfig.from_hf_config(v5)
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (3, 6, 2, 16)
    assert cfg.rope_theta == 123.0 and cfg.rope_scaling is None and not cfg.qkv_bias
    legacy = {  # transformers 4 style config.json (Qwen2.5)
        "model_type": "qwen2",
        "vocab_size": 32,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_theta": 1e6,
        "rope_scaling": None,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
    }
    cfg = NativeModelConfig.from_hf_config(legacy)
    assert cfg.rope_theta == 1e6 and cfg.qkv_bias and cfg.tie_word_embeddings
    assert cfg.head_dim == 16
    with pytest.raises(NotImplementedError, match="sliding"):
        NativeModelConfig.from_hf_config({**legacy, "use_sliding_window": True})


def _tiny_model(family: str = "qwen2") -> NativeCausalLM:
    engine = make_engine(make_hf_model(family, tied=False))
    return engine.model


@torch.inference_mode()
def test_kv_cache_incremental_decoding_equals_full_forward() -> None:
    model = _tiny_model()
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    full = model(ids)
    cache = model.allocate_kv_cache(2, 16)
    steps = [model(ids[:, :5], cache=cache, last_only=False)]
    for t in range(5, 12):
        steps.append(model(ids[:, t : t + 1], cache=cache, cache_start=t))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=0)


@torch.inference_mode()
def test_left_padding_matches_unpadded() -> None:
    model = _tiny_model("llama")
    short = torch.tensor([[5, 6, 7, 8]])
    long = torch.tensor([[9, 10, 11, 12, 13, 14, 15]])
    pad = long.shape[1] - short.shape[1]
    batch = torch.cat([torch.cat([torch.zeros(1, pad, dtype=torch.long), short], 1), long])
    mask = torch.ones_like(batch, dtype=torch.bool)
    mask[0, :pad] = False
    cache = model.allocate_kv_cache(2, 10)
    logits = model(batch, attention_mask=mask, cache=cache)
    torch.testing.assert_close(logits[0, pad:], model(short)[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits[1], model(long)[0], atol=ATOL, rtol=0)
    # One decode step continues both rows as if each were alone.
    nxt = torch.tensor([[20], [21]])
    mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.bool)], 1)
    positions = torch.tensor([[short.shape[1]], [long.shape[1]]])
    step = model(nxt, attention_mask=mask, position_ids=positions, cache=cache, cache_start=7)
    torch.testing.assert_close(step[0, -1], model(torch.cat([short, nxt[:1]], 1))[0, -1], atol=ATOL, rtol=0)
    torch.testing.assert_close(step[1, -1], model(torch.cat([long, nxt[1:]], 1))[0, -1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_attention_bias_on_qkvo_matches_transformers(family: str) -> None:
    hf = make_hf_model(family, tied=False, attention_bias=True)
    engine = make_engine(hf)
    assert "model.layers.0.self_attn.o_proj.bias" in engine.model.state_dict()
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(engine.model(ids), hf(ids).logits, atol=ATOL, rtol=0)

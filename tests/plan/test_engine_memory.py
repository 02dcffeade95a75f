"""The planner's rollout-engine memory against the native engine's real allocations: its weights (a full
copy of the model) and its preallocated KV cache."""

from __future__ import annotations

import pytest
import torch

from megatron_r1.config import load_config
from megatron_r1.plan import make_plan
from megatron_r1.plan.memory import kv_bytes_per_token


@pytest.mark.parametrize("tied", [False, True])
def test_native_engine_weights_and_kv_cache(tied):
    from megatron_r1.rollout.backends import native_engine_config
    from megatron_r1.rollout.native_model import NativeCausalLM

    overrides = [
        "model.preset=qwen3",
        "model.qk_layernorm=true",
        "model.kv_channels=24",
        "model.vocab_size=96",
        "model.params_dtype=bfloat16",
        f"model.tie_word_embeddings={str(tied).lower()}",
        "data.prompts_per_step=2",
        "data.max_prompt_tokens=16",
        "rollout.group_size=3",
        "rollout.max_new_tokens=40",
    ]
    cfg = load_config(None, overrides)
    engine = NativeCausalLM(native_engine_config(cfg)).to(torch.bfloat16)
    weights = sum(p.numel() * p.element_size() for p in engine.parameters())
    plan = make_plan(cfg)
    assert plan.engine.weights == weights
    rollouts, seq = 2 * 3, 16 + 40
    cache = engine.allocate_kv_cache(rollouts, seq)
    allocated = cache.k.numel() * cache.k.element_size() + cache.v.numel() * cache.v.element_size()
    assert kv_bytes_per_token(cfg.model, 1) * rollouts * seq == allocated == plan.engine.kv_cache

"""Rollout layouts of their own (``rollout.tensor_parallel`` / ``expert_parallel``) are vLLM's; the native
engine runs on each model-parallel leader, so a layout for it is refused in one line when the config loads."""

from __future__ import annotations

import pytest

from megatron_r1.config import ConfigError, load_config


def test_native_engine_refuses_a_rollout_layout():
    with pytest.raises(
        ConfigError, match=r"^rollout.tensor_parallel / rollout.expert_parallel apply to rollout"
    ):
        load_config(None, ["rollout.tensor_parallel=2"])
    with pytest.raises(ConfigError, match=r"^rollout.quantization=fp8 needs rollout.engine=vllm"):
        load_config(None, ["rollout.quantization=fp8"])
    cfg = load_config(None, ["rollout.engine=vllm", "rollout.tensor_parallel=2", "rollout.expert_parallel=2"])
    assert (cfg.rollout.tensor_parallel, cfg.rollout.expert_parallel) == (2, 2)

"""Layouts the planner can describe but the trainer does not run yet are refused in one line, before any
process group or model is built."""

from __future__ import annotations

import pytest

from megatron_r1.config import ConfigError, load_config


def test_rollout_engines_over_several_gpus_are_refused_at_start():
    from megatron_r1.training.setup import build_components

    cfg = load_config(None, ["rollout.tensor_parallel=2"])  # valid as a layout: no world size declared
    with pytest.raises(ConfigError, match=r"^rollout.tensor_parallel=2: rollout engines over several GPUs"):
        build_components(cfg)

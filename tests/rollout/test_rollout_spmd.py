"""The rollout layout of an SPMD engine (megatron_r1/rollout/spmd.py, config validation): prompts of the
trainer's DP replicas split over the rollout replicas and handed back, on 2 gloo processes, with a real
(native) engine, against one process generating everything."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from rollout_helpers import PROMPTS, make_engine, make_hf_model

from megatron_r1.config import Config, ConfigError, validate
from megatron_r1.rollout.engine import SamplingParams
from megatron_r1.rollout.spmd import split_evenly

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from dist_utils import run_workers  # noqa: E402

PROMPT_SETS = [[5, 6, 7], [9, 2], [3, 3, 3, 3], [1], [8, 8]]
GREEDY = SamplingParams(n=2, temperature=0.0, max_new_tokens=6)


def test_split_evenly() -> None:
    assert split_evenly(5, 2) == [(0, 3), (3, 5)]
    assert split_evenly(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert split_evenly(1, 3) == [(0, 1), (1, 1), (1, 1)]
    assert split_evenly(0, 2) == [(0, 0), (0, 0)]
    with pytest.raises(ValueError, match="parts"):
        split_evenly(3, 0)


def test_rollout_layout_is_validated() -> None:
    cfg = Config()
    cfg.rollout.engine = "vllm"
    cfg.rollout.tensor_parallel = 4
    cfg.data.prompts_per_step = 12
    validate(cfg, world_size=4)
    with pytest.raises(ConfigError, match="world size 6 is not divisible by rollout.tensor_parallel=4"):
        validate(cfg, world_size=6)
    cfg.rollout.expert_parallel = 2
    with pytest.raises(ConfigError, match="rollout.expert_parallel=2 must be 1 or rollout.tensor_parallel=4"):
        validate(cfg)
    native = Config()
    native.rollout.tensor_parallel = 2
    with pytest.raises(ConfigError, match="engine=vllm only"):
        validate(native)
    native.rollout.tensor_parallel = 1
    native.rollout.quantization = "fp8"
    with pytest.raises(ConfigError, match="rollout.quantization=fp8 needs rollout.engine=vllm"):
        validate(native)
    native.rollout.quantization = "int3"
    with pytest.raises(ConfigError, match="rollout.quantization='int3': expected one of none, fp8"):
        validate(native)


LAYOUTS = [(2, 1), (1, 2), (2, 2), (1, 1)]  # (trainer DP size, rollout TP) on 2 ranks


def _worker(rank: int, prompt_sets):
    import torch.distributed as dist

    from megatron_r1.rollout.spmd import generate_spmd

    dist.init_process_group("gloo")
    engine = make_engine(make_hf_model("llama", tied=False))
    results = {}
    for dp_size, rollout_tp in LAYOUTS:  # one world for all layouts (process start-up dominates)
        dp_rank = rank % dp_size  # this rank's trainer DP replica (DP=1: both ranks are one TP group)
        out = generate_spmd(engine, prompt_sets[dp_rank], GREEDY, dp_rank, dp_size, rollout_tp)
        results[dp_size, rollout_tp] = [(c.prompt_index, c.token_ids) for c in out]
    return results


@pytest.mark.slow
def test_generate_spmd_matches_one_process(tmp_path) -> None:
    """Trainer DP 2 / 1 × rollout TP 1 / 2: every rank gets its own replica's completions, prompt-major,
    as one process generating that replica's prompts (greedy: independent of how the prompts were split)."""
    sets = [PROMPTS, PROMPT_SETS]  # the trainer replicas' prompts (of different counts)
    engine = make_engine(make_hf_model("llama", tied=False))
    expected = [[(c.prompt_index, c.token_ids) for c in engine.generate(s, GREEDY)] for s in sets]
    got = run_workers(_worker, 2, tmp_path, sets, timeout=300)
    for rank, results in enumerate(got):
        for dp_size, rollout_tp in LAYOUTS:
            assert results[dp_size, rollout_tp] == expected[rank % dp_size], (rank, dp_size, rollout_tp)

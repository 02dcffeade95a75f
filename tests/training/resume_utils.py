"""Run the CLI trainer uninterrupted, and again killed with SIGKILL after a save then resumed: the two
metrics logs (without timings) must be equal. Shared by the CPU resume test and the CUDA one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

VOLATILE = ("time/", "tokens_per_s")


def cli(run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "megatron_r1.cli", "train", "--run-dir", str(run_dir), *args]


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def straight_and_resumed(tmp_path: Path, args: list[str], kill_after: str, timeout: float = 600):
    """Metrics of an uninterrupted run and of one SIGKILLed once checkpoint ``kill_after`` (e.g.
    ``step_000004``) is complete, then resumed with ``--resume``."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    straight = tmp_path / "straight"
    subprocess.run(cli(straight, *args), check=True, env=env, capture_output=True, timeout=timeout)

    killed = tmp_path / "killed"
    # Its own session, so SIGKILL reaches the whole job (the trainer and the helper process that
    # dist_checkpointing spawns), as a scheduler or the OOM killer of a job would; nothing is left running.
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen(cli(killed, *args), env=env, start_new_session=True, **quiet)
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() == kill_after:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoints" / kill_after / "rank_00000.pt").is_file()

    subprocess.run(cli(killed, "--resume", *args), check=True, env=env, capture_output=True, timeout=timeout)
    return metrics(straight), metrics(killed)

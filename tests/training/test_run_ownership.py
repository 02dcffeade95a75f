"""Run-directory ownership and clean stops: a stale lock is taken over (saying so), ``--overwrite`` archives
the previous run instead of mixing with it, SIGTERM during a save and SIGINT from outside stop the run between
steps with one line and the resume command, and the resumed run logs every step exactly once."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_r1 import cli
from megatron_r1.training import run as run_module
from megatron_r1.training.rundir import LOCK, RunDirLock

TINY = [
    "train.sft_warmup_steps=5",
    "data.prompts_per_step=2",
    "rollout.group_size=2",
    "rollout.max_new_tokens=8",
    "data.eval_size=4",
    "eval.every=0",
    "log.tensorboard=false",
    "log.progress=false",
    "train.save_every=1",
]


def _steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "x"}))
    with caplog.at_level(logging.WARNING), RunDirLock(tmp_path):
        holder = json.loads((tmp_path / LOCK).read_text())
        assert holder["pid"] == os.getpid()
    assert f"left by pid {dead.pid}" in caplog.text and "is gone" in caplog.text
    assert (tmp_path / LOCK).read_text() == ""  # released: no holder recorded


def test_overwrite_archives_the_previous_run(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step_000001").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"step": 0}\n')

    class Reached(Exception):
        pass

    def setup_reached(cfg):
        raise Reached

    monkeypatch.setattr(run_module, "build_components", setup_reached)
    with pytest.raises(Reached):
        cli.main(["train", "--run-dir", str(run_dir), "--overwrite"])
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK]
    (archived,) = tmp_path.glob("run.archived-*")
    assert (archived / "metrics.jsonl").read_text() == '{"step": 0}\n'
    assert (archived / "checkpoints" / "step_000001").is_dir()


@pytest.mark.slow
def test_sigterm_during_save_finishes_it_then_stops_and_resume_completes(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    real_save = run_module.save_checkpoint

    def save_with_sigterm(run, step, *args, **kwargs):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the checkpoint is being written
        return real_save(run, step, *args, **kwargs)

    monkeypatch.setattr(run_module, "save_checkpoint", save_with_sigterm)
    assert cli.main(["train", "--run-dir", str(run_dir), *TINY, "train.steps=3"]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("megatron-r1: stopped by SIGTERM after step 1 of 3; checkpoint ")
    assert f"--run-dir {run_dir}" in err and err.endswith("--resume")
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000001"
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    assert _steps(run_dir) == [0, 1]

    monkeypatch.undo()
    assert cli.main(["train", "--run-dir", str(run_dir), *TINY, "train.steps=3", "--resume"]) == 0
    assert _steps(run_dir) == [0, 1, 2, 3]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000003"


@pytest.mark.slow
def test_sigint_from_outside_stops_cleanly_and_leaves_no_process(tmp_path):
    """Ctrl-C on a run with a reward worker process: one line, exit 130, a checkpoint of the step it stopped
    after, and nothing left running in its session (reward workers shut down)."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "megatron_r1.cli", "train", "--run-dir", str(run_dir), *TINY]
    cmd += ["train.steps=1000", "reward.num_workers=1"]
    proc = subprocess.Popen(
        cmd,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    try:
        metrics = run_dir / "metrics.jsonl"
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("megatron-r1: stopped by SIGINT after step "), err
    assert "Traceback" not in err
    step = int(last.split("after step ")[1].split()[0])
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{step:06d}"
    left = ""
    for _ in range(100):  # helper processes notice their parent is gone within moments
        left = subprocess.run(["ps", "-o", "pid,args", "-s", str(proc.pid)], capture_output=True, text=True)
        left = "\n".join(left.stdout.splitlines()[1:])
        if not left:
            break
        time.sleep(0.1)
    assert not left, f"processes of the run left behind:\n{left}"

"""The pipeline end to end on the built-in arithmetic task with real stages (Megatron-Core SFT and GRPO,
native-engine rejection sampling, eval), killed with SIGKILL inside its second stage and resumed: the first
stage is not redone, the second continues from its own checkpoint, and the outputs are right."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from megatron_r1.cli import main

PIPELINE = """
defaults:
  train: {cpu_threads: 1, warmup_steps: 10}
  sft: {max_seq_len: 64, carry_noise: 0.0}
  log: {progress: false, tensorboard: false}
  rollout: {group_size: 4}
  data: {prompts_per_step: 8, eval_size: 16, digits: 1}   # one-digit sums: learnt in a few SFT steps
stages:
  - {name: cold, kind: sft, config: {sft: {steps: 100, batch_size: 16}}}
  - name: rl
    kind: grpo
    from: cold
    config: {train: {steps: 6, save_every: 1}, eval: {every: 0}}
  - name: rs
    kind: rejection_sample
    from: rl
    config: {rejection: {num_prompts: 16, samples_per_prompt: 4, chunk_prompts: 8, max_keep_per_prompt: 2}}
  - {name: eval, kind: eval, from: rl, config: {eval: {samples: 4, temperature: 0.6, top_p: 0.95}}}
"""


@pytest.mark.slow
def test_pipeline_killed_in_its_second_stage_resumes_without_redoing_the_first(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(PIPELINE)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "megatron_r1.cli", "pipeline", str(path), "--run-dir", str(run)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first_rl_ckpt = run / "rl" / "checkpoints" / "step_000001"
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None and not first_rl_ckpt.is_dir():
        time.sleep(0.2)
    assert proc.poll() is None, "the pipeline ended before its second stage saved a checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / "cold" / "DONE.json").is_file() and not (run / "rl" / "DONE.json").exists()
    cold = {p: p.stat().st_mtime_ns for p in (run / "cold").rglob("*") if p.is_file()}
    killed_at = int((run / "rl" / "checkpoints" / "latest").read_text().strip().split("_")[1])

    assert main(["pipeline", str(path), "--run-dir", str(run), "--resume"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (run / "cold").rglob("*") if p.is_file()} == cold
    rl_steps = [json.loads(line)["step"] for line in (run / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert rl_steps[-1] == 6 and killed_at >= 1
    assert (run / "rl" / "checkpoints" / "latest").read_text().strip() == "step_000006"
    for name in ("cold", "rl", "rs", "eval"):
        assert json.loads((run / name / "DONE.json").read_text())["outputs"]

    rows = [json.loads(line) for line in (run / "rs" / "data.jsonl").read_text().splitlines()]
    stats = json.loads((run / "rs" / "stats.json").read_text())
    assert stats["sampled"] == 64 and stats["kept"] == len(rows) > 0, stats
    for row in rows:
        a, b = map(int, row["prompt"].rstrip("=").split("+"))
        assert a < 10 and b < 10
        assert row["completion"].endswith(f"<answer>{a + b}</answer>"), row
        assert row["metadata"]["scores"]["exact"] == 1.0 and row["metadata"]["checkpoint"].endswith("rl")
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["k"] == 4 and report["overall"]["problems"] == 16
    assert {"pass@1", "pass@4", "cons@4"} <= set(report["overall"]) and (run / "eval" / "report.md").is_file()

"""The stand-alone commands on a tiny SFT'd checkpoint: ``eval`` of a run directory and of a step directory
(the run's own architecture and held-out set), and ``rejection-sample``, whose rerun with --resume rewrites no
finished chunk."""

import json

import pytest

from megatron_r1.cli import main


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cmd") / "sft"
    args = ["sft", "--run-dir", str(run), "sft.steps=2", "sft.batch_size=4", "model.hidden_size=32"]
    assert main([*args, "model.num_attention_heads=2", "log.progress=false", "log.tensorboard=false"]) == 0
    return run


@pytest.mark.slow
def test_eval_of_a_run_and_of_a_step_directory(sft_run, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", str(sft_run), "--samples", "2", "--limit", "3", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["k"] == 2 and report["overall"]["problems"] == 3 and report["checkpoint"] == str(sft_run)
    assert {"pass@1", "pass@2", "cons@2", "length/mean", "format_rate"} <= set(report["overall"])
    assert "| **all** | 3 |" in capsys.readouterr().out
    step = sft_run / "checkpoints" / "step_000002"
    assert main(["eval", str(step), "--limit", "2", "--out", str(tmp_path / "ev2"), "eval.samples=1"]) == 0
    assert json.loads((tmp_path / "ev2" / "report.json").read_text())["overall"]["problems"] == 2


@pytest.mark.slow
def test_rejection_sample_writes_parts_and_resumes(sft_run, tmp_path):
    run = tmp_path / "rs"
    args = ["rejection-sample", "--run-dir", str(run), f"model.checkpoint={sft_run}", "model.hidden_size=32"]
    args += ["model.num_attention_heads=2", "rejection.num_prompts=6", "rejection.chunk_prompts=4"]
    args += ["rejection.samples_per_prompt=2", "rollout.max_new_tokens=8"]
    assert main(args) == 0
    parts = sorted((run / "parts").glob("part_*.jsonl"))
    assert [p.name for p in parts] == ["part_00000.jsonl", "part_00001.jsonl"]
    stats = json.loads((run / "stats.json").read_text())
    assert stats["sampled"] == 12 and stats.get("kept", 0) == len(
        (run / "data.jsonl").read_text().splitlines()
    )
    mtimes = [p.stat().st_mtime_ns for p in parts]
    assert main([*args, "--resume"]) == 0
    assert [p.stat().st_mtime_ns for p in parts] == mtimes


def test_rejection_sample_needs_weights(tmp_path, capsys):
    assert main(["rejection-sample", "--run-dir", str(tmp_path / "r")]) == 2
    assert "set model.checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_rejection_sample_over_a_jsonl_source(sft_run, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1), "id": f"q{i}"}) + "\n" for i in range(3)
        )
    )
    run = tmp_path / "rs"
    args = ["rejection-sample", "--run-dir", str(run), f"model.checkpoint={sft_run}", "model.hidden_size=32"]
    args += ["model.num_attention_heads=2", "data.source=jsonl", f"data.path={prompts}", "data.eval_size=1"]
    args += ["rejection.num_prompts=10", "rejection.samples_per_prompt=2", "rollout.max_new_tokens=6"]
    args += ["rejection.max_keep_per_prompt=0", "rejection.max_response_tokens=64"]
    assert main(args) == 0
    assert json.loads((run / "stats.json").read_text())["sampled"] == 6  # the 3 rows of the file, 2 each
    for row in map(json.loads, (run / "data.jsonl").read_text().splitlines()):
        assert (
            row["metadata"]["prompt_id"] in ("q0", "q1", "q2") and row["metadata"]["scores"]["exact"] == 1.0
        )

"""The pipeline driver: stage configs wired to earlier stages' outputs and validated up front; finished
stages never rerun; an interrupted stage resumes inside itself (stage kinds recorded by a probe kind
registered for the test — the driver is what is under test; the real kinds run in test_pipeline_e2e)."""

import json

import pytest

from megatron_r1.config import ConfigError
from megatron_r1.pipeline import stages as stage_registry
from megatron_r1.pipeline.driver import load_pipeline, run_pipeline

PIPELINE = """
defaults:
  model: {hidden_size: 32, num_attention_heads: 2, num_query_groups: 1}
stages:
  - {name: cold, kind: sft, config: {sft: {steps: 5}}}
  - {name: rl, kind: grpo, from: cold, config: {train: {steps: 3}}}
  - {name: rs, kind: rejection_sample, from: rl}
  - {name: student, kind: distill, data: rs, config: {model: {hidden_size: 16}}}
  - {name: eval, kind: eval, from: student, eval_data: probs.jsonl}
"""


def _write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_stages_are_wired_to_earlier_outputs(tmp_path):
    stages = load_pipeline(_write(tmp_path, PIPELINE), tmp_path / "run")
    by = {s.name: s for s in stages}
    assert [s.kind for s in stages] == ["sft", "grpo", "rejection_sample", "distill", "eval"]
    assert by["cold"].cfg.model.checkpoint is None and by["cold"].cfg.sft.steps == 5
    assert by["rl"].cfg.model.checkpoint == str(tmp_path / "run" / "cold")
    assert by["student"].cfg.sft.data == str(tmp_path / "run" / "rs" / "data.jsonl")
    assert by["student"].cfg.model.hidden_size == 16 and by["student"].cfg.model.checkpoint is None
    # eval inherits the architecture of the stage whose weights it loads
    assert by["eval"].cfg.model.hidden_size == 16 and by["eval"].options == {"eval_data": "probs.jsonl"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stages:\n  - {name: a, kind: sfft}\n", "stage 'a': unknown kind 'sfft'"),
        ("stages:\n  - {name: a, kind: grpo, from: b}\n", "stage 'a': from: 'b' is not an earlier stage"),
        ("stages:\n  - {name: a, kind: sft}\n  - {name: b, kind: sft, data: a}\n", "not a rejection_sample"),
        ("stages:\n  - {name: a, kind: sft, config: {sft: {stepz: 1}}}\n", "unknown key 'stepz'"),
        (
            "stages:\n  - {name: a, kind: sft, config: {train: {micro_batch_size: 0}}}\n",
            "stage 'a': train.micro",
        ),
        ("stages:\n  - {name: a, kind: sft}\n  - {name: a, kind: eval}\n", "unique"),
        ("stages: []\n", "non-empty list"),
    ],
)
def test_bad_pipelines_fail_before_any_stage_runs(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        run_pipeline(_write(tmp_path, text), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_finished_stages_are_skipped_and_the_interrupted_one_resumes(tmp_path, monkeypatch):
    calls = []
    crash = {"b": True}

    def probe(cfg, run_dir, resume, options):
        calls.append((run_dir.name, resume))
        run_dir.mkdir(parents=True, exist_ok=True)
        if crash.pop(run_dir.name, False):
            raise KeyboardInterrupt  # killed inside the stage
        return {"checkpoint": str(run_dir)}

    monkeypatch.setitem(stage_registry.STAGES, "probe", probe)
    path = _write(tmp_path, "stages:\n" + "".join(f"  - {{name: {n}, kind: probe}}\n" for n in "abc"))
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(path, run)
    assert calls == [("a", False), ("b", False)]
    assert (run / "a" / "DONE.json").is_file() and not (run / "b" / "DONE.json").exists()
    with pytest.raises(ConfigError, match="already started; rerun with --resume"):
        run_pipeline(path, run)
    records = run_pipeline(path, run, resume=True)
    assert calls[2:] == [("b", True), ("c", False)]
    assert set(records) == {"a", "b", "c"}
    assert json.loads((run / "b" / "DONE.json").read_text())["outputs"] == {"checkpoint": str(run / "b")}
    run_pipeline(path, run, resume=True)  # everything done: nothing runs again
    assert len(calls) == 4


@pytest.mark.parametrize("name", ["r1_tiny_cpu", "r1_zero", "r1", "distill"])
def test_shipped_pipelines_load_and_validate(name, tmp_path):
    from pathlib import Path

    path = Path(__file__).parents[2] / "examples" / "pipelines" / f"{name}.yaml"
    stages = load_pipeline(path, tmp_path)
    assert stages[-1].kind == "eval" and stages[-1].cfg.eval.samples > 1

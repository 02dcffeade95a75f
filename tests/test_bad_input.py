"""The hostile / confused-user battery: every bad input of ``megatron-r1`` fails with one line naming what is
wrong and exit status 2 — before any expensive setup (``build_components`` is replaced by a tripwire) and
without writing into the run directory."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from megatron_r1 import cli
from megatron_r1.training import run as run_module


@pytest.fixture
def no_setup(monkeypatch):
    """Fail the test if a case gets as far as building the model."""

    def tripwire(cfg):
        raise AssertionError("reached build_components: the input was not checked early")

    monkeypatch.setattr(run_module, "build_components", tripwire)


def _one_line_error(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("megatron-r1: error: ") and "\n" not in err, err
    return err


def _hf_dir(tmp_path: Path, config_text: str = '{"architectures": ["LlamaForCausalLM"]}') -> Path:
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(config_text)
    return d


def _write_safetensors(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(64, 64)}, str(path))


CONFIG_CASES = {
    "lr-negative": (["train.lr=-1"], "train.lr=-1"),
    "eval-samples-0": (["eval.samples=0"], "eval.samples"),
    "eval-temperature-negative": (["eval.temperature=-1"], "eval.temperature"),
    "group-size-1": (["rollout.group_size=1"], "rollout.group_size=1"),
    "max-new-tokens-too-long": (["rollout.max_new_tokens=600"], "model.max_position_embeddings=512"),
    "steps-0": (["train.steps=0"], "train.steps"),
    "log-level": (["log.level=LOUD"], "log.level='LOUD'"),
    "reward-timeout-0": (["reward.timeout_s=0"], "reward.timeout_s"),
    "unknown-reward": (["reward.weights={exactt: 1.0}"], "reward.weights"),
    "all-weights-zero": (["reward.weights={exact: 0.0}"], "reward.weights"),
    "min-lr-above-lr": (["train.min_lr=1.0"], "train.min_lr"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES), ids=list(CONFIG_CASES))
def test_bad_setting_is_one_line_before_setup(case, tmp_path, capsys, no_setup):
    overrides, named = CONFIG_CASES[case]
    run_dir = tmp_path / "run"
    err = _one_line_error(capsys, ["train", "--run-dir", str(run_dir), *overrides])
    assert named in err, err
    assert not run_dir.exists()


def test_data_path_is_a_directory(tmp_path, capsys, no_setup):
    err = _one_line_error(capsys, ["train", "data.source=jsonl", f"data.path={tmp_path}"])
    assert f"data.path={tmp_path}" in err and "directory" in err


def test_empty_jsonl(tmp_path, capsys, no_setup):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    err = _one_line_error(capsys, ["train", "data.source=jsonl", f"data.path={path}"])
    assert str(path) in err and "no rows" in err


def test_jsonl_rows_without_the_field_the_reward_needs(tmp_path, capsys, no_setup):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(20)))
    args = ["train", "data.source=jsonl", f"data.path={path}", "data.eval_size=4"]
    err = _one_line_error(capsys, [*args, "reward.weights={math: 1.0}", "reward.accuracy=math"])
    assert str(path) in err and "'answer'" in err and "'math'" in err


def test_corrupt_hf_config_json(tmp_path, capsys, no_setup):
    hf = _hf_dir(tmp_path, "{not json")
    err = _one_line_error(capsys, ["train", f"model.hf_path={hf}"])
    assert str(hf / "config.json") in err and "invalid JSON" in err
    err = _one_line_error(capsys, ["convert", "hf-to-megatron", str(hf), str(tmp_path / "out")])
    assert str(hf / "config.json") in err
    assert not (tmp_path / "out").exists()


def test_truncated_safetensors(tmp_path, capsys, no_setup):
    hf = _hf_dir(tmp_path)
    weights = hf / "model.safetensors"
    _write_safetensors(weights)
    weights.write_bytes(weights.read_bytes()[:-100])
    err = _one_line_error(capsys, ["train", f"model.hf_path={hf}"])
    assert str(weights) in err and "truncated" in err
    err = _one_line_error(capsys, ["convert", "hf-to-megatron", str(hf), str(tmp_path / "out")])
    assert str(weights) in err and "truncated" in err


def test_run_dir_is_a_file(tmp_path, capsys, no_setup):
    path = tmp_path / "file"
    path.write_text("x")
    err = _one_line_error(capsys, ["train", "--run-dir", str(path)])
    assert str(path) in err and "not a directory" in err
    err = _one_line_error(capsys, ["train", "--run-dir", str(path / "sub")])
    assert "not a directory" in err


def test_run_dir_not_writable(tmp_path, capsys, no_setup, monkeypatch):
    # The tests run as root, for whom every directory is writable: the permission answer is simulated.
    from megatron_r1.training import rundir

    monkeypatch.setattr(rundir.os, "access", lambda path, mode: False)
    err = _one_line_error(capsys, ["train", "--run-dir", str(tmp_path / "run")])
    assert "not writable" in err and str(tmp_path) in err


def test_used_run_dir_without_resume_is_refused(tmp_path, capsys, no_setup):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 0}\n')
    (run_dir / "config.json").write_text("{}")
    err = _one_line_error(capsys, ["train", "--run-dir", str(run_dir)])
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 0}\n'
    assert (run_dir / "config.json").read_text() == "{}"


def test_resume_with_a_different_model_fails_before_setup_and_keeps_config(tmp_path, capsys, no_setup):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    from megatron_r1.config import Config

    saved = json.dumps(Config().to_dict())
    (run_dir / "config.json").write_text(saved)
    err = _one_line_error(capsys, ["train", "--run-dir", str(run_dir), "--resume", "model.hidden_size=128"])
    assert "model.hidden_size=128" in err and "64" in err
    assert (run_dir / "config.json").read_text() == saved


def test_resume_without_run_dir(capsys, no_setup):
    err = _one_line_error(capsys, ["train", "--resume"])
    assert "--run-dir" in err


def test_override_without_value(capsys, no_setup):
    err = _one_line_error(capsys, ["train", "train.steps"])
    assert "'train.steps'" in err and "train.steps=VALUE" in err


def test_binary_and_directory_config(tmp_path, capsys, no_setup):
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    err = _one_line_error(capsys, ["train", str(binary)])
    assert str(binary) in err and "not a text YAML file" in err
    err = _one_line_error(capsys, ["train", str(tmp_path)])
    assert str(tmp_path) in err and "directory" in err


def test_convert_output_is_a_file(tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("keep me")
    err = _one_line_error(capsys, ["convert", "megatron-to-hf", str(tmp_path), str(out)])
    assert str(out) in err and "not a directory" in err
    assert out.read_text() == "keep me"


def test_gguf_unknown_name_lists_the_known_ones(capsys):
    err = _one_line_error(capsys, ["convert", "gguf-to-hf", "smollm3", "/tmp/never-written"])
    assert "smollm3" in err and "smollm2" in err


def test_lock_held_by_another_process_is_refused_naming_it(tmp_path, capsys, no_setup):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from megatron_r1.training.rundir import RunDirLock
                lock = RunDirLock({str(run_dir)!r}); lock.acquire()
                print("locked", flush=True); time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        err = _one_line_error(capsys, ["train", "--run-dir", str(run_dir)])
        assert "in use by another run" in err and f"pid {holder.pid}" in err
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()

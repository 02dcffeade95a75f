"""The embedded demo at reduced size: GRPO raises held-out accuracy over the warmed-up base, end to end
through the CLI (Megatron-Core policy, native engine, weight sync, rewards, metrics, plot)."""

import json

import pytest

from megatron_r1.cli import main


@pytest.mark.slow
def test_demo_improves_accuracy(tmp_path, capsys):
    run_dir = tmp_path / "demo"
    rc = main(["train", "--run-dir", str(run_dir), "train.steps=40", "log.progress=false", "eval.every=20"])
    assert rc == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(41))
    evals = {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}
    assert set(evals) == {0, 20, 40}
    assert evals[40] >= evals[0] + 0.2, evals
    required = (
        "reward/mean reward/std response_length/mean response_length/max kl clip_fraction entropy "
        "grad_norm lr zero_std_groups tokens_per_s time/rollout time/reward time/train time/weight_sync"
    ).split()
    assert all(k in rows[-1] for k in required), [k for k in required if k not in rows[-1]]
    assert rows[-1]["logprob_diff"] < 1e-4  # the engine samples from exactly the trained weights
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000040"
    assert list((run_dir / "tensorboard").iterdir())
    assert main(["plot", str(run_dir)]) == 0
    assert (run_dir / "plots" / "accuracy.png").stat().st_size > 1000


def test_cli_reports_bad_config_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stesp: 3\n")
    assert main(["train", str(bad), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'stesp'" in err and "bad.yaml" in err


def test_cli_accepts_overrides_after_options(tmp_path, monkeypatch):
    from megatron_r1 import cli

    seen = {}
    monkeypatch.setattr(cli, "_train", lambda args: seen.update(vars(args)))
    assert cli.main(["train", "cfg.yaml", "--run-dir", str(tmp_path), "a.b=1", "--resume", "c.d=2"]) == 0
    assert seen["config"] == "cfg.yaml" and seen["overrides"] == ["a.b=1", "c.d=2"] and seen["resume"]
    assert cli.main(["train", "x.y=3"]) == 0
    assert seen["config"] is None and seen["overrides"] == ["x.y=3"]
    with pytest.raises(SystemExit):
        cli.main(["train", "--no-such-flag"])


@pytest.mark.slow
def test_algorithm_options_end_to_end(tmp_path):
    """KL to the reference, several PPO epochs (ratio ≠ 1, clipping), DAPO's dynamic-sampling filter and
    overlong shaping, Dr.GRPO advantages and aggregation: all run through the real loop."""
    overrides = [
        "train.steps=3",
        "train.sft_warmup_steps=50",
        "algorithm.kl_coef=0.05",
        "algorithm.ppo_epochs=2",
        "algorithm.drop_zero_std_groups=true",
        "algorithm.overlong_buffer=8",
        "algorithm.loss_agg=seq-mean-token-sum-norm",
        "algorithm.advantage=dr_grpo",
        "algorithm.clip_high=0.28",
        "rollout.max_new_tokens=32",
        "train.lr=1e-2",
        "eval.every=0",
        "log.progress=false",
        "log.tensorboard=false",
    ]
    assert main(["train", "--run-dir", str(tmp_path), *overrides]) == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][1:]
    assert all(r["skipped"] == 0.0 for r in rows)
    assert all(r["kl"] > 0 for r in rows)  # the second epoch moved away from the reference
    assert max(r["clip_fraction"] for r in rows) > 0
    assert all("reward/overlong" in r for r in rows)
    assert (tmp_path / "checkpoints" / "step_000003" / "reference").is_dir()

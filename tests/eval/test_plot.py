"""Tests for megatron_r1.eval.plot: the training-curve PNGs of a run."""

from __future__ import annotations

import json
import logging

import pytest

from megatron_r1.eval.plot import plot_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(run_dir, with_length: bool = True) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(1, 21):
        record = {"step": step, "reward/mean": step / 20, "reward/std": 0.1}
        if with_length:
            record["response_length/mean"] = 100.0 + 10 * step
            record["response_length/max"] = 300.0 + 20 * step
        if step % 5 == 0:
            record["eval/accuracy"] = step / 40
        lines.append(json.dumps(record))
    lines.append(json.dumps({"step": 7, "reward/mean": None, "reward/std": None}))  # nan, re-logged
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 21, "rew')


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5_000


def test_plot_run_writes_all_pngs(tmp_path):
    _write_run(tmp_path)
    paths = plot_run(tmp_path)
    names = ["reward.png", "accuracy.png", "response_length.png", "overview.png"]
    assert [p.name for p in paths] == names
    for path in paths:
        assert path.parent == tmp_path / "plots"
        _assert_png(path)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(names)  # no temp files


def test_plot_run_skips_absent_metric(tmp_path, caplog):
    _write_run(tmp_path, with_length=False)
    out = tmp_path / "figs"
    with caplog.at_level(logging.WARNING, logger="megatron_r1.eval.plot"):
        paths = plot_run(tmp_path, out_dir=out)
    assert [p.name for p in paths] == ["reward.png", "accuracy.png", "overview.png"]
    assert all(p.parent == out for p in paths)
    assert "response_length" in caplog.text
    _assert_png(out / "overview.png")


def test_plot_run_missing_metrics_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_run(tmp_path / "nope")

"""Tests for megatron_r1.training.metrics: jsonl writer, resume truncation, Progress, PhaseTimer."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from megatron_r1.training.metrics import (
    MetricsWriter,
    PhaseTimer,
    Progress,
    read_metrics,
    truncate_after,
)


def _lines(run_dir) -> list[str]:
    return (run_dir / "metrics.jsonl").read_text().splitlines()


def test_one_well_formed_line_per_step(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        for step in range(1, 4):
            writer.log(step, {"reward/mean": 0.1 * step, "loss": 1.0 / step})
    lines = _lines(tmp_path)
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[1] == {"step": 2, "reward/mean": pytest.approx(0.2), "loss": 0.5}
    assert read_metrics(tmp_path) == records


def test_tensor_numpy_and_nonfinite_values(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.log(
            1,
            {
                "t": torch.tensor(0.5),
                "t1": torch.tensor([2.0]),
                "np_f": np.float32(1.5),
                "np_i": np.int64(7),
                "nan": float("nan"),
                "inf": torch.tensor(float("inf")),
                "flag": True,
                "note": "ok",
            },
        )
    (line,) = _lines(tmp_path)
    assert "NaN" not in line and "Infinity" not in line  # strict JSON
    record = json.loads(line)
    assert record == {
        "step": 1,
        "t": 0.5,
        "t1": 2.0,
        "np_f": 1.5,
        "np_i": 7,
        "nan": None,
        "inf": None,
        "flag": 1.0,
        "note": "ok",
    }
    assert isinstance(record["np_i"], int)


def test_rejects_non_scalars_and_step_key(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        with pytest.raises(ValueError, match="'v'"):
            writer.log(1, {"v": torch.ones(3)})
        with pytest.raises(ValueError, match="reserved"):
            writer.log(1, {"step": 3})
        with pytest.raises(TypeError, match="'d'"):
            writer.log(1, {"d": {"nested": 1}})
    with pytest.raises(RuntimeError):
        writer.log(2, {"a": 1.0})


def test_disabled_writer_creates_nothing(tmp_path):
    run_dir = tmp_path / "run"
    with MetricsWriter(run_dir, enabled=False) as writer:
        writer.log(1, {"a": 1.0})
    assert not run_dir.exists()


def test_truncate_after_keeps_steps_up_to_n_and_drops_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    good = [json.dumps({"step": s, "a": float(s)}) for s in range(1, 6)]
    path.write_text("\n".join(good) + "\n" + '{"step": 6, "a": 6.')  # killed mid-write
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
    assert truncate_after(tmp_path, 3) == 3
    assert _lines(tmp_path) == good[:3]
    assert path.read_text().endswith("\n")
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temp file left
    assert truncate_after(tmp_path / "missing", 3) == 0


def test_resume_gives_one_line_per_step(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        for step in range(1, 6):
            writer.log(step, {"a": float(step)})
    # Checkpoint at step 3; the run died after logging step 5; resume redoes 4..6.
    with MetricsWriter(tmp_path, tensorboard=False, resume_step=3) as writer:
        for step in range(4, 7):
            writer.log(step, {"a": 10.0 * step})
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[3]["a"] == 40.0


def test_writer_repairs_torn_tail_before_appending(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a"')
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.log(2, {"a": 2.0})
    assert [json.loads(line)["step"] for line in _lines(tmp_path)] == [1, 2]


def test_read_metrics_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        read_metrics(tmp_path)


def test_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsWriter(tmp_path) as writer:
        writer.log(1, {"reward/mean": torch.tensor(0.25), "note": "skipped"})
        writer.log(2, {"reward/mean": 0.75})
    tb_dir = tmp_path / "tensorboard"
    assert any(p.name.startswith("events.out.tfevents") for p in tb_dir.iterdir())
    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["reward/mean"]
    events = acc.Scalars("reward/mean")
    assert [e.step for e in events] == [1, 2]
    assert [e.value for e in events] == pytest.approx([0.25, 0.75])


class _FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_plain_lines_with_eta():
    stream, clock = io.StringIO(), _FakeClock()
    progress = Progress(total_steps=10, start_step=2, stream=stream, clock=clock)
    assert not progress.tty  # StringIO is not a TTY
    clock.now += 20.0  # 2 steps in 20 s -> 10 s/step, 6 steps left -> 60 s
    progress.update(4, {"reward/mean": torch.tensor(0.5), "response_length/mean": 812.4})
    clock.now += 10.0
    progress.update(5, {"eval/accuracy": 0.4})
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "step 4/10" in lines[0] and "eta 0:01:00" in lines[0] and "10.00s/step" in lines[0]
    assert "reward 0.500" in lines[0] and "len 812" in lines[0]
    assert "elapsed 0:00:30" in lines[1] and "eta 0:00:50" in lines[1]
    assert "acc 0.400" in lines[1] and "reward 0.500" in lines[1]  # last seen values kept


def test_progress_log_every_and_last_step():
    stream = io.StringIO()
    progress = Progress(total_steps=205, stream=stream, clock=_FakeClock())
    assert progress.log_every == 4
    for step in range(1, 206):
        progress.update(step, {})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 205 // 4 + 1
    assert lines[-1].startswith("step 205/205")


def test_progress_tty_redraws_one_line():
    stream = io.StringIO()
    progress = Progress(total_steps=3, stream=stream, tty=True, clock=_FakeClock())
    for step in (1, 2, 3):
        progress.update(step, {"reward/mean": 1.0})
    progress.close()
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "[####################] step 3/3" in text


def test_progress_disabled_writes_nothing():
    stream = io.StringIO()
    progress = Progress(total_steps=3, enabled=False, stream=stream)
    progress.update(1, {"reward/mean": 1.0})
    progress.close()
    assert stream.getvalue() == ""


def test_phase_timer_accumulates_and_resets():
    clock, syncs = _FakeClock(), []
    timer = PhaseTimer(sync=lambda: syncs.append(1), clock=clock)
    with timer.phase("rollout"):
        clock.now += 2.0
    with timer.phase("update"):
        clock.now += 1.0
    with pytest.raises(KeyError), timer.phase("rollout"):
        clock.now += 0.5
        raise KeyError
    assert timer.pop() == {"time/rollout": 2.5, "time/update": 1.0}
    assert len(syncs) == 6
    assert timer.pop() == {}


def test_phase_timer_real_clock():
    timer = PhaseTimer()
    with timer.phase("x"):
        pass
    (value,) = timer.pop().values()
    assert 0.0 <= value < 1.0 and not math.isnan(value)

"""Training curves from a run's ``metrics.jsonl``, in the style of the R1 paper's Figures 1 and 3.

``plot_run(run_dir)`` writes to ``RUN_DIR/plots``:

- ``reward.png``: ``reward/mean`` over steps with a +-``reward/std`` band;
- ``accuracy.png``: ``eval/accuracy`` (and any ``eval/<name>/accuracy``) with markers at the
  evaluated steps only, like the AIME pass@1 curve of Figure 1;
- ``response_length.png``: ``response_length/mean`` with ``response_length/max`` dashed, like the
  average-length curve of Figure 3;
- ``overview.png``: the available ones side by side.

A figure whose metric never occurs is skipped with a warning. Figures are drawn on
``matplotlib.figure.Figure`` objects (Agg canvas, no pyplot), so nothing touches a display or the
global backend, and each PNG is written to a temp file then ``os.replace``d, so a reader never sees
a half-written image. If a step was logged twice (a resumed run that did not truncate its metrics),
the last record of that step wins.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from megatron_r1.training.metrics import read_metrics

logger = logging.getLogger(__name__)

REWARD_MEAN, REWARD_STD = "reward/mean", "reward/std"
ACCURACY = "eval/accuracy"
LENGTH_MEAN, LENGTH_MAX = "response_length/mean", "response_length/max"


def _last_record_per_step(records: list[dict]) -> list[dict]:
    by_step: dict[int, dict] = {}
    for record in records:
        by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that have ``key``; null (non-finite) values become NaN."""
    steps, values = [], []
    for record in records:
        if key in record:
            value = record[key]
            steps.append(record["step"])
            values.append(math.nan if value is None else float(value))
    return steps, values


def _accuracy_keys(records: list[dict]) -> list[str]:
    """``eval/accuracy`` first, then any ``eval/<name>/accuracy`` (first seen order)."""
    keys: dict[str, None] = {}
    for record in records:
        for key in record:
            if key == ACCURACY or (key.startswith("eval/") and key.endswith("/accuracy")):
                keys[key] = None
    return sorted(keys, key=lambda k: k != ACCURACY)


def _style(ax: Axes, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("Steps")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def _draw_reward(ax: Axes, records: list[dict]) -> None:
    steps, mean = _series(records, REWARD_MEAN)
    ax.plot(steps, mean, color="tab:blue", linewidth=1.5, label="mean reward")
    std_by_step = dict(zip(*_series(records, REWARD_STD)))
    if std_by_step:
        std = [std_by_step.get(s, math.nan) for s in steps]
        low = [m - s for m, s in zip(mean, std)]
        high = [m + s for m, s in zip(mean, std)]
        ax.fill_between(steps, low, high, color="tab:blue", alpha=0.2, linewidth=0, label="±1 std")
    ax.legend(loc="lower right")
    _style(ax, "Training reward", "Reward")


def _draw_accuracy(ax: Axes, records: list[dict]) -> None:
    for key in _accuracy_keys(records):
        steps, values = _series(records, key)
        name = key.removeprefix("eval/").removesuffix("/accuracy")
        label = "accuracy" if key == ACCURACY else name
        ax.plot(steps, values, marker="o", markersize=4, linewidth=1.5, label=label)
    ax.legend(loc="lower right")
    _style(ax, "Evaluation accuracy", "Accuracy")


def _draw_length(ax: Axes, records: list[dict]) -> None:
    steps, mean = _series(records, LENGTH_MEAN)
    ax.plot(steps, mean, color="tab:blue", linewidth=1.5, label="mean")
    max_steps, max_values = _series(records, LENGTH_MAX)
    if max_steps:
        ax.plot(max_steps, max_values, color="tab:blue", linestyle="--", linewidth=1, label="max")
    ax.legend(loc="upper left")
    _style(ax, "Response length", "Length (tokens)")


def _save_atomic(fig: Figure, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the training-curve PNGs of ``RUN_DIR/metrics.jsonl`` and return their paths.

    Order: ``reward.png``, ``accuracy.png``, ``response_length.png``, ``overview.png``, each only
    when its metric is present. ``out_dir`` defaults to ``RUN_DIR/plots`` (created if missing).
    Raises FileNotFoundError (naming the path) when ``metrics.jsonl`` does not exist.
    """
    run_dir = Path(run_dir)
    records = _last_record_per_step(read_metrics(run_dir))
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)

    present = {key for record in records for key in record}
    panels: list[tuple[str, str, Callable[[Axes, list[dict]], None]]] = []
    for name, key, draw in (
        ("reward", REWARD_MEAN, _draw_reward),
        ("accuracy", ACCURACY, _draw_accuracy),
        ("response_length", LENGTH_MEAN, _draw_length),
    ):
        has_metric = key in present or (name == "accuracy" and _accuracy_keys(records))
        if has_metric:
            panels.append((name, key, draw))
        else:
            logger.warning("%s: no %r metric; skipping %s.png", run_dir, key, name)

    written: list[Path] = []
    for name, _, draw in panels:
        fig = Figure(figsize=(6, 4))
        draw(fig.add_subplot(), records)
        path = out / f"{name}.png"
        _save_atomic(fig, path)
        written.append(path)

    if panels:
        fig = Figure(figsize=(5.5 * len(panels), 4), layout="constrained")
        for ax, (_, _, draw) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
            draw(ax, records)
        fig.suptitle(run_dir.name)
        path = out / "overview.png"
        _save_atomic(fig, path)
        written.append(path)
    else:
        logger.warning("%s: none of the plotted metrics present; no overview.png", run_dir)
    return written

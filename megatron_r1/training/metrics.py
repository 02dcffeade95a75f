"""Observability for the training loop: metrics file, TensorBoard scalars, progress line, timers.

``RUN_DIR/metrics.jsonl`` is the source of truth: one JSON object per optimizer step,
``{"step": 12, "reward/mean": 0.53, ...}``, flushed and fsynced line by line so that a ``kill -9``
loses nothing that was logged. Values are made JSON-safe (tensors and numpy scalars become Python
numbers) and non-finite floats (NaN, +-inf) are written as ``null`` so the file is standard JSON
that any reader (jq, pandas, JavaScript) accepts; TensorBoard still receives the raw NaN/inf.

On resume, ``truncate_after(run_dir, step)`` (or ``MetricsWriter(..., resume_step=step)``) drops the
lines logged after the resumed checkpoint, so the file holds exactly one line per step, and tells
TensorBoard to purge its events past that step.

Only global rank 0 should write: the caller passes ``enabled=(rank == 0)`` to ``MetricsWriter`` and
``Progress``; a disabled writer creates no files and every method is a no-op.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _to_json_value(key: str, value: Any) -> int | float | str | None:
    """One metric value as a JSON-safe Python scalar; non-finite floats become ``None``.

    Accepts Python numbers, strings, ``None``, and one-element tensors / numpy arrays or scalars.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return float(value)
    if hasattr(value, "item"):  # torch.Tensor, numpy scalar or array: must hold a single element
        try:
            value = value.item()
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"metric {key!r} is not a scalar: {err}") from err
        return _to_json_value(key, value)
    if isinstance(value, int):
        return value
    try:
        value = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"metric {key!r} has a non-numeric value of type {type(value)}") from err
    return value if math.isfinite(value) else None


def _as_tensorboard_scalar(key: str, value: Any) -> float | None:
    """The value TensorBoard gets (NaN/inf kept); None for what it cannot plot (strings, None)."""
    if value is None or isinstance(value, str):
        return None
    if hasattr(value, "item"):
        value = value.item()
    return float(value)


def _metrics_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / METRICS_FILE


def _parse_lines(path: Path) -> list[dict]:
    """The records of a metrics file.

    A torn final line (no trailing newline) is ignored; a bad line in the middle (which only manual
    editing or a foreign writer can produce) is skipped with a warning.
    """
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    torn = lines.pop()  # the text after the last newline: "" when the file ends cleanly
    if torn.strip():
        logger.info("%s: ignoring a partially written final line (%d bytes)", path, len(torn))
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s:%d: skipping a line that is not valid JSON", path, lineno)
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            logger.warning("%s:%d: skipping a line without an integer 'step'", path, lineno)
            continue
        records.append(record)
    return records


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All records of ``RUN_DIR/metrics.jsonl`` in file order (``null`` values read back as None).

    A partially written final line (a run killed mid-write) is ignored.
    Raises FileNotFoundError when the file does not exist.
    """
    path = _metrics_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}")
    return _parse_lines(path)


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a fsynced temp file in the same directory + ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def truncate_after(run_dir: str | Path, step: int) -> int:
    """Drop the records of ``RUN_DIR/metrics.jsonl`` after ``step``; return how many were kept.

    Called on resume with the checkpoint's step, so the steps redone after the resume are not logged
    twice. A torn final line is dropped too. The file is rewritten atomically; a missing file is a
    no-op (returns 0).
    """
    path = _metrics_path(run_dir)
    if not path.is_file():
        return 0
    records = _parse_lines(path)
    kept = [r for r in records if r["step"] <= step]
    _atomic_write_text(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept))
    if len(kept) != len(records):
        logger.info("%s: dropped %d records after step %d", path, len(records) - len(kept), step)
    return len(kept)


class MetricsWriter:
    """Appends one JSON line per step to ``RUN_DIR/metrics.jsonl``; mirrors numbers to TensorBoard.

    Args:
        run_dir: the run directory (created if missing).
        enabled: whether this process writes; pass ``rank == 0``. When False nothing is created.
        tensorboard: also write TensorBoard scalars under ``RUN_DIR/tensorboard`` (created lazily).
        resume_step: when resuming from a checkpoint at this step, drop the jsonl records after it
            (``truncate_after``) and purge TensorBoard events after it.

    Usage::

        with MetricsWriter(run_dir, enabled=rank == 0) as writer:
            writer.log(step, {"reward/mean": rewards.mean(), **timer.pop()})
    """

    def __init__(
        self,
        run_dir: str | Path,
        enabled: bool = True,
        tensorboard: bool = True,
        resume_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.tensorboard = tensorboard
        self.resume_step = resume_step
        self._tb_writer = None
        self._file: TextIO | None = None
        self._closed = False
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = _metrics_path(self.run_dir)
        if resume_step is not None:
            truncate_after(self.run_dir, resume_step)
        elif path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            # A previous run died mid-line: rewrite without the torn tail so appends stay parseable.
            truncate_after(self.run_dir, sys.maxsize)
        self._file = open(path, "a", encoding="utf-8")  # closed in close()

    @property
    def path(self) -> Path:
        """``RUN_DIR/metrics.jsonl``."""
        return _metrics_path(self.run_dir)

    def _get_tb_writer(self):
        if self._tb_writer is None:
            from torch.utils.tensorboard import SummaryWriter  # lazy: slow import, optional

            # purge_step hides events a previous run logged past the resumed checkpoint.
            purge_step = None if self.resume_step is None else self.resume_step + 1
            self._tb_writer = SummaryWriter(
                log_dir=str(self.run_dir / TENSORBOARD_DIR), purge_step=purge_step, flush_secs=30
            )
        return self._tb_writer

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Append ``{"step": step, **metrics}`` (durably); write numeric values to TensorBoard."""
        if not self.enabled:
            return
        if self._closed or self._file is None:
            raise RuntimeError("MetricsWriter.log() called after close()")
        if "step" in metrics:
            raise ValueError("'step' is reserved; pass it as the step argument")
        step = int(step)
        record: dict[str, Any] = {"step": step}
        for key, value in metrics.items():
            record[key] = _to_json_value(key, value)
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if self.tensorboard:
            tb = self._get_tb_writer()
            for key, value in metrics.items():
                scalar = _as_tensorboard_scalar(key, value)
                if scalar is not None:
                    tb.add_scalar(key, scalar, global_step=step)

    def flush(self) -> None:
        """Flush TensorBoard (the jsonl file is already flushed on every ``log``)."""
        if self._tb_writer is not None:
            self._tb_writer.flush()

    def close(self) -> None:
        """Close the files; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb_writer is not None:
            self._tb_writer.close()
            self._tb_writer = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _format_duration(seconds: float) -> str:
    """``H:MM:SS`` (or ``D day(s), H:MM:SS``) for a non-negative number of seconds."""
    seconds = max(0, int(round(seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {text}" if days else text


class Progress:
    """A console progress line with ETA.

    On a TTY, one line redrawn with ``\\r`` on every update; otherwise (log files, SLURM) a plain
    line every ``log_every`` steps (default: every step below 50 total steps, else about 50 lines
    per run) and at the last step. ``step`` passed to ``update`` is the number of steps completed
    so far, so a run of ``total_steps`` ends with ``update(total_steps, ...)``. The ETA is the mean
    seconds per step since construction times the steps left; a resumed run passes ``start_step``
    so that only steps done in this process count.

    Shows ``reward/mean``, ``eval/accuracy`` and ``response_length/mean`` when present; the last
    seen value is kept, since eval metrics only exist at eval steps.
    """

    KEY_METRICS: tuple[tuple[str, str], ...] = (
        ("reward/mean", "reward"),
        ("eval/accuracy", "acc"),
        ("response_length/mean", "len"),
    )

    def __init__(
        self,
        total_steps: int,
        start_step: int = 0,
        enabled: bool = True,
        stream: TextIO | None = None,
        log_every: int | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_steps = total_steps
        self.start_step = start_step
        self.enabled = enabled
        # Resolved at call time (not as a default argument) so pytest's capsys sees it.
        self.stream = stream if stream is not None else sys.stderr
        if log_every is None:
            log_every = 1 if total_steps < 50 else max(1, total_steps // 50)
        self.log_every = log_every
        isatty = getattr(self.stream, "isatty", None)
        self.tty = tty if tty is not None else bool(isatty and isatty())
        self._clock = clock
        self._start_time = clock()
        self._last: dict[str, float] = {}
        self._line_width = 0
        self._drew = False

    def format_line(self, step: int) -> str:
        """The progress text for ``step`` (without ``\\r`` or newline)."""
        elapsed = self._clock() - self._start_time
        done = step - self.start_step
        total = max(self.total_steps, 1)
        parts = [f"step {step}/{self.total_steps} ({100.0 * step / total:5.1f}%)"]
        if self.tty:
            width = 20
            filled = min(width, int(width * step / total))
            parts[0] = f"[{'#' * filled}{'.' * (width - filled)}] " + parts[0]
        parts.append(f"elapsed {_format_duration(elapsed)}")
        if done > 0:
            per_step = elapsed / done
            remaining = max(self.total_steps - step, 0) * per_step
            parts.append(f"eta {_format_duration(remaining)}")
            parts.append(f"{per_step:.2f}s/step")
        else:
            parts.append("eta ?")
        for key, label in self.KEY_METRICS:
            if key in self._last:
                value = self._last[key]
                parts.append(f"{label} {value:.0f}" if label == "len" else f"{label} {value:.3f}")
        return " | ".join(parts)

    def update(self, step: int, metrics: dict[str, Any] | None = None) -> None:
        """Record ``metrics`` and redraw (TTY) or log a line when ``step`` is due."""
        if not self.enabled:
            return
        for key, _ in self.KEY_METRICS:
            value = (metrics or {}).get(key)
            if value is not None:
                value = float(value.item() if hasattr(value, "item") else value)
                if math.isfinite(value):
                    self._last[key] = value
        if self.tty:
            line = self.format_line(step)
            pad = " " * max(self._line_width - len(line), 0)  # erase a longer previous line
            self._line_width = len(line)
            self.stream.write("\r" + line + pad)
            self._drew = True
        elif step % self.log_every == 0 or step >= self.total_steps:
            self.stream.write(self.format_line(step) + "\n")
        else:
            return
        self.stream.flush()

    def close(self) -> None:
        """End the redrawn TTY line with a newline."""
        if self.enabled and self.tty and self._drew:
            self.stream.write("\n")
            self.stream.flush()
            self._drew = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class PhaseTimer:
    """Wall-clock time per phase of a step, e.g. ``{"time/rollout": 12.3, "time/update": 4.5}``.

    Repeated phases within a step accumulate; ``pop()`` returns the totals and resets. Phases may
    nest (each times itself). GPU work is asynchronous, so pass ``sync=torch.cuda.synchronize`` for
    accurate GPU phase times; it is called on entering and leaving each phase.

    Usage::

        timer = PhaseTimer()
        with timer.phase("rollout"):
            ...
        writer.log(step, {**metrics, **timer.pop()})
    """

    def __init__(
        self,
        sync: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        prefix: str = "time/",
    ) -> None:
        self._sync = sync
        self._clock = clock
        self.prefix = prefix
        self._totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the body of the ``with`` block and add it to phase ``name`` (also on exceptions)."""
        if self._sync is not None:
            self._sync()
        start = self._clock()
        try:
            yield
        finally:
            if self._sync is not None:
                self._sync()
            self._totals[name] += self._clock() - start

    def pop(self) -> dict[str, float]:
        """The accumulated seconds per phase as ``{prefix + name: seconds}``, then reset."""
        totals = {f"{self.prefix}{name}": seconds for name, seconds in self._totals.items()}
        self._totals.clear()
        return totals

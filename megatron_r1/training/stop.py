"""Stopping a run on SIGINT / SIGTERM between steps, never in the middle of one.

The first signal only asks to stop: the step (or checkpoint save) under way finishes, the loop saves a
checkpoint and raises :class:`RunStopped`, which the CLI reports in one line with the resume command. A
second signal aborts at once (:class:`RunAborted`); a save under way is abandoned atomically (its ``.tmp``
directory removed, ``latest`` untouched). Under ``torchrun`` every rank gets the signal, and the ranks agree
(an all-reduce of the flag) so that all stop after the same step.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunStopped(RuntimeError):
    """The run stopped cleanly on a signal after ``step`` (with ``checkpoint`` saved)."""

    def __init__(self, signum: int, step: int, total: int, checkpoint: Path | None):
        self.signum, self.step, self.total, self.checkpoint = signum, step, total, checkpoint
        name = signal.Signals(signum).name
        saved = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint"
        super().__init__(f"stopped by {name} after step {step} of {total}; {saved}")


class RunAborted(KeyboardInterrupt):
    """A second signal: stop at once."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"aborted by a second {signal.Signals(signum).name}")


class StopRequest:
    """``with StopRequest() as stop:`` — SIGINT/SIGTERM set :attr:`signum` instead of killing the process;
    :meth:`requested` says (on every rank alike) whether to stop now. Handlers are installed only in the main
    thread and restored on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise RunAborted(signum)
        self.signum = signum
        name = signal.Signals(signum).name
        log.warning("%s: stopping after the current step (send it again to abort at once)", name)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def requested(self, device: torch.device | str = "cpu") -> int | None:
        """The signal to stop on (agreed over all ranks: any rank's signal stops all), or None."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([self.signum or 0], dtype=torch.int64, device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return int(flag.item()) or None
        return self.signum

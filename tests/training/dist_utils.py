"""Run a function on N local gloo processes, the way torchrun would, and collect what each rank returns.

``run_workers(fn, world_size, tmp_path)`` spawns ``world_size`` processes (``spawn`` start method: no forked
Megatron or torch state), sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT in each before
``fn(rank, *args)`` runs (so ``megatron_r1.parallel.init_distributed`` finds a torchrun-like environment),
and returns the ranks' return values in rank order (through ``torch.save`` files in ``tmp_path``). A rank that
raises fails the call with its traceback; the other ranks (likely blocked in a collective) are terminated.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

import torch
import torch.multiprocessing as mp


def _entry(fn, rank: int, world_size: int, port: int, out_dir: str, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    out = Path(out_dir)
    try:
        result = fn(rank, *args)
        torch.save(result, out / f"rank{rank}.pt")
    except BaseException:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        from megatron_r1.parallel import shutdown

        shutdown()


def run_workers(fn, world_size: int, tmp_path: Path, *args, timeout: float = 120.0) -> list:
    """``fn(rank, *args)`` on ``world_size`` processes; returns [result of rank 0, rank 1, ...]."""
    from megatron_r1.parallel import free_port

    out = Path(tmp_path) / f"workers-{fn.__name__}"
    out.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [
        ctx.Process(target=_entry, args=(fn, rank, world_size, port, str(out), args))
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    failed = None
    try:
        while any(p.is_alive() for p in procs):
            failed = next((r for r, p in enumerate(procs) if p.exitcode not in (None, 0)), None)
            if failed is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        else:
            failed = next((r for r, p in enumerate(procs) if p.exitcode != 0), None)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=10)
    errors = "\n".join(
        f"--- rank {r} ---\n{(out / f'rank{r}.err').read_text()}"
        for r in range(world_size)
        if (out / f"rank{r}.err").exists()
    )
    if failed is not None:
        raise AssertionError(f"rank {failed} exited with {procs[failed].exitcode}\n{errors}")
    if any(not (out / f"rank{r}.pt").exists() for r in range(world_size)):
        raise AssertionError(f"workers did not finish within {timeout:.0f} s\n{errors}")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world_size)]

"""Checkpoints: the model as a Megatron-Core dist_checkpoint (loadable under another TP / PP layout), the
optimizer (Megatron's optimizers as a dist_checkpoint too, the CPU optimizer per rank), RNG states per rank,
and the step (the data position is a pure function of the step).

Layout: ``RUN_DIR/checkpoints/step_000040/{model/, rank_00000.pt, ...}`` and ``latest`` naming the newest
complete one. A save is written under ``step_N.tmp`` and renamed only once every rank has finished, then
``latest`` is replaced atomically: an interrupted save never replaces the last good checkpoint.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megatron_r1.parallel import ParallelState


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if device.type == "cuda":  # the run's device, not whatever GPU is visible (a gloo run stays on CPU)
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model,
    optimizer,
    state: ParallelState,
    extra: dict | None = None,
    reference=None,
) -> Path:
    """Save everything needed to resume at ``step`` (with the frozen KL ``reference`` model, if any);
    returns the checkpoint directory."""
    from megatron.core import dist_checkpointing

    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:06d}"
    tmp = root / f"step_{step:06d}.tmp"
    if state.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "model").mkdir(parents=True)
    sharded_optimizer = hasattr(optimizer, "sharded_state_dict")
    if state.is_main and sharded_optimizer:
        (tmp / "optimizer").mkdir()
    if state.is_main and reference is not None:
        (tmp / "reference").mkdir()
    dist.barrier()
    dist_checkpointing.save(model.sharded_state_dict(), str(tmp / "model"))
    if reference is not None:
        dist_checkpointing.save(reference.sharded_state_dict(), str(tmp / "reference"))
    if sharded_optimizer:  # Megatron's optimizers (the distributed one shards its state over DP ranks)
        # From a fresh model dict: the save above rewrote ``model_sd``'s ShardedTensors in place (detached
        # data, factories applied), so the optimizer could no longer match its params to them ("Param id 0
        # does not match any model sharded param").
        optim_sd = optimizer.sharded_state_dict(model.sharded_state_dict())
        dist_checkpointing.save(optim_sd, str(tmp / "optimizer"))
    torch.save(
        {
            "step": step,
            "optimizer": None if sharded_optimizer else optimizer.state_dict(),
            "rng": _rng_state(state.device),
            "extra": extra or {},
        },
        tmp / f"rank_{state.rank:05d}.pt",
    )
    dist.barrier()
    if state.is_main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _write_atomic(root / "latest", final.name)
    dist.barrier()
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    root = Path(run_dir) / "checkpoints"
    latest = root / "latest"
    if latest.is_file():
        path = root / latest.read_text().strip()
        if path.is_dir():
            return path
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def load_checkpoint(path: str | Path, model, optimizer, state: ParallelState, reference=None) -> dict:
    """Restore model, optimizer, RNG states (and the KL ``reference``) in place; returns step and extra."""
    from megatron.core import dist_checkpointing

    path = Path(path)
    rank_file = path / f"rank_{state.rank:05d}.pt"
    if not rank_file.is_file():
        raise FileNotFoundError(f"{rank_file}: missing (checkpoint saved with another world size?)")
    loaded = dist_checkpointing.load(model.sharded_state_dict(), str(path / "model"))
    model.load_state_dict(loaded, strict=False)
    if reference is not None:
        if not (path / "reference").is_dir():
            raise FileNotFoundError(
                f"{path / 'reference'}: missing (checkpoint saved without a KL reference)"
            )
        ref_loaded = dist_checkpointing.load(reference.sharded_state_dict(), str(path / "reference"))
        reference.load_state_dict(ref_loaded, strict=False)
    blob = torch.load(rank_file, weights_only=False)
    if blob["optimizer"] is None:
        template = optimizer.sharded_state_dict(model.sharded_state_dict(), is_loading=True)
        optimizer.load_state_dict(dist_checkpointing.load(template, str(path / "optimizer")))
    else:
        optimizer.load_state_dict(blob["optimizer"])
    _set_rng_state(blob["rng"], state.device)
    return {"step": blob["step"], "extra": blob["extra"]}


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a run directory (its latest complete checkpoint) or a step directory."""
    path = Path(path)
    if (path / "model").is_dir():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"{path}: no checkpoint (neither a step_N directory nor a run with one)")
    return found


def load_model_weights(path: str | Path, model) -> Path:
    """Only the model weights of checkpoint (or run directory) ``path`` into ``model``, under this run's
    layout (dist_checkpointing reshards); returns the checkpoint directory used."""
    from megatron.core import dist_checkpointing

    ckpt = resolve_checkpoint(path)
    loaded = dist_checkpointing.load(model.sharded_state_dict(), str(ckpt / "model"))
    model.load_state_dict(loaded, strict=False)
    return ckpt

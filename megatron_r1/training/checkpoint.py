"""Checkpoints: the model as a Megatron-Core dist_checkpoint (loadable under another TP / PP layout), the
optimizer (Megatron's optimizers as a dist_checkpoint too, the CPU optimizer per rank), RNG states per rank,
and the step (the data position is a pure function of the step).

Layout: ``RUN_DIR/checkpoints/step_000040/{model/, rank_00000.pt, ...}`` and ``latest`` naming the newest
complete one. A save is written under ``step_N.tmp`` and renamed only once every rank has finished, then
``latest`` is replaced atomically: an interrupted save never replaces the last good checkpoint.

Integrity: the last file written into a checkpoint is ``manifest.json``, the size and CRC-32 of every other
file. ``--resume`` takes the newest checkpoint that matches its manifest and loads
(:func:`resume_checkpoint`), saying which ones it skipped and why. A save that fails (no space left, I/O
error) removes its partial directory and reports one line naming the step, the path and the checkpoint kept
(:func:`save_or_explain`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megatron_r1.parallel import ParallelState

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
_INTERRUPTS = (KeyboardInterrupt, SystemExit)
"""Exceptions that stop the run rather than describe a failed save or load."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or none could be resumed from (one line: step, path, why)."""


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
        write_manifest(tmp)  # last: a checkpoint with a manifest is complete
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
    done = complete_checkpoints(run_dir)
    return done[0] if done else None


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


# ------------------------------------------------------------------------------------------- integrity


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _files(ckpt_dir: Path) -> list[Path]:
    return sorted(p for p in ckpt_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(ckpt_dir: str | Path) -> None:
    """Record size and CRC-32 of every file of a finished checkpoint in ``manifest.json`` (written last,
    atomically)."""
    ckpt_dir = Path(ckpt_dir)
    entries = {
        str(p.relative_to(ckpt_dir)): {"size": p.stat().st_size, "crc32": _crc32(p)} for p in _files(ckpt_dir)
    }
    _write_atomic(ckpt_dir / MANIFEST, json.dumps({"files": entries}, indent=1))


def verify_checkpoint(ckpt_dir: str | Path) -> str | None:
    """None when every file matches the manifest, else why not (one phrase). A checkpoint without a manifest
    (written before manifests existed) is not verified here: None, and its load decides."""
    ckpt_dir = Path(ckpt_dir)
    manifest = ckpt_dir / MANIFEST
    if not manifest.exists():
        return None
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    for name, meta in entries.items():
        path = ckpt_dir / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != meta["size"]:
            return f"{name} has {size} bytes, {meta['size']} were written"
        if _crc32(path) != meta["crc32"]:
            return f"{name} does not match its checksum"
    return None


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("_", 1)[1])


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's renamed (complete or legacy) checkpoint directories, newest first."""
    root = Path(run_dir) / "checkpoints"
    found = [p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=checkpoint_step, reverse=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def resume_checkpoint(run_dir: str | Path, load: Callable[[Path], int]) -> tuple[Path, int] | None:
    """Load the newest intact checkpoint of ``run_dir`` with ``load(path) -> step``; returns (path, step), or
    None when the run has no checkpoint. Checkpoints that fail their manifest or their load are skipped with a
    warning naming them and why; if all fail, :class:`CheckpointError` lists them."""
    skipped: list[str] = []
    for path in complete_checkpoints(run_dir):
        reason = verify_checkpoint(path)
        if reason is None:
            try:
                step = load(path)
            except _INTERRUPTS:
                raise
            except BaseException as exc:  # any failure to load (torch's CheckpointException is no Exception)
                reason = f"cannot be loaded ({_one_line(exc)})"
        if reason is None:
            if skipped:
                log.warning("resuming from %s (older than the newest: %s)", path.name, "; ".join(skipped))
            return path, step
        skipped.append(f"{path.name} {reason}")
        log.warning("checkpoint %s is damaged: %s; trying the one before", path, reason)
    if skipped:
        root = Path(run_dir) / "checkpoints"
        raise CheckpointError(f"no intact checkpoint in {root}: {'; '.join(skipped)}")
    return None


def set_aside_newer(run_dir: str | Path, step: int) -> list[Path]:
    """Rename checkpoints newer than ``step`` (the damaged ones a resume skipped) to ``step_N.damaged`` so
    that no later resume or ``latest`` can pick them; returns the new paths."""
    moved = []
    for path in complete_checkpoints(run_dir):
        if checkpoint_step(path) > step:
            target = path.with_name(path.name + ".damaged")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(path, target)
            moved.append(target)
    root = Path(run_dir) / "checkpoints"
    if moved:
        _write_atomic(root / "latest", f"step_{step:06d}")
    return moved


# ------------------------------------------------------------------------------------ failing saves


def _find_oserror(exc: BaseException | None, seen: set[int] | None = None) -> OSError | None:
    """The OSError behind ``exc``: itself, its cause/context chain, or a wrapped failure (torch's
    CheckpointException keeps per-rank failures in ``failures``)."""
    seen = seen if seen is not None else set()
    if exc is None or id(exc) in seen:
        return None
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc
    failures = getattr(exc, "failures", None)  # rank → exception, or (exception, traceback)
    nested = list(failures.values()) if isinstance(failures, dict) else []
    nested = [f[0] if isinstance(f, tuple) and f else f for f in nested]
    for inner in [exc.__cause__, exc.__context__, *nested]:
        found = _find_oserror(inner if isinstance(inner, BaseException) else None, seen)
        if found is not None:
            return found
    return None


def describe_save_error(exc: BaseException, where: Path) -> str:
    """What went wrong with a save, as a short phrase ("no space left on device", "permission denied"...).
    Serialisers often hide the OSError (torch.save: "unexpected pos ..."): a full disk is then recognised by
    the free space left."""
    oserror = _find_oserror(exc)
    if oserror is not None:
        return os.strerror(oserror.errno).lower()
    if "No space left" in str(exc):
        return os.strerror(errno.ENOSPC).lower()
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if shutil.disk_usage(probe).free < 16 * 2**20:
            return os.strerror(errno.ENOSPC).lower()
    except OSError:
        pass
    return _one_line(exc)


def save_or_explain(run_dir: str | Path, step: int, save: Callable[[], Path]) -> Path:
    """Run ``save()`` (a :func:`save_checkpoint` of ``step``); if it fails, remove the partial
    ``step_N.tmp`` and raise :class:`CheckpointError` in one line: what, which step, where, what is kept.
    A KeyboardInterrupt (a second Ctrl-C) also removes the partial directory before it propagates."""
    root = Path(run_dir) / "checkpoints"
    tmp = root / f"step_{step:06d}.tmp"
    try:
        return save()
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, _INTERRUPTS):
            raise
        kept = latest_checkpoint(run_dir)
        what = describe_save_error(exc, root)
        raise CheckpointError(
            f"{what} while saving step {step} to {tmp}; "
            + (f"kept step {checkpoint_step(kept)} ({kept})" if kept else "no earlier checkpoint")
        ) from exc


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
    reason = verify_checkpoint(ckpt)
    if reason is not None:
        raise CheckpointError(f"{ckpt}: {reason}")
    loaded = dist_checkpointing.load(model.sharded_state_dict(), str(ckpt / "model"))
    model.load_state_dict(loaded, strict=False)
    return ckpt

"""Checkpoint integrity: manifests catch damaged files, a resume falls back to the newest intact checkpoint
(saying which and why), a failing save (no space left) is one line and leaves no partial directory, and a
second signal during a save abandons it atomically."""

import errno
import json
import logging
import os
import signal
from types import SimpleNamespace

import pytest
import torch

from megatron_r1.config import Config
from megatron_r1.models import build_model
from megatron_r1.parallel import init_distributed
from megatron_r1.training import checkpoint
from megatron_r1.training.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    resume_checkpoint,
    save_checkpoint,
    save_or_explain,
    set_aside_newer,
    verify_checkpoint,
)
from megatron_r1.training.optim import LocalOptimizer
from megatron_r1.training.stop import RunAborted, StopRequest


def _setup():
    cfg = Config()
    cfg.model.vocab_size = 32
    state = init_distributed(cfg.parallel, seed=3)
    model = build_model(cfg.model, cfg.parallel)
    opt = LocalOptimizer(model, cfg.train, state)
    return model, opt, state


def _train_step(model, opt):
    tokens = torch.randint(0, 32, (2, 6))
    logits = model(tokens, torch.arange(6).expand(2, 6), None)
    logits.float().pow(2).mean().backward()
    opt.step(1e-2)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A run directory with checkpoints at steps 1, 2, 3 and the weights each holds."""
    run_dir = tmp_path_factory.mktemp("run")
    model, opt, state = _setup()
    weights = {}
    for step in (1, 2, 3):
        _train_step(model, opt)
        save_checkpoint(run_dir, step, model, opt, state)
        weights[step] = model.embedding.word_embeddings.weight.detach().clone()
    return run_dir, weights


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _loader(model, opt, state):
    return lambda path: load_checkpoint(path, model, opt, state)["step"]


def test_manifest_catches_truncation_and_emptied_files(saved_run, tmp_path):
    run_dir = _copy_run(saved_run[0], tmp_path / "run")
    ckpt = run_dir / "checkpoints" / "step_000003"
    manifest = json.loads((ckpt / "manifest.json").read_text())["files"]
    assert "rank_00000.pt" in manifest and any(name.startswith("model/") for name in manifest)
    assert verify_checkpoint(ckpt) is None

    rank_file = ckpt / "rank_00000.pt"
    rank_file.write_bytes(rank_file.read_bytes()[:1000])
    assert "rank_00000.pt has 1000 bytes" in verify_checkpoint(ckpt)

    ckpt2 = run_dir / "checkpoints" / "step_000002"
    (ckpt2 / "model" / "metadata.json").write_text("")
    assert "model/metadata.json" in verify_checkpoint(ckpt2)

    ckpt1 = run_dir / "checkpoints" / "step_000001"
    data = bytearray((ckpt1 / "rank_00000.pt").read_bytes())
    data[-50] ^= 0xFF  # same size, one flipped byte
    (ckpt1 / "rank_00000.pt").write_bytes(bytes(data))
    assert "checksum" in verify_checkpoint(ckpt1)


def test_resume_falls_back_to_newest_intact_and_sets_damaged_aside(saved_run, tmp_path, caplog):
    run_dir = _copy_run(saved_run[0], tmp_path / "run")
    weights = saved_run[1]
    root = run_dir / "checkpoints"
    (root / "step_000003" / "rank_00000.pt").write_bytes(b"")
    (root / "step_000002" / "model" / "metadata.json").write_text("")
    # A save killed mid-way leaves a partial .tmp directory: never a candidate.
    (root / "step_000004.tmp" / "model").mkdir(parents=True)

    model, opt, state = _setup()
    with caplog.at_level(logging.WARNING):
        path, step = resume_checkpoint(run_dir, _loader(model, opt, state))
    assert (path.name, step) == ("step_000001", 1)
    torch.testing.assert_close(model.embedding.word_embeddings.weight, weights[1], rtol=0, atol=0)
    text = caplog.text
    assert "step_000003" in text and "rank_00000.pt has 0 bytes" in text
    assert "step_000002" in text and "model/metadata.json" in text
    assert "resuming from step_000001" in text

    moved = set_aside_newer(run_dir, step)
    assert sorted(p.name for p in moved) == ["step_000002.damaged", "step_000003.damaged"]
    assert latest_checkpoint(run_dir).name == "step_000001"


def test_checkpoint_without_manifest_that_fails_to_load_is_skipped(saved_run, tmp_path, caplog):
    """Checkpoints written before manifests existed are judged by their load."""
    run_dir = _copy_run(saved_run[0], tmp_path / "run")
    newest = run_dir / "checkpoints" / "step_000003"
    (newest / "manifest.json").unlink()
    (newest / "rank_00000.pt").write_bytes(b"PK\x03\x04 torn")
    model, opt, state = _setup()
    with caplog.at_level(logging.WARNING):
        path, step = resume_checkpoint(run_dir, _loader(model, opt, state))
    assert step == 2 and "cannot be loaded" in caplog.text


def test_no_intact_checkpoint_is_one_line_listing_them(saved_run, tmp_path):
    run_dir = _copy_run(saved_run[0], tmp_path / "run")
    for ckpt in (run_dir / "checkpoints").glob("step_00000?"):
        (ckpt / "rank_00000.pt").write_bytes(b"")
    model, opt, state = _setup()
    with pytest.raises(CheckpointError) as info:
        resume_checkpoint(run_dir, _loader(model, opt, state))
    message = str(info.value)
    assert "\n" not in message and all(f"step_00000{i}" in message for i in (1, 2, 3))


@pytest.mark.parametrize("failure", ["enospc", "hidden-enospc", "dist-checkpoint-enospc"])
def test_failed_save_is_one_line_and_removes_partial_directory(failure, tmp_path, monkeypatch):
    model, opt, state = _setup()
    save_checkpoint(tmp_path, 1, model, opt, state)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if failure == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if failure == "dist-checkpoint-enospc":  # torch.distributed.checkpoint keeps per-rank failures
            from torch.distributed.checkpoint.api import CheckpointException

            raise CheckpointException("save", {0: (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), None)})
        real_save({"partial": torch.zeros(10)}, f)  # something was written, then torch's own error
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 781184 vs 781072")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    if failure == "hidden-enospc":  # the serialiser hides the OSError: the free space tells
        monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: SimpleNamespace(free=0))
    with pytest.raises(CheckpointError) as info:
        save_or_explain(tmp_path, 2, lambda: save_checkpoint(tmp_path, 2, model, opt, state))
    tmp = tmp_path / "checkpoints" / "step_000002.tmp"
    assert str(info.value) == (
        f"no space left on device while saving step 2 to {tmp}; "
        f"kept step 1 ({tmp_path / 'checkpoints' / 'step_000001'})"
    )
    assert not tmp.exists() and latest_checkpoint(tmp_path).name == "step_000001"


def test_second_signal_during_save_abandons_it_atomically(tmp_path, monkeypatch):
    # What StopRequest must restore: Python's default handler, or SIG_IGN when the test process was started in
    # the background of a non-interactive shell (which ignores SIGINT for its background jobs).
    handler_before = signal.getsignal(signal.SIGINT)
    model, opt, state = _setup()
    save_checkpoint(tmp_path, 1, model, opt, state)
    real_save = torch.save

    def interrupted(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # the first asks to stop after the step ...
        os.kill(os.getpid(), signal.SIGINT)  # ... the second aborts at once

    monkeypatch.setattr(checkpoint.torch, "save", interrupted)
    with StopRequest() as stop, pytest.raises(RunAborted):
        save_or_explain(tmp_path, 2, lambda: save_checkpoint(tmp_path, 2, model, opt, state))
    assert stop.signum == signal.SIGINT
    assert not (tmp_path / "checkpoints" / "step_000002.tmp").exists()
    assert not (tmp_path / "checkpoints" / "step_000002").exists()
    assert latest_checkpoint(tmp_path).name == "step_000001"
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_convert_refuses_a_damaged_checkpoint_in_one_line(saved_run, tmp_path, capsys):
    from megatron_r1 import cli

    run_dir = _copy_run(saved_run[0], tmp_path / "run")
    ckpt = run_dir / "checkpoints" / "step_000003"
    (ckpt / "model" / "metadata.json").write_text("")
    assert cli.main(["convert", "megatron-to-hf", str(ckpt), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(ckpt) in err and "model/metadata.json" in err
    assert not (tmp_path / "hf").exists()

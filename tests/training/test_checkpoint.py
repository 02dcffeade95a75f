"""Checkpoints: an interrupted save never replaces the last good one; resume restores model and optimizer."""

import pytest
import torch

from megatron_r1.config import Config
from megatron_r1.models import build_model
from megatron_r1.parallel import init_distributed
from megatron_r1.training import checkpoint
from megatron_r1.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from megatron_r1.training.optim import LocalOptimizer


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


def test_interrupted_save_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    model, opt, state = _setup()
    _train_step(model, opt)
    good = save_checkpoint(tmp_path, 1, model, opt, state)
    saved = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    _train_step(model, opt)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, model, opt, state)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == good
    assert not (tmp_path / "checkpoints" / "step_000002").exists()

    model2, opt2, _ = _setup()
    assert load_checkpoint(latest_checkpoint(tmp_path), model2, opt2, state)["step"] == 1
    for k, v in model2.state_dict().items():
        if isinstance(v, torch.Tensor) and k in saved:
            torch.testing.assert_close(v, saved[k], rtol=0, atol=0)
    assert opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()

    # The next save succeeds and replaces the leftover temporary directory.
    save_checkpoint(tmp_path, 2, model, opt, state)
    assert latest_checkpoint(tmp_path).name == "step_000002"
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))

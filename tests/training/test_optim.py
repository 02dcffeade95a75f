"""Learning-rate schedule and gradient clipping of the CPU optimizer."""

import math

import pytest
import torch

from megatron_r1.config import ParallelConfig, TrainConfig
from megatron_r1.parallel import init_distributed
from megatron_r1.training.optim import LocalOptimizer, lr_at


def test_warmup_then_cosine_and_linear():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=4, lr_schedule="cosine")
    assert [lr_at(s, cfg, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, cfg, 14) == pytest.approx(1.0)
    assert lr_at(9, cfg, 14) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(14, cfg, 14) == pytest.approx(0.1)
    lin = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=0, lr_schedule="linear")
    assert lr_at(5, lin, 10) == pytest.approx(0.5)
    assert lr_at(7, TrainConfig(lr=3e-6, lr_schedule="constant"), 10) == 3e-6


def test_clipping_scales_to_the_limit_and_skips_nonfinite():
    state = init_distributed(ParallelConfig())
    model = torch.nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    opt = LocalOptimizer(model, TrainConfig(grad_clip=1.0, lr=0.1), state)
    seen = []
    inner_step = opt.opt.step
    opt.opt.step = lambda: (seen.append(model.weight.grad.norm().item()), inner_step())
    model.weight.grad = torch.full((4, 4), 10.0)
    norm, stepped = opt.step(0.1)
    assert stepped and norm == pytest.approx(40.0)
    assert seen == [pytest.approx(1.0, rel=1e-5)]  # AdamW saw the clipped gradient
    assert model.weight.grad is None
    model.weight.grad = torch.full((4, 4), float("nan"))
    before = model.weight.detach().clone()
    norm, stepped = opt.step(0.1)
    assert not stepped and math.isnan(norm)
    assert torch.equal(model.weight, before)

"""Megatron-Core's own DDP and optimizer classes, built and stepped on the CPU for tests.

``DistributedDataParallel`` and the plain ``ChainedOptimizer`` / ``FP32Optimizer`` run on CPU tensors except
for a few scratch tensors they allocate with ``device="cuda"`` (the optimizer's loss scale ``_scale``, the
grad-norm overflow buffer). :func:`cuda_factories_on_cpu` maps those to the CPU for the duration of a block,
so tests exercise Megatron's real step / ``sharded_state_dict`` instead of a stand-in. Gradient clipping
asserts CUDA tensors (``clip_grad_by_total_norm_fp32``): build with ``grad_clip=0``. The distributed optimizer
checks ``param.type()`` against the CUDA type names when it is built; :func:`megatron_optimizer` answers that
check with the CUDA name of the CPU type for the duration of the build.
"""

from __future__ import annotations

import contextlib

import torch

_FACTORIES = ("tensor", "zeros", "ones", "empty", "full")


@contextlib.contextmanager
def cuda_factories_on_cpu():
    originals = {name: getattr(torch, name) for name in _FACTORIES}

    def on_cpu(factory):
        def make(*args, **kwargs):
            if str(kwargs.get("device", "cpu")).startswith("cuda"):
                kwargs["device"] = "cpu"
            return factory(*args, **kwargs)

        return make

    for name, factory in originals.items():
        setattr(torch, name, on_cpu(factory))
    try:
        yield
    finally:
        for name, factory in originals.items():
            setattr(torch, name, factory)


@contextlib.contextmanager
def cpu_tensors_typed_as_cuda():
    original = torch.Tensor.type

    def type_(self, *args, **kwargs):
        if args or kwargs or self.is_cuda:
            return original(self, *args, **kwargs)
        return original(self).replace("torch.", "torch.cuda.", 1)

    torch.Tensor.type = type_
    try:
        yield
    finally:
        torch.Tensor.type = original


def megatron_optimizer(model, train_cfg, state, distributed: bool = False):
    """Our :class:`MegatronOptimizer` (Megatron's DDP + ChainedOptimizer, with the DistributedOptimizer when
    ``distributed``) over ``model`` on the CPU."""
    from megatron_r1.training.optim import MegatronOptimizer

    assert train_cfg.grad_clip == 0, "Megatron's clipping asserts CUDA tensors"
    with cuda_factories_on_cpu(), cpu_tensors_typed_as_cuda():
        return MegatronOptimizer(model, train_cfg, state, distributed=distributed)


def step(optimizer, lr: float) -> tuple[float, bool]:
    with cuda_factories_on_cpu():
        return optimizer.step(lr)

"""Tests not marked ``gpu`` exercise the CPU path on every host.

On a GPU machine such a test sees no CUDA: ``torch.cuda.is_available()`` is False in the test process and
``CUDA_VISIBLE_DEVICES`` is empty in the processes it starts (CLI runs, spawned gloo ranks, workers), so its
device decisions and results are those of a CPU machine. ``gpu`` tests keep the GPU. Run the two sets in
separate pytest invocations (``pytest`` and ``pytest -m gpu``): a CPU run in a process patches Megatron-Core
for CPU process-wide (megatron_r1/parallel/cpu.py). No effect on a machine without CUDA.
"""

import pytest
import torch

_CUDA_VISIBLE = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _cpu_unless_marked_gpu(request, monkeypatch):
    if _CUDA_VISIBLE and request.node.get_closest_marker("gpu") is None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

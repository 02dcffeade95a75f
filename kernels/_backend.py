"""Backend selection for the kernels: is Triton usable, and which launcher runs a kernel.

Triton is imported lazily, only from the kernel path, so CPU-only code that imports
``megatron_r1.kernels`` never pays for (or needs) it. Kernels run on CUDA tensors through
``triton.jit`` and on CPU tensors through Triton's interpreter; the interpreter wrapper is
built explicitly per kernel (and the compiled one likewise), so the choice follows the
tensor's device, not whether ``TRITON_INTERPRET=1`` was set before Triton was first imported.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

import torch

# Looked up once: find_spec locates the package without importing it.
_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (it is not imported here)."""
    return _TRITON_FOUND


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET=1`` (Triton's CPU interpreter) is requested."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def use_triton(impl: str, tensor: torch.Tensor) -> bool:
    """Resolve ``impl`` ("auto" | "triton" | "torch") to whether the Triton kernel runs.

    "auto" picks Triton for CUDA tensors when Triton imports, else the torch reference.
    "triton" forces the kernel: on CUDA, or on CPU under the interpreter (``TRITON_INTERPRET=1``).
    """
    if impl == "torch":
        return False
    if impl == "auto":
        return tensor.is_cuda and triton_available()
    if impl != "triton":
        raise ValueError(f"impl must be 'auto', 'triton' or 'torch', got {impl!r}")
    if not triton_available():
        raise RuntimeError("impl='triton' requested but triton is not installed")
    if not tensor.is_cuda and tensor.device.type != "meta" and not interpreter_enabled():
        raise RuntimeError("impl='triton' on a CPU tensor needs Triton's interpreter: set TRITON_INTERPRET=1")
    return True


class Kernel:
    """A Triton kernel source function, compiled with ``triton.jit`` or interpreted on CPU.

    ``Kernel(fn)[grid](*args)`` launches on the device of the first tensor argument; the
    decorated variants are built on first use.
    """

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self._jit: Any = None
        self._interp: Any = None

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., Any]:
        def launch(*args: Any, **kwargs: Any) -> Any:
            first = next(a for a in args if isinstance(a, torch.Tensor))
            return self._variant(first.is_cuda)[grid](*args, **kwargs)

        return launch

    def _variant(self, on_cuda: bool) -> Any:
        if on_cuda:
            if self._jit is None:
                # JITFunction directly, not triton.jit, which returns an interpreted function
                # whenever TRITON_INTERPRET=1 is set (as it is in the CPU test suite).
                from triton.runtime.jit import JITFunction

                self._jit = JITFunction(self.fn)
            return self._jit
        if self._interp is None:
            from triton.runtime.interpreter import InterpretedFunction

            self._interp = InterpretedFunction(self.fn)
        return self._interp

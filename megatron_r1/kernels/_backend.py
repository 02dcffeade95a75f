"""Backend selection for the kernels: is Triton usable, and which launcher runs a kernel.

Triton is imported lazily, only from the kernel path, so CPU-only code that imports
``megatron_r1.kernels`` never pays for (or needs) it. Kernels on CUDA tensors are compiled; on
CPU tensors they run in Triton's interpreter (tests). Triton fixes its mode when
``triton.language`` is imported: with ``TRITON_INTERPRET=1`` its standard-library functions
(``tl.max``, ``tl.sum``, ...) are interpreted and its compiler is unusable, without it they
are compiled-only. So for CPU tensors the launcher builds the interpreted variant explicitly and
swaps in interpreted standard-library functions for the launch: CPU runs work even if something
imported Triton before ``TRITON_INTERPRET=1`` was set. CUDA tensors in a process that imported
Triton in interpreter mode are interpreted too (slow, correct).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator
from typing import Any

import torch

# Looked up once: find_spec locates the package without importing it.
_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (it is not imported here)."""
    return _TRITON_FOUND


def use_triton(impl: str, tensor: torch.Tensor) -> bool:
    """Resolve ``impl`` ("auto" | "triton" | "torch") to whether the Triton kernel runs.

    "auto" picks Triton for CUDA tensors when Triton imports, else the torch reference.
    "triton" forces the kernel: compiled on CUDA, Triton's interpreter for CPU tensors (slow:
    meant for tests, which also set ``TRITON_INTERPRET=1``, though it is not required).
    """
    if impl == "torch":
        return False
    if impl == "auto":
        return tensor.is_cuda and triton_available()
    if impl != "triton":
        raise ValueError(f"impl must be 'auto', 'triton' or 'torch', got {impl!r}")
    if not triton_available():
        raise RuntimeError("impl='triton' requested but triton is not installed")
    return True


class Kernel:
    """A Triton kernel source function, compiled for CUDA or interpreted on CPU.

    ``Kernel(fn)[grid](*args)`` launches on the device of the first tensor argument; the
    variants are built on first use.
    """

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self._jit: Any = None
        self._interp: Any = None

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., Any]:
        def launch(*args: Any, **kwargs: Any) -> Any:
            on_cuda = next(a for a in args if isinstance(a, torch.Tensor)).is_cuda
            if on_cuda and not _process_interprets():
                return self._variant(compiled=True)[grid](*args, **kwargs)
            with _interpreter_mode():
                return self._variant(compiled=False)[grid](*args, **kwargs)

        return launch

    def _variant(self, compiled: bool) -> Any:
        if compiled:
            if self._jit is None:
                # JITFunction directly: triton.jit returns an interpreted function whenever
                # TRITON_INTERPRET=1 is set (as it is in the CPU test suite).
                from triton.runtime.jit import JITFunction

                self._jit = JITFunction(self.fn)
            return self._jit
        if self._interp is None:
            from triton.runtime.interpreter import InterpretedFunction

            self._interp = InterpretedFunction(self.fn)
        return self._interp


def _process_interprets() -> bool:
    """True when Triton was imported with TRITON_INTERPRET=1: its compiler is unusable here,
    so CUDA tensors also go through the interpreter (which copies them to the host)."""
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    return not isinstance(tl.standard.sum, JITFunction)


# The triton.language functions (themselves Triton functions) that the kernel bodies call.
_STDLIB_USED = ("max", "sum", "zeros")  # keep in sync with _triton_kernels.py


@contextlib.contextmanager
def _interpreter_mode() -> Iterator[None]:
    """For one launch: Triton's interpret knob on, interpreted ``tl.max`` / ``tl.sum`` / ...."""
    import triton.language as tl
    from triton import knobs
    from triton.runtime.interpreter import InterpretedFunction

    saved = {name: getattr(tl, name) for name in _STDLIB_USED}
    try:
        for name, fn in saved.items():
            if not isinstance(fn, InterpretedFunction):
                setattr(tl, name, InterpretedFunction(fn.fn))
        with knobs.runtime.scope():
            knobs.runtime.interpret = True
            yield
    finally:
        for name, fn in saved.items():
            setattr(tl, name, fn)

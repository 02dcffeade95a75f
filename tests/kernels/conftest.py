"""Kernel tests run the Triton kernels on CPU through Triton's interpreter.

Triton fixes interpreted-or-compiled when it is first imported, so TRITON_INTERPRET is set here,
before the test modules import anything (spawned workers inherit it). The kernels' launcher
interprets CPU launches even without it; on a CUDA machine it is left unset so that the
``gpu`` tests exercise the compiled kernels.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

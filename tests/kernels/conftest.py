"""Kernel tests run the Triton kernels on CPU through Triton's interpreter.

TRITON_INTERPRET must be in the environment before any kernel runs; pytest imports this file
before the test modules, and spawned worker processes inherit the variable. The kernels build
their CPU (interpreted) and CUDA (compiled) variants per device, so setting it here does not
turn GPU tests into interpreter runs.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

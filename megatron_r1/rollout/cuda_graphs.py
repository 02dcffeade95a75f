"""CUDA graphs of the native engine's decode step: one graph per decoded width, captured on first use.

A decode step of a small model is hundreds of short kernels; launched one by one from Python they
cost far more than the arithmetic (~58 ms per step for a 0.5B model at batch 256 on an H100, against
~0.5 ms of weight reads). A captured graph replays them with one launch. The step must read and
write only static buffers (the engine's token / position buffers, KV cache and logits buffer), so
the graph of width ``w`` is a function of nothing but those buffers' first ``w`` rows.

If capture raises (an unsupported op, a driver without graph support), ``DecodeGraphs`` logs one
warning and runs the step eagerly from then on; ``rollout.cuda_graphs=false`` skips it altogether.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

__all__ = ["DecodeGraphs"]

logger = logging.getLogger(__name__)


class DecodeGraphs:
    """Replays ``step(width)`` from CUDA graphs keyed by ``width``.

    Args:
        step: runs one decode step over slots ``0 .. width-1`` reading and writing static buffers
            only; must be idempotent for equal buffer contents (the capture's warm-up runs it once).
    """

    def __init__(self, step: Callable[[int], None]) -> None:
        self._step = step
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._pool = None
        self.failed = False

    def __call__(self, width: int) -> None:
        graph = self._graphs.get(width)
        if graph is None and not self.failed:
            graph = self._capture(width)
        if graph is None:
            self._step(width)
        else:
            graph.replay()

    @property
    def widths(self) -> list[int]:
        """Widths captured so far."""
        return sorted(self._graphs)

    def _capture(self, width: int) -> torch.cuda.CUDAGraph | None:
        try:
            # Warm-up on a side stream (lazy initialisations, cuBLAS workspaces) before capture, as
            # torch.cuda.graphs recommends. It computes exactly what the replay recomputes.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._step(width)
            torch.cuda.current_stream().wait_stream(stream)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            # Graphs share one memory pool: they never run concurrently, and their outputs are copied
            # into the engine's own buffers inside the step.
            with torch.cuda.graph(graph, pool=self._pool):
                self._step(width)
        except Exception as err:  # noqa: BLE001 - any capture failure falls back to eager decoding
            logger.warning(
                "CUDA graph capture of the decode step failed at width %d (%s: %s); decoding eagerly "
                "(set rollout.cuda_graphs=false to skip capture)",
                width,
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
            )
            self.failed = True
            self._graphs.clear()
            return None
        self._graphs[width] = graph
        return graph

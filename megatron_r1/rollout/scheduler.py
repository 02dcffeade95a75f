"""Slot bookkeeping of continuous batching in the native engine (host side, no tensors).

The engine's static KV cache has ``num_slots`` batch rows (slots). Each completion being generated
occupies one slot from admission to finish; a finished completion frees its slot at once and the next
waiting completion of the same ``generate`` call takes it (after its prompt is prefilled). Decoding
runs over slots ``0 .. width-1``, so the scheduler keeps occupied slots low: admission takes the
lowest free slots, and ``compact`` moves completions from high slots into holes once that lets the
decoded width shrink (to a CUDA-graph bucket on GPUs, to the exact count on CPUs).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

__all__ = ["SlotScheduler", "pow2_bucket"]


def pow2_bucket(n: int, cap: int) -> int:
    """Smallest power of two >= ``n``, capped at ``cap`` (the largest CUDA-graph batch)."""
    if n <= 0:
        return 0
    return min(1 << (n - 1).bit_length(), cap)


class SlotScheduler:
    """Which completion (row id) occupies which cache slot.

    Args:
        num_slots: cache rows available.
        width_of: decoded width for ``n`` occupied slots (identity eagerly; ``pow2_bucket`` under
            CUDA graphs); ``compact`` moves rows only when it makes the width smaller.
    """

    def __init__(self, num_slots: int, width_of: Callable[[int], int] = lambda n: n) -> None:
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        self.num_slots = num_slots
        self.width_of = width_of
        self.row_of: dict[int, int] = {}  # slot -> row id
        self._free = list(range(num_slots))  # min-heap of free slots

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def high(self) -> int:
        """One past the highest occupied slot (0 when empty)."""
        return max(self.row_of, default=-1) + 1

    @property
    def width(self) -> int:
        """Slots ``0 .. width-1`` are decoded: covers every occupied slot, rounded by ``width_of``."""
        return self.width_of(self.high)

    def admit(self, rows: list[int]) -> list[int]:
        """Give each row id the lowest free slot; returns the slots, in the order of ``rows``."""
        if len(rows) > len(self._free):
            raise ValueError(f"admit: {len(rows)} rows but only {len(self._free)} free slots")
        slots = [heapq.heappop(self._free) for _ in rows]
        for slot, row in zip(slots, rows):
            self.row_of[slot] = row
        return slots

    def release(self, slot: int) -> int:
        """Free ``slot``; returns the row id that held it."""
        row = self.row_of.pop(slot)
        heapq.heappush(self._free, slot)
        return row

    def compact(self) -> list[tuple[int, int]]:
        """Move rows down so occupied slots are ``0 .. n-1`` when that shrinks ``width``.

        Returns the ``(dst, src)`` moves (the caller copies cache and per-slot state the same way);
        an empty list when the width would not change.
        """
        n = len(self.row_of)
        if self.width_of(n) >= self.width:
            return []
        holes = sorted(s for s in range(n) if s not in self.row_of)
        movers = sorted((s for s in self.row_of if s >= n), reverse=True)
        moves = list(zip(holes, movers))
        for dst, src in moves:
            self.row_of[dst] = self.row_of.pop(src)
        self._free = sorted(set(range(self.num_slots)) - set(self.row_of))
        heapq.heapify(self._free)
        return moves

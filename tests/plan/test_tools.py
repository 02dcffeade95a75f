"""The planner's tools: the scaling README holds what tools/scaling_table.py prints today; the GPU memory
check says it skips without CUDA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_scaling_readme_tables_are_current():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import scaling_table
    finally:
        sys.path.pop(0)
    readme = (ROOT / "examples" / "scaling" / "README.md").read_text()
    for row in scaling_table.scaling_table() + scaling_table.anchor_table():
        assert row in readme, f"examples/scaling/README.md is stale (python tools/scaling_table.py): {row}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="measures on a GPU instead")
def test_plan_vs_measured_skips_without_cuda():
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "plan_vs_measured.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "skipped: no CUDA"

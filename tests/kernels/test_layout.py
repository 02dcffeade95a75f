"""The kernels live inside the package, so the source tree is importable however the package is installed
(a wheel in site-packages, editable, or not at all): ``pytest`` from a checkout must find
``megatron_r1.kernels`` in the checkout itself."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_source_tree_imports_kernels_without_install(tmp_path):
    code = "import megatron_r1.kernels as k, pathlib, sys; print(pathlib.Path(k.__file__).resolve())"
    out = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); {code}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    # The checkout first on sys.path, as pytest puts it: no installed wheel is needed for the kernels.
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(ROOT / "megatron_r1" / "kernels")


def test_setup_packages_include_kernels():
    from setuptools import find_packages

    assert "megatron_r1.kernels" in find_packages(str(ROOT), include=["megatron_r1", "megatron_r1.*"])

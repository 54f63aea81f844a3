"""The type checker runs in the test suite: mypy, strict on src/hmmsim/include/.

The configuration is [tool.mypy] in pyproject.toml. Skipped where mypy is not
installed (it is in the ``test`` extra).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hmmsim.include.mm_types import PAGE_FIELDS, PageArrays

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_strict_on_include(tmp_path):
    pytest.importorskip("mypy")
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "src/hmmsim/include" in (ROOT / "pyproject.toml").read_text()


def test_page_arrays_declares_every_column():
    # the annotations mypy checks against must name exactly the PAGE_FIELDS columns
    declared = set(PageArrays.__annotations__)
    assert declared == {"base", "nr"} | {name for name, _ in PAGE_FIELDS}

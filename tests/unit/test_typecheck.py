"""The type checker runs in the test suite: mypy, strict on src/hmmsim/include/,
the fast layer src/hmmsim/fast/ and the batched struct-page operations it
calls (src/hmmsim/mm/page_batch.py).

The configuration is [tool.mypy] in pyproject.toml. Skipped where mypy is not
installed (it is in the ``test`` extra). mypy keeps its cache in the
repository's .mypy_cache, so a second run checks only what changed.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hmmsim.include.mm_types import PAGE_FIELDS, PageArrays

ROOT = Path(__file__).resolve().parents[2]
FAST = ROOT / "src" / "hmmsim" / "fast"


def _mypy_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]


def test_mypy_strict_on_include_and_fast():
    pytest.importorskip("mypy")
    r = subprocess.run(
        [sys.executable, "-m", "mypy"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_covers_include_fast_and_page_batch():
    """Strict on include/, the whole of fast/ (a new module is checked from
    the start) and mm/page_batch.py; a module exempted from it (an
    overrides entry) must be an existing fast/ module, listed by name."""
    cfg = _mypy_config()
    assert cfg["strict"] is True
    assert {"src/hmmsim/include", "src/hmmsim/fast", "src/hmmsim/mm/page_batch.py"} <= set(
        cfg["files"]
    )
    for override in cfg.get("overrides", []):
        mods = override["module"]
        for mod in [mods] if isinstance(mods, str) else mods:
            assert mod.startswith("hmmsim.fast."), f"{mod}: only fast/ modules may be exempt"
            assert (FAST / (mod.rsplit(".", 1)[1] + ".py")).exists(), f"{mod}: no such module"


def test_page_arrays_declares_every_column():
    # the annotations mypy checks against must name exactly the PAGE_FIELDS columns
    declared = set(PageArrays.__annotations__)
    assert declared == {"base", "nr"} | {name for name, _ in PAGE_FIELDS}

"""Shared fixtures: a small Kernel per test, invariant checks, no stray warnings."""

from __future__ import annotations

import pytest

from hmmsim.kernel import Kernel
from hmmsim.testing.invariants import check_invariants


@pytest.fixture
def k():
    """A 64 MiB kernel; the test fails if a kernel warning was recorded unexpectedly."""
    kern = Kernel(ram_bytes=64 << 20, hugetlb_pages=2)
    yield kern
    assert not kern.warnings, f"unexpected kernel warnings: {kern.warnings}"


@pytest.fixture
def proc(k):
    return k.spawn("test")


@pytest.fixture
def ok():
    """ok(k): run the invariant checker (call it after every step)."""

    def _ok(kern):
        check_invariants(kern)

    return _ok

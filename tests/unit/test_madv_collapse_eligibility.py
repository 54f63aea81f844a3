"""MADV_COLLAPSE refuses vmas that cannot hold a THP (issue 15 part 1).

mm/khugepaged.c madvise_collapse asks __thp_vma_allowable_orders for the
PMD order first (6.12 and mainline agree): a vma too small to contain one
PMD-aligned 2 MiB block (checked at vm_end - HPAGE_PMD_SIZE) and an
anonymous vma that has never faulted (no anon_vma yet) are -EINVAL, before
any range is scanned. A range without an aligned PMD inside a suitable vma
succeeds without doing anything.
"""

from __future__ import annotations

import pytest

from hmmsim.errno import EINVAL
from hmmsim.include.mman import (
    MADV_COLLAPSE,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_PRIVATE,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.kconfig import PMD_SIZE, KConfig
from hmmsim.kernel import Kernel
from hmmsim.testing.invariants import check_invariants
from hmmsim.userspace import entry_at

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
PAGE = 4096
BASE = 0x4000_0000  # PMD aligned


@pytest.fixture(params=["mainline", "6.12"])
def p(request):
    k = Kernel(KConfig(ram_bytes=64 << 20, kernel=request.param))
    return k.spawn()


def test_a_vma_smaller_than_a_pmd_is_einval(p):
    a = p.mmap(BASE, PMD_SIZE - PAGE, RW, ANON | MAP_FIXED)
    p.store(a, b"x")
    assert p.madvise(a, PMD_SIZE - PAGE, MADV_COLLAPSE) == -EINVAL
    check_invariants(p.k)


def test_a_pmd_sized_vma_that_straddles_the_alignment_is_einval(p):
    a = p.mmap(BASE + PMD_SIZE // 2, PMD_SIZE, RW, ANON | MAP_FIXED)
    p.store(a, b"x")
    assert p.madvise(a, PMD_SIZE, MADV_COLLAPSE) == -EINVAL
    # one page more than two halves: an aligned PMD fits, the call succeeds
    b = p.mmap(BASE + 4 * PMD_SIZE - PAGE, PMD_SIZE + 2 * PAGE, RW, ANON | MAP_FIXED)
    p.store(b, b"y")
    p.store(b + PAGE, b"z")
    assert p.madvise(b, PMD_SIZE + 2 * PAGE, MADV_COLLAPSE) == 0
    assert entry_at(p, b + PAGE)[0] == "pmd"
    assert p.load(b + PAGE, 1) == b"z"
    check_invariants(p.k)


def test_a_vma_that_never_faulted_is_einval(p):
    a = p.mmap(BASE, 2 * PMD_SIZE, RW, ANON | MAP_FIXED)
    assert p.madvise(a, 2 * PMD_SIZE, MADV_COLLAPSE) == -EINVAL  # no anon_vma yet
    p.load(a, 1)  # a read fault maps the zero page: still no anon_vma
    assert p.madvise(a, 2 * PMD_SIZE, MADV_COLLAPSE) == -EINVAL
    p.store(a, b"x")
    assert p.madvise(a, 2 * PMD_SIZE, MADV_COLLAPSE) == 0
    check_invariants(p.k)


def test_a_range_without_an_aligned_pmd_in_a_suitable_vma_is_a_noop(p):
    a = p.mmap(BASE, 2 * PMD_SIZE, RW, ANON | MAP_FIXED)
    p.store(a, b"x")
    assert p.madvise(a + PAGE, PMD_SIZE, MADV_COLLAPSE) == 0
    assert entry_at(p, a)[0] == "pte"
    check_invariants(p.k)

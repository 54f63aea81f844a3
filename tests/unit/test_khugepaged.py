"""MADV_COLLAPSE: small anon pages become one PMD-mapped THP, bytes intact."""

import numpy as np

from hmmsim.errno import EAGAIN, EINVAL
from hmmsim.include.mm_types import MM_ANONPAGES
from hmmsim.include.mman import (
    MADV_COLLAPSE,
    MADV_NOHUGEPAGE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.include.pgtable import _PAGE_RW
from hmmsim.kconfig import PMD_SIZE
from hmmsim.userspace import entry_at

RW = PROT_READ | PROT_WRITE
N = PMD_SIZE // 4


def region(p):
    a = p.mmap(0, 2 * PMD_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    return (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)


def test_collapse_small_pages_holes_and_zero_pages(k, proc, ok):
    h = region(proc)  # THP mode "madvise" and no MADV_HUGEPAGE: small pages
    proc.store_array(h, np.arange(N // 2, dtype=np.int32))
    proc.load(h + PMD_SIZE - 4096, 1)  # a zero page; the rest are holes
    assert entry_at(proc, h)[0] == "pte"
    assert proc.madvise(h, PMD_SIZE, MADV_COLLAPSE) == 0
    level, pmd = entry_at(proc, h)
    assert level == "pmd" and pmd & _PAGE_RW
    assert proc.mm.rss_stat[MM_ANONPAGES] == 512
    want = np.zeros(N, dtype=np.int32)
    want[: N // 2] = np.arange(N // 2)
    assert (proc.load_array(h, N) == want).all()
    assert proc.madvise(h, PMD_SIZE, MADV_COLLAPSE) == 0  # already a THP
    ok(k)


def test_collapse_refusals(k, proc, ok):
    h = region(proc)
    proc.store(h, b"x")
    child = proc.child(proc.fork())  # the page is shared: not collapsible
    assert proc.madvise(h, PMD_SIZE, MADV_COLLAPSE) == -EAGAIN
    child._exit(0)
    proc.waitpid(child.pid)
    proc.madvise(h, PMD_SIZE, MADV_NOHUGEPAGE)
    assert proc.madvise(h, PMD_SIZE, MADV_COLLAPSE) == -EINVAL
    s = proc.mmap(0, PMD_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS)
    assert proc.madvise(s, PMD_SIZE, MADV_COLLAPSE) == -EINVAL  # shmem not modelled
    ok(k)

"""Regression (found by `hmmsim fuzz`): reusing a PTE-mapped THP on a write
fault moved the whole folio's anon rmap to the faulting vma. The kernel's
__wp_can_reuse_large_anon_folio never moves it; another vma that maps part of
the folio must still find it through its anon_vma chain."""

import numpy as np

from hmmsim.include.mman import MADV_HUGEPAGE, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from hmmsim.kconfig import PMD_SIZE
from hmmsim.kernel import Kernel
from hmmsim.testing.invariants import check_invariants


def test_write_reuse_of_thp_split_across_two_vmas():
    k = Kernel(ram_bytes=64 << 20, hugetlb_pages=0)
    p = k.spawn()
    a = p.mmap(0, 2 * PMD_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    h = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    p.madvise(a, 2 * PMD_SIZE, MADV_HUGEPAGE)
    p.store_array(h, np.arange(PMD_SIZE // 4, dtype=np.int32))
    p.mprotect(h + PMD_SIZE // 2, PMD_SIZE // 2, PROT_READ)  # two vmas, PTE-mapped THP
    p.mprotect(h + PMD_SIZE // 2, PMD_SIZE // 2, PROT_READ | PROT_WRITE)
    child = p.child(p.fork())  # each child vma gets its own anon_vma
    p._exit(0)  # the child now holds every mapping of the THP
    child.store(h, b"\x01\x00\x00\x00")  # write fault on the first half
    check_invariants(k)
    child.store(h + PMD_SIZE - 4, b"\x02\x00\x00\x00")
    check_invariants(k)
    assert child.load_array(h + 4, 1)[0] == 1

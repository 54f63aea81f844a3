"""THP: PMD faults, huge zero page, COW, PMD split on partial munmap/mprotect, folio split."""

import numpy as np

from hmmsim.include.mm_types import (
    MM_ANONPAGES,
    PageAnonExclusive,
    folio_entire_mapcount,
    folio_mapcount,
    folio_ref_count,
    folio_test_large,
    page_folio,
)
from hmmsim.include.mman import (
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.include.pgtable import _PAGE_DIRTY, _PAGE_PSE, _PAGE_RW, pmd_pfn, pte_pfn
from hmmsim.kconfig import PMD_SIZE
from hmmsim.userspace import entry_at

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
N = PMD_SIZE // 4


def thp_area(p):
    a = p.mmap(0, 2 * PMD_SIZE, RW, ANON)
    h = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    assert p.madvise(h, PMD_SIZE, MADV_HUGEPAGE) == 0
    return h


def test_write_fault_maps_a_thp_by_pmd(k, proc, ok):
    h = thp_area(proc)
    proc.store_array(h, np.arange(N, dtype=np.int32))
    level, pmd = entry_at(proc, h)
    assert level == "pmd" and pmd & _PAGE_PSE and pmd & _PAGE_RW and pmd & _PAGE_DIRTY
    folio = k.mem.pfn_to_page(pmd_pfn(pmd))
    assert folio_test_large(folio) and folio.pfn % 512 == 0
    assert folio_entire_mapcount(folio) == 1 and folio_ref_count(folio) == 1
    assert proc.mm.rss_stat[MM_ANONPAGES] == 512
    assert k.stats["thp_fault_alloc"] == 1
    assert (proc.load_array(h, N) == np.arange(N)).all()
    ok(k)


def test_without_madvise_no_thp(k, proc, ok):
    a = proc.mmap(0, 2 * PMD_SIZE, RW, ANON)
    h = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    proc.store(h, b"x")
    assert entry_at(proc, h)[0] == "pte"
    assert proc.madvise(h, PMD_SIZE, MADV_HUGEPAGE) == 0
    assert proc.madvise(h, PMD_SIZE, MADV_NOHUGEPAGE) == 0
    proc.store(h + PMD_SIZE // 2, b"y")
    assert entry_at(proc, h + PMD_SIZE // 2)[0] == "pte"
    ok(k)


def test_read_fault_maps_huge_zero_page_then_write_replaces_it(k, proc, ok):
    h = thp_area(proc)
    assert proc.load(h + 5000, 4) == bytes(4)
    level, pmd = entry_at(proc, h)
    assert level == "pmd" and pmd_pfn(pmd) == k.huge_zero_pfn and not pmd & _PAGE_RW
    ok(k)
    proc.store(h + 5000, b"data")
    level, pmd = entry_at(proc, h)
    assert level == "pmd" and pmd_pfn(pmd) != k.huge_zero_pfn and pmd & _PAGE_RW
    assert proc.load(h + 4996, 12) == bytes(4) + b"data" + bytes(4)
    ok(k)


def test_partial_munmap_splits_the_pmd_then_deferred_split(k, proc, ok):
    h = thp_area(proc)
    proc.store_array(h, np.arange(N, dtype=np.int32))
    folio = k.mem.pfn_to_page(pmd_pfn(entry_at(proc, h)[1]))
    free = k.mem.nr_free
    assert proc.munmap(h + PMD_SIZE - 8192, 8192) == 0
    ok(k)
    level, pte = entry_at(proc, h)
    assert level == "pte" and pte_pfn(pte) == folio.pfn
    assert folio_test_large(folio) and folio_mapcount(folio) == 510
    assert folio_ref_count(folio) == 510
    assert proc.mm.rss_stat[MM_ANONPAGES] == 510
    assert (proc.load_array(h, N - 2048) == np.arange(N - 2048)).all()
    assert k.mem.nr_free == free  # nothing freed until the folio itself is split
    assert k.deferred_split_scan() == 1
    ok(k)
    assert not folio_test_large(folio)
    assert k.mem.nr_free == free + 2  # the two unmapped subpages
    assert (proc.load_array(h, N - 2048) == np.arange(N - 2048)).all()
    ok(k)


def test_partial_mprotect_splits_pmd_and_keeps_data(k, proc, ok):
    h = thp_area(proc)
    proc.store_array(h, np.arange(N, dtype=np.int32))
    assert proc.mprotect(h, 4096, PROT_READ) == 0
    assert entry_at(proc, h)[0] == "pte"
    assert not entry_at(proc, h)[1] & _PAGE_RW
    assert entry_at(proc, h + 4096)[1] & _PAGE_RW  # exclusive, still writable
    assert len(proc.mm.vmas) >= 2
    assert (proc.load_array(h, N) == np.arange(N)).all()
    ok(k)


def test_thp_cow_after_fork_splits_and_copies_one_page(k, proc, ok):
    h = thp_area(proc)
    proc.store_array(h, np.arange(N, dtype=np.int32))
    folio = k.mem.pfn_to_page(pmd_pfn(entry_at(proc, h)[1]))
    child = proc.child(proc.fork())
    assert folio_entire_mapcount(folio) == 2 and folio_ref_count(folio) == 2
    assert not PageAnonExclusive(folio)
    ok(k)
    child.store(h + 8, b"\xff\xff\xff\xff")
    ok(k)
    assert entry_at(child, h)[0] == "pte"
    assert pte_pfn(entry_at(child, h)[1]) != folio.pfn
    assert pte_pfn(entry_at(child, h + 4096)[1]) == folio.pfn + 1
    assert (proc.load_array(h, N) == np.arange(N)).all()
    got = child.load_array(h, 4)
    assert list(got) == [0, 1, -1, 3]
    child._exit(0)
    proc.waitpid(child.pid)
    ok(k)


def test_thp_reuse_when_exclusive_again(k, proc, ok):
    h = thp_area(proc)
    proc.store(h, b"x")
    child = proc.child(proc.fork())
    child._exit(0)
    proc.waitpid(child.pid)
    folio_pfn = pmd_pfn(entry_at(proc, h)[1])
    proc.store(h, b"y")  # refcount back to 1: reused without split
    level, pmd = entry_at(proc, h)
    assert level == "pmd" and pmd_pfn(pmd) == folio_pfn and pmd & _PAGE_RW
    ok(k)


def test_full_munmap_of_thp_frees_512_pages(k, proc, ok):
    h = thp_area(proc)
    proc.store(h, b"x")
    free = k.mem.nr_free
    proc.munmap(h, PMD_SIZE)
    assert k.mem.nr_free >= free + 512
    ok(k)


def test_thp_fallback_when_no_huge_block(k, proc, ok):
    k.mem.should_fail_alloc = lambda order: order == 9
    h = thp_area(proc)
    proc.store(h, b"x")
    assert entry_at(proc, h)[0] == "pte"
    assert k.stats["thp_fault_fallback"] == 1
    ok(k)


def test_split_folio_refuses_pinned(k, proc, ok):
    from hmmsim.errno import EAGAIN
    from hmmsim.locking import folio_trylock, folio_unlock
    from hmmsim.mm.huge_memory import split_folio

    h = thp_area(proc)
    proc.store(h, b"x")
    folio = page_folio(k.mem.pfn_to_page(pmd_pfn(entry_at(proc, h)[1])))
    assert folio_trylock(folio)
    folio.a._refcount[folio.i] += 2  # the caller's reference and a pin
    assert split_folio(folio) == -EAGAIN
    folio.a._refcount[folio.i] -= 2
    folio_unlock(folio)
    ok(k)


def test_prot_none_thp_is_checked_and_splits_with_inverted_pfns(k, proc, ok):
    """A PROT_NONE huge PMD stores its PFN inverted (L1TF); the invariant
    checker must read it with pmd_present()/pmd_pfn(), and splitting it must
    step each PTE's inverted PFN downwards (pte_advance_pfn) so PTE i still
    names subpage i. Both were found by the fuzzer."""
    from hmmsim.include.mman import PROT_NONE
    from hmmsim.include.pgtable import pmd_present, pte_present

    h = thp_area(proc)
    proc.store_array(h, np.arange(N, dtype=np.int32))
    folio_pfn = pmd_pfn(entry_at(proc, h)[1])
    assert proc.mprotect(h, PMD_SIZE, PROT_NONE) == 0
    level, pmd = entry_at(proc, h)
    assert level == "pmd" and not pmd & 1 and pmd_present(pmd) and pmd_pfn(pmd) == folio_pfn
    ok(k)  # the checker sees the PROT_NONE PMD's mapping
    # munmap of the last page splits the PMD into 511 PROT_NONE PTEs.
    assert proc.munmap(h + PMD_SIZE - 4096, 4096) == 0
    for i in (0, 1, 255, 510):
        level, pte = entry_at(proc, h + i * 4096)
        assert level == "pte" and pte_present(pte) and not pte & 1
        assert pte_pfn(pte) == folio_pfn + i
    ok(k)
    assert proc.mprotect(h, PMD_SIZE - 4096, RW) == 0
    assert (proc.load_array(h, N - 1024) == np.arange(N - 1024)).all()
    ok(k)


def test_612_write_to_huge_zero_pmd_splits_and_copies_one_page():
    """6.12 mm/huge_memory.c do_huge_pmd_wp_page: a huge zero PMD goes to the
    fallback (split, then do_wp_page copies one 4K page; the other 511 PTEs
    keep mapping the zero page). The pin allocates a THP (the test above)."""
    from dataclasses import replace

    from hmmsim.include.pgtable import pte_pfn
    from hmmsim.selftests.hmm_tests import make_kernel, selftest_config
    from hmmsim.testing.invariants import check_invariants

    k = make_kernel(replace(selftest_config(), kernel="6.12"))
    proc = k.spawn()
    h = thp_area(proc)
    assert proc.load(h + 5000, 4) == bytes(4)
    assert entry_at(proc, h)[0] == "pmd"
    proc.store(h + 5000, b"data")
    level, pte = entry_at(proc, h + 4096)
    assert level == "pte" and pte & _PAGE_RW
    level, other = entry_at(proc, h)
    assert level == "pte" and not other & _PAGE_RW
    assert pte_pfn(other) != pte_pfn(pte)
    assert proc.load(h + 4996, 12) == bytes(4) + b"data" + bytes(4)
    assert proc.load(h, 4) == bytes(4)
    check_invariants(k)

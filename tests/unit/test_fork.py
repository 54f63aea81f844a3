"""fork(): copy_page_range, COW isolation, anon-exclusive rules, exit and wait."""

import numpy as np
import pytest

from hmmsim.errno import ECHILD
from hmmsim.include.mm_types import PageAnonExclusive, folio_mapcount, folio_ref_count
from hmmsim.include.mman import (
    MADV_DONTFORK,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.include.pgtable import _PAGE_ACCESSED, _PAGE_RW, pte_pfn
from hmmsim.mm.gup import FOLL_LONGTERM, FOLL_WRITE, pin_user_pages_remote, unpin_user_page
from hmmsim.userspace import WEXITSTATUS, WIFEXITED, SegmentationFault, WouldBlock, entry_at

RW = PROT_READ | PROT_WRITE


def fill(p, a, n):
    p.store_array(a, np.arange(n, dtype=np.int32))


def test_fork_write_protects_both_and_shares_the_page(k, proc, ok):
    a = proc.mmap(0, 4 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    fill(proc, a, 4096)
    page = k.mem.pfn_to_page(pte_pfn(entry_at(proc, a)[1]))
    assert PageAnonExclusive(page)
    child = proc.child(proc.fork())
    ok(k)
    pp, cp = entry_at(proc, a)[1], entry_at(child, a)[1]
    assert pte_pfn(pp) == pte_pfn(cp)
    assert not pp & _PAGE_RW and not cp & _PAGE_RW
    assert not cp & _PAGE_ACCESSED  # pte_mkold in the child
    assert not PageAnonExclusive(page)
    assert folio_ref_count(page) == 2 and folio_mapcount(page) == 2
    child.store_array(a, np.full(16, -1, dtype=np.int32))
    ok(k)
    assert (proc.load_array(a, 4096) == np.arange(4096)).all()
    assert (child.load_array(a, 16) == -1).all()
    assert (child.load_array(a + 64, 4096 - 16) == np.arange(16, 4096)).all()
    child._exit(0)
    pid, status = proc.waitpid(child.pid)
    assert WIFEXITED(status) and WEXITSTATUS(status) == 0
    ok(k)
    # The parent's page is mapped once again: its next write reuses it in place.
    assert folio_ref_count(page) == 1
    proc.store(a, b"\x07")
    assert pte_pfn(entry_at(proc, a)[1]) == page.pfn and PageAnonExclusive(page)
    ok(k)


def test_shared_anon_is_not_copied_on_write(k, proc, ok):
    a = proc.mmap(0, 4096, RW, MAP_SHARED | MAP_ANONYMOUS)
    proc.store(a, b"before")
    child = proc.child(proc.fork())
    child.store(a, b"child!")
    assert proc.load(a, 6) == b"child!"
    ok(k)
    child._exit(0)
    proc.waitpid(child.pid)
    ok(k)


def test_parent_write_after_fork_copies_for_the_parent(k, proc, ok):
    a = proc.mmap(0, 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    proc.store(a, b"A")
    child = proc.child(proc.fork())
    proc.store(a, b"P")
    assert child.load(a, 1) == b"A" and proc.load(a, 1) == b"P"
    assert pte_pfn(entry_at(proc, a)[1]) != pte_pfn(entry_at(child, a)[1])
    ok(k)
    child._exit(0)
    proc.waitpid(child.pid)
    ok(k)


def test_zero_page_only_vma_is_not_copied(k, proc, ok):
    # A read fault maps the zero page without an anon_vma, so vma_needs_copy()
    # says no and the child starts with empty page tables for the vma.
    a = proc.mmap(0, 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    proc.load(a, 1)
    child = proc.child(proc.fork())
    assert entry_at(child, a) == ("none", 0)
    assert child.load(a, 1) == b"\0"
    assert pte_pfn(entry_at(child, a)[1]) == k.mem.zero_pfn
    child.store(a, b"z")
    assert proc.load(a, 1) == b"\0"
    ok(k)


def test_pinned_exclusive_page_is_copied_at_fork(k, proc, ok):
    a = proc.mmap(0, 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    proc.store(a, b"pinned")
    pfn = pte_pfn(entry_at(proc, a)[1])
    proc.mm.mmap_lock.down_read()
    pages = pin_user_pages_remote(proc.mm, a, 1, FOLL_WRITE | FOLL_LONGTERM)
    proc.mm.mmap_lock.up_read()
    assert [p.pfn for p in pages] == [pfn]  # a FOLL_PIN holder (e.g. RDMA) keeps it
    child = proc.child(proc.fork())
    cpfn = pte_pfn(entry_at(child, a)[1])
    assert cpfn != pfn
    assert entry_at(proc, a)[1] & _PAGE_RW  # the parent stays writable
    assert child.load(a, 6) == b"pinned"
    ok(k)
    unpin_user_page(pages[0])
    ok(k)


def test_dontfork_vma_is_absent_in_child(k, proc, ok):
    a = proc.mmap(0, 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    proc.store(a, b"x")
    assert proc.madvise(a, 4096, MADV_DONTFORK) == 0
    child = proc.child(proc.fork())
    with pytest.raises(SegmentationFault):
        child.load(a, 1)
    ok(k)


def test_waitpid_rules(k, proc):
    assert proc.waitpid(12345) == (-ECHILD, 0)
    child = proc.child(proc.fork())
    with pytest.raises(WouldBlock, match="drive the child"):
        proc.waitpid(child.pid)
    child._exit(7)
    assert WEXITSTATUS(proc.waitpid(child.pid)[1]) == 7


def test_exit_frees_everything(k, proc, ok):
    free = k.mem.nr_free
    p2 = k.spawn()
    a = p2.mmap(0, 64 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    fill(p2, a, 64 * 1024)
    p2._exit(0)
    assert k.mem.nr_free == free
    ok(k)

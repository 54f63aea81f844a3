"""make_device_exclusive and the CPU paths that meet device-exclusive entries."""

import numpy as np
import pytest

from hmmsim.errno import EFAULT, EOPNOTSUPP
from hmmsim.include.mm_types import folio_mapcount, folio_put, folio_ref_count
from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE
from hmmsim.include.mmu_notifier import MMU_NOTIFY_EXCLUSIVE
from hmmsim.include.pgtable import _PAGE_RW, pte_pfn
from hmmsim.kernel import Kernel
from hmmsim.locking import folio_unlock
from hmmsim.mm.rmap import make_device_exclusive
from hmmsim.testing.invariants import check_invariants
from hmmsim.userspace import entry_at

RW = PROT_READ | PROT_WRITE
OWNER = object()


@pytest.fixture
def k():
    kern = Kernel(ram_bytes=64 << 20)
    yield kern
    assert not kern.warnings


def exclusive(p, addr, owner=OWNER):
    p.mm.mmap_lock.down_read()
    try:
        foliop = []
        page = make_device_exclusive(p.mm, addr, owner, foliop)
        if isinstance(page, int):
            return page
        folio_unlock(foliop[0])
        folio_put(foliop[0])
        return page
    finally:
        p.mm.mmap_lock.up_read()


def is_exclusive(k, p, addr):
    return k.swp.softleaf_is_device_exclusive(k.swp.softleaf_from_pte(entry_at(p, addr)[1]))


def test_entry_keeps_mapcount_and_sends_owner(k):
    p = k.spawn()
    a = p.mmap(0, 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    p.store(a, b"x")
    pfn = pte_pfn(entry_at(p, a)[1])
    page = exclusive(p, a)
    assert page.pfn == pfn and is_exclusive(k, p, a)
    assert k.swp.softleaf_to_pfn(k.swp.softleaf_from_pte(entry_at(p, a)[1])) == pfn
    assert folio_mapcount(page) == 1 and folio_ref_count(page) == 1
    ev = list(k.notifier_events)[-1]
    assert ev[0] == MMU_NOTIFY_EXCLUSIVE and ev[3] is OWNER
    check_invariants(k)


@pytest.mark.parametrize("access", ["load", "store"])
def test_cpu_access_restores_and_notifies_without_owner(k, access):
    p = k.spawn()
    a = p.mmap(0, 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    p.store(a, b"orig")
    exclusive(p, a)
    if access == "load":
        assert p.load(a, 4) == b"orig"
    else:
        p.store(a, b"new!")
    assert not is_exclusive(k, p, a) and entry_at(p, a)[1] & _PAGE_RW
    ev = list(k.notifier_events)[-1]
    assert ev[0] == MMU_NOTIFY_EXCLUSIVE and ev[3] is None
    check_invariants(k)


def test_fork_restores_before_copying(k):
    p = k.spawn()
    a = p.mmap(0, 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    p.store(a, b"fork")
    exclusive(p, a)
    child = p.child(p.fork())
    assert not is_exclusive(k, p, a)
    assert pte_pfn(entry_at(child, a)[1]) == pte_pfn(entry_at(p, a)[1])
    assert not entry_at(p, a)[1] & _PAGE_RW  # then COW-shared
    child.store(a, b"kid!")
    assert p.load(a, 4) == b"fork"
    check_invariants(k)


def test_mprotect_keeps_the_entry_munmap_zaps_it(k):
    p = k.spawn()
    a = p.mmap(0, 2 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    p.store_array(a, np.arange(2048, dtype=np.int32))
    exclusive(p, a)
    exclusive(p, a + 4096)
    p.mprotect(a, 2 * 4096, PROT_READ)
    assert is_exclusive(k, p, a)
    check_invariants(k)
    assert p.load_array(a, 1)[0] == 0  # a read restores it, read-only now
    assert not entry_at(p, a)[1] & _PAGE_RW
    free = k.mem.nr_free
    p.munmap(a + 4096, 4096)  # an exclusive entry is zapped like a mapped page
    assert k.mem.nr_free > free
    check_invariants(k)


def test_errors(k):
    p = k.spawn()
    ro = p.mmap(0, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS)
    assert exclusive(p, ro) == -EFAULT  # GUP FOLL_WRITE on a read-only vma
    assert exclusive(p, 0x5000_0000) == -EFAULT  # no vma
    sh = p.mmap(0, 4096, RW, MAP_SHARED | MAP_ANONYMOUS)
    assert exclusive(p, sh) == -EOPNOTSUPP  # shmem: not anon
    check_invariants(k)


def test_write_fault_first_for_zero_page(k):
    p = k.spawn()
    a = p.mmap(0, 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    page = exclusive(p, a)  # GUP write-faults a fresh page in
    assert page.pfn != k.mem.zero_pfn and is_exclusive(k, p, a)
    check_invariants(k)

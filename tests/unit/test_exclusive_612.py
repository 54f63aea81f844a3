"""Linux 6.12's device-exclusive path (--kernel 6.12), against the pinned one.

6.12: lib/test_hmm.c dmirror_exclusive works in 64-page windows through
mm/rmap.c make_device_exclusive_range and answers -EBUSY for any failure;
the entries are SWP_DEVICE_EXCLUSIVE_WRITE/_READ (29/30) and drop the rmap
(mapcount), which mm/memory.c restore_exclusive_pte adds back. The pin
(make_device_exclusive, one page at a time) returns GUP's -EFAULT or
-EOPNOTSUPP and keeps the mapcount.
"""

import numpy as np
import pytest

from hmmsim.drivers.test_hmm import hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_CHECK_EXCLUSIVE,
    HMM_DMIRROR_EXCLUSIVE,
    hmm_dmirror_cmd,
)
from hmmsim.errno import EBUSY, EFAULT, EOPNOTSUPP, EPERM
from hmmsim.include.mm_types import folio_mapcount, folio_ref_count, page_folio
from hmmsim.include.mman import (
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_PRIVATE,
    MAP_SHARED,
    O_RDWR,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.include.mmu_notifier import MMU_NOTIFY_EXCLUSIVE
from hmmsim.include.pgtable import _PAGE_DIRTY, _PAGE_RW, pte_present
from hmmsim.kernel import Kernel
from hmmsim.testing.invariants import check_invariants
from hmmsim.userspace import entry_at

RW = PROT_READ | PROT_WRITE
PAGE = 4096
A = 0x2000_0000_0000


class World:
    def __init__(self, kernel: str, *features: str) -> None:
        extra = {"features": frozenset(features)} if features else {}
        self.k = Kernel(ram_bytes=64 << 20, kernel=kernel, **extra)
        hmm_dmirror_init(self.k)
        self.p = self.k.spawn()
        self.fd = self.p.open("/dev/hmm_dmirror0", O_RDWR)

    def map(self, addr: int, npages: int, prot=RW, flags=MAP_PRIVATE | MAP_ANONYMOUS):
        assert self.p.mmap(addr, npages * PAGE, prot, flags | MAP_FIXED) == addr
        if prot & PROT_WRITE:
            self.p.store_array(addr, np.arange(npages * 1024, dtype=np.int32) + addr % 997)

    def exclusive(self, addr: int, npages: int) -> int:
        cmd = hmm_dmirror_cmd(addr=addr, ptr=np.zeros(npages * 1024, np.int32), npages=npages)
        return self.p.ioctl(self.fd, HMM_DMIRROR_EXCLUSIVE, cmd)

    def check(self, addr: int, npages: int) -> int:
        cmd = hmm_dmirror_cmd(addr=addr, ptr=None, npages=npages)
        return self.p.ioctl(self.fd, HMM_DMIRROR_CHECK_EXCLUSIVE, cmd)

    def entry(self, addr: int) -> int:
        return self.k.swp.softleaf_from_pte(entry_at(self.p, addr)[1])

    def is_exclusive(self, addr: int) -> bool:
        return self.k.swp.softleaf_is_device_exclusive(self.entry(addr))

    def ok(self) -> None:
        check_invariants(self.k)
        assert not self.k.warnings, self.k.warnings


@pytest.fixture
def w():
    return World("6.12")


@pytest.fixture
def wpin():
    return World("mainline")


def test_612_entries_are_exclusive_write_and_drop_the_mapcount(w):
    w.map(A, 4)
    pages = []
    assert w.exclusive(A, 4) == 0
    swp = w.k.swp
    for i in range(4):
        e = w.entry(A + i * PAGE)
        assert swp.swp_type(e) == swp.SWP_DEVICE_EXCLUSIVE_WRITE == 29
        page = w.k.softleaf_to_page(e)
        pages.append(page)
        # 6.12: the rmap is gone, the PTE's reference stays with the entry
        assert folio_mapcount(page_folio(page)) == 0
        assert folio_ref_count(page_folio(page)) == 1
    assert w.check(A, 4) == -EPERM
    w.ok()
    # a CPU write restores a dirty, writable PTE and the rmap; the device is told
    w.p.store(A + PAGE, b"cpu")
    pte = entry_at(w.p, A + PAGE)[1]
    assert pte_present(pte) and pte & _PAGE_RW and pte & _PAGE_DIRTY
    assert folio_mapcount(page_folio(pages[1])) == 1
    ev = list(w.k.notifier_events)[-1]
    assert ev[0] == MMU_NOTIFY_EXCLUSIVE and ev[3] is None
    assert w.check(A + PAGE, 1) == 0 and w.check(A, 1) == -EPERM
    w.ok()


def test_612_zap_and_fork_of_exclusive_entries(w):
    w.map(A, 4)
    assert w.exclusive(A, 4) == 0
    child = w.k.processes[w.p.fork()]  # restores each entry (rmap back), then copies
    assert not w.is_exclusive(A)
    assert (child.load_array(A, 4 * 1024) == np.arange(4 * 1024) + A % 997).all()
    w.ok()
    assert w.exclusive(A, 2) == 0
    assert w.is_exclusive(A) and w.is_exclusive(A + PAGE)
    assert w.p.munmap(A, 4 * PAGE) == 0  # zap: no rmap to remove, the reference goes
    w.ok()


@pytest.mark.parametrize(
    "prot,flags,pin_errno",
    [
        (PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -EFAULT),  # GUP FOLL_WRITE fails
        (RW, MAP_SHARED | MAP_ANONYMOUS, -EOPNOTSUPP),  # not an anon folio
    ],
    ids=["read-only", "shared"],
)
def test_612_failures_are_ebusy_where_the_pin_gives_the_errno(w, wpin, prot, flags, pin_errno):
    for world, want in ((w, -EBUSY), (wpin, pin_errno)):
        world.map(A, 2, prot, flags)
        assert world.exclusive(A, 2) == want
        assert world.check(A, 2) == 0
        world.ok()


def test_612_unmapped_range_is_ebusy(w, wpin):
    assert w.exclusive(A, 1) == -EBUSY
    assert wpin.exclusive(A, 1) == -EFAULT


def test_612_window_with_a_failing_page_maps_the_others_then_ebusy(w):
    # GUP gets all 6 pages; the 2 shared ones fail, so the 4 anon pages are
    # entered in the mirror (dmirror_atomic_map) and the ioctl says -EBUSY
    w.map(A, 4)
    w.map(A + 4 * PAGE, 2, RW, MAP_SHARED | MAP_ANONYMOUS)
    assert w.exclusive(A, 6) == -EBUSY
    assert all(w.is_exclusive(A + i * PAGE) for i in range(4))
    assert not w.is_exclusive(A + 4 * PAGE)
    assert w.check(A, 4) == -EPERM and w.check(A + 4 * PAGE, 2) == 0
    w.ok()


def test_612_short_gup_installs_entries_but_maps_nothing(w):
    # GUP stops at the hole after 3 pages: the 3 pages become exclusive, but
    # only a complete window is entered in the mirror
    w.map(A, 3)
    assert w.exclusive(A, 5) == -EBUSY
    assert all(w.is_exclusive(A + i * PAGE) for i in range(3))
    assert w.check(A, 5) == 0
    w.ok()


def test_612_windows_of_64_pages(w):
    # a failure in the second window leaves the first one mapped
    w.map(A, 64 + 2)
    assert w.p.mprotect(A + 65 * PAGE, PAGE, PROT_READ) == 0
    assert w.exclusive(A, 66) == -EBUSY
    assert w.check(A, 64) == -EPERM
    assert w.check(A + 64 * PAGE, 2) == 0
    assert w.is_exclusive(A + 63 * PAGE) and not w.is_exclusive(A + 65 * PAGE)
    w.ok()


def test_pin_keeps_its_own_path(wpin):
    wpin.map(A, 2)
    assert wpin.exclusive(A, 2) == 0
    swp = wpin.k.swp
    e = wpin.entry(A)
    assert swp.swp_type(e) == swp.SWP_DEVICE_EXCLUSIVE == 30
    assert folio_mapcount(page_folio(wpin.k.softleaf_to_page(e))) == 1
    wpin.ok()


def test_612_mprotect_makes_the_entry_read_and_the_restore_read_only(w):
    # mm/mprotect.c change_pte_range (6.12): a writable exclusive entry becomes
    # a readable one; restore_exclusive_pte then maps the page clean, read-only
    w.map(A, 1)
    assert w.exclusive(A, 1) == 0
    assert w.p.mprotect(A, PAGE, PROT_READ) == 0
    swp = w.k.swp
    assert swp.swp_type(w.entry(A)) == swp.SWP_DEVICE_EXCLUSIVE_READ == 30
    assert w.p.mprotect(A, PAGE, RW) == 0
    assert swp.swp_type(w.entry(A)) == 30
    assert w.p.load(A, 4) == (A % 997).to_bytes(4, "little")
    pte = entry_at(w.p, A)[1]
    assert pte_present(pte) and not pte & _PAGE_RW and not pte & _PAGE_DIRTY
    w.p.store(A, b"x")  # write fault: reuse
    assert entry_at(w.p, A)[1] & _PAGE_RW
    w.ok()


def test_612_with_series_b_uses_the_combined_layout():
    # found by `hmmsim fuzz --kernel 6.12` with series (b): the layout lacked
    # the 6.12 exclusive constructors
    w = World("6.12", "a", "b")
    w.map(A, 2)
    assert w.exclusive(A, 2) == 0
    swp = w.k.swp
    assert swp.swp_type(w.entry(A)) == swp.SWP_DEVICE_EXCLUSIVE_WRITE == 26
    w.p.store(A, b"cpu")
    assert not w.is_exclusive(A) and w.is_exclusive(A + PAGE)
    w.ok()

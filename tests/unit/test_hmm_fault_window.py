"""hmm_vma_fault faults the rest of the walk's range, not one page (issue 13.5).

mm/hmm.c hmm_vma_walk_pmd hands the PMD walk's end to hmm_vma_handle_pte,
and hmm_vma_fault calls handle_mm_fault for every page from the first one
that needs a fault up to that end. Pages that needed nothing are faulted too,
including the caller's own device-private pages: their fault is a
migrate_to_ram, so they come back to system RAM before the rewalk.
Both the per-entry walk and the bulk PTE fast path are checked.
"""

from __future__ import annotations

import numpy as np
import pytest

from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_READ,
    HMM_DMIRROR_WRITE,
    hmm_dmirror_cmd,
)
from hmmsim.errno import EBUSY
from hmmsim.include.hmm import hmm_range
from hmmsim.include.mman import (
    MADV_DONTNEED,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    O_RDWR,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.kconfig import PAGE_SIZE
from hmmsim.mm.hmm import hmm_range_fault
from hmmsim.mm.memremap import is_device_private_page
from hmmsim.mm.mmu_notifier import (
    mmu_interval_notifier,
    mmu_interval_notifier_insert,
    mmu_interval_notifier_remove,
    mmu_interval_read_begin,
    mmu_interval_set_seq,
)
from hmmsim.selftests.hmm_tests import make_kernel, selftest_config
from hmmsim.testing.invariants import check_invariants
from hmmsim.userspace import entry_at

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


@pytest.fixture(params=[False, True], ids=["per-entry", "fastpath"])
def kp(request):
    k = make_kernel(selftest_config())
    k.fastpath = request.param
    p = k.spawn()
    yield k, p
    assert not k.warnings


def _migrate(p, fd, addr, npages):
    mirror = np.zeros(npages * 1024, dtype=np.int32)
    cmd = hmm_dmirror_cmd(addr=addr, ptr=mirror, npages=npages)
    assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == 0
    assert cmd.cpages == npages


def _is_device_entry(k, p, addr) -> bool:
    pte = entry_at(p, addr)[1]
    return not pte & 1 and k.swp.softleaf_is_device_private(k.swp.softleaf_from_pte(pte))


def test_read_brings_back_the_callers_own_device_page(kp):
    """Page 0 untouched, page 1 on dev0: READ of 0..1 faults both, once."""
    k, p = kp
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    a = p.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    p.store_array(a + PAGE_SIZE, np.arange(1024, dtype=np.int32))
    _migrate(p, fd, a + PAGE_SIZE, 1)
    assert _is_device_entry(k, p, a + PAGE_SIZE)
    buf = np.full(2048, -1, dtype=np.int32)
    cmd = hmm_dmirror_cmd(addr=a, ptr=buf, npages=2)
    assert p.ioctl(fd, HMM_DMIRROR_READ, cmd) == 0
    assert (cmd.cpages, cmd.faults) == (2, 1)
    assert (buf[:1024] == 0).all()
    assert (buf[1024:] == np.arange(1024)).all()
    # the fault of page 0 ran on to page 1: migrate_to_ram put it back in RAM
    assert entry_at(p, a + PAGE_SIZE)[1] & 1
    p.close(fd)
    check_invariants(k)


@pytest.mark.parametrize("fork_first", [False, True], ids=["migrate-fork", "fork-migrate"])
def test_write_over_a_fork_cow_device_entry(kp, fork_first):
    """After fork both pages are read-only in the parent: page 0 a COW PTE,
    page 1 a read-only device-private entry of dev0. The write fault of page 0
    runs on to page 1 (migrate_to_ram, then a COW write fault on the rewalk),
    so WRITE succeeds instead of dmirror_do_fault's WARN and -EFAULT."""
    k, p = kp
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    a = p.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    p.store_array(a, np.arange(2048, dtype=np.int32))
    if fork_first:
        child = p.child(p.fork())
        _migrate(p, fd, a + PAGE_SIZE, 1)
    else:
        _migrate(p, fd, a + PAGE_SIZE, 1)
        child = p.child(p.fork())
    assert _is_device_entry(k, p, a + PAGE_SIZE)
    assert not k.swp.softleaf_is_device_private_write(
        k.swp.softleaf_from_pte(entry_at(p, a + PAGE_SIZE)[1])
    )
    data = np.arange(5000, 5000 + 2048, dtype=np.int32)
    cmd = hmm_dmirror_cmd(addr=a, ptr=data, npages=2)
    assert p.ioctl(fd, HMM_DMIRROR_WRITE, cmd) == 0
    assert (cmd.cpages, cmd.faults) == (2, 1)
    assert (p.load_array(a, 2048) == data).all()
    assert (child.load_array(a, 2048) == np.arange(2048)).all()  # the child keeps its copy
    p.close(fd)
    check_invariants(k)


class _Sub:
    def invalidate(self, mni, r, cur_seq):
        mmu_interval_set_seq(mni, cur_seq)
        return True


def _range_fault(k, p, start, npages, default_flags, owner):
    mni = mmu_interval_notifier()
    mmu_interval_notifier_insert(mni, p.mm, start, npages * PAGE_SIZE, _Sub())
    try:
        for _ in range(8):
            pfns = np.zeros(npages, dtype=np.uint64)
            r = hmm_range(
                notifier=mni,
                start=start,
                end=start + npages * PAGE_SIZE,
                hmm_pfns=pfns,
                default_flags=default_flags,
                pfn_flags_mask=0,
                dev_private_owner=owner,
            )
            r.notifier_seq = mmu_interval_read_begin(mni)
            p.mm.mmap_lock.down_read()
            try:
                ret = hmm_range_fault(r)
            finally:
                p.mm.mmap_lock.up_read()
            if ret != -EBUSY:
                return ret, pfns
        raise AssertionError("hmm_range_fault kept returning -EBUSY")
    finally:
        mmu_interval_notifier_remove(mni)


def test_one_fault_covers_the_rest_of_the_pmd_walk(kp):
    """16 pages in one PTE table: 0..7 present, 8 none, 9..15 owned by the
    caller's device. The fault of page 8 faults 8..15: one rewalk in all,
    and the device pages are back in RAM (a per-page fault would leave them
    on the device, reported VALID, and need no second rewalk for them)."""
    k, p = kp
    L = k.hmm
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    a = p.mmap(0, 16 * PAGE_SIZE, RW, ANON)
    p.store_array(a, np.arange(16 * 1024, dtype=np.int32))
    _migrate(p, fd, a + 9 * PAGE_SIZE, 7)
    p.madvise(a + 8 * PAGE_SIZE, PAGE_SIZE, MADV_DONTNEED)
    assert entry_at(p, a + 8 * PAGE_SIZE)[1] == 0
    owner = _owner_of(k, p, a + 9 * PAGE_SIZE)
    before = k.stats["hmm_range_fault_rewalks"]
    ret, out = _range_fault(k, p, a, 16, L.HMM_PFN_REQ_FAULT, owner)
    assert ret == 0
    assert k.stats["hmm_range_fault_rewalks"] - before == 1
    for i in range(16):
        assert out[i] & L.HMM_PFN_VALID
        page = k.mem.pfn_to_page(L.hmm_pfn_to_pfn(int(out[i])))
        assert not is_device_private_page(page)
        assert entry_at(p, a + i * PAGE_SIZE)[1] & 1
    got = p.load_array(a, 16 * 1024)
    assert (got[: 8 * 1024] == np.arange(8 * 1024)).all()
    assert (got[8 * 1024 : 9 * 1024] == 0).all()
    assert (got[9 * 1024 :] == np.arange(9 * 1024, 16 * 1024)).all()
    p.close(fd)
    check_invariants(k)


def _owner_of(k, p, addr):
    from hmmsim.mm.memremap import page_pgmap

    page = k.softleaf_to_page(k.swp.softleaf_from_pte(entry_at(p, addr)[1]))
    return page_pgmap(page).owner

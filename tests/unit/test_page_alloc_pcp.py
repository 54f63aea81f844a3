"""Per-CPU page lists (issue 13): the order in which freed pages come back.

mm/page_alloc.c @ 0eaed89c18ae: free_frozen_page_commit puts a freed page at
the head of its pcp list and __rmqueue_pcplist takes the head, so the last
page freed is the first reused; an empty list is refilled by rmqueue_bulk
with nr_pcp_alloc() pages from the buddy in address order; a list that
reaches pcp->high is drained by free_pcppages_bulk, oldest pages first.
"""

from __future__ import annotations

import numpy as np
import pytest

from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_READ,
    hmm_dmirror_cmd,
)
from hmmsim.include.mm_types import PGTY_buddy, folio_put
from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, O_RDWR, PROT_READ, PROT_WRITE
from hmmsim.kconfig import PAGE_SIZE
from hmmsim.kernel import Kernel
from hmmsim.mm.page_alloc import (
    PCP_BATCH_SCALE_MAX,
    RESERVED_PFNS,
    pcp_defaults,
    zone_batchsize,
    zone_watermarks,
)
from hmmsim.testing.invariants import _Checker, check_invariants


def _kernel(mib: int = 256) -> Kernel:
    return Kernel(ram_bytes=mib << 20, hugetlb_pages=0)


def _buddy_pages(k: Kernel) -> int:
    return k.mem.nr_free - k.mem.pcp.count


def _check_allocator(k: Kernel) -> None:
    """The invariant checker's allocator part (the tests hold pages that no
    mapping accounts for, which the whole checker reports as leaks)."""
    c = _Checker(k)
    c.check_buddy()
    assert not c.problems, c.problems


# --- boot-time sizes --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mib", "batch", "mfk", "low", "high_min", "high_max"),
    [
        # managed pages = RAM pages - the 512 reserved ones
        (32, 1, 1480, 462, 462, 960),
        (256, 15, 12852, 4016, 4016, 8128),
        (1024, 63, 22528, 7040, 7040, 32704),
        (4096, 63, 22528, 7040, 7040, 131008),
    ],
)
def test_pcp_sizes_are_the_kernels_for_the_modelled_ram(mib, batch, mfk, low, high_min, high_max):
    """zone_batchsize, min_free_kbytes (raised by khugepaged with THP on),
    the low watermark and zone_highsize, worked by hand from the pinned
    sources for one zone and one CPU."""
    managed = (mib << 20) // PAGE_SIZE - RESERVED_PFNS
    assert zone_batchsize(managed) == batch
    assert zone_watermarks(managed)[0] == mfk
    assert zone_watermarks(managed)[2] == low
    assert pcp_defaults(managed) == (batch, high_min, high_max)
    k = Kernel(ram_bytes=mib << 20, hugetlb_pages=0)
    pcp = k.mem.pcp
    assert (pcp.batch, pcp.high_min, pcp.high_max) == (batch, high_min, high_max)


def test_without_thp_min_free_kbytes_is_four_sqrt_lowmem():
    managed = (1 << 30) // PAGE_SIZE - RESERVED_PFNS
    mfk, wmin, low, high = zone_watermarks(managed, thp=False)
    assert mfk == 4091  # int_sqrt(261632 * 4 * 16)
    assert (wmin, low, high) == (1022, 1022 + 261, 1022 + 2 * 261)  # step: managed * 10 / 10000


# --- LIFO reuse -------------------------------------------------------------------------
def test_last_freed_is_first_reused():
    k = _kernel()
    a, b = k.mem.alloc_pages(0), k.mem.alloc_pages(0)
    pa, pb = a.pfn, b.pfn
    folio_put(a)
    folio_put(b)
    assert k.mem.alloc_pages(0).pfn == pb
    assert k.mem.alloc_pages(0).pfn == pa
    _check_allocator(k)


def test_freed_page_is_reused_before_lower_free_pages():
    """The buddy would hand out its lowest free page; the pcp list's head
    comes first."""
    k = _kernel()
    pages = [k.mem.alloc_pages(0) for _ in range(40)]
    folio_put(pages[10])
    k.mem.drain_all_pages()  # pages[10] is the buddy's lowest free page now
    assert min(min(s) for s in k.mem.free_area if s) == pages[10].pfn
    folio_put(pages[30])  # onto the empty pcp list
    assert k.mem.alloc_pages(0).pfn == pages[30].pfn


def test_high_order_blocks_have_their_own_lists():
    k = _kernel()
    o2 = k.mem.alloc_pages(2)
    o0 = k.mem.alloc_pages(0)
    pfn2, pfn0 = o2.pfn, o0.pfn
    folio_put(o2)
    folio_put(o0)
    assert k.mem.alloc_pages(2).pfn == pfn2
    assert k.mem.alloc_pages(0).pfn == pfn0
    _check_allocator(k)


# --- refill from the buddy --------------------------------------------------------------
def test_refill_takes_batch_pages_in_address_order_and_grows():
    """nr_pcp_alloc: the first refill takes batch pages; each refill without
    a free in between doubles (alloc_factor), up to batch << 5; the pages come
    off the list in address order (rmqueue_bulk adds them at the tail)."""
    k = _kernel(256)
    pcp = k.mem.pcp
    assert pcp.batch == 15 and pcp.count == 0
    got = []
    sizes = []
    for _ in range(6):
        before = _buddy_pages(k)
        first = k.mem.alloc_pages(0).pfn
        taken = before - _buddy_pages(k)
        sizes.append(taken)
        run = [first] + [k.mem.alloc_pages(0).pfn for _ in range(taken - 1)]
        assert pcp.count == 0
        got += run
        assert run == list(range(run[0], run[0] + taken))  # address order
    assert sizes == [15, 30, 60, 120, 240, 480]
    assert pcp.alloc_factor == PCP_BATCH_SCALE_MAX
    assert got == sorted(got)
    # a free halves alloc_factor: the next refill is smaller
    folio_put(k.mem.pfn_to_page(got[0]))
    k.mem.alloc_pages(0)  # takes the freed page back
    before = _buddy_pages(k)
    k.mem.alloc_pages(0)
    assert before - _buddy_pages(k) == 15 << (PCP_BATCH_SCALE_MAX >> 1)
    _check_allocator(k)


def test_a_thp_allocation_refills_two():
    """nr_pcp_alloc for the PMD order: max(batch >> 9, 2) blocks; the second
    THP waits on the pcp list."""
    k = _kernel(256)
    before = _buddy_pages(k)
    t = k.mem.alloc_pages(9)
    assert before - _buddy_pages(k) == 2 * 512
    assert k.mem.pcp.count == 512
    u = k.mem.alloc_pages(9)
    assert u.pfn == t.pfn + 512 and k.mem.pcp.count == 0
    _check_allocator(k)


# --- drain at high ----------------------------------------------------------------------
def test_drain_at_high_frees_the_oldest_to_the_buddy():
    """With high_min == high_max (auto-tuning off, as with
    vm.percpu_pagelist_high_fraction) a free that brings count to high
    drains clamp(free_count, batch, high - batch) pages, oldest first,
    leaving the newest on the list."""
    k = _kernel(256)
    mem, pcp = k.mem, k.mem.pcp
    pcp.high_min = pcp.high_max = 100
    pages = [mem.alloc_pages(0) for _ in range(200)]
    mem.drain_all_pages()
    pfns = [p.pfn for p in pages[:100]]
    for p in pages[:99]:
        folio_put(p)
    assert pcp.count == 99 and pcp.free_count == 99  # nothing drained yet
    folio_put(pages[99])
    assert pcp.count == 15  # 100 - clamp(100, 15, 85)
    assert pcp.lists[0] == pfns[85:]
    ram = mem.ram.pages
    assert all(ram.flags[pfn] & PGTY_buddy for pfn in pfns[:85])
    assert not any(ram.flags[pfn] & PGTY_buddy for pfn in pfns[85:])
    _check_allocator(k)


def test_drain_with_auto_tuned_high():
    """Default tuning on a 32 MiB zone (batch 1, so free_count stops at
    batch << 5 = 32): the free that brings count to the clamped pcp->high
    drains clamp(32, 1, high - 1) = 32 pages, the oldest; high stays
    (free_count + batch = 33 is below it)."""
    k = _kernel(32)
    mem, pcp = k.mem, k.mem.pcp
    pages = [mem.alloc_pages(0) for _ in range(1000)]
    mem.drain_all_pages()
    high = min(max(pcp.high, pcp.high_min), pcp.high_max)
    assert pcp.batch == 1 and pcp.high_min <= high < 1000
    order = [p.pfn for p in pages]
    for n, p in enumerate(pages, 1):
        folio_put(p)
        if pcp.count != n:
            break
    assert n == high
    assert pcp.free_count == 32 and pcp.count == high - 32
    assert pcp.lists[0] == order[32:high]  # the newest stay
    assert pcp.high == high
    _check_allocator(k)


def test_exhaustion_drains_the_pcp_lists_before_failing():
    k = _kernel(32)
    got = []
    while (p := k.mem.alloc_pages(0)) is not None:
        got.append(p)
    assert len(got) == k.mem.managed_pages
    assert k.mem.nr_free == 0 and k.mem.pcp.count == 0
    for p in got:
        folio_put(p)
    check_invariants(k)
    k.mem.drain_all_pages()
    assert k.mem.nr_free == k.mem.managed_pages == _buddy_pages(k)
    check_invariants(k)


# --- visible through a device mirror ----------------------------------------------------
def test_stale_dmirror_entry_sees_the_page_freed_last_reused_first():
    """test_hmm's mirrors ignore MIGRATE invalidations of their own device
    (dmirror_interval_invalidate), so a second mirror of the same device on
    the same mm keeps its entry for a page the first one migrates away: the
    source page is freed by migrate_vma_finalize and its entry is stale. The
    freed page goes to the head of the pcp list, so the next CPU fault gets
    exactly that page, and a READ through the stale entry returns the new
    owner's data (with lowest-PFN reuse it would show the old bytes)."""
    from hmmsim.selftests.hmm_tests import make_kernel, selftest_config

    k = make_kernel(selftest_config())
    p = k.spawn()
    fd1 = p.open("/dev/hmm_dmirror0", O_RDWR)
    fd2 = p.open("/dev/hmm_dmirror0", O_RDWR)  # another mirror, the same device
    n = 40
    b = p.mmap(0, (n + 1) * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    for i in range(n):
        p.store(b + i * PAGE_SIZE, bytes([0x10 + i]) * PAGE_SIZE)
    x = b + (n - 1) * PAGE_SIZE  # mirrored by fd2, then migrated by fd1
    z = b + n * PAGE_SIZE  # untouched: its PTE table exists already

    def cmd(fd, req, addr):
        buf = np.zeros(PAGE_SIZE, dtype=np.uint8)
        c = hmm_dmirror_cmd(addr=addr, ptr=buf, npages=1)
        assert p.ioctl(fd, req, c) == 0
        return c, buf

    assert cmd(fd2, HMM_DMIRROR_READ, x)[1][0] == 0x10 + n - 1
    # lower pages freed first (munmap's end is not x: dmirror_do_update's
    # inclusive end would drop x's entry too)
    p.munmap(b, (n - 2) * PAGE_SIZE)
    c, _ = cmd(fd1, HMM_DMIRROR_MIGRATE_TO_DEV, x)
    assert c.cpages == 1
    p.store(z, b"\xee" * PAGE_SIZE)  # do_anonymous_page: the pcp list's head
    _, buf = cmd(fd2, HMM_DMIRROR_READ, x)  # through the stale entry
    assert (buf == 0xEE).all()

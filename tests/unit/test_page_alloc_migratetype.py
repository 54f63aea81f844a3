"""Per-CPU page lists per migratetype (issue 13).

mm/page_alloc.c @ 0eaed89c18ae keeps one pcp list per (migratetype, order)
(order_to_pindex), and an allocation takes from the list of its gfp's
migratetype (gfp_migratetype): user pages are GFP_HIGHUSER_MOVABLE, page
tables (GFP_PGTABLE_USER), the dmirror device's backing pages (GFP_HIGHUSER)
and vmalloc'd pages (GFP_KERNEL) unmovable. So a freed page table is never
the next user data page, and the pages of a dmirror bounce buffer come and
go through the unmovable list.
"""

from __future__ import annotations

import numpy as np

from hmmsim.drivers.test_hmm_uapi import HMM_DMIRROR_READ, hmm_dmirror_cmd
from hmmsim.include.mm_types import folio_put
from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, O_RDWR, PROT_READ, PROT_WRITE
from hmmsim.kconfig import HPAGE_PMD_ORDER, PAGE_SIZE
from hmmsim.kernel import Kernel
from hmmsim.mm.page_alloc import (
    GFP_HIGHUSER,
    GFP_HIGHUSER_MOVABLE,
    GFP_KERNEL,
    GFP_PGTABLE_USER,
    GFP_TRANSHUGE,
    MIGRATE_MOVABLE,
    MIGRATE_RECLAIMABLE,
    MIGRATE_UNMOVABLE,
    NR_PCP_LISTS,
    gfp_migratetype,
    order_to_pindex,
    pindex_to_order,
)
from hmmsim.mm.pgtable import alloc_table, free_table
from hmmsim.mm.vmalloc import vfree_pages, vmalloc_pages

UNMOVABLE0 = order_to_pindex(0, MIGRATE_UNMOVABLE)
MOVABLE0 = order_to_pindex(0, MIGRATE_MOVABLE)


def _kernel(mib: int = 256) -> Kernel:
    return Kernel(ram_bytes=mib << 20, hugetlb_pages=0)


def test_pindex_layout_is_the_kernels():
    assert NR_PCP_LISTS == 14
    assert [order_to_pindex(0, mt) for mt in range(3)] == [0, 1, 2]
    assert order_to_pindex(3, MIGRATE_RECLAIMABLE) == 11
    assert order_to_pindex(HPAGE_PMD_ORDER, MIGRATE_UNMOVABLE) == 12
    assert order_to_pindex(HPAGE_PMD_ORDER, MIGRATE_RECLAIMABLE) == 12
    assert order_to_pindex(HPAGE_PMD_ORDER, MIGRATE_MOVABLE) == 13
    assert [pindex_to_order(i) for i in range(NR_PCP_LISTS)] == [
        0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, HPAGE_PMD_ORDER, HPAGE_PMD_ORDER
    ]  # fmt: skip


def test_gfp_migratetype():
    assert gfp_migratetype(GFP_HIGHUSER_MOVABLE) == MIGRATE_MOVABLE
    assert gfp_migratetype(GFP_TRANSHUGE) == MIGRATE_MOVABLE
    assert gfp_migratetype(GFP_HIGHUSER) == MIGRATE_UNMOVABLE
    assert gfp_migratetype(GFP_KERNEL) == MIGRATE_UNMOVABLE
    assert gfp_migratetype(GFP_PGTABLE_USER) == MIGRATE_UNMOVABLE
    assert gfp_migratetype(GFP_KERNEL | 0x10) == MIGRATE_RECLAIMABLE  # __GFP_RECLAIMABLE


def test_lifo_within_each_list():
    k = _kernel()
    mem = k.mem
    a = mem.alloc_pages(0, GFP_KERNEL)
    b = mem.alloc_pages(0, GFP_HIGHUSER_MOVABLE)
    c = mem.alloc_pages(0, GFP_KERNEL)
    d = mem.alloc_pages(0, GFP_HIGHUSER_MOVABLE)
    for page in (a, b, c, d):
        folio_put(page)
    assert mem.pcp.lists[UNMOVABLE0][-2:] == [a.pfn, c.pfn]
    assert mem.pcp.lists[MOVABLE0][-2:] == [b.pfn, d.pfn]
    assert mem.alloc_pages(0, GFP_HIGHUSER_MOVABLE).pfn == d.pfn
    assert mem.alloc_pages(0, GFP_KERNEL).pfn == c.pfn
    assert mem.alloc_pages(0, GFP_HIGHUSER_MOVABLE).pfn == b.pfn
    assert mem.alloc_pages(0, GFP_KERNEL).pfn == a.pfn


def test_thp_lists_movable_or_not():
    k = _kernel()
    mem = k.mem
    t = mem.alloc_pages(HPAGE_PMD_ORDER, GFP_TRANSHUGE)
    u = mem.alloc_pages(HPAGE_PMD_ORDER, GFP_KERNEL)
    folio_put(t)
    folio_put(u)
    assert t.pfn in mem.pcp.lists[order_to_pindex(HPAGE_PMD_ORDER, MIGRATE_MOVABLE)]
    assert u.pfn in mem.pcp.lists[order_to_pindex(HPAGE_PMD_ORDER, MIGRATE_UNMOVABLE)]
    assert mem.alloc_pages(HPAGE_PMD_ORDER, GFP_TRANSHUGE).pfn == t.pfn


def test_bulk_forms_take_the_gfp_list():
    a, b = _kernel(), _kernel()
    for k in (a, b):
        held = [k.mem.alloc_pages(0, g) for g in (GFP_KERNEL, GFP_HIGHUSER_MOVABLE) * 20]
        for page in held:
            folio_put(page)
    pa = a.mem.alloc_pages_order0_bulk(30, GFP_HIGHUSER_MOVABLE)
    pb = [b.mem.alloc_pages(0, GFP_HIGHUSER_MOVABLE).pfn for _ in range(30)]
    assert pa.tolist() == pb
    assert a.mem.pcp.state() == b.mem.pcp.state()
    a.mem.ram.pages._refcount[pa] = 0
    a.mem.free_folios_order0(pa)
    for pfn in pb:
        b.mem.ram.pages._refcount[pfn] = 0
        b.mem.free_frozen_pages(pfn, 0)
    assert a.mem.pcp.state() == b.mem.pcp.state()


def test_alloc_pages_bulk_is_rmqueue_pcplist_without_free_count_shift():
    a, b = _kernel(), _kernel()
    for k in (a, b):
        for page in [k.mem.alloc_pages(0, GFP_KERNEL) for _ in range(10)]:
            folio_put(page)
    got = a.mem.alloc_pages_bulk(50, GFP_KERNEL)
    fc = b.mem.pcp.free_count
    assert got == [b.mem.alloc_pages(0, GFP_KERNEL).pfn for _ in range(50)]
    b.mem.pcp.free_count = fc  # __alloc_pages_bulk does not shift it
    assert a.mem.pcp.state() == b.mem.pcp.state()


def test_freed_page_table_is_not_the_next_anon_page():
    """The last page freed is a page table (unmovable); the next anon fault
    (movable) takes the movable list's head, and the next table gets the
    freed one back."""
    from hmmsim.selftests.hmm_tests import make_kernel, selftest_config

    k = make_kernel(selftest_config())
    p = k.spawn()
    b = p.mmap(0, 2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    p.store(b, b"\x01")  # the PTE table exists now
    t = alloc_table(k)
    free_table(k, t)
    assert k.mem.pcp.lists[UNMOVABLE0][-1] == t
    assert p.page_for(b + PAGE_SIZE, True) != t
    assert alloc_table(k) == t


def _read_bounce(npages: int):
    from hmmsim.selftests.hmm_tests import make_kernel, selftest_config

    k = make_kernel(selftest_config())
    p = k.spawn()
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    b = p.mmap(0, npages * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    for i in range(npages):
        p.store(b + i * PAGE_SIZE, bytes([i & 0xFF]) * PAGE_SIZE)
    buf = np.zeros(npages * PAGE_SIZE, dtype=np.uint8)
    p.store(b, b"\x00")  # nothing left to fault during the READ
    return k, p, fd, b, buf


def test_read_bounce_pages_go_through_the_unmovable_list():
    npages = 8
    k, p, fd, b, buf = _read_bounce(npages)
    mem = k.mem
    taken: list[list[int]] = []
    real = mem.alloc_pages_bulk

    def spy(n, gfp=GFP_KERNEL, inject=True):
        got = real(n, gfp, inject)
        taken.append((gfp, got))
        return got

    mem.alloc_pages_bulk = spy
    movable_before = list(mem.pcp.lists[MOVABLE0])
    unmovable_before = list(mem.pcp.lists[UNMOVABLE0])
    cmd = hmm_dmirror_cmd(addr=b, ptr=buf, npages=npages)
    assert p.ioctl(fd, HMM_DMIRROR_READ, cmd) == 0
    assert cmd.cpages == npages
    assert buf[PAGE_SIZE * 3] == 3
    assert len(taken) == 1 and taken[0][0] == GFP_KERNEL
    pfns = taken[0][1]
    assert len(pfns) == npages
    assert pfns == unmovable_before[::-1][:npages]  # the unmovable list's head first
    # vfree gave them back in index order: the last one is the new head
    assert mem.pcp.lists[UNMOVABLE0] == unmovable_before[:-npages] + pfns
    assert mem.pcp.lists[MOVABLE0] == movable_before
    assert mem.alloc_pages(0, GFP_KERNEL).pfn == pfns[-1]


def test_read_bounce_of_a_fresh_kernel_refills_the_unmovable_list():
    """Without a bounce in the page allocator's view the READ leaves the
    lists alone; with it, an empty unmovable list is refilled (rmqueue_bulk)
    and then holds the bounce pages last, in index order."""
    k, p, fd, b, buf = _read_bounce(4)
    mem = k.mem
    lst = mem.pcp.lists[UNMOVABLE0]
    while lst:  # empty the unmovable list
        mem.alloc_pages(0, GFP_KERNEL)
    cmd = hmm_dmirror_cmd(addr=b, ptr=buf, npages=4)
    assert p.ioctl(fd, HMM_DMIRROR_READ, cmd) == 0
    assert len(lst) >= 4
    head = lst[-4:]
    assert head == sorted(head)  # a refill hands out ascending PFNs; freed in index order


def test_vmalloc_larger_than_512_pages_vmallocs_its_pages_array_first():
    k = _kernel()
    mem = k.mem
    vm = vmalloc_pages(k, 1024 * PAGE_SIZE)
    assert len(vm.pfns) == 1024
    assert vm.array is not None and len(vm.array.pfns) == 2 and vm.array.array is None
    assert set(vm.array.pfns).isdisjoint(vm.pfns)
    assert (mem.alloc_mt[vm.pfns] == MIGRATE_UNMOVABLE).all()
    main, arr = list(vm.pfns), list(vm.array.pfns)
    free_before = mem.nr_free
    vfree_pages(k, vm)
    assert mem.nr_free == free_before + 1026
    # the area's pages in index order, then the array's (kvfree after them)
    assert mem.pcp.lists[UNMOVABLE0][-1026:] == main + arr


def test_vmalloc_pages_are_accounted_while_held():
    from hmmsim.selftests.hmm_tests import make_kernel, selftest_config
    from hmmsim.testing.invariants import check_invariants

    k = make_kernel(selftest_config())
    vm = vmalloc_pages(k, 3 * PAGE_SIZE + 1)
    assert len(vm.pfns) == 4 and vm.array is None
    check_invariants(k)  # the area's references are registered, no leak
    vfree_pages(k, vm)
    check_invariants(k)
    assert not k.driver_refs

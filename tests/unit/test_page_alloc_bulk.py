"""The page allocator's bulk forms against the calls they stand for (issue 7).

`PhysMem.alloc_pages_order0_bulk(m)` must hand out the same PFNs in the same
order and leave the same buddy lists and per-cpu lists (pages, counters,
auto-tuned high) as m `alloc_pages(0)` calls, and `free_folios_order0(pfns)`
must leave the same lists and struct pages as `free_folio` of each in turn,
from any fragmented free state, with the pcp lists of every order holding
pages and the pcp sizes of a small (batch 1) and a larger (batch 15) zone.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hmmsim.include.mm_types import PAGE_FIELDS, PG_dirty, folio_put
from hmmsim.kernel import Kernel


def _state(k: Kernel):
    p = k.mem.ram.pages
    return (
        [sorted(s) for s in k.mem.free_area],
        k.mem.nr_free,
        {f: getattr(p, f).copy() for f, _ in PAGE_FIELDS},
        k.mem.pcp.state(),
    )


def _same(a, b) -> bool:
    return (
        a[0] == b[0]
        and a[1] == b[1]
        and all(np.array_equal(a[2][f], b[2][f]) for f in a[2])
        and a[3] == b[3]
    )


RAM = st.sampled_from([32 << 20, 256 << 20])  # pcp batch 1 and batch 15


def _fragmented(ops: list[tuple[int, int]], ram: int = 32 << 20) -> Kernel:
    """A small kernel after a run of allocations (orders 0-3) and frees.

    First 1024 order-0 pages are taken and every third one given back, then
    the pcp lists are drained, so the buddy's order-0 list holds hundreds of
    pages that cannot merge; the ops leave blocks of orders 0-3 on the pcp
    lists.
    """
    k = Kernel(ram_bytes=ram, hugetlb_pages=0)
    first = [k.mem.alloc_pages(0) for _ in range(1024)]
    for page in first[::3]:
        folio_put(page)
    k.mem.drain_all_pages()
    held = []
    for order, free_at in ops:
        page = k.mem.alloc_pages(order)
        if page is not None:
            held.append(page)
        if held and free_at:
            folio_put(held.pop(free_at % len(held)))
    return k


OPS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5)), max_size=60)


def _order0_supply(k: Kernel) -> int:
    """Pages order-0 allocations get without a drain: the order-0 pcp list
    and the buddy."""
    return len(k.mem.pcp.lists[0]) + k.mem.nr_free - k.mem.pcp.count


@settings(max_examples=40, deadline=None)
@given(ops=OPS, m=st.integers(1, 1000), ram=RAM, warm=st.integers(0, 40))
def test_alloc_order0_bulk_is_m_alloc_pages(ops, m, ram, warm):
    a, b = _fragmented(ops, ram), _fragmented(ops, ram)
    for k in (a, b):  # a few single allocations: the list is part-used, alloc_factor > 0
        for _ in range(warm):
            k.mem.alloc_pages(0)
    assert _same(_state(a), _state(b))
    m = min(m, _order0_supply(a))
    bulk = a.mem.alloc_pages_order0_bulk(m)
    one_by_one = [b.mem.alloc_pages(0).pfn for _ in range(m)]
    assert bulk.tolist() == one_by_one
    assert _same(_state(a), _state(b))


def test_alloc_order0_bulk_refuses_more_than_free():
    k = _fragmented([])
    before = _state(k)
    assert k.mem.alloc_pages_order0_bulk(k.mem.nr_free + 1) is None
    assert _same(before, _state(k))


def test_alloc_order0_bulk_declines_where_a_call_would_drain():
    """Pages on the other orders' pcp lists count as free, but reaching them
    takes the drain-and-retry path: the bulk form declines, changing nothing."""
    k = _fragmented([(1, 0), (3, 0), (2, 0)])
    held = [k.mem.alloc_pages(o) for o in (1, 2, 3)]
    for page in held:
        folio_put(page)  # onto the order-1..3 pcp lists
    assert k.mem.pcp.count > len(k.mem.pcp.lists[0])
    m = _order0_supply(k) + 1
    assert m <= k.mem.nr_free
    before = _state(k)
    assert k.mem.alloc_pages_order0_bulk(m) is None
    assert _same(before, _state(k))


@settings(max_examples=40, deadline=None)
@given(ops=OPS, m=st.integers(1, 1000), seed=st.integers(0, 2**16), ram=RAM)
def test_free_order0_bulk_is_free_folio_of_each(ops, m, seed, ram):
    a, b = _fragmented(ops, ram), _fragmented(ops, ram)
    m = min(m, _order0_supply(a))
    pa = a.mem.alloc_pages_order0_bulk(m)
    pb = np.array([b.mem.alloc_pages(0).pfn for _ in range(m)])
    order = np.random.default_rng(seed).permutation(m)
    pa, pb = pa[order], pb[order]
    for k, pfns in ((a, pa), (b, pb)):  # what a user of the pages leaves behind
        p = k.mem.ram.pages
        p.mapping[pfns] = 7
        p.index[pfns] = np.arange(m) + 100
        p.flags[pfns] |= np.uint32(PG_dirty)
        p.zone_device_data[pfns] = 3
    a.mem.ram.pages._refcount[pa] = 0  # the last reference is gone
    a.mem.free_folios_order0(pa)
    for pfn in pb.tolist():
        folio_put(b.mem.pfn_to_page(pfn))
    assert _same(_state(a), _state(b))


def test_alloc_order0_bulk_over_whole_max_order_blocks():
    a, b = _fragmented([(3, 1), (0, 0), (9, 2)]), _fragmented([(3, 1), (0, 0), (9, 2)])
    m = _order0_supply(a) - 5  # split every block, max-order ones included
    assert a.mem.alloc_pages_order0_bulk(m).tolist() == [b.mem.alloc_pages(0).pfn for _ in range(m)]
    assert _same(_state(a), _state(b))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 600))
def test_buddy_allocation_depends_only_on_what_is_free(seed, n):
    """The same pages freed in two different orders, then the pcp lists
    drained: the buddy lists are the same, and the next allocations (of every
    order) get the same PFNs, the first the lowest free block of the
    smallest order that fits (the pcp lists, LIFO, do depend on the order of
    frees: tests/unit/test_page_alloc_pcp.py)."""
    ks = []
    for order_seed in (seed, seed + 1):
        k = Kernel(ram_bytes=32 << 20, hugetlb_pages=0)
        pages = [k.mem.alloc_pages(0) for _ in range(n)]
        keep = pages[::5]
        free = [p for p in pages if p not in keep]
        for i in np.random.default_rng(order_seed).permutation(len(free)).tolist():
            folio_put(free[i])
        k.mem.drain_all_pages()
        ks.append(k)
    a, b = ks
    a.mem.pcp.free_count = b.mem.pcp.free_count = 0  # consecutive frees counted, not their order
    assert _same(_state(a), _state(b))
    fa = a.mem.free_area
    for n, order in enumerate((0, 0, 3, 0, 9, 1, 0)):
        smallest = next(o for o in range(order, len(fa)) if fa[o])
        expect = min(fa[smallest])  # the lowest block of the smallest order that fits
        pa, pb = a.mem.alloc_pages(order), b.mem.alloc_pages(order)
        assert pa.pfn == pb.pfn
        if n == 0:
            assert pa.pfn == expect


@settings(max_examples=15, deadline=None)
@given(
    ram=RAM,
    n=st.integers(1, 6000),
    seed=st.integers(0, 2**16),
    fixed_high=st.sampled_from([None, 40, 200]),
    high_orders=st.booleans(),
)
def test_free_order0_bulk_across_drains(ram, n, seed, fixed_high, high_orders):
    """Enough frees to reach pcp->high again and again: every drain (its
    moment, its size from free_count, the round robin over the lists that
    hold blocks) is the one per-page frees make, with auto-tuned high and
    with high_min == high_max (vm.percpu_pagelist_high_fraction)."""
    ks = []
    for _ in range(2):
        k = Kernel(ram_bytes=ram, hugetlb_pages=0)
        if fixed_high:
            k.mem.pcp.high_min = k.mem.pcp.high_max = fixed_high
        if high_orders:  # blocks of orders 1-3 waiting on their lists
            held = [k.mem.alloc_pages(o) for o in (1, 2, 3, 1)]
            for page in held:
                folio_put(page)
        ks.append(k)
    a, b = ks
    n = min(n, _order0_supply(a))
    pa = a.mem.alloc_pages_order0_bulk(n)
    pb = np.array([b.mem.alloc_pages(0).pfn for _ in range(n)])
    assert np.array_equal(pa, pb)
    order = np.random.default_rng(seed).permutation(n)
    a.mem.ram.pages._refcount[pa] = 0
    a.mem.free_folios_order0(pa[order])
    for pfn in pb[order].tolist():
        folio_put(b.mem.pfn_to_page(pfn))
    assert _same(_state(a), _state(b))


def _vm_area_alloc_pages_chunked(k: Kernel, nr_pages: int) -> list[int]:
    """mm/vmalloc.c vm_area_alloc_pages chunk by chunk: bulk requests of at
    most VMALLOC_BULK_CHUNK pages until one comes back short, then single
    pages (the reference that vmalloc's one-call form stands for)."""
    from hmmsim.mm.page_alloc import GFP_KERNEL
    from hmmsim.mm.vmalloc import VMALLOC_BULK_CHUNK

    out: list[int] = []
    while len(out) < nr_pages:
        req = min(VMALLOC_BULK_CHUNK, nr_pages - len(out))
        got = k.mem.alloc_pages_bulk(req, GFP_KERNEL, inject=False)
        out += got
        if len(got) != req:
            break
    while len(out) < nr_pages:
        page = k.mem.alloc_pages(0, GFP_KERNEL, inject=False)
        if page is None:
            break
        out.append(page.pfn)
    return out


@settings(max_examples=25, deadline=None)
@given(ops=OPS, n=st.sampled_from([2, 99, 100, 101, 201, 350, 1000, 5000]), ram=RAM)
def test_vm_area_alloc_pages_is_its_chunks(ops, n, ram):
    """vmalloc's page allocation (whole chunks as one bulk allocation where
    the pages are there) hands out the PFNs, and leaves the lists, of the
    chunk-by-chunk loop, also where it runs short or ends in a one-page chunk."""
    from hmmsim.mm.vmalloc import vm_area_alloc_pages

    a, b = _fragmented(ops, ram), _fragmented(ops, ram)
    a.mem.alloc_pages_bulk(7)  # the unmovable list part-used
    b.mem.alloc_pages_bulk(7)
    assert vm_area_alloc_pages(a, n) == _vm_area_alloc_pages_chunked(b, n)
    assert _same(_state(a), _state(b))


def test_vfree_drops_only_the_areas_references():
    """vfree_pages drops the area's reference of each page; a page the
    driver also holds keeps that one (and stays allocated)."""
    from hmmsim.mm.vmalloc import vfree_pages, vmalloc_pages

    k = _fragmented([])
    other = k.mem.alloc_pages(0).pfn
    k.driver_refs[other] += 1
    vm = vmalloc_pages(k, 300 * 4096)
    assert all(k.driver_refs[p] == 1 for p in vm.pfns)
    vfree_pages(k, vm)
    assert dict(k.driver_refs) == {other: 1}
    vm = vmalloc_pages(k, 300 * 4096)
    extra = vm.pfns[5]
    k.driver_refs[extra] += 1  # a second holder: the per-page loop's case
    vfree_pages(k, vm)
    assert dict(k.driver_refs) == {other: 1, extra: 1}


def test_vmalloc_uncounted_area_is_the_counted_one_counted_late():
    """An area made with counted=False takes the same pages and leaves the
    same allocator state; vm_count_pages then gives Kernel.driver_refs what
    counted=True gives, and vfree of an uncounted area leaves driver_refs
    as it found them."""
    from hmmsim.mm.vmalloc import vfree_pages, vm_count_pages, vmalloc_pages

    a, b = _fragmented([(1, 0), (0, 1)]), _fragmented([(1, 0), (0, 1)])
    size = 600 * 4096  # a pages array of more than one page: a nested area
    va = vmalloc_pages(a, size)
    vb = vmalloc_pages(b, size, counted=False)
    assert va.pfns == vb.pfns and va.array.pfns == vb.array.pfns
    assert _same(_state(a), _state(b))
    assert not b.driver_refs
    vm_count_pages(b, vb)
    assert a.driver_refs == b.driver_refs
    vfree_pages(a, va)
    vfree_pages(b, vb)
    assert not a.driver_refs and not b.driver_refs
    assert _same(_state(a), _state(b))
    vb = vmalloc_pages(b, size, counted=False)
    vfree_pages(b, vb)
    vfree_pages(a, vmalloc_pages(a, size))
    assert not b.driver_refs
    assert _same(_state(a), _state(b))

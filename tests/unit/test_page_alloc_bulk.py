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


def _whole_state(k: Kernel):
    """_state plus the per-page buddy orders (checked against the lists) and
    the allocation migratetypes."""
    mem = k.mem
    expect = np.full(len(mem.buddy_orders), -1, dtype=np.int8)
    for o, fa in enumerate(mem.free_area):
        expect[sorted(fa)] = o
    assert np.array_equal(mem.buddy_orders, expect), "buddy_orders disagrees with the lists"
    return (*_state(k), mem.alloc_mt.copy())


def _same_whole(a, b) -> bool:
    return _same(a, b) and np.array_equal(a[4], b[4])


STEPS = st.lists(
    st.tuples(
        st.sampled_from(["movable", "unmovable", "free", "free", "block"]),
        st.integers(1, 1500),
        st.integers(0, 2**16),
    ),
    min_size=1,
    max_size=10,
)


@settings(max_examples=30, deadline=None)
@given(steps=STEPS, ram=RAM, fragment=st.booleans())
def test_bulk_paths_are_the_per_page_paths_step_by_step(steps, ram, fragment):
    """Random runs of bulk allocations (both pcp migratetypes), bulk frees
    of random subsets in random order, and single blocks of orders 1-3 and
    9 allocated and freed in between: after every step the bulk kernel and
    the per-page kernel (alloc_pages / folio_put of each page) hand out the
    same PFNs and hold the same free lists, pcp lists, counters and struct
    pages (mm/page_alloc.c rmqueue_bulk, free_pcppages_bulk,
    __free_one_page, expand)."""
    from hmmsim.mm.page_alloc import (
        GFP_HIGHUSER_MOVABLE,
        GFP_KERNEL,
        gfp_migratetype,
        order_to_pindex,
    )

    a, b = (
        _fragmented([(1, 0), (0, 2)] * 20, ram)
        if fragment
        else Kernel(ram_bytes=ram, hugetlb_pages=0)
        for _ in range(2)
    )
    held: list[int] = []
    blocks_a, blocks_b = [], []
    for kind, n, seed in steps:
        rng = np.random.default_rng(seed)
        if kind in ("movable", "unmovable"):
            gfp = GFP_HIGHUSER_MOVABLE if kind == "movable" else GFP_KERNEL
            lst = a.mem.pcp.lists[order_to_pindex(0, gfp_migratetype(gfp))]
            n = min(n, len(lst) + a.mem.nr_free - a.mem.pcp.count)
            got = a.mem.alloc_pages_order0_bulk(n, gfp)
            one_by_one = [b.mem.alloc_pages(0, gfp).pfn for _ in range(n)]
            assert got.tolist() == one_by_one
            held += one_by_one
        elif kind == "free" and held:
            idx = rng.permutation(len(held))[: min(n, len(held))]
            pfns = np.array(held, dtype=np.int64)[idx]
            gone = set(pfns.tolist())
            held = [p for p in held if p not in gone]
            a.mem.ram.pages._refcount[pfns] = 0
            a.mem.free_folios_order0(pfns)
            for pfn in pfns.tolist():
                folio_put(b.mem.pfn_to_page(pfn))
        elif kind == "block":
            order = (1, 2, 3, 9)[seed % 4]
            if blocks_a and seed % 3 == 0:
                folio_put(blocks_a.pop())
                folio_put(blocks_b.pop())
            else:
                pa, pb = a.mem.alloc_pages(order), b.mem.alloc_pages(order)
                assert (pa is None) == (pb is None)
                if pa is not None:
                    assert pa.pfn == pb.pfn
                    blocks_a.append(pa)
                    blocks_b.append(pb)
        assert _same_whole(_whole_state(a), _whole_state(b))


def _two(ops, ram):
    return _fragmented(ops, ram), _fragmented(ops, ram)


@settings(max_examples=30, deadline=None)
@given(ops=OPS, ram=RAM, m=st.integers(1, 3000), pre=st.integers(0, 700))
def test_buddy_take_order0_is_rmqueue_smallest_calls(ops, ram, m, pre):
    """The refill's take of m pages against m __rmqueue_smallest(0) calls
    (mm/page_alloc.c, with expand), also stopping inside a split block."""
    a, b = _two(ops, ram)
    for k in (a, b):  # pages allocated and freed: blocks of many orders
        got = [k.mem.alloc_pages(0) for _ in range(pre)]
        for page in got[::2]:
            folio_put(page)
        k.mem.drain_all_pages()
    m = min(m, a.mem.nr_free - a.mem.pcp.count)
    took = a.mem._buddy_take_order0(m)
    calls = [b.mem._rmqueue_smallest(0) for _ in range(m)]
    assert took == calls
    assert _same_whole(_whole_state(a), _whole_state(b))


@settings(max_examples=30, deadline=None)
@given(ops=OPS, ram=RAM, n=st.integers(1, 3000), seed=st.integers(0, 2**16))
def test_merge_many_is_merge_of_each(ops, ram, n, seed):
    """The drain's merge of many order-0 pages at once against
    __free_one_page of each in turn (_merge(pfn, 0)), any order of frees."""
    a, b = _two(ops, ram)
    n = min(n, a.mem.nr_free - a.mem.pcp.count)
    pfns = np.array(a.mem._buddy_take_order0(n), dtype=np.int64)
    assert b.mem._buddy_take_order0(n) == pfns.tolist()
    pfns = pfns[np.random.default_rng(seed).permutation(n)]
    a.mem._merge_many(pfns)
    for pfn in pfns.tolist():
        b.mem._merge(pfn, 0)
    assert _same_whole(_whole_state(a), _whole_state(b))


@settings(max_examples=30, deadline=None)
@given(
    ram=RAM,
    lens=st.lists(st.integers(0, 300), min_size=14, max_size=14),
    pindex=st.integers(0, 13),
    to_free=st.integers(1, 1200),
)
def test_drain_is_free_pcppages_bulk_calls(ram, lens, pindex, to_free):
    """free_frozen_page_commit's drain against its loop of batch-sized
    free_pcppages_bulk calls starting at the freed page's list, with pages
    on any of the 14 lists."""
    from hmmsim.mm.page_alloc import NR_PCP_LISTS, pindex_to_order

    a, b = Kernel(ram_bytes=ram, hugetlb_pages=0), Kernel(ram_bytes=ram, hugetlb_pages=0)
    for k in (a, b):  # fake blocks (state only): distinct aligned PFNs per list
        base = 1 << 12
        for i in range(NR_PCP_LISTS):
            order = pindex_to_order(i)
            n = lens[i] if order < 9 else lens[i] % 3
            k.mem.pcp.lists[i] = [base + (j << order) for j in range(n)]
            base += (n + 1) << order
            k.mem.pcp.count += n << order
    order = pindex_to_order(pindex)
    sink_a: list = []
    a.mem._drain_pcp(to_free, pindex, order, sink_a)
    sink_b: list = []
    left = to_free
    while left > 0 and b.mem.pcp.count > 0:
        chunk = min(left, b.mem.pcp.batch)
        b.mem._free_pcppages_bulk(chunk, pindex, sink_b)
        left -= chunk

    def flat(sink):
        return [(o, pfn) for o, pfns in sink for pfn in pfns]

    assert flat(sink_a) == flat(sink_b)
    assert a.mem.pcp.state() == b.mem.pcp.state()

"""The buddy allocator's bulk forms against the calls they stand for (issue 7).

`PhysMem.alloc_pages_order0_bulk(m)` must hand out the same PFNs in the same
order and leave the same free lists as m `alloc_pages(0)` calls, and
`free_folios_order0(pfns)` must leave the same lists and struct pages as
`free_folio` of each in turn, from any fragmented free state.
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
    )


def _same(a, b) -> bool:
    return a[0] == b[0] and a[1] == b[1] and all(np.array_equal(a[2][f], b[2][f]) for f in a[2])


def _fragmented(ops: list[tuple[int, int]]) -> Kernel:
    """A small kernel after a run of allocations (orders 0-3) and frees.

    First 1024 order-0 pages are taken and every third one given back, so
    the order-0 list holds hundreds of pages that cannot merge.
    """
    k = Kernel(ram_bytes=32 << 20, hugetlb_pages=0)
    first = [k.mem.alloc_pages(0) for _ in range(1024)]
    for page in first[::3]:
        folio_put(page)
    held = []
    for order, free_at in ops:
        page = k.mem.alloc_pages(order)
        if page is not None:
            held.append(page)
        if held and free_at:
            folio_put(held.pop(free_at % len(held)))
    return k


OPS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5)), max_size=60)


@settings(max_examples=40, deadline=None)
@given(ops=OPS, m=st.integers(1, 1000))
def test_alloc_order0_bulk_is_m_alloc_pages(ops, m):
    a, b = _fragmented(ops), _fragmented(ops)
    assert _same(_state(a), _state(b))
    m = min(m, a.mem.nr_free)
    bulk = a.mem.alloc_pages_order0_bulk(m)
    one_by_one = [b.mem.alloc_pages(0).pfn for _ in range(m)]
    assert bulk.tolist() == one_by_one
    assert _same(_state(a), _state(b))


def test_alloc_order0_bulk_refuses_more_than_free():
    k = _fragmented([])
    before = _state(k)
    assert k.mem.alloc_pages_order0_bulk(k.mem.nr_free + 1) is None
    assert _same(before, _state(k))


@settings(max_examples=40, deadline=None)
@given(ops=OPS, m=st.integers(1, 1000), seed=st.integers(0, 2**16))
def test_free_order0_bulk_is_free_folio_of_each(ops, m, seed):
    a, b = _fragmented(ops), _fragmented(ops)
    m = min(m, a.mem.nr_free)
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
    m = a.mem.nr_free - 5  # split every block, max-order ones included
    assert a.mem.alloc_pages_order0_bulk(m).tolist() == [b.mem.alloc_pages(0).pfn for _ in range(m)]
    assert _same(_state(a), _state(b))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 600))
def test_allocation_depends_only_on_what_is_free(seed, n):
    """The same pages freed in two different orders: the next allocations
    (of every order) get the same PFNs, the lowest free block first."""
    ks = []
    for order_seed in (seed, seed + 1):
        k = Kernel(ram_bytes=32 << 20, hugetlb_pages=0)
        pages = [k.mem.alloc_pages(0) for _ in range(n)]
        keep = pages[::5]
        free = [p for p in pages if p not in keep]
        for i in np.random.default_rng(order_seed).permutation(len(free)).tolist():
            folio_put(free[i])
        ks.append(k)
    a, b = ks
    assert _same(_state(a), _state(b))
    fa = a.mem.free_area
    for order in (0, 0, 3, 0, 9, 1, 0):
        smallest = next(o for o in range(order, len(fa)) if fa[o])
        expect = min(fa[smallest])  # the lowest block of the smallest order that fits
        pa, pb = a.mem.alloc_pages(order), b.mem.alloc_pages(order)
        assert pa.pfn == pb.pfn == expect

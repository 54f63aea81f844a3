"""The checker's PhysMem.buddy_orders check against the free lists.

The allocator keeps one order per RAM page (the kernel's buddy_order of a
PageBuddy head, mm/page_alloc.c set_buddy_order): the order at the head page
of each free buddy block, -1 at every other page. Clean worlds after random
bulk and per-page allocations and frees pass; each kind of planted
breakage is reported, naming the pages in PFN order.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from hmmsim.include.mm_types import folio_put
from hmmsim.kernel import Kernel
from hmmsim.mm import page_alloc
from hmmsim.mm.page_alloc import GFP_HIGHUSER_MOVABLE, GFP_KERNEL
from hmmsim.testing.invariants import _Checker, check_invariants


def _order_problems(k) -> list[str]:
    c = _Checker(k)
    c.check_buddy()
    return [m for m in c.problems if "buddy_orders" in m]


def _churned(seed: int, ram: int = 32 << 20) -> Kernel:
    """A kernel after random bulk and per-page allocations (orders 0-3 and
    9, both pcp migratetypes) and frees of random subsets, bulk and one by
    one."""
    rng = np.random.default_rng(seed)
    k = Kernel(ram_bytes=ram, hugetlb_pages=0)
    mem = k.mem
    held: list[int] = []
    blocks = []
    for _ in range(12):
        kind = int(rng.integers(0, 4))
        if kind == 0:
            gfp = (GFP_KERNEL, GFP_HIGHUSER_MOVABLE)[int(rng.integers(0, 2))]
            n = min(int(rng.integers(1, 700)), mem.nr_free - mem.pcp.count)
            held += mem.alloc_pages_order0_bulk(n, gfp).tolist()
        elif kind == 1 and held:
            idx = rng.permutation(len(held))[: int(rng.integers(1, len(held) + 1))]
            pfns = np.array(held, dtype=np.int64)[idx]
            gone = set(pfns.tolist())
            held = [p for p in held if p not in gone]
            if rng.integers(0, 2):
                mem.ram.pages._refcount[pfns] = 0
                mem.free_folios_order0(pfns)
            else:
                for pfn in pfns.tolist():
                    folio_put(mem.pfn_to_page(pfn))
        elif kind == 2:
            page = mem.alloc_pages((0, 1, 2, 3, 9)[int(rng.integers(0, 5))])
            if page is not None:
                blocks.append(page)
        elif blocks:
            folio_put(blocks.pop(int(rng.integers(0, len(blocks)))))
        assert _order_problems(k) == []
    if rng.integers(0, 2):
        mem.drain_all_pages()
    return k


@pytest.mark.parametrize("seed", range(6))
def test_clean_worlds_after_random_alloc_and_free_pass(seed):
    k = _churned(seed)
    assert int((k.mem.buddy_orders >= 0).sum()) == sum(map(len, k.mem.free_area))
    c = _Checker(k)
    c.check_buddy()  # the allocator's share (held pages are not leaks here)
    assert c.problems == []


def test_a_fuzzed_world_passes_the_whole_checker():
    from hmmsim.testing.fuzz import Generator, World, feature_configs
    from hmmsim.testing.fuzz.ops import DEFAULT_RAM, SeqConfig

    fs, cr = feature_configs("mainline")[0]
    w = World(SeqConfig(frozenset(fs), cr, "always", DEFAULT_RAM, frozenset(), "mainline"))
    gen = Generator(w, random.Random(11))
    for _ in range(80):
        w.apply(gen.next())
    assert (w.k.mem.buddy_orders >= 0).any()
    assert check_invariants(w.k, raise_on_error=False) == []


def _heads(k, order: int) -> list[int]:
    return sorted(k.mem.free_area[order])


def test_wrong_order_at_a_head_is_reported():
    k = _churned(1)
    top = max(o for o, fa in enumerate(k.mem.free_area) if fa)
    head = _heads(k, top)[0]
    k.mem.buddy_orders[head] = top - 1
    assert _order_problems(k) == [
        f"pfn {head:#x}: free block of order {top} but buddy_orders {top - 1}"
    ]


def test_stale_order_at_a_non_head_is_reported():
    k = _churned(2)
    top = max(o for o, fa in enumerate(k.mem.free_area) if fa)
    inside = _heads(k, top)[0] + 1  # inside a free block, not its head
    used = int(np.nonzero((k.mem.ram.pages.flags & page_alloc.PGTY_buddy) == 0)[0][-1])
    k.mem.buddy_orders[inside] = 0
    k.mem.buddy_orders[used] = 3  # an allocated (or pcp) page
    assert _order_problems(k) == [
        f"pfn {p:#x}: buddy_orders {o} but no free block starts there"
        for p, o in sorted([(inside, 0), (used, 3)])
    ]


def test_missing_order_at_a_head_is_reported():
    k = _churned(3)
    order = min(o for o, fa in enumerate(k.mem.free_area) if fa)
    head = _heads(k, order)[-1]
    k.mem.buddy_orders[head] = -1
    assert _order_problems(k) == [f"pfn {head:#x}: free block of order {order} but buddy_orders -1"]


def test_missing_array_is_reported():
    k = _churned(4)
    k.mem.buddy_orders = k.mem.buddy_orders[:-1]
    assert _order_problems(k) == [
        f"buddy_orders is ({k.mem.ram.pages.nr - 1},), "
        f"not one order per RAM page ({k.mem.ram.pages.nr})"
    ]


def test_many_mismatches_name_the_first_in_pfn_order_then_count():
    k = _churned(5)
    heads = sorted(h for fa in k.mem.free_area for h in fa)
    assert len(heads) > _Checker.BUDDY_ORDER_SHOWN
    k.mem.buddy_orders[:] = -1
    got = _order_problems(k)
    shown = heads[: _Checker.BUDDY_ORDER_SHOWN]
    assert [m.split(":")[0] for m in got[:-1]] == [f"pfn {h:#x}" for h in shown]
    assert got[-1] == f"buddy_orders disagrees with the free lists at {len(heads)} pages"


def test_an_allocator_that_leaves_a_stale_order_is_caught(monkeypatch):
    """A pop that forgets to clear the head's order (the kernel's
    del_page_from_free_list -> __ClearPageBuddy/set_page_private(0)) leaves
    the order on an allocated page: the checker names it."""

    def pop_keeping_order(self):
        s, h = self._set, self._heap
        while h:
            pfn = page_alloc.heapq.heappop(h)
            if pfn in s:
                s.remove(pfn)
                return pfn
        raise KeyError("pop from an empty free area")

    k = Kernel(ram_bytes=32 << 20, hugetlb_pages=0)
    assert _order_problems(k) == []
    monkeypatch.setattr(page_alloc.FreeArea, "pop", pop_keeping_order)
    page = k.mem.alloc_pages(9)
    got = _order_problems(k)
    assert got and got[0].startswith(f"pfn {page.pfn:#x}: buddy_orders ")

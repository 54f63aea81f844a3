import numpy as np
import pytest

from hmmsim.bug import KernelBug, KernelOops
from hmmsim.include.mm_types import (
    STRUCT_PAGE_BYTES,
    PG_head,
    PGTY_buddy,
    folio_nr_pages,
    folio_order,
    folio_page,
    folio_put,
    folio_ref_count,
    page_folio,
)
from hmmsim.kernel import Kernel
from hmmsim.mm.page_alloc import __GFP_ZERO, RESERVED_PFNS
from hmmsim.testing.invariants import check_invariants


def test_struct_page_budget():
    assert STRUCT_PAGE_BYTES <= 64


def test_four_gib_kernel_is_cheap_and_within_budget():
    k = Kernel(ram_bytes=4 << 30, hugetlb_pages=0)
    rep = k.memory_report()
    assert rep["ram_pages"] == 1 << 20
    assert rep["metadata_bytes"] <= 64 * rep["ram_pages"]
    assert k.mem.nr_free == rep["ram_pages"] - RESERVED_PFNS


def test_order0_alloc_free_roundtrip(k):
    before = k.mem.nr_free
    page = k.mem.alloc_pages(0)
    assert folio_ref_count(page) == 1 and not page.test(PGTY_buddy)
    assert k.mem.nr_free == before - 1
    folio_put(page)
    # free again, on the per-cpu list (not PageBuddy) until a drain
    assert k.mem.nr_free == before and not page.test(PGTY_buddy) and k.mem.is_free(page.pfn)
    check_invariants(k)
    k.mem.drain_all_pages()
    assert k.mem.pcp.count == 0 and page.test(PGTY_buddy) and k.mem.nr_free == before
    check_invariants(k)


def test_buddies_merge_back_into_a_pmd_block(k):
    top_before = len(k.mem.free_area[9])
    pages = [k.mem.alloc_pages(0) for _ in range(512)]
    for p in pages:
        folio_put(p)
    k.mem.drain_all_pages()  # the last ones freed wait on the pcp list
    assert len(k.mem.free_area[9]) == top_before
    check_invariants(k)


def test_compound_page_layout(k):
    folio = k.mem.alloc_pages(9, __GFP_ZERO)
    assert folio.pfn % 512 == 0
    assert folio.test(PG_head) and folio_order(folio) == 9 and folio_nr_pages(folio) == 512
    tail = folio_page(folio, 300)
    assert page_folio(tail) == folio
    assert folio_ref_count(tail) == 0
    assert not k.mem.frame(tail.pfn).any()
    folio_put(folio)
    check_invariants(k)


def test_exhaustion_returns_none_and_nothing_leaks():
    k = Kernel(ram_bytes=32 << 20, hugetlb_pages=0)
    got = []
    while (p := k.mem.alloc_pages(0)) is not None:
        got.append(p)
    assert k.mem.nr_free == 0
    assert k.mem.alloc_pages(9) is None
    for p in got:
        folio_put(p)
    check_invariants(k)


def test_fail_alloc_hook(k):
    k.mem.should_fail_alloc = lambda order: order == 9
    assert k.mem.alloc_pages(9) is None
    p = k.mem.alloc_pages(0)
    assert p is not None
    folio_put(p)


def test_double_free_is_a_kernel_bug(k):
    p = k.mem.alloc_pages(0)
    folio_put(p)
    with pytest.raises(KernelBug):
        folio_put(p)


def test_bad_order_is_a_value_error(k):
    with pytest.raises(ValueError, match="order 10"):
        k.mem.alloc_pages(10)


def test_no_struct_page_and_no_linear_map_are_errors(k):
    with pytest.raises(KernelBug):
        k.mem.pfn_to_page(1 << 40)
    with pytest.raises(KernelOops, match="page_address"):
        k.mem.frame(1 << 40)


def test_frames_hold_bytes(k):
    p = k.mem.alloc_pages(0, __GFP_ZERO)
    k.mem.frame(p.pfn)[:4] = np.frombuffer(b"abcd", dtype=np.uint8)
    q = k.mem.alloc_pages(0)
    k.mem.copy_frame(q.pfn, p.pfn)
    assert k.mem.frame(q.pfn)[:4].tobytes() == b"abcd"
    folio_put(p)
    folio_put(q)


def test_two_kernels_are_independent():
    a = Kernel(ram_bytes=32 << 20, hugetlb_pages=0)
    b = Kernel(ram_bytes=32 << 20, hugetlb_pages=0)
    pa = a.mem.alloc_pages(0)
    assert b.mem.nr_free == a.mem.nr_free + 1
    folio_put(pa)

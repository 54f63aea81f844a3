"""mm/page_batch.py's batched struct-page operations against the per-page
kernel helpers they batch (issue 16 item 2).

Two identical kernels take the same pages through the same sequence of
operations, one page at a time through the reference helpers (mm/rmap.py,
include/mm_types.py, locking.py, mm/migrate.py) and in one batch call
through mm/page_batch.py; after every step every struct-page column, the
allocator's lists and counters must be equal.
"""

from __future__ import annotations

import numpy as np
import pytest

import hmmsim.mm.page_batch as pb
from hmmsim.include.mm import GUP_PIN_COUNTING_BIAS
from hmmsim.include.mm_types import PAGE_FIELDS, Page, folio_get, folio_mark_dirty, folio_put
from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from hmmsim.kconfig import PAGE_SIZE
from hmmsim.kernel import Kernel
from hmmsim.locking import folio_trylock, folio_unlock
from hmmsim.mm.migrate import (
    folio_add_lru,
    folio_isolate_lru,
    folio_migrate_flags,
    folio_migrate_mapping,
)
from hmmsim.mm.mmap import vma_lookup
from hmmsim.mm.page_alloc import GFP_HIGHUSER_MOVABLE
from hmmsim.mm.rmap import (
    RMAP_EXCLUSIVE,
    RMAP_NONE,
    anon_vma_prepare,
    folio_add_anon_rmap_pte,
    folio_add_new_anon_rmap,
    folio_remove_rmap_pte,
    folio_try_dup_anon_rmap_pte,
    folio_try_share_anon_rmap_pte,
)

N = 24


def _world():
    k = Kernel(ram_bytes=32 << 20, hugetlb_pages=0)
    p = k.spawn()
    addr = p.mmap(0, N * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    vma = vma_lookup(p.mm, addr)
    anon_vma_prepare(vma)
    pfns = np.array(
        [k.mem.alloc_pages(0, GFP_HIGHUSER_MOVABLE).pfn for _ in range(2 * N)], dtype=np.int64
    )
    return k, vma, addr, pfns


def _state(k):
    p = k.mem.ram.pages
    return (
        {f: getattr(p, f).copy() for f, _ in PAGE_FIELDS},
        [sorted(s) for s in k.mem.free_area],
        k.mem.nr_free,
        k.mem.pcp.state(),
    )


def _assert_same(ref, batch, step):
    a, b = _state(ref), _state(batch)
    for f in a[0]:
        assert np.array_equal(a[0][f], b[0][f]), f"{step}: column {f} differs"
    assert a[1:] == b[1:], f"{step}: allocator state differs"


@pytest.fixture
def pair():
    ref, batch = _world(), _world()
    assert np.array_equal(ref[3], batch[3])
    return ref, batch


def test_batches_equal_the_per_page_helpers(pair):
    (rk, rvma, addr, pfns), (bk, bvma, _, _) = pair
    ra, ba = rk.mem.ram.pages, bk.mem.ram.pages
    src, dst = pfns[:N], pfns[N:]
    page = lambda pfn: Page(rk, ra, int(pfn))  # noqa: E731
    rng = np.random.default_rng(7)
    some = np.sort(rng.choice(src, N // 2, replace=False))
    excl = rng.random(N) < 0.5

    def step(name, per_page, batched):
        per_page()
        batched()
        _assert_same(rk, bk, name)

    step(
        "folio_add_new_anon_rmap",
        lambda: [
            folio_add_new_anon_rmap(page(f), rvma, addr + j * PAGE_SIZE, RMAP_EXCLUSIVE)
            for j, f in enumerate(src)
        ],
        lambda: pb.folio_add_new_anon_rmap_pages(ba, src, bvma.anon_vma.id, rvma.vm_pgoff),
    )
    step(
        "folio_get",
        lambda: [folio_get(page(f)) for f in some],
        lambda: pb.folio_get_pages(ba, some),
    )
    step(
        "folio_try_dup_anon_rmap_pte",
        lambda: [
            folio_try_dup_anon_rmap_pte(page(f), page(f), rvma, rvma) == 0 or pytest.fail("EBUSY")
            for f in src
        ],
        lambda: pb.folio_try_dup_anon_rmap_pte_pages(ba, src),
    )
    step(
        "folio_add_anon_rmap_pte",
        lambda: [
            folio_add_anon_rmap_pte(page(f), page(f), rvma, 0, RMAP_EXCLUSIVE if e else RMAP_NONE)
            for f, e in zip(src, excl, strict=True)
        ],
        lambda: pb.folio_add_anon_rmap_pte_pages(ba, src, excl),
    )
    step(
        "folio_try_share_anon_rmap_pte",
        lambda: [folio_try_share_anon_rmap_pte(page(f), page(f)) for f in some],
        lambda: pb.folio_try_share_anon_rmap_pte_pages(ba, some),
    )
    step(
        "folio_trylock",
        lambda: [folio_trylock(page(f)) or pytest.fail("locked") for f in src],
        lambda: pb.folio_lock_pages(ba, src),
    )
    step(
        "folio_mark_dirty",
        lambda: [folio_mark_dirty(page(f)) for f in some],
        lambda: pb.folio_mark_dirty_pages(ba, some),
    )
    step(
        "folio_remove_rmap_pte",
        lambda: [folio_remove_rmap_pte(page(f), page(f), rvma) for f in src],
        lambda: pb.folio_remove_rmap_pte_pages(ba, src),
    )
    step(
        "folio_isolate_lru + folio_put",
        lambda: [(folio_isolate_lru(page(f)), folio_put(page(f))) for f in src],
        lambda: pb.folio_clear_lru_pages(ba, src),
    )
    # migration to fresh pages, as migrate_vma_pages does per slot: only a
    # source holding just the expected reference hands over its mapping
    ok = ra._refcount[src] == 1
    assert ok.any() and not ok.all()
    step(
        "folio_migrate_mapping + folio_migrate_flags",
        lambda: [
            (
                folio_migrate_mapping(None, page(d), page(s), 0),
                folio_migrate_flags(page(d), page(s)),
            )
            for s, d in zip(src, dst, strict=True)
        ],
        lambda: (
            pb.folio_migrate_mapping_pages(ba, dst[ok], ba, src[ok]),
            pb.folio_migrate_flags_pages(ba, dst, ba, src),
        ),
    )
    step(
        "folio_add_lru",
        lambda: [folio_add_lru(page(f)) for f in dst],
        lambda: pb.folio_add_lru_pages(ba, dst),
    )
    step(
        "folio_unlock",
        lambda: [folio_unlock(page(f)) for f in src],
        lambda: pb.folio_unlock_pages(ba, src),
    )
    for n in range(2):
        step(
            f"folio_remove_rmap_pte ({n})",
            lambda: [folio_remove_rmap_pte(page(f), page(f), rvma) for f in src],
            lambda: pb.folio_remove_rmap_pte_pages(ba, src),
        )
    # `some` hold two references, the rest one: those are freed, in this
    # (unsorted) order, as folio_put of each frees them
    order = rng.permutation(src)
    step(
        "folio_put",
        lambda: [folio_put(page(f)) for f in order],
        lambda: pb.folio_put_pages(ba, order, k=bk),
    )
    assert (ba._refcount[some] == 1).all()
    assert bk.mem.is_free(int(np.setdiff1d(src, some)[0]))


def test_folio_put_pages_frees_in_the_given_order(pair):
    (rk, _, _, pfns), (bk, _, _, _) = pair
    ra, ba = rk.mem.ram.pages, bk.mem.ram.pages
    order = np.random.default_rng(3).permutation(pfns)
    twice = order[::3]
    for f in twice:
        folio_get(Page(rk, ra, int(f)))
    pb.folio_get_pages(ba, twice)
    for f in order:
        folio_put(Page(rk, ra, int(f)))
    pb.folio_put_pages(ba, order, k=bk)
    _assert_same(rk, bk, "folio_put of each")
    assert (ba._refcount[twice] == 1).all() and rk.mem.nr_free == bk.mem.nr_free
    left = np.setdiff1d(order, twice)
    assert all(bk.mem.is_free(int(f)) for f in left[:4])


def test_folio_put_testzero_pages_reports_the_last_references():
    k, _, _, pfns = _world()
    a = k.mem.ram.pages
    pb.folio_get_pages(a, pfns[::2])
    assert pb.folio_put_testzero_pages(a, pfns[::-1]).tolist() == pfns[1::2][::-1].tolist()
    assert (a._refcount[pfns[::2]] == 1).all()


def test_try_dup_precondition_is_the_reference_ebusy_bound():
    # folio_try_dup_anon_rmap_pte_pages is only for pages the reference
    # would not refuse: the fast callers check refcount + 1 < the pin bias
    k, vma, _, pfns = _world()
    a = k.mem.ram.pages
    f = int(pfns[0])
    pg = Page(k, a, f)
    folio_add_new_anon_rmap(pg, vma, vma.vm_start, RMAP_EXCLUSIVE)
    a._refcount[f] = GUP_PIN_COUNTING_BIAS  # a FOLL_PIN
    assert folio_try_dup_anon_rmap_pte(pg, pg, vma, vma) != 0

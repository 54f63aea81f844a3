"""Batched struct-page operations: one kernel helper applied to a run of pages.

Models: nothing new of torvalds/linux 0eaed89c18ae. Each function here is
a kernel helper a driver calls (mm/memremap.c zone_device_page_init,
include/linux/pagemap.h folio_lock, include/linux/mm.h folio_put) applied
in order to pages a[idx] of one PageArrays, with one store per struct-page
column: the state after it equals the state after the per-page calls, under
the preconditions each function names (the callers check them, or ask the
`..._would_warn` predicate first). The fast layer (hmmsim/fast/) uses these
instead of writing struct-page columns itself; docs/design.md, "Fast paths".
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

from hmmsim.include.mm_types import (
    FOLIO_MAPPING_ANON,
    PageArrays,
    PG_anon_exclusive,
    PG_dirty,
    PG_locked,
    PG_lru,
    PG_uptodate,
)

#: indices into one PageArrays (PFN - base), distinct unless a function says otherwise
Index: TypeAlias = NDArray[np.integer[Any]] | list[int]
I64Array: TypeAlias = NDArray[np.int64]


def _pgmap_counts(a: PageArrays, pos: I64Array) -> tuple[list[int], list[int]]:
    """The distinct pagemap ids of pages a[pos], ascending, and how many
    pages have each (np.unique, but one comparison when all pages share one
    pagemap: a window from one chunk)."""
    pg = a.pgmap[pos]
    if len(pg) and (pg == pg[0]).all():
        return [int(pg[0])], [len(pg)]
    pids, counts = np.unique(pg, return_counts=True)
    return pids.tolist(), counts.tolist()


def zone_device_pages_init_would_warn(a: PageArrays, idx: Index, *, k: Any) -> bool:
    """Would zone_device_page_init of some order-0 page a[idx] warn (a page
    still referenced, or its dev_pagemap being unmapped)? The batch form
    below runs only where it would not."""
    pos = np.asarray(idx, dtype=np.int64)
    if (a._refcount[pos] != 0).any():
        return True
    return any(k.pgmaps[pid]._killed for pid in _pgmap_counts(a, pos)[0])


def zone_device_pages_init(a: PageArrays, idx: Index, *, k: Any) -> None:
    """mm/memremap.c zone_device_page_init(page, page_pgmap(page), 0) of each
    order-0 device page a[idx], in order: flags cleared then PG_locked, no
    order or compound head, no mapping, unmapped, one reference, and one
    pagemap reference (get_dev_pagemap) per page. Precondition:
    zone_device_pages_init_would_warn is False and no known bug is put back
    (Kernel.fastpath)."""
    pos = np.asarray(idx, dtype=np.int64)
    a.flags[pos] = np.uint32(PG_locked)
    a.order[pos] = 0
    a.head_off[pos] = 0
    a.mapping[pos] = 0
    a._mapcount[pos] = -1
    a._refcount[pos] = 1
    pids, counts = _pgmap_counts(a, pos)
    for pid, cnt in zip(pids, counts, strict=True):
        k.pgmaps[pid]._refs += cnt


def folio_lock_pages(a: PageArrays, idx: Index) -> None:
    """folio_lock() of each order-0 folio a[idx], none of them locked (fresh
    pages no one else can see, so no wait)."""
    a.flags[idx] |= np.uint32(PG_locked)


def folio_put_last_pages(a: PageArrays, idx: Index, *, k: Any) -> None:
    """folio_put() of order-0 RAM folios a[idx] that hold one reference each,
    in order: each count goes 1 -> 0 and the page is freed
    (PhysMem.free_folios_order0, the buddy and pcp state of freeing each in
    turn). Precondition: every _refcount[idx] is 1, no page is compound."""
    a._refcount[idx] = 0
    k.mem.free_folios_order0(idx)


# ----------------------------------------------------------------------------------------
# references, rmap, LRU and folio flags of order-0 pages (issue 16 item 2)
#
# Each is the struct-page half of the kernel helper it is named after, applied
# to order-0, non-compound pages a[idx] (distinct), one store per column. The
# per-entry helpers (mm/rmap.py, include/mm_types.py, mm/migrate.py) are the
# reference; the preconditions below are what makes the batch equal to the
# calls in order, and the callers in fast/ check them.


def folio_get_pages(a: PageArrays, idx: Index) -> None:
    """folio_get() of each referenced order-0 folio a[idx]
    (include/linux/mm.h): one reference more."""
    a._refcount[idx] += 1


def folio_put_testzero_pages(a: PageArrays, idx: Index) -> I64Array:
    """folio_put_testzero() of each order-0 folio a[idx] (include/linux/mm.h):
    one reference less; returns the indices whose count reached 0, in the
    given order, for the caller to free (the free depends on the memory
    range). Precondition: every count is positive and the indices distinct."""
    pos = np.asarray(idx, dtype=np.int64)
    a._refcount[pos] -= 1
    gone: I64Array = pos[a._refcount[pos] == 0]
    return gone


def folio_put_pages(a: PageArrays, idx: Index, *, k: Any) -> None:
    """folio_put() of order-0 RAM folios a[idx] in order (include/linux/mm.h):
    one reference less each, and the folios whose last reference that was
    freed in that order (PhysMem.free_folios_order0: the buddy and pcp state
    of freeing each in turn). Precondition: a is system RAM, every count is
    positive, no page is compound, the indices distinct."""
    gone = folio_put_testzero_pages(a, idx)
    if len(gone):
        k.mem.free_folios_order0(gone + a.base)


def folio_unlock_pages(a: PageArrays, idx: Index) -> None:
    """folio_unlock() of each locked order-0 folio a[idx] (mm/filemap.c),
    with no waiter to wake (the fast layer runs only where no thread can
    wait: Kernel.fastpath)."""
    a.flags[idx] &= ~np.uint32(PG_locked)


def folio_mark_dirty_pages(a: PageArrays, idx: Index) -> None:
    """folio_mark_dirty() of each anonymous order-0 folio a[idx]
    (mm/page-writeback.c; an anon folio has no address_space to tell, so
    only PG_dirty is set)."""
    a.flags[idx] |= np.uint32(PG_dirty)


def folio_add_lru_pages(a: PageArrays, idx: Index) -> None:
    """folio_add_lru() of each order-0 system-RAM folio a[idx] (mm/swap.c):
    the model's LRU is the PG_lru bit."""
    a.flags[idx] |= np.uint32(PG_lru)


def folio_clear_lru_pages(a: PageArrays, idx: Index) -> None:
    """folio_test_clear_lru() of each order-0 folio a[idx] on the LRU: the
    flag half of folio_isolate_lru() (mm/vmscan.c). The reference
    folio_isolate_lru also takes a reference; a caller that drops one
    straight after (migrate_device_unmap's put of the collect reference)
    has nothing else to store."""
    a.flags[idx] &= ~np.uint32(PG_lru)


def folio_add_new_anon_rmap_pages(
    a: PageArrays, idx: Index, anon_vma_id: int, first_index: int
) -> None:
    """folio_add_new_anon_rmap(folio, vma, addr + j * PAGE_SIZE, RMAP_EXCLUSIVE)
    of brand-new order-0 RAM folios a[idx] mapped at consecutive addresses
    (mm/rmap.c): the anon_vma as mapping, page->index first_index + j, one
    mapping, PageAnonExclusive, and on the LRU (folio_add_lru_vma), as
    mm/rmap.py's per-folio form. Precondition: fresh pages from the
    allocator (no mapping, unmapped), no known bug put back."""
    pos = np.asarray(idx, dtype=np.int64)
    a.mapping[pos] = anon_vma_id | FOLIO_MAPPING_ANON
    a.index[pos] = first_index + np.arange(len(pos), dtype=np.int64)
    a._mapcount[pos] = 0
    a.flags[pos] |= np.uint32(PG_anon_exclusive | PG_lru)


def folio_add_anon_rmap_pte_pages(
    a: PageArrays, idx: Index, exclusive: NDArray[np.bool_] | None = None
) -> None:
    """folio_add_anon_rmap_pte() of each order-0 anon folio a[idx]
    (mm/rmap.c): one mapping more, and PageAnonExclusive set where
    `exclusive` (RMAP_EXCLUSIVE) is true; None: no page is exclusive."""
    pos = np.asarray(idx, dtype=np.int64)
    a._mapcount[pos] += 1
    if exclusive is not None:
        a.flags[pos[exclusive]] |= np.uint32(PG_anon_exclusive)


def folio_try_dup_anon_rmap_pte_pages(a: PageArrays, idx: Index) -> None:
    """folio_try_dup_anon_rmap_pte() at fork of each order-0 anon folio
    a[idx] that cannot be DMA-pinned (mm/rmap.c): PageAnonExclusive
    cleared, one mapping more. Precondition: no page may be pinned
    (refcount + 1 < GUP_PIN_COUNTING_BIAS), so no call would return -EBUSY."""
    pos = np.asarray(idx, dtype=np.int64)
    a.flags[pos] &= np.uint32(~PG_anon_exclusive & 0xFFFFFFFF)
    a._mapcount[pos] += 1


def folio_try_share_anon_rmap_pte_pages(a: PageArrays, idx: Index) -> None:
    """folio_try_share_anon_rmap_pte() of each order-0 anon folio a[idx]
    that cannot be DMA-pinned, before its PTE becomes a migration entry
    (mm/rmap.c): PageAnonExclusive cleared."""
    a.flags[idx] &= np.uint32(~PG_anon_exclusive & 0xFFFFFFFF)


def folio_remove_rmap_pte_pages(a: PageArrays, idx: Index) -> None:
    """folio_remove_rmap_pte() of each mapped order-0 folio a[idx]
    (mm/rmap.c): one mapping less. Precondition: every page is mapped (the
    per-page form raises KernelBug on an underflow) and none is part of a
    large folio (no deferred split to queue)."""
    a._mapcount[idx] -= 1


def folio_migrate_mapping_pages(dst: PageArrays, di: Index, src: PageArrays, si: Index) -> None:
    """folio_migrate_mapping(NULL, dst[di[j]], src[si[j]], 0) of anonymous
    order-0 folios outside the swap cache that hold only the expected
    reference (mm/migrate.c): index and mapping move to the new folio.
    Precondition: the caller checked the reference counts (the per-folio
    form returns -EAGAIN otherwise and stores nothing)."""
    dst.index[di] = src.index[si]
    dst.mapping[di] = src.mapping[si]


def folio_migrate_flags_pages(dst: PageArrays, di: Index, src: PageArrays, si: Index) -> None:
    """folio_migrate_flags(dst[di[j]], src[si[j]]) of order-0 folios
    (mm/migrate.c): dirty, uptodate and anon-exclusive carried over."""
    keep = np.uint32(PG_dirty | PG_uptodate | PG_anon_exclusive)
    carried: NDArray[np.uint32] = src.flags[si] & keep
    dst.flags[di] = dst.flags[di] | carried

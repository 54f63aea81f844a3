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

import numpy as np

from hmmsim.include.mm_types import PG_locked


def zone_device_pages_init_would_warn(a, idx, *, k) -> bool:
    """Would zone_device_page_init of some order-0 page a[idx] warn (a page
    still referenced, or its dev_pagemap being unmapped)? The batch form
    below runs only where it would not."""
    idx = np.asarray(idx, dtype=np.int64)
    if (a._refcount[idx] != 0).any():
        return True
    return any(k.pgmaps[pid]._killed for pid in np.unique(a.pgmap[idx]).tolist())


def zone_device_pages_init(a, idx, *, k) -> None:
    """mm/memremap.c zone_device_page_init(page, page_pgmap(page), 0) of each
    order-0 device page a[idx], in order: flags cleared then PG_locked, no
    order or compound head, no mapping, unmapped, one reference, and one
    pagemap reference (get_dev_pagemap) per page. Precondition:
    zone_device_pages_init_would_warn is False and no known bug is put back
    (Kernel.fastpath)."""
    idx = np.asarray(idx, dtype=np.int64)
    a.flags[idx] = np.uint32(PG_locked)
    a.order[idx] = 0
    a.head_off[idx] = 0
    a.mapping[idx] = 0
    a._mapcount[idx] = -1
    a._refcount[idx] = 1
    pids, counts = np.unique(a.pgmap[idx], return_counts=True)
    for pid, cnt in zip(pids.tolist(), counts.tolist(), strict=True):
        k.pgmaps[pid]._refs += cnt


def folio_lock_pages(a, idx) -> None:
    """folio_lock() of each order-0 folio a[idx], none of them locked (fresh
    pages no one else can see, so no wait)."""
    a.flags[idx] |= np.uint32(PG_locked)


def folio_put_last_pages(a, idx, *, k) -> None:
    """folio_put() of order-0 RAM folios a[idx] that hold one reference each,
    in order: each count goes 1 -> 0 and the page is freed
    (PhysMem.free_folios_order0, the buddy and pcp state of freeing each in
    turn). Precondition: every _refcount[idx] is 1, no page is compound."""
    a._refcount[idx] = 0
    k.mem.free_folios_order0(idx)

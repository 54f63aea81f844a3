"""Bulk forms of the device-range migration loops of mm/migrate_device.py
(not kernel code): what a driver's eviction (migrate_device_range,
migrate_device_pages, migrate_device_finalize on a chunk of device-private
pages) runs per page, for a window where every page is the common case.

- `migrate_device_range_unmap`: migrate_device_unmap for device pages that
  are each mapped once, by a device-private entry: try_to_migrate's rmap
  walk would visit one vma and replace that entry by a migration entry;
- `migrate_device_pages`: __migrate_device_pages without a migrate_vma
  (folio_migrate_mapping and folio_migrate_flags per slot);
- `migrate_device_finalize_remove`: remove_migration_ptes() of
  __migrate_device_finalize without a migrate_vma.

The last two find the one vma the sources are mapped in and hand the window
to fast/migrate_device.py's migrate_vma forms, which do the same per-slot
work and are offered the same windows when a migrate_vma exists. Every
function declines (0, or ([], False)) unless Kernel.fastpath, no fault page
and a run of at least MIN_RUN slots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

from hmmsim.bug import KernelBug
from hmmsim.fast import migrate_device as fast_md
from hmmsim.fast.arrays import distinct_values, has_duplicates, slot_words
from hmmsim.include.memremap import MEMORY_DEVICE_PRIVATE
from hmmsim.include.migrate import MIGRATE_PFN_COMPOUND, MIGRATE_PFN_MIGRATE, MIGRATE_PFN_VALID
from hmmsim.include.mm import GUP_PIN_COUNTING_BIAS
from hmmsim.include.mm_types import (
    FOLIO_MAPPING_ANON,
    PageArrays,
    PG_anon_exclusive,
    PG_head,
    PG_locked,
    vma_pages,
)
from hmmsim.include.pgtable import (
    pte_swp_mksoft_dirty_array,
    pte_swp_mkuffd_wp_array,
    pte_swp_soft_dirty_array,
    pte_swp_uffd_wp_array,
)
from hmmsim.include.swapops import (
    is_swap_pte_array,
    softleaf_from_pte_array,
    swp_entry_array,
    swp_entry_to_pte_array,
)
from hmmsim.kconfig import DEVICE_PRIVATE_BASE, PAGE_SHIFT, PAGE_SIZE, PMD_SHIFT
from hmmsim.mm.page_batch import (
    folio_put_testzero_pages,
    folio_remove_rmap_pte_pages,
    folio_try_share_anon_rmap_pte_pages,
)

MIN_RUN = fast_md.MIN_RUN
I64Array: TypeAlias = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class RangeReference:
    """The per-entry operations of mm/ the device-range forms borrow, besides
    fast/migrate_device.Reference (mm/migrate_device.py builds both)."""

    #: mm/mmu_notifier.py: `with notify_range(mm, event, start, end):`
    notify_range: Callable[..., Any]
    #: include/mmu_notifier.py MMU_NOTIFY_CLEAR (try_to_migrate_one's event)
    notify_clear: int


@dataclass
class _Window:
    """The stand-in for a migrate_vma the migrate_vma forms read: the
    window's vma, its src and dst arrays, no fault page."""

    vma: Any
    src: Any
    dst: Any
    fault_page: Any = None


def _swap_index_base(a: PageArrays) -> int:
    return a.base - DEVICE_PRIVATE_BASE if a.base >= DEVICE_PRIVATE_BASE else a.base


def _one_vma(k: Any, a: PageArrays, pos: I64Array) -> Any:
    """The one vma an rmap walk of these anon order-0 pages would visit, or None.

    All pages of one anon_vma; exactly one of its vmas spans their indices
    (and maps each at an address inside it); no other vma spans any of them.
    """
    m = a.mapping[pos]
    m0 = int(m[0])
    if not m0 & FOLIO_MAPPING_ANON or (m != m0).any():
        return None
    av = k.objects.get(m0 & ~FOLIO_MAPPING_ANON)
    if av is None:
        return None
    index = a.index[pos]
    lo, hi = int(index.min()), int(index.max())
    found = None
    for v in av.vmas:
        if v.vm_pgoff <= hi and lo < v.vm_pgoff + vma_pages(v):
            if found is not None:
                return None
            found = v
    if found is None or lo < found.vm_pgoff or hi >= found.vm_pgoff + vma_pages(found):
        return None
    return found


def migrate_device_range_unmap(
    ref: fast_md.Reference,
    rref: RangeReference,
    src_pfns: Any,
    busy: list[int],
    fault_page: Any,
    *,
    k: Any,
) -> int:
    """migrate_device_unmap of locked device-private pages each mapped once.

    Returns the slots unmapped (all of busy) or 0 (nothing done). The common
    case: every busy slot VALID and MIGRATE, not compound, an order-0
    device-private page of one memory range, locked, mapped exactly once
    (mapcount 0), not maybe-pinned, anon in one anon_vma whose only vma
    spanning the pages is one vma; each page's PTE (at vma_address, under a
    table whose lock is free) a device-private entry naming it; and each
    page passing migrate_vma_check_page once unmapped.

    Then, as try_to_migrate_one per page in slot order: inside an
    MMU_NOTIFY_CLEAR notification of the page's range, the entry becomes a
    migration entry (writable as the device-private entry was, else readable
    exclusive where the page was anon-exclusive, else readable; the swap
    soft-dirty and uffd-wp bits kept); the page loses anon-exclusive, its
    mapping and the reference the mapping held. The PTE of each page is
    written inside its own notification; the struct page columns after all
    of them (the notifier callbacks read neither).
    """
    if not k.fastpath or fault_page is not None or len(busy) < MIN_RUN:
        return 0
    u64 = np.uint64
    sv = slot_words(src_pfns, busy)
    need = u64(MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE)
    if ((sv & need) != need).any() or (sv & u64(MIGRATE_PFN_COMPOUND)).any():
        return 0
    pages = fast_md._window_pages(ref, k, sv)
    if pages is None:
        return 0
    a, pos = pages
    if a is k.mem.ram.pages or has_duplicates(pos):
        return 0
    fl = a.flags[pos]
    refs = a._refcount[pos].astype(np.int64)
    if (
        ((fl & np.uint32(PG_head | PG_locked)) != PG_locked).any()
        or (a.head_off[pos] != 0).any()
        or (a._mapcount[pos] != 0).any()
        or (refs < 2).any()  # folio_put() below never frees
        or (refs >= GUP_PIN_COUNTING_BIAS).any()
        # migrate_vma_check_page() after: refs - 1 - (1 + zone device) <= 0
        or (refs > 3).any()
    ):
        return 0
    pg = a.pgmap[pos]
    if not pg[0] or (pg != pg[0]).any():
        return 0
    pgmap = k.pgmaps.get(int(pg[0]))
    if pgmap is None or pgmap.type != MEMORY_DEVICE_PRIVATE:
        return 0
    vma = _one_vma(k, a, pos)
    if vma is None:
        return 0
    mm = vma.vm_mm
    addr = vma.vm_start + ((a.index[pos].astype(np.int64) - vma.vm_pgoff) << PAGE_SHIFT)
    if (addr < vma.vm_start).any() or (addr + PAGE_SIZE > vma.vm_end).any():
        return 0
    tables = np.empty(len(pos), dtype=np.int64)
    pmd_no = addr >> PMD_SHIFT
    for pno in distinct_values(pmd_no):
        _, ptep = ref.walk_pte(mm, pno << PMD_SHIFT)
        if ptep is None or ref.pte_lockptr(mm, ptep).is_locked():
            return 0
        tables[pmd_no == pno] = ptep >> PAGE_SHIFT
    col = (addr >> PAGE_SHIFT) & 511
    words = k.mem.ram.words
    old = words[tables, col]
    if not is_swap_pte_array(old).all():
        return 0
    swp = k.swp
    entries = softleaf_from_pte_array(old)
    if not swp.softleaf_is_device_private_array(entries).all():
        return 0
    idx = pos.astype(np.int64) + _swap_index_base(a)
    if (swp.softleaf_to_pfn_array(entries) != idx).any():
        return 0
    write = swp.softleaf_is_device_private_write_array(entries)
    excl = (fl & np.uint32(PG_anon_exclusive)) != 0
    # the new entries: one swap type per (write, exclusive) combination, taken
    # from the reference builder for the first page that has it
    code = write.astype(np.int64) | (excl.astype(np.int64) << 1)
    typ = np.empty(len(pos), dtype=np.int64)
    for c in distinct_values(code):
        j = int(np.flatnonzero(code == c)[0])
        e = ref.make_migration_entry_for(
            _page(ref, k, sv[j]), write=bool(c & 1), anon_exclusive=bool(c & 2)
        )
        if swp.swp_offset(e) != int(idx[j]):
            return 0  # the offset carries more than the index: not a template
        typ[code == c] = swp.swp_type(e)
    new = swp_entry_to_pte_array(swp_entry_array(typ, idx.astype(np.uint64)))
    soft = pte_swp_soft_dirty_array(old)
    new = np.where(soft, pte_swp_mksoft_dirty_array(new), new)
    uffd = pte_swp_uffd_wp_array(old)
    new = np.where(uffd, pte_swp_mkuffd_wp_array(new), new)
    # spot-check the first word against the per-entry computation
    e0 = ref.make_migration_entry_for(
        _page(ref, k, sv[0]), write=bool(write[0]), anon_exclusive=bool(excl[0])
    )
    w0 = np.array([swp.swp_entry_to_pte(e0)], dtype=np.uint64)
    if soft[0]:
        w0 = pte_swp_mksoft_dirty_array(w0)
    if uffd[0]:
        w0 = pte_swp_mkuffd_wp_array(w0)
    if int(new[0]) != int(w0[0]):
        raise KernelBug("fast migrate_device_range_unmap: a word differs from the reference")
    tl, cl, nl, al = tables.tolist(), col.tolist(), new.tolist(), addr.tolist()
    for j in range(len(pos)):
        with rref.notify_range(mm, rref.notify_clear, al[j], al[j] + PAGE_SIZE):
            words[tl[j], cl[j]] = nl[j]
    folio_try_share_anon_rmap_pte_pages(a, pos[excl])
    folio_remove_rmap_pte_pages(a, pos)
    if len(folio_put_testzero_pages(a, pos)):
        raise KernelBug("fast migrate_device_range_unmap: a page lost its last reference")
    return len(busy)


def _page(ref: fast_md.Reference, k: Any, word: Any) -> Any:
    return ref.migrate_pfn_to_page(int(word), k=k)


def _window(
    ref: fast_md.Reference, k: Any, src_pfns: Any, dst_pfns: Any, busy: list[int]
) -> _Window | None:
    """A _Window over the one vma the sources are mapped in, or None."""
    sv = slot_words(src_pfns, busy)
    valid = (sv & np.uint64(MIGRATE_PFN_VALID)) != 0
    if not valid.all():
        return None
    pages = fast_md._window_pages(ref, k, sv)
    if pages is None:
        return None
    a, pos = pages
    if (a.head_off[pos] != 0).any() or (a.flags[pos] & np.uint32(PG_head)).any():
        return None
    vma = _one_vma(k, a, pos)
    if vma is None:
        return None
    return _Window(vma, src_pfns, dst_pfns)


def migrate_device_pages(
    ref: fast_md.Reference, src_pfns: Any, dst_pfns: Any, busy: list[int], *, k: Any
) -> bool:
    """__migrate_device_pages(src, dst, npages, NULL) for a whole window, or
    False (nothing done): the window's sources must be mapped (as migration
    entries) in one vma; then fast_md.migrate_vma_pages decides, whose
    per-slot work is what the loop does without a migrate_vma when there is
    no hole slot and no fault page."""
    if not k.fastpath or len(busy) < MIN_RUN:
        return False
    w = _window(ref, k, src_pfns, dst_pfns, busy)
    return w is not None and bool(fast_md.migrate_vma_pages(ref, w, busy))


def migrate_device_finalize_remove(
    ref: fast_md.Reference, src_pfns: Any, dst_pfns: Any, busy: list[int], *, k: Any
) -> tuple[list[int], bool]:
    """remove_migration_ptes() of __migrate_device_finalize(src, dst, npages,
    NULL) for a whole window: fast_md.migrate_vma_finalize_remove over the
    one vma the sources are mapped in (the reference rmap walk visits only
    that vma, which it checks). Returns what that returns, ([], False) when
    the window has no such vma."""
    if not k.fastpath or len(busy) < MIN_RUN:
        return [], False
    sv = slot_words(src_pfns, busy)
    if not ((sv & np.uint64(MIGRATE_PFN_VALID)) != 0).all():
        return [], False
    w = _window(ref, k, src_pfns, dst_pfns, busy)
    if w is None:
        return [], False
    return fast_md.migrate_vma_finalize_remove(ref, w, busy)


__all__ = [
    "RangeReference",
    "migrate_device_finalize_remove",
    "migrate_device_pages",
    "migrate_device_range_unmap",
]

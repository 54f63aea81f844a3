"""Bulk form of migrate_vma_collect_pmd for device-coherent pages (not kernel code).

Device-coherent memory (MEMORY_DEVICE_COHERENT) is CPU-addressable: its
pages are mapped by ordinary present PTEs, so when a driver migrates them
back to system RAM (MIGRATE_VMA_SELECT_DEVICE_COHERENT) the collect loop
meets present PTEs whose PFN is a device page. fast/migrate_device.py's
`migrate_vma_collect_ptes` takes only system RAM pages among present PTEs;
`migrate_vma_collect_coherent_ptes` here takes the leading run of present
PTEs of order-0 device-coherent pages of one pagemap owned by the walking
driver, doing exactly what mm/migrate_device.py's per-entry
migrate_vma_collect_pte / migrate_vma_collect_install do one by one
(Kernel: mm/migrate_device.c migrate_vma_collect_pmd).

Offered by mm/migrate_device.py's collect loop where the system-RAM form
declined; returns how many PTEs it consumed (0: declined, nothing changed).
Imports follow fast/'s rules (docs/design.md, "The reference code and the
fast layer"); struct pages change only through mm/page_batch.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hmmsim.fast.arrays import has_duplicates, sliceable, slot_words, store_collected_run
from hmmsim.fast.migrate_device import (
    MIN_RUN,
    BoolArray,
    Reference,
    _check_collect,
    _collectable,
    _offered,
)
from hmmsim.include.memremap import MEMORY_DEVICE_COHERENT
from hmmsim.include.migrate import (
    MIGRATE_PFN_COMPOUND,
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_VALID,
    MIGRATE_PFN_WRITE,
    MIGRATE_VMA_SELECT_DEVICE_COHERENT,
    migrate_pfn_array,
    migrate_pfn_to_pfn_array,
)
from hmmsim.include.mm_types import Page, PG_anon_exclusive, PG_head
from hmmsim.include.pgtable import (
    pte_dirty_array,
    pte_pfn_array,
    pte_present_array,
    pte_protnone_array,
    pte_soft_dirty_array,
    pte_special_array,
    pte_swp_mksoft_dirty_array,
    pte_swp_mkuffd_wp_array,
    pte_uffd_wp_array,
    pte_write_array,
    pte_young_array,
)
from hmmsim.include.swapops import swp_entry_to_pte_array
from hmmsim.kconfig import PAGE_SHIFT
from hmmsim.mm.page_batch import (
    folio_lock_pages,
    folio_mark_dirty_pages,
    folio_migrate_flags_pages,
    folio_migrate_mapping_pages,
    folio_remove_rmap_pte_pages,
    folio_try_share_anon_rmap_pte_pages,
)


def _leading(ok: BoolArray) -> int:
    """Length of the leading run of True."""
    return len(ok) if ok.all() else int(np.argmin(ok))


def migrate_vma_collect_coherent_ptes(
    ref: Reference, migrate: Any, vma: Any, ptep: int, addr: int, end: int
) -> int:
    """Collect the leading run of PTEs of [addr, end) that map device-coherent pages.

    Returns how many PTEs (from ptep on) it consumed, or 0 having changed
    nothing. Taken, each exactly as the per-entry loop takes it: a present
    (not PROT_NONE), non-special PTE whose PFN is an order-0 page of one
    MEMORY_DEVICE_COHERENT pagemap whose owner is migrate.pgmap_owner, with
    MIGRATE_VMA_SELECT_DEVICE_COHERENT asked for; the page unlocked,
    referenced, mapped, anonymous, and not pinned if anon-exclusive (the
    share check would fail). Each such page is locked, loses
    PageAnonExclusive and one PTE mapping, is marked dirty from a dirty
    PTE, keeps its reference count (the walk's get and put cancel); its PTE
    becomes the migration entry of its PFN (type from write/exclusive, A/D,
    soft-dirty and uffd-wp carried) and its slot migrate_pfn | MIGRATE
    (| WRITE from the PTE). The first entry is checked against the
    reference builder. Context: the PTE lock is held (by the caller).
    """
    k = vma.vm_mm.k
    n = (end - addr) >> PAGE_SHIFT
    src, dst = migrate.src, migrate.dst
    lo = migrate.npages
    if (
        n < MIN_RUN
        or not migrate.flags & MIGRATE_VMA_SELECT_DEVICE_COHERENT
        or not _offered(k, migrate.fault_page)
        or lo + n > min(len(src), len(dst))
        or not (sliceable(src) and sliceable(dst))
    ):
        return 0
    words = k.mem.ram.words
    table, col = ptep >> PAGE_SHIFT, (ptep >> 3) & 511
    pte = words[table, col : col + n]
    pfn = pte_pfn_array(pte)
    r = k.mem.range_of(int(pfn[0]))
    if r is None or r is k.mem.ram or not r.pgmap_id:
        return 0
    pgmap = k.pgmaps.get(r.pgmap_id)
    if pgmap is None or pgmap.type != MEMORY_DEVICE_COHERENT:
        return 0
    if pgmap.owner is not migrate.pgmap_owner:
        return 0
    a = r.pages
    # the leading run of present, non-special PTEs of this range and pagemap
    cand = (
        pte_present_array(pte)
        & ~pte_protnone_array(pte)
        & ~pte_special_array(pte)
        & (pfn >= a.base)
        & (pfn < a.base + a.nr)
    )
    run = _leading(cand)
    if run < MIN_RUN:
        return 0
    pos = pfn[:run] - a.base
    run = _leading((a.pgmap[pos] == r.pgmap_id) & _collectable(a, pos))
    if run < MIN_RUN:
        return 0
    pos, old = pos[:run], pte[:run].copy()
    if has_duplicates(pos):
        return 0
    swp = k.swp
    excl = (a.flags[pos] & np.uint32(PG_anon_exclusive)) != 0
    write = pte_write_array(old)
    young = pte_young_array(old)
    dirty = pte_dirty_array(old)
    index = (pos + a.base).astype(np.uint64)  # page_swp_index(): the PFN
    etype = np.where(
        write,
        swp.SWP_MIGRATION_WRITE,
        np.where(excl, swp.SWP_MIGRATION_READ_EXCLUSIVE, swp.SWP_MIGRATION_READ),
    )
    entry = swp.swp_entry_array(etype, index)
    entry = np.where(young, swp.make_migration_entry_young_array(entry), entry)
    entry = np.where(dirty, swp.make_migration_entry_dirty_array(entry), entry)
    new = swp_entry_to_pte_array(entry)
    new = np.where(pte_soft_dirty_array(old), pte_swp_mksoft_dirty_array(new), new)
    new = np.where(pte_uffd_wp_array(old), pte_swp_mkuffd_wp_array(new), new)
    mpfn = migrate_pfn_array(index) | np.uint64(MIGRATE_PFN_MIGRATE)
    out = np.where(write, mpfn | np.uint64(MIGRATE_PFN_WRITE), mpfn)
    i0 = int(pos[0])
    check = (0, Page(k, a, i0), int(old[0]), bool(excl[0]))
    _check_collect(ref, check, int(new[0]), int(out[0]))
    # struct page effects, as collect_install does them per page
    folio_lock_pages(a, pos)
    folio_try_share_anon_rmap_pte_pages(a, pos)
    folio_mark_dirty_pages(a, pos[dirty])
    folio_remove_rmap_pte_pages(a, pos)
    words[table, col : col + run] = new
    migrate.cpages += run
    store_collected_run(src, dst, lo, out)
    migrate.npages += run
    return run


def migrate_split_run_pages(
    k: Any, src_pfns: Any, dst_pfns: Any, i: int, nr: int, npages: int, mapping: Any, extra: int
) -> int:
    """The per-page tail of __migrate_device_pages (mm/migrate_device.c)
    for a compound source just split into nr order-0 folios whose
    destinations are order-0 device-coherent pages: folio_migrate_mapping
    and folio_migrate_flags of each slot i..i+nr-1 (cut at npages). The
    slots handled, or 0 having changed nothing.

    Only with Kernel.fastpath, an anonymous source (no mapping), no extra
    reference (not the fault page), every source an order-0 system RAM folio
    holding only the expected reference (so no slot fails with -EAGAIN),
    every destination an order-0 page of one device-coherent range, no page
    twice.
    """
    if not k.fastpath or mapping is not None or extra:
        return 0
    m = min(nr, npages - i)
    if m < 8:
        return 0
    slots = range(i, i + m)
    sv = slot_words(src_pfns, slots)
    dv = slot_words(dst_pfns, slots)
    valid = np.uint64(MIGRATE_PFN_VALID)
    if ((sv & valid) == 0).any() or ((dv & valid) == 0).any():
        return 0
    if ((sv & np.uint64(MIGRATE_PFN_COMPOUND)) != 0).any() or (
        (dv & np.uint64(MIGRATE_PFN_COMPOUND)) != 0
    ).any():
        return 0
    ram = k.mem.ram
    sa = ram.pages
    spos = migrate_pfn_to_pfn_array(sv) - sa.base
    if (spos < 0).any() or (spos >= sa.nr).any() or has_duplicates(spos):
        return 0
    dpfn = migrate_pfn_to_pfn_array(dv)
    r = k.mem.range_of(int(dpfn[0]))
    if r is None or r is ram or not r.pgmap_id:
        return 0
    da = r.pages
    dpos = dpfn - da.base
    if (dpos < 0).any() or (dpos >= da.nr).any() or has_duplicates(dpos):
        return 0
    pgmap = k.pgmaps.get(r.pgmap_id)
    if pgmap is None or pgmap.type != MEMORY_DEVICE_COHERENT:
        return 0
    if (da.pgmap[dpos] != r.pgmap_id).any():
        return 0
    head = np.uint32(PG_head)
    if (sa.flags[spos] & head).any() or (sa.head_off[spos] != 0).any():
        return 0
    if (da.flags[dpos] & head).any() or (da.head_off[dpos] != 0).any():
        return 0
    if (sa._refcount[spos] != 1).any():
        return 0  # some slot's folio_migrate_mapping returns -EAGAIN
    folio_migrate_mapping_pages(da, dpos, sa, spos)
    folio_migrate_flags_pages(da, dpos, sa, spos)
    return m

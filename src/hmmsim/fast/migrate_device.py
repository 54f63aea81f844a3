"""Bulk forms of the loops of mm/migrate_device.py (not kernel code).

Each function is offered one window by the reference loop it shadows and
either handles it (returning how many entries, slots or pages it handled)
or declines (0, or ([], False) for the finalize pass):

- `migrate_vma_collect_ptes`: the leading run of common PTEs of one table in
  migrate_vma_collect_pmd;
- `migrate_device_unmap`: migrate_device_unmap for a window whose every slot
  is the common case;
- `migrate_vma_pages`: migrate_vma_pages (folio_migrate_mapping and
  folio_migrate_flags per slot) likewise;
- `migrate_vma_finalize_remove`: remove_migration_ptes() of
  __migrate_device_finalize for a whole window, and the per-slot
  unlock/put tail when there is no hole slot.

Every one declines unless Kernel.fastpath (default scheduler, no known bug,
no fault injection), no fault page, and a run long enough to pay off (8).
Words are built with the array forms of include/'s encoders; the first new
word of a run is checked against the reference builder (passed in through
`Reference`) and a mismatch raises KernelBug.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

from hmmsim.bug import KernelBug
from hmmsim.fast.arrays import (
    distinct_values,
    has_duplicates,
    sliceable,
    slot_words,
    store_collected_run,
)
from hmmsim.include.memremap import MEMORY_DEVICE_COHERENT, MEMORY_DEVICE_PRIVATE
from hmmsim.include.migrate import (
    MIGRATE_PFN_COMPOUND,
    MIGRATE_PFN_DEVICE_PRIVATE,
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_VALID,
    MIGRATE_PFN_WRITE,
    MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
    MIGRATE_VMA_SELECT_SYSTEM,
    migrate_pfn_array,
    migrate_pfn_to_pfn_array,
)
from hmmsim.include.mm import GUP_PIN_COUNTING_BIAS
from hmmsim.include.mm_types import (
    FOLIO_MAPPING_ANON,
    Page,
    PageArrays,
    PG_anon_exclusive,
    PG_head,
    PG_locked,
    PG_lru,
    vma_is_anonymous,
    vma_pages,
)
from hmmsim.include.pgtable import (
    pfn_pte_array,
    pte_dirty,
    pte_dirty_array,
    pte_none_array,
    pte_pfn_array,
    pte_present,
    pte_present_array,
    pte_protnone,
    pte_protnone_array,
    pte_soft_dirty,
    pte_soft_dirty_array,
    pte_special_array,
    pte_swp_mksoft_dirty,
    pte_swp_mksoft_dirty_array,
    pte_swp_mkuffd_wp,
    pte_swp_mkuffd_wp_array,
    pte_swp_soft_dirty,
    pte_swp_soft_dirty_array,
    pte_swp_uffd_wp,
    pte_swp_uffd_wp_array,
    pte_uffd_wp,
    pte_uffd_wp_array,
    pte_write_array,
    pte_young,
    pte_young_array,
)
from hmmsim.include.swapops import (
    SWP_MIG_DIRTY,
    SWP_MIG_YOUNG,
    is_swap_pte_array,
    softleaf_from_pte_array,
    swp_entry_to_pte_array,
)
from hmmsim.kconfig import DEVICE_PRIVATE_BASE, PAGE_SHIFT, PAGE_SIZE, PMD_SHIFT
from hmmsim.mm.page_batch import (
    folio_add_anon_rmap_pte_pages,
    folio_add_lru_pages,
    folio_clear_lru_pages,
    folio_get_pages,
    folio_lock_pages,
    folio_mark_dirty_pages,
    folio_migrate_flags_pages,
    folio_migrate_mapping_pages,
    folio_put_testzero_pages,
    folio_remove_rmap_pte_pages,
    folio_try_share_anon_rmap_pte_pages,
    folio_unlock_pages,
)

#: shortest run worth a bulk pass
MIN_RUN = 8


@dataclass(frozen=True, slots=True)
class Reference:
    """The per-entry operations of mm/ a fast function borrows.

    fast/ never imports mm/ (docs/design.md); mm/migrate_device.py builds
    one of these from its own imports and passes it with each offer.
    """

    #: mm/migrate.py: the page a migrate PFN names (None without VALID)
    migrate_pfn_to_page: Callable[..., Any]
    #: mm/migrate.py: migrate_pfn() of a page (the spot-check's reference)
    migrate_pfn_from_page: Callable[[Any], int]
    #: mm/migrate.py: the migration entry collect builds for a page
    make_migration_entry_for: Callable[..., int]
    #: mm/migrate.py: the word remove_migration_pte() writes
    migration_pte_restored: Callable[..., int]
    #: mm/pgtable.py: (pmdp, ptep) of an address without allocating
    walk_pte: Callable[[Any, int], tuple[int | None, int | None]]
    #: mm/pgtable.py: the lock of a PTE table
    pte_lockptr: Callable[[Any, int], Any]
    #: mm/memremap.py: free order-0 device folios a[idx] in order (batched)
    free_zone_device_folios_order0: Callable[[Any, Any, Any], None]


I64Array: TypeAlias = NDArray[np.int64]
U64Array: TypeAlias = NDArray[np.uint64]
BoolArray: TypeAlias = NDArray[np.bool_]


def _offered(k: Any, fault_page: Any) -> bool:
    return bool(k.fastpath) and fault_page is None


def _window_pages(ref: Reference, k: Any, vals: U64Array) -> tuple[PageArrays, I64Array] | None:
    """(arrays, index array) of the pages that migrate PFNs vals name, or None.

    None unless every value is VALID and names a page of one PageArrays (one
    memory range) the way migrate_pfn_to_page() would resolve it.
    """
    first = ref.migrate_pfn_to_page(int(vals[0]), k=k)
    if first is None or not (vals & np.uint64(MIGRATE_PFN_VALID)).all():
        return None
    dp = vals & np.uint64(MIGRATE_PFN_DEVICE_PRIVATE)
    if k.config.has("c") and (dp != dp[0]).any():
        return None  # mixed offset/PFN spaces
    a = first.a
    idx = migrate_pfn_to_pfn_array(vals)
    # the first value resolves to first.i, so idx + shift is the index for all
    pos = idx + (first.i - int(idx[0]))
    if (pos < 0).any() or (pos >= a.nr).any():
        return None
    return a, pos


def _swap_index_base(a: PageArrays) -> int:
    """What page_swp_index() adds to a page's position in `a`: its PFN base,
    or its device-private offset base (series (c)'s own index space)."""
    return a.base - DEVICE_PRIVATE_BASE if a.base >= DEVICE_PRIVATE_BASE else a.base


def _order0_locked(a: PageArrays, pos: I64Array) -> bool:
    fl = a.flags[pos]
    return bool(
        ((fl & np.uint32(PG_head | PG_locked)) == PG_locked).all()
        and (a.head_off[pos] == 0).all()
        and (a._refcount[pos] > 0).all()
    )


# ----------------------------------------------------------------------------------------
# collect


def _collectable(a: PageArrays, pos: I64Array) -> BoolArray:
    """Per page: order-0, unlocked, referenced, mapped, anon, and not pinned
    if anon-exclusive (the reference path's share check would fail)."""
    fl = a.flags[pos]
    ref = a._refcount[pos]
    ok = (
        ((fl & np.uint32(PG_head | PG_locked)) == 0)
        & (a.head_off[pos] == 0)
        & (ref > 0)
        & (a._mapcount[pos] >= 0)
        & ((a.mapping[pos] & np.uint32(FOLIO_MAPPING_ANON)) != 0)
    )
    excl = (fl & np.uint32(PG_anon_exclusive)) != 0
    collectable: BoolArray = ok & ~(excl & (ref + 1 >= GUP_PIN_COUNTING_BIAS))
    return collectable


def migrate_vma_collect_ptes(
    ref: Reference, migrate: Any, vma: Any, ptep: int, addr: int, end: int
) -> int:
    """Collect the leading run of common PTEs of [addr, end) in one pass.

    Returns how many PTEs (from ptep on) it consumed; the per-entry loop of
    migrate_vma_collect_pmd goes on from there, so every uncommon entry, and
    everything after it, still takes the reference path. Common, and done
    exactly as the per-entry loop does them one by one:

    - none (anon vma): src MIGRATE, counted in cpages;
    - the zero page (SELECT_SYSTEM): the same;
    - a present (not PROT_NONE), non-special PTE of an order-0 anon system
      RAM page (SELECT_SYSTEM) that is unlocked, referenced, mapped, and not
      pinned if anon-exclusive;
    - a device-private entry of an order-0 page of this pgmap_owner
      (SELECT_DEVICE_PRIVATE), with the same page conditions.

    A page is locked, loses PageAnonExclusive and one PTE mapping, is marked
    dirty from a dirty PTE, keeps its reference count (the walk's get and put
    cancel), and its PTE becomes the migration entry make_migration_entry_for
    would build (type from write/exclusive, A/D bits, soft-dirty and uffd-wp
    carried). Context: the PTE lock is held (by the caller).
    """
    mm = vma.vm_mm
    k = mm.k
    n = (end - addr) >> PAGE_SHIFT
    src, dst = migrate.src, migrate.dst
    lo = migrate.npages
    if (
        n < MIN_RUN
        or not _offered(k, migrate.fault_page)
        or lo + n > min(len(src), len(dst))
        or not (sliceable(src) and sliceable(dst))
    ):
        return 0
    u64 = np.uint64
    swp = k.swp
    flags = migrate.flags
    words = k.mem.ram.words
    table, col = ptep >> PAGE_SHIFT, (ptep >> 3) & 511
    pte = words[table, col : col + n]
    # PROT_NONE entries are pte_present() but left to the reference loop
    present = pte_present_array(pte) & ~pte_protnone_array(pte)
    none = pte_none_array(pte)
    pfn = pte_pfn_array(pte)
    zero = present & (pfn == k.mem.zero_pfn)
    ram = k.mem.ram.pages
    kind = np.zeros(n, dtype=np.int8)  # 0 uncommon, 1 hole-like, 2 RAM page, 3 device-private
    if vma_is_anonymous(vma):
        kind[none] = 1
    if flags & MIGRATE_VMA_SELECT_SYSTEM:
        kind[zero] = 1
        kind[present & ~zero & ~pte_special_array(pte) & (pfn < ram.nr)] = 2
    entries = dpos = dpa = None
    if flags & MIGRATE_VMA_SELECT_DEVICE_PRIVATE:
        entries = softleaf_from_pte_array(pte)  # 0 where not a swap PTE
        dpos = np.full(n, -1, dtype=np.int64)
        dev = is_swap_pte_array(pte) & swp.softleaf_is_device_private_array(entries)
        if dev.any():
            j0 = int(np.flatnonzero(dev)[0])
            page0 = k.softleaf_to_page(int(entries[j0]))
            dpa = page0.a
            # every device-private entry resolves like the first (one space, one range)
            dpfn = swp.softleaf_to_pfn_array(entries[dev])
            dpos[dev] = dpfn + (page0.i - int(dpfn[0]))
            dpos_ok = dev & (dpos >= 0) & (dpos < dpa.nr)
            pg = dpa.pgmap[np.where(dpos_ok, dpos, 0)]
            pgmap = k.pgmaps.get(int(dpa.pgmap[page0.i]))
            if pgmap is not None and pgmap.owner is migrate.pgmap_owner:
                kind[dpos_ok & (pg == dpa.pgmap[page0.i])] = 3
    # the leading run of common entries, then of pages that pass the page checks
    common = kind != 0
    run = n if common.all() else int(np.argmin(common))
    if run == 0:
        return 0
    kind = kind[:run]
    good = np.ones(run, dtype=bool)
    is_ram = kind == 2
    is_dev = kind == 3
    groups: list[tuple[BoolArray, PageArrays, I64Array]] = [(is_ram, ram, pfn)]
    if dpa is not None and dpos is not None:  # else no entry is kind 3
        groups.append((is_dev, dpa, dpos))
    for sel, a, pos in groups:
        if not sel.any():
            continue
        pos = pos[:run]
        good[np.flatnonzero(sel)[~_collectable(a, pos[sel])]] = False
        if has_duplicates(pos[sel]):
            return 0
    if not good.all():
        run = int(np.argmin(good))
        if run == 0:
            return 0
        kind, is_ram, is_dev = kind[:run], is_ram[:run], is_dev[:run]
    pte = pte[:run].copy()
    out = np.zeros(run, dtype=np.uint64)
    out[kind == 1] = MIGRATE_PFN_MIGRATE
    new = pte.copy()
    conv = np.flatnonzero(kind >= 2)
    check = None  # (slot, page view, old PTE, anon-exclusive before) of one converted entry
    if len(conv):
        j = int(conv[0])
        if kind[j] == 2:
            a, i = ram, int(pfn[j])
        else:
            assert dpa is not None and dpos is not None  # kind 3 comes with both
            a, i = dpa, int(dpos[j])
        check = (j, Page(k, a, i), int(pte[j]), bool(a.flags[i] & PG_anon_exclusive))
    converts: list[tuple[BoolArray, PageArrays, I64Array, bool]] = [
        (is_ram, ram, pfn[:run][is_ram], True)
    ]
    if dpa is not None and dpos is not None:
        converts.append((is_dev, dpa, dpos[:run][is_dev], False))
    for sel, a, pos, is_present in converts:
        if not sel.any():
            continue
        old = pte[sel]
        fl = a.flags[pos]
        excl = (fl & np.uint32(PG_anon_exclusive)) != 0
        index = (pos + _swap_index_base(a)).astype(np.uint64)  # page_swp_index()
        if is_present:
            write = pte_write_array(old)
            young = pte_young_array(old)
            dirty = pte_dirty_array(old)
            soft = pte_soft_dirty_array(old)
            uffd = pte_uffd_wp_array(old)
            mig = (
                swp.SWP_MIGRATION_WRITE,
                swp.SWP_MIGRATION_READ_EXCLUSIVE,
                swp.SWP_MIGRATION_READ,
            )
            mflag = 0
        else:
            assert entries is not None  # SELECT_DEVICE_PRIVATE decoded them
            write = swp.softleaf_is_device_private_write_array(entries[:run][sel])
            young = dirty = np.zeros(len(old), dtype=bool)
            soft = pte_swp_soft_dirty_array(old)
            uffd = pte_swp_uffd_wp_array(old)
            if k.config.has("b"):
                # series (b): a device-private page gets its own migration types
                mig = (
                    swp.SWP_MIGRATION_DEVICE_WRITE,
                    swp.SWP_MIGRATION_DEVICE_READ_EXCLUSIVE,
                    swp.SWP_MIGRATION_DEVICE_READ,
                )
            else:
                mig = (
                    swp.SWP_MIGRATION_WRITE,
                    swp.SWP_MIGRATION_READ_EXCLUSIVE,
                    swp.SWP_MIGRATION_READ,
                )
            # series (a): a device-private slot is flagged as such
            mflag = MIGRATE_PFN_DEVICE_PRIVATE if k.config.has("a") else 0
        etype = np.where(write, mig[0], np.where(excl, mig[1], mig[2]))
        entry = swp.swp_entry_array(etype, index)
        entry = np.where(young, swp.make_migration_entry_young_array(entry), entry)
        entry = np.where(dirty, swp.make_migration_entry_dirty_array(entry), entry)
        swp_pte = swp_entry_to_pte_array(entry)
        swp_pte = np.where(soft, pte_swp_mksoft_dirty_array(swp_pte), swp_pte)
        swp_pte = np.where(uffd, pte_swp_mkuffd_wp_array(swp_pte), swp_pte)
        new[sel] = swp_pte
        mpfn = migrate_pfn_array(index) | u64(MIGRATE_PFN_MIGRATE | mflag)
        out[sel] = np.where(write, mpfn | u64(MIGRATE_PFN_WRITE), mpfn)
        # struct page effects: locked, no longer exclusive, dirty from a
        # dirty PTE, one mapping less
        folio_lock_pages(a, pos)
        folio_try_share_anon_rmap_pte_pages(a, pos)
        if is_present:
            folio_mark_dirty_pages(a, pos[dirty])
        folio_remove_rmap_pte_pages(a, pos)
    if check is not None:
        _check_collect(ref, check, int(new[check[0]]), int(out[check[0]]))
    words[table, col : col + run] = new
    migrate.cpages += run
    store_collected_run(src, dst, lo, out)
    migrate.npages += run
    return run


def _check_collect(ref: Reference, check: tuple[int, Page, int, bool], new: int, out: int) -> None:
    """The first converted entry against the per-entry builder (the tail of
    migrate_vma_collect_install)."""
    _, page, old, excl = check
    present = pte_present(old)
    entry = ref.make_migration_entry_for(
        page,
        write=bool(out & MIGRATE_PFN_WRITE),
        anon_exclusive=excl,
        young=present and pte_young(old),
        dirty=present and pte_dirty(old),
    )
    want = page.k.swp.swp_entry_to_pte(entry)
    if pte_soft_dirty(old) if present else pte_swp_soft_dirty(old):
        want = pte_swp_mksoft_dirty(want)
    if pte_uffd_wp(old) if present else pte_swp_uffd_wp(old):
        want = pte_swp_mkuffd_wp(want)
    if want != new or ref.migrate_pfn_from_page(page) | MIGRATE_PFN_MIGRATE != (
        out & ~MIGRATE_PFN_WRITE
    ):
        raise KernelBug("fast migrate_vma_collect_ptes: a word differs from the reference")


# ----------------------------------------------------------------------------------------
# the device-range variants


def migrate_device_range_in_use(page_at: Any, npages: int) -> list[int] | None:
    """The slots of a device range whose page is in use, or None.

    migrate_device_range() visits every page; a free page (no reference) or
    a tail page gives a 0 slot. When all npages pages are in one struct-page
    array, one pass over its columns lists the others (referenced heads and
    order-0 pages), so the per-slot loop visits only them. None when the
    range spans arrays or is empty (the caller visits every slot). Not gated
    by Kernel.fastpath: it only skips slots that would give 0 without any
    lock, count or scheduler point.
    """
    if not npages:
        return None
    first = page_at(0)
    a = first.a
    if first.i + npages > a.nr or page_at(npages - 1).a is not a:
        return None
    sl = slice(first.i, first.i + npages)
    return [int(i) for i in np.nonzero((a._refcount[sl] > 0) & (a.head_off[sl] == 0))[0]]


# ----------------------------------------------------------------------------------------
# unmap


def migrate_device_unmap(
    ref: Reference, src_pfns: Any, busy: list[int], fault_page: Any, *, k: Any
) -> int:
    """migrate_device_unmap for a window where every slot is the common case.

    `busy` lists the non-zero slots. Returns the unmapped count, or 0
    (nothing done) unless: every page slot an order-0 folio of one memory
    range that collect left unmapped (no try_to_migrate needed), a system
    page on the LRU, and every page passing migrate_vma_check_page (so no
    slot is restored). Then, as the per-slot loop: system pages leave the
    LRU (isolation's reference replaces collect's, so the count is kept),
    hole slots with MIGRATE count too.
    """
    if not _offered(k, fault_page) or len(busy) < MIN_RUN:
        return 0
    sv = slot_words(src_pfns, busy)
    valid = (sv & np.uint64(MIGRATE_PFN_VALID)) != 0
    holes = int(((sv[~valid] & np.uint64(MIGRATE_PFN_MIGRATE)) != 0).sum())
    if not valid.any():
        return 0
    pages = _window_pages(ref, k, sv[valid])
    if pages is None:
        return 0
    a, pos = pages
    if has_duplicates(pos):
        return 0
    fl = a.flags[pos]
    refs = a._refcount[pos]
    if (
        (fl & np.uint32(PG_head)).any()
        or (a.head_off[pos] != 0).any()
        or (a._mapcount[pos] != -1).any()
        or (refs <= 0).any()
    ):
        return 0
    zone_device = bool(a.pgmap[pos[0]]) if a is not k.mem.ram.pages else False
    if (a.pgmap[pos] != a.pgmap[pos[0]]).any():
        return 0
    if not zone_device and ((fl & np.uint32(PG_lru)) == 0).any():
        return 0
    # migrate_vma_check_page: references beyond the walk's must be mappings
    m = a.mapping[pos].astype(np.int64)
    file_backed = (m != 0) & ((m & FOLIO_MAPPING_ANON) == 0)
    extra = 1 + (1 if zone_device else 0) + file_backed.astype(np.int64)
    if not ((refs.astype(np.int64) - extra) <= 0).all():
        return 0
    if not zone_device:
        folio_clear_lru_pages(a, pos)  # isolated; the collect reference is dropped
    return int(valid.sum()) + holes


# ----------------------------------------------------------------------------------------
# migrate_vma_pages


def migrate_vma_pages(ref: Reference, migrate: Any, busy: list[int]) -> int:
    """migrate_vma_pages for a window where every slot is the common case.

    `busy` lists the slots whose src or dst is non-zero. Returns how many it
    handled (all of them) or 0. The common case: no fault page, every busy
    slot a MIGRATE source page and a destination page, neither compound,
    both order-0, each side within one memory range; anon sources;
    destinations system RAM or device-private/coherent. Then per slot, as
    folio_migrate_mapping() and folio_migrate_flags() do: a source holding
    exactly the expected one reference hands its index and mapping to the
    destination, which gains its dirty/uptodate and anon-exclusive bits; any
    other source loses MIGRATE.
    """
    k = migrate.vma.vm_mm.k
    if not _offered(k, migrate.fault_page) or len(busy) < MIN_RUN:
        return 0
    u64 = np.uint64
    src, dst = migrate.src, migrate.dst
    sv = slot_words(src, busy)
    dv = slot_words(dst, busy)
    need = u64(MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE)
    if (
        ((sv & need) != need).any()
        or ((dv & u64(MIGRATE_PFN_VALID)) == 0).any()
        or ((sv | dv) & u64(MIGRATE_PFN_COMPOUND)).any()
    ):
        return 0
    s = _window_pages(ref, k, sv)
    d = _window_pages(ref, k, dv) if s is not None else None
    if s is None or d is None:
        return 0
    sa, si = s
    da, di = d
    if has_duplicates(si) or has_duplicates(di):
        return 0
    for a, pos in ((sa, si), (da, di)):
        if (a.flags[pos] & np.uint32(PG_head)).any() or (a.head_off[pos] != 0).any():
            return 0
    if ((sa.mapping[si] & np.uint32(FOLIO_MAPPING_ANON)) == 0).any():
        return 0
    pg = da.pgmap[di]
    if (pg != pg[0]).any():
        return 0
    if pg[0]:
        pgmap = k.pgmaps.get(int(pg[0]))
        if pgmap is None or pgmap.type not in (MEMORY_DEVICE_PRIVATE, MEMORY_DEVICE_COHERENT):
            return 0
    ok = sa._refcount[si] == 1  # folio_migrate_mapping(): 1 + extra_count, no mapping
    so, do = si[ok], di[ok]
    folio_migrate_mapping_pages(da, do, sa, so)
    folio_migrate_flags_pages(da, do, sa, so)
    for j in np.flatnonzero(~ok).tolist():
        i = busy[j]
        src[i] = int(src[i]) & ~MIGRATE_PFN_MIGRATE
    return len(busy)


# ----------------------------------------------------------------------------------------
# finalize


def migrate_vma_finalize_remove(
    ref: Reference, migrate: Any, busy: list[int]
) -> tuple[list[int], bool]:
    """remove_migration_ptes(src, dst) for a whole migrate window at once.

    Returns (slots done, whole): the per-entry finalize skips that one call
    for the slots done, and everything when whole (no hole slots: the
    unlock/put tail ran in bulk too, `_finalize_unlock_put`); ([], False)
    when the window is not entirely the common case, which is: no fault
    page, the default scheduler (no lock hooks to interleave), every busy
    slot with a source migrating to a destination, both order-0, locked and
    referenced; all sources of one anon_vma whose other vmas (split pieces,
    forks) do not span their index, each at its vma_address() under a PTE
    table whose lock is free, each PTE a migration entry naming its source;
    all destinations of one memory type.

    For those slots the per-entry path's rmap walk visits only this vma and
    rewrites exactly that PTE, taking a reference and a PTE mapping of the
    destination (exclusive unless the entry was a read one). The new words
    come from the reference migration_pte_restored() for each distinct
    combination of the entry's write, A/D and soft bits at index 0 (a
    template), plus the index: the PFN of a present PTE (pfn_pte), or the
    offset of a device-private entry, whose PTE form is XOR-linear in the
    offset (swp_entry_to_pte stores it inverted). Doing every slot's rewrite
    before the per-slot unlock/put loop is the same as interleaving them,
    since a slot's rewrite touches only its own PTE and destination page.
    """
    vma = migrate.vma
    mm = vma.vm_mm
    k = mm.k
    if not _offered(k, migrate.fault_page) or len(busy) < MIN_RUN:
        return [], False
    u64 = np.uint64
    sv = slot_words(migrate.src, busy)
    dv = slot_words(migrate.dst, busy)
    # slots without a source page (holes) have no migration entry to remove
    has_src = (sv & u64(MIGRATE_PFN_VALID)) != 0
    slots = np.asarray(busy, dtype=np.int64)[has_src]
    sv, dv = sv[has_src], dv[has_src]
    if len(slots) < MIN_RUN or not (sv & u64(MIGRATE_PFN_MIGRATE)).all():
        return [], False
    srcs = _window_pages(ref, k, sv)
    dsts = _window_pages(ref, k, dv) if srcs is not None else None
    if srcs is None or dsts is None:
        return [], False
    sa, si = srcs
    da, di = dsts
    if not (_order0_locked(sa, si) and _order0_locked(da, di)):
        return [], False
    if has_duplicates(si) or has_duplicates(di):
        return [], False
    # one anon_vma; the rmap walk's only stop for these pages is this vma
    m = sa.mapping[si]
    m0 = int(m[0])
    if not m0 & FOLIO_MAPPING_ANON or (m != m0).any():
        return [], False
    av = k.objects.get(m0 & ~FOLIO_MAPPING_ANON)
    if av is None or vma not in av.vmas:
        return [], False
    index = sa.index[si]
    lo, hi = int(index.min()), int(index.max())
    for v in av.vmas:
        # vma_address() of every slot: inside this vma, outside every other
        # (an order-0 page is inside v iff its index is in v's pgoff span)
        if v is not vma and v.vm_pgoff <= hi and lo < v.vm_pgoff + vma_pages(v):
            return [], False
    addr = vma.vm_start + ((index - vma.vm_pgoff) << PAGE_SHIFT)
    if (addr < vma.vm_start).any() or (addr + PAGE_SIZE > vma.vm_end).any():
        return [], False
    # destination kind, one for the window
    pg = da.pgmap[di]
    if (pg != pg[0]).any():
        return [], False
    dst_dp = bool(pg[0]) and k.pgmaps[int(pg[0])].type == MEMORY_DEVICE_PRIVATE
    # the PTE tables: one per PMD the window spans, none locked
    tables = np.empty(len(slots), dtype=np.int64)
    pmd_no = addr >> PMD_SHIFT
    for pno in distinct_values(pmd_no):
        _, ptep = ref.walk_pte(mm, pno << PMD_SHIFT)
        if ptep is None:
            return [], False  # no table, or a huge or non-present PMD
        if ref.pte_lockptr(mm, ptep).is_locked():
            return [], False
        tables[pmd_no == pno] = ptep >> PAGE_SHIFT
    col = (addr >> PAGE_SHIFT) & 511
    words = k.mem.ram.words
    pte = words[tables, col]
    if not is_swap_pte_array(pte).all():
        return [], False
    entries = softleaf_from_pte_array(pte)
    swp = k.swp
    if not swp.softleaf_is_migration_array(entries).all():
        return [], False
    src_dp_space = sa.base >= DEVICE_PRIVATE_BASE
    if k.config.has("c"):
        # the entry would resolve in the other index space
        if (swp.softleaf_is_migration_device_private_array(entries) != src_dp_space).any():
            return [], False
    elif src_dp_space:
        return [], False
    if (swp.softleaf_to_pfn_array(entries) != si + _swap_index_base(sa)).any():
        return [], False
    # the new words: a template per combination of entry bits, plus the index
    write = swp.softleaf_is_migration_write_array(entries)
    excl = ~swp.softleaf_is_migration_read_array(entries)
    young = swp.softleaf_is_migration_young_array(entries)
    dirty = swp.softleaf_is_migration_dirty_array(entries)
    code = (
        write.astype(np.int64)
        | (young.astype(np.int64) << 1)
        | (dirty.astype(np.int64) << 2)
        | (pte_swp_soft_dirty_array(pte).astype(np.int64) << 3)
        | (pte_swp_uffd_wp_array(pte).astype(np.int64) << 4)
    )
    prot = vma.vm_page_prot
    if not dst_dp and (not pte_present(prot) or pte_protnone(prot)):
        return [], False  # a PROT_NONE pfn_pte() inverts the PFN: not a template
    typ = swp.swp_type_array(entries)
    tmpl = np.zeros(32, dtype=np.uint64)
    for c in distinct_values(code):
        t = int(typ[code == c][0])  # a real type with this write bit
        entry = swp.swp_entry(t, (SWP_MIG_YOUNG if c & 2 else 0) | (SWP_MIG_DIRTY if c & 4 else 0))
        soft = pte_swp_mksoft_dirty(0) if c & 8 else 0
        soft = pte_swp_mkuffd_wp(soft) if c & 16 else soft
        tmpl[c] = ref.migration_pte_restored(swp, soft, entry, prot, dst_dp, 0)
    didx = (di + _swap_index_base(da)).astype(np.uint64)
    if dst_dp:
        # the offset's share of the word: swp_entry_to_pte(offset) ^ swp_entry_to_pte(0)
        new = tmpl[code] ^ swp_entry_to_pte_array(didx) ^ swp_entry_to_pte_array(u64(0))
    else:
        new = tmpl[code] | pfn_pte_array(didx, 0)
    # spot-check the first slot against the per-entry computation
    if int(new[0]) != ref.migration_pte_restored(
        swp, int(pte[0]), int(entries[0]), prot, dst_dp, int(didx[0])
    ):
        raise KernelBug("fast migrate_vma_finalize_remove: a word differs from the reference")
    words[tables, col] = new
    folio_get_pages(da, di)
    folio_add_anon_rmap_pte_pages(da, di, excl)
    if len(slots) == len(busy):
        # no hole slots: the rest of each slot's finalize in bulk as well
        _finalize_unlock_put(ref, k, sa, si, da, di)
        return slots.tolist(), True
    return slots.tolist(), False


def _finalize_unlock_put(
    ref: Reference, k: Any, sa: PageArrays, si: I64Array, da: PageArrays, di: I64Array
) -> None:
    """The per-slot tail of __migrate_device_finalize for migrated order-0 slots.

    Destinations in system RAM go on the LRU; sources and destinations are
    unlocked and lose the reference migration held. A destination stays
    referenced (it is mapped now); sources that drop to zero are freed one by
    one in slot order, as the per-slot loop frees them (a device page's free
    runs the driver's callback, whose free list is order-sensitive).
    """
    if not da.pgmap[di[0]]:
        folio_add_lru_pages(da, di)
    folio_unlock_pages(sa, si)
    folio_unlock_pages(da, di)
    gone = folio_put_testzero_pages(sa, si)
    folio_put_testzero_pages(da, di)  # mapped now: none reaches 0
    if sa is k.mem.ram.pages:
        k.mem.free_folios_order0(gone + sa.base)
        return
    if len(gone):
        ref.free_zone_device_folios_order0(k, sa, gone)

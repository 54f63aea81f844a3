"""Device memory migration: migrate_vma_* and migrate_device_*.

Models: mm/migrate_device.c @ torvalds/linux 0eaed89c18ae, with the THP
support of series (d) (merged) as in linux-mm 75515d8a: collect (holes,
zero page, present pages, device-private entries, huge PMDs), unmap
(isolation, try_to_migrate, the migrate_vma_check_page pin rule, restore),
migrate_vma_pages (hole insertion, THP split fallback, destination checks,
folio_migrate_mapping), finalize, and the pfn-range variants used for
eviction. Series (a)/(b)/(c) change only the encodings, through
`migrate_pfn_from_page`, `migrate_pfn_to_page` and the migration-entry
helpers in mm/migrate.py.

With series (d) off (and always in the KConfig.kernel "6.12" profile) the
collect is the code from before it, as in Linux 6.12 mm/migrate_device.c
migrate_vma_collect_pmd: MIGRATE_VMA_SELECT_COMPOUND means nothing (no
MIGRATE_PFN_COMPOUND, so no device THP and no device-private PMD is ever
made), a PMD-mapped THP is split (`_collect_thp_pre_d`) and a PTE-mapped
page of a large folio is not collected.

src/dst are arrays the caller owns (lists or NumPy uint64), updated in
place. The mmap_lock must be held for read across setup..finalize.
Differences from kernel: no LRU lists (PG_lru marks an isolatable folio),
no memcg charging, TLB flushes are implicit.

Speed: the loops here are the reference; each offers its window to
hmmsim/fast/migrate_device.py in one line (`fast_md.*`; the device-range
forms, eviction's migrate_device_range/pages/finalize without a migrate_vma,
in hmmsim/fast/migrate_device_range.py, `fast_mdr.*`; the collect of
device-coherent pages in hmmsim/fast/migrate_device_coherent.py,
`fast_mdc.*`), which handles a run
in bulk or declines (docs/design.md, "The reference code and the fast
layer"). Skipping those lines leaves the kernel's loops.
"""

from __future__ import annotations

from hmmsim.bug import KernelBug
from hmmsim.errno import EAGAIN, EINVAL, ENOENT
from hmmsim.fast import migrate_device as fast_md
from hmmsim.fast import migrate_device_coherent as fast_mdc
from hmmsim.fast import migrate_device_range as fast_mdr
from hmmsim.fast.arrays import busy_slots, sliceable, slot_words, store_slots  # noqa: F401
from hmmsim.include.migrate import (
    MIGRATE_PFN_COMPOUND,
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_WRITE,
    MIGRATE_VMA_SELECT_COMPOUND,
    MIGRATE_VMA_SELECT_DEVICE_COHERENT,
    MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
    MIGRATE_VMA_SELECT_SYSTEM,
    migrate_pfn_flags,
)
from hmmsim.include.mm import VM_HUGETLB, VM_SPECIAL, VM_WRITE
from hmmsim.include.mm_types import (
    MM_ANONPAGES,
    PageAnonExclusive,
    PG_locked,
    folio_get,
    folio_mapcount,
    folio_mapped,
    folio_mark_dirty,
    folio_nr_pages,
    folio_order,
    folio_page,
    folio_put,
    folio_ref_count,
    folio_test_anon,
    folio_test_large,
    page_folio,
    vma_is_anonymous,
)
from hmmsim.include.mmu_notifier import (
    MMU_NOTIFIER_RANGE_BLOCKABLE,
    MMU_NOTIFY_CLEAR,
    MMU_NOTIFY_MIGRATE,
    mmu_notifier_range,
)
from hmmsim.include.pgtable import (
    pfn_pte,
    pmd_leaf,
    pmd_none,
    pmd_present,
    pmd_trans_huge,
    pmd_write,
    pte_dirty,
    pte_mkdirty,
    pte_mkwrite_novma,
    pte_none,
    pte_pfn,
    pte_present,
    pte_soft_dirty,
    pte_swp_mksoft_dirty,
    pte_swp_mkuffd_wp,
    pte_swp_soft_dirty,
    pte_swp_uffd_wp,
    pte_uffd_wp,
    pte_write,
    pte_young,
)
from hmmsim.kconfig import HPAGE_PMD_NR, PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE
from hmmsim.locking import folio_lock, folio_trylock, folio_unlock
from hmmsim.mm import huge_memory
from hmmsim.mm.memory import is_zero_pfn, vm_normal_page
from hmmsim.mm.memremap import (
    folio_is_device_coherent,
    folio_is_device_private,
    folio_is_zone_device,
    free_zone_device_folios_order0,
    is_device_private_page,
    page_pgmap,
)
from hmmsim.mm.migrate import (
    folio_isolate_lru,
    folio_migrate_flags,
    folio_migrate_mapping,
    folio_putback_lru,
    make_device_private_entry_for,
    make_migration_entry_for,
    migrate_pfn,
    migrate_pfn_from_page,
    migrate_pfn_to_page,
    migration_pte_restored,
    remove_migration_ptes,
)
from hmmsim.mm.mmu_notifier import (
    mmu_notifier_invalidate_range_end,
    mmu_notifier_invalidate_range_start,
    notify_range,
)
from hmmsim.mm.pagewalk import mm_walk_ops, walk_page_range
from hmmsim.mm.pgtable import (
    pmd_lockptr,
    pmd_offset,
    pmdp_get,
    pte_alloc,
    pte_lockptr,
    pte_offset_map,
    ptep_get,
    ptep_get_and_clear,
    set_pmd_at,
    set_pte_at,
    walk_pte,
)
from hmmsim.mm.rmap import (
    RMAP_EXCLUSIVE,
    anon_vma_prepare,
    folio_add_new_anon_rmap,
    folio_remove_rmap_pte,
    folio_try_share_anon_rmap_pte,
    try_to_migrate,
)

# the per-entry operations the fast layer borrows (fast/ never imports mm/)
_FAST_REF = fast_md.Reference(
    migrate_pfn_to_page=migrate_pfn_to_page,
    migrate_pfn_from_page=migrate_pfn_from_page,
    make_migration_entry_for=make_migration_entry_for,
    migration_pte_restored=migration_pte_restored,
    walk_pte=walk_pte,
    pte_lockptr=pte_lockptr,
    free_zone_device_folios_order0=free_zone_device_folios_order0,
)

_FAST_RANGE_REF = fast_mdr.RangeReference(notify_range=notify_range, notify_clear=MMU_NOTIFY_CLEAR)


def thp_migration_supported() -> bool:
    """CONFIG_ARCH_ENABLE_THP_MIGRATION: always on for the modelled x86-64."""
    return True


def _rd(arr, i: int) -> int:
    return int(arr[i])


# ----------------------------------------------------------------------------------------
# collect


def _skip(busy: list[int], bi: int, limit: int) -> int:
    """Advance a position in `busy` past every index below limit."""
    while bi < len(busy) and busy[bi] < limit:
        bi += 1
    return bi


def _collect_skip(migrate, start: int, end: int) -> int:
    n = max(0, (end - start + PAGE_SIZE - 1) // PAGE_SIZE)
    lo = migrate.npages
    src, dst = migrate.src, migrate.dst
    if n > 1 and lo + n <= min(len(src), len(dst)) and sliceable(src) and sliceable(dst):
        # one slice store per array: the same words as the slot loop below
        for arr in (dst, src):
            arr[lo : lo + n] = [0] * n if isinstance(arr, list) else 0
        migrate.npages += n
        return 0
    for _ in range(start, end, PAGE_SIZE):
        migrate.dst[migrate.npages] = 0
        migrate.src[migrate.npages] = 0
        migrate.npages += 1
    return 0


def _select_compound(migrate, k) -> bool:
    """MIGRATE_VMA_SELECT_COMPOUND in effect: the flag came with series (d);
    without it (Linux 6.12 has no such flag) collect never makes compound slots."""
    return bool(migrate.flags & MIGRATE_VMA_SELECT_COMPOUND) and k.config.has("d")


def migrate_vma_collect_hole(start: int, end: int, depth: int, walk) -> int:
    """A missing table or empty PMD: anon holes may be populated by the device."""
    migrate = walk.private
    if not vma_is_anonymous(walk.vma):
        return _collect_skip(migrate, start, end)
    if (
        thp_migration_supported()
        and _select_compound(migrate, walk.mm.k)
        and start % PMD_SIZE == 0
        and end % PMD_SIZE == 0
    ):
        migrate.src[migrate.npages] = MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND
        migrate.dst[migrate.npages] = 0
        migrate.npages += 1
        migrate.cpages += 1
        # the rest of the range stays as holes in case a split is needed later
        return _collect_skip(migrate, start + PAGE_SIZE, end)
    for _ in range(start, end, PAGE_SIZE):
        migrate.src[migrate.npages] = MIGRATE_PFN_MIGRATE
        migrate.dst[migrate.npages] = 0
        migrate.npages += 1
        migrate.cpages += 1
    return 0


def migrate_vma_split_folio(folio, fault_page) -> int:
    """Split a large folio met by collect; the fault page's folio stays locked."""
    fault_folio = page_folio(fault_page) if fault_page is not None else None
    if folio != fault_folio:
        folio_get(folio)
        folio_lock(folio)
    ret = huge_memory.split_folio(folio)
    if ret:
        if folio != fault_folio:
            folio_unlock(folio)
            folio_put(folio)
        return ret
    if "split_fault_lock_handoff" in folio.k.bugs:
        # mutant (known-bugs 2): no hand-off; the lock and reference stay
        # on the old head even when the fault page is now in another folio
        if folio != fault_folio:
            folio_unlock(folio)
            folio_put(folio)
        return 0
    new_fault_folio = page_folio(fault_page) if fault_page is not None else None
    if new_fault_folio is None:
        folio_unlock(folio)
        folio_put(folio)
    elif folio != new_fault_folio:
        if new_fault_folio != fault_folio:
            folio_get(new_fault_folio)
            folio_lock(new_fault_folio)
        folio_unlock(folio)
        folio_put(folio)
    return 0


def migrate_vma_collect_huge_pmd(pmdp: int, start: int, end: int, walk, fault_folio) -> int:
    """A huge PMD (THP or device-private PMD): 0 done, -EAGAIN retry, -ENOENT use PTEs."""
    migrate = walk.private
    mm = walk.mm
    k = mm.k
    swp = k.swp
    ptl = pmd_lockptr(mm, pmdp)
    ptl.lock()
    pmd = pmdp_get(k, pmdp)
    write = 0
    if pmd_none(pmd):
        ptl.unlock()
        return migrate_vma_collect_hole(start, end, -1, walk)
    if pmd_trans_huge(pmd) and pmd_present(pmd) and not k.config.has("d"):
        return _collect_thp_pre_d(pmdp, pmd, start, end, walk, ptl)
    if pmd_trans_huge(pmd) and pmd_present(pmd):
        if not migrate.flags & MIGRATE_VMA_SELECT_SYSTEM:
            ptl.unlock()
            return _collect_skip(migrate, start, end)
        if huge_memory.is_huge_zero_pmd(k, pmd):
            ptl.unlock()
            return migrate_vma_collect_hole(start, end, -1, walk)
        from hmmsim.include.pgtable import pmd_pfn

        folio = page_folio(k.mem.pfn_to_page(pmd_pfn(pmd)))
        if pmd_write(pmd):
            write = MIGRATE_PFN_WRITE
    elif not pmd_present(pmd):
        entry = swp.softleaf_from_pmd(pmd)
        if not swp.softleaf_is_device_private(entry):
            ptl.unlock()
            return _collect_skip(migrate, start, end)
        folio = page_folio(k.softleaf_to_page(entry))
        if (
            not migrate.flags & MIGRATE_VMA_SELECT_DEVICE_PRIVATE
            or page_pgmap(folio).owner is not migrate.pgmap_owner
        ):
            ptl.unlock()
            return _collect_skip(migrate, start, end)
        if swp.softleaf_is_device_private_write(entry):
            write = MIGRATE_PFN_WRITE
    else:
        ptl.unlock()
        return -EAGAIN

    folio_get(folio)
    if folio != fault_folio and not folio_trylock(folio):
        ptl.unlock()
        folio_put(folio)
        return _collect_skip(migrate, start, end)

    if (
        thp_migration_supported()
        and _select_compound(migrate, k)
        and start % PMD_SIZE == 0
        and end % PMD_SIZE == 0
    ):
        migrate.src[migrate.npages] = (
            migrate_pfn_from_page(folio) | write | MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND
        )
        migrate.dst[migrate.npages] = 0
        migrate.npages += 1
        migrate.cpages += 1
        ret = huge_memory.set_pmd_migration_entry(walk.vma, pmdp, start, folio)
        if ret:
            migrate.npages -= 1
            migrate.cpages -= 1
            migrate.src[migrate.npages] = 0
            migrate.dst[migrate.npages] = 0
        else:
            _collect_skip(migrate, start + PAGE_SIZE, end)
            ptl.unlock()
            return 0
    ptl.unlock()
    if not folio_test_large(folio):
        return -ENOENT
    ret = huge_memory.split_folio(folio)
    if fault_folio != folio:
        folio_unlock(folio)
    folio_put(folio)
    if ret:
        return _collect_skip(migrate, start, end)
    if pmd_none(pmdp_get(k, pmdp)):
        return migrate_vma_collect_hole(start, end, -1, walk)
    return -ENOENT


def _collect_thp_pre_d(pmdp: int, pmd: int, start: int, end: int, walk, ptl) -> int:
    """A PMD-mapped THP before series (d): split it, then collect its PTEs.

    Linux 6.12 mm/migrate_device.c migrate_vma_collect_pmd (pmd_trans_huge
    branch), whatever the SELECT flags: the huge zero PMD is split into zero
    PTEs (split_huge_pmd); any other THP is locked with folio_trylock (busy:
    the range is skipped) and split_folio'd (failure: skipped). -ENOENT: go
    on with the PTE loop. Called with the PMD lock held; drops it. At the pin
    (series (d)) the THP is collected whole or split only where a
    destination is small, and the huge zero PMD is a hole; see
    migrate_vma_collect_huge_pmd.
    """
    migrate = walk.private
    k = walk.mm.k
    from hmmsim.include.pgtable import pmd_pfn

    folio = page_folio(k.mem.pfn_to_page(pmd_pfn(pmd)))
    if huge_memory.is_huge_zero_pmd(k, pmd):
        ptl.unlock()
        huge_memory.__split_huge_pmd(walk.vma, pmdp, start)
        return -ENOENT
    folio_get(folio)
    ptl.unlock()
    if not folio_trylock(folio):
        folio_put(folio)
        return _collect_skip(migrate, start, end)
    ret = huge_memory.split_folio(folio)
    folio_unlock(folio)
    folio_put(folio)
    if ret:
        return _collect_skip(migrate, start, end)
    return -ENOENT


#: migrate_vma_collect_pte() results that are not a slot value
_AGAIN = -1  # a large folio was split: take the PMD again (the kernel's "goto again")
_SKIP_REST = -2  # the split failed: the rest of the range is not collected


def migrate_vma_collect_pmd(pmdp: int, start: int, end: int, walk) -> int:
    """pmd_entry of the collect walk: one slot per page of [start, end).

    Kernel: mm/migrate_device.c migrate_vma_collect_pmd. A huge or
    non-present PMD goes to migrate_vma_collect_huge_pmd; otherwise one slot
    per PTE under the table lock (the body of the C's loop up to its "next"
    label is migrate_vma_collect_pte). The fast layer is offered the rest of
    the table first and takes a leading run of common entries, or none.
    """
    migrate = walk.private
    vma = walk.vma
    mm = vma.vm_mm
    k = mm.k
    fault_folio = page_folio(migrate.fault_page) if migrate.fault_page is not None else None
    addr = start
    while True:  # the kernel's "again" label
        pmd = pmdp_get(k, pmdp)
        if (pmd_trans_huge(pmd) and pmd_present(pmd)) or (not pmd_present(pmd)):
            ret = migrate_vma_collect_huge_pmd(pmdp, start, end, walk, fault_folio)
            if ret == -EAGAIN:
                continue
            if ret == 0:
                return 0
        ptep0 = pte_offset_map(k, pmdp_get(k, pmdp), start)
        if ptep0 is None:
            continue
        ptl = pte_lockptr(mm, ptep0)
        ptl.lock()
        ptep = ptep0 + ((addr - start) // PAGE_SIZE) * 8
        # offer the rest of this table to the fast layer; it takes a leading run or none
        n = fast_md.migrate_vma_collect_ptes(
            _FAST_REF, migrate, vma, ptep, addr, end
        ) or fast_mdc.migrate_vma_collect_coherent_ptes(_FAST_REF, migrate, vma, ptep, addr, end)
        addr, ptep = addr + n * PAGE_SIZE, ptep + n * 8
        while addr < end:
            mpfn = migrate_vma_collect_pte(migrate, vma, addr, ptep, ptl, fault_folio)
            if mpfn == _AGAIN:  # the lock was dropped to split a large folio
                break
            if mpfn == _SKIP_REST:
                return _collect_skip(migrate, addr, end)
            # next:
            _emit(migrate, mpfn)
            addr += PAGE_SIZE
            ptep += 8
        else:
            ptl.unlock()
            return 0


def _collect_large_folio(k, migrate, folio, ptl) -> int:
    """A PTE of a large folio in the collect loop: 0 (not collected), or
    _AGAIN / _SKIP_REST after dropping the lock to split it."""
    if not k.config.has("d"):
        return 0  # before (d): "FIXME support THP", not collected
    if "collect_skips_large_folio" in k.bugs:
        return 0  # mutant: skipped, not split (see hmmsim.mutants)
    ptl.unlock()
    if migrate_vma_split_folio(folio, migrate.fault_page):
        return _SKIP_REST
    return _AGAIN


def _folio_mapping_word(folio) -> int:
    """folio->mapping as stored (an object id, FOLIO_MAPPING_ANON for anon); 0 is NULL."""
    return int(folio.a.mapping[folio.i])


def migrate_vma_collect_pte(migrate, vma, addr: int, ptep: int, ptl, fault_folio) -> int:
    """One PTE of migrate_vma_collect_pmd: the slot value (its mpfn) to emit.

    Kernel: the body of mm/migrate_device.c migrate_vma_collect_pmd's PTE
    loop; each "goto next" is a return of the slot value. Returns _AGAIN or
    _SKIP_REST (negative, never a slot value) when a large folio had to be
    split (the PTE lock is then dropped). Context: the PTE lock is held.
    """
    k = vma.vm_mm.k
    swp = k.swp
    pte = ptep_get(k, ptep)
    if pte_none(pte):
        # an empty anon PTE is a hole the device may fill
        if vma_is_anonymous(vma):
            migrate.cpages += 1
            return MIGRATE_PFN_MIGRATE
        return 0
    if not pte_present(pte):
        # of the software entries only device-private ones can migrate
        # (swapped-out pages and other markers are left alone)
        entry = swp.softleaf_from_pte(pte)
        if not swp.softleaf_is_device_private(entry):
            return 0
        page = k.softleaf_to_page(entry)
        if (
            not migrate.flags & MIGRATE_VMA_SELECT_DEVICE_PRIVATE
            or page_pgmap(page).owner is not migrate.pgmap_owner
        ):
            return 0
        folio = page_folio(page)
        if folio_test_large(folio):
            return _collect_large_folio(k, migrate, folio, ptl)
        mpfn = migrate_pfn_from_page(page) | MIGRATE_PFN_MIGRATE
        if swp.softleaf_is_device_private_write(entry):
            mpfn |= MIGRATE_PFN_WRITE
    else:
        pfn = pte_pfn(pte)
        if is_zero_pfn(k, pfn) and migrate.flags & MIGRATE_VMA_SELECT_SYSTEM:
            # the shared zero page: a hole to the device
            migrate.cpages += 1
            return MIGRATE_PFN_MIGRATE
        page = vm_normal_page(vma, addr, pte)
        if page is not None and not folio_is_zone_device(page):
            if not migrate.flags & MIGRATE_VMA_SELECT_SYSTEM:
                return 0
        elif page is not None and folio_is_device_coherent(page):
            if (
                not migrate.flags & MIGRATE_VMA_SELECT_DEVICE_COHERENT
                or page_pgmap(page).owner is not migrate.pgmap_owner
            ):
                return 0
        if page is not None and folio_test_large(page_folio(page)):
            return _collect_large_folio(k, migrate, page_folio(page), ptl)
        mpfn = migrate_pfn_from_page(page) if page is not None else migrate_pfn(pfn)
        mpfn |= MIGRATE_PFN_MIGRATE
        if pte_write(pte):
            mpfn |= MIGRATE_PFN_WRITE
    # only pages with a mapping (anon or file) migrate; a special PTE has no page
    if page is None or not _folio_mapping_word(page_folio(page)):
        return 0
    if not migrate_vma_collect_install(vma, addr, ptep, page, mpfn, fault_folio):
        return 0
    migrate.cpages += 1
    return mpfn


def _emit(migrate, mpfn: int) -> None:
    migrate.dst[migrate.npages] = 0
    migrate.src[migrate.npages] = mpfn
    migrate.npages += 1


def migrate_vma_collect_install(vma, addr: int, ptep: int, page, mpfn: int, fault_folio) -> bool:
    """Lock page's folio and replace the entry at ptep by a migration entry.

    The per-entry tail of mm/migrate_device.c migrate_vma_collect_pmd, shared
    with series (e)'s unified walk (mm/hmm.c hmm_vma_handle_migrate_prepare
    does the same steps in the HMM walk): a reference, folio_trylock (not
    for the fault folio, already locked), the anon-exclusive share check
    (failure: the PTE is put back), the migration entry with the old entry's
    write (from mpfn's MIGRATE_PFN_WRITE), young, dirty, soft-dirty and
    uffd-wp bits, and the rmap removal. Context: the PTE lock is held.
    Returns True if the page is now collected (locked, unmapped here).
    """
    mm = vma.vm_mm
    swp = mm.k.swp
    folio = page_folio(page)
    folio_get(folio)
    if not (folio == fault_folio or folio_trylock(folio)):
        folio_put(folio)
        return False
    anon_exclusive = folio_test_anon(folio) and PageAnonExclusive(page)
    old = ptep_get_and_clear(mm, addr, ptep)
    if anon_exclusive and folio_try_share_anon_rmap_pte(folio, page):
        set_pte_at(mm, addr, ptep, old)
        if folio != fault_folio:
            folio_unlock(folio)
        folio_put(folio)
        return False
    present = pte_present(old)
    if present and pte_dirty(old):
        folio_mark_dirty(folio)
    entry = make_migration_entry_for(
        page,
        write=bool(mpfn & MIGRATE_PFN_WRITE),
        anon_exclusive=anon_exclusive,
        young=present and pte_young(old),
        dirty=present and pte_dirty(old),
    )
    swp_pte = swp.swp_entry_to_pte(entry)
    if present:
        if pte_soft_dirty(old):
            swp_pte = pte_swp_mksoft_dirty(swp_pte)
        if pte_uffd_wp(old):
            swp_pte = pte_swp_mkuffd_wp(swp_pte)
    else:
        if pte_swp_soft_dirty(old):
            swp_pte = pte_swp_mksoft_dirty(swp_pte)
        if pte_swp_uffd_wp(old):
            swp_pte = pte_swp_mkuffd_wp(swp_pte)
    set_pte_at(mm, addr, ptep, swp_pte)
    folio_remove_rmap_pte(folio, page, vma)
    folio_put(folio)
    return True


def migrate_vma_collect(migrate) -> None:
    """Walk [start, end) under one MMU_NOTIFY_MIGRATE notification (owner = pgmap_owner)."""
    mm = migrate.vma.vm_mm
    ops = mm_walk_ops(pmd_entry=migrate_vma_collect_pmd, pte_hole=migrate_vma_collect_hole)
    # notify_range's start/end without its generator (one per CPU fault on a device page)
    r = mmu_notifier_range(
        mm=mm,
        start=migrate.start,
        end=migrate.end,
        flags=MMU_NOTIFIER_RANGE_BLOCKABLE,
        event=MMU_NOTIFY_MIGRATE,
        owner=migrate.pgmap_owner,
    )
    hit = mmu_notifier_invalidate_range_start(r)
    try:
        walk_page_range(mm, migrate.start, migrate.end, ops, migrate)
    finally:
        mmu_notifier_invalidate_range_end(r, hit)
    migrate.end = migrate.start + (migrate.npages << PAGE_SHIFT)


# ----------------------------------------------------------------------------------------
# unmap


def migrate_vma_check_page(page, fault_page) -> bool:
    """False if the page holds references beyond its mappings (a pin)."""
    from hmmsim.mm.rmap import folio_mapping

    folio = page_folio(page)
    extra = 1 + (1 if page == fault_page else 0)
    if folio_is_zone_device(folio):
        extra += 1
    if folio_mapping(folio) is not None:
        extra += 1
    return folio_ref_count(folio) - extra <= folio_mapcount(folio)


def migrate_device_unmap(src_pfns, npages: int, fault_page, *, k) -> int:
    """Isolate and unmap every collected page; returns the slots still migrating."""
    busy = busy_slots(npages, src_pfns)
    if n := fast_md.migrate_device_unmap(_FAST_REF, src_pfns, busy, fault_page, k=k):
        return n  # the whole window, in bulk
    if n := fast_mdr.migrate_device_range_unmap(
        _FAST_REF, _FAST_RANGE_REF, src_pfns, busy, fault_page, k=k
    ):
        return n  # mapped device pages (a device range), in bulk
    fault_folio = page_folio(fault_page) if fault_page is not None else None
    restore = 0
    unmapped = 0
    skip_to = 0
    for i in busy:
        if i < skip_to:
            continue
        v = _rd(src_pfns, i)
        page = migrate_pfn_to_page(v, k=k)
        if page is None:
            if v & MIGRATE_PFN_MIGRATE:
                unmapped += 1
            continue
        folio = page_folio(page)
        nr = folio_nr_pages(folio)
        skip_to = i + nr
        if nr > 1:
            src_pfns[i] = _rd(src_pfns, i) | MIGRATE_PFN_COMPOUND
        if not folio_is_zone_device(folio):
            if not folio_isolate_lru(folio):
                src_pfns[i] = _rd(src_pfns, i) & ~MIGRATE_PFN_MIGRATE
                restore += 1
                continue
            folio_put(folio)  # the collect reference; isolation holds one now
        if k.fault_inject is not None:
            from hmmsim.fault_inject import inject_pin

            inject_pin(k, folio)
        if folio_mapped(folio):
            try_to_migrate(folio, 0)
        if folio_mapped(folio) or not migrate_vma_check_page(page, fault_page):
            if not folio_is_zone_device(folio):
                folio_get(folio)
                folio_putback_lru(folio)
            src_pfns[i] = _rd(src_pfns, i) & ~MIGRATE_PFN_MIGRATE
            restore += 1
            continue
        unmapped += 1
    for i in busy_slots(npages, src_pfns) if restore else ():
        if not restore:
            break
        v = _rd(src_pfns, i)
        page = migrate_pfn_to_page(v, k=k)
        if page is None or v & MIGRATE_PFN_MIGRATE:
            continue
        folio = page_folio(page)
        remove_migration_ptes(folio, folio, 0)
        src_pfns[i] = 0
        if fault_folio != folio:
            folio_unlock(folio)
        folio_put(folio)
        restore -= 1
    return unmapped


def migrate_vma_unmap(migrate) -> None:
    migrate.cpages = migrate_device_unmap(
        migrate.src, migrate.npages, migrate.fault_page, k=migrate.vma.vm_mm.k
    )


# ----------------------------------------------------------------------------------------
# setup


def migrate_vma_setup(args) -> int:
    """Collect and unmap [start, end) of args.vma for migration.

    Returns: 0 (also when nothing could be collected: inspect src[]), or
    -EINVAL for: no vma / hugetlb / VM_SPECIAL vma; nr_pages <= 0 (computed
    before start and end are masked to pages, as in the kernel); start or end
    outside the vma; src or dst missing; fault_page not a locked
    device-private page.
    Context: mmap_lock held for read.
    """
    nr_pages = (args.end - args.start) >> PAGE_SHIFT
    args.start &= PAGE_MASK
    args.end &= PAGE_MASK
    vma = args.vma
    if vma is None or vma.vm_flags & VM_HUGETLB or vma.vm_flags & VM_SPECIAL:
        return -EINVAL
    if nr_pages <= 0:
        return -EINVAL
    if args.start < vma.vm_start or args.start >= vma.vm_end:
        return -EINVAL
    if args.end <= vma.vm_start or args.end > vma.vm_end:
        return -EINVAL
    if args.src is None or args.dst is None:
        return -EINVAL
    if "device_fault_no_ref" in vma.vm_mm.k.bugs:
        args.fault_page = None  # mutant: migrate_vma had no fault_page before 16ce101db85d
    if args.fault_page is not None and not is_device_private_page(args.fault_page):
        return -EINVAL
    if args.fault_page is not None and not page_folio(args.fault_page).test(PG_locked):
        return -EINVAL
    if len(args.src) < nr_pages or len(args.dst) < nr_pages:
        raise ValueError(
            f"migrate_vma_setup: src/dst must hold {nr_pages} slots "
            f"(have {len(args.src)}/{len(args.dst)})"
        )
    if not vma.vm_mm.mmap_lock.is_locked():
        raise KernelBug("migrate_vma_setup: mmap_lock not held")
    if type(args.src) is list:  # the same stores, one slice
        args.src[:nr_pages] = [0] * nr_pages
    else:
        for i in range(nr_pages):
            args.src[i] = 0
    args.cpages = 0
    args.npages = 0
    if vma.vm_mm.k.config.has("e"):
        return _migrate_vma_setup_unified(args, nr_pages)
    migrate_vma_collect(args)
    if args.cpages:
        migrate_vma_unmap(args)
    return 0


#: Series (e): migrate_vma_setup also faults ("for the migrate_vma_setup()
#: call paths, a flag, MIGRATE_VMA_FAULT"). The RFC made it 1 << 3, which
#: series (d) (merged) gave to MIGRATE_VMA_SELECT_COMPOUND; the model uses the
#: next free bit. Only meaningful with series (e).
MIGRATE_VMA_FAULT = 1 << 4


def _migrate_vma_setup_unified(args, nr_pages: int) -> int:
    """migrate_vma_setup of series (e): the collect is hmm_range_fault's walk.

    As the series' migrate_vma_setup: an hmm_range without a notifier over
    [start, end), default_flags HMM_PFN_REQ_MIGRATE (| HMM_PFN_REQ_FAULT with
    MIGRATE_VMA_FAULT), dev_private_owner = pgmap_owner, migrate = args;
    hmm_range_fault walks once, collecting entry by entry
    (mm/hmm.c hmm_vma_handle_migrate_prepare); migrate_hmm_range_setup turns
    the words into src[] and runs the unmap step. The words live in a
    scratch array here (the series aliases them with src[]; the same slots
    are read then written, so the result is the same). Returns 0, or the
    walk's error (-ERANGE, or with MIGRATE_VMA_FAULT -EFAULT/-EPERM); src[]
    is set up either way, so finalize unlocks whatever was collected.
    """
    from hmmsim.include.hmm import hmm_range
    from hmmsim.mm.hmm import hmm_range_fault

    k = args.vma.vm_mm.k
    L = k.hmm
    flags = L.HMM_PFN_REQ_MIGRATE
    if args.flags & MIGRATE_VMA_FAULT:
        flags |= L.HMM_PFN_REQ_FAULT
    rng = hmm_range(
        notifier=None,
        start=args.start,
        end=args.end,
        hmm_pfns=[0] * nr_pages,
        default_flags=flags,
        dev_private_owner=args.pgmap_owner,
        migrate=args,
    )
    ret = hmm_range_fault(rng)
    migrate_hmm_range_setup(rng)
    return ret


# ----------------------------------------------------------------------------------------
# pages


def migrate_vma_insert_huge_pmd_page(migrate, addr: int, page, src, idx: int, pmdp: int) -> int:
    """Map a PMD-sized destination where a PMD-sized hole was; 0 even on abort."""
    vma = migrate.vma
    mm = vma.vm_mm
    k = mm.k
    folio = page_folio(page)
    if not (vma.vm_start <= addr and addr + PMD_SIZE <= vma.vm_end and addr % PMD_SIZE == 0):
        return -EINVAL
    anon_vma_prepare(vma)
    from hmmsim.mm.page_alloc import PhysMem

    if not folio_test_large(folio):
        PhysMem.prep_compound_page(folio.a, folio.i, huge_memory.HPAGE_PMD_ORDER)

    def abort() -> int:
        for j in range(HPAGE_PMD_NR):
            if idx + j < len(src):
                src[idx + j] = _rd(src, idx + j) & ~MIGRATE_PFN_MIGRATE
        return 0

    from hmmsim.mm.pgtable import alloc_table, free_table

    table = alloc_table(k)
    if table is None:
        return abort()
    if folio_is_device_private(folio):
        entry = k.swp.swp_entry_to_pmd(
            make_device_private_entry_for(page, write=bool(vma.vm_flags & VM_WRITE))
        )
    else:
        if folio_is_zone_device(folio) and not folio_is_device_coherent(folio):
            free_table(k, table)
            return abort()
        entry = huge_memory.mk_huge_pmd(folio, vma.vm_page_prot)
        if vma.vm_flags & VM_WRITE:
            from hmmsim.include.pgtable import pmd_mkdirty, pmd_mkwrite_novma

            entry = pmd_mkwrite_novma(pmd_mkdirty(entry))
    ptl = pmd_lockptr(mm, pmdp)
    ptl.lock()
    cur = pmdp_get(k, pmdp)
    flush = huge_memory.is_huge_zero_pmd(k, cur)
    if not flush and not pmd_none(cur):
        if "insert_huge_pmd_leak" in k.bugs:
            # mutant (known-bugs 6): the abort before unlock_abort/free_abort
            return abort()
        ptl.unlock()
        free_table(k, table)
        return abort()
    mm.rss_stat[MM_ANONPAGES] += HPAGE_PMD_NR
    folio_add_new_anon_rmap(folio, vma, addr, RMAP_EXCLUSIVE)
    folio_get(folio)
    if flush:
        free_table(k, table)  # the huge zero PMD already has its deposit
    else:
        huge_memory.pgtable_trans_huge_deposit(mm, pmdp, table)
    if not folio_is_zone_device(folio):
        from hmmsim.mm.migrate import folio_add_lru

        folio_add_lru(folio)
    set_pmd_at(mm, addr, pmdp, entry)
    ptl.unlock()
    k.stats["thp_fault_alloc"] += 1
    return 0


def migrate_vma_insert_page(migrate, addr: int, dst, src, idx: int) -> None:
    """Map a new page where collect found a hole or the zero page."""
    vma = migrate.vma
    mm = vma.vm_mm
    k = mm.k
    dval = _rd(dst, idx)
    page = migrate_pfn_to_page(dval, k=k)
    folio = page_folio(page)

    def abort() -> None:
        src[idx] = _rd(src, idx) & ~MIGRATE_PFN_MIGRATE

    if not vma_is_anonymous(vma):
        return abort()
    pmdp = pmd_offset(mm, addr, alloc=True)
    if pmdp is None:
        return abort()
    if thp_migration_supported() and dval & MIGRATE_PFN_COMPOUND:
        if migrate_vma_insert_huge_pmd_page(migrate, addr, page, src, idx, pmdp):
            return abort()
        return None
    pmd = pmdp_get(k, pmdp)
    if not pmd_none(pmd):
        if pmd_trans_huge(pmd) and pmd_present(pmd):
            if not huge_memory.is_huge_zero_pmd(k, pmd):
                return abort()
            huge_memory.__split_huge_pmd(vma, pmdp, addr)
        elif not pmd_present(pmd) or pmd_leaf(pmd):
            return abort()
    if not pte_alloc(mm, pmdp):
        return abort()
    anon_vma_prepare(vma)
    if folio_is_device_private(folio):
        entry = k.swp.swp_entry_to_pte(
            make_device_private_entry_for(page, write=bool(vma.vm_flags & VM_WRITE))
        )
    else:
        if folio_is_zone_device(folio) and not folio_is_device_coherent(folio):
            k.warn_once("insert-unsupported", "Unsupported ZONE_DEVICE page type.")
            return abort()
        entry = pfn_pte(page.pfn, vma.vm_page_prot)
        if vma.vm_flags & VM_WRITE:
            entry = pte_mkwrite_novma(pte_mkdirty(entry))
    ptep = pte_offset_map(k, pmdp_get(k, pmdp), addr)
    ptl = pte_lockptr(mm, ptep)
    ptl.lock()
    orig = ptep_get(k, ptep)
    if pte_present(orig):
        if not is_zero_pfn(k, pte_pfn(orig)):
            ptl.unlock()
            return abort()
    elif not pte_none(orig):
        ptl.unlock()
        return abort()
    mm.rss_stat[MM_ANONPAGES] += 1
    folio_add_new_anon_rmap(folio, vma, addr, RMAP_EXCLUSIVE)
    if not folio_is_zone_device(folio):
        from hmmsim.mm.migrate import folio_add_lru

        folio_add_lru(folio)
    folio_get(folio)
    if pte_present(orig):
        ptep_get_and_clear(mm, addr, ptep)
    set_pte_at(mm, addr, ptep, entry)
    ptl.unlock()
    src[idx] = MIGRATE_PFN_MIGRATE
    return None


def migrate_vma_split_unmapped_folio(migrate, idx: int, addr: int, folio) -> int:
    """A PMD-mapped source going to small destinations: split it, now unmapped."""
    k = folio.k
    folio_get(folio)
    huge_memory.split_huge_pmd_address(migrate.vma, addr, freeze=True)
    ret = huge_memory.folio_split_unmapped(folio)
    if ret:
        return ret
    v = _rd(migrate.src, idx) & ~MIGRATE_PFN_COMPOUND
    migrate.src[idx] = v
    flags = migrate_pfn_flags(v)
    base = migrate_pfn_to_page(v, k=k)
    for j in range(1, HPAGE_PMD_NR):
        migrate.src[idx + j] = migrate_pfn_from_page(folio_page(base, j)) | flags
    return 0


def __migrate_device_pages(src_pfns, dst_pfns, npages: int, migrate, *, k) -> None:
    from hmmsim.mm.rmap import folio_mapping

    r = None
    busy = busy_slots(npages, src_pfns, dst_pfns)
    bi = 0
    try:
        while bi < len(busy):
            i = busy[bi]
            bi += 1
            nr = 1
            dval = _rd(dst_pfns, i)
            sval = _rd(src_pfns, i)
            newpage = migrate_pfn_to_page(dval, k=k)
            page = migrate_pfn_to_page(sval, k=k)
            if newpage is None:
                src_pfns[i] = sval & ~MIGRATE_PFN_MIGRATE
                bi = _skip(busy, bi, i + nr)
                continue
            if page is None:
                if not sval & MIGRATE_PFN_MIGRATE:
                    bi = _skip(busy, bi, i + nr)
                    continue
                if migrate is None:
                    raise KernelBug("__migrate_device_pages: a hole without a migrate_vma")
                addr = migrate.start + i * PAGE_SIZE
                if r is None:
                    r = notify_range(
                        migrate.vma.vm_mm,
                        MMU_NOTIFY_MIGRATE,
                        addr,
                        migrate.end,
                        owner=migrate.pgmap_owner,
                        flags=0,
                    )
                    r.__enter__()
                if sval & MIGRATE_PFN_COMPOUND and not dval & MIGRATE_PFN_COMPOUND:
                    nr = HPAGE_PMD_NR
                    src_pfns[i] = sval & ~MIGRATE_PFN_COMPOUND
                for j in range(nr):
                    if i + j >= npages:
                        break
                    src_pfns[i + j] = _rd(src_pfns, i + j) | MIGRATE_PFN_MIGRATE
                    migrate_vma_insert_page(
                        migrate, addr + j * PAGE_SIZE, dst_pfns, src_pfns, i + j
                    )
                bi = _skip(busy, bi, i + nr)
                continue
            newfolio = page_folio(newpage)
            folio = page_folio(page)
            mapping = folio_mapping(folio)
            if thp_migration_supported():
                sval = _rd(src_pfns, i)
                if (
                    sval & MIGRATE_PFN_MIGRATE
                    and sval & MIGRATE_PFN_COMPOUND
                    and not (dval & MIGRATE_PFN_COMPOUND)
                ):
                    if migrate is None:
                        src_pfns[i] = sval & ~(MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND)
                        bi = _skip(busy, bi, i + nr)
                        continue
                    nr = 1 << folio_order(folio)
                    addr = migrate.start + i * PAGE_SIZE
                    if migrate_vma_split_unmapped_folio(migrate, i, addr, folio):
                        src_pfns[i] = sval & ~(MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND)
                        bi = _skip(busy, bi, i + nr)
                        continue
                elif (
                    sval & MIGRATE_PFN_MIGRATE
                    and dval & MIGRATE_PFN_COMPOUND
                    and not (sval & MIGRATE_PFN_COMPOUND)
                ):
                    # kernel quirk: the slot fails but the loop does not skip ahead
                    src_pfns[i] = sval & ~MIGRATE_PFN_MIGRATE
            if folio_is_device_private(newfolio) or folio_is_device_coherent(newfolio):
                if mapping is not None and not folio_test_anon(folio):
                    src_pfns[i] = _rd(src_pfns, i) & ~MIGRATE_PFN_MIGRATE
                    bi = _skip(busy, bi, i + nr)
                    continue
            elif folio_is_zone_device(newfolio):
                src_pfns[i] = _rd(src_pfns, i) & ~MIGRATE_PFN_MIGRATE
                bi = _skip(busy, bi, i + nr)
                continue
            extra_cnt = 1 if migrate is not None and migrate.fault_page == page else 0
            done = nr > 1 and fast_mdc.migrate_split_run_pages(
                k, src_pfns, dst_pfns, i, nr, npages, mapping, extra_cnt
            )
            for j in range(done, nr):
                if i + j >= npages:
                    break
                sf = page_folio(migrate_pfn_to_page(_rd(src_pfns, i + j), k=k))
                df = page_folio(migrate_pfn_to_page(_rd(dst_pfns, i + j), k=k))
                if folio_migrate_mapping(mapping, df, sf, extra_cnt):
                    src_pfns[i + j] = _rd(src_pfns, i + j) & ~MIGRATE_PFN_MIGRATE
                else:
                    folio_migrate_flags(df, sf)
            bi = _skip(busy, bi, i + nr)
    finally:
        if r is not None:
            r.__exit__(None, None, None)


def migrate_vma_pages(migrate) -> None:
    """Move struct page state from each source to its destination (or fill holes)."""
    k = migrate.vma.vm_mm.k
    for check in k.word_checks:
        check(k, "migrate", migrate.src, migrate.npages)
        check(k, "migrate", migrate.dst, migrate.npages)
    if fast_md.migrate_vma_pages(
        _FAST_REF, migrate, busy_slots(migrate.npages, migrate.src, migrate.dst)
    ):
        return  # the whole window, in bulk
    __migrate_device_pages(migrate.src, migrate.dst, migrate.npages, migrate, k=migrate.vma.vm_mm.k)


def migrate_device_pages(src_pfns, dst_pfns, npages: int, *, k) -> None:
    if fast_mdr.migrate_device_pages(
        _FAST_REF, src_pfns, dst_pfns, busy_slots(npages, src_pfns, dst_pfns), k=k
    ):
        return  # the whole window, in bulk
    __migrate_device_pages(src_pfns, dst_pfns, npages, None, k=k)


# ----------------------------------------------------------------------------------------
# finalize


def __migrate_device_finalize(
    src_pfns, dst_pfns, npages: int, fault_page, *, k, migrate=None
) -> None:
    fault_folio = page_folio(fault_page) if fault_page is not None else None
    busy = busy_slots(npages, src_pfns, dst_pfns)
    # the fast layer may rewrite the migration entries of the window (bulk), and
    # then also do every slot's unlock and put (whole)
    bulk, whole = (
        fast_md.migrate_vma_finalize_remove(_FAST_REF, migrate, busy)
        if migrate
        else fast_mdr.migrate_device_finalize_remove(_FAST_REF, src_pfns, dst_pfns, busy, k=k)
    )
    if whole:
        return
    bulk = set(bulk)
    for i in busy:
        sval = _rd(src_pfns, i)
        newpage = migrate_pfn_to_page(_rd(dst_pfns, i), k=k)
        page = migrate_pfn_to_page(sval, k=k)
        dst = page_folio(newpage) if newpage is not None else None
        if page is None:
            if dst is not None:
                if fault_folio == dst:
                    k.warn("migrate finalize: the fault folio was a destination")
                folio_unlock(dst)
                folio_put(dst)
            continue
        src = page_folio(page)
        if not sval & MIGRATE_PFN_MIGRATE or dst is None:
            if dst is not None:
                if fault_folio == dst:
                    k.warn("migrate finalize: the fault folio was a destination")
                folio_unlock(dst)
                folio_put(dst)
            dst = src
        if not folio_is_zone_device(dst):
            from hmmsim.mm.migrate import folio_add_lru

            folio_add_lru(dst)
        if i not in bulk:
            remove_migration_ptes(src, dst, 0)
        if fault_folio != src:
            folio_unlock(src)
        folio_put(src)
        if dst != src:
            if fault_folio == dst:
                k.warn("migrate finalize: the fault folio was a destination")
            folio_unlock(dst)
            folio_put(dst)


def migrate_vma_finalize(migrate) -> None:
    """Point every migration entry at the destination (or back at the source)."""
    __migrate_device_finalize(
        migrate.src,
        migrate.dst,
        migrate.npages,
        migrate.fault_page,
        k=migrate.vma.vm_mm.k,
        migrate=migrate,
    )


def migrate_device_finalize(src_pfns, dst_pfns, npages: int, *, k) -> None:
    __migrate_device_finalize(src_pfns, dst_pfns, npages, None, k=k)


# ----------------------------------------------------------------------------------------
# device-range variants


def migrate_device_pfn_lock(page) -> int:
    """A referenced, locked slot for a device page in use; 0 if free/tail/locked."""
    from hmmsim.include.mm_types import PageTail, folio_try_get

    if PageTail(page) or not folio_try_get(page):
        return 0
    if not folio_trylock(page):
        folio_put(page)
        return 0
    return migrate_pfn_from_page(page) | MIGRATE_PFN_MIGRATE


def _range_pages(k, src_pfns, npages: int, page_at) -> None:
    """Lock every in-use device page of the slots; free and tail pages give 0."""
    # for (i = 0; i < npages; i++) with the free pages' slots zeroed up front
    # when the fast layer can list the pages in use
    candidates = fast_md.migrate_device_range_in_use(page_at, npages)
    if candidates is None:
        candidates = range(npages)
    elif sliceable(src_pfns) and len(src_pfns) >= npages:  # the loop's stores at once
        src_pfns[:npages] = [0] * npages if isinstance(src_pfns, list) else 0
    else:
        for i in range(npages):
            src_pfns[i] = 0
    skip_to = 0
    for i in candidates:
        if i < skip_to:
            continue
        page = page_at(i)
        folio = page_folio(page)
        src_pfns[i] = migrate_device_pfn_lock(page)
        nr = folio_nr_pages(folio)
        if nr > 1:
            src_pfns[i] = _rd(src_pfns, i) | MIGRATE_PFN_COMPOUND
            for j in range(1, nr):
                if i + j < len(src_pfns):
                    src_pfns[i + j] = 0
            skip_to = i + nr
    migrate_device_unmap(src_pfns, npages, None, k=k)


def migrate_device_range(
    src_pfns, start: int, npages: int, *, k, device_private: bool = False
) -> int:
    """Collect the device pages [start, start+npages) for eviction; always 0.

    Free pages and tail pages give 0 slots. With series (c), device-private
    pages have no PFN: pass their device-private offsets and
    device_private=True (the series' drivers do the same through
    device_private_offset_to_page()).
    """
    from hmmsim.mm.migrate import index_to_page

    _range_pages(k, src_pfns, npages, lambda i: index_to_page(k, start + i, device_private))
    return 0


def migrate_device_pfns(src_pfns, npages: int, *, k, device_private: bool = False) -> int:
    """Like migrate_device_range for a list of (non-contiguous) device pages."""
    from hmmsim.mm.migrate import index_to_page

    raw = [_rd(src_pfns, i) for i in range(npages)]
    _range_pages(k, src_pfns, npages, lambda i: index_to_page(k, raw[i], device_private))
    return 0


def migrate_device_coherent_folio(folio) -> int:
    """Move a coherent device page to system RAM before a long-term pin; 0 or -EBUSY."""
    from hmmsim.errno import EBUSY

    k = folio.k
    if folio_test_large(folio):
        k.warn("migrate_device_coherent_folio: large folio")
    folio_lock(folio)
    src = [migrate_pfn_from_page(folio) | MIGRATE_PFN_MIGRATE]
    dst = [0]
    migrate_device_unmap(src, 1, None, k=k)
    if not src[0] & MIGRATE_PFN_MIGRATE:
        return -EBUSY
    dfolio = k.mem.alloc_pages(0)
    if dfolio is not None:
        folio_lock(dfolio)
        dst[0] = migrate_pfn(dfolio.pfn)
    migrate_device_pages(src, dst, 1, k=k)
    if src[0] & MIGRATE_PFN_MIGRATE:
        k.mem.copy_frame(dfolio.pfn, folio.pfn)
    migrate_device_finalize(src, dst, 1, k=k)
    return 0 if src[0] & MIGRATE_PFN_MIGRATE else -EBUSY


def migrate_hmm_range_setup(range_) -> None:
    """Series (e): turn hmm_range_fault's HMM_PFN_MIGRATE output into src[].

    An entry without HMM_PFN_MIGRATE gives src = 0. MIGRATE with VALID gives
    migrate_pfn(pfn) | MIGRATE [| WRITE] [| COMPOUND]; MIGRATE without VALID
    is a hole or the zero page: src = MIGRATE [| COMPOUND]. cpages counts
    the MIGRATE entries; then the unmap step runs, as in migrate_vma_setup.
    The caller filled range.migrate's src/dst arrays, pgmap_owner and flags.
    """
    m = range_.migrate
    if m is None or m.vma is None:
        return
    k = m.vma.vm_mm.k
    L = k.hmm
    m.npages = (m.end - m.start) >> PAGE_SHIFT
    m.cpages = 0
    for i in range(m.npages):
        v = int(range_.hmm_pfns[i]) & ~L.HMM_PFN_INOUT_FLAGS
        m.dst[i] = 0
        if not v & L.HMM_PFN_MIGRATE:
            m.src[i] = 0
            continue
        m.cpages += 1
        if "hmm_zero_pfn0" in k.bugs and v == L.HMM_PFN_VALID | L.HMM_PFN_MIGRATE:
            v = L.HMM_PFN_MIGRATE  # mutant (9.4): the RFC's consumer, an exact compare
        if v & L.HMM_PFN_VALID:
            from hmmsim.mm.hmm import hmm_pfn_to_page

            src = migrate_pfn_from_page(hmm_pfn_to_page(k, v)) | MIGRATE_PFN_MIGRATE
            if v & L.HMM_PFN_WRITE:
                src |= MIGRATE_PFN_WRITE
        else:
            src = MIGRATE_PFN_MIGRATE
        if v & L.HMM_PFN_COMPOUND:
            src |= MIGRATE_PFN_COMPOUND
        m.src[i] = src
    if m.cpages:
        migrate_vma_unmap(m)

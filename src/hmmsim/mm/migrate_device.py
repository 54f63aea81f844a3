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
"""

from __future__ import annotations

from itertools import compress
from operator import or_

from hmmsim.bug import KernelBug
from hmmsim.errno import EAGAIN, EINVAL, ENOENT
from hmmsim.include.migrate import (
    MIGRATE_PFN_COMPOUND,
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_SHIFT,
    MIGRATE_PFN_VALID,
    MIGRATE_PFN_WRITE,
    MIGRATE_VMA_SELECT_COMPOUND,
    MIGRATE_VMA_SELECT_DEVICE_COHERENT,
    MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
    MIGRATE_VMA_SELECT_SYSTEM,
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
    vma_pages,
)
from hmmsim.include.mmu_notifier import MMU_NOTIFY_MIGRATE
from hmmsim.include.pgtable import (
    pfn_pte,
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
    remove_migration_ptes,
)
from hmmsim.mm.mmu_notifier import notify_range
from hmmsim.mm.page_alloc import distinct_values, has_duplicates
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
)
from hmmsim.mm.rmap import (
    RMAP_EXCLUSIVE,
    anon_vma_prepare,
    folio_add_new_anon_rmap,
    folio_remove_rmap_pte,
    folio_try_share_anon_rmap_pte,
    try_to_migrate,
)


def thp_migration_supported() -> bool:
    """CONFIG_ARCH_ENABLE_THP_MIGRATION: always on for the modelled x86-64."""
    return True


def _rd(arr, i: int) -> int:
    return int(arr[i])


def _busy(npages: int, *arrays) -> list[int]:
    """Indices < npages where any array is non-zero, in order.

    Every phase after collect does nothing for a slot whose src and dst are
    both 0, so the device-range paths (eviction over a whole 256 MiB chunk)
    visit only the busy slots. Same result as the per-slot loop.
    """
    import numpy as np

    # a driver's unsigned long[]: compress() walks the list in C (a THP
    # window is one busy slot in 512)
    if len(arrays) == 1 and type(arrays[0]) is list:
        return list(compress(range(npages), arrays[0][:npages]))
    if len(arrays) == 2 and type(arrays[0]) is list and type(arrays[1]) is list:
        a, b = arrays[0][:npages], arrays[1][:npages]
        if len(a) != len(b):
            raise ValueError("src and dst differ in length")
        return list(compress(range(npages), map(or_, a, b)))
    mask = None
    for arr in arrays:
        m = np.asarray(arr[:npages] if not isinstance(arr, np.ndarray) else arr[:npages]) != 0
        mask = m if mask is None else (mask | m)
    return np.nonzero(mask)[0].tolist() if mask is not None else []


# ----------------------------------------------------------------------------------------
# collect


def _skip(busy: list[int], bi: int, limit: int) -> int:
    """Advance a position in `busy` past every index below limit."""
    while bi < len(busy) and busy[bi] < limit:
        bi += 1
    return bi


def _sliceable(arr) -> bool:
    import numpy as np

    return isinstance(arr, list) or isinstance(arr, np.ndarray) and arr.ndim == 1


def _collect_skip(migrate, start: int, end: int) -> int:
    n = max(0, (end - start + PAGE_SIZE - 1) // PAGE_SIZE)
    lo = migrate.npages
    src, dst = migrate.src, migrate.dst
    if n > 1 and lo + n <= min(len(src), len(dst)) and _sliceable(src) and _sliceable(dst):
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


def migrate_vma_collect_pmd(pmdp: int, start: int, end: int, walk) -> int:
    """pmd_entry of the collect walk: one slot per page of [start, end)."""
    migrate = walk.private
    vma = walk.vma
    mm = vma.vm_mm
    k = mm.k
    swp = k.swp
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
        restart = False
        if k.fastpath:
            done = migrate_vma_collect_ptes_bulk(migrate, vma, ptep, addr, end)
            addr += done * PAGE_SIZE
            ptep += done * 8
        while addr < end:
            pte = ptep_get(k, ptep)
            mpfn = 0
            page = None
            if pte_none(pte):
                if vma_is_anonymous(vma):
                    mpfn = MIGRATE_PFN_MIGRATE
                    migrate.cpages += 1
                _emit(migrate, mpfn)
                addr += PAGE_SIZE
                ptep += 8
                continue
            if not pte_present(pte):
                entry = swp.softleaf_from_pte(pte)
                if not swp.softleaf_is_device_private(entry):
                    _emit(migrate, 0)
                    addr += PAGE_SIZE
                    ptep += 8
                    continue
                page = k.softleaf_to_page(entry)
                if (
                    not migrate.flags & MIGRATE_VMA_SELECT_DEVICE_PRIVATE
                    or page_pgmap(page).owner is not migrate.pgmap_owner
                ):
                    _emit(migrate, 0)
                    addr += PAGE_SIZE
                    ptep += 8
                    continue
                folio = page_folio(page)
                if folio_test_large(folio) and not k.config.has("d"):
                    _emit(migrate, 0)  # before (d): "FIXME support THP", not collected
                    addr += PAGE_SIZE
                    ptep += 8
                    continue
                if folio_test_large(folio) and "collect_skips_large_folio" in k.bugs:
                    _emit(migrate, 0)  # mutant: skipped, not split (see hmmsim.mutants)
                    addr += PAGE_SIZE
                    ptep += 8
                    continue
                if folio_test_large(folio):
                    ptl.unlock()
                    if migrate_vma_split_folio(folio, migrate.fault_page):
                        return _collect_skip(migrate, addr, end)
                    restart = True
                    break
                mpfn = migrate_pfn_from_page(page) | MIGRATE_PFN_MIGRATE
                if swp.softleaf_is_device_private_write(entry):
                    mpfn |= MIGRATE_PFN_WRITE
            else:
                pfn = pte_pfn(pte)
                if is_zero_pfn(k, pfn) and migrate.flags & MIGRATE_VMA_SELECT_SYSTEM:
                    migrate.cpages += 1
                    _emit(migrate, MIGRATE_PFN_MIGRATE)
                    addr += PAGE_SIZE
                    ptep += 8
                    continue
                page = vm_normal_page(vma, addr, pte)
                if page is not None and not folio_is_zone_device(page):
                    if not migrate.flags & MIGRATE_VMA_SELECT_SYSTEM:
                        _emit(migrate, 0)
                        addr += PAGE_SIZE
                        ptep += 8
                        continue
                elif page is not None and folio_is_device_coherent(page):
                    if (
                        not migrate.flags & MIGRATE_VMA_SELECT_DEVICE_COHERENT
                        or page_pgmap(page).owner is not migrate.pgmap_owner
                    ):
                        _emit(migrate, 0)
                        addr += PAGE_SIZE
                        ptep += 8
                        continue
                folio = page_folio(page) if page is not None else None
                if folio is not None and folio_test_large(folio) and not k.config.has("d"):
                    _emit(migrate, 0)  # before (d): PageTransCompound, not collected
                    addr += PAGE_SIZE
                    ptep += 8
                    continue
                if (
                    folio is not None
                    and folio_test_large(folio)
                    and "collect_skips_large_folio" in k.bugs
                ):
                    _emit(migrate, 0)  # mutant: skipped, not split (see hmmsim.mutants)
                    addr += PAGE_SIZE
                    ptep += 8
                    continue
                if folio is not None and folio_test_large(folio):
                    ptl.unlock()
                    if migrate_vma_split_folio(folio, migrate.fault_page):
                        return _collect_skip(migrate, addr, end)
                    restart = True
                    break
                mpfn = migrate_pfn_from_page(page) if page is not None else migrate_pfn(pfn)
                mpfn |= MIGRATE_PFN_MIGRATE
                if pte_write(pte):
                    mpfn |= MIGRATE_PFN_WRITE
            if page is None or not int(page_folio(page).a.mapping[page_folio(page).i]):
                _emit(migrate, 0)
                addr += PAGE_SIZE
                ptep += 8
                continue
            if not migrate_vma_collect_install(vma, addr, ptep, page, mpfn, fault_folio):
                mpfn = 0
            else:
                migrate.cpages += 1
            _emit(migrate, mpfn)
            addr += PAGE_SIZE
            ptep += 8
        if restart:
            continue
        ptl.unlock()
        return 0


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
    with notify_range(
        mm, MMU_NOTIFY_MIGRATE, migrate.start, migrate.end, owner=migrate.pgmap_owner, flags=0
    ):
        walk_page_range(mm, migrate.start, migrate.end, ops, migrate)
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
    if k.fastpath:
        bulk = migrate_device_unmap_bulk(src_pfns, npages, fault_page, k=k)
        if bulk is not None:
            return bulk
    fault_folio = page_folio(fault_page) if fault_page is not None else None
    restore = 0
    unmapped = 0
    skip_to = 0
    for i in _busy(npages, src_pfns):
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
    for i in _busy(npages, src_pfns) if restore else ():
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
        elif not pmd_present(pmd) or pmd & 0x80:
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
    flags = v & ((1 << MIGRATE_PFN_SHIFT) - 1)
    base = migrate_pfn_to_page(v, k=k)
    for j in range(1, HPAGE_PMD_NR):
        migrate.src[idx + j] = migrate_pfn_from_page(folio_page(base, j)) | flags
    return 0


def __migrate_device_pages(src_pfns, dst_pfns, npages: int, migrate, *, k) -> None:
    from hmmsim.mm.rmap import folio_mapping

    r = None
    busy = _busy(npages, src_pfns, dst_pfns)
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
            for j in range(nr):
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
    if k.fastpath and migrate_vma_pages_bulk(migrate):
        return
    __migrate_device_pages(migrate.src, migrate.dst, migrate.npages, migrate, k=migrate.vma.vm_mm.k)


def migrate_device_pages(src_pfns, dst_pfns, npages: int, *, k) -> None:
    __migrate_device_pages(src_pfns, dst_pfns, npages, None, k=k)


# ----------------------------------------------------------------------------------------
# finalize


def __migrate_device_finalize(
    src_pfns, dst_pfns, npages: int, fault_page, *, k, migrate=None
) -> None:
    fault_folio = page_folio(fault_page) if fault_page is not None else None
    busy = _busy(npages, src_pfns, dst_pfns)
    bulk, whole = migrate_vma_finalize_remove_bulk(migrate, busy) if migrate else ([], False)
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
    import numpy as np

    first = page_at(0) if npages else None
    a = first.a if first is not None else None
    if a is not None and first.i + npages <= a.nr and page_at(npages - 1).a is a:
        # one contiguous struct-page array: only pages in use need the slow path
        sl = slice(first.i, first.i + npages)
        busy = np.nonzero((a._refcount[sl] > 0) & (a.head_off[sl] == 0))[0].tolist()
        for i in range(npages):
            src_pfns[i] = 0
        candidates = busy
    else:
        candidates = range(npages)
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


_ = (MIGRATE_PFN_VALID, ENOENT)


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


# ----------------------------------------------------------------------------------------
# issue 7: the finalize step's remove_migration_ptes() in bulk


def _window_pages(k, vals, n: int):
    """(arrays, index array) of the pages that migrate PFNs vals name, or None.

    None unless every value is VALID and names a page of one PageArrays (one
    memory range) the way migrate_pfn_to_page() would resolve it.
    """
    import numpy as np

    from hmmsim.include.migrate import MIGRATE_PFN_DEVICE_PRIVATE

    first = migrate_pfn_to_page(int(vals[0]), k=k)
    if first is None or not (vals & np.uint64(MIGRATE_PFN_VALID)).all():
        return None
    dp = vals & np.uint64(MIGRATE_PFN_DEVICE_PRIVATE)
    if k.config.has("c") and (dp != dp[0]).any():
        return None  # mixed offset/PFN spaces
    a = first.a
    idx = (vals >> np.uint64(MIGRATE_PFN_SHIFT)).astype(np.int64)
    # the first value resolves to first.i, so idx + shift is the index for all
    pos = idx + (first.i - int(idx[0]))
    if (pos < 0).any() or (pos >= a.nr).any():
        return None
    return a, pos


def _order0_locked(a, pos) -> bool:
    import numpy as np

    from hmmsim.include.mm_types import PG_head

    fl = a.flags[pos]
    return bool(
        ((fl & np.uint32(PG_head | PG_locked)) == PG_locked).all()
        and (a.head_off[pos] == 0).all()
        and (a._refcount[pos] > 0).all()
    )


def migrate_vma_finalize_remove_bulk(migrate, busy: list[int]) -> list[int]:
    """remove_migration_ptes(src, dst) for a whole migrate window at once.

    Returns (slots done, whole): the per-entry finalize skips that one call
    for the slots done, and everything when whole (no hole slots: the
    unlock/put tail ran in bulk too, _finalize_unlock_put_bulk); ([], False)
    when the window is not entirely the common case, which
    is: no fault page, the default scheduler (no lock hooks to interleave),
    every busy slot with a source migrating to a destination, both order-0,
    locked and referenced; all sources of one anon_vma whose other vmas
    (split pieces, forks) do not span their index, each at its vma_address()
    under a PTE table whose lock is free, each PTE a migration entry naming
    its source; all destinations of one memory type.

    For those slots the per-entry path's rmap walk visits only this vma and
    rewrites exactly that PTE, taking a reference and a PTE mapping of the
    destination (exclusive unless the entry was a read one). The new words
    come from migration_pte_restored() for each distinct combination of the
    entry's type, A/D and soft bits at index 0 (a template), plus the index:
    PFN bits of a present PTE, or the inverted offset field of a swap PTE,
    which is XOR-linear in the offset. Doing every slot's rewrite before the
    per-slot unlock/put loop is the same as interleaving them, since a slot's
    rewrite touches only its own PTE and destination page.
    Not a kernel function (issue 7); Kernel.fastpath turns it off.
    """
    import numpy as np

    from hmmsim.include.mm_types import Page as _Page
    from hmmsim.include.mm_types import PG_anon_exclusive
    from hmmsim.include.pgtable import (
        _PAGE_PRESENT,
        _PAGE_PROTNONE,
        _PAGE_PSE,
        table_entry_pfn,
    )
    from hmmsim.include.swapops import (
        _KEEP_PTE,
        _PAGE_SWP_SOFT_DIRTY,
        _PAGE_SWP_UFFD_WP,
        _TYPE_POS,
        SWP_MIG_DIRTY,
        SWP_MIG_YOUNG,
        SWP_OFFSET_SHIFT,
        SWP_PFN_MASK,
        SWP_TYPE_BITS,
        SWP_TYPE_SHIFT,
    )
    from hmmsim.mm.memremap import DEVICE_PRIVATE_BASE
    from hmmsim.mm.migrate import migration_pte_restored

    vma = migrate.vma
    mm = vma.vm_mm
    k = mm.k
    if not k.fastpath or migrate.fault_page is not None or len(busy) < 8:
        return [], False
    u64 = np.uint64
    sv = slot_words(migrate.src, busy)
    dv = slot_words(migrate.dst, busy)
    # slots without a source page (holes) have no migration entry to remove
    has_src = (sv & u64(MIGRATE_PFN_VALID)) != 0
    slots = np.asarray(busy, dtype=np.int64)[has_src]
    sv, dv = sv[has_src], dv[has_src]
    if len(slots) < 8 or not (sv & u64(MIGRATE_PFN_MIGRATE)).all():
        return [], False
    srcs = _window_pages(k, sv, len(slots))
    dsts = _window_pages(k, dv, len(slots)) if srcs is not None else None
    if dsts is None:
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
    if not m0 & 1 or (m != m0).any():
        return [], False
    av = k.objects.get(m0 & ~1)
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
    dst_dp = folio_is_device_private(_Page(k, da, int(di[0])))
    # the PTE tables
    tables = np.empty(len(slots), dtype=np.int64)
    pmd_no = addr >> 21
    for pno in distinct_values(pmd_no):
        pmdp = pmd_offset(mm, pno << 21)
        if pmdp is None:
            return [], False
        pmd = pmdp_get(k, pmdp)
        if not pmd & _PAGE_PRESENT or pmd & _PAGE_PSE:
            return [], False
        table = table_entry_pfn(pmd)
        if pte_lockptr(mm, table << PAGE_SHIFT).is_locked():
            return [], False
        tables[pmd_no == pno] = table
    col = (addr >> PAGE_SHIFT) & 511
    words = k.mem.ram.words
    pte = words[tables, col]
    if not ((pte != 0) & ((pte & u64(_PAGE_PRESENT | _PAGE_PROTNONE)) == 0)).all():
        return [], False
    swp = k.swp
    p = pte & u64(_KEEP_PTE)
    typ = (p >> u64(_TYPE_POS)).astype(np.int64)
    off = (~p << u64(SWP_TYPE_BITS)) >> u64(SWP_OFFSET_SHIFT)
    if not np.asarray(swp._migration, dtype=bool)[typ].all():
        return [], False
    mig_dev = np.asarray(getattr(swp, "_mig_dev", (False,) * 64), dtype=bool)[typ]
    src_dp_space = sa.base >= DEVICE_PRIVATE_BASE
    if k.config.has("c"):
        if (mig_dev != src_dp_space).any():
            return [], False  # the entry would resolve in the other index space
    elif src_dp_space:
        return [], False
    sbase = sa.base - DEVICE_PRIVATE_BASE if src_dp_space else sa.base
    if ((off & u64(SWP_PFN_MASK)).astype(np.int64) != si + sbase).any():
        return [], False
    # the new words: a template per combination of entry bits, plus the index
    write = np.asarray(swp._mig_write, dtype=bool)[typ]
    excl = ~np.asarray(swp._mig_read, dtype=bool)[typ]
    code = (
        write.astype(np.int64)
        | (((off & u64(SWP_MIG_YOUNG)) != 0).astype(np.int64) << 1)
        | (((off & u64(SWP_MIG_DIRTY)) != 0).astype(np.int64) << 2)
        | (((pte & u64(_PAGE_SWP_SOFT_DIRTY)) != 0).astype(np.int64) << 3)
        | (((pte & u64(_PAGE_SWP_UFFD_WP)) != 0).astype(np.int64) << 4)
    )
    prot = vma.vm_page_prot
    if not dst_dp and not prot & _PAGE_PRESENT:
        return [], False  # a PROT_NONE pfn_pte() inverts the PFN: not a template
    tmpl = np.zeros(32, dtype=np.uint64)
    for c in distinct_values(code):
        t = int(typ[code == c][0])  # a real type with this write bit
        entry = (t << SWP_TYPE_SHIFT) | (SWP_MIG_YOUNG if c & 2 else 0)
        entry |= SWP_MIG_DIRTY if c & 4 else 0
        soft = (_PAGE_SWP_SOFT_DIRTY if c & 8 else 0) | (_PAGE_SWP_UFFD_WP if c & 16 else 0)
        tmpl[c] = migration_pte_restored(swp, soft, entry, prot, dst_dp, 0)
    dbase = da.base - DEVICE_PRIVATE_BASE if da.base >= DEVICE_PRIVATE_BASE else da.base
    didx = (di + dbase).astype(np.uint64)
    if dst_dp:
        # swp_entry_to_pte() stores the offset inverted: XOR-linear in it
        new = tmpl[code] ^ ((didx << u64(SWP_OFFSET_SHIFT)) >> u64(SWP_TYPE_BITS))
    else:
        new = tmpl[code] | (didx << u64(PAGE_SHIFT))
    # spot-check the first slot against the per-entry computation
    e0 = int(((p[0] >> u64(_TYPE_POS)) << u64(SWP_TYPE_SHIFT)) | off[0])
    if int(new[0]) != migration_pte_restored(swp, int(pte[0]), e0, prot, dst_dp, int(didx[0])):
        raise KernelBug("migrate_vma_finalize_remove_bulk: template mismatch")
    words[tables, col] = new
    da._refcount[di] += 1
    da._mapcount[di] += 1
    da.flags[di[excl]] |= np.uint32(PG_anon_exclusive)
    if len(slots) == len(busy):
        # no hole slots: the rest of each slot's finalize in bulk as well
        _finalize_unlock_put_bulk(k, sa, si, da, di)
        return slots.tolist(), True
    return slots.tolist(), False


def _finalize_unlock_put_bulk(k, sa, si, da, di) -> None:
    """The per-slot tail of __migrate_device_finalize for migrated order-0 slots.

    Destinations in system RAM go on the LRU; sources and destinations are
    unlocked and lose the reference migration held. A destination stays
    referenced (it is mapped now); sources that drop to zero are freed one by
    one in slot order, as the per-slot loop frees them (a device page's free
    runs the driver's callback, whose free list is order-sensitive).
    """
    import numpy as np

    from hmmsim.include.mm_types import PG_lru

    if not da.pgmap[di[0]]:
        da.flags[di] |= np.uint32(PG_lru)
    unlock = ~np.uint32(PG_locked)
    sa.flags[si] &= unlock
    da.flags[di] &= unlock
    sa._refcount[si] -= 1
    da._refcount[di] -= 1
    gone = si[sa._refcount[si] == 0]
    if sa is k.mem.ram.pages:
        k.mem.free_folios_order0(gone + sa.base)
        return
    if len(gone):
        from hmmsim.mm.memremap import free_zone_device_folios_order0

        free_zone_device_folios_order0(k, sa, gone)


# ----------------------------------------------------------------------------------------
# issue 7: the collect walk over a PTE table in bulk


def migrate_vma_collect_ptes_bulk(migrate, vma, ptep: int, addr: int, end: int) -> int:
    """Collect the leading run of common PTEs of [addr, end) in one NumPy pass.

    Returns how many PTEs (from ptep on) it consumed; the per-entry loop of
    migrate_vma_collect_pmd goes on from there, so every uncommon entry, and
    everything after it, still takes the specification's path. Common, and
    done exactly as the per-entry loop does them one by one:

    - none (anon vma): src MIGRATE, counted in cpages;
    - the zero page (SELECT_SYSTEM): the same;
    - a present, non-special PTE of an order-0 anon system RAM page
      (SELECT_SYSTEM) that is unlocked, referenced, mapped, and not pinned if
      anon-exclusive;
    - a device-private entry of an order-0 page of this pgmap_owner
      (SELECT_DEVICE_PRIVATE), with the same page conditions.

    A page is locked, loses PageAnonExclusive and one PTE mapping, is marked
    dirty from a dirty PTE, keeps its reference count (the walk's get and put
    cancel), and its PTE becomes the migration entry make_migration_entry_for
    would build (type from write/exclusive, A/D bits, soft-dirty and uffd-wp
    carried), computed as a per-type template XOR the inverted offset field,
    which is linear in the offset. Only with the default scheduler, no fault
    page, and at least 8 PTEs. Context: the PTE lock is held (by the caller).
    Not a kernel function (issue 7); Kernel.fastpath turns it off.
    """
    import numpy as np

    from hmmsim.include.migrate import MIGRATE_PFN_DEVICE_PRIVATE
    from hmmsim.include.mm_types import (
        FOLIO_MAPPING_ANON,
        Page,
        PG_anon_exclusive,
        PG_dirty,
        PG_head,
    )
    from hmmsim.include.pgtable import (
        _PAGE_ACCESSED,
        _PAGE_DIRTY_BITS,
        _PAGE_KNL_ERRATUM_MASK,
        _PAGE_PRESENT,
        _PAGE_PROTNONE,
        _PAGE_RW,
        _PAGE_SOFT_DIRTY,
        _PAGE_SPECIAL,
        _PAGE_UFFD_WP,
        PTE_PFN_MASK,
    )
    from hmmsim.include.swapops import (
        _KEEP_PTE,
        _PAGE_SWP_SOFT_DIRTY,
        _PAGE_SWP_UFFD_WP,
        _TYPE_POS,
        SWP_MIG_DIRTY,
        SWP_MIG_YOUNG,
        SWP_OFFSET_SHIFT,
        SWP_PFN_MASK,
        SWP_TYPE_BITS,
        SWP_TYPE_SHIFT,
    )
    from hmmsim.mm.gup import GUP_PIN_COUNTING_BIAS
    from hmmsim.mm.memremap import DEVICE_PRIVATE_BASE

    mm = vma.vm_mm
    k = mm.k
    n = (end - addr) >> PAGE_SHIFT
    src, dst = migrate.src, migrate.dst
    lo = migrate.npages
    if (
        n < 8
        or not k.fastpath
        or migrate.fault_page is not None
        or lo + n > min(len(src), len(dst))
        or not (_sliceable(src) and _sliceable(dst))
    ):
        return 0
    u64 = np.uint64
    swp = k.swp
    flags = migrate.flags
    anon_vma_ok = vma_is_anonymous(vma)
    words = k.mem.ram.words
    table, col = ptep >> PAGE_SHIFT, (ptep >> 3) & 511
    pte = words[table, col : col + n]
    present = (pte & u64(_PAGE_PRESENT)) != 0
    none = (pte & u64(~_PAGE_KNL_ERRATUM_MASK & 0xFFFF_FFFF_FFFF_FFFF)) == 0
    pfn = ((pte & u64(PTE_PFN_MASK)) >> u64(PAGE_SHIFT)).astype(np.int64)
    zero = present & (pfn == k.mem.zero_pfn)
    ram = k.mem.ram.pages
    kind = np.zeros(n, dtype=np.int8)  # 0 uncommon, 1 hole-like, 2 RAM page, 3 device-private
    if anon_vma_ok:
        kind[none] = 1
    if flags & MIGRATE_VMA_SELECT_SYSTEM:
        kind[zero] = 1
        ram_pte = present & ~zero & ((pte & u64(_PAGE_SPECIAL)) == 0) & (pfn < ram.nr)
        kind[ram_pte] = 2
    # device-private entries (non-present, non-none, device-private type)
    swap = ~present & ~none & ((pte & u64(_PAGE_PROTNONE)) == 0)
    p = pte & u64(_KEEP_PTE)
    typ = (p >> u64(_TYPE_POS)).astype(np.int64)
    off = (~p << u64(SWP_TYPE_BITS)) >> u64(SWP_OFFSET_SHIFT)
    dpa = None
    if flags & MIGRATE_VMA_SELECT_DEVICE_PRIVATE:
        dev = swap & np.asarray(swp._dev_private, dtype=bool)[typ]
        if dev.any():
            j0 = int(np.flatnonzero(dev)[0])
            e0 = int(((p[j0] >> u64(_TYPE_POS)) << u64(SWP_TYPE_SHIFT)) | off[j0])
            page0 = k.softleaf_to_page(e0)
            dpa = page0.a
            # every device-private entry resolves like the first (one space, one range)
            dpos = (off & u64(SWP_PFN_MASK)).astype(np.int64) + (
                page0.i - int(off[j0] & u64(SWP_PFN_MASK))
            )
            dpos_ok = dev & (dpos >= 0) & (dpos < dpa.nr)
            pg = dpa.pgmap[np.where(dpos_ok, dpos, 0)]
            pgmap = k.pgmaps.get(int(dpa.pgmap[page0.i]))
            if pgmap is not None and pgmap.owner is migrate.pgmap_owner:
                kind[dpos_ok & (pg == dpa.pgmap[page0.i])] = 3
    # the leading run of common entries (page conditions checked below)
    common = kind != 0
    run = n if common.all() else int(np.argmin(common))
    if run == 0:
        return 0

    def page_ok(a, pos):
        fl = a.flags[pos]
        ref = a._refcount[pos]
        m = a.mapping[pos]
        ok = (
            ((fl & np.uint32(PG_head | PG_locked)) == 0)
            & (a.head_off[pos] == 0)
            & (ref > 0)
            & (a._mapcount[pos] >= 0)
            & ((m & np.uint32(FOLIO_MAPPING_ANON)) != 0)
        )
        excl = (fl & np.uint32(PG_anon_exclusive)) != 0
        return ok & ~(excl & (ref + 1 >= GUP_PIN_COUNTING_BIAS)), excl

    kind = kind[:run]
    good = np.ones(run, dtype=bool)
    is_ram = kind == 2
    is_dev = kind == 3
    rpos = pfn[:run][is_ram]
    if len(rpos):
        ok, _ = page_ok(ram, rpos)
        good[np.flatnonzero(is_ram)[~ok]] = False
        if has_duplicates(rpos):
            return 0
    if is_dev.any():
        dpos_run = dpos[:run][is_dev]
        ok, _ = page_ok(dpa, dpos_run)
        good[np.flatnonzero(is_dev)[~ok]] = False
        if has_duplicates(dpos_run):
            return 0
    if not good.all():
        run = int(np.argmin(good))
        if run == 0:
            return 0
        kind, is_ram, is_dev = kind[:run], is_ram[:run], is_dev[:run]
    pte = pte[:run].copy()
    typ, off = typ[:run], off[:run]
    out = np.zeros(run, dtype=np.uint64)
    out[kind == 1] = MIGRATE_PFN_MIGRATE
    new = pte.copy()
    conv = np.flatnonzero(kind >= 2)
    check = None  # (page view, old PTE, anon-exclusive before) of one converted entry
    if len(conv):
        j = int(conv[0])
        a, i = (ram, int(pfn[j])) if kind[j] == 2 else (dpa, int(dpos[j]))
        check = (j, Page(k, a, i), int(pte[j]), bool(a.flags[i] & PG_anon_exclusive))
    for sel, a, pos, is_present in (
        (is_ram, ram, pfn[:run][is_ram], True),
        (is_dev, dpa, dpos[:run][is_dev] if is_dev.any() else None, False),
    ):
        if not sel.any():
            continue
        old = pte[sel]
        fl = a.flags[pos]
        excl = (fl & np.uint32(PG_anon_exclusive)) != 0
        if is_present:
            write = (old & u64(_PAGE_RW)) != 0
            young = (old & u64(_PAGE_ACCESSED)) != 0
            dirty = (old & u64(_PAGE_DIRTY_BITS)) != 0
            soft = (old & u64(_PAGE_SOFT_DIRTY)) != 0
            uffd = (old & u64(_PAGE_UFFD_WP)) != 0
            index = pos.astype(np.uint64)  # page_swp_index of a RAM page: its PFN
            mig = (
                swp.SWP_MIGRATION_WRITE,
                swp.SWP_MIGRATION_READ_EXCLUSIVE,
                swp.SWP_MIGRATION_READ,
            )
            mflag = 0
        else:
            write = np.asarray(swp._dev_private_write, dtype=bool)[typ[sel]]
            young = dirty = np.zeros(len(old), dtype=bool)
            soft = (old & u64(_PAGE_SWP_SOFT_DIRTY)) != 0
            uffd = (old & u64(_PAGE_SWP_UFFD_WP)) != 0
            dp_space = a.base >= DEVICE_PRIVATE_BASE
            index = (pos + (a.base - DEVICE_PRIVATE_BASE if dp_space else a.base)).astype(np.uint64)
            if k.config.has("b"):
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
            mflag = MIGRATE_PFN_DEVICE_PRIVATE if k.config.has("a") else 0
        etype = np.where(write, mig[0], np.where(excl, mig[1], mig[2]))
        eoff = index.copy()
        if swp._supports_ad:
            eoff |= np.where(young, u64(SWP_MIG_YOUNG), u64(0))
            eoff |= np.where(dirty, u64(SWP_MIG_DIRTY), u64(0))
        words_new = np.zeros(len(old), dtype=np.uint64)
        for t in distinct_values(etype):
            tmpl = u64(swp.swp_entry_to_pte(t << SWP_TYPE_SHIFT))
            m = etype == t
            words_new[m] = tmpl ^ ((eoff[m] << u64(SWP_OFFSET_SHIFT)) >> u64(SWP_TYPE_BITS))
        words_new |= np.where(soft, u64(_PAGE_SWP_SOFT_DIRTY), u64(0))
        words_new |= np.where(uffd, u64(_PAGE_SWP_UFFD_WP), u64(0))
        new[sel] = words_new
        mpfn = (index << u64(MIGRATE_PFN_SHIFT)) | u64(MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE)
        mpfn |= u64(mflag)
        mpfn |= np.where(write, u64(MIGRATE_PFN_WRITE), u64(0))
        out[sel] = mpfn
        # struct page effects
        nf = fl | np.uint32(PG_locked)
        nf &= ~np.uint32(PG_anon_exclusive)
        nf |= np.where(is_present & dirty, np.uint32(PG_dirty), np.uint32(0))
        a.flags[pos] = nf
        a._mapcount[pos] -= 1
    # spot-check one converted entry against the per-entry builder
    if check is not None:
        j, pg, old, excl_j = check
        present_j = bool(old & _PAGE_PRESENT)
        e = make_migration_entry_for(
            pg,
            write=bool(out[j] & u64(MIGRATE_PFN_WRITE)),
            anon_exclusive=excl_j,
            young=present_j and pte_young(old),
            dirty=present_j and pte_dirty(old),
        )
        want = swp.swp_entry_to_pte(e)
        if present_j:
            want |= (_PAGE_SWP_SOFT_DIRTY if pte_soft_dirty(old) else 0) | (
                _PAGE_SWP_UFFD_WP if pte_uffd_wp(old) else 0
            )
        else:
            want |= old & (_PAGE_SWP_SOFT_DIRTY | _PAGE_SWP_UFFD_WP)
        if (
            want != int(new[j])
            or migrate_pfn_from_page(pg) | MIGRATE_PFN_MIGRATE != int(out[j]) & ~MIGRATE_PFN_WRITE
        ):
            raise KernelBug("migrate_vma_collect_ptes_bulk: template mismatch")
    words[table, col : col + run] = new
    migrate.cpages += run
    if isinstance(src, list):
        src[lo : lo + run] = out.tolist()
        dst[lo : lo + run] = [0] * run
    else:
        src[lo : lo + run] = out
        dst[lo : lo + run] = 0
    migrate.npages += run
    return run


# ----------------------------------------------------------------------------------------
# issue 7: unmap and migrate_vma_pages over a whole window


def slot_words(arr, busy):
    """The words of slots `busy` (sorted, distinct) of a src/dst array, as uint64."""
    import numpy as np

    if isinstance(arr, np.ndarray):
        return arr[np.asarray(busy, dtype=np.int64)].astype(np.uint64)
    if busy and busy[-1] - busy[0] == len(busy) - 1:  # every slot of a run is busy
        return np.array(arr[busy[0] : busy[-1] + 1], dtype=np.uint64)
    return np.fromiter(map(arr.__getitem__, busy), dtype=np.uint64, count=len(busy))


def store_slots(arr, slots, words) -> None:
    """arr[slots[j]] = words[j] for sorted, distinct slots (a src/dst array).

    The same stores as a loop: one slice when the slots are a run of a list,
    one fancy store for an array."""
    import numpy as np

    if isinstance(arr, np.ndarray):
        arr[np.asarray(slots, dtype=np.int64)] = words
        return
    slots = slots.tolist() if isinstance(slots, np.ndarray) else list(slots)
    words = words.tolist() if isinstance(words, np.ndarray) else list(words)
    if len(slots) != len(words):
        raise ValueError("store_slots: slots and words differ in length")
    if slots and type(arr) is list and slots[-1] - slots[0] == len(slots) - 1:
        arr[slots[0] : slots[-1] + 1] = words
        return
    for i, v in zip(slots, words, strict=True):
        arr[i] = v


def migrate_device_unmap_bulk(src_pfns, npages: int, fault_page, *, k) -> int | None:
    """migrate_device_unmap for a window where every slot is the common case.

    Returns the unmapped count, or None (nothing done) unless: the default
    scheduler, no fault page, every page slot an order-0 folio of one memory
    range that collect left unmapped (no try_to_migrate needed), a system
    page on the LRU, and every page passing migrate_vma_check_page (so no
    slot is restored). Then, as the per-slot loop: system pages leave the
    LRU (isolation's reference replaces collect's, so the count is kept),
    hole slots with MIGRATE count too. Not a kernel function (issue 7).
    """
    import numpy as np

    from hmmsim.include.mm_types import PG_head, PG_lru

    if not k.fastpath or fault_page is not None:
        return None
    busy = _busy(npages, src_pfns)
    if len(busy) < 8:
        return None
    sv = slot_words(src_pfns, busy)
    valid = (sv & np.uint64(MIGRATE_PFN_VALID)) != 0
    holes = int(((sv[~valid] & np.uint64(MIGRATE_PFN_MIGRATE)) != 0).sum())
    if not valid.any():
        return None
    pages = _window_pages(k, sv[valid], int(valid.sum()))
    if pages is None:
        return None
    a, pos = pages
    if has_duplicates(pos):
        return None
    fl = a.flags[pos]
    ref = a._refcount[pos]
    if (
        (fl & np.uint32(PG_head)).any()
        or (a.head_off[pos] != 0).any()
        or (a._mapcount[pos] != -1).any()
        or (ref <= 0).any()
    ):
        return None
    zone_device = bool(a.pgmap[pos[0]]) if a is not k.mem.ram.pages else False
    if (a.pgmap[pos] != a.pgmap[pos[0]]).any():
        return None
    if not zone_device and ((fl & np.uint32(PG_lru)) == 0).any():
        return None
    # migrate_vma_check_page: references beyond the walk's must be mappings
    m = a.mapping[pos].astype(np.int64)
    extra = 1 + (1 if zone_device else 0) + ((m != 0) & ((m & 1) == 0)).astype(np.int64)
    if not ((ref.astype(np.int64) - extra) <= 0).all():
        return None
    if not zone_device:
        a.flags[pos] = fl & ~np.uint32(PG_lru)
    return int(valid.sum()) + holes


def migrate_vma_pages_bulk(migrate) -> bool:
    """migrate_vma_pages for a window where every slot is the common case.

    True if done. The common case: no fault page, every busy slot a MIGRATE
    source page and a destination page, neither compound, both order-0, each
    side within one memory range; anon sources; destinations system RAM or
    device-private/coherent. Then per slot, as folio_migrate_mapping() and
    folio_migrate_flags() do: a source holding exactly the expected one
    reference hands its index and mapping to the destination, which gains
    its dirty/uptodate and anon-exclusive bits; any other source loses
    MIGRATE. Not a kernel function (issue 7); Kernel.fastpath turns it off.
    """
    import numpy as np

    from hmmsim.include.memremap import MEMORY_DEVICE_COHERENT, MEMORY_DEVICE_PRIVATE
    from hmmsim.include.mm_types import PG_anon_exclusive, PG_dirty, PG_head, PG_uptodate

    k = migrate.vma.vm_mm.k
    if not k.fastpath or migrate.fault_page is not None:
        return False
    src, dst = migrate.src, migrate.dst
    busy = _busy(migrate.npages, src, dst)
    if len(busy) < 8:
        return False
    u64 = np.uint64
    sv = slot_words(src, busy)
    dv = slot_words(dst, busy)
    need = u64(MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE)
    if (
        ((sv & need) != need).any()
        or ((dv & u64(MIGRATE_PFN_VALID)) == 0).any()
        or ((sv | dv) & u64(MIGRATE_PFN_COMPOUND)).any()
    ):
        return False
    s = _window_pages(k, sv, len(busy))
    d = _window_pages(k, dv, len(busy)) if s is not None else None
    if d is None:
        return False
    sa, si = s
    da, di = d
    if has_duplicates(si) or has_duplicates(di):
        return False
    for a, pos in ((sa, si), (da, di)):
        if (a.flags[pos] & np.uint32(PG_head)).any() or (a.head_off[pos] != 0).any():
            return False
    if ((sa.mapping[si] & np.uint32(1)) == 0).any():
        return False
    pg = da.pgmap[di]
    if (pg != pg[0]).any():
        return False
    if pg[0]:
        pgmap = k.pgmaps.get(int(pg[0]))
        if pgmap is None or pgmap.type not in (MEMORY_DEVICE_PRIVATE, MEMORY_DEVICE_COHERENT):
            return False
    ok = sa._refcount[si] == 1  # folio_migrate_mapping(): 1 + extra_count, no mapping
    so, do = si[ok], di[ok]
    da.index[do] = sa.index[so]
    da.mapping[do] = sa.mapping[so]
    sfl = sa.flags[so]
    da.flags[do] |= (sfl & np.uint32(PG_dirty | PG_uptodate)) | (sfl & np.uint32(PG_anon_exclusive))
    for j in np.flatnonzero(~ok).tolist():
        i = busy[j]
        src[i] = int(src[i]) & ~MIGRATE_PFN_MIGRATE
    return True

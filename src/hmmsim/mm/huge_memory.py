"""Transparent huge pages: PMD faults, COW, split, zap, fork and mprotect.

Models: mm/huge_memory.c (thp_vma_allowable_order, do_huge_pmd_anonymous_page,
the huge zero folio, do_huge_pmd_wp_page, do_huge_zero_wp_pmd,
__split_huge_pmd/__split_huge_pmd_locked, zap_huge_pmd, copy_huge_pmd,
change_huge_pmd, move_huge_pmd, split_huge_page_to_list_to_order,
deferred_split_folio/deferred_split_scan) @ torvalds/linux 0eaed89c18ae.

Anonymous THPs only (shmem THP is not modelled). Every huge PMD has a
deposited PTE table (pgtable_trans_huge_deposit) so a later PMD split never
needs to allocate, as on x86-64.

Differences from kernel: split_huge_page splits the PMD mappings through the
rmap and then divides the folio in place while every PTE lock is free, rather
than going through migration entries (unmap_folio/remap_page); the outcome
(who maps what, refcounts, mapcounts, flags) is the kernel's.
"""

from __future__ import annotations

import numpy as np

from hmmsim.bug import KernelBug
from hmmsim.errno import EAGAIN, EBUSY, ENOMEM
from hmmsim.include.mm import (
    FAULT_FLAG_WRITE,
    VM_FAULT_FALLBACK,
    VM_FAULT_OOM,
    VM_FAULT_SIGBUS,
    VM_HUGEPAGE,
    VM_HUGETLB,
    VM_NOHUGEPAGE,
    VM_WRITE,
)
from hmmsim.include.mm_types import (
    MM_ANONPAGES,
    Page,
    PageAnonExclusive,
    PG_anon_exclusive,
    PG_dirty,
    PG_head,
    PG_lru,
    PG_partially_mapped,
    PG_uptodate,
    PG_zero,
    SetPageAnonExclusive,
    folio_get,
    folio_mapcount,
    folio_put,
    folio_ref_add,
    folio_ref_count,
    folio_test_anon,
    folio_test_large,
    is_cow_mapping,
    page_folio,
    vma_is_anonymous,
)
from hmmsim.include.mmu_notifier import MMU_NOTIFY_CLEAR
from hmmsim.include.pgtable import (
    _PAGE_SPECIAL,
    mk_table_entry,
    pfn_pmd,
    pfn_pte,
    pmd_dirty,
    pmd_mkdirty,
    pmd_mkhuge,
    pmd_mkold,
    pmd_mkwrite_novma,
    pmd_mkyoung,
    pmd_none,
    pmd_pfn,
    pmd_present,
    pmd_soft_dirty,
    pmd_swp_clear_uffd_wp,
    pmd_swp_mksoft_dirty,
    pmd_swp_soft_dirty,
    pmd_swp_uffd_wp,
    pmd_trans_huge,
    pmd_write,
    pmd_wrprotect,
    pmd_young,
    pte_advance_pfn,
    pte_mkdirty,
    pte_mkold,
    pte_mksoft_dirty,
    pte_mkspecial,
    pte_mkuffd_wp,
    pte_mkwrite_novma,
    pte_swp_mksoft_dirty,
    pte_swp_mkuffd_wp,
    pte_uffd_wp,
    pte_wrprotect,
)
from hmmsim.kconfig import HPAGE_PMD_NR, HPAGE_PMD_ORDER, PAGE_SHIFT, PMD_MASK, PMD_SIZE
from hmmsim.locking import folio_trylock, folio_unlock
from hmmsim.mm.mmu_notifier import notify_range
from hmmsim.mm.page_alloc import __GFP_ZERO, GFP_TRANSHUGE
from hmmsim.mm.pgtable import (
    alloc_table,
    free_table,
    pmd_lockptr,
    pmdp_get,
    set_pmd_at,
)
from hmmsim.mm.rmap import (
    RMAP_EXCLUSIVE,
    RMAP_NONE,
    anon_vma_prepare,
    folio_add_anon_rmap_ptes,
    folio_add_new_anon_rmap,
    folio_move_anon_rmap,
    folio_remove_rmap_pmd,
    folio_try_dup_anon_rmap_pmd,
    rmap_walk,
    rmap_walk_control,
)


# --- policy --------------------------------------------------------------------------------
def thp_vma_allowable_order(vma, address: int) -> bool:
    """May a PMD-sized anon folio back the aligned 2 MiB around address?

    Follows /sys/kernel/mm/transparent_hugepage/enabled (Kernel.thp_enabled:
    "always", "madvise" (the model's default) or "never") and VM_(NO)HUGEPAGE.
    """
    if not vma_is_anonymous(vma) or vma.vm_flags & (VM_HUGETLB | VM_NOHUGEPAGE):
        return False
    mode = vma.vm_mm.k.thp_enabled
    if mode == "never" or (mode == "madvise" and not vma.vm_flags & VM_HUGEPAGE):
        return False
    haddr = address & PMD_MASK
    return haddr >= vma.vm_start and haddr + PMD_SIZE <= vma.vm_end


def mk_huge_pmd(page: Page, prot: int) -> int:
    return pmd_mkhuge(pfn_pmd(page.pfn, prot))


def maybe_pmd_mkwrite(pmd: int, vma) -> int:
    return pmd_mkwrite_novma(pmd) if vma.vm_flags & VM_WRITE else pmd


def is_huge_zero_pmd(k, pmd: int) -> bool:
    return pmd_trans_huge(pmd) and pmd_present(pmd) and pmd_pfn(pmd) == k.huge_zero_pfn


def is_huge_pmd_entry(k, pmd: int) -> bool:
    """A PMD that maps a huge page or holds a PMD-level softleaf entry."""
    if pmd_none(pmd):
        return False
    return pmd_trans_huge(pmd) or not pmd_present(pmd)


def mm_get_huge_zero_folio(k) -> Page | None:
    """The huge zero folio, allocated on first use and kept for good."""
    if k.huge_zero_pfn is None:
        folio = k.mem.alloc_pages(HPAGE_PMD_ORDER, GFP_TRANSHUGE | __GFP_ZERO)
        if folio is None:
            return None
        folio.set(PG_zero)
        k.huge_zero_pfn = folio.pfn
    return k.mem.pfn_to_page(k.huge_zero_pfn)


# --- deposited page tables -----------------------------------------------------------------
def pgtable_trans_huge_deposit(mm, pmdp: int, table_pfn: int) -> None:
    mm.k.deposited[pmdp] = table_pfn


def pgtable_trans_huge_withdraw(mm, pmdp: int) -> int:
    try:
        return mm.k.deposited.pop(pmdp)
    except KeyError:
        raise KernelBug(f"withdraw: no page table deposited for PMD {pmdp:#x}") from None


# --- faults ---------------------------------------------------------------------------------
def create_huge_pmd(vmf) -> int:
    if vma_is_anonymous(vmf.vma):
        return do_huge_pmd_anonymous_page(vmf)
    return VM_FAULT_FALLBACK


def do_huge_pmd_anonymous_page(vmf) -> int:
    """First touch of a THP-eligible PMD: huge zero page on read, new THP on write."""
    vma = vmf.vma
    mm = vma.vm_mm
    k = mm.k
    haddr = vmf.address & PMD_MASK
    anon_vma_prepare(vma)
    if not vmf.flags & FAULT_FLAG_WRITE and k.thp_use_zero_page:
        table = alloc_table(k)
        if table is None:
            return VM_FAULT_OOM
        zero = mm_get_huge_zero_folio(k)
        if zero is None:
            free_table(k, table)
            return VM_FAULT_FALLBACK
        with pmd_lockptr(mm, vmf.pmd):
            if not pmd_none(pmdp_get(k, vmf.pmd)):
                free_table(k, table)
                return 0
            entry = pmd_wrprotect(mk_huge_pmd(zero, vma.vm_page_prot)) | _PAGE_SPECIAL
            pgtable_trans_huge_deposit(mm, vmf.pmd, table)
            set_pmd_at(mm, haddr, vmf.pmd, entry)
        return 0
    folio = k.mem.alloc_pages(HPAGE_PMD_ORDER, GFP_TRANSHUGE | __GFP_ZERO)
    if folio is None:
        k.stats["thp_fault_fallback"] += 1
        return VM_FAULT_FALLBACK
    table = alloc_table(k)
    if table is None:
        folio_put(folio)
        return VM_FAULT_OOM
    with pmd_lockptr(mm, vmf.pmd):
        if not pmd_none(pmdp_get(k, vmf.pmd)):
            free_table(k, table)
            folio_put(folio)
            return 0
        entry = maybe_pmd_mkwrite(pmd_mkdirty(mk_huge_pmd(folio, vma.vm_page_prot)), vma)
        folio_add_new_anon_rmap(folio, vma, haddr, RMAP_EXCLUSIVE)
        mm.rss_stat[MM_ANONPAGES] += HPAGE_PMD_NR
        pgtable_trans_huge_deposit(mm, vmf.pmd, table)
        set_pmd_at(mm, haddr, vmf.pmd, entry)
    k.stats["thp_fault_alloc"] += 1
    return 0


def huge_pmd_set_accessed(vmf) -> None:
    mm = vmf.vma.vm_mm
    with pmd_lockptr(mm, vmf.pmd):
        pmd = pmdp_get(mm.k, vmf.pmd)
        if pmd != vmf.orig_pmd:
            return
        pmd = pmd_mkyoung(pmd)
        if vmf.flags & FAULT_FLAG_WRITE:
            pmd = pmd_mkdirty(pmd)
        set_pmd_at(mm, vmf.address & PMD_MASK, vmf.pmd, pmd)


def do_huge_zero_wp_pmd(vmf) -> int:
    """Write to the huge zero page: replace it by a fresh zeroed THP."""
    vma = vmf.vma
    mm = vma.vm_mm
    k = mm.k
    haddr = vmf.address & PMD_MASK
    folio = k.mem.alloc_pages(HPAGE_PMD_ORDER, GFP_TRANSHUGE | __GFP_ZERO)
    if folio is None:
        return VM_FAULT_FALLBACK
    with notify_range(mm, MMU_NOTIFY_CLEAR, haddr, haddr + PMD_SIZE):
        with pmd_lockptr(mm, vmf.pmd):
            if pmdp_get(k, vmf.pmd) != vmf.orig_pmd:
                folio_put(folio)
                return 0
            entry = maybe_pmd_mkwrite(pmd_mkdirty(mk_huge_pmd(folio, vma.vm_page_prot)), vma)
            set_pmd_at(mm, haddr, vmf.pmd, 0)
            folio_add_new_anon_rmap(folio, vma, haddr, RMAP_EXCLUSIVE)
            mm.rss_stat[MM_ANONPAGES] += HPAGE_PMD_NR
            set_pmd_at(mm, haddr, vmf.pmd, entry)
    return 0


def do_huge_pmd_wp_page(vmf) -> int:
    """Write to a read-only huge PMD: reuse the THP, or split and fall back."""
    vma = vmf.vma
    mm = vma.vm_mm
    k = mm.k
    orig = vmf.orig_pmd
    haddr = vmf.address & PMD_MASK
    if is_huge_zero_pmd(k, orig):
        # The pin allocates a THP for a write to the huge zero PMD
        # (do_huge_zero_wp_pmd); 6.12's do_huge_pmd_wp_page goes straight to
        # its fallback: split the PMD, and the PTE fault copies one page.
        if k.config.kernel != "6.12":
            ret = do_huge_zero_wp_pmd(vmf)
            if not ret & VM_FAULT_FALLBACK:
                return ret
        __split_huge_pmd(vma, vmf.pmd, vmf.address)
        return VM_FAULT_FALLBACK
    page = k.mem.pfn_to_page(pmd_pfn(orig))
    folio = page_folio(page)
    reuse = False
    with pmd_lockptr(mm, vmf.pmd):
        if pmdp_get(k, vmf.pmd) != orig:
            return 0
        if PageAnonExclusive(page):
            reuse = True
        elif folio_trylock(folio):
            if folio_ref_count(folio) == 1:
                folio_move_anon_rmap(folio, vma)
                SetPageAnonExclusive(page)
                reuse = True
            folio_unlock(folio)
        if reuse:
            entry = maybe_pmd_mkwrite(pmd_mkdirty(pmd_mkyoung(orig)), vma)
            set_pmd_at(mm, haddr, vmf.pmd, entry)
            return 0
    __split_huge_pmd(vma, vmf.pmd, vmf.address)
    return VM_FAULT_FALLBACK


def do_huge_pmd_nonpresent(vmf) -> int:
    """A fault on a PMD-level softleaf: wait for migration or leave the device."""
    k = vmf.vma.vm_mm.k
    swp = k.swp
    entry = swp.softleaf_from_pmd(vmf.orig_pmd)
    if swp.softleaf_is_migration(entry):
        from hmmsim.mm.migrate import pmd_migration_entry_wait

        pmd_migration_entry_wait(vmf.vma.vm_mm, vmf.pmd)
        return 0
    if swp.softleaf_is_device_private(entry):
        return do_huge_pmd_device_private(vmf, entry)
    return VM_FAULT_SIGBUS


def do_huge_pmd_device_private(vmf, entry: int) -> int:
    """CPU fault on a device-private PMD: migrate_to_ram with vmf.pte = None."""
    mm = vmf.vma.vm_mm
    k = mm.k
    page = k.softleaf_to_page(entry)
    vmf.page = page
    vmf.pte = None
    ptl = pmd_lockptr(mm, vmf.pmd)
    ptl.lock()
    if pmdp_get(k, vmf.pmd) != vmf.orig_pmd:
        ptl.unlock()
        return 0
    folio = page_folio(page)
    if folio_trylock(folio):
        folio_get(folio)
        ptl.unlock()
        ret = k.page_pgmap(page).ops.migrate_to_ram(vmf)
        folio_unlock(page_folio(page))
        folio_put(page_folio(page))
        return ret
    ptl.unlock()
    from hmmsim.mm.migrate import softleaf_entry_wait_on_locked

    softleaf_entry_wait_on_locked(k, entry)
    return 0


# --- splitting a PMD mapping ----------------------------------------------------------------
def __split_huge_pmd(vma, pmdp: int, address: int, freeze: bool = False) -> None:
    """Turn one huge PMD mapping into 512 PTEs (the folio stays large).

    With freeze, a PMD migration entry's split drops one folio reference,
    as the kernel's does (callers take one first).
    """
    mm = vma.vm_mm
    haddr = address & PMD_MASK
    with notify_range(mm, MMU_NOTIFY_CLEAR, haddr, haddr + PMD_SIZE):
        with pmd_lockptr(mm, pmdp):
            pmd = pmdp_get(mm.k, pmdp)
            if is_huge_pmd_entry(mm.k, pmd):
                __split_huge_pmd_locked(vma, pmdp, haddr, pmd, freeze)


def split_huge_pmd_address(vma, address: int, freeze: bool = False) -> None:
    from hmmsim.mm.pgtable import pmd_offset

    pmdp = pmd_offset(vma.vm_mm, address)
    if pmdp is not None and is_huge_pmd_entry(vma.vm_mm.k, pmdp_get(vma.vm_mm.k, pmdp)):
        __split_huge_pmd(vma, pmdp, address, freeze)


def __split_huge_pmd_locked(vma, pmdp: int, haddr: int, pmd: int, freeze: bool = False) -> None:
    mm = vma.vm_mm
    k = mm.k
    swp = k.swp
    table = pgtable_trans_huge_withdraw(mm, pmdp)
    words = k.mem.table(table)
    if is_huge_zero_pmd(k, pmd):
        entry = pte_mkspecial(pfn_pte(k.mem.zero_pfn, vma.vm_page_prot))
        words[:] = entry
        set_pmd_at(mm, haddr, pmdp, mk_table_entry(table))
        return
    if not pmd_present(pmd):
        entry = swp.softleaf_from_pmd(pmd)
        base_pfn = swp.softleaf_to_pfn(entry)
        page = k.softleaf_to_page(entry)
        folio = page_folio(page)
        migration = swp.softleaf_is_migration(entry)
        for i in range(HPAGE_PMD_NR):
            sub = k.softleaf_with_pfn(entry, base_pfn + i)
            pte = swp.swp_entry_to_pte(sub)
            if pmd_swp_soft_dirty(pmd):
                pte = pte_swp_mksoft_dirty(pte)
            if pmd_swp_uffd_wp(pmd):
                pte = pte_swp_mkuffd_wp(pte)
            words[i] = pte
        if not migration:  # device-private: PMD map becomes 512 PTE maps
            folio_ref_add(folio, HPAGE_PMD_NR - 1)
            flags = RMAP_EXCLUSIVE if PageAnonExclusive(page) else RMAP_NONE
            folio_add_anon_rmap_ptes(folio, page, HPAGE_PMD_NR, vma, haddr, flags)
            folio_remove_rmap_pmd(folio, page, vma)
        set_pmd_at(mm, haddr, pmdp, mk_table_entry(table))
        if migration and freeze:
            folio_put(folio)
        return
    page = k.mem.pfn_to_page(pmd_pfn(pmd))
    folio = page_folio(page)
    if not folio_test_anon(folio):
        raise KernelBug("__split_huge_pmd_locked: file THPs are not modelled")
    write, dirty, young, soft = pmd_write(pmd), pmd_dirty(pmd), pmd_young(pmd), pmd_soft_dirty(pmd)
    exclusive = PageAnonExclusive(page)
    folio_ref_add(folio, HPAGE_PMD_NR - 1)
    folio_add_anon_rmap_ptes(
        folio, page, HPAGE_PMD_NR, vma, haddr, RMAP_EXCLUSIVE if exclusive else RMAP_NONE
    )
    base = pfn_pte(page.pfn, vma.vm_page_prot)
    if write:
        base = pte_mkwrite_novma(base)
    else:
        base = pte_wrprotect(base)
    if dirty:
        base = pte_mkdirty(base)
    if not young:
        base = pte_mkold(base)
    if soft:
        base = pte_mksoft_dirty(base)
    # pte_advance_pfn() for each subpage, in one step: a PROT_NONE PMD splits
    # into PROT_NONE PTEs whose inverted PFNs count down.
    offsets = np.arange(HPAGE_PMD_NR, dtype=np.uint64) << np.uint64(PAGE_SHIFT)
    counts_down = pte_advance_pfn(base, 1) < base
    words[:] = np.uint64(base) - offsets if counts_down else np.uint64(base) + offsets
    folio_remove_rmap_pmd(folio, page, vma)
    set_pmd_at(mm, haddr, pmdp, mk_table_entry(table))


# --- zap / fork / mprotect / mremap ----------------------------------------------------------
def zap_huge_pmd(vma, pmdp: int, addr: int) -> None:
    mm = vma.vm_mm
    k = mm.k
    swp = k.swp
    with pmd_lockptr(mm, pmdp):
        pmd = pmdp_get(k, pmdp)
        set_pmd_at(mm, addr, pmdp, 0)
        free_table(k, pgtable_trans_huge_withdraw(mm, pmdp))
    if is_huge_zero_pmd(k, pmd):
        return
    if pmd_present(pmd):
        page = k.mem.pfn_to_page(pmd_pfn(pmd))
        folio = page_folio(page)
        mm.rss_stat[MM_ANONPAGES] -= HPAGE_PMD_NR
        folio_remove_rmap_pmd(folio, page, vma)
        folio_put(folio)
        return
    entry = swp.softleaf_from_pmd(pmd)
    page = k.softleaf_to_page(entry)
    folio = page_folio(page)
    mm.rss_stat[MM_ANONPAGES] -= HPAGE_PMD_NR
    if swp.softleaf_is_device_private(entry):
        folio_remove_rmap_pmd(folio, page, vma)
        folio_put(folio)


def copy_huge_non_present_pmd(
    dst_vma, src_vma, dst_pmdp: int, src_pmdp: int, addr: int, pmd: int, table: int
) -> None:
    """Fork's copy of a PMD migration entry or device-private PMD.

    mm/huge_memory.c copy_huge_non_present_pmd (6.12: the migration branch
    of copy_huge_pmd). A writable or readable-exclusive migration entry is
    made readable (the device variant under series (b)) and a writable
    device-private PMD readable, in the parent too; the rewritten source
    PMD keeps soft-dirty and uffd-wp (unlike a PTE, whose device-private
    copy drops soft-dirty). A device-private folio gains the child's rmap
    and a reference. The child's copy loses uffd-wp (no userfaultfd-wp in
    the model). Only anonymous vmas get here, so there is no COW test.
    """
    src_mm, dst_mm = src_vma.vm_mm, dst_vma.vm_mm
    k = src_mm.k
    swp = k.swp
    orig = pmd
    entry = swp.softleaf_from_pmd(pmd)
    if swp.softleaf_is_migration_write(entry) or swp.softleaf_is_migration_read_exclusive(entry):
        if "huge_pmd_plain_migration_entry" in k.bugs:
            # known bug: the writer forgets the series (b) device variant
            off = swp.swp_offset(entry)
            pmd = swp.swp_entry_to_pmd(swp.make_readable_migration_entry(off))
        else:
            pmd = swp.swp_entry_to_pmd(k.make_readable_migration_entry_for(entry))
        pmd = _keep_swp_soft_bits(orig, pmd)
        set_pmd_at(src_mm, addr, src_pmdp, pmd)
    elif swp.softleaf_is_device_private(entry):
        if swp.softleaf_is_device_private_write(entry):
            new = swp.make_readable_device_private_entry(swp.swp_offset(entry))
            pmd = _keep_swp_soft_bits(orig, swp.swp_entry_to_pmd(new))
            set_pmd_at(src_mm, addr, src_pmdp, pmd)
        page = k.softleaf_to_page(entry)
        folio = page_folio(page)
        folio_get(folio)
        folio_try_dup_anon_rmap_pmd(folio, page, dst_vma, src_vma)
    dst_mm.rss_stat[MM_ANONPAGES] += HPAGE_PMD_NR
    pgtable_trans_huge_deposit(dst_mm, dst_pmdp, table)
    set_pmd_at(dst_mm, addr, dst_pmdp, pmd_swp_clear_uffd_wp(pmd))


def _keep_swp_soft_bits(old: int, new: int) -> int:
    """new with old's swap soft-dirty and uffd-wp bits (pmd_swp_mksoft_dirty,
    pmd_swp_mkuffd_wp: on x86-64 the PTE's bits)."""
    if pmd_swp_soft_dirty(old):
        new = pmd_swp_mksoft_dirty(new)
    if pmd_swp_uffd_wp(old):
        new = pte_swp_mkuffd_wp(new)
    return new


def copy_huge_pmd(dst_vma, src_vma, dst_pmdp: int, src_pmdp: int, addr: int) -> int:
    """Fork's copy of a huge PMD: 0, -ENOMEM, or -EAGAIN after splitting it."""
    src_mm, dst_mm = src_vma.vm_mm, dst_vma.vm_mm
    k = src_mm.k
    table = alloc_table(k)
    if table is None:
        return -ENOMEM
    pmd = pmdp_get(k, src_pmdp)
    cow = is_cow_mapping(src_vma.vm_flags)
    if not pmd_present(pmd):
        copy_huge_non_present_pmd(dst_vma, src_vma, dst_pmdp, src_pmdp, addr, pmd, table)
        return 0
    if is_huge_zero_pmd(k, pmd):
        pgtable_trans_huge_deposit(dst_mm, dst_pmdp, table)
        set_pmd_at(dst_mm, addr, dst_pmdp, pmd)
        return 0
    page = k.mem.pfn_to_page(pmd_pfn(pmd))
    folio = page_folio(page)
    folio_get(folio)
    if folio_try_dup_anon_rmap_pmd(folio, page, dst_vma, src_vma):
        folio_put(folio)
        free_table(k, table)
        __split_huge_pmd(src_vma, src_pmdp, addr)
        return -EAGAIN
    dst_mm.rss_stat[MM_ANONPAGES] += HPAGE_PMD_NR
    pgtable_trans_huge_deposit(dst_mm, dst_pmdp, table)
    if cow:
        set_pmd_at(src_mm, addr, src_pmdp, pmd_wrprotect(pmd))
        pmd = pmd_wrprotect(pmd)
    set_pmd_at(dst_mm, addr, dst_pmdp, pmd_mkold(pmd))
    return 0


def move_huge_pmd(vma, old_pmdp: int, new_pmdp: int, old_addr: int, new_addr: int) -> None:
    """mremap: move a whole huge PMD (and its deposited table).

    The moved PMD is marked soft-dirty so userspace sees that it moved
    (mm/huge_memory.c move_soft_dirty_pmd): a present PMD or a PMD migration
    entry; a device-private PMD is moved as it is. No userfaultfd in the
    model, so no uffd-wp clearing.
    """
    mm = vma.vm_mm
    k = mm.k
    pmd = pmdp_get(k, old_pmdp)
    set_pmd_at(mm, old_addr, old_pmdp, 0)
    pgtable_trans_huge_deposit(mm, new_pmdp, pgtable_trans_huge_withdraw(mm, old_pmdp))
    set_pmd_at(mm, new_addr, new_pmdp, move_soft_dirty_pmd(k, pmd))


def move_soft_dirty_pmd(k, pmd: int) -> int:
    """mm/huge_memory.c move_soft_dirty_pmd (pmd_mksoft_dirty is the PTE's
    bit on x86-64)."""
    if pmd_present(pmd):
        return pte_mksoft_dirty(pmd)
    if k.swp.softleaf_is_migration(k.swp.softleaf_from_pmd(pmd)):
        return pmd_swp_mksoft_dirty(pmd)
    return pmd


# --- splitting the folio -----------------------------------------------------------------
def split_folio(folio: Page) -> int:
    """split_huge_page_to_list_to_order(order 0) of a locked anon THP.

    Context: the caller holds the folio lock and one reference. Every PMD
    mapping is split first. The caller's page keeps the lock and the
    caller's reference; subpages that end up unmapped are freed.
    Returns: 0; -EBUSY if not anon/large or unlocked; -EAGAIN if references
    other than the mappings and the caller's exist (a pin).
    """
    k = folio.k
    if not folio_test_large(folio) or not folio_test_anon(folio):
        return -EBUSY
    if not folio.test(1):  # PG_locked
        raise KernelBug("split_folio: folio not locked")
    if folio.a._entire_mapcount[folio.i] >= 0:

        def split_one(f, vma, address, arg):
            split_huge_pmd_address(vma, address)
            return True

        rmap_walk(folio, rmap_walk_control(rmap_one=split_one))
    if folio_ref_count(folio) != folio_mapcount(folio) + 1:
        return -EAGAIN
    a, i = folio.a, folio.i
    n = 1 << int(a.order[i])
    head_flags = int(a.flags[i])
    mapping = int(a.mapping[i])
    for j in range(n):
        a.head_off[i + j] = 0
        a.mapping[i + j] = mapping
        keep = int(a.flags[i + j]) & PG_anon_exclusive
        a.flags[i + j] = keep | (head_flags & (PG_dirty | PG_lru | PG_uptodate))
        a._refcount[i + j] = int(a._mapcount[i + j]) + 1
    a.order[i] = 0
    a._entire_mapcount[i] = -1
    a._large_mapcount[i] = -1
    _zone_device_split_cb(folio, n)
    a.flags[i] |= 1  # the caller's page stays locked ...
    a._refcount[i] += 1  # ... and referenced
    a.flags[i] &= ~(PG_head | PG_partially_mapped) & 0xFFFFFFFF
    k.stats["thp_split_page"] += 1
    for j in range(1, n):
        if a._refcount[i + j] == 0:
            k.mem.free_folio(Page(k, a, i + j))
    return 0


def deferred_split_scan(k) -> int:
    """The THP shrinker: split queued, partially mapped anon THPs. Returns count split."""
    split = 0
    queue, k.deferred_split_queue = k.deferred_split_queue, []
    for pfn in queue:
        folio = k.mem.pfn_to_page(pfn)
        if not folio.test(PG_head) or not folio.test(PG_partially_mapped):
            continue
        if not folio_trylock(folio):
            k.deferred_split_queue.append(pfn)
            continue
        folio_get(folio)
        ret = split_folio(folio)
        folio_unlock(folio)
        folio_put(folio)
        if ret == 0:
            split += 1
        else:
            k.deferred_split_queue.append(pfn)
    return split


# --- PMD migration entries ------------------------------------------------------------------
def set_pmd_migration_entry(vma, pmdp: int, address: int, folio) -> int:
    """Replace a PMD mapping (THP or device-private PMD) by a PMD migration entry.

    Context: the PMD lock is held. Returns 0, or -EBUSY if an exclusive anon
    folio may be pinned (the PMD is left as it was).
    """
    from hmmsim.include.mm_types import folio_mark_dirty
    from hmmsim.mm.migrate import make_migration_entry_for
    from hmmsim.mm.rmap import folio_try_share_anon_rmap_pmd

    mm = vma.vm_mm
    k = mm.k
    swp = k.swp
    pmd = pmdp_get(k, pmdp)
    page = folio
    anon_exclusive = folio_test_anon(folio) and PageAnonExclusive(page)
    if pmd_present(pmd):
        write, young, dirty = pmd_write(pmd), pmd_young(pmd), pmd_dirty(pmd)
        # pmd_uffd_wp tests the PTE's bit on x86-64
        soft, uffd = pmd_soft_dirty(pmd), pte_uffd_wp(pmd)
    else:
        entry = swp.softleaf_from_pmd(pmd)
        write, young, dirty = swp.softleaf_is_device_private_write(entry), False, False
        soft, uffd = pmd_swp_soft_dirty(pmd), pmd_swp_uffd_wp(pmd)
    set_pmd_at(mm, address, pmdp, 0)
    if anon_exclusive and folio_try_share_anon_rmap_pmd(folio, page):
        set_pmd_at(mm, address, pmdp, pmd)
        return -EBUSY
    if dirty:
        folio_mark_dirty(folio)
    entry = make_migration_entry_for(
        page, write=write, anon_exclusive=anon_exclusive, young=young, dirty=dirty
    )
    new = swp.swp_entry_to_pmd(entry)
    if soft:
        from hmmsim.include.pgtable import pmd_swp_mksoft_dirty

        new = pmd_swp_mksoft_dirty(new)
    if uffd:
        new = pte_swp_mkuffd_wp(new)  # pmd_swp_mkuffd_wp
    set_pmd_at(mm, address, pmdp, new)
    folio_remove_rmap_pmd(folio, page, vma)
    folio_put(folio)
    return 0


set_pmd_migration_entry_locked = set_pmd_migration_entry


def remove_migration_pmd(vma, pmdp: int, haddr: int, entry: int, src, dst) -> None:
    """Map dst by PMD where a PMD migration entry for src was."""
    from hmmsim.mm.memremap import folio_is_device_private
    from hmmsim.mm.migrate import make_device_private_entry_for
    from hmmsim.mm.rmap import folio_add_anon_rmap_pmd

    mm = vma.vm_mm
    k = mm.k
    swp = k.swp
    old = pmdp_get(k, pmdp)
    write = swp.softleaf_is_migration_write(entry)
    excl = not swp.softleaf_is_migration_read(entry)
    if folio_is_device_private(dst):
        new = _keep_swp_soft_bits(
            old, swp.swp_entry_to_pmd(make_device_private_entry_for(dst, write))
        )
    else:
        # the entry's soft-dirty and uffd-wp become the PMD's (mm/huge_memory.c
        # remove_migration_pmd); pmd_mkuffd_wp sets the PTE's bit on x86-64
        new = pmd_mkold(mk_huge_pmd(dst, vma.vm_page_prot))
        if pmd_swp_soft_dirty(old):
            new = pte_mksoft_dirty(new)  # pmd_mksoft_dirty
        new = pmd_mkwrite_novma(new) if write else pmd_wrprotect(new)
        if pmd_swp_uffd_wp(old):
            new = pte_mkuffd_wp(new)  # pmd_mkuffd_wp: also write-protects
        if swp.softleaf_is_migration_young(entry):
            new = pmd_mkyoung(new)
        if swp.softleaf_is_migration_dirty(entry):
            new = pmd_mkdirty(new)
    with pmd_lockptr(mm, pmdp):
        folio_get(dst)
        from hmmsim.mm.rmap import RMAP_EXCLUSIVE, RMAP_NONE

        folio_add_anon_rmap_pmd(dst, dst, vma, haddr, RMAP_EXCLUSIVE if excl else RMAP_NONE)
        set_pmd_at(mm, haddr, pmdp, new)
    del src


def folio_split_unmapped(folio, new_order: int = 0) -> int:
    """Split a locked, fully unmapped large folio into order-0 folios.

    Every new folio stays locked with one reference (the migration's), as
    the migrate code expects. ZONE_DEVICE folios call pgmap->ops->folio_split
    (head, tail) for each new tail, then (head, None). Returns 0, or -EAGAIN
    if references other than the caller's exist.
    """
    from hmmsim.include.mm_types import PG_locked, folio_mapcount
    from hmmsim.mm.memremap import folio_is_zone_device, page_pgmap

    if new_order:
        raise ValueError("folio_split_unmapped: only order 0 is modelled")
    if folio_mapcount(folio) or folio_ref_count(folio) != 1:
        return -EAGAIN
    a, i = folio.a, folio.i
    n = 1 << int(a.order[i])
    head_flags = int(a.flags[i])
    mapping = int(a.mapping[i])
    ops = page_pgmap(folio).ops if folio_is_zone_device(folio) else None
    for j in range(n):
        a.head_off[i + j] = 0
        a.mapping[i + j] = mapping
        keep = int(a.flags[i + j]) & PG_anon_exclusive
        a.flags[i + j] = keep | (head_flags & (PG_dirty | PG_lru | PG_uptodate)) | PG_locked
        a._refcount[i + j] = 1
    a.order[i] = 0
    a._entire_mapcount[i] = -1
    a._large_mapcount[i] = -1
    del ops
    _zone_device_split_cb(folio, n)
    folio.k.stats["thp_split_page"] += 1
    return 0


def _zone_device_split_cb(folio, n: int) -> None:
    """zone_device_private_split_cb: tell the pgmap about each new tail, then finish.

    Only device-private folios get the callback (include/linux/memremap.h);
    a device-coherent THP splits like a system one.
    """
    from hmmsim.mm.memremap import folio_is_device_private, page_pgmap

    if not folio_is_device_private(folio):
        return
    ops = page_pgmap(folio).ops
    if ops is None or getattr(ops, "folio_split", None) is None:
        return
    for j in range(1, n):
        ops.folio_split(folio, Page(folio.k, folio.a, folio.i + j))
    ops.folio_split(folio, None)

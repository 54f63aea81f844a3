"""MADV_COLLAPSE: synchronously collapse small anonymous pages into a THP.

Models: mm/khugepaged.c (madvise_collapse, hpage_collapse_scan_pmd,
collapse_huge_page, __collapse_huge_page_isolate/_copy) @ torvalds/linux
0eaed89c18ae, for anonymous memory.

As for MADV_COLLAPSE in the kernel, the sysfs THP mode and the khugepaged
max_ptes_none/shared limits do not apply; VM_NOHUGEPAGE does. A PMD range
collapses if every PTE is empty, the zero page, or an anon page mapped only
here and not pinned; anything else (a software leaf such as a device-private
or migration entry, a page shared with a child) fails that range.

Differences from kernel: no khugepaged thread; file/shmem collapse is not
modelled (-EINVAL for a file vma).
"""

from __future__ import annotations

from hmmsim.errno import EAGAIN, EINVAL, ENOMEM
from hmmsim.include.mm import VM_HUGETLB, VM_NOHUGEPAGE, VM_SPECIAL
from hmmsim.include.mm_types import (
    MM_ANONPAGES,
    folio_mapcount,
    folio_put,
    folio_ref_count,
    folio_test_anon,
    page_folio,
    vma_is_anonymous,
)
from hmmsim.include.mmu_notifier import MMU_NOTIFY_CLEAR
from hmmsim.include.pgtable import pte_none, pte_pfn, pte_present
from hmmsim.kconfig import HPAGE_PMD_NR, HPAGE_PMD_ORDER, PAGE_SIZE, PMD_MASK, PMD_SIZE
from hmmsim.mm import huge_memory
from hmmsim.mm.memory import is_zero_pfn, vm_normal_page
from hmmsim.mm.mmu_notifier import notify_range
from hmmsim.mm.pgtable import (
    pmd_lockptr,
    pmd_offset,
    pmdp_get,
    pte_offset_map,
    set_pmd_at,
)
from hmmsim.mm.rmap import (
    RMAP_EXCLUSIVE,
    anon_vma_prepare,
    folio_add_new_anon_rmap,
    folio_remove_rmap_pte,
)

SCAN_SUCCEED, SCAN_PMD_MAPPED, SCAN_FAIL, SCAN_ALLOC_HUGE_PAGE_FAIL = range(4)


def collapse_pmd(vma, haddr: int) -> int:
    """Collapse [haddr, haddr + 2 MiB) of an anon vma; a SCAN_* result."""
    mm = vma.vm_mm
    k = mm.k
    pmdp = pmd_offset(mm, haddr, alloc=True)
    if pmdp is None:
        return SCAN_FAIL
    pmd = pmdp_get(k, pmdp)
    if huge_memory.is_huge_pmd_entry(k, pmd):
        if pmd & 1 and not huge_memory.is_huge_zero_pmd(k, pmd):
            return SCAN_PMD_MAPPED
        if not pmd & 1:
            return SCAN_FAIL  # a PMD-level softleaf (migration, device-private)
        huge_memory.__split_huge_pmd(vma, pmdp, haddr)
        pmd = pmdp_get(k, pmdp)
    words = None
    if pmd:
        words = k.mem.table((pmd >> 12) & ((1 << 40) - 1))
        # scan: none, zero, or exclusively mapped unpinned anon pages only
        for i in range(HPAGE_PMD_NR):
            pte = int(words[i])
            if pte_none(pte):
                continue
            if not pte_present(pte):
                return SCAN_FAIL
            if is_zero_pfn(k, pte_pfn(pte)):
                continue
            page = vm_normal_page(vma, haddr + i * PAGE_SIZE, pte)
            if page is None:
                return SCAN_FAIL
            folio = page_folio(page)
            if not folio_test_anon(folio) or folio_mapcount(folio) != 1:
                return SCAN_FAIL
            if folio_ref_count(folio) != 1:  # a pin or a transient reference
                return SCAN_FAIL
    anon_vma_prepare(vma)
    from hmmsim.mm.page_alloc import GFP_TRANSHUGE

    new = k.mem.alloc_pages(HPAGE_PMD_ORDER, GFP_TRANSHUGE)
    if new is None:
        return SCAN_ALLOC_HUGE_PAGE_FAIL
    frames = k.mem.ram.frames
    frames[new.pfn : new.pfn + HPAGE_PMD_NR] = 0
    from hmmsim.mm.pgtable import alloc_table, set_pte_at

    with notify_range(mm, MMU_NOTIFY_CLEAR, haddr, haddr + PMD_SIZE):
        with pmd_lockptr(mm, pmdp):
            if words is not None:
                table = (pmd >> 12) & ((1 << 40) - 1)
                for i in range(HPAGE_PMD_NR):
                    pte = int(words[i])
                    if pte_none(pte):
                        continue
                    addr = haddr + i * PAGE_SIZE
                    ptep = pte_offset_map(k, pmd, addr)
                    set_pte_at(mm, addr, ptep, 0)
                    if is_zero_pfn(k, pte_pfn(pte)):
                        continue
                    page = k.mem.pfn_to_page(pte_pfn(pte))
                    frames[new.pfn + i] = frames[page.pfn]
                    folio = page_folio(page)
                    mm.rss_stat[MM_ANONPAGES] -= 1
                    folio_remove_rmap_pte(folio, page, vma)
                    folio_put(folio)
                set_pmd_at(mm, haddr, pmdp, 0)
            else:
                table = alloc_table(k)
                if table is None:
                    folio_put(new)
                    return SCAN_FAIL
            entry = huge_memory.maybe_pmd_mkwrite(
                huge_memory.pmd_mkdirty(huge_memory.mk_huge_pmd(new, vma.vm_page_prot)), vma
            )
            folio_add_new_anon_rmap(new, vma, haddr, RMAP_EXCLUSIVE)
            mm.rss_stat[MM_ANONPAGES] += HPAGE_PMD_NR
            huge_memory.pgtable_trans_huge_deposit(mm, pmdp, table)
            set_pmd_at(mm, haddr, pmdp, entry)
    k.stats["thp_collapse_alloc"] += 1
    return SCAN_SUCCEED


def thp_vma_suitable_order(vma, addr: int, order: int) -> bool:
    """include/linux/huge_mm.h thp_vma_suitable_order for an anonymous vma:
    the naturally aligned block of that order around addr lies inside it."""
    size = PAGE_SIZE << order
    haddr = addr & ~(size - 1) & ((1 << 64) - 1)
    return vma.vm_start <= haddr and haddr + size <= vma.vm_end


def thp_vma_allowable_pmd_collapse(vma) -> bool:
    """mm/huge_memory.c __thp_vma_allowable_orders(vma, PMD_ORDER) as
    MADV_COLLAPSE asks it (6.12 tva_flags 0, mainline TVA_FORCED_COLLAPSE),
    for the vmas the model collapses: THP disabled (VM_NOHUGEPAGE), a
    special or hugetlb vma (VM_NO_KHUGEPAGED), a vma too small to hold one
    aligned PMD (the size check at vm_end - HPAGE_PMD_SIZE), a file vma
    (file/shmem collapse is not modelled), and an anonymous vma that never
    faulted (no anon_vma) all refuse."""
    if vma.vm_flags & VM_NOHUGEPAGE:  # vma_thp_disabled
        return False
    if vma.vm_flags & (VM_HUGETLB | VM_SPECIAL):  # VM_NO_KHUGEPAGED
        return False
    if not thp_vma_suitable_order(vma, (vma.vm_end - PMD_SIZE) & ((1 << 64) - 1), HPAGE_PMD_ORDER):
        return False
    if not vma_is_anonymous(vma):
        return False
    return vma.anon_vma is not None


def madvise_collapse(vma, start: int, end: int) -> int:
    """0 if every PMD-aligned range inside [start, end) is (now) a THP.

    Returns -EINVAL (thp_vma_allowable_pmd_collapse refuses the vma: file,
    hugetlb, special, VM_NOHUGEPAGE, smaller than an aligned PMD, or never
    faulted), -ENOMEM (no huge page could be allocated), -EAGAIN (a range
    could not be collapsed: pinned, shared or non-present pages). A range
    that holds no aligned PMD of a suitable vma succeeds with nothing done.
    """
    if not thp_vma_allowable_pmd_collapse(vma):
        return -EINVAL
    hstart = (start + PMD_SIZE - 1) & PMD_MASK
    hend = end & PMD_MASK
    last_fail = SCAN_SUCCEED
    for haddr in range(hstart, hend, PMD_SIZE):
        ret = collapse_pmd(vma, haddr)
        if ret not in (SCAN_SUCCEED, SCAN_PMD_MAPPED):
            last_fail = ret
    if last_fail == SCAN_SUCCEED:
        return 0
    return -ENOMEM if last_fail == SCAN_ALLOC_HUGE_PAGE_FAIL else -EAGAIN

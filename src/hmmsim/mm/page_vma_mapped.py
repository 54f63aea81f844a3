"""page_vma_mapped_walk: find where a folio is mapped inside one vma.

Models: mm/page_vma_mapped.c and include/linux/rmap.h (struct
page_vma_mapped_walk, PVMW_SYNC, PVMW_MIGRATION) @ torvalds/linux 0eaed89c18ae.

Call `page_vma_mapped_walk(pvmw)` in a loop, as in the kernel: each True
return leaves pvmw.pte (or pvmw.pmd for a PMD mapping, pvmw.pte None) set and
the page-table lock held in pvmw.ptl; the next call or
`page_vma_mapped_walk_done` drops it.

Matching (default mode): present PTEs/PMDs, device-private and
device-exclusive entries naming a PFN in [pfn, pfn + nr_pages).
PVMW_MIGRATION mode: only migration entries (PTE or PMD) match.
"""

from __future__ import annotations

from hmmsim.include.pgtable import (
    pmd_leaf,
    pmd_none,
    pmd_pfn,
    pmd_present,
    pte_none,
    pte_pfn,
    pte_present,
)
from hmmsim.kconfig import PAGE_SIZE, PMD_MASK, PMD_SIZE
from hmmsim.mm.pgtable import (
    pmd_lockptr,
    pmd_offset,
    pmdp_get,
    pte_lockptr,
    pte_offset_map,
    ptep_get,
)

PVMW_SYNC = 1 << 0
PVMW_MIGRATION = 1 << 1


class PageVmaMappedWalk:
    """struct page_vma_mapped_walk (renamed: Python has one namespace for the
    struct and the function). Fields: pfn, nr_pages, pgoff, vma, address, pmd,
    pte, ptl, flags. Build it with DEFINE_FOLIO_VMA_WALK like the kernel."""

    __slots__ = (
        "pfn",
        "nr_pages",
        "pgoff",
        "vma",
        "address",
        "pmd",
        "pte",
        "ptl",
        "flags",
        "_end",
        "_started",
    )

    def __init__(self, pfn: int, nr_pages: int, vma, address: int, flags: int = 0) -> None:
        self.pfn = pfn
        self.nr_pages = nr_pages
        self.pgoff = 0
        self.vma = vma
        self.address = address
        self.pmd = None
        self.pte = None
        self.ptl = None
        self.flags = flags
        self._end = None
        self._started = False

    def __repr__(self) -> str:
        return f"<pvmw pfn={self.pfn:#x}+{self.nr_pages} at {self.address:#x}>"


def DEFINE_FOLIO_VMA_WALK(folio, vma, address: int, flags: int = 0) -> PageVmaMappedWalk:
    """The walk state for every page of folio inside vma, starting at address."""
    from hmmsim.include.mm_types import folio_nr_pages

    return PageVmaMappedWalk(folio.pfn, folio_nr_pages(folio), vma, address, flags)


def page_vma_mapped_walk_done(pvmw: PageVmaMappedWalk) -> None:
    if pvmw.ptl is not None:
        pvmw.ptl.unlock()
        pvmw.ptl = None


def _entry_pfn_matches(k, pvmw, word: int, pmd_level: bool) -> bool:
    lo, hi = pvmw.pfn, pvmw.pfn + pvmw.nr_pages
    swp = k.swp
    if pmd_level:
        if pmd_present(word):
            if pvmw.flags & PVMW_MIGRATION:
                return False
            p = pmd_pfn(word)
            return p < hi and lo < p + (PMD_SIZE // PAGE_SIZE)
        entry = swp.softleaf_from_pmd(word)
    else:
        if pte_present(word):
            return not pvmw.flags & PVMW_MIGRATION and lo <= pte_pfn(word) < hi
        entry = swp.softleaf_from_pte(word)
    if pvmw.flags & PVMW_MIGRATION:
        if not swp.softleaf_is_migration(entry):
            return False
    elif not (swp.softleaf_is_device_private(entry) or swp.softleaf_is_device_exclusive(entry)):
        return False
    p = k.softleaf_to_page(entry).pfn  # a (c) device-private page's index
    span = PMD_SIZE // PAGE_SIZE if pmd_level else 1
    return p < hi and lo < p + span


def page_vma_mapped_walk(pvmw: PageVmaMappedWalk) -> bool:
    """Advance to the next mapping of the pfn range in pvmw.vma. True if found."""
    vma = pvmw.vma
    mm = vma.vm_mm
    k = mm.k
    if pvmw._started:
        page_vma_mapped_walk_done(pvmw)
        if pvmw.pte is None:  # a PMD mapping covers everything
            return False
        pvmw.address += PAGE_SIZE
    else:
        pvmw._started = True
        pvmw._end = min(vma.vm_end, pvmw.address + pvmw.nr_pages * PAGE_SIZE)
    while pvmw.address < pvmw._end:
        addr = pvmw.address
        pmdp = pmd_offset(mm, addr)
        if pmdp is None or pmd_none(pmdp_get(k, pmdp)):
            pvmw.address = (addr & PMD_MASK) + PMD_SIZE
            continue
        pmd = pmdp_get(k, pmdp)
        if pmd_leaf(pmd) or not pmd & 1:
            if _entry_pfn_matches(k, pvmw, pmd, True):
                pvmw.ptl = pmd_lockptr(mm, pmdp)
                pvmw.ptl.lock()
                pvmw.pmd, pvmw.pte = pmdp, None
                return True
            pvmw.address = (addr & PMD_MASK) + PMD_SIZE
            continue
        ptep = pte_offset_map(k, pmd, addr)
        word = ptep_get(k, ptep)
        if not pte_none(word) and _entry_pfn_matches(k, pvmw, word, False):
            pvmw.ptl = pte_lockptr(mm, ptep)
            pvmw.ptl.lock()
            pvmw.pmd, pvmw.pte = pmdp, ptep
            return True
        pvmw.address += PAGE_SIZE
    return False

"""page_vma_mapped_walk: find where a folio is mapped inside one vma.

Models: mm/page_vma_mapped.c (check_pte, check_pmd, page_vma_mapped_walk)
and include/linux/rmap.h (struct page_vma_mapped_walk,
DEFINE_FOLIO_VMA_WALK) @ torvalds/linux 0eaed89c18ae, with series (c)'s
device-private marker in both of its forms (hmmsim.include.rmap).

Call `page_vma_mapped_walk(pvmw)` in a loop, as in the kernel: each True
return leaves pvmw.pte (or pvmw.pmd for a PMD mapping, pvmw.pte None) set and
the page-table lock held in pvmw.ptl; the next call or
`page_vma_mapped_walk_done` drops it.

Matching (default mode): present PTEs/PMDs, device-private and
device-exclusive entries naming a number in [pfn, pfn + nr_pages).
PVMW_MIGRATION mode: only migration entries (PTE or PMD) match. The number
compared is what the entry carries (pte_pfn, softleaf_to_pfn): a PFN, or
with series (c) a device-private offset for device-private and
device-private migration entries. Series (c) therefore also compares the
kind: an entry matches only if it is device-private exactly when the walk
is (the "device_private XOR flag" test of check_pte/check_pmd, != from v4
on); without that test an offset and a PFN that are the same number match
each other (mutant pvmw_no_device_private_flag).

Differences from kernel: the PTEs under one table are read as one row and
only its non-none entries are checked (the kernel steps with
map_pte/next_pte), and a PMD it does not match moves on to the next
PMD instead of ending the walk; no hugetlb.
"""

from __future__ import annotations

from hmmsim.include.mm_types import Page, folio_pfn, page_folio
from hmmsim.include.pgtable import (
    pmd_leaf,
    pmd_none,
    pmd_pfn,
    pmd_present,
    pte_index,
    pte_pfn,
    pte_present,
    table_entry_pfn,
)
from hmmsim.include.rmap import (
    PVMW_DEVICE_PRIVATE,
    PVMW_MIGRATION,
    PVMW_PFN_DEVICE_PRIVATE,
    PVMW_PFN_SHIFT,
    PVMW_SYNC,
    _form,
    page_vma_walk_pfn,
    pvmw_is_device_private,
    pvmw_marks_device_private,
    pvmw_number,
)
from hmmsim.kconfig import HPAGE_PMD_NR, PAGE_SHIFT, PAGE_SIZE, PMD_MASK, PMD_SIZE
from hmmsim.mm.memremap import (
    device_private_folio_to_offset,
    device_private_offset_to_page,
    folio_is_device_private,
)
from hmmsim.mm.pgtable import (
    entry_ptr,
    pmd_lockptr,
    pmd_offset,
    pmdp_get,
    pte_lockptr,
)

__all__ = [
    "PVMW_DEVICE_PRIVATE",
    "PVMW_MIGRATION",
    "PVMW_PFN_DEVICE_PRIVATE",
    "PVMW_PFN_SHIFT",
    "PVMW_SYNC",
    "DEFINE_FOLIO_VMA_WALK",
    "PageVmaMappedWalk",
    "check_pmd",
    "folio_page_vma_walk_pfn",
    "page_vma_walk_flags",
    "page_vma_walk_pfn_to_folio",
    "page_vma_walk_pfn_to_page",
    "check_pte",
    "page_vma_mapped_walk",
    "page_vma_mapped_walk_done",
]


# --- include/linux/rmap.h helpers that need the device-private space (mm/memremap) ---------


def folio_page_vma_walk_pfn(folio: Page) -> int:
    """pvmw->pfn for a walk over folio (rmap.h folio_page_vma_walk_pfn).

    Without (c): folio_pfn(). With (c): the device-private offset of a
    device-private folio (folio_pfn() of it warns: it has no PFN), the PFN of
    any other; in the v1/v2 form shifted left by one, with
    PVMW_PFN_DEVICE_PRIVATE set for an offset.
    """
    k = folio.k
    dp = k.config.has("c") and folio_is_device_private(folio)
    n = device_private_folio_to_offset(folio) if dp else folio_pfn(folio)
    if _form(k) != "pfn-bit":
        return n
    v = page_vma_walk_pfn(k, n)
    if dp and pvmw_marks_device_private(k):
        v |= PVMW_PFN_DEVICE_PRIVATE
    return v


def page_vma_walk_flags(folio: Page, flags: int) -> int:
    """pvmw->flags for a walk over folio (rmap.h page_vma_walk_flags, v3+).

    Adds PVMW_DEVICE_PRIVATE for a device-private folio in the v3+ form;
    the v1/v2 form carries the marker in pvmw->pfn instead.
    """
    k = folio.k
    if _form(k) == "flag" and pvmw_marks_device_private(k) and folio_is_device_private(folio):
        return flags | PVMW_DEVICE_PRIVATE
    return flags


def page_vma_walk_pfn_to_page(k, pvmw: PageVmaMappedWalk) -> Page:
    """The page pvmw->pfn names (rmap.h page_vma_walk_pfn_to_page, v1/v2;
    page_vma_walk_pfn_to_folio takes the walk from v3 on).

    A device-private offset goes through device_private_offset_to_page(),
    anything else through pfn_to_page(). Without the marker (the mutant) an
    offset is looked up as a PFN: the wrong page, or none.
    """
    n = pvmw_number(k, pvmw)
    if pvmw_is_device_private(k, pvmw):
        return device_private_offset_to_page(n, k=k)
    page: Page = k.mem.pfn_to_page(n)
    return page


def page_vma_walk_pfn_to_folio(k, pvmw: PageVmaMappedWalk) -> Page:
    """page_folio() of page_vma_walk_pfn_to_page() (vmscan's look-around)."""
    return page_folio(page_vma_walk_pfn_to_page(k, pvmw))


class PageVmaMappedWalk:
    """struct page_vma_mapped_walk (renamed: Python has one namespace for the
    struct and the function). Fields: pfn (as the walk encodes it: see
    hmmsim.include.rmap), nr_pages, pgoff, vma, address, pmd, pte, ptl,
    flags. Build it with DEFINE_FOLIO_VMA_WALK like the kernel."""

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

    def __init__(
        self, pfn: int, nr_pages: int, vma, address: int, flags: int = 0, pgoff: int = 0
    ) -> None:
        self.pfn = pfn
        self.nr_pages = nr_pages
        self.pgoff = pgoff
        self.vma = vma
        self.address = address
        self.pmd = None
        self.pte = None
        self.ptl = None
        self.flags = flags
        self._end = None
        self._started = False

    def __repr__(self) -> str:
        return (
            f"<pvmw pfn={self.pfn:#x}+{self.nr_pages} flags={self.flags:#x} at {self.address:#x}>"
        )


def DEFINE_FOLIO_VMA_WALK(folio, vma, address: int, flags: int = 0) -> PageVmaMappedWalk:
    """The walk state for every page of folio inside vma, starting at address.

    pfn = folio_page_vma_walk_pfn(folio), flags = page_vma_walk_flags(folio,
    flags), pgoff = the folio's index (folio_pgoff).
    """
    from hmmsim.include.mm_types import folio_nr_pages

    return PageVmaMappedWalk(
        folio_page_vma_walk_pfn(folio),
        folio_nr_pages(folio),
        vma,
        address,
        page_vma_walk_flags(folio, flags),
        int(folio.a.index[folio.i]),
    )


def page_vma_mapped_walk_done(pvmw: PageVmaMappedWalk) -> None:
    if pvmw.ptl is not None:
        pvmw.ptl.unlock()
        pvmw.ptl = None


def _in_range(k, pvmw, pfn: int, span: int, device_private: bool) -> bool:
    """The series (c) kind test, then the overlap of [pfn, pfn + span) with the walk."""
    if pvmw_marks_device_private(k) and device_private != pvmw_is_device_private(k, pvmw):
        return False
    lo = pvmw_number(k, pvmw)
    if pfn + span - 1 < lo:
        return False
    return not pfn > lo + pvmw.nr_pages - 1


def check_pte(k, pvmw, word: int, pte_nr: int = 1) -> bool:
    """Whether the PTE `word` maps (or, PVMW_MIGRATION, is a migration entry
    for) a page of the walk's range. Kernel: mm/page_vma_mapped.c check_pte().

    Series (c): device_private is true for a device-private migration entry
    (migration mode) or a device-private entry (default mode) and must equal
    the walk's marker.
    """
    swp = k.swp
    series_c = k.config.has("c")  # mainline has no marker to compare with
    device_private = False
    if pvmw.flags & PVMW_MIGRATION:
        if pte_present(word):
            return False
        entry = swp.softleaf_from_pte(word)
        if not swp.softleaf_is_migration(entry):
            return False
        device_private = series_c and swp.softleaf_is_migration_device_private(entry)
        pfn = swp.softleaf_to_pfn(entry)
    elif pte_present(word):
        pfn = pte_pfn(word)
    else:
        entry = swp.softleaf_from_pte(word)
        if not (swp.softleaf_is_device_private(entry) or swp.softleaf_is_device_exclusive(entry)):
            return False
        pfn = swp.softleaf_to_pfn(entry)
        device_private = series_c and swp.softleaf_is_device_private(entry)
    return _in_range(k, pvmw, pfn, pte_nr, device_private)


def check_pmd(k, pvmw, pfn: int, device_private: bool) -> bool:
    """Whether a PMD-sized mapping at `pfn` overlaps the walk's range.
    Kernel: mm/page_vma_mapped.c check_pmd() (series (c) adds device_private)."""
    return _in_range(k, pvmw, pfn, HPAGE_PMD_NR, device_private and k.config.has("c"))


def _pmd_matches(k, pvmw, word: int) -> bool:
    swp = k.swp
    if pmd_present(word):
        if pvmw.flags & PVMW_MIGRATION:
            return False
        return check_pmd(k, pvmw, pmd_pfn(word), False)
    entry = swp.softleaf_from_pmd(word)
    if pvmw.flags & PVMW_MIGRATION:
        if not swp.softleaf_is_migration(entry):
            return False
    elif not swp.softleaf_is_device_private(entry):
        return False
    dp = k.config.has("c") and (
        swp.softleaf_is_device_private(entry) or swp.softleaf_is_migration_device_private(entry)
    )
    return check_pmd(k, pvmw, swp.softleaf_to_pfn(entry), dp)


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
            if _pmd_matches(k, pvmw, pmd):
                pvmw.ptl = pmd_lockptr(mm, pmdp)
                pvmw.ptl.lock()
                pvmw.pmd, pvmw.pte = pmdp, None
                return True
            pvmw.address = (addr & PMD_MASK) + PMD_SIZE
            continue
        # The rest of the walk under this PTE table is scanned from the
        # table's words at once: only non-none PTEs can match (check_pte is
        # pure and nothing runs between two entries, so one read of the row
        # sees what entry-by-entry reads would).
        table = table_entry_pfn(pmd)
        i0 = pte_index(addr)
        stop = min(pvmw._end, (addr & PMD_MASK) + PMD_SIZE)
        row = k.mem.table(table)[i0 : i0 + ((stop - addr) >> PAGE_SHIFT)]
        for off in row.nonzero()[0].tolist():
            if check_pte(k, pvmw, int(row[off])):
                ptep = entry_ptr(table, i0 + off)
                pvmw.address = addr + (off << PAGE_SHIFT)
                pvmw.ptl = pte_lockptr(mm, ptep)
                pvmw.ptl.lock()
                pvmw.pmd, pvmw.pte = pmdp, ptep
                return True
        pvmw.address = stop
    return False

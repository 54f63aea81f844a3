"""Page-table pages: allocate, walk and free the x86-64 4-level tables.

Models: mm/memory.c (__pte_alloc, __pmd_alloc, __pud_alloc, free_pgd_range),
include/linux/pgtable.h (pgd/pud/pmd/pte_offset, ptep_get, set_pte_at,
ptep_get_and_clear, pmdp_get) and mm/pgtable-generic.c (pte_offset_map_lock,
pmd_lock) @ torvalds/linux 0eaed89c18ae.

A table is a RAM frame viewed as 512 u64 words; an entry pointer (`ptep`,
`pmdp`) is the physical address of the word, as a `pte_t *` is in the kernel
(through the linear map). PTE tables have their own split lock; huge PMDs are
guarded by the PMD table's lock; upper levels by mm->page_table_lock.
"""

from __future__ import annotations

from hmmsim.bug import KernelBug
from hmmsim.include.mm_types import PGTY_table
from hmmsim.include.pgtable import (
    mk_table_entry,
    pgd_index,
    pmd_index,
    pmd_leaf,
    pmd_none,
    pte_index,
    pud_index,
    table_entry_pfn,
)
from hmmsim.kconfig import PAGE_SHIFT, PGDIR_SHIFT, PMD_SHIFT, PUD_SHIFT
from hmmsim.locking import Lock
from hmmsim.mm.page_alloc import GFP_PGTABLE_USER


def entry_ptr(table_pfn: int, index: int) -> int:
    """Physical address of word `index` of a table page."""
    return (table_pfn << PAGE_SHIFT) | (index << 3)


def ptep_get(k, ptep: int) -> int:
    return int(k.mem.ram.words[ptep >> PAGE_SHIFT, (ptep >> 3) & 511])


pmdp_get = ptep_get
pudp_get = ptep_get


def set_pte_at(mm, addr: int, ptep: int, pte: int) -> None:
    """Write a PTE (or PMD) word. Context: the covering PTL is held."""
    mm.k.mem.ram.words[ptep >> PAGE_SHIFT, (ptep >> 3) & 511] = pte


set_pmd_at = set_pte_at


def ptep_get_and_clear(mm, addr: int, ptep: int) -> int:
    old = ptep_get(mm.k, ptep)
    set_pte_at(mm, addr, ptep, 0)
    return old


pmdp_huge_get_and_clear = ptep_get_and_clear


def pte_table_pfn(ptep: int) -> int:
    return ptep >> PAGE_SHIFT


def alloc_table(k) -> int | None:
    """pagetable_alloc(): a zeroed page marked as a page table.

    An order-0 GFP_PGTABLE_USER (unmovable, zeroed) page of modelled RAM
    from the page allocator, through the unmovable per-cpu list, and freed
    back there by `free_table`, so a freed table is reused by the next
    table or kernel allocation, never by the next user data page (movable).
    Differences (issue 13): the buddy under the pcp lists is shared by all
    migratetypes (see mm/page_alloc.py); the kernel frees the tables of
    free_pgtables through the mmu_gather (tlb_remove_ptdesc), after the TLB
    flush, not one by one; and with PTI an x86-64 pgd is an order-1
    allocation (PGD_ALLOCATION_ORDER), here order 0.
    """
    page = k.mem.alloc_pages(0, GFP_PGTABLE_USER)
    if page is None:
        return None
    page.set(PGTY_table)
    k.mem.table_attach(page.pfn)  # the token data plane's table words
    k.ptlocks[page.pfn] = Lock(k, f"ptl@{page.pfn:#x}")
    return page.pfn


def free_table(k, pfn: int) -> None:
    """pagetable_free(): the table must be empty."""
    if k.mem.ram.words[pfn].any():
        raise KernelBug(f"free_table: page table {pfn:#x} is not empty")
    lock = k.ptlocks.pop(pfn)
    if lock.is_locked():
        raise KernelBug(f"free_table: {lock!r} still held")
    page = k.mem.pfn_to_page(pfn)
    page.clear(PGTY_table)
    k.mem.table_detach(pfn)
    from hmmsim.include.mm_types import folio_put

    folio_put(page)


def _next_level(mm, entryp: int, alloc: bool) -> int | None:
    k = mm.k
    e = ptep_get(k, entryp)
    if e:
        return table_entry_pfn(e)
    if not alloc:
        return None
    pfn = alloc_table(k)
    if pfn is None:
        return None
    with mm.page_table_lock:
        # __pud_alloc/__pmd_alloc: another thread may have populated the entry
        # while the table was allocated; then the new table is freed
        e = ptep_get(k, entryp)
        if not e:
            set_pte_at(mm, 0, entryp, mk_table_entry(pfn))
    if e:
        free_table(k, pfn)
        return table_entry_pfn(e)
    return pfn


def pud_offset(mm, addr: int, alloc: bool = False) -> int | None:
    """Pointer to the PUD entry for addr (allocating the PUD table if asked)."""
    pud_table = _next_level(mm, entry_ptr(mm.pgd, pgd_index(addr)), alloc)
    if pud_table is None:
        return None
    return entry_ptr(pud_table, pud_index(addr))


def pmd_offset(mm, addr: int, alloc: bool = False) -> int | None:
    """Pointer to the PMD entry for addr, or None if a level is missing."""
    if not alloc:  # the two reads of pud_offset + _next_level, inline
        words = mm.k.mem.ram.words
        e = int(words[mm.pgd, pgd_index(addr)])
        if not e:
            return None
        e = int(words[table_entry_pfn(e), pud_index(addr)])
        if not e:
            return None
        return entry_ptr(table_entry_pfn(e), pmd_index(addr))
    pudp = pud_offset(mm, addr, alloc)
    if pudp is None:
        return None
    pmd_table = _next_level(mm, pudp, alloc)
    if pmd_table is None:
        return None
    return entry_ptr(pmd_table, pmd_index(addr))


def pmd_walk_skip(mm, addr: int, end: int) -> int:
    """Where a PMD-by-PMD walk goes next when pmd_offset(mm, addr) is None.

    The kernel's range walks (unmap_page_range, change_protection,
    copy_page_range, move_page_tables) step level by level and skip a none
    PGD or PUD entry whole (pgd_addr_end / pud_addr_end), so their cost is
    that of the tables present, not of the range. The end of the empty
    PGD (512 GiB) or PUD (1 GiB) region around addr, or `end`.
    """
    k = mm.k
    pgde = ptep_get(k, entry_ptr(mm.pgd, pgd_index(addr)))
    if not pgde:
        step = 1 << PGDIR_SHIFT
    elif not ptep_get(k, entry_ptr(table_entry_pfn(pgde), pud_index(addr))):
        step = 1 << PUD_SHIFT
    else:
        step = 1 << PMD_SHIFT
    return min((addr | (step - 1)) + 1, end)


def pte_offset_map(k, pmdval: int, addr: int) -> int | None:
    """Pointer to the PTE for addr under a PMD that points to a table."""
    if pmd_none(pmdval) or pmd_leaf(pmdval) or not pmdval & 1:
        return None  # empty, a huge leaf, or a PMD-level softleaf entry
    return entry_ptr(table_entry_pfn(pmdval), pte_index(addr))


def pte_alloc(mm, pmdp: int) -> bool:
    """__pte_alloc(): give an empty PMD a PTE table. False on -ENOMEM."""
    k = mm.k
    if not pmd_none(ptep_get(k, pmdp)):
        return True
    pfn = alloc_table(k)
    if pfn is None:
        return False
    with pmd_lockptr(mm, pmdp):
        if pmd_none(ptep_get(k, pmdp)):
            set_pte_at(mm, 0, pmdp, mk_table_entry(pfn))
            return True
    free_table(k, pfn)
    return True


def pte_lockptr(mm, ptep: int) -> Lock:
    return mm.k.ptlocks[ptep >> PAGE_SHIFT]


def pmd_lockptr(mm, pmdp: int) -> Lock:
    return mm.k.ptlocks.get(pmdp >> PAGE_SHIFT) or mm.page_table_lock


def walk_pte(mm, addr: int) -> tuple[int | None, int | None]:
    """(pmdp, ptep) for addr without allocating; ptep None under a leaf/none PMD."""
    pmdp = pmd_offset(mm, addr)
    if pmdp is None:
        return None, None
    return pmdp, pte_offset_map(mm.k, ptep_get(mm.k, pmdp), addr)


def free_pgd_range(mm, start: int, end: int, floor: int, ceiling: int) -> None:
    """free_pgtables(): free the tables of [start, end) that no vma can need.

    A table is freed only when the whole span it maps lies in [floor,
    ceiling), as free_pgd_range() decides; only present entries are visited.
    """
    k = mm.k
    levels = (PGDIR_SHIFT, PUD_SHIFT, PMD_SHIFT)
    _free_level(mm, k, mm.pgd, 0, levels, start, end, floor, ceiling)


def _free_level(mm, k, table: int, base: int, shifts, start, end, floor, ceiling) -> None:
    shift = shifts[0]
    size = 1 << shift
    words = k.mem.table(table)
    for idx in words.nonzero()[0]:
        a = base + (int(idx) << shift)
        if a + size <= start or a >= end:
            continue
        e = int(words[idx])
        if len(shifts) == 1 and (pmd_leaf(e) or not e & 1):  # a huge or softleaf PMD
            continue
        child = table_entry_pfn(e)
        if len(shifts) > 1:
            _free_level(mm, k, child, a, shifts[1:], start, end, floor, ceiling)
        if a >= floor and a + size <= ceiling and not k.mem.table(child).any():
            with mm.page_table_lock:
                words[idx] = 0
            free_table(k, child)

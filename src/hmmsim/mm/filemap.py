"""Fault-around's page-cache side: map the cached pages of a window.

Models: mm/filemap.c (filemap_map_pages, next_uptodate_folio,
filemap_map_pmd, filemap_map_order0_folio) @ torvalds/linux 0eaed89c18ae;
checked against Linux 6.12 (same conditions; 6.12 and the pinned tag both
clip the window to i_size first and batch the rss update).

The page cache is shmem's (the only file with ->map_pages here); its folios
are order 0, never under readahead, never hardware-poisoned, and there are
no swap or shadow entries, so those skips of the kernel never fire. The
readahead bookkeeping (file->f_ra.mmap_miss) is not modelled: nothing
reads it without readahead I/O.
"""

from __future__ import annotations

from hmmsim.bug import KernelBug
from hmmsim.include.mm import VM_FAULT_NOPAGE
from hmmsim.include.mm_types import (
    Page,
    PG_uptodate,
    folio_put,
    folio_ref_add,
    folio_test_large,
    folio_test_locked,
    folio_try_get,
)
from hmmsim.include.pgtable import pmd_none, pmd_trans_huge, pte_none
from hmmsim.kconfig import PAGE_SHIFT, PAGE_SIZE
from hmmsim.locking import folio_trylock, folio_unlock

ULONG_MAX = (1 << 64) - 1


def _folio_test_uptodate(folio: Page) -> bool:
    return bool(folio.a.flags[folio.i] & PG_uptodate)


def next_uptodate_folio(mapping, index: int, end_pgoff: int) -> tuple[Page | None, int]:
    """The next cached folio at or after index (up to end_pgoff) that can be
    mapped without waiting: not locked, still referenced, uptodate, locked
    by us (trylock), still in this mapping, and inside i_size.

    Returns (folio, its index): locked and with a reference taken, or
    (None, end) when none is left.
    Kernel: mm/filemap.c next_uptodate_folio.
    """
    k = mapping.k
    while index <= end_pgoff:
        pfn = mapping.cache.get(index)
        if pfn is None:
            index += 1
            continue
        folio = k.mem.pfn_to_page(pfn)
        if folio_test_locked(folio) or not folio_try_get(folio):
            index += 1
            continue
        if _folio_test_uptodate(folio) and folio_trylock(folio):
            max_idx = (mapping.i_size + PAGE_SIZE - 1) >> PAGE_SHIFT
            if (
                folio.a.mapping[folio.i] == mapping.id
                and _folio_test_uptodate(folio)
                and index < max_idx
            ):
                return folio, index
            folio_unlock(folio)
        folio_put(folio)
        index += 1
    return None, index


def filemap_map_pmd(vmf, folio: Page) -> bool:
    """True if the PMD already maps a huge page (nothing to do); else give
    an empty PMD the preallocated PTE table. (No shmem THP in the model, so
    a PMD-mappable folio never turns up.) Kernel: mm/filemap.c filemap_map_pmd.
    """
    from hmmsim.mm.memory import pmd_install
    from hmmsim.mm.pgtable import pmdp_get

    mm = vmf.vma.vm_mm
    pmdval = pmdp_get(mm.k, vmf.pmd)
    if pmd_trans_huge(pmdval):
        folio_unlock(folio)
        folio_put(folio)
        return True
    if pmd_none(pmdval) and vmf.prealloc_pte is not None:
        pmd_install(mm, vmf.pmd, vmf)
    return False


def filemap_map_order0_folio(vmf, folio: Page, addr: int, ptep: int) -> tuple[int, int]:
    """Map one order-0 folio at addr if its PTE is empty (a marker or any
    other entry is left to the fault path). Returns (VM_FAULT_NOPAGE if this
    is the faulting address else 0, pages mapped).
    Kernel: mm/filemap.c filemap_map_order0_folio.
    """
    from hmmsim.mm.memory import set_pte_range
    from hmmsim.mm.pgtable import ptep_get

    if not pte_none(ptep_get(vmf.vma.vm_mm.k, ptep)):
        return 0, 0
    ret = VM_FAULT_NOPAGE if vmf.address == addr else 0
    set_pte_range(vmf, folio, folio, 1, addr, ptep)
    folio_ref_add(folio, 1)
    return ret, 1


def filemap_map_pages(vmf, start_pgoff: int, end_pgoff: int) -> int:
    """->map_pages: map every ready cached page of [start_pgoff, end_pgoff].

    The window is first clipped to the last page inside i_size. Each page is
    mapped from vm_page_prot (writable in a shared writable shmem mapping,
    read-only in a private one), counted in the file's rss counter and given
    a mapcount and a reference. Returns VM_FAULT_NOPAGE if the faulting page
    was among them (or a huge PMD is there), else 0.
    Kernel: mm/filemap.c filemap_map_pages.
    """
    from hmmsim.mm.memory import mm_counter_file
    from hmmsim.mm.pgtable import pmdp_get, pte_lockptr, pte_offset_map

    vma = vmf.vma
    mm = vma.vm_mm
    k = mm.k
    mapping = vma.vm_file
    file_end = (((mapping.i_size + PAGE_SIZE - 1) >> PAGE_SHIFT) - 1) & ULONG_MAX
    end_pgoff = min(end_pgoff, file_end)
    folio, index = next_uptodate_folio(mapping, start_pgoff, end_pgoff)
    if folio is None:
        return 0
    # shmem may always map large (PMD) across i_size; no shmem THP here
    if filemap_map_pmd(vmf, folio):
        return VM_FAULT_NOPAGE
    addr = vma.vm_start + ((start_pgoff - vma.vm_pgoff) << PAGE_SHIFT)
    ptep0 = pte_offset_map(k, pmdp_get(k, vmf.pmd), addr)
    if ptep0 is None:
        folio_unlock(folio)
        folio_put(folio)
        return 0
    ret = 0
    rss = 0
    folio_type = mm_counter_file(folio)
    with pte_lockptr(mm, ptep0):
        while folio is not None:
            off = index - start_pgoff
            if folio_test_large(folio):
                raise KernelBug("filemap_map_pages: large page-cache folios are not modelled")
            r, n = filemap_map_order0_folio(vmf, folio, addr + off * PAGE_SIZE, ptep0 + 8 * off)
            ret |= r
            rss += n
            folio_unlock(folio)
            folio_put(folio)
            folio, index = next_uptodate_folio(mapping, index + 1, end_pgoff)
        mm.rss_stat[folio_type] += rss
    return ret

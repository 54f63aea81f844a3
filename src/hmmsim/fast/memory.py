"""Bulk forms of the PTE-table loops of mm/memory.py (not kernel code).

Each function is offered one PTE-table window by the reference loop it
shadows and either handles all of it (returning how many entries) or
declines (0) and changes nothing:

- `zap_pte_range`: zap_pte_range's loop when every entry is none or a
  present mapping of an order-0 anonymous RAM folio or of the zero page;
- `copy_pte_range`: copy_pte_range's loop (fork) of a private COW mapping
  under the same condition, no page possibly pinned;
- `do_anonymous_pages`: the write faults (handle_mm_fault ->
  do_anonymous_page, then the retried access) of a CPU store over the
  leading run of unpopulated pages of one PTE table; offered by
  Process.store (userspace.py), whose per-page loop faults one page at a
  time.

Every one declines unless Kernel.fastpath and a run of at least MIN_RUN
entries. New PTE words are built with include/'s array encoders, the first
of each run checked against the scalar builders (KernelBug on a mismatch);
struct pages change only through mm/page_batch.py's batched operations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

from hmmsim.bug import KernelBug
from hmmsim.fast.arrays import has_duplicates
from hmmsim.include.mm import GUP_PIN_COUNTING_BIAS, VM_HUGETLB, VM_SHARED, VM_WRITE
from hmmsim.include.mm_types import (
    FOLIO_MAPPING_ANON,
    MM_ANONPAGES,
    PG_head,
    PG_hugetlb,
    PG_reserved,
    PG_zero,
    is_cow_mapping,
    linear_page_index,
    vm_area_struct,
    vma_is_anonymous,
)
from hmmsim.include.pgtable import (
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_UFFD_WP,
    pfn_pte,
    pfn_pte_array,
    pmd_none,
    pte_mkdirty,
    pte_mkold,
    pte_mkold_array,
    pte_mkwrite_novma,
    pte_pfn_array,
    pte_present_array,
    pte_special_array,
    pte_write,
    pte_write_array,
    pte_wrprotect,
    pte_wrprotect_array,
)
from hmmsim.kconfig import PAGE_SHIFT
from hmmsim.mm.page_batch import (
    folio_add_new_anon_rmap_pages,
    folio_get_pages,
    folio_put_pages,
    folio_remove_rmap_pte_pages,
    folio_try_dup_anon_rmap_pte_pages,
)

#: shortest window worth a bulk pass (below it the per-entry loop is cheaper)
MIN_RUN = 8

I64Array: TypeAlias = NDArray[np.int64]
U64Array: TypeAlias = NDArray[np.uint64]
BoolArray: TypeAlias = NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Reference:
    """The per-entry operations of mm/ that do_anonymous_pages borrows.

    fast/ never imports mm/ (docs/design.md); its caller builds one of these
    from mm/'s own names and passes it with each offer.
    """

    #: mm/pgtable.py walk_pte: (pmdp, ptep) of an address without allocating
    walk_pte: Callable[[Any, int], tuple[int | None, int | None]]
    #: the gfp of do_anonymous_page's vma_alloc_zeroed_movable_folio
    #: (GFP_HIGHUSER_MOVABLE | __GFP_ZERO, mm/page_alloc.py)
    gfp_zeroed_movable: int


def _ptes_of(k: Any, ptep: int, nr: int) -> U64Array:
    """The `nr` PTE words from ptep on, as a writable view of the table page."""
    i = (ptep >> 3) & 511
    view: U64Array = k.mem.ram.words[ptep >> PAGE_SHIFT, i : i + nr]
    return view


def _plain_anon_pages(k: Any, ptes: U64Array) -> I64Array | None:
    """For present PTEs: the PFNs of the normal pages among them, or None
    when one of them is anything but a mapping of a distinct order-0
    anonymous RAM folio or of the zero page (special): a large folio, a
    file, reserved or device page, a PFN mapped twice."""
    special = pte_special_array(ptes)
    pfns = pte_pfn_array(ptes)
    normal: BoolArray = ~special & (pfns != k.mem.zero_pfn)
    pfns = pfns[normal]
    if not len(pfns):
        return pfns
    ram = k.mem.ram.pages
    if pfns.min() < 0 or pfns.max() >= ram.nr:
        return None
    fl = ram.flags[pfns]
    if (
        (fl & np.uint32(PG_head | PG_reserved | PG_zero | PG_hugetlb)).any()
        or ram.head_off[pfns].any()
        or ram.pgmap[pfns].any()
        or not (ram.mapping[pfns] & np.uint32(FOLIO_MAPPING_ANON)).all()
        or has_duplicates(pfns)
    ):
        return None
    return pfns


def zap_pte_range(vma: vm_area_struct, ptep: int, addr: int, end: int, even_cows: bool) -> int:
    """zap_pte_range's loop over [addr, end) of one PTE table, under its lock.

    Handles the window when every entry is none or a present mapping of an
    order-0 anonymous RAM folio or of the zero page, each folio mapped and
    referenced: the words cleared, rss and mapcounts dropped, then the
    references put in address order (the folios whose last one it was freed
    in that order, as the per-entry tlb_finish_mmu loop frees them). Returns
    the number of entries (all), or 0: declined, nothing done (a zap that
    keeps COW folios, even_cows false, is left to the per-entry loop).
    """
    mm = vma.vm_mm
    k = mm.k
    nr = (end - addr) >> PAGE_SHIFT
    if nr < MIN_RUN or not k.fastpath or not even_cows:
        return 0
    ptes = _ptes_of(k, ptep, nr)
    used = ptes != 0
    words = ptes[used]
    if not len(words):
        return nr  # an empty window: nothing to do
    if not pte_present_array(words).all():
        return 0
    pfns = _plain_anon_pages(k, words)
    if pfns is None:
        return 0
    ram = k.mem.ram.pages
    if (ram._mapcount[pfns] < 0).any() or (ram._refcount[pfns] <= 0).any():
        return 0  # the per-entry path raises there
    ptes[used] = 0
    if len(pfns):
        mm.rss_stat[MM_ANONPAGES] -= len(pfns)
        folio_remove_rmap_pte_pages(ram, pfns)
        folio_put_pages(ram, pfns, k=k)
    return nr


def copy_pte_range(
    dst_vma: vm_area_struct,
    src_vma: vm_area_struct,
    dst_ptep: int,
    src_ptep: int,
    addr: int,
    end: int,
) -> int:
    """copy_pte_range's loop (fork) over [addr, end) of one PTE table.

    Handles the window of a private (COW) mapping when every entry is none
    or a present mapping of an order-0 anonymous folio that cannot be
    pinned, or of the zero page: references and mapcounts taken,
    PageAnonExclusive cleared (copy_present_pte's folio_get and
    folio_try_dup_anon_rmap_pte), the parent's writable entries write
    protected, the child's entries old and without uffd-wp. Returns the
    number of entries (all), or 0: declined, nothing done.
    """
    src_mm = src_vma.vm_mm
    k = src_mm.k
    nr = (end - addr) >> PAGE_SHIFT
    if (
        nr < MIN_RUN
        or not k.fastpath
        or src_vma.vm_flags & VM_SHARED
        or not is_cow_mapping(src_vma.vm_flags)
    ):
        return 0
    src = _ptes_of(k, src_ptep, nr)
    used = src != 0
    words = src[used]
    if not len(words):
        return nr
    if not pte_present_array(words).all():
        return 0
    pfns = _plain_anon_pages(k, words)
    if pfns is None:
        return 0
    ram = k.mem.ram.pages
    refs = ram._refcount[pfns]
    if len(pfns) and ((refs <= 0).any() or (refs + 1 >= GUP_PIN_COUNTING_BIAS).any()):
        return 0  # a free page (the per-entry path raises) or maybe pinned: copied
    wr = pte_write_array(words)
    parent = words.copy()
    parent[wr] = pte_wrprotect_array(words[wr])
    child = pte_mkold_array(parent) & ~np.uint64(_PAGE_UFFD_WP)
    j = int(np.argmax(wr)) if wr.any() else 0
    w = int(words[j])
    one = pte_wrprotect(w) if pte_write(w) else w
    if int(parent[j]) != one or int(child[j]) != pte_mkold(one) & ~_PAGE_UFFD_WP:
        raise KernelBug(f"fast copy_pte_range: PTE {w:#x} built differently")
    if len(pfns):
        folio_get_pages(ram, pfns)
        folio_try_dup_anon_rmap_pte_pages(ram, pfns)
        dst_vma.vm_mm.rss_stat[MM_ANONPAGES] += len(pfns)
    src[used] = parent
    _ptes_of(k, dst_ptep, nr)[used] = child
    return nr


def do_anonymous_pages(
    ref: Reference, vma: vm_area_struct, addr: int, nr: int
) -> tuple[I64Array | None, int]:
    """The write faults of a CPU store into `nr` pages from addr, all in one
    PTE table that exists: the first n (pte_none) of them, each as
    handle_mm_fault -> do_anonymous_page would map it, and then as the
    retried access sets it young and dirty.

    Returns (the n new PFNs in address order, n): the caller stores its
    data into those frames (every byte of them: they are not zeroed here).
    Or (None, skip), nothing done, when fewer than MIN_RUN pages qualify,
    the table or the vma's anon_vma does not exist yet, or the allocator
    could not hand out n pages in one go (the per-page path then takes its
    own way, OOM included): `skip` is how many pages from addr the caller
    should leave to the per-page path before it offers again (1 where the
    first fault creates what is missing).
    """
    mm = vma.vm_mm
    k = mm.k
    if (
        nr < MIN_RUN
        or not k.fastpath
        or vma.vm_flags & (VM_SHARED | VM_HUGETLB)
        or not vma.vm_flags & VM_WRITE
        or not vma_is_anonymous(vma)
    ):
        return None, max(nr, 1)
    if vma.anon_vma is None:
        return None, 1
    pmdp, ptep = ref.walk_pte(mm, addr)
    if pmdp is None:
        return None, 1
    if ptep is None:
        pmdval = int(k.mem.ram.words[pmdp >> PAGE_SHIFT, (pmdp >> 3) & 511])
        return None, 1 if pmd_none(pmdval) else nr  # a huge or softleaf PMD: per page
    ptes = _ptes_of(k, ptep, nr)
    busy = np.flatnonzero(ptes)
    n = int(busy[0]) if len(busy) else nr
    if n < MIN_RUN:
        if n:
            return None, n
        free = np.flatnonzero(ptes == 0)
        return None, int(free[0]) if len(free) else nr  # mapped pages: per page
    pfns = k.mem.alloc_pages_order0_bulk(n, ref.gfp_zeroed_movable)
    if pfns is None:
        return None, nr
    k.stats["faults"] += n
    prot = vma.vm_page_prot
    one = pte_mkwrite_novma(pte_mkdirty(pfn_pte(0, prot)))
    one |= _PAGE_ACCESSED | _PAGE_DIRTY  # the retried access (the hardware walk)
    base = pfn_pte(0, prot)
    new = (pfn_pte_array(pfns, prot) | np.uint64(one & ~base)) & ~np.uint64(base & ~one)
    p0 = int(pfns[0])
    if int(new[0]) != pte_mkwrite_novma(pte_mkdirty(pfn_pte(p0, prot))) | (
        _PAGE_ACCESSED | _PAGE_DIRTY
    ):
        raise KernelBug(f"fast do_anonymous_pages: PTE for {p0:#x} built differently")
    mm.rss_stat[MM_ANONPAGES] += n
    folio_add_new_anon_rmap_pages(
        k.mem.ram.pages, pfns, vma.anon_vma.id, linear_page_index(vma, addr)
    )
    ptes[:n] = new
    return pfns, n

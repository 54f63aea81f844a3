"""get_user_pages / pin_user_pages: look up (and fault in) user pages.

Models: mm/gup.c (__get_user_pages, follow_page_mask, faultin_page,
check_vma_flags, try_grab_folio, unpin_user_page, the FOLL_LONGTERM
migration of DEVICE_COHERENT pages via migrate_device_coherent_folio) and
include/linux/mm.h (folio_maybe_dma_pinned, GUP_PIN_COUNTING_BIAS) @
torvalds/linux 0eaed89c18ae.

Pins are counted like the kernel: a small folio gets GUP_PIN_COUNTING_BIAS
references per pin (so folio_maybe_dma_pinned may report false positives
for a folio with ~1024 ordinary references, as in the kernel); a large folio
gets one reference and a _pincount increment. The model keeps the pin count
in Kernel.pins for the invariant checker.
"""

from __future__ import annotations

from hmmsim.errno import EFAULT, ENOMEM
from hmmsim.include.mm import (
    FAULT_FLAG_REMOTE,
    FAULT_FLAG_WRITE,
    GUP_PIN_COUNTING_BIAS,
    VM_FAULT_ERROR,
    VM_FAULT_OOM,
    VM_IO,
    VM_PFNMAP,
    VM_READ,
    VM_WRITE,
)
from hmmsim.include.mm_types import (
    folio_get,
    folio_put,
    folio_put_refs,
    folio_ref_add,
    folio_test_large,
    page_folio,
)
from hmmsim.include.pgtable import (
    _PAGE_PRESENT,
    _PAGE_PSE,
    _PAGE_RW,
    _PAGE_USER,
    pmd_pfn,
    pte_pfn,
)
from hmmsim.kconfig import PAGE_SHIFT, PMD_SIZE

FOLL_WRITE = 1 << 0
FOLL_GET = 1 << 1
FOLL_DUMP = 1 << 2
FOLL_FORCE = 1 << 3
FOLL_NOWAIT = 1 << 4
FOLL_NOFAULT = 1 << 5
FOLL_HWPOISON = 1 << 6
FOLL_ANON = 1 << 7
FOLL_LONGTERM = 1 << 8
FOLL_SPLIT_PMD = 1 << 9
#: internal (mm/internal.h): a FOLL_PIN reference rather than FOLL_GET
FOLL_PIN = 1 << 16


def folio_maybe_dma_pinned(folio) -> bool:
    from hmmsim.include.mm_types import folio_ref_count

    if folio_test_large(folio):
        return folio.k.pins.get(folio.pfn, 0) > 0
    return folio_ref_count(folio) >= GUP_PIN_COUNTING_BIAS


def check_vma_flags(vma, gup_flags: int) -> int:
    if vma.vm_flags & (VM_IO | VM_PFNMAP):
        return -EFAULT
    if gup_flags & FOLL_WRITE:
        if not vma.vm_flags & VM_WRITE and not gup_flags & FOLL_FORCE:
            return -EFAULT
    elif not vma.vm_flags & VM_READ and not gup_flags & FOLL_FORCE:
        return -EFAULT
    return 0


def _follow_page(mm, vma, addr: int, gup_flags: int):
    """The page mapped at addr if the access is already permitted, else None."""
    from hmmsim.mm.huge_memory import is_huge_zero_pmd, split_huge_pmd_address
    from hmmsim.mm.pgtable import pmd_offset, pmdp_get, pte_offset_map, ptep_get

    k = mm.k
    pmdp = pmd_offset(mm, addr)
    if pmdp is None:
        return None
    pmd = pmdp_get(k, pmdp)
    need = _PAGE_PRESENT | _PAGE_USER | (_PAGE_RW if gup_flags & FOLL_WRITE else 0)
    if pmd & _PAGE_PSE:
        if gup_flags & FOLL_SPLIT_PMD and not is_huge_zero_pmd(k, pmd):
            split_huge_pmd_address(vma, addr)
            return _follow_page(mm, vma, addr, gup_flags)
        if pmd & need != need:
            return None
        return k.mem.pfn_to_page(pmd_pfn(pmd) + ((addr & (PMD_SIZE - 1)) >> PAGE_SHIFT))
    ptep = pte_offset_map(k, pmd, addr)
    if ptep is None:
        return None
    pte = ptep_get(k, ptep)
    if pte & need != need:
        return None
    return k.mem.pfn_to_page(pte_pfn(pte))


def try_grab_folio(folio, refs: int, gup_flags: int) -> None:
    if gup_flags & FOLL_PIN:
        k = folio.k
        if folio_test_large(folio):
            folio_ref_add(folio, refs)
        else:
            folio_ref_add(folio, refs * GUP_PIN_COUNTING_BIAS)
        k.pins[folio.pfn] = k.pins.get(folio.pfn, 0) + refs
    else:
        folio_ref_add(folio, refs)


def unpin_user_page(page) -> None:
    folio = page_folio(page)
    k = folio.k
    left = k.pins.get(folio.pfn, 0) - 1
    if left < 0:
        from hmmsim.bug import KernelBug

        raise KernelBug(f"unpin_user_page: {folio!r} is not pinned")
    if left:
        k.pins[folio.pfn] = left
    else:
        del k.pins[folio.pfn]
    folio_put_refs(folio, 1 if folio_test_large(folio) else GUP_PIN_COUNTING_BIAS)


def __get_user_pages(mm, start: int, nr_pages: int, gup_flags: int) -> list | int:
    """Fault in and reference nr_pages pages from start; the pages or -errno.

    Returns -EFAULT (no vma, forbidden access, fault error), -ENOMEM (OOM),
    or the pages found before the first failure if any were found.
    """
    from hmmsim.mm.memory import handle_mm_fault
    from hmmsim.mm.memremap import is_device_coherent_page
    from hmmsim.mm.migrate_device import migrate_device_coherent_folio
    from hmmsim.mm.mmap import vma_lookup

    pages = []
    addr = start & ~((1 << PAGE_SHIFT) - 1)
    for _ in range(nr_pages):
        vma = vma_lookup(mm, addr)
        err = -EFAULT if vma is None else check_vma_flags(vma, gup_flags)
        if err:
            return pages or err
        for _attempt in range(64):
            page = _follow_page(mm, vma, addr, gup_flags)
            if page is not None:
                break
            if gup_flags & FOLL_NOFAULT:
                return pages or -EFAULT
            ret = handle_mm_fault(
                vma, addr, FAULT_FLAG_REMOTE | (FAULT_FLAG_WRITE if gup_flags & FOLL_WRITE else 0)
            )
            if ret & VM_FAULT_OOM:
                return pages or -ENOMEM
            if ret & VM_FAULT_ERROR:
                return pages or -EFAULT
        else:
            return pages or -EFAULT
        folio = page_folio(page)
        if gup_flags & FOLL_LONGTERM and is_device_coherent_page(page):
            # check_and_migrate_movable_pages: coherent pages must not stay pinned
            folio_get(folio)
            if migrate_device_coherent_folio(folio):
                return pages or -EFAULT
            continue_addr = addr
            page = _follow_page(mm, vma, continue_addr, gup_flags)
            if page is None:
                return pages or -EFAULT
            folio = page_folio(page)
        try_grab_folio(folio, 1, gup_flags)
        pages.append(page)
        addr += 1 << PAGE_SHIFT
    return pages


def get_user_pages_remote(mm, start: int, nr_pages: int, gup_flags: int):
    return __get_user_pages(mm, start, nr_pages, gup_flags | FOLL_GET)


def pin_user_pages_remote(mm, start: int, nr_pages: int, gup_flags: int):
    return __get_user_pages(mm, start, nr_pages, gup_flags | FOLL_PIN)


def get_user_page_vma_remote(mm, addr: int, gup_flags: int):
    """One referenced page and its vma: (page, vma), or -errno."""
    from hmmsim.mm.mmap import vma_lookup

    got = __get_user_pages(mm, addr, 1, gup_flags | FOLL_GET)
    if isinstance(got, int):
        return got
    if not got:
        return -EFAULT
    return got[0], vma_lookup(mm, addr)


def put_page(page) -> None:
    folio_put(page_folio(page))

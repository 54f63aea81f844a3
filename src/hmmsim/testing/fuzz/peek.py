"""A side-effect-free view of what a CPU access would read (the oracle's window on the kernel)."""

from __future__ import annotations

from hmmsim.drivers.test_hmm import BACKING_PAGE
from hmmsim.include.mm_types import Page, page_folio
from hmmsim.include.pgtable import pmd_pfn, pmd_present, pte_none, pte_pfn, pte_present
from hmmsim.kconfig import PAGE_SHIFT, PAGE_SIZE
from hmmsim.mm.mmap import vma_lookup
from hmmsim.testing.fuzz.ops import HPAGE_NR
from hmmsim.userspace import entry_at


class PeekError(Exception):
    """A page table holds something that must not exist between syscalls."""


def _softleaf_frame(k, entry: int, sub: int, addr: int):
    swp = k.swp
    if swp.softleaf_is_device_private(entry):
        page = k.softleaf_to_page(entry)
        page = Page(k, page.a, page.i + sub)
        head = page_folio(page)
        rhead = BACKING_PAGE(head)
        if rhead is None:
            raise PeekError(f"{addr:#x}: device-private page {page.pfn:#x} has no backing page")
        return k.mem.frame(rhead.pfn + (page.i - head.i))
    if swp.softleaf_is_device_exclusive(entry):
        page = k.softleaf_to_page(entry)
        return k.mem.frame(page.pfn + sub)
    raise PeekError(f"{addr:#x}: unexpected entry between syscalls: {swp.describe_softleaf(entry)}")


def peek_frame(k, proc, addr: int):
    """The page a CPU access at addr would read, without faulting.

    Returns a 4096-byte NumPy view, or None where nothing is populated yet
    (anonymous memory reads zeros). Raises PeekError for a migration entry
    or any other entry that no syscall may leave behind, or for no vma.
    """
    level, e = entry_at(proc, addr)
    mem = k.mem
    if level == "pmd":
        sub = (addr >> PAGE_SHIFT) & (HPAGE_NR - 1)
        if pmd_present(e):
            return mem.frame(pmd_pfn(e) + sub)
        return _softleaf_frame(k, k.swp.softleaf_from_pmd(e), sub, addr)
    if level == "pte" and not pte_none(e):
        if pte_present(e):
            return mem.frame(pte_pfn(e))
        return _softleaf_frame(k, k.swp.softleaf_from_pte(e), 0, addr)
    return peek_unmapped(k, proc, addr)


def peek_unmapped(k, proc, addr: int):
    """peek_frame() where no page-table entry maps addr (no table, or an
    empty PTE): the shmem page cache for a shared mapping, else None."""
    mem = k.mem
    vma = vma_lookup(proc.mm, addr)
    if vma is None:
        raise PeekError(f"{addr:#x}: no vma")
    f = vma.vm_file
    if f is None:
        return None
    pfn = f.cache.get(vma.vm_pgoff + ((addr - vma.vm_start) >> PAGE_SHIFT))
    return None if pfn is None else mem.frame(pfn)


def peek(k, proc, addr: int, n: int) -> bytes:
    """n bytes at addr as the process would read them, read without faulting."""
    out = bytearray()
    end = addr + n
    while addr < end:
        base = addr & ~(PAGE_SIZE - 1)
        chunk = min(base + PAGE_SIZE, end) - addr
        fr = peek_frame(k, proc, base)
        off = addr - base
        out += bytes(chunk) if fr is None else fr[off : off + chunk].tobytes()
        addr += chunk
    return bytes(out)

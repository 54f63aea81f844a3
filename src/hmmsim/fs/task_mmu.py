"""/proc/PID/pagemap: one 64-bit word per virtual page.

Models: fs/proc/task_mmu.c (pagemap_read, pagemap_pmd_range,
pte_to_pagemap_entry, pagemap_hugetlb_range) and
Documentation/admin-guide/mm/pagemap.rst @ torvalds/linux 0eaed89c18ae.

Bits: 0-54 frame (PFN, or swap type | offset << 5), 55 soft-dirty, 56
exclusively mapped, 57 uffd-wp, 61 file/shared-anon, 62 swapped (any
software leaf: swap, migration, device-private, device-exclusive), 63
present. The reader is unprivileged (no CAP_SYS_ADMIN), so frames read as 0,
as for an ordinary process since Linux 4.2.
"""

from __future__ import annotations

import struct

from hmmsim.errno import EINVAL
from hmmsim.include.mm_types import folio_test_anon, page_folio, page_mapcount
from hmmsim.include.pgtable import (
    _PAGE_PRESENT,
    _PAGE_PSE,
    pmd_pfn,
    pmd_soft_dirty,
    pte_pfn,
    pte_present,
    pte_soft_dirty,
    pte_swp_soft_dirty,
)
from hmmsim.kconfig import PAGE_SHIFT

PM_ENTRY_BYTES = 8
PM_PFRAME_BITS = 55
PM_PFRAME_MASK = (1 << PM_PFRAME_BITS) - 1
PM_SOFT_DIRTY = 1 << 55
PM_MMAP_EXCLUSIVE = 1 << 56
PM_UFFD_WP = 1 << 57
PM_FILE = 1 << 61
PM_SWAP = 1 << 62
PM_PRESENT = 1 << 63
MAX_SWAPFILES_SHIFT = 5


class pagemap_file:
    """The open /proc/self/pagemap of one process (read-only)."""

    nlink = 1

    def __init__(self, proc, show_pfn: bool = False) -> None:
        self.proc = proc
        self.show_pfn = show_pfn
        self.i_count = 0

    def __repr__(self) -> str:
        return f"<pagemap pid={self.proc.pid}>"

    def release(self, f) -> None:
        return None

    def read(self, offset: int, count: int) -> bytes | int:
        """pagemap_read(): offset and count must be multiples of 8 (-EINVAL)."""
        if offset % PM_ENTRY_BYTES or count % PM_ENTRY_BYTES:
            return -EINVAL
        first = offset // PM_ENTRY_BYTES
        words = [self.entry((first + i) << PAGE_SHIFT) for i in range(count // PM_ENTRY_BYTES)]
        return struct.pack(f"<{len(words)}Q", *words)

    def entry(self, addr: int) -> int:
        """The pagemap word of the page at addr."""
        from hmmsim.mm.mmap import vma_lookup
        from hmmsim.userspace import entry_at

        proc = self.proc
        k = proc.k
        vma = vma_lookup(proc.mm, addr)
        if vma is None:
            return 0
        flags = PM_FILE if vma.vm_file is not None else 0
        level, e = entry_at(proc, addr)
        if not e:
            return 0
        swp = k.swp
        if e & _PAGE_PRESENT or (level == "pte" and pte_present(e)):
            huge = level == "pmd" and e & _PAGE_PSE
            sub = (addr >> PAGE_SHIFT) & 511 if huge else 0
            pfn = (pmd_pfn(e) if huge else pte_pfn(e)) + sub
            frame = pfn if self.show_pfn else 0
            if pmd_soft_dirty(e) if huge else pte_soft_dirty(e):
                flags |= PM_SOFT_DIRTY
            if k.mem.pfn_valid(pfn) and pfn != k.mem.zero_pfn and pfn != k.huge_zero_pfn:
                page = k.mem.pfn_to_page(pfn)
                if page_mapcount(page) == 1:
                    flags |= PM_MMAP_EXCLUSIVE
                if not folio_test_anon(page_folio(page)):
                    flags |= PM_FILE
            return frame | flags | PM_PRESENT
        entry = swp.softleaf_from_pmd(e) if level == "pmd" else swp.softleaf_from_pte(e)
        if swp.softleaf_is_marker(entry):
            return flags
        frame = 0
        if self.show_pfn:
            off = (
                swp.softleaf_to_pfn(entry) if swp.softleaf_has_pfn(entry) else swp.swp_offset(entry)
            )
            if level == "pmd":
                off += (addr >> PAGE_SHIFT) & 511
            frame = (swp.swp_type(entry) | (off << MAX_SWAPFILES_SHIFT)) & PM_PFRAME_MASK
        if pte_swp_soft_dirty(e):
            flags |= PM_SOFT_DIRTY
        if swp.softleaf_has_pfn(entry):
            page = k.softleaf_to_page(entry)
            if page_mapcount(page) == 1:
                flags |= PM_MMAP_EXCLUSIVE
        return frame | flags | PM_SWAP

"""/proc/PID/pagemap: one 64-bit word per virtual page.

Models: fs/proc/task_mmu.c (pagemap_read, pagemap_pmd_range,
pte_to_pagemap_entry, pagemap_hugetlb_range) and
Documentation/admin-guide/mm/pagemap.rst @ torvalds/linux 0eaed89c18ae.

Bits: 0-54 frame (PFN, or swap type | offset << 5), 55 soft-dirty (the
entry's own bit, or the vma's VM_SOFTDIRTY for every entry, holes
included), 56 exclusively mapped (present entries only), 57 uffd-wp, 58
guard region (the pin only), 61 file/shared-anon (from the folio), 62
swapped (any non-none software leaf: swap, migration, device-private,
device-exclusive, marker; not for hugetlb), 63 present. Frames read as 0
unless the opener had CAP_SYS_ADMIN (`show_pfn`), as since Linux 4.2.
6.12 differences (KConfig.kernel): docs/kernel-versions.md #13, #14; the 6.12
source is fs/proc/task_mmu.c of linux-6.12.117.
"""

from __future__ import annotations

import struct

from hmmsim.errno import EINVAL
from hmmsim.include.mm import VM_HUGETLB, VM_SOFTDIRTY
from hmmsim.include.mm_types import folio_mapcount, folio_test_anon, page_folio, page_mapcount
from hmmsim.include.pgtable import (
    _PAGE_PRESENT,
    pmd_pfn,
    pmd_soft_dirty,
    pmd_swp_soft_dirty,
    pmd_swp_uffd_wp,
    pte_pfn,
    pte_present,
    pte_soft_dirty,
    pte_swp_soft_dirty,
    pte_swp_uffd_wp,
    pte_uffd_wp,
)
from hmmsim.kconfig import PAGE_SHIFT

PM_ENTRY_BYTES = 8
PM_PFRAME_BITS = 55
PM_PFRAME_MASK = (1 << PM_PFRAME_BITS) - 1
PM_SOFT_DIRTY = 1 << 55
PM_MMAP_EXCLUSIVE = 1 << 56
PM_UFFD_WP = 1 << 57
PM_GUARD_REGION = 1 << 58
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
        """The pagemap word of the page at addr.

        One page of fs/proc/task_mmu.c pagemap_pte_hole (no page table or an
        empty entry), pte_to_pagemap_entry (PTE level) or pagemap_pmd_range's
        huge branch (a leaf or non-present PMD). Every entry of a vma with
        VM_SOFTDIRTY, holes included, reads soft-dirty. PM_FILE comes from the
        folio (not anon), never from vma->vm_file, so a hole of a file vma and
        a CoW'd anon page of a private file mapping read without it.
        PM_MMAP_EXCLUSIVE needs PM_PRESENT (a device-private or migration
        entry's page is never "exclusively mapped"). Every non-present,
        non-none entry reads PM_SWAP, PTE markers included (6.12
        is_swap_pte; the pin's softleaf form keeps the branch and adds
        PM_GUARD_REGION for guard markers).
        """
        from hmmsim.mm.memory import vm_normal_page
        from hmmsim.mm.mmap import vma_lookup
        from hmmsim.userspace import entry_at

        proc = self.proc
        k = proc.k
        vma = vma_lookup(proc.mm, addr)
        if vma is None:
            return 0
        vma_flags = PM_SOFT_DIRTY if vma.vm_flags & VM_SOFTDIRTY else 0
        level, e = entry_at(proc, addr)
        if vma.vm_flags & VM_HUGETLB:
            return self._hugetlb_entry(addr, e) | vma_flags
        if not e:
            return vma_flags
        swp = k.swp
        huge = level == "pmd"
        page = None
        flags = 0
        frame = 0
        if e & _PAGE_PRESENT or (not huge and pte_present(e)):
            sub = (addr >> PAGE_SHIFT) & 511 if huge else 0
            pfn = (pmd_pfn(e) if huge else pte_pfn(e)) + sub
            frame = pfn if self.show_pfn else 0
            flags |= PM_PRESENT
            if pmd_soft_dirty(e) if huge else pte_soft_dirty(e):
                flags |= PM_SOFT_DIRTY
            if pte_uffd_wp(e):  # pmd_uffd_wp tests the same bit on x86-64
                flags |= PM_UFFD_WP
            if huge:
                page = self._pmd_page(pmd_pfn(e), sub)
            else:
                page = vm_normal_page(vma, addr, e)
        else:
            entry = swp.softleaf_from_pmd(e) if huge else swp.softleaf_from_pte(e)
            if pmd_swp_soft_dirty(e) if huge else pte_swp_soft_dirty(e):
                flags |= PM_SOFT_DIRTY
            if pmd_swp_uffd_wp(e) if huge else pte_swp_uffd_wp(e):
                flags |= PM_UFFD_WP
            if self.show_pfn:
                off = (
                    swp.softleaf_to_pfn(entry)
                    if swp.softleaf_has_pfn(entry)
                    else swp.swp_offset(entry)
                )
                if huge:
                    off += (addr >> PAGE_SHIFT) & 511
                frame = (swp.swp_type(entry) | (off << MAX_SWAPFILES_SHIFT)) & PM_PFRAME_MASK
            flags |= PM_SWAP
            if swp.softleaf_has_pfn(entry):
                page = k.softleaf_to_page(entry)
            if swp.softleaf_is_uffd_wp_marker(entry):
                flags |= PM_UFFD_WP
            if k.config.kernel != "6.12" and swp.softleaf_is_guard_marker(entry):
                flags |= PM_GUARD_REGION  # MADV_GUARD_INSTALL came in 6.13
        if page is not None:
            if not folio_test_anon(page_folio(page)):
                flags |= PM_FILE
            if flags & PM_PRESENT and page_mapcount(page) == 1:
                flags |= PM_MMAP_EXCLUSIVE
        return frame | flags | vma_flags

    def _hugetlb_entry(self, addr: int, e: int) -> int:
        """pagemap_hugetlb_range for one page: the huge entry's own soft-dirty
        bit is not read (only the vma's), a present folio reads PM_FILE when
        not anon and PM_MMAP_EXCLUSIVE when mapped once (hugetlb folios:
        folio_likely_mapped_shared in 6.12, folio_maybe_mapped_shared at the
        pin, both "mapcount > 1"; no PMD sharing in the model), and a
        non-present one (a migration entry) reads only its uffd-wp bit: no
        PM_SWAP."""
        k = self.proc.k
        if not e & _PAGE_PRESENT:
            return PM_UFFD_WP if e and pmd_swp_uffd_wp(e) else 0
        pfn = pmd_pfn(e) + ((addr >> PAGE_SHIFT) & 511)
        folio = page_folio(k.mem.pfn_to_page(pfn))
        flags = PM_PRESENT
        if not folio_test_anon(folio):
            flags |= PM_FILE
        if folio_mapcount(folio) <= 1:
            flags |= PM_MMAP_EXCLUSIVE
        if pte_uffd_wp(e):
            flags |= PM_UFFD_WP
        return flags | (pfn if self.show_pfn else 0)

    def _pmd_page(self, head_pfn: int, sub: int):
        """The page of a present leaf PMD as pagemap_pmd_range takes it.

        6.12 uses pmd_page() as is, so the huge zero folio (not anon, never
        mapcounted) reads PM_FILE and not exclusive; the pin's model skips the
        huge zero page like vm_normal_page_pmd.
        """
        k = self.proc.k
        if not k.mem.pfn_valid(head_pfn):
            return None
        if head_pfn == k.huge_zero_pfn and k.config.kernel != "6.12":
            return None
        return k.mem.pfn_to_page(head_pfn + sub)

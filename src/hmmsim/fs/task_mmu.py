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


# --- /proc/PID/clear_refs ------------------------------------------------------------
CLEAR_REFS_ALL = 1
CLEAR_REFS_ANON = 2
CLEAR_REFS_MAPPED = 3
CLEAR_REFS_SOFT_DIRTY = 4
CLEAR_REFS_MM_HIWATER_RSS = 5
CLEAR_REFS_LAST = 6
PROC_NUMBUF = 13


class clear_refs_file:
    """The open /proc/self/clear_refs of one process (write-only).

    fs/proc/task_mmu.c clear_refs_write: the text (at most PROC_NUMBUF - 1
    bytes, whitespace stripped) is a decimal type 1..5; anything else is
    -EINVAL. Type 4 (CLEAR_REFS_SOFT_DIRTY) is modelled: see
    clear_refs_soft_dirty. Types 1-3 (young/referenced bits) and 5 (peak
    RSS) change nothing the model reports, so they only succeed.
    """

    nlink = 1

    def __init__(self, proc) -> None:
        self.proc = proc
        self.i_count = 0

    def __repr__(self) -> str:
        return f"<clear_refs pid={self.proc.pid}>"

    def release(self, f) -> None:
        return None

    def read(self, offset: int, count: int) -> int:
        return -EINVAL  # no .read in proc_clear_refs_operations: vfs_read's -EINVAL

    def write(self, offset: int, data: bytes) -> int:
        count = len(data)
        text = bytes(data[: PROC_NUMBUF - 1]).split(b"\0", 1)[0].strip()
        body = text[1:] if text[:1] in (b"+", b"-") else text
        if not body or not body.isdigit():
            return -EINVAL  # kstrtoint
        itype = int(text)
        if not CLEAR_REFS_ALL <= itype < CLEAR_REFS_LAST:
            return -EINVAL
        if itype == CLEAR_REFS_SOFT_DIRTY:
            clear_refs_soft_dirty(self.proc.mm)
        return min(count, PROC_NUMBUF - 1)


def clear_refs_soft_dirty(mm) -> None:
    """Writing 4 to /proc/PID/clear_refs (fs/proc/task_mmu.c clear_refs_write,
    clear_refs_pte_range, clear_soft_dirty, clear_soft_dirty_pmd).

    Under mmap_lock for write: every vma loses VM_SOFTDIRTY; inside one
    MMU_NOTIFY_SOFT_DIRTY invalidation of the whole address space, every
    present PTE is write-protected and loses soft-dirty (unless it is a
    writable COW PTE of a possibly pinned folio), every other non-empty PTE
    loses its swap soft-dirty bit, a present huge PMD is write-protected and
    loses soft-dirty, and a PMD migration entry loses its swap soft-dirty
    bit (a device-private PMD keeps it). VM_PFNMAP vmas are skipped and
    hugetlb vmas keep their entries (no hugetlb_entry in the walk).
    Not modelled: vma_set_page_prot()'s write-notify for shared writable
    vmas (a page faulted in by a read after clear_refs maps writable).
    """
    from hmmsim.include.mm import VM_PFNMAP
    from hmmsim.include.mm_types import is_cow_mapping
    from hmmsim.include.mmu_notifier import MMU_NOTIFY_SOFT_DIRTY
    from hmmsim.include.pgtable import (
        pmd_none,
        pmd_present,
        pmd_swp_clear_soft_dirty,
        pmd_wrprotect,
        pte_clear_soft_dirty,
        pte_none,
        pte_present,
        pte_swp_clear_soft_dirty,
        pte_write,
        pte_wrprotect,
    )
    from hmmsim.kconfig import PAGE_SIZE, PMD_MASK, PMD_SIZE
    from hmmsim.mm.huge_memory import is_huge_pmd_entry
    from hmmsim.mm.memory import vm_normal_page
    from hmmsim.mm.mmu_notifier import notify_range
    from hmmsim.mm.pgtable import (
        pmd_lockptr,
        pmd_offset,
        pmdp_get,
        pte_lockptr,
        pte_offset_map,
        ptep_get,
        set_pmd_at,
        set_pte_at,
    )
    from hmmsim.mm.rmap import folio_maybe_dma_pinned

    k = mm.k
    swp = k.swp
    mm.mmap_lock.down_write()
    try:
        for vma in mm.vmas:
            vma.vm_flags &= ~VM_SOFTDIRTY
        with notify_range(mm, MMU_NOTIFY_SOFT_DIRTY, 0, (1 << 64) - PAGE_SIZE):
            for vma in list(mm.vmas):
                if vma.vm_flags & (VM_PFNMAP | VM_HUGETLB):
                    continue
                addr = vma.vm_start
                while addr < vma.vm_end:
                    nxt = min((addr & PMD_MASK) + PMD_SIZE, vma.vm_end)
                    pmdp = pmd_offset(mm, addr)
                    if pmdp is None or pmd_none(pmdp_get(k, pmdp)):
                        addr = nxt
                        continue
                    pmd = pmdp_get(k, pmdp)
                    if is_huge_pmd_entry(k, pmd):
                        with pmd_lockptr(mm, pmdp):
                            if pmd_present(pmd):
                                # pmd_clear_soft_dirty: the PTE's bit on x86-64
                                new = pte_clear_soft_dirty(pmd_wrprotect(pmd))
                                set_pmd_at(mm, addr & PMD_MASK, pmdp, new)
                            elif swp.softleaf_is_migration(swp.softleaf_from_pmd(pmd)):
                                new = pmd_swp_clear_soft_dirty(pmd)
                                set_pmd_at(mm, addr & PMD_MASK, pmdp, new)
                        addr = nxt
                        continue
                    ptep = pte_offset_map(k, pmd, addr)
                    with pte_lockptr(mm, ptep):
                        while addr < nxt:
                            pte = ptep_get(k, ptep)
                            if pte_none(pte):
                                pass
                            elif pte_present(pte):
                                page = vm_normal_page(vma, addr, pte)
                                pinned = (
                                    pte_write(pte)
                                    and is_cow_mapping(vma.vm_flags)
                                    and page is not None
                                    and folio_maybe_dma_pinned(page_folio(page))
                                )
                                if not pinned:
                                    new = pte_clear_soft_dirty(pte_wrprotect(pte))
                                    set_pte_at(mm, addr, ptep, new)
                            else:
                                set_pte_at(mm, addr, ptep, pte_swp_clear_soft_dirty(pte))
                            addr += PAGE_SIZE
                            ptep += 8
    finally:
        mm.mmap_lock.up_write()

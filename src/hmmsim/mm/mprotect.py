"""mprotect(2): change the protection of vmas and their page-table entries.

Models: mm/mprotect.c (do_mprotect_pkey, mprotect_fixup, change_protection,
change_pte_range, change_pmd_range, can_change_pte_writable) and
mm/huge_memory.c (change_huge_pmd) @ torvalds/linux 0eaed89c18ae.

Differences from kernel: one MMU_NOTIFY_PROTECTION_VMA notification per vma
range rather than per PUD-sized chunk; no pkeys, no NUMA hinting.
"""

from __future__ import annotations

from hmmsim.errno import EACCES, EINVAL, ENOMEM
from hmmsim.include.mm import VM_ACCESS_FLAGS, VM_EXEC, VM_HUGETLB, VM_READ, VM_SHARED, VM_WRITE
from hmmsim.include.mm_types import PageAnonExclusive, folio_test_anon, page_folio
from hmmsim.include.mman import (
    PROT_EXEC,
    PROT_GROWSDOWN,
    PROT_GROWSUP,
    PROT_READ,
    PROT_SEM,
    PROT_WRITE,
)
from hmmsim.include.mmu_notifier import MMU_NOTIFY_PROTECTION_VMA
from hmmsim.include.pgtable import (
    pmd_mkwrite_novma,
    pmd_modify,
    pmd_none,
    pmd_pfn,
    pmd_present,
    pmd_swp_mksoft_dirty,
    pmd_swp_soft_dirty,
    pmd_swp_uffd_wp,
    pte_dirty,
    pte_mkwrite_novma,
    pte_modify,
    pte_none,
    pte_present,
    pte_swp_mksoft_dirty,
    pte_swp_mkuffd_wp,
    pte_swp_soft_dirty,
    pte_swp_uffd_wp,
    pte_write,
    vm_get_page_prot,
)
from hmmsim.include.uapi_types import U64_MASK
from hmmsim.kconfig import PAGE_SIZE, PMD_MASK, PMD_SIZE
from hmmsim.mm import huge_memory
from hmmsim.mm.memory import vm_normal_page
from hmmsim.mm.mmap import PAGE_ALIGN, calc_vm_prot_bits, split_range, vmas_in
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

MM_CP_TRY_CHANGE_WRITABLE = 1 << 0


def vma_wants_manual_pte_write_upgrade(vma) -> bool:
    """Private writable vmas, and shared ones that need no write notification."""
    if vma.vm_flags & VM_SHARED:
        return False  # shmem maps shared pages writable directly (no writenotify)
    return bool(vma.vm_flags & VM_WRITE)


def can_change_pte_writable(vma, addr: int, pte: int) -> bool:
    if not vma.vm_flags & VM_WRITE:
        return False
    if not vma.vm_flags & VM_SHARED:
        page = vm_normal_page(vma, addr, pte)
        return page is not None and folio_test_anon(page_folio(page)) and PageAnonExclusive(page)
    return pte_dirty(pte)


def change_pte_range(vma, pmdp: int, addr: int, end: int, newprot: int, cp_flags: int) -> int:
    """Apply newprot to the PTEs of [addr, end); returns pages changed."""
    mm = vma.vm_mm
    k = mm.k
    ptep = pte_offset_map(k, pmdp_get(k, pmdp), addr)
    if ptep is None:
        return 0
    pages = 0
    with pte_lockptr(mm, ptep):
        while addr < end:
            old = ptep_get(k, ptep)
            if pte_present(old):
                new = pte_modify(old, newprot)
                if (
                    cp_flags & MM_CP_TRY_CHANGE_WRITABLE
                    and not pte_write(new)
                    and can_change_pte_writable(vma, addr, new)
                ):
                    new = pte_mkwrite_novma(new)
                set_pte_at(mm, addr, ptep, new)
                pages += 1
            elif not pte_none(old):
                new = change_softleaf_pte(k, old)
                if new != old:
                    set_pte_at(mm, addr, ptep, new)
                    pages += 1
            addr += PAGE_SIZE
            ptep += 8
    return pages


def change_softleaf_pte(k, old: int) -> int:
    """The software leaf PTE that mprotect leaves where `old` was.

    Writable entries lose write permission; the soft bits follow the kernel
    entry by entry (mm/mprotect.c change_softleaf_pte at the pin,
    change_pte_range in 6.12; the two agree):
    - a writable migration entry becomes readable (readable-exclusive for
      an anon folio; the device variant under series (b)) and keeps
      soft-dirty, but not uffd-wp;
    - a writable device-private entry becomes readable and keeps uffd-wp,
      but not soft-dirty (the kernel does not preserve soft-dirtiness there,
      as in fork's copy_nonpresent_pte);
    - 6.12 only (two device-exclusive types): a writable device-exclusive
      entry becomes readable and keeps both.
    Anything else (readable entries, swap, markers) is left as it is. The
    uffd-wp cp_flags (UFFDIO_WRITEPROTECT) are not modelled.
    """
    swp = k.swp
    entry = swp.softleaf_from_pte(old)
    if swp.softleaf_is_migration_write(entry):
        anon = _entry_page_is_anon(k, entry)
        new = swp.swp_entry_to_pte(k.make_readable_migration_entry_for(entry, exclusive=anon))
        if pte_swp_soft_dirty(old):
            new = pte_swp_mksoft_dirty(new)
        return new
    if swp.softleaf_is_device_private_write(entry):
        new = swp.swp_entry_to_pte(swp.make_readable_device_private_entry(swp.swp_offset(entry)))
        if pte_swp_uffd_wp(old):
            new = pte_swp_mkuffd_wp(new)
        return new
    if k.config.kernel == "6.12" and swp.is_writable_device_exclusive_entry(entry):
        new = swp.swp_entry_to_pte(swp.make_readable_device_exclusive_entry(swp.swp_offset(entry)))
        if pte_swp_soft_dirty(old):
            new = pte_swp_mksoft_dirty(new)
        if pte_swp_uffd_wp(old):
            new = pte_swp_mkuffd_wp(new)
        return new
    return old


def _entry_page_is_anon(k, entry: int) -> bool:
    page = k.softleaf_to_page(entry)
    return folio_test_anon(page_folio(page))


def change_non_present_huge_pmd(k, pmd: int) -> int:
    """The PMD mprotect leaves where the non-present PMD `pmd` was.

    mm/huge_memory.c change_non_present_huge_pmd (change_huge_pmd in 6.12):
    a writable PMD migration entry becomes readable (readable-exclusive for
    an anon folio; the device variant under series (b)) and keeps
    soft-dirty, not uffd-wp; a writable device-private PMD becomes readable
    and keeps uffd-wp, not soft-dirty. Anything else is left as it is.
    (x86-64 keeps the PMD's swap soft bits where a PTE's are, so the PTE
    helpers serve: pmd_swp_mkuffd_wp is pte_swp_mkuffd_wp.)
    """
    swp = k.swp
    entry = swp.softleaf_from_pmd(pmd)
    if swp.softleaf_is_migration_write(entry):
        anon = _entry_page_is_anon(k, entry)
        if "huge_pmd_plain_migration_entry" in k.bugs:
            # known bug: the writer forgets the series (b) device variant
            new_entry = _plain_readable_migration_entry(swp, entry, anon)
        else:
            new_entry = k.make_readable_migration_entry_for(entry, exclusive=anon)
        new = swp.swp_entry_to_pmd(new_entry)
        if pmd_swp_soft_dirty(pmd):
            new = pmd_swp_mksoft_dirty(new)
        return new
    if swp.softleaf_is_device_private_write(entry):
        new = swp.swp_entry_to_pmd(swp.make_readable_device_private_entry(swp.swp_offset(entry)))
        if pmd_swp_uffd_wp(pmd):
            new = pte_swp_mkuffd_wp(new)
        return new
    return pmd


def _plain_readable_migration_entry(swp, entry: int, exclusive: bool) -> int:
    """The known bug of mutant huge_pmd_plain_migration_entry: a readable
    migration entry of the plain (non-device) type, whatever `entry` was."""
    off = swp.swp_offset(entry)
    if exclusive:
        return swp.make_readable_exclusive_migration_entry(off)
    return swp.make_readable_migration_entry(off)


def change_huge_pmd(vma, pmdp: int, addr: int, newprot: int, cp_flags: int) -> int:
    mm = vma.vm_mm
    k = mm.k
    with pmd_lockptr(mm, pmdp):
        pmd = pmdp_get(k, pmdp)
        if not pmd_present(pmd):
            new = change_non_present_huge_pmd(k, pmd)
            if new != pmd:
                set_pmd_at(mm, addr, pmdp, new)
            return 1
        if huge_memory.is_huge_zero_pmd(k, pmd):
            set_pmd_at(mm, addr, pmdp, pmd_modify(pmd, newprot) & ~0x2)
            return 1
        new = pmd_modify(pmd, newprot)
        if cp_flags & MM_CP_TRY_CHANGE_WRITABLE and vma.vm_flags & VM_WRITE:
            page = k.mem.pfn_to_page(pmd_pfn(pmd))
            if not vma.vm_flags & VM_SHARED and PageAnonExclusive(page):
                new = pmd_mkwrite_novma(new)
        set_pmd_at(mm, addr, pmdp, new)
    return 1


def change_protection(vma, start: int, end: int, cp_flags: int) -> int:
    """Rewrite every entry of [start, end) to the vma's new vm_page_prot."""
    mm = vma.vm_mm
    k = mm.k
    newprot = vma.vm_page_prot
    if vma.vm_flags & VM_HUGETLB:
        k.hugetlb.hugetlb_change_protection(vma, start, end, newprot)
        return 0
    pages = 0
    with notify_range(mm, MMU_NOTIFY_PROTECTION_VMA, start, end):
        addr = start
        while addr < end:
            nxt = min((addr & PMD_MASK) + PMD_SIZE, end)
            pmdp = pmd_offset(mm, addr)
            if pmdp is None:  # no PMD table: skip the empty PUD/PGD range whole
                from hmmsim.mm.pgtable import pmd_walk_skip

                addr = pmd_walk_skip(mm, addr, end)
                continue
            if pmdp is not None and not pmd_none(pmdp_get(k, pmdp)):
                if huge_memory.is_huge_pmd_entry(k, pmdp_get(k, pmdp)):
                    if nxt - addr == PMD_SIZE:
                        pages += change_huge_pmd(vma, pmdp, addr, newprot, cp_flags)
                        addr = nxt
                        continue
                    huge_memory.__split_huge_pmd(vma, pmdp, addr)
                pages += change_pte_range(vma, pmdp, addr, nxt, newprot, cp_flags)
            addr = nxt
    return pages


def mprotect_fixup(mm, vma, start: int, end: int, newflags: int) -> int:
    """Give [start, end) of vma the flags newflags; 0 or -errno (a split failed).

    Unchanged flags are a no-op, as in the kernel: no split, no page-table
    walk, no MMU_NOTIFY_PROTECTION_VMA (so mirrors keep their entries and
    writable device-private entries stay writable). Otherwise the range is
    split off into its own vma, its entries are rewritten to the new
    vm_page_prot, and it is merged with compatible neighbours
    (mm/vma.py vma_merge_modified: the kernel's vma_modify_flags).
    Kernel: mm/mprotect.c mprotect_fixup.
    """
    if newflags == vma.vm_flags:
        return 0
    # commit accounting (mm/util.py): a private mapping turning writable is
    # charged and gets VM_ACCOUNT; an anonymous one that never faulted (no
    # anon_vma) gives the charge back when it stops being writable
    from hmmsim.include.mm import VM_ACCOUNT, VM_NORESERVE
    from hmmsim.include.mm_types import vma_is_anonymous
    from hmmsim.mm.util import security_vm_enough_memory_mm

    oldflags = vma.vm_flags
    if newflags & VM_WRITE:
        if not oldflags & (VM_ACCOUNT | VM_WRITE | VM_HUGETLB | VM_SHARED | VM_NORESERVE):
            if security_vm_enough_memory_mm(mm, (end - start) // PAGE_SIZE):
                return -ENOMEM
            newflags |= VM_ACCOUNT
    elif oldflags & VM_ACCOUNT and vma_is_anonymous(vma) and vma.anon_vma is None:
        newflags &= ~VM_ACCOUNT
    pieces = split_range(mm, start, end)
    if isinstance(pieces, int):
        return pieces
    from hmmsim.mm.vma import vma_merge_modified

    for piece in pieces:  # [start, end) lies in vma: one piece
        piece.vm_flags = newflags
        piece.vm_page_prot = vm_get_page_prot(newflags)
        cp = MM_CP_TRY_CHANGE_WRITABLE if vma_wants_manual_pte_write_upgrade(piece) else 0
        change_protection(piece, piece.vm_start, piece.vm_end, cp)
        vma_merge_modified(mm, piece)  # vma_modify_flags: merge with neighbours
    return 0


def do_mprotect_pkey(mm, start: int, length: int, prot: int) -> int:
    """mprotect(2): 0, -EINVAL, -ENOMEM (hole or overflow), -EACCES (VM_MAYx)."""
    start, length, prot = start & U64_MASK, length & U64_MASK, prot & U64_MASK
    grows = prot & (PROT_GROWSDOWN | PROT_GROWSUP)
    prot &= ~(PROT_GROWSDOWN | PROT_GROWSUP)
    if grows == PROT_GROWSDOWN | PROT_GROWSUP:
        return -EINVAL
    if start & (PAGE_SIZE - 1):
        return -EINVAL
    if not length:
        return 0
    length = PAGE_ALIGN(length) & U64_MASK
    end = (start + length) & U64_MASK
    if end <= start:
        return -ENOMEM
    if prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM):  # arch_validate_prot
        return -EINVAL
    vmas = vmas_in(mm, start, end)
    if not vmas or vmas[0].vm_start > start:
        return -ENOMEM
    if grows:  # no vma of the model is VM_GROWSDOWN / VM_GROWSUP
        return -EINVAL
    reqprot = calc_vm_prot_bits(prot)
    # Walk like the kernel: apply vma by vma; stop at the first error.
    nstart = start
    for vma in vmas:
        if vma.vm_start > nstart:
            return -ENOMEM
        newflags = reqprot | (vma.vm_flags & ~(VM_READ | VM_WRITE | VM_EXEC))
        if (newflags & ~(newflags >> 4)) & VM_ACCESS_FLAGS:
            return -EACCES
        tmp = min(vma.vm_end, end)
        ret = mprotect_fixup(mm, vma, max(nstart, vma.vm_start), tmp, newflags)
        if ret:
            return ret
        nstart = tmp
        if nstart >= end:
            return 0
    return -ENOMEM if nstart < end else 0

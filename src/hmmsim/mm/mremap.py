"""mremap(2): shrink, grow in place, or move a mapping with its page tables.

Models: mm/mremap.c (do_mremap, mremap_to, move_vma, move_page_tables,
move_ptes) and mm/huge_memory.c (move_huge_pmd) @ torvalds/linux 0eaed89c18ae.

Pages are never copied: PTEs and whole huge PMDs move to the new address,
and the new vma keeps the old vm_pgoff so anon rmap still finds every page.
Differences from kernel: hugetlb mappings and MREMAP_DONTUNMAP of shared
mappings return -EINVAL; old_len == 0 (duplicating a shared mapping) is
not modelled and returns -EINVAL.
"""

from __future__ import annotations

from hmmsim.errno import EFAULT, EINVAL, ENOMEM, EPERM
from hmmsim.include.mm import VM_ACCOUNT, VM_HUGETLB, VM_SHARED
from hmmsim.include.mm_types import vm_area_struct
from hmmsim.include.mman import MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE
from hmmsim.include.mmu_notifier import MMU_NOTIFY_UNMAP
from hmmsim.include.pgtable import (
    pmd_none,
    pte_mksoft_dirty,
    pte_none,
    pte_present,
    pte_swp_mksoft_dirty,
)
from hmmsim.include.uapi_types import U64_MASK
from hmmsim.kconfig import MMAP_MIN_ADDR, PAGE_SHIFT, PAGE_SIZE, PMD_MASK, PMD_SIZE, TASK_SIZE
from hmmsim.mm import huge_memory
from hmmsim.mm.mmap import (
    PAGE_ALIGN,
    do_vmi_munmap,
    find_vma,
    find_vma_prev_end,
    get_unmapped_area,
    remove_vma,
    split_range,
    vma_link,
    vma_lookup,
    vma_unlink,
    vmas_in,
)
from hmmsim.mm.mmu_notifier import notify_range
from hmmsim.mm.pgtable import (
    free_pgd_range,
    pmd_offset,
    pmd_walk_skip,
    pmdp_get,
    pte_alloc,
    pte_lockptr,
    pte_offset_map,
    ptep_get,
    ptep_get_and_clear,
    set_pte_at,
)
from hmmsim.mm.rmap import anon_vma_clone
from hmmsim.mm.util import security_vm_enough_memory_mm


def move_page_tables(vma, old_addr: int, new_vma, new_addr: int, length: int) -> int:
    """Move every entry of [old_addr, +length) to new_addr; returns bytes moved."""
    mm = vma.vm_mm
    k = mm.k
    done = 0
    with notify_range(mm, MMU_NOTIFY_UNMAP, old_addr, old_addr + length):
        while done < length:
            o, n = old_addr + done, new_addr + done
            old_pmdp = pmd_offset(mm, o)
            extent = min(PMD_SIZE - (o & ~PMD_MASK), PMD_SIZE - (n & ~PMD_MASK), length - done)
            if old_pmdp is None:  # no PMD table: skip the empty PUD/PGD range whole
                done = pmd_walk_skip(mm, o, old_addr + length) - old_addr
                continue
            if pmd_none(pmdp_get(k, old_pmdp)):
                done += extent
                continue
            new_pmdp = pmd_offset(mm, n, alloc=True)
            if new_pmdp is None:
                return done
            if huge_memory.is_huge_pmd_entry(k, pmdp_get(k, old_pmdp)):
                if extent == PMD_SIZE and pmd_none(pmdp_get(k, new_pmdp)):
                    huge_memory.move_huge_pmd(vma, old_pmdp, new_pmdp, o, n)
                    done += extent
                    continue
                huge_memory.__split_huge_pmd(vma, old_pmdp, o)
            if not pte_alloc(mm, new_pmdp):
                return done
            move_ptes(mm, old_pmdp, o, new_pmdp, n, extent)
            done += extent
    return done


def move_soft_dirty_pte(pte: int) -> int:
    """mm/mremap.c move_soft_dirty_pte: a moved entry is marked soft-dirty so
    that userspace tracking soft-dirty sees the move: the PTE bit on a present
    entry, the swap-PTE bit on any other non-none entry (swap, migration,
    device-private, device-exclusive)."""
    if pte_none(pte):
        return pte
    if pte_present(pte):
        return pte_mksoft_dirty(pte)
    return pte_swp_mksoft_dirty(pte)


def move_ptes(mm, old_pmdp: int, old_addr: int, new_pmdp: int, new_addr: int, extent: int) -> None:
    """mm/mremap.c move_ptes: take each entry off the old PTE table and put it,
    marked soft-dirty, in the new one."""
    k = mm.k
    src = pte_offset_map(k, pmdp_get(k, old_pmdp), old_addr)
    dst = pte_offset_map(k, pmdp_get(k, new_pmdp), new_addr)
    with pte_lockptr(mm, src):
        for off in range(0, extent, PAGE_SIZE):
            pte = ptep_get(k, src)
            if not pte_none(pte):
                ptep_get_and_clear(mm, old_addr + off, src)
                set_pte_at(mm, new_addr + off, dst, move_soft_dirty_pte(pte))
            src += 8
            dst += 8


def vrm_calc_charge(vma, old_len: int, new_len: int, flags: int) -> int:
    """mm/mremap.c vrm_calc_charge (6.12: move_vma's to_account, and the
    in-place expansion's charge): an accounted vma charges what the call
    adds, all of new_len when MREMAP_DONTUNMAP keeps the old range; 0 or
    -ENOMEM (mm/util.py)."""
    if not vma.vm_flags & VM_ACCOUNT:
        return 0
    charged = new_len if flags & MREMAP_DONTUNMAP else new_len - old_len
    return security_vm_enough_memory_mm(vma.vm_mm, charged >> PAGE_SHIFT)


def move_vma(vma, old_addr: int, old_len: int, new_len: int, new_addr: int, flags: int) -> int:
    mm = vma.vm_mm
    k = mm.k
    if vrm_calc_charge(vma, old_len, new_len, flags):
        return -ENOMEM
    pieces = split_range(mm, old_addr, old_addr + old_len)
    if isinstance(pieces, int):
        return pieces
    vma = pieces[0]
    pgoff = vma.vm_pgoff
    new_vma = vm_area_struct(mm, new_addr, new_addr + new_len, vma.vm_flags, pgoff, vma.vm_file)
    new_vma.vm_page_prot = vma.vm_page_prot
    anon_vma_clone(new_vma, vma)
    if vma.vm_file is not None:
        k.fget(vma.vm_file)
    vma_link(mm, new_vma)
    moved = move_page_tables(vma, old_addr, new_vma, new_addr, old_len)
    if moved < old_len:  # out of page tables: move back what moved
        move_page_tables(new_vma, new_addr, vma, old_addr, moved)
        vma_unlink(mm, new_vma)
        remove_vma(new_vma)
        return -ENOMEM
    if flags & MREMAP_DONTUNMAP:
        return new_addr
    vma_unlink(mm, vma)
    prev = find_vma_prev_end(mm, old_addr)
    nxt = find_vma(mm, old_addr + old_len)
    ceiling = nxt.vm_start if nxt is not None else TASK_SIZE + 1
    free_pgd_range(mm, old_addr, old_addr + old_len, prev, ceiling)
    remove_vma(vma)
    return new_addr


def check_mremap_params(addr: int, old_len: int, new_len: int, flags: int, new_addr: int) -> int:
    """mm/mremap.c check_mremap_params: 0 or -EINVAL, before any vma lookup."""
    if flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP):
        return -EINVAL
    if addr & (PAGE_SIZE - 1):
        return -EINVAL
    if not new_len or new_len > TASK_SIZE:
        return -EINVAL
    if not flags & (MREMAP_FIXED | MREMAP_DONTUNMAP):  # vrm_implies_new_addr
        return 0
    if new_addr > TASK_SIZE - new_len or new_addr & (PAGE_SIZE - 1):
        return -EINVAL
    if not flags & MREMAP_MAYMOVE:
        return -EINVAL
    if flags & MREMAP_DONTUNMAP and old_len != new_len:
        return -EINVAL
    # vrm_overlaps, on unsigned longs
    if addr < new_addr + new_len and (addr + old_len) & U64_MASK > new_addr:
        return -EINVAL
    return 0


def do_mremap(mm, addr: int, old_len: int, new_len: int, flags: int, new_addr: int = 0) -> int:
    """mremap(2): the new address, or -EINVAL/-EFAULT/-ENOMEM/-EPERM.

    The arguments are unsigned longs: the lengths are page aligned modulo
    2**64 (so a "negative" length wraps), then check_mremap_params()
    validates everything that needs no vma before the lookup. The order after
    it is mm/mremap.c's (6.12 SYSCALL mremap/mremap_to/vma_to_resize and
    mainline do_mremap/mremap_to/mremap_at/remap_is_valid agree): a move
    (FIXED/DONTUNMAP) unmaps the destination and the shrunk tail first, a
    shrink or same-size call never checks the vma boundary, and the -EFAULT
    for a range crossing a vma boundary comes last.
    """
    addr, old_len, new_len, flags, new_addr = (
        v & U64_MASK for v in (addr, old_len, new_len, flags, new_addr)
    )
    old_len = PAGE_ALIGN(old_len) & U64_MASK
    new_len = PAGE_ALIGN(new_len) & U64_MASK
    ret = check_mremap_params(addr, old_len, new_len, flags, new_addr)
    if ret:
        return ret
    if not old_len:
        return -EINVAL  # the shared-mapping duplicate is not modelled
    vma = vma_lookup(mm, addr)
    if vma is None:
        return -EFAULT
    if vma.vm_flags & VM_HUGETLB:
        return -EINVAL
    if flags & (MREMAP_FIXED | MREMAP_DONTUNMAP):
        # mremap_to(): the destination is unmapped and the old range shrunk
        # before the vma is checked (remap_is_valid / vma_to_resize), so a
        # range that crosses a vma boundary fails with -EFAULT only after that.
        if flags & MREMAP_FIXED:
            ret = do_vmi_munmap(mm, new_addr, new_len)
            if ret:
                return ret
        if old_len > new_len:
            ret = do_vmi_munmap(mm, addr + new_len, old_len - new_len)
            if ret:
                return ret
            old_len = new_len
        vma = vma_lookup(mm, addr)
        if vma is None:
            return -EFAULT
        if flags & MREMAP_DONTUNMAP and vma.vm_flags & VM_SHARED:
            return -EINVAL  # not modelled (see the module docstring)
        if addr + old_len > vma.vm_end:
            return -EFAULT
        if flags & MREMAP_FIXED:
            if new_addr < MMAP_MIN_ADDR:  # vrm_set_new_addr: security_mmap_addr
                return -EPERM
            return move_vma(vma, addr, old_len, new_len, new_addr, flags)
        dest = get_unmapped_area(mm, 0, new_len)  # DONTUNMAP to a fresh address
        if dest < 0:
            return dest
        return move_vma(vma, addr, old_len, new_len, dest, flags)
    if new_len <= old_len:
        # mremap_at(): same size is a no-op and a shrink just unmaps the tail,
        # neither checks that [addr, addr + old_len) lies in one vma.
        if new_len < old_len:
            ret = do_vmi_munmap(mm, addr + new_len, old_len - new_len)
            if ret:
                return ret
        return addr
    if addr + old_len > vma.vm_end:  # expand_vma: remap_is_valid
        return -EFAULT
    # grow: in place if the vma ends at the old end and the space above is free
    if addr + old_len == vma.vm_end and not vmas_in(mm, vma.vm_end, addr + new_len):
        if addr + new_len <= TASK_SIZE:
            if vrm_calc_charge(vma, old_len, new_len, flags):  # expand_vma_in_place
                return -ENOMEM
            if vma.vm_file is not None and vma.vm_file.i_size < (
                (vma.vm_pgoff << PAGE_SHIFT) + (addr + new_len - vma.vm_start)
            ):
                pass  # growing past EOF is allowed; faults there give SIGBUS
            vma.vm_end = addr + new_len
            return addr
    if not flags & MREMAP_MAYMOVE:
        return -ENOMEM
    dest = get_unmapped_area(mm, 0, new_len)
    if dest < 0:
        return dest
    return move_vma(vma, addr, old_len, new_len, dest, flags)

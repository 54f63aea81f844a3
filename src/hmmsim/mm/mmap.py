"""mmap, munmap, vma splitting, and address-space teardown.

Models: mm/mmap.c (do_mmap, ksys_mmap_pgoff, get_unmapped_area,
mm_populate, exit_mmap), mm/vma.c (mmap_region, __split_vma,
do_vmi_munmap, vms_complete_munmap_vmas, unmap_region) and
mm/huge_memory.c (vma_adjust_trans_huge) @ torvalds/linux 0eaed89c18ae.

Differences from kernel: vmas live in a sorted list, not a maple tree; new
vmas are never merged with neighbours (vma_merge_new_range), so two adjacent
compatible mmaps stay two vmas (mprotect/madvise do merge: mm/vma.py); no
mlock, no stack guard gaps. Commit accounting (VM_ACCOUNT) follows the
overcommit policy of mm/util.py.
"""

from __future__ import annotations

import bisect

from hmmsim.bug import KernelBug
from hmmsim.errno import (
    EACCES,
    EBADF,
    EEXIST,
    EINVAL,
    ENODEV,
    ENOMEM,
    EOPNOTSUPP,
    EOVERFLOW,
    EPERM,
)
from hmmsim.include.mm import (
    FAULT_FLAG_WRITE,
    VM_ACCOUNT,
    VM_EXEC,
    VM_FAULT_ERROR,
    VM_HUGETLB,
    VM_MAYEXEC,
    VM_MAYREAD,
    VM_MAYSHARE,
    VM_MAYWRITE,
    VM_NORESERVE,
    VM_READ,
    VM_SHARED,
    VM_SOFTDIRTY,
    VM_WRITE,
)
from hmmsim.include.mm_types import mm_struct, vm_area_struct
from hmmsim.include.mman import (
    LEGACY_MAP_MASK,
    MAP_FIXED,
    MAP_FIXED_NOREPLACE,
    MAP_HUGETLB,
    MAP_NORESERVE,
    MAP_POPULATE,
    MAP_PRIVATE,
    MAP_SHARED,
    MAP_SHARED_VALIDATE,
    MAP_TYPE,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.include.mmu_notifier import MMU_NOTIFY_RELEASE, MMU_NOTIFY_UNMAP
from hmmsim.include.uapi_types import U64_MASK
from hmmsim.kconfig import (
    MMAP_MIN_ADDR,
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    PMD_MASK,
    PMD_SIZE,
    TASK_SIZE,
)
from hmmsim.mm import huge_memory
from hmmsim.mm.memory import handle_mm_fault, unmap_page_range
from hmmsim.mm.mmu_notifier import notify_range
from hmmsim.mm.pgtable import free_pgd_range
from hmmsim.mm.rmap import anon_vma_clone, unlink_anon_vmas
from hmmsim.mm.shmem import shmem_inode, shmem_zero_setup
from hmmsim.mm.util import accountable_mapping, security_vm_enough_memory_mm

FMODE_READ = 0x1
FMODE_WRITE = 0x2


def PAGE_ALIGN(x: int) -> int:
    return (x + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def offset_in_page(x: int) -> int:
    return x & (PAGE_SIZE - 1)


# --- lookups --------------------------------------------------------------------------------
def find_vma(mm: mm_struct, addr: int) -> vm_area_struct | None:
    """The first vma with vm_end > addr (it may start above addr)."""
    i = bisect.bisect_right(mm.vmas, addr, key=lambda v: v.vm_end)
    return mm.vmas[i] if i < len(mm.vmas) else None


def vma_lookup(mm: mm_struct, addr: int) -> vm_area_struct | None:
    """The vma containing addr, or None."""
    vma = find_vma(mm, addr)
    return vma if vma is not None and vma.vm_start <= addr else None


def vmas_in(mm: mm_struct, start: int, end: int) -> list[vm_area_struct]:
    """vmas overlapping [start, end), in address order."""
    i = bisect.bisect_right(mm.vmas, start, key=lambda v: v.vm_end)
    out = []
    while i < len(mm.vmas) and mm.vmas[i].vm_start < end:
        out.append(mm.vmas[i])
        i += 1
    return out


def vma_link(mm: mm_struct, vma: vm_area_struct) -> None:
    i = bisect.bisect_left(mm.vmas, vma.vm_start, key=lambda v: v.vm_start)
    if (i > 0 and mm.vmas[i - 1].vm_end > vma.vm_start) or (
        i < len(mm.vmas) and mm.vmas[i].vm_start < vma.vm_end
    ):
        raise KernelBug(f"vma_link: {vma!r} overlaps an existing vma")
    mm.vmas.insert(i, vma)
    if vma.vm_file is not None:
        vma.vm_file.i_mmap.add(vma)


def vma_unlink(mm: mm_struct, vma: vm_area_struct) -> None:
    mm.vmas.remove(vma)


def remove_vma(vma: vm_area_struct) -> None:
    """vma is gone: release its file, anon_vma links and hugetlb reservations."""
    k = vma.vm_mm.k
    if vma.vm_flags & VM_HUGETLB:
        k.hugetlb.hugetlb_vm_op_close(vma)
    if vma.vm_file is not None:
        vma.vm_file.i_mmap.discard(vma)
        k.fput(vma.vm_file)
    unlink_anon_vmas(vma)


# --- address selection ------------------------------------------------------------------------
def get_unmapped_area(mm: mm_struct, addr: int, length: int, align: int = PAGE_SIZE) -> int:
    """Top-down search below mmap_base; the hint is used if free. -ENOMEM if full."""
    if length > TASK_SIZE - MMAP_MIN_ADDR:
        return -ENOMEM
    if addr:
        addr = PAGE_ALIGN(addr)
        if (
            addr % align == 0
            and addr >= MMAP_MIN_ADDR
            and addr + length <= TASK_SIZE
            and not vmas_in(mm, addr, addr + length)
        ):
            return addr
    top = mm.mmap_base
    for vma in reversed(mm.vmas):
        if vma.vm_start >= top:
            continue
        if vma.vm_end <= top - length:
            cand = (top - length) & ~(align - 1)
            if cand >= vma.vm_end:
                return cand
        top = min(top, vma.vm_start)
    cand = (top - length) & ~(align - 1)
    if cand >= MMAP_MIN_ADDR:
        return cand
    return -ENOMEM


# --- splitting -----------------------------------------------------------------------------
def __split_vma(vma: vm_area_struct, addr: int) -> vm_area_struct | int:
    """Split vma at addr; returns the new upper vma, or -EINVAL/-ENOMEM."""
    mm = vma.vm_mm
    k = mm.k
    if not vma.vm_start < addr < vma.vm_end:
        raise KernelBug(f"__split_vma: {addr:#x} not inside {vma!r}")
    if vma.vm_flags & VM_HUGETLB and addr & ~PMD_MASK:
        return -EINVAL
    if addr & ~PMD_MASK and not vma.vm_flags & VM_HUGETLB:
        huge_memory.split_huge_pmd_address(vma, addr)  # vma_adjust_trans_huge
    new = vm_area_struct(
        mm,
        addr,
        vma.vm_end,
        vma.vm_flags,
        vma.vm_pgoff + ((addr - vma.vm_start) >> PAGE_SHIFT),
        vma.vm_file,
    )
    new.vm_page_prot = vma.vm_page_prot
    anon_vma_clone(new, vma)
    if vma.vm_file is not None:
        k.fget(vma.vm_file)
    if vma.vm_flags & VM_HUGETLB:
        k.hugetlb.split_resv(vma, new, 0)
    vma.vm_end = addr
    vma_link(mm, new)
    return new


def split_range(mm: mm_struct, start: int, end: int) -> list[vm_area_struct] | int:
    """Split vmas so that [start, end) is covered by whole vmas; return them."""
    for vma in vmas_in(mm, start, end):
        if vma.vm_start < start:
            r = __split_vma(vma, start)
            if isinstance(r, int):
                return r
    for vma in vmas_in(mm, start, end):
        if vma.vm_end > end:
            r = __split_vma(vma, end)
            if isinstance(r, int):
                return r
    return vmas_in(mm, start, end)


# --- munmap -------------------------------------------------------------------------------
def do_vmi_munmap(mm: mm_struct, start: int, length: int) -> int:
    """munmap(2): 0, -EINVAL (unaligned, zero length, out of range, hugetlb edge)."""
    start, length = start & U64_MASK, length & U64_MASK
    if offset_in_page(start) or start > TASK_SIZE or length > TASK_SIZE - start:
        return -EINVAL
    end = start + PAGE_ALIGN(length)
    if end == start:
        return -EINVAL
    if not vmas_in(mm, start, end):
        return 0
    for vma in vmas_in(mm, start, end):  # may_split checks before changing anything
        if vma.vm_flags & VM_HUGETLB:
            for edge in (start, end):
                if vma.vm_start < edge < vma.vm_end and edge & ~PMD_MASK:
                    return -EINVAL
    vmas = split_range(mm, start, end)
    if isinstance(vmas, int):
        return vmas
    unmap_region(mm, vmas, start, end)
    return 0


def unmap_region(mm: mm_struct, vmas: list[vm_area_struct], start: int, end: int) -> None:
    """Zap, free page tables and drop the vmas of [start, end)."""
    with notify_range(mm, MMU_NOTIFY_UNMAP, start, end):
        for vma in vmas:
            unmap_single_vma(vma, vma.vm_start, vma.vm_end)
    for vma in vmas:
        vma_unlink(mm, vma)
    prev = find_vma_prev_end(mm, start)
    nxt = find_vma(mm, end)
    free_pgd_range(mm, start, end, prev, nxt.vm_start if nxt is not None else TASK_SIZE + 1)
    for vma in vmas:
        remove_vma(vma)


def find_vma_prev_end(mm: mm_struct, addr: int) -> int:
    i = bisect.bisect_right(mm.vmas, addr, key=lambda v: v.vm_end)
    return mm.vmas[i - 1].vm_end if i > 0 else 0


def unmap_single_vma(vma: vm_area_struct, start: int, end: int) -> None:
    if vma.vm_flags & VM_HUGETLB:
        vma.vm_mm.k.hugetlb.unmap_hugepage_range(vma, start, end)
    else:
        unmap_page_range(vma, start, end)


# --- mmap ----------------------------------------------------------------------------------
def calc_vm_prot_bits(prot: int) -> int:
    return (
        (VM_READ if prot & PROT_READ else 0)
        | (VM_WRITE if prot & PROT_WRITE else 0)
        | (VM_EXEC if prot & PROT_EXEC else 0)
    )


def round_hint_to_min(hint: int) -> int:
    """mm/mmap.c round_hint_to_min: a hint below mmap_min_addr is raised to it."""
    hint &= PAGE_MASK & U64_MASK
    if hint and hint < MMAP_MIN_ADDR:
        return PAGE_ALIGN(MMAP_MIN_ADDR)
    return hint


def file_mmap_ok(file, pgoff: int, length: int) -> bool:
    """mm/mmap.c file_mmap_ok: the file range must fit file_mmap_size_max
    (MAX_LFS_FILESIZE for a regular tmpfs file, ULONG_MAX for a device)."""
    from hmmsim.mm.shmem import MAX_LFS_FILESIZE

    maxsize = MAX_LFS_FILESIZE if isinstance(file, shmem_inode) else U64_MASK
    if length > maxsize:
        return False
    return pgoff <= (maxsize - length) >> PAGE_SHIFT


def nr_accounted(mm: mm_struct, start: int, end: int) -> int:
    """Pages of VM_ACCOUNT vmas inside [start, end) (vms_gather_munmap_vmas's
    nr_accounted, as mm/vma.c counts them for a MAP_FIXED replacement)."""
    n = 0
    for vma in vmas_in(mm, start, end):
        if vma.vm_flags & VM_ACCOUNT:
            n += (min(end, vma.vm_end) - max(start, vma.vm_start)) >> PAGE_SHIFT
    return n


def do_mmap(
    mm: mm_struct, addr: int, length: int, prot: int, flags: int, file, fmode: int, pgoff: int
) -> int:
    """mmap(2) after fd lookup: the address, or -EINVAL/-ENOMEM/-EACCES/-EEXIST/...

    `file` is a shmem inode (or None for anonymous), `fmode` its FMODE_* bits.
    """
    k = mm.k
    # the syscall's unsigned longs: arithmetic below wraps like the C
    addr, length, prot, flags, pgoff = (v & U64_MASK for v in (addr, length, prot, flags, pgoff))
    if length == 0:
        return -EINVAL
    # do_mmap validates no prot bits: calc_vm_prot_bits takes READ/WRITE/EXEC and
    # ignores the rest (only mprotect refuses unknown bits, via arch_validate_prot)
    maptype = flags & MAP_TYPE
    if maptype not in (MAP_SHARED, MAP_PRIVATE, MAP_SHARED_VALIDATE):
        return -EINVAL
    hugetlb = bool(flags & MAP_HUGETLB)
    fixed = bool(flags & (MAP_FIXED | MAP_FIXED_NOREPLACE))
    if not fixed:
        addr = round_hint_to_min(addr)
    if hugetlb:
        if file is not None:
            return -EINVAL
        length = (length + PMD_SIZE - 1) & PMD_MASK & U64_MASK
    length = PAGE_ALIGN(length) & U64_MASK
    if not length:
        return -ENOMEM
    if (pgoff + (length >> PAGE_SHIFT)) & U64_MASK < pgoff:
        return -EOVERFLOW
    if length > TASK_SIZE:  # __get_unmapped_area
        return -ENOMEM
    if fixed:
        if hugetlb and addr & ~PMD_MASK:  # hugetlb_get_unmapped_area
            return -EINVAL
        if addr > TASK_SIZE - length:
            return -ENOMEM
        if offset_in_page(addr):
            return -EINVAL
        if addr < MMAP_MIN_ADDR:  # security_mmap_addr: cap_mmap_addr
            return -EPERM
        if flags & MAP_FIXED_NOREPLACE and vmas_in(mm, addr, addr + length):
            return -EEXIST
        start = addr
    else:
        align = PMD_SIZE if (hugetlb or (file is None and length % PMD_SIZE == 0)) else PAGE_SIZE
        start = get_unmapped_area(mm, addr, length, align)
        if start < 0:
            return start
    if file is not None and not file_mmap_ok(file, pgoff, length):
        return -EOVERFLOW
    vm_flags = calc_vm_prot_bits(prot) | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
    if file is not None:
        if maptype == MAP_SHARED_VALIDATE and flags & ~LEGACY_MAP_MASK:
            # shmem has no mmap_supported_flags: anything past the legacy
            # set (MAP_FIXED_NOREPLACE, MAP_SYNC, ...) is refused
            return -EOPNOTSUPP
        if maptype in (MAP_SHARED, MAP_SHARED_VALIDATE):
            if prot & PROT_WRITE and not fmode & FMODE_WRITE:
                return -EACCES
            vm_flags |= VM_SHARED | VM_MAYSHARE
            if not fmode & FMODE_WRITE:
                vm_flags &= ~(VM_MAYWRITE | VM_SHARED)
        if not fmode & FMODE_READ:
            return -EACCES
    elif maptype == MAP_SHARED_VALIDATE:
        return -EINVAL  # do_mmap: an anonymous mapping knows MAP_SHARED and MAP_PRIVATE only
    elif maptype == MAP_SHARED:
        vm_flags |= VM_SHARED | VM_MAYSHARE
        pgoff = 0
    if hugetlb:
        vm_flags |= VM_HUGETLB
    if flags & MAP_NORESERVE:
        vm_flags |= VM_NORESERVE
    end = start + length
    if hugetlb and k.hugetlb.free_huge_pages - k.hugetlb.resv_huge_pages < length // PMD_SIZE:
        return -ENOMEM
    if accountable_mapping(hugetlb, vm_flags):
        # __mmap_setup: charge the pages; those of accounted vmas this
        # MAP_FIXED replaces are already charged (vms->nr_accounted). A
        # refusal comes before the old mappings are touched.
        charged = (length >> PAGE_SHIFT) - nr_accounted(mm, start, end)
        if charged and security_vm_enough_memory_mm(mm, charged):
            return -ENOMEM
        vm_flags |= VM_ACCOUNT
    if flags & MAP_FIXED and vmas_in(mm, start, end):
        ret = do_vmi_munmap(mm, start, length)
        if ret:
            return ret
    if file is None and not vm_flags & VM_SHARED:
        pgoff = start >> PAGE_SHIFT
    if hugetlb and vm_flags & VM_SHARED:
        from hmmsim.mm.hugetlb import hugetlb_file_setup

        file, pgoff = hugetlb_file_setup(k), 0  # ksys_mmap_pgoff's hugetlbfs file
    vma = vm_area_struct(mm, start, end, vm_flags, pgoff, file)
    if file is not None:
        k.fget(file)
    elif vm_flags & VM_SHARED and not hugetlb:
        # shmem_zero_setup -> __shmem_file_setup: shmem_acct_size charges the
        # whole object unless VM_NORESERVE. It runs after the MAP_FIXED
        # range was cleared, so a refusal leaves a gap there, as the kernel's
        # vms_abort_munmap_vmas does once the PTEs are gone.
        if not vm_flags & VM_NORESERVE and security_vm_enough_memory_mm(mm, length >> PAGE_SHIFT):
            return -ENOMEM
        shmem_zero_setup(vma)
    if hugetlb:
        ret = k.hugetlb.hugetlb_reserve_pages(vma, length // PMD_SIZE)
        if ret:
            return ret
    vma_link(mm, vma)
    f_mmap = getattr(file, "mmap", None) if file is not None else None
    if f_mmap is not None:  # call_mmap(): the driver's f_op->mmap
        ret = f_mmap(vma)
        if ret:
            unmap_region(mm, [vma], start, end)
            return ret
    # __mmap_region: every vma mmap maps starts soft-dirty (clear_refs, which
    # would clear VM_SOFTDIRTY, is not modelled), so pagemap reads each of
    # its entries, holes included, with PM_SOFT_DIRTY
    vma.vm_flags |= VM_SOFTDIRTY
    if flags & MAP_POPULATE:
        mm_populate(mm, start, length)
    return start


def mm_populate(mm: mm_struct, start: int, length: int) -> None:
    """MAP_POPULATE: fault the range in (write faults for private writable).

    mm/gup.c __mm_populate with ignore_errors (as mm_populate calls it) and
    populate_vma_page_range: a PROT_NONE vma is never faulted in (-EFAULT,
    skipped), and a failed fault skips the rest of its vma, not the range.
    """
    end = start + length
    for vma in vmas_in(mm, start, end):
        if not vma.vm_flags & (VM_READ | VM_WRITE | VM_EXEC):  # vma_is_accessible
            continue
        write = (vma.vm_flags & (VM_WRITE | VM_SHARED)) == VM_WRITE
        step = PMD_SIZE if vma.vm_flags & VM_HUGETLB else PAGE_SIZE
        for addr in range(max(start, vma.vm_start), min(end, vma.vm_end), step):
            ret = handle_mm_fault(vma, addr, FAULT_FLAG_WRITE if write else 0)
            if ret & VM_FAULT_ERROR:
                break


# --- teardown ------------------------------------------------------------------------------
def exit_mmap(mm: mm_struct) -> None:
    """The mm is going away: MMU_NOTIFY_RELEASE, zap everything, free tables."""
    k = mm.k
    if mm.dead:
        return
    with notify_range(mm, MMU_NOTIFY_RELEASE, 0, TASK_SIZE + PAGE_SIZE):
        pass
    for mni in list(mm.notifier_subscriptions):
        release = getattr(mni.ops, "release", None)
        if release is not None:
            release(mni)
    vmas = list(mm.vmas)
    for vma in vmas:
        unmap_single_vma(vma, vma.vm_start, vma.vm_end)
    mm.vmas.clear()
    free_pgd_range(mm, 0, TASK_SIZE + PAGE_SIZE, 0, TASK_SIZE + PAGE_SIZE)
    for vma in vmas:
        remove_vma(vma)
    from hmmsim.mm.pgtable import free_table

    free_table(k, mm.pgd)
    mm.dead = True


_ = (EBADF, ENODEV, VM_MAYSHARE)

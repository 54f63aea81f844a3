"""madvise(2): DONTNEED zaps, REMOVE punches a hole, HUGEPAGE/NOHUGEPAGE set vma flags.

Models: mm/madvise.c (do_madvise, madvise_dontneed_free,
madvise_dontneed_free_valid_vma, madvise_remove, madvise_behavior_valid) and
mm/khugepaged.c (hugepage_madvise) @ torvalds/linux 0eaed89c18ae.

MADV_NORMAL/RANDOM/SEQUENTIAL set VM_SEQ_READ/VM_RAND_READ (splitting
the vma as the kernel does; the model has no readahead to steer).
MADV_FREE (madvise_free_single_vma) refuses vmas that are not private
anonymous memory and sends MMU_NOTIFY_CLEAR over the range, as the kernel
does; the lazy-free marking itself has no effect in the model (no reclaim).
Accepted but without effect in the model (no readahead): MADV_WILLNEED. MADV_COLLAPSE collapses
anonymous memory (mm/khugepaged.py).
"""

from __future__ import annotations

from hmmsim.errno import EACCES, EINVAL, ENOMEM
from hmmsim.include.mm import (
    VM_DONTCOPY,
    VM_HUGEPAGE,
    VM_HUGETLB,
    VM_LOCKED,
    VM_MAYWRITE,
    VM_NOHUGEPAGE,
    VM_PFNMAP,
    VM_RAND_READ,
    VM_SEQ_READ,
    VM_SHARED,
)
from hmmsim.include.mman import (
    MADV_COLLAPSE,
    MADV_DOFORK,
    MADV_DONTFORK,
    MADV_DONTNEED,
    MADV_FREE,
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    MADV_NORMAL,
    MADV_RANDOM,
    MADV_REMOVE,
    MADV_SEQUENTIAL,
    MADV_WILLNEED,
)
from hmmsim.include.uapi_types import U64_MASK
from hmmsim.kconfig import PAGE_SHIFT, PAGE_SIZE, PMD_MASK
from hmmsim.mm.memory import zap_page_range_single
from hmmsim.mm.mmap import PAGE_ALIGN, split_range, vmas_in

_NOOP = {MADV_WILLNEED}
#: advice -> (flags set, flags cleared): mm/madvise.c madvise_vma_behavior
_FLAGS = {
    MADV_NORMAL: (0, VM_RAND_READ | VM_SEQ_READ),
    MADV_SEQUENTIAL: (VM_SEQ_READ, VM_RAND_READ),
    MADV_RANDOM: (VM_RAND_READ, VM_SEQ_READ),
    MADV_HUGEPAGE: (VM_HUGEPAGE, VM_NOHUGEPAGE),
    MADV_NOHUGEPAGE: (VM_NOHUGEPAGE, VM_HUGEPAGE),
    MADV_DONTFORK: (VM_DONTCOPY, 0),
    MADV_DOFORK: (0, VM_DONTCOPY),
}


def madvise_behavior_valid(behavior: int) -> bool:
    return behavior in _NOOP or behavior in _FLAGS or behavior in _WALKED


_WALKED = (MADV_DONTNEED, MADV_FREE, MADV_COLLAPSE, MADV_REMOVE)


def madvise_free_single_vma(vma, start: int, end: int) -> int:
    """MADV_FREE on [start, end) of one vma: 0 or -EINVAL.

    mm/madvise.c madvise_dontneed_free_valid_vma (locked, PFN-mapped and
    hugetlb vmas are -EINVAL for MADV_FREE) and madvise_free_single_vma
    (only vma_is_anonymous memory: shared anonymous and file mappings are
    -EINVAL); the same in 6.12 and mainline. The range is announced with
    MMU_NOTIFY_CLEAR, so mirrors drop it (a later device access faults).
    The kernel then marks the pages clean, old and lazy-free for reclaim;
    the model has no reclaim, so the pages simply stay mapped.
    """
    from hmmsim.include.mmu_notifier import MMU_NOTIFY_CLEAR
    from hmmsim.mm.mmu_notifier import notify_range

    if vma.vm_flags & (VM_LOCKED | VM_PFNMAP | VM_HUGETLB):
        return -EINVAL
    if vma.vm_file is not None:  # has vm_ops: not vma_is_anonymous
        return -EINVAL
    with notify_range(vma.vm_mm, MMU_NOTIFY_CLEAR, start, end):
        pass  # madvise_free_pte_range: mkold/mkclean, folio_mark_lazyfree
    return 0


def madvise_remove(vma, start: int, end: int) -> int:
    """MADV_REMOVE on [start, end) of one vma: 0 or -errno.

    mm/madvise.c madvise_remove (the same in 6.12 and mainline): a locked vma
    or one without a file (private anonymous memory) is -EINVAL, a mapping
    that is not shared and writable (vma_is_shared_maywrite) is -EACCES;
    otherwise the file range behind it is hole-punched (vfs_fallocate with
    PUNCH_HOLE | KEEP_SIZE; every file here is tmpfs, shmem_fallocate).
    Shared anonymous memory is a shmem file, so it is punched too.
    """
    if vma.vm_flags & VM_LOCKED:
        return -EINVAL
    f = vma.vm_file
    if f is None:
        return -EINVAL
    if (vma.vm_flags & (VM_SHARED | VM_MAYWRITE)) != (VM_SHARED | VM_MAYWRITE):
        return -EACCES
    offset = (start - vma.vm_start) + (vma.vm_pgoff << PAGE_SHIFT)  # loff_t
    if offset >= 1 << 63:
        offset -= 1 << 64
    return f.punch_hole(offset, end - start)


def do_madvise(mm, start: int, len_in: int, behavior: int) -> int:
    """madvise(2): 0, -EINVAL (unaligned, unknown advice, locked vma), -ENOMEM (hole).

    MADV_REMOVE may also return -EACCES/-EFBIG (madvise_remove).
    """
    start, len_in = start & U64_MASK, len_in & U64_MASK
    if not madvise_behavior_valid(behavior):
        return -EINVAL
    if start & (PAGE_SIZE - 1):
        return -EINVAL
    length = PAGE_ALIGN(len_in) & U64_MASK
    if len_in and not length:  # rounded up from a small negative length
        return -EINVAL
    end = (start + length) & U64_MASK
    if end < start:
        return -EINVAL
    if end == start:
        return 0
    unmapped = 0
    pos = start
    for vma in vmas_in(mm, start, end):
        if vma.vm_start > pos:
            unmapped = -ENOMEM
        s, e = max(start, vma.vm_start), min(end, vma.vm_end)
        pos = e
        if behavior == MADV_DONTNEED:
            if vma.vm_flags & (VM_LOCKED | VM_PFNMAP):
                return -EINVAL
            if vma.vm_flags & VM_HUGETLB:
                if s & ~PMD_MASK:
                    return -EINVAL
                e = e & PMD_MASK
                if e <= s:
                    continue
            zap_page_range_single(vma, s, e - s)
        elif behavior == MADV_FREE:
            ret = madvise_free_single_vma(vma, s, e)
            if ret:
                return ret
        elif behavior == MADV_REMOVE:
            ret = madvise_remove(vma, s, e)
            if ret:
                return ret
        elif behavior == MADV_COLLAPSE:
            from hmmsim.mm.khugepaged import madvise_collapse

            ret = madvise_collapse(vma, s, e)
            if ret:
                return ret
        elif behavior in _FLAGS:
            if behavior in (MADV_HUGEPAGE, MADV_NOHUGEPAGE) and vma.vm_flags & VM_HUGETLB:
                continue
            set_bits, clear_bits = _FLAGS[behavior]
            if (vma.vm_flags | set_bits) & ~clear_bits == vma.vm_flags:
                continue  # madvise_update_vma: unchanged flags, no split
            pieces = split_range(mm, s, e)
            if isinstance(pieces, int):
                return pieces
            from hmmsim.mm.vma import vma_merge_modified

            for piece in pieces:
                piece.vm_flags = (piece.vm_flags | set_bits) & ~clear_bits
                vma_merge_modified(mm, piece)  # vma_modify_flags_name
    if pos < end:
        unmapped = -ENOMEM
    return unmapped

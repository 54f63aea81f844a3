"""Merging a modified vma range with its neighbours.

Models: mm/vma.c (vma_merge_existing_range as vma_modify_flags and
vma_modify_flags_name reach it from mprotect_fixup and madvise_update_vma;
is_mergeable_vma, is_mergeable_anon_vma, can_vma_merge_before/after,
can_merge_remove_vma) @ torvalds/linux 0eaed89c18ae, checked against Linux
6.12, which decides the same for what the model has.

The kernel merges instead of splitting; the model splits first (so the
modified range is one vma) and then merges that vma into compatible
neighbours. The boundaries that result are the kernel's. What the model has
no counterpart for (userfaultfd contexts, anon_vma names, mempolicies, mseal)
is always equal. A merge keeps the left vma, or the right one when only the
right merges, as the kernel's expansion does.

New mappings (vma_merge_new_range from mmap/brk) and mremap's
copy_vma merges are not modelled: those vmas stay apart.
"""

from __future__ import annotations

from hmmsim.include.mm import VM_HUGETLB, VM_SOFTDIRTY, VM_SPECIAL
from hmmsim.kconfig import PAGE_SHIFT
from hmmsim.mm.mmap import remove_vma, vma_unlink
from hmmsim.mm.rmap import anon_vma_clone


def _pages(vma) -> int:
    return (vma.vm_end - vma.vm_start) >> PAGE_SHIFT


def is_mergeable_vma(a, b) -> bool:
    """Flags equal but for VM_SOFTDIRTY, the same file, nothing special."""
    if (a.vm_flags ^ b.vm_flags) & ~VM_SOFTDIRTY:
        return False
    if a.vm_flags & (VM_SPECIAL | VM_HUGETLB):
        # VM_SPECIAL never merges; hugetlb_vm_ops has ->close, so
        # can_merge_remove_vma refuses to delete a hugetlb vma
        return False
    return a.vm_file is b.vm_file


def is_mergeable_anon_vma(av1, av2, vma) -> bool:
    """mm/vma.c is_mergeable_anon_vma: one side without an anon_vma is fine
    when vma (if given) is linked to at most one anon_vma; else they must match."""
    if (av1 is None or av2 is None) and (vma is None or len(vma.anon_vma_chain) <= 1):
        return True
    return av1 is av2


def _can_merge(left, right, vma) -> bool:
    return (
        left.vm_end == right.vm_start
        and is_mergeable_vma(left, right)
        and is_mergeable_anon_vma(left.anon_vma, right.anon_vma, vma)
        and left.vm_pgoff + _pages(left) == right.vm_pgoff
    )


def _absorb(mm, keep, gone) -> None:
    """keep grows over gone (adjacent); gone is unlinked and released."""
    if keep.anon_vma is None and gone.anon_vma is not None:
        anon_vma_clone(keep, gone)  # dup_anon_vma
    if gone.vm_start < keep.vm_start:  # keep grows down: its pgoff moves with its start
        keep.vm_start, keep.vm_pgoff = gone.vm_start, gone.vm_pgoff
    else:
        keep.vm_end = gone.vm_end
    keep.vm_flags |= gone.vm_flags & VM_SOFTDIRTY
    vma_unlink(mm, gone)
    remove_vma(gone)


def vma_merge_modified(mm, vma):
    """Merge vma (a range whose flags just changed) with its neighbours.

    Returns the vma that now covers the range. prev absorbs vma (and next,
    when all three are compatible, prev's and next's anon_vmas included);
    otherwise next grows down over vma.
    """
    i = mm.vmas.index(vma)
    prev = mm.vmas[i - 1] if i > 0 else None
    nxt = mm.vmas[i + 1] if i + 1 < len(mm.vmas) else None
    merge_prev = prev is not None and _can_merge(prev, vma, vma)
    merge_next = nxt is not None and _can_merge(vma, nxt, vma)
    if merge_prev and merge_next and not is_mergeable_anon_vma(prev.anon_vma, nxt.anon_vma, None):
        merge_next = False  # the kernel then merges with prev alone
    if merge_prev:
        _absorb(mm, prev, vma)
        if merge_next:
            _absorb(mm, prev, nxt)
        return prev
    if merge_next:
        _absorb(mm, nxt, vma)
        return nxt
    return vma

"""fork(2)'s address-space copy.

Models: kernel/fork.c (dup_mm, dup_mmap) with mm/memory.c
(copy_page_range) @ torvalds/linux 0eaed89c18ae.

Each vma is copied (VM_DONTCOPY ones skipped, VM_WIPEONFORK ones copied
empty), linked to the parent's anon_vmas plus a new one of its own, and its
page tables copied with copy-on-write write protection.
"""

from __future__ import annotations

from hmmsim.errno import ENOMEM
from hmmsim.include.mm import VM_DONTCOPY, VM_WIPEONFORK
from hmmsim.include.mm_types import mm_struct, vm_area_struct
from hmmsim.mm.memory import copy_page_range
from hmmsim.mm.rmap import anon_vma_fork


def dup_mmap(mm: mm_struct, oldmm: mm_struct) -> int:
    """Copy oldmm's vmas and page tables into the new mm. 0 or -ENOMEM."""
    k = mm.k
    oldmm.mmap_lock.down_write()
    try:
        mm.mmap_base = oldmm.mmap_base
        for mpnt in oldmm.vmas:
            if mpnt.vm_flags & VM_DONTCOPY:
                continue
            tmp = vm_area_struct(
                mm, mpnt.vm_start, mpnt.vm_end, mpnt.vm_flags, mpnt.vm_pgoff, mpnt.vm_file
            )
            tmp.vm_page_prot = mpnt.vm_page_prot
            if mpnt.vm_flags & VM_WIPEONFORK:
                tmp.anon_vma = None
            else:
                anon_vma_fork(tmp, mpnt)
            if tmp.vm_file is not None:
                k.fget(tmp.vm_file)
                tmp.vm_file.i_mmap.add(tmp)
            mm.vmas.append(tmp)
            if not mpnt.vm_flags & VM_WIPEONFORK:
                if copy_page_range(tmp, mpnt):
                    return -ENOMEM
        return 0
    finally:
        oldmm.mmap_lock.up_write()

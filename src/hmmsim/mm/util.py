"""Memory commit accounting: the overcommit policy (vm.overcommit_memory).

Models: mm/util.c (__vm_enough_memory), security/commoncap.c
(cap_vm_enough_memory, as security_vm_enough_memory_mm reaches it) and
mm/mmap.c (accountable_mapping) @ torvalds/linux 0eaed89c18ae; the same in
Linux 6.12.

The kernel charges a mapping's pages against the commit when it could need
private memory: a private writable mapping that is not hugetlb and was not
mapped MAP_NORESERVE (VM_ACCOUNT; mm/vma.c __mmap_setup), shared anonymous
memory (its shmem object, shmem_acct_size), an accounted mapping that grows
(mm/mremap.c vrm_calc_charge) and a private mapping made writable
(mm/mprotect.c mprotect_fixup). Each charge goes through
__vm_enough_memory. With the default heuristic mode (OVERCOMMIT_GUESS) a
single charge fails with -ENOMEM when it alone is larger than all of RAM
plus swap (totalram_pages() + total_swap_pages); everything smaller
succeeds, however much is committed already. OVERCOMMIT_ALWAYS never
fails.

Differences from kernel: OVERCOMMIT_NEVER (strict accounting against
CommitLimit) is not modelled: it needs vm_committed_as kept exact on every
path that charges or uncharges (fork's dup_mmap among them), and a kernel
set to it raises NotImplementedError at the first charge. The model has no
swap, so total_swap_pages is 0. See docs/differences.md.
"""

from __future__ import annotations

from hmmsim.errno import ENOMEM
from hmmsim.include.mm import VM_NORESERVE, VM_SHARED, VM_WRITE

#: include/uapi/linux/mman.h: the values of vm.overcommit_memory
OVERCOMMIT_GUESS = 0
OVERCOMMIT_ALWAYS = 1
OVERCOMMIT_NEVER = 2

#: The model has no swap device (total_swap_pages).
TOTAL_SWAP_PAGES = 0


def totalram_pages(k) -> int:
    """include/linux/mm.h totalram_pages: the pages the buddy allocator
    manages (RAM less what boot reserved)."""
    return k.mem.managed_pages


def __vm_enough_memory(mm, pages: int, cap_sys_admin: bool = True) -> int:
    """mm/util.c __vm_enough_memory: 0 if `pages` more may be committed, else -ENOMEM.

    `pages` is a long in the kernel; callers pass a page count computed from
    unsigned lengths already bounded by TASK_SIZE.
    """
    k = mm.k
    mode = k.sysctl_overcommit_memory
    if mode == OVERCOMMIT_ALWAYS:
        return 0
    if mode == OVERCOMMIT_GUESS:
        if pages > totalram_pages(k) + TOTAL_SWAP_PAGES:
            k.stats["vm_enough_memory_failed"] += 1
            return -ENOMEM
        return 0
    raise NotImplementedError(
        f"vm.overcommit_memory={mode}: only OVERCOMMIT_GUESS (0, the default) and "
        "OVERCOMMIT_ALWAYS (1) are modelled (docs/differences.md)"
    )


def security_vm_enough_memory_mm(mm, pages: int) -> int:
    """security/security.c: with no LSM voting otherwise, cap_vm_enough_memory
    asks __vm_enough_memory (the model's processes run as root)."""
    return __vm_enough_memory(mm, pages, True)


def accountable_mapping(hugetlb_file: bool, vm_flags: int) -> bool:
    """mm/mmap.c accountable_mapping: a private writable mapping without
    VM_NORESERVE is charged, unless it is a hugetlbfs file (hugetlb keeps
    its own reservations; MAP_HUGETLB mappings are hugetlbfs files)."""
    if hugetlb_file:
        return False
    return (vm_flags & (VM_NORESERVE | VM_SHARED | VM_WRITE)) == VM_WRITE

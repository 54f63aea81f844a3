"""The OOM killer: which process dies when memory runs out.

Models: mm/oom_kill.c (oom_badness, oom_evaluate_task, select_bad_process,
out_of_memory, oom_kill_process) and mm/page_alloc.c
(__alloc_pages_may_oom: which allocations may invoke it) @ torvalds/linux
0eaed89c18ae; the same in Linux 6.12. Defaults: no memory cgroups,
vm.oom_kill_allocating_task 0, vm.panic_on_oom 0, oom_score_adj 0.

The badness of a process is the memory killing it would free, in pages:
its RSS (file, anon and shmem pages), its swap entries and its page tables
(mm_pgtables_bytes / PAGE_SIZE), plus oom_score_adj thousandths of all of
RAM + swap; oom_score_adj -1000 (OOM_SCORE_ADJ_MIN) exempts it. The task
list is walked in creation order and a later task with badness equal to the
best so far replaces it (oom_evaluate_task skips only smaller scores). The
victim gets SIGKILL. While an earlier victim has not exited the scan aborts
and kills nobody (tsk_is_oom_victim).

Where the model invokes it (the kernel runs it inside the allocator, after
reclaim failed, for an allocation of order <= PAGE_ALLOC_COSTLY_ORDER that
may enter direct reclaim and the filesystem and is not __GFP_NORETRY /
__GFP_RETRY_MAYFAIL / __GFP_THISNODE): the allocator counts such failures
(PhysMem.nr_oom_failures) and a user page fault that ended in VM_FAULT_OOM
after one runs out_of_memory() (userspace.Process._fault). A victim other
than the faulting process dies at once, its memory freed (the kernel's
oom_reaper does that asynchronously), and the fault is retried; if the
faulting process is the victim it dies and the caller gets OomKilled.

Differences from kernel (docs/differences.md): allocations inside a syscall
or an ioctl that fail return -ENOMEM without an OOM kill (the kernel would
kill and retry); no process is init (pid 1 of the model is an ordinary
test process, is_global_init never holds); no kernel threads, no memory
cgroups, no cpusets or mempolicies constrain the choice.
"""

from __future__ import annotations

import numpy as np

from hmmsim.bug import KernelOops
from hmmsim.include.pgtable import _PAGE_PRESENT, _PAGE_PSE, table_entry_pfn

#: include/uapi/linux/oom.h
OOM_SCORE_ADJ_MIN = -1000
OOM_SCORE_ADJ_MAX = 1000
#: include/linux/mmzone.h
PAGE_ALLOC_COSTLY_ORDER = 3
#: include/linux/gfp_types.h bits the OOM decision reads
__GFP_FS = 0x80
__GFP_DIRECT_RECLAIM = 0x400
__GFP_RETRY_MAYFAIL = 0x4000
__GFP_NORETRY = 0x10000
__GFP_THISNODE = 0x200000

LONG_MIN = -(1 << 63)


def gfp_may_oom(gfp: int, order: int) -> bool:
    """Whether a failed allocation would run the OOM killer (mm/page_alloc.c
    __alloc_pages_slowpath / __alloc_pages_may_oom, and out_of_memory's
    !__GFP_FS early return)."""
    if order > PAGE_ALLOC_COSTLY_ORDER:
        return False
    if not gfp & __GFP_DIRECT_RECLAIM or not gfp & __GFP_FS:
        return False
    return not gfp & (__GFP_NORETRY | __GFP_RETRY_MAYFAIL | __GFP_THISNODE)


def mm_pgtables_pages(mm) -> int:
    """mm_pgtables_bytes(mm) / PAGE_SIZE: the PUD, PMD and PTE tables of the
    mm (the PGD page is not counted), deposited THP tables included."""
    k = mm.k
    if mm.dead:
        return 0
    words = k.mem.ram.words
    n = 0
    pmd_tables = set()
    top = words[mm.pgd][:256]  # the user half
    for pud in (table_entry_pfn(int(e)) for e in top[top != 0]):
        n += 1
        puds = words[pud]
        for pmd in (table_entry_pfn(int(e)) for e in puds[puds != 0]):
            n += 1
            pmd_tables.add(pmd)
            pmds = words[pmd]
            present = (pmds & np.uint64(_PAGE_PRESENT)) != 0
            leaf = (pmds & np.uint64(_PAGE_PSE)) != 0
            n += int(np.count_nonzero(present & ~leaf))
    n += sum(1 for pmdp in k.deposited if pmdp >> 12 in pmd_tables)
    return n


def oom_badness(proc, totalpages: int) -> int:
    """mm/oom_kill.c oom_badness: LONG_MIN for an exempt task, else the pages
    killing it frees plus its oom_score_adj share of totalpages."""
    from hmmsim.include.mm_types import MM_SWAPENTS

    adj = proc.oom_score_adj
    mm = proc.mm
    if adj == OOM_SCORE_ADJ_MIN or mm is None or mm.dead:
        return LONG_MIN
    rss = sum(mm.rss_stat) - mm.rss_stat[MM_SWAPENTS]
    points = rss + mm.rss_stat[MM_SWAPENTS] + mm_pgtables_pages(mm)
    return points + adj * (totalpages // 1000)


def select_bad_process(k):
    """mm/oom_kill.c select_bad_process: (victim, points), (None, 0) when no
    process is eligible, or ("abort", 0) while an earlier victim lives."""
    from hmmsim.mm.util import TOTAL_SWAP_PAGES, totalram_pages

    totalpages = totalram_pages(k) + TOTAL_SWAP_PAGES
    chosen, chosen_points = None, LONG_MIN
    for pid in sorted(k.processes):  # for_each_process: creation order
        p = k.processes[pid]
        if not p.alive:
            continue
        if p.oom_victim:  # tsk_is_oom_victim: wait for it to go
            return "abort", 0
        points = oom_badness(p, totalpages)
        if points == LONG_MIN or points < chosen_points:
            continue
        chosen, chosen_points = p, points
    return chosen, chosen_points


def out_of_memory(k):
    """mm/oom_kill.c out_of_memory: pick a victim and SIGKILL it.

    Returns the process killed, or None when an earlier victim is still
    exiting. With no killable process at all the kernel panics ("System is
    deadlocked on memory"): KernelOops.
    """
    from hmmsim.userspace import SIGKILL

    victim, points = select_bad_process(k)
    if victim == "abort":
        return None
    if victim is None:
        raise KernelOops("out_of_memory", "Out of memory and no killable processes: panic")
    k.stats["oom_kill"] += 1
    k.oom_kills.append((victim.pid, points))
    victim.oom_victim = True  # mark_oom_victim
    victim.kill(SIGKILL)  # __oom_kill_process; the oom_reaper frees the memory
    return victim

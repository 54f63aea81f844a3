"""The generic page-table walker.

Models: mm/pagewalk.c (walk_page_range, walk_page_vma, struct mm_walk,
struct mm_walk_ops, ACTION_SUBTREE/CONTINUE/AGAIN) @ torvalds/linux 0eaed89c18ae.

`mm_walk_ops` callbacks (any may be None), kernel argument order:
- test_walk(start, end, walk) -> 0 to walk the vma, 1 to skip it, <0 to stop;
- pmd_entry(pmdp, addr, next, walk) -> int, may set walk.action;
- pte_entry(ptep, addr, next, walk) -> int;
- pte_hole(addr, next, depth, walk) -> int (depth -1: no vma);
- hugetlb_entry(ptep, hmask, addr, next, walk) -> int.
A non-zero return stops the walk and is returned.
Context: mmap_lock held (asserted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hmmsim.bug import KernelBug
from hmmsim.include.mm import VM_HUGETLB, VM_PFNMAP
from hmmsim.include.pgtable import pmd_leaf, pmd_none
from hmmsim.kconfig import PAGE_SIZE, PMD_MASK, PMD_SIZE
from hmmsim.mm.pgtable import pmd_offset, pmdp_get, pte_offset_map

ACTION_SUBTREE = 0
ACTION_CONTINUE = 1
ACTION_AGAIN = 2


@dataclass
class mm_walk_ops:
    pmd_entry: Callable | None = None
    pte_entry: Callable | None = None
    pte_hole: Callable | None = None
    hugetlb_entry: Callable | None = None
    test_walk: Callable | None = None


@dataclass
class mm_walk:
    ops: mm_walk_ops
    mm: object
    vma: object = None
    action: int = ACTION_SUBTREE
    private: object = None
    extra: dict = field(default_factory=dict)


def _walk_pte_range(pmdp: int, addr: int, end: int, walk: mm_walk) -> int:
    k = walk.mm.k
    ptep = pte_offset_map(k, pmdp_get(k, pmdp), addr)
    while addr < end:
        err = walk.ops.pte_entry(ptep, addr, addr + PAGE_SIZE, walk)
        if err:
            return err
        addr += PAGE_SIZE
        ptep += 8
    return 0


def _walk_pmd_range(pud_e: int, addr: int, end: int, walk: mm_walk) -> int:
    from hmmsim.include.pgtable import pmd_index, table_entry_pfn
    from hmmsim.mm.pgtable import entry_ptr

    k = walk.mm.k
    ops = walk.ops
    table = table_entry_pfn(pud_e)
    while addr < end:
        nxt = min((addr & PMD_MASK) + PMD_SIZE, end)
        pmdp = entry_ptr(table, pmd_index(addr))
        while True:
            if pmd_none(pmdp_get(k, pmdp)):
                if ops.pte_hole:
                    err = ops.pte_hole(addr, nxt, 3, walk)
                    if err:
                        return err
                break
            walk.action = ACTION_SUBTREE
            if ops.pmd_entry:
                err = ops.pmd_entry(pmdp, addr, nxt, walk)
                if err:
                    return err
            if walk.action == ACTION_AGAIN:
                continue
            if walk.action == ACTION_CONTINUE or not ops.pte_entry:
                break
            pmd = pmdp_get(k, pmdp)
            if pmd_leaf(pmd) or not pmd & 1:
                break  # the kernel splits here for a pte_entry-only walk
            err = _walk_pte_range(pmdp, addr, nxt, walk)
            if err:
                return err
            break
        addr = nxt
    return 0


def _walk_pgd_range(addr: int, end: int, walk: mm_walk) -> int:
    """Walk the upper levels; a missing level is ONE hole over its whole span.

    x86-64 4-level: p4d is folded into the pgd, so an empty top-level entry
    reports depth 1 (p4d), an empty PUD entry depth 2, an empty PMD depth 3.
    """
    from hmmsim.include.pgtable import pgd_index, pud_index, table_entry_pfn
    from hmmsim.kconfig import PGDIR_SHIFT, PUD_SHIFT
    from hmmsim.mm.pgtable import entry_ptr, ptep_get

    k = walk.mm.k
    ops = walk.ops
    while addr < end:
        nxt = min((addr >> PGDIR_SHIFT) + 1 << PGDIR_SHIFT, end)
        pgd_e = ptep_get(k, entry_ptr(walk.mm.pgd, pgd_index(addr)))
        if not pgd_e:
            if ops.pte_hole:
                err = ops.pte_hole(addr, nxt, 1, walk)
                if err:
                    return err
            addr = nxt
            continue
        a = addr
        while a < nxt:
            pnext = min((a >> PUD_SHIFT) + 1 << PUD_SHIFT, nxt)
            pud_e = ptep_get(k, entry_ptr(table_entry_pfn(pgd_e), pud_index(a)))
            if not pud_e:
                err = ops.pte_hole(a, pnext, 2, walk) if ops.pte_hole else 0
            else:
                err = _walk_pmd_range(pud_e, a, pnext, walk)
            if err:
                return err
            a = pnext
        addr = nxt
    return 0


def _walk_hugetlb_range(addr: int, end: int, walk: mm_walk) -> int:
    ops = walk.ops
    if not ops.hugetlb_entry:
        return 0
    while addr < end:
        nxt = min((addr & PMD_MASK) + PMD_SIZE, end)
        pmdp = pmd_offset(walk.mm, addr)
        if pmdp is None or pmd_none(pmdp_get(walk.mm.k, pmdp)):
            err = ops.pte_hole(addr, nxt, -1, walk) if ops.pte_hole else 0
        else:
            err = ops.hugetlb_entry(pmdp, PMD_MASK, addr, nxt, walk)
        if err:
            return err
        addr = nxt
    return 0


def walk_page_range(mm, start: int, end: int, ops: mm_walk_ops, private=None) -> int:
    """Walk [start, end) of mm vma by vma; 0 or the first callback error."""
    from hmmsim.mm.mmap import find_vma

    if not mm.mmap_lock.is_locked():
        raise KernelBug("walk_page_range: mmap_lock not held")
    if start >= end:
        from hmmsim.errno import EINVAL

        return -EINVAL
    walk = mm_walk(ops=ops, mm=mm, private=private)
    addr = start
    while addr < end:
        vma = find_vma(mm, addr)
        if vma is None or vma.vm_start >= end:
            walk.vma = None
            return ops.pte_hole(addr, end, -1, walk) if ops.pte_hole else 0
        if vma.vm_start > addr:
            walk.vma = None
            if ops.pte_hole:
                err = ops.pte_hole(addr, vma.vm_start, -1, walk)
                if err:
                    return err
            addr = vma.vm_start
        nxt = min(end, vma.vm_end)
        walk.vma = vma
        skip = 0
        if ops.test_walk:
            skip = ops.test_walk(addr, nxt, walk)
            if skip < 0:
                return skip
        elif vma.vm_flags & VM_PFNMAP:
            skip = 1
            if ops.pte_hole:
                err = ops.pte_hole(addr, nxt, -1, walk)
                if err:
                    return err
        if not skip:
            if vma.vm_flags & VM_HUGETLB:
                err = _walk_hugetlb_range(addr, nxt, walk)
            else:
                err = _walk_pgd_range(addr, nxt, walk)
            if err:
                return err
        addr = nxt
    return 0


def walk_page_vma(vma, ops: mm_walk_ops, private=None) -> int:
    return walk_page_range(vma.vm_mm, vma.vm_start, vma.vm_end, ops, private)

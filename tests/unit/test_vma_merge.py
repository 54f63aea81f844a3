"""mprotect/madvise merge the modified range with compatible neighbours (mm/vma.c
vma_merge_existing_range via vma_modify_flags; the same in 6.12 and mainline)."""

import numpy as np

from hmmsim.include.mman import (
    MADV_NORMAL,
    MADV_RANDOM,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.include.pgtable import pte_pfn
from hmmsim.mm.rmap import folio_anon_vma
from hmmsim.mm.vma import is_mergeable_anon_vma
from hmmsim.userspace import entry_at

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


def _bounds(proc, a, n):
    return [
        (v.vm_start - a, v.vm_end - a)
        for v in proc.mm.vmas
        if v.vm_end > a and v.vm_start < a + n * 4096
    ]


def test_mprotect_back_merges_both_sides(k, proc, ok):
    a = proc.mmap(0, 4 * 4096, RW, ANON)
    proc.store_array(a, np.arange(4 * 1024, dtype=np.int32))
    assert proc.mprotect(a + 4096, 2 * 4096, PROT_READ) == 0
    assert len(_bounds(proc, a, 4)) == 3
    assert proc.mprotect(a + 4096, 2 * 4096, RW) == 0
    assert _bounds(proc, a, 4) == [(0, 4 * 4096)]
    (vma,) = [v for v in proc.mm.vmas if v.vm_start == a]
    assert vma.vm_pgoff == a >> 12
    kind, pte = entry_at(proc, a + 2 * 4096)
    assert kind == "pte"
    page = k.mem.pfn_to_page(pte_pfn(pte))
    assert vma in folio_anon_vma(page).vmas  # rmap still finds the page's mapping
    assert (proc.load_array(a, 4 * 1024) == np.arange(4 * 1024)).all()
    ok(k)


def test_mprotect_over_split_vmas_merges_them_so_mremap_can_grow(k, proc, ok):
    """gen/0464: three vmas given the same protection become one, and grow as one."""
    a = proc.mmap(0, 8 * 4096, RW, MAP_SHARED | MAP_ANONYMOUS)
    assert proc.mprotect(a + 4 * 4096, 4096, 0) == 0
    assert proc.mprotect(a + 2 * 4096, 5 * 4096, PROT_READ | PROT_EXEC) == 0
    assert _bounds(proc, a, 8) == [(0, 2 * 4096), (2 * 4096, 7 * 4096), (7 * 4096, 8 * 4096)]
    assert proc.mremap(a + 2 * 4096, 5 * 4096, 5 * 4096) == a + 2 * 4096
    ok(k)


def test_madvise_flag_change_merges_back(k, proc, ok):
    a = proc.mmap(0, 4 * 4096, RW, ANON)
    assert proc.madvise(a + 4096, 4096, MADV_RANDOM) == 0
    assert len(_bounds(proc, a, 4)) == 3
    assert proc.madvise(a + 4096, 4096, MADV_NORMAL) == 0
    assert _bounds(proc, a, 4) == [(0, 4 * 4096)]
    ok(k)


def test_prev_without_anon_vma_takes_the_merged_ones(k, proc, ok):
    """dup_anon_vma: the surviving vma is linked to the anon_vma of the pages it gains."""
    a = proc.mmap(0, 4 * 4096, RW, ANON)
    assert proc.mprotect(a + 2 * 4096, 2 * 4096, PROT_READ) == 0
    assert proc.mprotect(a + 2 * 4096, 2 * 4096, RW) == 0  # merged, no anon_vma yet
    assert proc.mprotect(a + 2 * 4096, 2 * 4096, PROT_READ) == 0
    assert proc.mprotect(a + 2 * 4096, 2 * 4096, RW) == 0
    proc.store(a + 3 * 4096, b"late")
    assert proc.mprotect(a, 2 * 4096, PROT_READ) == 0
    assert proc.mprotect(a, 2 * 4096, RW) == 0
    (vma,) = [v for v in proc.mm.vmas if v.vm_start == a]
    assert vma.vm_end == a + 4 * 4096 and vma.anon_vma is not None
    assert proc.load(a + 3 * 4096, 4) == b"late"
    ok(k)


def test_different_anon_vmas_do_not_merge():
    class V:
        def __init__(self, chain):
            self.anon_vma_chain = chain

    a1, a2 = object(), object()
    assert is_mergeable_anon_vma(a1, a1, V([a1]))
    assert is_mergeable_anon_vma(None, a2, V([a2]))
    assert not is_mergeable_anon_vma(None, a2, V([a1, a2]))  # a forked vma: chain of two
    assert not is_mergeable_anon_vma(a1, a2, None)

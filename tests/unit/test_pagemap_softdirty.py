"""/proc/self/pagemap against fs/proc/task_mmu.c: VM_SOFTDIRTY, PM_FILE and
PM_MMAP_EXCLUSIVE (issue 13 wave 2; the 6.12 oracle corpus found each).

- mm/vma.c __mmap_region sets VM_SOFTDIRTY on every vma mmap creates; split,
  mremap (copy_vma / vma_expand) and fork (vm_area_dup) keep it, and
  pagemap_pte_hole / pte_to_pagemap_entry / pagemap_pmd_range OR
  PM_SOFT_DIRTY into every entry of such a vma, holes included.
- PM_FILE comes from the folio (!folio_test_anon), never from vma->vm_file.
- PM_MMAP_EXCLUSIVE is only reported with PM_PRESENT.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from hmmsim.fs.task_mmu import (
    PM_FILE,
    PM_MMAP_EXCLUSIVE,
    PM_PRESENT,
    PM_SOFT_DIRTY,
    PM_SWAP,
)
from hmmsim.include.mm import VM_SOFTDIRTY
from hmmsim.include.mman import (
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_POPULATE,
    MAP_PRIVATE,
    MAP_SHARED,
    MREMAP_MAYMOVE,
    O_RDONLY,
    O_RDWR,
    O_TMPFILE,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.kernel import Kernel

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
PAGE = 4096
FLAG_BITS = PM_PRESENT | PM_SWAP | PM_FILE | PM_MMAP_EXCLUSIVE | PM_SOFT_DIRTY


def words(p, addr, n=1):
    fd = p.open("/proc/self/pagemap", O_RDONLY)
    data = p.pread(fd, 8 * n, (addr >> 12) * 8)
    p.close(fd)
    return [w & FLAG_BITS for w in struct.unpack(f"<{n}Q", data)]


@pytest.fixture(params=["mainline", "6.12"])
def kern(request):
    return Kernel(ram_bytes=64 << 20, kernel=request.param)


def test_mmap_sets_vm_softdirty(kern):
    p = kern.spawn("t")
    from hmmsim.mm.mmap import vma_lookup

    a = p.mmap(0, 2 * PAGE, RW, ANON)
    assert vma_lookup(p.mm, a).vm_flags & VM_SOFTDIRTY


def test_holes_of_a_new_vma_read_soft_dirty(kern):
    p = kern.spawn("t")
    a = p.mmap(0, 4 * PAGE, RW, ANON)
    p.munmap(a + 3 * PAGE, PAGE)
    p.store(a, b"x")
    # present; two holes inside the vma; then no vma at all
    assert words(p, a, 4) == [
        PM_PRESENT | PM_MMAP_EXCLUSIVE | PM_SOFT_DIRTY,
        PM_SOFT_DIRTY,
        PM_SOFT_DIRTY,
        0,
    ]


def test_split_mremap_and_fork_keep_vm_softdirty(kern):
    p = kern.spawn("t")
    a = p.mmap(0, 4 * PAGE, RW, ANON)
    assert p.mprotect(a + PAGE, PAGE, PROT_READ) == 0  # __split_vma x2
    assert words(p, a, 4) == [PM_SOFT_DIRTY] * 4
    b = p.mremap(a + 2 * PAGE, 2 * PAGE, 6 * PAGE, MREMAP_MAYMOVE)  # move (copy_vma)
    assert b > 0
    assert words(p, b, 6) == [PM_SOFT_DIRTY] * 6
    c = p.mremap(b, 6 * PAGE, 4 * PAGE)  # shrink in place
    assert c == b
    assert p.mremap(b, 4 * PAGE, 5 * PAGE) == b  # expand in place
    assert words(p, b, 5) == [PM_SOFT_DIRTY] * 5
    child = p.child(p.fork())  # dup_mmap: vm_area_dup copies the flags
    assert words(child, a, 2) == [PM_SOFT_DIRTY] * 2
    assert words(child, b, 5) == [PM_SOFT_DIRTY] * 5


def test_private_file_mapping_written_pages_are_anon(kern):
    """MAP_POPULATE of a private writable file mapping write-faults: CoW anon
    pages, no PM_FILE (the 6.12 corpus: `pxd`, not `pfxd`); its holes have
    no PM_FILE either."""
    p = kern.spawn("t")
    fd = p.open("/tmp", O_RDWR | O_TMPFILE)
    assert p.ftruncate(fd, 4 * PAGE) == 0
    a = p.mmap(0, 4 * PAGE, RW, MAP_PRIVATE | MAP_POPULATE, fd, 0)
    assert words(p, a, 1) == [PM_PRESENT | PM_MMAP_EXCLUSIVE | PM_SOFT_DIRTY]
    ro = p.mmap(0, 2 * PAGE, PROT_READ, MAP_PRIVATE, fd, 0)
    assert words(p, ro, 1) == [PM_SOFT_DIRTY]  # a hole of a file vma
    p.load(ro, 1)  # maps the shmem page itself
    w = words(p, ro, 1)[0]
    assert w & (PM_PRESENT | PM_FILE | PM_SOFT_DIRTY) == PM_PRESENT | PM_FILE | PM_SOFT_DIRTY
    s = p.mmap(0, PAGE, RW, MAP_SHARED | MAP_ANONYMOUS)
    assert words(p, s, 1) == [PM_SOFT_DIRTY]  # shared-anon hole: nothing but the vma's bit
    p.store(s, b"y")
    assert words(p, s, 1)[0] & PM_FILE  # shmem folio


def test_device_private_entry_is_anon_and_not_exclusive(kern):
    """A device-private entry of an anon page: PM_SWAP, no PM_FILE, and no
    PM_MMAP_EXCLUSIVE (that needs PM_PRESENT); also in a private file vma."""
    from hmmsim.drivers.test_hmm import hmm_dmirror_init
    from hmmsim.drivers.test_hmm_uapi import HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd

    hmm_dmirror_init(kern)
    p = kern.spawn("t")
    fd = p.open("/tmp", O_RDWR | O_TMPFILE)
    assert p.ftruncate(fd, 2 * PAGE) == 0
    a = p.mmap(0, 2 * PAGE, RW, MAP_PRIVATE | MAP_POPULATE, fd, 0)
    b = p.mmap(0, 2 * PAGE, RW, ANON)
    p.store_array(b, np.arange(2048, dtype=np.int32))
    dev = p.open("/dev/hmm_dmirror0", O_RDWR)
    mirror = np.zeros(2048, dtype=np.int32)
    for addr in (a, b):
        cmd = hmm_dmirror_cmd(addr=addr, ptr=mirror, npages=2)
        assert p.ioctl(dev, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == 0
        assert cmd.cpages == 2
        assert words(p, addr, 2) == [PM_SWAP | PM_SOFT_DIRTY] * 2
    p.close(dev)


def test_mmap_fixed_over_old_vma_is_soft_dirty(kern):
    p = kern.spawn("t")
    a = p.mmap(0, 2 * PAGE, RW, ANON)
    assert p.mmap(a, 2 * PAGE, PROT_READ, ANON | MAP_FIXED) == a
    assert words(p, a, 2) == [PM_SOFT_DIRTY] * 2


def _set_pte(p, addr, pte):
    from hmmsim.mm.pgtable import pmd_offset, pmdp_get, pte_offset_map, set_pte_at

    pmd = pmdp_get(p.k, pmd_offset(p.mm, addr))
    set_pte_at(p.mm, addr, pte_offset_map(p.k, pmd, addr), pte)


def test_pte_markers_read_swapped(kern):
    """A PTE marker is a non-none, non-present entry: PM_SWAP (6.12
    is_swap_pte branch); a guard marker adds PM_GUARD_REGION at the pin only
    (6.12 has neither guard markers nor the bit)."""
    from hmmsim.fs.task_mmu import PM_GUARD_REGION
    from hmmsim.include.swapops import PTE_MARKER_GUARD, PTE_MARKER_POISONED

    p = kern.spawn("t")
    a = p.mmap(0, 3 * PAGE, RW, ANON)
    p.store(a + 2 * PAGE, b"x")  # a page table for the range
    swp = kern.swp
    _set_pte(p, a, swp.make_pte_marker(PTE_MARKER_POISONED))
    _set_pte(p, a + PAGE, swp.make_pte_marker(PTE_MARKER_GUARD))
    fd = p.open("/proc/self/pagemap", O_RDONLY)
    w0, w1 = struct.unpack("<2Q", p.pread(fd, 16, (a >> 12) * 8))
    assert w0 & (FLAG_BITS | PM_GUARD_REGION) == PM_SWAP | PM_SOFT_DIRTY
    guard = PM_GUARD_REGION if kern.config.kernel == "mainline" else 0
    assert w1 & (FLAG_BITS | PM_GUARD_REGION) == PM_SWAP | PM_SOFT_DIRTY | guard
    _set_pte(p, a, 0)
    _set_pte(p, a + PAGE, 0)


def test_huge_zero_pmd(kern):
    """6.12 pagemap_pmd_range takes pmd_page() of a present leaf PMD as is:
    the huge zero folio is not anon (PM_FILE) and never mapcounted (not
    exclusive). The pin's model skips it like vm_normal_page_pmd."""
    from hmmsim.include.mman import MADV_HUGEPAGE

    p = kern.spawn("t")
    a = p.mmap(0, 4 << 20, RW, ANON)
    b = (a + (2 << 20) - 1) & ~((2 << 20) - 1)
    assert p.madvise(b, 2 << 20, MADV_HUGEPAGE) == 0
    p.load(b, 1)
    assert kern.huge_zero_pfn is not None
    file = PM_FILE if kern.config.kernel == "6.12" else 0
    assert words(p, b + 5 * PAGE, 1) == [PM_PRESENT | PM_SOFT_DIRTY | file]


def test_hugetlb_entries():
    """pagemap_hugetlb_range: the vma's soft-dirty bit only, PM_FILE from the
    folio, exclusive while mapped once."""
    from hmmsim.include.mman import MAP_HUGETLB

    for profile in ("mainline", "6.12"):
        kern = Kernel(ram_bytes=64 << 20, hugetlb_pages=2, kernel=profile)
        p = kern.spawn("t")
        h = p.mmap(0, 2 << 20, RW, ANON | MAP_HUGETLB)
        assert words(p, h, 1) == [PM_SOFT_DIRTY]
        p.store(h, b"x")
        assert words(p, h + PAGE, 1) == [PM_PRESENT | PM_MMAP_EXCLUSIVE | PM_SOFT_DIRTY]
        child = p.child(p.fork())
        assert words(p, h, 1) == [PM_PRESENT | PM_SOFT_DIRTY]
        assert words(child, h, 1) == [PM_PRESENT | PM_SOFT_DIRTY]
        s = p.mmap(0, 2 << 20, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB)
        p.store(s, b"y")
        assert words(p, s, 1)[0] & PM_FILE
        # a hugetlb migration entry: not present, and no PM_SWAP either
        from hmmsim.include.pgtable import pmd_pfn
        from hmmsim.mm.pgtable import pmd_offset, pmdp_get, set_pte_at

        pmdp = pmd_offset(p.mm, h)
        old = pmdp_get(kern, pmdp)
        swp = kern.swp
        mig = swp.swp_entry_to_pmd(swp.make_readable_migration_entry(pmd_pfn(old)))
        set_pte_at(p.mm, h, pmdp, mig)
        assert words(p, h, 2) == [PM_SOFT_DIRTY] * 2
        set_pte_at(p.mm, h, pmdp, old)

import numpy as np
import pytest

from hmmsim.errno import EFAULT, EINVAL, ENOMEM
from hmmsim.include.mman import (
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MREMAP_DONTUNMAP,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.include.pgtable import pmd_pfn, pte_pfn
from hmmsim.kconfig import PMD_SIZE
from hmmsim.userspace import SegmentationFault, entry_at

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


def filled(p, n):
    a = p.mmap(0, n * 4096, RW, ANON)
    p.store_array(a, np.arange(n * 1024, dtype=np.int32))
    return a


@pytest.mark.parametrize(
    "flags,err",
    [(0x80, -EINVAL), (MREMAP_FIXED, -EINVAL), (MREMAP_DONTUNMAP, -EINVAL)],
)
def test_flag_errors(proc, flags, err):
    a = filled(proc, 2)
    assert proc.mremap(a, 8192, 8192, flags) == err


def test_other_errors(proc):
    a = filled(proc, 2)
    assert proc.mremap(a + 1, 4096, 4096) == -EINVAL
    assert proc.mremap(a, 4096, 0) == -EINVAL
    assert proc.mremap(0x6000_0000, 4096, 4096) == -EFAULT
    assert proc.mremap(a, 3 * 4096, 4 * 4096) == -EFAULT  # a grow that crosses the vma end
    # same size without a move is a no-op: the vma boundary is never checked
    assert proc.mremap(a, 3 * 4096, 3 * 4096) == a
    assert proc.mremap(a, 8192, 8192, MREMAP_MAYMOVE | MREMAP_FIXED, a + 4096) == -EINVAL


def test_shrink_in_place(k, proc, ok):
    a = filled(proc, 4)
    free = k.mem.nr_free
    assert proc.mremap(a, 4 * 4096, 4096) == a
    assert k.mem.nr_free >= free + 3
    assert (proc.load_array(a, 1024) == np.arange(1024)).all()
    ok(k)


def test_grow_in_place_or_enomem_without_maymove(k, proc, ok):
    a = filled(proc, 2)
    assert proc.mremap(a, 8192, 4 * 8192) == a
    proc.store(a + 5 * 4096, b"grown")
    blocker = proc.mmap(a + 4 * 8192, 4096, RW, ANON | 0x10)
    assert blocker == a + 4 * 8192
    assert proc.mremap(a, 4 * 8192, 8 * 8192) == -ENOMEM
    ok(k)


def test_move_keeps_pages_and_frees_old_range(k, proc, ok):
    a = filled(proc, 4)
    pfns = [pte_pfn(entry_at(proc, a + i * 4096)[1]) for i in range(4)]
    proc.mmap(a + 4 * 4096, 4096, RW, ANON | 0x10)  # block in-place growth
    b = proc.mremap(a, 4 * 4096, 8 * 4096, MREMAP_MAYMOVE)
    assert b > 0 and b != a
    assert [pte_pfn(entry_at(proc, b + i * 4096)[1]) for i in range(4)] == pfns
    assert (proc.load_array(b, 4096) == np.arange(4096)).all()
    with pytest.raises(SegmentationFault):
        proc.load(a, 1)
    ok(k)
    # rmap still works after the move: fork + COW from the new address
    child = proc.child(proc.fork())
    child.store(b, b"\x01\x02\x03\x04")
    assert proc.load_array(b, 1)[0] == 0
    ok(k)


def test_move_fixed_replaces_target(k, proc, ok):
    a = filled(proc, 2)
    t = proc.mmap(0, 2 * 4096, RW, ANON)
    proc.store(t, b"target")
    assert proc.mremap(a, 8192, 8192, MREMAP_MAYMOVE | MREMAP_FIXED, t) == t
    assert (proc.load_array(t, 2048) == np.arange(2048)).all()
    ok(k)


def test_dontunmap_leaves_empty_old_mapping(k, proc, ok):
    a = filled(proc, 2)
    b = proc.mremap(a, 8192, 8192, MREMAP_MAYMOVE | MREMAP_DONTUNMAP)
    assert b != a
    assert proc.load(a, 4) == bytes(4)  # old range still mapped, now empty
    assert (proc.load_array(b, 2048) == np.arange(2048)).all()
    ok(k)


def test_move_whole_thp_keeps_the_pmd(k, proc, ok):
    a = proc.mmap(0, 2 * PMD_SIZE, RW, ANON)
    h = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    proc.madvise(h, PMD_SIZE, MADV_HUGEPAGE)
    proc.store_array(h, np.arange(PMD_SIZE // 4, dtype=np.int32))
    pfn = pmd_pfn(entry_at(proc, h)[1])
    t = proc.mmap(0, 2 * PMD_SIZE, RW, ANON)
    th = (t + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    assert proc.mremap(h, PMD_SIZE, PMD_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, th) == th
    level, pmd = entry_at(proc, th)
    assert level == "pmd" and pmd_pfn(pmd) == pfn
    assert (proc.load_array(th, PMD_SIZE // 4) == np.arange(PMD_SIZE // 4)).all()
    ok(k)


# --- the order of mm/mremap.c's checks (6.12 and mainline agree) ------------------------------


def test_shrink_across_vmas_unmaps_the_tail_first(k, proc, ok):
    """mremap_at SHRINK / 6.12's old_len >= new_len branch: no vma_to_resize check."""
    a = filled(proc, 6)
    assert proc.mprotect(a + 3 * 4096, 4096, PROT_READ) == 0  # three vmas now
    assert proc.mremap(a, 6 * 4096, 2 * 4096) == a
    assert [(v.vm_start, v.vm_end) for v in proc.mm.vmas if a <= v.vm_start < a + 6 * 4096] == [
        (a, a + 2 * 4096)
    ]
    assert (proc.load_array(a, 2048) == np.arange(2048)).all()
    ok(k)


def test_fixed_move_unmaps_the_destination_before_the_vma_check(k, proc, ok):
    """mremap_to: do_munmap(new_addr) and the shrink come before remap_is_valid's -EFAULT."""
    a = filled(proc, 4)
    assert proc.mprotect(a + 2 * 4096, 4096, PROT_READ) == 0
    dst = proc.mmap(0, 4 * 4096, RW, ANON)
    proc.store(dst, b"dest")
    ret = proc.mremap(a, 4 * 4096, 4 * 4096, MREMAP_MAYMOVE | MREMAP_FIXED, dst)
    assert ret == -EFAULT
    assert not [v for v in proc.mm.vmas if dst <= v.vm_start < dst + 4 * 4096]  # gone anyway
    # a FIXED shrink cuts the tail before the check, so the rest moves
    assert proc.mremap(a, 4 * 4096, 2 * 4096, MREMAP_MAYMOVE | MREMAP_FIXED, dst) == dst
    assert not [v for v in proc.mm.vmas if a <= v.vm_start < a + 4 * 4096]
    assert (proc.load_array(dst, 2048) == np.arange(2048)).all()
    ok(k)

"""mmap/munmap: every argument check and vma splitting."""

import pytest

from hmmsim.errno import EACCES, EBADF, EEXIST, EINVAL, ENOMEM, EOPNOTSUPP, EOVERFLOW, EPERM
from hmmsim.include.mm_types import MM_ANONPAGES
from hmmsim.include.mman import (
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_FIXED_NOREPLACE,
    MAP_POPULATE,
    MAP_PRIVATE,
    MAP_SHARED,
    MAP_SHARED_VALIDATE,
    O_RDONLY,
    O_RDWR,
    O_TMPFILE,
    PROT_READ,
    PROT_SEM,
    PROT_WRITE,
)
from hmmsim.kconfig import TASK_SIZE
from hmmsim.userspace import SegmentationFault, entry_at

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


@pytest.mark.parametrize(
    "args,err",
    [
        ((0, 0, RW, ANON), -EINVAL),  # zero length
        ((0, 4096, RW, MAP_ANONYMOUS), -EINVAL),  # neither shared nor private
        ((0, 4096, RW, MAP_SHARED_VALIDATE | MAP_ANONYMOUS), -EINVAL),  # anon: no VALIDATE
        ((0x10001, 4096, RW, ANON | MAP_FIXED), -EINVAL),  # unaligned fixed
        ((0x1000, 4096, RW, ANON | MAP_FIXED), -EPERM),  # below mmap_min_addr
        ((TASK_SIZE, 8192, RW, ANON | MAP_FIXED), -ENOMEM),  # beyond TASK_SIZE
        ((0, 1 << 62, RW, ANON), -ENOMEM),  # does not fit
    ],
)
def test_mmap_argument_errors(proc, args, err):
    assert proc.mmap(*args) == err
    assert proc.mm.vmas == []


def test_mmap_ignores_unknown_prot_bits(proc):
    # mm/mmap.c do_mmap never validates prot: calc_vm_prot_bits keeps R/W/X only
    a = proc.mmap(0, 4096, RW | 0x80 | PROT_SEM, ANON)
    assert a > 0
    proc.store(a, b"x")
    assert proc.load(a, 1) == b"x"
    assert proc.mprotect(a, 4096, RW | 0x80) == -EINVAL  # mprotect does: arch_validate_prot


def test_mmap_shared_validate(proc):
    fd = proc.open("/tmp", O_TMPFILE | O_RDWR)
    assert proc.ftruncate(fd, 4096) == 0
    assert proc.mmap(0x10000000, 4096, RW, MAP_SHARED_VALIDATE | MAP_FIXED_NOREPLACE, fd, 0) == (
        -EOPNOTSUPP
    )
    assert proc.mm.vmas == []
    assert proc.mmap(0, 4096, RW, MAP_SHARED_VALIDATE, fd, 0) > 0


def test_mmap_file_errors(proc):
    assert proc.mmap(0, 4096, RW, MAP_SHARED, 42, 0) == -EBADF
    fd = proc.open("/tmp", O_TMPFILE | O_RDWR)
    assert proc.mmap(0, 4096, RW, MAP_SHARED, fd, 1) == -EINVAL  # offset unaligned
    assert proc.mmap(0, 4096, RW, MAP_SHARED, fd, (1 << 64) - 4096) == -EOVERFLOW
    ro = proc.open("/tmp/ro", O_RDONLY | 0o100)
    assert proc.mmap(0, 4096, RW, MAP_SHARED, ro, 0) == -EACCES
    assert proc.mmap(0, 4096, PROT_READ, MAP_SHARED, ro, 0) > 0


def test_fixed_noreplace_and_fixed_replace(k, proc, ok):
    a = proc.mmap(0, 4 * 4096, RW, ANON)
    proc.store(a, b"old")
    assert proc.mmap(a, 4096, RW, ANON | MAP_FIXED_NOREPLACE) == -EEXIST
    assert proc.mmap(a, 4096, RW, ANON | MAP_FIXED) == a
    assert proc.load(a, 3) == bytes(3)  # the old page was unmapped
    assert len(proc.mm.vmas) == 2
    ok(k)


def test_populate_faults_everything_in(k, proc, ok):
    a = proc.mmap(0, 8 * 4096, RW, ANON | MAP_POPULATE)
    assert proc.mm.rss_stat[MM_ANONPAGES] == 8
    assert all(entry_at(proc, a + i * 4096)[0] == "pte" for i in range(8))
    ok(k)


def test_populate_skips_prot_none(k, proc, ok):
    """mm/gup.c populate_vma_page_range: PROT_NONE is never faulted in (6.12 and mainline)."""
    a = proc.mmap(0, 4 * 4096, 0, ANON | MAP_POPULATE)
    assert proc.mm.rss_stat[MM_ANONPAGES] == 0
    assert all(entry_at(proc, a + i * 4096)[0] != "pte" for i in range(4))
    ok(k)


def test_partial_munmap_splits_the_vma_and_frees_pages(k, proc, ok):
    a = proc.mmap(0, 8 * 4096, RW, ANON)
    for i in range(8):
        proc.store(a + i * 4096, bytes([i + 1]))
    free = k.mem.nr_free
    assert proc.munmap(a + 2 * 4096, 3 * 4096) == 0
    assert [(v.vm_start - a, v.vm_end - a) for v in proc.mm.vmas] == [
        (0, 2 * 4096),
        (5 * 4096, 8 * 4096),
    ]
    assert k.mem.nr_free == free + 3
    for i in (0, 1, 5, 6, 7):
        assert proc.load(a + i * 4096, 1) == bytes([i + 1])
    with pytest.raises(SegmentationFault):
        proc.load(a + 3 * 4096, 1)
    ok(k)


@pytest.mark.parametrize(
    "addr_off,length,err",
    [(1, 4096, -EINVAL), (0, 0, -EINVAL), (0, 1 << 62, -EINVAL)],
)
def test_munmap_errors(proc, addr_off, length, err):
    a = proc.mmap(0, 4096, RW, ANON)
    assert proc.munmap(a + addr_off, length) == err
    assert len(proc.mm.vmas) == 1


def test_munmap_of_nothing_succeeds_and_unaligned_length_rounds_up(k, proc, ok):
    assert proc.munmap(0x5000_0000, 4096) == 0
    a = proc.mmap(0, 2 * 4096, RW, ANON)
    assert proc.munmap(a, 1) == 0
    assert proc.mm.vmas[0].vm_start == a + 4096
    ok(k)


def test_page_tables_are_freed_when_the_range_is_empty(k, proc, ok):
    free0 = k.mem.nr_free
    a = proc.mmap(0, 4096, RW, ANON)
    proc.store(a, b"x")
    assert k.mem.nr_free < free0 - 1  # the page plus PUD/PMD/PTE tables
    proc.munmap(a, 4096)
    assert k.mem.nr_free == free0
    ok(k)

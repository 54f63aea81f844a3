import pytest

from hmmsim.errno import EINVAL, ENOMEM
from hmmsim.include.mm import VM_HUGEPAGE, VM_NOHUGEPAGE
from hmmsim.include.mm_types import MM_ANONPAGES
from hmmsim.include.mman import (
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    MADV_WILLNEED,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_READ,
    PROT_WRITE,
)

RW = PROT_READ | PROT_WRITE


def test_errors(proc):
    a = proc.mmap(0, 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    assert proc.madvise(a + 1, 4096, MADV_DONTNEED) == -EINVAL
    assert proc.madvise(a, 4096, 9999) == -EINVAL
    assert proc.madvise(a, 0, MADV_DONTNEED) == 0
    assert proc.madvise(a, 2 * 4096, MADV_WILLNEED) == -ENOMEM
    assert proc.madvise(0x6000_0000, 4096, MADV_DONTNEED) == -ENOMEM


def test_dontneed_zaps_private_anon_to_zero(k, proc, ok):
    a = proc.mmap(0, 4 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    for i in range(4):
        proc.store(a + i * 4096, b"data")
    free = k.mem.nr_free
    assert proc.madvise(a + 4096, 2 * 4096, MADV_DONTNEED) == 0
    assert k.mem.nr_free == free + 2
    assert proc.mm.rss_stat[MM_ANONPAGES] == 2
    assert proc.load(a + 4096, 4) == bytes(4)
    assert proc.load(a, 4) == b"data"
    assert k.notifier_events[-1][0] == 1  # MMU_NOTIFY_CLEAR
    ok(k)


def test_dontneed_on_shared_keeps_the_data(k, proc, ok):
    a = proc.mmap(0, 4096, RW, MAP_SHARED | MAP_ANONYMOUS)
    proc.store(a, b"shm")
    assert proc.madvise(a, 4096, MADV_DONTNEED) == 0
    assert proc.load(a, 3) == b"shm"
    ok(k)


def test_hugepage_flags_split_vmas(proc):
    a = proc.mmap(0, 4 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    assert proc.madvise(a + 4096, 4096, MADV_HUGEPAGE) == 0
    flags = [v.vm_flags & (VM_HUGEPAGE | VM_NOHUGEPAGE) for v in proc.mm.vmas]
    assert flags == [0, VM_HUGEPAGE, 0]
    assert proc.madvise(a + 4096, 4096, MADV_NOHUGEPAGE) == 0
    assert proc.mm.vmas[1].vm_flags & VM_NOHUGEPAGE and not proc.mm.vmas[1].vm_flags & VM_HUGEPAGE


def test_partial_hole_still_applies_and_reports_enomem(k, proc, ok):
    a = proc.mmap(0, 3 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    for i in range(3):
        proc.store(a + i * 4096, b"x")
    proc.munmap(a + 4096, 4096)
    assert proc.madvise(a, 3 * 4096, MADV_DONTNEED) == -ENOMEM
    assert proc.mm.rss_stat[MM_ANONPAGES] == 0
    ok(k)


@pytest.mark.parametrize("advice", [MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_WILLNEED])
def test_valid_advice_returns_zero(proc, advice):
    a = proc.mmap(0, 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    assert proc.madvise(a, 4096, advice) == 0

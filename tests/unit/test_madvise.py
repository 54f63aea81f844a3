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


# --- MADV_REMOVE (mm/madvise.c madvise_remove; the same in 6.12 and mainline) ------------------


def test_remove_errors_per_vma_kind(proc):
    from hmmsim.errno import EACCES
    from hmmsim.include.mman import MADV_REMOVE, O_RDWR, O_TMPFILE

    priv = proc.mmap(0, 2 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    assert proc.madvise(priv, 2 * 4096, MADV_REMOVE) == -EINVAL  # no file
    fd = proc.open("/tmp", O_TMPFILE | O_RDWR)
    assert proc.ftruncate(fd, 4 * 4096) == 0
    fpriv = proc.mmap(0, 4 * 4096, RW, MAP_PRIVATE, fd, 0)
    assert proc.madvise(fpriv, 4096, MADV_REMOVE) == -EACCES  # not shared
    ro = proc.mmap(0, 4 * 4096, PROT_READ, MAP_SHARED, fd, 0)
    assert proc.madvise(ro, 4096, MADV_REMOVE) == 0  # VM_MAYWRITE is enough
    assert proc.madvise(0x6000_0000, 4096, MADV_REMOVE) == -ENOMEM


def test_remove_punches_shared_anon_to_zero(k, proc, ok):
    from hmmsim.include.mman import MADV_REMOVE

    a = proc.mmap(0, 4 * 4096, RW, MAP_SHARED | MAP_ANONYMOUS)
    for i in range(4):
        proc.store(a + i * 4096, b"data")
    free = k.mem.nr_free
    assert proc.madvise(a + 4096, 2 * 4096, MADV_REMOVE) == 0
    assert k.mem.nr_free == free + 2  # the page cache let go of the hole
    assert proc.load(a + 4096, 4) == bytes(4)
    assert proc.load(a + 2 * 4096, 4) == bytes(4)
    assert proc.load(a, 4) == b"data" and proc.load(a + 3 * 4096, 4) == b"data"


def test_remove_punches_the_file_and_keeps_private_cow_copies(proc):
    from hmmsim.include.mman import MADV_REMOVE, O_RDWR, O_TMPFILE

    fd = proc.open("/tmp", O_TMPFILE | O_RDWR)
    assert proc.pwrite(fd, b"F" * (3 * 4096), 0) == 3 * 4096
    shared = proc.mmap(0, 3 * 4096, RW, MAP_SHARED, fd, 0)
    priv = proc.mmap(0, 3 * 4096, RW, MAP_PRIVATE, fd, 0)
    proc.store(priv, b"cow!")  # page 0: an anonymous COW copy
    assert proc.load(priv + 4096, 1) == b"F"  # page 1: the cache page, mapped
    assert proc.madvise(shared, 3 * 4096, MADV_REMOVE) == 0
    assert proc.pread(fd, 4, 0) == bytes(4)  # the hole reads as zeroes, size kept
    assert proc.pread(fd, 4, 2 * 4096) == bytes(4)
    assert proc.load(priv, 4) == b"cow!"  # COW copy kept (no even_cows)
    assert proc.load(priv + 4096, 1) == b"\0"  # the cache page was unmapped
    assert proc.load(shared + 2 * 4096, 1) == b"\0"


# --- advice that only changes vma flags (madvise_update_vma) -------------------------------------


def _bounds(proc, a, n):
    return [
        (v.vm_start - a, v.vm_end - a) for v in proc.mm.vmas if a <= v.vm_end and v.vm_start < a + n
    ]


def test_unchanged_flags_do_not_split(proc):
    """madvise_update_vma returns early when the new flags equal the old ones."""
    from hmmsim.include.mman import MADV_DOFORK, MADV_NORMAL

    a = proc.mmap(0, 4 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    assert proc.madvise(a + 4096, 4096, MADV_DOFORK) == 0
    assert proc.madvise(a + 4096, 4096, MADV_NORMAL) == 0
    assert _bounds(proc, a, 4 * 4096) == [(0, 4 * 4096)]


def test_sequential_and_random_set_read_hints_and_split(proc):
    """MADV_SEQUENTIAL/RANDOM/NORMAL set and clear VM_SEQ_READ/VM_RAND_READ."""
    from hmmsim.include.mm import VM_RAND_READ, VM_SEQ_READ
    from hmmsim.include.mman import MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL

    a = proc.mmap(0, 4 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    assert proc.madvise(a + 4096, 2 * 4096, MADV_SEQUENTIAL) == 0
    assert _bounds(proc, a, 4 * 4096) == [(0, 4096), (4096, 3 * 4096), (3 * 4096, 4 * 4096)]
    mid = proc.mm.vmas[[v.vm_start for v in proc.mm.vmas].index(a + 4096)]
    assert mid.vm_flags & (VM_SEQ_READ | VM_RAND_READ) == VM_SEQ_READ
    assert proc.madvise(a + 4096, 4096, MADV_RANDOM) == 0
    assert mid.vm_flags & (VM_SEQ_READ | VM_RAND_READ) == VM_RAND_READ
    assert proc.madvise(a + 4096, 4096, MADV_NORMAL) == 0
    assert mid.vm_flags & (VM_SEQ_READ | VM_RAND_READ) == 0


# --- MADV_FREE (mm/madvise.c madvise_free_single_vma; the same in 6.12 and mainline) ----------


def test_free_refuses_memory_that_is_not_private_anon(proc):
    from hmmsim.include.mman import MADV_FREE

    shared = proc.mmap(0, 2 * 4096, RW, MAP_SHARED | MAP_ANONYMOUS)
    assert proc.madvise(shared, 2 * 4096, MADV_FREE) == -EINVAL  # shmem has vm_ops
    # the first vma's -EINVAL wins over a later hole's -ENOMEM
    assert proc.madvise(shared, 3 * 4096, MADV_FREE) == -EINVAL
    priv = proc.mmap(0, 3 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    assert proc.munmap(priv + 2 * 4096, 4096) == 0
    assert proc.madvise(priv, 2 * 4096, MADV_FREE) == 0
    assert proc.madvise(priv, 3 * 4096, MADV_FREE) == -ENOMEM


def test_free_tells_mirrors_to_drop_the_range(k, proc, ok):
    """MMU_NOTIFY_CLEAR over the range: the kernel keeps the pages mapped, lazily freed."""
    from hmmsim.include.mman import MADV_FREE

    a = proc.mmap(0, 4 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    for i in range(4):
        proc.store(a + i * 4096, b"data")
    n = len(k.notifier_events)
    assert proc.madvise(a + 4096, 2 * 4096, MADV_FREE) == 0
    assert len(k.notifier_events) == n + 1
    assert k.notifier_events[-1][0] == 1  # MMU_NOTIFY_CLEAR
    assert proc.mm.rss_stat[MM_ANONPAGES] == 4  # no reclaim in the model
    assert proc.load(a + 4096, 4) == b"data"
    ok(k)

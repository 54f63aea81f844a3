"""Interval notifiers: sequence protocol and the events CPU paths send."""

from hmmsim.include.mmu_notifier import (
    MMU_NOTIFY_CLEAR,
    MMU_NOTIFY_PROTECTION_PAGE,
    MMU_NOTIFY_PROTECTION_VMA,
    MMU_NOTIFY_RELEASE,
    MMU_NOTIFY_UNMAP,
)

from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from hmmsim.mm.mmu_notifier import (
    mmu_interval_notifier,
    mmu_interval_notifier_insert,
    mmu_interval_read_begin,
    mmu_interval_read_retry,
    mmu_interval_set_seq,
)

RW = PROT_READ | PROT_WRITE


class Ops:
    def __init__(self):
        self.seen = []

    def invalidate(self, mni, r, cur_seq):
        self.seen.append((int(r.event), r.start, r.end))
        mmu_interval_set_seq(mni, cur_seq)
        return True


def subscribe(p, start, length):
    mni = mmu_interval_notifier()
    ops = Ops()
    assert mmu_interval_notifier_insert(mni, p.mm, start, length, ops) == 0
    return mni, ops


def test_sequence_protocol(k, proc):
    a = proc.mmap(0, 4 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    proc.store(a, b"x")
    mni, ops = subscribe(proc, a, 4 * 4096)
    seq = mmu_interval_read_begin(mni)
    assert not mmu_interval_read_retry(mni, seq)
    proc.munmap(a + 3 * 4096, 4096)
    assert mmu_interval_read_retry(mni, seq)
    assert ops.seen == [(int(MMU_NOTIFY_UNMAP), a + 3 * 4096, a + 4 * 4096)]
    seq2 = mmu_interval_read_begin(mni)
    assert seq2 % 2 == 0 and seq2 > seq


def test_outside_ranges_are_not_notified(k, proc):
    a = proc.mmap(0, 8 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    mni, ops = subscribe(proc, a, 4096)
    proc.munmap(a + 4096, 4096)
    assert ops.seen == []


def test_each_cpu_path_sends_its_event(k, proc):
    a = proc.mmap(0, 4 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    for i in range(4):
        proc.store(a + i * 4096, b"x")
    mni, ops = subscribe(proc, a, 4 * 4096)
    proc.mprotect(a, 4096, PROT_READ)
    assert ops.seen[-1] == (int(MMU_NOTIFY_PROTECTION_VMA), a, a + 4096)
    proc.madvise(a + 4096, 4096, 4)  # MADV_DONTNEED
    assert ops.seen[-1] == (int(MMU_NOTIFY_CLEAR), a + 4096, a + 2 * 4096)
    child = proc.child(proc.fork())
    assert ops.seen[-1][0] == int(MMU_NOTIFY_PROTECTION_PAGE)
    proc.store(a + 2 * 4096, b"cow")  # COW break: clear of one page
    assert ops.seen[-1] == (int(MMU_NOTIFY_CLEAR), a + 2 * 4096, a + 3 * 4096)
    child._exit(0)
    proc.waitpid(child.pid)
    proc.mremap(a + 3 * 4096, 4096, 4096, 1 | 2, a + 0x100000)  # MAYMOVE|FIXED
    assert (int(MMU_NOTIFY_UNMAP), a + 3 * 4096, a + 4 * 4096) in ops.seen
    proc._exit(0)
    assert ops.seen[-1][0] == int(MMU_NOTIFY_RELEASE)

"""Interval notifiers: sequence protocol and the events CPU paths send."""

from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from hmmsim.include.mmu_notifier import (
    MMU_NOTIFY_CLEAR,
    MMU_NOTIFY_PROTECTION_PAGE,
    MMU_NOTIFY_PROTECTION_VMA,
    MMU_NOTIFY_RELEASE,
    MMU_NOTIFY_UNMAP,
)
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


def test_migration_and_thp_split_events_carry_their_owner(k, proc):
    import numpy as np

    from hmmsim.include.migrate import MIGRATE_VMA_SELECT_SYSTEM, migrate_vma
    from hmmsim.include.mman import MADV_HUGEPAGE
    from hmmsim.include.mmu_notifier import MMU_NOTIFY_MIGRATE
    from hmmsim.kconfig import PMD_SIZE
    from hmmsim.mm.migrate_device import migrate_vma_finalize, migrate_vma_pages, migrate_vma_setup
    from hmmsim.mm.mmap import vma_lookup

    owner = object()
    a = proc.mmap(0, 2 * PMD_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    h = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    proc.madvise(a, 2 * PMD_SIZE, MADV_HUGEPAGE)
    proc.store_array(h, np.arange(16, dtype=np.int32))
    mni, ops = subscribe(proc, a, 2 * PMD_SIZE)
    proc.munmap(h + PMD_SIZE - 4096, 4096)  # splits the PMD first: CLEAR over the PMD
    assert (int(MMU_NOTIFY_CLEAR), h, h + PMD_SIZE) in ops.seen
    args = migrate_vma(
        vma=vma_lookup(proc.mm, h),
        src=[0] * 4,
        dst=[0] * 4,
        start=h,
        end=h + 4 * 4096,
        pgmap_owner=owner,
        flags=MIGRATE_VMA_SELECT_SYSTEM,
    )
    proc.mm.mmap_lock.down_read()
    migrate_vma_setup(args)
    migrate_vma_pages(args)
    migrate_vma_finalize(args)
    proc.mm.mmap_lock.up_read()
    migrate = [e for e in k.notifier_events if e[0] == MMU_NOTIFY_MIGRATE]
    assert migrate and migrate[0][1:] == (h, h + 4 * 4096, owner)

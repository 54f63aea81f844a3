"""mprotect() with the flags a vma already has is a no-op (mm/mprotect.c mprotect_fixup).

mprotect_fixup returns before vma_modify_flags and change_protection when
newflags == oldflags: no split, no page-table walk, no mmu notifier. A
dmirror keeps its mirror entries and writable device-private entries stay
writable.
"""

import numpy as np
import pytest

from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL,
    HMM_DMIRROR_PROT_PMD,
    HMM_DMIRROR_PROT_READ,
    HMM_DMIRROR_PROT_WRITE,
    HMM_DMIRROR_READ,
    HMM_DMIRROR_SNAPSHOT,
    hmm_dmirror_cmd,
)
from hmmsim.errno import EINVAL
from hmmsim.include.mman import (
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_FIXED_NOREPLACE,
    MAP_HUGETLB,
    MAP_PRIVATE,
    O_RDWR,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.kconfig import PAGE_SIZE, PMD_SIZE
from hmmsim.selftests.hmm_tests import make_kernel, selftest_config
from hmmsim.testing.invariants import check_invariants

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
BASE = 0x100000000
N = 4
LOCAL_W = HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | HMM_DMIRROR_PROT_WRITE
LOCAL_R = HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | HMM_DMIRROR_PROT_READ


@pytest.fixture
def env():
    k = make_kernel(selftest_config())
    p = k.spawn()
    dev = p.open("/dev/hmm_dmirror0", O_RDWR)
    yield k, p, dev
    assert not k.warnings
    check_invariants(k)


def ioctl(p, dev, req, addr, npages, nbytes=None):
    buf = np.zeros(nbytes if nbytes is not None else npages * PAGE_SIZE, dtype=np.uint8)
    cmd = hmm_dmirror_cmd(addr=addr, ptr=buf, npages=npages)
    ret = p.ioctl(dev, req, cmd)
    return ret, cmd, buf


def on_device(p, dev):
    a = p.mmap(BASE, N * PAGE_SIZE, RW, ANON)
    for i in range(N):
        p.store(a + i * PAGE_SIZE, bytes([i + 1]) * PAGE_SIZE)
    ret, cmd, _ = ioctl(p, dev, HMM_DMIRROR_MIGRATE_TO_DEV, a, N)
    assert (ret, cmd.cpages) == (0, N)
    assert ioctl(p, dev, HMM_DMIRROR_SNAPSHOT, a, N, N)[2].tolist() == [LOCAL_W] * N
    return a


def spy_invalidations(p, dev, monkeypatch):
    """Record the invalidations the mirror of `dev` gets (the driver object is
    slotted, so the spy goes on its class and filters on the instance)."""
    d = p.fds[dev].private
    events = []
    cls = type(d)
    orig = cls.invalidate

    def spy(self, mni, r, cur_seq):
        if self is d:
            events.append((r.event, r.start, r.end))
        return orig(self, mni, r, cur_seq)

    monkeypatch.setattr(cls, "invalidate", spy)
    return events


def test_unchanged_flags_keep_the_device_private_entries_and_the_mirror(env, monkeypatch):
    k, p, dev = env
    a = on_device(p, dev)
    events = spy_invalidations(p, dev, monkeypatch)
    assert p.mprotect(a, N * PAGE_SIZE, RW) == 0
    assert events == []  # no MMU_NOTIFY_PROTECTION_VMA
    assert ioctl(p, dev, HMM_DMIRROR_SNAPSHOT, a, N, N)[2].tolist() == [LOCAL_W] * N
    # the mirror still has its entries: READ needs no fault
    ret, cmd, buf = ioctl(p, dev, HMM_DMIRROR_READ, a, N)
    assert (ret, cmd.cpages, cmd.faults) == (0, N, 0)
    for i in range(N):
        assert (buf[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] == i + 1).all()
    # a second MIGRATE_TO_DEV has nothing to migrate; its read-back of the
    # mirror (cpages counts the pages read back) finds every entry
    ret, cmd, buf = ioctl(p, dev, HMM_DMIRROR_MIGRATE_TO_DEV, a, N)
    assert (ret, cmd.cpages) == (0, N)
    for i in range(N):
        assert (buf[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] == i + 1).all()


def test_changed_flags_still_protect(env, monkeypatch):
    """The real change: PROTECTION_VMA, the writable device-private entries
    made readable."""
    k, p, dev = env
    a = on_device(p, dev)
    events = spy_invalidations(p, dev, monkeypatch)
    assert p.mprotect(a, N * PAGE_SIZE, PROT_READ) == 0
    assert len(events) == 1
    assert ioctl(p, dev, HMM_DMIRROR_SNAPSHOT, a, N, N)[2].tolist() == [LOCAL_R] * N


def test_unchanged_part_of_a_range_is_left_alone(env, monkeypatch):
    """Vma by vma: [a, a+2) changes (protected, invalidated), [a+2, a+4) is
    a second vma already PROT_READ: not walked, its mirror entries stay."""
    k, p, dev = env
    a = p.mmap(BASE, N * PAGE_SIZE, RW, ANON)
    for i in range(N):
        p.store(a + i * PAGE_SIZE, bytes([i + 1]) * PAGE_SIZE)
    assert p.mprotect(a + 2 * PAGE_SIZE, 2 * PAGE_SIZE, PROT_READ) == 0
    ret, cmd, _ = ioctl(p, dev, HMM_DMIRROR_MIGRATE_TO_DEV, a, N)
    assert (ret, cmd.cpages) == (0, N)
    snap = ioctl(p, dev, HMM_DMIRROR_SNAPSHOT, a, N, N)[2].tolist()
    assert snap == [LOCAL_W, LOCAL_W, LOCAL_R, LOCAL_R]
    events = spy_invalidations(p, dev, monkeypatch)
    assert p.mprotect(a, N * PAGE_SIZE, PROT_READ) == 0
    assert [(s, e) for _, s, e in events] == [(a, a + 2 * PAGE_SIZE)]
    assert ioctl(p, dev, HMM_DMIRROR_SNAPSHOT, a, N, N)[2].tolist() == [LOCAL_R] * N
    # dmirror_do_update erases [start, end] inclusive of end's page, so the
    # mirror of page 2 went with the invalidation of [a, a+2); page 3's stays
    ret, cmd, buf = ioctl(p, dev, HMM_DMIRROR_READ, a + 3 * PAGE_SIZE, 1)
    assert (ret, cmd.faults) == (0, 0)
    assert (buf == 4).all()


def test_unchanged_flags_do_not_split_the_vma(env):
    k, p, dev = env
    a = p.mmap(BASE, 8 * PAGE_SIZE, RW, ANON)
    before = len(p.mm.vmas)
    assert p.mprotect(a + 2 * PAGE_SIZE, 2 * PAGE_SIZE, RW) == 0
    assert len(p.mm.vmas) == before
    assert p.mprotect(a + 2 * PAGE_SIZE, 2 * PAGE_SIZE, RW | PROT_EXEC) == 0
    assert len(p.mm.vmas) == before + 2


def test_unchanged_flags_keep_a_thp_pmd(env):
    """No split means no vma_adjust_trans_huge: the PMD mapping stays."""
    k, p, dev = env
    a = p.mmap(BASE, PMD_SIZE, RW, ANON)
    assert p.madvise(a, PMD_SIZE, MADV_HUGEPAGE) == 0
    p.store(a, b"t")
    pmd = HMM_DMIRROR_PROT_PMD | HMM_DMIRROR_PROT_WRITE
    assert ioctl(p, dev, HMM_DMIRROR_SNAPSHOT, a, 1, 1)[2].tolist() == [pmd]
    assert p.mprotect(a + 8 * PAGE_SIZE, 8 * PAGE_SIZE, RW) == 0
    assert ioctl(p, dev, HMM_DMIRROR_SNAPSHOT, a, 1, 1)[2].tolist() == [pmd]


def test_unchanged_flags_on_part_of_a_hugetlb_vma(env):
    """A hugetlb vma cannot be split off the huge-page boundary (-EINVAL),
    but with unchanged flags nothing is split: 0."""
    k, p, dev = env
    h = p.mmap(0, PMD_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB)
    assert h > 0
    assert p.mprotect(h, PAGE_SIZE, RW) == 0
    assert p.mprotect(h, PAGE_SIZE, PROT_READ) == -EINVAL

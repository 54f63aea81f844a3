"""The replays of the findings: each a function that drives the model.

Every function here takes a `Replay` and runs the steps that reproduced one
finding, in the order the fuzzer (or the explorer, or the fault injector)
recorded them, with the checks it ran after each step (`r.ok()`: the
invariant checker and the kernel-warning check). A replay that finishes is
followed by one more invariant check; `hmmsim.findings.replay()` turns what
happened into an `Outcome`. The functions never decide whether a finding is
fixed: they only reproduce the sequence, and the registry
(`hmmsim.findings.catalog`) says which outcome is expected today.

The scripts under fuzz-findings/ are thin wrappers around these functions.
"""

from __future__ import annotations

import numpy as np

from hmmsim.drivers.test_hmm import hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_MIGRATE_TO_SYS,
    HMM_DMIRROR_READ,
    HMM_DMIRROR_RELEASE,
    hmm_dmirror_cmd,
)
from hmmsim.errno import EFAULT
from hmmsim.include.mman import (
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_FIXED_NOREPLACE,
    MAP_PRIVATE,
    MAP_SHARED,
    O_RDWR,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.testing.fuzz import ALLOWED_WARNINGS  # the WARNs the kernel prints too
from hmmsim.testing.invariants import check_invariants

#: How many times the dmirror READ/WRITE loop may call dmirror_fault() for one
#: ioctl before a replay calls it a livelock. A one-page READ needs one fault;
#: the number only has to be far above what any finished READ uses, and it
#: counts loop rounds, not seconds, so the verdict does not depend on the host.
FAULT_ROUNDS_LIMIT = 64

RW = PROT_READ | PROT_WRITE
PAGE = 4096
THP = 512 * PAGE


class Replay:
    """What a replay function works with: the kernel it boots and the step checks."""

    def __init__(self) -> None:
        self.k = None

    def boot(
        self,
        *,
        ram_bytes: int = 0x10000000,
        features: frozenset[str] = frozenset({"d"}),
        thp: str | None = None,
    ):
        """A Kernel with the dmirror devices loaded, as the fuzzer built it."""
        from hmmsim.kernel import Kernel

        k = Kernel(ram_bytes=ram_bytes, hugetlb_pages=0, features=features)
        hmm_dmirror_init(k)
        if thp is not None:
            k.thp_enabled = thp
        self.k = k
        return k

    def ok(self) -> None:
        """The fuzzer's check after each step: invariants hold, no unexpected WARN."""
        check_invariants(self.k)
        bad = [w.msg for w in self.k.warnings if w.msg not in ALLOWED_WARNINGS]
        assert not bad, f"unexpected kernel warnings: {bad}"


def fill(tag: int, n: int) -> bytes:
    """n bytes of little-endian words (tag << 32) | index, as the fuzzer wrote them."""
    words = np.arange((n + 7) // 8, dtype=np.uint64) | np.uint64((tag & 0xFFFFFFFF) << 32)
    return words.view(np.uint8)[:n].tobytes()


def _cmd(addr: int, npages: int):
    return hmm_dmirror_cmd(addr=addr, ptr=np.zeros(max(npages, 1) * PAGE, np.uint8), npages=npages)


def _expect(ret: int, want: int, what: str) -> None:
    assert ret == want, f"{what} returned {ret}, the recorded run returned {want}"


# --- the upstream finding ---------------------------------------------------------------------
def migrate_shared_thp_fallback_remaps_child_pmd(r: Replay) -> None:
    """A PMD-mapped THP shared with a fork child, migrated with order-0 fallback.

    The fuzzer's sequence (features d, THP always): the parent faults a THP
    in, forks, and migrates the THP to the coherent dmirror3, which has no
    free device folio, so lib/test_hmm.c falls back to 512 order-0 pages.
    migrate_vma_split_unmapped_folio() splits only the parent's PMD; the
    child's PMD migration entry survives the folio split and
    remove_migration_ptes() of the first order-0 source meets it: the
    kernel's VM_BUG_ON_FOLIO in remove_migration_pte(). See docs/findings.md.
    """
    k = r.boot(thp="always")
    p0 = k.spawn()
    r.ok()
    fd0 = p0.open("/dev/hmm_dmirror3", O_RDWR)
    assert fd0 >= 0, fd0
    r.ok()
    base = 0x100000A00000
    _expect(p0.mmap(base, THP, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE), base, "mmap")
    r.ok()
    p0.store(0x100000BD7935, fill(22, 12))
    r.ok()
    p0.child(p0.fork())
    r.ok()
    _expect(p0.ioctl(fd0, HMM_DMIRROR_MIGRATE_TO_DEV, _cmd(base, 512)), 0, "MIGRATE_TO_DEV")
    r.ok()


# --- lib/test_hmm.c, modelled faithfully --------------------------------------------------------
def dmirror_migrate_to_sys_oom_maps_unmigrated_dst(r: Replay) -> None:
    """MIGRATE_TO_SYS running out of memory after filling some dst slots.

    Found by fault injection (site alloc_pages, 2nd hit). The driver's
    dmirror_devmem_fault_alloc_and_copy() fails after it has allocated,
    locked and filled some destination pages, and the driver then calls
    migrate_vma_finalize() without migrate_vma_pages(): finalize's
    remove_migration_ptes(src, dst) walks the rmap of a dst that never got
    the source's mapping, finds nothing, and the source's migration entry
    stays behind while the source page is freed: the invariant checker
    reports the stale entry and the rss counters that no longer match.
    """
    from hmmsim.fault_inject import FaultInjector

    k = r.boot(ram_bytes=64 << 20)
    p = k.spawn()
    a = p.mmap(0, 8 * PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    p.store_array(a, np.arange(8 * 1024, dtype=np.int32))
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    _expect(p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, _cmd(a, 8)), 0, "MIGRATE_TO_DEV")
    k.fault_inject = FaultInjector({"alloc_pages"}, nth=2)  # the 2nd page allocation fails
    try:
        ret = p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_SYS, _cmd(a, 8))
    finally:
        k.fault_inject = None
    _expect(ret, -12, "MIGRATE_TO_SYS")  # -ENOMEM; the invariants tell the rest


def test_hmm_two_mirrors_stale_pt(r: Replay) -> None:
    """Two opens of one dmirror device by one process: the second mirror goes stale.

    A MIGRATE_TO_DEV through the first fd sends MMU_NOTIFY_MIGRATE with owner
    == the device; dmirror_interval_invalidate() of the second mirror ignores
    it too (it checks only range->owner == dmirror->mdevice), so its pt keeps
    naming the system page the migration freed.
    """
    k = r.boot(thp="madvise")
    p0 = k.spawn()
    r.ok()
    fd0 = p0.open("/dev/hmm_dmirror2", O_RDWR)
    r.ok()
    fd1 = p0.open("/dev/hmm_dmirror2", O_RDWR)
    r.ok()
    base = 0x100000000000
    _expect(p0.mmap(base, PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED), base, "mmap")
    r.ok()
    p0.store(base, fill(1, 64))
    r.ok()
    _expect(p0.ioctl(fd1, HMM_DMIRROR_READ, _cmd(base, 1)), 0, "READ through fd1")
    r.ok()
    _expect(p0.ioctl(fd0, HMM_DMIRROR_MIGRATE_TO_DEV, _cmd(base, 1)), 0, "MIGRATE_TO_DEV")
    r.ok()


def test_hmm_read_after_opener_exit_livelock(r: Replay) -> None:
    """READ through an fd whose mirrored mm is gone: dmirror_read() never ends.

    The fd is inherited by a child and the opener exits, so the mirror's mm
    has no users. dmirror_read() loops "do_read -> -ENOENT -> dmirror_fault()";
    the model's dmirror_fault() returned 0 when the mm is gone (mmget_not_zero
    fails), so nothing was faulted in and the loop went round forever. The
    driver returns -EFAULT there (6.12.117, newest linux-mm), and so does the
    model now: the READ fails with -EFAULT. The replay counts the loop's calls
    of dmirror_fault() and stops it after FAULT_ROUNDS_LIMIT rounds with a
    Livelock (no host clock involved), should the old behaviour come back.
    """
    from hmmsim.locking import Livelock

    k = r.boot(ram_bytes=64 << 20)
    parent = k.spawn()
    fd = parent.open("/dev/hmm_dmirror0", O_RDWR)
    a = parent.mmap(0, PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    child = parent.child(parent.fork())
    parent._exit(0)
    mirror_cls = type(child.fds[fd].private)
    real_fault = mirror_cls.dmirror_fault
    rounds = 0

    def counted_fault(self, start, end, write):
        nonlocal rounds
        rounds += 1
        if rounds > FAULT_ROUNDS_LIMIT:
            raise Livelock(
                f"livelock: dmirror_read() called dmirror_fault({start:#x}, {end:#x}) "
                f"{FAULT_ROUNDS_LIMIT} times without the read making progress"
            )
        return real_fault(self, start, end, write)

    mirror_cls.dmirror_fault = counted_fault
    try:
        _expect(child.ioctl(fd, HMM_DMIRROR_READ, _cmd(a, 1)), -EFAULT, "READ on a dead mm")
    finally:
        mirror_cls.dmirror_fault = real_fault


def test_hmm_read_owned_device_private_oops(r: Replay) -> None:
    """A device READ of pages that sit on that same device oopses.

    After MIGRATE_TO_DEV the mirror's pt holds the backing system pages; an
    invalidation (mprotect) empties pt while the CPU still maps device-private
    entries of that device. The READ's dmirror_fault() gets the owned
    device-private pages reported, not faulted; dmirror_do_fault() stores the
    ZONE_DEVICE page itself and dmirror_do_read() copies from it through
    page_address(): device-private pages have no linear mapping.
    """
    k = r.boot(ram_bytes=64 << 20)
    p = k.spawn()
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    a = p.mmap(0, PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    p.store(a, b"hello")
    _expect(p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, _cmd(a, 1)), 0, "MIGRATE_TO_DEV")
    _expect(p.mprotect(a, PAGE, PROT_READ), 0, "mprotect")  # the page stays on the device
    p.ioctl(fd, HMM_DMIRROR_READ, _cmd(a, 1))


# --- model bugs, fixed --------------------------------------------------------------------------
def shared_anon_munmap_i_count(r: Replay) -> None:
    """munmap of a MAP_SHARED|MAP_ANONYMOUS mapping (shmem_zero_setup's file reference)."""
    k = r.boot(thp="madvise")
    p0 = k.spawn()
    r.ok()
    base = 0x100000000000
    _expect(p0.mmap(base, 2 * PAGE, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED), base, "mmap")
    r.ok()
    _expect(p0.munmap(base, 2 * PAGE), 0, "munmap")
    r.ok()


def large_folio_reuse_moves_anon_rmap(r: Replay) -> None:
    """A write fault reusing a PTE-mapped THP that spans two of the child's vmas."""
    k = r.boot(thp="always")
    p0 = k.spawn()
    r.ok()
    base = 0x100000200000
    _expect(p0.mmap(base, THP, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED), base, "mmap")
    r.ok()
    p0.store(base, fill(1, 8))
    r.ok()
    _expect(p0.munmap(0x100000283000, 53 * PAGE), 0, "munmap")
    r.ok()
    p1 = p0.child(p0.fork())
    r.ok()
    _expect(p0.munmap(base, THP), 0, "munmap")
    r.ok()
    p1.store(0x100000271000, fill(2, 8))
    r.ok()


def split_protnone_thp_inverted_pfn(r: Replay) -> None:
    """munmap of part of a PROT_NONE THP splits a huge PMD whose PFN is inverted."""
    k = r.boot(features=frozenset({"a", "b", "d"}), thp="madvise")
    p0 = k.spawn()
    r.ok()
    base = 0x100000000000
    _expect(p0.mmap(base, THP, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED), base, "mmap")
    r.ok()
    _expect(p0.madvise(base, THP, MADV_HUGEPAGE), 0, "madvise")
    r.ok()
    p0.store(0x1000000376CD, fill(25, 3315))
    r.ok()
    _expect(p0.mprotect(base, THP, PROT_NONE), 0, "mprotect")
    r.ok()
    _expect(p0.munmap(0x100000176000, 64 * PAGE), 0, "munmap")
    r.ok()


def split_coherent_thp_calls_private_split_cb(r: Replay) -> None:
    """A device-coherent THP split by a one-page migration to a device-private mirror."""
    k = r.boot(features=frozenset({"d", "e"}), thp="madvise")
    p0 = k.spawn()
    r.ok()
    fd4 = p0.open("/dev/hmm_dmirror2", O_RDWR)
    r.ok()
    fd9 = p0.open("/dev/hmm_dmirror1", O_RDWR)
    r.ok()
    _expect(p0.ioctl(fd4, HMM_DMIRROR_RELEASE, _cmd(0, 1)), 0, "RELEASE")
    r.ok()
    base = 0x100000E00000
    _expect(p0.mmap(base, THP, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED), base, "mmap")
    r.ok()
    _expect(p0.ioctl(fd4, HMM_DMIRROR_MIGRATE_TO_DEV, _cmd(base, 512)), 0, "MIGRATE_TO_DEV")
    r.ok()
    _expect(p0.ioctl(fd9, HMM_DMIRROR_MIGRATE_TO_DEV, _cmd(0x100000F62000, 1)), -2, "MIGRATE")
    r.ok()


def explore_eviction_vs_cpu_fault(r: Replay) -> None:
    """The explorer's schedule: a CPU fault on a device-private PTE meets an eviction.

    `hmmsim explore eviction_vs_cpu_fault -p 2` found it: the CPU thread
    reads a device-private PTE and is preempted; RELEASE evicts the chunk and
    memunmaps it; the fault then looked the device page up before
    re-checking the PTE under its lock. The replay runs the recorded schedule
    (the explorer's choice list) and raises what the run reported.
    """
    from hmmsim.testing.explore import ReplayPolicy
    from hmmsim.testing.scenarios import make_runner

    choices = [0] * 29 + [1, 0, 0, 0, 0, 1] + [0] * 35
    res = make_runner("eviction_vs_cpu_fault")(ReplayPolicy(choices))
    if res.error is not None:
        raise ScheduleFailed(res.error_kind or "error", res.error)


class ScheduleFailed(Exception):
    """An explorer schedule ended in a violation (`kind` is the exception's class name)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# --- checker bugs, fixed ------------------------------------------------------------------------
def invariants_protnone_huge_pmd(r: Replay) -> None:
    """mprotect(PROT_NONE) of a PMD-mapped THP, then the invariant checker."""
    k = r.boot(thp="always")
    p0 = k.spawn()
    r.ok()
    base = 0x100000200000
    _expect(p0.mmap(base, THP, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED), base, "mmap")
    r.ok()
    p0.store(0x100000201000, fill(1, 64))
    r.ok()
    _expect(p0.mprotect(base, THP, PROT_NONE), 0, "mprotect")
    r.ok()

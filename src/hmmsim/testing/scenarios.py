"""Built-in concurrency scenarios for `hmmsim explore`.

Each scenario builds a small world (a Kernel with the dmirror driver, one
process, a few pages of known data), spawns two simulated threads, and
returns a check that runs after both finish: data integrity (every process
reads the bytes it should), the invariant checker, and no kernel warning.
The explorer adds deadlock and livelock detection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from hmmsim.drivers.test_hmm import hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_EXCLUSIVE,
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_MIGRATE_TO_SYS,
    HMM_DMIRROR_READ,
    HMM_DMIRROR_RELEASE,
    hmm_dmirror_cmd,
)
from hmmsim.errno import EBUSY, ENOENT
from hmmsim.include.mman import (
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    O_RDWR,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.kconfig import PMD_SIZE, KConfig
from hmmsim.kernel import Kernel
from hmmsim.testing.explore import Explorer, RunResult
from hmmsim.testing.invariants import check_invariants, strict_word_check

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
NPAGES = 4

SCENARIOS: dict[str, Callable] = {}


def scenario(name: str, doc: str, needs: frozenset[str] = frozenset()):
    """Register a scenario; `needs` names the seed series it must run with
    (added to whatever configuration it is run under)."""

    def reg(fn):
        fn.doc = doc
        fn.needs = frozenset(needs)
        SCENARIOS[name] = fn
        return fn

    return reg


class World:
    """What a scenario sets up: kernel, process, buffer, fds."""

    def __init__(self, cfg: KConfig) -> None:
        self.k = Kernel(cfg)
        self.k.word_checks.append(strict_word_check)
        hmm_dmirror_init(self.k)
        self.p = self.k.spawn("proc")
        self.expect: dict[int, np.ndarray] = {}

    def buffer(self, npages: int = NPAGES, thp: bool = False) -> int:
        p = self.p
        if thp:
            a = p.mmap(0, 2 * PMD_SIZE, RW, ANON)
            h = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
            p.madvise(a, 2 * PMD_SIZE, MADV_HUGEPAGE)
            npages = PMD_SIZE // 4096
            a = h
        else:
            a = p.mmap(0, npages * 4096, RW, ANON)
        data = np.arange(npages * 1024, dtype=np.int32) + 7
        p.store_array(a, data)
        self.expect[a] = data
        return a

    def ioctl(self, fd: int, req: int, a: int, npages: int):
        mirror = np.zeros(npages * 1024, dtype=np.int32)
        cmd = hmm_dmirror_cmd(addr=a, ptr=mirror, npages=npages)
        return self.p.ioctl(fd, req, cmd), mirror

    def check(self) -> None:
        for a, data in self.expect.items():
            got = self.p.load_array(a, data.size)
            if not (got == data).all():
                bad = int(np.nonzero(got != data)[0][0])
                raise AssertionError(f"byte lost: word {bad} at {a:#x}: {got[bad]} != {data[bad]}")
        check_invariants(self.k)
        if self.k.warnings:
            raise AssertionError(f"kernel warnings: {self.k.warnings}")


def _ok_read(w: World, ret: int, mirror: np.ndarray, a: int, allowed=(0,)) -> None:
    if ret not in allowed:
        raise AssertionError(f"unexpected return {ret}")
    if ret == 0 and not (mirror == w.expect[a][: mirror.size]).all():
        raise AssertionError("device read wrong data")


@scenario("cpu_fault_vs_migrate_to_device", "CPU loads race a migration to device memory")
def _s1(ex: Explorer, w: World):
    a = w.buffer()
    fd = w.p.open("/dev/hmm_dmirror0", O_RDWR)
    ex.spawn("cpu", lambda: w.p.load_array(a, NPAGES * 1024))
    box = {}
    ex.spawn("device", lambda: box.update(r=w.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, a, NPAGES)))

    def check():
        ret, mirror = box["r"]
        # the CPU may pull pages back before the device reads: -ENOENT is allowed
        _ok_read(w, ret, mirror, a, allowed=(0, -ENOENT))

    return check


@scenario("two_devices_migrate_same_range", "two devices migrate the same range")
def _s2(ex: Explorer, w: World):
    a = w.buffer()
    fd0 = w.p.open("/dev/hmm_dmirror0", O_RDWR)
    fd1 = w.p.open("/dev/hmm_dmirror1", O_RDWR)
    box = {}
    ex.spawn("dev0", lambda: box.update(r0=w.ioctl(fd0, HMM_DMIRROR_MIGRATE_TO_DEV, a, NPAGES)))
    ex.spawn("dev1", lambda: box.update(r1=w.ioctl(fd1, HMM_DMIRROR_MIGRATE_TO_DEV, a, NPAGES)))

    def check():
        for key in ("r0", "r1"):
            ret, mirror = box[key]
            _ok_read(w, ret, mirror, a, allowed=(0, -ENOENT))

    return check


@scenario("hmm_range_fault_vs_mprotect", "a device read races mprotect (the -EBUSY retry)")
def _s3(ex: Explorer, w: World):
    a = w.buffer()
    fd = w.p.open("/dev/hmm_dmirror0", O_RDWR)
    box = {}
    ex.spawn("device", lambda: box.update(r=w.ioctl(fd, HMM_DMIRROR_READ, a, NPAGES)))

    def cpu():
        w.p.mprotect(a, NPAGES * 4096, PROT_READ)
        w.p.mprotect(a, NPAGES * 4096, RW)

    ex.spawn("cpu", cpu)

    def check():
        ret, mirror = box["r"]
        _ok_read(w, ret, mirror, a, allowed=(0, -EBUSY))

    return check


@scenario("hmm_range_fault_vs_munmap", "a device read races munmap of part of the range")
def _s3b(ex: Explorer, w: World):
    a = w.buffer()
    fd = w.p.open("/dev/hmm_dmirror0", O_RDWR)
    box = {}
    ex.spawn("device", lambda: box.update(r=w.ioctl(fd, HMM_DMIRROR_READ, a, NPAGES)))
    ex.spawn("cpu", lambda: w.p.munmap(a + (NPAGES - 1) * 4096, 4096))

    def check():
        ret, mirror = box["r"]
        if ret not in (0, -14, -EBUSY):  # -EFAULT once the tail is gone
            raise AssertionError(f"unexpected {ret}")
        keep = (NPAGES - 1) * 1024
        if ret == 0 and not (mirror[:keep] == w.expect[a][:keep]).all():
            raise AssertionError("device read wrong data")
        w.expect[a] = w.expect[a][:keep]

    return check


@scenario("exclusive_vs_cpu_write", "device-exclusive access races a CPU store")
def _s4(ex: Explorer, w: World):
    a = w.buffer()
    fd = w.p.open("/dev/hmm_dmirror0", O_RDWR)
    box = {}
    ex.spawn("device", lambda: box.update(r=w.ioctl(fd, HMM_DMIRROR_EXCLUSIVE, a, NPAGES)))

    def cpu():
        w.p.store_array(a, np.array([-5], dtype=np.int32))

    ex.spawn("cpu", cpu)

    def check():
        w.expect[a] = w.expect[a].copy()
        w.expect[a][0] = -5
        ret, mirror = box["r"]
        # a CPU write between make_device_exclusive and the read-back revokes the
        # device's atomic mapping, so its final read finds a hole: -ENOENT, as in C
        if ret not in (0, -ENOENT):
            raise AssertionError(f"EXCLUSIVE returned {ret}")
        if ret == 0 and not (mirror[1:] == w.expect[a][1 : mirror.size]).all():
            raise AssertionError("device read wrong data")

    return check


@scenario("eviction_vs_cpu_fault", "device memory release (eviction) races a CPU fault")
def _s5(ex: Explorer, w: World):
    a = w.buffer()
    fd = w.p.open("/dev/hmm_dmirror0", O_RDWR)
    ret, _ = w.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, a, NPAGES)
    assert ret == 0
    ex.spawn("evict", lambda: w.ioctl(fd, HMM_DMIRROR_RELEASE, a, 1))
    ex.spawn("cpu", lambda: w.p.load_array(a, NPAGES * 1024))
    return lambda: None


@scenario("fork_vs_migration", "fork races a migration to device memory")
def _s6(ex: Explorer, w: World):
    a = w.buffer()
    fd = w.p.open("/dev/hmm_dmirror0", O_RDWR)
    box = {}
    ex.spawn("device", lambda: box.update(r=w.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, a, NPAGES)))
    ex.spawn("fork", lambda: box.update(pid=w.p.fork()))

    def check():
        child = w.p.child(box["pid"])
        got = child.load_array(a, NPAGES * 1024)
        if not (got == w.expect[a]).all():
            raise AssertionError("the child lost bytes")
        child._exit(0)
        w.p.waitpid(child.pid)

    return check


@scenario(
    "mprotect_vs_device_migration_entries",
    "mprotect meets device-private migration entries (series b)",
)
def _s7(ex: Explorer, w: World):
    a = w.buffer()
    fd = w.p.open("/dev/hmm_dmirror0", O_RDWR)
    ret, _ = w.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, a, NPAGES)
    assert ret == 0
    box = {}
    ex.spawn("device", lambda: box.update(r=w.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_SYS, a, NPAGES)))

    def cpu():
        w.p.mprotect(a, NPAGES * 4096, PROT_READ)
        w.p.mprotect(a, NPAGES * 4096, RW)

    ex.spawn("cpu", cpu)
    return lambda: None


@scenario("thp_split_vs_fault_page", "a THP split during collect races a fault on its page (9.2)")
def _s8(ex: Explorer, w: World):
    a = w.buffer(thp=True)
    fd = w.p.open("/dev/hmm_dmirror0", O_RDWR)
    ret, _ = w.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, a, PMD_SIZE // 4096)
    assert ret == 0
    w.p.munmap(a + PMD_SIZE - 4096, 4096)  # split the device PMD: a large folio by PTEs
    w.expect[a] = w.expect[a][: (PMD_SIZE - 4096) // 4]
    ex.spawn("cpu0", lambda: w.p.load_array(a, 16))
    ex.spawn("cpu1", lambda: w.p.load_array(a + 5 * 4096, 16))
    return lambda: None


@scenario(
    "hmm_fault_on_locked_device_page",
    "hmm_range_fault meets a device-private page locked by a CPU fault (9.1)",
)
def _s9(ex: Explorer, w: World):
    a = w.buffer()
    fd0 = w.p.open("/dev/hmm_dmirror0", O_RDWR)
    fd1 = w.p.open("/dev/hmm_dmirror1", O_RDWR)
    ret, _ = w.ioctl(fd0, HMM_DMIRROR_MIGRATE_TO_DEV, a, NPAGES)
    assert ret == 0
    box = {}
    # the CPU fault locks the page in do_swap_page before migrate_to_ram starts
    # its migration (and its notifier invalidation)
    ex.spawn("cpu", lambda: w.p.load_array(a, 16))
    ex.spawn("dev1", lambda: box.update(r=w.ioctl(fd1, HMM_DMIRROR_READ, a, NPAGES)))

    def check():
        ret, mirror = box["r"]
        _ok_read(w, ret, mirror, a, allowed=(0, -EBUSY))

    return check


@scenario(
    "thp_hole_migrate_vs_cpu_store",
    "a device migrates an empty PMD-sized range while the CPU stores into it (9.6)",
)
def _s10(ex: Explorer, w: World):
    p = w.p
    raw = p.mmap(0, 2 * PMD_SIZE, RW, ANON)
    a = (raw + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    p.madvise(raw, 2 * PMD_SIZE, MADV_HUGEPAGE)
    npages = PMD_SIZE // 4096
    data = np.zeros(npages * 1024, dtype=np.int32)
    data[5 * 1024 : 5 * 1024 + 4] = [11, 22, 33, 44]
    w.expect[a] = data
    fd = w.p.open("/dev/hmm_dmirror0", O_RDWR)
    box = {}
    ex.spawn("device", lambda: box.update(r=w.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, a, npages)))
    ex.spawn("cpu", lambda: p.store_array(a + 5 * 4096, data[5 * 1024 : 5 * 1024 + 4]))

    def check():
        ret, _ = box["r"]
        if ret not in (0, -ENOENT):
            raise AssertionError(f"unexpected return {ret}")

    return check


#: Series (b) gives device-private pages their own migration-entry types, and
#: (c), built on (a) and (b), makes the type matter: a device-private offset
#: read as a PFN names some other page.
DEVICE_MIGRATION_TYPES = frozenset("abc")


def _evict_vs(ex: Explorer, w: World, thp: bool, cpu) -> int:
    """Migrate a buffer to device memory, then race its eviction (dmirror
    RELEASE: migrate_device_range, which takes no mmap_lock, so fork and
    mprotect can meet its migration entries) with `cpu(a)`. Returns a."""
    a = w.buffer(npages=2, thp=thp)  # two pages keep the search short
    npages = w.expect[a].size // 1024
    fd = w.p.open("/dev/hmm_dmirror0", O_RDWR)
    ret, _ = w.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, a, npages)
    assert ret == 0
    ex.spawn("evict", lambda: w.ioctl(fd, HMM_DMIRROR_RELEASE, a, 1))
    ex.spawn("cpu", lambda: cpu(a))
    return a


def _fork_check(w: World, box: dict, a: int):
    def check():
        # the page tables first: a migration entry that eviction could not
        # find again would make the loads below wait for it forever
        check_invariants(w.k)
        child = w.p.child(box["pid"])
        got = child.load_array(a, w.expect[a].size)
        if not (got == w.expect[a]).all():
            raise AssertionError("the child lost bytes")
        child._exit(0)
        w.p.waitpid(child.pid)

    return check


def _mprotect_check(w: World, a: int):
    def check():
        check_invariants(w.k)
        # writable again: a store must work and land
        w.p.store_array(a, np.array([-9], dtype=np.int32))
        w.expect[a] = w.expect[a].copy()
        w.expect[a][0] = -9

    return check


@scenario(
    "fork_vs_eviction",
    "fork meets device-private migration entries of an eviction (PTE; series b, c)",
    DEVICE_MIGRATION_TYPES,
)
def _s11(ex: Explorer, w: World):
    box = {}
    a = _evict_vs(ex, w, False, lambda a: box.update(pid=w.p.fork()))
    return _fork_check(w, box, a)


@scenario(
    "fork_vs_eviction_thp",
    "fork meets a device-private PMD migration entry of an eviction (PMD; series b, c)",
    DEVICE_MIGRATION_TYPES,
)
def _s12(ex: Explorer, w: World):
    box = {}
    a = _evict_vs(ex, w, True, lambda a: box.update(pid=w.p.fork()))
    return _fork_check(w, box, a)


def _protect_cycle(w: World, npages: int):
    def cpu(a: int) -> None:
        w.p.mprotect(a, npages * 4096, PROT_READ)
        w.p.mprotect(a, npages * 4096, RW)

    return cpu


@scenario(
    "mprotect_vs_eviction",
    "mprotect meets device-private migration entries of an eviction (PTE; series b, c)",
    DEVICE_MIGRATION_TYPES,
)
def _s13(ex: Explorer, w: World):
    a = _evict_vs(ex, w, False, _protect_cycle(w, 2))
    return _mprotect_check(w, a)


@scenario(
    "mprotect_vs_eviction_thp",
    "mprotect meets a device-private PMD migration entry of an eviction (PMD; series b, c)",
    DEVICE_MIGRATION_TYPES,
)
def _s14(ex: Explorer, w: World):
    a = _evict_vs(ex, w, True, _protect_cycle(w, PMD_SIZE // 4096))
    return _mprotect_check(w, a)


def make_runner(name: str, cfg: KConfig | None = None, max_steps: int = 20000):
    """A make_run(policy) for `explore`: a fresh world per schedule."""
    fn = SCENARIOS[name]
    cfg = cfg or KConfig(
        ram_bytes=64 << 20,
        hugetlb_pages=0,
        features=frozenset({"d", "b"}) if "migration_entries" in name else frozenset({"d"}),
    )
    if not fn.needs <= cfg.features:
        cfg = replace(cfg, features=cfg.features | fn.needs)

    def make_run(policy) -> RunResult:
        w = World(cfg)
        ex = Explorer(w.k, policy, max_steps=max_steps)
        check = fn(ex, w)
        res = ex.run()
        if res.error is None:
            try:
                check()
                w.check()
            except Exception as e:  # noqa: BLE001 - a violation, reported
                res.error = f"{type(e).__name__}: {e}"
                res.error_kind = type(e).__name__
        return res

    return make_run

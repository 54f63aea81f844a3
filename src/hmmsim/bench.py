"""`hmmsim bench`: how fast the model moves memory, against the physical copy bound.

In one run it measures a NumPy copy of the same size (the bound no model can
beat), then through the real dmirror path, like the kernel's
benchmark_thp_migration selftest: MIGRATE_TO_DEV and MIGRATE_TO_SYS of
4 KiB pages and of THPs for sizes from 512 KiB up to --size; a device READ
(hmm_range_fault with faulting) and a SNAPSHOT of a populated range;
first-touch CPU faults (a one-byte store per page, and one store over the
whole unpopulated range); and fork + exit of a populated range. It reports median,
min and max time, GB/s, and each median's ratio to the copy bound of the
same size measured in the same run; plus the model's metadata bytes per
modelled 4 KiB page.

The migration rows' bound is measured again around every repetition (a copy
of the same size before the first and after each one), and their `vs_copy`
is the median of the per-repetition ratios, each repetition against the mean
of the copies just before and after it: on a shared host the copy's speed
drifts with the load, and a ratio against a bound measured once, minutes
earlier, drifts with it. `copy_s` is the median of those interleaved bounds
and `vs_copy_once` the ratio against the once-measured bound (the older
definition); both are None in the other rows.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from hmmsim.drivers.test_hmm import hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_MIGRATE_TO_SYS,
    HMM_DMIRROR_READ,
    HMM_DMIRROR_SNAPSHOT,
    hmm_dmirror_cmd,
)
from hmmsim.include.hmm import hmm_range
from hmmsim.include.mm_types import STRUCT_PAGE_BYTES
from hmmsim.include.mman import (
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    O_RDWR,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.kconfig import PAGE_SIZE, PMD_SIZE, KConfig
from hmmsim.kernel import Kernel
from hmmsim.mm.hmm import hmm_range_fault
from hmmsim.mm.mmu_notifier import (
    mmu_interval_notifier,
    mmu_interval_notifier_insert,
    mmu_interval_notifier_remove,
    mmu_interval_read_begin,
    mmu_interval_set_seq,
)

RW = PROT_READ | PROT_WRITE


class _NoopNotifier:
    def invalidate(self, mni, r, cur_seq: int) -> bool:
        mmu_interval_set_seq(mni, cur_seq)
        return True


@dataclass
class Row:
    op: str
    size: int
    median_s: float
    min_s: float
    max_s: float
    gbps: float
    vs_copy: float
    pages_per_s: float
    #: migration rows: the median of the copy bounds interleaved with the
    #: repetitions (else None)
    copy_s: float | None = None
    #: migration rows: median / (copies x the once-measured bound) (else None)
    vs_copy_once: float | None = None


def sizes_up_to(limit: int) -> list[int]:
    out, s = [], 512 << 10
    while s < limit:
        out.append(s)
        s *= 8
    out.append(limit)
    return out


def _timed(fn, repeat: int, setup=None) -> list[float]:
    """Wall times of `repeat` calls of fn; setup() runs untimed before each."""
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def ram_for(size: int) -> int:
    """Modelled RAM of a bench of buffers up to `size`: three buffers of it
    at once, and room for the kernel's own pages."""
    return max(256 << 20, (3 * size + (64 << 20)) // PMD_SIZE * PMD_SIZE)


class Bench:
    """One benchmark run: a Kernel big enough for --size, the dmirror driver."""

    def __init__(self, size: int, repeat: int, features=(), config: KConfig | None = None) -> None:
        """`config` (e.g. the CLI's --feature/--conflict-resolution) gives the
        series; RAM and hugetlb are always sized here (`ram_for`)."""
        if size < 512 << 10 or size % PMD_SIZE and size > PMD_SIZE:
            raise ValueError("size must be at least 512K and a multiple of 2M above 2M")
        self.size = size
        self.repeat = repeat
        if config is None:
            config = KConfig(features=frozenset({"d", *features}))
        self.k = Kernel(replace(config, ram_bytes=ram_for(size), hugetlb_pages=0))
        hmm_dmirror_init(self.k)
        self.p = self.k.spawn("bench")
        self.fd = self.p.open("/dev/hmm_dmirror0", O_RDWR)
        self.copy_bound: dict[int, float] = {}
        self.rows: list[Row] = []

    def buffer(self, size: int, thp: bool) -> int:
        p = self.p
        span = size + (PMD_SIZE if thp else 0)
        a = p.mmap(0, span, RW, MAP_PRIVATE | MAP_ANONYMOUS)
        if thp:
            a = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
        p.madvise(a, size, MADV_HUGEPAGE if thp else MADV_NOHUGEPAGE)
        p.store_array(a, np.arange(size // 4, dtype=np.int32))
        return a

    def copy(self, size: int) -> float:
        src = np.ones(size, dtype=np.uint8)
        dst = np.empty_like(src)
        times = _timed(lambda: np.copyto(dst, src), max(self.repeat, 3))
        self.copy_bound[size] = statistics.median(times)
        self.add("numpy copy (bound)", size, times)
        return self.copy_bound[size]

    def add(
        self,
        op: str,
        size: int,
        times: list[float],
        copies: int = 1,
        bounds: list[float] | None = None,
    ) -> Row:
        """A row; with `bounds` (one copy bound per repetition, measured
        around it) vs_copy is the median of the per-repetition ratios."""
        med = statistics.median(times)
        bound = self.copy_bound.get(size) or 1e-12
        vs_once = med / (copies * bound)
        extra = {}
        if bounds is not None:
            ratios = [t / (copies * b) for t, b in zip(times, bounds, strict=True)]
            extra = {"copy_s": statistics.median(bounds), "vs_copy_once": vs_once}
            vs_once = statistics.median(ratios)
        row = Row(
            op=op,
            size=size,
            median_s=med,
            min_s=min(times),
            max_s=max(times),
            gbps=size / med / 1e9 if med else 0.0,
            vs_copy=vs_once,
            pages_per_s=(size // PAGE_SIZE) / med if med else 0.0,
            **extra,
        )
        self.rows.append(row)
        return row

    def ioctl(self, req: int, a: int, size: int, mirror=None) -> int:
        if mirror is None:
            mirror = np.zeros(size // 4, dtype=np.int32)
        cmd = hmm_dmirror_cmd(addr=a, ptr=mirror, npages=size // PAGE_SIZE)
        ret = self.p.ioctl(self.fd, req, cmd)
        if ret:
            raise RuntimeError(f"ioctl {req:#x} failed: {ret}")
        return cmd.cpages

    def migration(self, size: int, thp: bool) -> None:
        a = self.buffer(size, thp)
        mirror = np.zeros(size // 4, dtype=np.int32)
        kind = "THP" if thp else "4K"
        src = np.ones(size, dtype=np.uint8)
        dst = np.empty_like(src)
        np.copyto(dst, src)  # untimed: dst's host pages are touched once

        def copy_s() -> float:
            t0 = time.perf_counter()
            np.copyto(dst, src)
            return time.perf_counter() - t0

        to_dev, to_sys, copies = [], [], [copy_s()]
        for _ in range(self.repeat):
            t0 = time.perf_counter()
            self.ioctl(HMM_DMIRROR_MIGRATE_TO_DEV, a, size, mirror)
            t1 = time.perf_counter()
            self.ioctl(HMM_DMIRROR_MIGRATE_TO_SYS, a, size, mirror)
            t2 = time.perf_counter()
            to_dev.append(t1 - t0)
            to_sys.append(t2 - t1)
            copies.append(copy_s())
        # each repetition against the copies right before and after it
        bounds = [(x + y) / 2 for x, y in zip(copies[:-1], copies[1:], strict=True)]
        self.add(f"migrate to device ({kind})", size, to_dev, bounds=bounds)
        self.add(f"migrate to system ({kind})", size, to_sys, bounds=bounds)
        self.add(
            f"round trip ({kind})",
            size,
            [x + y for x, y in zip(to_dev, to_sys, strict=True)],
            copies=2,
            bounds=bounds,
        )
        self.p.munmap(a, size)

    def hmm(self, size: int) -> None:
        a = self.buffer(size, thp=False)
        snap = np.zeros(size // PAGE_SIZE, dtype=np.uint8)
        self.add(
            "hmm_range_fault snapshot",
            size,
            _timed(lambda: self.ioctl(HMM_DMIRROR_SNAPSHOT, a, size, snap), self.repeat),
        )
        self.add(
            "hmm_range_fault (one call)",
            size,
            _timed(lambda: self.range_fault(a, size), self.repeat),
        )
        mirror = np.zeros(size // 4, dtype=np.int32)

        def invalidate():  # untimed: the mirror forgets the range, so READ refaults it
            self.p.mprotect(a, size, PROT_READ)
            self.p.mprotect(a, size, RW)

        self.add(
            "device READ (hmm_range_fault)",
            size,
            _timed(
                lambda: self.ioctl(HMM_DMIRROR_READ, a, size, mirror),
                self.repeat,
                setup=invalidate,
            ),
        )
        self.p.munmap(a, size)

    def range_fault(self, a: int, size: int) -> None:
        """One hmm_range_fault over [a, a + size) into a uint64 array, as a
        driver calls it (interval notifier, read_begin, mmap_lock read), no
        faulting: the walk itself, without dmirror's 32-page windows."""
        mm = self.p.mm
        mni = mmu_interval_notifier()
        mmu_interval_notifier_insert(mni, mm, a, size, _NoopNotifier())
        pfns = np.zeros(size // PAGE_SIZE, dtype=np.uint64)
        r = hmm_range(notifier=mni, start=a, end=a + size, hmm_pfns=pfns)
        try:
            r.notifier_seq = mmu_interval_read_begin(mni)
            mm.mmap_lock.down_read()
            try:
                ret = hmm_range_fault(r)
            finally:
                mm.mmap_lock.up_read()
        finally:
            mmu_interval_notifier_remove(mni)
        if ret or not (pfns & np.uint64(self.k.hmm.HMM_PFN_VALID)).all():
            raise RuntimeError(f"hmm_range_fault failed: {ret}")

    def faults(self, size: int) -> None:
        if size not in self.copy_bound:  # capped below --size: its own bound
            self.copy(size)

        def touch():
            a = self.p.mmap(0, size, RW, MAP_PRIVATE | MAP_ANONYMOUS)
            self.p.madvise(a, size, MADV_NOHUGEPAGE)
            for off in range(0, size, PAGE_SIZE):
                self.p.store(a + off, b"\x01")
            self.p.munmap(a, size)

        self.add("first-touch faults (4K, a store per page)", size, _timed(touch, self.repeat))
        buf = np.ones(size, dtype=np.uint8)
        mapped: list[int] = []

        def fresh():  # untimed: the previous range goes, a new unpopulated one comes
            if mapped:
                self.p.munmap(mapped.pop(), size)
            a = self.p.mmap(0, size, RW, MAP_PRIVATE | MAP_ANONYMOUS)
            self.p.madvise(a, size, MADV_NOHUGEPAGE)
            mapped.append(a)

        self.add(
            "first-touch faults (4K, one store)",
            size,
            _timed(lambda: self.p.store(mapped[0], buf), self.repeat, setup=fresh),
        )
        self.p.munmap(mapped.pop(), size)

    def fork(self, size: int) -> None:
        a = self.buffer(size, thp=False)

        def fork_exit():
            pid = self.p.fork()
            child = self.p.child(pid)
            child._exit(0)
            self.p.waitpid(pid)

        self.add("fork + exit (4K populated)", size, _timed(fork_exit, self.repeat))
        self.p.munmap(a, size)

    def tasks(self) -> list[tuple[str, callable]]:
        out = []
        for s in sizes_up_to(self.size):
            out.append((f"copy {s >> 10} KiB", lambda s=s: self.copy(s)))
            out.append(
                (
                    f"THP migrate {s >> 10} KiB",
                    lambda s=s: self.migration(s, True) if s >= PMD_SIZE else None,
                )
            )
            out.append((f"4K migrate {s >> 10} KiB", lambda s=s: self.migration(s, False)))
        s = self.size
        out.append(("hmm_range_fault", lambda: self.hmm(s)))
        out.append(("first-touch faults", lambda: self.faults(min(s, 64 << 20))))
        out.append(("fork", lambda: self.fork(min(s, 64 << 20))))
        return out

    def memory(self) -> dict:
        rep = self.k.memory_report()
        return {
            "struct_page_bytes": STRUCT_PAGE_BYTES,
            "ram_metadata_bytes": rep["metadata_bytes"],
            "ram_pages": rep["ram_pages"],
            "kernel_struct_page_bytes": 64,
        }

    def as_dict(self) -> dict:
        return {
            "size": self.size,
            "repeat": self.repeat,
            "fastpath": self.k.fastpath,
            "memory": self.memory(),
            "rows": [asdict(r) for r in self.rows],
        }

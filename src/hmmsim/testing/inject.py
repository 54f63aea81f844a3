"""Systematic fault injection: fail every hit of a site during one operation.

`sweep(op, site)` first runs the operation with the injector counting hits
of `site` (failing none), then once per hit (or per sampled hit, at most
`limit`) on a fresh world with that hit failing. After each run it disarms
the injector, drops injected pins, reads every byte back through the CPU
(which brings device pages home) and runs the invariant checker: whatever
failed, no byte may change and no invariant may break. The operation may
report the failure (a negative errno, VM_FAULT_OOM as an OutOfMemory on a
CPU access); it may not crash, lose data or leak.

Operations (each on a world with 8 small pages and one THP of known data;
the ones that start on the device first migrate there without injection):
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from hmmsim.drivers.test_hmm import hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_MIGRATE_TO_SYS,
    HMM_DMIRROR_READ,
    HMM_DMIRROR_WRITE,
    hmm_dmirror_cmd,
)
from hmmsim.fault_inject import FaultInjector, maybe_invalidate, release_pins
from hmmsim.include.mman import (
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    O_RDWR,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.kconfig import PAGE_SIZE, PMD_SIZE
from hmmsim.kernel import Kernel
from hmmsim.locking import Scheduler
from hmmsim.testing.invariants import check_invariants, strict_word_check
from hmmsim.userspace import OutOfMemory

RW = PROT_READ | PROT_WRITE
SMALL = 8


class _InjectingScheduler(Scheduler):
    """The single-thread scheduler, plus the "invalidate" site at releases."""

    def __init__(self, k) -> None:
        self.k = k

    def point(self, kind: str, obj: object) -> None:
        super().point(kind, obj)
        if kind == "release":
            maybe_invalidate(self.k)
        elif kind in ("yield", "retry"):
            release_pins(self.k)  # a racing GUP's pin is transient: gone by the retry


class _World:
    def __init__(self, thp: bool, populate: bool = True) -> None:
        self.k = Kernel(ram_bytes=64 << 20, hugetlb_pages=0)
        self.k.word_checks.append(strict_word_check)
        hmm_dmirror_init(self.k)
        p = self.p = self.k.spawn("victim")
        if thp:
            raw = p.mmap(0, 2 * PMD_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
            p.madvise(raw, 2 * PMD_SIZE, MADV_HUGEPAGE)
            self.a = (raw + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
            self.npages = PMD_SIZE // PAGE_SIZE
        else:
            self.a = p.mmap(0, SMALL * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
            self.npages = SMALL
        self.data = np.arange(self.npages * 1024, dtype=np.int32) * 7 + 3
        self.alt = None  # a second acceptable content per page (a partial write)
        if populate:
            p.store_array(self.a, self.data)
        else:
            self.alt, self.data = self.data, np.zeros_like(self.data)
        self.fd = p.open("/dev/hmm_dmirror0", O_RDWR)

    def ioctl(self, req: int) -> int:
        buf = np.zeros(self.npages * 1024, dtype=np.int32)
        if req == HMM_DMIRROR_WRITE:
            buf[:] = self.data if self.alt is None else self.alt
        cmd = hmm_dmirror_cmd(addr=self.a, ptr=buf, npages=self.npages)
        ret = self.p.ioctl(self.fd, req, cmd)
        if ret == 0 and req == HMM_DMIRROR_READ and not (buf == self.data).all():
            raise AssertionError("the device read wrong data")
        return ret


def _to_dev(w: _World) -> object:
    return w.ioctl(HMM_DMIRROR_MIGRATE_TO_DEV)


def _to_sys(w: _World) -> object:
    return w.ioctl(HMM_DMIRROR_MIGRATE_TO_SYS)


def _read(w: _World) -> object:
    return w.ioctl(HMM_DMIRROR_READ)


def _write(w: _World) -> object:
    ret = w.ioctl(HMM_DMIRROR_WRITE)
    if ret == 0 and w.alt is not None:
        w.data, w.alt = w.alt, None
    return ret


def _cpu_fault(w: _World) -> object:
    got = w.p.load_array(w.a, w.npages * 1024)
    if not (got == w.data).all():
        raise AssertionError("the CPU read wrong data")
    return 0


@dataclass(frozen=True)
class Op:
    name: str
    fn: Callable[[_World], object]
    on_device: bool  # migrate to device first (not injected)
    doc: str
    populate: bool = True  # False: the buffer is mapped but never touched


OPS = {
    op.name: op
    for op in (
        Op("migrate_to_dev", _to_dev, False, "HMM_DMIRROR_MIGRATE_TO_DEV"),
        Op("migrate_to_sys", _to_sys, True, "HMM_DMIRROR_MIGRATE_TO_SYS"),
        Op("device_read", _read, False, "HMM_DMIRROR_READ (hmm_range_fault)"),
        Op("device_write", _write, True, "HMM_DMIRROR_WRITE of device-private pages"),
        Op("device_read_cold", _read, False, "HMM_DMIRROR_READ of untouched memory", False),
        Op("device_write_cold", _write, False, "HMM_DMIRROR_WRITE faulting pages in", False),
        Op("cpu_fault", _cpu_fault, True, "CPU loads of device pages (migrate_to_ram)"),
    )
}
__doc__ = (__doc__ or "") + "".join(f"\n- {o.name}: {o.doc}" for o in OPS.values()) + "\n"


@dataclass
class InjectResult:
    op: str
    site: str
    thp: bool
    hits: int = 0  # hits of the site in the uninjected run
    runs: int = 0
    outcomes: dict = field(default_factory=dict)  # what the op returned -> count
    problems: list = field(default_factory=list)


def _run(op: Op, site: str, nth: int | None, thp: bool) -> tuple[object, FaultInjector, list]:
    w = _World(thp, op.populate)
    if op.on_device:
        assert w.ioctl(HMM_DMIRROR_MIGRATE_TO_DEV) == 0
    k = w.k
    fi = FaultInjector({site}, nth)
    fi.range = (w.p.mm, w.a, w.a + w.npages * PAGE_SIZE)
    k.fault_inject, saved = fi, k.sched
    k.sched = _InjectingScheduler(k)
    problems: list[str] = []
    try:
        outcome: object = op.fn(w)
    except OutOfMemory:
        outcome = "OutOfMemory"
    except Exception as e:  # noqa: BLE001 - reported
        outcome = type(e).__name__
        problems.append(f"{op.name} with {site} #{nth}: {type(e).__name__}: {e}")
    finally:
        k.sched = saved
        release_pins(k)
        k.fault_inject = None
    if not problems:
        try:
            got = w.p.load_array(w.a, w.npages * 1024).reshape(-1, 1024)
            ok = (got == w.data.reshape(-1, 1024)).all(axis=1)
            if w.alt is not None:  # a failed write may have written some pages
                ok |= (got == w.alt.reshape(-1, 1024)).all(axis=1)
            if not ok.all():
                bad = int(np.nonzero(~ok)[0][0])
                problems.append(f"{op.name} with {site} #{nth}: bytes lost in page {bad}")
            problems += [
                f"{op.name} with {site} #{nth}: {p}"
                for p in check_invariants(k, raise_on_error=False)
            ]
            if k.warnings:
                problems.append(f"{op.name} with {site} #{nth}: warnings {k.warnings}")
        except Exception as e:  # noqa: BLE001 - reported
            problems.append(f"{op.name} with {site} #{nth}, afterwards: {type(e).__name__}: {e}")
    return outcome, fi, problems


def sweep(op_name: str, site: str, *, thp: bool = False, limit: int = 24) -> InjectResult:
    """Fail each hit of `site` during `op_name` in turn (at most `limit`, evenly spread)."""
    op = OPS[op_name]
    res = InjectResult(op_name, site, thp)
    outcome, fi, problems = _run(op, site, None, thp)
    res.hits = fi.count
    res.problems += problems
    if fi.count <= limit:
        targets = list(range(1, fi.count + 1))
    else:
        targets = sorted({1 + (i * (fi.count - 1)) // (limit - 1) for i in range(limit)})
    for nth in targets:
        outcome, fi, problems = _run(op, site, nth, thp)
        res.runs += 1
        key = str(outcome)
        res.outcomes[key] = res.outcomes.get(key, 0) + 1
        res.problems += problems
        if fi.fired != site:
            res.problems.append(f"{op_name} with {site} #{nth}: the injection did not fire")
    return res

"""Where the bench's dmirror round trip goes, THP and 4 KiB, in one process.

Usage: python docs/examples/roundtrip_breakdown.py SIZE_MiB ROUND_TRIPS
(docs/performance.md quotes a run of `1024 2` on the final tree of issue 16)
Every function named below is wrapped with a timer that stops while a nested
wrapped one runs (exclusive time); the page allocator's calls made inside the
bounce's vmalloc/vfree count as the bounce. A copy of SIZE (the bench's copy
bound, np.copyto) is timed twice before each ioctl; ratios are to the median
copy of the same kind (wall or CPU). Prints markdown tables.
"""

import functools
import statistics
import sys
import time
from collections import defaultdict

import numpy as np

import hmmsim.drivers.test_hmm.migrate as dm
import hmmsim.fast.test_hmm as ft
import hmmsim.mm.page_alloc as pa
from hmmsim.bench import Bench
from hmmsim.drivers.test_hmm_uapi import HMM_DMIRROR_MIGRATE_TO_DEV, HMM_DMIRROR_MIGRATE_TO_SYS

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
BOUNCE = "bounce: vmalloc + vfree of the whole range (page allocator)"
ALLOC = "page allocator: the migrated pages' allocations and frees"
COPY = "copies (4 KiB: FrameCopies.flush, read-back runs)"
DRV = "driver alloc_and_copy (THP: the 2 MiB block copy; 4 KiB: its bulk pass, copies queued)"
PLAN = "read-back plan (mirror lookups)"
REST = "the windows: page walk, PTEs/PMDs, rmap, struct pages, notifiers, mirror"
acc = {c: defaultdict(float) for c in CLOCKS}
stack = []


def now():
    return {c: f() for c, f in CLOCKS.items()}


def wrap(obj, name, cat):
    f = getattr(obj, name)

    @functools.wraps(f)
    def w(*a, **kw):
        t = now()
        if stack:
            for c in CLOCKS:
                acc[c][stack[-1][0]] += t[c] - stack[-1][1][c]
        mine = stack[-1][0] if stack and stack[-1][0] == BOUNCE else cat
        stack.append([mine, t])
        try:
            return f(*a, **kw)
        finally:
            e = now()
            c_, t0 = stack.pop()
            for c in CLOCKS:
                acc[c][c_] += e[c] - t0[c]
            if stack:
                stack[-1][1] = e

    setattr(obj, name, w)


wrap(dm, "vmalloc_pages", BOUNCE)
wrap(dm, "vfree_pages", BOUNCE)
for n in (
    "alloc_pages_order0_bulk",
    "free_folios_order0",
    "alloc_pages",
    "free_folio",
    "alloc_pages_bulk",
):
    wrap(pa.PhysMem, n, ALLOC)
wrap(ft.FrameCopies, "flush", COPY)
wrap(ft, "_read_runs", COPY)
wrap(ft, "_read_plan", PLAN)
wrap(dm.dmirror_migrate_ops, "_alloc_and_copy", DRV)
wrap(dm.dmirror_migrate_ops, "_fault_alloc_and_copy", DRV)

size = int(sys.argv[1]) << 20
n = int(sys.argv[2])
b = Bench(size, 3)
src = np.ones(size, np.uint8)
dst = np.empty_like(src)
np.copyto(dst, src)
for thp in (True, False):
    a = b.buffer(size, thp)
    mirror = np.zeros(size // 4, dtype=np.int32)
    copies = {c: [] for c in CLOCKS}
    tot = {k: {c: [] for c in CLOCKS} for k in ("dev", "sys")}
    per = {k: {c: defaultdict(list) for c in CLOCKS} for k in ("dev", "sys")}
    for it in range(n + 1):
        for kind, req in (("dev", HMM_DMIRROR_MIGRATE_TO_DEV), ("sys", HMM_DMIRROR_MIGRATE_TO_SYS)):
            for _ in range(2):
                t0 = now()
                np.copyto(dst, src)
                t1 = now()
                for c in CLOCKS:
                    copies[c].append(t1[c] - t0[c])
            for c in CLOCKS:
                acc[c].clear()
            t0 = now()
            b.ioctl(req, a, size, mirror)
            t1 = now()
            if it:
                for c in CLOCKS:
                    t = t1[c] - t0[c]
                    tot[kind][c].append(t)
                    for k_, v in acc[c].items():
                        per[kind][c][k_].append(v)
                    per[kind][c][REST].append(t - sum(acc[c].values()))
    b.p.munmap(a, size)
    bound = {c: statistics.median(copies[c]) for c in CLOCKS}
    kind = "THP" if thp else "4 KiB"
    pages = size >> 12
    print(
        f"\n{kind}, {size >> 20} MiB, {n} round trips after a warm-up; copy bound "
        f"{bound['wall'] * 1e3:.1f} ms wall, {bound['cpu'] * 1e3:.1f} ms CPU\n"
    )
    print("| part (CPU time, in copies) | to device | to system | round trip | us a 4 KiB page |")
    print("|---|---:|---:|---:|---:|")
    cats = sorted(
        set(per["dev"]["cpu"]) | set(per["sys"]["cpu"]),
        key=lambda k_: (
            -(
                statistics.median(per["dev"]["cpu"].get(k_, [0]))
                + statistics.median(per["sys"]["cpu"].get(k_, [0]))
            )
        ),
    )
    for k_ in cats:
        d = statistics.median(per["dev"]["cpu"].get(k_, [0]))
        s = statistics.median(per["sys"]["cpu"].get(k_, [0]))
        print(
            f"| {k_} | {d / bound['cpu']:.2f} | {s / bound['cpu']:.2f} "
            f"| {(d + s) / bound['cpu']:.2f} | {(d + s) / pages * 1e6:.2f} |"
        )
    for c in CLOCKS:
        d = statistics.median(tot["dev"][c])
        s = statistics.median(tot["sys"][c])
        rt = statistics.median([x + y for x, y in zip(tot["dev"][c], tot["sys"][c], strict=True)])
        print(
            f"| **total, {c} time** | {d / bound[c]:.2f} | {s / bound[c]:.2f} "
            f"| {rt / bound[c]:.2f} copies = **{rt / (2 * bound[c]):.2f}x two copies** "
            f"| {rt / pages * 1e6:.2f} |"
        )

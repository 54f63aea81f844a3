"""Where the host time of migrating faults goes, in one `hmmsim sim` run.

Usage: python docs/examples/fault_profile.py SPEC [hmmsim sim options...]
e.g.   python docs/examples/fault_profile.py stream:size=256M,passes=2,oversub=2 \
           --policy nvidia-uvm --data-plane tokens

Wraps the driver's steps (drivers/gpu.py) and the kernel calls it makes
(migrate_vma_setup / migrate_vma_pages / migrate_vma_finalize,
hmm_range_fault) with process-CPU-time counters, runs the simulation
in-process, and prints each step's CPU time per window, per fault entry and
per page moved to the device. Times are inclusive; the driver rows are what
is left of a driver function once the kernel calls inside it are taken off.
The wrappers add about a microsecond per call.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from collections import defaultdict

import hmmsim.drivers.gpu as gpu
import hmmsim.sim.engine as engine
from hmmsim.cli import main

T: dict[str, float] = defaultdict(float)
N: dict[str, int] = defaultdict(int)


def _wrap(owner, name: str) -> None:
    f = getattr(owner, name)

    def w(*a, **kw):
        t = time.process_time()
        try:
            return f(*a, **kw)
        finally:
            T[name] += time.process_time() - t
            N[name] += 1

    setattr(owner, name, w)


for _name in ("migrate_vma_setup", "migrate_vma_pages", "migrate_vma_finalize", "hmm_range_fault"):
    _wrap(gpu, _name)  # the names drivers/gpu.py calls
for _name in ("service_faults", "make_room"):
    _wrap(gpu.GpuDevice, _name)
for _name in ("migrate_to_device", "_alloc_and_copy_bulk", "_range_fault"):
    _wrap(gpu.GpuVaSpace, _name)
_wrap(engine.Simulation, "run")


def report(out: dict, cpu: float) -> None:
    faults, pages, windows = out["gpu_faults"], out["pages_h2d"], N["migrate_to_device"]
    alloc = T["_alloc_and_copy_bulk"]
    kernel = T["migrate_vma_setup"] + T["migrate_vma_pages"] + T["migrate_vma_finalize"]
    rows = [
        ("migrate_vma_setup", T["migrate_vma_setup"]),
        ("migrate_vma_pages", T["migrate_vma_pages"]),
        ("migrate_vma_finalize", T["migrate_vma_finalize"]),
        ("driver: _alloc_and_copy_bulk", T["_alloc_and_copy_bulk"]),
        ("driver: rest of migrate_to_device", T["migrate_to_device"] - kernel - alloc),
        ("hmm_range_fault", T["hmm_range_fault"]),
        ("driver: rest of _range_fault (mapping)", T["_range_fault"] - T["hmm_range_fault"]),
        ("eviction (make_room)", T["make_room"]),
        (
            "rest of service_faults (policy, prefetch)",
            T["service_faults"] - T["migrate_to_device"] - T["_range_fault"] - T["make_room"],
        ),
        ("engine outside service_faults", T["run"] - T["service_faults"]),
    ]
    print(
        f"process CPU {cpu:.2f} s, Simulation.run {T['run']:.2f} s; fault entries {faults}, "
        f"windows {windows}, pages h2d {pages}, evicted {out['pages_d2h']}; "
        f"fault entries per process CPU s {faults / cpu:,.0f}"
    )
    head = ("step", "CPU s", "share", "us/window", "us/fault", "us/page")
    print("{:45s} {:>7s} {:>6s} {:>10s} {:>9s} {:>8s}".format(*head))
    for name, t in rows:
        print(
            f"{name:45s} {t:7.3f} {100 * t / T['run']:5.1f}% {1e6 * t / windows:10.1f} "
            f"{1e6 * t / faults:9.1f} {1e6 * t / pages:8.2f}"
        )


if __name__ == "__main__":
    c0 = time.process_time()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        main(["sim", *sys.argv[1:], "--json"], standalone_mode=False)
    report(json.loads(buf.getvalue()), time.process_time() - c0)

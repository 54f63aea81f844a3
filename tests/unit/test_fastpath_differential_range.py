"""The device-range bulk forms (fast/migrate_device_range.py) give exactly
what the per-entry path gives: a GPU driver evicts its root chunks through
migrate_device_range / migrate_device_pages / migrate_device_finalize on two
kernels built from one seed, fast paths on and off, and the whole machine
state (test_fastpath_differential.machine_state: every byte of RAM, every
struct page column, notifier events, counters ...) plus the driver's own
state must be identical after every eviction.

The device pages come from the mixed world of test_fastpath_differential
(writable, read-only, COW-shared after fork, pages of other devices), then
some are made read-only by mprotect or shared by a second fork, so windows
of every kind reach the bulk forms and most of them are declined somewhere.
The driver's own destination loop (GpuDevice._evict_alloc_bulk, the same
alloc_pages calls in bulk) runs in the fast world only, so it is compared too.
"""

from __future__ import annotations

import random

import pytest
from test_fastpath_differential import CONFIGS, NPAGES, World, assert_same

import hmmsim.fast.migrate_device_range as fast_mdr
from hmmsim.drivers.gpu import GpuDevice
from hmmsim.include.mman import PROT_READ
from hmmsim.kconfig import PAGE_SHIFT, PAGE_SIZE
from hmmsim.testing.invariants import check_invariants


def gpu_state(g: GpuDevice):
    return (
        [p.pfn for p in g.free],
        sorted(g.where.items()),
        sorted(g.owner_of.items()),
        sorted((v, e[0].pfn, e[1]) for v, e in g.space.pt.items()),
        [c.used for c in g.chunks],
        g.evicted_pages,
    )


def build(seed: int, fast: bool, cfg: str, common: float, mode: str):
    rng = random.Random(seed * 31 + 7)
    # the bulk forms take windows whose pages one vma maps (a simulator's
    # buffer): odd kinds (common < 1) split the buffer's vma, and a fork
    # (shared) gives every index a second vma; those windows are declined
    w = World(seed, fast, CONFIGS[cfg], fork=mode == "fork", common=common)
    g = GpuDevice(w.k, 3 * (2 << 20))
    g.bind(w.p)
    base = w.a >> PAGE_SHIFT
    # chunks' worth of faults, mostly in long runs, reads and writes
    for lo in (0, 512, 1024):
        vpns = [base + lo + i for i in range(512) if rng.random() < 0.9]
        g.service_faults([(v, rng.random() < 0.5) for v in vpns])
    if mode == "ro":  # every device-private entry read-only, one vma still
        w.p.mprotect(w.a, NPAGES * PAGE_SIZE, PROT_READ)
    elif mode == "fork":  # some read-only (a vma split), all shared with a child
        w.p.mprotect(w.a + 600 * PAGE_SIZE, 64 * PAGE_SIZE, PROT_READ)
        w.p.child(w.p.fork())
    return w, g


def _cases():
    for cfg in sorted(CONFIGS):
        yield pytest.param(1, 1.0, "plain", True, cfg, id=f"bulk-{cfg}")
        # CI time: one declining case in the default run, the rest under -m slow
        slow = () if cfg == "d" else (pytest.mark.slow,)
        yield pytest.param(4, 1.0, "ro", True, cfg, id=f"bulk-ro-{cfg}", marks=pytest.mark.slow)
        yield pytest.param(2, 0.97, "plain", False, cfg, id=f"odd-pages-{cfg}", marks=slow)
        yield pytest.param(3, 1.0, "fork", False, cfg, id=f"fork-{cfg}", marks=pytest.mark.slow)


@pytest.mark.parametrize(("seed", "common", "mode", "bulk", "cfg"), list(_cases()))
def test_eviction_bulk_matches_per_entry(seed, common, mode, bulk, cfg, monkeypatch):
    calls = {"unmap": 0, "pages": 0, "finalize": 0}

    def spy(name, real):
        def f(*args, **kw):
            r = real(*args, **kw)
            if r and (not isinstance(r, tuple) or r[0]):
                calls[name] += 1
            return r

        return f

    monkeypatch.setattr(
        fast_mdr, "migrate_device_range_unmap", spy("unmap", fast_mdr.migrate_device_range_unmap)
    )
    monkeypatch.setattr(
        fast_mdr, "migrate_device_pages", spy("pages", fast_mdr.migrate_device_pages)
    )
    monkeypatch.setattr(
        fast_mdr,
        "migrate_device_finalize_remove",
        spy("finalize", fast_mdr.migrate_device_finalize_remove),
    )
    fw, fg = build(seed, True, cfg, common, mode)
    sw, sg = build(seed, False, cfg, common, mode)
    assert_same(fw, sw, "setup")
    assert gpu_state(fg) == gpu_state(sg)
    assert fg.resident_pages > NPAGES // 2
    for i in range(len(fg.chunks)):
        nf = fg.evict_chunk(fg.chunks[i])
        ns = sg.evict_chunk(sg.chunks[i])
        assert nf == ns
        assert_same(fw, sw, f"evict chunk {i}")
        assert gpu_state(fg) == gpu_state(sg)
    assert not check_invariants(fw.k, raise_on_error=False)
    assert fg.resident_pages < NPAGES // 8
    if bulk:  # the bulk forms did the work of whole chunks
        assert calls["unmap"] and calls["pages"] and calls["finalize"], calls
    else:
        assert not calls["unmap"], calls

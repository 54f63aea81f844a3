"""hmmsim.sim, second slice: thrashing lapse/epoch resets, access counters,
GEMM and graph workloads, the Kernel-owned clock."""

from __future__ import annotations

import numpy as np
import pytest

from hmmsim.drivers.gpu import CHUNK_PAGES, GpuDevice
from hmmsim.kernel import Kernel
from hmmsim.sim import Simulation, make_workload
from hmmsim.sim.policy import NvidiaUvmThrash


def _thrash_dev():
    """A device with the thrashing policy and a clock the test sets."""
    k = Kernel(ram_bytes=32 << 20)
    pol = NvidiaUvmThrash()
    dev = GpuDevice(k, 2 << 20, pol)
    t = [0.0]
    dev.now = lambda: t[0]
    return dev, pol, t


def _thrash(dev, t, vpn, start, n=3, step=100.0):
    for i in range(n):
        t[0] = start + i * step
        dev.note_migration(vpn)
    return t[0]


def test_thrashing_page_that_stops_is_not_throttled():
    dev, pol, t = _thrash_dev()
    last = _thrash(dev, t, 5, 0.0)
    assert pol.thrash_decision(dev, 5, last + 100) == "throttle"
    # more than a lapse (500 us) with no migration: no longer thrashing
    assert pol.thrash_decision(dev, 5, last + pol.thrash_lapse_us + 1) == "migrate"


def test_epoch_reset_forgets_throttles_of_a_quiet_block():
    dev, pol, t = _thrash_dev()
    last = _thrash(dev, t, 7, 0.0)
    dev.thrash[7][2] = pol.thrash_pin_threshold - 2  # 8 throttles already
    assert pol.thrash_decision(dev, 7, last + 1) == "throttle"  # the 9th
    assert dev.thrash_blocks[7 // CHUNK_PAGES][0] == last
    # a quiet epoch (2000 x lapse = 1 s): the block's history is dropped
    quiet = last + pol.thrash_epoch_us + 1
    assert pol.thrash_decision(dev, 7, quiet) == "migrate"
    assert 7 not in dev.thrash and dev.thrash_blocks[0] == [-1.0, 1]
    # thrashing again starts from zero throttles: throttle, not pin
    last = _thrash(dev, t, 7, quiet)
    assert pol.thrash_decision(dev, 7, last + 1) == "throttle"
    assert dev.thrash[7][2] == 1


def test_epoch_resets_stop_after_max_resets_and_skip_pinned_blocks():
    dev, pol, t = _thrash_dev()
    start = 0.0
    for i in range(pol.thrash_max_resets + 1):
        last = _thrash(dev, t, 9, start)
        start = last + pol.thrash_epoch_us + 1
        assert pol.thrash_epoch(dev, 0, start) == (i < pol.thrash_max_resets)
    assert dev.thrash_blocks[0][1] == pol.thrash_max_resets
    # a block with a pinned page is not reset
    dev2, pol2, t2 = _thrash_dev()
    last = _thrash(dev2, t2, 3, 0.0)
    dev2.thrash[3][3] = last + 10 * pol2.thrash_epoch_us
    assert not pol2.thrash_epoch(dev2, 0, last + pol2.thrash_epoch_us + 1)
    assert pol2.thrash_decision(dev2, 3, last + pol2.thrash_epoch_us + 1) == "pin"


def test_simulation_clock_is_the_kernels():
    assert Kernel(ram_bytes=32 << 20).clock is None
    sim = Simulation("stream:size=2M", "naive")
    assert sim.k.clock is sim.clock
    m = sim.run()
    assert sim.k.clock.now == pytest.approx(m.sim_time_s * 1e6)
    assert sim.moves and sim.moves[-1].t <= sim.k.clock.now


def test_gemm_tiles_reuse_and_stay_in_bounds():
    w = make_workload("gemm:size=3M,tile=128")
    a = w.accesses
    assert (a["off"] + a["size"] <= w.footprint).all()
    g = a[a["agent"] == 1]
    n = 512  # 1 MiB per matrix of 4-byte elements
    mb = n * n * 4
    reads, writes = g[~g["write"]], g[g["write"]]
    assert (writes["off"] >= 2 * mb).all() and (reads["off"] < 2 * mb).all()
    # (n/t)^3 tile pairs of t rows read, (n/t)^2 tiles of t rows written
    assert len(reads) == 4**3 * 2 * 128 and len(writes) == 4**2 * 128
    # reuse: every A/B page is read n/t = 4 times per page-row touch
    pages = np.unique(reads["off"] // 4096, return_counts=True)[1]
    assert pages.min() > 1
    m = Simulation("gemm:size=3M,tile=128", "nvidia-uvm", check_invariants=True).run()
    assert m.data_errors == 0 and m.gpu_accesses == len(g)


def test_graph_is_seeded_power_law_bfs():
    from hmmsim.sim.workloads import power_law_csr

    rp, col = power_law_csr(5000, 8, 2.0, seed=1)
    deg = np.diff(rp)
    assert abs(deg.mean() - 8) < 1.5 and deg.max() > 10 * np.median(deg)
    indeg = np.bincount(col, minlength=5000)
    assert indeg.max() > 20 * max(1, np.median(indeg))
    a = make_workload("graph:size=256K", seed=3).accesses
    b = make_workload("graph:size=256K", seed=3).accesses
    c = make_workload("graph:size=256K", seed=4).accesses
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert (a["off"] + a["size"] <= 256 << 10).all()
    g = a[a["agent"] == 1]
    assert g["write"].sum() > 100  # nodes reached
    m = Simulation("graph:size=256K", "naive", seed=3).run()
    assert m.data_errors == 0 and m.gpu_accesses == len(g)


def test_new_generators_take_oversub():
    m = Simulation("gemm:size=3M,oversub=2", "nvidia-uvm").run()
    assert m.oversubscription > 1 and m.evictions > 0 and m.data_errors == 0
    # device memory comes in 2 MiB root chunks: a graph needs 4 MiB to be
    # oversubscribed (a run that size takes seconds; the docs' table has one)
    sim = Simulation("graph:size=4M,oversub=2", "nvidia-uvm")
    assert sim.workload.oversub == 2 and sim.m.oversubscription == 2.0


def _ac_setup(npages=2 * CHUNK_PAGES):
    from hmmsim.sim.policy import NvidiaUvmAc

    k = Kernel(ram_bytes=64 << 20)
    p = k.spawn()
    span = npages * 4096 + (2 << 20)
    addr = p.mmap(0, span, 3, 0x22, -1, 0)
    base = (addr + (2 << 20) - 1) & ~((2 << 20) - 1)
    for i in range(npages):
        p.store(base + (i << 12), np.array([i + 1], dtype=np.uint64))
    dev = GpuDevice(k, 2 << 20, NvidiaUvmAc())
    space = dev.bind(p)
    return k, p, base >> 12, dev, space


def test_access_counters_map_remote_then_migrate_at_threshold():
    from hmmsim.drivers.gpu import AC_THRESHOLD
    from hmmsim.testing.invariants import check_invariants

    k, p, v0, dev, space = _ac_setup()
    # a fault maps the system pages in place: nothing migrates
    assert dev.access(v0, False) == "miss"
    res = dev.service_faults([(v0 + i, False) for i in range(40)])
    assert res.remote == 40 and res.migrated_fault == res.migrated_prefetch == 0
    assert not dev.where
    # 255 remote accesses spread over the 2 MiB region: no notification
    for i in range(AC_THRESHOLD - 1):
        assert dev.access(v0 + i % 40, False) == "remote"
    assert dev.ac_notifications == [] and dev.ac_counts[v0 // CHUNK_PAGES] == 255
    # the 256th: a notification naming the page and the sub-regions touched
    hot = v0 + 17
    assert dev.access(hot, False) == "remote"
    ((vpn, region, mask),) = dev.ac_notifications
    assert vpn == hot and region == v0 // CHUNK_PAGES
    assert mask == 0b111  # pages 0..39: 64 KiB (16-page) sub-regions 0, 1, 2
    assert dev.ac_counts[region] == 0  # cleared
    r = dev.service_access_counters()
    # 4 KiB system pages: only the notified page moves (expand_notification_block)
    assert r.notifications == 1 and r.migrated_ac == 1 and list(dev.where) == [hot]
    assert dev.access(hot, False) == "local"
    assert int(np.frombuffer(space.read_bytes(hot)[:8], np.uint64)[0]) == 18
    assert dev.moves[-1].reason == "access-counter"
    assert "access counter" in dev.moves[-1].path
    assert check_invariants(k, raise_on_error=False) == []
    # remote pages in other regions count separately
    res = dev.service_faults([(v0 + CHUNK_PAGES, False)])
    assert dev.access(v0 + CHUNK_PAGES, False) == "remote"
    assert dev.ac_counts[v0 // CHUNK_PAGES + 1] == 1


def test_notification_expands_to_sub_regions_of_a_2m_system_page():
    from hmmsim.drivers.gpu import expand_notification

    assert expand_notification(1030, 1024, 512, 0b101, huge=False) == [1030]
    pages = expand_notification(1030, 1024, 512, 0b101, huge=True)
    assert pages == list(range(1024, 1040)) + list(range(1056, 1072))


def test_access_counters_cut_migrations_for_sparse_random_access():
    spec = "random:size=8M,n=6000"
    fault = Simulation(spec, "nvidia-uvm").run()
    sim = Simulation(spec, "nvidia-uvm-ac", check_invariants=True)
    ac = sim.run()
    assert ac.data_errors == 0 and ac.remote_accesses > 0 and ac.ac_notifications > 0
    assert ac.pages_access_counter == ac.pages_h2d > 0
    assert ac.pages_h2d * 10 < fault.pages_h2d
    assert any(mv.reason == "access-counter" for mv in sim.moves)

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

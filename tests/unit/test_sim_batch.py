"""The batched simulation engine against the per-access one (issue 17, speed).

``Simulation(batched=False)`` replays the accesses one at a time through
the driver (the reference); the default engine handles device-page hits and
fault-buffer fills in NumPy segments. Both must give the same metrics, the
same fault latencies (exactly: the clock adds the same steps in the same
order), the same move log and residency series.
"""

from __future__ import annotations

import numpy as np
import pytest

from hmmsim.drivers.gpu import TAG_WRITE
from hmmsim.mm.memremap import is_device_private_page
from hmmsim.sim import Simulation

CASES = [
    ("stream:size=2M,passes=2,oversub=2", "nvidia-uvm"),
    ("random:size=2M,n=1500,write=0.3,oversub=2", "naive"),
    ("pingpong:size=2M,rounds=2,oversub=1.5", "nvidia-uvm-thrash"),
    ("random:size=2M,n=1200,oversub=1", "nvidia-uvm-ac"),  # remote hits, notifications
    ("graph:size=32K", "amd-svm"),  # accesses spanning pages, 4-byte writes
    ("pingpong:size=2M,rounds=1", "amd-svm-thp"),  # THP first touch: no CPU store runs
    # GPU faults still in the buffer when a CPU write run starts (the sync moves them)
    ("pingpong:size=128K,rounds=3,cpu=1,access=4096", "nvidia-uvm"),
]


def _run(spec: str, policy: str, batched: bool) -> Simulation:
    sim = Simulation(spec, policy, batched=batched)
    sim.run()
    return sim


@pytest.mark.parametrize(
    ("spec", "policy"), CASES, ids=[f"{s.split(':')[0]}-{p}" for s, p in CASES]
)
def test_batched_engine_matches_per_access(spec, policy):
    ref = _run(spec, policy, False)
    got = _run(spec, policy, True)
    assert got.m.as_dict() == ref.m.as_dict()
    assert got.latencies == ref.latencies
    assert got.residency == ref.residency
    assert [(t, h.tolist()) for t, h in got.heat] == [(t, h.tolist()) for t, h in ref.heat]
    assert [(r.vpn, r.direction, r.reason) for r in got.moves] == [
        (r.vpn, r.direction, r.reason) for r in ref.moves
    ]
    assert got.m.gpu_faults > 0 and got.m.data_errors == 0
    assert np.array_equal(got.shadow, ref.shadow)


def test_cpu_store_runs_are_used_and_charged_per_access(monkeypatch):
    """The CPU initialisation of a stream is written in store runs (one
    store per run of consecutive pages), with every first touch counted."""
    calls = []
    real = Simulation._cpu_store_run

    def spy(self, vpn, first, n):
        calls.append(n)
        return real(self, vpn, first, n)

    monkeypatch.setattr(Simulation, "_cpu_store_run", spy)
    m = Simulation("stream:size=4M,passes=1", "naive").run()
    assert sum(calls) == m.cpu_accesses == m.cpu_faults_other == 1024
    assert max(calls) == 512


def test_batched_engine_counts_a_lost_write():
    """The bulk data check is a check: a device page whose first word is
    changed behind the engine's back reads as a data error."""
    sim = Simulation("stream:size=1M,passes=3", "naive")
    # after the first pass every page is on the device; corrupt one there
    orig = sim._bulk
    seen = []

    def bulk(t, vpn, w, value, hit, dt, lru):
        if hit.any() and not seen:
            pt = sim.space.pt
            i = int(t[hit][0])
            sim.dev.store_words(pt.chunk[[i]], pt.row[[i]], np.array([12345], dtype=np.uint64))
            seen.append(i)
        return orig(t, vpn, w, value, hit, dt, lru)

    sim._bulk = bulk
    m = sim.run()
    assert seen and m.data_errors >= 1


def test_page_table_columns_follow_the_dict():
    """After a run with evictions and CPU faults, the NumPy columns of the
    device page table say exactly what its entries say."""
    sim = _run("pingpong:size=4M,rounds=2,oversub=2", "nvidia-uvm", True)
    pt = sim.space.pt
    assert sim.m.evictions > 0 and sim.m.cpu_faults > 0
    for j, vpn in enumerate(sim.tvpns.tolist()):
        e = pt.get(vpn)
        if e is None:
            assert pt.kind[j] == 0
            continue
        page, tag = e
        assert bool(pt.writable[j]) == (tag == TAG_WRITE)
        if is_device_private_page(page):
            assert pt.kind[j] == 1
            assert sim.dev.chunks[pt.chunk[j]].pages is page.a and pt.row[j] == page.i
        else:
            assert pt.kind[j] == 2 and pt.row[j] == page.pfn
    assert int((pt.kind > 0).sum()) == len(pt)
    assert sim.dev.resident_pages == sum(c.used for c in sim.dev.chunks)
    assert sim.dev.heat.sum() == len(sim.dev.where)

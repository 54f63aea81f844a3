"""Scale (issue 17): sparse workloads cost what they touch.

A TB-sized virtual buffer is mapped MAP_NORESERVE (the model's heuristic
overcommit refuses a larger accounted mapping than its RAM), the modelled
RAM is sized by the touched pages (plus their page tables), and the device
page table's NumPy columns cover only the touched pages. The full-size runs
(docs/simulation.md, "Scale") are too long for the test suite; the slow
tests run scaled-down versions with the token data plane.
"""

from __future__ import annotations

import pytest

from hmmsim.include.mm import VM_NORESERVE
from hmmsim.kconfig import KConfig
from hmmsim.mm.mmap import vma_lookup
from hmmsim.sim import Simulation, make_workload
from hmmsim.sim.engine import modelled_ram_bytes, touched_pages
from hmmsim.testing.invariants import check_invariants

TIB = 1 << 40


def test_sparse_terabyte_buffer_costs_its_touched_pages():
    sim = Simulation("random:size=1T,n=800,init=0,write=0.5", "naive", device_mem=2 << 20)
    assert sim.workload.footprint == TIB
    # RAM for the touched pages and their tables, not for the terabyte
    assert sim.k.config.ram_bytes < 64 << 20
    vma = vma_lookup(sim.proc.mm, sim.base)
    assert vma is not None and vma.vm_end - sim.base >= TIB
    assert vma.vm_flags & VM_NORESERVE
    assert len(sim.space.pt.kind) == len(sim.tvpns) <= 800
    m = sim.run()
    assert m.gpu_faults_unique == len(sim.tvpns) and m.evictions > 0
    assert m.data_errors == 0
    assert not check_invariants(sim.k, raise_on_error=False)


def test_ram_is_sized_by_touched_pages_only_for_sparse_workloads():
    dense = make_workload("stream:size=8M")
    assert modelled_ram_bytes(dense) == 8 * 5 // 4 * (1 << 20) + (48 << 20)
    sparse = make_workload("random:size=64G,n=100,init=0")
    t = touched_pages(sparse)
    assert len(t) <= 100
    assert modelled_ram_bytes(sparse, t) < 64 << 20
    # without MAP_NORESERVE the buffer would be refused: the model enforces
    # heuristic overcommit against its RAM
    from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
    from hmmsim.kernel import Kernel

    k = Kernel(ram_bytes=modelled_ram_bytes(sparse, t))
    p = k.spawn("x")
    assert p.mmap(0, 64 << 30, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) < 0


def _tokens():
    try:
        return KConfig(data_plane="tokens")
    except TypeError:  # pragma: no cover - before the token data plane
        pytest.skip("no token data plane")


@pytest.mark.slow
def test_scaled_down_oversubscribed_stream_with_tokens():
    """A 1 GiB stream on a 512 MiB device (the 64 GiB run, 64 times smaller)."""
    sim = Simulation(
        "stream:size=1G,passes=1,access=4096,oversub=2",
        "nvidia-uvm",
        config=_tokens(),
        log_moves=False,
    )
    m = sim.run()
    assert m.evictions > 0 and m.pages_h2d >= m.footprint_bytes // 4096
    assert m.data_errors == 0


@pytest.mark.slow
def test_scaled_down_terabyte_random_with_tokens():
    """The TB sparse random run with 20,000 accesses on a 64 MiB device."""
    sim = Simulation(
        "random:size=1T,n=20000,init=0,write=0.5",
        "naive",
        device_mem=64 << 20,
        config=_tokens(),
        log_moves=False,
    )
    m = sim.run()
    assert m.evictions > 0 and m.data_errors == 0
    assert not check_invariants(sim.k, raise_on_error=False)

"""The GPU-like driver (hmmsim.drivers.gpu) on the kernel's HMM driver API."""

from __future__ import annotations

import numpy as np
import pytest

from hmmsim.drivers.gpu import CHUNK_PAGES, GpuDevice, GpuFaultBuffer
from hmmsim.kernel import Kernel
from hmmsim.testing.invariants import check_invariants

PROT_RW = 3
MAP_PRIVATE_ANON = 0x22
PROT_READ = 1

FEATURES = [(), ("a", "b", "c")]


def _setup(features=(), npages=3 * CHUNK_PAGES, dev_bytes=2 << 20, init=True):
    k = Kernel(ram_bytes=64 << 20, **({"features": features} if features else {}))
    p = k.spawn()
    addr = p.mmap(0, npages << 12, PROT_RW, MAP_PRIVATE_ANON, -1, 0)
    assert addr > 0
    if init:
        for i in range(npages):
            p.store(addr + (i << 12), np.full(16, i & 0xFF, np.uint8))
    dev = GpuDevice(k, dev_bytes)
    space = dev.bind(p)
    return k, p, addr, dev, space


def _touch(dev, vpns, write=False, check=None):
    buf = GpuFaultBuffer()
    results = []
    for v in vpns:
        if dev.access(v, write) == "miss" and buf.push(v, write):
            results.append(dev.service_faults(buf.fetch()))
            if check:
                check()
    while len(buf):
        results.append(dev.service_faults(buf.fetch()))
        if check:
            check()
    return results


@pytest.mark.parametrize("features", FEATURES)
def test_faults_migrate_map_and_data_moves(features):
    k, p, addr, dev, space = _setup(features, npages=CHUNK_PAGES)
    vpn0 = addr >> 12
    res = _touch(dev, range(vpn0, vpn0 + CHUNK_PAGES), check=lambda: check_invariants(k))
    assert [r.unique for r in res] == [256, 256]
    assert sum(r.migrated_fault for r in res) == CHUNK_PAGES
    assert dev.resident_pages == CHUNK_PAGES
    assert all(dev.access(v, False) == "local" for v in range(vpn0, vpn0 + CHUNK_PAGES))
    assert space.read_bytes(vpn0 + 7)[:16] == bytes([7] * 16)
    # the CPU pulls a page back through migrate_to_ram; the mirror drops it
    assert p.load(addr + (7 << 12), 16) == bytes([7] * 16)
    assert dev.cpu_faults == 1 and dev.d2h_cpu == 1
    assert dev.access(vpn0 + 7, False) == "miss"
    assert dev.resident_pages == CHUNK_PAGES - 1
    assert dev.moves[-1].reason == "cpu-fault" and "migrate_to_ram" in dev.moves[-1].path
    check_invariants(k)


def test_fault_buffer_dedups_per_page():
    k, p, addr, dev, space = _setup(npages=16)
    vpn0 = addr >> 12
    res = dev.service_faults([(vpn0, False), (vpn0, True), (vpn0 + 1, False)] * 10)
    assert res.faults == 30 and res.unique == 2 and res.migrated_fault == 2
    assert space.pt[vpn0][1] == 3  # the write wins: mapped writable
    check_invariants(k)


@pytest.mark.parametrize("features", FEATURES)
def test_oversubscription_evicts_lru_chunk_through_migrate_device_range(features):
    k, p, addr, dev, space = _setup(features, npages=3 * CHUNK_PAGES, dev_bytes=2 << 20)
    vpn0 = addr >> 12
    _touch(dev, range(vpn0, vpn0 + 3 * CHUNK_PAGES), check=lambda: check_invariants(k))
    assert dev.max_chunks == 1 and dev.evicted_chunks == 2
    assert dev.evicted_pages == 2 * CHUNK_PAGES
    assert {m.reason for m in dev.moves if m.direction == "d2h"} == {"eviction"}
    # evicted data is intact in system memory
    for i in (0, 5, CHUNK_PAGES + 3):
        assert p.load(addr + (i << 12), 16) == bytes([i & 0xFF] * 16)
    check_invariants(k)


def test_invalidation_drops_device_mappings():
    k, p, addr, dev, space = _setup(npages=32)
    vpn0 = addr >> 12
    _touch(dev, range(vpn0, vpn0 + 32))
    assert len(space.pt) == 32
    assert p.mprotect(addr, 16 << 12, PROT_READ) == 0
    # device-private entries lose write: the mirror must not keep writable entries
    assert all(space.pt.get(v, (None, 0))[1] != 3 for v in range(vpn0, vpn0 + 16))
    check_invariants(k)
    assert p.munmap(addr, 32 << 12) == 0
    assert len(space.pt) == 0
    check_invariants(k)
    assert dev.resident_pages == 0  # the pages went back to the driver (folio_free)


def test_unbind_returns_everything():
    k, p, addr, dev, space = _setup(npages=64)
    vpn0 = addr >> 12
    _touch(dev, range(vpn0, vpn0 + 64), write=True)
    dev.unbind()
    check_invariants(k)
    for i in (0, 63):
        assert p.load(addr + (i << 12), 16) == bytes([i] * 16)


# --- the series (d) compound path ---------------------------------------------------------
def _thp_setup(features=(), npages=2 * CHUNK_PAGES, dev_bytes=4 << 20, init=True):
    from hmmsim.include.mman import MADV_HUGEPAGE
    from hmmsim.sim.policy import AmdSvmThp

    k = Kernel(ram_bytes=64 << 20, **({"features": features} if features else {}))
    p = k.spawn()
    raw = p.mmap(0, (npages + CHUNK_PAGES) << 12, PROT_RW, MAP_PRIVATE_ANON, -1, 0)
    addr = (raw + (2 << 20) - 1) & ~((2 << 20) - 1)
    assert p.madvise(addr, npages << 12, MADV_HUGEPAGE) == 0
    if init:
        for i in range(npages):
            p.store(addr + (i << 12), np.full(16, i & 0xFF, np.uint8))
    dev = GpuDevice(k, dev_bytes, AmdSvmThp())
    return k, p, addr, dev, dev.bind(p)


@pytest.mark.parametrize("features", [(), ("a", "b", "c", "d")])
@pytest.mark.parametrize("init", [True, False])
def test_compound_windows_become_device_thps(features, init):
    from hmmsim.userspace import entry_at

    k, p, addr, dev, space = _thp_setup(features, init=init)
    if init:
        assert entry_at(p, addr)[0] == "pmd"  # the CPU side is a THP
    vpn0 = addr >> 12
    _touch(dev, [vpn0, vpn0 + CHUNK_PAGES + 5], check=lambda: check_invariants(k))
    assert dev.compound_folios == 2 and dev.compound_fallbacks == 0
    assert [int(c.pages.order[0]) for c in dev.chunks] == [9, 9]
    assert entry_at(p, addr)[0] == "pmd"  # a device-private PMD now
    assert dev.access(vpn0 + 300, False) == "local"  # the whole 2 MiB is mapped
    want = bytes([300 & 0xFF] * 16) if init else bytes(16)
    assert space.read_bytes(vpn0 + 300)[:16] == want
    # a CPU fault on the PMD brings the whole folio back through migrate_to_ram
    assert p.load(addr + (300 << 12), 16) == want
    assert dev.cpu_faults == 1 and dev.d2h_cpu == CHUNK_PAGES
    assert dev.resident_pages == CHUNK_PAGES
    check_invariants(k)
    # eviction of a compound folio: migrate_device_range with an order-9 destination
    dev.evict_chunk(dev.chunks[1])
    assert dev.resident_pages == 0 and dev.evicted_pages == CHUNK_PAGES
    assert p.load(addr + ((CHUNK_PAGES + 5) << 12), 16) == (
        bytes([(CHUNK_PAGES + 5) & 0xFF] * 16) if init else bytes(16)
    )
    check_invariants(k)
    # freed chunks are reused as small pages without stale compound state
    dev.policy.compound = False
    _touch(dev, range(vpn0, vpn0 + 64), check=lambda: check_invariants(k))
    assert dev.resident_pages > 0
    check_invariants(k)


def test_compound_fallback_to_small_pages_splits_the_source(monkeypatch):
    from hmmsim.userspace import entry_at

    k, p, addr, dev, space = _thp_setup()
    monkeypatch.setattr(dev, "alloc_folio", lambda: None)  # no whole chunk free
    vpn0 = addr >> 12
    _touch(dev, [vpn0 + 1], check=lambda: check_invariants(k))
    assert dev.compound_fallbacks == 1 and dev.compound_folios == 0
    assert entry_at(p, addr)[0] == "pte"  # the THP was split to migrate page by page
    assert dev.resident_pages == CHUNK_PAGES
    assert space.read_bytes(vpn0 + 7)[:16] == bytes([7] * 16)
    assert p.load(addr + (7 << 12), 16) == bytes([7] * 16)
    check_invariants(k)


def test_partial_munmap_splits_a_device_thp():
    k, p, addr, dev, space = _thp_setup(npages=CHUNK_PAGES)
    vpn0 = addr >> 12
    _touch(dev, [vpn0])
    assert dev.compound_folios == 1 and dev.resident_pages == CHUNK_PAGES
    # unmapping half of the 2 MiB splits the device-private PMD into PTEs; the
    # folio stays whole (partly mapped) until all of it is unmapped
    assert p.munmap(addr, CHUNK_PAGES // 2 << 12) == 0
    check_invariants(k)
    assert dev.resident_pages == CHUNK_PAGES
    half = addr + (CHUNK_PAGES // 2 << 12)
    assert dev.access(half >> 12, False) == "miss"  # the invalidation dropped the mirror
    _touch(dev, [half >> 12])  # maps the PTE-mapped device page again
    assert dev.access(half >> 12, False) == "local"
    check_invariants(k)
    # a CPU fault on a PTE of the partly mapped device THP: migrate_to_ram
    # without SELECT_COMPOUND; the kernel splits the device folio first
    want = bytes([(CHUNK_PAGES // 2 + 3) & 0xFF] * 16)
    assert p.load(half + (3 << 12), 16) == want
    # (migrate_to_ram may run twice: the folio is split, the fault retried)
    assert dev.cpu_faults >= 1 and dev.d2h_cpu == CHUNK_PAGES // 2
    check_invariants(k)
    # the mapped half moved to RAM, the unmapped half was freed by the split
    assert dev.resident_pages == 0 and len(dev.free) == CHUNK_PAGES
    assert p.munmap(half, CHUNK_PAGES // 2 << 12) == 0
    dev.unbind()
    check_invariants(k)

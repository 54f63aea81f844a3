"""Migration policies: Python classes with hooks the GPU driver calls.

A policy answers four questions for hmmsim.drivers.gpu.GpuDevice:

- ``fault_region(space, vpn)``: the pages [lo, hi) that move with a fault
  (the migration granularity);
- ``prefetch(space, faulted)``: more pages to move with a batch;
- ``victim(chunks)``: which 2 MiB root chunk to evict when memory is full;
- ``cpu_region_pages()``: how many pages migrate_to_ram brings back;
- optionally ``thrash_decision(device, vpn, now)``: "migrate", "throttle"
  or "pin" for a fault on a page (with ``thrash_lapse_us`` set, the driver
  records each page's migrations in ``device.thrash``).
- optionally ``access_counter_pages(space, vpn, lo, npages, mask, huge)``:
  the pages an access counter notification migrates (policies with
  ``access_counters = True``; ``remote_first = True`` makes faults map
  system pages in place instead of migrating).

Write a new one by subclassing ``Policy`` and overriding a hook, then add it
to ``POLICIES`` (or pass the instance to ``Simulation``). The presets follow
the drivers' public defaults; docs/simulation.md cites each one.
"""

from __future__ import annotations

import numpy as np

from hmmsim.drivers.gpu import CHUNK_PAGES
from hmmsim.kconfig import PAGE_SHIFT
from hmmsim.mm.mmap import vma_lookup

KIB = 1 << 10
MIB = 1 << 20


class Policy:
    """On-demand 4 KiB migration, no prefetch, LRU eviction by device access.

    Attributes: name; granularity (bytes, a power of two from 4 KiB to
    2 MiB); lru ("access": the chunk touched longest ago, or "alloc": the
    chunk allocated into longest ago); cpu_granularity (bytes).
    """

    name = "naive"
    description = "on-demand 4 KiB faults, no prefetch, LRU by device access"
    granularity = 4 * KIB
    lru = "access"
    cpu_granularity = 4 * KIB
    #: aligned 2 MiB windows as device THPs (series (d) MIGRATE_VMA_SELECT_COMPOUND)
    compound = False

    def __repr__(self) -> str:
        return f"<Policy {self.name}>"

    # --- hooks -------------------------------------------------------------------------------
    def fault_region(self, space, vpn: int) -> tuple[int, int]:
        return aligned_block(space, vpn, self.granularity >> PAGE_SHIFT)

    def prefetch(self, space, faulted: set[int]):
        return ()

    def victim(self, chunks):
        key = (lambda c: c.last_alloc) if self.lru == "alloc" else (lambda c: c.last_access)
        return min(chunks, key=lambda c: (key(c), c.index))

    def cpu_region_pages(self) -> int:
        return max(1, self.cpu_granularity >> PAGE_SHIFT)


def vma_bounds(space, vpn: int) -> tuple[int, int]:
    """The vma around vpn, in pages ([vpn, vpn + 1) if there is none)."""
    vma = vma_lookup(space.mm, vpn << PAGE_SHIFT)
    if vma is None:
        return vpn, vpn + 1
    return vma.vm_start >> PAGE_SHIFT, vma.vm_end >> PAGE_SHIFT


def aligned_block(space, vpn: int, npages: int) -> tuple[int, int]:
    """The npages-aligned block around vpn, clipped to its vma."""
    lo = vpn & ~(npages - 1)
    vlo, vhi = vma_bounds(space, vpn)
    return max(lo, vlo), min(lo + npages, vhi)


class NvidiaUvm(Policy):
    """NVIDIA UVM-like: faults migrate their 64 KiB big page, then a density
    prefetcher over each 2 MiB block: a subtree of the block's page tree is
    prefetched whole when more than 51% of it is resident or faulted
    (uvm_perf_prefetch.c compute_prefetch_region, threshold 51); eviction of
    the root chunk allocated into longest ago (the driver sees allocations,
    not device accesses)."""

    name = "nvidia-uvm"
    description = "64 KiB big-page faults, density prefetch over 2 MiB at 51%, LRU by allocation"
    granularity = 64 * KIB
    lru = "alloc"
    threshold = 51

    def prefetch(self, space, faulted: set[int]):
        out: set[int] = set()
        blocks: dict[int, list[int]] = {}
        for v in faulted:
            blocks.setdefault(v // CHUNK_PAGES, []).append(v)
        big = self.granularity >> PAGE_SHIFT
        for b, vs in blocks.items():
            base = b * CHUNK_PAGES
            vlo, vhi = vma_bounds(space, vs[0])
            lo, hi = max(base, vlo), min(base + CHUNK_PAGES, vhi)
            occupied = np.zeros(CHUNK_PAGES, dtype=bool)
            for v in range(lo, hi):
                if space.resident(v):
                    occupied[v - base] = True
            for v in vs:  # grow_fault_granularity: whole big pages
                s = (v - base) & ~(big - 1)
                occupied[s : s + big] = True
            # prefix counts for subtree sums
            pre = [0, *np.cumsum(occupied).tolist()]
            sel = np.zeros(CHUNK_PAGES, dtype=bool)
            for v in sorted(vs):
                i = v - base
                best = None
                size = 1
                while size <= CHUNK_PAGES:
                    s = i & ~(size - 1)
                    count = pre[s + size] - pre[s]
                    if count * 100 > size * self.threshold:
                        best = (s, s + size)
                    size <<= 1
                if best is not None:
                    sel[best[0] : best[1]] = True
            out.update((np.flatnonzero(sel[lo - base : hi - base]) + lo).tolist())
        return out - faulted


class NvidiaUvmThrash(NvidiaUvm):
    """nvidia-uvm plus thrashing mitigation at the driver's defaults
    (uvm_perf_thrashing.c): a page that migrated `thrash_threshold` (3)
    times in a row, each within `thrash_lapse_us` (500 us) of the last, is
    thrashing; a fault on it throttles the device for `thrash_nap_us`
    (nap 1 x lapse); after `thrash_pin_threshold` (10) throttles the page is
    pinned where it is for `thrash_pin_us` (pin 300 x lapse = 150 ms) and
    the device maps it remotely. With HMM a CPU fault on a device page must
    migrate it, so pages pin in system memory."""

    name = "nvidia-uvm-thrash"
    description = "nvidia-uvm + thrashing detection: throttle, then pin and map remotely"
    # a fault on a page whose last migration is more than a lapse old is not
    # thrashing (uvm_perf_thrashing_get_hint); a 2 MiB block with no thrashing
    # migration for an epoch (UVM_PERF_THRASHING_EPOCH_DEFAULT 2000 x lapse
    # = 1 s) and no pinned page forgets its history, at most
    # UVM_PERF_THRASHING_MAX_RESETS_DEFAULT (4) times
    thrash_threshold = 3
    thrash_lapse_us = 500.0
    thrash_nap_us = 500.0
    thrash_pin_threshold = 10
    thrash_pin_us = 300 * 500.0

    thrash_epoch_us = 2000 * 500.0
    thrash_max_resets = 4

    def thrash_decision(self, dev, vpn: int, now: float) -> str:
        """ "migrate", "throttle" or "pin" for a device fault on vpn
        (uvm_perf_thrashing.c uvm_perf_thrashing_get_hint)."""
        self.thrash_epoch(dev, vpn // CHUNK_PAGES, now)
        st = dev.thrash.get(vpn)
        if st is None:
            return "migrate"
        if st[3] > now:
            return "pin"
        if st[1] >= self.thrash_threshold and now - st[0] > self.thrash_lapse_us:
            return "migrate"  # no migration within a lapse: no longer thrashing
        if st[1] >= self.thrash_threshold:
            st[2] += 1
            if st[2] >= self.thrash_pin_threshold:
                st[1] = st[2] = 0
                st[3] = now + self.thrash_pin_us
                return "pin"
            return "throttle"
        return "migrate"

    def thrash_epoch(self, dev, block: int, now: float) -> bool:
        """The epoch reset: a 2 MiB block none of whose pages thrashed for
        `thrash_epoch_us` and that has no pinned page forgets its thrashing
        history (event and throttle counts), at most `thrash_max_resets`
        times per block. True when it reset."""
        blk = dev.thrash_blocks.get(block)
        if blk is None or blk[0] < 0 or now - blk[0] <= self.thrash_epoch_us:
            return False
        if blk[1] >= self.thrash_max_resets:
            return False
        lo = block * CHUNK_PAGES
        pages = [v for v in range(lo, lo + CHUNK_PAGES) if v in dev.thrash]
        if any(dev.thrash[v][3] > now for v in pages):
            return False
        for v in pages:
            del dev.thrash[v]
        blk[0] = -1.0
        blk[1] += 1
        return True


class NvidiaUvmAc(NvidiaUvm):
    """nvidia-uvm driven by access counters instead of fault migration: a
    device fault maps the system page remotely (no migration, no prefetch);
    the device counts its remote accesses per 2 MiB region
    (uvm_gpu_access_counters.c: granularity UVM_PERF_ACCESS_COUNTER_GRANULARITY
    2 MiB, threshold UVM_PERF_ACCESS_COUNTER_THRESHOLD_DEFAULT 256) and a
    region reaching the threshold raises a notification whose service
    migrates the pages access_counter_pages names (by default the driver's
    expand_notification_block: the notified page, or the accessed 64 KiB
    sub-regions when system memory holds the region as one 2 MiB page).

    The driver enables these migrations by default only on ATS systems
    (is_migration_enabled; uvm_perf_access_counter_migration_enable=1
    forces them on), and with HMM a device fault migrates by default: this
    preset is the "remote first, migrate hot regions" configuration."""

    name = "nvidia-uvm-ac"
    description = "map remotely on fault; access counters (2 MiB, 256) migrate hot pages"
    remote_first = True
    access_counters = True
    ac_granularity = 2 * MIB
    ac_threshold = 256


class AmdSvm(Policy):
    """amdkfd SVM-like: 2 MiB migration granularity both ways
    (amdgpu_svm_default_granularity = 9, log2 pages), no prefetcher,
    eviction of the root chunk allocated into longest ago."""

    name = "amd-svm"
    description = "2 MiB granularity (GPU and CPU faults), no prefetch, LRU by allocation"
    granularity = 2 * MIB
    lru = "alloc"
    cpu_granularity = 2 * MIB


class AmdSvmThp(AmdSvm):
    """amd-svm with 2 MiB windows migrated as one device THP (an order-9
    device folio under a device-private PMD, series (d)); the simulator
    advises MADV_HUGEPAGE on the buffer so the CPU side has THPs too."""

    name = "amd-svm-thp"
    description = "amd-svm with device THPs: 2 MiB windows as one compound folio (series d)"
    compound = True


class XeGpusvm(Policy):
    """xe / drm_gpusvm-like: each fault creates a range of the largest chunk
    size of {2 MiB, 64 KiB, 4 KiB} (xe_svm.c fault_chunk_sizes) that is
    aligned, fits in the vma and overlaps no page already on the device
    (drm_gpusvm_range_chunk_size); no prefetch; LRU by allocation."""

    name = "xe-gpusvm"
    description = "chunk sizes 2M/64K/4K (largest that fits), no prefetch, LRU by allocation"
    granularity = 2 * MIB
    lru = "alloc"
    chunk_sizes = (2 * MIB, 64 * KIB, 4 * KIB)

    def fault_region(self, space, vpn: int) -> tuple[int, int]:
        vlo, vhi = vma_bounds(space, vpn)
        for size in self.chunk_sizes:
            n = size >> PAGE_SHIFT
            lo = vpn & ~(n - 1)
            hi = lo + n
            if lo < vlo or hi > vhi:
                continue
            if n > 1 and any(space.resident(v) for v in range(lo, hi)):
                continue
            return lo, hi
        return vpn, vpn + 1


POLICIES: dict[str, type[Policy]] = {
    "naive": Policy,
    "nvidia-uvm": NvidiaUvm,
    "nvidia-uvm-thrash": NvidiaUvmThrash,
    "nvidia-uvm-ac": NvidiaUvmAc,
    "amd-svm": AmdSvm,
    "amd-svm-thp": AmdSvmThp,
    "xe-gpusvm": XeGpusvm,
}


def make_policy(name: str) -> Policy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}: choose one of {', '.join(POLICIES)}") from None

"""A seeded fuzzer of device-page reuse at changing orders, driven through the API.

lib/test_hmm.c keeps device pages on two fixed free lists (order-0 pages and
PMD-sized folios), so a device page is never reused at another order there.
Real drivers do: xe's drm_pagemap hands out device memory from a buddy
allocator, so the pages of a freed 2 MiB folio come back as 4 KiB folios and
the other way round (the case known-bugs 17's fix is for). This
fuzzer is such a driver for MEMORY_DEVICE_COHERENT memory (CPU-addressable,
so no migrate_to_ram is needed): a first-fit buddy-style allocator over one
pgmap that trusts zone_device_folio_init to reinitialise every page, random
migrations of THPs and small pages to the device (compound destinations for
compound sources) and back to RAM, a byte shadow compared after every round
and the invariant checker.

Not kernel code: a driver-shaped client of mm/migrate_device.c and
mm/memremap.c.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from hmmsim.include.memremap import MEMORY_DEVICE_COHERENT, dev_pagemap, dev_pagemap_ops
from hmmsim.include.migrate import (
    MIGRATE_PFN_COMPOUND,
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_VALID,
    MIGRATE_VMA_SELECT_COMPOUND,
    MIGRATE_VMA_SELECT_DEVICE_COHERENT,
    MIGRATE_VMA_SELECT_SYSTEM,
    migrate_vma,
)
from hmmsim.include.mm_types import folio_order
from hmmsim.include.mman import MADV_HUGEPAGE, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from hmmsim.kconfig import HPAGE_PMD_NR, HPAGE_PMD_ORDER, PAGE_SHIFT, PAGE_SIZE, PMD_SIZE
from hmmsim.kernel import Kernel
from hmmsim.locking import lock_page
from hmmsim.mm.memremap import memremap_pages, zone_device_folio_init
from hmmsim.mm.migrate import migrate_pfn_from_page, migrate_pfn_to_page
from hmmsim.mm.migrate_device import migrate_vma_finalize, migrate_vma_pages, migrate_vma_setup
from hmmsim.mm.mmap import vma_lookup
from hmmsim.testing.invariants import check_bytes, check_invariants, strict_word_check

RW = PROT_READ | PROT_WRITE
NPMD = 3
DEV_PAGES = 8 * HPAGE_PMD_NR  # 16 MiB of device memory


class BuddyDevice:
    """A device with coherent memory and a first-fit allocator of any order."""

    def __init__(self, k) -> None:
        self.k = k
        res = k.iomem.request_free_mem_region(DEV_PAGES * PAGE_SIZE, "fuzz-coherent")
        if isinstance(res, int):
            raise MemoryError("no physical address space for the device")
        pgmap = dev_pagemap()
        pgmap.type = MEMORY_DEVICE_COHERENT
        pgmap.range.start, pgmap.range.end = res.start, res.end
        pgmap.nr_range = 1
        pgmap.ops = dev_pagemap_ops(folio_free=self.folio_free)
        pgmap.owner = self
        if memremap_pages(pgmap, 0, k=k) < 0:
            raise MemoryError("memremap_pages failed")
        self.pgmap = pgmap
        self.base = res.start >> PAGE_SHIFT
        self.used = np.zeros(DEV_PAGES, dtype=bool)

    def alloc(self, order: int):
        n = 1 << order
        for i in range(0, DEV_PAGES, n):
            if not self.used[i : i + n].any():
                self.used[i : i + n] = True
                page = self.k.mem.pfn_to_page(self.base + i)
                zone_device_folio_init(page, self.pgmap, order)  # refcount 1, locked
                return page
        return None

    def folio_free(self, folio) -> None:
        i = folio.pfn - self.base
        self.used[i : i + (1 << folio_order(folio))] = False


@dataclass
class DevAllocFuzzReport:
    runs: int = 0
    rounds: int = 0
    migrated: int = 0
    failure: str = ""
    seed: int = 0


def _copy(k, dst, src, n: int) -> None:
    for j in range(n):
        dr, sr = k.mem.range_of(dst.pfn + j), k.mem.range_of(src.pfn + j)
        dr.frames[dst.pfn + j - dr.base][:] = sr.frames[src.pfn + j - sr.base]


def _migrate(k, p, dev: BuddyDevice, start: int, n: int, to_device: bool) -> int:
    vma = vma_lookup(p.mm, start)
    flags = MIGRATE_VMA_SELECT_COMPOUND | (
        MIGRATE_VMA_SELECT_SYSTEM if to_device else MIGRATE_VMA_SELECT_DEVICE_COHERENT
    )
    m = migrate_vma(
        vma=vma,
        src=[0] * n,
        dst=[0] * n,
        start=start,
        end=start + n * PAGE_SIZE,
        pgmap_owner=dev,
        flags=flags,
    )
    moved = 0
    p.mm.mmap_lock.down_read()
    try:
        if migrate_vma_setup(m):
            return 0
        i = 0
        while i < n:
            s = int(m.src[i])
            compound = bool(s & MIGRATE_PFN_COMPOUND)
            step = HPAGE_PMD_NR if compound else 1
            if s & MIGRATE_PFN_MIGRATE and s & MIGRATE_PFN_VALID:
                order = HPAGE_PMD_ORDER if compound else 0
                if to_device:
                    dpage = dev.alloc(order)
                else:
                    dpage = k.mem.alloc_pages(order)
                    if dpage is not None:
                        lock_page(dpage)
                if dpage is not None:
                    _copy(k, dpage, migrate_pfn_to_page(s, k=k), step)
                    m.dst[i] = migrate_pfn_from_page(dpage) | (
                        MIGRATE_PFN_COMPOUND if compound else 0
                    )
                    moved += step
            i += step
        migrate_vma_pages(m)
        migrate_vma_finalize(m)
    finally:
        p.mm.mmap_lock.up_read()
    return moved


def run_devalloc_fuzz(
    runs: int, seed: int = 0, *, bugs=frozenset(), data_plane: str = "bytes"
) -> DevAllocFuzzReport:
    """`runs` fresh worlds of twelve migration rounds each; stop at the first
    failure. `data_plane` "tokens": a token per page, and the data keeps to a
    page's first 8 bytes (hmmsim.data_plane)."""
    rep = DevAllocFuzzReport(seed=seed)
    master = random.Random(seed)
    for run in range(runs):
        rng = random.Random(master.getrandbits(63))
        k = Kernel(ram_bytes=64 << 20, hugetlb_pages=0, bugs=bugs, data_plane=data_plane)
        k.word_checks.append(strict_word_check)
        p = k.spawn("driver-client")
        rep.runs += 1
        try:
            dev = BuddyDevice(k)
            raw = p.mmap(0, (NPMD + 1) * PMD_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
            base = (raw + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
            p.madvise(raw, (NPMD + 1) * PMD_SIZE, MADV_HUGEPAGE)
            words = NPMD * PMD_SIZE // 4
            shadow = np.zeros(words, dtype=np.int32)
            for j in range(NPMD):
                k.thp_enabled = "madvise" if rng.random() < 0.6 else "never"
                lo, hi = j * PMD_SIZE // 4, (j + 1) * PMD_SIZE // 4
                shadow[lo:hi] = rng.randrange(1, 1 << 30) + np.arange(hi - lo)
                if data_plane == "tokens":  # only a page's first two words
                    shadow[lo:hi].reshape(-1, 1024)[:, 2:] = 0
                p.store_array(base + j * PMD_SIZE, shadow[lo:hi])
            k.thp_enabled = "madvise"
            for _ in range(12):
                rep.rounds += 1
                if rng.random() < 0.5:
                    first, n = rng.randrange(NPMD) * HPAGE_PMD_NR, HPAGE_PMD_NR
                else:
                    first = rng.randrange(NPMD * HPAGE_PMD_NR - 64)
                    n = rng.randint(1, 64)
                start = base + first * PAGE_SIZE
                rep.migrated += _migrate(k, p, dev, start, n, to_device=rng.random() < 0.5)
                check_bytes(p, base, shadow)
                check_invariants(k)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            rep.failure = f"run {run}: {type(e).__name__}: {e}"
            break
    return rep

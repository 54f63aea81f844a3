"""A GPU-like device driver on the kernel's HMM driver API (issue 17).

Not a model of one kernel file: a driver of our own, shaped after the HMM
drivers in and out of the tree (nouveau's nouveau_svm.c/nouveau_dmem.c,
amdkfd's kfd_svm.c/kfd_migrate.c, xe's xe_svm.c on drm_gpusvm.c, NVIDIA's
uvm_hmm.c), built on the kernel at torvalds/linux 0eaed89c18ae. It uses
only what a real driver may call:

- device memory: ``memremap_pages`` (``memremap_device_private_pagemap``
  under series (c)) with a MEMORY_DEVICE_PRIVATE ``dev_pagemap`` per 2 MiB
  root chunk, ``dev_pagemap_ops.folio_free`` and ``.migrate_to_ram``,
  ``zone_device_folio_init`` to hand out a page;
- the device page table: an ``mmu_interval_notifier`` over the whole mm
  (insert / read_begin / read_retry, an ``invalidate`` callback that drops
  the device mappings of the range and sets the sequence), filled through
  ``hmm_range_fault`` with ``dev_private_owner`` = the device;
- migration to the device: ``migrate_vma_setup`` / ``migrate_vma_pages`` /
  ``migrate_vma_finalize`` (MIGRATE_VMA_SELECT_SYSTEM);
- CPU faults on device pages: ``migrate_to_ram`` with
  MIGRATE_VMA_SELECT_DEVICE_PRIVATE and ``fault_page``;
- eviction when device memory is full: ``migrate_device_range`` /
  ``migrate_device_pages`` / ``migrate_device_finalize`` on a victim root
  chunk the policy picks.

Device memory has bytes of its own (``vram``: one NumPy row of 4096 bytes per
device page, allocated per root chunk; one 64-bit token per page with the
token data plane, hmmsim.data_plane), so the data moves with every
migration and can be checked end to end.

A replayable fault buffer (``GpuFaultBuffer``) collects device accesses that
miss the device page table; ``GpuDevice.service_faults`` services a batch:
deduplicate per page, ask the policy for the migration region and prefetch,
make room (evict), migrate, map, and report what it did (``ServiceResult``)
so that a simulator can charge time for it. Nothing here knows about time.

Simplifications: one device, order-0 device pages only (migration
granularities of 64 KiB and 2 MiB are runs of 4 KiB pages migrated in one
``migrate_vma`` window; the series (d) compound path, device THPs mapped by
a device-private PMD, is not used); the device page table is a dict keyed by
VA page number; the device never maps system memory it did not ask for, and
maps a system page (remote access) only where migration failed.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from hmmsim.errno import EBUSY, EFAULT
from hmmsim.include.hmm import hmm_range
from hmmsim.include.memremap import MEMORY_DEVICE_PRIVATE, dev_pagemap, dev_pagemap_ops
from hmmsim.include.migrate import (
    MIGRATE_PFN_COMPOUND,
    MIGRATE_PFN_DEVICE_PRIVATE,
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_VALID,
    MIGRATE_PFN_WRITE,
    MIGRATE_VMA_SELECT_COMPOUND,
    MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
    MIGRATE_VMA_SELECT_SYSTEM,
    migrate_pfn_array,
    migrate_pfn_to_pfn_array,
    migrate_vma,
)
from hmmsim.include.mm import VM_FAULT_OOM, VM_FAULT_SIGBUS, VM_READ
from hmmsim.include.mm_types import Page, PG_head, folio_nr_pages, folio_order, page_folio
from hmmsim.include.mmu_notifier import mmu_notifier_range_blockable
from hmmsim.kconfig import HPAGE_PMD_ORDER, PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from hmmsim.locking import Lock, folio_lock
from hmmsim.mm.hmm import hmm_pfn_to_page, hmm_range_fault
from hmmsim.mm.memremap import (
    device_private_offset_to_page,
    is_device_private_page,
    memremap_device_private_pagemap,
    memremap_pages,
    memunmap_device_private_pagemap,
    memunmap_pages,
    page_pgmap,
    zone_device_folio_init,
)
from hmmsim.mm.migrate import migrate_pfn, migrate_pfn_from_page, migrate_pfn_to_page
from hmmsim.mm.migrate_device import (
    migrate_device_finalize,
    migrate_device_pages,
    migrate_device_range,
    migrate_vma_finalize,
    migrate_vma_pages,
    migrate_vma_setup,
)
from hmmsim.mm.mmap import vma_lookup
from hmmsim.mm.mmu_notifier import (
    mmu_interval_notifier,
    mmu_interval_notifier_insert,
    mmu_interval_notifier_remove,
    mmu_interval_read_begin,
    mmu_interval_read_retry,
    mmu_interval_set_seq,
)
from hmmsim.mm.page_alloc import GFP_HIGHUSER_MOVABLE
from hmmsim.mm.page_batch import (
    folio_lock_pages,
    zone_device_pages_init,
    zone_device_pages_init_would_warn,
)

#: NVIDIA UVM's root chunk: device memory is managed in 2 MiB chunks
#: (uvm_pmm_gpu.h UVM_CHUNK_SIZE_MAX); eviction works on whole root chunks.
GPU_ROOT_CHUNK_SIZE = 2 << 20
CHUNK_PAGES = GPU_ROOT_CHUNK_SIZE >> PAGE_SHIFT
#: uvm_gpu_replayable_faults.c UVM_PERF_FAULT_BATCH_COUNT_DEFAULT
FAULT_BATCH_COUNT = 256
#: Access counters (uvm_gpu_access_counters.c): remote accesses are counted
#: per region of UVM_PERF_ACCESS_COUNTER_GRANULARITY (2 MiB); a region whose
#: count reaches uvm_perf_access_counter_threshold
#: (UVM_PERF_ACCESS_COUNTER_THRESHOLD_DEFAULT 256) raises a notification
#: carrying a mask of the UVM_SUB_GRANULARITY_REGIONS (32) sub-regions that
#: were accessed; the counter is cleared once the notification is serviced.
AC_GRANULARITY = 2 << 20
AC_THRESHOLD = 256
AC_SUB_REGIONS = 32
#: the largest migrate_vma window the driver builds (one PMD's worth)
MIGRATE_WINDOW = 512
GPU_RANGE_FAULT_RETRIES = 1000
ULONG_MAX = (1 << 64) - 1
TAG_READ = 0
TAG_WRITE = 3  # the invariant checker's writable tag (as dmirror's DPT_XA_TAG_WRITE)

#: kernel paths named in the "why it moved" log
PATH_TO_DEVICE = "migrate_vma_setup/migrate_vma_pages/migrate_vma_finalize (SELECT_SYSTEM)"
PATH_TO_RAM = (
    "do_swap_page -> dev_pagemap_ops.migrate_to_ram -> "
    "migrate_vma_setup/pages/finalize (SELECT_DEVICE_PRIVATE, fault_page)"
)
PATH_EVICT = "migrate_device_range/migrate_device_pages/migrate_device_finalize"
PATH_ACCESS_COUNTER = "access counter notification -> " + PATH_TO_DEVICE


class GpuNoMemory(Exception):
    """Device memory cannot be made free (every chunk is busy with the batch)."""


# --- device memory ----------------------------------------------------------------------------
class GpuChunk:
    """One 2 MiB root chunk: its dev_pagemap, bytes and LRU stamps.

    Fields: pagemap; index (allocation order); vram (CHUNK_PAGES x 4096
    bytes, or TokenPages of CHUNK_PAGES tokens: k.mem.new_frames); used
    (device pages handed out and not yet freed); last_alloc and last_access
    (the device's own clocks, in service sequence numbers: the policy's LRU
    reads them).
    """

    __slots__ = ("pagemap", "index", "vram", "used", "last_alloc", "last_access", "first", "pages")

    def __init__(self, index: int, vram=None) -> None:
        self.pagemap = dev_pagemap()
        self.index = index
        # the kernel's data plane (k.mem.new_frames): bytes, or one token a page
        self.vram = np.zeros((CHUNK_PAGES, PAGE_SIZE), dtype=np.uint8) if vram is None else vram
        self.used = 0
        self.last_alloc = 0
        self.last_access = 0
        self.first = 0  # index of the first page (PFN, or series (c) offset)
        self.pages = None  # the struct pages' PageArrays (set once memremapped)

    def __repr__(self) -> str:
        return f"<GpuChunk {self.index} used={self.used}>"


@dataclass
class MoveRecord:
    """One page that moved: why, which way, through which kernel path."""

    t: float  # the device's timestamp (GpuDevice.now(): a service count, or sim time)
    vpn: int
    direction: str  # "h2d" or "d2h"
    reason: str  # "fault", "prefetch", "access-counter", "eviction", "cpu-fault"
    path: str


@dataclass
class ServiceResult:
    """What one fault batch did (the simulator charges time for it)."""

    faults: int = 0  # entries taken from the buffer
    unique: int = 0  # after per-page dedup
    migrated_fault: int = 0  # pages migrated to the device because they faulted
    migrated_prefetch: int = 0  # pages migrated to the device by prefetch / granularity
    migrated_ac: int = 0  # pages migrated to the device on access counter notifications
    notifications: int = 0  # access counter notifications serviced
    mapped: int = 0  # device page-table entries written
    remote: int = 0  # faulting pages mapped in system memory (migration failed)
    evicted_pages: int = 0
    evicted_chunks: int = 0
    windows: int = 0  # migrate_vma calls
    range_faults: int = 0  # hmm_range_fault calls
    failed: int = 0  # faults that could not be resolved (-EFAULT)
    throttled: int = 0  # faults on thrashing pages the policy throttled
    pinned: int = 0  # faults on pinned pages: mapped remotely, not migrated
    vpns: list = field(default_factory=list)  # unique faulting vpns
    moved: list = field(default_factory=list)  # vpns that moved to the device


class GpuFaultBuffer:
    """The replayable fault buffer: entries (vpn, write) in arrival order."""

    def __init__(self, batch: int = FAULT_BATCH_COUNT) -> None:
        self.batch = batch
        self.entries: list[tuple[int, bool]] = []

    def push(self, vpn: int, write: bool) -> bool:
        """Record a fault; True when a batch is ready to service."""
        self.entries.append((vpn, write))
        return len(self.entries) >= self.batch

    def __len__(self) -> int:
        return len(self.entries)

    def fetch(self) -> list[tuple[int, bool]]:
        """Take up to one batch of entries (the oldest)."""
        out, self.entries = self.entries[: self.batch], self.entries[self.batch :]
        return out


class GpuDevice:
    """The device: memory in root chunks, one mirrored address space, faults.

    `policy` is an object with the hooks of hmmsim.sim.policy.Policy
    (fault_region, prefetch, victim, cpu_region_pages, optionally
    thrash_decision); None means on-demand 4 KiB with LRU eviction.
    `mem_bytes` is rounded down to whole root chunks (at least one). Chunks
    are memremapped on first use and unmapped by unbind().
    """

    def __init__(self, k, mem_bytes: int, policy=None, name: str = "gpu0") -> None:
        self.k = k
        self.name = name
        self.max_chunks = max(1, mem_bytes // GPU_ROOT_CHUNK_SIZE)
        self.chunks: list[GpuChunk] = []
        self.free: list[Page] = []
        self.policy = policy
        self.lock = Lock(k, f"{name}.lock")
        self.ops = dev_pagemap_ops(
            folio_free=self.gpu_folio_free, migrate_to_ram=self.gpu_migrate_to_ram
        )
        self.space: GpuVaSpace | None = None
        self.seq = 0  # service sequence (LRU clock)
        self.moves: list[MoveRecord] = []
        #: timestamps for the move log; a simulator installs its clock here
        self.now = lambda: float(self.seq)
        self.log_moves = True
        self.d2h_cpu = 0  # pages migrate_to_ram moved back
        self.cpu_faults = 0  # migrate_to_ram calls
        self.evicted_pages = 0
        self.evicted_chunks = 0
        self.compound_folios = 0  # order-9 device folios handed out
        self.compound_fallbacks = 0  # compound sources given small pages instead
        self.owner_of: dict[int, int] = {}  # device page index -> vpn it holds
        self.where: dict[int, int] = {}  # vpn -> device page index holding it
        self._used = 0  # device pages in use, all chunks (resident_pages)
        #: resident pages per address bin (track_residency), kept as `where` changes
        self.heat: np.ndarray | None = None
        self._heat_lo = 0
        self._heat_n = 1
        self._busy: set[int] = set()  # chunk indices not to evict in this batch
        self._res: list = []  # iomem regions of the chunks (without series (c))
        self._bases: list[int] = []  # sorted first page index of each chunk
        self._by_base: list[GpuChunk] = []
        #: thrashing detection state per vpn: [last event time, consecutive
        #: events within the lapse, throttles, pinned until] (policy-driven)
        self.thrash: dict[int, list] = {}
        #: per 2 MiB block (vpn // CHUNK_PAGES): [time of the last migration
        #: of a thrashing page (-1: none), epoch resets done]
        #: (uvm_perf_thrashing.c block_thrashing_info_t
        #: last_thrashing_time_stamp, thrashing_reset_count)
        self.thrash_blocks: dict[int, list] = {}
        #: access counters (policies with access_counters = True): remote
        #: accesses per region, the accessed sub-region mask per region, and
        #: the notifications (vpn, region, mask) waiting for service
        self.ac_counts: dict[int, int] = {}
        self.ac_masks: dict[int, int] = {}
        self.ac_notifications: list[tuple[int, int, int]] = []
        self.ac_remote = 0  # remote accesses counted
        #: container_of(pgmap, struct GpuChunk, pagemap): id(pgmap) -> chunk
        self.chunk_of_pgmap: dict[int, GpuChunk] = {}
        k.invariant_hooks.append(self.check)

    def __repr__(self) -> str:
        n = f"{len(self.chunks)}/{self.max_chunks}"
        return f"<GpuDevice {self.name} chunks={n} free={len(self.free)}>"

    # --- memory --------------------------------------------------------------------------
    @property
    def capacity_pages(self) -> int:
        return self.max_chunks * CHUNK_PAGES

    @property
    def resident_pages(self) -> int:
        return self._used

    def track_residency(self, lo: int, npages: int, nbins: int) -> None:
        """Keep `heat`: how many pages of [lo, lo + npages) are resident per
        bin of npages / nbins pages (for a residency heatmap without walking
        `where`)."""
        self._heat_lo, self._heat_n = lo, max(1, npages)
        self.heat = np.zeros(nbins, dtype=np.int64)
        for vpn in self.where:
            self._heat_add(vpn, 1)

    def _heat_add(self, vpn: int, d: int) -> None:
        v = vpn - self._heat_lo
        if 0 <= v < self._heat_n:
            self.heat[v * len(self.heat) // self._heat_n] += d

    def _set_where(self, vpn: int, pfn: int) -> None:
        if self.heat is not None and vpn not in self.where:
            self._heat_add(vpn, 1)
        self.where[vpn] = pfn

    def _add_chunk(self) -> int:
        """memremap one more root chunk; 0 or -errno."""
        k = self.k
        chunk = GpuChunk(len(self.chunks), k.mem.new_frames(CHUNK_PAGES))
        pgmap = chunk.pagemap
        pgmap.type = MEMORY_DEVICE_PRIVATE
        pgmap.nr_range = 1
        pgmap.ops = self.ops
        pgmap.owner = self
        if k.config.has("c"):
            pgmap.nr_pages = CHUNK_PAGES
            ret = memremap_device_private_pagemap(pgmap, 0, k=k)
        else:
            res = k.iomem.request_free_mem_region(GPU_ROOT_CHUNK_SIZE, self.name)
            if isinstance(res, int):
                return res
            pgmap.range.start, pgmap.range.end = res.start, res.end
            ret = memremap_pages(pgmap, 0, k=k)
            if ret < 0:
                k.iomem.release_mem_region(res)
                return ret
            self._res.append(res)
            ret = 0
        if ret < 0:
            return ret
        self.chunk_of_pgmap[id(pgmap)] = chunk
        chunk.first = pgmap.range.start >> PAGE_SHIFT
        if k.config.has("c"):
            chunk.pages = device_private_offset_to_page(chunk.first, k=k).a
        else:
            chunk.pages = k.mem.pfn_to_page(chunk.first).a
        self.chunks.append(chunk)
        a = chunk.pages
        i = bisect.bisect_right(self._bases, a.base)
        self._bases.insert(i, a.base)
        self._by_base.insert(i, chunk)
        # pop() takes from the end: keep the lowest page first out
        self.free.extend(Page(k, a, i) for i in range(CHUNK_PAGES - 1, -1, -1))
        return 0

    def chunk_of_pfn(self, pfn: int) -> GpuChunk | None:
        """The chunk whose pages include index pfn."""
        i = bisect.bisect_right(self._bases, pfn) - 1
        if i >= 0:
            chunk = self._by_base[i]
            if pfn < self._bases[i] + CHUNK_PAGES:
                return chunk
        return None

    def alloc_page(self) -> Page | None:
        """A locked device page with one reference, or None if memory is full."""
        if not self.free and len(self.chunks) < self.max_chunks:
            if self._add_chunk():
                return None
        if not self.free:
            return None
        page = self.free.pop()
        zone_device_folio_init(page, page_pgmap(page), 0)
        chunk = self.chunk_of_pgmap[id(page_pgmap(page))]
        chunk.used += 1
        self._used += 1
        chunk.last_alloc = self.seq
        chunk.last_access = self.seq
        return page

    def alloc_pages_bulk(self, m: int) -> list[Page] | None:
        """m alloc_page() calls at once (Kernel.fastpath): the pages they
        would return, in order, fewer if device memory runs out; None when
        declined (nothing done). Chunks are added where alloc_page would add
        them (when the free list is empty); the pages of each chunk are
        initialised with mm/page_batch.zone_device_pages_init; a batch whose
        initialisation would warn goes through alloc_page one by one."""
        k = self.k
        if not k.fastpath:
            return None
        out: list[Page] = []
        while len(out) < m:
            if not self.free and len(self.chunks) < self.max_chunks:
                if self._add_chunk():
                    break
            if not self.free:
                break
            t = min(len(self.free), m - len(out))
            take = self.free[-t:]
            take.reverse()
            groups: dict[int, tuple] = {}
            for p in take:
                groups.setdefault(id(p.a), (p, []))[1].append(p.i)
            if any(zone_device_pages_init_would_warn(g[0].a, g[1], k=k) for g in groups.values()):
                if not out:
                    return None
                while len(out) < m and (page := self.alloc_page()) is not None:
                    out.append(page)
                return out
            del self.free[-t:]
            for first, idx in groups.values():
                zone_device_pages_init(first.a, idx, k=k)
                chunk = self.chunk_of_pgmap[id(page_pgmap(first))]
                chunk.used += len(idx)
                chunk.last_alloc = chunk.last_access = self.seq
            self._used += t
            out += take
        return out

    def alloc_folio(self) -> Page | None:
        """A whole free root chunk as one locked order-9 device folio (the
        series (d) compound path), or None if no chunk is entirely free."""
        chunk = next((c for c in self.chunks if c.used == 0), None)
        if chunk is None and len(self.chunks) < self.max_chunks:
            if self._add_chunk():
                return None
            chunk = self.chunks[-1]
        if chunk is None:
            return None
        a = chunk.pages
        self.free = [p for p in self.free if p.a is not a]
        head = Page(self.k, a, 0)
        zone_device_folio_init(head, page_pgmap(head), HPAGE_PMD_ORDER)
        chunk.used = CHUNK_PAGES
        self._used += CHUNK_PAGES
        chunk.last_alloc = chunk.last_access = self.seq
        self.compound_folios += 1
        return head

    def make_room_chunk(self, res: ServiceResult | None = None) -> None:
        """Evict a victim chunk unless a chunk is entirely free (or can be added)."""
        if len(self.chunks) < self.max_chunks or any(c.used == 0 for c in self.chunks):
            return
        cands = [c for c in self.chunks if c.index not in self._busy]
        if not cands:
            return
        victim = self.policy.victim(cands) if self.policy is not None else None
        if victim is None:
            victim = min(cands, key=lambda c: (c.last_access, c.index))
        n = self.evict_chunk(victim)
        if res is not None:
            res.evicted_pages += n
            res.evicted_chunks += 1

    def free_pages_available(self) -> int:
        return len(self.free) + (self.max_chunks - len(self.chunks)) * CHUNK_PAGES

    def gpu_folio_free(self, folio) -> None:
        """dev_pagemap_ops.folio_free: the device page is free again."""
        chunk = self.chunk_of_pgmap[id(page_pgmap(folio))]
        n = folio_nr_pages(folio)
        with self.lock:
            chunk.used -= n
            self._used -= n
            # a large folio's head goes on the free list last, so it is handed
            # out (and re-initialised as an order-0 folio, clearing its
            # compound state) before any of its old tails
            for j in range(n - 1, -1, -1):
                page = folio if not j else Page(self.k, folio.a, folio.i + j)
                vpn = self.owner_of.pop(page.pfn, None)
                if vpn is not None and self.where.get(vpn) == page.pfn:
                    del self.where[vpn]
                    if self.heat is not None:
                        self._heat_add(vpn, -1)
                self.free.append(page)

    def vram_row(self, page: Page) -> np.ndarray:
        return self.chunk_of_pgmap[id(page_pgmap(page))].vram[page.i]

    # --- first words of pages, in bulk (a simulator's data check) -----------------------
    def load_words(self, chunks: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The first 8 bytes (as uint64) of device pages: page rows[j] of
        root chunk chunks[j] (GpuChunk.index)."""
        out = np.zeros(len(rows), dtype=np.uint64)
        for c in np.unique(chunks).tolist():
            sel = chunks == c
            out[sel] = self.chunks[c].vram[rows[sel], :8].copy().view(np.uint64)[:, 0]
        return out

    def store_words(self, chunks: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
        """Store values[j] in the first 8 bytes of device page rows[j] of
        chunk chunks[j] (no two j name the same page)."""
        for c in np.unique(chunks).tolist():
            sel = chunks == c
            v = np.ascontiguousarray(values[sel], dtype=np.uint64)
            self.chunks[c].vram[rows[sel], :8] = v.view(np.uint8).reshape(-1, 8)

    # --- eviction -----------------------------------------------------------------------
    def make_room(self, npages: int, res: ServiceResult | None = None) -> None:
        """Evict victim chunks until npages device pages are free."""
        while self.free_pages_available() < npages:
            cands = [c for c in self.chunks if c.used and c.index not in self._busy]
            if not cands:
                # last resort: a chunk this batch uses (its pages go back to
                # system memory and are mapped from there, or fault again)
                cands = [c for c in self.chunks if c.used]
            if not cands:
                raise GpuNoMemory(f"{self.name}: no chunk to evict for {npages} pages")
            victim = self.policy.victim(cands) if self.policy is not None else None
            if victim is None:
                victim = min(cands, key=lambda c: (c.last_access, c.index))
            n = self.evict_chunk(victim)
            if res is not None:
                res.evicted_pages += n
                res.evicted_chunks += 1

    def evict_chunk(self, chunk: GpuChunk) -> int:
        """Move every page of a root chunk back to system RAM; pages moved.

        Kernel API: migrate_device_range, migrate_device_pages,
        migrate_device_finalize (what dmirror_device_evict_chunk and
        nouveau_dmem_evict_chunk do).
        """
        k = self.k
        src = np.zeros(CHUNK_PAGES, dtype=np.uint64)
        dst = np.zeros(CHUNK_PAGES, dtype=np.uint64)
        migrate_device_range(src, chunk.first, CHUNK_PAGES, k=k, device_private=True)
        bulk = self._evict_alloc_bulk(chunk, src, dst)
        moved = [] if bulk is None else bulk
        for i in np.flatnonzero(src).tolist() if bulk is None else ():
            sv = int(src[i])
            spage = migrate_pfn_to_page(sv, k=k)
            if spage is None or not sv & MIGRATE_PFN_MIGRATE:
                continue
            order = folio_order(page_folio(spage)) if sv & MIGRATE_PFN_COMPOUND else 0
            dpage = k.mem.alloc_pages(order, GFP_HIGHUSER_MOVABLE)
            if dpage is None:
                raise MemoryError(f"{self.name} evict: no order-{order} system folio")
            folio_lock(dpage)
            d = migrate_pfn(dpage.pfn)
            if sv & MIGRATE_PFN_WRITE:
                d |= MIGRATE_PFN_WRITE
            if order:
                d |= MIGRATE_PFN_COMPOUND
            dst[i] = d
            nr = 1 << order
            k.mem.ram.frames[dpage.pfn : dpage.pfn + nr] = chunk.vram[spage.i : spage.i + nr]
            moved.append((i, spage.pfn, nr))
        migrate_device_pages(src, dst, CHUNK_PAGES, k=k)
        n = 0
        for i, pfn, nr in moved:
            if int(src[i]) & MIGRATE_PFN_MIGRATE:
                n += nr
                for j in range(nr):
                    vpn = self.owner_of.get(pfn + j, -1)
                    self._log(vpn, "d2h", "eviction", PATH_EVICT)
        migrate_device_finalize(src, dst, CHUNK_PAGES, k=k)
        self.evicted_pages += n
        self.evicted_chunks += 1
        return n

    def _evict_alloc_bulk(self, chunk: GpuChunk, src: np.ndarray, dst: np.ndarray):
        """The destination loop of evict_chunk for a chunk of order-0 pages:
        the same alloc_pages() calls (PhysMem.alloc_pages_order0_bulk hands
        out the same pages in the same order), folio_lock, dst words and
        copies, as arrays. [(slot, device pfn, 1)] or None (nothing done:
        Kernel.fastpath off, a compound slot, or allocations the bulk form
        does not take)."""
        k = self.k
        if not k.fastpath:  # the per-page loop: the differential tests' reference
            return None
        slots = np.flatnonzero(src)
        if not len(slots):
            return []
        sv = src[slots]
        if (sv & np.uint64(MIGRATE_PFN_COMPOUND)).any() or not (
            sv & np.uint64(MIGRATE_PFN_MIGRATE)
        ).all():
            return None
        # slot i of the range is page i of the chunk
        first = migrate_pfn_to_page(int(sv[0]), k=k)
        if first is None or first.a is not chunk.pages or first.i != int(slots[0]):
            return None
        pfns = k.mem.alloc_pages_order0_bulk(len(slots), GFP_HIGHUSER_MOVABLE)
        if pfns is None:
            return None
        folio_lock_pages(k.mem.ram.pages, pfns)
        d = migrate_pfn_array(pfns)
        dst[slots] = d | (sv & np.uint64(MIGRATE_PFN_WRITE))
        k.mem.ram.frames[pfns] = chunk.vram[slots]
        base = chunk.pages.base
        return [(i, base + i, 1) for i in slots.tolist()]

    def _log(self, vpn: int, direction: str, reason: str, path: str) -> None:
        if self.log_moves:
            self.moves.append(MoveRecord(self.now(), vpn, direction, reason, path))

    # --- binding a process ------------------------------------------------------------------
    def bind(self, proc) -> GpuVaSpace:
        """Mirror proc's address space (what opening a device file does)."""
        if self.space is not None:
            raise ValueError(f"{self.name} mirrors one address space")
        space = GpuVaSpace(self, proc.mm)
        ret = mmu_interval_notifier_insert(space.notifier, proc.mm, 0, ULONG_MAX & PAGE_MASK, space)
        if ret:
            raise OSError(-ret, "mmu_interval_notifier_insert")
        self.space = space
        return space

    def unbind(self) -> None:
        """Evict everything, drop the notifier and the chunks."""
        space = self.space
        for chunk in list(self.chunks):
            if chunk.used:
                self.evict_chunk(chunk)
        if space is not None:
            mmu_interval_notifier_remove(space.notifier)
            space.pt.clear()
            self.space = None
        k = self.k
        for chunk in self.chunks:
            if k.config.has("c"):
                memunmap_device_private_pagemap(chunk.pagemap, k=k)
            else:
                memunmap_pages(chunk.pagemap, k=k)
        for res in self._res:
            k.iomem.release_mem_region(res)
        self._res = []
        self.chunks = []
        self.chunk_of_pgmap.clear()
        self.free = []
        self._bases, self._by_base = [], []

    # --- migrate_to_ram -------------------------------------------------------------------
    def gpu_migrate_to_ram(self, vmf) -> int:
        """dev_pagemap_ops.migrate_to_ram: a CPU fault on one of our pages.

        Migrates the policy's CPU region around the fault (4 KiB by default)
        back to system RAM with MIGRATE_VMA_SELECT_DEVICE_PRIVATE; the
        faulting page is passed as fault_page, locked by do_swap_page.
        """
        k = self.k
        vma = vmf.vma
        npages = 1
        if self.policy is not None:
            npages = max(1, self.policy.cpu_region_pages())
        flags = MIGRATE_VMA_SELECT_DEVICE_PRIVATE
        if vmf.pte is None and folio_order(page_folio(vmf.page)):
            # a device-private PMD: the whole folio comes back (series (d))
            npages = max(npages, 1 << folio_order(page_folio(vmf.page)))
            flags |= MIGRATE_VMA_SELECT_COMPOUND
        size = npages << PAGE_SHIFT
        start = max(vmf.address & ~(size - 1), vma.vm_start)
        end = min((vmf.address & ~(size - 1)) + size, vma.vm_end)
        n = (end - start) >> PAGE_SHIFT
        src = [0] * n
        dst = [0] * n
        args = migrate_vma(
            vma=vma,
            src=src,
            dst=dst,
            start=start,
            end=end,
            pgmap_owner=self,
            flags=flags,
            fault_page=vmf.page,
        )
        if migrate_vma_setup(args):
            return VM_FAULT_SIGBUS
        self.cpu_faults += 1
        sizes = {}
        for i in range(n):
            s = int(src[i])
            spage = migrate_pfn_to_page(s, k=k)
            if spage is None or not s & MIGRATE_PFN_MIGRATE or not is_device_private_page(spage):
                continue
            order = folio_order(page_folio(spage)) if s & MIGRATE_PFN_COMPOUND else 0
            dpage = k.mem.alloc_pages(order, GFP_HIGHUSER_MOVABLE)
            if dpage is None:
                migrate_vma_finalize(args)
                return VM_FAULT_OOM
            folio_lock(dpage)
            d = migrate_pfn(dpage.pfn)
            if s & MIGRATE_PFN_WRITE:
                d |= MIGRATE_PFN_WRITE
            if order:
                d |= MIGRATE_PFN_COMPOUND
            dst[i] = d
            nr = 1 << order
            sizes[i] = nr
            chunk = self.chunk_of_pgmap[id(page_pgmap(spage))]
            k.mem.ram.frames[dpage.pfn : dpage.pfn + nr] = chunk.vram[spage.i : spage.i + nr]
        migrate_vma_pages(args)
        for i, nr in sizes.items():
            if int(src[i]) & MIGRATE_PFN_MIGRATE and dst[i]:
                for j in range(nr):
                    vpn = (start >> PAGE_SHIFT) + i + j
                    self.d2h_cpu += 1
                    self.note_migration(vpn)
                    self._log(vpn, "d2h", "cpu-fault", PATH_TO_RAM)
        migrate_vma_finalize(args)
        return 0

    # --- fault service ------------------------------------------------------------------
    def service_faults(self, entries: list[tuple[int, bool]]) -> ServiceResult:
        """Service one batch of (vpn, write) faults and map the pages.

        Dedup per page (a write wins), then per unique fault: the policy's
        migration region around it plus its prefetch pages; pages not yet on
        the device move there in migrate_vma windows, after evicting enough
        root chunks; finally each faulting page is mapped in the device page
        table through hmm_range_fault (a system page if it could not move).
        """
        space = self.space
        if space is None:
            raise ValueError(f"{self.name}: no address space bound")
        self.seq += 1
        res = ServiceResult(faults=len(entries))
        want: dict[int, bool] = {}
        for vpn, write in entries:
            want[vpn] = want.get(vpn, False) or bool(write)
        res.unique = len(want)
        res.vpns = list(want)
        policy = self.policy
        mm = space.mm
        # pages to move: the region around each fault, then prefetch
        move: dict[int, str] = {}
        for vpn in want:
            region = policy.fault_region(space, vpn) if policy is not None else (vpn, vpn + 1)
            for v in range(*region):
                move.setdefault(v, "prefetch")
            move[vpn] = "fault"
        if policy is not None:
            for v in policy.prefetch(space, set(want)):
                move.setdefault(v, "prefetch")
        if getattr(policy, "remote_first", False):
            # map in place: faults never migrate, access counters do
            move.clear()
        decide = getattr(policy, "thrash_decision", None)
        if decide is not None:
            now = self.now()
            for vpn in want:
                d = decide(self, vpn, now)
                if d == "pin":  # stays where it is; the device maps it remotely
                    res.pinned += 1
                    move.pop(vpn, None)
                elif d == "throttle":
                    res.throttled += 1
        todo = sorted(v for v in move if not space.resident(v) and space.mappable(v))
        # capacity: never ask for more than the device holds
        todo = self._fit(todo, want)
        # keep the chunks of resident faulting pages; make room for the whole
        # batch before migrating any of it
        self._busy = {c.index for c in map(space.chunk_of, want) if c is not None}
        try:
            mm.mmap_lock.down_read()
            try:
                self.make_room(len(todo), res)
                compound = bool(getattr(policy, "compound", False))
                for lo, hi in _runs(todo, MIGRATE_WINDOW):
                    whole = compound and hi - lo == CHUNK_PAGES and lo % CHUNK_PAGES == 0
                    if whole:
                        self.make_room_chunk(res)
                    self.make_room(hi - lo, res)
                    space.migrate_to_device(lo, hi, move, res, compound=whole)
            finally:
                mm.mmap_lock.up_read()
        finally:
            self._busy = set()
        for v in want:
            ch = space.chunk_of(v)
            if ch is not None:
                ch.last_access = self.seq
        # map the faulting pages and every page that moved here (prefetched
        # pages are mapped too, as UVM does, so they do not fault again)
        items = dict.fromkeys(res.moved, False)
        items.update(want)
        ret = space.map_pages(sorted(items.items()), res)
        if ret:
            res.failed += 1
        return res

    def _fit(self, todo: list[int], want: dict[int, bool]) -> list[int]:
        """Keep the faulting pages first if the batch wants more than the device holds."""
        cap = self.capacity_pages
        if len(todo) <= cap:
            return todo
        faults = [v for v in todo if v in want]
        rest = [v for v in todo if v not in want]
        return sorted((faults + rest)[:cap])

    # --- device accesses --------------------------------------------------------------
    def access(self, vpn: int, write: bool) -> str:
        """A device access: "local" (device page), "remote" (system page) or "miss"."""
        space = self.space
        e = space.pt.get(vpn)
        if e is None or (write and e[1] != TAG_WRITE):
            return "miss"
        page = e[0]
        if is_device_private_page(page):
            ch = self.chunk_of_pgmap[id(page_pgmap(page))]
            if self.policy is None or getattr(self.policy, "lru", "access") == "access":
                ch.last_access = self.seq
            return "local"
        st = self.thrash.get(vpn)
        if st is not None and 0 <= st[3] <= self.now():
            # the pin expired: unmap, so that the next access faults and migrates
            st[3] = -1.0
            del space.pt[vpn]
            return "miss"
        if self.policy is not None and getattr(self.policy, "access_counters", False):
            self.count_remote(vpn)
        return "remote"

    # --- access counters -----------------------------------------------------------------
    def count_remote(self, vpn: int) -> bool:
        """Count one remote access (the device read or wrote a system page it
        maps); True when it made the region's counter reach the threshold and
        a notification was queued.

        The model counts per virtual region (the hardware's MIMC counters
        track the physical address and the driver translates back; with one
        anonymous buffer the two differ only in which pages share a counter).
        """
        pol = self.policy
        gran = getattr(pol, "ac_granularity", AC_GRANULARITY) >> PAGE_SHIFT
        region = vpn // gran
        self.ac_remote += 1
        n = self.ac_counts.get(region, 0) + 1
        sub = (vpn % gran) * AC_SUB_REGIONS // gran
        mask = self.ac_masks.get(region, 0) | (1 << sub)
        if n >= getattr(pol, "ac_threshold", AC_THRESHOLD):
            self.ac_notifications.append((vpn, region, mask))
            # cleared when serviced (access_counter_clear_notifications)
            self.ac_counts[region] = 0
            self.ac_masks[region] = 0
            return True
        self.ac_counts[region] = n
        self.ac_masks[region] = mask
        return False

    def service_access_counters(self) -> ServiceResult:
        """Service the queued notifications: the policy's
        access_counter_pages names the pages of each one to migrate
        (by default what uvm_gpu_access_counters.c expand_notification_block
        does); those not on the device move there through migrate_vma_*
        (evicting first if needed) and are mapped in the device page table."""
        space = self.space
        notes, self.ac_notifications = self.ac_notifications, []
        res = ServiceResult(notifications=len(notes))
        if space is None or not notes:
            return res
        self.seq += 1
        pol = self.policy
        gran = getattr(pol, "ac_granularity", AC_GRANULARITY) >> PAGE_SHIFT
        move: dict[int, str] = {}
        for vpn, region, mask in notes:
            e = space.pt.get(vpn)
            if e is None or is_device_private_page(e[0]):
                continue  # stale: the page moved or was unmapped since
            huge = folio_order(page_folio(e[0])) >= HPAGE_PMD_ORDER
            pick = getattr(pol, "access_counter_pages", None)
            if pick is None:
                pages = expand_notification(vpn, region * gran, gran, mask, huge)
            else:
                pages = pick(space, vpn, region * gran, gran, mask, huge)
            for v in pages:
                move[v] = "access-counter"
        todo = sorted(v for v in move if not space.resident(v) and space.mappable(v))
        todo = todo[: self.capacity_pages]
        if not todo:
            return res
        mm = space.mm
        self._busy = set()
        try:
            mm.mmap_lock.down_read()
            try:
                self.make_room(len(todo), res)
                for lo, hi in _runs(todo, MIGRATE_WINDOW):
                    self.make_room(hi - lo, res)
                    space.migrate_to_device(lo, hi, move, res)
            finally:
                mm.mmap_lock.up_read()
        finally:
            self._busy = set()
        if res.moved:
            space.map_pages([(v, False) for v in sorted(res.moved)], res)
        return res

    def note_migration(self, vpn: int) -> None:
        """Record a migration of vpn for thrashing detection (policies that
        define thrash_lapse_us): consecutive migrations closer than the
        lapse count as thrashing events (uvm_perf_thrashing.c)."""
        lapse = getattr(self.policy, "thrash_lapse_us", None)
        if lapse is None:
            return
        t = self.now()
        st = self.thrash.get(vpn)
        if st is None:
            self.thrash[vpn] = [t, 1, 0, -1.0]
            return
        # a migration more than a lapse after the last one: the page is not
        # thrashing (any more); its event count starts again
        # (thrashing_event_cb -> thrashing_reset_page)
        st[1] = st[1] + 1 if t - st[0] <= lapse else 1
        st[0] = t
        if st[1] >= getattr(self.policy, "thrash_threshold", 3):
            blk = self.thrash_blocks.setdefault(vpn // CHUNK_PAGES, [-1.0, 0])
            blk[0] = t

    # --- invariants ----------------------------------------------------------------------
    def check(self, k) -> list[str]:
        """Invariant hook: each device page is free (refcount 0, on the free
        list) or in use (refcount > 0, counted in its chunk), and the device
        page table names only pages in use."""
        problems = []
        free = {p.pfn for p in self.free}
        if len(free) != len(self.free):
            problems.append(f"{self.name}: a device page is on the free list twice")
        for chunk in self.chunks:
            a = chunk.pages
            refs = a._refcount
            live = np.flatnonzero(refs)
            large = (a.flags[live] & np.uint32(PG_head)) != 0
            used = int(len(live) + ((1 << a.order[live][large].astype(np.int64)) - 1).sum())
            if used != chunk.used:
                problems.append(
                    f"{self.name}: chunk {chunk.index} counts {chunk.used} used pages, "
                    f"{used} have references"
                )
            for i in np.flatnonzero(refs).tolist():
                if a.base + i in free:
                    problems.append(f"{self.name}: page {a.base + i:#x} is free and referenced")
            nfree = sum(1 for p in self.free if p.a is a)
            if nfree + used != CHUNK_PAGES:
                problems.append(
                    f"{self.name}: chunk {chunk.index} has {nfree} free + {used} used pages"
                )
        if self.space is not None:
            for vpn, (page, _tag) in self.space.pt.items():
                if is_device_private_page(page) and not int(
                    page_folio(page).a._refcount[page_folio(page).i]
                ):
                    problems.append(
                        f"{self.name}: pt maps {vpn:#x} to free device page {page.pfn:#x}"
                    )
        return problems


def expand_notification(vpn: int, lo: int, npages: int, mask: int, huge: bool) -> list[int]:
    """The pages an access counter notification migrates, as
    uvm_gpu_access_counters.c expand_notification_block: when the system
    memory behind the region is one 2 MiB page, every page of each accessed
    sub-region (mask bit i covers pages [lo + i * npages / 32, ...)); else
    only the page whose access crossed the threshold."""
    if not huge:
        return [vpn]
    per = max(1, npages // AC_SUB_REGIONS)
    out = []
    for i in range(AC_SUB_REGIONS):
        if mask >> i & 1:
            out.extend(range(lo + i * per, lo + (i + 1) * per))
    return out


def _runs(vpns: list[int], limit: int):
    """Contiguous runs [lo, hi) of sorted vpns, at most `limit` long, not
    crossing a 2 MiB boundary (one migrate_vma window per PMD)."""
    i = 0
    n = len(vpns)
    while i < n:
        lo = vpns[i]
        j = i + 1
        while j < n and vpns[j] == vpns[j - 1] + 1 and j - i < limit and vpns[j] % CHUNK_PAGES:
            j += 1
        yield lo, vpns[j - 1] + 1
        i = j


class DevicePageTable(dict):
    """The device page table: vpn -> (Page, tag), a dict.

    After ``track(vpns)`` it also keeps NumPy columns for those pages (a
    simulator's batched hit test): ``kind`` (0 unmapped, 1 a device page,
    2 a system page), ``writable`` (tag TAG_WRITE), ``chunk`` and ``row``
    (root chunk index and page within it; for a system page, row is the
    PFN). Every store and removal goes through the dict methods below, so
    the columns always say what the dict says.
    """

    def __init__(self, device) -> None:
        super().__init__()
        self.device = device
        self.tvpns: np.ndarray | None = None
        self._lo = -1  # tvpns is the range [_lo, _lo + len) when _lo >= 0
        self.kind = np.zeros(0, dtype=np.int8)
        self.writable = np.zeros(0, dtype=bool)
        self.chunk = np.zeros(0, dtype=np.int32)
        self.row = np.zeros(0, dtype=np.int64)

    def track(self, vpns: np.ndarray) -> None:
        """Keep columns for the sorted, distinct vpns."""
        v = np.asarray(vpns, dtype=np.int64)
        n = len(v)
        self.tvpns = v
        self._lo = int(v[0]) if n and int(v[-1]) - int(v[0]) == n - 1 else -1
        self.kind = np.zeros(n, dtype=np.int8)
        self.writable = np.zeros(n, dtype=bool)
        self.chunk = np.full(n, -1, dtype=np.int32)
        self.row = np.zeros(n, dtype=np.int64)
        for vpn, e in self.items():
            self._note(vpn, e)

    def index(self, vpns: np.ndarray) -> np.ndarray:
        """Column index of each vpn (-1 where not tracked)."""
        v = np.asarray(vpns, dtype=np.int64)
        t = self.tvpns
        if t is None or not len(t):
            return np.full(len(v), -1, dtype=np.int64)
        if self._lo >= 0:
            i = v - self._lo
            return np.where((i >= 0) & (i < len(t)), i, -1)
        i = np.minimum(np.searchsorted(t, v), len(t) - 1)
        return np.where(t[i] == v, i, -1)

    def _one(self, vpn: int) -> int:
        t = self.tvpns
        if t is None:
            return -1
        if self._lo >= 0:
            i = vpn - self._lo
            return i if 0 <= i < len(t) else -1
        i = int(np.searchsorted(t, vpn))
        return i if i < len(t) and int(t[i]) == vpn else -1

    def _note(self, vpn: int, e) -> None:
        i = self._one(vpn)
        if i < 0:
            return
        page, tag = e
        self.writable[i] = tag == TAG_WRITE
        if is_device_private_page(page):
            self.kind[i] = 1
            self.chunk[i] = self.device.chunk_of_pgmap[id(page_pgmap(page))].index
            self.row[i] = page.i
        else:
            self.kind[i] = 2
            self.chunk[i] = -1
            self.row[i] = page.pfn

    def _drop(self, vpn: int) -> None:
        i = self._one(vpn)
        if i >= 0:
            self.kind[i] = 0

    def __setitem__(self, vpn, e) -> None:
        super().__setitem__(vpn, e)
        if self.tvpns is not None:
            self._note(vpn, e)

    def __delitem__(self, vpn) -> None:
        super().__delitem__(vpn)
        if self.tvpns is not None:
            self._drop(vpn)

    def pop(self, vpn, *default):
        e = super().pop(vpn, *default)
        if self.tvpns is not None:
            self._drop(vpn)
        return e

    def clear(self) -> None:
        super().clear()
        self.kind[:] = 0

    def setdefault(self, *a):  # not used: it would bypass the columns
        raise NotImplementedError("DevicePageTable.setdefault")

    def update(self, *a, **kw):  # likewise
        raise NotImplementedError("DevicePageTable.update")


class GpuVaSpace:
    """The device's mirror of one mm: its page table and interval notifier.

    Fields: device; mm; pt (vpn -> (Page, tag), tag TAG_WRITE where the
    device may write); notifier (covers the whole mm); mutex (the driver
    lock the invalidate callback and the mapping step take).
    """

    def __init__(self, device: GpuDevice, mm) -> None:
        self.device = device
        self.mm = mm
        self.pt = DevicePageTable(device)
        self.notifier = mmu_interval_notifier()
        self.mutex = Lock(device.k, f"{device.name}.mutex")
        self.invalidations = 0

    def __repr__(self) -> str:
        return f"<GpuVaSpace {self.device.name} pt={len(self.pt)}>"

    # the invariant checker reads device-private pages through this
    @staticmethod
    def backing_page(page):
        return None

    # --- the interval notifier ------------------------------------------------------------
    def invalidate(self, mni, r, cur_seq: int) -> bool:
        """mmu_interval_notifier_ops.invalidate: drop the device mappings of
        [start, end) (every event, our own migrations included)."""
        if mmu_notifier_range_blockable(r):
            self.mutex.lock()
        elif not self.mutex.trylock():
            return False
        mmu_interval_set_seq(mni, cur_seq)
        lo, hi = r.start >> PAGE_SHIFT, (r.end + PAGE_SIZE - 1) >> PAGE_SHIFT
        pt = self.pt
        if hi - lo > len(pt):
            for vpn in [v for v in pt if lo <= v < hi]:
                del pt[vpn]
        else:
            for vpn in range(lo, hi):
                pt.pop(vpn, None)
        self.invalidations += 1
        self.mutex.unlock()
        return True

    # --- queries ---------------------------------------------------------------------------
    def resident(self, vpn: int) -> bool:
        """Whether the driver put vpn's page on the device and still holds it.

        Driver bookkeeping (vpn -> device page, dropped in folio_free), as
        real drivers keep per-range residency; the CPU page table stays the
        authority: a stale answer only makes migrate_vma skip the page.
        """
        return vpn in self.device.where

    def mappable(self, vpn: int) -> bool:
        vma = vma_lookup(self.mm, vpn << PAGE_SHIFT)
        return vma is not None and bool(vma.vm_flags & VM_READ)

    def chunk_of(self, vpn: int):
        """The root chunk holding vpn's page on the device, or None."""
        pfn = self.device.where.get(vpn)
        return None if pfn is None else self.device.chunk_of_pfn(pfn)

    # --- migration to the device ----------------------------------------------------------
    def migrate_to_device(
        self, lo: int, hi: int, why: dict[int, str], res: ServiceResult, compound: bool = False
    ) -> None:
        """migrate_vma_* over [lo, hi) pages (one vma, caller holds mmap_lock).

        With `compound` (an aligned 2 MiB window) MIGRATE_VMA_SELECT_COMPOUND
        is set: a THP or an empty PMD comes as one compound slot, which gets
        a whole root chunk as an order-9 device folio, or, if no chunk is
        free, 512 small pages (the kernel then splits the source), as
        dmirror_migrate_alloc_and_copy does."""
        dev = self.device
        k = dev.k
        start, end = lo << PAGE_SHIFT, hi << PAGE_SHIFT
        vma = vma_lookup(self.mm, start)
        if vma is None:
            return
        end = min(end, vma.vm_end)
        n = (end - start) >> PAGE_SHIFT
        src = [0] * n
        dst = [0] * n
        args = migrate_vma(
            vma=vma,
            src=src,
            dst=dst,
            start=start,
            end=end,
            pgmap_owner=dev,
            flags=MIGRATE_VMA_SELECT_SYSTEM | (MIGRATE_VMA_SELECT_COMPOUND if compound else 0),
        )
        if migrate_vma_setup(args):
            return
        res.windows += 1
        big: dict[int, int] = {}  # slot -> pages of a compound destination
        i = n if self._alloc_and_copy_bulk(args, n) else 0
        while i < n:
            s = int(src[i])
            if s & MIGRATE_PFN_MIGRATE and s & MIGRATE_PFN_COMPOUND:
                i = self._alloc_compound(args, i, big)
                continue
            i += 1
            if not s & MIGRATE_PFN_MIGRATE:
                continue
            dpage = dev.alloc_page()
            if dpage is None:
                continue  # make_room reserved enough; a hole here stays on the CPU
            dev._busy.add(dev.chunk_of_pgmap[id(page_pgmap(dpage))].index)
            row = dev.vram_row(dpage)
            spage = migrate_pfn_to_page(s, k=k)
            if spage is not None:
                row[:] = k.mem.frame(spage.pfn)
            else:
                row[:] = 0  # a hole: a zeroed page
            dst[i - 1] = migrate_pfn_from_page(dpage) | (s & MIGRATE_PFN_WRITE)
        migrate_vma_pages(args)
        # the driver's bookkeeping per moved page, in slot order; the lookups
        # that do not change inside the window (thrashing lapse, move log,
        # heat bins, the tables) are taken once per window
        owner_of, where, moved = dev.owner_of, dev.where, res.moved
        thrash = getattr(dev.policy, "thrash_lapse_us", None) is not None
        log = dev.log_moves
        heat = dev.heat is not None
        nfault = nac = npre = 0
        for i in range(n):
            d = dst[i]
            if not (d and int(src[i]) & MIGRATE_PFN_MIGRATE):
                continue
            head_pfn = migrate_pfn_to_page(int(d), k=k).pfn
            for j in range(big.get(i, 1)):
                vpn = lo + i + j
                reason = why.get(vpn, "prefetch")
                if reason == "fault":
                    nfault += 1
                elif reason == "access-counter":
                    nac += 1
                else:
                    npre += 1
                pfn = head_pfn + j
                owner_of[pfn] = vpn
                moved.append(vpn)
                if thrash:
                    dev.note_migration(vpn)
                if heat and vpn not in where:
                    dev._heat_add(vpn, 1)
                where[vpn] = pfn
                if log:
                    dev._log(
                        vpn,
                        "h2d",
                        reason,
                        PATH_ACCESS_COUNTER if reason == "access-counter" else PATH_TO_DEVICE,
                    )
        res.migrated_fault += nfault
        res.migrated_ac += nac
        res.migrated_prefetch += npre
        migrate_vma_finalize(args)

    def _alloc_and_copy_bulk(self, args, n: int) -> bool:
        """The destination loop of migrate_to_device for a window of order-0
        slots, at once: alloc_pages_bulk for the MIGRATE slots in slot
        order (a slot left without a page, memory full, stays on the CPU as
        in the loop), the copies per chunk, the dst words. False (nothing
        done) for a compound slot, a source outside RAM, a short window or
        a declined allocation."""
        dev = self.device
        k = dev.k
        if not k.fastpath or n < 8:
            return False  # under 8 slots, so under 8 MIGRATE slots: the loop, no array work
        src, dst = args.src, args.dst
        sv = np.asarray([int(x) for x in src[:n]], dtype=np.uint64)
        mig = (sv & np.uint64(MIGRATE_PFN_MIGRATE)) != 0
        if (sv[mig] & np.uint64(MIGRATE_PFN_COMPOUND)).any():
            return False
        slots = np.flatnonzero(mig)
        if len(slots) < 8:
            return False
        valid = (sv[slots] & np.uint64(MIGRATE_PFN_VALID)) != 0
        pfns = migrate_pfn_to_pfn_array(sv[slots])
        if valid.any() and (
            (sv[slots][valid] & np.uint64(MIGRATE_PFN_DEVICE_PRIVATE)).any()
            or int(pfns[valid].max()) >= k.mem.ram.pages.base + k.mem.ram.pages.nr
        ):
            return False
        pages = dev.alloc_pages_bulk(len(slots))
        if pages is None:
            return False
        got = len(pages)
        rows = np.fromiter((p.i for p in pages), dtype=np.int64, count=got)
        chunks = [dev.chunk_of_pgmap[id(page_pgmap(p))] for p in pages]
        cidx = np.fromiter((c.index for c in chunks), dtype=np.int64, count=got)
        dev._busy.update(cidx.tolist())
        v, f = valid[:got], pfns[:got]
        for c in np.unique(cidx).tolist():
            sel = cidx == c
            vram = dev.chunks[c].vram
            if (sel & v).any():
                vram[rows[sel & v]] = k.mem.ram.frames[f[sel & v]]
            if (sel & ~v).any():
                vram[rows[sel & ~v]] = 0  # holes: zeroed pages
        write = sv[slots] & np.uint64(MIGRATE_PFN_WRITE)
        for j, page in enumerate(pages):
            dst[int(slots[j])] = migrate_pfn_from_page(page) | int(write[j])
        return True

    def _alloc_compound(self, args, i: int, big: dict[int, int]) -> int:
        """Destinations for the compound source slot i; the next slot to look at."""
        dev = self.device
        k = dev.k
        src, dst = args.src, args.dst
        s = int(src[i])
        write = s & MIGRATE_PFN_WRITE
        spage = migrate_pfn_to_page(s, k=k)
        nr = CHUNK_PAGES if spage is None else folio_nr_pages(page_folio(spage))
        nr = min(nr, len(src) - i)
        head = dev.alloc_folio() if nr == CHUNK_PAGES else None
        if head is not None:
            dev._busy.add(dev.chunk_of_pgmap[id(page_pgmap(head))].index)
            vram = dev.chunk_of_pgmap[id(page_pgmap(head))].vram
            if spage is not None:
                vram[:nr] = k.mem.ram.frames[spage.pfn : spage.pfn + nr]
            else:
                vram[:nr] = 0
            dst[i] = migrate_pfn_from_page(head) | write | MIGRATE_PFN_COMPOUND
            big[i] = nr
            return i + nr
        dev.compound_fallbacks += 1
        for j in range(nr):  # no free chunk: small pages, the source is split
            dpage = dev.alloc_page()
            if dpage is None:
                break
            dev._busy.add(dev.chunk_of_pgmap[id(page_pgmap(dpage))].index)
            row = dev.vram_row(dpage)
            row[:] = k.mem.frame(spage.pfn + j) if spage is not None else 0
            dst[i + j] = migrate_pfn_from_page(dpage) | write
        return i + nr

    # --- mapping ------------------------------------------------------------------------------
    def map_pages(self, items: list[tuple[int, bool]], res: ServiceResult) -> int:
        """Map each (vpn, write) in the device page table via hmm_range_fault."""
        for lo, hi, write in _map_runs(items):
            ret = self._range_fault(lo, hi, write, res)
            if ret:
                return ret
        return 0

    def _range_fault(self, lo: int, hi: int, write: bool, res: ServiceResult) -> int:
        dev = self.device
        k = dev.k
        L = k.hmm
        if self.mm.dead:
            return -EFAULT
        n = hi - lo
        pfns = [0] * n
        r = hmm_range(
            notifier=self.notifier,
            start=lo << PAGE_SHIFT,
            end=hi << PAGE_SHIFT,
            hmm_pfns=pfns,
            default_flags=L.HMM_PFN_REQ_FAULT | (L.HMM_PFN_REQ_WRITE if write else 0),
            pfn_flags_mask=0,
            dev_private_owner=dev,
        )
        for _ in range(GPU_RANGE_FAULT_RETRIES):
            r.notifier_seq = mmu_interval_read_begin(self.notifier)
            self.mm.mmap_lock.down_read()
            try:
                ret = hmm_range_fault(r)
            finally:
                self.mm.mmap_lock.up_read()
            res.range_faults += 1
            if ret == -EBUSY:
                continue
            if ret:
                return ret
            self.mutex.lock()
            if mmu_interval_read_retry(self.notifier, r.notifier_seq):
                self.mutex.unlock()
                continue
            valid, error, writable = L.HMM_PFN_VALID, L.HMM_PFN_ERROR, L.HMM_PFN_WRITE
            pt = self.pt
            mapped = remote = 0
            for i in range(n):
                v = int(pfns[i])
                if not v & valid or v & error:
                    continue
                page = hmm_pfn_to_page(k, v)
                pt[lo + i] = (page, TAG_WRITE if v & writable else TAG_READ)
                mapped += 1
                if not is_device_private_page(page):
                    remote += 1
            res.mapped += mapped
            res.remote += remote
            self.mutex.unlock()
            return 0
        return -EBUSY

    def read_bytes(self, vpn: int) -> bytes:
        """The device's view of a mapped page (for tests): its 4096 bytes."""
        e = self.pt.get(vpn)
        if e is None:
            raise KeyError(f"vpn {vpn:#x} is not mapped on {self.device.name}")
        page = e[0]
        if is_device_private_page(page):
            return self.device.vram_row(page).tobytes()
        return self.device.k.mem.frame(page.pfn).tobytes()


def _map_runs(items: list[tuple[int, bool]]):
    """Contiguous runs of sorted (vpn, write) with one write flag each."""
    i = 0
    n = len(items)
    while i < n:
        lo, w = items[i]
        j = i + 1
        while (
            j < n
            and items[j][0] == items[j - 1][0] + 1
            and items[j][1] == w
            and j - i < MIGRATE_WINDOW
        ):
            j += 1
        yield lo, items[j - 1][0] + 1, w
        i = j


__all__ = [
    "AC_GRANULARITY",
    "AC_SUB_REGIONS",
    "AC_THRESHOLD",
    "CHUNK_PAGES",
    "FAULT_BATCH_COUNT",
    "GPU_ROOT_CHUNK_SIZE",
    "DevicePageTable",
    "GpuChunk",
    "GpuDevice",
    "GpuFaultBuffer",
    "GpuNoMemory",
    "GpuVaSpace",
    "MoveRecord",
    "ServiceResult",
]

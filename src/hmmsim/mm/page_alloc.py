"""Physical memory: frames with real bytes, struct page columns, buddy allocator.

Models: mm/page_alloc.c (buddy allocator, per-cpu lists, __free_pages,
prep_compound_page, boot-time watermarks and pcp sizes), mm/khugepaged.c
(set_recommended_min_free_kbytes), mm/mm_init.c (memmap init), mm/swap.c
(__folio_put) and the sparse vmemmap (pfn_to_page) @ torvalds/linux
0eaed89c18ae.

System RAM is one contiguous PFN range starting at 0; the frame store is a
NumPy array the OS commits lazily, so a Kernel with GiBs of modelled RAM is
cheap until pages are touched. Page-table pages are ordinary frames viewed
as 512 little-endian u64 words, as on x86-64. ZONE_DEVICE ranges are added
by memremap (later) as further `PageArrays`, with or without frame bytes.
With `KConfig(data_plane="tokens")` every page holds one u64 token instead
of its bytes and page tables keep their words in a store of their own
(hmmsim.data_plane: 8 bytes of host memory per page).

Per-CPU page lists (issue 13): the orders the kernel keeps on pcp lists
(0..PAGE_ALLOC_COSTLY_ORDER and the PMD order, pcp_allowed_order) are freed
onto one CPU's lists, one per (migratetype, order) as order_to_pindex lays
them out (MIGRATE_PCPTYPES per low order, two for the PMD order: movable or
not), and reused last-in-first-out; an allocation takes from the list of
its gfp's migratetype (gfp_migratetype: user pages GFP_HIGHUSER_MOVABLE,
page tables GFP_PGTABLE_USER, vmalloc GFP_KERNEL, test_hmm's backing pages
GFP_HIGHUSER, the last three unmovable); an empty list is refilled
from the buddy `batch` blocks at a time in address order (rmqueue_bulk), and
a list that reaches `high` is drained oldest-first back to the buddy
(free_pcppages_bulk), with the pinned tag's batch/high auto-tuning
(nr_pcp_alloc, nr_pcp_high, nr_pcp_free). `batch`, `high_min` and
`high_max` are what zone_set_pageset_high_and_batch computes at boot for one
zone holding all modelled RAM on a one-CPU machine; see `pcp_defaults`.

Differences from kernel: one zone, one node, one CPU; orders
0..HPAGE_PMD_ORDER only (MAX_PAGE_ORDER is 10 upstream); the buddy hands out
the lowest-addressed free block of the smallest order that fits instead of
the head of a list_head (the same PFNs as the kernel while a refill splits
one block, which comes out in address order either way).

One buddy for all migratetypes. The kernel's buddy keeps a free list per
(order, migratetype) too, a free block going to the list of its pageblock's
migratetype (get_pfnblock_migratetype; every pageblock starts MOVABLE at
boot, memmap_init_range), and an allocation that finds its own lists empty
falls back (__rmqueue_claim / __rmqueue_steal, fallbacks[]): it claims a
whole free pageblock (the largest free block first) or steals from another
type's. The model's buddy has no pageblock types: a refill of any list
takes the lowest free block of the smallest order that fits, and a freed
block goes to the pcp list of the migratetype it was allocated with
(`PhysMem.alloc_mt`), which is the kernel's pageblock type whenever the
allocation came from a pageblock of its own type. What differs: (1) the
first unmovable allocation of a fresh kernel claims a whole free pageblock
(from the highest order down, so a MAX_PAGE_ORDER block's first pageblock)
and later unmovable refills come from that pageblock, where the model
refills unmovable and movable lists from the same lowest free blocks, so
the two interleave in address order; (2) pages stolen without claiming the
pageblock are freed by the kernel to the pageblock's (other) type's pcp
list, by the model to their allocation's; (3) a drained unmovable page
merges in the kernel only within unmovable free lists of its pageblock
(buddies of one pageblock share a type), here with any free buddy, which
differs only when a pageblock changed type with pages on another type's
lists; (4) no MIGRATE_HIGHATOMIC / CMA / ISOLATE reserves and no
compaction. The pcp side (which list a page goes to and comes from, LIFO
per list, the drain's round robin over all 14 lists) is the kernel's.

No watermarks, reclaim or OOM killer: an allocation that finds no free block
drains the pcp lists once (as __alloc_pages_direct_reclaim does) and then
fails. Not modelled on the pcp side: ZONE_BELOW_HIGH / ZONE_RECLAIM_ACTIVE
(they need watermarks), decay_pcp_high and drain_zone_pages (vmstat timer
work), the trylock and PREEMPT_RT paths, and other CPUs. The lists start
empty (a booted kernel's hold whatever boot freed last), and
PCPF_FREE_HIGH_BATCH comes from an assumed cache size
(PER_CPU_DATA_SLICE_BYTES).
"""

from __future__ import annotations

import bisect
import heapq
import math

import numpy as np

from hmmsim.bug import KernelBug
from hmmsim.data_plane import TableWords, TokenPlaneError, frames_array  # noqa: F401 (re-exported)
from hmmsim.fast.arrays import distinct_values, has_duplicates  # noqa: F401 (re-exported)
from hmmsim.include.mm_types import (
    FOLIO_MAPPING_ANON,
    Page,
    PageArrays,
    PG_head,
    PG_hugetlb,
    PG_reserved,
    PG_zero,
    PGTY_buddy,
)
from hmmsim.kconfig import HPAGE_PMD_ORDER, PAGE_SHIFT, PAGE_SIZE

#: Allocation flags the model honours (include/linux/gfp_types.h names).
__GFP_RECLAIMABLE = 0x10
__GFP_MOVABLE = 0x08
__GFP_ZERO = 0x100
__GFP_COMP = 0x40000
GFP_KERNEL = 0xCC0
#: GFP_USER | __GFP_HIGHMEM (__GFP_HIGHMEM is 0x02): unmovable user-visible
#: pages, such as lib/test_hmm.c's device backing pages.
GFP_HIGHUSER = 0x100CC2
GFP_HIGHUSER_MOVABLE = 0x140CCA
#: GFP_PGTABLE_USER (include/asm-generic/pgalloc.h: GFP_KERNEL_ACCOUNT |
#: __GFP_ZERO; __GFP_ACCOUNT is 0x400000): unmovable.
GFP_PGTABLE_USER = GFP_KERNEL | 0x400000 | __GFP_ZERO
GFP_TRANSHUGE = GFP_HIGHUSER_MOVABLE | __GFP_COMP
#: the same bit, usable inside class bodies (where Python mangles __names)
GFP_ZERO_BIT = __GFP_ZERO

MAX_ORDER_MODELLED = HPAGE_PMD_ORDER
#: PFNs below this are firmware/kernel-image pages (PG_reserved, never freed).
RESERVED_PFNS = 1 << HPAGE_PMD_ORDER

# --- per-CPU page lists: constants and boot-time sizing ------------------------------
PAGE_ALLOC_COSTLY_ORDER = 3
#: CONFIG_PCP_BATCH_SCALE_MAX (mm/Kconfig default).
PCP_BATCH_SCALE_MAX = 5
MIN_PERCPU_PAGELIST_HIGH_FRACTION = 8
#: per_cpu_pages.flags (include/linux/mmzone.h).
PCPF_PREV_FREE_HIGH_ORDER = 1 << 0
PCPF_FREE_HIGH_BATCH = 1 << 1
#: include/linux/mmzone.h migratetypes with pcp lists.
MIGRATE_UNMOVABLE = 0
MIGRATE_MOVABLE = 1
MIGRATE_RECLAIMABLE = 2
MIGRATE_PCPTYPES = 3
#: The lists, as in the kernel: one per (migratetype, order) for orders
#: 0..PAGE_ALLOC_COSTLY_ORDER (pindex MIGRATE_PCPTYPES * order +
#: migratetype), then two for the PMD order (not movable, movable).
NR_LOWORDER_PCP_LISTS = MIGRATE_PCPTYPES * (PAGE_ALLOC_COSTLY_ORDER + 1)
NR_PCP_THP = 2
NR_PCP_LISTS = NR_LOWORDER_PCP_LISTS + NR_PCP_THP
#: vm.watermark_scale_factor default.
WATERMARK_SCALE_FACTOR = 10
PAGEBLOCK_NR_PAGES = 1 << HPAGE_PMD_ORDER  # pageblock_order == HPAGE_PMD_ORDER on x86-64
#: cacheinfo's per_cpu_data_slice_size the model assumes for its one CPU (the
#: whole last-level cache of a one-CPU machine, taken as 2 MiB); only compared
#: with 3 * batch pages to set PCPF_FREE_HIGH_BATCH (zone_pcp_update_cacheinfo).
PER_CPU_DATA_SLICE_BYTES = 2 << 20
#: 0 .. 2^o - 1 per order, for expanding block starts into pages.
_ARANGE = [np.arange(1 << o, dtype=np.int64) for o in range(HPAGE_PMD_ORDER + 1)]


def pcp_allowed_order(order: int) -> bool:
    """mm/page_alloc.c pcp_allowed_order (CONFIG_TRANSPARENT_HUGEPAGE=y)."""
    return order <= PAGE_ALLOC_COSTLY_ORDER or order == HPAGE_PMD_ORDER


def gfp_migratetype(gfp: int) -> int:
    """include/linux/gfp.h gfp_migratetype (page grouping by mobility on):
    __GFP_MOVABLE -> MIGRATE_MOVABLE, __GFP_RECLAIMABLE -> MIGRATE_RECLAIMABLE,
    else MIGRATE_UNMOVABLE."""
    if gfp & __GFP_MOVABLE:
        return MIGRATE_MOVABLE
    if gfp & __GFP_RECLAIMABLE:
        return MIGRATE_RECLAIMABLE
    return MIGRATE_UNMOVABLE


def order_to_pindex(order: int, migratetype: int = MIGRATE_UNMOVABLE) -> int:
    """mm/page_alloc.c order_to_pindex (CONFIG_TRANSPARENT_HUGEPAGE=y)."""
    if order > PAGE_ALLOC_COSTLY_ORDER:
        return NR_LOWORDER_PCP_LISTS + (migratetype == MIGRATE_MOVABLE)
    return MIGRATE_PCPTYPES * order + migratetype


def pindex_to_order(pindex: int) -> int:
    """mm/page_alloc.c pindex_to_order."""
    return HPAGE_PMD_ORDER if pindex >= NR_LOWORDER_PCP_LISTS else pindex // MIGRATE_PCPTYPES


def zone_batchsize(managed: int) -> int:
    """mm/page_alloc.c zone_batchsize (CONFIG_MMU): about 0.025% of the zone,
    at most 256 KiB, rounded down to 2^n - 1."""
    batch = min(managed >> 12, (256 << 10) // PAGE_SIZE)
    if batch <= 1:
        return 1
    v = batch + batch // 2
    return (1 << (v.bit_length() - 1)) - 1


def _zone_wmarks(managed: int, min_free_kbytes: int) -> tuple[int, int, int]:
    """__setup_per_zone_wmarks for a single lowmem zone: (min, low, high) pages."""
    pages_min = min_free_kbytes >> (PAGE_SHIFT - 10)
    wmin = pages_min * managed // managed  # the zone's share of pages_min: all of it
    step = max(wmin >> 2, managed * WATERMARK_SCALE_FACTOR // 10000)  # mult_frac
    return wmin, wmin + step, wmin + 2 * step


def zone_watermarks(managed: int, thp: bool = True) -> tuple[int, int, int, int]:
    """The boot-time watermarks of one zone of `managed` pages on a one-zone
    machine: (min_free_kbytes, min, low, high).

    init_per_zone_wmark_min: calculate_min_free_kbytes (4 * sqrt(lowmem KiB),
    clamped to 128..262144, nr_free_buffer_pages() being all managed pages
    before any watermark exists), setup_per_zone_wmarks. Then, with THP
    enabled ("always" or "madvise"), hugepage_init starts khugepaged, whose
    set_recommended_min_free_kbytes (mm/khugepaged.c) raises min_free_kbytes
    to 2 + MIGRATE_PCPTYPES^2 pageblocks per zone, at most 5% of the managed
    pages above the high watermark, and sets the watermarks again.
    """
    mfk = min(max(math.isqrt(managed * (PAGE_SIZE >> 10) * 16), 128), 262144)
    wm = _zone_wmarks(managed, mfk)
    if thp:
        rec = PAGEBLOCK_NR_PAGES * 2 + PAGEBLOCK_NR_PAGES * MIGRATE_PCPTYPES * MIGRATE_PCPTYPES
        rec = min(rec, max(managed - wm[2], 0) // 20) << (PAGE_SHIFT - 10)
        if rec > mfk:
            mfk = rec
            wm = _zone_wmarks(managed, mfk)
    return (mfk, *wm)


def zone_highsize(managed: int, low_wmark: int, batch: int, high_fraction: int) -> int:
    """mm/page_alloc.c zone_highsize with one CPU on the zone's node and
    cpu_online 0 (the last update at boot comes from setup_per_zone_wmarks):
    the low watermark, or managed / high_fraction, split over one CPU, at
    least 4 * batch."""
    total = managed // high_fraction if high_fraction else low_wmark
    nr_split_cpus = 1
    return max(total // nr_split_cpus, batch << 2)


def pcp_defaults(managed: int, thp: bool = True) -> tuple[int, int, int]:
    """(batch, high_min, high_max) as zone_set_pageset_high_and_batch sets
    them at boot with vm.percpu_pagelist_high_fraction 0 (auto-tuning on).

    For example 1 GiB of modelled RAM (261632 managed pages): batch 63,
    min_free_kbytes 22528 (raised by khugepaged), low watermark 7040, so
    high_min 7040 and high_max 32704; 256 MiB: 15, 4016, 8128; 32 MiB: 1,
    462, 960.
    """
    batch = zone_batchsize(managed)
    low = zone_watermarks(managed, thp)[2]
    return (
        batch,
        zone_highsize(managed, low, batch, 0),
        zone_highsize(managed, low, batch, MIN_PERCPU_PAGELIST_HIGH_FRACTION),
    )


class PerCpuPages:
    """struct per_cpu_pages of the one modelled CPU and zone.

    `lists[pindex]` is a Python list whose END is the list_head's head: a
    free appends (list_add), an allocation pops from the end
    (list_first_entry), a drain takes from the front (list_last_entry, the
    oldest), and a refill of an empty list stores the new blocks reversed
    (list_add_tail in address order). Entries are the blocks' first PFNs.
    """

    __slots__ = (
        "lists",
        "count",
        "high",
        "high_min",
        "high_max",
        "batch",
        "free_count",
        "alloc_factor",
        "flags",
    )

    def __init__(self, batch: int, high_min: int, high_max: int, flags: int = 0) -> None:
        self.lists: list[list[int]] = [[] for _ in range(NR_PCP_LISTS)]
        self.count = 0  # pages on the lists (a block of order o counts 1 << o)
        self.high = 0  # per_cpu_pages_init zeroes it; clamped on first use
        self.high_min = high_min
        self.high_max = high_max
        self.batch = batch
        self.free_count = 0
        self.alloc_factor = 0
        self.flags = flags

    def state(self) -> tuple:
        """Everything, as comparable values (for tests)."""
        return (
            [list(x) for x in self.lists],
            self.count,
            self.high,
            self.high_min,
            self.high_max,
            self.batch,
            self.free_count,
            self.alloc_factor,
            self.flags,
        )

    def __repr__(self) -> str:
        return (
            f"<PerCpuPages count={self.count} high={self.high} "
            f"[{self.high_min}, {self.high_max}] batch={self.batch}>"
        )


class MemRange:
    """A contiguous PFN range with struct pages and, if CPU-addressable, data.

    Fields: pages (the struct page columns); frames (the pages' contents:
    a (nr, 4096) uint8 array in the byte data plane, a `TokenPages` view of
    `tokens` in the token plane; None without a linear map); tokens (the
    token plane's one u64 per page, else None); words (RAM: the page-table
    words, a u64 view of frames in byte mode, `TableWords` in token mode);
    name; pgmap_id. See hmmsim.data_plane for the token semantics.
    """

    __slots__ = ("pages", "frames", "words", "tokens", "name", "pgmap_id")

    def __init__(
        self, base: int, nr: int, name: str, with_frames: bool, data_plane: str = "bytes"
    ) -> None:
        self.pages = PageArrays(base, nr)
        self.frames = frames_array(data_plane, nr) if with_frames else None
        if self.frames is None:
            self.tokens = self.words = None
        elif data_plane == "tokens":
            self.tokens = self.frames.tokens
            self.words = TableWords()
        else:
            self.tokens = None
            self.words = self.frames.view(np.uint64)
        self.name = name
        self.pgmap_id = 0

    @property
    def base(self) -> int:
        return self.pages.base

    @property
    def end(self) -> int:
        return self.pages.base + self.pages.nr

    def __repr__(self) -> str:
        return f"<MemRange {self.name} pfn [{self.base:#x}, {self.end:#x})>"


def _reset_to_buddy(p: PageArrays, pages, heads, flags: int = PGTY_buddy) -> None:
    """The struct page state of free buddy pages (`pages`: an index, slice or
    index array; `heads`: where the folio-head-only fields live). With
    flags 0: a free page on a pcp list (not PageBuddy, as in the kernel)."""
    p.flags[pages] = flags
    p.order[pages] = 0
    p.head_off[pages] = 0
    p.mapping[pages] = 0
    p.index[pages] = 0
    p._mapcount[pages] = -1
    p._entire_mapcount[heads] = -1
    p._large_mapcount[heads] = -1
    p.zone_device_data[pages] = 0


class FreeArea:
    """One order's free list: the start PFNs of its free blocks.

    The kernel hands out the block at the head of a list_head; the model
    hands out the lowest-addressed one (`pop`), so which block the buddy
    gives depends only on what is free on its lists, never on the order of
    earlier merges or on the host's set implementation: a seed replays the
    same on any Python. (The per-cpu lists in front of it are LIFO, as in
    the kernel.) A set answers membership; a heap with lazy deletion gives
    the lowest block. With `orders` (one int8 per RAM page, shared by all
    orders' lists: the order of the free block starting there, -1 if none;
    the kernel's buddy_order of a PageBuddy page) membership of many PFNs at
    once is one array lookup (`has_many`).
    """

    __slots__ = ("_set", "_heap", "order", "_orders")

    def __init__(self, order: int = 0, orders: np.ndarray | None = None) -> None:
        self._set: set[int] = set()
        self._heap: list[int] = []
        self.order = order
        self._orders = orders

    def add(self, pfn: int) -> None:
        self._set.add(pfn)
        heapq.heappush(self._heap, pfn)
        if self._orders is not None:
            self._orders[pfn] = self.order

    def discard(self, pfn: int) -> None:
        s = self._set
        if pfn not in s:
            return
        s.remove(pfn)
        if self._orders is not None:
            self._orders[pfn] = -1
        if len(self._heap) > 2 * len(s) + 64:  # drop stale heap entries
            self._heap = sorted(s)

    def add_many(self, pfns: list[int]) -> None:
        if not pfns:
            return
        self._set.update(pfns)
        h = self._heap
        if len(pfns) > 8 + len(h) // 8:
            h.extend(pfns)
            heapq.heapify(h)
        else:
            for pfn in pfns:
                heapq.heappush(h, pfn)
        if self._orders is not None:
            self._orders[pfns] = self.order

    def discard_many(self, pfns: list[int]) -> None:
        """Remove blocks that are on this list (all of them must be)."""
        if not pfns:
            return
        s = self._set
        s.difference_update(pfns)
        if self._orders is not None:
            self._orders[pfns] = -1
        if len(self._heap) > 2 * len(s) + 64:
            self._heap = sorted(s)

    def has_many(self, pfns: np.ndarray) -> np.ndarray:
        """Which of `pfns` (RAM PFNs) start a block on this list."""
        if self._orders is not None:
            return self._orders[pfns] == self.order
        s = self._set
        if not s:
            return np.zeros(len(pfns), dtype=bool)
        hits = s.intersection(pfns.tolist())
        return np.isin(pfns, np.fromiter(hits, dtype=np.int64, count=len(hits)))

    def pop(self) -> int:
        """Remove and return the lowest free block (KeyError if none)."""
        s, h = self._set, self._heap
        while h:
            pfn = heapq.heappop(h)
            if pfn in s:
                s.remove(pfn)
                if self._orders is not None:
                    self._orders[pfn] = -1
                return pfn
        raise KeyError("pop from an empty free area")

    def pop_lowest(self, t: int) -> list[int]:
        """The t lowest free blocks, ascending, removed (t pops at once).

        Taking a large share of the list sorts the set once instead of t
        heap pops; the heap is rebuilt from what is left (a sorted list is a
        heap)."""
        s = self._set
        if t > len(s):
            raise KeyError("pop_lowest: not that many free blocks")
        if t * 4 < len(s):
            return [self.pop() for _ in range(t)]
        if t == len(s):
            out = sorted(s)
            s.clear()
            self._heap = []
        else:
            rest = sorted(s)
            out, rest = rest[:t], rest[t:]
            s.difference_update(out)
            self._heap = rest
        if self._orders is not None:
            self._orders[out] = -1
        return out

    def __contains__(self, pfn: object) -> bool:
        return pfn in self._set

    def __len__(self) -> int:
        return len(self._set)

    def __bool__(self) -> bool:
        return bool(self._set)

    def __iter__(self):
        return iter(self._set)


class PhysMem:
    """All physical memory of one Kernel: RAM, device ranges, the buddy and
    per-cpu lists.

    Invariant: every free RAM page is either in a block on the buddy lists
    (a block of order o starts at a multiple of 1 << o, and all its pages
    carry PGTY_buddy) or in a block on a pcp list (no PGTY_buddy, as the
    kernel's pcp pages are not PageBuddy); all have _refcount 0 and
    _mapcount -1. `nr_free` counts both; the buddy's share is
    nr_free - pcp.count (the kernel's NR_FREE_PAGES).
    """

    def __init__(self, k, nr_ram_pages: int) -> None:
        self.k = k
        #: "bytes" or "tokens" (KConfig.data_plane; hmmsim.data_plane)
        self.data_plane = getattr(getattr(k, "config", None), "data_plane", "bytes")
        self.ram = MemRange(0, nr_ram_pages, "System RAM", True, self.data_plane)
        self.ranges: list[MemRange] = [self.ram]
        self._bases: list[int] = [0]
        #: free_area[order]: the start PFNs of free blocks of that order (RAM only).
        #: The order of the free buddy block starting at each RAM page, -1 if
        #: none (kept by the FreeAreas; the kernel's buddy_order of PageBuddy).
        self.buddy_orders = np.full(nr_ram_pages, -1, dtype=np.int8)
        self.free_area: list[FreeArea] = [
            FreeArea(o, self.buddy_orders) for o in range(MAX_ORDER_MODELLED + 1)
        ]
        self.nr_free = 0
        #: The migratetype each RAM page was last allocated with (every page of
        #: a block): a free goes to that pcp list. The kernel reads the
        #: pageblock's migratetype instead (get_pfnblock_migratetype); see
        #: the module docstring.
        self.alloc_mt = np.zeros(nr_ram_pages, dtype=np.uint8)
        #: Test hook: called with (order,) before each allocation; True fails it.
        self.should_fail_alloc = None
        #: Allocations that found no free block where the kernel would have
        #: run the OOM killer (mm/oom_kill.py gfp_may_oom); injected failures
        #: are not counted.
        self.nr_oom_failures = 0
        #: Pages the buddy was given at boot (zone_managed_pages).
        self.managed_pages = nr_ram_pages - RESERVED_PFNS
        batch, high_min, high_max = pcp_defaults(
            self.managed_pages, getattr(k, "thp_enabled", "madvise") != "never"
        )
        slice_pages = PER_CPU_DATA_SLICE_BYTES >> PAGE_SHIFT
        #: The one CPU's per-cpu pageset (zone->per_cpu_pageset).
        self.pcp = PerCpuPages(
            batch, high_min, high_max, PCPF_FREE_HIGH_BATCH if slice_pages > 3 * batch else 0
        )
        p = self.ram.pages
        p.flags[:RESERVED_PFNS] = PG_reserved
        p._refcount[:RESERVED_PFNS] = 1
        p.flags[RESERVED_PFNS:] = PGTY_buddy
        top = MAX_ORDER_MODELLED
        for pfn in range(RESERVED_PFNS, nr_ram_pages, 1 << top):
            self.free_area[top].add(pfn)
        self.nr_free = nr_ram_pages - RESERVED_PFNS
        # The shared zero page lives in the reserved (kernel image) area.
        self.zero_pfn = 1
        p.flags[self.zero_pfn] |= PG_zero

    # --- pfn -> page -----------------------------------------------------------------
    def add_range(self, base: int, nr: int, name: str, with_frames: bool) -> MemRange:
        """Register struct pages (and bytes) for [base, base + nr); no overlap."""
        for r in self.ranges:
            if base < r.end and r.base < base + nr:
                raise KernelBug(f"add_range: {name} overlaps {r!r}")
        r = MemRange(base, nr, name, with_frames, self.data_plane)
        i = bisect.bisect(self._bases, base)
        self.ranges.insert(i, r)
        self._bases.insert(i, base)
        return r

    def remove_range(self, r: MemRange) -> None:
        i = self.ranges.index(r)
        del self.ranges[i]
        del self._bases[i]

    def range_of(self, pfn: int) -> MemRange | None:
        if 0 <= pfn < self.ram.pages.nr:
            return self.ram
        i = bisect.bisect(self._bases, pfn) - 1
        if i >= 0 and pfn < self.ranges[i].end:
            return self.ranges[i]
        return None

    def pfn_valid(self, pfn: int) -> bool:
        return self.range_of(pfn) is not None

    def pfn_to_page(self, pfn: int) -> Page:
        ram = self.ram.pages
        if 0 <= pfn < ram.nr:
            return Page(self.k, ram, pfn)
        r = self.range_of(pfn)
        if r is None:
            raise KernelBug(f"pfn_to_page: pfn {pfn:#x} has no struct page")
        return Page(self.k, r.pages, pfn - r.base)

    def page_range(self, page: Page) -> MemRange:
        return self.range_of(page.a.base)

    # --- bytes ------------------------------------------------------------------------
    def frame(self, pfn: int) -> np.ndarray:
        """The 4096 bytes of a CPU-addressable frame (the kernel's linear map)."""
        r = self.range_of(pfn)
        if r is None or r.frames is None:
            from hmmsim.bug import KernelOops

            raise KernelOops("page_address", f"pfn {pfn:#x} has no linear mapping")
        return r.frames[pfn - r.base]

    def table(self, pfn: int) -> np.ndarray:
        """A page-table page as 512 u64 words (RAM only)."""
        return self.ram.words[pfn]

    def table_attach(self, pfn: int) -> None:
        """pfn became a page table (pagetable_alloc): in the token data plane
        it gets table words of its own (hmmsim.data_plane.TableWords); in the
        byte plane its frame is the table already."""
        if self.ram.tokens is not None:
            self.ram.words.attach(pfn)

    def table_detach(self, pfn: int) -> None:
        """pfn stops being a page table (pagetable_free; its words are zero)."""
        if self.ram.tokens is not None:
            self.ram.words.detach(pfn)

    def new_frames(self, nr: int):
        """Contents for nr pages a driver keeps itself (a GPU's VRAM), in
        this kernel's data plane: zeroed bytes or token-0 TokenPages."""
        return frames_array(self.data_plane, nr)

    def copy_frame(self, dst_pfn: int, src_pfn: int) -> None:
        self.frame(dst_pfn)[:] = self.frame(src_pfn)

    # --- allocation --------------------------------------------------------------------
    def alloc_pages(self, order: int, gfp: int = 0, inject: bool = True) -> Page | None:
        """Allocate a 1 << order block; refcount 1; compound if order > 0.

        rmqueue(): the pcp list of the order when pcp_allowed_order, else
        (or when even a refill finds nothing) the buddy. When both fail and
        pages sit on the pcp lists, they are drained and the allocation
        retried once (the drain_all_pages of __alloc_pages_direct_reclaim).
        Returns None when no block is free (the caller turns that into
        VM_FAULT_OOM / -ENOMEM like the kernel). `gfp` picks the pcp list
        (gfp_migratetype); `inject` False: Kernel.fault_inject's
        "alloc_pages" site does not apply (the test hook still does).
        """
        if order > MAX_ORDER_MODELLED or order < 0:
            raise ValueError(f"alloc_pages: order {order} not modelled (0..{MAX_ORDER_MODELLED})")
        if self.should_fail_alloc is not None and self.should_fail_alloc(order):
            return None
        if inject and self.k.fault_inject is not None:
            from hmmsim.fault_inject import should_fail

            if should_fail(self.k, "alloc_pages"):
                return None
        mt = gfp_migratetype(gfp)
        pfn = self._rmqueue(order, mt)
        if pfn is None and self.pcp.count:
            self.drain_all_pages()
            pfn = self._rmqueue(order, mt)
        if pfn is None:
            from hmmsim.mm.oom_kill import gfp_may_oom

            if gfp_may_oom(gfp, order):  # __alloc_pages_may_oom: mm/oom_kill.py
                self.nr_oom_failures += 1
            return None
        n = 1 << order
        self.nr_free -= n
        p = self.ram.pages
        if order:
            sl = slice(pfn, pfn + n)
            p.flags[sl] = 0
            p._refcount[sl] = 0
            p.mapping[sl] = 0
            p.index[sl] = 0
            self.alloc_mt[sl] = mt
        else:  # the same stores, as scalar ones (cheaper than 1-element slices)
            self.alloc_mt[pfn] = mt
            p.flags[pfn] = 0
            p.mapping[pfn] = 0
            p.index[pfn] = 0
        p._refcount[pfn] = 1
        if order:
            self.prep_compound_page(p, pfn, order)
        if gfp & GFP_ZERO_BIT:
            self.ram.frames[pfn : pfn + n] = 0
        return Page(self.k, p, pfn)

    def _rmqueue(self, order: int, mt: int = MIGRATE_UNMOVABLE) -> int | None:
        """rmqueue(): the first PFN of a block taken off the free lists, or None.
        The one buddy serves every migratetype (see the module docstring)."""
        if pcp_allowed_order(order):
            pfn = self._rmqueue_pcplist(order, mt)
            if pfn is not None:
                return pfn
        return self._rmqueue_smallest(order)  # rmqueue_buddy

    def _rmqueue_pcplist(self, order: int, mt: int = MIGRATE_UNMOVABLE) -> int | None:
        """rmqueue_pcplist / __rmqueue_pcplist: the head of the (order,
        migratetype) list, refilled from the buddy first when empty."""
        pcp = self.pcp
        pcp.free_count >>= 1
        lst = pcp.lists[order_to_pindex(order, mt)]
        if not lst:
            got = self._rmqueue_bulk(order, self._nr_pcp_alloc(order))
            if not got:
                return None
            pcp.count += len(got) << order
            got.reverse()
            lst.extend(got)
        pcp.count -= 1 << order
        return lst.pop()

    def _nr_pcp_alloc(self, order: int) -> int:
        """nr_pcp_alloc(): how many blocks a refill takes (ZONE_BELOW_HIGH is
        never set in the model); grows pcp.high and pcp.alloc_factor."""
        pcp = self.pcp
        base_batch = pcp.batch
        high_min, high_max = pcp.high_min, pcp.high_max
        high = pcp.high = min(max(pcp.high, high_min), high_max)
        if high < base_batch:
            return 1
        batch = base_batch if order else base_batch << pcp.alloc_factor
        if high_min != high_max:
            high = pcp.high = min(high + batch, high_max)
        if not order:
            max_nr_alloc = max(high - pcp.count - base_batch, base_batch)
            if batch <= max_nr_alloc and pcp.alloc_factor < PCP_BATCH_SCALE_MAX:
                pcp.alloc_factor += 1
            batch = min(batch, max_nr_alloc)
        if batch > 1:
            batch = max(batch >> order, 2)
        return batch

    def _rmqueue_bulk(self, order: int, count: int) -> list[int]:
        """rmqueue_bulk(): up to `count` blocks off the buddy, in the order
        __rmqueue hands them out; they stop being PageBuddy."""
        p = self.ram.pages
        if order == 0:
            n = min(count, self.nr_free - self.pcp.count)  # the buddy's pages
            if n <= 0:
                return []
            got = self._buddy_take_order0(n)
            if n == 1:
                p.flags[got[0]] = 0
            else:
                p.flags[np.asarray(got, dtype=np.int64)] = 0
            return got
        got = []
        for _ in range(count):
            pfn = self._rmqueue_smallest(order)
            if pfn is None:
                break
            p.flags[pfn : pfn + (1 << order)] = 0
            got.append(pfn)
        return got

    def _rmqueue_smallest(self, order: int) -> int | None:
        """__rmqueue_smallest(): the lowest block of the smallest order that
        fits, split down (expand) with the upper halves going back."""
        o = order
        area = self.free_area
        while o <= MAX_ORDER_MODELLED and not area[o]:
            o += 1
        if o > MAX_ORDER_MODELLED:
            return None
        pfn = area[o].pop()
        while o > order:  # expand(): hand the upper halves back
            o -= 1
            area[o].add(pfn + (1 << o))
        return pfn

    def _buddy_take_order0(self, m: int) -> list[int]:
        """m __rmqueue_smallest(0) calls, in order (the buddy holds >= m pages).

        One call takes the lowest order-0 block, else splits the lowest block
        of the smallest order that has one (expand: the upper halves go back
        one order each) and hands out its first page, and the next calls then
        take the split-off halves in address order, so every block of order o
        is handed out whole, in address order, before any of order o + 1 is
        touched. So m calls take: every order-0 block ascending, then every
        order-1 block ascending, and so on, and the last block they reach,
        if they stop inside it after k pages, is left as expand leaves it:
        its pages from k on as the aligned blocks that cover them, smallest
        first. The free lists and the PFNs handed out are those of the m calls.
        """
        area = self.free_area
        out: list[int] = []
        left = m
        for o in range(MAX_ORDER_MODELLED + 1):
            fa = area[o]
            if not fa:
                continue
            whole = min(len(fa), left >> o)
            if whole:
                firsts = fa.pop_lowest(whole)
                if o == 0:
                    out += firsts
                elif whole << o < 64:
                    n = 1 << o
                    out += [f + i for f in firsts for i in range(n)]
                else:
                    out += (
                        (np.asarray(firsts, dtype=np.int64)[:, None] + _ARANGE[o]).ravel().tolist()
                    )
                left -= whole << o
            if not left:
                break
            if fa:  # left < 1 << o: the calls stop inside the lowest block left
                first = fa.pop()
                out += range(first, first + left)
                x, end = left, 1 << o
                while x < end:  # what expand and the calls after it leave free
                    j = (x & -x).bit_length() - 1
                    area[j].add(first + x)
                    x += 1 << j
                break
        return out

    def alloc_pages_order0_bulk(
        self, m: int, gfp: int = 0, shift_free_count: bool = True, inject: bool = True
    ) -> np.ndarray | None:
        """m order-0 alloc_pages() calls, in order, with one store per column.

        The pcp steps are the same as m calls would take: the list's head
        pages first, then refills of nr_pcp_alloc() pages from the buddy
        (each call's `free_count >>= 1` applied at the end, as nothing
        between reads it), so the PFNs handed out, the pcp state and the buddy
        lists are identical. None (nothing done) when the test hooks that
        fail allocations are set or the order-0 list and the buddy hold fewer
        than m pages (then a call could need the drain-and-retry path). Not
        a kernel function (issue 7). `gfp` picks the list (gfp_migratetype);
        with shift_free_count False the calls are __alloc_pages_bulk's
        __rmqueue_pcplist ones, which leave pcp.free_count alone.
        """
        if self.should_fail_alloc is not None or (inject and self.k.fault_inject is not None):
            return None
        pcp = self.pcp
        mt = gfp_migratetype(gfp)
        lst = pcp.lists[order_to_pindex(0, mt)]
        if m <= 0 or len(lst) + (self.nr_free - pcp.count) < m:
            return None if m > 0 else np.zeros(0, dtype=np.int64)
        take = min(m, len(lst))
        cut = len(lst) - take
        out = lst[cut:]
        out.reverse()
        del lst[cut:]
        pcp.count -= take
        self.nr_free -= take  # kept current: the buddy's share is nr_free - pcp.count
        left = m - take
        if left:
            # The refills' sizes (nr_pcp_alloc) depend on the pcp counters
            # only, never on which pages come, and every refill but the last
            # is used up before the next: size them all first, then take
            # their pages from the buddy in one go (consecutive
            # __rmqueue_smallest calls are the same calls however grouped).
            buddy = self.nr_free - pcp.count  # the buddy holds >= left pages
            need, total = left, 0
            while need:
                n = min(self._nr_pcp_alloc(0), buddy - total)  # rmqueue_bulk's count
                use = min(need, n)
                pcp.count += n - use
                need -= use
                total += n
            got = self._buddy_take_order0(total)
            p = self.ram.pages
            p.flags[got] = 0  # rmqueue_bulk: no longer PageBuddy
            out += got[:left]
            rest = got[left:]
            rest.reverse()
            lst.extend(rest)
            self.nr_free -= left
        if shift_free_count:
            pcp.free_count >>= m
        pfns = np.asarray(out, dtype=np.int64)
        self.alloc_mt[pfns] = mt
        p = self.ram.pages
        p.flags[pfns] = 0
        p.mapping[pfns] = 0
        p.index[pfns] = 0
        p._refcount[pfns] = 1
        return pfns

    def alloc_pages_bulk(self, n: int, gfp: int = GFP_KERNEL, inject: bool = True) -> list[int]:
        """alloc_pages_bulk(gfp, n, array) of an empty array: up to n order-0
        pages, in the order handed out (mm/page_alloc.c __alloc_pages_bulk).

        One page wanted, or none on the list and the buddy: a single
        __alloc_pages (with its drain-and-retry). Else __rmqueue_pcplist per
        page from the migratetype's list (pcp.free_count is not shifted, as
        rmqueue_pcplist would), stopping at the first failure; that failing
        refill still runs nr_pcp_alloc. Not modelled: the watermark check
        that sends a low zone to the single-page path. With a fail hook set,
        plain alloc_pages calls.
        """
        if n <= 0:
            return []
        mt = gfp_migratetype(gfp)
        avail = len(self.pcp.lists[order_to_pindex(0, mt)]) + self.nr_free - self.pcp.count
        if n == 1 or avail == 0:
            page = self.alloc_pages(0, gfp, inject)
            return [] if page is None else [page.pfn]
        take = min(n, avail)
        got = self.alloc_pages_order0_bulk(take, gfp, shift_free_count=False, inject=inject)
        if got is None:  # a test hook is set
            out = []
            for _ in range(n):
                page = self.alloc_pages(0, gfp, inject)
                if page is None:
                    break
                out.append(page.pfn)
            return out
        if take < n:
            self._nr_pcp_alloc(0)  # the refill that finds the buddy empty
        return got.tolist()

    @staticmethod
    def prep_compound_page(p: PageArrays, i: int, order: int) -> None:
        n = 1 << order
        p.flags[i] |= PG_head
        p.order[i] = order
        p.head_off[i + 1 : i + n] = np.arange(1, n, dtype=np.uint32)
        p._entire_mapcount[i] = -1
        p._large_mapcount[i] = -1

    # --- freeing ---------------------------------------------------------------------
    def free_folio(self, folio: Page) -> None:
        """__folio_put(): the last reference is gone."""
        a, i = folio.a, folio.i
        if folio.a is not self.ram.pages:
            self.k.free_zone_device_folio(folio)
            return
        fl = int(a.flags[i])
        if fl & (PG_reserved | PG_zero):
            raise KernelBug(f"free_folio: freeing reserved page {folio!r}")
        if fl & PG_hugetlb:
            self.k.hugetlb.free_huge_folio(folio)
            return
        order = int(a.order[i]) if fl & PG_head else 0
        n = 1 << order
        sl = slice(i, i + n)
        if (a._mapcount[sl] != -1).any() or (fl & PG_head and a._entire_mapcount[i] != -1):
            raise KernelBug(f"Bad page state: freeing mapped page {folio!r}")
        if (a._refcount[sl] != 0).any():
            raise KernelBug(f"Bad page state: tail page with references in {folio!r}")
        self.free_frozen_pages(i, order)

    def free_frozen_pages(self, pfn: int, order: int) -> None:
        """__free_frozen_pages(): onto the pcp list of the order when
        pcp_allowed_order (free_frozen_page_commit), else to the buddy."""
        if not pcp_allowed_order(order):
            self.free_pages_ok(pfn, order)
            return
        p = self.ram.pages
        n = 1 << order
        sl = slice(pfn, pfn + n) if order else pfn  # scalar stores for one page
        p._refcount[sl] = 0
        _reset_to_buddy(p, sl, pfn, 0)
        self.nr_free += n
        sink: list = []
        self._free_frozen_page_commit(pfn, order, sink, int(self.alloc_mt[pfn]))
        if sink:
            self._to_buddy(sink)

    def free_pages_ok(self, pfn: int, order: int) -> None:
        """__free_pages_ok(): give a block straight back to the buddy lists,
        merging with free buddies."""
        p = self.ram.pages
        n = 1 << order
        sl = slice(pfn, pfn + n) if order else pfn  # scalar stores for one page
        p._refcount[sl] = 0
        _reset_to_buddy(p, sl, pfn)
        self.nr_free += n
        self._merge(pfn, order)

    def _free_frozen_page_commit(
        self, pfn: int, order: int, sink: list, mt: int = MIGRATE_UNMOVABLE
    ) -> None:
        """free_frozen_page_commit(): add the block at the head of its
        (order, migratetype) list, then drain when the pcp holds `high`
        pages; drained blocks are appended to `sink` as (order, [pfns]) for
        `_to_buddy`."""
        pcp = self.pcp
        pcp.alloc_factor >>= 1
        pindex = order_to_pindex(order, mt)
        pcp.lists[pindex].append(pfn)
        pcp.count += 1 << order
        batch = pcp.batch
        free_high = False
        if order and order <= PAGE_ALLOC_COSTLY_ORDER:
            free_high = (
                pcp.free_count >= batch + pcp.high_min // 2
                and bool(pcp.flags & PCPF_PREV_FREE_HIGH_ORDER)
                and (not pcp.flags & PCPF_FREE_HIGH_BATCH or pcp.count >= batch)
            )
            pcp.flags |= PCPF_PREV_FREE_HIGH_ORDER
        else:
            pcp.flags &= ~PCPF_PREV_FREE_HIGH_ORDER
        if pcp.free_count < batch << PCP_BATCH_SCALE_MAX:
            pcp.free_count += 1 << order
        high = self._nr_pcp_high(batch, free_high)
        if pcp.count < high:
            return
        self._drain_pcp(self._nr_pcp_free(batch, high, free_high), pindex, order, sink)

    def _drain_pcp(self, to_free: int, pindex: int, order: int, sink: list) -> None:
        """free_frozen_page_commit's drain: free_pcppages_bulk calls of at
        most `batch` pages, each starting at `pindex`, until to_free pages
        are gone (or the lists are empty)."""
        pcp = self.pcp
        lst = pcp.lists[pindex]
        if not order and len(lst) >= to_free:
            # Every call starts at this list and finds enough on it:
            # together they take its to_free oldest pages.
            sink.append((0, lst[:to_free]))
            del lst[:to_free]
            pcp.count -= to_free
            return
        batch = pcp.batch
        while to_free > 0 and pcp.count > 0:
            chunk = min(to_free, batch)
            self._free_pcppages_bulk(chunk, pindex, sink)
            to_free -= chunk

    def _nr_pcp_high(self, batch: int, free_high: bool) -> int:
        """nr_pcp_high() without ZONE_RECLAIM_ACTIVE / ZONE_BELOW_HIGH."""
        pcp = self.pcp
        high_min, high_max = pcp.high_min, pcp.high_max
        high = pcp.high = min(max(pcp.high, high_min), high_max)
        if not high:
            return 0
        if free_high:
            pcp.high = max(high - (batch << PCP_BATCH_SCALE_MAX), high_min)
            return 0
        if high_min == high_max:
            return high
        if pcp.count >= high:
            need_high = pcp.free_count + batch
            if pcp.high < need_high:
                pcp.high = min(max(need_high, high_min), high_max)
        return high

    def _nr_pcp_free(self, batch: int, high: int, free_high: bool) -> int:
        """nr_pcp_free()."""
        pcp = self.pcp
        if free_high:
            return min(pcp.count, batch << PCP_BATCH_SCALE_MAX)
        if high < batch:
            return 1
        return min(max(pcp.free_count, batch), high - batch)

    def _free_pcppages_bulk(self, count: int, pindex: int, sink: list) -> None:
        """free_pcppages_bulk(): `count` pages off the lists, round robin
        from `pindex`, each list from its tail (its oldest block)."""
        pcp = self.pcp
        lists = pcp.lists
        count = min(pcp.count, count)
        pindex -= 1
        while count > 0:
            while True:
                pindex += 1
                if pindex > NR_PCP_LISTS - 1:
                    pindex = 0
                if lists[pindex]:
                    break
            lst = lists[pindex]
            order = pindex_to_order(pindex)
            nr = 1 << order
            k = min(len(lst), -(-count // nr))  # the do-while takes until count <= 0
            sink.append((order, lst[:k]))
            del lst[:k]
            count -= k * nr
            pcp.count -= k * nr

    def _to_buddy(self, sink: list) -> None:
        """__free_one_page() of every drained block: they become PageBuddy
        and merge. The buddy lists after a set of frees depend only on which
        pages are free, so the blocks are merged together, not in turn."""
        p = self.ram.pages
        zero: list[int] = []
        for order, pfns in sink:
            if order == 0:
                zero += pfns
                continue
            n = 1 << order
            for pfn in pfns:
                p.flags[pfn : pfn + n] = PGTY_buddy
                self._merge(pfn, order)
        if len(zero) > 16:
            arr = np.asarray(zero, dtype=np.int64)
            p.flags[arr] = PGTY_buddy
            self._merge_many(arr)
        else:
            for pfn in zero:
                p.flags[pfn] = PGTY_buddy
                self._merge(pfn, 0)

    def drain_all_pages(self) -> None:
        """drain_all_pages() / drain_pages_zone(): every pcp page back to the buddy."""
        pcp = self.pcp
        sink: list = []
        while pcp.count:
            self._free_pcppages_bulk(min(pcp.count, pcp.batch << PCP_BATCH_SCALE_MAX), 0, sink)
        self._to_buddy(sink)

    def pcp_pfns(self) -> np.ndarray:
        """Every page on the pcp lists (blocks expanded), for checks."""
        out = []
        for pindex, lst in enumerate(self.pcp.lists):
            if lst:
                n = 1 << pindex_to_order(pindex)
                first = np.asarray(lst, dtype=np.int64)
                out.append((first[:, None] + np.arange(n)).ravel())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def _merge(self, pfn: int, order: int) -> None:
        """Put a free block on the lists, merging it with free buddies."""
        o = order
        while o < MAX_ORDER_MODELLED:
            buddy = pfn ^ (1 << o)
            if buddy not in self.free_area[o]:
                break
            self.free_area[o].discard(buddy)
            pfn = min(pfn, buddy)
            o += 1
        self.free_area[o].add(pfn)

    def free_folios_order0(self, pfns) -> None:
        """free_folio() of order-0 RAM folios whose last reference is gone, in order.

        The struct-page resets are one store per column; the pcp commits run
        in the given order, with the stretches that cannot reach `high` done
        at once (only count, free_count, alloc_factor and the flags move
        there), and the drained pages are merged into the buddy at the end
        (the lists depend only on which pages are free), so the pcp and the
        buddy end up exactly as after calling free_folio on each in turn.
        Anything but plain order-0 pages (reserved, zero, hugetlb, compound,
        mapped, referenced, or a PFN twice) goes through free_folio one by one,
        which raises where the kernel would. Not a kernel function (issue 7).
        """
        p = self.ram.pages
        pfns = np.asarray(pfns, dtype=np.int64)
        bad = PG_reserved | PG_zero | PG_hugetlb | PG_head
        if (
            (p.flags[pfns] & np.uint32(bad)).any()
            or (p._mapcount[pfns] != -1).any()
            or (p._refcount[pfns] != 0).any()
            or has_duplicates(pfns)
        ):
            for pfn in pfns.tolist():
                self.free_folio(Page(self.k, p, pfn))
            return
        mts = self.alloc_mt[pfns]
        mt = int(mts[0]) if len(mts) else MIGRATE_UNMOVABLE
        if len(mts) and not (mts == mt).all():  # several lists: commit one by one
            for pfn in pfns.tolist():
                self.free_folio(Page(self.k, p, pfn))
            return
        _reset_to_buddy(p, pfns, pfns, 0)
        self.nr_free += len(pfns)
        pcp = self.pcp
        lst0 = pcp.lists[order_to_pindex(0, mt)]
        cap = pcp.batch << PCP_BATCH_SCALE_MAX
        pl = pfns.tolist()
        n = len(pl)
        i = 0
        sink: list = []
        while i < n:
            high = min(max(pcp.high, pcp.high_min), pcp.high_max)
            room = high - pcp.count - 1  # commits that leave count < high: no drain
            if room > 0:
                k = min(room, n - i)
                lst0 += pl[i : i + k]
                pcp.count += k
                pcp.alloc_factor >>= k
                pcp.flags &= ~PCPF_PREV_FREE_HIGH_ORDER
                if pcp.free_count < cap:
                    pcp.free_count = min(pcp.free_count + k, cap)
                pcp.high = high  # nr_pcp_high's clamp
                i += k
                continue
            self._free_frozen_page_commit(pl[i], 0, sink, mt)
            i += 1
        if sink:
            self._to_buddy(sink)

    def _merge_many(self, pfns: np.ndarray) -> None:
        """_merge(pfn, 0) of distinct allocated pages, one order at a time.

        Free blocks are always fully merged, so the lists after a batch of
        frees depend only on which pages are free: a block is on the list of
        order o exactly when all its pages are free and its order-o+1 parent
        is not. Level by level, each new block merges with its buddy when the
        buddy is new too or already free at that order, else it stays.
        """
        fa = self.free_area
        cur = np.sort(pfns)  # distinct: the caller checked
        for o in range(MAX_ORDER_MODELLED):
            n = len(cur)
            if not n:
                return
            bit = 1 << o
            # cur holds sorted order-o block starts, so two buddies that are
            # both new sit next to each other (nothing aligned lies between).
            pair = np.zeros(n, dtype=bool)
            pair[:-1] = (cur[1:] - cur[:-1] == bit) & ((cur[:-1] & bit) == 0)
            keep = pair.copy()  # the lower one of each pair goes on up
            pair[1:] |= keep[:-1]
            alone = np.flatnonzero(~pair)
            if len(alone):
                single = cur[alone]
                in_free = fa[o].has_many(single ^ bit)
                fa[o].add_many(single[~in_free].tolist())
                if in_free.any():
                    fa[o].discard_many((single[in_free] ^ bit).tolist())
                    keep[alone[in_free]] = True
            # x -> x & ~bit keeps sorted order on aligned starts, and each
            # pair is now one parent start: cur stays sorted and distinct.
            cur = cur[keep] & ~np.int64(bit)
        if len(cur):
            fa[MAX_ORDER_MODELLED].add_many(cur.tolist())

    def is_free(self, pfn: int) -> bool:
        """Whether a RAM page is free: on the buddy or on a pcp list."""
        if self.range_of(pfn) is not self.ram:
            return False
        return bool(self.ram.pages.flags[pfn] & PGTY_buddy) or pfn in self.pcp_pfns()

    def __repr__(self) -> str:
        return (
            f"<PhysMem ram={self.ram.pages.nr} pages free={self.nr_free} "
            f"pcp={self.pcp.count} ranges={len(self.ranges)}>"
        )


def folio_mapping_id(folio: Page) -> int:
    """The object id in folio->mapping without the anon tag bit."""
    return int(folio.a.mapping[folio.i]) & ~FOLIO_MAPPING_ANON

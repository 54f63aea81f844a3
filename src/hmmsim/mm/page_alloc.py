"""Physical memory: frames with real bytes, struct page columns, buddy allocator.

Models: mm/page_alloc.c (buddy allocator, __free_pages, prep_compound_page),
mm/mm_init.c (memmap init), mm/swap.c (__folio_put) and the sparse vmemmap
(pfn_to_page) @ torvalds/linux 0eaed89c18ae.

System RAM is one contiguous PFN range starting at 0; the frame store is a
NumPy array the OS commits lazily, so a Kernel with GiBs of modelled RAM is
cheap until pages are touched. Page-table pages are ordinary frames viewed
as 512 little-endian u64 words, as on x86-64. ZONE_DEVICE ranges are added
by memremap (later) as further `PageArrays`, with or without frame bytes.

Differences from kernel: one zone, one node; orders 0..HPAGE_PMD_ORDER only
(MAX_PAGE_ORDER is 10 upstream); no per-cpu lists, watermarks or reclaim: an
allocation that finds no free block fails at once.
"""

from __future__ import annotations

import bisect
import heapq

import numpy as np

from hmmsim.bug import KernelBug
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
from hmmsim.kconfig import HPAGE_PMD_ORDER, PAGE_SIZE

#: Allocation flags the model honours (include/linux/gfp_types.h names).
__GFP_ZERO = 0x100
__GFP_COMP = 0x40000
GFP_KERNEL = 0xCC0
GFP_HIGHUSER_MOVABLE = 0x140CCA
GFP_TRANSHUGE = GFP_HIGHUSER_MOVABLE | __GFP_COMP
#: the same bit, usable inside class bodies (where Python mangles __names)
GFP_ZERO_BIT = __GFP_ZERO

MAX_ORDER_MODELLED = HPAGE_PMD_ORDER
#: PFNs below this are firmware/kernel-image pages (PG_reserved, never freed).
RESERVED_PFNS = 1 << HPAGE_PMD_ORDER


class MemRange:
    """A contiguous PFN range with struct pages and, if CPU-addressable, bytes."""

    __slots__ = ("pages", "frames", "words", "name", "pgmap_id")

    def __init__(self, base: int, nr: int, name: str, with_frames: bool) -> None:
        self.pages = PageArrays(base, nr)
        self.frames = np.zeros((nr, PAGE_SIZE), dtype=np.uint8) if with_frames else None
        self.words = self.frames.view(np.uint64) if with_frames else None
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


def _reset_to_buddy(p: PageArrays, pages, heads) -> None:
    """The struct page state of free buddy pages (`pages`: an index, slice or
    index array; `heads`: where the folio-head-only fields live)."""
    p.flags[pages] = PGTY_buddy
    p.order[pages] = 0
    p.head_off[pages] = 0
    p.mapping[pages] = 0
    p.index[pages] = 0
    p._mapcount[pages] = -1
    p._entire_mapcount[heads] = -1
    p._large_mapcount[heads] = -1
    p.zone_device_data[pages] = 0


def has_duplicates(values: np.ndarray) -> bool:
    """Whether an integer array holds some value twice (the bulk passes'
    guard; a sort is several times cheaper than np.unique for window-sized
    arrays)."""
    if len(values) < 2:
        return False
    s = np.sort(values)
    return bool((s[1:] == s[:-1]).any())


def distinct_values(values: np.ndarray) -> list[int]:
    """The distinct values of a non-empty integer array, ascending, as ints
    (np.unique, but a window whose values are all one, the common case,
    costs one comparison)."""
    v0 = values[0]
    if (values == v0).all():
        return [int(v0)]
    return np.unique(values).tolist()


class FreeArea:
    """One order's free list: the start PFNs of its free blocks.

    The kernel hands out the block at the head of a list_head; the model
    hands out the lowest-addressed one (`pop`), so which page an allocation
    gets depends only on what is free, never on the order of earlier frees
    or on the host's set implementation: a seed replays the same on any
    Python. A set answers membership; a heap with lazy deletion gives the
    lowest block.
    """

    __slots__ = ("_set", "_heap")

    def __init__(self) -> None:
        self._set: set[int] = set()
        self._heap: list[int] = []

    def add(self, pfn: int) -> None:
        self._set.add(pfn)
        heapq.heappush(self._heap, pfn)

    def discard(self, pfn: int) -> None:
        self._set.discard(pfn)
        if len(self._heap) > 2 * len(self._set) + 64:  # drop stale heap entries
            self._heap = sorted(self._set)

    def add_many(self, pfns: list[int]) -> None:
        self._set.update(pfns)
        h = self._heap
        if len(pfns) > 8 + len(h) // 8:
            h.extend(pfns)
            heapq.heapify(h)
        else:
            for pfn in pfns:
                heapq.heappush(h, pfn)

    def discard_many(self, pfns: list[int]) -> None:
        self._set.difference_update(pfns)
        if len(self._heap) > 2 * len(self._set) + 64:
            self._heap = sorted(self._set)

    def pop(self) -> int:
        """Remove and return the lowest free block (KeyError if none)."""
        s, h = self._set, self._heap
        while h:
            pfn = heapq.heappop(h)
            if pfn in s:
                s.remove(pfn)
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
        rest = sorted(s)
        out, rest = rest[:t], rest[t:]
        s.difference_update(out)
        self._heap = rest
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
    """All physical memory of one Kernel: RAM, device ranges, the buddy lists.

    Invariant: every free RAM block of order o starts at a multiple of 1 << o,
    and all its pages carry PGTY_buddy with _refcount 0.
    """

    def __init__(self, k, nr_ram_pages: int) -> None:
        self.k = k
        self.ram = MemRange(0, nr_ram_pages, "System RAM", with_frames=True)
        self.ranges: list[MemRange] = [self.ram]
        self._bases: list[int] = [0]
        #: free_area[order]: the start PFNs of free blocks of that order (RAM only).
        self.free_area: list[FreeArea] = [FreeArea() for _ in range(MAX_ORDER_MODELLED + 1)]
        self.nr_free = 0
        #: Test hook: called with (order,) before each allocation; True fails it.
        self.should_fail_alloc = None
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
        r = MemRange(base, nr, name, with_frames)
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

    def copy_frame(self, dst_pfn: int, src_pfn: int) -> None:
        self.frame(dst_pfn)[:] = self.frame(src_pfn)

    # --- buddy allocator -----------------------------------------------------------
    def alloc_pages(self, order: int, gfp: int = 0) -> Page | None:
        """Allocate a 1 << order block; refcount 1; compound if order > 0.

        Returns None when no block is free (the caller turns that into
        VM_FAULT_OOM / -ENOMEM like the kernel).
        """
        if order > MAX_ORDER_MODELLED or order < 0:
            raise ValueError(f"alloc_pages: order {order} not modelled (0..{MAX_ORDER_MODELLED})")
        if self.should_fail_alloc is not None and self.should_fail_alloc(order):
            return None
        if self.k.fault_inject is not None:
            from hmmsim.fault_inject import should_fail

            if should_fail(self.k, "alloc_pages"):
                return None
        o = order
        while o <= MAX_ORDER_MODELLED and not self.free_area[o]:
            o += 1
        if o > MAX_ORDER_MODELLED:
            return None
        pfn = self.free_area[o].pop()
        while o > order:  # expand(): hand the upper halves back
            o -= 1
            self.free_area[o].add(pfn + (1 << o))
        n = 1 << order
        self.nr_free -= n
        p = self.ram.pages
        if order:
            sl = slice(pfn, pfn + n)
            p.flags[sl] = 0
            p._refcount[sl] = 0
            p.mapping[sl] = 0
            p.index[sl] = 0
        else:  # the same stores, as scalar ones (cheaper than 1-element slices)
            p.flags[pfn] = 0
            p.mapping[pfn] = 0
            p.index[pfn] = 0
        p._refcount[pfn] = 1
        if order:
            self.prep_compound_page(p, pfn, order)
        if gfp & GFP_ZERO_BIT:
            self.ram.frames[pfn : pfn + n] = 0
        return Page(self.k, p, pfn)

    def alloc_pages_order0_bulk(self, m: int) -> np.ndarray | None:
        """m order-0 alloc_pages() calls, in order, with one store per column.

        The free-list steps are the same as m calls would take (so the lists
        and the PFNs handed out are identical); None (nothing done) when the
        test hook that fails allocations is set or fewer than m pages are
        free. Not a kernel function (issue 7).
        """
        if self.should_fail_alloc is not None or self.nr_free < m:
            return None
        area = self.free_area
        area0 = area[0]
        pop0 = area0.pop
        out: list[int] = []
        append = out.append
        left = m
        while left:
            n0 = len(area0)
            if n0 > 8:  # the next pops all come straight off the order-0 list
                take = min(n0, left)
                out += area0.pop_lowest(take)
                left -= take
                continue
            if n0:
                append(pop0())
                left -= 1
                continue
            o = 1
            while not area[o]:  # nr_free >= m: some block is free
                o += 1
            whole = min(len(area[o]), left >> o)
            if whole:
                # Orders below o are all empty, so one call per page would
                # split the lowest block and hand out all of it in address
                # order, leaving those orders empty again, then the next
                # lowest: take those `whole` blocks at once.
                firsts = np.asarray(area[o].pop_lowest(whole), dtype=np.int64)
                out += (firsts[:, None] + np.arange(1 << o)).ravel().tolist()
                left -= whole << o
                continue
            pfn = area[o].pop()
            while o > 0:  # expand(): the upper halves go back
                o -= 1
                area[o].add(pfn + (1 << o))
            append(pfn)
            left -= 1
        self.nr_free -= m
        pfns = np.asarray(out, dtype=np.int64)
        p = self.ram.pages
        p.flags[pfns] = 0
        p.mapping[pfns] = 0
        p.index[pfns] = 0
        p._refcount[pfns] = 1
        return pfns

    @staticmethod
    def prep_compound_page(p: PageArrays, i: int, order: int) -> None:
        n = 1 << order
        p.flags[i] |= PG_head
        p.order[i] = order
        p.head_off[i + 1 : i + n] = np.arange(1, n, dtype=np.uint32)
        p._entire_mapcount[i] = -1
        p._large_mapcount[i] = -1

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
        self.free_pages_ok(i, order)

    def free_pages_ok(self, pfn: int, order: int) -> None:
        """Give a block back to the buddy lists, merging with free buddies."""
        p = self.ram.pages
        n = 1 << order
        sl = slice(pfn, pfn + n) if order else pfn  # scalar stores for one page
        p._refcount[sl] = 0
        _reset_to_buddy(p, sl, pfn)
        self.nr_free += n
        self._merge(pfn, order)

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

        The struct-page resets are one store per column; the buddy merges run
        one by one in the given order (they read only the free lists, so the
        lists end up exactly as after calling free_folio on each in turn).
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
        _reset_to_buddy(p, pfns, pfns)
        self.nr_free += len(pfns)
        self._merge_many(pfns)

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
            if not len(cur):
                return
            bit = 1 << o
            buddy = cur ^ bit
            at = np.searchsorted(cur, buddy)  # cur is sorted and unique
            in_cur = cur[np.minimum(at, len(cur) - 1)] == buddy
            hits = fa[o]._set.intersection(buddy.tolist()) if fa[o] else ()
            if hits:
                in_free = np.isin(buddy, np.fromiter(hits, dtype=np.int64, count=len(hits)))
            else:
                in_free = np.zeros(len(cur), dtype=bool)
            fa[o].add_many(cur[~(in_cur | in_free)].tolist())
            fa[o].discard_many(buddy[in_free].tolist())
            cur = np.concatenate((cur[in_cur & (cur < buddy)], cur[in_free])) & ~np.int64(bit)
            cur.sort()
        if len(cur):
            fa[MAX_ORDER_MODELLED].add_many(cur.tolist())

    def is_free(self, pfn: int) -> bool:
        return self.range_of(pfn) is self.ram and bool(self.ram.pages.flags[pfn] & PGTY_buddy)

    def __repr__(self) -> str:
        return (
            f"<PhysMem ram={self.ram.pages.nr} pages free={self.nr_free} ranges={len(self.ranges)}>"
        )


def folio_mapping_id(folio: Page) -> int:
    """The object id in folio->mapping without the anon tag bit."""
    return int(folio.a.mapping[folio.i]) & ~FOLIO_MAPPING_ANON

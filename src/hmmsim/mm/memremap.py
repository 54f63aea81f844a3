"""ZONE_DEVICE: dev_pagemap registration and the lifetime of device pages.

Models: mm/memremap.c (memremap_pages, memunmap_pages, pagemap_range,
zone_device_page_init, zone_device_folio_init, free_zone_device_folio,
get_dev_pagemap), include/linux/memremap.h (folio_is_device_private,
is_device_coherent_page, page_pgmap) and kernel/resource.c
(request_free_mem_region, release_mem_region) @ torvalds/linux 0eaed89c18ae;
series (c) (memremap_device_private_pagemap, device_private_offset_to_page,
device_private_page_to_offset) from the latest version of the series posted
to linux-mm (docs/kernel-map.md lists each function).

The model passes the Kernel explicitly (keyword `k`) where the kernel uses
globals (iomem_resource, the pgmap xarray, the device-private maple tree).

Physical address space: legacy device-private pages take a range of the
finite physical address space (KConfig.phys_addr_bits) from
request_free_mem_region(), searched downwards from the top as the kernel
does; with series (c) they live in a separate index space (offsets from 0,
an interval map standing in for the maple tree) and have no PFN at all.
"""

from __future__ import annotations

import bisect

import numpy as np

from hmmsim.bug import KernelBug
from hmmsim.errno import EINVAL, ENOMEM, ENXIO, ERANGE
from hmmsim.include.memremap import (
    MEMORY_DEVICE_COHERENT,
    MEMORY_DEVICE_PRIVATE,
    dev_pagemap,
)
from hmmsim.include.mm_types import (
    Page,
    PG_head,
    PG_locked,
    folio_nr_pages,
    folio_test_anon,
)
from hmmsim.kconfig import DEVICE_PRIVATE_BASE, PAGE_SHIFT, PAGE_SIZE
from hmmsim.mm.page_alloc import MemRange

#: Highest folio order a pgmap's vmemmap_shift may ask for (MAX_FOLIO_ORDER).
MAX_FOLIO_ORDER = 18


# --- physical address space ------------------------------------------------------------
class resource:
    """struct resource: [start, end] (inclusive), name, owned by a Kernel."""

    __slots__ = ("start", "end", "name", "k")

    def __init__(self, k, start: int, end: int, name: str) -> None:
        self.k, self.start, self.end, self.name = k, start, end, name

    def __repr__(self) -> str:
        return f"<resource {self.name} [{self.start:#x}-{self.end:#x}]>"


class IomemSpace:
    """iomem_resource: the busy ranges of the physical address space."""

    def __init__(self, k, phys_bits: int) -> None:
        self.k = k
        self.end = (1 << phys_bits) - 1
        ram_end = k.mem.ram.pages.nr << PAGE_SHIFT
        self.busy: list[resource] = [resource(k, 0, ram_end - 1, "System RAM")]

    def request_free_mem_region(self, size: int, name: str) -> resource | int:
        """The highest free, size-aligned range of `size` bytes; -ERANGE if none."""
        if size <= 0 or size & (PAGE_SIZE - 1):
            return -EINVAL
        top = self.end + 1
        for r in sorted(self.busy, key=lambda r: -r.start):
            cand = (top - size) & ~(size - 1) if size & (size - 1) == 0 else top - size
            if cand > r.end:
                return self._claim(cand, size, name)
            top = min(top, r.start)
        return -ERANGE

    def _claim(self, start: int, size: int, name: str) -> resource:
        res = resource(self.k, start, start + size - 1, name)
        self.busy.append(res)
        return res

    def release_mem_region(self, res: resource) -> None:
        self.busy.remove(res)

    def intersects_ram(self, start: int, end: int) -> bool:
        ram = self.busy[0]
        return start <= ram.end and ram.start <= end


# --- the series (c) device-private index space ------------------------------------------
class DevicePrivateSpace:
    """device_private_pgmap_tree: offset ranges handed to device-private pgmaps.

    Offsets start at 0; a page's index is DEVICE_PRIVATE_BASE + offset, a
    number no physical PFN can take.
    """

    def __init__(self, k) -> None:
        self.k = k
        self.starts: list[int] = []
        self.ranges: list[MemRange] = []
        self.limit = 1 << (k.config.phys_addr_bits - PAGE_SHIFT)

    def alloc(self, nr_pages: int, name: str) -> MemRange | int:
        start = 0
        for r in self.ranges:
            base = r.base - DEVICE_PRIVATE_BASE
            if base - start >= nr_pages:
                break
            start = base + r.pages.nr
        if start + nr_pages > self.limit:
            return -ENOMEM
        r = MemRange(DEVICE_PRIVATE_BASE + start, nr_pages, name, with_frames=False)
        i = bisect.bisect(self.starts, start)
        self.starts.insert(i, start)
        self.ranges.insert(i, r)
        return r

    def free(self, r: MemRange) -> None:
        i = self.ranges.index(r)
        del self.ranges[i]
        del self.starts[i]

    def lookup(self, offset: int) -> MemRange | None:
        i = bisect.bisect(self.starts, offset) - 1
        if i >= 0 and offset < self.starts[i] + self.ranges[i].pages.nr:
            return self.ranges[i]
        return None


# --- type predicates (memremap.h) ----------------------------------------------------------
def page_pgmap(page: Page) -> dev_pagemap:
    return page.k.page_pgmap(page)


def is_zone_device_page(page: Page) -> bool:
    return bool(page.a.pgmap[page.i])


folio_is_zone_device = is_zone_device_page


def _pgmap_type(page: Page) -> int:
    pid = int(page.a.pgmap[page.i])
    return page.k.pgmaps[pid].type if pid else 0


def is_device_private_page(page: Page) -> bool:
    return _pgmap_type(page) == MEMORY_DEVICE_PRIVATE


folio_is_device_private = is_device_private_page


def is_device_coherent_page(page: Page) -> bool:
    return _pgmap_type(page) == MEMORY_DEVICE_COHERENT


folio_is_device_coherent = is_device_coherent_page


def is_dp_index_space_page(page: Page) -> bool:
    """True for a series (c) device-private page (no PFN exists for it)."""
    return page.a.base >= DEVICE_PRIVATE_BASE


def page_to_pfn(page: Page) -> int:
    """The physical frame number; a bug for a series (c) device-private page."""
    if page.a.base >= DEVICE_PRIVATE_BASE:
        raise KernelBug(
            f"page_to_pfn() on device-private page (offset "
            f"{page.pfn - DEVICE_PRIVATE_BASE:#x}): with series (c) it has no PFN; "
            "use device_private_page_to_offset()"
        )
    return page.pfn


def device_private_page_to_offset(page: Page) -> int:
    if not is_dp_index_space_page(page):
        raise KernelBug(f"device_private_page_to_offset: {page!r} is not in the (c) space")
    return page.pfn - DEVICE_PRIVATE_BASE


def device_private_folio_to_offset(folio: Page) -> int:
    return device_private_page_to_offset(folio)


def device_private_offset_to_page(offset: int, *, k) -> Page:
    r = k.device_private_space.lookup(offset)
    if r is None:
        raise KernelBug(f"device_private_offset_to_page: offset {offset:#x} is not allocated")
    return Page(k, r.pages, offset - (r.base - DEVICE_PRIVATE_BASE))


# --- registration -----------------------------------------------------------------------------
def _check_pgmap(pgmap: dev_pagemap) -> int:
    """memremap_pages' argument checks: 0 or -EINVAL (each also WARNs)."""
    if pgmap.nr_range < 1:
        return -EINVAL
    if pgmap.vmemmap_shift > MAX_FOLIO_ORDER:
        return -EINVAL
    ops = pgmap.ops
    if pgmap.type == MEMORY_DEVICE_PRIVATE:
        if ops is None or ops.migrate_to_ram is None or ops.folio_free is None:
            return -EINVAL
        if pgmap.owner is None:
            return -EINVAL
    elif pgmap.type == MEMORY_DEVICE_COHERENT:
        if ops is None or ops.folio_free is None or pgmap.owner is None:
            return -EINVAL
    return 0


def _register(k, pgmap: dev_pagemap, r: MemRange) -> None:
    pid = k.new_pgmap_id(pgmap)
    r.pages.pgmap[:] = pid
    r.pgmap_id = pid
    pgmap._ranges = [r]
    pgmap._id = pid
    pgmap._refs = 0
    pgmap._killed = False


def memremap_pages(pgmap: dev_pagemap, nid: int = 0, *, k) -> int:
    """Create struct pages for pgmap's physical range; a kernel VA, or -errno.

    Returns -EINVAL (bad arguments; with series (c), any MEMORY_DEVICE_PRIVATE
    pgmap), -ENXIO (range overlaps System RAM), -ENOMEM (overlaps another
    pgmap). For MEMORY_DEVICE_PRIVATE the VA is not a usable mapping.
    """
    ret = _check_pgmap(pgmap)
    if ret:
        k.warn(f"memremap_pages: invalid pgmap {pgmap!r}")
        return ret
    if pgmap.type == MEMORY_DEVICE_PRIVATE and k.config.has("c"):
        k.warn("memremap_pages: MEMORY_DEVICE_PRIVATE must use memremap_device_private_pagemap")
        return -EINVAL
    start, end = pgmap.range.start, pgmap.range.end
    if start & (PAGE_SIZE - 1) or (end + 1) & (PAGE_SIZE - 1) or end < start:
        return -EINVAL
    if k.iomem.intersects_ram(start, end):
        return -ENXIO
    base, nr = start >> PAGE_SHIFT, (end + 1 - start) >> PAGE_SHIFT
    for r in k.mem.ranges:
        if base < r.end and r.base < base + nr:
            k.warn("memremap_pages: Conflicting mapping in same section")  # pagemap_range
            return -ENOMEM
    r = k.mem.add_range(
        base, nr, f"pgmap {pgmap.type!r}", with_frames=pgmap.type != MEMORY_DEVICE_PRIVATE
    )
    _register(k, pgmap, r)
    return (0xFFFF_8880_0000_0000 + start) & 0xFFFF_FFFF_FFFF_FFFF  # __va(start)


def memremap_device_private_pagemap(pgmap: dev_pagemap, nid: int = 0, *, k) -> int:
    """Series (c): give a device-private pgmap pgmap.nr_pages offsets; 0 or -errno.

    The offset range is written back to pgmap.range. Returns -EINVAL without
    series (c), for a non-PRIVATE type, nr_range != 1, missing
    migrate_to_ram/folio_free/owner; -ENOMEM when the index space is full.
    """
    if not k.config.has("c"):
        return -EINVAL
    if pgmap.type != MEMORY_DEVICE_PRIVATE or pgmap.nr_range != 1:
        return -EINVAL
    ret = _check_pgmap(pgmap)
    if ret:
        return ret
    nr = pgmap.nr_pages
    if not nr or nr < 0:
        return -EINVAL
    r = k.device_private_space.alloc(nr, f"device-private {pgmap.owner!r}")
    if isinstance(r, int):
        return r
    off = r.base - DEVICE_PRIVATE_BASE
    pgmap.range.start = off << PAGE_SHIFT
    pgmap.range.end = ((off + nr) << PAGE_SHIFT) - 1
    _register(k, pgmap, r)
    return 0


def _unmap_common(k, pgmap: dev_pagemap) -> None:
    if getattr(pgmap, "_id", None) is None:
        raise KernelBug(f"memunmap: {pgmap!r} was never mapped")
    pgmap._killed = True
    while pgmap._refs:
        # memunmap_pages waits for every device page to be freed: forever,
        # if the driver did not evict them first.
        k.sched.wait(pgmap, f"memunmap_pages: {pgmap._refs} device pages still in use")
    k.pgmaps.pop(pgmap._id)


def memunmap_pages(pgmap: dev_pagemap, *, k) -> None:
    _unmap_common(k, pgmap)
    for r in pgmap._ranges:
        k.mem.remove_range(r)
    pgmap._id = None


def memunmap_device_private_pagemap(pgmap: dev_pagemap, *, k) -> None:
    _unmap_common(k, pgmap)
    for r in pgmap._ranges:
        k.device_private_space.free(r)
    pgmap._id = None


# --- device page lifetime ---------------------------------------------------------------------
def zone_device_page_init(page: Page, pgmap: dev_pagemap, order: int = 0) -> None:
    """Hand a free device page (or 1 << order of them) to the driver: ref 1, locked."""
    a, i = page.a, page.i
    k = page.k
    n = 1 << order
    if pgmap._killed:
        k.warn(f"zone_device_page_init: {pgmap!r} is being unmapped")
    sl = slice(i, i + n)
    for j in np.flatnonzero(a._refcount[sl]).tolist():
        k.warn(f"zone_device_page_init: page {page.pfn + j:#x} has references")
    if "stale_order_on_reuse" not in k.bugs:  # mutant (known-bugs 17) keeps the old folio's state
        a.flags[sl] = 0
        a.order[sl] = 0
        a.head_off[sl] = 0
        if "stale_mapping_on_free" not in k.bugs:
            a.mapping[sl] = 0
        a._mapcount[sl] = -1
    pgmap._refs += n
    a._refcount[i] = 1
    a.flags[i] |= PG_locked
    if order:
        from hmmsim.mm.page_alloc import PhysMem

        PhysMem.prep_compound_page(a, i, order)


def zone_device_folio_init(folio: Page, pgmap: dev_pagemap, order: int = 0) -> None:
    zone_device_page_init(folio, pgmap, order)


def free_zone_device_folio(folio: Page) -> None:
    """The last reference to a device folio is gone: back to the driver."""
    k = folio.k
    pgmap = page_pgmap(folio)
    a, i = folio.a, folio.i
    n = folio_nr_pages(folio)
    sl = slice(i, i + n) if n > 1 else i  # scalar stores for one page
    if folio_test_anon(folio):
        from hmmsim.include.mm_types import PG_anon_exclusive

        a.flags[sl] &= ~PG_anon_exclusive & 0xFFFFFFFF
    if "stale_mapping_on_free" not in k.bugs:  # mutant: the 2019 free kept the mapping
        a.mapping[sl] = 0
    if (a._mapcount[sl] != -1).any():
        raise KernelBug(f"free_zone_device_folio: freeing mapped device page {folio!r}")
    if pgmap.type in (MEMORY_DEVICE_PRIVATE, MEMORY_DEVICE_COHERENT):
        if pgmap.ops is None or pgmap.ops.folio_free is None:
            raise KernelOopsMissingOp(pgmap)
        pgmap.ops.folio_free(folio)
        pgmap._refs -= n
        k.sched.point("release", pgmap)  # wakes memunmap_pages


def free_zone_device_folios_order0(k, a, idx) -> None:
    """free_zone_device_folio() of order-0 device folios a[idx], in order.

    Issue 7: with one pgmap whose driver offers a batch folio_free (the
    model-only ops.folio_free_bulk(arrays, indices), False if it declines), the
    struct-page resets are one store per column and the driver frees the
    batch in order; otherwise (or if the driver declines) each folio goes
    through free_zone_device_folio. Context: the default scheduler (the
    per-folio release points are not visited).
    """
    from hmmsim.include.mm_types import PG_anon_exclusive, PG_head

    pg = a.pgmap[idx]
    pgmap = k.pgmaps.get(int(pg[0])) if len(idx) else None
    bulk = pgmap.ops.folio_free_bulk if pgmap is not None and pgmap.ops is not None else None
    if (
        bulk is None
        or (pg != pg[0]).any()
        or pgmap.type not in (MEMORY_DEVICE_PRIVATE, MEMORY_DEVICE_COHERENT)
        or (a.flags[idx] & np.uint32(PG_head)).any()
        or (a.head_off[idx] != 0).any()
        or (a._mapcount[idx] != -1).any()
    ):
        for i in idx.tolist():
            k.free_zone_device_folio(Page(k, a, i))
        return
    fl = a.flags[idx]
    anon = (a.mapping[idx] & np.uint32(1)) != 0
    a.flags[idx] = np.where(anon, fl & ~np.uint32(PG_anon_exclusive), fl)
    m = a.mapping[idx].copy()
    a.mapping[idx] = 0
    if not bulk(a, idx):
        a.flags[idx] = fl  # undo: the per-folio path redoes it in order
        a.mapping[idx] = m
        for i in idx.tolist():
            k.free_zone_device_folio(Page(k, a, i))
        return
    pgmap._refs -= len(idx)


class KernelOopsMissingOp(KernelBug):
    def __init__(self, pgmap) -> None:
        super().__init__(f"free_zone_device_folio: {pgmap!r} has no folio_free op")


def get_dev_pagemap(pfn: int, *, k) -> dev_pagemap | None:
    r = k.mem.range_of(pfn)
    if r is None or not r.pgmap_id:
        return None
    pgmap = k.pgmaps.get(r.pgmap_id)
    if pgmap is None or pgmap._killed:
        return None
    return pgmap


# --- struct page helpers a driver calls (include/linux/mm.h, page_ref.h, page-flags.h) --------
def folio_reset_order(folio: Page) -> None:
    """include/linux/mm.h folio_reset_order: the folio is no longer large.

    The model's order and PG_head go, and the large-folio counters go back
    to the values an order-0 page carries (-1)."""
    a, i = folio.a, folio.i
    a.order[i] = 0
    a.flags[i] &= ~PG_head & 0xFFFFFFFF
    a._entire_mapcount[i] = -1
    a._large_mapcount[i] = -1


def folio_set_count(folio: Page, v: int) -> None:
    """include/linux/page_ref.h folio_set_count: set the reference count."""
    folio.a._refcount[folio.i] = v


def clear_compound_head(page: Page) -> None:
    """include/linux/page-flags.h clear_compound_head: not a tail page any more."""
    page.a.head_off[page.i] = 0

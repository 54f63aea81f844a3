"""The dmirror driver's device memory: chunks, device pages, free lists.

Models: lib/test_hmm.c @ torvalds/linux 0eaed89c18ae (linux-mm 05ab5121):
struct dmirror_chunk, dmirror_allocate_chunk (memremap_pages, or
memremap_device_private_pagemap under series (c)), dmirror_devmem_alloc_page,
the dev_pagemap_ops callbacks folio_free (dmirror_devmem_free) and
folio_split (dmirror_devmem_folio_split), dmirror_device_evict_chunk and
dmirror_device_remove_chunks; BACKING_PAGE and the driver's constants.

Differences from the C: free lists are packed Python lists (_FreeList)
instead of pages threaded through zone_device_data; container_of(pgmap) is
a dict lookup (dmirror_device.dmirror_chunk_of).
"""

from __future__ import annotations

import numpy as np

from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_MEMORY_DEVICE_COHERENT,
    HMM_DMIRROR_MEMORY_DEVICE_PRIVATE,
)
from hmmsim.errno import EINVAL, ENOMEM
from hmmsim.fast import test_hmm as fast
from hmmsim.fast import test_hmm_coherent as fast_coh
from hmmsim.fault_inject import should_fail
from hmmsim.include.memremap import (
    MEMORY_DEVICE_COHERENT,
    MEMORY_DEVICE_PRIVATE,
    dev_pagemap,
)
from hmmsim.include.migrate import (
    MIGRATE_PFN_COMPOUND,
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_WRITE,
)
from hmmsim.include.mm_types import (
    Page,
    folio_order,
    folio_page,
    folio_put,
    page_folio,
)
from hmmsim.kconfig import (
    HPAGE_PMD_NR,
    HPAGE_PMD_ORDER,
    PAGE_SHIFT,
)
from hmmsim.locking import folio_lock
from hmmsim.mm.memremap import (
    clear_compound_head,
    device_private_offset_to_page,
    folio_reset_order,
    folio_set_count,
    is_device_coherent_page,
    is_device_private_page,
    memremap_device_private_pagemap,
    memremap_pages,
    memunmap_device_private_pagemap,
    memunmap_pages,
    page_pgmap,
    zone_device_folio_init,
)
from hmmsim.mm.migrate import migrate_pfn, migrate_pfn_to_page
from hmmsim.mm.migrate_device import (
    migrate_device_finalize,
    migrate_device_pages,
    migrate_device_range,
)
from hmmsim.mm.page_alloc import (
    GFP_HIGHUSER_MOVABLE,
)

DMIRROR_NDEVICES = 4
DMIRROR_RANGE_FAULT_TIMEOUT = 1000
#: Series (e)'s migrate-on-fault ioctl works in windows of this many pages.
PFNS_ARRAY_SIZE = 64
DEVMEM_CHUNK_SIZE = 256 * 1024 * 1024
DEVMEM_CHUNKS_RESERVE = 16
DPT_XA_TAG_ATOMIC = 1
DPT_XA_TAG_WRITE = 3
ULONG_MAX = (1 << 64) - 1


# --- page helpers -------------------------------------------------------------------------
def _zdd_get(page: Page):
    """page->zone_device_data naming an object (a dmirror), or None."""
    v = int(page.a.zone_device_data[page.i])
    return page.k.objects.get(v) if v else None


def _zdd_set(page: Page, obj) -> None:
    if obj is None:
        page.a.zone_device_data[page.i] = 0
        return
    if obj._zdd_id is None:
        obj._zdd_id = page.k.new_object_id(obj)
    page.a.zone_device_data[page.i] = obj._zdd_id


def BACKING_PAGE(page: Page) -> Page | None:
    """The system page holding a device-private page's data (itself if coherent).

    A device-private page's zone_device_data holds its backing page (stored
    as PFN + 1, 0 for NULL).
    """
    if is_device_private_page(page):
        v = int(page.a.zone_device_data[page.i])
        return page.k.mem.pfn_to_page(v - 1) if v else None
    return page


def _set_backing(dpage: Page, rpage: Page | None) -> None:
    dpage.a.zone_device_data[dpage.i] = rpage.pfn + 1 if rpage is not None else 0


def folio_alloc(k, order: int, gfp: int = 0):
    """A system folio the driver owns (its reference is registered for the checker)."""
    folio = k.mem.alloc_pages(order, gfp)
    if folio is not None:
        k.driver_refs[folio.pfn] += 1
    return folio


def driver_folio_put(folio) -> None:
    folio.k.driver_refs[folio.pfn] -= 1
    if not folio.k.driver_refs[folio.pfn]:
        del folio.k.driver_refs[folio.pfn]
    folio_put(folio)


def _array_id(registry: list, arrays) -> int:
    """The index of a PageArrays in a packed structure's registry (added if new)."""
    for n, a in enumerate(registry):
        if a is arrays:
            return n
    registry.append(arrays)
    return len(registry) - 1


class _FreeList:
    """A LIFO list of free device pages, stored compactly.

    The C threads free pages through zone_device_data; the model keeps
    (page array, index) pairs packed in ints so that a 256 MiB chunk's 65536
    pages cost one list, not 65536 objects.
    """

    __slots__ = ("k", "arrays", "items", "_cache", "_low")

    def __init__(self, k) -> None:
        self.k = k
        self.arrays: list = []
        self.items: list[int] = []
        self._cache = np.zeros(0, dtype=np.int64)  # items[:_low] as an array
        self._low = 0

    def _aid(self, arrays) -> int:
        return _array_id(self.arrays, arrays)

    def append(self, page: Page) -> None:
        self.items.append((self._aid(page.a) << 32) | page.i)

    def extend_indices(self, arrays, indices) -> None:
        aid = self._aid(arrays) << 32
        self.items.extend(map(aid.__or__, indices))

    def pop(self) -> Page:
        v = self.items.pop()
        self._low = min(self._low, len(self.items))
        return Page(self.k, self.arrays[v >> 32], v & 0xFFFFFFFF)

    def drop_last(self, m: int) -> None:
        """Forget the last m items (what m pops take, without the Page objects)."""
        del self.items[len(self.items) - m :]
        self._low = min(self._low, len(self.items))

    def __getitem__(self, n: int) -> Page:
        v = self.items[n]
        return Page(self.k, self.arrays[v >> 32], v & 0xFFFFFFFF)

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def as_array(self) -> np.ndarray:
        """The packed items as an int64 array, for the invariant checker.

        The list changes only at its end (or is replaced), so the part below
        the lowest length reached since the last call is reused.
        """
        low = min(self._low, len(self._cache))
        tail = np.asarray(self.items[low:], dtype=np.int64)
        self._cache = np.concatenate((self._cache[:low], tail))
        self._low = len(self.items)
        return self._cache

    def drop_arrays(self, arrays) -> None:
        """Remove every page of one chunk (dmirror_remove_free_pages)."""
        for n, a in enumerate(self.arrays):
            if a is arrays:
                self.items = [v for v in self.items if v >> 32 != n]
        self._low = 0

    def clear(self) -> None:
        self.items = []
        self.arrays = []
        self._low = 0


class dmirror_chunk:
    """struct dmirror_chunk: one 256 MiB device memory chunk and its pagemap."""

    __slots__ = ("pagemap", "mdevice", "remove", "res", "_zdd_id")

    def __init__(self) -> None:
        self.pagemap = dev_pagemap()
        self.mdevice = None
        self.remove = False
        self.res = None
        self._zdd_id = None

    def pfns(self) -> range:
        """The chunk's page indices (PFNs, or (c) offsets)."""
        first = self.pagemap.range.start >> PAGE_SHIFT
        return range(
            first, first + ((self.pagemap.range.end + 1 - self.pagemap.range.start) >> PAGE_SHIFT)
        )

    def first_page(self, k) -> Page:
        """The chunk's first struct page (pfn_to_page, or under series (c)
        device_private_offset_to_page of a device-private chunk)."""
        first = self.pfns().start
        if self.pagemap.type == MEMORY_DEVICE_PRIVATE and k.config.has("c"):
            return device_private_offset_to_page(first, k=k)
        return k.mem.pfn_to_page(first)


class dmirror_devmem:
    """The device memory half of struct dmirror_device (dmirror_device in
    device.py): chunks, the free lists, and the dev_pagemap_ops folio_free
    and folio_split callbacks."""

    __slots__ = ()

    def is_private_zone(self) -> bool:
        return self.zone_device_type == HMM_DMIRROR_MEMORY_DEVICE_PRIVATE

    # --- memory --------------------------------------------------------------------------
    def dmirror_allocate_chunk(self, want_page: bool, is_large: bool):
        """Add a 256 MiB chunk; returns (0, page or None) or (-errno, None)."""
        k = self.k
        devmem = dmirror_chunk()
        pgmap = devmem.pagemap
        if self.zone_device_type == HMM_DMIRROR_MEMORY_DEVICE_PRIVATE:
            pgmap.type = MEMORY_DEVICE_PRIVATE
            if not k.config.has("c"):
                res = k.iomem.request_free_mem_region(DEVMEM_CHUNK_SIZE, "hmm_dmirror")
                if isinstance(res, int):
                    return res, None
                devmem.res = res
                pgmap.range.start, pgmap.range.end = res.start, res.end
            else:
                pgmap.nr_pages = DEVMEM_CHUNK_SIZE >> PAGE_SHIFT
        elif self.zone_device_type == HMM_DMIRROR_MEMORY_DEVICE_COHERENT:
            pgmap.range.start = self.spm_addr
            pgmap.range.end = self.spm_addr + DEVMEM_CHUNK_SIZE - 1
            pgmap.type = MEMORY_DEVICE_COHERENT
        else:
            return -EINVAL, None
        pgmap.nr_range = 1
        pgmap.ops = self.ops
        pgmap.owner = self
        with self.devmem_lock:
            if len(self.devmem_chunks) == self.devmem_capacity:
                self.devmem_capacity += DEVMEM_CHUNKS_RESERVE
            if pgmap.type == MEMORY_DEVICE_PRIVATE and k.config.has("c"):
                ret = memremap_device_private_pagemap(pgmap, 0, k=k)
            else:
                ret = memremap_pages(pgmap, 0, k=k)
            if ret < 0:
                if devmem.res is not None:
                    k.iomem.release_mem_region(devmem.res)
                return ret, None
            devmem.mdevice = self
            self.devmem_of_pgmap[id(pgmap)] = devmem
            self.devmem_chunks.append(devmem)
        first = devmem.first_page(k)
        pages, i0 = first.a, first.i
        with self.lock:
            n = len(devmem.pfns())
            if is_large:
                nfolios = n // HPAGE_PMD_NR
                self.free_folios.extend_indices(
                    pages, range(i0, i0 + nfolios * HPAGE_PMD_NR, HPAGE_PMD_NR)
                )
                self.free_pages.extend_indices(pages, range(i0 + nfolios * HPAGE_PMD_NR, i0 + n))
            else:
                self.free_pages.extend_indices(pages, range(i0, i0 + n))
            if not want_page:
                return 0, None
            if is_large:
                if not self.free_folios:
                    return -ENOMEM, None
                self.calloc += HPAGE_PMD_NR
                return 0, self.free_folios.pop()
            if self.free_pages:
                self.calloc += 1
                return 0, self.free_pages.pop()
            return -ENOMEM, None

    def dmirror_devmem_alloc_page(self, dmirror, is_large: bool):
        k = self.k
        if k.fault_inject is not None and should_fail(k, "device_alloc"):
            return None
        order = HPAGE_PMD_ORDER if is_large else 0
        rpage = None
        if self.is_private_zone():
            rpage = folio_alloc(k, order)
            if rpage is None:
                return None
        with self.lock:
            dpage = None
            if is_large and self.free_folios:
                dpage = self.free_folios.pop()
                self.calloc += 1 << order
            elif not is_large and self.free_pages:
                dpage = self.free_pages.pop()
                self.calloc += 1
        if dpage is None:
            ret, dpage = self.dmirror_allocate_chunk(True, is_large)
            if ret:
                if rpage is not None:
                    driver_folio_put(rpage)
                return None
        zone_device_folio_init(dpage, page_pgmap(dpage), order)
        _set_backing(dpage, rpage)
        return dpage

    def dmirror_devmem_free(self, folio) -> None:
        """dev_pagemap_ops.folio_free: free the backing folio, recycle the device page."""
        page = folio
        rpage = BACKING_PAGE(page)
        order = folio_order(folio)
        if rpage is not None and rpage != page:
            order = folio_order(page_folio(rpage))
            driver_folio_put(page_folio(rpage))
            _set_backing(page, None)
        chunk = self.dmirror_chunk_of(page_pgmap(page))
        with self.lock:
            if not chunk.remove:
                self.cfree += 1 << order
                if order:
                    self.free_folios.append(page)
                else:
                    self.free_pages.append(page)

    def dmirror_chunk_of(self, pgmap) -> dmirror_chunk:
        """container_of(pgmap, struct dmirror_chunk, pagemap)."""
        return self.devmem_of_pgmap[id(pgmap)]

    def dmirror_devmem_free_bulk(self, a, idx) -> bool:
        """dev_pagemap_ops.folio_free_bulk (model-only): the fast layer's
        dmirror_devmem_free of order-0 pages a[idx], or False."""
        return fast.dmirror_devmem_free_bulk(
            self, a, idx
        ) or fast_coh.dmirror_devmem_free_coherent_bulk(self, a, idx)

    def dmirror_devmem_folio_split(self, head, tail) -> None:
        """dev_pagemap_ops.folio_split: give each new tail its backing subpage."""
        rpage = BACKING_PAGE(head)
        if rpage is None:
            if tail is not None:
                _zdd_set(tail, None)
            return
        k = self.k
        rfolio = page_folio(rpage)
        if tail is None:
            folio_reset_order(rfolio)
            rfolio.a.mapping[rfolio.i] = 0  # rfolio->mapping = NULL, as the C
            folio_set_count(rfolio, 1)
            return
        offset = tail.pfn - head.pfn
        rtail = folio_page(rfolio, offset)
        _set_backing(tail, rtail)
        rtail.a.zone_device_data[rtail.i] = rfolio.a.zone_device_data[rfolio.i]
        clear_compound_head(rtail)
        rtail.a.mapping[rtail.i] = 0  # rpage_tail->mapping = NULL, as the C
        # the C writes the new tail folio's mapping and pgmap itself
        tail.a.mapping[tail.i] = head.a.mapping[head.i]
        tail.a.pgmap[tail.i] = head.a.pgmap[head.i]
        folio_set_count(rtail, 1)
        k.driver_refs[rtail.pfn] += 1  # the driver's reference on the backing subpage

    def dmirror_device_evict_chunk(self, chunk: dmirror_chunk) -> None:
        k = self.k
        pfns = chunk.pfns()
        npages = len(pfns)
        src = np.zeros(npages, dtype=np.uint64)
        dst = np.zeros(npages, dtype=np.uint64)
        migrate_device_range(
            src, pfns.start, npages, k=k, device_private=chunk.pagemap.type == MEMORY_DEVICE_PRIVATE
        )
        for i in np.nonzero(src)[0].tolist():
            sv = int(src[i])
            spage = migrate_pfn_to_page(sv, k=k)
            if spage is None or not sv & MIGRATE_PFN_MIGRATE:
                continue
            if not is_device_private_page(spage) and not is_device_coherent_page(spage):
                k.warn("dmirror_device_evict_chunk: not a device page")
                continue
            order = folio_order(page_folio(spage))
            spage = BACKING_PAGE(spage)
            if sv & MIGRATE_PFN_COMPOUND:
                dpage = k.mem.alloc_pages(order, GFP_HIGHUSER_MOVABLE)
                if dpage is None:
                    raise MemoryError("dmirror evict: folio_alloc failed (no __GFP_NOFAIL)")
            else:
                dpage = k.mem.alloc_pages(0, GFP_HIGHUSER_MOVABLE)
                if dpage is None:
                    raise MemoryError("dmirror evict: __GFP_NOFAIL allocation failed")
                order = 0
            folio_lock(dpage)
            d = migrate_pfn(dpage.pfn)
            if sv & MIGRATE_PFN_WRITE:
                d |= MIGRATE_PFN_WRITE
            if order:
                d |= MIGRATE_PFN_COMPOUND
            dst[i] = d
            n = 1 << order
            k.mem.ram.frames[dpage.pfn : dpage.pfn + n] = _frames_of(spage, n)
        migrate_device_pages(src, dst, npages, k=k)
        migrate_device_finalize(src, dst, npages, k=k)

    def dmirror_device_remove_chunks(self) -> None:
        k = self.k
        with self.devmem_lock:
            for devmem in self.devmem_chunks:
                with self.lock:
                    devmem.remove = True
                    pages = devmem.first_page(k).a
                    self.free_pages.drop_arrays(pages)
                    self.free_folios.drop_arrays(pages)
                self.dmirror_device_evict_chunk(devmem)
                if devmem.pagemap.type == MEMORY_DEVICE_PRIVATE and k.config.has("c"):
                    memunmap_device_private_pagemap(devmem.pagemap, k=k)
                else:
                    memunmap_pages(devmem.pagemap, k=k)
                if devmem.res is not None:
                    k.iomem.release_mem_region(devmem.res)
            self.devmem_chunks = []
            self.devmem_of_pgmap.clear()
            self.devmem_capacity = 0
            self.free_pages.clear()
            self.free_folios.clear()


def _frames_of(page: Page, n: int) -> np.ndarray | None:
    """The frames of n pages from page on, or None if they have no linear map."""
    k = page.k
    r = k.mem.range_of(page.pfn)
    if r is None or r.frames is None:
        return None
    base = page.pfn - r.base
    return r.frames[base : base + n]

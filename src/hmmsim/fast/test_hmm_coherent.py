"""The fast layer of the dmirror driver for its device-coherent memory.

Fast layer for drivers/test_hmm/ (lib/test_hmm.c @ torvalds/linux
0eaed89c18ae), the HMM_DMIRROR_MEMORY_DEVICE_COHERENT device. Not kernel
code. A device-coherent page holds its own bytes (BACKING_PAGE() is the page
itself), so the driver's per-page work differs from the device-private
forms of fast/test_hmm.py: no backing system page to allocate or free, the
copies go between system RAM and the device range's own frames, and the
mirror maps the device page itself.

Each function is offered a whole window by one line at the top of the
driver's per-entry loop (after the device-private form declined) and
either handles all of it, returning the window's slot count (True for the
free), or declines with 0 (False) having changed nothing:

- `dmirror_migrate_alloc_and_copy_coherent_bulk`: dmirror_migrate_alloc_and_copy
  (sys -> dev) for order-0 system pages and holes;
- `dmirror_migrate_finalize_and_map_coherent_bulk`: the mirror update of
  dmirror_migrate_finalize_and_map for order-0 coherent destinations;
- `dmirror_devmem_fault_alloc_and_copy_coherent_bulk`:
  dmirror_devmem_fault_alloc_and_copy (dev -> sys) for order-0 coherent sources;
- `dmirror_devmem_free_coherent_bulk`: dmirror_devmem_free (folio_free) of
  order-0 coherent pages;
- `dmirror_alloc_and_copy_coherent_split_bulk`: offered one compound source
  slot inside dmirror_migrate_alloc_and_copy's loop, its per-page fallback
  (no device THP: the source's pages to order-0 device pages), returning
  the slots it handled.

Imports and struct-page stores follow fast/'s rules (docs/design.md): the
only column written directly is the driver's own zone_device_data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_FLAG_FAIL_ALLOC,
    HMM_DMIRROR_MEMORY_DEVICE_COHERENT,
)
from hmmsim.fast.arrays import distinct_values, has_duplicates, slot_words, store_slots
from hmmsim.fast.test_hmm import DPT_XA_TAG_WRITE, GFP_HIGHUSER_MOVABLE, I64Array
from hmmsim.include.memremap import MEMORY_DEVICE_COHERENT
from hmmsim.include.migrate import (
    MIGRATE_PFN_COMPOUND,
    MIGRATE_PFN_DEVICE_PRIVATE,
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_VALID,
    MIGRATE_PFN_WRITE,
    migrate_pfn_array,
    migrate_pfn_to_pfn_array,
)
from hmmsim.include.mm_types import PageArrays, PG_head
from hmmsim.kconfig import PAGE_SHIFT
from hmmsim.mm.page_batch import (
    folio_lock_pages,
    zone_device_pages_init,
    zone_device_pages_init_would_warn,
)

#: shortest window worth a bulk pass
MIN_RUN = 8


def _coherent_mirror(d: Any) -> bool:
    mdev = d.mdevice
    return bool(mdev.k.fastpath) and mdev.zone_device_type == HMM_DMIRROR_MEMORY_DEVICE_COHERENT


def _coherent_pages(
    k: Any, vals: Any, migrate_pfn_to_page: Any
) -> tuple[PageArrays, I64Array, int] | None:
    """(arrays, positions, pgmap id) of the order-0 device-coherent pages that
    the VALID migrate PFNs vals name, all in one pagemap; None otherwise."""
    first = migrate_pfn_to_page(int(vals[0]), k=k)
    if first is None or (vals & np.uint64(MIGRATE_PFN_DEVICE_PRIVATE)).any():
        return None
    pgmap = k.page_pgmap(first)
    if pgmap is None or pgmap.type != MEMORY_DEVICE_COHERENT:
        return None
    a = first.a
    pos = migrate_pfn_to_pfn_array(vals) - a.base
    if (pos < 0).any() or (pos >= a.nr).any() or has_duplicates(pos):
        return None
    pid = int(a.pgmap[first.i])
    if (a.pgmap[pos] != pid).any():
        return None
    if (a.flags[pos] & np.uint32(PG_head)).any() or (a.head_off[pos] != 0).any():
        return None
    return a, pos, pid


def _take_device_pages(
    d: Any, mdev: Any, k: Any, m: int
) -> tuple[PageArrays, I64Array, Any] | None:
    """The m device pages that m dmirror_devmem_alloc_page pops would give, taken
    and initialised as that loop leaves them (free-list pops, calloc,
    zone_device_page_init, the mirror in zone_device_data): (pages, their
    indices, their MemRange), or None, having changed nothing, where the
    per-page loop would do something else (add a chunk, cross two ranges,
    warn)."""
    free = mdev.free_pages
    if len(free) < m:
        return None  # the per-slot path allocates a chunk
    items = np.array(free.items[-m:][::-1], dtype=np.int64)  # what m pops return
    aids = items >> 32
    didx = items & 0xFFFFFFFF
    if len(distinct_values(aids)) != 1:
        return None
    a = free.arrays[int(aids[0])]
    r = k.mem.range_of(a.base)
    if r is None or r.pages is not a or r.frames is None:
        return None
    if zone_device_pages_init_would_warn(a, didx, k=k):
        return None
    with mdev.lock:
        free.drop_last(m)
        mdev.calloc += m
    zone_device_pages_init(a, didx, k=k)
    if d._zdd_id is None:
        d._zdd_id = k.new_object_id(d)
    a.zone_device_data[didx] = d._zdd_id  # _zdd_set(BACKING_PAGE(dpage), dmirror)
    return a, didx, r


def dmirror_migrate_alloc_and_copy_coherent_bulk(d: Any, args: Any) -> int:
    """dmirror_migrate_alloc_and_copy on the coherent device for a window of
    order-0 system pages and holes: the window's slot count, or 0.

    Only with Kernel.fastpath, no injected allocation failure, no compound
    slot, every MIGRATE source a system RAM page (or a hole), and enough
    pages on the device's free list, none still referenced and none of a
    pagemap being unmapped. Then, as one dmirror_devmem_alloc_page per slot
    in order: the device page popped from the free list, initialised (one
    reference, locked: zone_device_folio_init), owned by this mirror
    (zone_device_data, as BACKING_PAGE is the page itself); dst = its
    migrate PFN | WRITE as the source had; the source's bytes (or zeros)
    copied into the device page's frame.
    """
    k = d.mdevice.k
    mdev = d.mdevice
    if not _coherent_mirror(d) or d.flags & HMM_DMIRROR_FLAG_FAIL_ALLOC:
        return 0
    n: int = (args.end - args.start) >> PAGE_SHIFT
    src, dst = args.src, args.dst
    sv = slot_words(src, range(n))
    take = np.flatnonzero((sv & np.uint64(MIGRATE_PFN_MIGRATE)) != 0)
    m = len(take)
    if m < MIN_RUN or (sv & np.uint64(MIGRATE_PFN_COMPOUND)).any():
        return 0
    vals = sv[take]
    valid = (vals & np.uint64(MIGRATE_PFN_VALID)) != 0
    spfn = migrate_pfn_to_pfn_array(vals)
    ram = k.mem.ram
    if (vals[valid] & np.uint64(MIGRATE_PFN_DEVICE_PRIVATE)).any() or (
        spfn[valid] >= ram.pages.nr
    ).any():
        return 0  # a source outside system RAM: the per-slot path warns
    took = _take_device_pages(d, mdev, k, m)
    if took is None:
        return 0
    a, didx, r = took
    out = migrate_pfn_array(didx + a.base) | (vals & np.uint64(MIGRATE_PFN_WRITE))
    store_slots(dst, take, out)
    frames = r.frames
    if valid.any():
        frames[didx[valid]] = ram.frames[spfn[valid]]
    if not valid.all():
        frames[didx[~valid]] = 0
    return n


def dmirror_migrate_finalize_and_map_coherent_bulk(
    d: Any, args: Any, hole_write: bool, migrate_pfn_to_page: Any
) -> int:
    """The mirror update of dmirror_migrate_finalize_and_map for a window of
    order-0 device-coherent destinations: every MIGRATE slot's mirror entry
    is its device page (its own BACKING_PAGE), tagged writable as its dst
    (or, `hole_write`, a hole's too). The window's slot count, or 0 having
    done nothing; call with the mutex held."""
    k = d.mdevice.k
    if not _coherent_mirror(d):
        return 0
    n: int = (args.end - args.start) >> PAGE_SHIFT
    sv = slot_words(args.src, range(n))
    take = np.flatnonzero((sv & np.uint64(MIGRATE_PFN_MIGRATE)) != 0)
    if len(take) < MIN_RUN:
        return 0
    dv = slot_words(args.dst, take.tolist())
    if ((dv & np.uint64(MIGRATE_PFN_VALID)) == 0).any() or (
        dv & np.uint64(MIGRATE_PFN_COMPOUND)
    ).any():
        return 0
    pages = _coherent_pages(k, dv, migrate_pfn_to_page)
    if pages is None:
        return 0
    a, pos, _ = pages
    write = (dv & np.uint64(MIGRATE_PFN_WRITE)) != 0
    if hole_write:
        write |= (sv[take] & np.uint64(MIGRATE_PFN_VALID)) == 0
    tags = np.where(write, DPT_XA_TAG_WRITE, 0)
    d.pt.map_many(((args.start >> PAGE_SHIFT) + take).tolist(), a, pos, tags)
    return n


def dmirror_devmem_fault_alloc_and_copy_coherent_bulk(
    d: Any, args: Any, migrate_pfn_to_page: Any
) -> int:
    """dmirror_devmem_fault_alloc_and_copy for a window of order-0
    device-coherent sources: the window's slot count, or 0 having done nothing.

    Only with Kernel.fastpath, no injected allocation failure, enough free
    system pages, and every MIGRATE source an order-0 coherent page of one
    pagemap. Then, as the per-slot loop: one new locked system page per
    source, in allocation order (alloc_pages_order0_bulk), dst =
    migrate_pfn | WRITE as the source had, the mirror's entry dropped, the
    device page's bytes copied into the new page.
    """
    k = d.mdevice.k
    if not _coherent_mirror(d) or d.flags & HMM_DMIRROR_FLAG_FAIL_ALLOC:
        return 0
    n: int = (args.end - args.start) >> PAGE_SHIFT
    src, dst = args.src, args.dst
    sv = slot_words(src, range(n))
    need = np.uint64(MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE)
    take = np.flatnonzero((sv & need) == need)
    if len(take) < MIN_RUN:
        return 0
    vals = sv[take]
    pages = _coherent_pages(k, vals, migrate_pfn_to_page)
    if pages is None:
        return 0
    a, pos, _ = pages
    r = k.mem.range_of(a.base)
    if r is None or r.pages is not a or r.frames is None:
        return 0
    new = k.mem.alloc_pages_order0_bulk(len(take), GFP_HIGHUSER_MOVABLE)
    if new is None:
        return 0
    ram = k.mem.ram
    folio_lock_pages(ram.pages, new)  # folio_lock() of each fresh page
    dw = migrate_pfn_array(new) | (vals & np.uint64(MIGRATE_PFN_WRITE))
    store_slots(dst, take, dw)
    d.pt.discard_many((take + (args.start >> PAGE_SHIFT)).tolist())
    ram.frames[new] = r.frames[pos]
    return n


def dmirror_devmem_free_coherent_bulk(mdev: Any, a: PageArrays, idx: I64Array) -> bool:
    """dmirror_devmem_free of order-0 device-coherent pages a[idx] of one
    pagemap, in order: BACKING_PAGE is each page itself, so there is no
    backing folio to put; each goes back on the free list (and counts in
    cfree) unless its chunk is being removed. False (nothing done) unless
    Kernel.fastpath and the coherent device."""
    k = mdev.k
    if (
        not k.fastpath
        or mdev.zone_device_type != HMM_DMIRROR_MEMORY_DEVICE_COHERENT
        or not len(idx)
    ):
        return False
    pgmap = k.pgmaps.get(int(a.pgmap[int(idx[0])]))
    if pgmap is None or pgmap.type != MEMORY_DEVICE_COHERENT:
        return False
    if mdev.dmirror_chunk_of(pgmap).remove:
        return True  # the C frees nothing into the list then
    with mdev.lock:
        mdev.cfree += len(idx)
        mdev.free_pages.extend_indices(a, idx.tolist())
    return True


def dmirror_alloc_and_copy_coherent_split_bulk(d: Any, args: Any, i: int, s: int, nr: int) -> int:
    """The per-page fallback of dmirror_migrate_alloc_and_copy for one
    compound source slot on the coherent device (lib/test_hmm.c: no device
    THP was free, so the THP's nr pages go to nr order-0 device pages): the
    number of slots handled from slot i, or 0 having changed nothing.

    Only with Kernel.fastpath, no fault injection armed (so no allocation
    can be failed), at least MIN_RUN slots, enough pages on the device's
    free list (no chunk would be added mid-window), all in one range with
    frames, none that zone_device_folio_init would warn about, and a source
    (when s is VALID) whose nr frames are in system RAM. Then, as the loop's
    dmirror_devmem_alloc_page(is_large=False) per slot in order: the page
    popped, initialised, owned by this mirror; dst = its migrate PFN |
    WRITE as the compound source had; the source's j-th frame (or zeros)
    copied into it.
    """
    k = d.mdevice.k
    mdev = d.mdevice
    if not _coherent_mirror(d) or k.fault_inject is not None:
        return 0
    n_slots: int = (args.end - args.start) >> PAGE_SHIFT
    m = min(nr, n_slots - i)
    if m < MIN_RUN:
        return 0
    ram = k.mem.ram
    valid = bool(s & MIGRATE_PFN_VALID)
    spfn = s >> 6
    if valid and (s & MIGRATE_PFN_DEVICE_PRIVATE or spfn + m > ram.pages.nr):
        return 0
    took = _take_device_pages(d, mdev, k, m)
    if took is None:
        return 0
    a, didx, r = took
    out = migrate_pfn_array(didx + a.base) | np.uint64(s & MIGRATE_PFN_WRITE)
    store_slots(args.dst, np.arange(i, i + m, dtype=np.int64), out)
    frames = r.frames
    if valid:
        frames[didx] = ram.frames[spfn : spfn + m]
    else:
        frames[didx] = 0
    return m

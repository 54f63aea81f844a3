"""The fast layer of the dmirror test driver: bulk NumPy forms of its loops.

Fast layer for drivers/test_hmm/ (lib/test_hmm.c @ torvalds/linux
0eaed89c18ae). Not kernel code: each function here is offered a whole run
(a migrate window, a read, a fault's hmm_pfns) by one line at the top of the
driver's per-entry loop, and either handles all of it, returning how many
entries it handled, or declines (returns 0, or False/None where noted) having
changed nothing, so the per-entry loop runs as the C does. Every function
ends in exactly the state the loop would leave
(tests/unit/test_fastpath_differential.py). docs/design.md, "Fast paths".

Imports: include/, kconfig, NumPy, the uapi constants and the batched
struct-page operations of mm/page_batch.py; no other mm/ or drivers/
module (tests/unit/test_layering.py). The driver objects come in as
arguments (`d` a struct dmirror, `mdev` a struct dmirror_device), and so
does the one lookup the driver borrows from mm/ (`migrate_pfn_to_page`);
the pagemap of a page is `k.page_pgmap(page)`.
"""

from __future__ import annotations

from collections import deque
from typing import Any, TypeAlias, cast

import numpy as np
from numpy.typing import NDArray

from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_FLAG_FAIL_ALLOC,
    HMM_DMIRROR_PROT_PMD,
    HMM_DMIRROR_PROT_PUD,
    HMM_DMIRROR_PROT_READ,
    HMM_DMIRROR_PROT_WRITE,
)
from hmmsim.fast.arrays import distinct_values, has_duplicates, slot_words, store_slots
from hmmsim.include.hmm import hmm_range
from hmmsim.include.memremap import MEMORY_DEVICE_PRIVATE
from hmmsim.include.migrate import (
    MIGRATE_PFN_COMPOUND,
    MIGRATE_PFN_DEVICE_PRIVATE,
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_SHIFT,
    MIGRATE_PFN_VALID,
    MIGRATE_PFN_WRITE,
)
from hmmsim.include.mm_types import Page, PageArrays, PG_head
from hmmsim.kconfig import DEVICE_PRIVATE_BASE, PAGE_SHIFT, PAGE_SIZE, PMD_SHIFT, PUD_SHIFT
from hmmsim.mm.page_batch import (
    folio_lock_pages,
    folio_put_last_pages,
    zone_device_pages_init,
    zone_device_pages_init_would_warn,
)

#: lib/test_hmm.c's writable tag of a mirror entry (drivers/test_hmm/devmem.py
#: DPT_XA_TAG_WRITE; tests/unit/test_driver_api.py holds them equal).
DPT_XA_TAG_WRITE = 3
#: gfp of the pages migrate_to_ram allocates (mm/page_alloc.py GFP_HIGHUSER_MOVABLE)
GFP_HIGHUSER_MOVABLE = 0x140CCA


I64Array: TypeAlias = NDArray[np.int64]
U8Array: TypeAlias = NDArray[np.uint8]
#: one run of _read_plan: (frames, indices, s, e), page s..e-1 being frames[indices]
ReadRun: TypeAlias = tuple[U8Array, I64Array, int, int]


def _copy_scratch(mdev: Any, n: int) -> U8Array:
    """A reused (n, PAGE_SIZE) host buffer for gathered frames, kept by the
    device (`mdev.frame_copy_scratch`; issue 7)."""
    buf = mdev.frame_copy_scratch
    if buf is None or len(buf) < n:
        buf = np.empty((max(n, 512), PAGE_SIZE), dtype=np.uint8)
        mdev.frame_copy_scratch = buf
    out: U8Array = buf[:n]
    return out


class FrameCopies:
    """The driver's one-page copies into its new pages, done together.

    copy(to, frm) is `frame(to)[:] = frame(frm)` (frm None: zero-fill). With
    Kernel.fastpath and both pages in system RAM the copy is queued and
    flush() does every queued one: runs of consecutive frames on both sides
    as slice copies, or one gather and scatter when the runs are short.
    That is the same bytes because the queued destinations are distinct
    fresh pages that nothing reads or writes before the flush (the callers
    flush before they return, also on errors). Not in the C (issue 7).
    """

    __slots__ = ("mdev", "k", "ram", "to", "frm", "zero")

    def __init__(self, mdev: Any) -> None:
        self.mdev = mdev
        k = self.k = mdev.k
        self.ram = k.mem.ram
        self.to: list[int] = []
        self.frm: list[int] = []
        self.zero: list[int] = []

    def copy(self, to: Page, frm: Page | None) -> None:
        ram = self.ram.pages
        if self.k.fastpath and to.a is ram and (frm is None or frm.a is ram):
            if frm is None:
                self.zero.append(to.i)
            else:
                self.to.append(to.i)
                self.frm.append(frm.i)
            return
        to.k.mem.frame(to.pfn)[:] = to.k.mem.frame(frm.pfn) if frm is not None else 0

    def copy_pfn(self, to: int, frm: int) -> None:
        nr = self.ram.pages.nr
        if self.k.fastpath and 0 <= to < nr and 0 <= frm < nr:
            self.to.append(to)
            self.frm.append(frm)
            return
        self.k.mem.frame(to)[:] = self.k.mem.frame(frm)

    def flush(self) -> None:
        frames = self.ram.frames
        if len(self.to) == 1 and not self.zero and isinstance(frames, np.ndarray):
            # one page (a CPU fault on one device page): one frame copy, no index arrays
            frames[self.to[0]] = frames[self.frm[0]]
            self.to, self.frm = [], []
            return
        if self.to and not isinstance(frames, np.ndarray):  # the token data plane
            frames[np.array(self.to)] = frames[np.array(self.frm)]  # one token gather
        elif self.to:
            to, frm = np.array(self.to), np.array(self.frm)
            n = len(to)
            # runs where both sides step by one frame the same way, up or down
            # (pages handed out from a pcp list come in descending runs): a
            # slice copy each is one pass over the bytes; a gather and scatter is two
            dt, df = np.diff(to), np.diff(frm)
            lock = (dt == df) & ((dt == 1) | (dt == -1))
            brk = ~lock
            brk[1:] |= lock[1:] & lock[:-1] & (dt[1:] != dt[:-1])  # up turns down
            cut = np.flatnonzero(brk) + 1
            if len(cut) * 4 < n:
                lo = np.concatenate(([0], cut))
                hi = np.concatenate((cut, [n]))
                # a run's lowest frames on both sides pair up (either direction)
                t0 = np.minimum(to[lo], to[hi - 1]).tolist()
                f0 = np.minimum(frm[lo], frm[hi - 1]).tolist()
                for t, f, m in zip(t0, f0, (hi - lo).tolist(), strict=True):
                    frames[t : t + m] = frames[f : f + m]
            else:
                buf = _copy_scratch(self.mdev, n)
                np.take(frames, frm, axis=0, out=buf, mode="clip")  # indices checked on entry
                frames[to] = buf
        if self.zero:
            frames[self.zero] = 0
        self.to, self.frm, self.zero = [], [], []


def dmirror_devmem_free_bulk(mdev: Any, a: PageArrays, idx: I64Array) -> bool:
    """dmirror_devmem_free of order-0 device pages a[idx], in order (issue 7).

    Only where each is a device-private page of a live chunk backed by an
    order-0 system page that the driver alone references: the backing
    pages are put (and freed in order), the device pages go on the free
    list in order. False (nothing done) otherwise.
    """
    k = mdev.k
    if not k.fastpath or not mdev.is_private_zone():
        return False
    zdd = a.zone_device_data[idx]
    ram = k.mem.ram.pages
    back = zdd - 1
    if (zdd <= 0).any() or (back >= ram.nr).any() or has_duplicates(back):
        return False
    if (ram.flags[back] & np.uint32(PG_head)).any() or (ram._refcount[back] != 1).any():
        return False
    refs = k.driver_refs
    bl = back.tolist()
    if set(map(refs.get, bl)) != {1}:
        return False  # the driver's reference is not the only one
    if mdev.dmirror_chunk_of(k.page_pgmap(Page(k, a, int(idx[0])))).remove:
        return False
    deque(map(refs.pop, bl), maxlen=0)  # driver_folio_put(): each count goes 1 -> 0
    folio_put_last_pages(ram, back, k=k)
    a.zone_device_data[idx] = 0
    with mdev.lock:
        mdev.cfree += len(idx)
        mdev.free_pages.extend_indices(a, idx.tolist())
    return True


def _read_plan(d: Any, start: int, end: int, limit: int) -> tuple[int, list[ReadRun]]:
    """The leading run of at most `limit` mirrored pages of [start, end)
    that have a linear map, as (m, runs): runs are (frames, indices, s, e),
    page s..e-1 of the run being frames[indices]. Issue 7, not in the C."""
    pt = d.pt
    vals = pt.packed_run(start >> PAGE_SHIFT, end >> PAGE_SHIFT)
    m = min(len(vals), limit)
    if m <= 0:
        return 0, []
    arr = np.array(vals[:m], dtype=np.int64)
    aids = arr >> 40
    idx = (arr >> 2) & pt.IDX_MASK
    mem = d.mdevice.k.mem
    runs: list[ReadRun] = []
    segs = [0, *(np.flatnonzero(np.diff(aids) != 0) + 1).tolist(), m]
    for s, e in zip(segs, segs[1:], strict=False):  # runs of one PageArrays
        base = pt.arrays[int(aids[s])].base
        r = mem.range_of(base)
        sub = idx[s:e]
        if r is None or r.frames is None or r.base != base:
            return s, runs
        if int(sub.max()) >= len(r.frames) or int(sub.min()) < 0:
            return s, runs
        runs.append((r.frames, sub, s, e))
    return m, runs


def _read_runs(runs: list[ReadRun], out: U8Array) -> None:
    """Copy the pages of _read_plan's runs into out (one row per page)."""
    for frames, sub, s, e in runs:
        cuts = [0, *(np.flatnonzero(np.diff(sub) != 1) + 1).tolist(), e - s]
        if len(cuts) > (e - s) // 16 + 2:
            # mode="clip" (indices checked by the plan) lets take write straight into out
            np.take(frames, sub, axis=0, out=out[s:e], mode="clip")
            continue
        for c0, c1 in zip(cuts, cuts[1:], strict=False):  # consecutive frames
            first = int(sub[c0])
            out[s + c0 : s + c1] = frames[first : first + c1 - c0]


def dmirror_do_read_bulk(d: Any, start: int, end: int, bounce: Any, off: int) -> int:
    """dmirror_do_read's loop for the leading run of mirrored pages that
    have a linear map, copied per run of consecutive frames (or as one
    gather); returns how many pages it copied. Not in the C (issue 7):
    the same bytes land at the same bounce offsets as the per-page loop,
    which does whatever is left (a hole, a page with no linear map). 0
    without Kernel.fastpath or for a single page."""
    if not d.mdevice.k.fastpath or end - start <= PAGE_SIZE:
        return 0
    m, runs = _read_plan(d, start, end, (bounce.ptr.size - off) // PAGE_SIZE)
    if m <= 0:
        return 0
    out = bounce.ptr[off : off + m * PAGE_SIZE].reshape(m, PAGE_SIZE)
    _read_runs(runs, out)
    bounce.cpages += m
    return m


def dmirror_read_to_user(d: Any, start: int, size: int, uptr: Any) -> int | None:
    """dmirror_do_read into a bounce, then copy_to_user, as one copy.

    Only where the outcome cannot differ from the two steps: the fast
    paths on, every page of the range mirrored with a linear map (so the
    read cannot fail or oops half way), and the user buffer a writable,
    contiguous host array at least `size` long that shares no memory with
    modelled frames. Returns the pages read (bounce.cpages), or None
    without writing anything. The bounce is kernel memory no one else
    sees, so the user gets the same bytes (issue 7, not in the C).
    """
    k = d.mdevice.k
    if not k.fastpath or not isinstance(uptr, np.ndarray) or size < PAGE_SIZE:
        return None
    if not uptr.flags.c_contiguous:
        return None
    # the caller's buffer as bytes (numpy's stubs do not call an ndarray a Buffer)
    view = np.frombuffer(memoryview(cast(Any, uptr)).cast("B"), dtype=np.uint8)
    if view.size < size or not view.flags.writeable:
        return None  # copy_to_user's own path decides what happens
    npages = size >> PAGE_SHIFT
    with d.mutex:
        m, runs = _read_plan(d, start, start + size, npages)
        if m != npages or any(
            isinstance(f, np.ndarray) and np.may_share_memory(view, f) for f, *_ in runs
        ):  # (token-plane frames are no host memory a user buffer could alias)
            return None
        _read_runs(runs, view[:size].reshape(npages, PAGE_SIZE))
    return npages


def dmirror_do_fault_bulk(d: Any, r: hmm_range) -> int:
    """dmirror_do_fault where every word is VALID, not ERROR, names a
    system RAM page and, if the range asked for write, grants it: the
    loop would warn about nothing and map each vpn to that page, tagged
    writable where the word is. Returns how many pages it mapped (the whole
    range), or 0 having done nothing. Not in the C (issue 7)."""
    if not d.mdevice.k.fastpath:
        return 0
    L = d.mdevice.k.hmm
    n = (r.end - r.start) >> PAGE_SHIFT
    hp: Any = r.hmm_pfns
    if n < 8 or len(hp) < n:
        return 0
    try:
        v = np.asarray(hp[:n], dtype=np.uint64)
    except (OverflowError, TypeError, ValueError):
        return 0
    if (v & np.uint64(L.HMM_PFN_DEVICE_PRIVATE)).any():
        return 0  # a series (c) offset: hmm_pfn_to_page translates it
    valid, err, wr = (np.uint64(f) for f in (L.HMM_PFN_VALID, L.HMM_PFN_ERROR, L.HMM_PFN_WRITE))
    if ((v & valid) == 0).any() or (v & err).any():
        return 0
    write = (v & wr) != 0
    if r.default_flags & L.HMM_PFN_WRITE and not write.all():
        return 0
    pfn = v & np.uint64(~L.HMM_PFN_FLAGS & L._word_mask)
    ram = d.mdevice.k.mem.ram.pages
    if (pfn >= np.uint64(ram.nr)).any():
        return 0
    tags = np.where(write, DPT_XA_TAG_WRITE, 0)
    d.pt.map_many(list(range(r.start >> PAGE_SHIFT, r.end >> PAGE_SHIFT)), ram, pfn, tags)
    return n


def dmirror_range_snapshot_bulk(d: Any, entries: Any, n: int, perm: NDArray[Any]) -> int:
    """perm[i] = dmirror_mkentry(entries[i]) for i < n, system RAM pages in
    one NumPy pass; returns n (0 without Kernel.fastpath).

    A valid, non-error word naming a RAM PFN other than the zero page is
    a plain system page: NONE | READ or WRITE | PMD/PUD by its order,
    exactly what dmirror_mkentry gives. Every other word goes through
    dmirror_mkentry. Not in the C (issue 7's fast path).
    """
    k = d.mdevice.k
    if not k.fastpath:
        return 0
    L = k.hmm
    w = np.array(entries[:n], dtype=np.uint64)
    pfn = w & np.uint64((1 << L.HMM_PFN_ORDER_SHIFT) - 1)
    ram = (
        ((w & np.uint64(L.HMM_PFN_VALID)) != 0)
        & ((w & np.uint64(L.HMM_PFN_ERROR | L.HMM_PFN_DEVICE_PRIVATE)) == 0)
        & (pfn < np.uint64(k.mem.ram.pages.nr))
        & (pfn != np.uint64(k.mem.zero_pfn))
    )
    order = ((w >> np.uint64(L.HMM_PFN_ORDER_SHIFT)) & np.uint64(0x1F)).astype(np.int64)
    p = np.where((w & np.uint64(L.HMM_PFN_WRITE)) != 0, HMM_DMIRROR_PROT_WRITE, 0)
    p |= np.where((w & np.uint64(L.HMM_PFN_WRITE)) == 0, HMM_DMIRROR_PROT_READ, 0)
    p |= np.where(order + PAGE_SHIFT == PMD_SHIFT, HMM_DMIRROR_PROT_PMD, 0)
    p |= np.where(order + PAGE_SHIFT == PUD_SHIFT, HMM_DMIRROR_PROT_PUD, 0)
    perm[:n] = p
    for j in np.flatnonzero(~ram).tolist():
        perm[j] = d.dmirror_mkentry(int(entries[j]))
    return n


def dmirror_migrate_alloc_and_copy_bulk(d: Any, args: Any, copies: FrameCopies) -> int:
    """dmirror_migrate_alloc_and_copy for a window of order-0 system pages
    and holes: returns the window's slot count, or 0 having done nothing.

    Not in the C (issue 7). Only with the default scheduler, a
    device-private mirror, no injected allocation failure, no compound
    slot, every source a system RAM page (or a hole), enough free system
    pages and enough free device pages on the free list, none of them
    still referenced. Then, as one dmirror_devmem_alloc_page per slot in
    order: a backing page from alloc_pages_order0_bulk (the same PFNs),
    registered as a driver reference and owned by this mirror; the device
    page popped from the free list, initialised (ref 1, locked) and
    pointed at its backing page; dst = its migrate PFN | WRITE as the
    source had; the source's bytes (or zeros) queued for copying.
    """
    k = d.mdevice.k
    mdev = d.mdevice
    if not k.fastpath or d.flags & HMM_DMIRROR_FLAG_FAIL_ALLOC or not mdev.is_private_zone():
        return 0
    n: int = (args.end - args.start) >> PAGE_SHIFT
    src, dst = args.src, args.dst
    sv = slot_words(src, range(n))
    take = np.flatnonzero((sv & np.uint64(MIGRATE_PFN_MIGRATE)) != 0)
    m = len(take)
    if m < 8 or (sv & np.uint64(MIGRATE_PFN_COMPOUND)).any():
        return 0
    vals = sv[take]
    valid = (vals & np.uint64(MIGRATE_PFN_VALID)) != 0
    spfn = (vals >> np.uint64(MIGRATE_PFN_SHIFT)).astype(np.int64)
    ram = k.mem.ram.pages
    if (vals[valid] & np.uint64(MIGRATE_PFN_DEVICE_PRIVATE)).any() or (spfn[valid] >= ram.nr).any():
        return 0  # a source outside system RAM: the per-slot path decides
    free = mdev.free_pages
    if len(free) < m or k.mem.nr_free < m:
        return 0
    items = np.array(free.items[-m:][::-1], dtype=np.int64)  # what m pops return, in order
    aids = items >> 32
    didx = items & 0xFFFFFFFF
    groups = {int(aid): np.flatnonzero(aids == aid) for aid in distinct_values(aids)}
    for aid, where in groups.items():
        if zone_device_pages_init_would_warn(free.arrays[aid], didx[where], k=k):
            return 0
    back = k.mem.alloc_pages_order0_bulk(m)
    if back is None:
        return 0
    k.driver_refs.update(back.tolist())  # folio_alloc(): the driver's reference
    with mdev.lock:
        free.drop_last(m)
        mdev.calloc += m
    if d._zdd_id is None:
        d._zdd_id = k.new_object_id(d)
    ram.zone_device_data[back] = d._zdd_id  # the backing pages' owner (the mirror)
    out = np.zeros(m, dtype=np.uint64)
    for aid, where in groups.items():
        a = free.arrays[aid]
        idx = didx[where]
        zone_device_pages_init(a, idx, k=k)
        a.zone_device_data[idx] = back[where] + 1
        swp_index = idx + (
            a.base - DEVICE_PRIVATE_BASE if a.base >= DEVICE_PRIVATE_BASE else a.base
        )
        word = (swp_index.astype(np.uint64) << np.uint64(MIGRATE_PFN_SHIFT)) | np.uint64(
            MIGRATE_PFN_VALID
        )
        if k.config.has("a"):
            word |= np.uint64(MIGRATE_PFN_DEVICE_PRIVATE)
        out[where] = word
    out |= vals & np.uint64(MIGRATE_PFN_WRITE)
    store_slots(dst, take, out)
    copies.to.extend(back[valid].tolist())
    copies.frm.extend(spfn[valid].tolist())
    copies.zero.extend(back[~valid].tolist())
    return n


def dmirror_migrate_finalize_and_map_bulk(
    d: Any, args: Any, hole_write: bool, migrate_pfn_to_page: Any
) -> int:
    """The mirror update of dmirror_migrate_finalize_and_map for a window
    of order-0 device-private destinations (issue 7, not in the C): every
    MIGRATE slot's mirror entry is its backing page, tagged writable as
    its dst (or, `hole_write`, a hole's too). Returns the window's slot
    count, or 0 having done nothing; call with the mutex held."""
    k = d.mdevice.k
    if not k.fastpath or not d.mdevice.is_private_zone():
        return 0
    n: int = (args.end - args.start) >> PAGE_SHIFT
    sv = slot_words(args.src, range(n))
    take = np.flatnonzero((sv & np.uint64(MIGRATE_PFN_MIGRATE)) != 0)
    if len(take) < 8:
        return 0
    dv = slot_words(args.dst, take.tolist())
    if ((dv & np.uint64(MIGRATE_PFN_VALID)) == 0).any() or (
        dv & np.uint64(MIGRATE_PFN_COMPOUND)
    ).any():
        return 0
    first = migrate_pfn_to_page(int(dv[0]), k=k)
    if first is None or k.page_pgmap(first).type != MEMORY_DEVICE_PRIVATE:
        return 0
    a = first.a
    pos = (dv >> np.uint64(MIGRATE_PFN_SHIFT)).astype(np.int64)
    pos += first.i - int(pos[0])
    flag = dv & np.uint64(MIGRATE_PFN_DEVICE_PRIVATE)
    if (flag != flag[0]).any() or (pos < 0).any() or (pos >= a.nr).any():
        return 0
    if (a.pgmap[pos] != a.pgmap[first.i]).any():
        return 0
    back = a.zone_device_data[pos] - 1
    ram = k.mem.ram.pages
    if (back < 0).any() or (back >= ram.nr).any() or (ram.head_off[back] != 0).any():
        return 0
    if (ram.flags[back] & np.uint32(PG_head)).any():
        return 0
    write = (dv & np.uint64(MIGRATE_PFN_WRITE)) != 0
    if hole_write:
        write |= (sv[take] & np.uint64(MIGRATE_PFN_VALID)) == 0
    tags = np.where(write, DPT_XA_TAG_WRITE, 0)
    vpns = ((args.start >> PAGE_SHIFT) + take).tolist()
    d.pt.map_many(vpns, ram, back, tags)
    return n


def dmirror_devmem_fault_alloc_and_copy_bulk(
    d: Any, args: Any, copies: FrameCopies, migrate_pfn_to_page: Any
) -> int:
    """dmirror_devmem_fault_alloc_and_copy for a window of order-0
    device-private pages: the window's slot count, or 0 having done nothing.

    Not in the C (issue 7). Only with the default scheduler, no injected
    allocation failure, enough free pages, and every MIGRATE source an
    order-0 device-private page of one range with an order-0 backing
    page. Then, as the per-slot loop: one new locked system page per
    source, in allocation order (alloc_pages_order0_bulk), dst =
    migrate_pfn | WRITE as the source had, the mirror's entry dropped,
    the backing page's bytes copied (queued on `copies`).
    """
    k = d.mdevice.k
    if not k.fastpath or d.flags & HMM_DMIRROR_FLAG_FAIL_ALLOC or not d.mdevice.is_private_zone():
        return 0
    n: int = (args.end - args.start) >> PAGE_SHIFT
    if n < 8:
        return 0  # fewer slots than the bulk form takes (a CPU fault on one page)
    src, dst = args.src, args.dst
    sv = slot_words(src, range(n))
    need = np.uint64(MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE)
    take = np.flatnonzero((sv & need) == need)
    if len(take) < 8:
        return 0
    vals = sv[take]
    first = migrate_pfn_to_page(int(vals[0]), k=k)
    if first is None or k.page_pgmap(first).type != MEMORY_DEVICE_PRIVATE:
        return 0
    dp = vals & np.uint64(MIGRATE_PFN_DEVICE_PRIVATE)
    if (dp != dp[0]).any():
        return 0
    a = first.a
    pos = (vals >> np.uint64(MIGRATE_PFN_SHIFT)).astype(np.int64)
    pos += first.i - int(pos[0])
    if (pos < 0).any() or (pos >= a.nr).any() or (a.pgmap[pos] != a.pgmap[first.i]).any():
        return 0
    back = a.zone_device_data[pos] - 1
    ram = k.mem.ram.pages
    if (back < 0).any() or (back >= ram.nr).any():
        return 0
    if (ram.flags[back] & np.uint32(PG_head)).any() or (ram.head_off[back] != 0).any():
        return 0
    new = k.mem.alloc_pages_order0_bulk(len(take), GFP_HIGHUSER_MOVABLE)
    if new is None:
        return 0
    folio_lock_pages(ram, new)  # folio_lock() of each fresh page
    dw = (new.astype(np.uint64) << np.uint64(MIGRATE_PFN_SHIFT)) | np.uint64(MIGRATE_PFN_VALID)
    dw |= vals & np.uint64(MIGRATE_PFN_WRITE)
    store_slots(dst, take, dw)
    d.pt.discard_many((take + (args.start >> PAGE_SHIFT)).tolist())
    copies.to.extend(new.tolist())
    copies.frm.extend(back.tolist())
    return n

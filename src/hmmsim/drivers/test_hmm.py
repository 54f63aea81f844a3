"""The dmirror test driver: a simulated device that mirrors a process and owns memory.

Models: lib/test_hmm.c @ torvalds/linux 0eaed89c18ae (linux-mm 05ab5121):
four /dev/hmm_dmirrorN devices (0, 1 MEMORY_DEVICE_PRIVATE; 2, 3
MEMORY_DEVICE_COHERENT, always present here: the model reserves the two
"special purpose memory" ranges the module parameters would name), a
per-open mirror with its own device page table kept coherent through an
interval notifier, 256 MiB device memory chunks on dev_pagemaps, the
FAIL_ALLOC flag, eviction on close and RELEASE, migrate_to_ram and every
ioctl of lib/test_hmm_uapi.h.

The driver uses only what a real driver may call: migrate_vma_*,
migrate_device_*, hmm_range_fault, the interval-notifier API,
make_device_exclusive, memremap_pages (or memremap_device_private_pagemap
under series (c)), zone_device_folio_init, folio/page helpers.

Differences from the C: free lists are Python lists instead of pages
threaded through zone_device_data; the mirror's page table is a dict keyed
by VA page number; `ptr` buffers are NumPy/bytearray buffers the caller
owns (copying past their end or into a read-only one is -EFAULT), or a user
address in the calling process; "jiffies" are counted in retries
(DMIRROR_RANGE_FAULT_TIMEOUT of them).
"""

from __future__ import annotations

from collections import deque
from itertools import compress, repeat

import numpy as np

from hmmsim.bug import KernelOops
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_CHECK_EXCLUSIVE,
    HMM_DMIRROR_EXCLUSIVE,
    HMM_DMIRROR_FLAG_FAIL_ALLOC,
    HMM_DMIRROR_FLAGS,
    HMM_DMIRROR_MEMORY_DEVICE_COHERENT,
    HMM_DMIRROR_MEMORY_DEVICE_PRIVATE,
    HMM_DMIRROR_MIGRATE_ON_FAULT_TO_DEV,
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_MIGRATE_TO_SYS,
    HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL,
    HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE,
    HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL,
    HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE,
    HMM_DMIRROR_PROT_ERROR,
    HMM_DMIRROR_PROT_NONE,
    HMM_DMIRROR_PROT_PMD,
    HMM_DMIRROR_PROT_PUD,
    HMM_DMIRROR_PROT_READ,
    HMM_DMIRROR_PROT_WRITE,
    HMM_DMIRROR_PROT_ZERO,
    HMM_DMIRROR_READ,
    HMM_DMIRROR_RELEASE,
    HMM_DMIRROR_SNAPSHOT,
    HMM_DMIRROR_WRITE,
    SIZEOF_HMM_DMIRROR_CMD,
    hmm_dmirror_cmd,
)
from hmmsim.errno import EBUSY, EFAULT, EINVAL, ENOENT, ENOMEM, EPERM
from hmmsim.fault_inject import should_fail
from hmmsim.include.hmm import hmm_range
from hmmsim.include.memremap import (
    MEMORY_DEVICE_COHERENT,
    MEMORY_DEVICE_PRIVATE,
    dev_pagemap,
    dev_pagemap_ops,
)
from hmmsim.include.migrate import (
    MIGRATE_PFN_COMPOUND,
    MIGRATE_PFN_DEVICE_PRIVATE,
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_SHIFT,
    MIGRATE_PFN_VALID,
    MIGRATE_PFN_WRITE,
    MIGRATE_VMA_SELECT_COMPOUND,
    MIGRATE_VMA_SELECT_DEVICE_COHERENT,
    MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
    MIGRATE_VMA_SELECT_SYSTEM,
    migrate_vma,
)
from hmmsim.include.mm import VM_FAULT_OOM, VM_FAULT_SIGBUS, VM_READ, VM_WRITE
from hmmsim.include.mm_types import (
    Page,
    folio_nr_pages,
    folio_order,
    folio_put,
    page_folio,
)
from hmmsim.include.mmu_notifier import MMU_NOTIFY_MIGRATE, mmu_notifier_range_blockable
from hmmsim.include.uapi_types import U64_MASK, u64
from hmmsim.kconfig import (
    HPAGE_PMD_NR,
    HPAGE_PMD_ORDER,
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    PMD_SHIFT,
    PTRS_PER_PTE,
    PUD_SHIFT,
)
from hmmsim.locking import Lock, folio_lock, folio_unlock
from hmmsim.mm.hmm import hmm_range_fault
from hmmsim.mm.memory import is_zero_pfn
from hmmsim.mm.memremap import (
    is_device_coherent_page,
    is_device_private_page,
    is_zone_device_page,
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
    migrate_hmm_range_setup,
    migrate_vma_finalize,
    migrate_vma_pages,
    migrate_vma_setup,
    slot_words,
    store_slots,
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
from hmmsim.mm.page_alloc import (
    GFP_HIGHUSER_MOVABLE,
    GFP_ZERO_BIT,
    distinct_values,
    has_duplicates,
)
from hmmsim.mm.rmap import make_device_exclusive
from hmmsim.mm.vmalloc import vfree_pages, vmalloc_pages, vmalloc_size_ok

DMIRROR_NDEVICES = 4
DMIRROR_RANGE_FAULT_TIMEOUT = 1000
#: Series (e)'s migrate-on-fault ioctl works in windows of this many pages.
PFNS_ARRAY_SIZE = 64
DEVMEM_CHUNK_SIZE = 256 * 1024 * 1024
DEVMEM_CHUNKS_RESERVE = 16
DPT_XA_TAG_ATOMIC = 1
DPT_XA_TAG_WRITE = 3
ULONG_MAX = (1 << 64) - 1


# --- helpers the driver uses --------------------------------------------------------------
def _zdd_get(page: Page):
    """page->zone_device_data naming an object (a dmirror), or None."""
    v = int(page.a.zone_device_data[page.i])
    return page.k.objects.get(v) if v else None


def _zdd_set(page: Page, obj) -> None:
    if obj is None:
        page.a.zone_device_data[page.i] = 0
        return
    if getattr(obj, "_zdd_id", None) is None:
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


def _frame(page: Page) -> np.ndarray:
    return page.k.mem.frame(page.pfn)


def _kmap_frame(page: Page, function: str) -> np.ndarray:
    """The frame memcpy_from_page/memcpy_to_page touch; a page with no
    linear map (a device-private page) oopses in `function`, the function
    the kernel's oops names once the copy helpers are inlined into it."""
    r = page.k.mem.range_of(page.pfn)
    if r is None or r.frames is None:
        raise KernelOops(function, f"pfn {page.pfn:#x} has no linear mapping (page_address)")
    return r.frames[page.pfn - r.base]


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


def _copy_scratch(k, n: int) -> np.ndarray:
    """A reused (n, PAGE_SIZE) host buffer for gathered frames (issue 7)."""
    buf = getattr(k, "_frame_copy_scratch", None)
    if buf is None or len(buf) < n:
        buf = np.empty((max(n, 512), PAGE_SIZE), dtype=np.uint8)
        k._frame_copy_scratch = buf
    return buf[:n]


class _FrameCopies:
    """The driver's one-page copies into its new pages, done together.

    copy(to, frm) is `frame(to)[:] = frame(frm)` (frm None: zero-fill). With
    Kernel.fastpath and both pages in system RAM the copy is queued and
    flush() does every queued one: runs of consecutive frames on both sides
    as slice copies, or one gather and scatter when the runs are short.
    That is the same bytes because the queued destinations are distinct
    fresh pages that nothing reads or writes before the flush (the callers
    flush before they return, also on errors). Not in the C (issue 7).
    """

    __slots__ = ("k", "ram", "to", "frm", "zero")

    def __init__(self, k) -> None:
        self.k = k
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
        _frame(to)[:] = _frame(frm) if frm is not None else 0

    def copy_pfn(self, to: int, frm: int) -> None:
        nr = self.ram.pages.nr
        if self.k.fastpath and 0 <= to < nr and 0 <= frm < nr:
            self.to.append(to)
            self.frm.append(frm)
            return
        self.k.mem.frame(to)[:] = self.k.mem.frame(frm)

    def flush(self) -> None:
        frames = self.ram.frames
        if self.to:
            to, frm = np.array(self.to), np.array(self.frm)
            n = len(to)
            # runs where both sides step by one frame: a slice copy each is one
            # pass over the bytes; a gather and scatter is two
            cut = (np.flatnonzero((np.diff(to) != 1) | (np.diff(frm) != 1)) + 1).tolist()
            if len(cut) * 4 < n:
                for lo, hi in zip([0, *cut], [*cut, n], strict=True):
                    t, f = int(to[lo]), int(frm[lo])
                    frames[t : t + hi - lo] = frames[f : f + hi - lo]
            else:
                buf = _copy_scratch(self.k, n)
                np.take(frames, frm, axis=0, out=buf, mode="clip")  # indices checked on entry
                frames[to] = buf
        if self.zero:
            frames[self.zero] = 0
        self.to, self.frm, self.zero = [], [], []


def dmirror_bounce_init(k, addr: int, size: int, scratch: bool = True):
    """lib/test_hmm.c dmirror_bounce_init: a dmirror_bounce, or -ENOMEM when
    vmalloc(size) returns NULL (mm/vmalloc.c: more than totalram_pages(), or
    its pages cannot be had). Checked before any host buffer is sized by
    the user's npages. The buffer's pages are taken from modelled RAM as
    vmalloc would (unmovable order-0 pages, mm/vmalloc.py vmalloc_pages); its
    bytes stay in host memory. `scratch` False: a fresh zeroed host buffer."""
    if not vmalloc_size_ok(k, size):
        return -ENOMEM
    vm = vmalloc_pages(k, size)
    if vm is None:
        return -ENOMEM
    bounce = dmirror_bounce(addr, size, k if scratch else None)
    bounce.vm = vm
    return bounce


def dmirror_bounce_fini(k, bounce) -> None:
    """lib/test_hmm.c dmirror_bounce_fini: vfree the buffer (its pages back
    to the page allocator in index order)."""
    vfree_pages(k, bounce.vm)
    bounce.vm = None


class dmirror_bounce:
    """struct dmirror_bounce. The C buffer is vmalloc()ed, uninitialised
    (dmirror_bounce_init checks the size first).

    Every caller copies it to the user only after dmirror_do_read filled all
    of it, so with Kernel.fastpath (one thread of execution) a read bounce
    may reuse the kernel's scratch buffer instead of a fresh zeroed one
    (`k` given): the user sees the same bytes and the host is spared
    faulting in a new buffer per ioctl (issue 7).
    """

    __slots__ = ("ptr", "size", "addr", "cpages", "vm")

    def __init__(self, addr: int, size: int, k=None) -> None:
        self.vm = None  # the pages in modelled RAM (dmirror_bounce_init)
        self.addr = addr
        self.size = size
        self.cpages = 0
        if k is not None and k.fastpath:
            buf = getattr(k, "_dmirror_bounce_scratch", None)
            if buf is None or buf.size < size:
                buf = np.empty(size, dtype=np.uint8)
                k._dmirror_bounce_scratch = buf
            self.ptr = buf[:size]
        else:
            self.ptr = np.zeros(size, dtype=np.uint8)


def check_user_ptr(uptr) -> None:
    """Refuse a cmd.ptr the model cannot treat as user memory (before any work).

    A user buffer is None (copy_to/from_user then fail with -EFAULT), a user
    address (an int) in the calling process, or a host object with the
    buffer protocol laid out as one C-contiguous run of bytes (bytearray,
    bytes, a C-contiguous NumPy array). A read-only one is user memory
    without write permission: writing to it fails with -EFAULT, as
    copy_to_user does. Raises TypeError or ValueError otherwise.
    """
    if uptr is None or isinstance(uptr, int):
        return
    try:
        mv = memoryview(uptr)
    except TypeError:
        raise TypeError(
            "hmm_dmirror_cmd.ptr must be None, a user address (int) or a buffer "
            f"(bytearray, NumPy array), not {type(uptr).__name__}"
        ) from None
    if not mv.c_contiguous:
        raise ValueError(
            "hmm_dmirror_cmd.ptr must be C-contiguous (one run of bytes): "
            "pass np.ascontiguousarray(buf) and read the result from that"
        )


def _user_view(uptr) -> np.ndarray | None:
    """A host user buffer as bytes (writable unless the buffer is read-only);
    None for a user address or no buffer."""
    if uptr is None or isinstance(uptr, int):
        return None
    return np.frombuffer(memoryview(uptr).cast("B"), dtype=np.uint8)


def _copy_to_user(proc, uptr, data: np.ndarray, off: int = 0, view=None) -> int:
    """copy_to_user(uptr + off, data): 0, or -EFAULT if the user buffer is
    missing, too small or not writable. Like the C, the bytes that fit
    before the fault are written. `view`: _user_view(uptr), if the caller
    copies to the same host buffer repeatedly."""
    if uptr is None:
        return -EFAULT
    if isinstance(uptr, int):
        try:
            proc.store((uptr + off) & U64_MASK, data)
        except Exception:  # noqa: BLE001 - a user fault is -EFAULT here
            return -EFAULT
        return 0
    if view is None:
        view = _user_view(uptr)
    if not view.flags.writeable:
        return -EFAULT
    fit = max(0, min(data.size, view.size - off))
    view[off : off + fit] = data[:fit]
    return -EFAULT if fit < data.size else 0


def _copy_from_user(proc, uptr, size: int) -> np.ndarray | int:
    if uptr is None:
        return -EFAULT
    if isinstance(uptr, int):
        try:
            return np.frombuffer(proc.load(uptr, size), dtype=np.uint8).copy()
        except Exception:  # noqa: BLE001
            return -EFAULT
    view = _user_view(uptr)
    if view.size < size:
        return -EFAULT
    return view[:size].copy()


# --- devices and chunks ----------------------------------------------------------------------


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


def dmirror_check_device_pages(k) -> list[str]:
    """Invariant hook: every device page is in exactly one state.

    A page on a driver free list (a free large folio covers its tail pages)
    has no reference, no mapping, no lock and no folio->mapping, and is
    listed once; a page of a live chunk that is not on a free list belongs to
    a folio with a reference (mapped by a device entry, isolated for a
    migration, or held by the driver). Not kernel code: the checker's view of
    what lib/test_hmm.c's free lists promise.
    """
    from hmmsim.include.mm_types import PG_locked

    problems: list[str] = []
    for name, d in sorted(k.devices.items()):
        if not isinstance(d, dmirror_device):
            continue
        free: dict[int, np.ndarray] = {}  # id(PageArrays) -> bool mask
        for lst, n in ((d.free_pages, 1), (d.free_folios, HPAGE_PMD_NR)):
            if not lst.items:
                continue
            items = lst.as_array()
            for aid, a in enumerate(lst.arrays):
                idx = items[(items >> 32) == aid] & 0xFFFFFFFF
                if not idx.size:
                    continue
                idx = (idx[:, None] + np.arange(n)[None, :]).ravel()
                mask = free.setdefault(id(a), np.zeros(a.nr, dtype=bool))
                counts = np.bincount(idx, minlength=a.nr)
                for i in np.nonzero((counts > 1) | (mask & (counts > 0)))[0][:5]:
                    problems.append(f"{name}: device page {a.base + int(i):#x} is free twice")
                mask[idx] = True
                checks = (
                    (a._refcount[idx] != 0, "a reference"),
                    (a._mapcount[idx] != -1, "a mapping"),
                    (a.mapping[idx] != 0, "a stale folio->mapping"),
                    ((a.flags[idx] & PG_locked) != 0, "the page lock"),
                )
                for bad, what in checks:
                    for i in idx[bad][:5]:
                        problems.append(f"{name}: free device page {a.base + int(i):#x} has {what}")
        for chunk in d.devmem_chunks:
            if chunk.remove:
                continue
            for r in chunk.pagemap._ranges:
                a = r.pages
                mask = free.get(id(a), np.zeros(a.nr, dtype=bool))
                # a folio's head holds its references; tails (head_off != 0) go with it
                idle = ~mask & (a._refcount == 0) & (a.head_off == 0)
                for i in np.nonzero(idle)[0][:5]:
                    problems.append(
                        f"{name}: device page {r.base + int(i):#x} is neither free in the "
                        "driver nor referenced (lost to the driver)"
                    )
    return problems


class dmirror_chunk:
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


class dmirror_device:
    """One /dev/hmm_dmirrorN: its memory type, chunks, free lists and counters."""

    def __init__(self, k, minor: int, zone_device_type: int, spm_addr: int = 0) -> None:
        self.k = k
        self.minor = minor
        self.zone_device_type = zone_device_type
        self.spm_addr = spm_addr
        self.devmem_chunks: list[dmirror_chunk] = []
        self.devmem_capacity = 0
        self.devmem_lock = Lock(k, f"dmirror{minor}.devmem_lock")
        self.lock = Lock(k, f"dmirror{minor}.lock")
        self.calloc = 0
        self.cfree = 0
        self.i_mmap: set = set()
        self.i_count = 0
        self.free_pages = _FreeList(k)
        self.free_folios = _FreeList(k)
        self.ops = dev_pagemap_ops(
            folio_free=self.dmirror_devmem_free,
            migrate_to_ram=self.dmirror_devmem_fault,
            folio_split=self.dmirror_devmem_folio_split,
        )

    def __repr__(self) -> str:
        kind = "private" if self.is_private_zone() else "coherent"
        return f"<dmirror_device {self.minor} {kind} chunks={len(self.devmem_chunks)}>"

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
            pgmap._chunk = devmem
            # not in the C: the model's batch form of folio_free (issue 7)
            pgmap._folio_free_bulk = self.dmirror_devmem_free_bulk
            self.devmem_chunks.append(devmem)
        r = pgmap._ranges[0]
        with self.lock:
            n = r.pages.nr
            if is_large:
                nfolios = n // HPAGE_PMD_NR
                self.free_folios.extend_indices(
                    r.pages, range(0, nfolios * HPAGE_PMD_NR, HPAGE_PMD_NR)
                )
                self.free_pages.extend_indices(r.pages, range(nfolios * HPAGE_PMD_NR, n))
            else:
                self.free_pages.extend_indices(r.pages, range(n))
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
        chunk = page_pgmap(page)._chunk
        with self.lock:
            if not chunk.remove:
                self.cfree += 1 << order
                if order:
                    self.free_folios.append(page)
                else:
                    self.free_pages.append(page)

    def dmirror_devmem_free_bulk(self, a, idx) -> bool:
        """dmirror_devmem_free of order-0 device pages a[idx], in order (issue 7).

        Only where each is a device-private page of a live chunk backed by an
        order-0 system page that the driver alone references: the backing
        pages are put (and freed in order), the device pages go on the free
        list in order. False (nothing done) otherwise.
        """
        import numpy as np

        from hmmsim.include.mm_types import PG_head

        k = self.k
        if not k.fastpath or not self.is_private_zone():
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
        pgmap = page_pgmap(Page(k, a, int(idx[0])))
        if pgmap._chunk.remove:
            return False
        deque(map(refs.pop, bl), maxlen=0)  # driver_folio_put(): each count goes 1 -> 0
        ram._refcount[back] = 0
        k.mem.free_folios_order0(back)
        a.zone_device_data[idx] = 0
        with self.lock:
            self.cfree += len(idx)
            self.free_pages.extend_indices(a, idx.tolist())
        return True

    def dmirror_devmem_folio_split(self, head, tail) -> None:
        """dev_pagemap_ops.folio_split: give each new tail its backing subpage."""
        rpage = BACKING_PAGE(head)
        if rpage is None:
            if tail is not None:
                _zdd_set(tail, None)
            return
        k = self.k
        rfolio = page_folio(rpage)
        a, i = rfolio.a, rfolio.i
        if tail is None:
            # folio_reset_order + folio_init_count on the backing head
            n = 1 << int(a.order[i]) if a.flags[i] & 0x20 else 1
            a.order[i] = 0
            a.flags[i] &= 0xFFFFFFFF ^ 0x20
            a._entire_mapcount[i] = -1
            a._large_mapcount[i] = -1
            a.mapping[i] = 0
            a._refcount[i] = 1
            del n
            return
        offset = tail.pfn - head.pfn
        rtail = Page(k, a, i + offset)
        _set_backing(tail, rtail)
        a.head_off[i + offset] = 0
        a.mapping[i + offset] = 0
        a._refcount[i + offset] = 1
        a.zone_device_data[i + offset] = a.zone_device_data[i]
        k.driver_refs[rtail.pfn] += 1  # folio_init_count() on the backing subpage
        tail.a.mapping[tail.i] = head.a.mapping[head.i]
        tail.a.pgmap[tail.i] = head.a.pgmap[head.i]

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
                    self.free_pages.drop_arrays(devmem.pagemap._ranges[0].pages)
                    self.free_folios.drop_arrays(devmem.pagemap._ranges[0].pages)
                self.dmirror_device_evict_chunk(devmem)
                if devmem.pagemap.type == MEMORY_DEVICE_PRIVATE and k.config.has("c"):
                    memunmap_device_private_pagemap(devmem.pagemap, k=k)
                else:
                    memunmap_pages(devmem.pagemap, k=k)
                if devmem.res is not None:
                    k.iomem.release_mem_region(devmem.res)
            self.devmem_chunks = []
            self.devmem_capacity = 0
            self.free_pages.clear()
            self.free_folios.clear()

    # --- file operations ---------------------------------------------------------------------
    def open(self, f, proc) -> int:
        dmirror_obj = dmirror(self, proc.mm)
        ret = mmu_interval_notifier_insert(
            dmirror_obj.notifier, proc.mm, 0, ULONG_MAX & PAGE_MASK, dmirror_obj
        )
        if ret:
            return ret
        f.private = dmirror_obj
        return 0

    # --- the character device as a file (vm_file of its mappings) -------------------------
    #: vmas mapping the device (address_space i_mmap); the device is never evicted
    nlink = 1

    def mmap(self, vma) -> int:
        """dmirror_fops_mmap: back every page with a zeroed kernel page (vm_insert_page)."""
        from hmmsim.mm.memory import vm_insert_page

        k = self.k
        for addr in range(vma.vm_start, vma.vm_end, PAGE_SIZE):
            page = k.mem.alloc_pages(0, GFP_ZERO_BIT)
            if page is None:
                return -ENOMEM
            ret = vm_insert_page(vma, addr, page)
            folio_put(page)  # put_page(): the mapping keeps its own reference
            if ret:
                return ret
        return 0

    def release(self, f) -> int:
        d = f.private
        mmu_interval_notifier_remove(d.notifier)
        for devmem in list(self.devmem_chunks):
            self.dmirror_device_evict_chunk(devmem)
        d.pt.clear()
        f.private = None
        return 0

    def ioctl(self, f, proc, command: int, cmd) -> int:
        """dmirror_fops_unlocked_ioctl: 0 or -errno; on error cmd is not written back.

        `cmd` is the struct hmm_dmirror_cmd object, or a user address (an
        int) in `proc` where the 40-byte struct lies: it is read like
        copy_from_user (-EFAULT if unreadable) and written back whole on
        success (-EFAULT if that fails). Every field is a __u64 and is
        reduced like one, and the range check is done on u64s: an npages
        whose byte size wraps (2**52, 2**63, 2**64 - 1 ...) is -EINVAL
        here, before any handler runs.
        """
        d = f.private
        if d is None:
            return -EINVAL
        if cmd is None:
            return -EFAULT
        uarg = None
        if isinstance(cmd, (int, np.integer)):
            uarg = u64(cmd, "ioctl arg")
            raw = _copy_from_user(proc, uarg, SIZEOF_HMM_DMIRROR_CMD)
            if isinstance(raw, int):
                return -EFAULT
            words = [int(w) for w in raw.view("<u8")]
            cmd = hmm_dmirror_cmd(*words)
        addr = u64(cmd.addr, "hmm_dmirror_cmd.addr")
        npages = u64(cmd.npages, "hmm_dmirror_cmd.npages")
        ptr = cmd.ptr
        if isinstance(ptr, (int, np.integer)):
            ptr = u64(ptr, "hmm_dmirror_cmd.ptr")
        if addr & ~PAGE_MASK:
            return -EINVAL
        if addr >= (addr + (npages << PAGE_SHIFT)) & U64_MASK:
            return -EINVAL
        check_user_ptr(ptr)
        work = hmm_dmirror_cmd(addr=addr, ptr=ptr, npages=npages, cpages=0, faults=0)
        handlers = {
            HMM_DMIRROR_READ: d.dmirror_read,
            HMM_DMIRROR_WRITE: d.dmirror_write,
            HMM_DMIRROR_MIGRATE_TO_DEV: d.dmirror_migrate_to_device,
            HMM_DMIRROR_MIGRATE_TO_SYS: d.dmirror_migrate_to_system,
            HMM_DMIRROR_EXCLUSIVE: d.dmirror_exclusive,
            HMM_DMIRROR_SNAPSHOT: d.dmirror_snapshot,
        }
        if command in handlers:
            ret = handlers[command](work, proc)
        elif command == HMM_DMIRROR_CHECK_EXCLUSIVE:
            ret = d.dmirror_check_atomic(addr, (addr + (npages << PAGE_SHIFT)) & U64_MASK)
        elif command == HMM_DMIRROR_RELEASE:
            self.dmirror_device_remove_chunks()
            ret = 0
        elif command == HMM_DMIRROR_MIGRATE_ON_FAULT_TO_DEV and self.k.config.has("e"):
            ret = d.dmirror_fault_and_migrate_to_device(work, proc)
        elif command == HMM_DMIRROR_FLAGS and self.k.config.kernel != "6.12":
            # Linux 6.12 has no HMM_DMIRROR_FLAGS (lib/test_hmm_uapi.h ends at
            # RELEASE, 0x07): there it is an unknown command, -EINVAL
            d.flags = npages
            ret = 0
        else:
            return -EINVAL
        if ret:
            return ret
        if uarg is not None:
            out = np.array(
                [addr, ptr, npages, work.cpages & U64_MASK, work.faults & U64_MASK], "<u8"
            )
            return -EFAULT if _copy_to_user(proc, uarg, out.view(np.uint8)) else 0
        cmd.cpages, cmd.faults = work.cpages, work.faults
        return 0

    # --- migrate_to_ram ------------------------------------------------------------------------
    def dmirror_devmem_fault(self, vmf) -> int:
        """dev_pagemap_ops.migrate_to_ram: bring the faulting page(s) back to RAM."""
        d = self._dmirror_of(vmf.page)
        order = folio_order(page_folio(vmf.page))
        if vmf.pte is not None:
            order = 0  # a PTE fault on a large folio: it may be partly split
        start = vmf.address & ~((PAGE_SIZE << order) - 1)
        nr = 1 << order
        args = migrate_vma(
            vma=vmf.vma,
            src=[0] * nr,
            dst=[0] * nr,
            start=start,
            end=start + (PAGE_SIZE << order),
            pgmap_owner=self,
            flags=self.dmirror_select_device(),
            fault_page=vmf.page,
        )
        if order:
            args.flags |= MIGRATE_VMA_SELECT_COMPOUND
        if migrate_vma_setup(args):
            return VM_FAULT_SIGBUS
        ret = d.dmirror_devmem_fault_alloc_and_copy(args)
        if ret:
            migrate_vma_finalize(args)
            return ret
        migrate_vma_pages(args)
        migrate_vma_finalize(args)
        return 0

    @staticmethod
    def _dmirror_of(page):
        rpage = BACKING_PAGE(page_folio(page))
        owner = _zdd_get(rpage) if rpage is not None else None
        if not isinstance(owner, dmirror):
            from hmmsim.bug import KernelOops

            raise KernelOops("dmirror_devmem_fault", "no mirror recorded for the device page")
        return owner

    def dmirror_select_device(self) -> int:
        if self.zone_device_type == HMM_DMIRROR_MEMORY_DEVICE_PRIVATE:
            return MIGRATE_VMA_SELECT_DEVICE_PRIVATE
        return MIGRATE_VMA_SELECT_DEVICE_COHERENT


def _frames_of(page: Page, n: int) -> np.ndarray | None:
    """The frames of n pages from page on, or None if they have no linear map."""
    k = page.k
    r = k.mem.range_of(page.pfn)
    if r is None or r.frames is None:
        return None
    base = page.pfn - r.base
    return r.frames[base : base + n]


def _count_both(words: list[int], both: int) -> int:
    """How many words have every bit of `both` set (one map() in C per window)."""
    return list(map(both.__and__, words)).count(both)


class _MirrorTable:
    """struct dmirror's page table (the C xarray `pt`): vpn -> (page, tag).

    Entries are stored packed in one int each (array id << 40, page index
    << 2, tag), so mirroring a 2 MiB folio or a whole window stores ints
    rather than a Page object and a tuple per page. `get`, `[]`, `items()`
    and iteration hand out (Page, tag) and vpns like the dict this replaces;
    `map_run`/`map_many`/`packed_run` are the bulk forms (issue 7).
    """

    __slots__ = ("k", "arrays", "_d")

    IDX_MASK = (1 << 38) - 1

    def __init__(self, k) -> None:
        self.k = k
        self.arrays: list = []
        self._d: dict[int, int] = {}

    def _aid(self, arrays) -> int:
        return _array_id(self.arrays, arrays)

    def _unpack(self, v: int) -> tuple[Page, int]:
        return Page(self.k, self.arrays[v >> 40], (v >> 2) & self.IDX_MASK), v & 3

    def get(self, vpn: int, default=None):
        v = self._d.get(vpn)
        return default if v is None else self._unpack(v)

    def __getitem__(self, vpn: int) -> tuple[Page, int]:
        return self._unpack(self._d[vpn])

    def __setitem__(self, vpn: int, value: tuple[Page, int]) -> None:
        page, tag = value
        self._d[vpn] = (self._aid(page.a) << 40) | (page.i << 2) | tag

    def __delitem__(self, vpn: int) -> None:
        del self._d[vpn]

    def pop(self, vpn: int, default=None):
        v = self._d.pop(vpn, None)
        return default if v is None else self._unpack(v)

    def __contains__(self, vpn: object) -> bool:
        return vpn in self._d

    def __len__(self) -> int:
        return len(self._d)

    def __iter__(self):
        return iter(self._d)

    def items(self):
        for vpn, v in self._d.items():
            yield vpn, self._unpack(v)

    def clear(self) -> None:
        self._d.clear()
        self.arrays = []

    def map_run(self, vpn: int, arrays, first: int, n: int, tag: int) -> None:
        """Map vpn+j -> (page first+j of arrays, tag) for j < n."""
        base = (self._aid(arrays) << 40) | (first << 2) | tag
        self._d.update(zip(range(vpn, vpn + n), range(base, base + (n << 2), 4), strict=True))

    def map_many(self, vpns: list[int], arrays, idx: np.ndarray, tags: np.ndarray) -> None:
        """Map vpns[j] -> (page idx[j] of arrays, tags[j])."""
        packed = (np.int64(self._aid(arrays)) << 40) | (idx.astype(np.int64) << 2) | tags
        self._d.update(zip(vpns, packed.tolist(), strict=True))

    def packed_run(self, lo: int, hi: int) -> list[int]:
        """The packed entries of vpns lo, lo+1, ... up to hi or the first hole."""
        # iter(callable, None) stops at the first hole (or the end of the range)
        return list(iter(map(self._d.get, range(lo, hi)).__next__, None))

    def discard(self, vpn: int, n: int = 1) -> None:
        """Drop the entries of vpn..vpn+n-1 that exist (xa_erase of each)."""
        # one map() in C over the run (a 2 MiB folio is 512 entries)
        deque(map(self._d.pop, range(vpn, vpn + n), repeat(None, n)), maxlen=0)


class dmirror:
    """struct dmirror: one open file's mirror of its process's address space.

    Fields: mdevice; pt (VA page number -> (page, tag)); notifier (covers the
    whole mm); mutex; flags (HMM_DMIRROR_FLAG_*).
    """

    #: for the invariant checker: device-private pages map through their backing page
    backing_page = staticmethod(BACKING_PAGE)

    def __init__(self, mdevice: dmirror_device, mm) -> None:
        self.mdevice = mdevice
        self.mm = mm
        self.pt = _MirrorTable(mdevice.k)
        self.notifier = mmu_interval_notifier()
        self.mutex = Lock(mdevice.k, f"dmirror{mdevice.minor}.mutex")
        self.flags = 0
        self._zdd_id = None

    def __repr__(self) -> str:
        return f"<dmirror dev={self.mdevice.minor} pt={len(self.pt)}>"

    # --- the interval notifier -----------------------------------------------------------
    def invalidate(self, mni, r, cur_seq: int) -> bool:
        """dmirror_interval_invalidate: drop device mappings of [start, end]."""
        if r.event == MMU_NOTIFY_MIGRATE and r.owner is self.mdevice:
            return True
        if mmu_notifier_range_blockable(r):
            self.mutex.lock()
        elif not self.mutex.trylock():
            return False
        mmu_interval_set_seq(mni, cur_seq)
        self.dmirror_do_update(r.start, r.end)
        self.mutex.unlock()
        return True

    def dmirror_do_update(self, start: int, end: int) -> None:
        lo, hi = start >> PAGE_SHIFT, end >> PAGE_SHIFT  # inclusive, like xa_for_each_range
        if hi - lo > len(self.pt):
            for vpn in [v for v in self.pt if lo <= v <= hi]:
                del self.pt[vpn]
        else:
            self.pt.discard(lo, hi + 1 - lo)

    # --- device reads/writes through the mirror ---------------------------------------------
    def dmirror_do_read(self, start: int, end: int, bounce: dmirror_bounce) -> int:
        off = (start - bounce.addr) & PAGE_MASK
        k = self.mdevice.k
        if k.fastpath and end - start > PAGE_SIZE:
            done = self._do_read_bulk(start, end, bounce, off)
            off += done * PAGE_SIZE
            start += done << PAGE_SHIFT
        for vpn in range(start >> PAGE_SHIFT, end >> PAGE_SHIFT):
            entry = self.pt.get(vpn)
            if entry is None:
                return -ENOENT
            bounce.ptr[off : off + PAGE_SIZE] = _kmap_frame(entry[0], "dmirror_do_read")
            off += PAGE_SIZE
            bounce.cpages += 1
        return 0

    def _read_plan(self, start: int, end: int, limit: int):
        """The leading run of at most `limit` mirrored pages of [start, end)
        that have a linear map, as (m, runs): runs are (frames, indices, s, e),
        page s..e-1 of the run being frames[indices]. Issue 7, not in the C."""
        pt = self.pt
        vals = pt.packed_run(start >> PAGE_SHIFT, end >> PAGE_SHIFT)
        m = min(len(vals), limit)
        if m <= 0:
            return 0, []
        arr = np.array(vals[:m], dtype=np.int64)
        aids = arr >> 40
        idx = (arr >> 2) & pt.IDX_MASK
        mem = self.mdevice.k.mem
        runs = []
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

    @staticmethod
    def _read_runs(runs, out: np.ndarray) -> None:
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

    def _do_read_bulk(self, start: int, end: int, bounce: dmirror_bounce, off: int) -> int:
        """dmirror_do_read's loop for the leading run of mirrored pages that
        have a linear map, copied per run of consecutive frames (or as one
        gather); returns how many pages it copied. Not in the C (issue 7):
        the same bytes land at the same bounce offsets as the per-page loop,
        which does whatever is left (a hole, a page with no linear map)."""
        m, runs = self._read_plan(start, end, (bounce.ptr.size - off) // PAGE_SIZE)
        if m <= 0:
            return 0
        out = bounce.ptr[off : off + m * PAGE_SIZE].reshape(m, PAGE_SIZE)
        self._read_runs(runs, out)
        bounce.cpages += m
        return m

    def _read_to_user_direct(self, start: int, size: int, uptr) -> int | None:
        """dmirror_do_read into a bounce, then copy_to_user, as one copy.

        Only where the outcome cannot differ from the two steps: the fast
        paths on, every page of the range mirrored with a linear map (so the
        read cannot fail or oops half way), and the user buffer a writable,
        contiguous host array at least `size` long that shares no memory with
        modelled frames. Returns the pages read (bounce.cpages), or None
        without writing anything. The bounce is kernel memory no one else
        sees, so the user gets the same bytes (issue 7, not in the C).
        """
        k = self.mdevice.k
        if not k.fastpath or not isinstance(uptr, np.ndarray) or size < PAGE_SIZE:
            return None
        if not uptr.flags.c_contiguous:
            return None
        view = _user_view(uptr)
        if view.size < size or not view.flags.writeable:
            return None  # copy_to_user's own path decides what happens
        npages = size >> PAGE_SHIFT
        with self.mutex:
            m, runs = self._read_plan(start, start + size, npages)
            if m != npages or any(np.may_share_memory(view, f) for f, *_ in runs):
                return None
            self._read_runs(runs, view[:size].reshape(npages, PAGE_SIZE))
        return npages

    def dmirror_do_write(self, start: int, end: int, bounce: dmirror_bounce) -> int:
        """An oops here is reported in dmirror_fops_unlocked_ioctl: this and
        dmirror_write are inlined into it."""
        off = (start - bounce.addr) & PAGE_MASK
        for vpn in range(start >> PAGE_SHIFT, end >> PAGE_SHIFT):
            entry = self.pt.get(vpn)
            if entry is None or entry[1] != DPT_XA_TAG_WRITE:
                return -ENOENT
            frame = _kmap_frame(entry[0], "dmirror_fops_unlocked_ioctl")
            frame[:] = bounce.ptr[off : off + PAGE_SIZE]
            off += PAGE_SIZE
            bounce.cpages += 1
        return 0

    def dmirror_do_fault(self, r: hmm_range) -> int:
        k = self.mdevice.k
        L = k.hmm
        if k.fastpath and self._do_fault_bulk(r):
            return 0
        for i, vpn in enumerate(range(r.start >> PAGE_SHIFT, r.end >> PAGE_SHIFT)):
            v = int(r.hmm_pfns[i])
            if v & L.HMM_PFN_ERROR:
                k.warn("dmirror_do_fault: HMM_PFN_ERROR after a successful fault")
            if not v & L.HMM_PFN_VALID:
                k.warn("dmirror_do_fault: !HMM_PFN_VALID after a successful fault")
            page = hmm_pfn_to_page(k, v)
            if v & L.HMM_PFN_WRITE:
                tag = DPT_XA_TAG_WRITE
            elif r.default_flags & L.HMM_PFN_WRITE:
                k.warn("dmirror_do_fault: write requested but not granted")
                return -EFAULT
            else:
                tag = 0
            self.pt[vpn] = (page, tag)
        return 0

    def _do_fault_bulk(self, r: hmm_range) -> bool:
        """dmirror_do_fault where every word is VALID, not ERROR, names a
        system RAM page and, if the range asked for write, grants it: the
        loop would warn about nothing and map each vpn to that page, tagged
        writable where the word is. False (nothing done) otherwise. Not in
        the C (issue 7)."""
        L = self.mdevice.k.hmm
        n = (r.end - r.start) >> PAGE_SHIFT
        hp = r.hmm_pfns
        if n < 8 or len(hp) < n:
            return False
        try:
            v = np.asarray(hp[:n], dtype=np.uint64)
        except (OverflowError, TypeError, ValueError):
            return False
        if (v & np.uint64(L.HMM_PFN_DEVICE_PRIVATE)).any():
            return False  # a series (c) offset: hmm_pfn_to_page translates it
        valid, err, wr = (np.uint64(f) for f in (L.HMM_PFN_VALID, L.HMM_PFN_ERROR, L.HMM_PFN_WRITE))
        if ((v & valid) == 0).any() or (v & err).any():
            return False
        write = (v & wr) != 0
        if r.default_flags & L.HMM_PFN_WRITE and not write.all():
            return False
        pfn = v & np.uint64(~L.HMM_PFN_FLAGS & L._word_mask)
        ram = self.mdevice.k.mem.ram.pages
        if (pfn >= np.uint64(ram.nr)).any():
            return False
        tags = np.where(write, DPT_XA_TAG_WRITE, 0)
        self.pt.map_many(list(range(r.start >> PAGE_SHIFT, r.end >> PAGE_SHIFT)), ram, pfn, tags)
        return True

    def dmirror_range_fault(self, r: hmm_range) -> int:
        mm = self.notifier.mm
        for _jiffy in range(DMIRROR_RANGE_FAULT_TIMEOUT):
            r.notifier_seq = mmu_interval_read_begin(r.notifier)
            mm.mmap_lock.down_read()
            try:
                ret = hmm_range_fault(r)
            finally:
                mm.mmap_lock.up_read()
            if ret:
                if ret == -EBUSY:
                    continue
                return ret
            self.mutex.lock()
            if mmu_interval_read_retry(r.notifier, r.notifier_seq):
                self.mutex.unlock()
                continue
            ret = self.dmirror_do_fault(r)
            self.mutex.unlock()
            return ret
        return -EBUSY

    def dmirror_fault(self, start: int, end: int, write: bool) -> int:
        k = self.mdevice.k
        L = k.hmm
        if self.notifier.mm.dead:
            # mmget_not_zero failed: the mirrored mm has no users left, so
            # the fault fails and READ/WRITE return -EFAULT. (The driver
            # returned 0 until 2026, which made dmirror_read/dmirror_write
            # loop on -ENOENT for ever: docs/findings.md.)
            return -EFAULT
        npfns = dmirror_fault_window(k)
        pfns = [0] * npfns
        r = hmm_range(
            notifier=self.notifier,
            hmm_pfns=pfns,
            pfn_flags_mask=0,
            default_flags=L.HMM_PFN_REQ_FAULT | (L.HMM_PFN_REQ_WRITE if write else 0),
            dev_private_owner=self.mdevice,
        )
        addr = start
        while addr < end:
            r.start = addr
            r.end = min(addr + (npfns << PAGE_SHIFT), end)
            pfns[:] = [0] * npfns
            ret = self.dmirror_range_fault(r)
            if ret:
                return ret
            addr = r.end
        return 0

    def dmirror_read(self, cmd, proc) -> int:
        size = (cmd.npages << PAGE_SHIFT) & U64_MASK
        start = cmd.addr
        end = (start + size) & U64_MASK
        if end < start:
            return -EINVAL
        bounce = dmirror_bounce_init(self.mdevice.k, start, size)
        if isinstance(bounce, int):
            return bounce
        while True:
            with self.mutex:
                ret = self.dmirror_do_read(start, end, bounce)
            if ret != -ENOENT:
                break
            start = cmd.addr + (bounce.cpages << PAGE_SHIFT)
            ret = self.dmirror_fault(start, end, False)
            if ret:
                break
            cmd.faults += 1
        if ret == 0:
            ret = _copy_to_user(proc, cmd.ptr, bounce.ptr)
        cmd.cpages = bounce.cpages
        dmirror_bounce_fini(self.mdevice.k, bounce)
        return ret

    def dmirror_write(self, cmd, proc) -> int:
        size = (cmd.npages << PAGE_SHIFT) & U64_MASK
        start = cmd.addr
        end = (start + size) & U64_MASK
        if end < start:
            return -EINVAL
        k = self.mdevice.k
        bounce = dmirror_bounce_init(k, start, size, scratch=False)
        if isinstance(bounce, int):
            return bounce
        data = _copy_from_user(proc, cmd.ptr, size)
        if isinstance(data, int):
            cmd.cpages = 0
            dmirror_bounce_fini(k, bounce)
            return data
        bounce.ptr[:] = data
        while True:
            with self.mutex:
                ret = self.dmirror_do_write(start, end, bounce)
            if ret != -ENOENT:
                break
            start = cmd.addr + (bounce.cpages << PAGE_SHIFT)
            ret = self.dmirror_fault(start, end, True)
            if ret:
                break
            cmd.faults += 1
        cmd.cpages = bounce.cpages
        dmirror_bounce_fini(k, bounce)
        return ret

    # --- migration ---------------------------------------------------------------------------
    def dmirror_migrate_alloc_and_copy(self, args) -> None:
        k = self.mdevice.k
        copies = _FrameCopies(k)
        try:
            self._alloc_and_copy(args, copies)
        finally:
            copies.flush()

    def _alloc_and_copy_bulk(self, args, copies) -> bool:
        """_alloc_and_copy for a window of order-0 system pages and holes.

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
        from hmmsim.include.migrate import MIGRATE_PFN_DEVICE_PRIVATE, MIGRATE_PFN_SHIFT
        from hmmsim.include.mm_types import PG_locked
        from hmmsim.kconfig import DEVICE_PRIVATE_BASE

        k = self.mdevice.k
        mdev = self.mdevice
        if not k.fastpath or self.flags & HMM_DMIRROR_FLAG_FAIL_ALLOC or not mdev.is_private_zone():
            return False
        n = (args.end - args.start) >> PAGE_SHIFT
        src, dst = args.src, args.dst
        sv = slot_words(src, range(n))
        take = np.flatnonzero((sv & np.uint64(MIGRATE_PFN_MIGRATE)) != 0)
        m = len(take)
        if m < 8 or (sv & np.uint64(MIGRATE_PFN_COMPOUND)).any():
            return False
        vals = sv[take]
        valid = (vals & np.uint64(MIGRATE_PFN_VALID)) != 0
        spfn = (vals >> np.uint64(MIGRATE_PFN_SHIFT)).astype(np.int64)
        ram = k.mem.ram.pages
        if (vals[valid] & np.uint64(MIGRATE_PFN_DEVICE_PRIVATE)).any() or (
            spfn[valid] >= ram.nr
        ).any():
            return False  # a source outside system RAM: the per-slot path decides
        free = mdev.free_pages
        if len(free) < m or k.mem.nr_free < m:
            return False
        items = np.array(free.items[-m:][::-1], dtype=np.int64)  # what m pops return, in order
        aids = items >> 32
        didx = items & 0xFFFFFFFF
        groups = {int(aid): np.flatnonzero(aids == aid) for aid in distinct_values(aids)}
        for aid, where in groups.items():
            a = free.arrays[aid]
            if (a._refcount[didx[where]] != 0).any() or any(
                k.pgmaps[pid]._killed for pid in distinct_values(a.pgmap[didx[where]])
            ):
                return False  # zone_device_page_init would warn
        back = k.mem.alloc_pages_order0_bulk(m)
        if back is None:
            return False
        k.driver_refs.update(back.tolist())  # folio_alloc(): the driver's reference
        with mdev.lock:
            free.drop_last(m)
            mdev.calloc += m
        _zdd_set(Page(k, ram, int(back[0])), self)
        ram.zone_device_data[back] = self._zdd_id
        out = np.zeros(m, dtype=np.uint64)
        for aid, where in groups.items():
            a = free.arrays[aid]
            idx = didx[where]
            a.flags[idx] = np.uint32(PG_locked)
            a.order[idx] = 0
            a.head_off[idx] = 0
            a.mapping[idx] = 0
            a._mapcount[idx] = -1
            a._refcount[idx] = 1
            pids, counts = np.unique(a.pgmap[idx], return_counts=True)
            for pid, cnt in zip(pids.tolist(), counts.tolist(), strict=True):
                k.pgmaps[pid]._refs += cnt  # one get_dev_pagemap per page
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
        return True

    def _alloc_and_copy(self, args, copies) -> None:
        k = self.mdevice.k
        if self._alloc_and_copy_bulk(args, copies):
            return
        src, dst = args.src, args.dst
        i = 0
        addr = args.start
        while addr < args.end:
            s = int(src[i])
            is_large = bool(s & MIGRATE_PFN_COMPOUND)
            write = s & MIGRATE_PFN_WRITE
            if not s & MIGRATE_PFN_MIGRATE:
                i += 1
                addr += PAGE_SIZE
                continue
            spage = migrate_pfn_to_page(s, k=k)
            if spage is not None and is_zone_device_page(spage):
                k.warn(f"page already in device spage pfn: {spage.pfn:#x}")
                i += 1
                addr += PAGE_SIZE
                continue
            if self.flags & HMM_DMIRROR_FLAG_FAIL_ALLOC:
                self.flags &= ~HMM_DMIRROR_FLAG_FAIL_ALLOC
                dpage = None
            else:
                dpage = self.mdevice.dmirror_devmem_alloc_page(self, is_large)
            if dpage is None:
                if not is_large:
                    i += 1
                    addr += PAGE_SIZE
                    continue
                nr = HPAGE_PMD_NR if spage is None else folio_nr_pages(page_folio(spage))
                spfn = s >> 6
                j = 0
                while j < nr and addr < args.end:
                    dpage = self.mdevice.dmirror_devmem_alloc_page(self, False)
                    rpage = BACKING_PAGE(dpage)
                    _zdd_set(rpage, self)
                    dst[i] = migrate_pfn_from_page(dpage) | write
                    if spage is not None:
                        _frame(rpage)[:] = k.mem.frame(spfn + j)
                    else:
                        _frame(rpage)[:] = 0
                    i += 1
                    j += 1
                    addr += PAGE_SIZE
                continue
            rpage = BACKING_PAGE(dpage)
            _zdd_set(rpage, self)
            dst[i] = migrate_pfn_from_page(dpage) | write
            if is_large:
                dst[i] = int(dst[i]) | MIGRATE_PFN_COMPOUND
                folio = page_folio(dpage)
                n = folio_nr_pages(folio)
                if n > 1:
                    frames = _frames_of(rpage, n)
                    if spage is not None:
                        frames[:] = _frames_of(spage, n)
                    else:
                        frames[:] = 0
                    i += n
                    addr += n * PAGE_SIZE
                    continue
            if k.fault_inject is not None and should_fail(k, "copy"):
                # an injected DMA error: give the page back, leave the slot empty
                _zdd_set(rpage, None)
                dst[i] = 0
                folio_unlock(dpage)
                folio_put(dpage)
                i += 1
                addr += PAGE_SIZE
                continue
            copies.copy(rpage, spage)
            i += 1
            addr += PAGE_SIZE

    def _finalize_and_map_bulk(self, args) -> bool:
        """The mirror update of dmirror_migrate_finalize_and_map for a window
        of order-0 device-private destinations (issue 7, not in the C): every
        MIGRATE slot's mirror entry is its backing page, tagged writable as
        its dst. True if done; call with the mutex held."""
        from hmmsim.include.mm_types import PG_head

        k = self.mdevice.k
        if not k.fastpath or not self.mdevice.is_private_zone():
            return False
        n = (args.end - args.start) >> PAGE_SHIFT
        sv = slot_words(args.src, range(n))
        take = np.flatnonzero((sv & np.uint64(MIGRATE_PFN_MIGRATE)) != 0)
        if len(take) < 8:
            return False
        dv = slot_words(args.dst, take.tolist())
        if ((dv & np.uint64(MIGRATE_PFN_VALID)) == 0).any() or (
            dv & np.uint64(MIGRATE_PFN_COMPOUND)
        ).any():
            return False
        first = migrate_pfn_to_page(int(dv[0]), k=k)
        if not is_device_private_page(first):
            return False
        a = first.a
        pos = (dv >> np.uint64(MIGRATE_PFN_SHIFT)).astype(np.int64)
        pos += first.i - int(pos[0])
        flag = dv & np.uint64(MIGRATE_PFN_DEVICE_PRIVATE)
        if (flag != flag[0]).any() or (pos < 0).any() or (pos >= a.nr).any():
            return False
        if (a.pgmap[pos] != a.pgmap[first.i]).any():
            return False
        back = a.zone_device_data[pos] - 1
        ram = k.mem.ram.pages
        if (back < 0).any() or (back >= ram.nr).any() or (ram.head_off[back] != 0).any():
            return False
        if (ram.flags[back] & np.uint32(PG_head)).any():
            return False
        write = (dv & np.uint64(MIGRATE_PFN_WRITE)) != 0
        if _hole_dst_writable(k, args):
            write |= (sv[take] & np.uint64(MIGRATE_PFN_VALID)) == 0
        tags = np.where(write, DPT_XA_TAG_WRITE, 0)
        vpns = ((args.start >> PAGE_SHIFT) + take).tolist()
        self.pt.map_many(vpns, ram, back, tags)
        return True

    def dmirror_migrate_finalize_and_map(self, args) -> int:
        k = self.mdevice.k
        start_pfn = args.start >> PAGE_SHIFT
        end_pfn = args.end >> PAGE_SHIFT
        hole_write = _hole_dst_writable(k, args)
        with self.mutex:
            if self._finalize_and_map_bulk(args):
                return 0
            # the slots with a source (a THP window has one in 512)
            for i in compress(range(end_pfn - start_pfn), args.src):
                vpn = start_pfn + i
                if not int(args.src[i]) & MIGRATE_PFN_MIGRATE:
                    continue
                dv = int(args.dst[i])
                dpage = migrate_pfn_to_page(dv, k=k)
                if dpage is None:
                    continue
                nr = folio_nr_pages(page_folio(dpage)) if dv & MIGRATE_PFN_COMPOUND else 1
                if end_pfn < vpn + nr:
                    k.warn_once("finalize_and_map", "dmirror: compound page past the window")
                rpage = BACKING_PAGE(dpage)
                rfolio = page_folio(rpage)
                write = dv & MIGRATE_PFN_WRITE or (
                    hole_write and not int(args.src[i]) & MIGRATE_PFN_VALID
                )
                tag = DPT_XA_TAG_WRITE if write else 0
                self.pt.map_run(vpn, rfolio.a, rfolio.i, nr, tag)
        return 0

    def _windows(self, cmd):
        """The 512-page migrate windows of [addr, end), clipped to each vma."""
        mm = self.notifier.mm
        start = cmd.addr
        end = start + (cmd.npages << PAGE_SHIFT)
        addr = start
        while addr < end:
            vma = vma_lookup(mm, addr)
            if vma is None or not vma.vm_flags & VM_READ:
                yield None, addr, addr
                return
            nxt = min(end, addr + (PTRS_PER_PTE << PAGE_SHIFT), vma.vm_end)
            yield vma, addr, nxt
            addr = nxt

    def dmirror_fault_and_migrate_to_device(self, cmd, proc) -> int:
        """Series (e): fault in and migrate to device memory in one walk.

        The series' dmirror_fault_and_migrate_to_device (ioctl
        HMM_DMIRROR_MIGRATE_ON_FAULT_TO_DEV): windows of PFNS_ARRAY_SIZE
        pages, each one hmm_range_fault with HMM_PFN_REQ_FAULT |
        HMM_PFN_REQ_MIGRATE (range.migrate: pgmap_owner this device, flags
        MIGRATE_VMA_SELECT_SYSTEM, src[] doubling as hmm_pfns[] as in the
        series), then migrate_hmm_range_setup and the usual alloc_and_copy,
        migrate_vma_pages, finalize_and_map and migrate_vma_finalize; then
        the device reads the range back, as MIGRATE_TO_DEV does.

        Ours: the mmap_lock is held from the walk to finalize (the collected
        pages are locked and unmapped until then; the RFC took it again
        inside dmirror_range_fault), the device mirror is filled by
        finalize_and_map only (not also by dmirror_do_fault of the walk's
        words), and -EBUSY retries the window after finalize has put back
        what was collected, up to DMIRROR_RANGE_FAULT_TIMEOUT times.
        """
        mm = self.notifier.mm
        if mm.dead:
            return -EFAULT  # mmget_not_zero
        L = self.mdevice.k.hmm
        start = cmd.addr
        end = start + (cmd.npages << PAGE_SHIFT)
        src = [0] * PFNS_ARRAY_SIZE
        dst = [0] * PFNS_ARRAY_SIZE
        m = migrate_vma(src=src, dst=dst, pgmap_owner=self.mdevice, flags=MIGRATE_VMA_SELECT_SYSTEM)
        r = hmm_range(
            notifier=self.notifier,
            hmm_pfns=src,
            pfn_flags_mask=0,
            default_flags=L.HMM_PFN_REQ_FAULT | L.HMM_PFN_REQ_MIGRATE,
            dev_private_owner=self.mdevice,
            migrate=m,
        )
        nxt = start
        while nxt < end:
            r.start = nxt
            r.end = min(end, nxt + (PFNS_ARRAY_SIZE << PAGE_SHIFT))
            ret = self._do_fault_and_migrate(r)
            if ret:
                return ret
            nxt = r.end
        return self._read_back(cmd, proc)

    def _do_fault_and_migrate(self, r) -> int:
        mm = self.notifier.mm
        m = r.migrate
        n = (r.end - r.start) >> PAGE_SHIFT
        for _jiffy in range(DMIRROR_RANGE_FAULT_TIMEOUT):
            m.src[:] = [0] * len(m.src)
            m.dst[:] = [0] * len(m.dst)
            m.vma, m.start, m.end, m.cpages, m.npages = None, 0, 0, 0, 0
            r.notifier_seq = mmu_interval_read_begin(r.notifier)
            mm.mmap_lock.down_read()
            try:
                ret = hmm_range_fault(r)
                migrate_hmm_range_setup(r)
                if m.vma is not None and m.npages == n:
                    self.dmirror_migrate_alloc_and_copy(m)
                    migrate_vma_pages(m)
                    self.dmirror_migrate_finalize_and_map(m)
                    migrate_vma_finalize(m)
            finally:
                mm.mmap_lock.up_read()
            if ret != -EBUSY:
                return ret
        return -EBUSY

    def dmirror_migrate_to_device(self, cmd, proc) -> int:
        mm = self.notifier.mm
        if mm.dead:
            return -EINVAL
        src = [0] * PTRS_PER_PTE
        dst = [0] * PTRS_PER_PTE
        mm.mmap_lock.down_read()
        try:
            for vma, addr, nxt in self._windows(cmd):
                if vma is None:
                    return -EINVAL
                args = migrate_vma(
                    vma=vma,
                    src=src,
                    dst=dst,
                    start=addr,
                    end=nxt,
                    pgmap_owner=self.mdevice,
                    flags=MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_SELECT_COMPOUND,
                )
                ret = migrate_vma_setup(args)
                if ret:
                    return ret
                self.dmirror_migrate_alloc_and_copy(args)
                migrate_vma_pages(args)
                self.dmirror_migrate_finalize_and_map(args)
                migrate_vma_finalize(args)
        finally:
            mm.mmap_lock.up_read()
        return self._read_back(cmd, proc)

    def _read_back(self, cmd, proc) -> int:
        """The tail of dmirror_migrate_to_device: read the range back to cmd.ptr."""
        # return the migrated data for verification (only device pages read)
        size = (cmd.npages << PAGE_SHIFT) & U64_MASK
        k = self.mdevice.k
        if not vmalloc_size_ok(k, size):
            return -ENOMEM  # dmirror_bounce_init
        vm = vmalloc_pages(k, size)
        if vm is None:
            return -ENOMEM  # dmirror_bounce_init
        done = self._read_to_user_direct(cmd.addr, size, cmd.ptr)
        if done is not None:
            cmd.cpages = done
            vfree_pages(k, vm)  # dmirror_bounce_fini
            return 0
        bounce = dmirror_bounce(cmd.addr, size, k)
        bounce.vm = vm
        with self.mutex:
            ret = self.dmirror_do_read(cmd.addr, cmd.addr + size, bounce)
        if ret == 0:
            ret = _copy_to_user(proc, cmd.ptr, bounce.ptr)
        cmd.cpages = bounce.cpages
        dmirror_bounce_fini(k, bounce)
        return ret

    def dmirror_devmem_fault_alloc_and_copy(self, args) -> int:
        """Allocate system pages for device pages leaving and copy them (0 or VM_FAULT_OOM)."""
        copies = _FrameCopies(self.mdevice.k)
        try:
            return self._fault_alloc_and_copy(args, copies)
        finally:
            copies.flush()

    def _fault_alloc_and_copy_bulk(self, args, copies) -> bool:
        """_fault_alloc_and_copy for a window of order-0 device-private pages.

        Not in the C (issue 7). Only with the default scheduler, no injected
        allocation failure, enough free pages, and every MIGRATE source an
        order-0 device-private page of one range with an order-0 backing
        page. Then, as the per-slot loop: one new locked system page per
        source, in allocation order (alloc_pages_order0_bulk), dst =
        migrate_pfn | WRITE as the source had, the mirror's entry dropped,
        the backing page's bytes copied (queued on `copies`). True if done.
        """
        from hmmsim.include.migrate import MIGRATE_PFN_DEVICE_PRIVATE, MIGRATE_PFN_SHIFT
        from hmmsim.include.mm_types import PG_head, PG_locked

        k = self.mdevice.k
        if (
            not k.fastpath
            or self.flags & HMM_DMIRROR_FLAG_FAIL_ALLOC
            or not self.mdevice.is_private_zone()
        ):
            return False
        n = (args.end - args.start) >> PAGE_SHIFT
        src, dst = args.src, args.dst
        sv = slot_words(src, range(n))
        need = np.uint64(MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE)
        take = np.flatnonzero((sv & need) == need)
        if len(take) < 8:
            return False
        vals = sv[take]
        first = migrate_pfn_to_page(int(vals[0]), k=k)
        if not is_device_private_page(first):
            return False
        dp = vals & np.uint64(MIGRATE_PFN_DEVICE_PRIVATE)
        if (dp != dp[0]).any():
            return False
        a = first.a
        pos = (vals >> np.uint64(MIGRATE_PFN_SHIFT)).astype(np.int64)
        pos += first.i - int(pos[0])
        if (pos < 0).any() or (pos >= a.nr).any() or (a.pgmap[pos] != a.pgmap[first.i]).any():
            return False
        back = a.zone_device_data[pos] - 1
        ram = k.mem.ram.pages
        if (back < 0).any() or (back >= ram.nr).any():
            return False
        if (ram.flags[back] & np.uint32(PG_head)).any() or (ram.head_off[back] != 0).any():
            return False
        new = k.mem.alloc_pages_order0_bulk(len(take), GFP_HIGHUSER_MOVABLE)
        if new is None:
            return False
        ram.flags[new] |= np.uint32(PG_locked)  # folio_lock() of a fresh page
        d = (new.astype(np.uint64) << np.uint64(MIGRATE_PFN_SHIFT)) | np.uint64(MIGRATE_PFN_VALID)
        d |= vals & np.uint64(MIGRATE_PFN_WRITE)
        store_slots(dst, take, d)
        base = args.start >> PAGE_SHIFT
        pop = self.pt._d.pop
        for i in take.tolist():
            pop(base + i, None)
        copies.to.extend(new.tolist())
        copies.frm.extend(back.tolist())
        return True

    def _fault_alloc_and_copy(self, args, copies) -> int:
        k = self.mdevice.k
        if self._fault_alloc_and_copy_bulk(args, copies):
            return 0
        src, dst = args.src, args.dst
        i = 0
        addr = args.start
        while addr < args.end:
            s = int(src[i])
            spage = migrate_pfn_to_page(s, k=k)
            order = 0
            if spage is None or not s & MIGRATE_PFN_MIGRATE:
                addr += PAGE_SIZE
                i += 1
                continue
            if not is_device_private_page(spage) and not is_device_coherent_page(spage):
                k.warn("dmirror_devmem_fault_alloc_and_copy: not a device page")
                addr += PAGE_SIZE
                i += 1
                continue
            spage = BACKING_PAGE(spage)
            order = folio_order(page_folio(spage))
            d = MIGRATE_PFN_COMPOUND if order else 0
            if s & MIGRATE_PFN_WRITE:
                d |= MIGRATE_PFN_WRITE
            if self.flags & HMM_DMIRROR_FLAG_FAIL_ALLOC:
                self.flags &= ~HMM_DMIRROR_FLAG_FAIL_ALLOC
                d &= ~MIGRATE_PFN_COMPOUND
                dpage = None
            else:
                dpage = k.mem.alloc_pages(order, GFP_HIGHUSER_MOVABLE)
            if dpage is None and not order:
                dst[i] = d
                return VM_FAULT_OOM
            if dpage is not None:
                folio_lock(dpage)
                d |= migrate_pfn(dpage.pfn)
            dst[i] = d
            n = 1 << order
            to = _frames_of(dpage, n) if dpage is not None and order and k.fastpath else None
            frm = _frames_of(spage, n) if to is not None else None
            if to is not None and frm is not None and len(to) == len(frm) == n:
                # a whole destination folio: one block copy (same bytes as the loop)
                self.pt.discard(addr >> PAGE_SHIFT, n)
                to[:] = frm
                addr += n * PAGE_SIZE
                i += n
                continue
            for j in range(1 << order):
                if dpage is None and order:
                    small = k.mem.alloc_pages(0, GFP_HIGHUSER_MOVABLE)
                    if small is None:
                        while j > 0:
                            j -= 1
                            fpage = migrate_pfn_to_page(int(dst[i + j]), k=k)
                            folio_unlock(fpage)
                            folio_put(fpage)
                        for jj in range(j, 1 << order):
                            dst[i + jj] = 0
                        return VM_FAULT_OOM
                    folio_lock(small)
                    dst[i + j] = migrate_pfn(small.pfn)
                    dst_pfn = small.pfn
                else:
                    dst_pfn = dpage.pfn + j
                self.pt.discard(addr >> PAGE_SHIFT)
                addr += PAGE_SIZE
                copies.copy_pfn(dst_pfn, spage.pfn + j)
            i += 1 << order
        return 0

    def dmirror_migrate_to_system(self, cmd, proc) -> int:
        mm = self.notifier.mm
        if mm.dead:
            return -EINVAL
        src = [0] * PTRS_PER_PTE
        dst = [0] * PTRS_PER_PTE
        cmd.cpages = 0
        mm.mmap_lock.down_read()
        try:
            for vma, addr, nxt in self._windows(cmd):
                if vma is None:
                    return -EINVAL
                dst[:] = [0] * PTRS_PER_PTE
                args = migrate_vma(
                    vma=vma,
                    src=src,
                    dst=dst,
                    start=addr,
                    end=nxt,
                    pgmap_owner=self.mdevice,
                    flags=self.mdevice.dmirror_select_device() | MIGRATE_VMA_SELECT_COMPOUND,
                )
                ret = migrate_vma_setup(args)
                if ret:
                    return ret
                if self.dmirror_devmem_fault_alloc_and_copy(args):
                    migrate_vma_finalize(args)
                    return -ENOMEM
                migrate_vma_pages(args)
                both = MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE
                cmd.cpages += _count_both(src[: args.npages], both)
                migrate_vma_finalize(args)
        finally:
            mm.mmap_lock.up_read()
        return 0

    # --- exclusive access ------------------------------------------------------------------
    def dmirror_check_atomic(self, start: int, end: int) -> int:
        """-EPERM if a mirror entry of [start, end) is tagged ATOMIC, else 0.

        The C loads every index of the range; only entries that exist can
        be ATOMIC, so a range wider than the table looks at the table's
        entries instead (same answer, without 2**40 iterations)."""
        lo, hi = start >> PAGE_SHIFT, end >> PAGE_SHIFT
        if hi - lo > len(self.pt):
            vpns = [v for v in self.pt if lo <= v < hi]
        else:
            vpns = range(lo, hi)
        for vpn in vpns:
            entry = self.pt.get(vpn)
            if entry is not None and entry[1] == DPT_XA_TAG_ATOMIC:
                return -EPERM
        return 0

    def dmirror_exclusive(self, cmd, proc) -> int:
        mm = self.notifier.mm
        if mm.dead:
            return -EINVAL
        start = cmd.addr
        end = (start + (cmd.npages << PAGE_SHIFT)) & U64_MASK
        if end < start:
            return -EINVAL
        if mm.k.config.kernel == "6.12":
            ret = self._dmirror_exclusive_612(mm, start, end)
            if ret:
                return ret
            return self._dmirror_exclusive_read_back(cmd, proc, start, end)
        ret = 0
        mm.mmap_lock.down_read()
        try:
            addr = start
            while not ret and addr < end:
                foliop = []
                page = make_device_exclusive(mm, addr, None, foliop)
                if isinstance(page, int):
                    ret = page
                    break
                with self.mutex:
                    self.pt[addr >> PAGE_SHIFT] = (page, DPT_XA_TAG_ATOMIC)
                folio_unlock(foliop[0])
                folio_put(foliop[0])
                addr += PAGE_SIZE
        finally:
            mm.mmap_lock.up_read()
        if ret:
            return ret
        return self._dmirror_exclusive_read_back(cmd, proc, start, end)

    def _dmirror_exclusive_612(self, mm, start: int, end: int) -> int:
        """Linux 6.12's exclusive loop: 64-page windows; 0 or -EBUSY.

        Kernel (6.12): lib/test_hmm.c dmirror_exclusive. Each window goes to
        make_device_exclusive_range; only if GUP got every page of it are the
        pages that became exclusive entered in the mirror (dmirror_atomic_map,
        tagged ATOMIC), and unless all of them did, the ioctl stops with
        -EBUSY (also for a GUP error). Pages made exclusive before that keep
        their entries.
        """
        from hmmsim.mm.rmap import make_device_exclusive_range

        window = 64
        mm.mmap_lock.down_read()
        try:
            addr = start
            while addr < end:
                nxt = min(end, (addr + (window << PAGE_SHIFT)) & U64_MASK)
                if nxt <= addr:  # the C's addr + 64 pages wraps: min() picks it
                    nxt = (addr + (window << PAGE_SHIFT)) & U64_MASK
                pages: list = []
                ret = make_device_exclusive_range(mm, addr, nxt, pages, None)
                mapped = 0
                if ret == (nxt - addr) >> PAGE_SHIFT:
                    mapped = self._dmirror_atomic_map(addr, pages)
                for page in pages[: max(ret, 0)]:
                    if page is not None:
                        folio = page_folio(page)
                        folio_unlock(folio)
                        folio_put(folio)
                if addr + (mapped << PAGE_SHIFT) < nxt:
                    return -EBUSY
                addr = nxt
        finally:
            mm.mmap_lock.up_read()
        return 0

    def _dmirror_atomic_map(self, start: int, pages: list) -> int:
        """Enter the exclusive pages of a window in the mirror, tagged ATOMIC;
        returns how many (Kernel (6.12): lib/test_hmm.c dmirror_atomic_map)."""
        mapped = 0
        with self.mutex:
            vpn = start >> PAGE_SHIFT
            for i, page in enumerate(pages):
                if page is None:
                    continue
                self.pt[vpn + i] = (page, DPT_XA_TAG_ATOMIC)
                mapped += 1
        return mapped

    def _dmirror_exclusive_read_back(self, cmd, proc, start: int, end: int) -> int:
        """The tail of dmirror_exclusive: read the range back through the mirror."""
        bounce = dmirror_bounce_init(self.mdevice.k, start, end - start)
        if isinstance(bounce, int):
            return bounce
        with self.mutex:
            ret = self.dmirror_do_read(start, end, bounce)
        if ret == 0:
            ret = _copy_to_user(proc, cmd.ptr, bounce.ptr)
        cmd.cpages = bounce.cpages
        dmirror_bounce_fini(self.mdevice.k, bounce)
        return ret

    # --- snapshot ----------------------------------------------------------------------------
    def dmirror_mkentry(self, entry: int) -> int:
        k = self.mdevice.k
        L = k.hmm
        if entry & L.HMM_PFN_ERROR:
            return HMM_DMIRROR_PROT_ERROR
        if not entry & L.HMM_PFN_VALID:
            return HMM_DMIRROR_PROT_NONE
        page = hmm_pfn_to_page(k, entry)
        if is_device_private_page(page):
            perm = (
                HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL
                if page_pgmap(page).owner is self.mdevice
                else HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE
            )
        elif is_device_coherent_page(page):
            perm = (
                HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL
                if page_pgmap(page).owner is self.mdevice
                else HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE
            )
        elif is_zero_pfn(k, page.pfn):
            perm = HMM_DMIRROR_PROT_ZERO
        else:
            perm = HMM_DMIRROR_PROT_NONE
        perm |= HMM_DMIRROR_PROT_WRITE if entry & L.HMM_PFN_WRITE else HMM_DMIRROR_PROT_READ
        order = L.hmm_pfn_to_map_order(entry)
        if order + PAGE_SHIFT == PMD_SHIFT:
            perm |= HMM_DMIRROR_PROT_PMD
        elif order + PAGE_SHIFT == PUD_SHIFT:
            perm |= HMM_DMIRROR_PROT_PUD
        return perm

    def dmirror_mkentries(self, entries, n: int) -> np.ndarray:
        """dmirror_mkentry of entries[:n], system RAM pages in one NumPy pass.

        A valid, non-error word naming a RAM PFN other than the zero page is
        a plain system page: NONE | READ or WRITE | PMD/PUD by its order,
        exactly what dmirror_mkentry gives. Every other word goes through
        dmirror_mkentry. Not in the C (issue 7's fast path).
        """
        k = self.mdevice.k
        if not k.fastpath:
            return np.array([self.dmirror_mkentry(int(entries[i])) for i in range(n)], np.uint8)
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
        perm = np.where((w & np.uint64(L.HMM_PFN_WRITE)) != 0, HMM_DMIRROR_PROT_WRITE, 0)
        perm |= np.where((w & np.uint64(L.HMM_PFN_WRITE)) == 0, HMM_DMIRROR_PROT_READ, 0)
        perm |= np.where(order + PAGE_SHIFT == PMD_SHIFT, HMM_DMIRROR_PROT_PMD, 0)
        perm |= np.where(order + PAGE_SHIFT == PUD_SHIFT, HMM_DMIRROR_PROT_PUD, 0)
        perm = perm.astype(np.uint8)
        for j in np.flatnonzero(~ram).tolist():
            perm[j] = self.dmirror_mkentry(int(entries[j]))
        return perm

    def dmirror_range_snapshot(self, r: hmm_range, perm: np.ndarray) -> int:
        mm = self.notifier.mm
        snap = _SnapshotNotifier(self)
        r.notifier = mmu_interval_notifier()
        ret = mmu_interval_notifier_insert(r.notifier, mm, r.start, r.end - r.start, snap)
        if ret:
            return ret
        try:
            for _jiffy in range(DMIRROR_RANGE_FAULT_TIMEOUT):
                r.notifier_seq = mmu_interval_read_begin(r.notifier)
                mm.mmap_lock.down_read()
                try:
                    ret = hmm_range_fault(r)
                finally:
                    mm.mmap_lock.up_read()
                if ret:
                    if ret == -EBUSY:
                        continue
                    return ret
                self.mutex.lock()
                if mmu_interval_read_retry(r.notifier, r.notifier_seq):
                    self.mutex.unlock()
                    continue
                n = (r.end - r.start) >> PAGE_SHIFT
                perm[:n] = self.dmirror_mkentries(r.hmm_pfns, n)
                self.mutex.unlock()
                return 0
            return -EBUSY
        finally:
            mmu_interval_notifier_remove(r.notifier)

    def dmirror_snapshot(self, cmd, proc) -> int:
        """One byte per page, copied to the user one 32-page window at a
        time as the C does: a buffer too small is -EFAULT once a window runs
        off it, after the earlier windows were written. Nothing is sized by
        npages."""
        mm = self.notifier.mm
        start = cmd.addr
        end = (start + (cmd.npages << PAGE_SHIFT)) & U64_MASK
        if end < start:
            return -EINVAL
        if mm.dead:
            return -EINVAL
        pfns = [0] * 32
        perm = np.zeros(32, dtype=np.uint8)
        r = hmm_range(hmm_pfns=pfns, dev_private_owner=self.mdevice)
        addr = start
        ret = 0
        uoff = 0
        view = _user_view(cmd.ptr)
        while addr < end:
            nxt = min(addr + (32 << PAGE_SHIFT), end)
            r.start, r.end = addr, nxt
            pfns[:] = [0] * 32
            ret = self.dmirror_range_snapshot(r, perm)
            if ret:
                break
            n = (nxt - addr) >> PAGE_SHIFT
            if _copy_to_user(proc, cmd.ptr, perm[:n], uoff, view):
                ret = -EFAULT
                break
            cmd.cpages += n
            uoff += n
            addr = nxt
        return ret


class _SnapshotNotifier:
    """dmirror_mrn_ops: a snapshot only needs the sequence bumped."""

    def __init__(self, d: dmirror) -> None:
        self.d = d

    def invalidate(self, mni, r, cur_seq: int) -> bool:
        if mmu_notifier_range_blockable(r):
            self.d.mutex.lock()
        elif not self.d.mutex.trylock():
            return False
        mmu_interval_set_seq(mni, cur_seq)
        self.d.mutex.unlock()
        return True


def _hole_dst_writable(k, args) -> bool:
    """Does a migrated hole or zero page get a writable mirror entry?

    Linux 6.12 lib/test_hmm.c dmirror_migrate_alloc_and_copy sets
    MIGRATE_PFN_WRITE in dst for a slot without a source page (a hole or the
    zero page) when the vma is VM_WRITE, and dmirror_migrate_finalize_and_map
    tags the mirror entry writable from dst. At the pin (linux-mm 05ab5121)
    dst WRITE comes from the src entry only, so such an entry is read-only
    in the mirror and a later HMM_DMIRROR_WRITE has to fault (where
    hmm_range_fault reports the device page itself: tests/unit/test_kernel_612).
    The core never reads dst WRITE (the CPU entry's writability comes from
    the vma), so the model applies the rule where the tag is made.
    """
    return k.config.kernel == "6.12" and bool(args.vma.vm_flags & VM_WRITE)


def dmirror_fault_window(k) -> int:
    """The pages one hmm_range_fault of dmirror_fault covers: its pfns[] size.

    lib/test_hmm.c dmirror_fault: `unsigned long pfns[32]` at the pin
    (linux-mm 05ab5121), `pfns[64]` in Linux 6.12. Visible because a fault
    runs on to the end of the range walked (mm/hmm.c hmm_vma_fault): one
    READ/WRITE fault brings back the caller's device pages up to 64 pages on
    under 6.12, 32 at the pin. docs/kernel-versions.md.
    """
    return 64 if k.config.kernel == "6.12" else 32


def hmm_pfn_to_page(k, hmm_pfn: int) -> Page:
    """include/linux/hmm.h hmm_pfn_to_page (offset-aware under series (c))."""
    from hmmsim.mm.memremap import device_private_offset_to_page

    L = k.hmm
    idx = L.hmm_pfn_to_pfn(hmm_pfn)
    if L.HMM_PFN_DEVICE_PRIVATE and hmm_pfn & L.HMM_PFN_DEVICE_PRIVATE:
        return device_private_offset_to_page(idx, k=k)
    return k.mem.pfn_to_page(idx)


def hmm_dmirror_init(k) -> list[dmirror_device]:
    """Load the module: register /dev/hmm_dmirror0..3 on Kernel k.

    Devices 2 and 3 are device-coherent; the model reserves two 256 MiB
    "special purpose memory" ranges for them (minor 2 uses spm_addr_dev1,
    minor 3 spm_addr_dev0, as the C does).
    """
    spm = []
    for _ in range(2):
        res = k.iomem.request_free_mem_region(DEVMEM_CHUNK_SIZE, "Soft Reserved (SPM)")
        if isinstance(res, int):
            raise MemoryError("hmm_dmirror_init: no physical address space for the SPM ranges")
        spm.append(res.start)
    spm_addr_dev0, spm_addr_dev1 = spm
    devices = [
        dmirror_device(k, 0, HMM_DMIRROR_MEMORY_DEVICE_PRIVATE),
        dmirror_device(k, 1, HMM_DMIRROR_MEMORY_DEVICE_PRIVATE),
        dmirror_device(k, 2, HMM_DMIRROR_MEMORY_DEVICE_COHERENT, spm_addr_dev1),
        dmirror_device(k, 3, HMM_DMIRROR_MEMORY_DEVICE_COHERENT, spm_addr_dev0),
    ]
    for d in devices:
        ret, _ = d.dmirror_allocate_chunk(False, False)
        if ret:
            raise MemoryError(f"hmm_dmirror_init: device {d.minor} chunk failed ({ret})")
        k.devices[f"/dev/hmm_dmirror{d.minor}"] = d
    hooks = k.__dict__.setdefault("invariant_hooks", [])
    if dmirror_check_device_pages not in hooks:
        hooks.append(dmirror_check_device_pages)
    return devices

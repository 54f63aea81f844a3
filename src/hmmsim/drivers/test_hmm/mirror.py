"""The dmirror mirror: struct dmirror, its page table, faults, reads, snapshots.

Models: lib/test_hmm.c @ torvalds/linux 0eaed89c18ae (linux-mm 05ab5121):
struct dmirror and its xarray page table `pt`, the interval notifier
(dmirror_interval_invalidate, dmirror_do_update), dmirror_do_read,
dmirror_do_write, dmirror_do_fault, dmirror_range_fault, dmirror_fault,
dmirror_read, dmirror_write, dmirror_mkentry, dmirror_range_snapshot
(dmirror_snapshot_invalidate) and dmirror_snapshot.

Differences from the C: the page table is a dict keyed by VA page number
(_MirrorTable, entries packed in ints); "jiffies" are counted in retries
(DMIRROR_RANGE_FAULT_TIMEOUT of them).
"""

from __future__ import annotations

from collections import deque
from itertools import repeat
from typing import TYPE_CHECKING

import numpy as np

from hmmsim.data_plane import TokenPlaneError, check_store_tokens
from hmmsim.drivers.test_hmm.devmem import (
    BACKING_PAGE,
    DMIRROR_RANGE_FAULT_TIMEOUT,
    DPT_XA_TAG_WRITE,
    _array_id,
)
from hmmsim.drivers.test_hmm.ioctl import dmirror_exclusive_ops
from hmmsim.drivers.test_hmm.migrate import dmirror_migrate_ops
from hmmsim.drivers.test_hmm.uaccess import (
    _copy_from_user,
    _copy_to_user,
    _kmap_frame,
    _user_view,
    dmirror_bounce,
    dmirror_bounce_fini,
    dmirror_bounce_init,
)
from hmmsim.drivers.test_hmm_uapi import (
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
)
from hmmsim.errno import EBUSY, EFAULT, EINVAL, ENOENT
from hmmsim.fast import test_hmm as fast
from hmmsim.include.hmm import hmm_range
from hmmsim.include.mm_types import (
    Page,
)
from hmmsim.include.mmu_notifier import MMU_NOTIFY_MIGRATE, mmu_notifier_range_blockable
from hmmsim.include.uapi_types import U64_MASK
from hmmsim.kconfig import (
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    PMD_SHIFT,
    PUD_SHIFT,
)
from hmmsim.locking import Lock
from hmmsim.mm.hmm import hmm_range_fault
from hmmsim.mm.memory import is_zero_pfn
from hmmsim.mm.memremap import (
    is_device_coherent_page,
    is_device_private_page,
    page_pgmap,
)
from hmmsim.mm.mmu_notifier import (
    mmu_interval_notifier,
    mmu_interval_notifier_insert,
    mmu_interval_notifier_remove,
    mmu_interval_read_begin,
    mmu_interval_read_retry,
    mmu_interval_set_seq,
)

if TYPE_CHECKING:
    from hmmsim.drivers.test_hmm.device import dmirror_device


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

    def discard_many(self, vpns) -> None:
        """Drop the entries of the given vpns that exist (xa_erase of each)."""
        deque(map(self._d.pop, vpns, repeat(None)), maxlen=0)

    def discard(self, vpn: int, n: int = 1) -> None:
        """Drop the entries of vpn..vpn+n-1 that exist (xa_erase of each)."""
        # one map() in C over the run (a 2 MiB folio is 512 entries)
        deque(map(self._d.pop, range(vpn, vpn + n), repeat(None, n)), maxlen=0)


class dmirror(dmirror_migrate_ops, dmirror_exclusive_ops):
    """struct dmirror: one open file's mirror of its process's address space.

    Fields: mdevice; mm (the mirrored mm); pt (VA page number -> (page,
    tag)); notifier (covers the whole mm); mutex; flags (HMM_DMIRROR_FLAG_*);
    _zdd_id (model-only: the id zone_device_data stores for this mirror).

    The methods come by concern: the notifier, reads, writes, faults and
    snapshots here; migration in migrate.py (dmirror_migrate_ops); exclusive
    access in ioctl.py (dmirror_exclusive_ops).
    """

    __slots__ = ("mdevice", "mm", "pt", "notifier", "mutex", "flags", "_zdd_id")

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
    def dmirror_interval_invalidate(self, mni, r, cur_seq: int) -> bool:
        """dmirror_min_ops.invalidate: drop device mappings of [start, end]."""
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

    #: the mmu_interval_notifier_ops (dmirror_min_ops) the notifier calls
    invalidate = dmirror_interval_invalidate

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
        done = fast.dmirror_do_read_bulk(self, start, end, bounce, off)  # a leading run
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
        if fast.dmirror_do_fault_bulk(self, r):
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
        bounce = dmirror_bounce_init(self.mdevice, start, size)
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
        bounce = dmirror_bounce_init(self.mdevice, start, size, scratch=False)
        if isinstance(bounce, int):
            return bounce
        data = _copy_from_user(proc, cmd.ptr, size)
        if isinstance(data, int):
            cmd.cpages = 0
            dmirror_bounce_fini(k, bounce)
            return data
        bounce.ptr[:] = data
        if k.mem.data_plane == "tokens":  # the model's token plane: refused before any store
            try:
                check_store_tokens(start & PAGE_MASK, bounce.ptr)
            except TokenPlaneError:
                dmirror_bounce_fini(k, bounce)
                raise
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
                if not fast.dmirror_range_snapshot_bulk(self, r.hmm_pfns, n, perm):
                    for i in range(n):
                        perm[i] = self.dmirror_mkentry(int(r.hmm_pfns[i]))
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

    __slots__ = ("d",)

    def __init__(self, d: dmirror) -> None:
        self.d = d

    def dmirror_snapshot_invalidate(self, mni, r, cur_seq: int) -> bool:
        if mmu_notifier_range_blockable(r):
            self.d.mutex.lock()
        elif not self.d.mutex.trylock():
            return False
        mmu_interval_set_seq(mni, cur_seq)
        self.d.mutex.unlock()
        return True

    #: dmirror_mrn_ops.invalidate
    invalidate = dmirror_snapshot_invalidate


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

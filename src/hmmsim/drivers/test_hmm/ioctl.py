"""The dmirror file operations and the exclusive-access ioctls.

Models: lib/test_hmm.c @ torvalds/linux 0eaed89c18ae (linux-mm 05ab5121):
dmirror_fops_open, dmirror_fops_mmap, dmirror_fops_release and
dmirror_fops_unlocked_ioctl (argument checks and command dispatch, the
FLAGS and RELEASE commands), dmirror_exclusive (and Linux 6.12's windowed
form with dmirror_atomic_map) and dmirror_check_atomic (CHECK_EXCLUSIVE).
"""

from __future__ import annotations

import numpy as np

from hmmsim.drivers.test_hmm.devmem import DPT_XA_TAG_ATOMIC, ULONG_MAX
from hmmsim.drivers.test_hmm.uaccess import (
    _copy_from_user,
    _copy_to_user,
    check_user_ptr,
    dmirror_bounce_fini,
    dmirror_bounce_init,
)
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_CHECK_EXCLUSIVE,
    HMM_DMIRROR_EXCLUSIVE,
    HMM_DMIRROR_FLAGS,
    HMM_DMIRROR_MIGRATE_ON_FAULT_TO_DEV,
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_MIGRATE_TO_SYS,
    HMM_DMIRROR_READ,
    HMM_DMIRROR_RELEASE,
    HMM_DMIRROR_SNAPSHOT,
    HMM_DMIRROR_WRITE,
    SIZEOF_HMM_DMIRROR_CMD,
    hmm_dmirror_cmd,
)
from hmmsim.errno import EBUSY, EFAULT, EINVAL, ENOMEM, EPERM
from hmmsim.include.mm_types import (
    folio_put,
    page_folio,
)
from hmmsim.include.uapi_types import U64_MASK, u64
from hmmsim.kconfig import (
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
)
from hmmsim.locking import folio_unlock
from hmmsim.mm.mmu_notifier import (
    mmu_interval_notifier_insert,
    mmu_interval_notifier_remove,
)
from hmmsim.mm.page_alloc import (
    GFP_ZERO_BIT,
)
from hmmsim.mm.rmap import make_device_exclusive


class dmirror_fops:
    __slots__ = ()

    # --- file operations ---------------------------------------------------------------------
    def open(self, f, proc) -> int:
        from hmmsim.drivers.test_hmm.mirror import dmirror  # mirror.py imports this module

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


class dmirror_exclusive_ops:
    __slots__ = ()

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
        bounce = dmirror_bounce_init(self.mdevice, start, end - start)
        if isinstance(bounce, int):
            return bounce
        with self.mutex:
            ret = self.dmirror_do_read(start, end, bounce)
        if ret == 0:
            ret = _copy_to_user(proc, cmd.ptr, bounce.ptr)
        cmd.cpages = bounce.cpages
        dmirror_bounce_fini(self.mdevice.k, bounce)
        return ret

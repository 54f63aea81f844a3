"""The dmirror migration paths and the migrate_to_ram callback.

Models: lib/test_hmm.c @ torvalds/linux 0eaed89c18ae (linux-mm 05ab5121):
dmirror_migrate_to_device and dmirror_migrate_to_system (migrate_vma_*
in 512-page windows), dmirror_migrate_alloc_and_copy,
dmirror_migrate_finalize_and_map, dmirror_devmem_fault (the
dev_pagemap_ops migrate_to_ram callback) and
dmirror_devmem_fault_alloc_and_copy; series (e)'s
dmirror_fault_and_migrate_to_device. Each loop offers its window to the
fast layer (hmmsim/fast/test_hmm.py, and hmmsim/fast/test_hmm_coherent.py
for the device-coherent device) with one line first.
"""

from __future__ import annotations

from itertools import compress

from hmmsim.bug import KernelOops
from hmmsim.drivers.test_hmm.devmem import (
    BACKING_PAGE,
    DMIRROR_RANGE_FAULT_TIMEOUT,
    DPT_XA_TAG_WRITE,
    PFNS_ARRAY_SIZE,
    _frames_of,
    _zdd_get,
    _zdd_set,
)
from hmmsim.drivers.test_hmm.uaccess import (
    _copy_to_user,
    _frame,
    dmirror_bounce,
    dmirror_bounce_fini,
)
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_FLAG_FAIL_ALLOC,
    HMM_DMIRROR_MEMORY_DEVICE_PRIVATE,
)
from hmmsim.errno import EBUSY, EFAULT, EINVAL, ENOMEM
from hmmsim.fast import test_hmm as fast
from hmmsim.fast import test_hmm_coherent as fast_coh
from hmmsim.fault_inject import should_fail
from hmmsim.include.hmm import hmm_range
from hmmsim.include.migrate import (
    MIGRATE_PFN_COMPOUND,
    MIGRATE_PFN_MIGRATE,
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
    folio_nr_pages,
    folio_order,
    folio_put,
    page_folio,
)
from hmmsim.include.uapi_types import U64_MASK
from hmmsim.kconfig import (
    HPAGE_PMD_NR,
    PAGE_SHIFT,
    PAGE_SIZE,
    PTRS_PER_PTE,
)
from hmmsim.locking import folio_lock, folio_unlock
from hmmsim.mm.hmm import hmm_range_fault
from hmmsim.mm.memremap import (
    is_device_coherent_page,
    is_device_private_page,
    is_zone_device_page,
)
from hmmsim.mm.migrate import migrate_pfn, migrate_pfn_from_page, migrate_pfn_to_page
from hmmsim.mm.migrate_device import (
    migrate_hmm_range_setup,
    migrate_vma_finalize,
    migrate_vma_pages,
    migrate_vma_setup,
)
from hmmsim.mm.mmap import vma_lookup
from hmmsim.mm.mmu_notifier import (
    mmu_interval_read_begin,
)
from hmmsim.mm.page_alloc import (
    GFP_HIGHUSER_MOVABLE,
)
from hmmsim.mm.vmalloc import vfree_pages, vm_count_pages, vmalloc_pages, vmalloc_size_ok


class dmirror_devmem_fault_ops:
    __slots__ = ()

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
        if not isinstance(owner, dmirror_migrate_ops):  # a struct dmirror
            raise KernelOops("dmirror_devmem_fault", "no mirror recorded for the device page")
        return owner

    def dmirror_select_device(self) -> int:
        if self.zone_device_type == HMM_DMIRROR_MEMORY_DEVICE_PRIVATE:
            return MIGRATE_VMA_SELECT_DEVICE_PRIVATE
        return MIGRATE_VMA_SELECT_DEVICE_COHERENT


def _count_both(words: list[int], both: int) -> int:
    """How many words have every bit of `both` set (one map() in C per window)."""
    return list(map(both.__and__, words)).count(both)


class dmirror_migrate_ops:
    __slots__ = ()

    # --- migration ---------------------------------------------------------------------------
    def dmirror_migrate_alloc_and_copy(self, args) -> None:
        copies = fast.FrameCopies(self.mdevice)
        try:
            self._alloc_and_copy(args, copies)
        finally:
            copies.flush()

    def _alloc_and_copy(self, args, copies) -> None:
        k = self.mdevice.k
        if fast.dmirror_migrate_alloc_and_copy_bulk(
            self, args, copies
        ) or fast_coh.dmirror_migrate_alloc_and_copy_coherent_bulk(self, args):
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
                j = fast_coh.dmirror_alloc_and_copy_coherent_split_bulk(self, args, i, s, nr)
                i, addr = i + j, addr + j * PAGE_SIZE
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

    def dmirror_migrate_finalize_and_map(self, args) -> int:
        k = self.mdevice.k
        start_pfn = args.start >> PAGE_SHIFT
        end_pfn = args.end >> PAGE_SHIFT
        hole_write = _hole_dst_writable(k, args)
        with self.mutex:
            if fast.dmirror_migrate_finalize_and_map_bulk(
                self, args, hole_write, migrate_pfn_to_page
            ) or fast_coh.dmirror_migrate_finalize_and_map_coherent_bulk(
                self, args, hole_write, migrate_pfn_to_page
            ):
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
        # with the fast paths on nothing can look at the bounce's pages before
        # the direct read frees them again, so they skip the invariant
        # checker's count unless the bounce is used
        vm = vmalloc_pages(k, size, counted=not k.fastpath)
        if vm is None:
            return -ENOMEM  # dmirror_bounce_init
        done = fast.dmirror_read_to_user(self, cmd.addr, size, cmd.ptr)
        if done is not None:
            cmd.cpages = done
            vfree_pages(k, vm)  # dmirror_bounce_fini
            return 0
        vm_count_pages(k, vm)
        bounce = dmirror_bounce(cmd.addr, size, self.mdevice)
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
        copies = fast.FrameCopies(self.mdevice)
        try:
            return self._fault_alloc_and_copy(args, copies)
        finally:
            copies.flush()

    def _fault_alloc_and_copy(self, args, copies) -> int:
        k = self.mdevice.k
        if fast.dmirror_devmem_fault_alloc_and_copy_bulk(
            self, args, copies, migrate_pfn_to_page
        ) or fast_coh.dmirror_devmem_fault_alloc_and_copy_coherent_bulk(
            self, args, migrate_pfn_to_page
        ):
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

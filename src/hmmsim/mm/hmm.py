"""hmm_range_fault: mirror a CPU address range into HMM PFNs, faulting if asked.

Models: mm/hmm.c (hmm_range_fault, hmm_vma_walk_hole, hmm_vma_walk_pmd,
hmm_vma_handle_pte, hmm_vma_handle_pmd, hmm_vma_handle_absent_pmd,
hmm_vma_walk_hugetlb_entry, hmm_vma_walk_test, hmm_vma_fault,
hmm_pte_need_fault, hmm_range_need_fault) @ torvalds/linux 0eaed89c18ae,
and with series (e) switched on its unified walk ("mm: unified hmm fault and
migrate device pagewalk paths": hmm_want_migrate,
hmm_vma_capture_migrate_range, hmm_vma_handle_migrate_prepare and the
huge-PMD collect): with range.migrate and HMM_PFN_REQ_MIGRATE the same walk
faults and collects for migration, entry by entry (docs/unified-walk.md).

Output words use the HMM_PFN_* layout of the Kernel's configuration
(`Kernel.hmm`, include/hmm.py): BITS_PER_LONG and series (c)/(e) move bits.
A PFN that does not fit below the flag bits is a clear ValueError, never a
silently truncated word. hmm_pfns is the caller's array, updated in place.
Context: the mmap_lock of range.notifier.mm is held (read).

Speed: the PTE loop of hmm_vma_walk_pmd, hmm_range_need_fault and the slot
stores offer their span to hmmsim/fast/hmm.py in one line (`fast_hmm.*`),
which handles it in bulk or declines (docs/design.md).
"""

from __future__ import annotations

from hmmsim.bug import KernelBug
from hmmsim.errno import EAGAIN, EBUSY, EFAULT, ENOENT, EPERM
from hmmsim.fast import hmm as fast_hmm
from hmmsim.include.hmm import HMM_NEED_ALL_BITS, HMM_NEED_FAULT, HMM_NEED_WRITE_FAULT
from hmmsim.include.mm import (
    FAULT_FLAG_REMOTE,
    FAULT_FLAG_WRITE,
    VM_FAULT_ERROR,
    VM_IO,
    VM_PFNMAP,
    VM_READ,
    VM_WRITE,
)
from hmmsim.include.pgtable import (
    pmd_none,
    pmd_pfn,
    pmd_present,
    pmd_protnone,
    pmd_trans_huge,
    pmd_write,
    pte_none,
    pte_pfn,
    pte_present,
    pte_protnone,
    pte_write,
)
from hmmsim.kconfig import HPAGE_PMD_ORDER, PAGE_SHIFT, PAGE_SIZE, PMD_MASK
from hmmsim.mm.memory import handle_mm_fault, is_zero_pfn, vm_normal_page
from hmmsim.mm.memremap import page_pgmap
from hmmsim.mm.migrate import migration_entry_wait, pmd_migration_entry_wait
from hmmsim.mm.mmu_notifier import mmu_interval_check_retry
from hmmsim.mm.pagewalk import mm_walk_ops, walk_page_range
from hmmsim.mm.pgtable import pmdp_get, pte_offset_map, ptep_get


def hmm_pfn_to_page(k, hmm_pfn: int):
    """include/linux/hmm.h hmm_pfn_to_page; a series (c) word names an offset."""
    from hmmsim.mm.memremap import device_private_offset_to_page

    L = k.hmm
    idx = L.hmm_pfn_to_pfn(hmm_pfn)
    if L.HMM_PFN_DEVICE_PRIVATE and hmm_pfn & L.HMM_PFN_DEVICE_PRIVATE:
        return device_private_offset_to_page(idx, k=k)
    return k.mem.pfn_to_page(idx)


class hmm_vma_walk:
    """Walk state: the range and `last`, the first slot not yet output.

    Series (e) adds (mm/hmm.c struct hmm_vma_walk of "mm: unified hmm fault
    and migrate device pagewalk paths"): `minfo`, the MIGRATE_VMA_SELECT_*
    flags the walk collects for (0: a plain hmm_range_fault); `vma` and
    `end`, the vma and end of the range captured for range->migrate;
    `mmu_range` and `mmu_hit`, the MMU_NOTIFY_MIGRATE invalidation started
    at the first vma and ended after the last walk; `fault_folio`, the
    locked folio of migrate->fault_page (never trylocked again).
    """

    __slots__ = (
        "range",
        "last",
        "L",
        "k",
        "minfo",
        "vma",
        "end",
        "mmu_range",
        "mmu_hit",
        "fault_folio",
    )

    def __init__(self, range_, layout, k=None) -> None:
        self.range = range_
        self.k = k if k is not None else range_.notifier.mm.k
        self.last = range_.start
        self.L = layout
        self.minfo = 0
        self.vma = None
        self.end = 0
        self.mmu_range = None
        self.mmu_hit = None
        self.fault_folio = None


def _get(r, i: int) -> int:
    return int(r.hmm_pfns[i])


def _set(w: hmm_vma_walk, i: int, new_flags: int) -> None:
    """out = (in & HMM_PFN_INOUT_FLAGS) | new."""
    r = w.range
    r.hmm_pfns[i] = (_get(r, i) & w.L.HMM_PFN_INOUT_FLAGS) | new_flags


def _pfn_word(w: hmm_vma_walk, pfn: int) -> int:
    """The PFN field of an output word; refuses a PFN that does not fit."""
    if pfn & w.L.HMM_PFN_FLAGS or pfn < 0:
        raise ValueError(
            f"hmm_range_fault: PFN {pfn:#x} does not fit below the HMM_PFN flag bits "
            f"(BITS_PER_LONG={w.L.bits_per_long}, {w.L.HMM_PFN_ORDER_SHIFT} PFN bits)"
        )
    return pfn


def hmm_pfn_flags_order(w: hmm_vma_walk, order: int) -> int:
    return order << w.L.HMM_PFN_ORDER_SHIFT


def hmm_pte_need_fault(w: hmm_vma_walk, pfn_req_flags: int, cpu_flags: int) -> int:
    L = w.L
    r = w.range
    pfn_req_flags &= r.pfn_flags_mask
    pfn_req_flags |= r.default_flags
    if not pfn_req_flags & L.HMM_PFN_REQ_FAULT:
        return 0
    if pfn_req_flags & L.HMM_PFN_REQ_WRITE and not cpu_flags & L.HMM_PFN_WRITE:
        return HMM_NEED_FAULT | HMM_NEED_WRITE_FAULT
    if not cpu_flags & L.HMM_PFN_VALID:
        return HMM_NEED_FAULT
    return 0


def hmm_range_need_fault(w: hmm_vma_walk, i: int, npages: int, cpu_flags: int) -> int:
    r = w.range
    if not (r.default_flags | r.pfn_flags_mask) & w.L.HMM_PFN_REQ_FAULT:
        return 0
    if (required := fast_hmm.hmm_range_need_fault(w, i, npages, cpu_flags)) is not None:
        return required  # the whole span, in one pass
    required = 0
    for j in range(npages):
        required |= hmm_pte_need_fault(w, _get(r, i + j), cpu_flags)
        if required == HMM_NEED_ALL_BITS:
            return required
    return required


def hmm_vma_fault(addr: int, end: int, required_fault: int, walk) -> int:
    """Fault [addr, end) in; -EBUSY asks the caller to rewalk from addr.

    mm/hmm.c hmm_vma_fault: every page from addr to end goes through
    handle_mm_fault with the same flags, whatever its own state or request:
    a present page gets a no-op (or, with FAULT_FLAG_WRITE, a COW) fault and
    a device-private page, the caller's own included, is brought back by its
    migrate_to_ram. From the PTE loop, end is the end of the PMD walk
    (hmm_vma_walk_pmd passes its end to hmm_vma_handle_pte), not the page.
    """
    w = walk.private
    vma = walk.vma
    fault_flags = FAULT_FLAG_REMOTE
    w.last = addr
    if required_fault & HMM_NEED_WRITE_FAULT:
        if not vma.vm_flags & VM_WRITE:
            return -EPERM
        fault_flags |= FAULT_FLAG_WRITE
    while addr < end:
        if handle_mm_fault(vma, addr, fault_flags) & VM_FAULT_ERROR:
            return -EFAULT
        addr += PAGE_SIZE
    return -EBUSY


def hmm_pfns_fill(addr: int, end: int, w: hmm_vma_walk, cpu_flags: int) -> int:
    i = (addr - w.range.start) >> PAGE_SHIFT
    if fast_hmm.hmm_pfns_set(w, i, (end - addr) >> PAGE_SHIFT, None, cpu_flags):
        return 0  # every slot, in bulk
    while addr < end:
        _set(w, i, cpu_flags)
        addr += PAGE_SIZE
        i += 1
    return 0


def hmm_vma_walk_hole(addr: int, end: int, depth: int, walk) -> int:
    w = walk.private
    i = (addr - w.range.start) >> PAGE_SHIFT
    npages = (end - addr) >> PAGE_SHIFT
    required_fault = hmm_range_need_fault(w, i, npages, 0)
    if walk.vma is None:
        if required_fault:
            return -EFAULT
        return hmm_pfns_fill(addr, end, w, w.L.HMM_PFN_ERROR)
    if required_fault:
        return hmm_vma_fault(addr, end, required_fault, walk)
    if w.minfo:
        return hmm_pfns_fill_migrate_hole(addr, end, walk)
    return hmm_pfns_fill(addr, end, w, 0)


def pte_to_hmm_pfn_flags(w: hmm_vma_walk, pte: int) -> int:
    if pte_none(pte) or not pte_present(pte) or pte_protnone(pte):
        return 0
    L = w.L
    return L.HMM_PFN_VALID | L.HMM_PFN_WRITE if pte_write(pte) else L.HMM_PFN_VALID


def pmd_to_hmm_pfn_flags(w: hmm_vma_walk, pmd: int) -> int:
    if pmd_protnone(pmd):
        return 0
    L = w.L
    flags = L.HMM_PFN_VALID | L.HMM_PFN_WRITE if pmd_write(pmd) else L.HMM_PFN_VALID
    return flags | hmm_pfn_flags_order(w, HPAGE_PMD_ORDER)


def _device_private_word(w: hmm_vma_walk, page) -> int:
    """PFN field for an owned device-private page: its PFN, or (c) its offset."""
    from hmmsim.mm.memremap import device_private_page_to_offset, is_dp_index_space_page

    if is_dp_index_space_page(page):
        return _pfn_word(w, device_private_page_to_offset(page)) | w.L.HMM_PFN_DEVICE_PRIVATE
    return _pfn_word(w, page.pfn)


def hmm_vma_handle_pte(walk, addr: int, end: int, pmdp: int, ptep: int, i: int) -> int:
    w = walk.private
    k = walk.mm.k
    swp = k.swp
    L = w.L
    r = w.range
    pte = ptep_get(k, ptep)
    pfn_req_flags = _get(r, i)
    if pte_none(pte) or (
        not pte_present(pte) and swp.softleaf_is_marker(swp.softleaf_from_pte(pte))
    ):
        required_fault = hmm_pte_need_fault(w, pfn_req_flags, 0)
        if required_fault:
            return hmm_vma_fault(addr, end, required_fault, walk)
        _set(w, i, 0)
        return 0
    if not pte_present(pte):
        entry = swp.softleaf_from_pte(pte)
        if swp.softleaf_is_device_private(entry):
            page = k.softleaf_to_page(entry)
            owned = page_pgmap(page).owner is r.dev_private_owner
            if "hmm_foreign_device_private" in k.bugs:
                owned = True  # mutant: before the owner check, every device page was valid
            if owned and r.dev_private_owner is not None:
                cpu_flags = L.HMM_PFN_VALID
                if swp.softleaf_is_device_private_write(entry):
                    cpu_flags |= L.HMM_PFN_WRITE
                _set(w, i, _device_private_word(w, page) | cpu_flags)
                return 0
        required_fault = hmm_pte_need_fault(w, pfn_req_flags, 0)
        if not required_fault:
            _set(w, i, 0)
            return 0
        if (
            swp.softleaf_is_swap(entry)
            or swp.softleaf_is_device_private(entry)
            or (swp.softleaf_is_device_exclusive(entry))
        ):
            return hmm_vma_fault(addr, end, required_fault, walk)
        if swp.softleaf_is_migration(entry):
            w.last = addr
            migration_entry_wait(walk.mm, pmdp, addr)
            return -EBUSY
        return -EFAULT
    cpu_flags = pte_to_hmm_pfn_flags(w, pte)
    required_fault = hmm_pte_need_fault(w, pfn_req_flags, cpu_flags)
    if required_fault:
        return hmm_vma_fault(addr, end, required_fault, walk)
    if vm_normal_page(walk.vma, addr, pte) is None and not is_zero_pfn(k, pte_pfn(pte)):
        if hmm_pte_need_fault(w, pfn_req_flags, 0):
            return -EFAULT
        _set(w, i, L.HMM_PFN_ERROR)
        return 0
    _set(w, i, _pfn_word(w, pte_pfn(pte)) | cpu_flags)
    return 0


def hmm_vma_handle_pmd(walk, addr: int, end: int, i: int, pmd: int) -> int:
    w = walk.private
    npages = (end - addr) >> PAGE_SHIFT
    cpu_flags = pmd_to_hmm_pfn_flags(w, pmd)
    required_fault = hmm_range_need_fault(w, i, npages, cpu_flags)
    if required_fault:
        return hmm_vma_fault(addr, end, required_fault, walk)
    pfn = pmd_pfn(pmd) + ((addr & ~PMD_MASK) >> PAGE_SHIFT)
    if fast_hmm.hmm_pfns_set(w, i, npages, pfn, cpu_flags):
        return 0  # every slot, in bulk
    for j in range(npages):
        _set(w, i + j, _pfn_word(w, pfn + j) | cpu_flags)
    return 0


def hmm_vma_handle_absent_pmd(walk, start: int, end: int, i: int, pmd: int) -> int:
    w = walk.private
    k = walk.mm.k
    swp = k.swp
    L = w.L
    r = w.range
    npages = (end - start) >> PAGE_SHIFT
    entry = swp.softleaf_from_pmd(pmd)
    if swp.softleaf_is_device_private(entry):
        page = k.softleaf_to_page(entry)
        if page_pgmap(page).owner is r.dev_private_owner and r.dev_private_owner is not None:
            cpu_flags = L.HMM_PFN_VALID | hmm_pfn_flags_order(w, HPAGE_PMD_ORDER)
            if swp.softleaf_is_device_private_write(entry):
                cpu_flags |= L.HMM_PFN_WRITE
            base = _device_private_word(w, page) + ((start & ~PMD_MASK) >> PAGE_SHIFT)
            for j in range(npages):
                _set(w, i + j, (base + j) | cpu_flags)
            return 0
    required_fault = hmm_range_need_fault(w, i, npages, 0)
    if required_fault:
        if swp.softleaf_is_device_private(entry):
            return hmm_vma_fault(start, end, required_fault, walk)
        return -EFAULT
    return hmm_pfns_fill(start, end, w, L.HMM_PFN_ERROR)


def hmm_vma_walk_pmd(pmdp: int, start: int, end: int, walk) -> int:
    w = walk.private
    k = walk.mm.k
    swp = k.swp
    i = (start - w.range.start) >> PAGE_SHIFT
    npages = (end - start) >> PAGE_SHIFT
    while True:
        pmd = pmdp_get(k, pmdp)
        if pmd_none(pmd):
            return hmm_vma_walk_hole(start, end, -1, walk)
        if not pmd_present(pmd) and swp.softleaf_is_migration(swp.softleaf_from_pmd(pmd)):
            if hmm_range_need_fault(w, i, npages, 0):
                w.last = start
                pmd_migration_entry_wait(walk.mm, pmdp)
                return -EBUSY
            return hmm_pfns_fill(start, end, w, 0)
        if not pmd_present(pmd) or pmd_trans_huge(pmd):
            if not pmd_present(pmd):
                ret = hmm_vma_handle_absent_pmd(walk, start, end, i, pmd)
            else:
                ret = hmm_vma_handle_pmd(walk, start, end, i, pmd)
            if ret or not w.minfo:
                return ret
            if hmm_vma_handle_migrate_prepare_pmd(walk, pmdp, start, end, i) == -EAGAIN:
                continue  # split (or changed under us): walk this PMD again
            return 0
        ptep = pte_offset_map(k, pmd, start)
        if ptep is None:
            continue
        if w.minfo:
            return hmm_vma_walk_ptes_migrate(walk, start, end, pmdp, ptep, i)
        addr = start
        while addr < end:
            # offer the rest of the table to the fast layer: it fills a leading
            # run of common entries, or declines and this entry goes per entry
            if n := fast_hmm.hmm_vma_handle_ptes(w, ptep, i, (end - addr) >> PAGE_SHIFT):
                addr, ptep, i = addr + n * PAGE_SIZE, ptep + n * 8, i + n
                continue
            ret = hmm_vma_handle_pte(walk, addr, end, pmdp, ptep, i)
            if ret:
                return ret
            addr += PAGE_SIZE
            ptep += 8
            i += 1
        return 0


def hmm_vma_walk_hugetlb_entry(pmdp: int, hmask: int, start: int, end: int, walk) -> int:
    w = walk.private
    k = walk.mm.k
    i = (start - w.range.start) >> PAGE_SHIFT
    entry = pmdp_get(k, pmdp)
    cpu_flags = pte_to_hmm_pfn_flags(w, entry) | hmm_pfn_flags_order(w, HPAGE_PMD_ORDER)
    required_fault = hmm_pte_need_fault(w, _get(w.range, i), cpu_flags)
    if required_fault:
        return hmm_vma_fault(start, end, required_fault, walk)
    pfn = pmd_pfn(entry) + ((start & ~hmask) >> PAGE_SHIFT)
    addr = start
    while addr < end:
        _set(w, i, _pfn_word(w, pfn) | cpu_flags)
        addr += PAGE_SIZE
        i += 1
        pfn += 1
    return 0


def hmm_vma_walk_test(start: int, end: int, walk) -> int:
    w = walk.private
    vma = walk.vma
    if w.minfo:
        ret = hmm_vma_capture_migrate_range(start, end, walk)
        if ret:
            return ret
    if not vma.vm_flags & (VM_IO | VM_PFNMAP) and vma.vm_flags & VM_READ:
        return 0
    i = (start - w.range.start) >> PAGE_SHIFT
    if hmm_range_need_fault(w, i, (end - start) >> PAGE_SHIFT, 0):
        return -EFAULT
    hmm_pfns_fill(start, end, w, w.L.HMM_PFN_ERROR)
    return 1


HMM_WALK_OPS = mm_walk_ops(
    pmd_entry=hmm_vma_walk_pmd,
    pte_hole=hmm_vma_walk_hole,
    hugetlb_entry=hmm_vma_walk_hugetlb_entry,
    test_walk=hmm_vma_walk_test,
)


def hmm_range_fault(range_) -> int:
    """Fill range.hmm_pfns for [start, end), faulting pages in where requested.

    Returns: 0; -EBUSY when the notifier sequence changed (the caller must
    retry from mmu_interval_read_begin); -EFAULT when a requested page cannot
    be made valid (no vma, VM_IO/VM_PFNMAP/!VM_READ, special PFN, poison,
    fault error); -EPERM when a write fault is needed in a vma without
    VM_WRITE; series (e), migrating: -ERANGE when the range crosses vmas.

    Series (e): with range.migrate set and HMM_PFN_REQ_MIGRATE in
    default_flags, the same walk also collects for migration (see
    `hmm_vma_handle_migrate_prepare`); range.notifier may then be None (the
    migrate_vma_setup path: mm from migrate.vma, no sequence check).
    """
    if range_.notifier is None and range_.migrate is not None:
        mm = range_.migrate.vma.vm_mm
    else:
        mm = range_.notifier.mm
    k = mm.k
    if not mm.mmap_lock.is_locked():
        raise KernelBug("hmm_range_fault: mmap_lock not held")
    w = hmm_vma_walk(range_, k.hmm, k)
    w.minfo = hmm_want_migrate(range_, k)
    m = range_.migrate
    if w.minfo and m.fault_page is not None:
        from hmmsim.include.mm_types import page_folio

        w.fault_folio = page_folio(m.fault_page)
    while True:
        if range_.notifier is not None and mmu_interval_check_retry(
            range_.notifier, range_.notifier_seq
        ):
            ret = -EBUSY
            break
        ret = walk_page_range(mm, w.last, range_.end, HMM_WALK_OPS, w)
        if ret != -EBUSY:
            break
        k.stats["hmm_range_fault_rewalks"] += 1
        # a kernel busy-retry: the walk goes again at once, without sleeping
        k.sched.point("retry", f"hmm_range_fault rewalk at {w.last:#x}")
    if w.mmu_range is not None:
        from hmmsim.mm.mmu_notifier import mmu_notifier_invalidate_range_end

        if range_.notifier is not None:
            m.vma, m.start, m.end = w.vma, range_.start, w.end
        mmu_notifier_invalidate_range_end(w.mmu_range, w.mmu_hit)
    if ret == 0:
        for check in k.word_checks:
            check(k, "hmm", range_.hmm_pfns)
    return ret


# ----------------------------------------------------------------------------------------
# Series (e): "mm: unified hmm fault and migrate device pagewalk paths" (Penttilä).
# One walk faults (HMM_PFN_REQ_FAULT) and collects (HMM_PFN_REQ_MIGRATE) entry by
# entry; docs/unified-walk.md describes the versions and what the model follows.


def hmm_want_migrate(range_, k) -> int:
    """mm/hmm.c hmm_want_migrate (series (e)): the SELECT flags to collect for.

    The later postings (v5): the caller of hmm_range_fault fills
    range.migrate's pgmap_owner, src, dst and flags, and asks with
    HMM_PFN_REQ_MIGRATE in default_flags; the flags are migrate.flags. (The
    RFC also added MIGRATE_VMA_SELECT_SYSTEM for HMM_PFN_REQ_MIGRATE.) 0 when
    the series is off or nothing is asked.
    """
    m = range_.migrate
    if m is None or not k.config.has("e"):
        return 0
    if not range_.default_flags & k.hmm.HMM_PFN_REQ_MIGRATE:
        return 0
    return int(m.flags or 0)


def hmm_vma_capture_migrate_range(start: int, end: int, walk) -> int:
    """mm/hmm.c hmm_vma_capture_migrate_range (series (e)), from test_walk.

    The migration is of one vma: a second vma is -ERANGE. The first call
    starts the MMU_NOTIFY_MIGRATE invalidation of [start, end) with the
    range's dev_private_owner as owner (so the caller's own interval
    notifier can tell it from a real invalidation); hmm_range_fault ends it
    after the last walk, so every collect of the walk, on every rewalk, is
    inside one notifier bracket, as migrate_vma_collect's is.
    """
    from hmmsim.errno import ERANGE
    from hmmsim.include.mmu_notifier import (
        MMU_NOTIFIER_RANGE_BLOCKABLE,
        MMU_NOTIFY_MIGRATE,
        mmu_notifier_range,
    )
    from hmmsim.mm.mmu_notifier import mmu_notifier_invalidate_range_start

    w = walk.private
    r = w.range
    if w.vma is not None and w.vma is not walk.vma:
        return -ERANGE
    w.vma = walk.vma
    w.end = end
    if end - start > r.end - r.start:
        return -ERANGE
    if w.mmu_range is None:
        w.mmu_range = mmu_notifier_range(
            mm=walk.mm,
            start=start,
            end=end,
            flags=MMU_NOTIFIER_RANGE_BLOCKABLE,
            event=MMU_NOTIFY_MIGRATE,
            owner=r.dev_private_owner,
        )
        w.mmu_hit = mmu_notifier_invalidate_range_start(w.mmu_range)
    return 0


def _empty_word(w: hmm_vma_walk, k) -> int:
    """An empty slot to migrate (hole, pte_none, zero page): HMM_PFN_MIGRATE alone.

    The RFC encoded it VALID | MIGRATE with PFN 0 (mutant hmm_zero_pfn0).
    """
    word = w.L.HMM_PFN_MIGRATE
    if "hmm_zero_pfn0" in k.bugs:
        word |= w.L.HMM_PFN_VALID  # mutant (9.4): the RFC's "VALID | MIGRATE, pfn 0"
    return word


def _compound_ok(w: hmm_vma_walk, k, start: int, end: int) -> bool:
    from hmmsim.include.migrate import MIGRATE_VMA_SELECT_COMPOUND
    from hmmsim.kconfig import PMD_SIZE

    return (
        bool(w.minfo & MIGRATE_VMA_SELECT_COMPOUND)
        and k.config.has("d")
        and start % PMD_SIZE == 0
        and end % PMD_SIZE == 0
    )


def hmm_pfns_fill_migrate_hole(addr: int, end: int, walk) -> int:
    """A hole (no table, pmd_none, huge zero PMD) when migrating (series (e)).

    In an anonymous vma every slot is an empty page to migrate (MIGRATE
    without VALID); a PMD-aligned hole with MIGRATE_VMA_SELECT_COMPOUND is
    one compound slot at its first page (MIGRATE | COMPOUND | order 9) and
    the rest 0, as migrate_vma_collect_hole does (a hole over several PMDs
    is still one slot: known-bugs 9). Elsewhere the slots are 0.
    """
    w = walk.private
    k = walk.mm.k
    L = w.L
    if walk.vma is None or not _vma_is_anonymous(walk.vma):
        return hmm_pfns_fill(addr, end, w, 0)
    empty = _empty_word(w, k)
    if _compound_ok(w, k, addr, end):
        hmm_pfns_fill(addr, end, w, 0)
        i = (addr - w.range.start) >> PAGE_SHIFT
        _set(w, i, empty | L.HMM_PFN_COMPOUND | hmm_pfn_flags_order(w, HPAGE_PMD_ORDER))
        return 0
    return hmm_pfns_fill(addr, end, w, empty)


def _vma_is_anonymous(vma) -> bool:
    from hmmsim.include.mm_types import vma_is_anonymous

    return vma_is_anonymous(vma)


def hmm_vma_walk_ptes_migrate(walk, start: int, end: int, pmdp: int, ptep: int, i: int) -> int:
    """The PTE loop of hmm_vma_walk_pmd when migrating (series (e)).

    Per entry, in one pass: hmm_vma_handle_pte (output word, or a fault and
    -EBUSY to rewalk from there), then hmm_vma_handle_migrate_prepare under
    the PTE lock. A large folio split by prepare is looked at again (the
    collect's "again"); a failed split stops collecting for the rest of the
    PMD range (migrate_vma_collect_skip) while the HMM output goes on. No
    bulk form: the fast paths never see a migrating walk.
    """
    addr = start
    collect = True
    while addr < end:
        ret = hmm_vma_handle_pte(walk, addr, end, pmdp, ptep, i)
        if ret:
            return ret
        if collect:
            ret = hmm_vma_handle_migrate_prepare(walk, pmdp, ptep, addr, i)
            if ret == -EAGAIN:
                continue
            if ret:
                collect = False
        addr += PAGE_SIZE
        ptep += 8
        i += 1
    return 0


def hmm_vma_handle_migrate_prepare(walk, pmdp: int, ptep: int, addr: int, i: int) -> int:
    """mm/hmm.c hmm_vma_handle_migrate_prepare (series (e)): collect one PTE.

    Under the PTE lock, re-reads the entry hmm_vma_handle_pte just reported
    and does what migrate_vma_collect_pmd does for it: pte_none in an anon
    vma and the zero page (SELECT_SYSTEM) become an empty slot (MIGRATE
    alone); a page the walk reported VALID (present, or device-private of
    the range's owner) of a selected kind (SELECT_SYSTEM, _DEVICE_PRIVATE,
    _DEVICE_COHERENT with a matching pgmap owner), anonymous and order 0, is
    locked and replaced by a migration entry (migrate_vma_collect_install)
    and its word gains HMM_PFN_MIGRATE. A page of a large folio is split
    first (migrate_vma_split_folio; the fault folio stays locked) and
    -EAGAIN asks the loop to look again; a failed split is -ENOENT (stop
    collecting this PMD range). Anything else stays as reported, not
    collected. With series (d) off a large folio is not collected (the code
    before (d)).
    """
    from hmmsim.include.migrate import (
        MIGRATE_PFN_WRITE,
        MIGRATE_VMA_SELECT_DEVICE_COHERENT,
        MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
        MIGRATE_VMA_SELECT_SYSTEM,
    )
    from hmmsim.include.mm_types import folio_test_large, page_folio
    from hmmsim.mm.memremap import folio_is_device_coherent, folio_is_zone_device
    from hmmsim.mm.migrate_device import migrate_vma_collect_install, migrate_vma_split_folio
    from hmmsim.mm.pgtable import pte_lockptr

    w = walk.private
    r = w.range
    m = r.migrate
    k = walk.mm.k
    swp = k.swp
    L = w.L
    vma = walk.vma
    minfo = w.minfo
    ptl = pte_lockptr(walk.mm, ptep)
    ptl.lock()
    try:
        pte = ptep_get(k, ptep)
        word = _get(r, i)
        if pte_none(pte):
            if _vma_is_anonymous(vma):
                _set(w, i, _empty_word(w, k))
            return 0
        if not word & L.HMM_PFN_VALID:
            return 0
        if not pte_present(pte):
            entry = swp.softleaf_from_pte(pte)
            if not swp.softleaf_is_device_private(entry):
                return 0
            if not minfo & MIGRATE_VMA_SELECT_DEVICE_PRIVATE:
                return 0
            page = k.softleaf_to_page(entry)
            writable = swp.softleaf_is_device_private_write(entry)
        else:
            pfn = pte_pfn(pte)
            if is_zero_pfn(k, pfn):
                if minfo & MIGRATE_VMA_SELECT_SYSTEM:
                    _set(w, i, _empty_word(w, k))
                return 0
            page = vm_normal_page(vma, addr, pte)
            if page is None:
                return 0
            if not folio_is_zone_device(page):
                if not minfo & MIGRATE_VMA_SELECT_SYSTEM:
                    return 0
            elif folio_is_device_coherent(page):
                if (
                    not minfo & MIGRATE_VMA_SELECT_DEVICE_COHERENT
                    or page_pgmap(page).owner is not m.pgmap_owner
                ):
                    return 0
            writable = pte_write(pte)
        folio = page_folio(page)
        if not int(folio.a.mapping[folio.i]):
            return 0
        if folio_test_large(folio):
            if not k.config.has("d") or "collect_skips_large_folio" in k.bugs:
                # before (d): "FIXME support THP", not collected; the mutant
                # does the same at the pin instead of splitting
                return 0
            ptl.unlock()
            try:
                split = migrate_vma_split_folio(folio, m.fault_page)
            finally:
                ptl.lock()
            return -ENOENT if split else -EAGAIN
        mpfn = MIGRATE_PFN_WRITE if writable else 0
        if migrate_vma_collect_install(vma, addr, ptep, page, mpfn, w.fault_folio):
            r.hmm_pfns[i] = word | L.HMM_PFN_MIGRATE
        return 0
    finally:
        ptl.unlock()


def hmm_vma_handle_migrate_prepare_pmd(walk, pmdp: int, start: int, end: int, i: int) -> int:
    """Collect a huge PMD the walk just reported (series (e)).

    Under the PMD lock, as migrate_vma_collect_huge_pmd: a THP (with
    SELECT_SYSTEM) or an owned device-private PMD (with
    SELECT_DEVICE_PRIVATE) whose word is VALID is locked; if the range
    covers the whole PMD and SELECT_COMPOUND is on, a PMD migration entry
    replaces it and the first word gains MIGRATE | COMPOUND (the other 511
    keep their VALID words without MIGRATE: migrate_hmm_range_setup gives
    them src 0). Otherwise the folio is split (a PMD only partly covered:
    the split during collect) and -EAGAIN asks the caller to walk the PMD
    again, now by PTEs. The huge zero PMD is a hole. Returns 0 or -EAGAIN.
    With series (d) off: the code before (d) (every THP split, the zero PMD
    split into zero PTEs).
    """
    from hmmsim.include.migrate import (
        MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
        MIGRATE_VMA_SELECT_SYSTEM,
    )
    from hmmsim.include.mm_types import folio_get, folio_put, page_folio
    from hmmsim.include.pgtable import pmd_pfn
    from hmmsim.locking import folio_trylock, folio_unlock
    from hmmsim.mm import huge_memory
    from hmmsim.mm.pgtable import pmd_lockptr

    w = walk.private
    r = w.range
    k = walk.mm.k
    swp = k.swp
    L = w.L
    minfo = w.minfo
    ptl = pmd_lockptr(walk.mm, pmdp)
    ptl.lock()
    pmd = pmdp_get(k, pmdp)
    if pmd_trans_huge(pmd) and pmd_present(pmd):
        if not minfo & MIGRATE_VMA_SELECT_SYSTEM:
            ptl.unlock()
            return 0
        if huge_memory.is_huge_zero_pmd(k, pmd):
            ptl.unlock()
            if not k.config.has("d"):
                huge_memory.__split_huge_pmd(walk.vma, pmdp, start)
                return -EAGAIN
            return hmm_pfns_fill_migrate_hole(start, end, walk)
        folio = page_folio(k.mem.pfn_to_page(pmd_pfn(pmd)))
    elif not pmd_present(pmd) and not pmd_none(pmd):
        entry = swp.softleaf_from_pmd(pmd)
        if not swp.softleaf_is_device_private(entry) or not minfo & (
            MIGRATE_VMA_SELECT_DEVICE_PRIVATE
        ):
            ptl.unlock()
            return 0
        folio = page_folio(k.softleaf_to_page(entry))
    else:
        ptl.unlock()
        return -EAGAIN  # changed under us: walk it again
    if not _get(r, i) & L.HMM_PFN_VALID:
        ptl.unlock()
        return 0
    folio_get(folio)
    if folio != w.fault_folio and not folio_trylock(folio):
        ptl.unlock()
        folio_put(folio)
        return 0
    if _compound_ok(w, k, start, end):
        if huge_memory.set_pmd_migration_entry(walk.vma, pmdp, start, folio) == 0:
            ptl.unlock()
            r.hmm_pfns[i] = _get(r, i) | L.HMM_PFN_MIGRATE | L.HMM_PFN_COMPOUND
            return 0
    ptl.unlock()
    ret = huge_memory.split_folio(folio)
    if folio != w.fault_folio:
        folio_unlock(folio)
    folio_put(folio)
    return 0 if ret else -EAGAIN

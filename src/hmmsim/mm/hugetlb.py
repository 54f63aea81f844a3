"""HugeTLB: a boot-time pool of 2 MiB pages for MAP_HUGETLB mappings.

Models: mm/hugetlb.c (the free pool, hugetlb_reserve_pages,
hugetlb_fault/hugetlb_no_page/hugetlb_wp, copy_hugetlb_page_range,
__unmap_hugepage_range, hugetlb_change_protection, free_huge_folio) @
torvalds/linux 0eaed89c18ae.

Only the default huge page size (2 MiB on x86-64, PMD level) is modelled.
Reservations are counted per mapping at mmap time like the kernel's
resv_huge_pages, so mmap fails with -ENOMEM when the pool cannot back it.
Differences from kernel: no surplus pages, no hugetlbfs files (shared
MAP_HUGETLB mappings keep their pages in a private per-mapping cache), no
PMD sharing.
"""

from __future__ import annotations

from hmmsim.errno import ENOMEM
from hmmsim.include.mm import (
    FAULT_FLAG_WRITE,
    VM_FAULT_OOM,
    VM_FAULT_SIGBUS,
    VM_SHARED,
    VM_WRITE,
)
from hmmsim.include.mm_types import (
    ClearPageAnonExclusive,
    PageAnonExclusive,
    PG_head,
    PG_hugetlb,
    SetPageAnonExclusive,
    folio_get,
    folio_put,
    folio_ref_count,
    is_cow_mapping,
)
from hmmsim.include.mmu_notifier import MMU_NOTIFY_CLEAR
from hmmsim.include.pgtable import (
    pfn_pmd,
    pmd_mkdirty,
    pmd_mkhuge,
    pmd_mkwrite_novma,
    pmd_mkyoung,
    pmd_modify,
    pmd_none,
    pmd_pfn,
    pmd_write,
    pmd_wrprotect,
)
from hmmsim.kconfig import HPAGE_PMD_ORDER, PMD_MASK, PMD_SIZE
from hmmsim.mm.mmu_notifier import notify_range
from hmmsim.mm.pgtable import pmd_lockptr, pmd_offset, pmdp_get, set_pmd_at
from hmmsim.mm.rmap import anon_vma_prepare

HUGETLB_PAGE_ORDER = HPAGE_PMD_ORDER


class hugetlbfs_inode:
    """The unnamed hugetlbfs file behind a MAP_SHARED|MAP_HUGETLB mapping."""

    is_shmem = False

    def __init__(self, k) -> None:
        self.k = k
        self.i_mmap: set = set()
        self.i_count = 0
        self.nlink = 0
        self.name = "anon_hugepage (deleted)"

    def __repr__(self) -> str:
        return f"<hugetlbfs {self.name}>"

    def evict(self) -> None:
        self.k.hugetlb.release_shared(id(self))


def hugetlb_file_setup(k) -> hugetlbfs_inode:
    return hugetlbfs_inode(k)


class hstate:
    """The 2 MiB hstate: its pool of free huge folios and reservations.

    Invariant: 0 <= resv_huge_pages <= free_huge_pages <= nr_huge_pages.
    """

    def __init__(self, k, nr: int) -> None:
        self.k = k
        self.order = HUGETLB_PAGE_ORDER
        self.free: list[int] = []
        self.nr_huge_pages = 0
        self.resv_huge_pages = 0
        for _ in range(nr):
            from hmmsim.mm.page_alloc import GFP_HIGHUSER_MOVABLE  # htlb_alloc_mask

            folio = k.mem.alloc_pages(self.order, GFP_HIGHUSER_MOVABLE)
            if folio is None:
                break
            folio.set(PG_hugetlb)
            folio.a._refcount[folio.i] = 0
            self.free.append(folio.pfn)
            self.nr_huge_pages += 1
        #: per-vma outstanding reservations, and shared-mapping page caches
        self.vma_resv: dict = {}
        self.shared_cache: dict = {}

    @property
    def free_huge_pages(self) -> int:
        return len(self.free)

    def __repr__(self) -> str:
        return (
            f"<hstate 2MiB total={self.nr_huge_pages} free={self.free_huge_pages} "
            f"resv={self.resv_huge_pages}>"
        )

    # --- pool ---------------------------------------------------------------------------------
    def hugetlb_reserve_pages(self, vma, nr: int) -> int:
        if self.free_huge_pages - self.resv_huge_pages < nr:
            return -ENOMEM
        self.resv_huge_pages += nr
        self.vma_resv[vma] = self.vma_resv.get(vma, 0) + nr
        return 0

    def hugetlb_vm_op_close(self, vma) -> None:
        """Give back a vma's reservations that were never faulted in."""
        left = self.vma_resv.pop(vma, 0)
        self.resv_huge_pages -= left

    def split_resv(self, old, new, nr_new: int) -> None:
        """A hugetlb vma was split: move reservations for the new part."""
        have = self.vma_resv.get(old, 0)
        moved = min(have, nr_new)
        self.vma_resv[old] = have - moved
        self.vma_resv[new] = self.vma_resv.get(new, 0) + moved

    def alloc_hugetlb_folio(self, vma):
        if self.vma_resv.get(vma, 0) > 0:
            self.vma_resv[vma] -= 1
            self.resv_huge_pages -= 1
        elif self.free_huge_pages - self.resv_huge_pages <= 0:
            return None
        pfn = self.free.pop()
        folio = self.k.mem.pfn_to_page(pfn)
        folio.a._refcount[folio.i] = 1
        self.k.mem.ram.frames[pfn : pfn + (1 << self.order)] = 0
        return folio

    def free_huge_folio(self, folio) -> None:
        a, i = folio.a, folio.i
        a.flags[i] = PG_head | PG_hugetlb
        a.mapping[i] = 0
        a._entire_mapcount[i] = -1
        a._large_mapcount[i] = -1
        self.free.append(folio.pfn)

    # --- faults ---------------------------------------------------------------------------------
    def hugetlb_fault(self, mm, vma, address: int, flags: int) -> int:
        k = self.k
        haddr = address & PMD_MASK
        pmdp = pmd_offset(mm, haddr, alloc=True)
        if pmdp is None:
            return VM_FAULT_OOM
        with pmd_lockptr(mm, pmdp):
            entry = pmdp_get(k, pmdp)
            if pmd_none(entry):
                return self.hugetlb_no_page(mm, vma, haddr, pmdp, flags)
            if flags & FAULT_FLAG_WRITE and not pmd_write(entry):
                return self.hugetlb_wp(mm, vma, haddr, pmdp, entry)
            entry = pmd_mkyoung(entry)
            if flags & FAULT_FLAG_WRITE:
                entry = pmd_mkdirty(entry)
            set_pmd_at(mm, haddr, pmdp, entry)
        return 0

    def _make_huge_pte(self, vma, folio, writable: bool) -> int:
        entry = pmd_mkhuge(pfn_pmd(folio.pfn, vma.vm_page_prot))
        if writable:
            entry = pmd_mkwrite_novma(pmd_mkdirty(entry))
        else:
            entry = pmd_wrprotect(entry)
        return pmd_mkyoung(entry)

    def hugetlb_no_page(self, mm, vma, haddr: int, pmdp: int, flags: int) -> int:
        shared = bool(vma.vm_flags & VM_SHARED)
        key = (id(vma.vm_file), (haddr - vma.vm_start) // PMD_SIZE + vma.vm_pgoff)
        folio = None
        if shared and key in self.shared_cache:
            folio = self.k.mem.pfn_to_page(self.shared_cache[key])
            folio_get(folio)
        if folio is None:
            folio = self.alloc_hugetlb_folio(vma)
            if folio is None:
                return VM_FAULT_OOM
            if shared:
                folio_get(folio)  # the cache's reference
                self.shared_cache[key] = folio.pfn
            else:
                av = anon_vma_prepare(vma)
                folio.a.mapping[folio.i] = av.id | 1
                folio.a.index[folio.i] = haddr >> 12
                SetPageAnonExclusive(folio)
        folio.a._entire_mapcount[folio.i] += 1
        folio.a._large_mapcount[folio.i] += 1
        writable = bool(vma.vm_flags & VM_WRITE) and (shared or bool(flags & FAULT_FLAG_WRITE))
        set_pmd_at(mm, haddr, pmdp, self._make_huge_pte(vma, folio, writable))
        mm.hugetlb_usage += 1
        return 0

    def hugetlb_wp(self, mm, vma, haddr: int, pmdp: int, entry: int) -> int:
        old = self.k.mem.pfn_to_page(pmd_pfn(entry))
        if vma.vm_flags & VM_SHARED:
            set_pmd_at(mm, haddr, pmdp, pmd_mkwrite_novma(pmd_mkdirty(entry)))
            return 0
        if PageAnonExclusive(old) or folio_ref_count(old) == 1:
            SetPageAnonExclusive(old)
            set_pmd_at(mm, haddr, pmdp, pmd_mkwrite_novma(pmd_mkdirty(entry)))
            return 0
        new = self.alloc_hugetlb_folio(vma)
        if new is None:
            return VM_FAULT_SIGBUS
        n = 1 << self.order
        self.k.mem.ram.frames[new.pfn : new.pfn + n] = self.k.mem.ram.frames[old.pfn : old.pfn + n]
        av = anon_vma_prepare(vma)
        new.a.mapping[new.i] = av.id | 1
        new.a.index[new.i] = haddr >> 12
        SetPageAnonExclusive(new)
        new.a._entire_mapcount[new.i] = 0
        new.a._large_mapcount[new.i] = 0
        set_pmd_at(mm, haddr, pmdp, self._make_huge_pte(vma, new, True))
        old.a._entire_mapcount[old.i] -= 1
        old.a._large_mapcount[old.i] -= 1
        folio_put(old)
        return 0

    # --- fork / unmap / mprotect -------------------------------------------------------------
    def copy_hugetlb_page_range(self, dst_vma, src_vma) -> int:
        k = self.k
        cow = is_cow_mapping(src_vma.vm_flags)
        for addr in range(src_vma.vm_start, src_vma.vm_end, PMD_SIZE):
            src = pmd_offset(src_vma.vm_mm, addr)
            if src is None or pmd_none(pmdp_get(k, src)):
                continue
            dst = pmd_offset(dst_vma.vm_mm, addr, alloc=True)
            if dst is None:
                return -ENOMEM
            entry = pmdp_get(k, src)
            folio = k.mem.pfn_to_page(pmd_pfn(entry))
            folio_get(folio)
            folio.a._entire_mapcount[folio.i] += 1
            folio.a._large_mapcount[folio.i] += 1
            if cow:
                ClearPageAnonExclusive(folio)
                entry = pmd_wrprotect(entry)
                set_pmd_at(src_vma.vm_mm, addr, src, entry)
            set_pmd_at(dst_vma.vm_mm, addr, dst, entry)
        return 0

    def unmap_hugepage_range(self, vma, start: int, end: int) -> None:
        k = self.k
        mm = vma.vm_mm
        for addr in range(start & PMD_MASK, end, PMD_SIZE):
            pmdp = pmd_offset(mm, addr)
            if pmdp is None:
                continue
            entry = pmdp_get(k, pmdp)
            if pmd_none(entry):
                continue
            set_pmd_at(mm, addr, pmdp, 0)
            folio = k.mem.pfn_to_page(pmd_pfn(entry))
            folio.a._entire_mapcount[folio.i] -= 1
            folio.a._large_mapcount[folio.i] -= 1
            mm.hugetlb_usage -= 1
            folio_put(folio)

    def hugetlb_change_protection(self, vma, start: int, end: int, newprot: int) -> None:
        k = self.k
        mm = vma.vm_mm
        with notify_range(mm, MMU_NOTIFY_CLEAR, start, end):
            for addr in range(start, end, PMD_SIZE):
                pmdp = pmd_offset(mm, addr)
                if pmdp is None or pmd_none(pmdp_get(k, pmdp)):
                    continue
                entry = pmd_modify(pmdp_get(k, pmdp), newprot)
                set_pmd_at(mm, addr, pmdp, entry)

    def release_shared(self, inode_key: int) -> None:
        for key in [key for key in self.shared_cache if key[0] == inode_key]:
            folio_put(self.k.mem.pfn_to_page(self.shared_cache.pop(key)))

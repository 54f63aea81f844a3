"""The CPU fault path, zapping and fork's page-table copy.

Models: mm/memory.c (handle_mm_fault, __handle_mm_fault, handle_pte_fault,
do_anonymous_page, do_fault/do_read_fault/do_cow_fault/do_shared_fault,
should_fault_around/do_fault_around, __do_fault, finish_fault, set_pte_range,
pmd_install, do_wp_page, wp_page_copy, wp_page_reuse,
wp_can_reuse_anon_folio, do_swap_page's non-swap branches, vm_normal_page,
zap_pte_range/zap_pmd_range/unmap_page_range, copy_page_range,
copy_present_pte/copy_present_page/copy_nonpresent_pte) and
arch/x86/mm/fault.c (access_error) @ torvalds/linux 0eaed89c18ae.

Simplified: the mmap_lock is always held for read around a fault (no
per-VMA locks, so no VM_FAULT_RETRY from the VMA-lock path); no swap device,
so real swap entries never exist; no NUMA hinting faults; no mTHP orders
other than PMD. TLB flushes are immediate and implicit.

The PTE loops of zap_pte_range and copy_pte_range offer their table to
hmmsim/fast/memory.py in one line (`fast_mem.*`), which handles it in bulk
or declines (docs/design.md, "The reference code and the fast layer");
skipping those lines leaves the kernel's loops. The first-touch fault of a
whole store is offered by Process.store (userspace.py).
"""

from __future__ import annotations

from hmmsim.bug import KernelBug
from hmmsim.errno import EAGAIN, EBUSY, EFAULT, ENOMEM
from hmmsim.fast import memory as fast_mem
from hmmsim.include.mm import (
    FAULT_FLAG_WRITE,
    VM_EXEC,
    VM_FAULT_ERROR,
    VM_FAULT_FALLBACK,
    VM_FAULT_HWPOISON,
    VM_FAULT_LOCKED,
    VM_FAULT_NOPAGE,
    VM_FAULT_OOM,
    VM_FAULT_RETRY,
    VM_FAULT_SIGBUS,
    VM_FAULT_SIGSEGV,
    VM_HUGETLB,
    VM_MAYSHARE,
    VM_MIXEDMAP,
    VM_PFNMAP,
    VM_READ,
    VM_SHARED,
    VM_WRITE,
)
from hmmsim.include.mm_types import (
    MM_ANONPAGES,
    MM_FILEPAGES,
    MM_SHMEMPAGES,
    Page,
    PageAnonExclusive,
    SetPageAnonExclusive,
    folio_get,
    folio_mapcount,
    folio_mark_dirty,
    folio_put,
    folio_ref_count,
    folio_test_anon,
    folio_test_large,
    is_cow_mapping,
    page_folio,
    vm_fault,
    vma_is_anonymous,
)
from hmmsim.include.mmu_notifier import MMU_NOTIFY_CLEAR, MMU_NOTIFY_PROTECTION_PAGE
from hmmsim.include.pgtable import (
    mk_table_entry,
    pfn_pte,
    pmd_leaf,
    pmd_none,
    pmd_present,
    pmd_trans_huge,
    pmd_write,
    pte_dirty,
    pte_index,
    pte_mkclean,
    pte_mkdirty,
    pte_mkold,
    pte_mkspecial,
    pte_mkwrite_novma,
    pte_mkyoung,
    pte_none,
    pte_pfn,
    pte_present,
    pte_special,
    pte_swp_clear_uffd_wp,
    pte_swp_mksoft_dirty,
    pte_swp_mkuffd_wp,
    pte_swp_soft_dirty,
    pte_swp_uffd_wp,
    pte_uffd_wp,
    pte_write,
    pte_wrprotect,
)
from hmmsim.kconfig import PAGE_SHIFT, PAGE_SIZE, PMD_MASK, PMD_SIZE
from hmmsim.locking import folio_trylock, folio_unlock, trylock_page, unlock_page
from hmmsim.mm import huge_memory
from hmmsim.mm.migrate import migration_entry_wait, softleaf_entry_wait_on_locked
from hmmsim.mm.mmu_notifier import notify_range
from hmmsim.mm.page_alloc import __GFP_ZERO, GFP_HIGHUSER_MOVABLE
from hmmsim.mm.pgtable import (
    alloc_table,
    free_table,
    pmd_offset,
    pmdp_get,
    pte_alloc,
    pte_lockptr,
    pte_offset_map,
    ptep_get,
    ptep_get_and_clear,
    set_pte_at,
)
from hmmsim.mm.rmap import (
    RMAP_EXCLUSIVE,
    anon_vma_prepare,
    folio_add_file_rmap_pte,
    folio_add_file_rmap_ptes,
    folio_add_new_anon_rmap,
    folio_move_anon_rmap,
    folio_remove_rmap_pte,
    folio_try_dup_anon_rmap_pte,
)

# ----------------------------------------------------------------------------------------
# helpers


def mk_pte(page: Page, prot: int) -> int:
    return pfn_pte(page.pfn, prot)


def maybe_mkwrite(pte: int, vma) -> int:
    return pte_mkwrite_novma(pte) if vma.vm_flags & VM_WRITE else pte


def is_zero_pfn(k, pfn: int) -> bool:
    return pfn == k.mem.zero_pfn


def vm_normal_page(vma, addr: int, pte: int) -> Page | None:
    """The struct page a present PTE maps, None for special/zero mappings."""
    if pte_special(pte):
        return None
    k = vma.vm_mm.k
    pfn = pte_pfn(pte)
    if is_zero_pfn(k, pfn):
        return None
    # x86-64 has pte_special: PFN maps (remap_pfn_range) are always special, so
    # any other PTE, VM_MIXEDMAP ones included, maps a normal page.
    return k.mem.pfn_to_page(pfn)


def mm_counter_file(folio: Page) -> int:
    from hmmsim.mm.rmap import folio_mapping

    mapping = folio_mapping(folio)
    return MM_SHMEMPAGES if getattr(mapping, "is_shmem", False) else MM_FILEPAGES


def mm_counter(folio: Page) -> int:
    return MM_ANONPAGES if folio_test_anon(folio) else mm_counter_file(folio)


def softleaf_to_page(k, entry: int) -> Page:
    """The struct page a PFN-carrying softleaf entry names."""
    return k.softleaf_to_page(entry)


# ----------------------------------------------------------------------------------------
# the fault path


def access_error(flags: int, vma) -> bool:
    """arch/x86/mm/fault.c: is this access forbidden by the vma's flags?"""
    if flags & FAULT_FLAG_WRITE:
        return not vma.vm_flags & VM_WRITE
    return not vma.vm_flags & (VM_READ | VM_WRITE | VM_EXEC)


def handle_mm_fault(vma, address: int, flags: int) -> int:
    """Resolve one fault at address in vma; returns a vm_fault_t.

    Context: mmap_lock held for read.
    Returns: 0 on success (the access can be retried), or VM_FAULT_* bits:
    VM_FAULT_OOM, VM_FAULT_SIGBUS, VM_FAULT_SIGSEGV, VM_FAULT_HWPOISON,
    VM_FAULT_RETRY.
    """
    mm = vma.vm_mm
    k = mm.k
    if not mm.mmap_lock.is_locked():
        raise KernelBug("handle_mm_fault: mmap_lock not held")
    k.sched.point("fault", (mm, address))
    k.stats["faults"] += 1
    if vma.vm_flags & VM_HUGETLB:
        return k.hugetlb.hugetlb_fault(mm, vma, address, flags)
    return __handle_mm_fault(vma, address, flags)


def __handle_mm_fault(vma, address: int, flags: int) -> int:
    mm = vma.vm_mm
    k = mm.k
    vmf = vm_fault(vma, address, flags)
    pmdp = pmd_offset(mm, address, alloc=True)
    if pmdp is None:
        return VM_FAULT_OOM
    vmf.pmd = pmdp
    orig_pmd = pmdp_get(k, pmdp)
    if pmd_none(orig_pmd) and huge_memory.thp_vma_allowable_order(vma, address):
        ret = huge_memory.create_huge_pmd(vmf)
        if not ret & VM_FAULT_FALLBACK:
            return ret
    elif not pmd_none(orig_pmd):
        vmf.orig_pmd = orig_pmd
        if not pmd_present(orig_pmd):
            return huge_memory.do_huge_pmd_nonpresent(vmf)
        if pmd_trans_huge(orig_pmd):
            if flags & FAULT_FLAG_WRITE and not pmd_write(orig_pmd):
                ret = huge_memory.do_huge_pmd_wp_page(vmf)
                if not ret & VM_FAULT_FALLBACK:
                    return ret
            else:
                huge_memory.huge_pmd_set_accessed(vmf)
                return 0
    return handle_pte_fault(vmf)


def handle_pte_fault(vmf: vm_fault) -> int:
    mm = vmf.vma.vm_mm
    k = mm.k
    pmdval = pmdp_get(k, vmf.pmd)
    if pmd_leaf(pmdval):
        return 0  # raced with a huge mapping appearing: retry
    ptep = pte_offset_map(k, pmdval, vmf.address)
    vmf.pte = ptep
    vmf.orig_pte = ptep_get(k, ptep) if ptep is not None else 0
    if ptep is None or pte_none(vmf.orig_pte):
        vmf.pte = None
        if vma_is_anonymous(vmf.vma):
            return do_anonymous_page(vmf)
        return do_fault(vmf)
    if not pte_present(vmf.orig_pte):
        return do_swap_page(vmf)
    ptl = pte_lockptr(mm, ptep)
    ptl.lock()
    vmf.ptl = ptl
    entry = ptep_get(k, ptep)
    if entry != vmf.orig_pte:
        ptl.unlock()
        return 0
    if vmf.flags & FAULT_FLAG_WRITE:
        if not pte_write(entry):
            return do_wp_page(vmf)
        entry = pte_mkdirty(entry)
    set_pte_at(mm, vmf.address, ptep, pte_mkyoung(entry))
    ptl.unlock()
    return 0


def do_anonymous_page(vmf: vm_fault) -> int:
    """First touch of an anonymous page: zero page for reads, new page for writes."""
    vma = vmf.vma
    mm = vma.vm_mm
    k = mm.k
    if vma.vm_flags & VM_SHARED:
        return VM_FAULT_SIGBUS
    if not pte_alloc(mm, vmf.pmd):
        return VM_FAULT_OOM
    ptep = pte_offset_map(k, pmdp_get(k, vmf.pmd), vmf.address)
    if not vmf.flags & FAULT_FLAG_WRITE:
        entry = pte_mkspecial(pfn_pte(k.mem.zero_pfn, vma.vm_page_prot))
        with pte_lockptr(mm, ptep):
            if pte_none(ptep_get(k, ptep)):
                set_pte_at(mm, vmf.address, ptep, entry)
        return 0
    anon_vma_prepare(vma)
    # vma_alloc_zeroed_movable_folio: GFP_HIGHUSER_MOVABLE | __GFP_ZERO
    folio = k.mem.alloc_pages(0, GFP_HIGHUSER_MOVABLE | __GFP_ZERO)
    if folio is None:
        return VM_FAULT_OOM
    entry = mk_pte(folio, vma.vm_page_prot)
    if vma.vm_flags & VM_WRITE:
        entry = pte_mkwrite_novma(pte_mkdirty(entry))
    with pte_lockptr(mm, ptep):
        if not pte_none(ptep_get(k, ptep)):
            folio_put(folio)
            return 0
        mm.rss_stat[MM_ANONPAGES] += 1
        folio_add_new_anon_rmap(folio, vma, vmf.address, RMAP_EXCLUSIVE)
        set_pte_at(mm, vmf.address, ptep, entry)
    return 0


# --- file faults ---------------------------------------------------------------------------
#: mm/memory.c fault_around_pages: the debugfs knob fault_around_bytes (64 KiB
#: by default) in pages, a power of two no larger than PTRS_PER_PTE. A read
#: fault on a file with ->map_pages maps the page-cache pages of this
#: naturally aligned window around it (do_fault_around).
fault_around_pages = 65536 >> PAGE_SHIFT

PTRS_PER_PTE = 512


def pmd_install(mm, pmdp: int, vmf: vm_fault) -> None:
    """Hang vmf's preallocated PTE table under an empty PMD.

    If the PMD was filled meanwhile, the table stays in vmf.prealloc_pte for
    the caller to free (do_fault). Kernel: mm/memory.c pmd_install.
    """
    from hmmsim.mm.pgtable import pmd_lockptr

    k = mm.k
    with pmd_lockptr(mm, pmdp):
        if pmd_none(pmdp_get(k, pmdp)):
            set_pte_at(mm, 0, pmdp, mk_table_entry(vmf.prealloc_pte))
            vmf.prealloc_pte = None


def _free_prealloc_pte(vmf: vm_fault) -> None:
    """The preallocated table was not used: pte_free() it."""
    if vmf.prealloc_pte is not None:
        free_table(vmf.vma.vm_mm.k, vmf.prealloc_pte)
        vmf.prealloc_pte = None


def __do_fault(vmf: vm_fault) -> int:
    """Ask the file for the page: returns with vmf.page locked and referenced.

    Like the kernel, a PTE table for an empty PMD is allocated first (before
    the file allocates its page): no memory for it is VM_FAULT_OOM with the
    page cache untouched. Kernel: mm/memory.c __do_fault.
    """
    k = vmf.vma.vm_mm.k
    if vmf.prealloc_pte is None and pmd_none(pmdp_get(k, vmf.pmd)):
        vmf.prealloc_pte = alloc_table(k)
        if vmf.prealloc_pte is None:
            return VM_FAULT_OOM
    ret = vmf.vma.vm_file.fault(vmf)
    if ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE | VM_FAULT_RETRY):
        return ret
    if not ret & VM_FAULT_LOCKED:
        from hmmsim.locking import folio_lock

        folio_lock(page_folio(vmf.page))
    return ret


def do_fault(vmf: vm_fault) -> int:
    """A fault on an empty PTE of a file vma: read, COW or shared fault.

    A PTE table preallocated on the way and not used is freed here.
    Kernel: mm/memory.c do_fault.
    """
    vma = vmf.vma
    if vma.vm_file is None or not hasattr(vma.vm_file, "fault"):
        return VM_FAULT_SIGBUS
    if not vmf.flags & FAULT_FLAG_WRITE:
        ret = do_read_fault(vmf)
    elif not vma.vm_flags & VM_SHARED:
        ret = do_cow_fault(vmf)
    else:
        ret = do_shared_fault(vmf)
    _free_prealloc_pte(vmf)
    return ret


def should_fault_around(vmf: vm_fault) -> bool:
    """Only files with ->map_pages (shmem here) fault around, and only if the
    window is more than one page. The model has no VM_UFFD_WP/VM_UFFD_MINOR,
    which would turn it off. Kernel: mm/memory.c should_fault_around.
    """
    if getattr(vmf.vma.vm_file, "map_pages", None) is None:
        return False
    return fault_around_pages > 1


def do_fault_around(vmf: vm_fault) -> int:
    """Map the cached pages of the fault-around window (->map_pages).

    The window is fault_around_pages PTEs aligned to its own size, clipped
    to the vma and to the PTE table (one PMD) holding the fault. Returns
    VM_FAULT_NOPAGE if the faulting page itself got mapped, VM_FAULT_OOM if
    no PTE table could be allocated for an empty PMD, else 0.
    Kernel: mm/memory.c do_fault_around.
    """
    vma = vmf.vma
    k = vma.vm_mm.k
    nr_pages = fault_around_pages
    pte_off = pte_index(vmf.address)
    vma_off = vmf.pgoff - vma.vm_pgoff
    from_pte = max(pte_off & ~(nr_pages - 1), pte_off - min(pte_off, vma_off))
    vma_pages = (vma.vm_end - vma.vm_start) >> PAGE_SHIFT
    to_pte = min(from_pte + nr_pages, PTRS_PER_PTE, pte_off + vma_pages - vma_off) - 1
    if pmd_none(pmdp_get(k, vmf.pmd)):
        vmf.prealloc_pte = alloc_table(k)
        if vmf.prealloc_pte is None:
            return VM_FAULT_OOM
    return vma.vm_file.map_pages(vmf, vmf.pgoff + from_pte - pte_off, vmf.pgoff + to_pte - pte_off)


def do_read_fault(vmf: vm_fault) -> int:
    """Read fault on a file page: fault around first, ->fault() if the page
    itself was not mapped by it. Kernel: mm/memory.c do_read_fault.
    """
    if should_fault_around(vmf):
        ret = do_fault_around(vmf)
        if ret:
            return ret
    ret = __do_fault(vmf)
    if ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE | VM_FAULT_RETRY):
        return ret
    folio = page_folio(vmf.page)
    ret |= finish_fault(vmf, vmf.page, cow=False)
    folio_unlock(folio)
    if ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE | VM_FAULT_RETRY):
        folio_put(folio)
    return ret & ~VM_FAULT_LOCKED


def do_cow_fault(vmf: vm_fault) -> int:
    """Private write to a file page: copy it into a new anon page."""
    vma = vmf.vma
    k = vma.vm_mm.k
    anon_vma_prepare(vma)
    new = k.mem.alloc_pages(0, GFP_HIGHUSER_MOVABLE)
    if new is None:
        return VM_FAULT_OOM
    ret = __do_fault(vmf)
    if ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE | VM_FAULT_RETRY):
        folio_put(new)
        return ret
    k.mem.copy_frame(new.pfn, vmf.page.pfn)
    src = page_folio(vmf.page)
    ret |= finish_fault(vmf, new, cow=True)
    folio_unlock(src)
    folio_put(src)
    if ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE | VM_FAULT_RETRY):
        folio_put(new)
    return ret & ~VM_FAULT_LOCKED


def do_shared_fault(vmf: vm_fault) -> int:
    ret = __do_fault(vmf)
    if ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE | VM_FAULT_RETRY):
        return ret
    folio = page_folio(vmf.page)
    ret |= finish_fault(vmf, vmf.page, cow=False)
    if not ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE):
        folio_mark_dirty(folio)
    folio_unlock(folio)
    if ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE | VM_FAULT_RETRY):
        folio_put(folio)
    return ret & ~VM_FAULT_LOCKED


def set_pte_range(vmf: vm_fault, folio: Page, page: Page, nr: int, addr: int, ptep: int) -> None:
    """Map nr pages of folio from page at addr (PTE lock held).

    The PTEs are made from vm_page_prot (on x86 already Accessed, and x86
    does not want prefaulted PTEs old), dirty and writable-if-VM_WRITE only
    for a write fault; a COW page gets a new exclusive anon rmap, a file page
    a file rmap. The caller counts rss and references.
    Kernel: mm/memory.c set_pte_range.
    """
    vma = vmf.vma
    mm = vma.vm_mm
    write = bool(vmf.flags & FAULT_FLAG_WRITE)
    entry = mk_pte(page, vma.vm_page_prot)
    if write:
        entry = maybe_mkwrite(pte_mkdirty(entry), vma)
    if write and not vma.vm_flags & VM_SHARED:
        if nr != 1:
            raise KernelBug("set_pte_range: a COW of more than one page")
        folio_add_new_anon_rmap(folio, vma, addr, RMAP_EXCLUSIVE)
    else:
        folio_add_file_rmap_ptes(folio, page, nr, vma)
    for n in range(nr):
        set_pte_at(mm, addr + n * PAGE_SIZE, ptep + 8 * n, entry + (n << PAGE_SHIFT))


def finish_fault(vmf: vm_fault, page: Page, cow: bool) -> int:
    """Install the PTE for a file fault (set_pte_range for one page).

    An empty PMD gets the table __do_fault preallocated. VM_FAULT_NOPAGE if
    the PTE is no longer empty. Kernel: mm/memory.c finish_fault.
    """
    vma = vmf.vma
    mm = vma.vm_mm
    k = mm.k
    if pmd_none(pmdp_get(k, vmf.pmd)):
        if vmf.prealloc_pte is not None:
            pmd_install(mm, vmf.pmd, vmf)
        elif not pte_alloc(mm, vmf.pmd):
            return VM_FAULT_OOM
    ptep = pte_offset_map(k, pmdp_get(k, vmf.pmd), vmf.address)
    if ptep is None:
        return VM_FAULT_NOPAGE
    with pte_lockptr(mm, ptep):
        if not pte_none(ptep_get(k, ptep)):
            return VM_FAULT_NOPAGE
        folio = page_folio(page)
        set_pte_range(vmf, folio, page, 1, vmf.address, ptep)
        mm.rss_stat[MM_ANONPAGES if cow else mm_counter_file(folio)] += 1
    return 0


# --- write-protect faults ------------------------------------------------------------------
def wp_page_reuse(vmf: vm_fault) -> int:
    entry = maybe_mkwrite(pte_mkdirty(pte_mkyoung(vmf.orig_pte)), vmf.vma)
    set_pte_at(vmf.vma.vm_mm, vmf.address, vmf.pte, entry)
    vmf.ptl.unlock()
    return 0


def wp_can_reuse_anon_folio(folio: Page, vma) -> bool:
    """May a write fault reuse this anon folio instead of copying it?

    Large folios (__wp_can_reuse_large_anon_folio): only if more than one
    page is mapped, every reference is a mapping, and every mapping is in
    this mm; the anon rmap is not moved. Small folios: only the sole
    reference, and then the folio moves to this vma's anon_vma.
    """
    if folio_test_large(folio):
        if folio_mapcount(folio) <= 1:
            return False
        if not _folio_mapped_only_in(folio, vma.vm_mm):
            return False
        return folio_mapcount(folio) == folio_ref_count(folio)
    if folio_ref_count(folio) > 1:
        return False
    if not folio_trylock(folio):
        return False
    reuse = folio_ref_count(folio) == 1
    if reuse:
        folio_move_anon_rmap(folio, vma)
    folio_unlock(folio)
    return reuse


def _folio_mapped_only_in(folio: Page, mm) -> bool:
    """The kernel tracks this with folio->_mm_ids; the model asks rmap."""
    from hmmsim.mm.page_vma_mapped import (
        DEFINE_FOLIO_VMA_WALK,
        page_vma_mapped_walk,
        page_vma_mapped_walk_done,
    )
    from hmmsim.mm.rmap import rmap_walk, rmap_walk_control

    other = []

    def one(f, v, address, arg):
        if v.vm_mm is mm:
            return True
        w = DEFINE_FOLIO_VMA_WALK(f, v, address)
        if page_vma_mapped_walk(w):
            page_vma_mapped_walk_done(w)
            other.append(v)
            return False
        return True

    rmap_walk(folio, rmap_walk_control(rmap_one=one))
    return not other


def do_wp_page(vmf: vm_fault) -> int:
    """A write to a present read-only PTE: reuse the page or copy it.

    Context: the PTE lock is held on entry and released on return.
    """
    vma = vmf.vma
    vmf.page = vm_normal_page(vma, vmf.address, vmf.orig_pte)
    if vma.vm_flags & (VM_SHARED | VM_MAYSHARE):
        if vmf.page is not None:
            folio_mark_dirty(page_folio(vmf.page))
        return wp_page_reuse(vmf)
    if vmf.page is not None:
        folio = page_folio(vmf.page)
        if folio_test_anon(folio) and (
            PageAnonExclusive(vmf.page) or wp_can_reuse_anon_folio(folio, vma)
        ):
            if not PageAnonExclusive(vmf.page):
                SetPageAnonExclusive(vmf.page)
            return wp_page_reuse(vmf)
        folio_get(folio)
    vmf.ptl.unlock()
    return wp_page_copy(vmf)


def wp_page_copy(vmf: vm_fault) -> int:
    """Break COW: give this mapping its own exclusive copy of the page."""
    vma = vmf.vma
    mm = vma.vm_mm
    k = mm.k
    old_page = vmf.page
    old_folio = page_folio(old_page) if old_page is not None else None
    anon_vma_prepare(vma)
    if is_zero_pfn(k, pte_pfn(vmf.orig_pte)):
        new = k.mem.alloc_pages(0, GFP_HIGHUSER_MOVABLE | __GFP_ZERO)
    else:
        new = k.mem.alloc_pages(0, GFP_HIGHUSER_MOVABLE)
        if new is not None:
            k.mem.copy_frame(new.pfn, pte_pfn(vmf.orig_pte))
    if new is None:
        if old_folio is not None:
            folio_put(old_folio)
        return VM_FAULT_OOM
    start = vmf.address
    with notify_range(mm, MMU_NOTIFY_CLEAR, start, start + PAGE_SIZE):
        ptl = pte_lockptr(mm, vmf.pte)
        with ptl:
            if ptep_get(k, vmf.pte) == vmf.orig_pte:
                if old_folio is None:
                    mm.rss_stat[MM_ANONPAGES] += 1
                elif not folio_test_anon(old_folio):
                    mm.rss_stat[mm_counter_file(old_folio)] -= 1
                    mm.rss_stat[MM_ANONPAGES] += 1
                entry = maybe_mkwrite(pte_mkdirty(mk_pte(new, vma.vm_page_prot)), vma)
                ptep_get_and_clear(mm, start, vmf.pte)
                folio_add_new_anon_rmap(new, vma, start, RMAP_EXCLUSIVE)
                set_pte_at(mm, start, vmf.pte, entry)
                if old_folio is not None:
                    folio_remove_rmap_pte(old_folio, old_page, vma)
                    # the mapping's reference goes with the PTE
                    folio_put(old_folio)
            else:
                folio_put(new)
    if old_folio is not None:
        folio_put(old_folio)
    return 0


# --- non-present PTEs -----------------------------------------------------------------------
def do_swap_page(vmf: vm_fault) -> int:
    """A fault on a non-present, non-none PTE: a software leaf entry."""
    mm = vmf.vma.vm_mm
    k = mm.k
    swp = k.swp
    entry = swp.softleaf_from_pte(vmf.orig_pte)
    if swp.softleaf_is_migration(entry):
        migration_entry_wait(mm, vmf.pmd, vmf.address)
        return 0
    if swp.softleaf_is_device_exclusive(entry):
        return remove_device_exclusive_entry(vmf)
    if swp.softleaf_is_device_private(entry):
        return do_device_private_fault(vmf, entry)
    if swp.softleaf_is_hwpoison(entry):
        return VM_FAULT_HWPOISON
    if swp.softleaf_is_marker(entry):
        if swp.softleaf_is_guard_marker(entry):
            return VM_FAULT_SIGSEGV
        if swp.softleaf_is_poison_marker(entry):
            return VM_FAULT_HWPOISON
        return VM_FAULT_SIGBUS
    # No swap device is modelled: a real swap entry is a bad PTE.
    k.warn(f"do_swap_page: bad swap entry {vmf.orig_pte:#x} at {vmf.address:#x}")
    return VM_FAULT_SIGBUS


def do_device_private_fault(vmf: vm_fault, entry: int) -> int:
    """CPU touches device-private memory: ask the pagemap to migrate it back.

    If the device page is locked (a migration is in flight), sleep until it
    is unlocked and retry the fault; never spin (the hmm_range_fault livelock
    fix, known-bugs 1).
    """
    mm = vmf.vma.vm_mm
    k = mm.k
    # the fault read orig_pte without the PTE lock: another thread may run
    # before it gets here (the window commit 16ce101db85d closed)
    k.sched.point("lockless", vmf.orig_pte)
    if "device_fault_no_ref" in k.bugs:
        # mutant (commit 16ce101db85d): before the fix the fault called the
        # driver on the page its PTE snapshot named, with no PTL, reference or
        # page lock, and migrate_vma had no fault_page
        page = softleaf_to_page(k, entry)
        vmf.page = page
        return k.page_pgmap(page).ops.migrate_to_ram(vmf)
    ptl = pte_lockptr(mm, vmf.pte)
    ptl.lock()
    if ptep_get(k, vmf.pte) != vmf.orig_pte:
        ptl.unlock()
        return 0
    # The kernel forms vmf->page before taking the lock, but that is pointer
    # arithmetic; the model's lookup needs the memmap, which the PTE lock pins
    # only while the entry is unchanged (a racing eviction may memunmap it).
    page = softleaf_to_page(k, entry)
    vmf.page = page
    if trylock_page(page):
        folio_get(page_folio(page))  # get_page(vmf->page)
        ptl.unlock()
        pgmap = k.page_pgmap(page)
        ret = pgmap.ops.migrate_to_ram(vmf)
        # a split during the migration moved the lock and the reference to the
        # folio that now holds vmf->page (the lock hand-off, known-bugs 2)
        unlock_page(page)
        folio_put(page_folio(page))
        return ret
    if "hmm_fault_spin" in k.bugs:
        # mutant (known-bugs 1): return without sleeping on the page lock
        ptl.unlock()
        return 0
    softleaf_entry_wait_on_locked(k, entry, ptl)
    return 0


def restore_exclusive_pte(
    vma, folio: Page, page: Page, address: int, ptep: int, orig_pte: int
) -> None:
    """Put the present PTE back for a device-exclusive entry (writable if allowed)."""
    from hmmsim.include.pgtable import pte_mksoft_dirty, pte_swp_soft_dirty

    if vma.vm_mm.k.config.kernel == "6.12":
        return restore_exclusive_pte_612(vma, folio, page, address, ptep, orig_pte)
    if "exclusive_drops_mapcount" in vma.vm_mm.k.bugs:
        from hmmsim.mm.rmap import RMAP_NONE, folio_add_anon_rmap_pte

        folio_add_anon_rmap_pte(folio, page, vma, address, RMAP_NONE)  # mutant (9.16)
    pte = pte_mkold(mk_pte(page, vma.vm_page_prot))
    if pte_swp_soft_dirty(orig_pte):
        pte = pte_mksoft_dirty(pte)
    if vma.vm_flags & VM_WRITE and PageAnonExclusive(page):
        pte = (
            pte_mkwrite_novma(pte_mkdirty(pte))
            if folio_test_dirty_any(folio)
            else (pte_mkwrite_novma(pte))
        )
    set_pte_at(vma.vm_mm, address, ptep, pte)


def restore_exclusive_pte_612(
    vma, folio: Page, page: Page, address: int, ptep: int, orig_pte: int
) -> None:
    """Linux 6.12's restore of a device-exclusive entry (--kernel 6.12).

    Kernel (6.12): mm/memory.c restore_exclusive_pte. The new PTE is old,
    keeps the entry's soft-dirty mark; a uffd-wp entry gives a uffd-wp PTE,
    else an SWP_DEVICE_EXCLUSIVE_WRITE entry gives a dirty PTE, writable if
    the vma is (maybe_mkwrite); an _READ entry a clean read-only one. The
    rmap dropped when the entry was made is added back (RMAP_NONE: the page's
    PageAnonExclusive is left as it is); the entry's reference becomes the
    PTE's.
    """
    from hmmsim.include.pgtable import (
        pte_mksoft_dirty,
        pte_mkuffd_wp,
        pte_swp_soft_dirty,
        pte_swp_uffd_wp,
    )
    from hmmsim.mm.rmap import RMAP_NONE, folio_add_anon_rmap_pte

    k = vma.vm_mm.k
    pte = pte_mkold(mk_pte(page, vma.vm_page_prot))
    if pte_swp_soft_dirty(orig_pte):
        pte = pte_mksoft_dirty(pte)
    entry = k.swp.softleaf_from_pte(orig_pte)
    if pte_swp_uffd_wp(orig_pte):
        pte = pte_mkuffd_wp(pte)
    elif k.swp.is_writable_device_exclusive_entry(entry):
        pte = maybe_mkwrite(pte_mkdirty(pte), vma)
    if folio_test_anon(folio):
        folio_add_anon_rmap_pte(folio, page, vma, address, RMAP_NONE)
    else:
        k.warn("restore_exclusive_pte: device-exclusive entry names a file page")
    set_pte_at(vma.vm_mm, address, ptep, pte)


def folio_test_dirty_any(folio: Page) -> bool:
    from hmmsim.include.mm_types import folio_test_dirty

    return folio_test_dirty(folio)


def remove_device_exclusive_entry(vmf: vm_fault) -> int:
    """CPU fault on a device-exclusive entry: restore the PTE.

    Every device, the exclusive holder included, is told with
    MMU_NOTIFY_EXCLUSIVE and owner None.
    """
    from hmmsim.include.mm_types import folio_try_get
    from hmmsim.include.mmu_notifier import MMU_NOTIFY_EXCLUSIVE
    from hmmsim.locking import folio_lock

    vma = vmf.vma
    mm = vma.vm_mm
    k = mm.k
    page = softleaf_to_page(k, k.swp.softleaf_from_pte(vmf.orig_pte))
    folio = page_folio(page)
    if not folio_try_get(folio):
        return 0
    folio_lock(folio)
    with notify_range(mm, MMU_NOTIFY_EXCLUSIVE, vmf.address, vmf.address + PAGE_SIZE):
        with pte_lockptr(mm, vmf.pte):
            if ptep_get(k, vmf.pte) == vmf.orig_pte:
                restore_exclusive_pte(vma, folio, page, vmf.address, vmf.pte, vmf.orig_pte)
    folio_unlock(folio)
    folio_put(folio)
    return 0


def try_restore_exclusive_pte(vma, addr: int, ptep: int) -> int:
    """Fork: restore a device-exclusive entry before copying; 0 or -EBUSY."""
    k = vma.vm_mm.k
    orig = ptep_get(k, ptep)
    page = softleaf_to_page(k, k.swp.softleaf_from_pte(orig))
    folio = page_folio(page)
    if folio_trylock(folio):
        restore_exclusive_pte(vma, folio, page, addr, ptep, orig)
        folio_unlock(folio)
        return 0
    return -EBUSY


# ----------------------------------------------------------------------------------------
# zap


def zap_pte_range(vma, pmdp: int, addr: int, end: int, even_cows: bool = True) -> None:
    """Clear the PTEs of [addr, end) under one PMD, dropping rmap and references.

    even_cows=False is zap_details.even_cows false (mm/memory.c should_zap_folio,
    should_zap_cows): a hole punch keeps anonymous (COW) folios and swap entries.
    """
    mm = vma.vm_mm
    k = mm.k
    swp = k.swp
    ptep = pte_offset_map(k, pmdp_get(k, pmdp), addr)
    if ptep is None:
        return
    to_free = []
    with pte_lockptr(mm, ptep):
        n = fast_mem.zap_pte_range(vma, ptep, addr, end, even_cows)
        addr, ptep = addr + n * PAGE_SIZE, ptep + n * 8
        while addr < end:
            pte = ptep_get(k, ptep)
            if not pte_none(pte) and not even_cows and _keeps_cow(vma, addr, pte):
                pass
            elif not pte_none(pte):
                ptep_get_and_clear(mm, addr, ptep)
                if pte_present(pte):
                    page = vm_normal_page(vma, addr, pte)
                    if page is not None:
                        folio = page_folio(page)
                        if not folio_test_anon(folio) and pte_dirty(pte):
                            folio_mark_dirty(folio)
                        mm.rss_stat[mm_counter(folio)] -= 1
                        folio_remove_rmap_pte(folio, page, vma)
                        to_free.append(folio)
                else:
                    entry = swp.softleaf_from_pte(pte)
                    if swp.softleaf_is_device_private(entry) or swp.softleaf_is_device_exclusive(
                        entry
                    ):
                        page = softleaf_to_page(k, entry)
                        folio = page_folio(page)
                        mm.rss_stat[mm_counter(folio)] -= 1
                        if not (
                            ("exclusive_drops_mapcount" in k.bugs or k.config.kernel == "6.12")
                            and swp.softleaf_is_device_exclusive(entry)
                        ):  # mutant (9.16), and 6.12: an exclusive entry has no rmap to remove
                            folio_remove_rmap_pte(folio, page, vma)
                        to_free.append(folio)
                    elif swp.softleaf_is_migration(entry):
                        folio = page_folio(softleaf_to_page(k, entry))
                        mm.rss_stat[mm_counter(folio)] -= 1
            addr += PAGE_SIZE
            ptep += 8
    for folio in to_free:  # tlb_finish_mmu(): free after the flush
        folio_put(folio)


def _keeps_cow(vma, addr: int, pte: int) -> bool:
    """A zap without even_cows leaves this entry: an anonymous folio or a swap entry."""
    k = vma.vm_mm.k
    if pte_present(pte):
        page = vm_normal_page(vma, addr, pte)
        return page is not None and folio_test_anon(page_folio(page))
    entry = k.swp.softleaf_from_pte(pte)
    swp = k.swp
    if (
        swp.softleaf_is_device_private(entry)
        or swp.softleaf_is_device_exclusive(entry)
        or swp.softleaf_is_migration(entry)
    ):
        return folio_test_anon(page_folio(softleaf_to_page(k, entry)))
    return True  # a swap entry or a marker: should_zap_cows() is false


def unmap_page_range(vma, addr: int, end: int, even_cows: bool = True) -> None:
    """Zap every mapping of [addr, end) in vma, splitting huge PMDs at the edges.

    even_cows=False keeps anonymous folios (see zap_pte_range).
    """
    mm = vma.vm_mm
    k = mm.k
    while addr < end:
        nxt = min((addr & PMD_MASK) + PMD_SIZE, end)
        pmdp = pmd_offset(mm, addr)
        if pmdp is None:  # no PMD table: skip the empty PUD/PGD range whole
            from hmmsim.mm.pgtable import pmd_walk_skip

            addr = pmd_walk_skip(mm, addr, end)
            continue
        if pmdp is not None:
            pmdval = pmdp_get(k, pmdp)
            if huge_memory.is_huge_pmd_entry(k, pmdval):
                if nxt - addr == PMD_SIZE:
                    huge_memory.zap_huge_pmd(vma, pmdp, addr)
                    addr = nxt
                    continue
                huge_memory.__split_huge_pmd(vma, pmdp, addr)
            if not pmd_none(pmdp_get(k, pmdp)):
                zap_pte_range(vma, pmdp, addr, nxt, even_cows)
        addr = nxt


def zap_page_range_single(vma, address: int, size: int) -> None:
    """MADV_DONTNEED-style zap with an MMU_NOTIFY_CLEAR notification."""
    end = address + size
    with notify_range(vma.vm_mm, MMU_NOTIFY_CLEAR, address, end):
        if vma.vm_flags & VM_HUGETLB:
            vma.vm_mm.k.hugetlb.unmap_hugepage_range(vma, address, end)
        else:
            unmap_page_range(vma, address, end)


# ----------------------------------------------------------------------------------------
# fork: copy_page_range


def vma_needs_copy(dst_vma, src_vma) -> bool:
    if src_vma.vm_flags & (VM_HUGETLB | VM_PFNMAP | VM_MIXEDMAP):
        return True
    return src_vma.anon_vma is not None


def copy_page_range(dst_vma, src_vma) -> int:
    """Copy src_vma's page tables into the child; 0 or -ENOMEM.

    For a COW mapping the parent's range is write-protected first, under an
    MMU_NOTIFY_PROTECTION_PAGE notification.
    """
    if not vma_needs_copy(dst_vma, src_vma):
        return 0
    src_mm = src_vma.vm_mm
    k = src_mm.k
    if src_vma.vm_flags & VM_HUGETLB:
        return k.hugetlb.copy_hugetlb_page_range(dst_vma, src_vma)
    cow = is_cow_mapping(src_vma.vm_flags)
    if cow:
        ctx = notify_range(src_mm, MMU_NOTIFY_PROTECTION_PAGE, src_vma.vm_start, src_vma.vm_end)
    else:
        from contextlib import nullcontext

        ctx = nullcontext()
    with ctx:
        addr = src_vma.vm_start
        end = src_vma.vm_end
        while addr < end:
            nxt = min((addr & PMD_MASK) + PMD_SIZE, end)
            if pmd_offset(src_mm, addr) is None:  # skip an empty PUD/PGD range whole
                from hmmsim.mm.pgtable import pmd_walk_skip

                nxt = pmd_walk_skip(src_mm, addr, end)
            ret = copy_pmd_range(dst_vma, src_vma, addr, nxt)
            if ret:
                return ret
            addr = nxt
    return 0


def copy_pmd_range(dst_vma, src_vma, addr: int, end: int) -> int:
    k = src_vma.vm_mm.k
    src_pmdp = pmd_offset(src_vma.vm_mm, addr)
    if src_pmdp is None:
        return 0
    pmdval = pmdp_get(k, src_pmdp)
    if pmd_none(pmdval):
        return 0
    dst_pmdp = pmd_offset(dst_vma.vm_mm, addr, alloc=True)
    if dst_pmdp is None:
        return -ENOMEM
    if huge_memory.is_huge_pmd_entry(k, pmdval):
        ret = huge_memory.copy_huge_pmd(dst_vma, src_vma, dst_pmdp, src_pmdp, addr)
        if ret == -ENOMEM:
            return ret
        if ret == 0:
            return 0
        # -EAGAIN: the PMD was split; copy its PTEs
        assert ret == -EAGAIN
    return copy_pte_range(dst_vma, src_vma, dst_pmdp, src_pmdp, addr, end)


def copy_pte_range(dst_vma, src_vma, dst_pmdp: int, src_pmdp: int, addr: int, end: int) -> int:
    src_mm = src_vma.vm_mm
    dst_mm = dst_vma.vm_mm
    k = src_mm.k
    if not pte_alloc(dst_mm, dst_pmdp):
        return -ENOMEM
    src_ptep = pte_offset_map(k, pmdp_get(k, src_pmdp), addr)
    dst_ptep = pte_offset_map(k, pmdp_get(k, dst_pmdp), addr)
    with pte_lockptr(src_mm, src_ptep):
        n = fast_mem.copy_pte_range(dst_vma, src_vma, dst_ptep, src_ptep, addr, end)
        addr, src_ptep, dst_ptep = addr + n * PAGE_SIZE, src_ptep + n * 8, dst_ptep + n * 8
        while addr < end:
            pte = ptep_get(k, src_ptep)
            if not pte_none(pte):
                if pte_present(pte):
                    ret = copy_present_pte(dst_vma, src_vma, dst_ptep, src_ptep, pte, addr)
                else:
                    ret = copy_nonpresent_pte(dst_vma, src_vma, dst_ptep, src_ptep, pte, addr)
                if ret:
                    return ret
            addr += PAGE_SIZE
            src_ptep += 8
            dst_ptep += 8
    return 0


def copy_present_pte(dst_vma, src_vma, dst_ptep: int, src_ptep: int, pte: int, addr: int) -> int:
    src_mm = src_vma.vm_mm
    dst_mm = dst_vma.vm_mm
    page = vm_normal_page(src_vma, addr, pte)
    if page is not None:
        folio = page_folio(page)
        if folio_test_anon(folio):
            folio_get(folio)
            if folio_try_dup_anon_rmap_pte(folio, page, dst_vma, src_vma):
                folio_put(folio)
                return copy_present_page(dst_vma, src_vma, dst_ptep, pte, addr, page)
            dst_mm.rss_stat[MM_ANONPAGES] += 1
        else:
            folio_get(folio)
            folio_add_file_rmap_pte(folio, page, dst_vma)
            dst_mm.rss_stat[mm_counter_file(folio)] += 1
    if is_cow_mapping(src_vma.vm_flags) and pte_write(pte):
        set_pte_at(src_mm, addr, src_ptep, pte_wrprotect(pte))
        pte = pte_wrprotect(pte)
    if src_vma.vm_flags & VM_SHARED:
        pte = pte_mkclean(pte)
    pte = pte_mkold(pte)
    if pte_uffd_wp(pte):
        from hmmsim.include.pgtable import _PAGE_UFFD_WP

        pte &= ~_PAGE_UFFD_WP
    set_pte_at(dst_mm, addr, dst_ptep, pte)
    return 0


def copy_present_page(dst_vma, src_vma, dst_ptep: int, pte: int, addr: int, page: Page) -> int:
    """A possibly pinned exclusive anon page: the child gets a copy right away."""
    k = dst_vma.vm_mm.k
    anon_vma_prepare(dst_vma)
    new = k.mem.alloc_pages(0, GFP_HIGHUSER_MOVABLE)
    if new is None:
        return -ENOMEM
    k.mem.copy_frame(new.pfn, page.pfn)
    dst_vma.vm_mm.rss_stat[MM_ANONPAGES] += 1
    folio_add_new_anon_rmap(new, dst_vma, addr, RMAP_EXCLUSIVE)
    entry = maybe_mkwrite(pte_mkdirty(mk_pte(new, dst_vma.vm_page_prot)), dst_vma)
    set_pte_at(dst_vma.vm_mm, addr, dst_ptep, entry)
    return 0


def copy_nonpresent_pte(dst_vma, src_vma, dst_ptep: int, src_ptep: int, pte: int, addr: int) -> int:
    """Fork's copy of a software leaf entry (migration, device-private, ...).

    In a COW mapping a writable or readable-exclusive migration entry is
    made readable in the parent and the child (the device variant under
    series (b)), keeping soft-dirty and uffd-wp; a writable device-private
    entry is made readable keeping uffd-wp only (the kernel does not keep
    soft-dirty for device-private pages). The child's copy loses uffd-wp
    (no userfaultfd-wp in the model). Kernel: mm/memory.c copy_nonpresent_pte.
    """
    src_mm = src_vma.vm_mm
    dst_mm = dst_vma.vm_mm
    k = src_mm.k
    swp = k.swp
    entry = swp.softleaf_from_pte(pte)
    cow = is_cow_mapping(src_vma.vm_flags)
    if swp.softleaf_is_migration(entry):
        folio = page_folio(softleaf_to_page(k, entry))
        dst_mm.rss_stat[mm_counter(folio)] += 1
        if not swp.softleaf_is_migration_read(entry) and cow:
            if "fork_plain_migration_entry" in k.bugs:
                # known bug: the writer forgets the series (b) device variant
                new_entry = swp.make_readable_migration_entry(swp.swp_offset(entry))
            else:
                new_entry = k.make_readable_migration_entry_for(entry)
            new = swp.swp_entry_to_pte(new_entry)
            if pte_swp_soft_dirty(pte):
                new = pte_swp_mksoft_dirty(new)
            if pte_swp_uffd_wp(pte):
                new = pte_swp_mkuffd_wp(new)
            set_pte_at(src_mm, addr, src_ptep, new)
            pte = new
    elif swp.softleaf_is_device_private(entry):
        page = softleaf_to_page(k, entry)
        folio = page_folio(page)
        folio_get(folio)
        dst_mm.rss_stat[mm_counter(folio)] += 1
        # device-private pages cannot be pinned: this cannot fail
        if folio_try_dup_anon_rmap_pte(folio, page, dst_vma, src_vma):
            raise KernelBug("copy_nonpresent_pte: device-private page reported pinned")
        if swp.softleaf_is_device_private_write(entry) and cow:
            new = swp.swp_entry_to_pte(
                swp.make_readable_device_private_entry(swp.swp_offset(entry))
            )
            if pte_swp_uffd_wp(pte):
                new = pte_swp_mkuffd_wp(new)
            set_pte_at(src_mm, addr, src_ptep, new)
            pte = new
    elif swp.softleaf_is_device_exclusive(entry):
        # restored to a present PTE first, then copied as one (fork.c path)
        ret = try_restore_exclusive_pte(src_vma, addr, src_ptep)
        if ret:
            return -EAGAIN
        return copy_present_pte(dst_vma, src_vma, dst_ptep, src_ptep, ptep_get(k, src_ptep), addr)
    elif swp.softleaf_is_marker(entry):
        if not swp.softleaf_is_guard_marker(entry):
            return 0
    pte = pte_swp_clear_uffd_wp(pte)
    set_pte_at(dst_mm, addr, dst_ptep, pte)
    return 0


def vm_insert_page(vma, addr: int, page: Page) -> int:
    """Map a driver's kernel page into a user vma (makes it VM_MIXEDMAP).

    Returns 0, -EINVAL (an anon page, or addr outside the vma), -EBUSY (a
    PTE already there) or -ENOMEM. Takes its own reference; the mapping is
    read-only in a private vma (vm_page_prot).
    Kernel: mm/memory.c vm_insert_page/insert_page.
    """
    from hmmsim.errno import EINVAL

    mm = vma.vm_mm
    k = mm.k
    if addr < vma.vm_start or addr >= vma.vm_end:
        return -EFAULT
    folio = page_folio(page)
    if folio_test_anon(folio):
        return -EINVAL
    if not vma.vm_flags & VM_MIXEDMAP:
        if vma.vm_flags & VM_PFNMAP:
            raise KernelBug("vm_insert_page on a VM_PFNMAP vma")
        vma.vm_flags |= VM_MIXEDMAP
    pmdp = pmd_offset(mm, addr, alloc=True)
    if pmdp is None or not pte_alloc(mm, pmdp):
        return -ENOMEM
    ptep = pte_offset_map(k, pmdp_get(k, pmdp), addr)
    with pte_lockptr(mm, ptep):
        if not pte_none(ptep_get(k, ptep)):
            return -EBUSY
        folio_get(folio)
        mm.rss_stat[mm_counter_file(folio)] += 1
        folio_add_file_rmap_pte(folio, page, vma)
        set_pte_at(mm, addr, ptep, mk_pte(page, vma.vm_page_prot))
    return 0

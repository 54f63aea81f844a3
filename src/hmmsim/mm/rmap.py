"""Reverse mapping: anon_vma, file i_mmap, mapcounts, and rmap walks.

Models: mm/rmap.c and include/linux/rmap.h @ torvalds/linux 0eaed89c18ae.

Anon folios point (folio->mapping | FOLIO_MAPPING_ANON) to an anon_vma and
keep their linear index in folio->index; every vma that may map them is
linked to that anon_vma (anon_vma_chain), so a walk computes each address
from the index, as vma_address() does. File folios point to their inode and
are found through its i_mmap set of vmas.

Differences from kernel: no anon_vma interval tree or degree-based reuse;
an anon_vma keeps a plain set of vmas. Mapcount bookkeeping (per-page
_mapcount, _entire_mapcount and _large_mapcount) follows the kernel's
"exact" mapcount scheme.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hmmsim.bug import KernelBug
from hmmsim.include.mm_types import (
    FOLIO_MAPPING_ANON,
    ClearPageAnonExclusive,
    Page,
    PageAnonExclusive,
    PG_anon_exclusive,
    PG_head,
    PG_lru,
    PG_partially_mapped,
    SetPageAnonExclusive,
    folio_mapcount,
    folio_nr_pages,
    folio_page,
    folio_pfn,
    folio_test_anon,
    folio_test_large,
    linear_page_index,
    page_folio,
    vm_area_struct,
)
from hmmsim.kconfig import PAGE_SHIFT

RMAP_NONE = 0
RMAP_EXCLUSIVE = 1 << 0


class anon_vma:
    """The rmap anchor of anonymous pages.

    Fields: id (what folio->mapping holds); root (the anon_vma of the oldest
    ancestor); vmas (every vma linked through an anon_vma_chain); rwsem (the
    root's only: anon_vma->root->rwsem, read-held by rmap walks and
    write-held while vmas are linked or unlinked, so a fork cannot link a
    child between the vmas a walk visits).
    """

    __slots__ = ("id", "root", "vmas", "parent", "rwsem")

    def __init__(self, k, parent: anon_vma | None = None) -> None:
        from hmmsim.locking import RWSem

        self.id = k.new_object_id(self)
        self.parent = parent
        self.root = parent.root if parent is not None else self
        self.vmas: set[vm_area_struct] = set()
        self.rwsem = RWSem(k, f"anon_vma#{self.id}") if parent is None else None

    def __repr__(self) -> str:
        return f"<anon_vma #{self.id} vmas={len(self.vmas)}>"


def anon_vma_prepare(vma: vm_area_struct) -> anon_vma:
    """Give vma its own anon_vma on its first anonymous page."""
    if vma.anon_vma is None:
        av = anon_vma(vma.vm_mm.k)
        vma.anon_vma = av
        vma.anon_vma_chain.append(av)
        av.vmas.add(vma)
    return vma.anon_vma


def anon_vma_clone(dst: vm_area_struct, src: vm_area_struct) -> None:
    """Link dst to every anon_vma src is linked to (vma split, fork, mremap),
    under the root's rwsem held for write (mm/rmap.c anon_vma_clone)."""
    dst.anon_vma = src.anon_vma
    dst.anon_vma_chain = list(src.anon_vma_chain)
    if not dst.anon_vma_chain:
        return
    root = dst.anon_vma_chain[0].root
    root.rwsem.down_write()
    try:
        for av in dst.anon_vma_chain:
            av.vmas.add(dst)
    finally:
        root.rwsem.up_write()


def anon_vma_fork(vma: vm_area_struct, pvma: vm_area_struct) -> None:
    """A child vma sees the parent's anon pages and gets its own anon_vma."""
    anon_vma_clone(vma, pvma)
    if pvma.anon_vma is None:
        return
    av = anon_vma(vma.vm_mm.k, parent=pvma.anon_vma)
    vma.anon_vma = av
    vma.anon_vma_chain.append(av)
    av.root.rwsem.down_write()  # anon_vma_lock_write(): the root's
    av.vmas.add(vma)
    av.root.rwsem.up_write()


def unlink_anon_vmas(vma: vm_area_struct) -> None:
    root = vma.anon_vma_chain[0].root if vma.anon_vma_chain else None
    if root is not None:
        root.rwsem.down_write()
    for av in vma.anon_vma_chain:
        av.vmas.discard(vma)
    if root is not None:
        root.rwsem.up_write()
    vma.anon_vma_chain = []
    vma.anon_vma = None


def folio_anon_vma(folio: Page) -> anon_vma | None:
    m = int(folio.a.mapping[folio.i])
    if not m & FOLIO_MAPPING_ANON:
        return None
    return folio.k.objects[m & ~FOLIO_MAPPING_ANON]


def folio_mapping(folio: Page):
    """The file (inode) of a page-cache folio, None for anon."""
    m = int(folio.a.mapping[folio.i])
    if not m or m & FOLIO_MAPPING_ANON:
        return None
    return folio.k.objects[m]


# --- adding mappings ------------------------------------------------------------------------
def _set_anon(folio: Page, av: anon_vma, index: int) -> None:
    a, i = folio.a, folio.i
    if "stale_mapping_on_free" in folio.k.bugs and a.mapping[i] & FOLIO_MAPPING_ANON:
        return  # mutant: the 2019 __page_set_anon_rmap kept an anon mapping already set
    a.mapping[i] = av.id | FOLIO_MAPPING_ANON
    a.index[i] = index


def folio_add_new_anon_rmap(folio: Page, vma: vm_area_struct, address: int, flags: int) -> None:
    """Map a brand-new anon folio (whole, by PMD if large, else one PTE).

    The caller updates the rss counters, as in the kernel.
    """
    av = anon_vma_prepare(vma)
    _set_anon(folio, av, linear_page_index(vma, address))
    a, i = folio.a, folio.i
    nr = folio_nr_pages(folio)
    if folio_test_large(folio):
        a._entire_mapcount[i] = 0
        a._large_mapcount[i] = 0
        for n in range(nr):
            a.index[i + n] = int(a.index[i]) + n
    else:
        a._mapcount[i] = 0
    if flags & RMAP_EXCLUSIVE:
        for n in range(nr):
            SetPageAnonExclusive(folio_page(folio, n))
    if not int(a.pgmap[i]):
        a.flags[i] |= PG_lru  # folio_add_lru_vma(): system folios go on the LRU


def folio_add_new_anon_rmap_pte(folio, vma, address, flags):
    """folio_add_new_anon_rmap for an order-0 folio (always PTE mapped)."""
    folio_add_new_anon_rmap(folio, vma, address, flags)


def _add_ptes(folio: Page, page: Page, nr: int) -> None:
    a = folio.a
    a._mapcount[page.i : page.i + nr] += 1
    if a.flags[folio.i] & PG_head:
        a._large_mapcount[folio.i] += nr


def folio_add_anon_rmap_ptes(folio, page, nr, vma, address, flags) -> None:
    _add_ptes(folio, page, nr)
    if flags & RMAP_EXCLUSIVE:
        page.a.flags[page.i : page.i + nr] |= PG_anon_exclusive


def folio_add_anon_rmap_pte(folio, page, vma, address, flags) -> None:
    folio_add_anon_rmap_ptes(folio, page, 1, vma, address, flags)


def folio_add_anon_rmap_pmd(folio, page, vma, address, flags) -> None:
    a, i = folio.a, folio.i
    a._entire_mapcount[i] += 1
    a._large_mapcount[i] += 1
    if flags & RMAP_EXCLUSIVE:
        a.flags[i : i + folio_nr_pages(folio)] |= PG_anon_exclusive


def folio_add_file_rmap_ptes(folio, page, nr, vma) -> None:
    _add_ptes(folio, page, nr)


def folio_add_file_rmap_pte(folio, page, vma) -> None:
    _add_ptes(folio, page, 1)


def folio_add_file_rmap_pmd(folio, page, vma) -> None:
    folio.a._entire_mapcount[folio.i] += 1
    folio.a._large_mapcount[folio.i] += 1


folio_dup_file_rmap_pte = folio_add_file_rmap_pte
folio_dup_file_rmap_pmd = folio_add_file_rmap_pmd


def folio_try_dup_anon_rmap_ptes(folio, page, nr, dst_vma, src_vma) -> int:
    """Duplicate anon PTE mappings at fork; -EBUSY if the page may be pinned.

    An anon-exclusive page that may be DMA-pinned cannot be shared with the
    child; the caller must copy it instead (copy_present_page).
    """
    from hmmsim.errno import EBUSY

    for n in range(nr):
        p = Page(page.k, page.a, page.i + n)
        if PageAnonExclusive(p) and folio_maybe_dma_pinned(folio):
            return -EBUSY
    for n in range(nr):
        ClearPageAnonExclusive(Page(page.k, page.a, page.i + n))
    _add_ptes(folio, page, nr)
    return 0


def folio_try_dup_anon_rmap_pte(folio, page, dst_vma, src_vma) -> int:
    return folio_try_dup_anon_rmap_ptes(folio, page, 1, dst_vma, src_vma)


def folio_try_dup_anon_rmap_pmd(folio, page, dst_vma, src_vma) -> int:
    from hmmsim.errno import EBUSY

    if PageAnonExclusive(page) and folio_maybe_dma_pinned(folio):
        return -EBUSY
    for n in range(folio_nr_pages(folio)):
        ClearPageAnonExclusive(folio_page(folio, n))
    folio_add_anon_rmap_pmd(folio, page, dst_vma, 0, RMAP_NONE)
    return 0


def folio_maybe_dma_pinned(folio: Page) -> bool:
    """True if the folio may carry a FOLL_PIN (GUP_PIN_COUNTING_BIAS rule)."""
    from hmmsim.mm.gup import folio_maybe_dma_pinned as pinned

    return pinned(folio)


# --- removing mappings ---------------------------------------------------------------------
def folio_remove_rmap_ptes(folio: Page, page: Page, nr: int, vma: vm_area_struct) -> None:
    a = folio.a
    for n in range(nr):
        a._mapcount[page.i + n] -= 1
        if a._mapcount[page.i + n] < -1:
            raise KernelBug(f"folio_remove_rmap_ptes: mapcount underflow on {page!r}")
    if a.flags[folio.i] & PG_head:
        a._large_mapcount[folio.i] -= nr
        _maybe_deferred_split(folio)


def folio_remove_rmap_pte(folio: Page, page: Page, vma: vm_area_struct) -> None:
    folio_remove_rmap_ptes(folio, page, 1, vma)


def folio_remove_rmap_pmd(folio: Page, page: Page, vma: vm_area_struct) -> None:
    a, i = folio.a, folio.i
    a._entire_mapcount[i] -= 1
    a._large_mapcount[i] -= 1
    if a._entire_mapcount[i] < -1:
        raise KernelBug(f"folio_remove_rmap_pmd: entire mapcount underflow on {folio!r}")
    _maybe_deferred_split(folio)


def _maybe_deferred_split(folio: Page) -> None:
    """Queue an anon THP that is now only partly mapped (deferred_split_folio)."""
    a, i = folio.a, folio.i
    if not folio_test_anon(folio) or a.flags[i] & PG_partially_mapped:
        return
    if a._entire_mapcount[i] >= 0 or a._large_mapcount[i] < 0:
        return
    n = folio_nr_pages(folio)
    mapped = int((a._mapcount[i : i + n] >= 0).sum())
    if 0 < mapped < n:
        a.flags[i] |= PG_partially_mapped
        folio.k.deferred_split_queue.append(folio.pfn)


def folio_move_anon_rmap(folio: Page, vma: vm_area_struct) -> None:
    """An exclusively owned anon folio now belongs to vma's own anon_vma."""
    av = anon_vma_prepare(vma)
    m = av.id | FOLIO_MAPPING_ANON
    folio.a.mapping[folio.i : folio.i + folio_nr_pages(folio)] = m


# --- walks ----------------------------------------------------------------------------------
@dataclass
class rmap_walk_control:
    """What rmap_walk() calls: rmap_one(folio, vma, address, arg) -> keep going."""

    rmap_one: Callable
    arg: object = None
    done: Callable | None = None


def vma_address(vma: vm_area_struct, pgoff: int, nr_pages: int) -> int | None:
    """First address in vma that maps pgoff..pgoff+nr-1, or None (-EFAULT)."""
    start = vma.vm_start + ((pgoff - vma.vm_pgoff) << PAGE_SHIFT)
    end = start + (nr_pages << PAGE_SHIFT)
    if end <= vma.vm_start or start >= vma.vm_end:
        return None
    return max(start, vma.vm_start)


def rmap_walk(folio: Page, rwc: rmap_walk_control) -> None:
    """Call rwc.rmap_one for every vma that may map the folio.

    An anon folio's walk read-holds its anon_vma root's rwsem throughout
    (mm/rmap.c rmap_walk_anon_lock), so no vma is linked (fork) or unlinked
    while it runs.
    """
    sem = None
    if folio_test_anon(folio):
        av = folio_anon_vma(folio)
        sem = av.root.rwsem
        sem.down_read()
        vmas = list(av.vmas)
    else:
        mapping = folio_mapping(folio)
        vmas = list(mapping.i_mmap) if mapping is not None else []
    try:
        pgoff = int(folio.a.index[folio.i])
        nr = folio_nr_pages(folio)
        key = lambda va: (va[0].vm_mm.owner.pid if va[0].vm_mm.owner else 0, va[0].vm_start)  # noqa: E731
        # the vmas that cover the folio (vma_address), then in walk order
        hits = []
        for vma in vmas:
            address = vma_address(vma, pgoff, nr)
            if address is not None:
                hits.append((vma, address))
        hits.sort(key=key)
        for vma, address in hits:
            if not rwc.rmap_one(folio, vma, address, rwc.arg):
                break
            if rwc.done is not None and rwc.done(folio):
                break
    finally:
        if sem is not None:
            sem.up_read()


# --- migration --------------------------------------------------------------------------------
def folio_try_share_anon_rmap_pte(folio: Page, page: Page) -> int:
    """Clear PageAnonExclusive before unmapping; -EBUSY if the page may be pinned."""
    from hmmsim.errno import EBUSY

    if folio_maybe_dma_pinned(folio):
        return -EBUSY
    ClearPageAnonExclusive(page)
    return 0


def folio_try_share_anon_rmap_pmd(folio: Page, page: Page) -> int:
    from hmmsim.errno import EBUSY

    if folio_maybe_dma_pinned(folio):
        return -EBUSY
    folio.a.flags[folio.i : folio.i + folio_nr_pages(folio)] &= ~np.uint32(PG_anon_exclusive)
    return 0


def walk_entry_index(folio: Page, word: int) -> int:
    """Which page of folio the PTE `word` a walk matched maps.

    Kernel: the subpage computation of mm/rmap.c try_to_unmap_one() and
    try_to_migrate_one(). A present PTE: pte_pfn() - folio_pfn(). An entry:
    softleaf_to_pfn() minus, with series (c) and a device-private or
    device-private migration entry, device_private_folio_to_offset(), else
    folio_pfn(). folio_pfn() of a device-private folio warns (series (c)):
    a walk that matched a present PTE for one (the marker removed) ends
    there.
    """
    from hmmsim.include.pgtable import pte_pfn, pte_present
    from hmmsim.mm.memremap import device_private_folio_to_offset

    k = folio.k
    if pte_present(word):
        return pte_pfn(word) - folio_pfn(folio)
    swp = k.swp
    entry = swp.softleaf_from_pte(word)
    if k.config.has("c") and (
        swp.softleaf_is_device_private(entry) or swp.softleaf_is_migration_device_private(entry)
    ):
        return swp.softleaf_to_pfn(entry) - device_private_folio_to_offset(folio)
    return swp.softleaf_to_pfn(entry) - folio_pfn(folio)


def try_to_migrate_one(folio: Page, vma: vm_area_struct, address: int, arg) -> bool:
    """Replace each mapping of folio in vma by a migration entry (MMU_NOTIFY_CLEAR).

    Present PTEs, device-private and device-exclusive entries are replaced;
    a PMD mapping becomes a PMD migration entry. Returns False (stop the
    walk) if an exclusive anon page may be pinned.
    """
    from hmmsim.include.mmu_notifier import MMU_NOTIFY_CLEAR
    from hmmsim.include.pgtable import (
        pte_dirty,
        pte_present,
        pte_soft_dirty,
        pte_swp_mksoft_dirty,
        pte_swp_mkuffd_wp,
        pte_swp_soft_dirty,
        pte_swp_uffd_wp,
        pte_uffd_wp,
        pte_write,
        pte_young,
    )
    from hmmsim.mm.migrate import make_migration_entry_for
    from hmmsim.mm.mmu_notifier import notify_range
    from hmmsim.mm.page_vma_mapped import (
        DEFINE_FOLIO_VMA_WALK,
        page_vma_mapped_walk,
        page_vma_mapped_walk_done,
    )
    from hmmsim.mm.pgtable import ptep_get, ptep_get_and_clear, set_pte_at

    mm = vma.vm_mm
    k = mm.k
    swp = k.swp
    nr = folio_nr_pages(folio)
    end = min(vma.vm_end, address + nr * 4096)
    ret = True
    with notify_range(mm, MMU_NOTIFY_CLEAR, address, end):
        pvmw = DEFINE_FOLIO_VMA_WALK(folio, vma, address)
        while page_vma_mapped_walk(pvmw):
            if pvmw.pte is None:
                from hmmsim.mm.huge_memory import set_pmd_migration_entry_locked

                if set_pmd_migration_entry_locked(vma, pvmw.pmd, pvmw.address, folio):
                    ret = False
                    page_vma_mapped_walk_done(pvmw)
                    break
                continue
            old = ptep_get(k, pvmw.pte)
            page = folio_page(folio, walk_entry_index(folio, old))
            anon_exclusive = folio_test_anon(folio) and PageAnonExclusive(page)
            ptep_get_and_clear(mm, pvmw.address, pvmw.pte)
            if pte_present(old):
                writable = pte_write(old)
                if pte_dirty(old):
                    from hmmsim.include.mm_types import folio_mark_dirty

                    folio_mark_dirty(folio)
            else:
                writable = swp.softleaf_is_device_private_write(swp.softleaf_from_pte(old))
            if anon_exclusive and folio_try_share_anon_rmap_pte(folio, page):
                set_pte_at(mm, pvmw.address, pvmw.pte, old)
                ret = False
                page_vma_mapped_walk_done(pvmw)
                break
            present = pte_present(old)
            entry = make_migration_entry_for(
                page,
                write=writable,
                anon_exclusive=anon_exclusive,
                young=present and pte_young(old),
                dirty=present and pte_dirty(old),
            )
            new = swp.swp_entry_to_pte(entry)
            if (present and pte_soft_dirty(old)) or (not present and pte_swp_soft_dirty(old)):
                new = pte_swp_mksoft_dirty(new)
            if (present and pte_uffd_wp(old)) or (not present and pte_swp_uffd_wp(old)):
                new = pte_swp_mkuffd_wp(new)
            set_pte_at(mm, pvmw.address, pvmw.pte, new)
            folio_remove_rmap_pte(folio, page, vma)
            from hmmsim.include.mm_types import folio_put

            folio_put(folio)
    return ret


def try_to_migrate(folio: Page, flags: int) -> None:
    """Turn every mapping of a locked folio into migration entries, via rmap."""
    rmap_walk(
        folio,
        rmap_walk_control(
            rmap_one=try_to_migrate_one, arg=flags, done=lambda f: folio_mapcount(f) == 0
        ),
    )


# --- device-exclusive entries -------------------------------------------------------------
def make_device_exclusive(mm, addr: int, owner, foliop: list):
    """Replace the writable anon PTE at addr by a device-exclusive entry.

    Returns the page (its folio locked and referenced, also stored in
    foliop[0]) or a negative errno: GUP's errors (-EFAULT for no vma or a
    non-writable one), -EOPNOTSUPP for non-anon or hugetlb folios.
    The mapcount is kept (the folio stays "mapped"); MMU_NOTIFY_EXCLUSIVE is
    sent with `owner` so the caller can ignore its own event.
    Context: mmap_lock held.
    """
    from hmmsim.errno import EOPNOTSUPP
    from hmmsim.include.mm_types import folio_mark_dirty, folio_put, folio_test_hugetlb
    from hmmsim.include.mmu_notifier import MMU_NOTIFY_EXCLUSIVE
    from hmmsim.include.pgtable import (
        pte_dirty,
        pte_pfn,
        pte_present,
        pte_soft_dirty,
        pte_swp_mksoft_dirty,
        pte_write,
    )
    from hmmsim.locking import folio_lock, folio_unlock
    from hmmsim.mm.gup import FOLL_GET, FOLL_SPLIT_PMD, FOLL_WRITE, get_user_page_vma_remote
    from hmmsim.mm.mmu_notifier import notify_range
    from hmmsim.mm.pgtable import pmd_offset, pmdp_get, pte_offset_map, ptep_get, set_pte_at

    if not mm.mmap_lock.is_locked():
        raise KernelBug("make_device_exclusive: mmap_lock not held")
    k = mm.k
    addr &= ~0xFFF
    for _attempt in range(64):
        got = get_user_page_vma_remote(mm, addr, FOLL_GET | FOLL_WRITE | FOLL_SPLIT_PMD)
        if isinstance(got, int):
            return got
        page, vma = got
        folio = page_folio(page)
        if not folio_test_anon(folio) or folio_test_hugetlb(folio):
            folio_put(folio)
            return -EOPNOTSUPP
        folio_lock(folio)
        with notify_range(mm, MMU_NOTIFY_EXCLUSIVE, addr, addr + 4096, owner=owner):
            pmdp = pmd_offset(mm, addr)
            ptep = pte_offset_map(k, pmdp_get(k, pmdp), addr) if pmdp is not None else None
            pte = ptep_get(k, ptep) if ptep is not None else 0
            if not (pte_present(pte) and pte_write(pte) and pte_pfn(pte) == page.pfn):
                retry = True
            else:
                retry = False
                set_pte_at(mm, addr, ptep, 0)
                if pte_dirty(pte):
                    folio_mark_dirty(folio)
                swp_pte = k.swp.swp_entry_to_pte(k.swp.make_device_exclusive_entry(page.pfn))
                if pte_soft_dirty(pte):
                    swp_pte = pte_swp_mksoft_dirty(swp_pte)
                set_pte_at(mm, addr, ptep, swp_pte)
                if "exclusive_drops_mapcount" in k.bugs:
                    # mutant (known-bugs 16): the old code dropped the rmap
                    folio_remove_rmap_pte(folio, page, vma)
        if retry:
            folio_unlock(folio)
            folio_put(folio)
            continue
        foliop[:] = [folio]
        return page
    raise KernelBug(f"make_device_exclusive: livelock at {addr:#x}")


# --- device-exclusive entries, Linux 6.12 (--kernel 6.12) ------------------------------------
@dataclass
class make_exclusive_args:
    """What folio_make_device_exclusive hands its rmap_one (Kernel (6.12):
    mm/rmap.c struct make_exclusive_args)."""

    mm: object
    address: int
    owner: object
    valid: bool = False


def page_make_device_exclusive_one(
    folio: Page, vma: vm_area_struct, address: int, args: make_exclusive_args
) -> bool:
    """Replace every PTE of `folio` in `vma` by a device-exclusive entry (6.12).

    Kernel (6.12): mm/rmap.c page_make_device_exclusive_one. One
    MMU_NOTIFY_EXCLUSIVE range (owner args.owner) covers the folio's span in
    the vma. Each present PTE is cleared (its dirty bit goes to the folio) and
    becomes SWP_DEVICE_EXCLUSIVE_WRITE or _READ by its write bit, keeping
    soft-dirty and uffd-wp; the page's rmap is removed (the mapcount drops)
    while the PTE's reference stays with the entry. args.valid is set when
    the PTE at args.address of args.mm was writable. A non-present PTE of the
    folio (an entry another call left) stops the walk: returns False.

    Differences from kernel: a PMD mapping (the kernel's VM_BUG_ON_FOLIO) is
    a warning and stops the walk.
    """
    from hmmsim.include.mm_types import folio_mark_dirty
    from hmmsim.include.mmu_notifier import MMU_NOTIFY_EXCLUSIVE
    from hmmsim.include.pgtable import (
        pte_dirty,
        pte_pfn,
        pte_present,
        pte_soft_dirty,
        pte_swp_mksoft_dirty,
        pte_swp_mkuffd_wp,
        pte_uffd_wp,
        pte_write,
    )
    from hmmsim.mm.mmu_notifier import notify_range
    from hmmsim.mm.page_vma_mapped import (
        DEFINE_FOLIO_VMA_WALK,
        page_vma_mapped_walk,
        page_vma_mapped_walk_done,
    )
    from hmmsim.mm.pgtable import ptep_get, ptep_get_and_clear, set_pte_at

    mm = vma.vm_mm
    k = mm.k
    swp = k.swp
    nr = folio_nr_pages(folio)
    ret = True
    end = min(vma.vm_end, address + nr * 4096)
    with notify_range(mm, MMU_NOTIFY_EXCLUSIVE, address, end, owner=args.owner):
        pvmw = DEFINE_FOLIO_VMA_WALK(folio, vma, address)
        while page_vma_mapped_walk(pvmw):
            if pvmw.pte is None:
                k.warn(f"page_make_device_exclusive_one: PMD-mapped folio {folio.pfn:#x}")
                ret = False
                page_vma_mapped_walk_done(pvmw)
                break
            ptent = ptep_get(k, pvmw.pte)
            if not pte_present(ptent):
                ret = False
                page_vma_mapped_walk_done(pvmw)
                break
            subpage = folio_page(folio, pte_pfn(ptent) - folio_pfn(folio))
            addr = pvmw.address
            pteval = ptep_get_and_clear(mm, addr, pvmw.pte)  # ptep_clear_flush
            if pte_dirty(pteval):
                folio_mark_dirty(folio)
            if args.mm is mm and args.address == addr and pte_write(pteval):
                args.valid = True
            if pte_write(pteval):
                entry = swp.make_writable_device_exclusive_entry(subpage.pfn)
            else:
                entry = swp.make_readable_device_exclusive_entry(subpage.pfn)
            swp_pte = swp.swp_entry_to_pte(entry)
            if pte_soft_dirty(pteval):
                swp_pte = pte_swp_mksoft_dirty(swp_pte)
            if pte_uffd_wp(pteval):
                swp_pte = pte_swp_mkuffd_wp(swp_pte)
            set_pte_at(mm, addr, pvmw.pte, swp_pte)
            # the reference the PTE held now belongs to the entry
            folio_remove_rmap_pte(folio, subpage, vma)
    return ret


def folio_make_device_exclusive(folio: Page, mm, address: int, owner) -> bool:
    """Make every mapping of a locked anon folio device-exclusive (6.12).

    Kernel (6.12): mm/rmap.c folio_make_device_exclusive. False for a non-anon
    or hugetlb folio (nothing changes), and unless the PTE at `address` of
    `mm` was writable and no mapping is left afterwards (folio_mapcount 0);
    a False return may still leave entries installed.
    """
    from hmmsim.include.mm_types import folio_test_hugetlb

    if not folio_test_anon(folio) or folio_test_hugetlb(folio):
        return False
    args = make_exclusive_args(mm=mm, address=address, owner=owner)
    rmap_walk(
        folio,
        rmap_walk_control(
            rmap_one=page_make_device_exclusive_one,
            arg=args,
            done=lambda f: folio_mapcount(f) == 0,
        ),
    )
    return args.valid and folio_mapcount(folio) == 0


def make_device_exclusive_range(mm, start: int, end: int, pages: list, owner) -> int:
    """Mark [start, end) for exclusive use by a device (Linux 6.12's API).

    Kernel (6.12): mm/rmap.c make_device_exclusive_range. GUP (FOLL_GET |
    FOLL_WRITE | FOLL_SPLIT_PMD) the range; returns GUP's count (or its
    -errno). `pages` is filled with that many entries: the page, locked and
    referenced, where it became exclusive, else None (a tail page, a folio
    it could not trylock, or folio_make_device_exclusive failing; the GUP
    reference is dropped then). The pinned mainline replaced this with
    make_device_exclusive (one page).
    Context: mmap_lock held.
    """
    from hmmsim.include.mm_types import PageTail, folio_put
    from hmmsim.locking import folio_trylock, folio_unlock
    from hmmsim.mm.gup import FOLL_GET, FOLL_SPLIT_PMD, FOLL_WRITE, get_user_pages_remote

    if not mm.mmap_lock.is_locked():
        raise KernelBug("make_device_exclusive_range: mmap_lock not held")
    npages = ((end - start) & ((1 << 64) - 1)) >> PAGE_SHIFT
    got = get_user_pages_remote(mm, start, npages, FOLL_GET | FOLL_WRITE | FOLL_SPLIT_PMD)
    pages[:] = []
    if isinstance(got, int):
        return got
    addr = start
    for page in got:
        folio = page_folio(page)
        if PageTail(page) or not folio_trylock(folio):
            folio_put(folio)
            pages.append(None)
        elif not folio_make_device_exclusive(folio, mm, addr, owner):
            folio_unlock(folio)
            folio_put(folio)
            pages.append(None)
        else:
            pages.append(page)
        addr += 1 << PAGE_SHIFT
    return len(got)

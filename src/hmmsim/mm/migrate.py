"""Migration-entry waits.

Models: mm/migrate.c (migration_entry_wait, pmd_migration_entry_wait,
softleaf_entry_wait_on_locked, formerly migration_entry_wait_on_locked) @
torvalds/linux 0eaed89c18ae.

A thread that meets a migration entry (or a locked device-private page)
sleeps on the folio lock of the page the entry names and retries its fault
afterwards. The sleep goes through the scheduler hook: with no other thread
to run it is a deadlock (KernelBug), never a busy spin.
"""

from __future__ import annotations

from hmmsim.bug import KernelBug
from hmmsim.include.migrate import (
    MIGRATE_PFN_DEVICE_PRIVATE,
    MIGRATE_PFN_SHIFT,
    MIGRATE_PFN_VALID,
)
from hmmsim.include.mm_types import (
    folio_get,
    folio_nr_pages,
    folio_page,
    page_folio,
)
from hmmsim.include.pgtable import (
    _PAGE_UFFD_WP,
    pfn_pte,
    pte_mkdirty,
    pte_mkold,
    pte_mksoft_dirty,
    pte_mkwrite_novma,
    pte_mkyoung,
    pte_swp_mksoft_dirty,
    pte_swp_mkuffd_wp,
    pte_swp_soft_dirty,
    pte_swp_uffd_wp,
    pte_wrprotect,
)
from hmmsim.kconfig import HPAGE_PMD_NR, PMD_MASK
from hmmsim.locking import folio_wait_locked
from hmmsim.mm.memremap import (
    DEVICE_PRIVATE_BASE,
    device_private_offset_to_page,
    folio_is_device_private,
    is_device_private_page,
)
from hmmsim.mm.pgtable import (
    pmdp_get,
    pte_offset_map,
    ptep_get,
    set_pte_at,
)


def softleaf_entry_wait_on_locked(k, entry: int, ptl=None) -> None:
    """Sleep until the folio named by a PFN-carrying entry is unlocked.

    With `ptl` (held by the caller, as in the kernel) the folio is found
    while the PTE lock still pins the entry, and the lock is dropped before
    sleeping.
    """
    folio = page_folio(k.softleaf_to_page(entry))
    if ptl is not None:
        ptl.unlock()
    k.stats["migration_entry_waits"] += 1
    folio_wait_locked(folio)


def migration_entry_wait(mm, pmdp: int, address: int) -> None:
    """Wait for the migration of the page behind the PTE at address, if any."""
    k = mm.k
    ptep = pte_offset_map(k, pmdp_get(k, pmdp), address)
    if ptep is None:
        return
    entry = k.swp.softleaf_from_pte(ptep_get(k, ptep))
    if not k.swp.softleaf_is_migration(entry):
        return
    softleaf_entry_wait_on_locked(k, entry)


def pmd_migration_entry_wait(mm, pmdp: int) -> None:
    k = mm.k
    entry = k.swp.softleaf_from_pmd(pmdp_get(k, pmdp))
    if not k.swp.softleaf_is_migration(entry):
        return
    softleaf_entry_wait_on_locked(k, entry)


# --- migrate PFNs (include/linux/migrate.h helpers that need struct pages) ------------------
def migrate_pfn(pfn: int) -> int:
    return (pfn << MIGRATE_PFN_SHIFT) | MIGRATE_PFN_VALID


def page_swp_index(page) -> int:
    """What entries naming `page` carry: its PFN, or with series (c) and a
    device-private page, its device-private offset."""
    a = page.a
    if a.base >= DEVICE_PRIVATE_BASE:  # is_dp_index_space_page()
        return a.base + page.i - DEVICE_PRIVATE_BASE  # device_private_page_to_offset()
    return a.base + page.i


def migrate_pfn_from_page(page) -> int:
    """migrate_pfn() of a page, with MIGRATE_PFN_DEVICE_PRIVATE under series (a).

    The flag marks device-private pages only, never MEMORY_DEVICE_COHERENT
    ones (their PFNs are real): the review point of seed thread (a).
    """
    v = migrate_pfn(page_swp_index(page))
    if page.a.pgmap[page.i] and page.k.config.has("a") and is_device_private_page(page):
        v |= MIGRATE_PFN_DEVICE_PRIVATE
    elif page.k.config.has("a") and "coherent_device_private_flag" in page.k.bugs:
        # mutant (known-bugs 3): series (a) v1 flagged every zone-device page
        if page.a.pgmap[page.i]:  # is_zone_device_page
            v |= MIGRATE_PFN_DEVICE_PRIVATE
    return v


def migrate_pfn_to_page(mpfn: int, *, k):
    """The page a src/dst slot names, None without MIGRATE_PFN_VALID."""
    if not mpfn & MIGRATE_PFN_VALID:
        return None
    idx = mpfn >> MIGRATE_PFN_SHIFT
    if mpfn & MIGRATE_PFN_DEVICE_PRIVATE and k.config.has("c"):
        return device_private_offset_to_page(idx, k=k)
    return k.mem.pfn_to_page(idx)


def index_to_page(k, idx: int, device_private: bool = False):
    if device_private and k.config.has("c"):
        return device_private_offset_to_page(idx, k=k)
    return k.mem.pfn_to_page(idx)


# --- entries naming a page ------------------------------------------------------------------
def make_device_private_entry_for(page, write: bool) -> int:
    swp = page.k.swp
    idx = page_swp_index(page)
    if write:
        return swp.make_writable_device_private_entry(idx)
    return swp.make_readable_device_private_entry(idx)


def make_migration_entry_for(
    page, write: bool, anon_exclusive: bool, young: bool = False, dirty: bool = False
) -> int:
    """The migration entry for page; the device-private variant under series (b)."""
    k = page.k
    swp = k.swp
    idx = page_swp_index(page)
    if k.config.has("b") and is_device_private_page(page):
        if write:
            entry = swp.make_writable_migration_device_private_entry(idx)
        elif anon_exclusive:
            entry = swp.make_readable_exclusive_migration_device_private_entry(idx)
        else:
            entry = swp.make_readable_migration_device_private_entry(idx)
    elif write:
        entry = swp.make_writable_migration_entry(idx)
    elif anon_exclusive:
        entry = swp.make_readable_exclusive_migration_entry(idx)
    else:
        entry = swp.make_readable_migration_entry(idx)
    if young:
        entry = swp.make_migration_entry_young(entry)
    if dirty:
        entry = swp.make_migration_entry_dirty(entry)
    return entry


# --- LRU stand-ins and struct page migration ------------------------------------------------
def folio_add_lru(folio) -> None:
    from hmmsim.include.mm_types import PG_lru

    folio.set(PG_lru)


def folio_isolate_lru(folio) -> bool:
    """Take the folio off the LRU (with a reference). False if not on it."""
    from hmmsim.include.mm_types import PG_lru, folio_get

    if not folio.test(PG_lru):
        return False
    folio.clear(PG_lru)
    folio_get(folio)
    return True


def folio_putback_lru(folio) -> None:
    from hmmsim.include.mm_types import folio_put

    folio_add_lru(folio)
    folio_put(folio)


def folio_migrate_mapping(mapping, newfolio, folio, extra_count: int) -> int:
    """Move mapping/index to newfolio if folio holds only the expected references.

    Returns 0 or -EAGAIN. Anon folios outside the swap cache only (the
    model has no swap cache); file folios are replaced in their page cache.
    """
    from hmmsim.errno import EAGAIN
    from hmmsim.include.mm_types import folio_nr_pages, folio_ref_count

    expected = 1 + extra_count + (folio_nr_pages(folio) if mapping is not None else 0)
    if folio_ref_count(folio) != expected:
        return -EAGAIN
    n = folio_nr_pages(folio)
    a, i, na, ni = folio.a, folio.i, newfolio.a, newfolio.i
    na.index[ni : ni + n] = a.index[i : i + n]
    na.mapping[ni : ni + n] = a.mapping[i : i + n]
    if mapping is not None:
        for j in range(n):
            mapping.cache[int(a.index[i + j])] = newfolio.pfn + j
        na._refcount[ni] += n
        a._refcount[i] -= n
    return 0


def folio_migrate_flags(newfolio, folio) -> None:
    """Carry dirty/uptodate/anon-exclusive state to the new folio."""
    from hmmsim.include.mm_types import (
        PG_anon_exclusive,
        PG_dirty,
        PG_uptodate,
        folio_nr_pages,
    )

    keep = PG_dirty | PG_uptodate
    newfolio.a.flags[newfolio.i] |= int(folio.a.flags[folio.i]) & keep
    n = folio_nr_pages(folio)
    old = folio.a.flags[folio.i : folio.i + n]
    newfolio.a.flags[newfolio.i : newfolio.i + n] |= old & PG_anon_exclusive


# --- remove_migration_ptes ------------------------------------------------------------------
def remove_migration_ptes(src, dst, flags: int) -> None:
    """Replace every migration entry naming src by a mapping of dst.

    Kernel: mm/migrate.c remove_migration_ptes(): an rmap walk over dst (which
    has src's mapping and index by now, or is src) calling
    remove_migration_pte() on every vma, which finds src's migration entries
    with page_vma_mapped_walk(PVMW_SYNC | PVMW_MIGRATION) over src: the entry
    is recognised by the number it carries and, with series (c), by whether
    it is a device-private migration entry, never by asking which page it
    names. A device-private dst gets device-private entries; anything else a
    present PTE/PMD. Write permission comes from the entry type, exclusivity
    from READ_EXCLUSIVE/WRITE, A/D from the entry's bits.
    """
    from hmmsim.mm.rmap import rmap_walk, rmap_walk_control

    def one(folio, vma, address, arg) -> bool:
        return remove_migration_pte(folio, vma, address, src)

    rmap_walk(dst, rmap_walk_control(rmap_one=one))


def migration_pte_restored(swp, pte: int, entry: int, prot: int, dst_dp: bool, idx: int) -> int:
    """The entry remove_migration_pte() writes over the migration PTE `pte`.

    A device-private destination (dst_dp; idx its swap index) gets a
    device-private entry, writable if the migration entry was; anything else
    (idx its PFN) a present PTE with the vma's protection, old unless the
    entry kept Accessed, soft-dirty and Dirty carried over, write permission
    from the entry type. The uffd-wp mark carries over in either form.
    Kernel: mm/migrate.c remove_migration_pte().
    """
    write = swp.softleaf_is_migration_write(entry)
    if dst_dp:
        if write:
            new = swp.swp_entry_to_pte(swp.make_writable_device_private_entry(idx))
        else:
            new = swp.swp_entry_to_pte(swp.make_readable_device_private_entry(idx))
        if pte_swp_soft_dirty(pte):
            new = pte_swp_mksoft_dirty(new)
    else:
        new = pte_mkold(pfn_pte(idx, prot))
        if swp.softleaf_is_migration_young(entry):
            new = pte_mkyoung(new)
        if pte_swp_soft_dirty(pte):
            new = pte_mksoft_dirty(new)
        if swp.softleaf_is_migration_dirty(entry):
            new = pte_mkdirty(new)
        new = pte_mkwrite_novma(new) if write else pte_wrprotect(new)
    if pte_swp_uffd_wp(pte):
        new = pte_swp_mkuffd_wp(new) if not new & 1 else new | _PAGE_UFFD_WP
    return new


def remove_migration_pte(folio, vma, address: int, src) -> bool:
    """Map folio (dst) where the walk over src finds src's migration entries.

    Kernel: mm/migrate.c remove_migration_pte() (rmap_walk_arg->folio is
    src). The subpage of a large folio comes from the address
    (linear_page_index - pvmw.pgoff), as in the kernel. A PMD migration entry
    that a small src overlaps is VM_BUG_ON_FOLIO(!folio_test_pmd_mappable).
    Always True (the rmap walk goes on).
    """
    from hmmsim.include.mm_types import folio_test_large, linear_page_index
    from hmmsim.include.rmap import PVMW_MIGRATION, PVMW_SYNC
    from hmmsim.mm.page_vma_mapped import (
        DEFINE_FOLIO_VMA_WALK,
        page_vma_mapped_walk,
        page_vma_mapped_walk_done,
    )
    from hmmsim.mm.rmap import RMAP_EXCLUSIVE, RMAP_NONE, folio_add_anon_rmap_pte

    mm = vma.vm_mm
    k = mm.k
    swp = k.swp
    dst_dp = folio_is_device_private(folio)
    pvmw = DEFINE_FOLIO_VMA_WALK(src, vma, address, PVMW_SYNC | PVMW_MIGRATION)
    while page_vma_mapped_walk(pvmw):
        idx = 0
        if folio_test_large(folio):
            idx = linear_page_index(vma, pvmw.address) - pvmw.pgoff
        new = folio_page(folio, idx)
        if pvmw.pte is None:  # a PMD migration entry
            if folio_nr_pages(folio) < HPAGE_PMD_NR:
                raise KernelBug(
                    f"remove_migration_pte: PMD migration entry at "
                    f"{pvmw.address & PMD_MASK:#x} covers the order-0 folio {folio!r} "
                    "(VM_BUG_ON_FOLIO(!folio_test_pmd_mappable))"
                )
            from hmmsim.mm.huge_memory import remove_migration_pmd

            pmdp = pvmw.pmd
            entry = swp.softleaf_from_pmd(pmdp_get(k, pmdp))
            # remove_migration_pmd() takes the PMD lock itself in the model
            page_vma_mapped_walk_done(pvmw)
            remove_migration_pmd(vma, pmdp, pvmw.address & PMD_MASK, entry, src, folio)
            continue
        pte = ptep_get(k, pvmw.pte)
        entry = swp.softleaf_from_pte(pte)
        excl = not swp.softleaf_is_migration_read(entry)
        word = migration_pte_restored(
            swp,
            pte,
            entry,
            vma.vm_page_prot,
            dst_dp,
            page_swp_index(new) if dst_dp else new.pfn,
        )
        folio_get(folio)
        folio_add_anon_rmap_pte(
            folio, new, vma, pvmw.address, RMAP_EXCLUSIVE if excl else RMAP_NONE
        )
        set_pte_at(mm, pvmw.address, pvmw.pte, word)
    return True

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
    pmd_none,
    pmd_present,
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
from hmmsim.kconfig import HPAGE_PMD_NR, PAGE_SIZE, PMD_MASK, PMD_SIZE
from hmmsim.locking import folio_wait_locked
from hmmsim.mm.memremap import (
    DEVICE_PRIVATE_BASE,
    device_private_offset_to_page,
    folio_is_device_private,
    is_device_private_page,
)
from hmmsim.mm.pgtable import (
    pmd_offset,
    pmdp_get,
    pte_lockptr,
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

    A device-private dst gets device-private entries; anything else a present
    PTE/PMD. Write permission comes from the entry type, exclusivity from
    READ_EXCLUSIVE/WRITE, A/D from the entry's bits.
    """
    from hmmsim.mm.rmap import rmap_walk, rmap_walk_control

    def one(folio, vma, address, arg) -> bool:
        _remove_migration_pte(src, dst, vma, address)
        return True

    rmap_walk(src, rmap_walk_control(rmap_one=one))


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


def _remove_migration_pte(src, dst, vma, address: int) -> None:
    from hmmsim.mm.rmap import RMAP_EXCLUSIVE, RMAP_NONE, folio_add_anon_rmap_pte

    mm = vma.vm_mm
    k = mm.k
    swp = k.swp
    n = folio_nr_pages(src)
    lo = src.pfn
    end = min(vma.vm_end, address + n * PAGE_SIZE)
    addr = address
    while addr < end:
        pmdp = pmd_offset(mm, addr)
        if pmdp is None:
            addr = (addr & PMD_MASK) + PMD_SIZE
            continue
        pmd = pmdp_get(k, pmdp)
        if not pmd_none(pmd) and not pmd_present(pmd):
            entry = swp.softleaf_from_pmd(pmd)
            head = k.softleaf_to_page(entry).pfn if swp.softleaf_is_migration(entry) else -1
            if head >= 0 and n < HPAGE_PMD_NR and head <= lo < head + HPAGE_PMD_NR:
                # page_vma_mapped_walk()'s check_pmd() matches a PMD migration
                # entry that covers a small src; remove_migration_pte() then
                # hits VM_BUG_ON_FOLIO(!folio_test_pmd_mappable(folio)).
                raise KernelBug(
                    f"remove_migration_pte: PMD migration entry at {addr & PMD_MASK:#x} "
                    f"covers the order-0 folio {lo:#x} (VM_BUG_ON_FOLIO)"
                )
            if head == lo and (addr & PMD_MASK) >= vma.vm_start:
                from hmmsim.mm.huge_memory import remove_migration_pmd

                remove_migration_pmd(vma, pmdp, addr & PMD_MASK, entry, src, dst)
            addr = (addr & PMD_MASK) + PMD_SIZE
            continue
        ptep = pte_offset_map(k, pmd, addr)
        if ptep is None:
            addr = (addr & PMD_MASK) + PMD_SIZE
            continue
        pte = ptep_get(k, ptep)
        if pte and not pte & 1 and not pte & (1 << 8):
            entry = swp.softleaf_from_pte(pte)
            if swp.softleaf_is_migration(entry):
                epage = k.softleaf_to_page(entry)
                idx = epage.pfn - lo
                if 0 <= idx < n and epage.a is src.a:
                    page = folio_page(dst, idx)
                    excl = not swp.softleaf_is_migration_read(entry)
                    dst_dp = folio_is_device_private(dst)
                    new = migration_pte_restored(
                        swp,
                        pte,
                        entry,
                        vma.vm_page_prot,
                        dst_dp,
                        page_swp_index(page) if dst_dp else page.pfn,
                    )
                    with pte_lockptr(mm, ptep):
                        folio_get(dst)
                        folio_add_anon_rmap_pte(
                            dst, page, vma, addr, RMAP_EXCLUSIVE if excl else RMAP_NONE
                        )
                        set_pte_at(mm, addr, ptep, new)
        addr += PAGE_SIZE

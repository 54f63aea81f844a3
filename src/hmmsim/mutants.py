"""Known kernel bugs, kept as opt-in mutants of the model.

Each mutant puts one real bug back: from the kernel's history of these files
or from the review threads of the seed series (docs/known-bugs.md).
A `KConfig(bugs={...})` turns mutants on; the model's code tests
`name in k.bugs` at the one place the bug lived, and does what the buggy
kernel did there. Nothing else in the model, and nothing in the checkers,
looks at which mutant is on: `hmmsim.testing.mutant_hunt` runs the fuzzer or
the interleaving explorer and a mutant counts as found only when a checker
fires (an invariant, a lost byte, a deadlock or livelock, a kernel oops or
warning).

Not here: known-bugs 5, series (c) v1/v2 shifting pvmw->pfn left by
one for a flag bit, which loses bit BITS_PER_LONG-1 of a PFN. No machine the
model builds has such a PFN (x86-64 MAX_PHYSMEM_BITS is 46 or 52,
device-private offsets start at 0, and on 32-bit the migrate-PFN encoding
already refuses PFNs of 2^26 and up), so no checker could ever see the bug;
a mutant would only be "found" by looking at which mutant is on. The marker
that shift made room for is another matter: `pvmw_no_device_private_flag`
removes it (in either form), and then an offset and a PFN that are the same
number, which every (c) machine has, match each other.

This module is data only, so the kernel can import it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    """One known bug: where it lived, what it did, where it came from."""

    name: str
    origin: str  # known-bugs item (docs/known-bugs.md), commit or review thread
    where: str  # the kernel function (and our model of it) the bug is in
    bug: str  # what the buggy kernel does
    fix: str  # what the fixed kernel (the default model) does


MUTANTS: dict[str, Mutant] = {}


def _m(*args: str) -> None:
    m = Mutant(*args)
    MUTANTS[m.name] = m


_m(
    "hmm_fault_spin",
    "known-bugs 1 (the hmm_range_fault livelock / starvation fix)",
    "mm/memory.c do_swap_page (hmmsim.mm.memory.do_device_private_fault)",
    "a CPU or hmm_range_fault fault on a device-private entry whose page is locked "
    "returns at once; hmm_range_fault sees -EBUSY and walks again, spinning without "
    "sleeping while the lock holder cannot run",
    "sleep until the page is unlocked (softleaf_entry_wait_on_locked), then retry",
)
_m(
    "split_fault_lock_handoff",
    "known-bugs 2 (series (d) review: mTHP fault-page spin)",
    "mm/migrate_device.c migrate_vma_split_folio",
    "after splitting a large folio that contains the fault page, the lock and the "
    "reference stay on the old head instead of moving to the folio that now holds "
    "the fault page",
    "unlock the old head and lock the new fault folio (the lock hand-off)",
)
_m(
    "coherent_device_private_flag",
    "known-bugs 3 (series (a) v1 review)",
    "include/linux/migrate.h migrate_pfn_from_page (hmmsim.include.migrate)",
    "MIGRATE_PFN_DEVICE_PRIVATE is set for every ZONE_DEVICE page, DEVICE_COHERENT "
    "included, so a coherent PFN is decoded as a device-private offset",
    "set the flag only for is_device_private_page()",
)
_m(
    "hmm_zero_pfn0",
    "known-bugs 4 (series (e) RFC zero-page encoding)",
    "mm/hmm.c hmm_vma_handle_pte / migrate_hmm_range_setup (series (e))",
    "an empty or zero-page slot found by the unified walk is encoded as "
    "VALID | MIGRATE with PFN 0, which also names real page 0",
    "MIGRATE without VALID for an empty slot",
)
_m(
    "insert_huge_pmd_leak",
    "known-bugs 6 (migrate_vma_insert_huge_pmd_page before its abort labels)",
    "mm/migrate_device.c migrate_vma_insert_huge_pmd_page",
    "the abort taken when the PMD was populated under us returns with the PMD "
    "lock held and the preallocated page table not freed",
    "unlock_abort / free_abort: drop the lock and free the page table",
)
_m(
    "exclusive_drops_mapcount",
    "known-bugs 16 (device-exclusive rework, 6.15)",
    "mm/rmap.c make_device_exclusive; mm/memory.c restore_exclusive_pte, zap_pte_range",
    "installing a device-exclusive entry removes the page's rmap (mapcount), "
    "restoring it adds the rmap back and zap does not remove it",
    "an exclusive entry keeps the mapcount like any mapping",
)
_m(
    "stale_order_on_reuse",
    "known-bugs 17 ('mm/zone_device: reinitialize large zone device private folios', 2026)",
    "mm/memremap.c zone_device_page_init / zone_device_folio_init",
    "a device page handed out again keeps the flags, order and head offset it had "
    "in its previous folio (only the refcount and the lock are set), so the pages of "
    "a freed 2 MiB folio reused as 4 KiB folios still look like a head and tails",
    "clear flags, order, head offset and mapping of every subpage before reuse",
)
_m(
    "device_fault_no_ref",
    "commit 16ce101db85d 'mm/memory.c: fix race when faulting a device private "
    "page' (Alistair Popple, 2022)",
    "mm/memory.c do_swap_page (hmmsim.mm.memory.do_device_private_fault)",
    "migrate_to_ram is called on the page named by the fault's snapshot of the PTE "
    "without re-checking the PTE under its lock and without a reference or the "
    "page lock, so a racing eviction can free the page under the driver",
    "re-check the PTE under the PTL, take a reference and the page lock, pass the "
    "page as migrate->fault_page",
)
_m(
    "stale_mapping_on_free",
    "'mm/hmm: fix ZONE_DEVICE anon page mapping reuse' (Ralph Campbell, 2019)",
    "mm/memremap.c free_zone_device_folio; mm/rmap.c __folio_set_anon",
    "a freed device page keeps its stale anon folio->mapping; when it is reused for "
    "a migrated hole, the new anon rmap sees an anon mapping already set and keeps "
    "it, so the page points at another (or a dead) anon_vma",
    "free_zone_device_folio clears folio->mapping (and zone_device_page_init clears it again)",
)
_m(
    "pvmw_no_device_private_flag",
    "known-bugs 19 (series (c): 'mm/page_vma_mapped: Add flag to page_vma_mapped_walk::"
    "flags to track device private pages', and the device_private test the last patch "
    "adds to check_pte/check_pmd)",
    "include/linux/rmap.h folio_page_vma_walk_pfn, page_vma_walk_flags; "
    "mm/page_vma_mapped.c check_pte, check_pmd (hmmsim.include.rmap)",
    "the page walk of a device-private folio carries its device-private offset in "
    "pvmw->pfn with no marker (neither PVMW_DEVICE_PRIVATE nor PVMW_PFN_DEVICE_PRIVATE), "
    "so check_pte/check_pmd compare bare numbers: a RAM page whose PFN equals the "
    "offset (a present PTE, or a migration entry in remove_migration_ptes) is taken for "
    "the device folio, and a device-private entry for a RAM folio",
    "mark the walk (pvmw->flags or bit 0 of pvmw->pfn) and match an entry only if it is "
    "device-private exactly when the walk is",
)

_m(
    "hmm_foreign_device_private",
    "'mm/hmm: check the device private page owner in hmm_range_fault()' "
    "(Christoph Hellwig, 2020, v5.7)",
    "mm/hmm.c hmm_vma_handle_pte",
    "a device-private entry is returned as a valid PFN to any caller, so a device "
    "maps another device's private memory, which it cannot reach",
    "only the owner (range->dev_private_owner) gets the PFN; anyone else faults the "
    "page back to system memory",
)

_m(
    "fork_plain_migration_entry",
    "known-bugs 20 (series (b) RFC patch 4: every writer of a migration entry must keep "
    "the device variant for a device-private page)",
    "mm/memory.c copy_nonpresent_pte (hmmsim.mm.memory.copy_nonpresent_pte)",
    "fork's COW downgrade of a writable device-private migration entry (an eviction "
    "in flight) writes a plain readable migration entry, in the parent and the child; "
    "with series (c) its device-private offset then names a RAM page",
    "make_readable_migration_device_private_entry for a device-private migration entry",
)
_m(
    "huge_pmd_plain_migration_entry",
    "known-bugs 20 (series (b) RFC patch 4 leaves mm/huge_memory.c alone, its diffstat "
    "shows, so the PMD writers keep the plain types)",
    "mm/huge_memory.c copy_huge_non_present_pmd, change_non_present_huge_pmd "
    "(hmmsim.mm.huge_memory, hmmsim.mm.mprotect)",
    "fork and mprotect rewrite a device-private PMD migration entry (a device THP being "
    "evicted) as a plain readable one; with series (c) its offset then names RAM",
    "keep the device variant (make_readable_*migration_device_private_entry)",
)
_m(
    "collect_skips_large_folio",
    "known-bugs 2 (series (d) review: a partly unmapped device THP; the fault "
    "must split the PTE-mapped large folio, not skip it)",
    "mm/migrate_device.c migrate_vma_collect_pmd (and series (e)'s mm/hmm.c "
    "hmm_vma_handle_migrate_prepare)",
    "a PTE that maps one page of a large folio is skipped by collect (src 0, the "
    "pre-(d) 'FIXME support THP' rule) instead of splitting the folio, so the CPU "
    "fault on a partly unmapped device THP migrates nothing, returns, and faults "
    "again for ever",
    "split the large folio (migrate_vma_split_folio, keeping the fault folio locked) "
    "and collect its pages",
)


def check_bugs(bugs) -> frozenset[str]:
    """Validate a set of mutant names; raise ValueError naming the unknown ones."""
    bugs = frozenset(bugs)
    unknown = sorted(bugs - set(MUTANTS))
    if unknown:
        raise ValueError(f"unknown bug {unknown}: choose from {sorted(MUTANTS)}")
    return bugs

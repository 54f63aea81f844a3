"""Migrate-PFN words (MIGRATE_PFN_*), MIGRATE_VMA_SELECT_* and struct migrate_vma.

Models: include/linux/migrate.h @ torvalds/linux 0eaed89c18ae, plus series
(a)'s MIGRATE_PFN_DEVICE_PRIVATE (Niethe, "mm/migrate_device: Add migrate PFN
flag to track device private pages", v2+; seed 000; unmerged).

A src[]/dst[] slot is ``pfn << MIGRATE_PFN_SHIFT | flags``:

- bit 0 MIGRATE_PFN_VALID: the slot holds a PFN.
- bit 1 MIGRATE_PFN_MIGRATE: the slot is selected for migration.
- bit 2: formerly MIGRATE_PFN_LOCKED, unused.
- bit 3 MIGRATE_PFN_WRITE: the source mapping was writable.
- bit 4 MIGRATE_PFN_COMPOUND: the slot stands for a whole PMD-sized folio.
- bit 5 MIGRATE_PFN_DEVICE_PRIVATE, series (a) only: the page is
  device-private (under (c) its "PFN" is a device-private offset). Never set
  for MEMORY_DEVICE_COHERENT pages, whose PFNs are real (the review point of
  seed thread 000).
- bits 6..: the PFN (MIGRATE_PFN_SHIFT = 6).

Simplifications: the constant MIGRATE_PFN_DEVICE_PRIVATE always exists here;
only code running with series (a) may set it. Helpers that need struct pages
(migrate_pfn_to_page, migrate_pfn_from_page) live in hmmsim.mm.migrate.

Array forms: `migrate_pfn_array`, `migrate_pfn_to_pfn_array` and
`migrate_pfn_flags_array` are the element-wise twins for src/dst arrays
(np.uint64 words), built on the same MIGRATE_PFN_SHIFT.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag

import numpy as np
from numpy.typing import ArrayLike

from hmmsim.include.pgtable import I64Array, U64Array, words_array

MIGRATE_PFN_VALID = 1 << 0
MIGRATE_PFN_MIGRATE = 1 << 1
MIGRATE_PFN_WRITE = 1 << 3
MIGRATE_PFN_COMPOUND = 1 << 4
#: Series (a) only (bit 5 is free at the pin); "MIGRATE_PFN_DEVICE" in its v1.
MIGRATE_PFN_DEVICE_PRIVATE = 1 << 5
MIGRATE_PFN_SHIFT = 6
#: Every flag bit below the PFN.
MIGRATE_PFN_FLAGS_MASK = (1 << MIGRATE_PFN_SHIFT) - 1


class migrate_vma_direction(IntFlag):
    """enum migrate_vma_direction: what migrate_vma_setup() may collect."""

    MIGRATE_VMA_SELECT_SYSTEM = 1 << 0
    MIGRATE_VMA_SELECT_DEVICE_PRIVATE = 1 << 1
    MIGRATE_VMA_SELECT_DEVICE_COHERENT = 1 << 2
    MIGRATE_VMA_SELECT_COMPOUND = 1 << 3


# plain ints, so that flag arithmetic in hot paths stays int arithmetic
MIGRATE_VMA_SELECT_SYSTEM = int(migrate_vma_direction.MIGRATE_VMA_SELECT_SYSTEM)
MIGRATE_VMA_SELECT_DEVICE_PRIVATE = int(migrate_vma_direction.MIGRATE_VMA_SELECT_DEVICE_PRIVATE)
MIGRATE_VMA_SELECT_DEVICE_COHERENT = int(migrate_vma_direction.MIGRATE_VMA_SELECT_DEVICE_COHERENT)
MIGRATE_VMA_SELECT_COMPOUND = int(migrate_vma_direction.MIGRATE_VMA_SELECT_COMPOUND)

_NAMES = (
    (MIGRATE_PFN_VALID, "VALID"),
    (MIGRATE_PFN_MIGRATE, "MIGRATE"),
    (1 << 2, "BIT2"),
    (MIGRATE_PFN_WRITE, "WRITE"),
    (MIGRATE_PFN_COMPOUND, "COMPOUND"),
    (MIGRATE_PFN_DEVICE_PRIVATE, "DEVICE_PRIVATE"),
)


def migrate_pfn(pfn: int) -> int:
    """``pfn << MIGRATE_PFN_SHIFT | MIGRATE_PFN_VALID``.

    Kernel: include/linux/migrate.h migrate_pfn. Like the kernel it does not
    check the PFN; use `migrate_pfn_check` where a PFN comes from outside.
    """
    return (pfn << MIGRATE_PFN_SHIFT) | MIGRATE_PFN_VALID


def migrate_pfn_to_pfn(mpfn: int) -> int:
    """The PFN (or series (c) offset) of a slot, ``mpfn >> MIGRATE_PFN_SHIFT``;
    what migrate_pfn_to_page() hands to pfn_to_page()."""
    return mpfn >> MIGRATE_PFN_SHIFT


def migrate_pfn_flags(mpfn: int) -> int:
    """The MIGRATE_PFN_* flag bits of a slot, ``mpfn & MIGRATE_PFN_FLAGS_MASK``."""
    return mpfn & MIGRATE_PFN_FLAGS_MASK


def migrate_pfn_array(pfns: ArrayLike) -> U64Array:
    """Element-wise `migrate_pfn`: np.uint64 slots, MIGRATE_PFN_VALID set."""
    return (words_array(pfns) << np.uint64(MIGRATE_PFN_SHIFT)) | np.uint64(MIGRATE_PFN_VALID)


def migrate_pfn_to_pfn_array(mpfns: ArrayLike) -> I64Array:
    """Element-wise `migrate_pfn_to_pfn` (np.int64)."""
    return (words_array(mpfns) >> np.uint64(MIGRATE_PFN_SHIFT)).astype(np.int64)


def migrate_pfn_flags_array(mpfns: ArrayLike) -> U64Array:
    """The MIGRATE_PFN_* flag bits of each slot (``mpfn & MIGRATE_PFN_FLAGS_MASK``)."""
    return words_array(mpfns) & np.uint64(MIGRATE_PFN_FLAGS_MASK)


def migrate_pfn_check(pfn: int, bits_per_long: int = 64) -> int:
    """Return `pfn` if ``migrate_pfn(pfn)`` fits a BITS_PER_LONG word, else raise.

    The PFN budget is BITS_PER_LONG - MIGRATE_PFN_SHIFT bits: 58 on 64-bit,
    26 on 32-bit (PAE-style PFNs above 2**26 would lose their top bits in C,
    the hazard the comment in migrate.h warns about). Raises ValueError;
    never truncates.
    """
    if pfn < 0 or pfn >> (bits_per_long - MIGRATE_PFN_SHIFT):
        raise ValueError(
            f"PFN {pfn:#x} does not fit in a {bits_per_long}-bit migrate PFN "
            f"({bits_per_long - MIGRATE_PFN_SHIFT} bits above MIGRATE_PFN_SHIFT)"
        )
    return pfn


def describe_migrate_pfn(v: int) -> str:
    """'pfn=0x1234 VALID|MIGRATE|WRITE' for one src/dst slot ('0' when empty)."""
    flags = "|".join(n for b, n in _NAMES if v & b) or "0"
    if v & MIGRATE_PFN_VALID:
        return f"pfn={v >> MIGRATE_PFN_SHIFT:#x} {flags}"
    if v >> MIGRATE_PFN_SHIFT:
        return f"{flags} stale-pfn={v >> MIGRATE_PFN_SHIFT:#x}"
    return flags


def describe_select_flags(flags: int) -> str:
    """'SYSTEM|COMPOUND' for a migrate_vma.flags value."""
    names = [str(m.name)[len("MIGRATE_VMA_SELECT_") :] for m in migrate_vma_direction if flags & m]
    rest = flags & ~sum(m.value for m in migrate_vma_direction)
    if rest:
        names.append(f"{rest:#x}")
    return "|".join(names) or "0"


@dataclass(eq=False, slots=True)
class migrate_vma:
    """struct migrate_vma: one migrate_vma_setup/pages/finalize transaction.

    Fields, in declared order:
        vma: the single vma containing [start, end).
        dst: the caller's destination array (one slot per page), filled by
            the driver after setup; updated in place.
        src: the caller's source array, zeroed and filled by collect;
            updated in place.
        cpages: slots collected for migration (recomputed by unmap).
        npages: slots filled by collect.
        start, end: the virtual range; setup rounds both down to a page.
        pgmap_owner: matched against pgmap->owner of device pages and passed
            as the MMU_NOTIFY_MIGRATE notifier owner.
        flags: MIGRATE_VMA_SELECT_*.
        fault_page: the locked device-private page whose CPU fault started
            this migration (migrate_to_ram), or None.

    Invariant: len(src), len(dst) >= (end - start) >> PAGE_SHIFT; cpages <= npages.
    """

    vma: object = None
    dst: object = None
    src: object = None
    cpages: int = 0
    npages: int = 0
    start: int = 0
    end: int = 0
    pgmap_owner: object = None
    flags: int = 0
    fault_page: object = None

    def __repr__(self) -> str:
        return (
            f"<migrate_vma [{self.start:#x}, {self.end:#x}) npages={self.npages} "
            f"cpages={self.cpages} select={describe_select_flags(self.flags)} "
            f"owner={self.pgmap_owner!r}{' fault_page' if self.fault_page is not None else ''}>"
        )

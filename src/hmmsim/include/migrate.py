"""Migrate-PFN encodings and struct migrate_vma.

Models: include/linux/migrate.h @ torvalds/linux 0eaed89c18ae; series (a)'s
MIGRATE_PFN_DEVICE_PRIVATE (bit 5; "MIGRATE_PFN_DEVICE" in v1) from the
linux-mm review thread in shared/seeds/000. Functions that need struct pages
(migrate_pfn_to_page, migrate_pfn_from_page) live in hmmsim.mm.migrate.
"""

from __future__ import annotations

from dataclasses import dataclass

MIGRATE_PFN_VALID = 1 << 0
MIGRATE_PFN_MIGRATE = 1 << 1
# bit 2 was MIGRATE_PFN_LOCKED, removed upstream
MIGRATE_PFN_WRITE = 1 << 3
MIGRATE_PFN_COMPOUND = 1 << 4
#: Series (a): the slot holds a device-private page (an offset under (c)).
#: Never set for MEMORY_DEVICE_COHERENT pages, whose PFNs are real.
MIGRATE_PFN_DEVICE_PRIVATE = 1 << 5
MIGRATE_PFN_SHIFT = 6

MIGRATE_VMA_SELECT_SYSTEM = 1 << 0
MIGRATE_VMA_SELECT_DEVICE_PRIVATE = 1 << 1
MIGRATE_VMA_SELECT_DEVICE_COHERENT = 1 << 2
MIGRATE_VMA_SELECT_COMPOUND = 1 << 3

_NAMES = (
    (MIGRATE_PFN_VALID, "VALID"),
    (MIGRATE_PFN_MIGRATE, "MIGRATE"),
    (MIGRATE_PFN_WRITE, "WRITE"),
    (MIGRATE_PFN_COMPOUND, "COMPOUND"),
    (MIGRATE_PFN_DEVICE_PRIVATE, "DEVICE_PRIVATE"),
)


def migrate_pfn_check(pfn: int, bits_per_long: int = 64) -> int:
    """The PFN if it fits in a migrate-PFN word, else ValueError (never truncate)."""
    if pfn < 0 or pfn >> (bits_per_long - MIGRATE_PFN_SHIFT):
        raise ValueError(
            f"PFN {pfn:#x} does not fit in a {bits_per_long}-bit migrate PFN "
            f"({bits_per_long - MIGRATE_PFN_SHIFT} bits above MIGRATE_PFN_SHIFT)"
        )
    return pfn


def describe_migrate_pfn(v: int) -> str:
    """'pfn=0x1234 VALID|MIGRATE|WRITE' for a src/dst slot."""
    flags = "|".join(n for b, n in _NAMES if v & b) or "0"
    return f"pfn={v >> MIGRATE_PFN_SHIFT:#x} {flags}" if v & MIGRATE_PFN_VALID else flags


@dataclass(eq=False)
class migrate_vma:
    """struct migrate_vma, fields in declared order.

    vma; dst, src (caller-owned arrays, one slot per page, updated in place);
    cpages (collected/migrating slots, set by setup); npages (slots filled by
    collect); start, end; pgmap_owner; flags (MIGRATE_VMA_SELECT_*);
    fault_page (the locked device-private page of a migrate_to_ram).
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

"""MMU notifier events and struct mmu_notifier_range.

Models: include/linux/mmu_notifier.h (enum mmu_notifier_event,
MMU_NOTIFIER_RANGE_BLOCKABLE, struct mmu_notifier_range,
mmu_notifier_range_blockable, mmu_notifier_range_init[_owner]) @
torvalds/linux 0eaed89c18ae. The notifier machinery itself (interval
notifiers, sequence counts, invalidate_range_start/end) is in
hmmsim.mm.mmu_notifier.

Simplifications: the struct's fields get defaults so that an empty range can
be made and then filled by mmu_notifier_range_init(), the way kernel code
fills a stack variable.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class mmu_notifier_event(IntEnum):
    """enum mmu_notifier_event: why a range is being invalidated.

    UNMAP: munmap, or mremap moving the range. CLEAR: PTEs cleared (madvise,
    page replacement, ...). PROTECTION_VMA: mprotect of the whole range.
    PROTECTION_PAGE: per-page R/W change. SOFT_DIRTY: soft-dirty clearing.
    RELEASE: the mm is going away (interval notifiers). MIGRATE: device
    migration (migrate_vma_collect, hole insertion); owner = pgmap_owner so a
    driver can skip its own migrations. EXCLUSIVE: conversion to a
    device-exclusive entry (owner = the requester) or back (owner None).
    """

    MMU_NOTIFY_UNMAP = 0
    MMU_NOTIFY_CLEAR = 1
    MMU_NOTIFY_PROTECTION_VMA = 2
    MMU_NOTIFY_PROTECTION_PAGE = 3
    MMU_NOTIFY_SOFT_DIRTY = 4
    MMU_NOTIFY_RELEASE = 5
    MMU_NOTIFY_MIGRATE = 6
    MMU_NOTIFY_EXCLUSIVE = 7


MMU_NOTIFY_UNMAP = mmu_notifier_event.MMU_NOTIFY_UNMAP
MMU_NOTIFY_CLEAR = mmu_notifier_event.MMU_NOTIFY_CLEAR
MMU_NOTIFY_PROTECTION_VMA = mmu_notifier_event.MMU_NOTIFY_PROTECTION_VMA
MMU_NOTIFY_PROTECTION_PAGE = mmu_notifier_event.MMU_NOTIFY_PROTECTION_PAGE
MMU_NOTIFY_SOFT_DIRTY = mmu_notifier_event.MMU_NOTIFY_SOFT_DIRTY
MMU_NOTIFY_RELEASE = mmu_notifier_event.MMU_NOTIFY_RELEASE
MMU_NOTIFY_MIGRATE = mmu_notifier_event.MMU_NOTIFY_MIGRATE
MMU_NOTIFY_EXCLUSIVE = mmu_notifier_event.MMU_NOTIFY_EXCLUSIVE

#: mmu_notifier_range.flags: the invalidation may sleep.
MMU_NOTIFIER_RANGE_BLOCKABLE = 1 << 0


@dataclass(slots=True)
class mmu_notifier_range:
    """struct mmu_notifier_range: what is being invalidated, why and by whom.

    Fields, in declared order:
        mm: the mm_struct whose page tables change.
        start, end: the virtual range [start, end).
        flags: MMU_NOTIFIER_RANGE_BLOCKABLE or 0.
        event: enum mmu_notifier_event.
        owner: the initiator's cookie (pgmap owner for MIGRATE, the caller's
            owner for EXCLUSIVE), or None.

    Invariant: start <= end.
    """

    mm: object = None
    start: int = 0
    end: int = 0
    flags: int = 0
    event: mmu_notifier_event = MMU_NOTIFY_UNMAP
    owner: object = None

    def __repr__(self) -> str:
        ev = self.event.name if isinstance(self.event, mmu_notifier_event) else self.event
        block = " blockable" if self.flags & MMU_NOTIFIER_RANGE_BLOCKABLE else ""
        span = f"[{self.start:#x}, {self.end:#x})"
        return f"<mmu_notifier_range {ev} {span}{block} owner={self.owner!r}>"


def mmu_notifier_range_blockable(range: mmu_notifier_range) -> bool:  # noqa: A002
    """Whether the invalidation may sleep (Kernel: mmu_notifier.h)."""
    return bool(range.flags & MMU_NOTIFIER_RANGE_BLOCKABLE)


def mmu_notifier_range_init(
    range: mmu_notifier_range,  # noqa: A002
    event: mmu_notifier_event,
    flags: int,
    mm: object,
    start: int,
    end: int,
) -> None:
    """Fill event, flags, mm, start and end of `range` in place.

    Kernel: include/linux/mmu_notifier.h mmu_notifier_range_init. Like the
    kernel it leaves `owner` alone. Note that mmu_notifier_invalidate_range_start()
    then ORs in MMU_NOTIFIER_RANGE_BLOCKABLE, whatever `flags` said.
    """
    range.event = event
    range.mm = mm
    range.start = start
    range.end = end
    range.flags = flags


def mmu_notifier_range_init_owner(
    range: mmu_notifier_range,  # noqa: A002
    event: mmu_notifier_event,
    flags: int,
    mm: object,
    start: int,
    end: int,
    owner: object,
) -> None:
    """mmu_notifier_range_init() that also records the initiator's `owner`."""
    mmu_notifier_range_init(range, event, flags, mm, start, end)
    range.owner = owner

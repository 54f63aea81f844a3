"""MMU notifier events and the invalidation range.

Models: include/linux/mmu_notifier.h (enum mmu_notifier_event,
MMU_NOTIFIER_RANGE_BLOCKABLE, struct mmu_notifier_range) @ torvalds/linux
0eaed89c18ae.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class mmu_notifier_event(IntEnum):
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

MMU_NOTIFIER_RANGE_BLOCKABLE = 1 << 0


@dataclass
class mmu_notifier_range:
    """struct mmu_notifier_range: [start, end) of mm, why (event) and by whom (owner)."""

    mm: object
    start: int
    end: int
    flags: int
    event: mmu_notifier_event
    owner: object = None

    def __repr__(self) -> str:
        return (
            f"<mmu_notifier_range {self.event.name} [{self.start:#x}, {self.end:#x}) "
            f"owner={self.owner!r}>"
        )


def mmu_notifier_range_blockable(r: mmu_notifier_range) -> bool:
    return bool(r.flags & MMU_NOTIFIER_RANGE_BLOCKABLE)

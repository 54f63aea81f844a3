"""ZONE_DEVICE types: memory_type, dev_pagemap, dev_pagemap_ops.

Models: include/linux/memremap.h and include/linux/range.h @ torvalds/linux
0eaed89c18ae; series (c)'s nr_pages field from the linux-mm review thread
(shared/seeds/003). Behaviour lives in hmmsim.mm.memremap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum


class memory_type(IntEnum):
    """enum memory_type; 0 is reserved to catch uninitialised pgmaps."""

    MEMORY_DEVICE_PRIVATE = 1
    MEMORY_DEVICE_COHERENT = 2
    MEMORY_DEVICE_FS_DAX = 3
    MEMORY_DEVICE_GENERIC = 4
    MEMORY_DEVICE_PCI_P2PDMA = 5


MEMORY_DEVICE_PRIVATE = memory_type.MEMORY_DEVICE_PRIVATE
MEMORY_DEVICE_COHERENT = memory_type.MEMORY_DEVICE_COHERENT
MEMORY_DEVICE_FS_DAX = memory_type.MEMORY_DEVICE_FS_DAX
MEMORY_DEVICE_GENERIC = memory_type.MEMORY_DEVICE_GENERIC
MEMORY_DEVICE_PCI_P2PDMA = memory_type.MEMORY_DEVICE_PCI_P2PDMA

PGMAP_ALTMAP_VALID = 1 << 0
PGMAP_VMEMMAP_OPTIMIZATION = 1 << 1


@dataclass
class range:  # noqa: A001 - the kernel's struct range
    """struct range: [start, end], end inclusive (physical addresses, or (c) offsets)."""

    start: int = 0
    end: int = -1

    def __len__(self) -> int:
        return self.end - self.start + 1


@dataclass
class dev_pagemap_ops:
    """struct dev_pagemap_ops: the driver's callbacks (None = not provided).

    folio_free(folio); migrate_to_ram(vmf) -> vm_fault_t;
    memory_failure(pgmap, pfn, nr_pages, mf_flags) -> int;
    folio_split(head, tail) (series (d); tail None ends a split).
    """

    folio_free: Callable | None = None
    migrate_to_ram: Callable | None = None
    memory_failure: Callable | None = None
    folio_split: Callable | None = None


@dataclass(eq=False)
class dev_pagemap:
    """struct dev_pagemap, fields in the kernel's order (altmap and the
    percpu_ref are bookkeeping the model keeps privately).

    type: memory_type; flags: PGMAP_*; vmemmap_shift; ops; owner (matched
    against migrate_vma.pgmap_owner and hmm_range.dev_private_owner);
    nr_range; range (physical range in, or with series (c) the offset range
    out); nr_pages (series (c) input).
    """

    type: int = 0
    flags: int = 0
    vmemmap_shift: int = 0
    ops: dev_pagemap_ops | None = None
    owner: object = None
    nr_range: int = 1
    range: range = field(default_factory=range)
    nr_pages: int = 0

    def __repr__(self) -> str:
        known = self.type in memory_type._value2member_map_
        t = memory_type(self.type).name if known else self.type
        return f"<dev_pagemap {t} [{self.range.start:#x}-{self.range.end:#x}] owner={self.owner!r}>"

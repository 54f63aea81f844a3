"""ZONE_DEVICE types: enum memory_type, struct dev_pagemap(_ops), struct range.

Models: include/linux/memremap.h (enum memory_type, PGMAP_*, struct
vmem_altmap, struct dev_pagemap_ops, struct dev_pagemap and the small inline
helpers on it) and include/linux/range.h (struct range, range_len) @
torvalds/linux 0eaed89c18ae; series (c)'s dev_pagemap.nr_pages / .pages
from its v2 posting (Niethe, "Remove device private pages from physical
address space"; seed 003; unmerged).

Behaviour (memremap_pages, the reference counting of device pages, the
device-private index space) lives in hmmsim.mm.memremap.

Simplifications: the percpu_ref `ref` is a plain count and the completion
`done` a flag; the flexible ``ranges[]`` union member is a list whose first
element is the same object as `range` (the C union aliases them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class memory_type(IntEnum):
    """enum memory_type; 0 is reserved so an uninitialised pgmap is caught.

    MEMORY_DEVICE_PRIVATE: device memory the CPU cannot access; struct pages
    exist, CPU page tables hold device-private swap entries for it.
    MEMORY_DEVICE_COHERENT: CPU-coherent device memory mapped with ordinary
    PTEs; must never be long-term pinned.
    MEMORY_DEVICE_FS_DAX: pmem for filesystem DAX. MEMORY_DEVICE_GENERIC:
    RAM-like memory (device-dax). MEMORY_DEVICE_PCI_P2PDMA: PCI BAR memory.
    """

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

#: dev_pagemap.flags
PGMAP_ALTMAP_VALID = 1 << 0
PGMAP_VMEMMAP_OPTIMIZATION = 1 << 1


@dataclass(slots=True)
class range:  # noqa: A001 - the kernel's struct range
    """struct range: [start, end] with an inclusive end (physical addresses,
    or with series (c) device-private offsets in bytes).

    Fields: start; end (inclusive; start - 1 for an empty range).
    """

    start: int = 0
    end: int = -1

    def __len__(self) -> int:
        return self.end - self.start + 1

    def __repr__(self) -> str:
        return f"<range [{self.start:#x}-{self.end:#x}]>"


#: `range` under a name a class body with a field called ``range`` can still see.
struct_range = range


def range_len(r: range) -> int:
    """Bytes covered by `r` (Kernel: include/linux/range.h range_len)."""
    return r.end - r.start + 1


@dataclass(slots=True)
class vmem_altmap:
    """struct vmem_altmap: device memory set aside to hold the pgmap's own
    struct pages (used only with PGMAP_ALTMAP_VALID).

    Fields: base_pfn (start of the whole mapping); end_pfn; reserve (pages
    kept for the driver); free (pages usable for the memmap); align (pages
    lost to alignment); alloc (pages the memmap consumed so far).
    """

    base_pfn: int = 0
    end_pfn: int = 0
    reserve: int = 0
    free: int = 0
    align: int = 0
    alloc: int = 0


@dataclass(slots=True)
class dev_pagemap_ops:
    """struct dev_pagemap_ops: the driver's callbacks, None where not provided.

    Fields, in declared order:
        folio_free(folio): the folio's refcount reached zero; the driver takes
            it back (PRIVATE, COHERENT, P2PDMA). Was page_free(page).
        migrate_to_ram(vmf) -> vm_fault_t: a CPU fault hit a device-private
            entry (PRIVATE only); must migrate the page(s) back to RAM.
        memory_failure(pgmap, pfn, nr_pages, mf_flags) -> int: poison on the
            pfns; absent or -EOPNOTSUPP falls back to mf_generic_kill_procs.
        folio_split(head, tail): a device-private large folio is being split
            (series (d), merged): once per new tail, then with tail None.

    Model-only (not in the C):
        folio_free_bulk(arrays, indices) -> bool: folio_free of order-0
            folios arrays[indices] in order, or False having done nothing
            (mm/memremap.py free_zone_device_folios_order0; issue 7).
    """

    folio_free: Callable[..., None] | None = None
    migrate_to_ram: Callable[..., int] | None = None
    memory_failure: Callable[..., int] | None = None
    folio_split: Callable[..., None] | None = None
    folio_free_bulk: Callable[..., bool] | None = None


@dataclass(eq=False, slots=True)
class dev_pagemap:
    """struct dev_pagemap: one ZONE_DEVICE registration.

    Fields, in declared order:
        altmap: vmem_altmap, valid only with PGMAP_ALTMAP_VALID.
        ref: references pinning the mapping (percpu_ref; for PRIVATE and
            COHERENT one per allocated device page).
        done: the completion fired when `ref` drops to zero after a kill.
        type: enum memory_type (0 = not initialised).
        flags: PGMAP_*.
        vmemmap_shift: order of the compound struct pages (0 = base pages).
        vmemmap_shared_page: FS-DAX vmemmap optimisation page, or None.
        ops: dev_pagemap_ops, or None.
        owner: opaque cookie; required for PRIVATE and COHERENT, compared
            with migrate_vma.pgmap_owner and hmm_range.dev_private_owner.
        nr_range: number of ranges (>= 1; always 1 for PRIVATE under (c)).
        nr_pages: series (c) input, pages of device-private memory wanted.
        pages: series (c), the device-private struct pages, or None.
        range: the range when nr_range == 1; under (c) the output offset range.
        ranges: all nr_range ranges; ranges[0] is `range` itself.

    Model-only fields, set by memremap_pages() and the driver (not arguments):
        _id: the key in Kernel.pgmaps while registered, else None.
        _refs: device pages handed out and not yet freed (what the kernel
            counts in `ref`, the percpu_ref; memunmap_pages waits for 0).
        _killed: memunmap_pages has started (no new references).
        _ranges: the MemRange of each range (struct page columns).
        _chunk: the driver's container of this pagemap (container_of in C).

    Invariant: ranges[0] is range; len(ranges) >= nr_range.
    """

    altmap: vmem_altmap = field(default_factory=vmem_altmap)
    ref: int = 0
    done: bool = False
    type: int = 0
    flags: int = 0
    vmemmap_shift: int = 0
    vmemmap_shared_page: object = None
    ops: dev_pagemap_ops | None = None
    owner: object = None
    nr_range: int = 1
    nr_pages: int = 0
    pages: object = None
    range: range = field(default_factory=range)
    ranges: list[struct_range] = field(default_factory=list)
    _id: int | None = field(default=None, init=False, repr=False)
    _refs: int = field(default=0, init=False, repr=False)
    _killed: bool = field(default=False, init=False, repr=False)
    _ranges: list[Any] = field(default_factory=list, init=False, repr=False)
    _chunk: object = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # the C union: ranges[0] and range are one object
        if self.ranges:
            self.range = self.ranges[0]
        else:
            self.ranges = [self.range]

    def __repr__(self) -> str:
        known = self.type in memory_type._value2member_map_
        t = memory_type(self.type).name if known else self.type
        return (
            f"<dev_pagemap {t} [{self.range.start:#x}-{self.range.end:#x}]"
            f"{f' x{self.nr_range}' if self.nr_range != 1 else ''} owner={self.owner!r}>"
        )


def pgmap_has_memory_failure(pgmap: dev_pagemap) -> bool:
    return pgmap.ops is not None and pgmap.ops.memory_failure is not None


def pgmap_altmap(pgmap: dev_pagemap) -> vmem_altmap | None:
    """The altmap if PGMAP_ALTMAP_VALID is set, else None."""
    return pgmap.altmap if pgmap.flags & PGMAP_ALTMAP_VALID else None


def pgmap_vmemmap_nr(pgmap: dev_pagemap) -> int:
    """Base pages per compound struct page, ``1 << vmemmap_shift``."""
    return 1 << pgmap.vmemmap_shift

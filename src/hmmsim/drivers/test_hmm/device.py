"""The dmirror devices: struct dmirror_device and module load.

Models: lib/test_hmm.c @ torvalds/linux 0eaed89c18ae (linux-mm 05ab5121):
struct dmirror_device (its methods come from devmem.py, ioctl.py and
migrate.py) and hmm_dmirror_init: four /dev/hmm_dmirrorN devices (0, 1
MEMORY_DEVICE_PRIVATE; 2, 3 MEMORY_DEVICE_COHERENT, always present here:
the model reserves the two "special purpose memory" ranges the module
parameters would name). Also the invariant checker's hook over the free
lists (dmirror_check_device_pages, not kernel code).
"""

from __future__ import annotations

import numpy as np

from hmmsim.drivers.test_hmm.devmem import (
    DEVMEM_CHUNK_SIZE,
    _FreeList,
    dmirror_chunk,
    dmirror_devmem,
)
from hmmsim.drivers.test_hmm.ioctl import dmirror_fops
from hmmsim.drivers.test_hmm.migrate import dmirror_devmem_fault_ops
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_MEMORY_DEVICE_COHERENT,
    HMM_DMIRROR_MEMORY_DEVICE_PRIVATE,
)
from hmmsim.include.memremap import (
    dev_pagemap_ops,
)
from hmmsim.kconfig import (
    HPAGE_PMD_NR,
)
from hmmsim.locking import Lock


def dmirror_check_device_pages(k) -> list[str]:
    """Invariant hook: every device page is in exactly one state.

    A page on a driver free list (a free large folio covers its tail pages)
    has no reference, no mapping, no lock and no folio->mapping, and is
    listed once; a page of a live chunk that is not on a free list belongs to
    a folio with a reference (mapped by a device entry, isolated for a
    migration, or held by the driver). Not kernel code: the checker's view of
    what lib/test_hmm.c's free lists promise.

    Checks each free list with whole-column operations over the pages it
    covers (a mask) rather than a gather per column; a list where any check
    fails is checked again the way dmirror_check_device_pages_slow() does
    it, so the problems and their order are exactly that function's
    (tests/unit/test_invariants_bulk.py compares the two).
    """
    from hmmsim.include.mm_types import PG_locked

    problems: list[str] = []
    for name, d in sorted(k.devices.items()):
        if not isinstance(d, dmirror_device):
            continue
        free: dict[int, np.ndarray] = {}  # id(PageArrays) -> bool mask
        for lst, n in ((d.free_pages, 1), (d.free_folios, HPAGE_PMD_NR)):
            if not lst.items:
                continue
            items = lst.as_array()
            hi = items >> 32
            for aid, a in enumerate(lst.arrays):
                idx = items[hi == aid] & 0xFFFFFFFF if aid or hi.any() else items
                if not idx.size:
                    continue
                if n > 1:
                    idx = (idx[:, None] + np.arange(n)[None, :]).ravel()
                mask = free.setdefault(id(a), np.zeros(a.nr, dtype=bool))
                if int(idx.max()) >= a.nr:  # not a page of a: fail as the slow form does
                    return dmirror_check_device_pages_slow(k)
                before = int(np.count_nonzero(mask))
                was = mask.copy() if before else None
                mask[idx] = True
                dup = int(np.count_nonzero(mask)) - before != idx.size
                if dup or (
                    (mask & (a._refcount != 0)).any()
                    or (mask & (a._mapcount != -1)).any()
                    or (mask & (a.mapping != 0)).any()
                    or (mask & ((a.flags & PG_locked) != 0)).any()
                ):
                    # some check fails: report as the per-gather form does
                    prior = was if was is not None else np.zeros(a.nr, dtype=bool)
                    counts = np.bincount(idx, minlength=a.nr)
                    for i in np.nonzero((counts > 1) | (prior & (counts > 0)))[0][:5]:
                        problems.append(f"{name}: device page {a.base + int(i):#x} is free twice")
                    checks = (
                        (a._refcount[idx] != 0, "a reference"),
                        (a._mapcount[idx] != -1, "a mapping"),
                        (a.mapping[idx] != 0, "a stale folio->mapping"),
                        ((a.flags[idx] & PG_locked) != 0, "the page lock"),
                    )
                    for bad, what in checks:
                        for i in idx[bad][:5]:
                            problems.append(
                                f"{name}: free device page {a.base + int(i):#x} has {what}"
                            )
        for chunk in d.devmem_chunks:
            if chunk.remove:
                continue
            a = chunk.first_page(k).a
            mask = free.get(id(a), np.zeros(a.nr, dtype=bool))
            # a folio's head holds its references; tails (head_off != 0) go with it
            idle = ~mask & (a._refcount == 0) & (a.head_off == 0)
            for i in np.nonzero(idle)[0][:5]:
                problems.append(
                    f"{name}: device page {a.base + int(i):#x} is neither free in the "
                    "driver nor referenced (lost to the driver)"
                )
    return problems


def dmirror_check_device_pages_slow(k) -> list[str]:
    """dmirror_check_device_pages() as one gather per page column (its
    specification: the fast form must report exactly what this reports).

    Every device page is in exactly one state.

    A page on a driver free list (a free large folio covers its tail pages)
    has no reference, no mapping, no lock and no folio->mapping, and is
    listed once; a page of a live chunk that is not on a free list belongs to
    a folio with a reference (mapped by a device entry, isolated for a
    migration, or held by the driver). Not kernel code: the checker's view of
    what lib/test_hmm.c's free lists promise.
    """
    from hmmsim.include.mm_types import PG_locked

    problems: list[str] = []
    for name, d in sorted(k.devices.items()):
        if not isinstance(d, dmirror_device):
            continue
        free: dict[int, np.ndarray] = {}  # id(PageArrays) -> bool mask
        for lst, n in ((d.free_pages, 1), (d.free_folios, HPAGE_PMD_NR)):
            if not lst.items:
                continue
            items = lst.as_array()
            for aid, a in enumerate(lst.arrays):
                idx = items[(items >> 32) == aid] & 0xFFFFFFFF
                if not idx.size:
                    continue
                idx = (idx[:, None] + np.arange(n)[None, :]).ravel()
                mask = free.setdefault(id(a), np.zeros(a.nr, dtype=bool))
                counts = np.bincount(idx, minlength=a.nr)
                for i in np.nonzero((counts > 1) | (mask & (counts > 0)))[0][:5]:
                    problems.append(f"{name}: device page {a.base + int(i):#x} is free twice")
                mask[idx] = True
                checks = (
                    (a._refcount[idx] != 0, "a reference"),
                    (a._mapcount[idx] != -1, "a mapping"),
                    (a.mapping[idx] != 0, "a stale folio->mapping"),
                    ((a.flags[idx] & PG_locked) != 0, "the page lock"),
                )
                for bad, what in checks:
                    for i in idx[bad][:5]:
                        problems.append(f"{name}: free device page {a.base + int(i):#x} has {what}")
        for chunk in d.devmem_chunks:
            if chunk.remove:
                continue
            a = chunk.first_page(k).a
            mask = free.get(id(a), np.zeros(a.nr, dtype=bool))
            # a folio's head holds its references; tails (head_off != 0) go with it
            idle = ~mask & (a._refcount == 0) & (a.head_off == 0)
            for i in np.nonzero(idle)[0][:5]:
                problems.append(
                    f"{name}: device page {a.base + int(i):#x} is neither free in the "
                    "driver nor referenced (lost to the driver)"
                )
    return problems


class dmirror_device(dmirror_devmem, dmirror_fops, dmirror_devmem_fault_ops):
    """struct dmirror_device: one /dev/hmm_dmirrorN, its memory type, chunks,
    free lists and counters.

    The methods come by concern: dmirror_devmem (devmem.py: chunks, device
    page allocation, the folio_free and folio_split callbacks), dmirror_fops
    (ioctl.py: open, mmap, release, unlocked_ioctl) and
    dmirror_devmem_fault_ops (migrate.py: the migrate_to_ram callback).

    Model-only fields: devmem_of_pgmap (id(pgmap) -> its chunk, the model's
    container_of), i_mmap and i_count (the character device as the vm_file
    of its mappings), frame_copy_scratch and bounce_scratch (host buffers
    the fast layer reuses, issue 7).
    """

    __slots__ = (
        "k",
        "minor",
        "zone_device_type",
        "spm_addr",
        "devmem_chunks",
        "devmem_of_pgmap",
        "devmem_capacity",
        "devmem_lock",
        "lock",
        "calloc",
        "cfree",
        "i_mmap",
        "i_count",
        "free_pages",
        "free_folios",
        "ops",
        "frame_copy_scratch",
        "bounce_scratch",
    )

    def __init__(self, k, minor: int, zone_device_type: int, spm_addr: int = 0) -> None:
        self.k = k
        self.minor = minor
        self.zone_device_type = zone_device_type
        self.spm_addr = spm_addr
        self.devmem_chunks: list[dmirror_chunk] = []
        self.devmem_of_pgmap: dict[int, dmirror_chunk] = {}
        self.devmem_capacity = 0
        self.devmem_lock = Lock(k, f"dmirror{minor}.devmem_lock")
        self.lock = Lock(k, f"dmirror{minor}.lock")
        self.calloc = 0
        self.cfree = 0
        self.i_mmap: set = set()
        self.i_count = 0
        self.free_pages = _FreeList(k)
        self.free_folios = _FreeList(k)
        self.ops = dev_pagemap_ops(
            folio_free=self.dmirror_devmem_free,
            migrate_to_ram=self.dmirror_devmem_fault,
            folio_split=self.dmirror_devmem_folio_split,
            folio_free_bulk=self.dmirror_devmem_free_bulk,  # model-only (issue 7)
        )
        self.frame_copy_scratch = None
        self.bounce_scratch = None

    def __repr__(self) -> str:
        kind = "private" if self.is_private_zone() else "coherent"
        return f"<dmirror_device {self.minor} {kind} chunks={len(self.devmem_chunks)}>"


def hmm_dmirror_init(k) -> list[dmirror_device]:
    """Load the module: register /dev/hmm_dmirror0..3 on Kernel k.

    Devices 2 and 3 are device-coherent; the model reserves two 256 MiB
    "special purpose memory" ranges for them (minor 2 uses spm_addr_dev1,
    minor 3 spm_addr_dev0, as the C does).
    """
    spm = []
    for _ in range(2):
        res = k.iomem.request_free_mem_region(DEVMEM_CHUNK_SIZE, "Soft Reserved (SPM)")
        if isinstance(res, int):
            raise MemoryError("hmm_dmirror_init: no physical address space for the SPM ranges")
        spm.append(res.start)
    spm_addr_dev0, spm_addr_dev1 = spm
    devices = [
        dmirror_device(k, 0, HMM_DMIRROR_MEMORY_DEVICE_PRIVATE),
        dmirror_device(k, 1, HMM_DMIRROR_MEMORY_DEVICE_PRIVATE),
        dmirror_device(k, 2, HMM_DMIRROR_MEMORY_DEVICE_COHERENT, spm_addr_dev1),
        dmirror_device(k, 3, HMM_DMIRROR_MEMORY_DEVICE_COHERENT, spm_addr_dev0),
    ]
    for d in devices:
        ret, _ = d.dmirror_allocate_chunk(False, False)
        if ret:
            raise MemoryError(f"hmm_dmirror_init: device {d.minor} chunk failed ({ret})")
        k.devices[f"/dev/hmm_dmirror{d.minor}"] = d
    if dmirror_check_device_pages not in k.invariant_hooks:
        k.invariant_hooks.append(dmirror_check_device_pages)
    return devices

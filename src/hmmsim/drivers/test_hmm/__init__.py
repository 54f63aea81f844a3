"""The dmirror test driver: a simulated device that mirrors a process and owns memory.

Models: lib/test_hmm.c @ torvalds/linux 0eaed89c18ae (linux-mm 05ab5121):
four /dev/hmm_dmirrorN devices (0, 1 MEMORY_DEVICE_PRIVATE; 2, 3
MEMORY_DEVICE_COHERENT), a per-open mirror with its own device page table
kept coherent through an interval notifier, 256 MiB device memory chunks on
dev_pagemaps, the FAIL_ALLOC flag, eviction on close and RELEASE,
migrate_to_ram and every ioctl of lib/test_hmm_uapi.h.

One module per concern (names as in the C):

- devmem.py: chunks, dmirror_allocate_chunk, device page alloc/free, the
  folio_free and folio_split callbacks, eviction; BACKING_PAGE, constants.
- mirror.py: struct dmirror, its page table, the interval notifier,
  fault/read/write/snapshot.
- ioctl.py: dmirror_fops_* and the command dispatch, exclusive access,
  CHECK_EXCLUSIVE, FLAGS, RELEASE.
- migrate.py: migration to device and to system memory, alloc_and_copy,
  finalize_and_map, the migrate_to_ram callback.
- uaccess.py: bounce buffers and user copies.
- device.py: struct dmirror_device and hmm_dmirror_init (module load).

The bulk NumPy forms of the loops are in hmmsim/fast/test_hmm.py, offered
each run by one line at the top of the loop (docs/design.md, "Fast paths").

The driver uses only what a real driver may call: migrate_vma_*,
migrate_device_*, hmm_range_fault, the interval-notifier API,
make_device_exclusive, memremap_pages (or memremap_device_private_pagemap
under series (c)), zone_device_folio_init, folio/page helpers and
page->zone_device_data; tests/unit/test_driver_api.py holds it to that.
"""

from hmmsim.drivers.test_hmm.device import (
    dmirror_check_device_pages,
    dmirror_device,
    hmm_dmirror_init,
)
from hmmsim.drivers.test_hmm.devmem import (
    BACKING_PAGE,
    DEVMEM_CHUNK_SIZE,
    DEVMEM_CHUNKS_RESERVE,
    DMIRROR_NDEVICES,
    DMIRROR_RANGE_FAULT_TIMEOUT,
    DPT_XA_TAG_ATOMIC,
    DPT_XA_TAG_WRITE,
    PFNS_ARRAY_SIZE,
    ULONG_MAX,
    dmirror_chunk,
    driver_folio_put,
    folio_alloc,
)
from hmmsim.drivers.test_hmm.migrate import _hole_dst_writable
from hmmsim.drivers.test_hmm.mirror import (
    dmirror,
    dmirror_fault_window,
    hmm_pfn_to_page,
)
from hmmsim.drivers.test_hmm.uaccess import (
    check_user_ptr,
    dmirror_bounce,
    dmirror_bounce_fini,
    dmirror_bounce_init,
)

__all__ = [
    "BACKING_PAGE",
    "DEVMEM_CHUNKS_RESERVE",
    "DEVMEM_CHUNK_SIZE",
    "DMIRROR_NDEVICES",
    "DMIRROR_RANGE_FAULT_TIMEOUT",
    "DPT_XA_TAG_ATOMIC",
    "DPT_XA_TAG_WRITE",
    "PFNS_ARRAY_SIZE",
    "ULONG_MAX",
    "_hole_dst_writable",
    "check_user_ptr",
    "dmirror",
    "dmirror_bounce",
    "dmirror_bounce_fini",
    "dmirror_bounce_init",
    "dmirror_check_device_pages",
    "dmirror_chunk",
    "dmirror_device",
    "dmirror_fault_window",
    "driver_folio_put",
    "folio_alloc",
    "hmm_dmirror_init",
    "hmm_pfn_to_page",
]

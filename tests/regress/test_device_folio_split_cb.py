"""Regression: splitting a PTE-mapped device-private THP must call pgmap->ops->folio_split.

Found by `hmmsim explore thp_split_vs_fault_page`: split_folio() divided the
device folio but not the driver's backing folio, so migrate_to_ram allocated a
PMD-sized destination for an order-0 source, migrate_vma_pages refused the
pair, and the CPU fault retried forever (a livelock).
"""

import numpy as np

from hmmsim.drivers.test_hmm import BACKING_PAGE, hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd
from hmmsim.include.mm_types import folio_order, page_folio
from hmmsim.include.mman import (
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    O_RDWR,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.kconfig import PMD_SIZE
from hmmsim.kernel import Kernel
from hmmsim.testing.invariants import check_invariants
from hmmsim.userspace import entry_at


def test_cpu_fault_on_split_device_thp_migrates_one_page():
    k = Kernel(ram_bytes=64 << 20, hugetlb_pages=0)
    hmm_dmirror_init(k)
    p = k.spawn()
    a = p.mmap(0, 2 * PMD_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    h = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    p.madvise(a, 2 * PMD_SIZE, MADV_HUGEPAGE)
    data = np.arange(PMD_SIZE // 4, dtype=np.int32)
    p.store_array(h, data)
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    mirror = np.zeros(PMD_SIZE // 4, dtype=np.int32)
    assert (
        p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd(addr=h, ptr=mirror, npages=512))
        == 0
    )
    p.munmap(h + PMD_SIZE - 4096, 4096)  # the device PMD becomes 511 PTEs
    assert (p.load_array(h, 4) == data[:4]).all()  # one page comes back
    assert entry_at(p, h)[1] & 1
    dpage = k.softleaf_to_page(k.swp.softleaf_from_pte(entry_at(p, h + 4096)[1]))
    assert folio_order(page_folio(dpage)) == 0
    assert folio_order(page_folio(BACKING_PAGE(dpage))) == 0  # the callback ran
    check_invariants(k)
    assert (p.load_array(h, (PMD_SIZE - 4096) // 4) == data[: (PMD_SIZE - 4096) // 4]).all()
    p.close(fd)
    check_invariants(k)

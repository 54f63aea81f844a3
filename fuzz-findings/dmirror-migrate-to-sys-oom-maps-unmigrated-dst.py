# ruff: noqa
"""Found by fault injection (hmmsim.testing.inject, site alloc_pages, 2nd hit).

lib/test_hmm.c's MIGRATE_TO_SYS (kernel-reference 6): when
dmirror_devmem_fault_alloc_and_copy() runs out of memory after it has filled
some dst slots (pages allocated, locked, copied), the driver calls
migrate_vma_finalize() without migrate_vma_pages(). Finalize sees src
MIGRATE and a dst page, so it maps the dst page in place of the source; that
page never got the source's anon mapping (migrate_vma_pages does that), so
it is mapped as a non-anon page and the mm's rss counters no longer match
the page tables (at exit the kernel would report a bad rss-counter state).
A driver bug in the test module, faithful in the model; reproduces by design.
"""

import sys

import numpy as np

from hmmsim.drivers.test_hmm import hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_MIGRATE_TO_SYS,
    hmm_dmirror_cmd,
)
from hmmsim.fault_inject import FaultInjector
from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, O_RDWR, PROT_READ, PROT_WRITE
from hmmsim.kernel import Kernel
from hmmsim.testing.invariants import check_invariants

k = Kernel(ram_bytes=64 << 20, hugetlb_pages=0)
hmm_dmirror_init(k)
p = k.spawn()
a = p.mmap(0, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
p.store_array(a, np.arange(8 * 1024, dtype=np.int32))
fd = p.open("/dev/hmm_dmirror0", O_RDWR)
buf = np.zeros(8 * 1024, dtype=np.int32)
assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd(addr=a, ptr=buf, npages=8)) == 0
k.fault_inject = FaultInjector({"alloc_pages"}, nth=2)  # the 2nd system page allocation fails
ret = p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_SYS, hmm_dmirror_cmd(addr=a, ptr=buf, npages=8))
k.fault_inject = None
print("MIGRATE_TO_SYS returned", ret)
problems = check_invariants(k, raise_on_error=False)
if problems:
    print("\n".join(problems))
    sys.exit(1)
print("replay finished: no failure reproduced")

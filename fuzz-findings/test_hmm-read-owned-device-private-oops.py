#!/usr/bin/env python3
"""lib/test_hmm.c: a device READ of pages that are on the same device oopses.

Found by the fuzzer (which now avoids it: World.dmirror_oops_hazard).
After MIGRATE_TO_DEV the mirror's pt holds the *backing* system pages. Any
invalidation (here mprotect) empties pt while the CPU still maps the pages
as device-private entries of that device. A later READ through the same
mirror calls dmirror_fault(): hmm_range_fault() reports owned device-private
entries without faulting them (dev_private_owner matches), dmirror_do_fault()
stores hmm_pfn_to_page() -- the ZONE_DEVICE page itself -- in pt, and
dmirror_do_read() then memcpy_from_page()s it. Device-private pages have no
linear mapping (memremap_pages only add_pages them), so the C driver oopses;
the model raises KernelOops("page_address", ...) at the same point. WRITE is
the same through dmirror_do_write(). Faithful to the kernel: not a model bug.
Exit status 1 (KernelOops) while the driver behaves like the C.
"""

import numpy as np

from hmmsim.drivers.test_hmm import hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_READ,
    hmm_dmirror_cmd,
)
from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, O_RDWR, PROT_READ, PROT_WRITE
from hmmsim.kernel import Kernel

k = Kernel(ram_bytes=64 << 20, hugetlb_pages=0)
hmm_dmirror_init(k)
p = k.spawn()
fd = p.open("/dev/hmm_dmirror0", O_RDWR)
a = p.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
p.store(a, b"hello")
buf = np.zeros(4096, np.uint8)
assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd(addr=a, ptr=buf, npages=1)) == 0
assert p.mprotect(a, 4096, PROT_READ) == 0  # invalidates the mirror; the page stays on the device
ret = p.ioctl(fd, HMM_DMIRROR_READ, hmm_dmirror_cmd(addr=a, ptr=buf, npages=1))  # KernelOops
print("replay finished: no failure reproduced", ret)

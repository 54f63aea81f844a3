#!/usr/bin/env python3
"""lib/test_hmm.c: READ/WRITE through an fd whose mirrored mm is gone spin forever.

Found by the fuzzer (which now never issues them: World._ioctl skips them).
The fd is inherited by a child; the opener exits, so its mm has no users.
dmirror_read() loops "do_read -> -ENOENT -> dmirror_fault()"; dmirror_fault()
returns 0 when mmget_not_zero() fails, so nothing is faulted in and the loop
never ends (the other commands return -EINVAL on that check). Faithful to the
C driver: not a model bug. This script stops the spin with an alarm after
5 s and exits 1 while the driver behaves like the C.
"""

import signal
import sys

import numpy as np

from hmmsim.drivers.test_hmm import hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import HMM_DMIRROR_READ, hmm_dmirror_cmd
from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, O_RDWR, PROT_READ, PROT_WRITE
from hmmsim.kernel import Kernel


def spinning(signum, frame):
    print("HMM_DMIRROR_READ still running after 5 s: dmirror_read() livelock", file=sys.stderr)
    sys.exit(1)


k = Kernel(ram_bytes=64 << 20, hugetlb_pages=0)
hmm_dmirror_init(k)
parent = k.spawn()
fd = parent.open("/dev/hmm_dmirror0", O_RDWR)
a = parent.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
child = parent.child(parent.fork())
parent._exit(0)
signal.signal(signal.SIGALRM, spinning)
signal.alarm(5)
buf = np.zeros(4096, np.uint8)
ret = child.ioctl(fd, HMM_DMIRROR_READ, hmm_dmirror_cmd(addr=a, ptr=buf, npages=1))
print("replay finished: no failure reproduced", ret)

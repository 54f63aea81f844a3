"""dmirror_fault when the mirrored mm has no users left (lib/test_hmm.c).

The opener forks, the child inherits the dmirror fd and the opener exits,
so mmget_not_zero fails in dmirror_fault, which returns -EFAULT: READ and
WRITE fail with -EFAULT (Linux 6.12.117 and the newest stored linux-mm
lib/test_hmm.c). The model returned 0, as the driver did before 2026, and
the READ went round "-ENOENT, fault" for ever (docs/findings.md,
test_hmm-read-after-opener-exit-livelock).
"""

from __future__ import annotations

import pytest

from hmmsim.drivers.test_hmm import hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import HMM_DMIRROR_READ, HMM_DMIRROR_WRITE
from hmmsim.errno import EFAULT
from hmmsim.findings import replays
from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from hmmsim.kconfig import KConfig
from hmmsim.kernel import Kernel
from hmmsim.locking import Livelock

PAGE = 4096
O_RDWR = 2


def _orphaned_mirror(kernel: str):
    k = Kernel(config=KConfig(kernel=kernel, ram_bytes=64 << 20, hugetlb_pages=0))
    hmm_dmirror_init(k)
    parent = k.spawn()
    fd = parent.open("/dev/hmm_dmirror0", O_RDWR)
    a = parent.mmap(0, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    child = parent.child(parent.fork())
    parent._exit(0)
    return k, child, fd, a


@pytest.mark.parametrize("kernel", ["mainline", "6.12"])
@pytest.mark.parametrize("cmd", [HMM_DMIRROR_READ, HMM_DMIRROR_WRITE])
def test_fault_on_dead_mm_is_efault(cmd, kernel, monkeypatch):
    k, child, fd, a = _orphaned_mirror(kernel)
    mirror_cls = type(child.fds[fd].private)
    real_fault = mirror_cls.dmirror_fault
    calls = []

    def bounded_fault(self, start, end, write):
        calls.append(start)
        if len(calls) > 16:
            raise Livelock("dmirror_fault keeps returning 0 on a dead mm")
        return real_fault(self, start, end, write)

    monkeypatch.setattr(mirror_cls, "dmirror_fault", bounded_fault)
    c = replays._cmd(a, 1)
    assert child.ioctl(fd, cmd, c) == -EFAULT
    assert c.faults == 0
    assert len(calls) == 1

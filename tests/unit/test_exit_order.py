"""_exit tears the mm down before it closes the files (kernel/exit.c do_exit).

do_exit() runs exit_mm() before exit_files(), and a file's ->release only
runs later from task work. So a dmirror whose last fd is the exiting
process's still has its interval notifier registered while the mm goes
(it sees the MMU_NOTIFY_RELEASE invalidation), and the process's
device-private pages are freed by exit_mmap's zap before
dmirror_fops_release evicts (migrates back) what is left on its device.
"""

import numpy as np
import pytest

from hmmsim.drivers.test_hmm_uapi import HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd
from hmmsim.include.mman import (
    MAP_ANONYMOUS,
    MAP_FIXED_NOREPLACE,
    MAP_PRIVATE,
    O_RDWR,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.include.mmu_notifier import MMU_NOTIFY_RELEASE
from hmmsim.kconfig import PAGE_SIZE
from hmmsim.selftests.hmm_tests import make_kernel, selftest_config
from hmmsim.testing.invariants import check_invariants

BASE = 0x100000000
N = 4


@pytest.fixture
def env():
    k = make_kernel(selftest_config())
    p = k.spawn()
    flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE
    a = p.mmap(BASE, N * PAGE_SIZE, PROT_READ | PROT_WRITE, flags)
    p.store(a, b"x" * N * PAGE_SIZE)
    dev = p.open("/dev/hmm_dmirror0", O_RDWR)
    buf = np.zeros(N * PAGE_SIZE, dtype=np.uint8)
    cmd = hmm_dmirror_cmd(addr=a, ptr=buf, npages=N)
    assert p.ioctl(dev, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == 0 and cmd.cpages == N
    yield k, p, dev
    assert not k.warnings
    check_invariants(k)


def test_mirror_sees_the_mm_released_before_its_file_closes(env, monkeypatch):
    k, p, dev = env
    d = p.fds[dev].private
    seen = []
    orig_invalidate = type(d).invalidate

    def invalidate(self, mni, r, cur_seq):
        seen.append(("invalidate", r.event))
        return orig_invalidate(self, mni, r, cur_seq)

    # the driver objects declare their fields (__slots__): patch the class
    monkeypatch.setattr(type(d), "invalidate", invalidate)
    f = p.fds[dev]
    orig_release = type(f.obj).release

    def release(self, file):
        seen.append(("release", None))
        return orig_release(self, file)

    monkeypatch.setattr(type(f.obj), "release", release)
    p._exit(0)
    assert seen[0] == ("invalidate", MMU_NOTIFY_RELEASE)
    assert seen[-1] == ("release", None)
    assert ("invalidate", MMU_NOTIFY_RELEASE) in seen[:-1]


def test_exit_frees_device_pages_without_migrating_them_back(env):
    """The zap frees the process's device-private pages: the release that
    follows has nothing of it to evict, so the exit allocates no memory."""
    k, p, dev = env
    calls = []

    def no_memory(order):
        calls.append(order)
        return True

    k.mem.should_fail_alloc = no_memory
    p._exit(0)
    k.mem.should_fail_alloc = None
    assert calls == []
    assert not p.alive and not p.fds

"""/proc/self/pagemap words: present, swap-like leaves, exclusivity, errors."""

import struct

import numpy as np

from hmmsim.errno import EACCES, EBADF, EINVAL
from hmmsim.fs.task_mmu import PM_FILE, PM_MMAP_EXCLUSIVE, PM_PRESENT, PM_SOFT_DIRTY, PM_SWAP
from hmmsim.include.mman import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    O_RDONLY,
    O_RDWR,
    PROT_READ,
    PROT_WRITE,
)

RW = PROT_READ | PROT_WRITE


def word(p, fd, addr):
    data = p.pread(fd, 8, (addr >> 12) * 8)
    return struct.unpack("<Q", data)[0]


def test_present_absent_exclusive_and_shared(k, proc):
    a = proc.mmap(0, 3 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    proc.store(a, b"x")
    s = proc.mmap(0, 4096, RW, MAP_SHARED | MAP_ANONYMOUS)
    proc.store(s, b"y")
    fd = proc.open("/proc/self/pagemap", O_RDONLY)
    w = word(proc, fd, a)
    assert w & PM_PRESENT and w & PM_MMAP_EXCLUSIVE and not w & PM_SWAP
    assert w & ((1 << 55) - 1) == 0  # unprivileged: no PFN
    assert word(proc, fd, a + 4096) == PM_SOFT_DIRTY  # a hole of a VM_SOFTDIRTY vma
    assert word(proc, fd, s) & (PM_PRESENT | PM_FILE) == PM_PRESENT | PM_FILE
    child = proc.child(proc.fork())
    assert not word(proc, fd, a) & PM_MMAP_EXCLUSIVE  # now mapped twice
    child._exit(0)
    proc.waitpid(child.pid)
    assert proc.pread(fd, 4, 0) == -EINVAL
    assert proc.pwrite(fd, b"x" * 8, 0) == -EBADF
    assert proc.open("/proc/self/pagemap", O_RDWR) == -EACCES


def test_device_private_pages_read_as_swapped(k, proc):
    from hmmsim.drivers.test_hmm import hmm_dmirror_init
    from hmmsim.drivers.test_hmm_uapi import HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd

    hmm_dmirror_init(k)
    a = proc.mmap(0, 2 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    proc.store_array(a, np.arange(2048, dtype=np.int32))
    dev = proc.open("/dev/hmm_dmirror0", O_RDWR)
    mirror = np.zeros(2048, dtype=np.int32)
    assert (
        proc.ioctl(dev, HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd(addr=a, ptr=mirror, npages=2))
        == 0
    )
    fd = proc.open("/proc/self/pagemap", O_RDONLY)
    for off in (0, 4096):
        w = word(proc, fd, a + off)
        assert w & PM_SWAP and not w & PM_PRESENT
    proc.close(dev)

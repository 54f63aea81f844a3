#!/usr/bin/env python3
# ruff: noqa: F401, E501  (generated: every replay script imports the whole vocabulary)
"""hmmsim fuzz replay: invariant: pid #: rss anon counter # but # pages mapped (+# more)

Found by `hmmsim fuzz --steps 200000 --seed 1` (sequence 364; features d+e).
After RELEASE the coherent dmirror2 has no chunk, so a THP migration gets a
fresh chunk and a PMD-mapped device-coherent THP. A MIGRATE_TO_DEV of one
page of it through device-private dmirror1 splits that folio
(folio_split_unmapped), and huge_memory._zone_device_split_cb() calls
pgmap->ops->folio_split for every ZONE_DEVICE folio. The kernel's
zone_device_private_split_cb() calls it only if folio_is_device_private();
test_hmm's callback treats a coherent page as its own backing page: it
clears the head's anon mapping (the head is then counted as a file page) and
registers a driver reference on every tail (refcount 1, 2 references).

Run it with the Python that has hmmsim installed: it exits non-zero (an
AssertionError, an exception from the model, or an InvariantViolation) while
the failure reproduces, and prints "no failure reproduced" once it is fixed.
"""

import base64
import zlib

import numpy as np

from hmmsim.drivers.test_hmm import hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_CHECK_EXCLUSIVE,
    HMM_DMIRROR_EXCLUSIVE,
    HMM_DMIRROR_FLAG_FAIL_ALLOC,
    HMM_DMIRROR_FLAGS,
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_MIGRATE_TO_SYS,
    HMM_DMIRROR_READ,
    HMM_DMIRROR_RELEASE,
    HMM_DMIRROR_SNAPSHOT,
    HMM_DMIRROR_WRITE,
    hmm_dmirror_cmd,
)
from hmmsim.include.mman import (
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_FIXED_NOREPLACE,
    MAP_POPULATE,
    MAP_PRIVATE,
    MAP_SHARED,
    MREMAP_DONTUNMAP,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    O_RDWR,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.kernel import Kernel
from hmmsim.testing.invariants import check_invariants
from hmmsim.userspace import BusError, OutOfMemory, SegmentationFault

ALLOWED_WARNINGS = (
    "dmirror_do_fault: write requested but not granted",
    "memremap_pages: Conflicting mapping in same section",
)


def fill(tag, n):
    """n bytes of little-endian words (tag << 32) | index, as the fuzzer wrote them."""
    words = np.arange((n + 7) // 8, dtype=np.uint64) | np.uint64((tag & 0xFFFFFFFF) << 32)
    return words.view(np.uint8)[:n].tobytes()


def blob(*parts):
    return zlib.decompress(base64.b85decode("".join(parts)))


def expect_bytes(got, want, what):
    got = bytes(got)
    if got != want:
        diff = [i for i in range(min(len(got), len(want))) if got[i] != want[i]]
        first = diff[0] if diff else min(len(got), len(want))
        raise AssertionError(
            f"{what}: {len(diff)} of {len(want)} bytes differ, first at +{first:#x}: "
            f"expected {want[first : first + 16].hex()} got {got[first : first + 16].hex()}"
        )


def expect_signal(exc, fn, *args):
    try:
        fn(*args)
    except exc:
        return
    raise AssertionError(f"{fn.__name__}{args!r:.60} did not raise {exc.__name__}")


def warnings_ok():
    bad = [w.msg for w in k.warnings if w.msg not in ALLOWED_WARNINGS]
    assert not bad, f"unexpected kernel warnings: {bad}"


def ok():
    check_invariants(k)
    warnings_ok()


k = Kernel(ram_bytes=0x10000000, hugetlb_pages=0, features=frozenset({"d", "e"}))
hmm_dmirror_init(k)
k.thp_enabled = "madvise"

# step 0: p0 = spawn()
p0 = k.spawn()
ok()
# step 1: fd4 = p0.open('/dev/hmm_dmirror2')
fd4 = p0.open("/dev/hmm_dmirror2", O_RDWR)
assert fd4 >= 0, fd4
ok()
# step 2: fd9 = p0.open('/dev/hmm_dmirror1')
fd9 = p0.open("/dev/hmm_dmirror1", O_RDWR)
assert fd9 >= 0, fd9
ok()
# step 3: p0.ioctl(fd4, RELEASE)
buf = np.zeros(0x1000, np.uint8)
ret = p0.ioctl(fd4, HMM_DMIRROR_RELEASE, hmm_dmirror_cmd(addr=0x0, ptr=buf, npages=1))
assert ret == 0, ret
ok()
# step 4: p0.mmap(0x100000e00000, 512p, PROT_READ | PROT_WRITE, private fixed)
ret = p0.mmap(
    0x100000E00000, 0x200000, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED
)
assert ret == 0x100000E00000, ret
ok()
# step 5: p0.ioctl(fd4, MIGRATE_TO_DEV, 0x100000e00000, 512p)
buf = np.zeros(0x200000, np.uint8)
ret = p0.ioctl(
    fd4, HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd(addr=0x100000E00000, ptr=buf, npages=512)
)
assert ret == 0, ret
ok()
# step 6: p0.ioctl(fd9, MIGRATE_TO_DEV, 0x100000f62000, 1p)
buf = np.zeros(0x1000, np.uint8)
ret = p0.ioctl(
    fd9, HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd(addr=0x100000F62000, ptr=buf, npages=1)
)
assert ret == -2, ret
ok()
# the failure: invariant at step 6: pid 1: rss anon counter 512 but 511 pages mapped (+11 more)

print("replay finished: no failure reproduced")

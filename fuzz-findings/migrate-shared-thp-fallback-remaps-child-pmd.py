#!/usr/bin/env python3
# ruff: noqa: F401, E501  (generated: every replay script imports the whole vocabulary)
"""hmmsim fuzz replay: invariant: PMD at # maps pfn # that is not a folio head (+# more)

A THP shared by parent and child after fork is migrated (parent's range,
MIGRATE_TO_DEV to device-coherent dmirror3) with no free device folio, so the
driver falls back to 512 order-0 device pages. The parent ends up with 512
PTEs, but the child's PMD migration entry is restored as a huge PMD mapping
a single order-0 device page (pfn 0x3fffffe00, the last destination page):
"PMD maps pfn that is not a folio head", refcounts off by one, and the
child's bytes come from the wrong pages. Status (model reviewed against mm/migrate_device.c and mm/page_vma_mapped.c):
this looks like an upstream bug, not a model bug. The kernel's
migrate_vma_split_unmapped_folio() splits only migrate->vma's PMD
(split_huge_pmd_address) before folio_split_unmapped(); the child's PMD
migration entry survives the split. In finalize, remove_migration_ptes() on
the first order-0 source finds that PMD entry (check_pmd() matches any pfn it
covers) and remove_migration_pte() hits VM_BUG_ON_FOLIO(!pmd_mappable); with
CONFIG_DEBUG_VM off it would install a huge PMD naming an order-0 page. The
model now raises that KernelBug instead of building the bad PMD.

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

ALLOWED_WARNINGS = ("dmirror_do_fault: write requested but not granted",)


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


k = Kernel(ram_bytes=0x10000000, hugetlb_pages=0, features=frozenset({"d"}))
hmm_dmirror_init(k)
k.thp_enabled = "always"

# step 0: p0 = spawn()
p0 = k.spawn()
ok()
# step 1: fd0 = p0.open('/dev/hmm_dmirror3')
fd0 = p0.open("/dev/hmm_dmirror3", O_RDWR)
assert fd0 >= 0, fd0
ok()
# step 2: p0.mmap(0x100000a00000, 512p, PROT_READ | PROT_WRITE, private noreplace)
ret = p0.mmap(
    0x100000A00000,
    0x200000,
    PROT_READ | PROT_WRITE,
    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
)
assert ret == 0x100000A00000, ret
ok()
# step 3: p0.store(0x100000bd7935, fill(22, 12))
p0.store(0x100000BD7935, fill(22, 12))
ok()
# step 4: p3 = p0.fork()
p3 = p0.child(p0.fork())
ok()
# step 5: p0.ioctl(fd0, MIGRATE_TO_DEV, 0x100000a00000, 512p)
buf = np.zeros(0x200000, np.uint8)
ret = p0.ioctl(
    fd0, HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd(addr=0x100000A00000, ptr=buf, npages=512)
)
assert ret == 0, ret
ok()
# the failure: invariant at step 5: PMD at 0x100000a00000 maps pfn 0x3fffffe00 that is not a folio head (+3 more)

print("replay finished: no failure reproduced")

"""Integers crossing the user/kernel boundary have their C types (issue 13 part 1).

Every syscall argument and every hmm_dmirror_cmd field is reduced like the C
type the kernel reads (unsigned long / size_t / __u64 modulo 2**64, int
modulo 2**32, off_t signed 64) and the entry checks run on those values, in
the kernel's order (mm/mmap.c do_mmap and __get_unmapped_area, mm/mremap.c
check_mremap_params, mm/mprotect.c do_mprotect_pkey, mm/madvise.c,
fs/read_write.c, fs/open.c, lib/test_hmm.c dmirror_fops_unlocked_ioctl).
After every call the invariants hold and the other mapping's data is intact.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

import numpy as np
import pytest

from hmmsim.bug import KernelOops
from hmmsim.drivers.test_hmm import hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_CHECK_EXCLUSIVE,
    HMM_DMIRROR_EXCLUSIVE,
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_MIGRATE_TO_SYS,
    HMM_DMIRROR_READ,
    HMM_DMIRROR_RELEASE,
    HMM_DMIRROR_SNAPSHOT,
    HMM_DMIRROR_WRITE,
    hmm_dmirror_cmd,
)
from hmmsim.errno import EBADF, EFAULT, EINVAL, ENOMEM, EOVERFLOW, EPERM
from hmmsim.include.mman import (
    MADV_DONTNEED,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_NORESERVE,
    MAP_PRIVATE,
    MAP_SHARED,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    O_RDWR,
    O_TMPFILE,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.include.uapi_types import c_int, loff_t, size_t, u32, u64
from hmmsim.kernel import Kernel
from hmmsim.testing.invariants import check_invariants
from hmmsim.userspace import SegmentationFault

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
PAGE = 4096
#: the victim mapping lies below A, so a call that runs from A upwards never covers it
VICTIM = 0x1000_0000
A = 0x2000_0000_0000
NA = 4  # pages mapped at A

VALUES = [0, 1, 1 << 31, 1 << 32, 1 << 52, 1 << 63, (1 << 64) - 1, -1, -4096]
IDS = ["0", "1", "2^31", "2^32", "2^52", "2^63", "2^64-1", "-1", "-4096"]


class World:
    def __init__(self) -> None:
        self.k = Kernel(ram_bytes=64 << 20)
        hmm_dmirror_init(self.k)
        self.p = self.k.spawn()
        p = self.p
        assert p.mmap(VICTIM, 2 * PAGE, RW, ANON | MAP_FIXED) == VICTIM
        self.secret = np.arange(2 * 1024, dtype=np.int32) * 7 + 3
        p.store_array(VICTIM, self.secret)
        assert p.mmap(A, NA * PAGE, RW, ANON | MAP_FIXED) == A
        p.store_array(A, np.arange(NA * 1024, dtype=np.int32))

    def vmas(self):
        return [(v.vm_start, v.vm_end, v.vm_flags) for v in self.p.mm.vmas]

    def ok(self) -> None:
        check_invariants(self.k)
        assert (self.p.load_array(VICTIM, 2 * 1024) == self.secret).all()
        assert not self.k.warnings, self.k.warnings


@pytest.fixture
def w():
    return World()


# --- the conversions ---------------------------------------------------------------------
def test_conversions_reduce_like_c():
    assert u64(-1) == (1 << 64) - 1 and u64(1 << 64) == 0 and size_t(-4096) == (1 << 64) - 4096
    assert c_int(1 << 31) == -(1 << 31) and c_int((1 << 32) + 3) == 3 and c_int(-1) == -1
    assert loff_t((1 << 64) - 1) == -1 and loff_t(1 << 63) == -(1 << 63)
    assert u32(-1) == 0xFFFFFFFF
    assert u64(True) == 1 and u64(np.int64(-2)) == (1 << 64) - 2 and c_int(np.uint64(7)) == 7


@pytest.mark.parametrize("bad", [1.0, "4096", None, np.array([1, 2]), 2.5j])
def test_non_integral_values_are_a_type_error_naming_the_parameter(w, bad):
    with pytest.raises(TypeError, match="length"):
        w.p.mmap(0, bad, RW, ANON)
    with pytest.raises(TypeError, match="new_address"):
        w.p.mremap(A, PAGE, PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, bad)
    with pytest.raises(TypeError, match="hmm_dmirror_cmd.npages"):
        fd = w.p.open("/dev/hmm_dmirror0", O_RDWR)
        w.p.ioctl(fd, HMM_DMIRROR_READ, hmm_dmirror_cmd(addr=A, ptr=None, npages=bad))
    w.ok()


# --- mmap --------------------------------------------------------------------------------
MMAP_FIXED_ADDR = [-EPERM, -EINVAL, 1 << 31, 1 << 32] + [-ENOMEM] * 5


@pytest.mark.parametrize("v,want", list(zip(VALUES, MMAP_FIXED_ADDR, strict=True)), ids=IDS)
def test_mmap_fixed_address(w, v, want):
    before = w.vmas()
    assert w.p.mmap(v, PAGE, RW, ANON | MAP_FIXED) == want
    if want < 0:
        assert w.vmas() == before
    w.ok()


MMAP_LENGTH = [-EINVAL, "ok", "ok", "ok"] + [-ENOMEM] * 5


@pytest.mark.parametrize("v,want", list(zip(VALUES, MMAP_LENGTH, strict=True)), ids=IDS)
def test_mmap_length(w, v, want):
    before = w.vmas()
    # MAP_NORESERVE: 2 and 4 GiB exceed the 64 MiB of RAM, which the default
    # overcommit policy refuses for an accounted mapping (tests/unit/test_overcommit.py)
    ret = w.p.mmap(0, v, RW, ANON | MAP_NORESERVE)
    if want == "ok":
        assert ret > 0 and w.p.mm.vmas and any(x.vm_start == ret for x in w.p.mm.vmas)
    else:
        assert ret == want and w.vmas() == before
    w.ok()


# anonymous: the offset only has to be page aligned; a tmpfs file: it must fit
# MAX_LFS_FILESIZE (file_mmap_ok: -EOVERFLOW)
MMAP_OFFSET_ANON = ["ok", -EINVAL, "ok", "ok", "ok", "ok", -EINVAL, -EINVAL, "ok"]
MMAP_OFFSET_FILE = ["ok", -EINVAL, "ok", "ok", "ok", -EOVERFLOW, -EINVAL, -EINVAL, -EOVERFLOW]


@pytest.mark.parametrize(
    "v,anon,file", list(zip(VALUES, MMAP_OFFSET_ANON, MMAP_OFFSET_FILE, strict=True)), ids=IDS
)
def test_mmap_offset(w, v, anon, file):
    fd = w.p.open("/tmp", O_TMPFILE | O_RDWR)
    for flags, f, want in ((ANON, -1, anon), (MAP_SHARED, fd, file)):
        before = w.vmas()
        ret = w.p.mmap(0, PAGE, RW, flags, f, v)
        if want == "ok":
            assert ret > 0
            assert w.p.munmap(ret, PAGE) == 0
        else:
            assert ret == want
        assert w.vmas() == before
        w.ok()


def test_mmap_fd_is_an_int():
    w = World()
    fd = w.p.open("/tmp", O_TMPFILE | O_RDWR)
    for v in VALUES:
        assert w.p.mmap(0, PAGE, RW, MAP_SHARED, v) == -EBADF
    ret = w.p.mmap(0, PAGE, RW, MAP_SHARED, (1 << 32) + fd)  # the same int fd
    assert ret > 0 and w.p.mm.vmas[-1].vm_file is not None
    w.ok()


def test_mmap_hint_below_mmap_min_addr_is_raised_to_it(w):
    """round_hint_to_min: a nonzero hint below mmap_min_addr becomes mmap_min_addr."""
    assert w.p.mmap(0x1000, PAGE, RW, ANON) == 0x10000
    w.ok()


# --- munmap ------------------------------------------------------------------------------
MUNMAP_ADDR = [0, -EINVAL, 0, 0] + [-EINVAL] * 5
MUNMAP_LEN = [-EINVAL, 0, 0, 0] + [-EINVAL] * 5


@pytest.mark.parametrize(
    "v,at_addr,at_len", list(zip(VALUES, MUNMAP_ADDR, MUNMAP_LEN, strict=True)), ids=IDS
)
def test_munmap(w, v, at_addr, at_len):
    before = w.vmas()
    assert w.p.munmap(v, PAGE) == at_addr
    assert w.vmas() == before  # nothing was mapped there
    w.ok()
    assert w.p.munmap(A, v) == at_len
    if at_len == 0:
        gone = PAGE if v == 1 else NA * PAGE
        assert w.vmas()[-1][0] == A + gone if gone < NA * PAGE else len(w.vmas()) == 1
    else:
        assert w.vmas() == before
    w.ok()


# --- mprotect ------------------------------------------------------------------------------
# (A, len): a range running past A's vma changes A and then finds the hole
MPROTECT_LEN = [0, 0, "A+ENOMEM", "A+ENOMEM", "A+ENOMEM", "A+ENOMEM", -ENOMEM, -ENOMEM, -ENOMEM]
MPROTECT_ADDR = [-ENOMEM, -EINVAL, -ENOMEM, -ENOMEM, -ENOMEM, -ENOMEM, -EINVAL, -EINVAL, -ENOMEM]
# prot is an int; with the sign extension a negative one carries both GROWS bits
MPROTECT_PROT = [0, 0, -EINVAL, 0, 0, 0, -EINVAL, -EINVAL, -EINVAL]


@pytest.mark.parametrize("v,want", list(zip(VALUES, MPROTECT_LEN, strict=True)), ids=IDS)
def test_mprotect_length(w, v, want):
    before = w.vmas()
    ret = w.p.mprotect(A, v, PROT_READ)
    if want == "A+ENOMEM":
        assert ret == -ENOMEM
        assert [x for x in w.vmas() if x[0] == A][0][2] & 0x2 == 0  # A is read-only now
    else:
        assert ret == want
        if v == 0 or want < 0:
            assert w.vmas() == before
    w.ok()


@pytest.mark.parametrize("v,want", list(zip(VALUES, MPROTECT_ADDR, strict=True)), ids=IDS)
def test_mprotect_address(w, v, want):
    before = w.vmas()
    assert w.p.mprotect(v, PAGE, PROT_READ) == want
    assert w.vmas() == before
    w.ok()


@pytest.mark.parametrize("v,want", list(zip(VALUES, MPROTECT_PROT, strict=True)), ids=IDS)
def test_mprotect_prot(w, v, want):
    before = w.vmas()
    assert w.p.mprotect(A, PAGE, v) == want
    if want < 0:
        assert w.vmas() == before
    w.ok()


# --- mremap --------------------------------------------------------------------------------
# A's whole vma: 1 byte shrinks it; growing the accounted (private writable)
# vma by 2 or 4 GiB is a charge larger than the 64 MiB of RAM, which the
# default overcommit policy refuses (mm/util.c __vm_enough_memory)
MREMAP_NEW_LEN = [-EINVAL, A, -ENOMEM, -ENOMEM] + [-EINVAL] * 5
# old_len 0 of a private mapping is -EINVAL; a shrink never checks the vma
# (mm/mremap.c shrink_vma, 6.12's old_len >= new_len branch): it unmaps the
# tail, so an old_len past the vma is fine while do_vmi_munmap accepts the
# tail, and -EINVAL once the tail runs past TASK_SIZE
MREMAP_OLD_LEN = [-EINVAL, A, A, A, -EINVAL, -EINVAL, -EINVAL, -EINVAL, -EINVAL]
MREMAP_NEW_ADDR = [-EPERM, -EINVAL, 1 << 31, 1 << 32] + [-EINVAL] * 5


@pytest.mark.parametrize("v,want", list(zip(VALUES, MREMAP_NEW_LEN, strict=True)), ids=IDS)
def test_mremap_new_len(w, v, want):
    before = w.vmas()
    assert w.p.mremap(A, NA * PAGE, v, MREMAP_MAYMOVE) == want
    if want < 0:
        assert w.vmas() == before
    else:
        assert w.vmas()[-1][:2] == (A, A + (PAGE if v == 1 else v))
    w.ok()


@pytest.mark.parametrize("v,want", list(zip(VALUES, MREMAP_OLD_LEN, strict=True)), ids=IDS)
def test_mremap_old_len(w, v, want):
    before = w.vmas()
    assert w.p.mremap(A, v, PAGE, MREMAP_MAYMOVE) == want
    if want < 0:
        assert w.vmas() == before
    else:
        assert w.vmas()[-1][:2] == (A, A + (NA * PAGE if v == 1 else PAGE))
    w.ok()


@pytest.mark.parametrize("v,want", list(zip(VALUES, MREMAP_NEW_ADDR, strict=True)), ids=IDS)
def test_mremap_fixed_new_address(w, v, want):
    """check_mremap_params: a "negative" (huge) or kernel new_addr is -EINVAL
    before any lookup; below mmap_min_addr is -EPERM (security_mmap_addr)."""
    before = w.vmas()
    assert w.p.mremap(A, PAGE, PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, v) == want
    if want < 0:
        assert w.vmas() == before
    else:
        assert (w.p.load_array(want, 1024) == np.arange(1024)).all()
    w.ok()


@pytest.mark.parametrize("new", [0x1000, 0xF000, 0x10000])
def test_mremap_fixed_below_mmap_min_addr_is_eperm(w, new):
    before = w.vmas()
    ret = w.p.mremap(A, PAGE, PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, new)
    if new < 0x10000:
        assert ret == -EPERM and w.vmas() == before
    else:
        assert ret == new
    w.ok()


def test_mremap_checks_params_before_the_lookup(w):
    """An unaligned new_addr is -EINVAL even where no vma is (not -EFAULT)."""
    assert w.p.mremap(0x5000_0000, PAGE, PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, 1) == -EINVAL
    assert w.p.mremap(0x5000_0000, PAGE, -PAGE, MREMAP_MAYMOVE) == -EINVAL
    w.ok()


# --- madvise -------------------------------------------------------------------------------
MADV_LEN = [0, 0, -ENOMEM, -ENOMEM, -ENOMEM, -ENOMEM, -EINVAL, -EINVAL, -EINVAL]
MADV_ADDR = [-ENOMEM, -EINVAL, -ENOMEM, -ENOMEM, -ENOMEM, -ENOMEM, -EINVAL, -EINVAL, -EINVAL]
MADV_ADVICE = [0, 0, -EINVAL, 0, 0, 0, -EINVAL, -EINVAL, -EINVAL]


@pytest.mark.parametrize("v,want", list(zip(VALUES, MADV_LEN, strict=True)), ids=IDS)
def test_madvise_length(w, v, want):
    assert w.p.madvise(A, v, MADV_DONTNEED) == want
    data = w.p.load_array(A, NA * 1024)
    if want == -EINVAL or v == 0:
        assert (data == np.arange(NA * 1024)).all()  # nothing zapped
    w.ok()


@pytest.mark.parametrize("v,want", list(zip(VALUES, MADV_ADDR, strict=True)), ids=IDS)
def test_madvise_address(w, v, want):
    assert w.p.madvise(v, PAGE, MADV_DONTNEED) == want
    assert (w.p.load_array(A, NA * 1024) == np.arange(NA * 1024)).all()
    w.ok()


@pytest.mark.parametrize("v,want", list(zip(VALUES, MADV_ADVICE, strict=True)), ids=IDS)
def test_madvise_advice_is_an_int(w, v, want):
    assert w.p.madvise(A, PAGE, v) == want
    w.ok()


# --- pread / pwrite / ftruncate --------------------------------------------------------------
PREAD_COUNT = [0, 1, PAGE, PAGE, PAGE, -EINVAL, -EINVAL, -EINVAL, -EINVAL]
PREAD_OFFSET = [PAGE, PAGE - 1, 0, 0, 0, -EINVAL, -EINVAL, -EINVAL, -EINVAL]
PWRITE_OFFSET = [1, 1, 1, 1, 1, -EINVAL, -EINVAL, -EINVAL, -EINVAL]
FTRUNCATE = [0, 0, 0, 0, 0, -EINVAL, -EINVAL, -EINVAL, -EINVAL]


@pytest.mark.parametrize(
    "v,count,offset,pwrite,trunc",
    list(zip(VALUES, PREAD_COUNT, PREAD_OFFSET, PWRITE_OFFSET, FTRUNCATE, strict=True)),
    ids=IDS,
)
def test_file_syscalls(w, v, count, offset, pwrite, trunc):
    p = w.p
    fd = p.open("/tmp", O_TMPFILE | O_RDWR)
    assert p.pwrite(fd, bytes(range(256)) * 16, 0) == PAGE
    ret = p.pread(fd, v, 0)
    assert (len(ret) if isinstance(ret, bytes) else ret) == count
    ret = p.pread(fd, PAGE, v)
    assert (len(ret) if isinstance(ret, bytes) else ret) == offset
    assert p.pwrite(fd, b"x", v) == pwrite
    assert p.ftruncate(fd, v) == trunc
    assert p.ftruncate(fd, 0) == 0
    w.ok()


def test_file_syscalls_check_the_offset_before_the_fd(w):
    """ksys_pread64/ksys_pwrite64/do_sys_ftruncate: a negative offset or
    length is -EINVAL before the fd is looked up; an end past LLONG_MAX is
    -EINVAL (rw_verify_area)."""
    assert w.p.pread(99, 1, -1) == -EINVAL and w.p.pread(99, 1, 0) == -EBADF
    assert w.p.pwrite(99, b"x", -1) == -EINVAL and w.p.pwrite(99, b"x", 0) == -EBADF
    assert w.p.ftruncate(99, -1) == -EINVAL and w.p.ftruncate(99, 0) == -EBADF
    fd = w.p.open("/tmp", O_TMPFILE | O_RDWR)
    assert w.p.pwrite(fd, b"x", (1 << 63) - 1) == -EINVAL
    assert w.p.pread(fd, 2, (1 << 63) - 1) == -EINVAL
    w.ok()


# --- CPU loads and stores ------------------------------------------------------------------
@pytest.mark.parametrize("v", VALUES, ids=IDS)
def test_load_store_addresses(w, v):
    with pytest.raises(SegmentationFault):
        w.p.load(v, 4)
    with pytest.raises(SegmentationFault):
        w.p.store(v, b"boom")
    w.ok()


@pytest.mark.parametrize("alias", [1 << 47, 1 << 48, 1 << 56, 1 << 63])
def test_addresses_above_task_size_never_alias_a_user_page(w, alias):
    """The page-table indices of a non-canonical or kernel address would
    name a user page; the CPU faults there instead (SIGSEGV)."""
    with pytest.raises(SegmentationFault):
        w.p.load(VICTIM + alias, 4)
    with pytest.raises(SegmentationFault):
        w.p.store(VICTIM + alias, b"boom")
    w.ok()


def test_pointer_arithmetic_wraps_like_c(w):
    assert w.p.load(VICTIM - (1 << 64), 4) == w.p.load(VICTIM, 4)
    w.ok()


@contextmanager
def _deadline(seconds: int):
    def fire(*_):
        raise TimeoutError(f"took more than {seconds}s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --- the dmirror ioctl ----------------------------------------------------------------------
OVERFLOW = [1 << 52, (1 << 52) - 1, 1 << 63, (1 << 64) - 1, 1 << 64, -1]
OVERFLOW_IDS = ["2^52", "2^52-1", "2^63", "2^64-1", "2^64", "-1"]


def _migrated(w):
    fd = w.p.open("/dev/hmm_dmirror0", O_RDWR)
    cmd = hmm_dmirror_cmd(addr=A, ptr=np.zeros(NA * 1024, np.int32), npages=NA)
    assert w.p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == 0 and cmd.cpages == NA
    return fd


def _state(w):
    from hmmsim.userspace import entry_at

    dev = w.k.devices["/dev/hmm_dmirror0"]
    return [entry_at(w.p, A + i * PAGE) for i in range(NA)], len(dev.devmem_chunks), w.vmas()


@pytest.mark.parametrize("npages", OVERFLOW, ids=OVERFLOW_IDS)
@pytest.mark.parametrize(
    "req",
    [
        HMM_DMIRROR_RELEASE,
        HMM_DMIRROR_READ,
        HMM_DMIRROR_WRITE,
        HMM_DMIRROR_MIGRATE_TO_DEV,
        HMM_DMIRROR_MIGRATE_TO_SYS,
        HMM_DMIRROR_SNAPSHOT,
        HMM_DMIRROR_EXCLUSIVE,
        HMM_DMIRROR_CHECK_EXCLUSIVE,
    ],
    ids=["RELEASE", "READ", "WRITE", "TO_DEV", "TO_SYS", "SNAPSHOT", "EXCL", "CHECK_EXCL"],
)
def test_dmirror_npages_whose_size_wraps_is_einval(w, req, npages):
    """addr >= addr + (npages << PAGE_SHIFT) on __u64: npages 2**52 (and
    multiples) wraps the size to 0, 2**52 - 1 to 2**64 - 4096 (so the end
    wraps below addr): -EINVAL before the command runs; nothing changes."""
    fd = _migrated(w)
    before = _state(w)
    buf = np.zeros(NA * 1024, np.int32)
    cmd = hmm_dmirror_cmd(addr=A, ptr=buf, npages=npages)
    with _deadline(20):
        assert w.p.ioctl(fd, req, cmd) == -EINVAL
    assert (cmd.cpages, cmd.faults) == (0, 0) and not buf.any()
    assert _state(w) == before
    w.ok()


@pytest.mark.parametrize("req", [HMM_DMIRROR_READ, HMM_DMIRROR_WRITE])
def test_dmirror_read_write_bigger_than_ram_is_enomem(w, req):
    """dmirror_bounce_init: vmalloc of more than totalram_pages() is NULL."""
    fd = _migrated(w)
    before = _state(w)
    cmd = hmm_dmirror_cmd(addr=A, ptr=np.zeros(NA * 1024, np.int32), npages=1 << 40)
    assert w.p.ioctl(fd, req, cmd) == -ENOMEM
    assert _state(w) == before
    ram_pages = w.k.mem.ram.pages.nr
    cmd = hmm_dmirror_cmd(addr=A, ptr=np.zeros(ram_pages * PAGE, np.uint8), npages=ram_pages + 1)
    assert w.p.ioctl(fd, req, cmd) == -ENOMEM
    # within the size limit, but the bounce's pages come from modelled RAM
    # (vmalloc's page allocations fail): all of RAM cannot be had either
    cmd.npages = ram_pages
    assert w.p.ioctl(fd, req, cmd) == -ENOMEM
    assert _state(w) == before
    # a bounce that fits: the range then runs off the mapping in hmm_range_fault
    cmd.npages = NA + 8
    assert w.p.ioctl(fd, req, cmd) == -EFAULT
    w.ok()


def test_dmirror_migrate_and_exclusive_huge_npages_walk_only_the_mapping(w):
    """MIGRATE_TO_DEV / EXCLUSIVE with npages 2**40: the windows stop at the
    first address without a vma (-EINVAL / -EFAULT), after working on what
    is mapped, like the kernel; nothing is sized by npages."""
    fd = w.p.open("/dev/hmm_dmirror0", O_RDWR)
    cmd = hmm_dmirror_cmd(addr=A, ptr=None, npages=1 << 40)
    assert w.p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == -EINVAL
    w.ok()
    cmd = hmm_dmirror_cmd(addr=A, ptr=None, npages=1 << 40)
    assert w.p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_SYS, cmd) == -EINVAL
    cmd = hmm_dmirror_cmd(addr=A, ptr=None, npages=1 << 40)
    assert w.p.ioctl(fd, HMM_DMIRROR_EXCLUSIVE, cmd) == -EFAULT
    assert (w.p.load_array(A, NA * 1024) == np.arange(NA * 1024)).all()
    w.ok()


@pytest.mark.parametrize("npages", [1 << 40, 1 << 44], ids=["2^40", "2^44"])
def test_check_exclusive_of_a_huge_range_is_quick(w, npages):
    fd = w.p.open("/dev/hmm_dmirror0", O_RDWR)
    with _deadline(10):
        cmd = hmm_dmirror_cmd(addr=A, ptr=None, npages=npages)
        assert w.p.ioctl(fd, HMM_DMIRROR_CHECK_EXCLUSIVE, cmd) == 0
        cmd = hmm_dmirror_cmd(addr=A, ptr=np.zeros(NA * 1024, np.int32), npages=NA)
        assert w.p.ioctl(fd, HMM_DMIRROR_EXCLUSIVE, cmd) == 0
        cmd = hmm_dmirror_cmd(addr=PAGE * 16, ptr=None, npages=npages)
        assert w.p.ioctl(fd, HMM_DMIRROR_CHECK_EXCLUSIVE, cmd) == -EPERM
        cmd = hmm_dmirror_cmd(addr=A + NA * PAGE, ptr=None, npages=npages)
        assert w.p.ioctl(fd, HMM_DMIRROR_CHECK_EXCLUSIVE, cmd) == 0
    w.ok()


def _page_before_a_hole(p) -> int:
    at = p.mmap(0, 2 * PAGE, RW, ANON)
    assert p.munmap(at + PAGE, PAGE) == 0
    return at


def test_snapshot_copies_window_by_window(w):
    """dmirror_snapshot: copy_to_user per 32-page window; a user buffer that
    ends inside window 2 is -EFAULT after window 1 (and the part of window 2
    that fits) was written."""
    p = w.p
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    region = p.mmap(0, 64 * PAGE, RW, ANON)
    p.store(region, b"x")  # page 0 present and writable, the rest not faulted
    full = np.zeros(64, np.uint8)
    assert p.ioctl(fd, HMM_DMIRROR_SNAPSHOT, hmm_dmirror_cmd(region, full, 64)) == 0
    assert full[0] == 0x02 and not full[1:].any()
    # a 40-byte buffer at the end of a user page: window 2 faults after 8 bytes
    ubuf = _page_before_a_hole(p)
    p.store(ubuf, b"\x77" * PAGE)
    cmd = hmm_dmirror_cmd(region, ubuf + PAGE - 40, 64)
    assert p.ioctl(fd, HMM_DMIRROR_SNAPSHOT, cmd) == -EFAULT
    got = np.frombuffer(p.load(ubuf + PAGE - 40, 40), np.uint8)
    assert (got == full[:40]).all()
    assert p.load(ubuf, PAGE - 40) == b"\x77" * (PAGE - 40)
    # a host buffer that is too small: the same, nothing sized by npages
    small = np.full(40, 0x77, np.uint8)
    with _deadline(10):
        cmd = hmm_dmirror_cmd(region, small, 1 << 40)
        assert p.ioctl(fd, HMM_DMIRROR_SNAPSHOT, cmd) == -EFAULT
    assert (small == full[:40]).all()
    w.ok()


def test_ioctl_arg_is_a_user_address_of_the_struct(w):
    """ioctl(fd, HMM_DMIRROR_READ, addr): the 40-byte struct is read from
    user memory (copy_from_user) and written back on success."""
    p = w.p
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    ubuf = p.mmap(0, NA * PAGE, RW, ANON)
    ucmd = _page_before_a_hole(p)
    p.store_array(ucmd, np.array([A, ubuf, NA, 99, 99], dtype="<u8"))
    assert p.ioctl(fd, HMM_DMIRROR_READ, ucmd) == 0
    assert list(p.load_array(ucmd, 5, "<u8")) == [A, ubuf, NA, NA, 1]
    assert (p.load_array(ubuf, NA * 1024) == np.arange(NA * 1024)).all()
    # request and arg have their C types: unsigned int, unsigned long
    assert p.ioctl(fd, HMM_DMIRROR_READ + (1 << 32), ucmd - (1 << 64)) == 0
    # an unmapped struct, or one that runs off the mapping
    assert p.ioctl(fd, HMM_DMIRROR_READ, 0x5000_0000) == -EFAULT
    assert p.ioctl(fd, HMM_DMIRROR_READ, ucmd + PAGE - 8) == -EFAULT
    # an error is not written back
    p.store_array(ucmd, np.array([A + 1, ubuf, NA, 99, 99], dtype="<u8"))
    assert p.ioctl(fd, HMM_DMIRROR_READ, ucmd) == -EINVAL
    assert list(p.load_array(ucmd, 5, "<u8")) == [A + 1, ubuf, NA, 99, 99]
    w.ok()


# --- oops attribution -----------------------------------------------------------------------
def test_oops_names_the_function_the_kernel_reports():
    """A device READ/WRITE through a mirror entry naming a device-private
    page dereferences it (the scenarios of test_kernel_612 at the pin): the
    oops is in dmirror_do_read for READ, and in dmirror_fops_unlocked_ioctl
    for WRITE (dmirror_write and dmirror_do_write are inlined there)."""
    from hmmsim.selftests.hmm_tests import make_kernel, selftest_config

    k = make_kernel(selftest_config())
    p = k.spawn()
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    a = p.mmap(0, 64 * PAGE, RW, ANON)
    p.store_array(a + PAGE, np.arange(63 * 1024, dtype=np.int32))
    cmd = hmm_dmirror_cmd(addr=a + PAGE, ptr=np.zeros(63 * 1024, np.int32), npages=63)
    assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == 0
    cmd = hmm_dmirror_cmd(addr=a, ptr=np.zeros(64 * 1024, np.int32), npages=64)
    with pytest.raises(KernelOops) as e:
        p.ioctl(fd, HMM_DMIRROR_READ, cmd)
    assert e.value.function == "dmirror_do_read"

    k = make_kernel(selftest_config())
    p = k.spawn()
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    a = p.mmap(0, PAGE, RW, ANON)
    cmd = hmm_dmirror_cmd(addr=a, ptr=np.zeros(1024, np.int32), npages=1)
    assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == 0
    cmd = hmm_dmirror_cmd(addr=a, ptr=np.ones(1024, np.int32), npages=1)
    with pytest.raises(KernelOops) as e:
        p.ioctl(fd, HMM_DMIRROR_WRITE, cmd)
    assert e.value.function == "dmirror_fops_unlocked_ioctl"

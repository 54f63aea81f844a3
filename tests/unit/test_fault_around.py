"""Read fault-around on shmem: mm/memory.c do_fault_around + mm/filemap.c filemap_map_pages.

A read fault on a file vma whose file has ->map_pages (tmpfs/shmem, also
MAP_SHARED|MAP_ANONYMOUS) first maps the ready page-cache pages of a
fault_around_pages (16) window: aligned to 16 PTEs, clipped to the vma
start, then 16 PTEs long, clipped to the vma end and to the PTE table
(PMD). The dmirror SNAPSHOT of the range shows which PTEs the CPU side has.
"""

import numpy as np
import pytest

from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_PROT_READ,
    HMM_DMIRROR_PROT_WRITE,
    HMM_DMIRROR_READ,
    HMM_DMIRROR_SNAPSHOT,
    hmm_dmirror_cmd,
)
from hmmsim.include.mm_types import MM_FILEPAGES, MM_SHMEMPAGES, folio_mapcount, folio_ref_count
from hmmsim.include.mman import (
    MAP_ANONYMOUS,
    MAP_FIXED_NOREPLACE,
    MAP_PRIVATE,
    MAP_SHARED,
    O_CREAT,
    O_RDWR,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.include.pgtable import pte_pfn
from hmmsim.kconfig import PAGE_SIZE, PMD_SIZE
from hmmsim.mm import memory
from hmmsim.selftests.hmm_tests import make_kernel, selftest_config
from hmmsim.testing.invariants import check_invariants
from hmmsim.userspace import OutOfMemory, entry_at

RW = PROT_READ | PROT_WRITE
BASE = 0x100000000  # PMD-aligned, like the scenario runner's fixed layout
W = HMM_DMIRROR_PROT_WRITE
R = HMM_DMIRROR_PROT_READ


@pytest.fixture
def env():
    k = make_kernel(selftest_config())
    p = k.spawn()
    dev = p.open("/dev/hmm_dmirror0", O_RDWR)
    yield k, p, dev
    assert not k.warnings
    check_invariants(k)


def cached_file(p, npages, path="/tmp/fa"):
    """A tmpfs file of npages pages, every page in the page cache."""
    fd = p.open(path, O_RDWR | O_CREAT)
    data = bytes(range(256)) * (PAGE_SIZE // 256) * npages
    assert p.pwrite(fd, data, 0) == len(data)
    return fd


def pfn_at(p, addr) -> int:
    kind, pte = entry_at(p, addr)
    assert kind == "pte" and pte, hex(addr)
    return pte_pfn(pte)


def snapshot(p, dev, addr, npages) -> list[int]:
    buf = np.zeros(npages, dtype=np.uint8)
    cmd = hmm_dmirror_cmd(addr=addr, ptr=buf, npages=npages)
    assert p.ioctl(dev, HMM_DMIRROR_SNAPSHOT, cmd) == 0
    return buf.tolist()


def test_the_24_page_scenario(env):
    """One load of page 4 maps pages 0..15 (writable, shared); 16..23 stay empty."""
    k, p, dev = env
    fd = cached_file(p, 24)
    a = p.mmap(BASE, 24 * PAGE_SIZE, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
    assert a == BASE
    assert p.load(a + 4 * PAGE_SIZE, 1) == b"\x00"
    assert snapshot(p, dev, a, 24) == [W] * 16 + [0] * 8
    assert p.mm.rss_stat[MM_SHMEMPAGES] == 16
    assert p.mm.rss_stat[MM_FILEPAGES] == 0
    inode = k.tmpfs["/tmp/fa"]
    for index in range(24):
        folio = inode.find_folio(index)
        mapped = index < 16
        assert folio_mapcount(folio) == int(mapped), index
        assert folio_ref_count(folio) == 1 + int(mapped), index  # the cache's + the PTE's
    check_invariants(k)
    # a second read fault in the same window maps nothing twice
    p.load(a + 9 * PAGE_SIZE, 1)
    assert p.mm.rss_stat[MM_SHMEMPAGES] == 16
    # one in the next window maps the rest
    p.load(a + 20 * PAGE_SIZE, 1)
    assert snapshot(p, dev, a, 24) == [W] * 24
    assert p.mm.rss_stat[MM_SHMEMPAGES] == 24


def test_prefaulted_ptes_map_the_right_pages(env):
    k, p, dev = env
    fd = cached_file(p, 24)
    a = p.mmap(BASE, 24 * PAGE_SIZE, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
    p.load(a + 4 * PAGE_SIZE, 1)
    inode = k.tmpfs["/tmp/fa"]
    for index in range(16):
        assert pfn_at(p, a + index * PAGE_SIZE) == inode.find_folio(index).pfn
    # the writable PTEs are the file's pages: a store lands in the file
    p.store(a + 7 * PAGE_SIZE, b"\xee")
    assert p.pread(fd, 1, 7 * PAGE_SIZE) == b"\xee"


def test_window_clipped_at_vma_start(env):
    """The aligned start is clipped to the vma, and the window then runs 16
    PTEs from there: a load of vma page 4 (PTE 12) maps vma pages 0..15,
    i.e. PTEs 8..23, past the aligned block 0..15."""
    k, p, dev = env
    fd = cached_file(p, 24)
    a = p.mmap(BASE + 8 * PAGE_SIZE, 24 * PAGE_SIZE, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
    p.load(a + 4 * PAGE_SIZE, 1)
    assert snapshot(p, dev, a, 24) == [W] * 16 + [0] * 8
    # vma page 10 is PTE 18: the aligned window 16..31 is vma pages 8..23
    fd2 = cached_file(p, 24, "/tmp/fb")
    b = p.mmap(BASE + 40 * PAGE_SIZE, 24 * PAGE_SIZE, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd2, 0)
    p.load(b + 10 * PAGE_SIZE, 1)
    assert snapshot(p, dev, b, 24) == [0] * 8 + [W] * 16


def test_window_clipped_at_vma_end(env):
    k, p, dev = env
    fd = cached_file(p, 24)
    a = p.mmap(BASE, 24 * PAGE_SIZE, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
    # a neighbouring vma of the same file must not be touched
    b = p.mmap(a + 24 * PAGE_SIZE, 8 * PAGE_SIZE, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
    p.load(a + 20 * PAGE_SIZE, 1)
    assert snapshot(p, dev, a, 32) == [0] * 16 + [W] * 8 + [0] * 8
    assert b == a + 24 * PAGE_SIZE


def test_window_with_a_file_offset(env):
    """The window is in PTEs (virtual addresses); the file pages follow vm_pgoff."""
    k, p, dev = env
    fd = cached_file(p, 40)
    a = p.mmap(BASE, 24 * PAGE_SIZE, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 5 * PAGE_SIZE)
    p.load(a + 4 * PAGE_SIZE, 1)
    assert snapshot(p, dev, a, 24) == [W] * 16 + [0] * 8
    inode = k.tmpfs["/tmp/fa"]
    for i in range(16):
        assert pfn_at(p, a + i * PAGE_SIZE) == inode.find_folio(5 + i).pfn


def test_window_clipped_at_pmd_boundary(env):
    """The window never leaves the PTE table of the fault."""
    k, p, dev = env
    fd = cached_file(p, 32)
    start = BASE + PMD_SIZE - 8 * PAGE_SIZE
    a = p.mmap(start, 32 * PAGE_SIZE, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
    p.load(a + 4 * PAGE_SIZE, 1)  # PTE 508 of the first table
    assert snapshot(p, dev, a, 32) == [W] * 8 + [0] * 24
    p.load(a + 12 * PAGE_SIZE, 1)  # PTE 4 of the next table: its PTEs 0..15
    assert snapshot(p, dev, a, 32) == [W] * 24 + [0] * 8
    assert p.mm.rss_stat[MM_SHMEMPAGES] == 24


def test_pages_not_in_the_page_cache_are_not_mapped(env):
    k, p, dev = env
    fd = p.open("/tmp/fa", O_RDWR | O_CREAT)
    assert p.ftruncate(fd, 24 * PAGE_SIZE) == 0
    for index in (1, 2, 9):
        assert p.pwrite(fd, b"x", index * PAGE_SIZE) == 1
    a = p.mmap(BASE, 24 * PAGE_SIZE, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
    # page 4 is a hole: fault-around maps 1, 2, 9, then ->fault allocates page 4
    assert p.load(a + 4 * PAGE_SIZE, 1) == b"\x00"
    expect = [0] * 24
    for index in (1, 2, 4, 9):
        expect[index] = W
    assert snapshot(p, dev, a, 24) == expect
    assert p.mm.rss_stat[MM_SHMEMPAGES] == 4
    assert sorted(k.tmpfs["/tmp/fa"].cache) == [1, 2, 4, 9]


def test_nothing_cached_maps_only_the_faulting_page(env):
    k, p, dev = env
    fd = p.open("/tmp/fa", O_RDWR | O_CREAT)
    assert p.ftruncate(fd, 24 * PAGE_SIZE) == 0
    a = p.mmap(BASE, 24 * PAGE_SIZE, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
    p.load(a + 4 * PAGE_SIZE, 1)
    assert snapshot(p, dev, a, 24) == [0] * 4 + [W] + [0] * 19
    assert p.mm.rss_stat[MM_SHMEMPAGES] == 1


def test_window_clipped_to_i_size(env):
    """Nothing past the last page inside i_size; a fault there is SIGBUS."""
    k, p, dev = env
    fd = cached_file(p, 10)
    a = p.mmap(BASE, 24 * PAGE_SIZE, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
    p.load(a + 4 * PAGE_SIZE, 1)
    assert snapshot(p, dev, a, 16) == [W] * 10 + [0] * 6
    assert p.mm.rss_stat[MM_SHMEMPAGES] == 10


def test_locked_folio_is_skipped(env):
    """next_uptodate_folio only trylocks: a locked cache folio is left alone."""
    from hmmsim.locking import folio_lock, folio_unlock

    k, p, dev = env
    fd = cached_file(p, 24)
    a = p.mmap(BASE, 24 * PAGE_SIZE, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
    folio = k.tmpfs["/tmp/fa"].find_folio(6)
    folio_lock(folio)
    p.load(a + 4 * PAGE_SIZE, 1)
    folio_unlock(folio)
    expect = [W] * 16 + [0] * 8
    expect[6] = 0
    assert snapshot(p, dev, a, 24) == expect
    assert p.mm.rss_stat[MM_SHMEMPAGES] == 15


def test_private_file_mapping_gets_read_only_ptes(env):
    k, p, dev = env
    fd = cached_file(p, 24)
    a = p.mmap(BASE, 24 * PAGE_SIZE, RW, MAP_PRIVATE | MAP_FIXED_NOREPLACE, fd, 0)
    p.load(a + 4 * PAGE_SIZE, 1)
    assert snapshot(p, dev, a, 24) == [R] * 16 + [0] * 8
    assert p.mm.rss_stat[MM_SHMEMPAGES] == 16
    # a store to a prefaulted page breaks COW: the file keeps its byte
    p.store(a + 5 * PAGE_SIZE, b"\xee")
    assert p.pread(fd, 1, 5 * PAGE_SIZE) == b"\x00"
    assert p.load(a + 5 * PAGE_SIZE, 1) == b"\xee"
    snap = snapshot(p, dev, a, 24)
    assert snap[5] == W and snap[4] == R


def test_shared_anonymous_mapping_faults_around(env):
    """MAP_SHARED|MAP_ANONYMOUS is shmem too: a forked child's read fault
    (fork copies no PTEs of a shared vma) maps the cached pages around it."""
    k, p, dev = env
    a = p.mmap(BASE, 24 * PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    p.store(a, b"\x01" * 24 * PAGE_SIZE)
    pid = p.fork()
    c = p.child(pid)
    assert c.load(a + 20 * PAGE_SIZE, 1) == b"\x01"
    assert c.mm.rss_stat[MM_SHMEMPAGES] == 8
    cdev = c.open("/dev/hmm_dmirror1", O_RDWR)
    assert snapshot(c, cdev, a, 24) == [0] * 16 + [W] * 8
    c._exit(0)
    assert p.waitpid(pid, 0)[0] == pid


def test_hmm_range_fault_read_faults_around(env):
    """The dmirror READ's hmm_range_fault read fault goes through
    do_read_fault too: the CPU page table gets the whole window."""
    k, p, dev = env
    fd = cached_file(p, 24)
    a = p.mmap(BASE, 24 * PAGE_SIZE, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
    buf = np.zeros(PAGE_SIZE, dtype=np.uint8)
    cmd = hmm_dmirror_cmd(addr=a + 4 * PAGE_SIZE, ptr=buf, npages=1)
    assert p.ioctl(dev, HMM_DMIRROR_READ, cmd) == 0
    assert cmd.faults == 1
    assert snapshot(p, dev, a, 24) == [W] * 16 + [0] * 8


def test_fault_around_pages_one_turns_it_off(env, monkeypatch):
    k, p, dev = env
    monkeypatch.setattr(memory, "fault_around_pages", 1)
    fd = cached_file(p, 24)
    a = p.mmap(BASE, 24 * PAGE_SIZE, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
    p.load(a + 4 * PAGE_SIZE, 1)
    assert snapshot(p, dev, a, 24) == [0] * 4 + [W] + [0] * 19


def test_no_memory_for_the_pte_table_is_oom(env):
    """do_fault_around preallocates the PTE table of an empty PMD first:
    without memory for it the fault is VM_FAULT_OOM and nothing is mapped."""
    k, p, dev = env
    fd = cached_file(p, 24)
    a = p.mmap(BASE, 24 * PAGE_SIZE, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
    k.mem.should_fail_alloc = lambda order: True
    with pytest.raises(OutOfMemory):
        p.load(a + 4 * PAGE_SIZE, 1)
    k.mem.should_fail_alloc = None
    assert p.mm.rss_stat[MM_SHMEMPAGES] == 0
    assert snapshot(p, dev, a, 24) == [0] * 24
    p.load(a + 4 * PAGE_SIZE, 1)
    assert snapshot(p, dev, a, 24) == [W] * 16 + [0] * 8


def test_oom_before_the_page_cache_is_touched(env):
    """The PTE table comes before the page: do_fault_around (nothing cached
    to map) preallocates it, __do_fault keeps it, and shmem_fault's page
    allocation is the second one. Failing that one is VM_FAULT_OOM with the
    page cache still empty and the unused table freed again."""
    k, p, dev = env
    fd = p.open("/tmp/fa", O_RDWR | O_CREAT)
    assert p.ftruncate(fd, 24 * PAGE_SIZE) == 0
    a = p.mmap(BASE, 24 * PAGE_SIZE, RW, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0)
    # the upper tables exist: only the PTE table and the page are left to allocate
    b = p.mmap(BASE + PMD_SIZE, PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    p.store(b, b"\x01")
    free = k.mem.nr_free
    calls = []

    def fail_second(order):
        calls.append(order)
        return len(calls) == 2

    k.mem.should_fail_alloc = fail_second
    with pytest.raises(OutOfMemory):
        p.load(a + 4 * PAGE_SIZE, 1)
    k.mem.should_fail_alloc = None
    assert calls == [0, 0]
    assert k.tmpfs["/tmp/fa"].cache == {}
    assert k.mem.nr_free == free
    check_invariants(k)

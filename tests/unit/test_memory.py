"""The CPU fault path: do_anonymous_page, do_wp_page, file faults, signals."""

import pytest

from hmmsim.include.mm_types import (
    MM_ANONPAGES,
    MM_SHMEMPAGES,
    PageAnonExclusive,
    folio_mapcount,
    folio_ref_count,
    folio_test_anon,
)
from hmmsim.include.mman import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    O_RDWR,
    O_TMPFILE,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.include.pgtable import (
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_NX,
    _PAGE_PRESENT,
    _PAGE_RW,
    _PAGE_SOFT_DIRTY,
    _PAGE_SPECIAL,
    _PAGE_USER,
    pte_pfn,
)
from hmmsim.userspace import SEGV_ACCERR, SEGV_MAPERR, BusError, SegmentationFault, entry_at

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


def page_of(p, addr):
    level, word = entry_at(p, addr)
    assert level == "pte"
    return p.k.mem.pfn_to_page(pte_pfn(word))


def test_read_fault_maps_the_zero_page_special_readonly(k, proc, ok):
    a = proc.mmap(0, 4096, RW, ANON)
    assert proc.load(a, 8) == bytes(8)
    level, pte = entry_at(proc, a)
    assert pte_pfn(pte) == k.mem.zero_pfn
    # mk_pte(zero, PAGE_COPY) | special, and the CPU set Accessed
    assert pte & (_PAGE_PRESENT | _PAGE_USER | _PAGE_SPECIAL | _PAGE_NX | _PAGE_ACCESSED) == (
        _PAGE_PRESENT | _PAGE_USER | _PAGE_SPECIAL | _PAGE_NX | _PAGE_ACCESSED
    )
    assert not pte & _PAGE_RW
    assert proc.mm.rss_stat[MM_ANONPAGES] == 0
    ok(k)


def test_write_fault_allocates_an_exclusive_dirty_writable_page(k, proc, ok):
    a = proc.mmap(0, 4096, RW, ANON)
    proc.store(a + 10, b"xyz")
    level, pte = entry_at(proc, a)
    assert pte & (_PAGE_RW | _PAGE_DIRTY | _PAGE_SOFT_DIRTY) == (
        _PAGE_RW | _PAGE_DIRTY | _PAGE_SOFT_DIRTY
    )
    page = page_of(proc, a)
    assert folio_test_anon(page) and PageAnonExclusive(page)
    assert folio_ref_count(page) == 1 and folio_mapcount(page) == 1
    assert proc.load(a + 8, 6) == b"\0\0xyz\0"
    assert proc.mm.rss_stat[MM_ANONPAGES] == 1
    ok(k)


def test_write_after_read_replaces_zero_page(k, proc, ok):
    a = proc.mmap(0, 4096, RW, ANON)
    proc.load(a, 1)
    proc.store(a, b"\x01")
    assert pte_pfn(entry_at(proc, a)[1]) != k.mem.zero_pfn
    assert proc.load(a, 2) == b"\x01\x00"
    ok(k)


def test_no_vma_is_segv_maperr(proc):
    with pytest.raises(SegmentationFault) as e:
        proc.load(0x1000_0000, 1)
    assert e.value.si_code == SEGV_MAPERR


def test_write_to_readonly_and_any_access_to_prot_none_is_accerr(k, proc, ok):
    a = proc.mmap(0, 4096, PROT_READ, ANON)
    with pytest.raises(SegmentationFault) as e:
        proc.store(a, b"x")
    assert e.value.si_code == SEGV_ACCERR
    b = proc.mmap(0, 4096, PROT_NONE, ANON)
    with pytest.raises(SegmentationFault):
        proc.load(b, 1)
    ok(k)


def test_shared_file_mapping_writes_reach_the_file(k, proc, ok):
    fd = proc.open("/tmp", O_TMPFILE | O_RDWR)
    assert proc.ftruncate(fd, 8192) == 0
    a = proc.mmap(0, 8192, RW, MAP_SHARED, fd, 0)
    proc.store(a + 4096, b"shared")
    assert proc.pread(fd, 6, 4096) == b"shared"
    assert proc.mm.rss_stat[MM_SHMEMPAGES] == 1
    assert proc.pwrite(fd, b"FROMFILE", 0) == 8
    assert proc.load(a, 8) == b"FROMFILE"
    ok(k)


def test_private_file_mapping_copies_on_write(k, proc, ok):
    fd = proc.open("/tmp", O_TMPFILE | O_RDWR)
    proc.pwrite(fd, b"original", 0)
    a = proc.mmap(0, 4096, RW, MAP_PRIVATE, fd, 0)
    assert proc.load(a, 8) == b"original"
    cache_page = page_of(proc, a)
    assert not folio_test_anon(cache_page)
    assert not entry_at(proc, a)[1] & _PAGE_RW
    proc.store(a, b"private!")
    assert folio_test_anon(page_of(proc, a))
    assert proc.pread(fd, 8, 0) == b"original"
    assert proc.load(a, 8) == b"private!"
    ok(k)


def test_access_past_eof_is_sigbus(k, proc, ok):
    fd = proc.open("/tmp", O_TMPFILE | O_RDWR)
    proc.ftruncate(fd, 4096)
    a = proc.mmap(0, 8192, RW, MAP_SHARED, fd, 0)
    proc.store(a, b"ok")
    with pytest.raises(BusError):
        proc.load(a + 4096, 1)
    ok(k)


def test_truncate_unmaps_and_frees(k, proc, ok):
    fd = proc.open("/tmp", O_TMPFILE | O_RDWR)
    proc.ftruncate(fd, 8192)
    a = proc.mmap(0, 8192, RW, MAP_SHARED, fd, 0)
    proc.store(a + 4096, b"gone")
    free = k.mem.nr_free
    assert proc.ftruncate(fd, 4096) == 0
    assert entry_at(proc, a + 4096)[0] == "none" or entry_at(proc, a + 4096)[1] == 0
    assert k.mem.nr_free == free + 1
    with pytest.raises(BusError):
        proc.load(a + 4096, 1)
    ok(k)


def test_hardware_sets_accessed_and_dirty(k, proc, ok):
    fd = proc.open("/tmp", O_TMPFILE | O_RDWR)
    proc.ftruncate(fd, 4096)
    a = proc.mmap(0, 4096, RW, MAP_SHARED, fd, 0)
    proc.load(a, 1)  # shared writable shmem maps writable on a read fault
    pte = entry_at(proc, a)[1]
    assert pte & _PAGE_RW and pte & _PAGE_ACCESSED and not pte & _PAGE_DIRTY
    proc.store(a, b"d")
    assert entry_at(proc, a)[1] & _PAGE_DIRTY
    ok(k)


def test_out_of_memory_is_reported(proc, k):
    from hmmsim.userspace import SIGKILL, WTERMSIG, OomKilled, OutOfMemory

    # two 40 MiB mappings: each alone fits the 64 MiB of RAM, as the default
    # overcommit policy requires; touching both does not
    a = proc.mmap(0, 40 << 20, RW, ANON)
    b = proc.mmap(0, 40 << 20, RW, ANON)
    assert a > 0 and b > 0
    with pytest.raises(OutOfMemory) as e:  # the OOM killer's SIGKILL
        for base in (a, b):
            for off in range(0, 40 << 20, 4096):
                proc.store(base + off, b"x")
    assert isinstance(e.value, OomKilled) and not proc.alive
    assert WTERMSIG(proc.exit_status) == SIGKILL

import pytest

from hmmsim.errno import EACCES, EINVAL, ENOMEM
from hmmsim.include.mman import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    MAP_SHARED,
    O_RDONLY,
    O_RDWR,
    PROT_EXEC,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.include.pgtable import _PAGE_GLOBAL, _PAGE_PRESENT, _PAGE_RW, pte_pfn
from hmmsim.userspace import SegmentationFault, entry_at

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


def test_errors(proc):
    a = proc.mmap(0, 2 * 4096, RW, ANON)
    assert proc.mprotect(a + 1, 4096, PROT_READ) == -EINVAL
    assert proc.mprotect(a, 4096, 0x80) == -EINVAL
    assert proc.mprotect(a, 0, PROT_READ) == 0
    assert proc.mprotect(0x7000_0000, 4096, PROT_READ) == -ENOMEM
    assert proc.mprotect(a, 3 * 4096, PROT_READ) == -ENOMEM  # runs past the vma
    assert proc.mprotect(a, (1 << 64) - a, PROT_READ) == -ENOMEM


def test_eacces_on_shared_readonly_file(proc):
    fd = proc.open("/tmp/f", O_RDWR | 0o100)
    proc.ftruncate(fd, 4096)
    ro = proc.open("/tmp/f", O_RDONLY)
    a = proc.mmap(0, 4096, PROT_READ, MAP_SHARED, ro, 0)
    assert proc.mprotect(a, 4096, RW) == -EACCES


def test_readonly_then_writable_again(k, proc, ok):
    a = proc.mmap(0, 2 * 4096, RW, ANON)
    proc.store(a, b"keep")
    assert proc.mprotect(a, 2 * 4096, PROT_READ) == 0
    assert not entry_at(proc, a)[1] & _PAGE_RW
    with pytest.raises(SegmentationFault):
        proc.store(a, b"x")
    assert proc.mprotect(a, 2 * 4096, RW) == 0
    assert entry_at(proc, a)[1] & _PAGE_RW  # anon-exclusive: upgraded at once
    assert proc.load(a, 4) == b"keep"
    ok(k)


def test_prot_none_inverts_pfn_and_restores(k, proc, ok):
    a = proc.mmap(0, 4096, RW, ANON)
    proc.store(a, b"secret")
    pfn = pte_pfn(entry_at(proc, a)[1])
    proc.mprotect(a, 4096, PROT_NONE)
    pte = entry_at(proc, a)[1]
    assert not pte & _PAGE_PRESENT and pte & _PAGE_GLOBAL  # _PAGE_PROTNONE
    assert pte_pfn(pte) == pfn
    assert (pte >> 12) & ((1 << 40) - 1) != pfn  # stored inverted (L1TF)
    with pytest.raises(SegmentationFault):
        proc.load(a, 1)
    proc.mprotect(a, 4096, PROT_READ | PROT_EXEC)
    assert proc.load(a, 6) == b"secret"
    ok(k)


def test_cow_shared_page_stays_readonly(k, proc, ok):
    a = proc.mmap(0, 4096, RW, ANON)
    proc.store(a, b"x")
    child = proc.child(proc.fork())
    proc.mprotect(a, 4096, PROT_READ)
    proc.mprotect(a, 4096, RW)
    assert not entry_at(proc, a)[1] & _PAGE_RW  # not exclusive: must COW on write
    proc.store(a, b"y")
    assert child.load(a, 1) == b"x"
    ok(k)


def test_middle_split(k, proc, ok):
    a = proc.mmap(0, 3 * 4096, RW, ANON)
    assert proc.mprotect(a + 4096, 4096, PROT_READ) == 0
    assert len(proc.mm.vmas) == 3
    ok(k)

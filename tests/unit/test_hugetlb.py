import numpy as np
import pytest

from hmmsim.errno import EINVAL, ENOMEM
from hmmsim.include.mman import (
    MAP_ANONYMOUS,
    MAP_HUGETLB,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.include.pgtable import _PAGE_PSE, _PAGE_RW, pmd_pfn
from hmmsim.kconfig import PMD_SIZE
from hmmsim.userspace import entry_at

RW = PROT_READ | PROT_WRITE
HUGE = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB


def test_reservation_and_enomem(k, proc, ok):
    assert k.hugetlb.nr_huge_pages == 2
    a = proc.mmap(0, PMD_SIZE, RW, HUGE)
    assert a > 0 and a % PMD_SIZE == 0
    assert k.hugetlb.resv_huge_pages == 1
    assert proc.mmap(0, 2 * PMD_SIZE, RW, HUGE) == -ENOMEM
    proc.munmap(a, PMD_SIZE)
    assert k.hugetlb.resv_huge_pages == 0
    ok(k)


def test_fault_maps_a_pmd_and_data_round_trips(k, proc, ok):
    a = proc.mmap(0, PMD_SIZE, RW, HUGE)
    proc.store_array(a, np.arange(PMD_SIZE // 4, dtype=np.int32))
    level, pmd = entry_at(proc, a)
    assert level == "pmd" and pmd & _PAGE_PSE and pmd & _PAGE_RW
    assert k.hugetlb.free_huge_pages == 1 and k.hugetlb.resv_huge_pages == 0
    assert (proc.load_array(a, PMD_SIZE // 4) == np.arange(PMD_SIZE // 4)).all()
    ok(k)
    proc.munmap(a, PMD_SIZE)
    assert k.hugetlb.free_huge_pages == 2
    ok(k)


def test_length_rounds_up_and_unaligned_munmap_fails(k, proc, ok):
    a = proc.mmap(0, 4096, RW, HUGE)
    assert proc.mm.vmas[0].vm_end - a == PMD_SIZE
    assert proc.munmap(a + 4096, 4096) == -EINVAL
    assert proc.munmap(a, PMD_SIZE) == 0
    ok(k)


def test_private_cow_after_fork(k, proc, ok):
    a = proc.mmap(0, PMD_SIZE, RW, HUGE)
    proc.store(a, b"parent")
    child = proc.child(proc.fork())
    assert not entry_at(proc, a)[1] & _PAGE_RW
    child.store(a, b"child!")
    assert proc.load(a, 6) == b"parent" and child.load(a, 6) == b"child!"
    assert pmd_pfn(entry_at(proc, a)[1]) != pmd_pfn(entry_at(child, a)[1])
    ok(k)
    child._exit(0)
    proc.waitpid(child.pid)
    ok(k)


def test_shared_hugetlb_is_shared_with_child(k, proc, ok):
    a = proc.mmap(0, PMD_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB)
    proc.store(a, b"before")
    child = proc.child(proc.fork())
    child.store(a, b"after!")
    assert proc.load(a, 6) == b"after!"
    ok(k)


def test_mremap_of_hugetlb_is_not_modelled(proc):
    a = proc.mmap(0, PMD_SIZE, RW, HUGE)
    assert proc.mremap(a, PMD_SIZE, 2 * PMD_SIZE, 1) == -EINVAL


@pytest.mark.parametrize("off", [4096, PMD_SIZE // 2])
def test_unaligned_fixed_hugetlb_is_einval(proc, off):
    a = proc.mmap(0, 2 * PMD_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    assert proc.mmap(a + off, PMD_SIZE, RW, HUGE | 0x10) == -EINVAL

"""Commit accounting under the default overcommit policy (issue 15 part 1).

Linux's default vm.overcommit_memory is OVERCOMMIT_GUESS (mm/util.c
__vm_enough_memory): a single charge larger than RAM + swap is -ENOMEM,
anything smaller succeeds. The charges come from private writable mappings
(mm/vma.c __mmap_setup, VM_ACCOUNT), shared anonymous memory (mm/shmem.c
shmem_acct_size), an accounted mapping growing (mm/mremap.c
vrm_calc_charge) and a private mapping made writable (mm/mprotect.c
mprotect_fixup). The model has no swap.
"""

from __future__ import annotations

import pytest

from hmmsim.errno import ENOMEM
from hmmsim.include.mm import VM_ACCOUNT
from hmmsim.include.mman import (
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_HUGETLB,
    MAP_NORESERVE,
    MAP_PRIVATE,
    MAP_SHARED,
    MREMAP_DONTUNMAP,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    O_RDWR,
    O_TMPFILE,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.kconfig import KConfig
from hmmsim.kernel import Kernel
from hmmsim.mm.mmap import vma_lookup
from hmmsim.mm.util import OVERCOMMIT_ALWAYS, OVERCOMMIT_NEVER, totalram_pages
from hmmsim.testing.invariants import check_invariants

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
PAGE = 4096
TIB = 1 << 40


@pytest.fixture(params=["mainline", "6.12"])
def k(request):
    return Kernel(KConfig(ram_bytes=64 << 20, kernel=request.param))


def limit(k) -> int:
    """The largest charge heuristic mode allows, in bytes: RAM + swap (0)."""
    return totalram_pages(k) * PAGE


def test_a_terabyte_of_private_writable_memory_is_refused_on_64_mib(k):
    p = k.spawn()
    assert p.mmap(0, TIB, RW, ANON) == -ENOMEM
    assert not p.mm.vmas
    check_invariants(k)


def test_the_limit_is_ram_plus_swap_to_the_page(k):
    p = k.spawn()
    n = limit(k)
    assert p.mmap(0, n + PAGE, RW, ANON) == -ENOMEM
    a = p.mmap(0, n, RW, ANON)
    assert a > 0
    assert vma_lookup(p.mm, a).vm_flags & VM_ACCOUNT
    # heuristic mode checks each charge alone, not the sum
    assert p.mmap(0, n, RW, ANON) > 0
    check_invariants(k)


@pytest.mark.parametrize(
    "prot, flags",
    [
        (PROT_READ, ANON),  # not writable: nothing to commit
        (RW, ANON | MAP_NORESERVE),
    ],
    ids=["readonly", "noreserve"],
)
def test_unaccounted_mappings_may_be_huge(k, prot, flags):
    p = k.spawn()
    a = p.mmap(0, TIB, prot, flags)
    assert a > 0
    assert not vma_lookup(p.mm, a).vm_flags & VM_ACCOUNT
    assert p.munmap(a, TIB) == 0
    check_invariants(k)


def test_shared_anonymous_memory_is_charged_unless_noreserve(k):
    p = k.spawn()
    assert p.mmap(0, TIB, RW, MAP_SHARED | MAP_ANONYMOUS) == -ENOMEM
    assert p.mmap(0, TIB, PROT_READ, MAP_SHARED | MAP_ANONYMOUS) == -ENOMEM  # shmem charges all
    a = p.mmap(0, TIB, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE)
    assert a > 0
    assert not vma_lookup(p.mm, a).vm_flags & VM_ACCOUNT
    check_invariants(k)


def test_shared_file_mappings_and_hugetlb_are_not_charged(k):
    p = k.spawn()
    fd = p.open("/tmp", O_TMPFILE | O_RDWR)
    assert p.mmap(0, TIB, RW, MAP_SHARED, fd, 0) > 0
    assert p.mmap(0, TIB, RW, MAP_PRIVATE, fd, 0) == -ENOMEM  # private writable file
    # hugetlb keeps its own reservations (the pool), never VM_ACCOUNT
    h = p.mmap(0, 1 << 21, RW, ANON | MAP_HUGETLB)
    assert h > 0
    assert not vma_lookup(p.mm, h).vm_flags & VM_ACCOUNT
    assert k.stats["vm_enough_memory_failed"] == 1
    check_invariants(k)


def test_a_refused_map_fixed_leaves_the_old_mapping(k):
    p = k.spawn()
    a = p.mmap(0, 4 * PAGE, RW, ANON)
    p.store(a, b"keep")
    assert p.mmap(a, TIB, RW, ANON | MAP_FIXED) == -ENOMEM
    assert p.load(a, 4) == b"keep"
    check_invariants(k)


def test_map_fixed_over_accounted_pages_charges_only_the_rest(k):
    p = k.spawn()
    n = limit(k)
    a = p.mmap(0, n, RW, ANON)
    # n + 1 pages over n accounted ones: a charge of one page
    assert p.mmap(a, n + PAGE, RW, ANON | MAP_FIXED) == a
    check_invariants(k)


def test_mremap_growth_is_charged(k):
    p = k.spawn()
    a = p.mmap(0, PAGE, RW, ANON)
    p.store(a, b"data")
    assert p.mremap(a, PAGE, TIB, MREMAP_MAYMOVE) == -ENOMEM  # in place or moved
    assert p.mremap(a, PAGE, limit(k) + 2 * PAGE) == -ENOMEM  # delta over the limit
    assert p.mremap(a, PAGE, limit(k) + PAGE) == a  # delta == the limit
    assert p.load(a, 4) == b"data"
    check_invariants(k)


def test_mremap_dontunmap_charges_the_whole_new_range():
    k = Kernel(KConfig(ram_bytes=64 << 20))
    p = k.spawn()
    n = limit(k) + PAGE
    a = p.mmap(0, n, RW, ANON | MAP_NORESERVE)
    assert p.mremap(a, n, n, MREMAP_MAYMOVE | MREMAP_DONTUNMAP) > 0  # not accounted
    b = p.mmap(0, n - PAGE, RW, ANON)
    assert p.mremap(b, n - PAGE, n - PAGE, MREMAP_MAYMOVE | MREMAP_DONTUNMAP) > 0
    c = p.mmap(0, 2 * PAGE, RW, ANON)
    d = p.mmap(0, 4 * PAGE, RW, ANON)
    assert p.mremap(c, 2 * PAGE, 2 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, d) == d
    check_invariants(k)


def test_mprotect_making_private_memory_writable_is_charged(k):
    p = k.spawn()
    a = p.mmap(0, TIB, PROT_READ, ANON)
    assert p.mprotect(a, TIB, RW) == -ENOMEM
    assert not vma_lookup(p.mm, a).vm_flags & VM_ACCOUNT
    assert p.mprotect(a, 4 * PAGE, RW) == 0
    assert vma_lookup(p.mm, a).vm_flags & VM_ACCOUNT
    check_invariants(k)


def test_mprotect_gives_back_the_charge_of_memory_never_touched(k):
    p = k.spawn()
    a = p.mmap(0, 8 * PAGE, RW, ANON)
    b = a + 4 * PAGE
    p.store(b, b"x")  # the second half gets an anon_vma (and so does the vma)
    assert p.mprotect(a, 8 * PAGE, PROT_READ) == 0
    # one vma with an anon_vma: the kernel cannot tell which pages were
    # written, so the charge (and VM_ACCOUNT) stays
    assert vma_lookup(p.mm, a).vm_flags & VM_ACCOUNT
    c = p.mmap(0, 4 * PAGE, RW, ANON)
    assert p.mprotect(c, 4 * PAGE, PROT_READ) == 0
    assert not vma_lookup(p.mm, c).vm_flags & VM_ACCOUNT
    check_invariants(k)


def test_overcommit_always_never_refuses():
    k = Kernel(KConfig(ram_bytes=64 << 20))
    k.sysctl_overcommit_memory = OVERCOMMIT_ALWAYS
    p = k.spawn()
    assert p.mmap(0, TIB, RW, ANON) > 0
    k.sysctl_overcommit_memory = OVERCOMMIT_NEVER
    with pytest.raises(NotImplementedError, match="OVERCOMMIT_GUESS"):
        p.mmap(0, PAGE, RW, ANON)

"""Each invariant, broken on purpose, is caught."""

import pytest

from hmmsim.include.mm_types import MM_ANONPAGES, PGTY_buddy
from hmmsim.include.mman import MADV_HUGEPAGE, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from hmmsim.include.pgtable import pte_pfn
from hmmsim.kconfig import PMD_SIZE
from hmmsim.locking import Lock
from hmmsim.mm.pgtable import pmd_offset, pmdp_get, pte_offset_map, set_pte_at
from hmmsim.testing.invariants import InvariantViolation, check_invariants
from hmmsim.userspace import entry_at

RW = PROT_READ | PROT_WRITE


@pytest.fixture
def mapped(k, proc):
    a = proc.mmap(0, 2 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    proc.store(a, b"x")
    check_invariants(k)
    return a, k.mem.pfn_to_page(pte_pfn(entry_at(proc, a)[1]))


def caught(k, text):
    with pytest.raises(InvariantViolation) as e:
        check_invariants(k)
    assert any(text in p for p in e.value.problems), e.value.problems


def test_clean_kernel_passes(k):
    assert check_invariants(k) == []
    assert check_invariants(k, raise_on_error=False) == []


def test_refcount_leak(k, mapped):
    a, page = mapped
    page.a._refcount[page.i] += 1
    caught(k, "references found")


def test_mapcount_mismatch(k, mapped):
    a, page = mapped
    page.a._mapcount[page.i] += 1
    caught(k, "_mapcount says 2")


def test_rss_mismatch(k, proc, mapped):
    proc.mm.rss_stat[MM_ANONPAGES] += 1
    caught(k, "rss anon counter")


def test_mapping_a_free_page(k, proc, mapped):
    a, page = mapped
    free = k.mem.alloc_pages(0)
    pfn = free.pfn
    from hmmsim.include.mm_types import folio_put

    folio_put(free)
    pmdp = pmd_offset(proc.mm, a)
    ptep = pte_offset_map(k, pmdp_get(k, pmdp), a + 4096)
    set_pte_at(proc.mm, a + 4096, ptep, (pfn << 12) | 0x67)
    caught(k, "maps free page")


def test_undecodable_or_outside_vma_entry(k, proc, mapped):
    a, page = mapped
    proc.munmap(a + 4096, 4096)
    pmdp = pmd_offset(proc.mm, a)
    ptep = pte_offset_map(k, pmdp_get(k, pmdp), a + 4096)
    set_pte_at(proc.mm, a + 4096, ptep, 0x8000000000001000 | 0x67)
    caught(k, "outside any vma")


def test_free_list_corruption(k, mapped):
    a, page = mapped
    page.a.flags[page.i] |= PGTY_buddy
    caught(k, "PGTY_buddy disagrees")


def test_held_lock(k, mapped):
    Lock(k, "leaked").lock()
    caught(k, "locks held")


def test_missing_deposit(k, proc):
    a = proc.mmap(0, 2 * PMD_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    h = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    proc.madvise(h, PMD_SIZE, MADV_HUGEPAGE)
    proc.store(h, b"x")
    check_invariants(k)
    k.deposited.clear()
    caught(k, "without a deposited table")


def test_anon_index_mismatch(k, mapped):
    a, page = mapped
    page.a.index[page.i] += 1
    caught(k, "does not give address")


def test_stale_device_mirror_entry_is_caught():
    import numpy as np

    from hmmsim.drivers.test_hmm import hmm_dmirror_init
    from hmmsim.drivers.test_hmm_uapi import HMM_DMIRROR_READ, hmm_dmirror_cmd
    from hmmsim.include.mman import O_RDWR
    from hmmsim.kernel import Kernel

    k = Kernel(ram_bytes=256 << 20)
    hmm_dmirror_init(k)
    p = k.spawn()
    a = p.mmap(0, 2 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    p.store(a, b"x")
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    mirror = np.zeros(2048, dtype=np.int32)
    assert p.ioctl(fd, HMM_DMIRROR_READ, hmm_dmirror_cmd(addr=a, ptr=mirror, npages=2)) == 0
    check_invariants(k)
    d = p.fds[fd].private
    # a driver that forgot to invalidate: the CPU moves on, the mirror does not
    p.mm.notifier_subscriptions.remove(d.notifier)
    p.munmap(a, 4096)
    p.mm.notifier_subscriptions.append(d.notifier)
    caught(k, "but the CPU has")


def test_byte_oracle_names_the_first_lost_word(proc, mapped):
    import numpy as np

    from hmmsim.testing.invariants import check_bytes

    a, _ = mapped
    shadow = np.arange(1024, dtype=np.int32)
    proc.store_array(a, shadow)
    check_bytes(proc, a, shadow)  # what was stored reads back
    proc.store(a + 4 * 700, b"\xff\xff\xff\xff")
    with pytest.raises(AssertionError, match=f"word 700 at {a:#x}"):
        check_bytes(proc, a, shadow)

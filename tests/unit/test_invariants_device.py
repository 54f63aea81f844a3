"""The device-side and at-rest invariants, each broken on purpose and caught."""

import numpy as np
import pytest

from hmmsim.drivers.test_hmm import hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_READ,
    hmm_dmirror_cmd,
)
from hmmsim.include.migrate import (
    MIGRATE_PFN_DEVICE_PRIVATE,
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_VALID,
    migrate_pfn,
)
from hmmsim.include.mm_types import PG_locked
from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, O_RDWR, PROT_READ, PROT_WRITE
from hmmsim.include.pgtable import pfn_pte, pte_pfn
from hmmsim.kernel import Kernel
from hmmsim.locking import SPIN_LIMIT, Livelock, Scheduler
from hmmsim.mm.migrate import make_migration_entry_for
from hmmsim.mm.pgtable import alloc_table, pmd_offset, pmdp_get, pte_offset_map, set_pte_at
from hmmsim.testing.invariants import (
    InvariantViolation,
    check_invariants,
    pfn_word_problems,
    strict_word_check,
)
from hmmsim.userspace import entry_at

RW = PROT_READ | PROT_WRITE


@pytest.fixture
def dev():
    """A kernel with dmirror, one process, 4 pages of data, 2 of them on device 0."""
    k = Kernel(ram_bytes=64 << 20, hugetlb_pages=0, features=frozenset({"a", "d"}))
    hmm_dmirror_init(k)
    p = k.spawn()
    a = p.mmap(0, 4 * 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    p.store_array(a, np.arange(4096, dtype=np.int32))
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    buf = np.zeros(2048, dtype=np.int32)
    assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd(addr=a, ptr=buf, npages=2)) == 0
    check_invariants(k)
    return k, p, a, fd


def caught(k, text):
    with pytest.raises(InvariantViolation) as e:
        check_invariants(k)
    assert any(text in p for p in e.value.problems), e.value.problems


def ptep_of(p, addr):
    k = p.mm.k
    return pte_offset_map(k, pmdp_get(k, pmd_offset(p.mm, addr)), addr)


def ram_page(k, p, addr):
    return k.mem.pfn_to_page(pte_pfn(entry_at(p, addr)[1]))


def test_locked_page_at_rest(dev):
    k, p, a, _ = dev
    page = ram_page(k, p, a + 3 * 4096)
    page.a.flags[page.i] |= PG_locked
    caught(k, "is locked between operations")


def test_migration_entry_left_behind(dev):
    k, p, a, _ = dev
    page = ram_page(k, p, a + 3 * 4096)
    entry = make_migration_entry_for(page, write=True, anon_exclusive=True)
    set_pte_at(p.mm, a + 3 * 4096, ptep_of(p, a + 3 * 4096), k.swp.swp_entry_to_pte(entry))
    caught(k, "migration entry for folio")


def test_leaked_page_table(dev):
    k, *_ = dev
    alloc_table(k)
    caught(k, "referenced by nothing (leaked)")


def test_present_pte_naming_a_device_private_page(dev):
    k, p, a, _ = dev
    d = k.devices["/dev/hmm_dmirror0"]
    dpage = d.free_pages[len(d.free_pages) - 1]
    set_pte_at(p.mm, a + 3 * 4096, ptep_of(p, a + 3 * 4096), pfn_pte(dpage.pfn, 0x27))
    caught(k, "a present entry maps device-private page")


def test_notifier_sequence_going_back(dev):
    k, p, a, fd = dev
    mirror = p.fds[fd].private
    mirror.notifier.invalidate_seq -= 2
    caught(k, "sequence went back")


@pytest.mark.parametrize(
    "breakage, text",
    [
        ("ref", "has a reference"),
        ("mapping", "stale folio->mapping"),
        ("lock", "has the page lock"),
        ("twice", "is free twice"),
        ("lost", "lost to the driver"),
    ],
)
def test_device_page_in_exactly_one_state(dev, breakage, text):
    k, *_ = dev
    d = k.devices["/dev/hmm_dmirror0"]
    page = d.free_pages[len(d.free_pages) - 1]
    if breakage == "ref":
        page.a._refcount[page.i] = 1
    elif breakage == "mapping":
        page.a.mapping[page.i] = 0x1235
    elif breakage == "lock":
        page.a.flags[page.i] |= PG_locked
        text = "has the page lock"
    elif breakage == "twice":
        d.free_pages.append(page)
    elif breakage == "lost":
        d.free_pages.pop()
    problems = check_invariants(k, raise_on_error=False)
    assert any(text in x for x in problems), problems


def test_word_decoding(dev):
    k, p, a, _ = dev
    page = ram_page(k, p, a + 3 * 4096)
    good = [migrate_pfn(page.pfn) | MIGRATE_PFN_MIGRATE, MIGRATE_PFN_MIGRATE, 0]
    page.set(PG_locked)  # a collected source is locked by the migration
    assert pfn_word_problems(k, "migrate", good) == []
    page.clear(PG_locked)
    bad = {
        "undefined flag bit 2": migrate_pfn(page.pfn) | 4,
        "a PFN without VALID": (page.pfn << 6) | MIGRATE_PFN_MIGRATE,
        "does not decode": migrate_pfn((1 << 40) - 1),
        "MIGRATE_PFN_DEVICE_PRIVATE is set": migrate_pfn(page.pfn) | MIGRATE_PFN_DEVICE_PRIVATE,
    }
    for text, word in bad.items():
        problems = pfn_word_problems(k, "migrate", [word])
        assert any(text in x for x in problems), (text, problems)
    L = k.hmm
    assert pfn_word_problems(k, "hmm", [L.HMM_PFN_VALID | page.pfn, 0]) == []
    both = pfn_word_problems(k, "hmm", [L.HMM_PFN_VALID | L.HMM_PFN_ERROR | page.pfn])
    assert any("both VALID and ERROR" in x for x in both)
    assert any(
        "does not decode" in x for x in pfn_word_problems(k, "hmm", [L.HMM_PFN_VALID | (1 << 40)])
    )
    with pytest.raises(InvariantViolation):
        strict_word_check(k, "migrate", [MIGRATE_PFN_VALID | (1 << 50)])


def test_word_checks_run_on_every_hmm_range_fault(dev):
    k, p, a, fd = dev
    seen = []
    k.word_checks.append(lambda k_, kind, words, n=None: seen.append(kind))
    buf = np.zeros(4096, dtype=np.int32)
    assert p.ioctl(fd, HMM_DMIRROR_READ, hmm_dmirror_cmd(addr=a, ptr=buf, npages=4)) == 0
    assert "hmm" in seen


def test_single_thread_busy_retry_is_a_livelock():
    s = Scheduler()
    for _ in range(SPIN_LIMIT - 1):
        s.point("retry", "walk at 0x1000")
    s.point("retry", "walk at 0x2000")  # progress: a different place, count restarts
    for _ in range(SPIN_LIMIT - 2):
        s.point("retry", "walk at 0x2000")
    with pytest.raises(Livelock, match="busy-retried"):
        s.point("retry", "walk at 0x2000")

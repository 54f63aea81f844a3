"""Series (e): hmm_range_fault faults and collects for migration in one walk.

Every expectation here is written down by hand from the kernel's rules (the
series' mm/hmm.c hmm_vma_handle_migrate_prepare and the merged collect rules
of mm/migrate_device.c it follows), never by running the collect code a
second way: the words hmm_range_fault returns, the page-table entries it
leaves, the locks it takes, and the src[] migrate_hmm_range_setup derives.
"""

import numpy as np
import pytest

from hmmsim.drivers.test_hmm import hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd
from hmmsim.errno import EBUSY, ERANGE
from hmmsim.include.hmm import hmm_range
from hmmsim.include.migrate import (
    MIGRATE_PFN_COMPOUND,
    MIGRATE_PFN_DEVICE_PRIVATE,
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_SHIFT,
    MIGRATE_PFN_VALID,
    MIGRATE_PFN_WRITE,
    MIGRATE_VMA_SELECT_COMPOUND,
    MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
    MIGRATE_VMA_SELECT_SYSTEM,
    migrate_vma,
)
from hmmsim.include.mm_types import PG_locked, folio_order, page_folio
from hmmsim.include.mman import (
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    O_RDWR,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.include.mmu_notifier import MMU_NOTIFY_MIGRATE
from hmmsim.include.pgtable import pmd_present, pmd_trans_huge, pte_pfn, pte_present, pte_write
from hmmsim.kconfig import HPAGE_PMD_NR, PAGE_SIZE, PMD_SIZE, KConfig
from hmmsim.kernel import Kernel
from hmmsim.mm.hmm import hmm_range_fault
from hmmsim.mm.memremap import device_private_page_to_offset, is_device_private_page
from hmmsim.mm.migrate_device import (
    MIGRATE_VMA_FAULT,
    migrate_hmm_range_setup,
    migrate_vma_finalize,
    migrate_vma_setup,
)
from hmmsim.mm.mmap import vma_lookup
from hmmsim.mm.mmu_notifier import (
    mmu_interval_notifier,
    mmu_interval_notifier_insert,
    mmu_interval_notifier_remove,
    mmu_interval_read_begin,
    mmu_interval_set_seq,
)
from hmmsim.mm.pgtable import pmd_offset, pmdp_get, ptep_get, walk_pte
from hmmsim.testing.invariants import check_invariants

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
SYS = MIGRATE_VMA_SELECT_SYSTEM
OWNER = object()  # the "device" of the tests that use no dmirror


class Sub:
    """An interval notifier that, like dmirror, ignores its own migrations."""

    def __init__(self, owner):
        self.owner = owner
        self.events = []

    def invalidate(self, mni, r, cur_seq):
        self.events.append((r.event, r.start, r.end))
        if r.event == MMU_NOTIFY_MIGRATE and r.owner is self.owner:
            return True
        mmu_interval_set_seq(mni, cur_seq)
        return True


def kernel(features="de", **kw):
    return Kernel(KConfig(features=frozenset(features), ram_bytes=64 << 20, **kw))


def region(k, p, npmd=2, thp=False):
    raw = p.mmap(0, (npmd + 1) * PMD_SIZE, RW, ANON)
    h = (raw + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    if thp:
        p.madvise(raw, (npmd + 1) * PMD_SIZE, MADV_HUGEPAGE)
    return h


def pte_at(p, addr):
    _, ptep = walk_pte(p.mm, addr)
    return ptep_get(p.k, ptep)


def walk(p, start, n, *, flags=SYS, fault=False, write=False, owner=OWNER, fault_page=None):
    """One hmm_range_fault with HMM_PFN_REQ_MIGRATE (+ REQ_FAULT/REQ_WRITE)."""
    k = p.k
    L = k.hmm
    sub = Sub(owner)
    mni = mmu_interval_notifier()
    mmu_interval_notifier_insert(mni, p.mm, start, n * PAGE_SIZE, sub)
    m = migrate_vma(src=[0] * n, dst=[0] * n, pgmap_owner=owner, flags=flags, fault_page=fault_page)
    df = L.HMM_PFN_REQ_MIGRATE
    if fault:
        df |= L.HMM_PFN_REQ_FAULT
    if write:
        df |= L.HMM_PFN_REQ_WRITE
    r = hmm_range(
        notifier=mni,
        start=start,
        end=start + n * PAGE_SIZE,
        hmm_pfns=[0] * n,
        default_flags=df,
        dev_private_owner=owner,
        migrate=m,
    )
    p.mm.mmap_lock.down_read()
    sub.tries = 0
    while True:
        # the driver's loop (dmirror_range_fault): -EBUSY after an invalidation
        # of the interval (a COW fault's MMU_NOTIFY_CLEAR, say) means: put back
        # what the walk collected so far, then walk again from read_begin
        sub.tries += 1
        r.notifier_seq = mmu_interval_read_begin(mni)
        ret = hmm_range_fault(r)
        if ret != -EBUSY or sub.tries == 10:
            return ret, r, m, mni, sub
        migrate_hmm_range_setup(r)
        if m.vma is not None:
            migrate_vma_finalize(m)
        m.vma = None
        r.hmm_pfns[:] = [0] * n


def finish(p, r, m, mni):
    """migrate_hmm_range_setup, no destinations, finalize: everything goes back."""
    migrate_hmm_range_setup(r)
    if m.vma is not None:
        migrate_vma_finalize(m)
    p.mm.mmap_lock.up_read()
    mmu_interval_notifier_remove(mni)


def test_empty_range_is_faulted_then_collected_in_the_same_call():
    """REQ_FAULT on pte_none read-faults the zero page in; the rewalk collects it
    as an empty page: HMM_PFN_MIGRATE without VALID, the zero PTE untouched."""
    k = kernel()
    k.thp_enabled = "never"
    p = k.spawn()
    h = region(k, p)
    L = k.hmm
    rewalks = k.stats["hmm_range_fault_rewalks"]
    ret, r, m, mni, sub = walk(p, h, 8, fault=True)
    assert ret == 0
    assert r.hmm_pfns == [L.HMM_PFN_MIGRATE] * 8
    assert k.stats["hmm_range_fault_rewalks"] == rewalks + 1  # one fault, one rewalk
    for j in range(8):
        pte = pte_at(p, h + j * PAGE_SIZE)
        assert pte_present(pte) and pte_pfn(pte) == k.mem.zero_pfn
    # one MMU_NOTIFY_MIGRATE bracket over the range, with the walker as owner
    assert sub.events == [(MMU_NOTIFY_MIGRATE, h, h + 8 * PAGE_SIZE)]
    assert (m.vma, m.start, m.end) == (vma_lookup(p.mm, h), h, h + 8 * PAGE_SIZE)
    migrate_hmm_range_setup(r)
    assert m.src == [MIGRATE_PFN_MIGRATE] * 8 and m.cpages == 8 and m.npages == 8
    migrate_vma_finalize(m)
    p.mm.mmap_lock.up_read()
    check_invariants(k)


def test_present_pages_become_migration_entries_and_holes_empty_slots():
    k = kernel()
    k.thp_enabled = "never"
    p = k.spawn()
    h = region(k, p)
    L = k.hmm
    for j in range(4):
        p.store(h + j * PAGE_SIZE, bytes([j + 1]) * 8)
    pfns = [pte_pfn(pte_at(p, h + j * PAGE_SIZE)) for j in range(4)]
    ret, r, m, mni, _ = walk(p, h, 8)
    assert ret == 0
    want = [L.HMM_PFN_VALID | L.HMM_PFN_WRITE | L.HMM_PFN_MIGRATE | f for f in pfns]
    assert r.hmm_pfns == want + [L.HMM_PFN_MIGRATE] * 4
    swp = k.swp
    for j, pfn in enumerate(pfns):
        pte = pte_at(p, h + j * PAGE_SIZE)
        assert not pte_present(pte)
        e = swp.softleaf_from_pte(pte)
        assert swp.softleaf_is_migration_write(e) and swp.softleaf_to_pfn(e) == pfn
        page = k.mem.pfn_to_page(pfn)
        assert page_folio(page).test(PG_locked)
    for j in range(4, 8):
        assert pte_at(p, h + j * PAGE_SIZE) == 0  # pte_none: nothing installed
    migrate_hmm_range_setup(r)
    page_src = MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE | MIGRATE_PFN_WRITE
    assert m.src == [page_src | (f << MIGRATE_PFN_SHIFT) for f in pfns] + [MIGRATE_PFN_MIGRATE] * 4
    assert m.cpages == 8
    migrate_vma_finalize(m)
    p.mm.mmap_lock.up_read()
    for j, pfn in enumerate(pfns):  # no destination: the old mappings are back
        pte = pte_at(p, h + j * PAGE_SIZE)
        assert pte_present(pte) and pte_write(pte) and pte_pfn(pte) == pfn
        assert not page_folio(k.mem.pfn_to_page(pfn)).test(PG_locked)
        assert p.load(h + j * PAGE_SIZE, 8) == bytes([j + 1]) * 8
    check_invariants(k)


def test_write_fault_then_collect_the_new_page():
    """REQ_FAULT|REQ_WRITE on a zero-page PTE: the write fault replaces it by a
    new anon page (a COW: MMU_NOTIFY_CLEAR on the interval, so that call says
    -EBUSY and the driver walks again); the next walk collects the new page
    (VALID|WRITE|MIGRATE)."""
    k = kernel()
    k.thp_enabled = "never"
    p = k.spawn()
    h = region(k, p)
    L = k.hmm
    p.load(h, 1)
    assert pte_pfn(pte_at(p, h)) == k.mem.zero_pfn
    ret, r, m, mni, sub = walk(p, h, 1, fault=True, write=True)
    assert ret == 0 and sub.tries == 2
    e = k.swp.softleaf_from_pte(pte_at(p, h))
    assert k.swp.softleaf_is_migration_write(e)
    new = k.swp.softleaf_to_pfn(e)
    assert new != k.mem.zero_pfn
    assert r.hmm_pfns == [L.HMM_PFN_VALID | L.HMM_PFN_WRITE | L.HMM_PFN_MIGRATE | new]
    finish(p, r, m, mni)
    assert pte_pfn(pte_at(p, h)) == new and p.load(h, 4) == bytes(4)
    check_invariants(k)


def test_thp_only_partly_covered_is_split_then_its_pages_collected():
    k = kernel()
    p = k.spawn()
    h = region(k, p, thp=True)
    L = k.hmm
    p.store_array(h, np.arange(PMD_SIZE // 4, dtype=np.int32))
    pmd = pmdp_get(k, pmd_offset(p.mm, h))
    assert pmd_trans_huge(pmd)
    base = pte_pfn(pmd)  # the PFN field sits where a PTE's does
    ret, r, m, mni, _ = walk(p, h + PAGE_SIZE, 2, flags=SYS | MIGRATE_VMA_SELECT_COMPOUND)
    assert ret == 0
    # the split during collect: the PMD is a page table now, the folio order 0
    assert not pmd_trans_huge(pmdp_get(k, pmd_offset(p.mm, h)))
    assert r.hmm_pfns == [L.HMM_PFN_VALID | L.HMM_PFN_WRITE | L.HMM_PFN_MIGRATE | (base + j)
                          for j in (1, 2)]  # fmt: skip
    assert folio_order(page_folio(k.mem.pfn_to_page(base + 1))) == 0
    for j in (0, 3, 511):  # the uncovered pages stay mapped, by PTEs
        pte = pte_at(p, h + j * PAGE_SIZE)
        assert pte_present(pte) and pte_pfn(pte) == base + j
    finish(p, r, m, mni)
    assert (p.load_array(h, PMD_SIZE // 4) == np.arange(PMD_SIZE // 4)).all()
    check_invariants(k)


def test_thp_whole_pmd_is_one_compound_slot():
    k = kernel()
    p = k.spawn()
    h = region(k, p, thp=True)
    L = k.hmm
    p.store_array(h, np.arange(PMD_SIZE // 4, dtype=np.int32))
    base = pte_pfn(pmdp_get(k, pmd_offset(p.mm, h)))
    order9 = 9 << L.HMM_PFN_ORDER_SHIFT
    ret, r, m, mni, _ = walk(p, h, HPAGE_PMD_NR, flags=SYS | MIGRATE_VMA_SELECT_COMPOUND)
    assert ret == 0
    head = L.HMM_PFN_VALID | L.HMM_PFN_WRITE | order9
    assert r.hmm_pfns[0] == head | L.HMM_PFN_MIGRATE | L.HMM_PFN_COMPOUND | base
    assert r.hmm_pfns[1:] == [head | (base + j) for j in range(1, HPAGE_PMD_NR)]
    pmd = pmdp_get(k, pmd_offset(p.mm, h))
    e = k.swp.softleaf_from_pmd(pmd)
    assert not pmd_present(pmd) and k.swp.softleaf_is_migration_write(e)
    folio = page_folio(k.mem.pfn_to_page(base))
    assert folio.test(PG_locked) and folio_order(folio) == 9
    migrate_hmm_range_setup(r)
    assert m.src[0] == (MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE | MIGRATE_PFN_WRITE
                        | MIGRATE_PFN_COMPOUND | (base << MIGRATE_PFN_SHIFT))  # fmt: skip
    assert m.src[1:] == [0] * (HPAGE_PMD_NR - 1) and m.cpages == 1
    migrate_vma_finalize(m)
    p.mm.mmap_lock.up_read()
    assert pmd_trans_huge(pmdp_get(k, pmd_offset(p.mm, h)))  # mapped back whole
    check_invariants(k)


@pytest.mark.parametrize("bug", [False, True])
def test_pte_mapped_large_folio_is_split_not_skipped(bug):
    """A THP left PTE-mapped by a partial munmap: collect splits it. The mutant
    collect_skips_large_folio leaves the pages uncollected (VALID, no MIGRATE)."""
    k = kernel(bugs=frozenset({"collect_skips_large_folio"}) if bug else frozenset())
    p = k.spawn()
    h = region(k, p, thp=True)
    L = k.hmm
    p.store_array(h, np.arange(PMD_SIZE // 4, dtype=np.int32))
    base = pte_pfn(pmdp_get(k, pmd_offset(p.mm, h)))
    p.munmap(h + PMD_SIZE - PAGE_SIZE, PAGE_SIZE)
    assert folio_order(page_folio(k.mem.pfn_to_page(base))) == 9  # still one folio
    ret, r, m, mni, _ = walk(p, h, 4)
    assert ret == 0
    words = [L.HMM_PFN_VALID | L.HMM_PFN_WRITE | (base + j) for j in range(4)]
    if bug:
        assert r.hmm_pfns == words
        assert folio_order(page_folio(k.mem.pfn_to_page(base))) == 9
    else:
        assert r.hmm_pfns == [w | L.HMM_PFN_MIGRATE for w in words]
        assert folio_order(page_folio(k.mem.pfn_to_page(base))) == 0
    finish(p, r, m, mni)
    check_invariants(k)


def test_range_over_two_vmas_is_erange_and_setup_unwinds_it():
    k = kernel()
    k.thp_enabled = "never"
    p = k.spawn()
    a = p.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    p.mprotect(a + 2 * PAGE_SIZE, 2 * PAGE_SIZE, PROT_READ)  # two vmas now
    p.store(a, b"x")
    pfn = pte_pfn(pte_at(p, a))
    ret, r, m, mni, _ = walk(p, a, 4)
    assert ret == -ERANGE
    # the first vma was collected before the second was met
    assert not pte_present(pte_at(p, a))
    assert m.vma is vma_lookup(p.mm, a) and m.end == a + 2 * PAGE_SIZE
    assert p.mm.invalidating == 0  # the notifier bracket was closed
    finish(p, r, m, mni)
    assert pte_pfn(pte_at(p, a)) == pfn and p.load(a, 1) == b"x"
    check_invariants(k)


def _dmirror_world(features="de", **kw):
    k = kernel(features, **kw)
    hmm_dmirror_init(k)
    k.thp_enabled = "never"
    p = k.spawn()
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    d = p.fds[fd].private
    a = p.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    p.store_array(a, np.arange(4 * 1024, dtype=np.int32))
    buf = np.zeros(4 * 1024, dtype=np.int32)
    cmd = hmm_dmirror_cmd(addr=a, ptr=buf, npages=4)
    assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == 0 and cmd.cpages == 4
    return k, p, d, a


@pytest.mark.parametrize("features,cr", [("de", None), ("abcde", "c-first"), ("abcde", "e-first")])
def test_owned_device_private_pages_are_collected(features, cr):
    """SELECT_DEVICE_PRIVATE with the pages' owner: VALID|WRITE|MIGRATE and the
    device page's PFN, or with (c) its offset and HMM_PFN_DEVICE_PRIVATE (at the
    bit the conflict resolution gives it); src[] names the same page."""
    k, p, d, a = _dmirror_world(features, conflict_resolution=cr)
    L = k.hmm
    pages = [k.softleaf_to_page(k.swp.softleaf_from_pte(pte_at(p, a + j * PAGE_SIZE)))
             for j in range(4)]  # fmt: skip
    assert all(is_device_private_page(pg) for pg in pages)
    c = k.config.has("c")
    field = [device_private_page_to_offset(pg) if c else pg.pfn for pg in pages]
    ret, r, m, mni, _ = walk(p, a, 4, flags=MIGRATE_VMA_SELECT_DEVICE_PRIVATE, owner=d.mdevice)
    assert ret == 0
    dpf = L.HMM_PFN_DEVICE_PRIVATE if c else 0
    assert r.hmm_pfns == [L.HMM_PFN_VALID | L.HMM_PFN_WRITE | L.HMM_PFN_MIGRATE | dpf | f
                          for f in field]  # fmt: skip
    for j, pg in enumerate(pages):
        e = k.swp.softleaf_from_pte(pte_at(p, a + j * PAGE_SIZE))
        assert k.swp.softleaf_is_migration_write(e) and k.softleaf_to_page(e) == pg
        assert page_folio(pg).test(PG_locked)
    migrate_hmm_range_setup(r)
    mdp = MIGRATE_PFN_DEVICE_PRIVATE if k.config.has("a") and c else 0
    assert m.src == [MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE | MIGRATE_PFN_WRITE | mdp
                     | (f << MIGRATE_PFN_SHIFT) for f in field]  # fmt: skip
    migrate_vma_finalize(m)
    p.mm.mmap_lock.up_read()
    assert (p.load_array(a, 4 * 1024) == np.arange(4 * 1024)).all()
    check_invariants(k)


def test_foreign_device_private_page_is_faulted_home_and_collected():
    """REQ_FAULT|REQ_MIGRATE by another owner: the walk faults the device page
    back to RAM (migrate_to_ram) and collects the new RAM page in the same call."""
    k, p, d, a = _dmirror_world()
    L = k.hmm
    ret, r, m, mni, _ = walk(p, a, 2, fault=True, owner=OWNER)
    assert ret == 0
    for j in range(2):
        e = k.swp.softleaf_from_pte(pte_at(p, a + j * PAGE_SIZE))
        assert k.swp.softleaf_is_migration(e)
        pfn = k.swp.softleaf_to_pfn(e)
        assert pfn < k.mem.ram.pages.nr  # a RAM page now
        assert r.hmm_pfns[j] & ~L.HMM_PFN_WRITE == L.HMM_PFN_VALID | L.HMM_PFN_MIGRATE | pfn
    finish(p, r, m, mni)
    assert (p.load_array(a, 2 * 1024) == np.arange(2 * 1024)).all()
    check_invariants(k)


def test_migrate_vma_setup_goes_through_the_walk_and_can_fault():
    """With (e), migrate_vma_setup is hmm_range_fault + migrate_hmm_range_setup;
    MIGRATE_VMA_FAULT adds REQ_FAULT: a foreign device page is brought home and
    collected (src a RAM page); without it the slot is not collected (src 0)."""
    for fault, collected in ((0, False), (MIGRATE_VMA_FAULT, True)):
        k, p, d, a = _dmirror_world()
        events = len(k.notifier_events)
        m = migrate_vma(
            vma=vma_lookup(p.mm, a),
            src=[0],
            dst=[0],
            start=a,
            end=a + PAGE_SIZE,
            pgmap_owner=OWNER,
            flags=SYS | fault,
        )
        p.mm.mmap_lock.down_read()
        assert migrate_vma_setup(m) == 0
        if collected:
            v = m.src[0]
            assert v & (MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE) == (
                MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE
            )
            assert (v >> MIGRATE_PFN_SHIFT) < k.mem.ram.pages.nr and m.cpages == 1
        else:
            assert m.src == [0] and m.cpages == 0
        migrate_vma_finalize(m)
        p.mm.mmap_lock.up_read()
        migrate_events = [e for e in list(k.notifier_events)[events:] if e[0] == MMU_NOTIFY_MIGRATE]
        assert (MMU_NOTIFY_MIGRATE, a, a + PAGE_SIZE, OWNER) in migrate_events
        check_invariants(k)


def test_without_series_e_req_migrate_does_nothing():
    k = kernel("d")
    k.thp_enabled = "never"
    p = k.spawn()
    h = region(k, p)
    p.store(h, b"y")
    assert k.hmm.HMM_PFN_REQ_MIGRATE == 0
    ret, r, m, mni, _ = walk(p, h, 2)
    pfn = pte_pfn(pte_at(p, h))
    L = k.hmm
    assert ret == 0 and r.hmm_pfns == [L.HMM_PFN_VALID | L.HMM_PFN_WRITE | pfn, 0]
    assert m.vma is None and pte_present(pte_at(p, h))
    p.mm.mmap_lock.up_read()


def test_prot_none_vma_is_not_collected_by_the_unified_walk():
    """A review finding the model shows: hmm_vma_walk_test skips a vma without
    VM_READ (every word HMM_PFN_ERROR), so with (e) migrate_vma_setup collects
    nothing from a PROT_NONE vma, where the pinned collect walk takes its page
    and its three holes."""
    from hmmsim.include.mman import PROT_NONE

    for features, want in (("d", 4), ("de", 0)):
        k = kernel(features)
        k.thp_enabled = "never"
        p = k.spawn()
        a = p.mmap(0, 4 * PAGE_SIZE, RW, ANON)
        p.store(a, b"abc")
        pfn = pte_pfn(pte_at(p, a))
        p.mprotect(a, 4 * PAGE_SIZE, PROT_NONE)
        m = migrate_vma(
            vma=vma_lookup(p.mm, a), src=[0] * 4, dst=[0] * 4, start=a, end=a + 4 * PAGE_SIZE,
            flags=SYS,
        )  # fmt: skip
        p.mm.mmap_lock.down_read()
        assert migrate_vma_setup(m) == 0
        if want:
            page = MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE | (pfn << MIGRATE_PFN_SHIFT)
            assert m.src == [page] + [MIGRATE_PFN_MIGRATE] * 3
        else:
            assert m.src == [0] * 4
        assert m.cpages == want
        migrate_vma_finalize(m)
        p.mm.mmap_lock.up_read()
        check_invariants(k)

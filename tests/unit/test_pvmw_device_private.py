"""Series (c)'s page-walk marker: PVMW_DEVICE_PRIVATE (v3+) and the v1/v2 pfn bit.

A device-private offset and a RAM PFN can be the same number under series
(c). These tests build exactly that (the alias fuzzer's driver places a
device page at the offset equal to a live PFN) and check that the walks
keep the two apart in both forms of the marker, that removing the marker
(the mutant pvmw_no_device_private_flag) lets an offset match a present PTE
and a foreign migration entry, and that the checkers see the damage.
"""

from dataclasses import replace

import numpy as np
import pytest

from hmmsim.bug import KernelBug
from hmmsim.fs.task_mmu import pagemap_file
from hmmsim.include.migrate import MIGRATE_PFN_MIGRATE
from hmmsim.include.mm_types import PG_locked, folio_pfn
from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from hmmsim.include.rmap import (
    PVMW_DEVICE_PRIVATE,
    PVMW_MIGRATION,
    PVMW_PFN_DEVICE_PRIVATE,
    page_vma_walk_pfn,
)
from hmmsim.kconfig import ConfigError, KConfig
from hmmsim.kernel import Kernel
from hmmsim.mm.memremap import device_private_offset_to_page, page_to_pfn
from hmmsim.mm.migrate import migrate_pfn, migrate_pfn_from_page
from hmmsim.mm.mmap import vma_lookup
from hmmsim.mm.page_vma_mapped import (
    DEFINE_FOLIO_VMA_WALK,
    check_pmd,
    folio_page_vma_walk_pfn,
    page_vma_mapped_walk,
    page_vma_mapped_walk_done,
    page_vma_walk_flags,
    page_vma_walk_pfn_to_folio,
    page_vma_walk_pfn_to_page,
)
from hmmsim.testing.alias_fuzz import AliasDevice, begin_to_device, finish, run_alias_fuzz
from hmmsim.testing.invariants import (
    InvariantViolation,
    check_invariants,
    pfn_word_problems,
    strict_word_check,
)

RW = PROT_READ | PROT_WRITE
FORMS = ("flag", "pfn-bit")
BUG = "pvmw_no_device_private_flag"


def world(form="flag", bugs=()):
    k = Kernel(
        ram_bytes=64 << 20,
        hugetlb_pages=0,
        features=frozenset("abcd"),
        pvmw_form=form,
        bugs=frozenset(bugs),
    )
    return k, AliasDevice(k, k.config.nr_ram_pages)


def pfn_at(p, addr):
    e = pagemap_file(p, show_pfn=True).entry(addr)
    assert e >> 63, "not present"
    return e & ((1 << 55) - 1)


def fill(v):
    return np.full(1024, v, dtype=np.int32)


def aliased_pair(form, bugs=()):
    """Parent and child over one page; the child's copy (from the parent's
    first page, so in the parent's anon_vma) lives on the device at the
    offset that equals the PFN of the parent's own page."""
    k, dev = world(form, bugs)
    p = k.spawn("parent")
    a = p.mmap(0, 4096, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    p.store_array(a, fill(1))
    c = p.child(p.fork())
    p.store_array(a, fill(2))  # the parent breaks COW: its own page P
    x = pfn_at(p, a)
    o = begin_to_device(k, dev, c, a, 1, lambda: x)  # the child's page -> offset x
    finish(o)
    assert dev.offsets_in_use() == [x]
    return k, dev, p, c, a, x


# --- the helpers ------------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_walk_pfn_and_flags_in_both_forms(form):
    k, dev = world(form)
    d = dev.alloc(want=0x300)
    ram = k.mem.pfn_to_page(0x300)
    flags = page_vma_walk_flags(d, PVMW_MIGRATION)
    if form == "flag":
        assert folio_page_vma_walk_pfn(d) == 0x300
        assert flags == PVMW_MIGRATION | PVMW_DEVICE_PRIVATE
        assert folio_page_vma_walk_pfn(ram) == 0x300
    else:
        assert folio_page_vma_walk_pfn(d) == (0x300 << 1) | PVMW_PFN_DEVICE_PRIVATE
        assert flags == PVMW_MIGRATION  # the marker is in the pfn
        assert folio_page_vma_walk_pfn(ram) == 0x300 << 1
    assert page_vma_walk_flags(ram, PVMW_MIGRATION) == PVMW_MIGRATION
    # the walk reads its page back: the device page, not RAM page 0x300
    assert page_vma_walk_pfn_to_page(k, DEFINE_FOLIO_VMA_WALK(d, None, 0)) == d
    assert page_vma_walk_pfn_to_folio(k, DEFINE_FOLIO_VMA_WALK(ram, None, 0)) == ram
    assert k.warnings == []


@pytest.mark.parametrize("form", FORMS)
def test_without_the_marker_an_offset_reads_back_as_ram(form):
    k, dev = world(form, bugs=[BUG])
    d = dev.alloc(want=0x300)
    w = DEFINE_FOLIO_VMA_WALK(d, None, 0)
    assert not w.flags & PVMW_DEVICE_PRIVATE
    assert not (form == "pfn-bit" and w.pfn & PVMW_PFN_DEVICE_PRIVATE)
    assert page_vma_walk_pfn_to_page(k, w) == k.mem.pfn_to_page(0x300)


def test_pfn_bit_form_loses_the_top_bit_known_bugs_5():
    k = Kernel(features=frozenset("abcd"), pvmw_form="pfn-bit")
    assert page_vma_walk_pfn(k, (1 << 63) | 5) == 10
    k32 = Kernel(features=frozenset("abcd"), pvmw_form="pfn-bit", bits_per_long=32)
    assert page_vma_walk_pfn(k32, (1 << 31) | 5) == 10


def test_mainline_has_no_marker():
    k = Kernel(ram_bytes=64 << 20, hugetlb_pages=0)
    ram = k.mem.pfn_to_page(0x300)
    assert folio_page_vma_walk_pfn(ram) == 0x300
    assert page_vma_walk_flags(ram, PVMW_MIGRATION) == PVMW_MIGRATION
    assert page_vma_walk_pfn(k, 7) == 7
    # pvmw_form only means something with series (c); a bad one is refused
    assert "pvmw" not in repr(KConfig(pvmw_form="pfn-bit"))
    assert "pvmw=pfn-bit" in repr(KConfig(features=frozenset("abcd"), pvmw_form="pfn-bit"))
    with pytest.raises(ConfigError, match="pvmw_form"):
        KConfig(pvmw_form="bit0")


def test_folio_pfn_warns_and_page_to_pfn_is_guarded():
    k, dev = world()
    d = dev.alloc(want=0x300)
    with pytest.raises(KernelBug, match="page_to_pfn"):
        page_to_pfn(d)
    assert k.warnings == []
    with pytest.raises(KernelBug, match="no PFN"):
        folio_pfn(d)
    assert len(k.warnings) == 1 and "folio_pfn" in k.warnings[0].msg
    assert folio_pfn(k.mem.pfn_to_page(0x300)) == 0x300


# --- check_pte's kind test ----------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mutant", [False, True])
def test_check_pte_compares_the_kind(form, mutant):
    k, dev, p, c, a, x = aliased_pair(form, [BUG] if mutant else [])
    d = device_private_offset_to_page(x, k=k)
    ram = k.mem.pfn_to_page(x)
    # a walk for the device folio over the parent, whose PTE maps RAM page x
    w = DEFINE_FOLIO_VMA_WALK(d, vma_lookup(p.mm, a), a)
    found = page_vma_mapped_walk(w)
    page_vma_mapped_walk_done(w)
    assert found == mutant
    # a walk for RAM page x over the child, whose PTE is the device entry x
    w = DEFINE_FOLIO_VMA_WALK(ram, vma_lookup(c.mm, a), a)
    found = page_vma_mapped_walk(w)
    page_vma_mapped_walk_done(w)
    assert found == mutant
    # each still finds its own mapping
    for folio, proc in ((d, c), (ram, p)):
        w = DEFINE_FOLIO_VMA_WALK(folio, vma_lookup(proc.mm, a), a)
        assert page_vma_mapped_walk(w)
        page_vma_mapped_walk_done(w)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mutant", [False, True])
def test_check_pmd_compares_the_kind(form, mutant):
    """check_pmd gets the kind from its caller: a present PMD is never
    device-private, a device-private or device-private migration PMD entry is."""
    k, dev = world(form, [BUG] if mutant else [])
    d = dev.alloc(want=0x400)
    dw = DEFINE_FOLIO_VMA_WALK(d, None, 0)
    rw = DEFINE_FOLIO_VMA_WALK(k.mem.pfn_to_page(0x400), None, 0)
    assert check_pmd(k, dw, 0x400, True) and check_pmd(k, rw, 0x400, False)
    assert check_pmd(k, dw, 0x400, False) == mutant  # a THP of RAM at PFN 0x400
    assert check_pmd(k, rw, 0x400, True) == mutant  # a device THP at offset 0x400
    assert not check_pmd(k, dw, 0x600, True)  # the next PMD: past the folio


# --- end to end: eviction (try_to_migrate) and remove_migration_ptes ------------------------
@pytest.mark.parametrize("form", FORMS)
def test_eviction_walk_keeps_offset_and_pfn_apart(form):
    k, dev, p, c, a, x = aliased_pair(form)
    dev.evict([x])
    assert (p.load_array(a, 1024) == 2).all() and (c.load_array(a, 1024) == 1).all()
    check_invariants(k)
    assert k.warnings == []


@pytest.mark.parametrize("form", FORMS)
def test_eviction_without_the_marker_takes_the_parents_page(form):
    """try_to_migrate of the device folio visits the parent first: its
    present PTE maps RAM page x, the walk matches it, and working out the
    subpage calls folio_pfn() on the device folio: the series' warning, then
    page_to_pfn's guard."""
    k, dev, p, c, a, x = aliased_pair(form, [BUG])
    with pytest.raises(KernelBug, match="page_to_pfn"):
        dev.evict([x])
    assert any("folio_pfn" in w.msg for w in k.warnings)


def _evict_while_parent_migrates(form, bugs=()):
    """The parent's page x is between setup and finalize of a migration (its
    PTE a plain migration entry for PFN x) while the driver evicts device
    page x: remove_migration_ptes(device x -> new RAM) walks the parent too."""
    k, dev, p, c, a, x = aliased_pair(form, bugs)
    o = begin_to_device(k, dev, p, a, 1, lambda: None)
    dev.evict([x])
    finish(o)
    return k, p, c, a


@pytest.mark.parametrize("form", FORMS)
def test_remove_migration_ptes_skips_a_foreign_migration_entry(form):
    k, p, c, a = _evict_while_parent_migrates(form)
    assert (p.load_array(a, 1024) == 2).all()
    assert (c.load_array(a, 1024) == 1).all()
    check_invariants(k)
    assert k.warnings == []


@pytest.mark.parametrize("form", FORMS)
def test_remove_migration_ptes_without_the_marker_loses_the_parents_bytes(form):
    """The parent's migration entry names PFN x, the evicted device page has
    offset x: without the marker the eviction's remove_migration_ptes maps
    the child's bytes into the parent, and the parent's own migration then
    finds no entry to restore."""
    k, p, c, a = _evict_while_parent_migrates(form, [BUG])
    assert (p.load_array(a, 1024) == 1).all()  # the child's bytes: the parent's are lost
    assert (c.load_array(a, 1024) == 1).all()


# --- the migrate-word checker -------------------------------------------------------------------
def test_word_checker_flags_an_offset_without_its_flag():
    """A collected device-private source x is locked and held; the same word
    without MIGRATE_PFN_DEVICE_PRIVATE decodes to RAM page x, which is live
    (mapped) but not the migration's: the flag check alone cannot see that
    (RAM page x is not device-private either), the MIGRATE-source check does."""
    k, dev, p, c, a, x = aliased_pair("flag")
    d = device_private_offset_to_page(x, k=k)
    d.set(PG_locked)  # collect locked it (and holds a reference)
    good = migrate_pfn_from_page(d) | MIGRATE_PFN_MIGRATE
    assert pfn_word_problems(k, "migrate", [good]) == []
    lost = migrate_pfn(x) | MIGRATE_PFN_MIGRATE  # the offset, flag dropped
    problems = pfn_word_problems(k, "migrate", [lost])
    assert len(problems) == 1 and "is not locked" in problems[0], problems
    with pytest.raises(InvariantViolation):
        strict_word_check(k, "migrate", [0, lost])
    # a free page named by a MIGRATE word is caught too
    free = next(i for i in range(0x400, 0x4000) if k.mem.pfn_to_page(i).a._refcount[i] == 0)
    problems = pfn_word_problems(k, "migrate", [migrate_pfn(free) | MIGRATE_PFN_MIGRATE])
    assert any("is free" in x for x in problems), problems


# --- the alias fuzzer ---------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_alias_fuzzer_runs_clean_on_the_fixed_kernel(form):
    rep = run_alias_fuzz(6, 1, pvmw_form=form)
    assert rep.failure == "" and rep.aliased > 0 and rep.migrated > 0


def test_alias_fuzzer_finds_the_missing_marker():
    rep = run_alias_fuzz(40, 0, bugs={BUG})
    assert rep.failure
    assert BUG not in rep.failure


def test_selftest_cases_pass_with_the_v1_v2_form():
    """A few hm-tests cases that migrate, fault back and fork, under a+b+c+d
    with the pfn-bit form (the full suite runs with the default form)."""
    from hmmsim.selftests.harness import KSFT_PASS, all_cases, run_case
    from hmmsim.selftests.hmm_tests import FIXTURES, make_kernel, post_checks, selftest_config

    config = replace(selftest_config(("a", "b", "c")), pvmw_form="pfn-bit")
    want = {
        "hmm.hmm_device_private.migrate",
        "hmm.hmm_device_private.migrate_fault",
        "hmm.hmm_device_private.migrate_release",
        "hmm.hmm_device_private.anon_write_child",
        "hmm.hmm_device_private.migrate_anon_huge_fault",
    }
    cases = [c for c in all_cases(FIXTURES) if c.name in want]
    assert len(cases) == len(want)
    for case in cases:
        r = run_case(case, lambda: make_kernel(config), post_checks)
        assert r.exit_code == KSFT_PASS, f"{case.name}: {r.result}: {r.message}"

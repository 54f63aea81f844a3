"""include/swapops.py: swp_entry_t, softleaf API and the x86-64 swap PTE.

Expected numbers come from include/linux/swap.h, swapops.h, leafops.h and
arch/x86/include/asm/pgtable_64.h (and the series (b) postings); raw PTE
words were worked out by hand from the __swp_entry() macro, see comments.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hmmsim.include import pgtable as pt
from hmmsim.include.swapops import (
    PTE_MARKER_GUARD,
    PTE_MARKER_MASK,
    PTE_MARKER_POISONED,
    PTE_MARKER_UFFD_WP,
    SWP_MIG_DIRTY,
    SWP_MIG_YOUNG,
    SWP_OFFSET_MASK,
    SWP_PFN_BITS,
    SWP_TYPE_SHIFT,
    SwapLayout,
    SwapLayout612,
    SwapLayoutSeriesB,
    SwapLayoutSeriesB612,
    arch_swp_entry,
    arch_swp_offset,
    arch_swp_type,
    softleaf_type,
    softleaf_type_series_b,
)
from hmmsim.kconfig import KConfig

PIN = SwapLayout(KConfig())
B = SwapLayout(KConfig(features=frozenset({"b", "d"})))
C = SwapLayout(KConfig(features=frozenset({"a", "b", "c", "d"})))
LAYOUTS = [PIN, B]
SOFT = pt._PAGE_SWP_SOFT_DIRTY | pt._PAGE_SWP_UFFD_WP | pt._PAGE_SWP_EXCLUSIVE


# --- geometry -----------------------------------------------------------------------------
def test_entry_geometry():
    assert SWP_TYPE_SHIFT == 58  # BITS_PER_XA_VALUE (63) - MAX_SWAPFILES_SHIFT (5)
    assert SWP_OFFSET_MASK == 0x03FF_FFFF_FFFF_FFFF
    assert SWP_PFN_BITS == 34  # MAX_PHYSMEM_BITS 46 - PAGE_SHIFT 12
    assert (PIN.SWP_MIG_YOUNG_BIT, PIN.SWP_MIG_DIRTY_BIT) == (34, 35)
    assert (SWP_MIG_YOUNG, SWP_MIG_DIRTY) == (0x4_0000_0000, 0x8_0000_0000)
    assert (PIN.SWP_TYPE_BITS, PIN.SWP_OFFSET_FIRST_BIT, PIN.SWP_OFFSET_SHIFT) == (5, 9, 14)
    assert (PTE_MARKER_UFFD_WP, PTE_MARKER_POISONED, PTE_MARKER_GUARD) == (1, 2, 4)
    assert PTE_MARKER_MASK == 7


def test_migration_entries_carry_ad_bits_on_x86_64():
    # x86-64 swap PTE keeps 64 - 14 = 50 offset bits: 2**50 >= 2**(34 + 2)
    assert PIN.generic_max_swapfile_size() == 1 << 50
    assert PIN.migration_entry_supports_ad() and B.migration_entry_supports_ad()


def test_pinned_type_numbers():
    s = PIN
    assert (s.SWP_DEVICE_NUM, s.SWP_MIGRATION_NUM, s.SWP_HWPOISON_NUM) == (3, 3, 1)
    assert s.SWP_PTE_MARKER_NUM == 1
    assert s.MAX_SWAPFILES == 24
    assert s.SWP_HWPOISON == 24
    assert (s.SWP_MIGRATION_READ, s.SWP_MIGRATION_READ_EXCLUSIVE, s.SWP_MIGRATION_WRITE) == (
        25,
        26,
        27,
    )
    assert (s.SWP_DEVICE_WRITE, s.SWP_DEVICE_READ, s.SWP_DEVICE_EXCLUSIVE) == (28, 29, 30)
    assert s.SWP_PTE_MARKER == 31
    assert type(s) is SwapLayout and not s.series_b


def test_series_b_type_numbers():
    s = B
    assert isinstance(s, SwapLayoutSeriesB) and s.series_b
    assert s.SWP_DEVICE_NUM == 6 and s.MAX_SWAPFILES == 21
    assert s.SWP_HWPOISON == 21
    assert (s.SWP_MIGRATION_READ, s.SWP_MIGRATION_READ_EXCLUSIVE, s.SWP_MIGRATION_WRITE) == (
        22,
        23,
        24,
    )
    assert (s.SWP_DEVICE_WRITE, s.SWP_DEVICE_READ, s.SWP_DEVICE_EXCLUSIVE) == (25, 26, 27)
    assert (
        s.SWP_MIGRATION_DEVICE_READ,
        s.SWP_MIGRATION_DEVICE_READ_EXCLUSIVE,
        s.SWP_MIGRATION_DEVICE_WRITE,
    ) == (28, 29, 30)
    assert s.SWP_PTE_MARKER == 31


@pytest.mark.parametrize(
    "name",
    [
        "SWP_MIGRATION_DEVICE_READ",
        "SWP_MIGRATION_DEVICE_WRITE",
        "make_writable_migration_device_private_entry",
        "softleaf_is_migration_device_private",
        "SOFTLEAF_MIGRATION_DEVICE_PRIVATE_WRITE",
    ],
)
def test_series_b_names_are_an_error_without_b(name):
    with pytest.raises(AttributeError, match=r"only with seed series \(b\)"):
        getattr(PIN, name)


def test_unknown_attribute_is_a_plain_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        PIN.nope  # noqa: B018


def test_softleaf_type_enums_in_declaration_order():
    assert [(m.name, m.value) for m in softleaf_type] == [
        ("SOFTLEAF_NONE", 0),
        ("SOFTLEAF_SWAP", 1),
        ("SOFTLEAF_MIGRATION_READ", 2),
        ("SOFTLEAF_MIGRATION_READ_EXCLUSIVE", 3),
        ("SOFTLEAF_MIGRATION_WRITE", 4),
        ("SOFTLEAF_DEVICE_PRIVATE_READ", 5),
        ("SOFTLEAF_DEVICE_PRIVATE_WRITE", 6),
        ("SOFTLEAF_DEVICE_EXCLUSIVE", 7),
        ("SOFTLEAF_HWPOISON", 8),
        ("SOFTLEAF_MARKER", 9),
    ]
    names = [m.name for m in softleaf_type_series_b]
    assert names[8:11] == [
        "SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ",
        "SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ_EXCLUSIVE",
        "SOFTLEAF_MIGRATION_DEVICE_PRIVATE_WRITE",
    ]
    assert softleaf_type_series_b.SOFTLEAF_HWPOISON == 11
    assert softleaf_type_series_b.SOFTLEAF_MARKER == 12
    assert PIN.softleaf_type_enum is softleaf_type and B.SOFTLEAF_MARKER == 12


def test_softleaf_type_of_every_type_number():
    pin = {t: PIN.softleaf_type(PIN.swp_entry(t, 1)).name for t in range(32)}
    assert all(pin[t] == "SOFTLEAF_SWAP" for t in range(24))
    assert [pin[t] for t in range(24, 32)] == [
        "SOFTLEAF_HWPOISON",
        "SOFTLEAF_MIGRATION_READ",
        "SOFTLEAF_MIGRATION_READ_EXCLUSIVE",
        "SOFTLEAF_MIGRATION_WRITE",
        "SOFTLEAF_DEVICE_PRIVATE_WRITE",
        "SOFTLEAF_DEVICE_PRIVATE_READ",
        "SOFTLEAF_DEVICE_EXCLUSIVE",
        "SOFTLEAF_MARKER",
    ]
    b = [B.softleaf_type(B.swp_entry(t, 1)).name for t in range(21, 32)]
    assert b == [
        "SOFTLEAF_HWPOISON",
        "SOFTLEAF_MIGRATION_READ",
        "SOFTLEAF_MIGRATION_READ_EXCLUSIVE",
        "SOFTLEAF_MIGRATION_WRITE",
        "SOFTLEAF_DEVICE_PRIVATE_WRITE",
        "SOFTLEAF_DEVICE_PRIVATE_READ",
        "SOFTLEAF_DEVICE_EXCLUSIVE",
        "SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ",
        "SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ_EXCLUSIVE",
        "SOFTLEAF_MIGRATION_DEVICE_PRIVATE_WRITE",
        "SOFTLEAF_MARKER",
    ]
    assert B.softleaf_type(B.swp_entry(20, 1)) is B.SOFTLEAF_SWAP
    assert PIN.softleaf_type(0) is softleaf_type.SOFTLEAF_NONE


# --- predicates: one truth table per configuration ------------------------------------------
PIN_TRUE = {
    "softleaf_is_swap": set(range(24)),
    "softleaf_is_hwpoison": {24},
    "softleaf_is_migration": {25, 26, 27},
    "softleaf_is_migration_read": {25},
    "softleaf_is_migration_read_exclusive": {26},
    "softleaf_is_migration_write": {27},
    "softleaf_is_device_private": {28, 29},
    "softleaf_is_device_private_write": {28},
    "softleaf_is_device_exclusive": {30},
    "softleaf_is_marker": {31},
    "softleaf_has_pfn": {24, 25, 26, 27, 28, 29, 30},
    "softleaf_is_valid_pmd_entry": {25, 26, 27, 28, 29},
    "non_swap_entry": set(range(24, 32)),
}
B_TRUE = {
    "softleaf_is_swap": set(range(21)),
    "softleaf_is_hwpoison": {21},
    # (b): the generic migration predicates also match the device variants
    "softleaf_is_migration": {22, 23, 24, 28, 29, 30},
    "softleaf_is_migration_read": {22, 28},
    "softleaf_is_migration_read_exclusive": {23, 29},
    "softleaf_is_migration_write": {24, 30},
    "softleaf_is_migration_device_private": {28, 29, 30},
    "softleaf_is_migration_device_private_read": {28},
    "softleaf_is_migration_device_private_read_exclusive": {29},
    "softleaf_is_migration_device_private_write": {30},
    "softleaf_is_device_private": {25, 26},
    "softleaf_is_device_private_write": {25},
    "softleaf_is_device_exclusive": {27},
    "softleaf_is_marker": {31},
    "softleaf_has_pfn": {21, 22, 23, 24, 25, 26, 27, 28, 29, 30},
    "softleaf_is_valid_pmd_entry": {22, 23, 24, 25, 26, 28, 29, 30},
    "non_swap_entry": set(range(21, 32)),
}
LEGACY = {
    "is_migration_entry": "softleaf_is_migration",
    "is_readable_migration_entry": "softleaf_is_migration_read",
    "is_readable_exclusive_migration_entry": "softleaf_is_migration_read_exclusive",
    "is_writable_migration_entry": "softleaf_is_migration_write",
    "is_device_private_entry": "softleaf_is_device_private",
    "is_writable_device_private_entry": "softleaf_is_device_private_write",
    "is_device_exclusive_entry": "softleaf_is_device_exclusive",
    "is_hwpoison_entry": "softleaf_is_hwpoison",
    "is_pte_marker_entry": "softleaf_is_marker",
    "is_pfn_swap_entry": "softleaf_has_pfn",
}


@pytest.mark.parametrize("layout, table", [(PIN, PIN_TRUE), (B, B_TRUE)], ids=["pin", "b"])
def test_predicate_truth_tables(layout, table):
    for pred, types in table.items():
        fn = getattr(layout, pred)
        got = {t for t in range(32) if fn(layout.swp_entry(t, 0x1234))}
        assert got == types, pred
        assert not fn(0), f"{pred}(none entry)"
    for legacy, modern in LEGACY.items():
        got = {t for t in range(32) if getattr(layout, legacy)(layout.swp_entry(t, 5))}
        assert got == table[modern], legacy


def test_none_entry():
    assert PIN.softleaf_mk_none() == 0 and PIN.softleaf_is_none(0)
    assert not PIN.softleaf_is_none(PIN.swp_entry(0, 1))
    assert not PIN.softleaf_is_swap(0)  # type 0 offset 0 is "none", not swap
    assert PIN.softleaf_is_swap(PIN.swp_entry(0, 1))


# --- constructors --------------------------------------------------------------------------
def test_constructors_place_type_and_pfn():
    pfn = 0x2_3456_789A
    cases = [
        (PIN.make_readable_migration_entry, 25),
        (PIN.make_readable_exclusive_migration_entry, 26),
        (PIN.make_writable_migration_entry, 27),
        (PIN.make_writable_device_private_entry, 28),
        (PIN.make_readable_device_private_entry, 29),
        (PIN.make_device_exclusive_entry, 30),
        (PIN.make_hwpoison_entry, 24),
    ]
    for make, t in cases:
        e = make(pfn)
        assert e == (t << 58) | pfn
        assert PIN.softleaf_to_pfn(e) == pfn == PIN.swp_offset_pfn(e)
    b = [
        (B.make_readable_migration_device_private_entry, 28),
        (B.make_readable_exclusive_migration_device_private_entry, 29),
        (B.make_writable_migration_device_private_entry, 30),
        (B.make_writable_migration_entry, 24),
    ]
    for make, t in b:
        assert make(pfn) == (t << 58) | pfn


def test_swp_entry_masks_offset_and_checks_type():
    assert PIN.swp_entry(3, (1 << 60) | 7) == (3 << 58) | 7
    assert PIN.swp_type(PIN.swp_entry(31, 0)) == 31
    with pytest.raises(ValueError, match="5-bit swap type"):
        PIN.swp_entry(32, 0)
    with pytest.raises(ValueError, match="not a swp_entry_t"):
        PIN.softleaf_type(1 << 63)


@pytest.mark.parametrize("layout", LAYOUTS, ids=["pin", "b"])
def test_migration_young_and_dirty(layout):
    e = layout.make_writable_migration_entry(0x1234)
    assert not layout.softleaf_is_migration_young(e)
    y = layout.make_migration_entry_young(e)
    d = layout.make_migration_entry_dirty(y)
    assert y == e | (1 << 34) and d == e | (3 << 34)
    assert layout.softleaf_is_migration_young(d) and layout.softleaf_is_migration_dirty(d)
    assert layout.softleaf_to_pfn(d) == 0x1234  # A/D bits sit above the PFN
    # they survive the trip through the PTE (bits 34, 35 < 50)
    assert layout.softleaf_from_pte(layout.swp_entry_to_pte(d)) == d


def test_device_migration_entries_are_migration_entries_with_b():
    e = B.make_migration_entry_young(B.make_writable_migration_device_private_entry(0x42))
    assert B.softleaf_is_migration(e) and B.softleaf_is_migration_write(e)
    assert B.softleaf_is_migration_device_private_write(e)
    assert not B.softleaf_is_migration_device_private_read(e)
    assert B.softleaf_is_migration_young(e) and B.softleaf_to_pfn(e) == 0x42
    plain = B.make_writable_migration_entry(0x42)
    assert B.softleaf_is_migration_write(plain) and not B.softleaf_is_migration_device_private(
        plain
    )


def test_markers():
    for marker, poison, guard, uffd in [
        (PTE_MARKER_UFFD_WP, False, False, True),
        (PTE_MARKER_POISONED, True, False, False),
        (PTE_MARKER_GUARD, False, True, False),
    ]:
        pte = PIN.make_pte_marker(marker)
        e = PIN.softleaf_from_pte(pte)
        assert PIN.pte_is_marker(pte) and PIN.softleaf_to_marker(e) == marker
        assert PIN.softleaf_is_poison_marker(e) is poison
        assert PIN.softleaf_is_guard_marker(e) is guard
        assert PIN.softleaf_is_uffd_wp_marker(e) is uffd
        assert PIN.pte_is_uffd_wp_marker(pte) is uffd
        assert PIN.pte_is_uffd_marker(pte) is (uffd or poison)
    assert PIN.make_guard_swp_entry() == (31 << 58) | 4
    assert PIN.make_poisoned_swp_entry() == (31 << 58) | 2
    assert not PIN.softleaf_is_guard_marker(PIN.make_device_exclusive_entry(4))


# --- x86-64 PTE encoding ----------------------------------------------------------------------
def test_raw_swap_pte_words_by_hand():
    # bits 9..58 hold ~offset: ((2**50 - 1) ^ 0x1234) << 9 = 0x07FFFFFFFFDB9600
    inv = 0x07FF_FFFF_FFDB_9600
    # type 27 (pinned SWP_MIGRATION_WRITE) << 59 = 0xD800000000000000
    assert PIN.swp_entry_to_pte(PIN.make_writable_migration_entry(0x1234)) == 0xDFFF_FFFF_FFDB_9600
    # type 28 (pinned SWP_DEVICE_WRITE) << 59 = 0xE000000000000000
    assert PIN.swp_entry_to_pte(PIN.make_writable_device_private_entry(0x1234)) == (
        0xE000_0000_0000_0000 | inv
    )
    # (b): SWP_MIGRATION_WRITE is 24 -> 0xC000000000000000
    assert B.swp_entry_to_pte(B.make_writable_migration_entry(0x1234)) == 0xC7FF_FFFF_FFDB_9600
    # guard marker: type 31, offset 4 -> ~4 in bits 9..58
    assert PIN.make_pte_marker(PTE_MARKER_GUARD) == 0xFFFF_FFFF_FFFF_F600
    # type 0 offset 0: only the inverted (all-ones) offset
    assert PIN.swp_entry_to_pte(PIN.swp_entry(0, 1)) == 0x07FF_FFFF_FFFF_FC00


def test_swap_pte_points_above_physical_memory():
    """The inversion sets the high PFN bits of small offsets (L1TF)."""
    pte = PIN.swp_entry_to_pte(PIN.make_readable_migration_entry(0x10))
    assert not pt.pte_present(pte) and not pt.pte_none(pte)
    assert (pte & pt.PTE_PFN_MASK) >> 12 >= 1 << 39


def test_largest_offset_of_type_0_is_the_none_pte():
    # swp_entry(0, 2**50 - 1): every offset bit inverts to 0, the PTE is 0
    assert PIN.swp_entry_to_pte(PIN.swp_entry(0, (1 << 50) - 1)) == 0
    assert PIN.softleaf_from_pte(0) == 0


def test_arch_helpers():
    x = arch_swp_entry(27, 0x1234)
    assert x == 0xDFFF_FFFF_FFDB_9600
    assert (arch_swp_type(x), arch_swp_offset(x)) == (27, 0x1234)
    # only 50 offset bits fit in the PTE
    assert arch_swp_offset(arch_swp_entry(1, (1 << 50) | 5)) == 5


def test_soft_bits_are_not_part_of_the_entry():
    e = PIN.make_readable_exclusive_migration_entry(0x777)
    pte = PIN.swp_entry_to_pte(e)
    assert pte & SOFT == 0  # swp_entry_to_pte sets none of them
    marked = pt.pte_swp_mkexclusive(pt.pte_swp_mkuffd_wp(pt.pte_swp_mksoft_dirty(pte)))
    assert marked == pte | 0xE
    assert PIN.pte_to_swp_entry(marked) == e == PIN.softleaf_from_pte(marked)
    # the marks stay readable on the PTE itself, but a PTE rebuilt from the
    # entry has lost them: callers must copy them over (pte_swp_mk*)
    assert pt.pte_swp_soft_dirty(marked) and pt.pte_swp_uffd_wp(marked)
    assert pt.pte_swp_exclusive(marked)
    assert PIN.softleaf_to_pte(PIN.softleaf_from_pte(marked)) == pte
    # stray A/D bits (Knights Landing erratum) do not change the entry either
    assert PIN.softleaf_from_pte(pte | pt._PAGE_KNL_ERRATUM_MASK) == e


def test_pmd_soft_bits():
    e = PIN.make_writable_migration_entry(0x200)
    pmd = PIN.swp_entry_to_pmd(e)
    assert pmd == PIN.swp_entry_to_pte(e) and not pt.pmd_present(pmd)
    marked = pt.pmd_swp_mksoft_dirty(pmd) | pt._PAGE_SWP_UFFD_WP
    assert PIN.pmd_to_swp_entry(marked) == e == PIN.softleaf_from_pmd(marked)
    assert PIN.softleaf_to_pmd(e) == pmd
    assert PIN.pmd_is_migration_entry(marked) and PIN.pmd_is_valid_softleaf(marked)
    dev = PIN.swp_entry_to_pmd(PIN.make_readable_device_private_entry(0x200))
    assert PIN.pmd_is_device_private_entry(dev) and PIN.pmd_is_valid_softleaf(dev)
    assert not PIN.pmd_is_valid_softleaf(PIN.swp_entry_to_pmd(PIN.make_hwpoison_entry(1)))


def test_present_and_empty_entries_are_not_leaves():
    present = pt.pfn_pte(0x1234, pt.PAGE_SHARED)
    protnone = pt.pfn_pte(0x1234, pt.PAGE_NONE)
    for pte in (0, 0x20, 0x40, 0x60, present, protnone):
        assert PIN.softleaf_from_pte(pte) == 0, hex(pte)
    assert PIN.softleaf_from_pmd(0x80) == 0  # PSE alone: pmd_present
    assert PIN.softleaf_from_pmd(pt.pmd_mkhuge(pt.pfn_pmd(0x200, pt.PAGE_SHARED))) == 0
    assert PIN.is_swap_pte(PIN.make_pte_marker(PTE_MARKER_GUARD))
    assert not PIN.is_swap_pte(present) and not PIN.is_swap_pte(0x60)


@pytest.mark.parametrize("layout", LAYOUTS, ids=["pin", "b"])
@given(t=st.integers(0, 31), offset=st.integers(0, (1 << 50) - 1), soft=st.integers(0, 7))
def test_round_trip_every_type(layout, t, offset, soft):
    e = layout.swp_entry(t, offset)
    pte = layout.swp_entry_to_pte(e)
    assert pte < 1 << 64
    assert not pt.pte_present(pte) and not pte & pt._PAGE_PSE  # never pmd_present either
    assert layout.pte_to_swp_entry(pte | (soft << 1)) == e
    assert layout.pmd_to_swp_entry(pte | (soft << 1)) == e
    assert (arch_swp_type(pte), arch_swp_offset(pte)) == (t, offset)
    if pte:  # only (0, 2**50 - 1) encodes to the empty PTE
        assert layout.softleaf_from_pte(pte) == e
        assert layout.softleaf_from_pmd(pte) == e


@given(offset=st.integers(1 << 50, SWP_OFFSET_MASK))
def test_offsets_above_50_bits_are_cut_like_the_kernel(offset):
    e = PIN.swp_entry(3, offset)
    assert PIN.swp_offset(PIN.pte_to_swp_entry(PIN.swp_entry_to_pte(e))) == offset & ((1 << 50) - 1)


@given(pfn=st.integers(0, (1 << 34) - 1), young=st.booleans(), dirty=st.booleans())
def test_pfn_round_trip_through_pte(pfn, young, dirty):
    for layout in LAYOUTS:
        e = layout.make_readable_migration_entry(pfn)
        if young:
            e = layout.make_migration_entry_young(e)
        if dirty:
            e = layout.make_migration_entry_dirty(e)
        back = layout.softleaf_from_pte(layout.softleaf_to_pte(e))
        assert layout.softleaf_to_pfn(back) == pfn
        assert layout.softleaf_is_migration_young(back) is young
        assert layout.softleaf_is_migration_dirty(back) is dirty


@given(pte=st.integers(0, (1 << 64) - 1))
def test_softleaf_from_pte_agrees_with_pgtable_predicates(pte):
    leaf = PIN.softleaf_from_pte(pte)
    if pt.pte_present(pte) or pt.pte_none(pte):
        assert leaf == 0
    else:
        assert leaf == PIN.swp_entry(arch_swp_type(pte), arch_swp_offset(pte))
    assert PIN.is_swap_pte(pte) is (not pt.pte_none(pte) and not pt.pte_present(pte))


@given(pmd=st.integers(0, (1 << 64) - 1))
def test_softleaf_from_pmd_agrees_with_pgtable_predicates(pmd):
    if pt.pmd_present(pmd) or pt.pmd_none(pmd):
        assert PIN.softleaf_from_pmd(pmd) == 0
    else:
        assert PIN.softleaf_from_pmd(pmd) == PIN.pmd_to_swp_entry(pmd)


# --- debug checks and descriptions ---------------------------------------------------------
def test_warn_hook_reports_vm_warn_on_once_conditions():
    seen = []
    s = SwapLayout(KConfig(), warn=seen.append)
    marker = s.make_pte_marker_entry(PTE_MARKER_GUARD)
    assert s.softleaf_to_pfn(marker) == 4  # still computed, as in the kernel
    s.softleaf_to_marker(s.make_writable_migration_entry(1))
    s.softleaf_is_migration_young(marker)
    s.softleaf_is_migration_dirty(marker)
    s.swp_offset_pfn(marker)
    assert len(seen) == 5 and "has no PFN" in seen[0] and "not a marker" in seen[1]
    s.softleaf_to_pfn(s.make_writable_migration_entry(1))
    assert len(seen) == 5
    PIN.softleaf_to_pfn(marker)  # no hook: no check


def test_describe_softleaf():
    d = PIN.describe_softleaf
    assert d(0) == "SOFTLEAF_NONE"
    assert d(PIN.make_writable_device_private_entry(0x1234)) == (
        "SOFTLEAF_DEVICE_PRIVATE_WRITE pfn=0x1234"
    )
    young = PIN.make_migration_entry_young(PIN.make_readable_migration_entry(0x10))
    assert d(young) == "SOFTLEAF_MIGRATION_READ pfn=0x10 young"
    assert d(PIN.swp_entry(3, 0x99)) == "SOFTLEAF_SWAP type=3 offset=0x99"
    assert d(PIN.make_pte_marker_entry(5)) == "SOFTLEAF_MARKER UFFD_WP|GUARD"
    resv = PIN.make_hwpoison_entry(0x7) | (1 << 40)
    assert d(resv) == "SOFTLEAF_HWPOISON pfn=0x7 resv=0x10000000000"
    assert d(1 << 63) == "invalid swp_entry_t 0x8000000000000000"
    assert B.describe_softleaf(B.make_writable_migration_device_private_entry(0x5)) == (
        "SOFTLEAF_MIGRATION_DEVICE_PRIVATE_WRITE pfn=0x5"
    )
    # with (c) device-private entries carry offsets, not PFNs
    assert C.describe_softleaf(C.make_readable_migration_device_private_entry(0x5)) == (
        "SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ offset=0x5"
    )
    assert C.describe_softleaf(C.make_readable_migration_entry(0x5)) == (
        "SOFTLEAF_MIGRATION_READ pfn=0x5"
    )


def test_repr():
    assert repr(PIN).startswith("<SwapLayout MAX_SWAPFILES=24")
    assert repr(B).startswith("<SwapLayoutSeriesB MAX_SWAPFILES=21")


def test_kernel_uses_the_layout_for_its_config():
    from hmmsim.kernel import Kernel

    assert type(Kernel(ram_bytes=64 << 20).swp) is SwapLayout
    k = Kernel(ram_bytes=64 << 20, features={"b", "d"})
    assert type(k.swp) is SwapLayoutSeriesB and k.swp.MAX_SWAPFILES == 21


# --- the Linux 6.12 layout (--kernel 6.12) --------------------------------------------------
V612 = SwapLayout(KConfig(kernel="6.12"))


def test_612_type_numbers():
    # include/linux/swap.h (6.12): SWP_DEVICE_NUM 4 (WRITE, READ, EXCLUSIVE_WRITE,
    # EXCLUSIVE_READ), MIGRATION 3, HWPOISON 1, PTE_MARKER 1: MAX_SWAPFILES = 32 - 9
    s = V612
    assert type(s) is SwapLayout612 and not s.series_b
    assert (s.SWP_DEVICE_NUM, s.SWP_MIGRATION_NUM, s.SWP_HWPOISON_NUM) == (4, 3, 1)
    assert s.SWP_PTE_MARKER_NUM == 1
    assert s.MAX_SWAPFILES == 23 and s.SWP_HWPOISON == 23
    assert (s.SWP_MIGRATION_READ, s.SWP_MIGRATION_READ_EXCLUSIVE, s.SWP_MIGRATION_WRITE) == (
        24,
        25,
        26,
    )
    assert (s.SWP_DEVICE_WRITE, s.SWP_DEVICE_READ) == (27, 28)
    assert (s.SWP_DEVICE_EXCLUSIVE_WRITE, s.SWP_DEVICE_EXCLUSIVE_READ) == (29, 30)
    assert s.SWP_PTE_MARKER == 31
    assert repr(s).startswith("<SwapLayout612 MAX_SWAPFILES=23")


def test_612_layout_leaves_the_other_layouts_alone():
    assert type(SwapLayout(KConfig())) is SwapLayout
    assert SwapLayout(KConfig()).SWP_DEVICE_WRITE == 28
    assert not hasattr(PIN, "SWP_DEVICE_EXCLUSIVE_READ")
    with pytest.raises(AttributeError):
        PIN.make_readable_device_exclusive_entry(1)


def test_612_softleaf_type_of_every_type_number():
    s, T = V612, softleaf_type
    want = {
        23: T.SOFTLEAF_HWPOISON,
        24: T.SOFTLEAF_MIGRATION_READ,
        25: T.SOFTLEAF_MIGRATION_READ_EXCLUSIVE,
        26: T.SOFTLEAF_MIGRATION_WRITE,
        27: T.SOFTLEAF_DEVICE_PRIVATE_WRITE,
        28: T.SOFTLEAF_DEVICE_PRIVATE_READ,
        29: T.SOFTLEAF_DEVICE_EXCLUSIVE,
        30: T.SOFTLEAF_DEVICE_EXCLUSIVE,
        31: T.SOFTLEAF_MARKER,
    }
    for t in range(32):
        assert s.softleaf_type(s.swp_entry(t, 1)) == want.get(t, T.SOFTLEAF_SWAP), t


@given(t=st.integers(0, 31), pfn=st.integers(0, (1 << 34) - 1))
def test_612_predicates_by_type(t, pfn):
    s = V612
    e = s.swp_entry(t, pfn)
    assert s.softleaf_is_device_exclusive(e) == (t in (29, 30))
    assert s.is_device_exclusive_entry(e) == (t in (29, 30))
    assert s.is_writable_device_exclusive_entry(e) == (t == 29)
    assert s.softleaf_is_device_private(e) == (t in (27, 28))
    assert s.softleaf_is_device_private_write(e) == (t == 27)
    assert s.softleaf_is_migration(e) == (t in (24, 25, 26))
    assert s.softleaf_is_hwpoison(e) == (t == 23)
    assert s.softleaf_is_marker(e) == (t == 31)
    assert s.softleaf_has_pfn(e) == (23 <= t <= 30)
    assert s.softleaf_is_swap(e) == (t < 23 and e != 0)
    assert s.non_swap_entry(e) == (t >= 23)
    # device-exclusive entries never sit in a PMD
    assert s.softleaf_is_valid_pmd_entry(e) == (t in (24, 25, 26, 27, 28))


@given(pfn=st.integers(0, (1 << 34) - 1), soft=st.integers(0, 7))
def test_612_exclusive_entries_round_trip(pfn, soft):
    s = V612
    for make, t, w in (
        (s.make_writable_device_exclusive_entry, 29, True),
        (s.make_readable_device_exclusive_entry, 30, False),
    ):
        e = make(pfn)
        assert (s.swp_type(e), s.swp_offset(e)) == (t, pfn)
        pte = s.swp_entry_to_pte(e)
        assert arch_swp_type(pte) == t
        assert s.softleaf_from_pte(pte | (soft << 1)) == e
        assert s.is_writable_device_exclusive_entry(e) is w
        assert s.softleaf_to_pfn(e) == pfn
        assert s.describe_softleaf(e) == f"SOFTLEAF_DEVICE_EXCLUSIVE pfn={pfn:#x}"
    assert s.make_device_exclusive_entry(pfn) == s.make_writable_device_exclusive_entry(pfn)
    assert s.swp_type(s.make_writable_device_private_entry(pfn)) == 27


def test_kernel_612_profile_uses_the_612_layout():
    from hmmsim.kernel import Kernel

    k = Kernel(ram_bytes=64 << 20, kernel="6.12")
    assert type(k.swp) is SwapLayout612 and k.swp.SWP_DEVICE_WRITE == 27


def test_612_with_series_b_has_both_sets_of_types():
    # series (b) rebased on 6.12's swap.h: 4 device types + 3 device-migration ones
    s = SwapLayout(KConfig(kernel="6.12", features=frozenset({"b"})))
    assert type(s) is SwapLayoutSeriesB612 and s.series_b
    assert s.SWP_DEVICE_NUM == 7 and s.MAX_SWAPFILES == 20 and s.SWP_HWPOISON == 20
    assert (s.SWP_DEVICE_WRITE, s.SWP_DEVICE_READ) == (24, 25)
    assert (s.SWP_DEVICE_EXCLUSIVE_WRITE, s.SWP_DEVICE_EXCLUSIVE_READ) == (26, 27)
    assert (
        s.SWP_MIGRATION_DEVICE_READ,
        s.SWP_MIGRATION_DEVICE_READ_EXCLUSIVE,
        s.SWP_MIGRATION_DEVICE_WRITE,
    ) == (28, 29, 30)
    assert s.SWP_PTE_MARKER == 31
    T = softleaf_type_series_b
    assert [s.softleaf_type(s.swp_entry(t, 1)) for t in range(26, 31)] == [
        T.SOFTLEAF_DEVICE_EXCLUSIVE,
        T.SOFTLEAF_DEVICE_EXCLUSIVE,
        T.SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ,
        T.SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ_EXCLUSIVE,
        T.SOFTLEAF_MIGRATION_DEVICE_PRIVATE_WRITE,
    ]
    e = s.make_readable_device_exclusive_entry(9)
    assert s.softleaf_is_device_exclusive(e) and s.softleaf_has_pfn(e)
    assert not s.is_writable_device_exclusive_entry(e)
    w = s.make_writable_migration_device_private_entry(9)
    assert s.softleaf_is_migration_write(w) and s.softleaf_is_migration_device_private(w)
    assert repr(s).startswith("<SwapLayoutSeriesB612 MAX_SWAPFILES=20")

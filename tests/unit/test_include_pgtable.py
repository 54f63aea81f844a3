"""include/pgtable.py against arch/x86/include/asm/pgtable_types.h, pgtable.h,
pgtable_64_types.h, pgtable-invert.h and arch/x86/mm/pgprot.c.

Every expected number below was read off the kernel headers (bit numbers) or
worked out by hand from their macros; none is computed with the code under
test. Tests below once recorded places where pgtable.py differed from
the kernel (reported to the lead); they start failing once it is fixed.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hmmsim.include import pgtable as pt
from hmmsim.include.mm import VM_EXEC, VM_READ, VM_SHARED, VM_WRITE

NX = 1 << 63


@pytest.mark.parametrize(
    "name, bit",
    [
        ("_PAGE_BIT_PRESENT", 0),
        ("_PAGE_BIT_RW", 1),
        ("_PAGE_BIT_USER", 2),
        ("_PAGE_BIT_PWT", 3),
        ("_PAGE_BIT_PCD", 4),
        ("_PAGE_BIT_ACCESSED", 5),
        ("_PAGE_BIT_DIRTY", 6),
        ("_PAGE_BIT_PSE", 7),
        ("_PAGE_BIT_PAT", 7),
        ("_PAGE_BIT_GLOBAL", 8),
        ("_PAGE_BIT_SOFTW1", 9),
        ("_PAGE_BIT_SOFTW2", 10),
        ("_PAGE_BIT_SOFTW3", 11),
        ("_PAGE_BIT_PAT_LARGE", 12),
        ("_PAGE_BIT_SOFTW4", 57),
        ("_PAGE_BIT_SOFTW5", 58),
        ("_PAGE_BIT_NX", 63),
        # aliases
        ("_PAGE_BIT_SPECIAL", 9),
        ("_PAGE_BIT_UFFD_WP", 10),
        ("_PAGE_BIT_SOFT_DIRTY", 11),
        ("_PAGE_BIT_SAVED_DIRTY", 58),  # SOFTW5 on x86-64 (SOFTW2 only on 32-bit)
        ("_PAGE_BIT_PROTNONE", 8),  # aliases GLOBAL for non-present entries
    ],
)
def test_bit_numbers(name, bit):
    assert getattr(pt, name) == bit


@pytest.mark.parametrize(
    "name, value",
    [
        ("_PAGE_PRESENT", 0x001),
        ("_PAGE_RW", 0x002),
        ("_PAGE_USER", 0x004),
        ("_PAGE_PWT", 0x008),
        ("_PAGE_PCD", 0x010),
        ("_PAGE_ACCESSED", 0x020),
        ("_PAGE_DIRTY", 0x040),
        ("_PAGE_PSE", 0x080),
        ("_PAGE_GLOBAL", 0x100),
        ("_PAGE_PROTNONE", 0x100),
        ("_PAGE_SPECIAL", 0x200),
        ("_PAGE_UFFD_WP", 0x400),
        ("_PAGE_SOFT_DIRTY", 0x800),
        ("_PAGE_SAVED_DIRTY", 0x0400_0000_0000_0000),
        ("_PAGE_NX", 0x8000_0000_0000_0000),
        ("_PAGE_DIRTY_BITS", 0x0400_0000_0000_0040),
        ("_PAGE_KNL_ERRATUM_MASK", 0x060),
        # non-present (swap) entries: bits 1, 2, 3
        ("_PAGE_SWP_SOFT_DIRTY", 0x002),
        ("_PAGE_SWP_UFFD_WP", 0x004),
        ("_PAGE_SWP_EXCLUSIVE", 0x008),
        ("_PAGE_TABLE", 0x067),
    ],
)
def test_flag_values(name, value):
    assert getattr(pt, name) == value


def test_physical_masks():
    # __PHYSICAL_MASK_SHIFT 52; PAGE_SHIFT 12; PMD_SHIFT 21
    assert pt.__PHYSICAL_MASK == 0x000F_FFFF_FFFF_FFFF
    assert pt.PTE_PFN_MASK == 0x000F_FFFF_FFFF_F000
    assert pt.PHYSICAL_PAGE_MASK == pt.PTE_PFN_MASK
    assert pt.PHYSICAL_PMD_PAGE_MASK == 0x000F_FFFF_FFE0_0000
    assert pt.PTE_FLAGS_MASK == 0xFFF0_0000_0000_0FFF


@pytest.mark.parametrize(
    "name, value",
    [
        ("PAGE_NONE", 0x120),  # ___A | ___G (G doubles as PROTNONE)
        ("PAGE_SHARED", NX | 0x27),
        ("PAGE_SHARED_EXEC", 0x27),
        ("PAGE_COPY_NOEXEC", NX | 0x25),
        ("PAGE_COPY_EXEC", 0x25),
        ("PAGE_COPY", NX | 0x25),
        ("PAGE_READONLY", NX | 0x25),
        ("PAGE_READONLY_EXEC", 0x25),
    ],
)
def test_protections(name, value):
    assert getattr(pt, name) == value


def test_protection_map_matches_pgprot_c():
    # arch/x86/mm/pgprot.c, indexed by VM_READ|VM_WRITE|VM_EXEC|VM_SHARED
    ro, ro_x, cp, cp_x = NX | 0x25, 0x25, NX | 0x25, 0x25
    sh, sh_x, none = NX | 0x27, 0x27, 0x120
    expected = [none, ro, cp, cp, ro_x, ro_x, cp_x, cp_x]
    expected += [none, ro, sh, sh, ro_x, ro_x, sh_x, sh_x]
    assert list(pt.protection_map) == expected
    assert pt.vm_get_page_prot(VM_READ | VM_WRITE | VM_SHARED) == sh
    assert pt.vm_get_page_prot(VM_READ | VM_EXEC) == ro_x
    # private writable mappings start read-only: COW decides
    assert not pt.vm_get_page_prot(VM_READ | VM_WRITE) & pt._PAGE_RW


def test_l1tf_inversion_of_protnone_entries():
    # pfn_pte(0x1234, PAGE_NONE): the PFN field holds ~(0x1234 << 12)
    # (0x1234000 ^ ~0) & 0x000FFFFFFFFFF000 = 0x000FFFFFFEDCB000, plus 0x120.
    pte = pt.pfn_pte(0x1234, pt.PAGE_NONE)
    assert pte == 0x000F_FFFF_FEDC_B120
    assert pt.pte_pfn(pte) == 0x1234
    assert pt.pte_present(pte) and pt.pte_protnone(pte) and not pt.pte_none(pte)
    # a present entry is not inverted
    assert pt.pfn_pte(0x1234, pt.PAGE_READONLY) == NX | 0x1234_025


def test_pte_modify_flips_inversion_both_ways():
    pte = pt.pfn_pte(0x1234, pt.PAGE_SHARED)
    none = pt.pte_modify(pte, pt.PAGE_NONE)
    assert none & pt.PTE_PFN_MASK == 0x000F_FFFF_FEDC_B000
    assert pt.pte_pfn(none) == 0x1234
    back = pt.pte_modify(none, pt.PAGE_READONLY)
    assert back & pt.PTE_PFN_MASK == 0x1234_000 and pt.pte_pfn(back) == 0x1234


def test_none_and_present_predicates():
    assert pt.pte_none(0) and pt.pte_none(0x60)  # Knights Landing stray A/D
    assert not pt.pte_none(0x2)  # swap soft-dirty alone is not none
    assert pt.pte_present(0x1) and pt.pte_present(0x100) and not pt.pte_present(0x80)
    # a PMD is "present" with PSE alone (split_huge_page clears P temporarily)
    assert pt.pmd_present(0x80) and pt.pmd_present(0x100) and not pt.pmd_present(0x8)
    assert pt.pmd_none(0x60)
    assert pt.pmd_leaf(0x80) and pt.pmd_trans_huge(0x81)


def test_dirty_reads_both_dirty_bits():
    assert pt.pte_dirty(0x40) and pt.pte_dirty(1 << 58) and not pt.pte_dirty(0x800)
    assert pt.pmd_dirty(1 << 58)


def test_swap_soft_bit_helpers():
    pte = 0x0700_0000_0000_0000
    assert pt.pte_swp_mksoft_dirty(pte) == pte | 0x2
    assert pt.pte_swp_mkuffd_wp(pte) == pte | 0x4
    assert pt.pte_swp_mkexclusive(pte) == pte | 0x8
    full = pte | 0xE
    assert pt.pte_swp_soft_dirty(full) and pt.pte_swp_uffd_wp(full) and pt.pte_swp_exclusive(full)
    assert pt.pte_swp_clear_soft_dirty(full) == pte | 0xC
    assert pt.pte_swp_clear_uffd_wp(full) == pte | 0xA
    assert pt.pte_swp_clear_exclusive(full) == pte | 0x6
    assert pt.pmd_swp_clear_soft_dirty(pt.pmd_swp_mksoft_dirty(pte)) == pte
    assert pt.pmd_swp_clear_uffd_wp(pte | 0x4) == pte


def test_upper_level_table_entry():
    assert pt.mk_table_entry(0x1234) == 0x1234_067
    assert pt.table_entry_pfn(0x1234_067) == 0x1234
    assert not pt.pmd_bad(pt.mk_table_entry(0x1234))


def test_pmd_pfn_uses_the_2m_mask_when_huge():
    pmd = pt.pmd_mkhuge(pt.pfn_pmd(0x200, pt.PAGE_SHARED))
    assert pmd == NX | 0x200_000 | 0x27 | 0x80
    assert pt.pmd_pfn(pmd) == 0x200
    # bits 12..20 are not PFN bits of a huge PMD (PAT_LARGE lives at bit 12)
    assert pt.pmd_pfn(pmd | 0x1000) == 0x200


def test_indices():
    addr = (3 << 39) | (5 << 30) | (7 << 21) | (9 << 12) | 0x123
    assert (pt.pgd_index(addr), pt.pud_index(addr), pt.pmd_index(addr), pt.pte_index(addr)) == (
        3,
        5,
        7,
        9,
    )


@given(pfn=st.integers(0, (1 << 40) - 1), prot=st.sampled_from(pt.protection_map))
def test_pfn_pte_round_trip(pfn, prot):
    assert pt.pte_pfn(pt.pfn_pte(pfn, prot)) == pfn


# --- differences from the kernel (see the module docstring) ---------------------------------
# _COMMON_PAGE_CHG_MASK = PTE_PFN_MASK | PCD | PWT | SPECIAL | A | D | SavedDirty | SOFT_DIRTY
# | UFFD_WP (no encryption bit here); low bits 0x8+0x10+0x20+0x40+0x200+0x400+0x800 = 0xE78.
# _PAGE_CHG_MASK adds _PAGE_PAT (bit 7); _HPAGE_CHG_MASK adds PSE (bit 7) and PAT_LARGE
# (bit 12, already inside PTE_PFN_MASK): both come to 0x040FFFFFFFFFFEF8.
KERNEL_CHG_MASK = 0x040F_FFFF_FFFF_FEF8


def test_hpage_chg_mask():
    assert pt._HPAGE_CHG_MASK == KERNEL_CHG_MASK


def test_chg_mask_keeps_pat():
    assert pt._PAGE_CHG_MASK == KERNEL_CHG_MASK


def test_wrprotect_moves_dirty_to_saved_dirty():
    pte = pt.pfn_pte(0x10, pt.PAGE_SHARED) | pt._PAGE_DIRTY
    ro = pt.pte_wrprotect(pte)
    assert not ro & pt._PAGE_DIRTY and ro & pt._PAGE_SAVED_DIRTY


def test_mkdirty_of_readonly_sets_saved_dirty():
    ro = pt.pte_mkdirty(pt.pfn_pte(0x10, pt.PAGE_READONLY))
    assert ro & pt._PAGE_SAVED_DIRTY and not ro & pt._PAGE_DIRTY


def test_pmd_bad_flags_nx_table_entry():
    assert pt.pmd_bad(pt.mk_table_entry(0x1234) | NX)


def test_wrprotect_and_mkdirty_keep_dirtiness_visible():
    """Whatever bit carries it, the dirtiness survives (holds in both models)."""
    pte = pt.pfn_pte(0x10, pt.PAGE_SHARED) | pt._PAGE_DIRTY
    assert pt.pte_dirty(pt.pte_wrprotect(pte))
    assert pt.pte_dirty(pt.pte_mkdirty(pt.pfn_pte(0x10, pt.PAGE_READONLY)))

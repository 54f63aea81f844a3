"""x86-64 page-table entry words: bit layout, encoders and predicates.

Models: arch/x86/include/asm/pgtable_types.h, pgtable.h, pgtable_64.h,
pgtable_64_types.h and arch/x86/mm/pgprot.c @ torvalds/linux 0eaed89c18ae.

Entries are plain Python ints holding the 64-bit word the hardware walks.
Simplified: no SME/TDX encryption bit, no protection keys, 4-level paging
only. As in the kernel (since shadow-stack support), a read-only entry never
carries hardware Dirty: wrprotect/mkdirty/modify move it to SavedDirty
(bit 58) and mkwrite moves it back, so pte_dirty() sees either bit.
The L1TF mitigation is modelled: a non-present, non-empty entry (PROT_NONE)
stores its PFN bits inverted, exactly like protnone_mask() in the kernel.

Array forms: every encoder and predicate a bulk pass needs also exists as
``<name>_array``, taking and returning NumPy arrays (words np.uint64,
predicates np.bool_, PFNs np.int64); they use the same mask constants as the
scalar forms (section "array forms" at the end).
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

from hmmsim.kconfig import PAGE_SHIFT, PGDIR_SHIFT, PMD_SHIFT, PUD_SHIFT

U64Array: TypeAlias = NDArray[np.uint64]
I64Array: TypeAlias = NDArray[np.int64]
BoolArray: TypeAlias = NDArray[np.bool_]

# --- bit numbers (pgtable_types.h) -------------------------------------------
_PAGE_BIT_PRESENT = 0
_PAGE_BIT_RW = 1
_PAGE_BIT_USER = 2
_PAGE_BIT_PWT = 3
_PAGE_BIT_PCD = 4
_PAGE_BIT_ACCESSED = 5
_PAGE_BIT_DIRTY = 6
_PAGE_BIT_PSE = 7
_PAGE_BIT_PAT = 7
_PAGE_BIT_GLOBAL = 8
_PAGE_BIT_SOFTW1 = 9
_PAGE_BIT_SOFTW2 = 10
_PAGE_BIT_SOFTW3 = 11
_PAGE_BIT_PAT_LARGE = 12
_PAGE_BIT_SOFTW4 = 57
_PAGE_BIT_SOFTW5 = 58
_PAGE_BIT_NX = 63
_PAGE_BIT_SPECIAL = _PAGE_BIT_SOFTW1
_PAGE_BIT_UFFD_WP = _PAGE_BIT_SOFTW2
_PAGE_BIT_SOFT_DIRTY = _PAGE_BIT_SOFTW3
_PAGE_BIT_SAVED_DIRTY = _PAGE_BIT_SOFTW5
#: PROT_NONE entries reuse the Global bit: they are never global.
_PAGE_BIT_PROTNONE = _PAGE_BIT_GLOBAL

_PAGE_PRESENT = 1 << _PAGE_BIT_PRESENT
_PAGE_RW = 1 << _PAGE_BIT_RW
_PAGE_USER = 1 << _PAGE_BIT_USER
_PAGE_PWT = 1 << _PAGE_BIT_PWT
_PAGE_PCD = 1 << _PAGE_BIT_PCD
_PAGE_ACCESSED = 1 << _PAGE_BIT_ACCESSED
_PAGE_DIRTY = 1 << _PAGE_BIT_DIRTY
_PAGE_PSE = 1 << _PAGE_BIT_PSE
_PAGE_GLOBAL = 1 << _PAGE_BIT_GLOBAL
_PAGE_SPECIAL = 1 << _PAGE_BIT_SPECIAL
_PAGE_UFFD_WP = 1 << _PAGE_BIT_UFFD_WP
_PAGE_SOFT_DIRTY = 1 << _PAGE_BIT_SOFT_DIRTY
_PAGE_SAVED_DIRTY = 1 << _PAGE_BIT_SAVED_DIRTY
_PAGE_PROTNONE = 1 << _PAGE_BIT_PROTNONE
_PAGE_NX = 1 << _PAGE_BIT_NX
_PAGE_DIRTY_BITS = _PAGE_DIRTY | _PAGE_SAVED_DIRTY
#: Knights Landing erratum: A/D may be set in an otherwise empty entry.
_PAGE_KNL_ERRATUM_MASK = _PAGE_DIRTY | _PAGE_ACCESSED

#: Software bits of swap (non-present) PTEs, x86-64.
_PAGE_SWP_SOFT_DIRTY = _PAGE_RW
_PAGE_SWP_UFFD_WP = _PAGE_USER
_PAGE_SWP_EXCLUSIVE = _PAGE_PWT

__PHYSICAL_MASK_SHIFT = 52
__PHYSICAL_MASK = (1 << __PHYSICAL_MASK_SHIFT) - 1
PAGE_MASK_64 = ~((1 << PAGE_SHIFT) - 1) & 0xFFFF_FFFF_FFFF_FFFF
PHYSICAL_PAGE_MASK = PAGE_MASK_64 & __PHYSICAL_MASK
PHYSICAL_PMD_PAGE_MASK = (~((1 << PMD_SHIFT) - 1)) & __PHYSICAL_MASK
PTE_PFN_MASK = PHYSICAL_PAGE_MASK
PTE_FLAGS_MASK = ~PTE_PFN_MASK & 0xFFFF_FFFF_FFFF_FFFF
#: Bits pte_modify() keeps from the old entry.
_PAGE_PAT = 1 << _PAGE_BIT_PAT
_PAGE_CHG_MASK = (
    PTE_PFN_MASK
    | _PAGE_PAT
    | _PAGE_PCD
    | _PAGE_PWT
    | _PAGE_SPECIAL
    | _PAGE_ACCESSED
    | _PAGE_DIRTY_BITS
    | _PAGE_SOFT_DIRTY
    | _PAGE_UFFD_WP
)
_HPAGE_CHG_MASK = _PAGE_CHG_MASK | _PAGE_PSE

U64 = 0xFFFF_FFFF_FFFF_FFFF

# --- protections (pgtable_types.h, mm/pgprot.c) ------------------------------
PAGE_NONE = _PAGE_ACCESSED | _PAGE_GLOBAL
PAGE_SHARED = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_NX
PAGE_SHARED_EXEC = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED
PAGE_COPY_NOEXEC = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED | _PAGE_NX
PAGE_COPY_EXEC = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED
PAGE_COPY = PAGE_COPY_NOEXEC
PAGE_READONLY = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED | _PAGE_NX
PAGE_READONLY_EXEC = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED
#: Upper-level entry pointing at a user page table.
_PAGE_TABLE = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY

# VM_READ/WRITE/EXEC/SHARED as in include/linux/mm.h
_VM_READ, _VM_WRITE, _VM_EXEC, _VM_SHARED = 0x1, 0x2, 0x4, 0x8

#: arch/x86/mm/pgprot.c protection_map[], indexed by VM_READ|WRITE|EXEC|SHARED.
protection_map = (
    PAGE_NONE,  # ---p
    PAGE_READONLY,  # r--p
    PAGE_COPY,  # -w-p
    PAGE_COPY,  # rw-p
    PAGE_READONLY_EXEC,  # --xp
    PAGE_READONLY_EXEC,  # r-xp
    PAGE_COPY_EXEC,  # -wxp
    PAGE_COPY_EXEC,  # rwxp
    PAGE_NONE,  # ---s
    PAGE_READONLY,  # r--s
    PAGE_SHARED,  # -w-s
    PAGE_SHARED,  # rw-s
    PAGE_READONLY_EXEC,  # --xs
    PAGE_READONLY_EXEC,  # r-xs
    PAGE_SHARED_EXEC,  # -wxs
    PAGE_SHARED_EXEC,  # rwxs
)


def vm_get_page_prot(vm_flags: int) -> int:
    """The pgprot for a vma's flags (arch/x86/mm/pgprot.c)."""
    return protection_map[vm_flags & (_VM_READ | _VM_WRITE | _VM_EXEC | _VM_SHARED)]


# --- table indices -----------------------------------------------------------
def pgd_index(addr: int) -> int:
    return (addr >> PGDIR_SHIFT) & 511


def pud_index(addr: int) -> int:
    return (addr >> PUD_SHIFT) & 511


def pmd_index(addr: int) -> int:
    return (addr >> PMD_SHIFT) & 511


def pte_index(addr: int) -> int:
    return (addr >> PAGE_SHIFT) & 511


# --- L1TF inversion (asm/pgtable-invert.h) -----------------------------------
def __pte_needs_invert(val: int) -> bool:
    return val != 0 and not (val & _PAGE_PRESENT)


def protnone_mask(val: int) -> int:
    return U64 if __pte_needs_invert(val) else 0


def flip_protnone_guard(oldval: int, val: int, mask: int) -> int:
    if __pte_needs_invert(oldval) != __pte_needs_invert(val):
        val = (val & ~mask) | (~val & mask)
    return val & U64


# --- PTE ---------------------------------------------------------------------
def pte_none(pte: int) -> bool:
    return not (pte & ~_PAGE_KNL_ERRATUM_MASK)


def pte_present(pte: int) -> bool:
    return bool(pte & (_PAGE_PRESENT | _PAGE_PROTNONE))


def pte_protnone(pte: int) -> bool:
    return (pte & (_PAGE_PROTNONE | _PAGE_PRESENT)) == _PAGE_PROTNONE


def pte_write(pte: int) -> bool:
    return bool(pte & _PAGE_RW)


def pte_dirty(pte: int) -> bool:
    return bool(pte & _PAGE_DIRTY_BITS)


def pte_young(pte: int) -> bool:
    return bool(pte & _PAGE_ACCESSED)


def pte_special(pte: int) -> bool:
    return bool(pte & _PAGE_SPECIAL)


def pte_soft_dirty(pte: int) -> bool:
    return bool(pte & _PAGE_SOFT_DIRTY)


def pte_uffd_wp(pte: int) -> bool:
    return bool(pte & _PAGE_UFFD_WP)


def pte_exec(pte: int) -> bool:
    return not (pte & _PAGE_NX)


def pte_pfn(pte: int) -> int:
    pfn = pte ^ protnone_mask(pte)
    return (pfn & PTE_PFN_MASK) >> PAGE_SHIFT


def pte_advance_pfn(pte: int, nr: int) -> int:
    """The PTE for the page `nr` after pte's (asm/pgtable.h): an inverted
    (PROT_NONE) PFN moves the other way."""
    step = nr << PAGE_SHIFT
    return (pte - step if __pte_needs_invert(pte) else pte + step) & U64


def pfn_pte(pfn: int, prot: int) -> int:
    """A PTE mapping `pfn` with protection `prot` (PFN inverted if PROT_NONE)."""
    v = (pfn << PAGE_SHIFT) ^ protnone_mask(prot)
    return (v & PTE_PFN_MASK) | (prot & PTE_FLAGS_MASK)


def mksaveddirty_shift(v: int) -> int:
    """Read-only entries keep dirtiness in SavedDirty, never in hardware Dirty."""
    cond = (~v >> _PAGE_BIT_RW) & 1
    v |= ((v >> _PAGE_BIT_DIRTY) & cond) << _PAGE_BIT_SAVED_DIRTY
    return v & ~(cond << _PAGE_BIT_DIRTY)


def clear_saveddirty_shift(v: int) -> int:
    """A writable entry gets its dirtiness back in hardware Dirty."""
    cond = (v >> _PAGE_BIT_RW) & 1
    v |= ((v >> _PAGE_BIT_SAVED_DIRTY) & cond) << _PAGE_BIT_DIRTY
    return v & ~(cond << _PAGE_BIT_SAVED_DIRTY)


def pte_mkwrite_novma(pte: int) -> int:
    return clear_saveddirty_shift(pte | _PAGE_RW)


def pte_wrprotect(pte: int) -> int:
    return mksaveddirty_shift(pte & ~_PAGE_RW)


def pte_mkdirty(pte: int) -> int:
    return mksaveddirty_shift(pte | _PAGE_DIRTY | _PAGE_SOFT_DIRTY)


def pte_mkclean(pte: int) -> int:
    return pte & ~_PAGE_DIRTY_BITS


def pte_mkyoung(pte: int) -> int:
    return pte | _PAGE_ACCESSED


def pte_mkold(pte: int) -> int:
    return pte & ~_PAGE_ACCESSED


def pte_mkspecial(pte: int) -> int:
    return pte | _PAGE_SPECIAL


def pte_mksoft_dirty(pte: int) -> int:
    return pte | _PAGE_SOFT_DIRTY


def pte_clear_soft_dirty(pte: int) -> int:
    return pte & ~_PAGE_SOFT_DIRTY


def pte_mkuffd_wp(pte: int) -> int:
    return pte_wrprotect(pte | _PAGE_UFFD_WP)


def pte_modify(pte: int, newprot: int) -> int:
    """Change the protection bits of `pte`, keeping PFN, A/D, special, soft bits."""
    val = pte & _PAGE_CHG_MASK
    val |= newprot & ~_PAGE_CHG_MASK & U64
    val = flip_protnone_guard(pte, val, PTE_PFN_MASK)
    return mksaveddirty_shift(val) if pte & _PAGE_RW else clear_saveddirty_shift(val)


# --- swap-PTE soft bits (pgtable.h) ------------------------------------------
def pte_swp_soft_dirty(pte: int) -> bool:
    return bool(pte & _PAGE_SWP_SOFT_DIRTY)


def pte_swp_mksoft_dirty(pte: int) -> int:
    return pte | _PAGE_SWP_SOFT_DIRTY


def pte_swp_clear_soft_dirty(pte: int) -> int:
    return pte & ~_PAGE_SWP_SOFT_DIRTY


def pte_swp_uffd_wp(pte: int) -> bool:
    return bool(pte & _PAGE_SWP_UFFD_WP)


def pte_swp_mkuffd_wp(pte: int) -> int:
    return pte | _PAGE_SWP_UFFD_WP


def pte_swp_clear_uffd_wp(pte: int) -> int:
    return pte & ~_PAGE_SWP_UFFD_WP


def pte_swp_exclusive(pte: int) -> bool:
    return bool(pte & _PAGE_SWP_EXCLUSIVE)


def pte_swp_mkexclusive(pte: int) -> int:
    return pte | _PAGE_SWP_EXCLUSIVE


def pte_swp_clear_exclusive(pte: int) -> int:
    return pte & ~_PAGE_SWP_EXCLUSIVE


# --- PMD ---------------------------------------------------------------------
def pmd_none(pmd: int) -> bool:
    return not (pmd & ~_PAGE_KNL_ERRATUM_MASK)


def pmd_present(pmd: int) -> bool:
    """Present, PROT_NONE or a huge PMD being split (PSE alone counts)."""
    return bool(pmd & (_PAGE_PRESENT | _PAGE_PROTNONE | _PAGE_PSE))


def pmd_protnone(pmd: int) -> bool:
    return (pmd & (_PAGE_PROTNONE | _PAGE_PRESENT)) == _PAGE_PROTNONE


def pmd_leaf(pmd: int) -> bool:
    return bool(pmd & _PAGE_PSE)


def pmd_trans_huge(pmd: int) -> bool:
    return bool(pmd & _PAGE_PSE)


def pmd_write(pmd: int) -> bool:
    return bool(pmd & _PAGE_RW)


def pmd_dirty(pmd: int) -> bool:
    return bool(pmd & _PAGE_DIRTY_BITS)


def pmd_young(pmd: int) -> bool:
    return bool(pmd & _PAGE_ACCESSED)


def pmd_soft_dirty(pmd: int) -> bool:
    return bool(pmd & _PAGE_SOFT_DIRTY)


def pmd_pfn_mask(pmd: int) -> int:
    return PHYSICAL_PMD_PAGE_MASK if pmd & _PAGE_PSE else PTE_PFN_MASK


def pmd_pfn(pmd: int) -> int:
    pfn = pmd ^ protnone_mask(pmd)
    return (pfn & pmd_pfn_mask(pmd)) >> PAGE_SHIFT


def pfn_pmd(pfn: int, prot: int) -> int:
    """A huge-PMD-style entry for `pfn` (call pmd_mkhuge to set PSE)."""
    v = (pfn << PAGE_SHIFT) ^ protnone_mask(prot)
    return (v & PHYSICAL_PMD_PAGE_MASK) | (prot & PTE_FLAGS_MASK)


def pmd_mkhuge(pmd: int) -> int:
    return pmd | _PAGE_PSE


def pmd_mkwrite_novma(pmd: int) -> int:
    return clear_saveddirty_shift(pmd | _PAGE_RW)


def pmd_wrprotect(pmd: int) -> int:
    return mksaveddirty_shift(pmd & ~_PAGE_RW)


def pmd_mkdirty(pmd: int) -> int:
    return mksaveddirty_shift(pmd | _PAGE_DIRTY | _PAGE_SOFT_DIRTY)


def pmd_mkclean(pmd: int) -> int:
    return pmd & ~_PAGE_DIRTY_BITS


def pmd_mkyoung(pmd: int) -> int:
    return pmd | _PAGE_ACCESSED


def pmd_mkold(pmd: int) -> int:
    return pmd & ~_PAGE_ACCESSED


def pmd_modify(pmd: int, newprot: int) -> int:
    val = pmd & _HPAGE_CHG_MASK
    val |= newprot & ~_HPAGE_CHG_MASK & U64
    val = flip_protnone_guard(pmd, val, PHYSICAL_PMD_PAGE_MASK)
    return mksaveddirty_shift(val) if pmd & _PAGE_RW else clear_saveddirty_shift(val)


def pmd_swp_soft_dirty(pmd: int) -> bool:
    return bool(pmd & _PAGE_SWP_SOFT_DIRTY)


def pmd_swp_mksoft_dirty(pmd: int) -> int:
    return pmd | _PAGE_SWP_SOFT_DIRTY


def pmd_swp_clear_soft_dirty(pmd: int) -> int:
    return pmd & ~_PAGE_SWP_SOFT_DIRTY


def pmd_swp_uffd_wp(pmd: int) -> bool:
    return bool(pmd & _PAGE_SWP_UFFD_WP)


def pmd_swp_clear_uffd_wp(pmd: int) -> int:
    return pmd & ~_PAGE_SWP_UFFD_WP


# --- upper-level (table) entries ----------------------------------------------
def mk_table_entry(table_pfn: int) -> int:
    """What pmd_populate()/pud_populate()/p4d_populate() write: _PAGE_TABLE | phys."""
    return (table_pfn << PAGE_SHIFT) | _PAGE_TABLE


def table_entry_pfn(entry: int) -> int:
    """PFN of the next-level table an upper-level entry points to."""
    return (entry & PTE_PFN_MASK) >> PAGE_SHIFT


def pmd_bad(pmd: int) -> bool:
    """The flags of a table entry are not those of a user page table."""
    flags = pmd & ~pmd_pfn_mask(pmd) & U64
    return (flags & ~(_PAGE_USER | _PAGE_ACCESSED)) != (_PAGE_PRESENT | _PAGE_RW | _PAGE_DIRTY)


# --- human-readable decode ---------------------------------------------------
_FLAG_NAMES = (
    (_PAGE_PRESENT, "P"),
    (_PAGE_RW, "RW"),
    (_PAGE_USER, "U"),
    (_PAGE_PWT, "PWT"),
    (_PAGE_PCD, "PCD"),
    (_PAGE_ACCESSED, "A"),
    (_PAGE_DIRTY, "D"),
    (_PAGE_PSE, "PSE"),
    (_PAGE_GLOBAL, "G"),
    (_PAGE_SPECIAL, "SPECIAL"),
    (_PAGE_UFFD_WP, "UFFD_WP"),
    (_PAGE_SOFT_DIRTY, "SOFT_DIRTY"),
    (_PAGE_SAVED_DIRTY, "SAVED_DIRTY"),
    (_PAGE_NX, "NX"),
)


def pte_flag_names(pte: int) -> list[str]:
    """Names of the hardware/software flag bits set in a present entry."""
    names = [n for bit, n in _FLAG_NAMES if pte & bit]
    if pte_protnone(pte):
        names = ["PROTNONE" if n == "G" else n for n in names]
    return names


# --- array forms ---------------------------------------------------------------
# One function per scalar encoder or predicate above, named ``<scalar>_array``:
# it takes a NumPy array (or anything np.asarray accepts) of 64-bit words and
# returns the element-wise result the scalar form gives for each word. Words
# and masks are np.uint64, predicates np.bool_, PFNs and table indices np.int64.
# The masks are the constants above, converted once: no bit position is
# written a second time. tests/unit/test_include_arrays.py holds every array
# form equal to its scalar form.

_U64 = np.uint64
_A_PRESENT = _U64(_PAGE_PRESENT)
_A_RW = _U64(_PAGE_RW)
_A_ACCESSED = _U64(_PAGE_ACCESSED)
_A_DIRTY = _U64(_PAGE_DIRTY)
_A_DIRTY_BITS = _U64(_PAGE_DIRTY_BITS)
_A_PSE = _U64(_PAGE_PSE)
_A_SPECIAL = _U64(_PAGE_SPECIAL)
_A_SOFT_DIRTY = _U64(_PAGE_SOFT_DIRTY)
_A_UFFD_WP = _U64(_PAGE_UFFD_WP)
_A_NX = _U64(_PAGE_NX)
_A_PRESENT_OR_PROTNONE = _U64(_PAGE_PRESENT | _PAGE_PROTNONE)
_A_PRESENT_PROTNONE_PSE = _U64(_PAGE_PRESENT | _PAGE_PROTNONE | _PAGE_PSE)
_A_PROTNONE = _U64(_PAGE_PROTNONE)
_A_NOT_KNL_ERRATUM = _U64(U64 ^ _PAGE_KNL_ERRATUM_MASK)
_A_PTE_PFN_MASK = _U64(PTE_PFN_MASK)
_A_PMD_PFN_MASK = _U64(PHYSICAL_PMD_PAGE_MASK)
_A_PTE_FLAGS_MASK = _U64(PTE_FLAGS_MASK)
_A_CHG_MASK = _U64(_PAGE_CHG_MASK)
_A_HPAGE_CHG_MASK = _U64(_HPAGE_CHG_MASK)
_A_SWP_SOFT_DIRTY = _U64(_PAGE_SWP_SOFT_DIRTY)
_A_SWP_UFFD_WP = _U64(_PAGE_SWP_UFFD_WP)
_A_SWP_EXCLUSIVE = _U64(_PAGE_SWP_EXCLUSIVE)
_A_PAGE_SHIFT = _U64(PAGE_SHIFT)
_A_ONE = _U64(1)
_A_ZERO = _U64(0)
_A_ALL = _U64(U64)


def words_array(words: ArrayLike) -> U64Array:
    """`words` as a np.uint64 array (no copy when it already is one)."""
    return np.asarray(words, dtype=np.uint64)


def _has(words: ArrayLike, mask: np.uint64) -> BoolArray:
    """Where ``word & mask`` is non-zero (the array form of ``bool(word & mask)``)."""
    return (words_array(words) & mask).astype(np.bool_)


def _lacks(words: ArrayLike, mask: np.uint64) -> BoolArray:
    """Where ``word & mask`` is zero."""
    return np.logical_not(_has(words, mask))


def _masked_equal(words: ArrayLike, mask: np.uint64, value: np.uint64) -> BoolArray:
    """Where ``word & mask == value``."""
    out: BoolArray = np.equal(words_array(words) & mask, value)
    return out


def pte_index_array(addrs: ArrayLike) -> I64Array:
    """Element-wise `pte_index` of virtual addresses."""
    return (np.asarray(addrs, dtype=np.int64) >> PAGE_SHIFT) & 511


def pmd_index_array(addrs: ArrayLike) -> I64Array:
    """Element-wise `pmd_index` of virtual addresses."""
    return (np.asarray(addrs, dtype=np.int64) >> PMD_SHIFT) & 511


def __pte_needs_invert_array(words: U64Array) -> BoolArray:
    return np.logical_and(words.astype(np.bool_), _lacks(words, _A_PRESENT))


def protnone_mask_array(words: ArrayLike) -> U64Array:
    """Element-wise `protnone_mask`: all ones where the PFN is stored inverted."""
    w = words_array(words)
    return np.where(__pte_needs_invert_array(w), _A_ALL, _A_ZERO)


def flip_protnone_guard_array(oldvals: ArrayLike, vals: ArrayLike, mask: int) -> U64Array:
    """Element-wise `flip_protnone_guard`."""
    old, new = words_array(oldvals), words_array(vals)
    m = _U64(mask)
    flip = np.not_equal(__pte_needs_invert_array(old), __pte_needs_invert_array(new))
    return np.where(flip, (new & ~m) | (~new & m), new)


def pte_none_array(ptes: ArrayLike) -> BoolArray:
    return _lacks(ptes, _A_NOT_KNL_ERRATUM)


def pte_present_array(ptes: ArrayLike) -> BoolArray:
    return _has(ptes, _A_PRESENT_OR_PROTNONE)


def pte_protnone_array(ptes: ArrayLike) -> BoolArray:
    return _masked_equal(ptes, _A_PRESENT_OR_PROTNONE, _A_PROTNONE)


def pte_write_array(ptes: ArrayLike) -> BoolArray:
    return _has(ptes, _A_RW)


def pte_dirty_array(ptes: ArrayLike) -> BoolArray:
    return _has(ptes, _A_DIRTY_BITS)


def pte_young_array(ptes: ArrayLike) -> BoolArray:
    return _has(ptes, _A_ACCESSED)


def pte_special_array(ptes: ArrayLike) -> BoolArray:
    return _has(ptes, _A_SPECIAL)


def pte_soft_dirty_array(ptes: ArrayLike) -> BoolArray:
    return _has(ptes, _A_SOFT_DIRTY)


def pte_uffd_wp_array(ptes: ArrayLike) -> BoolArray:
    return _has(ptes, _A_UFFD_WP)


def pte_exec_array(ptes: ArrayLike) -> BoolArray:
    return _lacks(ptes, _A_NX)


def pte_pfn_array(ptes: ArrayLike) -> I64Array:
    """Element-wise `pte_pfn` (inverted PFNs of PROT_NONE entries un-inverted)."""
    w = words_array(ptes)
    return (((w ^ protnone_mask_array(w)) & _A_PTE_PFN_MASK) >> _A_PAGE_SHIFT).astype(np.int64)


def pfn_pte_array(pfns: ArrayLike, prot: int) -> U64Array:
    """Element-wise `pfn_pte`: one PTE per PFN, all with protection `prot`."""
    v = (np.asarray(pfns, dtype=np.uint64) << _A_PAGE_SHIFT) ^ _U64(protnone_mask(prot))
    return (v & _A_PTE_PFN_MASK) | _U64(prot & PTE_FLAGS_MASK)


def mksaveddirty_shift_array(words: ArrayLike) -> U64Array:
    """Element-wise `mksaveddirty_shift`."""
    v = words_array(words)
    cond = (~v >> _U64(_PAGE_BIT_RW)) & _A_ONE
    v = v | (((v >> _U64(_PAGE_BIT_DIRTY)) & cond) << _U64(_PAGE_BIT_SAVED_DIRTY))
    return v & ~(cond << _U64(_PAGE_BIT_DIRTY))


def clear_saveddirty_shift_array(words: ArrayLike) -> U64Array:
    """Element-wise `clear_saveddirty_shift`."""
    v = words_array(words)
    cond = (v >> _U64(_PAGE_BIT_RW)) & _A_ONE
    v = v | (((v >> _U64(_PAGE_BIT_SAVED_DIRTY)) & cond) << _U64(_PAGE_BIT_DIRTY))
    return v & ~(cond << _U64(_PAGE_BIT_SAVED_DIRTY))


def pte_mkwrite_novma_array(ptes: ArrayLike) -> U64Array:
    return clear_saveddirty_shift_array(words_array(ptes) | _A_RW)


def pte_wrprotect_array(ptes: ArrayLike) -> U64Array:
    return mksaveddirty_shift_array(words_array(ptes) & ~_A_RW)


def pte_mkdirty_array(ptes: ArrayLike) -> U64Array:
    return mksaveddirty_shift_array(words_array(ptes) | _A_DIRTY | _A_SOFT_DIRTY)


def pte_mkclean_array(ptes: ArrayLike) -> U64Array:
    return words_array(ptes) & ~_A_DIRTY_BITS


def pte_mkyoung_array(ptes: ArrayLike) -> U64Array:
    return words_array(ptes) | _A_ACCESSED


def pte_mkold_array(ptes: ArrayLike) -> U64Array:
    return words_array(ptes) & ~_A_ACCESSED


def pte_mkspecial_array(ptes: ArrayLike) -> U64Array:
    return words_array(ptes) | _A_SPECIAL


def pte_mkuffd_wp_array(ptes: ArrayLike) -> U64Array:
    return pte_wrprotect_array(words_array(ptes) | _A_UFFD_WP)


def _modify_array(words: ArrayLike, newprot: int, keep: np.uint64, pfn_mask: int) -> U64Array:
    old = words_array(words)
    val = (old & keep) | (_U64(newprot & U64) & ~keep)
    val = flip_protnone_guard_array(old, val, pfn_mask)
    return np.where(
        _has(old, _A_RW), mksaveddirty_shift_array(val), clear_saveddirty_shift_array(val)
    )


def pte_modify_array(ptes: ArrayLike, newprot: int) -> U64Array:
    """Element-wise `pte_modify`, one new protection for every entry."""
    return _modify_array(ptes, newprot, _A_CHG_MASK, PTE_PFN_MASK)


def pte_swp_soft_dirty_array(ptes: ArrayLike) -> BoolArray:
    return _has(ptes, _A_SWP_SOFT_DIRTY)


def pte_swp_uffd_wp_array(ptes: ArrayLike) -> BoolArray:
    return _has(ptes, _A_SWP_UFFD_WP)


def pte_swp_mksoft_dirty_array(ptes: ArrayLike) -> U64Array:
    return words_array(ptes) | _A_SWP_SOFT_DIRTY


def pte_swp_mkuffd_wp_array(ptes: ArrayLike) -> U64Array:
    return words_array(ptes) | _A_SWP_UFFD_WP


def pte_swp_exclusive_array(ptes: ArrayLike) -> BoolArray:
    return _has(ptes, _A_SWP_EXCLUSIVE)


def pmd_none_array(pmds: ArrayLike) -> BoolArray:
    return _lacks(pmds, _A_NOT_KNL_ERRATUM)


def pmd_present_array(pmds: ArrayLike) -> BoolArray:
    return _has(pmds, _A_PRESENT_PROTNONE_PSE)


def pmd_trans_huge_array(pmds: ArrayLike) -> BoolArray:
    return _has(pmds, _A_PSE)


pmd_leaf_array = pmd_trans_huge_array


def pmd_write_array(pmds: ArrayLike) -> BoolArray:
    return _has(pmds, _A_RW)


def pmd_dirty_array(pmds: ArrayLike) -> BoolArray:
    return _has(pmds, _A_DIRTY_BITS)


def pmd_young_array(pmds: ArrayLike) -> BoolArray:
    return _has(pmds, _A_ACCESSED)


def pmd_pfn_array(pmds: ArrayLike) -> I64Array:
    """Element-wise `pmd_pfn` (PSE entries keep only the 2 MiB-aligned bits)."""
    w = words_array(pmds)
    mask = np.where(_has(w, _A_PSE), _A_PMD_PFN_MASK, _A_PTE_PFN_MASK)
    return (((w ^ protnone_mask_array(w)) & mask) >> _A_PAGE_SHIFT).astype(np.int64)


def pmd_modify_array(pmds: ArrayLike, newprot: int) -> U64Array:
    """Element-wise `pmd_modify`."""
    return _modify_array(pmds, newprot, _A_HPAGE_CHG_MASK, PHYSICAL_PMD_PAGE_MASK)


def table_entry_pfn_array(entries: ArrayLike) -> I64Array:
    """Element-wise `table_entry_pfn` of upper-level entries."""
    return ((words_array(entries) & _A_PTE_PFN_MASK) >> _A_PAGE_SHIFT).astype(np.int64)

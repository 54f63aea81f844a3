"""Software page-table leaves: swp_entry_t, the softleaf API and the x86-64 swap PTE.

Models: include/linux/swap.h (type numbering, MAX_SWAPFILES),
include/linux/swapops.h (swp_entry, make_*_entry, migration A/D bits, PTE
markers), include/linux/leafops.h (enum softleaf_type, softleaf_*) and
arch/x86/include/asm/pgtable_64.h (__swp_entry/__swp_type/__swp_offset: the
inverted-offset x86-64 swap PTE) @ torvalds/linux 0eaed89c18ae. Series (b)
(SWP_DEVICE_NUM 6, SWP_MIGRATION_DEVICE_READ/_READ_EXCLUSIVE/_WRITE,
SOFTLEAF_MIGRATION_DEVICE_PRIVATE_*, the make_*_migration_device_private_entry
constructors, and the generic softleaf_is_migration* predicates also matching
the device variants) follows the v3+ postings in linux-mm (seed thread 001).

A swp_entry_t / softleaf_t is a plain int, ``(type << SWP_TYPE_SHIFT) |
offset``. Type numbers depend on the configuration (series (b) takes three
more types and so shrinks MAX_SWAPFILES from 24 to 21), so the API lives on a
`SwapLayout` built from a KConfig; its methods keep the kernel's names and
argument order, and every predicate is one shift and one tuple lookup.

Simplifications:
- The kernel options that size the special types (CONFIG_DEVICE_PRIVATE,
  CONFIG_MIGRATION, CONFIG_MEMORY_FAILURE) are all on, as on the modelled
  x86-64 kernel; PTE markers are unconditional upstream.
- Swap entries are always 64-bit words (x86-64): KConfig.bits_per_long only
  changes the HMM and migrate-PFN budgets, not this layout.
- migration_entry_supports_ad() is computed the way mm/swapfile.c does at boot
  from generic_max_swapfile_size(); the x86 L1TF cap of
  arch_max_swapfile_size() is not modelled (the modelled CPU has no L1TF).
- Helpers that need struct pages (softleaf_to_page/_folio,
  pfn_swap_entry_to_page) live with the page arrays, not here.
- The kernel's VM_WARN_ON_ONCE checks in softleaf_to_pfn/_to_marker/
  _is_migration_young/_dirty only fire if a `warn` callback was given.
- The pre-softleaf ``is_*_entry`` predicates are kept (most are gone from
  swapops.h upstream); each behaves exactly like the softleaf predicate its
  docstring names, so with series (b) they also match the device variants, as
  the series' RFC made them do.

Array forms: the encoders (`swp_entry_array`, `swp_entry_to_pte_array`,
`pte_to_swp_entry_array`, `softleaf_from_pte_array` ...) and every softleaf
predicate of a `SwapLayout` (``swp.softleaf_is_migration_array(entries)``)
also take NumPy arrays; they use the same shifts, masks and type tables as the
scalar forms. Bulk passes use these instead of a layout's private tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import IntEnum
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from hmmsim.include.pgtable import (
    _PAGE_BIT_PROTNONE,
    _PAGE_KNL_ERRATUM_MASK,
    _PAGE_PRESENT,
    _PAGE_PROTNONE,
    _PAGE_PSE,
    _PAGE_SWP_EXCLUSIVE,
    _PAGE_SWP_SOFT_DIRTY,
    _PAGE_SWP_UFFD_WP,
    BoolArray,
    I64Array,
    U64Array,
    _has,
    _lacks,
    words_array,
)
from hmmsim.kconfig import MAX_PHYSMEM_BITS, PAGE_SHIFT

if TYPE_CHECKING:
    from hmmsim.kconfig import KConfig

U64 = (1 << 64) - 1

# --- include/linux/swap.h, swapops.h: the arch-independent swp_entry_t ----------------------
MAX_SWAPFILES_SHIFT = 5
#: BITS_PER_XA_VALUE on a 64-bit kernel (an xarray value entry loses one bit).
BITS_PER_XA_VALUE = 64 - 1
SWP_TYPE_SHIFT = BITS_PER_XA_VALUE - MAX_SWAPFILES_SHIFT
SWP_OFFSET_MASK = (1 << SWP_TYPE_SHIFT) - 1
#: A PFN needs MAX_PHYSMEM_BITS - PAGE_SHIFT bits (34 with 4-level paging).
SWP_PFN_BITS = MAX_PHYSMEM_BITS - PAGE_SHIFT
SWP_PFN_MASK = (1 << SWP_PFN_BITS) - 1
#: Migration entries keep the old PTE's Accessed and Dirty bits above the PFN.
SWP_MIG_YOUNG_BIT = SWP_PFN_BITS
SWP_MIG_DIRTY_BIT = SWP_PFN_BITS + 1
SWP_MIG_TOTAL_BITS = SWP_PFN_BITS + 2
SWP_MIG_YOUNG = 1 << SWP_MIG_YOUNG_BIT
SWP_MIG_DIRTY = 1 << SWP_MIG_DIRTY_BIT

#: Payload of an SWP_PTE_MARKER entry (swapops.h).
PTE_MARKER_UFFD_WP = 1 << 0
PTE_MARKER_POISONED = 1 << 1
PTE_MARKER_GUARD = 1 << 2
PTE_MARKER_MASK = (1 << 3) - 1

# --- arch/x86/include/asm/pgtable_64.h: the swap PTE word ------------------------------------
# Bits 0-8 stay clear apart from the soft bits below (bit 7 must be 0 or
# pmd_present() would see a PSE entry; bit 8 is PROTNONE). Bits 9..58 hold the
# offset inverted, so a small offset sets the high physical-address bits and
# can never name real memory (L1TF). Bits 59..63 hold the type.
SWP_TYPE_BITS = 5
SWP_OFFSET_FIRST_BIT = _PAGE_BIT_PROTNONE + 1
SWP_OFFSET_SHIFT = SWP_OFFSET_FIRST_BIT + SWP_TYPE_BITS
#: Bits of a non-present PTE that are not part of the swap entry: x86 keeps the
#: swap soft-dirty, uffd-wp and anon-exclusive marks in bits 1, 2 and 3.
PTE_SWP_SOFT_BITS = _PAGE_SWP_SOFT_DIRTY | _PAGE_SWP_UFFD_WP | _PAGE_SWP_EXCLUSIVE
#: A non-present PMD has no exclusive mark; only soft-dirty and uffd-wp.
PMD_SWP_SOFT_BITS = _PAGE_SWP_SOFT_DIRTY | _PAGE_SWP_UFFD_WP
_KEEP_PTE = U64 ^ PTE_SWP_SOFT_BITS
_KEEP_PMD = U64 ^ PMD_SWP_SOFT_BITS
_TYPE_POS = 64 - SWP_TYPE_BITS


def __swp_entry(type: int, offset: int) -> int:
    """The x86-64 swap-PTE word for (type, offset): offset inverted, type on top.

    Kernel: arch/x86/include/asm/pgtable_64.h __swp_entry. Only the low 50
    offset bits survive (64 - SWP_OFFSET_SHIFT), as in C.
    """
    return (((~offset << SWP_OFFSET_SHIFT) & U64) >> SWP_TYPE_BITS) | (type << _TYPE_POS)


def __swp_type(x: int) -> int:
    """The 5-bit type of an x86-64 swap-PTE word (arch format)."""
    return x >> _TYPE_POS


def __swp_offset(x: int) -> int:
    """The offset of an x86-64 swap-PTE word, un-inverted (arch format)."""
    return ((~x << SWP_TYPE_BITS) & U64) >> SWP_OFFSET_SHIFT


def __pte_to_swp_entry(pte: int) -> int:
    """x86-64: the arch swap entry is the PTE word itself."""
    return pte


def __swp_entry_to_pte(x: int) -> int:
    return x


def __pmd_to_swp_entry(pmd: int) -> int:
    return pmd


def __swp_entry_to_pmd(x: int) -> int:
    return x


# Callable spellings without the leading double underscore: inside a class body
# Python would mangle ``__swp_entry`` into ``_SwapLayout__swp_entry``.
arch_swp_entry = __swp_entry
arch_swp_type = __swp_type
arch_swp_offset = __swp_offset


# --- array forms of the encoders above -------------------------------------------------------
# Element-wise twins of the scalar encoders (the static SwapLayout methods of
# the same name without ``_array``): words and entries are np.uint64 arrays,
# types np.int64. They use the shifts and masks defined once above.
_A_TYPE_SHIFT = np.uint64(SWP_TYPE_SHIFT)
_A_TYPE_POS = np.uint64(_TYPE_POS)
_A_TYPE_BITS = np.uint64(SWP_TYPE_BITS)
_A_OFFSET_SHIFT = np.uint64(SWP_OFFSET_SHIFT)
_A_OFFSET_MASK = np.uint64(SWP_OFFSET_MASK)
_A_PFN_MASK = np.uint64(SWP_PFN_MASK)
_A_KEEP_PTE = np.uint64(_KEEP_PTE)
_A_KEEP_PMD = np.uint64(_KEEP_PMD)
_A_NOT_KNL_ERRATUM = np.uint64(U64 ^ _PAGE_KNL_ERRATUM_MASK)
_A_PTE_PRESENT = np.uint64(_PAGE_PRESENT | _PAGE_PROTNONE)
_A_PMD_PRESENT = np.uint64(_PAGE_PRESENT | _PAGE_PROTNONE | _PAGE_PSE)
_A_MIG_YOUNG = np.uint64(SWP_MIG_YOUNG)
_A_MIG_DIRTY = np.uint64(SWP_MIG_DIRTY)
_A_MARKER_MASK = np.uint64(PTE_MARKER_MASK)
_A_ZERO = np.uint64(0)


def swp_entry_array(types: ArrayLike, offsets: ArrayLike) -> U64Array:
    """Element-wise `SwapLayout.swp_entry`; `types` may be one type for all.

    Raises ValueError if any type is outside 0..31, like the scalar form.
    """
    t = np.asarray(types, dtype=np.int64)
    if ((t < 0) | (t >> MAX_SWAPFILES_SHIFT != 0)).any():
        raise ValueError("swp_entry_array: a type is not a 5-bit swap type (0..31)")
    return (t.astype(np.uint64) << _A_TYPE_SHIFT) | (words_array(offsets) & _A_OFFSET_MASK)


def swp_type_array(entries: ArrayLike) -> I64Array:
    """Element-wise `SwapLayout.swp_type`."""
    return (words_array(entries) >> _A_TYPE_SHIFT).astype(np.int64)


def swp_offset_array(entries: ArrayLike) -> U64Array:
    """Element-wise `SwapLayout.swp_offset`."""
    return words_array(entries) & _A_OFFSET_MASK


def _decode_array(words: U64Array) -> U64Array:
    # type from the top bits, offset un-inverted from the middle
    return ((words >> _A_TYPE_POS) << _A_TYPE_SHIFT) | ((~words << _A_TYPE_BITS) >> _A_OFFSET_SHIFT)


def pte_to_swp_entry_array(ptes: ArrayLike) -> U64Array:
    """Element-wise `SwapLayout.pte_to_swp_entry` (swap soft bits dropped)."""
    return _decode_array(words_array(ptes) & _A_KEEP_PTE)


def pmd_to_swp_entry_array(pmds: ArrayLike) -> U64Array:
    """Element-wise `SwapLayout.pmd_to_swp_entry` (soft-dirty, uffd-wp dropped)."""
    return _decode_array(words_array(pmds) & _A_KEEP_PMD)


def swp_entry_to_pte_array(entries: ArrayLike) -> U64Array:
    """Element-wise `SwapLayout.swp_entry_to_pte` (no soft bits set)."""
    e = words_array(entries)
    return ((~(e & _A_OFFSET_MASK) << _A_OFFSET_SHIFT) >> _A_TYPE_BITS) | (
        (e >> _A_TYPE_SHIFT) << _A_TYPE_POS
    )


swp_entry_to_pmd_array = swp_entry_to_pte_array
softleaf_to_pte_array = swp_entry_to_pte_array
softleaf_to_pmd_array = swp_entry_to_pte_array


def is_swap_pte_array(ptes: ArrayLike) -> BoolArray:
    """Element-wise `SwapLayout.is_swap_pte`: neither none nor present."""
    w = words_array(ptes)
    return np.logical_and(_has(w, _A_NOT_KNL_ERRATUM), _lacks(w, _A_PTE_PRESENT))


def softleaf_from_pte_array(ptes: ArrayLike) -> U64Array:
    """Element-wise `SwapLayout.softleaf_from_pte` (0 for present or empty)."""
    w = words_array(ptes)
    return np.where(is_swap_pte_array(w), _decode_array(w & _A_KEEP_PTE), _A_ZERO)


def softleaf_from_pmd_array(pmds: ArrayLike) -> U64Array:
    """Element-wise `SwapLayout.softleaf_from_pmd` (0 for present, PSE or empty)."""
    w = words_array(pmds)
    leaf = np.logical_and(_has(w, _A_NOT_KNL_ERRATUM), _lacks(w, _A_PMD_PRESENT))
    return np.where(leaf, _decode_array(w & _A_KEEP_PMD), _A_ZERO)


def softleaf_is_none_array(entries: ArrayLike) -> BoolArray:
    return np.logical_not(words_array(entries).astype(np.bool_))


# --- include/linux/leafops.h: enum softleaf_type ---------------------------------------------
class softleaf_type(IntEnum):
    """enum softleaf_type at the pin, in declaration order."""

    SOFTLEAF_NONE = 0
    SOFTLEAF_SWAP = 1
    SOFTLEAF_MIGRATION_READ = 2
    SOFTLEAF_MIGRATION_READ_EXCLUSIVE = 3
    SOFTLEAF_MIGRATION_WRITE = 4
    SOFTLEAF_DEVICE_PRIVATE_READ = 5
    SOFTLEAF_DEVICE_PRIVATE_WRITE = 6
    SOFTLEAF_DEVICE_EXCLUSIVE = 7
    SOFTLEAF_HWPOISON = 8
    SOFTLEAF_MARKER = 9


class softleaf_type_series_b(IntEnum):
    """enum softleaf_type with series (b): three device-private migration types
    are declared after SOFTLEAF_DEVICE_EXCLUSIVE, so HWPOISON and MARKER move.

    Compare results of `SwapLayout.softleaf_type` with the members of the
    layout's own enum (``swp.SOFTLEAF_MARKER``, ``swp.softleaf_type_enum``), not
    with a fixed module-level class: the numbers differ between the two.
    """

    SOFTLEAF_NONE = 0
    SOFTLEAF_SWAP = 1
    SOFTLEAF_MIGRATION_READ = 2
    SOFTLEAF_MIGRATION_READ_EXCLUSIVE = 3
    SOFTLEAF_MIGRATION_WRITE = 4
    SOFTLEAF_DEVICE_PRIVATE_READ = 5
    SOFTLEAF_DEVICE_PRIVATE_WRITE = 6
    SOFTLEAF_DEVICE_EXCLUSIVE = 7
    SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ = 8
    SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ_EXCLUSIVE = 9
    SOFTLEAF_MIGRATION_DEVICE_PRIVATE_WRITE = 10
    SOFTLEAF_HWPOISON = 11
    SOFTLEAF_MARKER = 12


#: Names that exist only with series (b); asking for one without it is an error.
_SERIES_B_ONLY = frozenset(
    {
        "SWP_MIGRATION_DEVICE_READ",
        "SWP_MIGRATION_DEVICE_READ_EXCLUSIVE",
        "SWP_MIGRATION_DEVICE_WRITE",
        "SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ",
        "SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ_EXCLUSIVE",
        "SOFTLEAF_MIGRATION_DEVICE_PRIVATE_WRITE",
        "make_readable_migration_device_private_entry",
        "make_readable_exclusive_migration_device_private_entry",
        "make_writable_migration_device_private_entry",
        "softleaf_is_migration_device_private",
        "softleaf_is_migration_device_private_read",
        "softleaf_is_migration_device_private_read_exclusive",
        "softleaf_is_migration_device_private_write",
        "softleaf_is_migration_device_private_read_array",
        "softleaf_is_migration_device_private_read_exclusive_array",
        "softleaf_is_migration_device_private_write_array",
    }
)

_MARKER_NAMES = (
    (PTE_MARKER_UFFD_WP, "UFFD_WP"),
    (PTE_MARKER_POISONED, "POISONED"),
    (PTE_MARKER_GUARD, "GUARD"),
)


def _table(types: Iterable[int]) -> tuple[bool, ...]:
    """A 64-slot truth table indexed by ``entry >> SWP_TYPE_SHIFT``."""
    s = frozenset(types)
    return tuple(t in s for t in range(64))


class SwapLayout:
    """Swap-entry type numbers and the swapops/leafops API for one KConfig.

    Build it with ``SwapLayout(cfg)``; with series (b) the object is a
    `SwapLayoutSeriesB`, which adds the device-private migration types; with
    the 6.12 profile (``cfg.kernel == "6.12"``) a `SwapLayout612`, which has
    two device-exclusive types (`SwapLayoutSeriesB612` with both).

    Type numbers, all options on (MAX_SWAPFILES = 32 - DEVICE - MIGRATION -
    HWPOISON - PTE_MARKER):

    - MAX_SWAPFILES (first special type): 24 pinned, 21 with (b)
    - SWP_HWPOISON: 24 / 21
    - SWP_MIGRATION_READ, _READ_EXCLUSIVE, _WRITE: 25-27 / 22-24
    - SWP_DEVICE_WRITE, _READ, _EXCLUSIVE: 28-30 / 25-27
    - SWP_MIGRATION_DEVICE_READ, _READ_EXCLUSIVE, _WRITE: (b) only, 28-30
    - SWP_PTE_MARKER: 31 / 31

    Fields: the constants above as attributes, plus SWP_*_NUM,
    softleaf_type_enum (the enum class in force) and one attribute per member
    of it (``swp.SOFTLEAF_MARKER``).

    Invariant: every type 0..31 decodes to exactly one softleaf_type; the
    special types are the top ``32 - MAX_SWAPFILES`` values.
    """

    series_b = False
    softleaf_type_enum: type[IntEnum] = softleaf_type

    MAX_SWAPFILES_SHIFT = MAX_SWAPFILES_SHIFT
    BITS_PER_XA_VALUE = BITS_PER_XA_VALUE
    SWP_TYPE_SHIFT = SWP_TYPE_SHIFT
    SWP_OFFSET_MASK = SWP_OFFSET_MASK
    SWP_PFN_BITS = SWP_PFN_BITS
    SWP_PFN_MASK = SWP_PFN_MASK
    SWP_MIG_YOUNG_BIT = SWP_MIG_YOUNG_BIT
    SWP_MIG_DIRTY_BIT = SWP_MIG_DIRTY_BIT
    SWP_MIG_TOTAL_BITS = SWP_MIG_TOTAL_BITS
    SWP_MIG_YOUNG = SWP_MIG_YOUNG
    SWP_MIG_DIRTY = SWP_MIG_DIRTY
    SWP_TYPE_BITS = SWP_TYPE_BITS
    SWP_OFFSET_FIRST_BIT = SWP_OFFSET_FIRST_BIT
    SWP_OFFSET_SHIFT = SWP_OFFSET_SHIFT
    PTE_MARKER_UFFD_WP = PTE_MARKER_UFFD_WP
    PTE_MARKER_POISONED = PTE_MARKER_POISONED
    PTE_MARKER_GUARD = PTE_MARKER_GUARD
    PTE_MARKER_MASK = PTE_MARKER_MASK

    # one attribute per member of softleaf_type_enum, set by __init__
    SOFTLEAF_NONE: IntEnum
    SOFTLEAF_SWAP: IntEnum
    SOFTLEAF_MIGRATION_READ: IntEnum
    SOFTLEAF_MIGRATION_READ_EXCLUSIVE: IntEnum
    SOFTLEAF_MIGRATION_WRITE: IntEnum
    SOFTLEAF_DEVICE_PRIVATE_READ: IntEnum
    SOFTLEAF_DEVICE_PRIVATE_WRITE: IntEnum
    SOFTLEAF_DEVICE_EXCLUSIVE: IntEnum
    SOFTLEAF_HWPOISON: IntEnum
    SOFTLEAF_MARKER: IntEnum

    SWP_DEVICE_NUM = 3
    SWP_MIGRATION_NUM = 3
    SWP_HWPOISON_NUM = 1
    SWP_PTE_MARKER_NUM = 1

    def __new__(
        cls, cfg: KConfig | None = None, warn: Callable[[str], None] | None = None
    ) -> SwapLayout:
        # cfg may be absent when copy/pickle rebuild an instance
        if cls is SwapLayout and cfg is not None:
            if cfg.kernel == "6.12":
                cls = SwapLayoutSeriesB612 if cfg.has("b") else SwapLayout612
            elif cfg.has("b"):
                cls = SwapLayoutSeriesB
        return super().__new__(cls)

    def __init__(self, cfg: KConfig, warn: Callable[[str], None] | None = None) -> None:
        #: Called with a message where the kernel has a VM_WARN_ON_ONCE; None
        #: skips those checks (and keeps the hot paths to a table lookup).
        self.warn = warn
        #: NumPy copies of the type tables below, made on first use by the
        #: array forms (name -> array indexed by type number).
        self._array_tables: dict[str, np.ndarray] = {}
        m = (
            (1 << MAX_SWAPFILES_SHIFT)
            - self.SWP_DEVICE_NUM
            - self.SWP_MIGRATION_NUM
            - self.SWP_HWPOISON_NUM
            - self.SWP_PTE_MARKER_NUM
        )
        self.MAX_SWAPFILES = m
        self.SWP_HWPOISON = m
        self.SWP_MIGRATION_READ = m + self.SWP_HWPOISON_NUM
        self.SWP_MIGRATION_READ_EXCLUSIVE = m + self.SWP_HWPOISON_NUM + 1
        self.SWP_MIGRATION_WRITE = m + self.SWP_HWPOISON_NUM + 2
        dev = m + self.SWP_HWPOISON_NUM + self.SWP_MIGRATION_NUM
        self.SWP_DEVICE_WRITE = dev
        self.SWP_DEVICE_READ = dev + 1
        self.SWP_DEVICE_EXCLUSIVE = dev + 2
        self.SWP_PTE_MARKER = dev + self.SWP_DEVICE_NUM

        T = self.softleaf_type_enum
        for member in T:
            setattr(self, member.name, member)
        special = {
            self.SWP_HWPOISON: T["SOFTLEAF_HWPOISON"],
            self.SWP_MIGRATION_READ: T["SOFTLEAF_MIGRATION_READ"],
            self.SWP_MIGRATION_READ_EXCLUSIVE: T["SOFTLEAF_MIGRATION_READ_EXCLUSIVE"],
            self.SWP_MIGRATION_WRITE: T["SOFTLEAF_MIGRATION_WRITE"],
            self.SWP_DEVICE_WRITE: T["SOFTLEAF_DEVICE_PRIVATE_WRITE"],
            self.SWP_DEVICE_READ: T["SOFTLEAF_DEVICE_PRIVATE_READ"],
            self.SWP_DEVICE_EXCLUSIVE: T["SOFTLEAF_DEVICE_EXCLUSIVE"],
            self.SWP_PTE_MARKER: T["SOFTLEAF_MARKER"],
        }
        special.update(self._extra_types())
        #: softleaf_type member for every type number; None above 31.
        self._type_of = tuple(
            (T["SOFTLEAF_SWAP"] if t < m else special[t]) if t < 32 else None for t in range(64)
        )
        mig_read = {self.SWP_MIGRATION_READ}
        mig_rx = {self.SWP_MIGRATION_READ_EXCLUSIVE}
        mig_write = {self.SWP_MIGRATION_WRITE}
        self._add_device_migration(mig_read, mig_rx, mig_write)
        self._mig_read = _table(mig_read)
        self._mig_read_exclusive = _table(mig_rx)
        self._mig_write = _table(mig_write)
        self._migration = _table(mig_read | mig_rx | mig_write)
        self._swap = _table(range(m))
        self._dev_private = _table({self.SWP_DEVICE_READ, self.SWP_DEVICE_WRITE})
        self._dev_private_write = _table({self.SWP_DEVICE_WRITE})
        self._dev_exclusive = _table({self.SWP_DEVICE_EXCLUSIVE})
        self._hwpoison = _table({self.SWP_HWPOISON})
        self._marker = _table({self.SWP_PTE_MARKER})
        self._has_pfn = _table(
            mig_read
            | mig_rx
            | mig_write
            | {
                self.SWP_DEVICE_READ,
                self.SWP_DEVICE_WRITE,
                self.SWP_DEVICE_EXCLUSIVE,
                self.SWP_HWPOISON,
            }
        )
        self._pmd_valid = _table(
            mig_read | mig_rx | mig_write | {self.SWP_DEVICE_READ, self.SWP_DEVICE_WRITE}
        )
        self._supports_ad = self.generic_max_swapfile_size() >= (1 << SWP_MIG_TOTAL_BITS)
        self._uses_offsets = cfg.has("c")

    # hooks for the series (b) subclass
    def _extra_types(self) -> dict[int, IntEnum]:
        return {}

    def _add_device_migration(
        self, mig_read: set[int], mig_rx: set[int], mig_write: set[int]
    ) -> None:
        pass

    if not TYPE_CHECKING:  # a type checker should flag unknown names, not accept them

        def __getattr__(self, name: str):
            if name in _SERIES_B_ONLY:
                raise AttributeError(
                    f"{name} exists only with seed series (b) (device-private migration entry "
                    "types SWP_MIGRATION_DEVICE_*); build the kernel with KConfig(features="
                    "{'b', ...}) or test config.has('b') before using it"
                )
            raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def __repr__(self) -> str:
        return (
            f"<SwapLayout MAX_SWAPFILES={self.MAX_SWAPFILES} series_b={self.series_b} "
            f"types {self.MAX_SWAPFILES}..31 special>"
        )

    # --- swp_entry_t (swapops.h) ---------------------------------------------------------
    @staticmethod
    def swp_entry(type: int, offset: int) -> int:
        """Pack (type, offset) into an arch-independent swp_entry_t.

        Kernel: include/linux/swapops.h swp_entry. The offset is masked to
        SWP_OFFSET_MASK as in C. Raises ValueError for a type outside 0..31
        (C would build an entry no decoder accepts).
        """
        if type >> MAX_SWAPFILES_SHIFT or type < 0:
            raise ValueError(f"swp_entry: type {type} is not a 5-bit swap type (0..31)")
        return (type << SWP_TYPE_SHIFT) | (offset & SWP_OFFSET_MASK)

    @staticmethod
    def swp_type(entry: int) -> int:
        return entry >> SWP_TYPE_SHIFT

    @staticmethod
    def swp_offset(entry: int) -> int:
        return entry & SWP_OFFSET_MASK

    def swp_offset_pfn(self, entry: int) -> int:
        """The PFN bits of a PFN-carrying entry's offset (drops the A/D bits).

        Kernel: swapops.h swp_offset_pfn (VM_BUG_ON if the entry has no PFN,
        here a warning through the `warn` hook).
        """
        if self.warn is not None and not self._has_pfn[entry >> SWP_TYPE_SHIFT]:
            self.warn(f"swp_offset_pfn: entry {entry:#x} does not carry a PFN")
        return entry & SWP_PFN_MASK

    def non_swap_entry(self, entry: int) -> bool:
        return (entry >> SWP_TYPE_SHIFT) >= self.MAX_SWAPFILES

    @staticmethod
    def is_swap_pte(pte: int) -> bool:
        """Neither none nor present: the PTE holds a software leaf."""
        return bool(pte & ~_PAGE_KNL_ERRATUM_MASK) and not pte & (_PAGE_PRESENT | _PAGE_PROTNONE)

    # --- arch format ------------------------------------------------------------------------
    arch_swp_entry = staticmethod(arch_swp_entry)
    arch_swp_type = staticmethod(arch_swp_type)
    arch_swp_offset = staticmethod(arch_swp_offset)

    def generic_max_swapfile_size(self) -> int:
        """Largest swap offset + 1 that survives an entry -> PTE -> entry trip.

        Kernel: mm/swapfile.c generic_max_swapfile_size (2**50 on x86-64).
        """
        return self.swp_offset(self.pte_to_swp_entry(self.swp_entry_to_pte(SWP_OFFSET_MASK))) + 1

    # --- PTE / PMD <-> entry ---------------------------------------------------------------
    @staticmethod
    def pte_to_swp_entry(pte: int) -> int:
        """The swp_entry_t a non-present PTE encodes.

        Kernel: swapops.h pte_to_swp_entry (pte_swp_clear_flags, then the
        arch decode): the swap exclusive, soft-dirty and uffd-wp bits are not
        part of the entry and are dropped.
        """
        pte &= _KEEP_PTE
        return ((pte >> _TYPE_POS) << SWP_TYPE_SHIFT) | (
            ((~pte << SWP_TYPE_BITS) & U64) >> SWP_OFFSET_SHIFT
        )

    @staticmethod
    def swp_entry_to_pte(entry: int) -> int:
        """The non-present PTE word for an entry; no soft bits are set (callers
        add them with pte_swp_mksoft_dirty & co.).

        Kernel: swapops.h swp_entry_to_pte.
        """
        return ((((~(entry & SWP_OFFSET_MASK)) << SWP_OFFSET_SHIFT) & U64) >> SWP_TYPE_BITS) | (
            (entry >> SWP_TYPE_SHIFT) << _TYPE_POS
        )

    @staticmethod
    def pmd_to_swp_entry(pmd: int) -> int:
        """The entry a non-present PMD encodes; swap soft-dirty and uffd-wp dropped.

        Kernel: swapops.h pmd_to_swp_entry (inlined into softleaf_from_pmd in
        newer trees). Unlike a PTE, a PMD has no swap-exclusive bit.
        """
        pmd &= _KEEP_PMD
        return ((pmd >> _TYPE_POS) << SWP_TYPE_SHIFT) | (
            ((~pmd << SWP_TYPE_BITS) & U64) >> SWP_OFFSET_SHIFT
        )

    swp_entry_to_pmd = swp_entry_to_pte

    # --- constructors (swapops.h) ----------------------------------------------------------
    def make_readable_migration_entry(self, offset: int) -> int:
        return self.swp_entry(self.SWP_MIGRATION_READ, offset)

    def make_readable_exclusive_migration_entry(self, offset: int) -> int:
        return self.swp_entry(self.SWP_MIGRATION_READ_EXCLUSIVE, offset)

    def make_writable_migration_entry(self, offset: int) -> int:
        return self.swp_entry(self.SWP_MIGRATION_WRITE, offset)

    def migration_entry_supports_ad(self) -> bool:
        """Whether migration entries carry the A/D bits (True on x86-64).

        Kernel: swapops.h migration_entry_supports_ad, i.e. the boot-time
        swap_migration_ad_supported of mm/swapfile.c.
        """
        return self._supports_ad

    def make_migration_entry_young(self, entry: int) -> int:
        if self._supports_ad:
            return entry | SWP_MIG_YOUNG
        return entry

    def make_migration_entry_dirty(self, entry: int) -> int:
        if self._supports_ad:
            return entry | SWP_MIG_DIRTY
        return entry

    def make_readable_device_private_entry(self, offset: int) -> int:
        return self.swp_entry(self.SWP_DEVICE_READ, offset)

    def make_writable_device_private_entry(self, offset: int) -> int:
        return self.swp_entry(self.SWP_DEVICE_WRITE, offset)

    def make_device_exclusive_entry(self, offset: int) -> int:
        return self.swp_entry(self.SWP_DEVICE_EXCLUSIVE, offset)

    def make_hwpoison_entry(self, pfn: int) -> int:
        """An SWP_HWPOISON entry for `pfn`.

        Kernel: swapops.h make_hwpoison_entry. Differences from kernel: takes
        the PFN; the kernel takes the locked struct page (and BUG_ONs if it
        is unlocked), a check its caller must make here.
        """
        return self.swp_entry(self.SWP_HWPOISON, pfn)

    def make_pte_marker_entry(self, marker: int) -> int:
        return self.swp_entry(self.SWP_PTE_MARKER, marker)

    def make_pte_marker(self, marker: int) -> int:
        """The PTE word of a marker entry (Kernel: swapops.h make_pte_marker)."""
        return self.swp_entry_to_pte(self.make_pte_marker_entry(marker))

    def make_poisoned_swp_entry(self) -> int:
        return self.make_pte_marker_entry(PTE_MARKER_POISONED)

    def make_guard_swp_entry(self) -> int:
        return self.make_pte_marker_entry(PTE_MARKER_GUARD)

    # --- softleaf (leafops.h) --------------------------------------------------------------
    @staticmethod
    def softleaf_mk_none() -> int:
        return 0

    @staticmethod
    def softleaf_from_pte(pte: int) -> int:
        """The leaf entry of a PTE, or none (0) for a present or empty PTE.

        Kernel: include/linux/leafops.h softleaf_from_pte.
        """
        if pte & (_PAGE_PRESENT | _PAGE_PROTNONE) or not pte & ~_PAGE_KNL_ERRATUM_MASK:
            return 0
        pte &= _KEEP_PTE
        return ((pte >> _TYPE_POS) << SWP_TYPE_SHIFT) | (
            ((~pte << SWP_TYPE_BITS) & U64) >> SWP_OFFSET_SHIFT
        )

    softleaf_to_pte = swp_entry_to_pte

    @staticmethod
    def softleaf_from_pmd(pmd: int) -> int:
        """The leaf entry of a PMD, or none for a present (PRESENT, PROTNONE or
        PSE set) or empty PMD.

        Kernel: include/linux/leafops.h softleaf_from_pmd.
        """
        if pmd & (_PAGE_PRESENT | _PAGE_PROTNONE | _PAGE_PSE) or not pmd & ~_PAGE_KNL_ERRATUM_MASK:
            return 0
        pmd &= _KEEP_PMD
        return ((pmd >> _TYPE_POS) << SWP_TYPE_SHIFT) | (
            ((~pmd << SWP_TYPE_BITS) & U64) >> SWP_OFFSET_SHIFT
        )

    softleaf_to_pmd = swp_entry_to_pte

    @staticmethod
    def softleaf_is_none(entry: int) -> bool:
        return entry == 0

    def softleaf_type(self, entry: int) -> IntEnum:
        """Classify an entry; returns a member of ``self.softleaf_type_enum``.

        Kernel: include/linux/leafops.h softleaf_type. Differences from
        kernel: a word whose type is above 31 (no swp_entry() makes one) is a
        ValueError; the kernel would VM_WARN_ON_ONCE and return SOFTLEAF_NONE.
        """
        if entry == 0:
            return self.SOFTLEAF_NONE
        t = entry >> SWP_TYPE_SHIFT
        r = self._type_of[t] if 0 <= t < 64 else None
        if r is None:
            raise ValueError(
                f"softleaf_type: {entry:#x} is not a swp_entry_t (type {t} > 31); "
                "entries come from swp_entry()/pte_to_swp_entry()"
            )
        return r

    def softleaf_is_swap(self, entry: int) -> bool:
        return entry != 0 and self._swap[entry >> SWP_TYPE_SHIFT]

    def softleaf_is_migration(self, entry: int) -> bool:
        return self._migration[entry >> SWP_TYPE_SHIFT]

    def softleaf_is_migration_write(self, entry: int) -> bool:
        return self._mig_write[entry >> SWP_TYPE_SHIFT]

    def softleaf_is_migration_read(self, entry: int) -> bool:
        return self._mig_read[entry >> SWP_TYPE_SHIFT]

    def softleaf_is_migration_read_exclusive(self, entry: int) -> bool:
        return self._mig_read_exclusive[entry >> SWP_TYPE_SHIFT]

    def softleaf_is_device_private(self, entry: int) -> bool:
        return self._dev_private[entry >> SWP_TYPE_SHIFT]

    def softleaf_is_device_private_write(self, entry: int) -> bool:
        return self._dev_private_write[entry >> SWP_TYPE_SHIFT]

    def softleaf_is_device_exclusive(self, entry: int) -> bool:
        return self._dev_exclusive[entry >> SWP_TYPE_SHIFT]

    def softleaf_is_hwpoison(self, entry: int) -> bool:
        return self._hwpoison[entry >> SWP_TYPE_SHIFT]

    def softleaf_is_marker(self, entry: int) -> bool:
        return self._marker[entry >> SWP_TYPE_SHIFT]

    def softleaf_to_marker(self, entry: int) -> int:
        if self.warn is not None and not self._marker[entry >> SWP_TYPE_SHIFT]:
            self.warn(f"softleaf_to_marker: entry {entry:#x} is not a marker")
        return entry & PTE_MARKER_MASK

    def softleaf_has_pfn(self, entry: int) -> bool:
        """Migration (incl. series (b) device variants), device-private,
        device-exclusive and hwpoison entries carry a PFN (Kernel: leafops.h)."""
        return self._has_pfn[entry >> SWP_TYPE_SHIFT]

    def softleaf_to_pfn(self, entry: int) -> int:
        """The PFN field; with series (c), a device-private offset for the
        device-private and device-private migration types."""
        if self.warn is not None and not self._has_pfn[entry >> SWP_TYPE_SHIFT]:
            self.warn(f"softleaf_to_pfn: entry {entry:#x} has no PFN")
        return entry & SWP_PFN_MASK

    def softleaf_is_poison_marker(self, entry: int) -> bool:
        return self._marker[entry >> SWP_TYPE_SHIFT] and bool(entry & PTE_MARKER_POISONED)

    def softleaf_is_guard_marker(self, entry: int) -> bool:
        return self._marker[entry >> SWP_TYPE_SHIFT] and bool(entry & PTE_MARKER_GUARD)

    def softleaf_is_uffd_wp_marker(self, entry: int) -> bool:
        return self._marker[entry >> SWP_TYPE_SHIFT] and bool(entry & PTE_MARKER_UFFD_WP)

    def softleaf_is_migration_young(self, entry: int) -> bool:
        if self.warn is not None and not self._migration[entry >> SWP_TYPE_SHIFT]:
            self.warn(f"softleaf_is_migration_young: {entry:#x} is not a migration entry")
        return self._supports_ad and bool(entry & SWP_MIG_YOUNG)

    def softleaf_is_migration_dirty(self, entry: int) -> bool:
        if self.warn is not None and not self._migration[entry >> SWP_TYPE_SHIFT]:
            self.warn(f"softleaf_is_migration_dirty: {entry:#x} is not a migration entry")
        return self._supports_ad and bool(entry & SWP_MIG_DIRTY)

    def pte_is_marker(self, pte: int) -> bool:
        return self._marker[self.softleaf_from_pte(pte) >> SWP_TYPE_SHIFT]

    def pte_is_uffd_wp_marker(self, pte: int) -> bool:
        return self.softleaf_is_uffd_wp_marker(self.softleaf_from_pte(pte))

    def pte_is_uffd_marker(self, pte: int) -> bool:
        """A uffd-wp or a poison marker: the markers userfaultfd handles."""
        e = self.softleaf_from_pte(pte)
        return self._marker[e >> SWP_TYPE_SHIFT] and bool(
            e & (PTE_MARKER_UFFD_WP | PTE_MARKER_POISONED)
        )

    def pmd_is_device_private_entry(self, pmd: int) -> bool:
        return self._dev_private[self.softleaf_from_pmd(pmd) >> SWP_TYPE_SHIFT]

    def pmd_is_migration_entry(self, pmd: int) -> bool:
        return self._migration[self.softleaf_from_pmd(pmd) >> SWP_TYPE_SHIFT]

    def softleaf_is_valid_pmd_entry(self, entry: int) -> bool:
        """Only device-private and migration leaves may sit in a PMD."""
        return self._pmd_valid[entry >> SWP_TYPE_SHIFT]

    def pmd_is_valid_softleaf(self, pmd: int) -> bool:
        return self._pmd_valid[self.softleaf_from_pmd(pmd) >> SWP_TYPE_SHIFT]

    # --- pre-softleaf predicates (swapops.h before leafops.h) -----------------------------
    def is_migration_entry(self, entry: int) -> bool:
        """= softleaf_is_migration."""
        return self._migration[entry >> SWP_TYPE_SHIFT]

    def is_writable_migration_entry(self, entry: int) -> bool:
        """= softleaf_is_migration_write."""
        return self._mig_write[entry >> SWP_TYPE_SHIFT]

    def is_readable_migration_entry(self, entry: int) -> bool:
        """= softleaf_is_migration_read."""
        return self._mig_read[entry >> SWP_TYPE_SHIFT]

    def is_readable_exclusive_migration_entry(self, entry: int) -> bool:
        """= softleaf_is_migration_read_exclusive."""
        return self._mig_read_exclusive[entry >> SWP_TYPE_SHIFT]

    def is_device_private_entry(self, entry: int) -> bool:
        """= softleaf_is_device_private."""
        return self._dev_private[entry >> SWP_TYPE_SHIFT]

    def is_writable_device_private_entry(self, entry: int) -> bool:
        """= softleaf_is_device_private_write."""
        return self._dev_private_write[entry >> SWP_TYPE_SHIFT]

    def is_device_exclusive_entry(self, entry: int) -> bool:
        """= softleaf_is_device_exclusive."""
        return self._dev_exclusive[entry >> SWP_TYPE_SHIFT]

    def is_hwpoison_entry(self, entry: int) -> bool:
        """= softleaf_is_hwpoison."""
        return self._hwpoison[entry >> SWP_TYPE_SHIFT]

    def is_pte_marker_entry(self, entry: int) -> bool:
        """= softleaf_is_marker."""
        return self._marker[entry >> SWP_TYPE_SHIFT]

    def is_pfn_swap_entry(self, entry: int) -> bool:
        """= softleaf_has_pfn (hwpoison included, as since v6.x)."""
        return self._has_pfn[entry >> SWP_TYPE_SHIFT]

    # --- array forms (public API for bulk passes) -----------------------------------------
    # ``swp.<predicate>_array(entries)`` is the element-wise scalar predicate:
    # one lookup of ``entry >> SWP_TYPE_SHIFT`` in the same type table the
    # scalar form indexes (converted to a NumPy bool array once per layout).
    def _array_table(self, name: str) -> BoolArray:
        tables = self._array_tables
        t = tables.get(name)
        if t is None:
            t = tables[name] = np.array(getattr(self, name), dtype=bool)
        return t

    def _lookup_in(self, name: str, entries: ArrayLike) -> BoolArray:
        types = (words_array(entries) >> _A_TYPE_SHIFT).astype(np.intp)
        return self._array_table(name)[types]

    def softleaf_type_array(self, entries: ArrayLike) -> I64Array:
        """Element-wise `softleaf_type`, as the enum values (np.int64).

        Raises ValueError where the scalar form does (a type above 31).
        """
        tables = self._array_tables
        codes = tables.get("_type_of")
        if codes is None:
            codes = tables["_type_of"] = np.array(
                [-1 if t is None else int(t) for t in self._type_of], dtype=np.int64
            )
        e = words_array(entries)
        out = codes[(e >> _A_TYPE_SHIFT).astype(np.intp)]
        out[e == _A_ZERO] = int(self.SOFTLEAF_NONE)
        if (out < 0).any():
            raise ValueError("softleaf_type_array: a word is not a swp_entry_t (type > 31)")
        return out

    def non_swap_entry_array(self, entries: ArrayLike) -> BoolArray:
        return swp_type_array(entries) >= self.MAX_SWAPFILES

    def softleaf_is_swap_array(self, entries: ArrayLike) -> BoolArray:
        e = words_array(entries)
        return np.logical_and(e.astype(np.bool_), self._lookup_in("_swap", e))

    def softleaf_is_migration_array(self, entries: ArrayLike) -> BoolArray:
        return self._lookup_in("_migration", entries)

    def softleaf_is_migration_write_array(self, entries: ArrayLike) -> BoolArray:
        return self._lookup_in("_mig_write", entries)

    def softleaf_is_migration_read_array(self, entries: ArrayLike) -> BoolArray:
        return self._lookup_in("_mig_read", entries)

    def softleaf_is_migration_read_exclusive_array(self, entries: ArrayLike) -> BoolArray:
        return self._lookup_in("_mig_read_exclusive", entries)

    def softleaf_is_migration_device_private_array(self, entries: ArrayLike) -> BoolArray:
        """Series (b)'s device-private migration types; all False without (b),
        where no such type exists (the scalar form exists only with (b))."""
        return np.zeros(np.shape(entries), dtype=bool)

    def softleaf_is_device_private_array(self, entries: ArrayLike) -> BoolArray:
        return self._lookup_in("_dev_private", entries)

    def softleaf_is_device_private_write_array(self, entries: ArrayLike) -> BoolArray:
        return self._lookup_in("_dev_private_write", entries)

    def softleaf_is_device_exclusive_array(self, entries: ArrayLike) -> BoolArray:
        return self._lookup_in("_dev_exclusive", entries)

    def softleaf_is_hwpoison_array(self, entries: ArrayLike) -> BoolArray:
        return self._lookup_in("_hwpoison", entries)

    def softleaf_is_marker_array(self, entries: ArrayLike) -> BoolArray:
        return self._lookup_in("_marker", entries)

    def softleaf_has_pfn_array(self, entries: ArrayLike) -> BoolArray:
        return self._lookup_in("_has_pfn", entries)

    def softleaf_is_valid_pmd_entry_array(self, entries: ArrayLike) -> BoolArray:
        return self._lookup_in("_pmd_valid", entries)

    def softleaf_to_pfn_array(self, entries: ArrayLike) -> I64Array:
        """Element-wise `softleaf_to_pfn` (np.int64); warns once if any entry
        has no PFN and a `warn` hook is set."""
        e = words_array(entries)
        if self.warn is not None and not self.softleaf_has_pfn_array(e).all():
            self.warn("softleaf_to_pfn_array: an entry has no PFN")
        return (e & _A_PFN_MASK).astype(np.int64)

    def swp_offset_pfn_array(self, entries: ArrayLike) -> I64Array:
        """Element-wise `swp_offset_pfn` (np.int64)."""
        e = words_array(entries)
        if self.warn is not None and not self.softleaf_has_pfn_array(e).all():
            self.warn("swp_offset_pfn_array: an entry does not carry a PFN")
        return (e & _A_PFN_MASK).astype(np.int64)

    def softleaf_to_marker_array(self, entries: ArrayLike) -> U64Array:
        e = words_array(entries)
        if self.warn is not None and not self.softleaf_is_marker_array(e).all():
            self.warn("softleaf_to_marker_array: an entry is not a marker")
        return e & _A_MARKER_MASK

    def softleaf_is_migration_young_array(self, entries: ArrayLike) -> BoolArray:
        e = words_array(entries)
        if self.warn is not None and not self.softleaf_is_migration_array(e).all():
            self.warn("softleaf_is_migration_young_array: an entry is not a migration entry")
        if not self._supports_ad:
            return np.zeros(e.shape, dtype=bool)
        return _has(e, _A_MIG_YOUNG)

    def softleaf_is_migration_dirty_array(self, entries: ArrayLike) -> BoolArray:
        e = words_array(entries)
        if self.warn is not None and not self.softleaf_is_migration_array(e).all():
            self.warn("softleaf_is_migration_dirty_array: an entry is not a migration entry")
        if not self._supports_ad:
            return np.zeros(e.shape, dtype=bool)
        return _has(e, _A_MIG_DIRTY)

    def make_migration_entry_young_array(self, entries: ArrayLike) -> U64Array:
        e = words_array(entries)
        return e | _A_MIG_YOUNG if self._supports_ad else e.copy()

    def make_migration_entry_dirty_array(self, entries: ArrayLike) -> U64Array:
        e = words_array(entries)
        return e | _A_MIG_DIRTY if self._supports_ad else e.copy()

    swp_entry_array = staticmethod(swp_entry_array)
    swp_type_array = staticmethod(swp_type_array)
    swp_offset_array = staticmethod(swp_offset_array)
    pte_to_swp_entry_array = staticmethod(pte_to_swp_entry_array)
    pmd_to_swp_entry_array = staticmethod(pmd_to_swp_entry_array)
    swp_entry_to_pte_array = staticmethod(swp_entry_to_pte_array)
    swp_entry_to_pmd_array = staticmethod(swp_entry_to_pte_array)
    softleaf_to_pte_array = staticmethod(swp_entry_to_pte_array)
    softleaf_to_pmd_array = staticmethod(swp_entry_to_pte_array)
    is_swap_pte_array = staticmethod(is_swap_pte_array)
    softleaf_from_pte_array = staticmethod(softleaf_from_pte_array)
    softleaf_from_pmd_array = staticmethod(softleaf_from_pmd_array)
    softleaf_is_none_array = staticmethod(softleaf_is_none_array)

    # --- humans ----------------------------------------------------------------------------
    def describe_softleaf(self, entry: int) -> str:
        """'SOFTLEAF_DEVICE_PRIVATE_WRITE pfn=0x1234' and the like, for traces.

        Migration entries list young/dirty; markers list their bits; with
        series (c) the device-private kinds show ``offset=`` (no PFN exists);
        set reserved bits above a PFN are shown as ``resv=``.
        """
        try:
            t = self.softleaf_type(entry)
        except ValueError:
            return f"invalid swp_entry_t {entry:#x}"
        if t == self.SOFTLEAF_NONE:
            return t.name
        if t == self.SOFTLEAF_SWAP:
            return f"{t.name} type={self.swp_type(entry)} offset={self.swp_offset(entry):#x}"
        if t == self.SOFTLEAF_MARKER:
            bits = "|".join(n for b, n in _MARKER_NAMES if entry & b) or "0"
            return f"{t.name} {bits}"
        idx = entry & SWP_PFN_MASK
        label = "offset" if self._uses_offsets and self._is_device_kind(entry) else "pfn"
        out = f"{t.name} {label}={idx:#x}"
        rest = self.swp_offset(entry) & ~SWP_PFN_MASK
        if self._migration[entry >> SWP_TYPE_SHIFT] and self._supports_ad:
            if entry & SWP_MIG_YOUNG:
                out += " young"
            if entry & SWP_MIG_DIRTY:
                out += " dirty"
            rest &= ~(SWP_MIG_YOUNG | SWP_MIG_DIRTY)
        if rest:
            out += f" resv={rest:#x}"
        return out

    def _is_device_kind(self, entry: int) -> bool:
        return self._dev_private[entry >> SWP_TYPE_SHIFT]


class SwapLayoutSeriesB(SwapLayout):
    """SwapLayout with series (b): SWP_DEVICE_NUM 6, MAX_SWAPFILES 21 and the
    SWP_MIGRATION_DEVICE_READ/_READ_EXCLUSIVE/_WRITE types (28, 29, 30) that
    mark migration entries naming device-private pages.

    The generic softleaf_is_migration / _read / _read_exclusive / _write
    predicates (and softleaf_has_pfn) also match the device variants, as in
    the series' leafops.h patch; softleaf_is_migration_device_private*() tell
    them apart.
    """

    series_b = True
    softleaf_type_enum = softleaf_type_series_b
    SWP_DEVICE_NUM = 6
    SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ: IntEnum
    SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ_EXCLUSIVE: IntEnum
    SOFTLEAF_MIGRATION_DEVICE_PRIVATE_WRITE: IntEnum

    def __init__(self, cfg: KConfig, warn: Callable[[str], None] | None = None) -> None:
        super().__init__(cfg, warn)
        self._mig_dev = _table(
            {
                self.SWP_MIGRATION_DEVICE_READ,
                self.SWP_MIGRATION_DEVICE_READ_EXCLUSIVE,
                self.SWP_MIGRATION_DEVICE_WRITE,
            }
        )
        self._mig_dev_read = _table({self.SWP_MIGRATION_DEVICE_READ})
        self._mig_dev_read_exclusive = _table({self.SWP_MIGRATION_DEVICE_READ_EXCLUSIVE})
        self._mig_dev_write = _table({self.SWP_MIGRATION_DEVICE_WRITE})

    def _extra_types(self) -> dict[int, IntEnum]:
        dev = self.SWP_DEVICE_WRITE
        self.SWP_MIGRATION_DEVICE_READ = dev + 3
        self.SWP_MIGRATION_DEVICE_READ_EXCLUSIVE = dev + 4
        self.SWP_MIGRATION_DEVICE_WRITE = dev + 5
        T = self.softleaf_type_enum
        return {
            dev + 3: T["SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ"],
            dev + 4: T["SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ_EXCLUSIVE"],
            dev + 5: T["SOFTLEAF_MIGRATION_DEVICE_PRIVATE_WRITE"],
        }

    def _add_device_migration(
        self, mig_read: set[int], mig_rx: set[int], mig_write: set[int]
    ) -> None:
        mig_read.add(self.SWP_MIGRATION_DEVICE_READ)
        mig_rx.add(self.SWP_MIGRATION_DEVICE_READ_EXCLUSIVE)
        mig_write.add(self.SWP_MIGRATION_DEVICE_WRITE)

    def __repr__(self) -> str:
        return super().__repr__().replace("<SwapLayout", "<SwapLayoutSeriesB", 1)

    def make_readable_migration_device_private_entry(self, offset: int) -> int:
        return self.swp_entry(self.SWP_MIGRATION_DEVICE_READ, offset)

    def make_readable_exclusive_migration_device_private_entry(self, offset: int) -> int:
        return self.swp_entry(self.SWP_MIGRATION_DEVICE_READ_EXCLUSIVE, offset)

    def make_writable_migration_device_private_entry(self, offset: int) -> int:
        return self.swp_entry(self.SWP_MIGRATION_DEVICE_WRITE, offset)

    def softleaf_is_migration_device_private(self, entry: int) -> bool:
        return self._mig_dev[entry >> SWP_TYPE_SHIFT]

    def softleaf_is_migration_device_private_read(self, entry: int) -> bool:
        return self._mig_dev_read[entry >> SWP_TYPE_SHIFT]

    def softleaf_is_migration_device_private_read_exclusive(self, entry: int) -> bool:
        return self._mig_dev_read_exclusive[entry >> SWP_TYPE_SHIFT]

    def softleaf_is_migration_device_private_write(self, entry: int) -> bool:
        return self._mig_dev_write[entry >> SWP_TYPE_SHIFT]

    def _is_device_kind(self, entry: int) -> bool:
        t = entry >> SWP_TYPE_SHIFT
        return self._dev_private[t] or self._mig_dev[t]

    def softleaf_is_migration_device_private_array(self, entries: ArrayLike) -> BoolArray:
        return self._lookup_in("_mig_dev", entries)

    def softleaf_is_migration_device_private_read_array(self, entries: ArrayLike) -> BoolArray:
        return self._lookup_in("_mig_dev_read", entries)

    def softleaf_is_migration_device_private_read_exclusive_array(
        self, entries: ArrayLike
    ) -> BoolArray:
        return self._lookup_in("_mig_dev_read_exclusive", entries)

    def softleaf_is_migration_device_private_write_array(self, entries: ArrayLike) -> BoolArray:
        return self._lookup_in("_mig_dev_write", entries)


class SwapLayout612(SwapLayout):
    """SwapLayout of Linux 6.12 (the ``--kernel 6.12`` profile): SWP_DEVICE_NUM 4.

    Models: include/linux/swap.h and include/linux/swapops.h of Linux 6.12,
    where a device-exclusive entry still records whether the PTE it replaced
    was writable: SWP_DEVICE_EXCLUSIVE_WRITE and SWP_DEVICE_EXCLUSIVE_READ
    follow SWP_DEVICE_WRITE and SWP_DEVICE_READ. MAX_SWAPFILES is 23, so every
    special type moves down by one against the pin:

    - SWP_HWPOISON 23; SWP_MIGRATION_READ, _READ_EXCLUSIVE, _WRITE 24-26
    - SWP_DEVICE_WRITE 27, SWP_DEVICE_READ 28 (pagemap shows a device-private
      write entry as ``s27``)
    - SWP_DEVICE_EXCLUSIVE_WRITE 29, SWP_DEVICE_EXCLUSIVE_READ 30
    - SWP_PTE_MARKER 31

    Both exclusive types classify as SOFTLEAF_DEVICE_EXCLUSIVE (6.12 has no
    leafops.h; the softleaf names are the model's vocabulary), so every
    ``softleaf_is_device_exclusive`` caller sees both;
    ``is_writable_device_exclusive_entry`` tells them apart.
    ``SWP_DEVICE_EXCLUSIVE`` and ``make_device_exclusive_entry`` name the write
    variant (the pin's single type has no read variant).
    """

    SWP_DEVICE_NUM = 4

    def __init__(self, cfg: KConfig, warn: Callable[[str], None] | None = None) -> None:
        super().__init__(cfg, warn)
        both = {self.SWP_DEVICE_EXCLUSIVE_WRITE, self.SWP_DEVICE_EXCLUSIVE_READ}
        self._dev_exclusive = _table(both)
        self._dev_exclusive_write = _table({self.SWP_DEVICE_EXCLUSIVE_WRITE})
        self._has_pfn = _table(
            {t for t in range(64) if self._has_pfn[t]} | {self.SWP_DEVICE_EXCLUSIVE_READ}
        )

    def _extra_types(self) -> dict[int, IntEnum]:
        dev = self.SWP_DEVICE_WRITE
        self.SWP_DEVICE_EXCLUSIVE_WRITE = dev + 2
        self.SWP_DEVICE_EXCLUSIVE_READ = dev + 3
        return {dev + 3: self.softleaf_type_enum["SOFTLEAF_DEVICE_EXCLUSIVE"]}

    def __repr__(self) -> str:
        return super().__repr__().replace("<SwapLayout", "<SwapLayout612", 1)

    def make_writable_device_exclusive_entry(self, offset: int) -> int:
        """Kernel (6.12): include/linux/swapops.h make_writable_device_exclusive_entry."""
        return self.swp_entry(self.SWP_DEVICE_EXCLUSIVE_WRITE, offset)

    def make_readable_device_exclusive_entry(self, offset: int) -> int:
        """Kernel (6.12): include/linux/swapops.h make_readable_device_exclusive_entry."""
        return self.swp_entry(self.SWP_DEVICE_EXCLUSIVE_READ, offset)

    def is_writable_device_exclusive_entry(self, entry: int) -> bool:
        """Kernel (6.12): include/linux/swapops.h is_writable_device_exclusive_entry."""
        return self._dev_exclusive_write[entry >> SWP_TYPE_SHIFT]

    def is_writable_device_exclusive_entry_array(self, entries: ArrayLike) -> BoolArray:
        return self._lookup_in("_dev_exclusive_write", entries)


class SwapLayoutSeriesB612(SwapLayoutSeriesB, SwapLayout612):
    """Series (b) on the 6.12 profile: both sets of extra device types.

    Not a kernel that exists: (b) was posted against mainline. Rebased on
    6.12's swap.h, its three SWP_MIGRATION_DEVICE_* types follow the four
    device types, so SWP_DEVICE_NUM is 7 and MAX_SWAPFILES 20: HWPOISON 20,
    migration 21-23, device-private write/read 24/25, device-exclusive
    write/read 26/27, device-private migration read/read-exclusive/write
    28-30, marker 31. Everything else behaves as in its two parents.
    """

    SWP_DEVICE_NUM = 7

    def _extra_types(self) -> dict[int, IntEnum]:
        dev = self.SWP_DEVICE_WRITE
        T = self.softleaf_type_enum
        self.SWP_DEVICE_EXCLUSIVE_WRITE = dev + 2
        self.SWP_DEVICE_EXCLUSIVE_READ = dev + 3
        self.SWP_MIGRATION_DEVICE_READ = dev + 4
        self.SWP_MIGRATION_DEVICE_READ_EXCLUSIVE = dev + 5
        self.SWP_MIGRATION_DEVICE_WRITE = dev + 6
        return {
            dev + 3: T["SOFTLEAF_DEVICE_EXCLUSIVE"],
            dev + 4: T["SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ"],
            dev + 5: T["SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ_EXCLUSIVE"],
            dev + 6: T["SOFTLEAF_MIGRATION_DEVICE_PRIVATE_WRITE"],
        }

    def __repr__(self) -> str:
        return SwapLayout.__repr__(self).replace("<SwapLayout", "<SwapLayoutSeriesB612", 1)

"""Software leaf (swap-format) entries: swp_entry_t, the softleaf API, x86-64 encoding.

Models: include/linux/swap.h (type numbering, MAX_SWAPFILES),
include/linux/swapops.h (swp_entry, make_*_entry, is_*_entry, A/D bits of
migration entries, PTE markers), include/linux/leafops.h (softleaf_*) and
arch/x86/include/asm/pgtable_64.h (__swp_entry/__swp_type/__swp_offset,
the inverted-offset x86-64 swap PTE) @ torvalds/linux 0eaed89c18ae. Series
(b) (SWP_MIGRATION_DEVICE_READ/_READ_EXCLUSIVE/_WRITE,
SOFTLEAF_MIGRATION_DEVICE_PRIVATE_*) from shared/seeds/001.

A swp_entry_t / softleaf_t is a plain int: (type << SWP_TYPE_SHIFT) | offset.
The type numbers depend on the configuration (series (b) adds three device
types and so shrinks MAX_SWAPFILES), so the API is a `SwapLayout` built
from a KConfig; its methods keep the kernel's names and argument order.
"""

from __future__ import annotations

from enum import IntEnum

from hmmsim.include.pgtable import (
    _PAGE_BIT_PROTNONE,
    _PAGE_SWP_EXCLUSIVE,
    _PAGE_SWP_SOFT_DIRTY,
    _PAGE_SWP_UFFD_WP,
)
from hmmsim.kconfig import MAX_PHYSMEM_BITS, PAGE_SHIFT

U64 = (1 << 64) - 1
MAX_SWAPFILES_SHIFT = 5
#: BITS_PER_XA_VALUE on 64-bit
BITS_PER_XA_VALUE = 63
SWP_TYPE_SHIFT = BITS_PER_XA_VALUE - MAX_SWAPFILES_SHIFT
SWP_OFFSET_MASK = (1 << SWP_TYPE_SHIFT) - 1
SWP_PFN_BITS = MAX_PHYSMEM_BITS - PAGE_SHIFT
SWP_PFN_MASK = (1 << SWP_PFN_BITS) - 1
SWP_MIG_YOUNG_BIT = SWP_PFN_BITS
SWP_MIG_DIRTY_BIT = SWP_PFN_BITS + 1
SWP_MIG_TOTAL_BITS = SWP_PFN_BITS + 2
SWP_MIG_YOUNG = 1 << SWP_MIG_YOUNG_BIT
SWP_MIG_DIRTY = 1 << SWP_MIG_DIRTY_BIT

# x86-64 swap PTE layout (pgtable_64.h)
SWP_TYPE_BITS = 5
SWP_OFFSET_FIRST_BIT = _PAGE_BIT_PROTNONE + 1
SWP_OFFSET_SHIFT = SWP_OFFSET_FIRST_BIT + SWP_TYPE_BITS

PTE_MARKER_UFFD_WP = 1 << 0
PTE_MARKER_POISONED = 1 << 1
PTE_MARKER_GUARD = 1 << 2
PTE_MARKER_MASK = (1 << 3) - 1

_SWP_SOFT_BITS = _PAGE_SWP_SOFT_DIRTY | _PAGE_SWP_UFFD_WP | _PAGE_SWP_EXCLUSIVE


def __swp_entry(type_: int, offset: int) -> int:
    """x86-64: type in the top 5 bits, offset stored inverted above PROTNONE."""
    inverted = ((~offset << SWP_OFFSET_SHIFT) & U64) >> SWP_TYPE_BITS
    return inverted | (type_ << (64 - SWP_TYPE_BITS))


def __swp_type(x: int) -> int:
    return x >> (64 - SWP_TYPE_BITS)


def __swp_offset(x: int) -> int:
    return ((~x << SWP_TYPE_BITS) & U64) >> SWP_OFFSET_SHIFT


arch_swp_entry, arch_swp_type, arch_swp_offset = __swp_entry, __swp_type, __swp_offset


class softleaf_type(IntEnum):
    """enum softleaf_type in declaration order; the last three are series (b)."""

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


T = softleaf_type
_MIGRATION = frozenset(
    {
        T.SOFTLEAF_MIGRATION_READ,
        T.SOFTLEAF_MIGRATION_READ_EXCLUSIVE,
        T.SOFTLEAF_MIGRATION_WRITE,
        T.SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ,
        T.SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ_EXCLUSIVE,
        T.SOFTLEAF_MIGRATION_DEVICE_PRIVATE_WRITE,
    }
)
_MIGRATION_DEVICE = frozenset(
    {
        T.SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ,
        T.SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ_EXCLUSIVE,
        T.SOFTLEAF_MIGRATION_DEVICE_PRIVATE_WRITE,
    }
)
_HAS_PFN = _MIGRATION | {
    T.SOFTLEAF_DEVICE_PRIVATE_READ,
    T.SOFTLEAF_DEVICE_PRIVATE_WRITE,
    T.SOFTLEAF_DEVICE_EXCLUSIVE,
    T.SOFTLEAF_HWPOISON,
}


class SwapLayout:
    """Swap-entry type numbers and the swapops/leafops API for one KConfig.

    Pinned tag (all options on): MAX_SWAPFILES 24, HWPOISON 24, MIGRATION
    READ/READ_EXCLUSIVE/WRITE 25/26/27, DEVICE WRITE/READ/EXCLUSIVE 28/29/30,
    PTE_MARKER 31. Series (b): SWP_DEVICE_NUM 6, MAX_SWAPFILES 21, ...,
    MIGRATION_DEVICE READ/READ_EXCLUSIVE/WRITE 28/29/30, PTE_MARKER 31.
    """

    SWP_TYPE_SHIFT = SWP_TYPE_SHIFT
    SWP_OFFSET_MASK = SWP_OFFSET_MASK
    SWP_PFN_BITS = SWP_PFN_BITS
    SWP_MIG_YOUNG = SWP_MIG_YOUNG
    SWP_MIG_DIRTY = SWP_MIG_DIRTY

    def __init__(self, cfg) -> None:
        self.series_b = cfg.has("b")
        self.SWP_DEVICE_NUM = 6 if self.series_b else 3
        self.SWP_MIGRATION_NUM = 3
        self.SWP_HWPOISON_NUM = 1
        self.SWP_PTE_MARKER_NUM = 1
        m = (
            (1 << MAX_SWAPFILES_SHIFT)
            - self.SWP_DEVICE_NUM
            - self.SWP_MIGRATION_NUM
            - self.SWP_HWPOISON_NUM
            - self.SWP_PTE_MARKER_NUM
        )
        self.MAX_SWAPFILES = m
        self.SWP_HWPOISON = m
        self.SWP_MIGRATION_READ = m + 1
        self.SWP_MIGRATION_READ_EXCLUSIVE = m + 2
        self.SWP_MIGRATION_WRITE = m + 3
        self.SWP_DEVICE_WRITE = m + 4
        self.SWP_DEVICE_READ = m + 5
        self.SWP_DEVICE_EXCLUSIVE = m + 6
        if self.series_b:
            self.SWP_MIGRATION_DEVICE_READ = m + 7
            self.SWP_MIGRATION_DEVICE_READ_EXCLUSIVE = m + 8
            self.SWP_MIGRATION_DEVICE_WRITE = m + 9
        self.SWP_PTE_MARKER = m + 4 + self.SWP_DEVICE_NUM
        table = {
            self.SWP_HWPOISON: T.SOFTLEAF_HWPOISON,
            self.SWP_MIGRATION_READ: T.SOFTLEAF_MIGRATION_READ,
            self.SWP_MIGRATION_READ_EXCLUSIVE: T.SOFTLEAF_MIGRATION_READ_EXCLUSIVE,
            self.SWP_MIGRATION_WRITE: T.SOFTLEAF_MIGRATION_WRITE,
            self.SWP_DEVICE_WRITE: T.SOFTLEAF_DEVICE_PRIVATE_WRITE,
            self.SWP_DEVICE_READ: T.SOFTLEAF_DEVICE_PRIVATE_READ,
            self.SWP_DEVICE_EXCLUSIVE: T.SOFTLEAF_DEVICE_EXCLUSIVE,
            self.SWP_PTE_MARKER: T.SOFTLEAF_MARKER,
        }
        if self.series_b:
            table[self.SWP_MIGRATION_DEVICE_READ] = T.SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ
            table[self.SWP_MIGRATION_DEVICE_READ_EXCLUSIVE] = (
                T.SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ_EXCLUSIVE
            )
            table[self.SWP_MIGRATION_DEVICE_WRITE] = T.SOFTLEAF_MIGRATION_DEVICE_PRIVATE_WRITE
        self._types = table

    def __getattr__(self, name: str):
        if "MIGRATION_DEVICE" in name or "migration_device" in name:
            raise AttributeError(
                f"{name} exists only with series (b) (SWP_MIGRATION_DEVICE_* entry types); "
                "enable it with KConfig(features={'b', ...})"
            )
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"<SwapLayout MAX_SWAPFILES={self.MAX_SWAPFILES} series_b={self.series_b}>"

    # --- swp_entry_t ------------------------------------------------------------------------
    @staticmethod
    def swp_entry(type_: int, offset: int) -> int:
        return (type_ << SWP_TYPE_SHIFT) | (offset & SWP_OFFSET_MASK)

    @staticmethod
    def swp_type(entry: int) -> int:
        return entry >> SWP_TYPE_SHIFT

    @staticmethod
    def swp_offset(entry: int) -> int:
        return entry & SWP_OFFSET_MASK

    @staticmethod
    def swp_offset_pfn(entry: int) -> int:
        return entry & SWP_PFN_MASK

    def non_swap_entry(self, entry: int) -> bool:
        return self.swp_type(entry) >= self.MAX_SWAPFILES

    # --- PTE/PMD <-> entry -----------------------------------------------------------------
    def pte_to_swp_entry(self, pte: int) -> int:
        arch = pte & ~_SWP_SOFT_BITS
        return self.swp_entry(arch_swp_type(arch), arch_swp_offset(arch))

    def swp_entry_to_pte(self, entry: int) -> int:
        return arch_swp_entry(self.swp_type(entry), self.swp_offset(entry))

    def pmd_to_swp_entry(self, pmd: int) -> int:
        arch = pmd & ~(_PAGE_SWP_SOFT_DIRTY | _PAGE_SWP_UFFD_WP)
        return self.swp_entry(arch_swp_type(arch), arch_swp_offset(arch))

    def swp_entry_to_pmd(self, entry: int) -> int:
        return arch_swp_entry(self.swp_type(entry), self.swp_offset(entry))

    # --- constructors ------------------------------------------------------------------------
    def make_readable_migration_entry(self, offset: int) -> int:
        return self.swp_entry(self.SWP_MIGRATION_READ, offset)

    def make_readable_exclusive_migration_entry(self, offset: int) -> int:
        return self.swp_entry(self.SWP_MIGRATION_READ_EXCLUSIVE, offset)

    def make_writable_migration_entry(self, offset: int) -> int:
        return self.swp_entry(self.SWP_MIGRATION_WRITE, offset)

    def make_readable_migration_device_private_entry(self, offset: int) -> int:
        return self.swp_entry(self.SWP_MIGRATION_DEVICE_READ, offset)

    def make_readable_exclusive_migration_device_private_entry(self, offset: int) -> int:
        return self.swp_entry(self.SWP_MIGRATION_DEVICE_READ_EXCLUSIVE, offset)

    def make_writable_migration_device_private_entry(self, offset: int) -> int:
        return self.swp_entry(self.SWP_MIGRATION_DEVICE_WRITE, offset)

    @staticmethod
    def migration_entry_supports_ad() -> bool:
        """x86-64 has hardware A bits and room above the PFN (36 <= 58)."""
        return SWP_MIG_TOTAL_BITS <= SWP_TYPE_SHIFT

    def make_migration_entry_young(self, entry: int) -> int:
        if self.migration_entry_supports_ad():
            return self.swp_entry(self.swp_type(entry), self.swp_offset(entry) | SWP_MIG_YOUNG)
        return entry

    def make_migration_entry_dirty(self, entry: int) -> int:
        if self.migration_entry_supports_ad():
            return self.swp_entry(self.swp_type(entry), self.swp_offset(entry) | SWP_MIG_DIRTY)
        return entry

    def make_readable_device_private_entry(self, offset: int) -> int:
        return self.swp_entry(self.SWP_DEVICE_READ, offset)

    def make_writable_device_private_entry(self, offset: int) -> int:
        return self.swp_entry(self.SWP_DEVICE_WRITE, offset)

    def make_device_exclusive_entry(self, offset: int) -> int:
        return self.swp_entry(self.SWP_DEVICE_EXCLUSIVE, offset)

    def make_hwpoison_entry(self, pfn: int) -> int:
        return self.swp_entry(self.SWP_HWPOISON, pfn)

    def make_pte_marker_entry(self, marker: int) -> int:
        return self.swp_entry(self.SWP_PTE_MARKER, marker)

    def make_pte_marker(self, marker: int) -> int:
        return self.swp_entry_to_pte(self.make_pte_marker_entry(marker))

    # --- softleaf (leafops.h) ----------------------------------------------------------------
    @staticmethod
    def softleaf_mk_none() -> int:
        return 0

    def softleaf_from_pte(self, pte: int) -> int:
        """0 (none) for a present or empty PTE, else its entry."""
        from hmmsim.include.pgtable import pte_none, pte_present

        if pte_present(pte) or pte_none(pte):
            return 0
        return self.pte_to_swp_entry(pte)

    def softleaf_to_pte(self, entry: int) -> int:
        return self.swp_entry_to_pte(entry)

    def softleaf_from_pmd(self, pmd: int) -> int:
        from hmmsim.include.pgtable import pmd_none, pmd_present

        if pmd_present(pmd) or pmd_none(pmd):
            return 0
        return self.pmd_to_swp_entry(pmd)

    @staticmethod
    def softleaf_is_none(entry: int) -> bool:
        return entry == 0

    def softleaf_type(self, entry: int) -> softleaf_type:
        """Classify an entry; an unknown type WARNs in the kernel (here: ValueError)."""
        if entry == 0:
            return T.SOFTLEAF_NONE
        t = entry >> SWP_TYPE_SHIFT
        if t < self.MAX_SWAPFILES:
            return T.SOFTLEAF_SWAP
        try:
            return self._types[t]
        except KeyError:
            raise ValueError(f"softleaf_type: unknown swap type {t} in entry {entry:#x}") from None

    def softleaf_is_swap(self, entry: int) -> bool:
        return entry != 0 and (entry >> SWP_TYPE_SHIFT) < self.MAX_SWAPFILES

    def _t(self, entry: int):
        return self._types.get(entry >> SWP_TYPE_SHIFT) if entry else None

    def softleaf_is_migration(self, entry: int) -> bool:
        return self._t(entry) in _MIGRATION

    def softleaf_is_migration_write(self, entry: int) -> bool:
        return self._t(entry) in (
            T.SOFTLEAF_MIGRATION_WRITE,
            T.SOFTLEAF_MIGRATION_DEVICE_PRIVATE_WRITE,
        )

    def softleaf_is_migration_read(self, entry: int) -> bool:
        return self._t(entry) in (
            T.SOFTLEAF_MIGRATION_READ,
            T.SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ,
        )

    def softleaf_is_migration_read_exclusive(self, entry: int) -> bool:
        return self._t(entry) in (
            T.SOFTLEAF_MIGRATION_READ_EXCLUSIVE,
            T.SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ_EXCLUSIVE,
        )

    def softleaf_is_migration_device_private(self, entry: int) -> bool:
        return self._t(entry) in _MIGRATION_DEVICE

    def softleaf_is_migration_device_private_read(self, entry: int) -> bool:
        return self._t(entry) == T.SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ

    def softleaf_is_migration_device_private_write(self, entry: int) -> bool:
        return self._t(entry) == T.SOFTLEAF_MIGRATION_DEVICE_PRIVATE_WRITE

    def softleaf_is_migration_device_private_read_exclusive(self, entry: int) -> bool:
        return self._t(entry) == T.SOFTLEAF_MIGRATION_DEVICE_PRIVATE_READ_EXCLUSIVE

    def softleaf_is_device_private(self, entry: int) -> bool:
        return self._t(entry) in (T.SOFTLEAF_DEVICE_PRIVATE_READ, T.SOFTLEAF_DEVICE_PRIVATE_WRITE)

    def softleaf_is_device_private_write(self, entry: int) -> bool:
        return self._t(entry) == T.SOFTLEAF_DEVICE_PRIVATE_WRITE

    def softleaf_is_device_exclusive(self, entry: int) -> bool:
        return self._t(entry) == T.SOFTLEAF_DEVICE_EXCLUSIVE

    def softleaf_is_hwpoison(self, entry: int) -> bool:
        return self._t(entry) == T.SOFTLEAF_HWPOISON

    def softleaf_is_marker(self, entry: int) -> bool:
        return self._t(entry) == T.SOFTLEAF_MARKER

    def softleaf_to_marker(self, entry: int) -> int:
        return self.swp_offset(entry) & PTE_MARKER_MASK

    def softleaf_has_pfn(self, entry: int) -> bool:
        return self._t(entry) in _HAS_PFN

    def softleaf_to_pfn(self, entry: int) -> int:
        """The PFN field (a device-private offset under series (c))."""
        return entry & SWP_PFN_MASK

    def softleaf_is_poison_marker(self, entry: int) -> bool:
        return self.softleaf_is_marker(entry) and bool(
            self.softleaf_to_marker(entry) & PTE_MARKER_POISONED
        )

    def softleaf_is_guard_marker(self, entry: int) -> bool:
        return self.softleaf_is_marker(entry) and bool(
            self.softleaf_to_marker(entry) & PTE_MARKER_GUARD
        )

    def softleaf_is_uffd_wp_marker(self, entry: int) -> bool:
        return self.softleaf_is_marker(entry) and bool(
            self.softleaf_to_marker(entry) & PTE_MARKER_UFFD_WP
        )

    def softleaf_is_migration_young(self, entry: int) -> bool:
        return self.migration_entry_supports_ad() and bool(self.swp_offset(entry) & SWP_MIG_YOUNG)

    def softleaf_is_migration_dirty(self, entry: int) -> bool:
        return self.migration_entry_supports_ad() and bool(self.swp_offset(entry) & SWP_MIG_DIRTY)

    def pte_is_marker(self, pte: int) -> bool:
        return self.softleaf_is_marker(self.softleaf_from_pte(pte))

    def pmd_is_device_private_entry(self, pmd: int) -> bool:
        return self.softleaf_is_device_private(self.softleaf_from_pmd(pmd))

    def pmd_is_migration_entry(self, pmd: int) -> bool:
        return self.softleaf_is_migration(self.softleaf_from_pmd(pmd))

    def pmd_is_valid_softleaf(self, pmd: int) -> bool:
        e = self.softleaf_from_pmd(pmd)
        return self.softleaf_is_device_private(e) or self.softleaf_is_migration(e)

    # --- legacy swapops predicates ---------------------------------------------------------
    def is_migration_entry(self, entry: int) -> bool:
        return self.softleaf_is_migration(entry)

    def is_writable_migration_entry(self, entry: int) -> bool:
        return self.softleaf_is_migration_write(entry)

    def is_readable_migration_entry(self, entry: int) -> bool:
        return self.softleaf_is_migration_read(entry)

    def is_readable_exclusive_migration_entry(self, entry: int) -> bool:
        return self.softleaf_is_migration_read_exclusive(entry)

    def is_device_private_entry(self, entry: int) -> bool:
        return self.softleaf_is_device_private(entry)

    def is_writable_device_private_entry(self, entry: int) -> bool:
        return self.softleaf_is_device_private_write(entry)

    def is_device_exclusive_entry(self, entry: int) -> bool:
        return self.softleaf_is_device_exclusive(entry)

    def is_hwpoison_entry(self, entry: int) -> bool:
        return self.softleaf_is_hwpoison(entry)

    def is_pte_marker_entry(self, entry: int) -> bool:
        return self.softleaf_is_marker(entry)

    def is_pfn_swap_entry(self, entry: int) -> bool:
        return self.softleaf_has_pfn(entry)

    # --- humans ------------------------------------------------------------------------
    def describe_softleaf(self, entry: int) -> str:
        try:
            t = self.softleaf_type(entry)
        except ValueError as e:
            return f"undecodable ({e})"
        if t == T.SOFTLEAF_MARKER:
            return f"{t.name} marker={self.softleaf_to_marker(entry):#x}"
        if t in _HAS_PFN:
            extra = ""
            if t in _MIGRATION:
                extra = "".join(
                    (
                        " young" if self.softleaf_is_migration_young(entry) else "",
                        " dirty" if self.softleaf_is_migration_dirty(entry) else "",
                    )
                )
            return f"{t.name} pfn={self.softleaf_to_pfn(entry):#x}{extra}"
        return f"{t.name} type={self.swp_type(entry)} offset={self.swp_offset(entry):#x}"

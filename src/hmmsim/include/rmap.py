"""The page_vma_mapped_walk flags and the series (c) page-walk PFN helpers.

Models: include/linux/rmap.h (PVMW_SYNC, PVMW_MIGRATION,
DEFINE_FOLIO_VMA_WALK) @ torvalds/linux 0eaed89c18ae, plus series (c)'s
marker of a device-private page walk ("mm/page_vma_mapped: Add flag to
page_vma_mapped_walk::flags to track device private pages", Niethe) in both
forms its thread went through:

- ``pvmw_form="flag"`` (v3 and later, the default): pvmw->pfn holds the plain
  PFN, or for a device-private folio its device-private offset, and
  PVMW_DEVICE_PRIVATE (bit 2 of pvmw->flags) says which of the two it is.
  page_vma_walk_flags() adds the flag, folio_page_vma_walk_pfn() picks the
  number, page_vma_walk_pfn_to_folio() reads them back.
- ``pvmw_form="pfn-bit"`` (v1 and v2): pvmw->pfn is the number shifted left by
  PVMW_PFN_SHIFT (1) with PVMW_PFN_DEVICE_PRIVATE in bit 0; every reader
  shifts it back (page_vma_walk_pfn, page_vma_walk_pfn_to_page). The shift
  loses bit BITS_PER_LONG-1 of the number (known-bugs 5: no modelled PFN or
  offset reaches it).

Without series (c) neither exists: device-private pages have PFNs of their
own in the physical address space, pvmw->pfn is folio_pfn() and nothing
tells the two kinds apart (mainline at the pin). With (c) a device-private
offset and a RAM PFN can be the same number; the marker is what keeps
check_pte()/check_pmd() from matching one for the other (the mutant
``pvmw_no_device_private_flag`` removes it, docs/known-bugs.md 19).

The helpers take the folio (or the walk) and read the kernel they belong to
from it; `KConfig.pvmw_form` picks the form.
"""

from __future__ import annotations

from typing import Any

from hmmsim.include.mm_types import KernelRef

#: struct page_vma_mapped_walk lives in hmmsim.mm.page_vma_mapped (above include/).
PvmwRef = Any

#: Serialize against a concurrent zap (pte_offset_map_lock instead of _nolock).
PVMW_SYNC = 1 << 0
#: Look for migration entries rather than present PTEs.
PVMW_MIGRATION = 1 << 1
#: Series (c) v3+: pvmw->pfn is a device-private offset.
PVMW_DEVICE_PRIVATE = 1 << 2

#: Series (c) v1/v2: bit 0 of pvmw->pfn marks a device-private offset ...
PVMW_PFN_DEVICE_PRIVATE = 1 << 0
#: ... and the number sits above it.
PVMW_PFN_SHIFT = 1

#: The sub-switch of series (c): which form of the marker the kernel uses.
PVMW_FORMS = ("flag", "pfn-bit")

_ULONG_MASK = (1 << 64) - 1


def _form(k: KernelRef) -> str | None:
    """ "flag", "pfn-bit", or None without series (c) (no marker at all)."""
    form: str = k.config.pvmw_form
    return form if k.config.has("c") else None


def pvmw_marks_device_private(k: KernelRef) -> bool:
    """True when the walk carries the device-private marker.

    Series (c) has it in both forms; the mutant pvmw_no_device_private_flag
    is series (c) with the marker removed: offsets travel in pvmw->pfn but
    nothing says they are offsets, and check_pte()/check_pmd() compare bare
    numbers.
    """
    return _form(k) is not None and "pvmw_no_device_private_flag" not in k.bugs


def page_vma_walk_pfn(k: KernelRef, pfn: int) -> int:
    """A plain PFN as pvmw->pfn: shifted in the v1/v2 form, as is otherwise.

    The shift is done in unsigned long: the top bit is lost (known-bugs 5).
    """
    bits: int = k.config.bits_per_long
    if _form(k) == "pfn-bit":
        return (pfn << PVMW_PFN_SHIFT) & ((1 << bits) - 1)
    return pfn


def pvmw_is_device_private(k: KernelRef, pvmw: PvmwRef) -> bool:
    """Whether pvmw->pfn is a device-private offset (the check_pte() side)."""
    form = _form(k)
    if form == "flag":
        return bool(pvmw.flags & PVMW_DEVICE_PRIVATE)
    if form == "pfn-bit":
        return bool(pvmw.pfn & PVMW_PFN_DEVICE_PRIVATE)
    return False


def pvmw_number(k: KernelRef, pvmw: PvmwRef) -> int:
    """The PFN (or offset) pvmw->pfn stands for: unshifted in the v1/v2 form."""
    pfn: int = pvmw.pfn
    if _form(k) == "pfn-bit":
        return pfn >> PVMW_PFN_SHIFT
    return pfn

"""Bulk forms of the slot loops of mm/hmm.py (not kernel code).

- `hmm_range_need_fault`: hmm_range_need_fault's OR of hmm_pte_need_fault
  over a span, in one pass (or None: decline);
- `hmm_pfns_set`: the per-slot stores of hmm_pfns_fill and hmm_vma_handle_pmd;
- `hmm_vma_handle_ptes`: hmm_vma_handle_pte over the leading run of common
  PTEs of a table (present, not PROT_NONE, the zero page or a normal RAM
  page, no fault needed, a PFN that fits below the flag bits).

Each declines (None or 0) unless Kernel.fastpath and a span of at least
MIN_RUN slots, and where hmm_pfns is neither a list nor a uint64 array.
Output words: (in & HMM_PFN_INOUT_FLAGS) | pfn | flags, as mm/hmm.py's _set.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

from hmmsim.include.hmm import HMM_NEED_FAULT, HMM_NEED_WRITE_FAULT
from hmmsim.include.pgtable import (
    U64,
    pte_pfn_array,
    pte_present,
    pte_present_array,
    pte_protnone,
    pte_protnone_array,
    pte_special_array,
    pte_write_array,
)
from hmmsim.kconfig import PAGE_SHIFT

#: shortest span worth a bulk pass (below it the per-entry loop is cheaper)
MIN_RUN = 8

U64Array: TypeAlias = NDArray[np.uint64]
#: mm/hmm.py's walk state (w.k, w.range, w.L): passed in, never imported here
Walk: TypeAlias = Any


def _slots(hp: Sized, i: int, n: int) -> U64Array | None:
    """hmm_pfns[i:i+n] as uint64, or None where the caller's array is not one
    the bulk stores can write back (a list of ints or a uint64 array)."""
    if len(hp) < i + n:
        return None
    if isinstance(hp, np.ndarray):
        view: U64Array = hp[i : i + n]
        return view if hp.dtype == np.uint64 else None
    if isinstance(hp, list):
        try:
            return np.array(hp[i : i + n], dtype=np.uint64)
        except (OverflowError, TypeError, ValueError):
            return None
    return None


def _store(hp: list[int] | U64Array, i: int, out: U64Array) -> None:
    hp[i : i + len(out)] = out.tolist() if isinstance(hp, list) else out


def _requests(r: Any, inp: U64Array) -> U64Array:
    """Each slot's request as hmm_pte_need_fault() sees it."""
    return (inp & np.uint64(r.pfn_flags_mask & U64)) | np.uint64(r.default_flags & U64)


def hmm_range_need_fault(w: Walk, i: int, npages: int, cpu_flags: int) -> int | None:
    """The OR of hmm_pte_need_fault over slots i..i+npages-1, or None (decline).

    The per-slot loop's early exit only skips slots that cannot add a bit.
    """
    if npages < MIN_RUN or not w.k.fastpath:
        return None
    inp = _slots(w.range.hmm_pfns, i, npages)
    if inp is None:
        return None
    L = w.L
    req = _requests(w.range, inp)
    fault = (req & np.uint64(L.HMM_PFN_REQ_FAULT)) != 0
    if not fault.any():
        return 0
    write = (req & np.uint64(L.HMM_PFN_REQ_WRITE)) != 0
    if not cpu_flags & L.HMM_PFN_WRITE and write[fault].any():
        return HMM_NEED_FAULT | HMM_NEED_WRITE_FAULT
    if not cpu_flags & L.HMM_PFN_VALID:
        return HMM_NEED_FAULT
    return 0


def hmm_pfns_set(w: Walk, i: int, n: int, pfn: int | None, flags: int) -> int:
    """Slots i..i+n-1 = (in & INOUT) | (pfn + j if pfn is not None) | flags.

    Returns n, or 0 (nothing written) where it does not apply, or where a
    PFN would not fit (the per-slot loop then writes the slots before the
    one that raises).
    """
    hp = w.range.hmm_pfns
    if n < MIN_RUN or not w.k.fastpath:
        return 0
    if pfn is not None and (pfn < 0 or (pfn + n - 1) & w.L.HMM_PFN_FLAGS):
        return 0
    inp = _slots(hp, i, n)
    if inp is None:
        return 0
    out = (inp & np.uint64(w.L.HMM_PFN_INOUT_FLAGS & U64)) | np.uint64(flags & U64)
    if pfn is not None:
        out |= np.arange(pfn, pfn + n, dtype=np.uint64)
    _store(hp, i, out)
    return n


def hmm_vma_handle_ptes(w: Walk, ptep: int, i: int, n: int) -> int:
    """hmm_vma_handle_pte for the leading run of common PTEs from ptep.

    Returns how many (slots i.. written), or 0 when that run is shorter than
    MIN_RUN. Common: present and not PROT_NONE, mapping the zero page or a
    RAM page through a non-special entry, needing no fault for the slot's
    request, with a PFN that fits below the flag bits; the word is then
    exactly the one hmm_vma_handle_pte stores. Common entries take no lock
    and change only their own slot.
    """
    k = w.k
    if n < MIN_RUN or not k.fastpath:
        return 0
    words = k.mem.ram.words
    table, col = ptep >> PAGE_SHIFT, (ptep >> 3) & 511
    first = int(words[table, col])
    if not pte_present(first) or pte_protnone(first):
        return 0  # a cheap refusal: the per-entry loop takes this entry
    r = w.range
    inp = _slots(r.hmm_pfns, i, n)
    if inp is None:
        return 0
    L = w.L
    ptes = words[table, col : col + n]
    pfn = pte_pfn_array(ptes)
    rw = pte_write_array(ptes)
    ram = k.mem.ram.pages
    ok = pte_present_array(ptes) & ~pte_protnone_array(ptes)
    ok &= (~pte_special_array(ptes) & (pfn < ram.nr)) | (pfn == k.mem.zero_pfn)
    if (r.default_flags | r.pfn_flags_mask) & L.HMM_PFN_REQ_FAULT:
        req = _requests(r, inp)
        ok &= ~(
            ((req & np.uint64(L.HMM_PFN_REQ_FAULT)) != 0)
            & ((req & np.uint64(L.HMM_PFN_REQ_WRITE)) != 0)
            & ~rw
        )
    # every PFN of a common entry is below max(RAM, zero page): when that
    # fits below the lowest flag bit, all do
    flags_mask = L.HMM_PFN_FLAGS & U64
    if max(ram.nr - 1, k.mem.zero_pfn) >= (flags_mask & -flags_mask):
        ok &= (pfn.astype(np.uint64) & np.uint64(flags_mask)) == 0
    run = n if ok.all() else int(np.argmin(ok))
    if run < MIN_RUN:
        return 0
    flags = np.where(rw, np.uint64(L.HMM_PFN_VALID | L.HMM_PFN_WRITE), np.uint64(L.HMM_PFN_VALID))
    out = (inp & np.uint64(L.HMM_PFN_INOUT_FLAGS & U64)) | pfn.astype(np.uint64) | flags
    _store(w.range.hmm_pfns, i, out[:run])
    return run

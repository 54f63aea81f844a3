"""struct page / struct folio metadata: flag bits and the per-PFN arrays.

Models: include/linux/mm_types.h, include/linux/page-flags.h and
include/linux/page_ref.h @ torvalds/linux 0eaed89c18ae.

The kernel keeps one 64-byte `struct page` per PFN in the vmemmap. We keep the
same fields as NumPy columns (struct-of-arrays) over a contiguous PFN range,
`PageArrays`, so per-page metadata costs bytes, never a Python object; a
`Page` is a short-lived view (range, index) that carries the kernel-named
accessors. Flag bit numbers are ours; the flag names are the kernel's.

Differences from kernel: no memcg, no LRU lists (PG_lru is a plain flag), no
page_type union beyond the few types the model needs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hmmsim.bug import KernelBug
from hmmsim.kconfig import DEVICE_PRIVATE_BASE

#: Types of objects defined above include/, which include/ must not import:
#: the Kernel (hmmsim.kernel), an anon_vma (hmmsim.mm.rmap), an open file or
#: inode, the owning Process (hmmsim.userspace), a notifier subscription.
KernelRef = Any
AnonVmaRef = Any
FileRef = Any
OwnerRef = Any

# enum pageflags (names as in page-flags.h; bit numbers are the model's own)
PG_locked = 1 << 0
PG_referenced = 1 << 1
PG_uptodate = 1 << 2
PG_dirty = 1 << 3
PG_lru = 1 << 4
PG_head = 1 << 5
PG_swapbacked = 1 << 6
PG_reserved = 1 << 7
#: PG_anon_exclusive shares PG_owner_2 in the kernel; anon pages only.
PG_anon_exclusive = 1 << 8
PG_large_rmappable = 1 << 9
PG_hugetlb = 1 << 10
#: page_type: free in the buddy allocator.
PGTY_buddy = 1 << 11
#: page_type: a page-table page.
PGTY_table = 1 << 12
#: page_type: the shared zero page / huge zero page.
PG_zero = 1 << 13
#: the folio is queued on the deferred-split list (partially mapped THP).
PG_partially_mapped = 1 << 14
PG_waiters = 1 << 15

PAGEFLAG_NAMES = {
    v: k[3:] if k.startswith("PG_") else k
    for k, v in dict(globals()).items()
    if k.startswith(("PG_", "PGTY_")) and isinstance(v, int)
}

#: Low bit of folio->mapping marks an anon_vma (PAGE_MAPPING_ANON).
FOLIO_MAPPING_ANON = 0x1

#: The columns of struct page we model, with their dtypes (bytes per page).
PAGE_FIELDS: tuple[tuple[str, type], ...] = (
    ("_refcount", np.int32),  # page_ref_count(); 0 = free
    ("_mapcount", np.int32),  # PTE mappings of this page, -1 based
    ("flags", np.uint32),  # PG_* bits above
    ("order", np.uint8),  # folio order, valid on the head
    ("head_off", np.uint32),  # tail: distance to head page; 0 = not a tail
    ("mapping", np.uint32),  # object id (| FOLIO_MAPPING_ANON); 0 = NULL
    ("index", np.int64),  # page->index: file pgoff or anon linear index
    ("pgmap", np.uint16),  # ZONE_DEVICE dev_pagemap id; 0 = none
    ("zone_device_data", np.int64),  # driver's private word
    ("_entire_mapcount", np.int32),  # head: PMD mappings, -1 based
    ("_large_mapcount", np.int32),  # head: all mappings of a large folio, -1 based
)

#: Bytes of metadata per modelled page (the kernel's struct page is 64).
STRUCT_PAGE_BYTES = sum(np.dtype(t).itemsize for _, t in PAGE_FIELDS)


class PageArrays:
    """struct page columns for PFNs [base, base + nr).

    Invariant: a free page has _refcount 0, _mapcount -1 and PGTY_buddy set.
    Invariant: head_off > 0 exactly for tail pages of a large folio.
    """

    __slots__ = ("base", "nr") + tuple(name for name, _ in PAGE_FIELDS)

    # the columns, one per PAGE_FIELDS entry (declared for readers and the type checker)
    base: int
    nr: int
    _refcount: np.ndarray
    _mapcount: np.ndarray
    flags: np.ndarray
    order: np.ndarray
    head_off: np.ndarray
    mapping: np.ndarray
    index: np.ndarray
    pgmap: np.ndarray
    zone_device_data: np.ndarray
    _entire_mapcount: np.ndarray
    _large_mapcount: np.ndarray

    def __init__(self, base: int, nr: int) -> None:
        self.base = base
        self.nr = nr
        for name, dtype in PAGE_FIELDS:
            setattr(self, name, np.zeros(nr, dtype=dtype))
        self._mapcount[:] = -1
        self._entire_mapcount[:] = -1
        self._large_mapcount[:] = -1

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name, _ in PAGE_FIELDS)

    def __repr__(self) -> str:
        return f"<PageArrays pfn {self.base:#x}+{self.nr:#x}>"


class Page:
    """A view of one `struct page` (and, on a head page, its `struct folio`).

    Views are created on demand and compare equal when they name the same
    page; they hold no state of their own. `Folio` is the same class: in the
    kernel a folio pointer is a head-page pointer.
    """

    __slots__ = ("k", "a", "i")

    def __init__(self, k: KernelRef, a: PageArrays, i: int) -> None:
        self.k = k
        self.a = a
        self.i = i

    @property
    def pfn(self) -> int:
        """page_to_pfn(): the physical frame number (see page_to_pfn for (c))."""
        return self.a.base + self.i

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Page) and other.a is self.a and other.i == self.i

    def __hash__(self) -> int:
        return hash((id(self.a), self.i))

    def __repr__(self) -> str:
        a, i = self.a, self.i
        fl = int(a.flags[i])
        names = "|".join(n for b, n in PAGEFLAG_NAMES.items() if fl & b) or "0"
        extra = f" order={int(a.order[i])}" if fl & PG_head else ""
        if a.head_off[i]:
            extra = f" tail-of={self.pfn - int(a.head_off[i]):#x}"
        return (
            f"<page pfn={self.pfn:#x} ref={int(a._refcount[i])} "
            f"map={int(a._mapcount[i]) + 1} flags={names}{extra}>"
        )

    # --- flags -----------------------------------------------------------------
    def test(self, bit: int) -> bool:
        return bool(self.a.flags[self.i] & bit)

    def set(self, bit: int) -> None:
        self.a.flags[self.i] |= bit

    def clear(self, bit: int) -> None:
        self.a.flags[self.i] &= ~np.uint32(bit)


Folio = Page


# --- compound pages / folios (page-flags.h, mm.h) -------------------------------
def page_folio(page: Page) -> Page:
    off = int(page.a.head_off[page.i])
    return Page(page.k, page.a, page.i - off) if off else page


def compound_head(page: Page) -> Page:
    return page_folio(page)


def PageTail(page: Page) -> bool:
    return bool(page.a.head_off[page.i])


def folio_test_large(folio: Page) -> bool:
    return bool(folio.a.flags[folio.i] & PG_head)


def folio_order(folio: Page) -> int:
    return int(folio.a.order[folio.i]) if folio.a.flags[folio.i] & PG_head else 0


def folio_nr_pages(folio: Page) -> int:
    return 1 << folio_order(folio)


def folio_page(folio: Page, n: int) -> Page:
    return Page(folio.k, folio.a, folio.i + n)


def folio_pfn(folio: Page) -> int:
    """The folio's PFN (mm.h folio_pfn).

    Series (c) adds VM_WARN_ON(folio_is_device_private(folio)): such a folio
    has no PFN. The model warns and then, as the C goes on to page_to_pfn(),
    stops with the guard of page_to_pfn() (hmmsim.mm.memremap.page_to_pfn,
    same message), where the kernel would go on with a number computed from
    a struct page outside the vmemmap.
    """
    if folio.a.base >= DEVICE_PRIVATE_BASE:  # a series (c) device-private page
        folio.k.warn(f"folio_pfn: device-private folio {folio!r} has no PFN")
        raise KernelBug(
            f"page_to_pfn() on device-private page (offset "
            f"{folio.pfn - DEVICE_PRIVATE_BASE:#x}): with series (c) it has no PFN; "
            "use device_private_page_to_offset()"
        )
    return folio.pfn


def folio_test_anon(folio: Page) -> bool:
    return bool(int(folio.a.mapping[folio.i]) & FOLIO_MAPPING_ANON)


def folio_test_locked(folio: Page) -> bool:
    return bool(folio.a.flags[folio.i] & PG_locked)


def folio_test_dirty(folio: Page) -> bool:
    return bool(folio.a.flags[folio.i] & PG_dirty)


def folio_mark_dirty(folio: Page) -> None:
    folio.a.flags[folio.i] |= PG_dirty


def folio_test_hugetlb(folio: Page) -> bool:
    return bool(folio.a.flags[folio.i] & PG_hugetlb)


def PageAnonExclusive(page: Page) -> bool:
    return bool(page.a.flags[page.i] & PG_anon_exclusive)


def SetPageAnonExclusive(page: Page) -> None:
    page.a.flags[page.i] |= PG_anon_exclusive


def ClearPageAnonExclusive(page: Page) -> None:
    page.a.flags[page.i] &= ~np.uint32(PG_anon_exclusive)


def is_zero_folio(folio: Page) -> bool:
    return bool(folio.a.flags[folio.i] & PG_zero)


# --- reference counts (page_ref.h) -------------------------------------------------
def folio_ref_count(folio: Page) -> int:
    return int(folio.a._refcount[folio.i])


page_ref_count = folio_ref_count


def folio_ref_add(folio: Page, nr: int) -> None:
    folio.a._refcount[folio.i] += nr


def folio_get(folio: Page) -> None:
    """Take a reference; a reference on a free page is a kernel bug."""
    a, i = folio.a, folio.i
    if a._refcount[i] <= 0:
        raise KernelBug(f"folio_get: {folio!r} has no references")
    a._refcount[i] += 1


def folio_try_get(folio: Page) -> bool:
    a, i = folio.a, folio.i
    if a._refcount[i] <= 0:
        return False
    a._refcount[i] += 1
    return True


def folio_put(folio: Page) -> None:
    """Drop a reference; the last one frees the folio (or hands it to its pgmap)."""
    folio_put_refs(folio, 1)


def folio_put_refs(folio: Page, refs: int) -> None:
    a, i = folio.a, folio.i
    a._refcount[i] -= refs
    left = int(a._refcount[i])
    if left == 0:
        folio.k.mem.free_folio(folio)
    elif left < 0:
        raise KernelBug(f"folio_put: refcount underflow on {folio!r}")


# --- mapcounts (mm.h, rmap.h) ---------------------------------------------------------
def folio_mapcount(folio: Page) -> int:
    """Total mappings of the folio: PTEs of every subpage plus PMD maps."""
    if folio.a.flags[folio.i] & PG_head:
        return int(folio.a._large_mapcount[folio.i]) + 1
    return int(folio.a._mapcount[folio.i]) + 1


def folio_entire_mapcount(folio: Page) -> int:
    return int(folio.a._entire_mapcount[folio.i]) + 1


def page_mapcount(page: Page) -> int:
    """Mappings of this one page: its PTE maps plus PMD maps of its folio."""
    n = int(page.a._mapcount[page.i]) + 1
    off = int(page.a.head_off[page.i])
    head = page.i - off
    if page.a.flags[head] & PG_head:
        n += int(page.a._entire_mapcount[head]) + 1
    return n


def folio_mapped(folio: Page) -> bool:
    return folio_mapcount(folio) > 0


# --- address spaces ----------------------------------------------------------------------
#: enum rss counters (mm_types.h)
MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES = range(4)


class vm_area_struct:
    """One VMA: [vm_start, vm_end) of an mm with one set of flags.

    Fields: vm_start, vm_end (page aligned, exclusive end); vm_mm; vm_flags
    (VM_*); vm_page_prot (x86 pgprot bits from vm_get_page_prot); vm_pgoff
    (file pgoff of vm_start, or vm_start >> PAGE_SHIFT for anon vmas, kept
    across mremap moves so anon rmap stays linear); vm_file (an inode or
    None); anon_vma (its own anon_vma, created on first anon fault);
    anon_vma_chain (every anon_vma its pages may belong to, own one included).

    Invariant: vm_start < vm_end, both page aligned; vmas of an mm never overlap.
    """

    __slots__ = (
        "vm_start",
        "vm_end",
        "vm_mm",
        "vm_flags",
        "vm_page_prot",
        "vm_pgoff",
        "vm_file",
        "anon_vma",
        "anon_vma_chain",
    )

    def __init__(
        self, mm: mm_struct, start: int, end: int, flags: int, pgoff: int, file: FileRef = None
    ) -> None:
        from hmmsim.include.pgtable import vm_get_page_prot

        self.vm_start = start
        self.vm_end = end
        self.vm_mm = mm
        self.vm_flags = flags
        self.vm_page_prot = vm_get_page_prot(flags)
        self.vm_pgoff = pgoff
        self.vm_file = file
        self.anon_vma: AnonVmaRef = None
        self.anon_vma_chain: list[AnonVmaRef] = []

    def __repr__(self) -> str:
        from hmmsim.include.mm import vm_flags_str

        kind = "anon" if self.vm_file is None else repr(self.vm_file)
        return (
            f"<vma {self.vm_start:#x}-{self.vm_end:#x} {vm_flags_str(self.vm_flags)} "
            f"pgoff={self.vm_pgoff:#x} {kind}>"
        )


def vma_is_anonymous(vma: vm_area_struct) -> bool:
    return vma.vm_file is None


def vma_pages(vma: vm_area_struct) -> int:
    from hmmsim.kconfig import PAGE_SHIFT

    return (vma.vm_end - vma.vm_start) >> PAGE_SHIFT


def linear_page_index(vma: vm_area_struct, address: int) -> int:
    from hmmsim.kconfig import PAGE_SHIFT

    return ((address - vma.vm_start) >> PAGE_SHIFT) + vma.vm_pgoff


def is_cow_mapping(flags: int) -> bool:
    from hmmsim.include.mm import VM_MAYWRITE, VM_SHARED

    return (flags & (VM_SHARED | VM_MAYWRITE)) == VM_MAYWRITE


class mm_struct:
    """A process address space: its page tables, vmas and locks.

    Fields: pgd (PFN of the top-level table); vmas (sorted by vm_start; the
    kernel keeps a maple tree); mmap_lock; page_table_lock (guards upper
    levels and huge PMDs in the model); rss_stat[MM_*]; notifier_subscriptions
    (interval notifiers); owner (the Process); mmap_base (where top-down
    get_unmapped_area starts); hugetlb_usage (hugetlb pages mapped);
    invalidating (invalidate_range_start calls not yet ended); dead (after
    exit_mmap).

    Invariant: vmas sorted and disjoint; every PTE/PMD maps only inside a vma.
    """

    __slots__ = (
        "k",
        "pgd",
        "vmas",
        "mmap_lock",
        "page_table_lock",
        "rss_stat",
        "notifier_subscriptions",
        "owner",
        "mmap_base",
        "hugetlb_usage",
        "invalidating",
        "dead",
    )

    def __init__(self, k: KernelRef, pgd_pfn: int, owner: OwnerRef = None) -> None:
        from hmmsim.locking import Lock, RWSem

        self.k = k
        self.pgd = pgd_pfn
        self.vmas: list[vm_area_struct] = []
        self.mmap_lock = RWSem(k, "mmap_lock")
        self.page_table_lock = Lock(k, "page_table_lock")
        self.rss_stat = [0, 0, 0, 0]
        self.notifier_subscriptions: list[Any] = []
        self.owner = owner
        self.mmap_base = 0x7F00_0000_0000
        self.hugetlb_usage = 0
        self.invalidating = 0
        self.dead = False

    def __repr__(self) -> str:
        owner = getattr(self.owner, "pid", None)
        return f"<mm pid={owner} vmas={len(self.vmas)} pgd={self.pgd:#x}>"


class vm_fault:
    """struct vm_fault: what a fault handler is told (memory.c)."""

    __slots__ = (
        "vma",
        "address",
        "real_address",
        "flags",
        "pgoff",
        "pmd",
        "pte",
        "orig_pte",
        "orig_pmd",
        "page",
        "ptl",
        "prealloc_pte",
    )

    def __init__(self, vma: vm_area_struct, address: int, flags: int) -> None:
        from hmmsim.kconfig import PAGE_MASK

        self.vma = vma
        self.real_address = address
        self.address = address & PAGE_MASK
        self.flags = flags
        self.pgoff = linear_page_index(vma, self.address)
        self.pmd = None
        self.pte = None
        self.orig_pte = 0
        self.orig_pmd = 0
        self.page = None
        self.ptl = None
        self.prealloc_pte = None  # a PTE table's PFN, allocated ahead of the PTE lock

    def __repr__(self) -> str:
        return f"<vm_fault {self.address:#x} flags={self.flags:#x}>"

"""Kernel buffers sized by a caller: the size limits of vmalloc, kvmalloc, kmalloc.

Models: mm/vmalloc.c (__vmalloc_node_range_noprof: a zero size WARNs and
fails; a size above totalram_pages() fails with warn_alloc's message),
mm/util.c (__kvmalloc_node_noprof: the kmalloc attempt is quiet for
sizes above a page; a size above INT_MAX then WARNs and fails) and
include/linux/slab.h (KMALLOC_MAX_SIZE; kmalloc above it fails, with the
page allocator's order > MAX_PAGE_ORDER WARN) @ torvalds/linux 0eaed89c18ae.

A driver calls these before it allocates a host buffer sized by a user
value, so an absurd size is the kernel's NULL (the caller's -ENOMEM), never
a host MemoryError. The bytes of a buffer are host memory; `vmalloc_pages`
/ `vfree_pages` take and give back its pages in modelled RAM, so the page
allocator sees vmalloc's allocations and frees in the kernel's order
(issue 13): order-0 GFP_KERNEL (unmovable) pages from the bulk allocator in
chunks of at most 100 (vm_area_alloc_pages), after a nested vmalloc of the
pages array when it is larger than a page (__vmalloc_area_node), freed by
vfree in index order and then the nested array's. Not modelled: the
kernel page tables of the vmalloc area (pte_alloc_kernel), kmalloc'd pages
arrays and the vm_struct / vmap_area (slab), huge vmap mappings, reclaim
and the OOM killer; fail_page_alloc never fails these (its default
ignore-gfp-wait skips GFP_KERNEL), so Kernel.fault_inject does not apply.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from hmmsim.kconfig import PAGE_SHIFT, PAGE_SIZE

#: include/linux/mmzone.h MAX_PAGE_ORDER on x86-64 (the model's buddy stops lower)
MAX_PAGE_ORDER = 10
#: include/linux/slab.h KMALLOC_MAX_SIZE (SLUB): the largest kmalloc
KMALLOC_MAX_SIZE = 1 << (MAX_PAGE_ORDER + PAGE_SHIFT)
INT_MAX = (1 << 31) - 1


def totalram_pages(k) -> int:
    """include/linux/mm.h totalram_pages(): the modelled RAM, in pages."""
    return k.mem.ram.pages.nr


def vmalloc_size_ok(k, size: int) -> bool:
    """Would __vmalloc_node_range_noprof accept `size` bytes?"""
    if size == 0:
        k.warn("__vmalloc_node_range_noprof: zero size")
        return False
    return (size >> PAGE_SHIFT) <= totalram_pages(k)


def kmalloc_size_ok(k, size: int, nowarn: bool = False) -> bool:
    """Would kmalloc accept `size` bytes? Above KMALLOC_MAX_SIZE the page
    allocator WARNs (order > MAX_PAGE_ORDER) unless __GFP_NOWARN."""
    if size <= KMALLOC_MAX_SIZE:
        return True
    if not nowarn:
        k.warn_once("kmalloc_order", "__alloc_pages: order > MAX_PAGE_ORDER")
    return False


def kvmalloc_size_ok(k, size: int, nowarn: bool = False) -> bool:
    """Would kvmalloc accept `size` bytes (kmalloc, else vmalloc)?"""
    if size <= KMALLOC_MAX_SIZE:
        return True  # the kmalloc attempt; the model's host allocation cannot fail
    if size > INT_MAX:
        if not nowarn:
            k.warn_once("kvmalloc_int_max", "__kvmalloc_node_noprof: size > INT_MAX")
        return False
    return vmalloc_size_ok(k, size)


def vmalloc(k, size: int) -> np.ndarray | None:
    """vmalloc(size): an uninitialised byte buffer, or None (NULL)."""
    if not vmalloc_size_ok(k, size):
        return None
    return np.empty(size, dtype=np.uint8)


def kvmalloc(k, size: int, nowarn: bool = False) -> np.ndarray | None:
    """kvmalloc(size, GFP_KERNEL): an uninitialised byte buffer, or None."""
    if not kvmalloc_size_ok(k, size, nowarn):
        return None
    return np.empty(size, dtype=np.uint8)


def kmalloc(k, size: int, nowarn: bool = False) -> np.ndarray | None:
    """kmalloc(size, GFP_KERNEL): an uninitialised byte buffer, or None."""
    if not kmalloc_size_ok(k, size, nowarn):
        return None
    return np.empty(size, dtype=np.uint8)


#: mm/vmalloc.c vm_area_alloc_pages: pages asked of the bulk allocator at once.
VMALLOC_BULK_CHUNK = 100


class VmPages:
    """The pages of one vmalloc area (vm_struct->pages, nr_pages) and, when
    that array was itself vmalloc()ed, its area. `counted`: its pages hold
    their reference in Kernel.driver_refs (the invariant checker's view)."""

    __slots__ = ("pfns", "array", "counted")

    def __init__(self, pfns: list[int], array: VmPages | None, counted: bool = True) -> None:
        self.pfns = pfns
        self.array = array
        self.counted = counted


def vm_area_alloc_pages(k, nr_pages: int) -> list[int]:
    """mm/vmalloc.c vm_area_alloc_pages for order 0 and GFP_KERNEL: bulk
    requests of up to VMALLOC_BULK_CHUNK pages until one comes back short,
    then single alloc_pages until one fails. The PFNs, in index order."""
    from hmmsim.mm.page_alloc import GFP_KERNEL, gfp_migratetype, order_to_pindex

    mem = k.mem
    out: list[int] = []
    # While the list and the buddy hold every page of the whole chunks, each
    # chunk comes back whole and starts where the last one stopped (same
    # pops, same refills at the same pcp state), so together they are one
    # bulk request. A final one-page chunk is alloc_pages: the loop's.
    whole = nr_pages - (nr_pages % VMALLOC_BULK_CHUNK == 1)
    pcp = mem.pcp
    lst = pcp.lists[order_to_pindex(0, gfp_migratetype(GFP_KERNEL))]
    short = False
    if whole > VMALLOC_BULK_CHUNK and len(lst) + mem.nr_free - pcp.count >= whole:
        out = mem.alloc_pages_bulk(whole, GFP_KERNEL, inject=False)
        short = len(out) != whole  # only with a test hook that fails allocations
    while not short and len(out) < nr_pages:
        req = min(VMALLOC_BULK_CHUNK, nr_pages - len(out))
        got = mem.alloc_pages_bulk(req, GFP_KERNEL, inject=False)
        out += got
        if len(got) != req:
            break
    while len(out) < nr_pages:
        page = mem.alloc_pages(0, GFP_KERNEL, inject=False)
        if page is None:
            break
        out.append(page.pfn)
    return out


def vmalloc_pages(k, size: int, counted: bool = True) -> VmPages | None:
    """The page allocations of __vmalloc_area_node for `size` bytes (the
    caller checked the size): the nested pages array first when it needs
    more than a page, then the area's pages. None when a page could not be
    had; what was taken has been freed again (vfree of the partial area).

    counted=False leaves the pages out of Kernel.driver_refs, for a caller
    that frees the area again before anything can look (no scheduler point,
    Kernel.fastpath) or counts it with vm_count_pages first (issue 16: a
    1 GiB bounce is 262144 Counter updates)."""
    nr_pages = (size + PAGE_SIZE - 1) >> PAGE_SHIFT
    array = None
    if nr_pages * 8 > PAGE_SIZE:
        array = vmalloc_pages(k, nr_pages * 8, counted)
        if array is None:
            return None
    vm = VmPages(vm_area_alloc_pages(k, nr_pages), array, counted)
    if counted:
        k.driver_refs.update(vm.pfns)  # the area's reference, for the invariant checker
    if len(vm.pfns) != nr_pages:
        vfree_pages(k, vm)
        return None
    return vm


def vm_count_pages(k, vm: VmPages | None) -> None:
    """Put the pages of an area made with counted=False (and of its pages
    array) into Kernel.driver_refs, as vmalloc_pages would have."""
    while vm is not None:
        if not vm.counted:
            k.driver_refs.update(vm.pfns)
            vm.counted = True
        vm = vm.array


def vfree_pages(k, vm: VmPages | None) -> None:
    """mm/vmalloc.c vfree: __free_page of each page in index order, then
    kvfree of the pages array (vfree when it was vmalloc()ed)."""
    if vm is None:
        return
    if vm.pfns and not vm.counted:
        pfns = np.asarray(vm.pfns, dtype=np.int64)
        k.mem.ram.pages._refcount[pfns] = 0  # put_page_testzero: the only reference
        k.mem.free_folios_order0(pfns)
    elif vm.pfns:
        refs = k.driver_refs
        if len(set(vm.pfns)) == len(vm.pfns) and set(map(refs.get, vm.pfns)) == {1}:
            deque(map(refs.pop, vm.pfns), maxlen=0)  # each count 1 -> 0: the loop below
        else:
            for pfn in vm.pfns:
                refs[pfn] -= 1
                if not refs[pfn]:
                    del refs[pfn]
        pfns = np.asarray(vm.pfns, dtype=np.int64)
        k.mem.ram.pages._refcount[pfns] = 0  # put_page_testzero: the only reference
        k.mem.free_folios_order0(pfns)
    vm.pfns = []
    vfree_pages(k, vm.array)

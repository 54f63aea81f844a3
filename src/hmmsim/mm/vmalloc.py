"""Kernel buffers sized by a caller: the size limits of vmalloc, kvmalloc, kmalloc.

Models: mm/vmalloc.c (__vmalloc_node_range_noprof: a zero size WARNs and
fails; a size above totalram_pages() fails with warn_alloc's message),
mm/util.c (__kvmalloc_node_noprof: the kmalloc attempt is quiet for
sizes above a page; a size above INT_MAX then WARNs and fails) and
include/linux/slab.h (KMALLOC_MAX_SIZE; kmalloc above it fails, with the
page allocator's order > MAX_PAGE_ORDER WARN) @ torvalds/linux 0eaed89c18ae.

A driver calls these before it allocates a host buffer sized by a user
value, so an absurd size is the kernel's NULL (the caller's -ENOMEM), never
a host MemoryError. Simplified: the buffer is host memory and is not
charged to the modelled RAM (vmalloc's pages would come from the buddy
allocator, and a request that fits totalram but not the free memory would
reclaim or OOM-kill); only the size checks are modelled.
"""

from __future__ import annotations

import numpy as np

from hmmsim.kconfig import PAGE_SHIFT

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

"""The dmirror driver's bounce buffers and user copies.

Models: lib/test_hmm.c @ torvalds/linux 0eaed89c18ae (linux-mm 05ab5121):
struct dmirror_bounce, dmirror_bounce_init / dmirror_bounce_fini (vmalloc),
and the copy_to_user / copy_from_user of the ioctls.

Differences from the C: `ptr` buffers are NumPy/bytearray buffers the
caller owns (copying past their end or into a read-only one is -EFAULT), or
a user address in the calling process.
"""

from __future__ import annotations

import numpy as np

from hmmsim.bug import KernelOops
from hmmsim.data_plane import TokenPlaneError
from hmmsim.errno import EFAULT, ENOMEM
from hmmsim.include.mm_types import (
    Page,
)
from hmmsim.include.uapi_types import U64_MASK
from hmmsim.mm.vmalloc import vfree_pages, vmalloc_pages, vmalloc_size_ok


def _frame(page: Page) -> np.ndarray:
    return page.k.mem.frame(page.pfn)


def _kmap_frame(page: Page, function: str) -> np.ndarray:
    """The frame memcpy_from_page/memcpy_to_page touch; a page with no
    linear map (a device-private page) oopses in `function`, the function
    the kernel's oops names once the copy helpers are inlined into it."""
    r = page.k.mem.range_of(page.pfn)
    if r is None or r.frames is None:
        raise KernelOops(function, f"pfn {page.pfn:#x} has no linear mapping (page_address)")
    return r.frames[page.pfn - r.base]


def dmirror_bounce_init(mdev, addr: int, size: int, scratch: bool = True):
    """lib/test_hmm.c dmirror_bounce_init: a dmirror_bounce, or -ENOMEM when
    vmalloc(size) returns NULL (mm/vmalloc.c: more than totalram_pages(), or
    its pages cannot be had). Checked before any host buffer is sized by
    the user's npages. The buffer's pages are taken from modelled RAM as
    vmalloc would (unmovable order-0 pages, mm/vmalloc.py vmalloc_pages); its
    bytes stay in host memory. `scratch` False: a fresh zeroed host buffer."""
    k = mdev.k
    if not vmalloc_size_ok(k, size):
        return -ENOMEM
    vm = vmalloc_pages(k, size)
    if vm is None:
        return -ENOMEM
    bounce = dmirror_bounce(addr, size, mdev if scratch else None)
    bounce.vm = vm
    return bounce


def dmirror_bounce_fini(k, bounce) -> None:
    """lib/test_hmm.c dmirror_bounce_fini: vfree the buffer (its pages back
    to the page allocator in index order)."""
    vfree_pages(k, bounce.vm)
    bounce.vm = None


class dmirror_bounce:
    """struct dmirror_bounce. The C buffer is vmalloc()ed, uninitialised
    (dmirror_bounce_init checks the size first).

    Every caller copies it to the user only after dmirror_do_read filled all
    of it, so with Kernel.fastpath (one thread of execution) a read bounce
    may reuse the device's scratch buffer (dmirror_device.bounce_scratch)
    instead of a fresh zeroed one (`mdev` given): the user sees the same
    bytes and the host is spared faulting in a new buffer per ioctl (issue 7).
    """

    __slots__ = ("ptr", "size", "addr", "cpages", "vm")

    def __init__(self, addr: int, size: int, mdev=None) -> None:
        self.vm = None  # the pages in modelled RAM (dmirror_bounce_init)
        self.addr = addr
        self.size = size
        self.cpages = 0
        if mdev is not None and mdev.k.fastpath:
            buf = mdev.bounce_scratch
            if buf is None or buf.size < size:
                buf = np.empty(size, dtype=np.uint8)
                mdev.bounce_scratch = buf
            self.ptr = buf[:size]
        else:
            self.ptr = np.zeros(size, dtype=np.uint8)


def check_user_ptr(uptr) -> None:
    """Refuse a cmd.ptr the model cannot treat as user memory (before any work).

    A user buffer is None (copy_to/from_user then fail with -EFAULT), a user
    address (an int) in the calling process, or a host object with the
    buffer protocol laid out as one C-contiguous run of bytes (bytearray,
    bytes, a C-contiguous NumPy array). A read-only one is user memory
    without write permission: writing to it fails with -EFAULT, as
    copy_to_user does. Raises TypeError or ValueError otherwise.
    """
    if uptr is None or isinstance(uptr, int):
        return
    try:
        mv = memoryview(uptr)
    except TypeError:
        raise TypeError(
            "hmm_dmirror_cmd.ptr must be None, a user address (int) or a buffer "
            f"(bytearray, NumPy array), not {type(uptr).__name__}"
        ) from None
    if not mv.c_contiguous:
        raise ValueError(
            "hmm_dmirror_cmd.ptr must be C-contiguous (one run of bytes): "
            "pass np.ascontiguousarray(buf) and read the result from that"
        )


def _user_view(uptr) -> np.ndarray | None:
    """A host user buffer as bytes (writable unless the buffer is read-only);
    None for a user address or no buffer."""
    if uptr is None or isinstance(uptr, int):
        return None
    return np.frombuffer(memoryview(uptr).cast("B"), dtype=np.uint8)


def _copy_to_user(proc, uptr, data: np.ndarray, off: int = 0, view=None) -> int:
    """copy_to_user(uptr + off, data): 0, or -EFAULT if the user buffer is
    missing, too small or not writable. Like the C, the bytes that fit
    before the fault are written. `view`: _user_view(uptr), if the caller
    copies to the same host buffer repeatedly."""
    if uptr is None:
        return -EFAULT
    if isinstance(uptr, int):
        try:
            proc.store((uptr + off) & U64_MASK, data)
        except TokenPlaneError:
            raise  # the token data plane refused the bytes: not a user fault
        except Exception:  # noqa: BLE001 - a user fault is -EFAULT here
            return -EFAULT
        return 0
    if view is None:
        view = _user_view(uptr)
    if not view.flags.writeable:
        return -EFAULT
    fit = max(0, min(data.size, view.size - off))
    view[off : off + fit] = data[:fit]
    return -EFAULT if fit < data.size else 0


def _copy_from_user(proc, uptr, size: int) -> np.ndarray | int:
    if uptr is None:
        return -EFAULT
    if isinstance(uptr, int):
        try:
            return np.frombuffer(proc.load(uptr, size), dtype=np.uint8).copy()
        except Exception:  # noqa: BLE001
            return -EFAULT
    view = _user_view(uptr)
    if view.size < size:
        return -EFAULT
    return view[:size].copy()

"""The gup_test debugfs device: get/pin user pages on request from a test.

Models: mm/gup_test.c and mm/gup_test.h @ torvalds/linux
0eaed89c18aeedf0898baf2dbf5ff027c6795152 (CONFIG_GUP_TEST): the
/sys/kernel/debug/gup_test file, struct gup_test, the GUP_*/PIN_* ioctls,
verify_dma_pinned() and the PIN_LONGTERM_TEST_* commands.

`gup_test_init(k)` registers the device on a Kernel (late_initcall in the
C). It calls only the GUP API of hmmsim.mm.gup.

Differences from the kernel:
- the "fast" variants (get_user_pages_fast, pin_user_pages_fast) run the
  slow path under the mmap read lock. The kernel's lockless walk gives up on
  exactly the entries these tests use (non-present device-private entries,
  and, for FOLL_LONGTERM, device-coherent pages) and falls back to that same
  slow path, so the outcome is the same;
- struct gup_test is a dataclass that the test owns (copy_from_user and
  copy_to_user of it cannot fault); get/put_delta_usec are wall-clock
  microseconds of the host.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from hmmsim.bug import KernelBug
from hmmsim.errno import EFAULT, EINVAL
from hmmsim.include.mm_types import folio_put, page_folio
from hmmsim.kconfig import PAGE_SHIFT, PAGE_SIZE
from hmmsim.mm.gup import (
    FOLL_LONGTERM,
    FOLL_WRITE,
    folio_maybe_dma_pinned,
    get_user_pages_remote,
    pin_user_pages_remote,
    unpin_user_page,
)
from hmmsim.mm.memremap import is_device_coherent_page, is_zone_device_page

GUP_TEST_PATH = "/sys/kernel/debug/gup_test"

_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _IOC(direction: int, type_: str, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord(type_) << 8) | nr


GUP_TEST_MAX_PAGES_TO_DUMP = 8
#: sizeof(struct gup_test): four __u64, three __u32, __u32[8], padded to 8 bytes.
SIZEOF_GUP_TEST = 80
SIZEOF_PIN_LONGTERM_TEST = 24

GUP_FAST_BENCHMARK = _IOC(_IOC_READ | _IOC_WRITE, "g", 1, SIZEOF_GUP_TEST)
PIN_FAST_BENCHMARK = _IOC(_IOC_READ | _IOC_WRITE, "g", 2, SIZEOF_GUP_TEST)
PIN_LONGTERM_BENCHMARK = _IOC(_IOC_READ | _IOC_WRITE, "g", 3, SIZEOF_GUP_TEST)
GUP_BASIC_TEST = _IOC(_IOC_READ | _IOC_WRITE, "g", 4, SIZEOF_GUP_TEST)
PIN_BASIC_TEST = _IOC(_IOC_READ | _IOC_WRITE, "g", 5, SIZEOF_GUP_TEST)
DUMP_USER_PAGES_TEST = _IOC(_IOC_READ | _IOC_WRITE, "g", 6, SIZEOF_GUP_TEST)
PIN_LONGTERM_TEST_START = _IOC(_IOC_WRITE, "g", 7, SIZEOF_PIN_LONGTERM_TEST)
PIN_LONGTERM_TEST_STOP = _IOC(_IOC_NONE, "g", 8, 0)
PIN_LONGTERM_TEST_READ = _IOC(_IOC_WRITE, "g", 9, 8)

GUP_TEST_FLAG_DUMP_PAGES_USE_PIN = 0x1
PIN_LONGTERM_TEST_FLAG_USE_WRITE = 1
PIN_LONGTERM_TEST_FLAG_USE_FAST = 2

ULONG_MAX = (1 << 64) - 1
LONG_MAX = (1 << 63) - 1

_GUP_CMDS = (
    GUP_FAST_BENCHMARK,
    PIN_FAST_BENCHMARK,
    PIN_LONGTERM_BENCHMARK,
    GUP_BASIC_TEST,
    PIN_BASIC_TEST,
    DUMP_USER_PAGES_TEST,
)
_PIN_CMDS = (PIN_FAST_BENCHMARK, PIN_BASIC_TEST, PIN_LONGTERM_BENCHMARK)


@dataclass
class gup_test:
    """struct gup_test (mm/gup_test.h): the request and its timing results."""

    get_delta_usec: int = 0
    put_delta_usec: int = 0
    addr: int = 0
    size: int = 0
    nr_pages_per_call: int = 0
    gup_flags: int = 0
    test_flags: int = 0
    which_pages: list[int] = field(default_factory=lambda: [0] * GUP_TEST_MAX_PAGES_TO_DUMP)


@dataclass
class pin_longterm_test:
    """struct pin_longterm_test (mm/gup_test.h)."""

    addr: int = 0
    size: int = 0
    flags: int = 0


def folio_is_longterm_pinnable(folio) -> bool:
    """include/linux/mm.h: may this folio stay pinned indefinitely?

    Device-coherent memory must be migrated away first; other ZONE_DEVICE
    folios may be pinned; the model's single zone is never ZONE_MOVABLE or
    CMA, so every other folio is pinnable.
    """
    if is_device_coherent_page(folio):
        return False
    if is_zone_device_page(folio):
        return True
    return True


class gup_test_device:
    """The debugfs file: one per Kernel, plus pin_longterm_test's pinned pages."""

    def __init__(self, k) -> None:
        self.k = k
        self.pin_longterm_test_pages: list | None = None

    def __repr__(self) -> str:
        held = len(self.pin_longterm_test_pages or ())
        return f"<gup_test {GUP_TEST_PATH} longterm_pinned={held}>"

    # --- file operations -------------------------------------------------------------------
    def open(self, f, proc) -> int:
        f.private = proc
        return 0

    def release(self, f) -> int:
        self.pin_longterm_test_stop()
        f.private = None
        return 0

    def ioctl(self, f, proc, cmd: int, arg) -> int:
        """gup_test_ioctl(): 0 or -EINVAL/-EFAULT/-ENOMEM/-EINTR."""
        if cmd in (PIN_LONGTERM_TEST_START, PIN_LONGTERM_TEST_STOP, PIN_LONGTERM_TEST_READ):
            return self.pin_longterm_test_ioctl(proc, cmd, arg)
        if cmd not in _GUP_CMDS:
            return -EINVAL
        if not isinstance(arg, gup_test):
            return -EFAULT
        gup = gup_test(**vars(arg))
        gup.which_pages = list(arg.which_pages)
        ret = self.__gup_test_ioctl(proc, cmd, gup)
        if ret:
            return ret
        for name, value in vars(gup).items():
            setattr(arg, name, value)
        return 0

    # --- the benchmark/basic commands --------------------------------------------------------
    def __gup_test_ioctl(self, proc, cmd: int, gup: gup_test) -> int:
        mm = proc.mm
        if gup.addr > ULONG_MAX or gup.size > ULONG_MAX:
            return -EINVAL
        end = gup.addr + gup.size
        if end > ULONG_MAX:
            return -EINVAL
        nr_pages = gup.size // PAGE_SIZE
        pages: list = []
        mm.mmap_lock.down_read()
        try:
            nr = gup.nr_pages_per_call
            t0 = time.perf_counter()
            addr = gup.addr
            while addr < end:
                if nr != gup.nr_pages_per_call:
                    break
                nxt = addr + nr * PAGE_SIZE
                if nxt > end:
                    nxt = end
                    nr = (nxt - addr) // PAGE_SIZE
                if cmd in (GUP_FAST_BENCHMARK, GUP_BASIC_TEST):
                    got = get_user_pages_remote(mm, addr, nr, gup.gup_flags)
                elif cmd in (PIN_FAST_BENCHMARK, PIN_BASIC_TEST):
                    got = pin_user_pages_remote(mm, addr, nr, gup.gup_flags)
                elif cmd == PIN_LONGTERM_BENCHMARK:
                    got = pin_user_pages_remote(mm, addr, nr, gup.gup_flags | FOLL_LONGTERM)
                elif gup.test_flags & GUP_TEST_FLAG_DUMP_PAGES_USE_PIN:
                    got = pin_user_pages_remote(mm, addr, nr, gup.gup_flags)
                else:
                    got = get_user_pages_remote(mm, addr, nr, gup.gup_flags)
                nr = got if isinstance(got, int) else len(got)
                if nr <= 0:
                    break
                pages.extend(got)
                addr = nxt
            gup.get_delta_usec = int((time.perf_counter() - t0) * 1e6)
            gup.size = addr - gup.addr
            nr_pages = len(pages)
            self.verify_dma_pinned(cmd, pages)
            if cmd == DUMP_USER_PAGES_TEST:
                for i in range(GUP_TEST_MAX_PAGES_TO_DUMP):
                    if gup.which_pages[i] > nr_pages:
                        gup.which_pages[i] = 0
            t0 = time.perf_counter()
            self.put_back_pages(cmd, pages, gup.test_flags)
            gup.put_delta_usec = int((time.perf_counter() - t0) * 1e6)
        finally:
            mm.mmap_lock.up_read()
        return 0

    @staticmethod
    def put_back_pages(cmd: int, pages: list, test_flags: int) -> None:
        pin = cmd in _PIN_CMDS or (
            cmd == DUMP_USER_PAGES_TEST and test_flags & GUP_TEST_FLAG_DUMP_PAGES_USE_PIN
        )
        for page in pages:
            if pin:
                unpin_user_page(page)
            else:
                folio_put(page_folio(page))

    def verify_dma_pinned(self, cmd: int, pages: list) -> None:
        """WARN (a recorded kernel warning) for a page that should be pinned and is not."""
        if cmd not in _PIN_CMDS:
            return
        for i, page in enumerate(pages):
            folio = page_folio(page)
            if not folio_maybe_dma_pinned(folio):
                self.k.warn(f"gup_test: pages[{i}] is NOT dma-pinned")
                return
            if cmd == PIN_LONGTERM_BENCHMARK and not folio_is_longterm_pinnable(folio):
                self.k.warn(f"gup_test: pages[{i}] is NOT pinnable but pinned")
                return

    # --- PIN_LONGTERM_TEST_* ----------------------------------------------------------------------
    def pin_longterm_test_stop(self) -> None:
        if self.pin_longterm_test_pages is not None:
            for page in self.pin_longterm_test_pages:
                unpin_user_page(page)
            self.pin_longterm_test_pages = None

    def pin_longterm_test_start(self, proc, args) -> int:
        if self.pin_longterm_test_pages is not None:
            return -EINVAL
        if not isinstance(args, pin_longterm_test):
            return -EFAULT
        if args.flags & ~(PIN_LONGTERM_TEST_FLAG_USE_WRITE | PIN_LONGTERM_TEST_FLAG_USE_FAST):
            return -EINVAL
        if (args.addr | args.size) & (PAGE_SIZE - 1):
            return -EINVAL
        if args.size > LONG_MAX:
            return -EINVAL
        nr_pages = args.size >> PAGE_SHIFT
        if not nr_pages:
            return -EINVAL
        gup_flags = FOLL_LONGTERM
        if args.flags & PIN_LONGTERM_TEST_FLAG_USE_WRITE:
            gup_flags |= FOLL_WRITE
        mm = proc.mm
        pinned: list = []
        self.pin_longterm_test_pages = pinned
        ret = 0
        mm.mmap_lock.down_read()
        try:
            while nr_pages - len(pinned):
                addr = args.addr + len(pinned) * PAGE_SIZE
                got = pin_user_pages_remote(mm, addr, nr_pages - len(pinned), gup_flags)
                if isinstance(got, int):
                    if got < 0:
                        ret = got
                        break
                    got = []
                if not got:
                    raise KernelBug("pin_longterm_test_start: pin_user_pages made no progress")
                pinned.extend(got)
        finally:
            mm.mmap_lock.up_read()
        if ret:
            self.pin_longterm_test_stop()
        return ret

    def pin_longterm_test_read(self, proc, user_addr) -> int:
        if self.pin_longterm_test_pages is None:
            return -EINVAL
        if not isinstance(user_addr, int):
            return -EFAULT
        for page in self.pin_longterm_test_pages:
            data = self.k.mem.frame(page.pfn)
            try:
                proc.store(user_addr, data)
            except Exception:  # noqa: BLE001 - a faulting user buffer is -EFAULT
                return -EFAULT
            user_addr += PAGE_SIZE
        return 0

    def pin_longterm_test_ioctl(self, proc, cmd: int, arg) -> int:
        if cmd == PIN_LONGTERM_TEST_START:
            return self.pin_longterm_test_start(proc, arg)
        if cmd == PIN_LONGTERM_TEST_STOP:
            self.pin_longterm_test_stop()
            return 0
        return self.pin_longterm_test_read(proc, arg)


def gup_test_init(k) -> gup_test_device:
    """late_initcall: create /sys/kernel/debug/gup_test on Kernel k."""
    dev = gup_test_device(k)
    k.devices[GUP_TEST_PATH] = dev
    return dev

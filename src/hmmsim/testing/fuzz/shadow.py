"""The shadow model of user memory: the bytes every process must read, page by page.

Cell holds one page's bytes, SharedObj a MAP_SHARED object's pages, PageState
one mapped page of one process (protection and where its bytes live),
ProcState a live process of the World and FdState an open dmirror fd. The
World (world.py) keeps one ProcState per process and updates them as each
operation's handler (process_ops.py, device_ops.py) says; the oracle
(oracle.py) compares the model's memory with them.
"""

from __future__ import annotations

from dataclasses import dataclass

from hmmsim.include.mman import (
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.kconfig import PAGE_SHIFT, PAGE_SIZE


# --- the shadow -----------------------------------------------------------------------------
class Cell:
    """The bytes of one page of memory (None: zeros)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | None = None) -> None:
        self.data = data


class SharedObj:
    """A MAP_SHARED anonymous object (an unnamed shmem file): one Cell per page."""

    __slots__ = ("cells",)

    def __init__(self, npages: int) -> None:
        self.cells = [Cell() for _ in range(npages)]


class PageState:
    """One mapped page of one process: protection and where its bytes live.

    cell is None for a page of a shared object past its end (SIGBUS).
    """

    __slots__ = ("prot", "cell", "obj", "index")

    def __init__(self, prot: int, cell: Cell | None, obj: SharedObj | None = None, index=0):
        self.prot = prot
        self.cell = cell
        self.obj = obj
        self.index = index

    def cpu_fault(self, write: bool) -> str | None:
        """The signal a CPU access gets here, or None."""
        if write:
            if not self.prot & PROT_WRITE:
                return "SIGSEGV"
        elif not self.prot & (PROT_READ | PROT_WRITE):
            return "SIGSEGV"
        return "SIGBUS" if self.cell is None else None


class ProcState:
    """A live process of the World: its Process, mapped pages, and fds."""

    def __init__(self, h: int, proc, parent: int | None) -> None:
        self.h = h
        self.proc = proc
        self.parent = parent
        self.pages: dict[int, PageState] = {}
        self.fds: dict[int, int] = {}  # fd handle -> fd number
        self._keys: list[int] | None = None

    def changed(self) -> None:
        self._keys = None

    def keys(self) -> list[int]:
        if self._keys is None:
            self._keys = sorted(self.pages)
        return self._keys


@dataclass
class FdState:
    minor: int
    opener: int


def shadow_bytes(ps: ProcState, addr: int, n: int) -> bytes:
    """The bytes process ps must read at [addr, addr + n) (every page mapped)."""
    out = bytearray()
    end = addr + n
    while addr < end:
        base = addr & ~(PAGE_SIZE - 1)
        chunk = min(base + PAGE_SIZE, end) - addr
        pg = ps.pages[addr >> PAGE_SHIFT]
        data = pg.cell.data if pg.cell is not None else None
        off = addr - base
        out += bytes(chunk) if data is None else data[off : off + chunk]
        addr += chunk
    return bytes(out)


def shadow_write(ps: ProcState, addr: int, data: bytes) -> None:
    """Record that data was stored at addr in process ps (every page mapped)."""
    pos = 0
    while pos < len(data):
        a = addr + pos
        base = a & ~(PAGE_SIZE - 1)
        chunk = min(base + PAGE_SIZE - a, len(data) - pos)
        cell = ps.pages[a >> PAGE_SHIFT].cell
        page = bytearray(cell.data) if cell.data is not None else bytearray(PAGE_SIZE)
        page[a - base : a - base + chunk] = data[pos : pos + chunk]
        cell.data = bytes(page)
        pos += chunk


def _npages_of(addr: int, n: int) -> int:
    return (((addr + n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)) - (addr & ~(PAGE_SIZE - 1))) >> (
        PAGE_SHIFT
    )

"""Stateful fuzzing of the model against a shadow of the bytes every process must see.

Nothing here is kernel code. A `World` drives one Kernel (with the dmirror
test driver loaded) through an operation vocabulary: processes (spawn, fork,
exit), mmap/munmap/mprotect/mremap/madvise, CPU loads and stores, dmirror
opens, closes and ioctls (READ, WRITE, MIGRATE_TO_DEV, MIGRATE_TO_SYS,
EXCLUSIVE, CHECK_EXCLUSIVE, SNAPSHOT, RELEASE, FLAGS=FAIL_ALLOC) on both
device kinds, and the THP mode. Next to the kernel it keeps a shadow model:
for every live process and every mapped page, the bytes that process must
read there (anonymous private memory is copy-on-write across fork, MAP_SHARED
anonymous memory is one object shared by everyone who maps it, DONTNEED and
munmap of private memory make it read back as zeros, a device WRITE puts the
buffer's bytes in the mirrored process, READ/MIGRATE_TO_DEV/EXCLUSIVE return
the process's bytes, migrations never change bytes, mremap moves them).

The oracle checks:
- every CPU load against the shadow, and that an access to an unmapped or
  PROT_NONE page, or a store to a read-only one, raises SegmentationFault
  (and past the end of a shared object BusError), and nothing else does;
- every device buffer (READ, MIGRATE_TO_DEV, EXCLUSIVE) against the shadow;
- after every operation, the touched range through `peek()`: a read of what
  a CPU access would see (present page, device-private backing page,
  device-exclusive page, shmem page cache, or zeros) that does not fault;
- at check points, `check_invariants` and a sweep of every mapped page;
- after every step, that no kernel warning was recorded (except the faithful
  WARN_ON listed in ALLOWED_WARNINGS).

Return values are the model's to choose wherever the kernel's rules depend on
state the shadow does not keep (vma boundaries, migration eligibility); the
shadow follows them and checks only what they imply (a successful mremap
moved mapped pages; a failed ioctl changed no bytes). Where the rule is plain
(mmap/munmap/mprotect/madvise results, MAP_FIXED_NOREPLACE) the expected
value is checked.

`run_fuzz()` is the seeded random driver behind `hmmsim fuzz` (no Hypothesis
needed); `shrink()` is delta debugging over the recorded operation list; and
`replay_script()` writes a standalone Python file that reproduces a failing
sequence through the Process API.
"""

from __future__ import annotations

import base64
import random
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from hmmsim.drivers.test_hmm import BACKING_PAGE, DPT_XA_TAG_WRITE, hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_CHECK_EXCLUSIVE,
    HMM_DMIRROR_EXCLUSIVE,
    HMM_DMIRROR_FLAG_FAIL_ALLOC,
    HMM_DMIRROR_FLAGS,
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_MIGRATE_TO_SYS,
    HMM_DMIRROR_PROT_ERROR,
    HMM_DMIRROR_PROT_WRITE,
    HMM_DMIRROR_READ,
    HMM_DMIRROR_RELEASE,
    HMM_DMIRROR_SNAPSHOT,
    HMM_DMIRROR_WRITE,
    hmm_dmirror_cmd,
)
from hmmsim.errno import EEXIST, EFAULT, EINVAL, ENOMEM
from hmmsim.include.mm_types import Page, folio_mapcount, page_folio
from hmmsim.include.mman import (
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_FIXED_NOREPLACE,
    MAP_POPULATE,
    MAP_PRIVATE,
    MAP_SHARED,
    MREMAP_DONTUNMAP,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    O_RDWR,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.include.pgtable import (
    _PAGE_PRESENT,
    _PAGE_PSE,
    pmd_pfn,
    pmd_present,
    pte_none,
    pte_pfn,
    pte_present,
    table_entry_pfn,
)
from hmmsim.kconfig import (
    PAGE_SHIFT,
    PAGE_SIZE,
    SERIES,
    SERIES_ABSENT,
    SERIES_REQUIRES,
    KConfig,
)
from hmmsim.kernel import Kernel
from hmmsim.mm.memremap import page_pgmap
from hmmsim.mm.mmap import vma_lookup
from hmmsim.mm.pgtable import pmd_offset
from hmmsim.testing.invariants import check_invariants, strict_word_check
from hmmsim.userspace import BusError, OutOfMemory, SegmentationFault, entry_at

# --- geometry of the generated workloads ------------------------------------------------------
#: Fixed mappings go into this arena (16 TiB up, far below mmap_base) so that a
#: shrunk sequence keeps its addresses when earlier operations are removed.
ARENA_BASE = 0x1000_0000_0000
ARENA_PMDS = 16
ARENA_PAGES = ARENA_PMDS * 512
HPAGE_NR = 512
MAX_PROCS = 4
#: Generated mappings stop growing past this many pages per process (keeps RAM comfortable).
MAX_MAPPED_PAGES = 6144
DEFAULT_RAM = 256 << 20
DEFAULT_SEQUENCE_STEPS = 300
#: Steps between invariant checks and between full sweeps in `run_fuzz`; the
#: operation's own range is compared with the shadow after every step.
DEFAULT_CHECK_EVERY = 10
DEFAULT_SWEEP_EVERY = 50
THP_MODES = ("always", "madvise", "never")
DEVICES = 4  # /dev/hmm_dmirror0..3: 0, 1 device-private; 2, 3 device-coherent

#: Kernel warnings that the modelled kernel faithfully emits for a legal userspace
#: sequence, both from lib/test_hmm.c:
#: - dmirror_do_fault WARNs when hmm_range_fault returns a read-only entry for a
#:   write request, which it does for an owned read-only device-private entry
#:   (hmm never faults those; known-bugs 13);
#: - a device-coherent dmirror has one chunk at its fixed SPM address, all on
#:   free_pages; a THP migration that finds free_folios empty asks
#:   dmirror_allocate_chunk() for another chunk at the same address, and
#:   memremap_pages() (pagemap_range) WARNs about the conflicting pgmap and
#:   fails, so the driver falls back to order-0 pages.
ALLOWED_WARNINGS = (
    "dmirror_do_fault: write requested but not granted",
    "memremap_pages: Conflicting mapping in same section",
)

IOCTLS = {
    "READ": HMM_DMIRROR_READ,
    "WRITE": HMM_DMIRROR_WRITE,
    "MIGRATE_TO_DEV": HMM_DMIRROR_MIGRATE_TO_DEV,
    "MIGRATE_TO_SYS": HMM_DMIRROR_MIGRATE_TO_SYS,
    "EXCLUSIVE": HMM_DMIRROR_EXCLUSIVE,
    "CHECK_EXCLUSIVE": HMM_DMIRROR_CHECK_EXCLUSIVE,
    "SNAPSHOT": HMM_DMIRROR_SNAPSHOT,
    "RELEASE": HMM_DMIRROR_RELEASE,
    "FAIL_ALLOC": HMM_DMIRROR_FLAGS,
}

_PROT_NAMES = {
    PROT_NONE: "PROT_NONE",
    PROT_READ: "PROT_READ",
    PROT_WRITE: "PROT_WRITE",
    PROT_READ | PROT_WRITE: "PROT_READ | PROT_WRITE",
}
_MADV_NAMES = {
    MADV_DONTNEED: "MADV_DONTNEED",
    MADV_HUGEPAGE: "MADV_HUGEPAGE",
    MADV_NOHUGEPAGE: "MADV_NOHUGEPAGE",
}

_MREMAP_NAMES = {
    MREMAP_MAYMOVE: "MREMAP_MAYMOVE",
    MREMAP_FIXED: "MREMAP_FIXED",
    MREMAP_DONTUNMAP: "MREMAP_DONTUNMAP",
}


def _flag_names(flags: int, names: dict[int, str]) -> str:
    parts = [n for b, n in names.items() if flags & b]
    rest = flags & ~sum(names)
    if rest:
        parts.append(hex(rest))
    return " | ".join(parts) or "0"


def fill(tag: int, n: int) -> bytes:
    """n recognisable bytes: little-endian 64-bit words (tag << 32) | word index.

    Every store and device WRITE uses its own tag, so no two writes put the
    same bytes anywhere and a wrong page names the operation that wrote it.
    """
    words = np.arange((n + 7) // 8, dtype=np.uint64) | np.uint64((tag & 0xFFFFFFFF) << 32)
    return words.view(np.uint8)[:n].tobytes()


def describe_bytes(data) -> str:
    """A short description of a buffer: zeros, or where its data came from."""
    arr = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    nz = np.flatnonzero(arr)
    if not nz.size:
        return f"{arr.size} zero bytes"
    first = int(nz[0])
    a = first & ~7
    w = int.from_bytes(bytes(arr[a : a + 8]), "little")
    return (
        f"{arr.size} bytes, {nz.size} nonzero, first at +{first:#x}: word {w:#018x}"
        f" (tag {w >> 32} if written by fill)"
    )


# --- configurations ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SeqConfig:
    """How one sequence's Kernel is built: feature switches, THP mode, RAM size."""

    features: frozenset = frozenset({"d"})
    conflict_resolution: str | None = None
    thp: str = "madvise"
    ram_bytes: int = DEFAULT_RAM
    bugs: frozenset = frozenset()  # known-bug mutants (hmmsim.mutants); none normally
    kernel: str = "mainline"  # KConfig.kernel: the pin or the "6.12" profile

    def make_kernel(self) -> Kernel:
        k = Kernel(
            ram_bytes=self.ram_bytes,
            hugetlb_pages=0,
            features=frozenset(self.features),
            conflict_resolution=self.conflict_resolution,
            bugs=frozenset(self.bugs),
            kernel=self.kernel,
        )
        hmm_dmirror_init(k)
        k.thp_enabled = self.thp
        return k

    def label(self) -> str:
        f = "".join(sorted(self.features)) or "-"
        if self.conflict_resolution:
            f += f"/{self.conflict_resolution}"
        kern = f" kernel={self.kernel}" if self.kernel != "mainline" else ""
        return f"features={f} thp={self.thp}{kern}"

    def kernel_source(self) -> str:
        """The Python expression that builds this configuration's Kernel."""
        feats = "{" + ", ".join(repr(x) for x in sorted(self.features)) + "}"
        feats = f"frozenset({feats})" if self.features else "frozenset()"
        cr = self.conflict_resolution
        cr = f", conflict_resolution={cr!r}" if cr else ""
        bugs = f", bugs=frozenset({sorted(self.bugs)!r})" if self.bugs else ""
        kern = f", kernel={self.kernel!r}" if self.kernel != "mainline" else ""
        return (
            f"Kernel(ram_bytes={self.ram_bytes:#x}, hugetlb_pages=0, "
            f"features={feats}{cr}{bugs}{kern})"
        )


def feature_configs(kernel: str = "mainline") -> list[tuple[frozenset, str | None]]:
    """Every buildable (features, conflict_resolution) pair of the five seed series
    (for the "6.12" profile: without the series that did not exist then)."""
    letters = sorted(set(SERIES) - set(SERIES_ABSENT.get(kernel, ())))
    out = []
    for mask in range(1 << len(letters)):
        fs = frozenset(x for i, x in enumerate(letters) if mask >> i & 1)
        if any(s in fs and not set(req) <= fs for s, req in SERIES_REQUIRES.items()):
            continue
        if {"c", "e"} <= fs:
            out += [(fs, "c-first"), (fs, "e-first")]
        else:
            out.append((fs, None))
    for fs, cr in out:  # every one must build
        KConfig(features=fs, conflict_resolution=cr, kernel=kernel)
    return out


# --- operations ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Spawn:
    """A new process with an empty address space (handle h)."""

    h: int

    def __str__(self) -> str:
        return f"p{self.h} = spawn()"


@dataclass(frozen=True, slots=True)
class Fork:
    h: int
    child: int

    def __str__(self) -> str:
        return f"p{self.child} = p{self.h}.fork()"


@dataclass(frozen=True, slots=True)
class Exit:
    h: int

    def __str__(self) -> str:
        return f"p{self.h}._exit(0)"


@dataclass(frozen=True, slots=True)
class Mmap:
    h: int
    addr: int
    npages: int
    prot: int
    shared: bool = False
    mode: str = "fixed"  # "fixed" (MAP_FIXED), "noreplace" (MAP_FIXED_NOREPLACE) or "hint"
    populate: bool = False

    def flags(self) -> int:
        f = MAP_ANONYMOUS | (MAP_SHARED if self.shared else MAP_PRIVATE)
        f |= {"fixed": MAP_FIXED, "noreplace": MAP_FIXED_NOREPLACE, "hint": 0}[self.mode]
        return f | (MAP_POPULATE if self.populate else 0)

    def __str__(self) -> str:
        kind = "shared" if self.shared else "private"
        pop = " populate" if self.populate else ""
        return (
            f"p{self.h}.mmap({self.addr:#x}, {self.npages}p, {_PROT_NAMES[self.prot]}, "
            f"{kind} {self.mode}{pop})"
        )


@dataclass(frozen=True, slots=True)
class Munmap:
    h: int
    addr: int
    npages: int

    def __str__(self) -> str:
        return f"p{self.h}.munmap({self.addr:#x}, {self.npages}p)"


@dataclass(frozen=True, slots=True)
class Mprotect:
    h: int
    addr: int
    npages: int
    prot: int

    def __str__(self) -> str:
        return f"p{self.h}.mprotect({self.addr:#x}, {self.npages}p, {_PROT_NAMES[self.prot]})"


@dataclass(frozen=True, slots=True)
class Mremap:
    h: int
    addr: int
    old_npages: int
    new_npages: int
    flags: int = 0
    new_addr: int = 0

    def __str__(self) -> str:
        to = f", {self.new_addr:#x}" if self.flags & MREMAP_FIXED else ""
        return (
            f"p{self.h}.mremap({self.addr:#x}, {self.old_npages}p, {self.new_npages}p, "
            f"{_flag_names(self.flags, _MREMAP_NAMES)}{to})"
        )


@dataclass(frozen=True, slots=True)
class Madvise:
    h: int
    addr: int
    npages: int
    advice: int

    def __str__(self) -> str:
        return f"p{self.h}.madvise({self.addr:#x}, {self.npages}p, {_MADV_NAMES[self.advice]})"


@dataclass(frozen=True, slots=True)
class Load:
    h: int
    addr: int
    n: int

    def __str__(self) -> str:
        return f"p{self.h}.load({self.addr:#x}, {self.n})"


@dataclass(frozen=True, slots=True)
class Store:
    h: int
    addr: int
    n: int
    tag: int

    def __str__(self) -> str:
        return f"p{self.h}.store({self.addr:#x}, fill({self.tag}, {self.n}))"


@dataclass(frozen=True, slots=True)
class Open:
    h: int
    fdh: int
    minor: int

    def __str__(self) -> str:
        return f"fd{self.fdh} = p{self.h}.open('/dev/hmm_dmirror{self.minor}')"


@dataclass(frozen=True, slots=True)
class Close:
    h: int
    fdh: int

    def __str__(self) -> str:
        return f"p{self.h}.close(fd{self.fdh})"


@dataclass(frozen=True, slots=True)
class Ioctl:
    h: int
    fdh: int
    cmd: str
    addr: int = 0
    npages: int = 1
    tag: int = 0

    def __str__(self) -> str:
        if self.cmd in ("RELEASE", "FAIL_ALLOC"):
            return f"p{self.h}.ioctl(fd{self.fdh}, {self.cmd})"
        return f"p{self.h}.ioctl(fd{self.fdh}, {self.cmd}, {self.addr:#x}, {self.npages}p)"


@dataclass(frozen=True, slots=True)
class SetThp:
    mode: str

    def __str__(self) -> str:
        return f"thp_enabled = {self.mode}"


Op = Spawn | Fork | Exit | Mmap | Munmap | Mprotect | Mremap | Madvise | Load | Store
Op = Op | Open | Close | Ioctl | SetThp


# --- failures -------------------------------------------------------------------------------
class FuzzFailure(Exception):
    """The model disagreed with the oracle (or crashed, or broke an invariant).

    kind: "data", "signal", "errno", "exception", "invariant", "warning" or
    "oom"; step: index of the operation (or check point) that showed it;
    check: script lines that, after the step's own lines, reproduce it.
    """

    def __init__(self, kind: str, message: str, *, check: Iterable[str] = (), exc=None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.check = list(check)
        self.exc = exc
        self.step: int | None = None
        self.op: object | None = None
        self.bytes_lost = 0

    @property
    def signature(self) -> str:
        """What must stay the same while shrinking: kind and the message's shape."""
        if self.kind == "exception" and self.exc is not None:
            text = str(self.exc).splitlines()[0] if str(self.exc) else ""
            head = f"{type(self.exc).__name__}: {text}"
        elif self.kind == "data":
            head = ""
        elif self.kind in ("signal", "errno"):
            head = f"{type(self.op).__name__} {self.message.split(',')[0]}"
        else:
            head = self.message.splitlines()[0] if self.message else ""
        return f"{self.kind}: {_normalise(head)}"

    def __str__(self) -> str:
        where = f"step {self.step}" if self.step is not None else "a check point"
        op = f" ({self.op})" if self.op is not None else ""
        return f"{self.kind} at {where}{op}: {self.message}"


def _normalise(text: str) -> str:
    text = re.sub(r"0x[0-9a-fA-F]+", "#", text)
    text = re.sub(r"\d+", "#", text)
    return text[:160]


#: verify(): a page with nothing populated (reads as zeros)
_NONE = object()


class PeekError(Exception):
    """A page table holds something that must not exist between syscalls."""


# --- a side-effect-free view of what a CPU access would read ------------------------------
def _softleaf_frame(k, entry: int, sub: int, addr: int):
    swp = k.swp
    if swp.softleaf_is_device_private(entry):
        page = k.softleaf_to_page(entry)
        page = Page(k, page.a, page.i + sub)
        head = page_folio(page)
        rhead = BACKING_PAGE(head)
        if rhead is None:
            raise PeekError(f"{addr:#x}: device-private page {page.pfn:#x} has no backing page")
        return k.mem.frame(rhead.pfn + (page.i - head.i))
    if swp.softleaf_is_device_exclusive(entry):
        page = k.softleaf_to_page(entry)
        return k.mem.frame(page.pfn + sub)
    raise PeekError(f"{addr:#x}: unexpected entry between syscalls: {swp.describe_softleaf(entry)}")


def peek_frame(k, proc, addr: int):
    """The page a CPU access at addr would read, without faulting.

    Returns a 4096-byte NumPy view, or None where nothing is populated yet
    (anonymous memory reads zeros). Raises PeekError for a migration entry
    or any other entry that no syscall may leave behind, or for no vma.
    """
    level, e = entry_at(proc, addr)
    mem = k.mem
    if level == "pmd":
        sub = (addr >> PAGE_SHIFT) & (HPAGE_NR - 1)
        if pmd_present(e):
            return mem.frame(pmd_pfn(e) + sub)
        return _softleaf_frame(k, k.swp.softleaf_from_pmd(e), sub, addr)
    if level == "pte" and not pte_none(e):
        if pte_present(e):
            return mem.frame(pte_pfn(e))
        return _softleaf_frame(k, k.swp.softleaf_from_pte(e), 0, addr)
    vma = vma_lookup(proc.mm, addr)
    if vma is None:
        raise PeekError(f"{addr:#x}: no vma")
    f = vma.vm_file
    if f is None:
        return None
    pfn = f.cache.get(vma.vm_pgoff + ((addr - vma.vm_start) >> PAGE_SHIFT))
    return None if pfn is None else mem.frame(pfn)


def peek(k, proc, addr: int, n: int) -> bytes:
    """n bytes at addr as the process would read them, read without faulting."""
    out = bytearray()
    end = addr + n
    while addr < end:
        base = addr & ~(PAGE_SIZE - 1)
        chunk = min(base + PAGE_SIZE, end) - addr
        fr = peek_frame(k, proc, base)
        off = addr - base
        out += bytes(chunk) if fr is None else fr[off : off + chunk].tobytes()
        addr += chunk
    return bytes(out)


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


# --- the world: model + shadow + checks ------------------------------------------------------
class World:
    """One Kernel driven by operations, with the shadow of what every process must read.

    Lifecycle: World(cfg) boots a Kernel and loads dmirror; `apply(op)` runs
    one operation and its checks, raising FuzzFailure on any disagreement;
    `check()` runs the invariant checker and sweeps every mapped page. With
    record=True every step appends the Python lines a replay script needs to
    `lines`.
    """

    def __init__(self, cfg: SeqConfig, *, record: bool = False) -> None:
        self.cfg = cfg
        self.k = cfg.make_kernel()
        self.k.word_checks.append(strict_word_check)
        self.procs: dict[int, ProcState] = {}
        self.dead: set[int] = set()
        self.fds: dict[int, FdState] = {}
        self.steps = 0
        self.bytes_checked = 0
        self.expected_warnings = 0
        self._nwarn = 0
        self.stats: Counter = Counter()
        self.errnos: Counter = Counter()
        self.lines: list[str] | None = [] if record else None

    def __repr__(self) -> str:
        return f"<World {self.cfg.label()} steps={self.steps} procs={sorted(self.procs)}>"

    # --- recording -------------------------------------------------------------------------
    def emit(self, *lines: str) -> None:
        if self.lines is not None:
            self.lines.extend(lines)

    # --- operations ------------------------------------------------------------------------
    def apply(self, op) -> bool:
        """Run one operation and its checks; False if it did not apply (a missing process)."""
        handler = _HANDLERS[type(op)]
        self.steps += 1
        if self.lines is not None:
            self.lines.append(f"# step {self.steps - 1}: {op}")
        try:
            applied = handler(self, op)
        except FuzzFailure as f:
            f.op = op
            f.step = self.steps - 1
            raise
        except (SegmentationFault, BusError) as e:
            raise self._fail(op, "signal", f"unexpected {type(e).__name__}: {e}") from e
        except OutOfMemory as e:
            free = self.k.mem.nr_free
            raise self._fail(op, "oom", f"unexpected OutOfMemory: {e} ({free} pages free)") from e
        except Exception as e:  # noqa: BLE001 - any model crash is a finding
            f = self._fail(op, "exception", f"{type(e).__name__}: {e}")
            f.exc = e
            raise f from e
        self.check_warnings(op)
        if applied is False:
            self.stats["skipped"] += 1
            return False
        self.stats[type(op).__name__ if not isinstance(op, Ioctl) else op.cmd] += 1
        return True

    def _fail(self, op, kind: str, msg: str, check: Iterable[str] = ()) -> FuzzFailure:
        f = FuzzFailure(kind, msg, check=check)
        f.op = op
        f.step = self.steps - 1
        return f

    def check_warnings(self, op=None) -> None:
        w = self.k.warnings
        while self._nwarn < len(w):
            msg = w[self._nwarn].msg
            self._nwarn += 1
            if msg in ALLOWED_WARNINGS:
                self.expected_warnings += 1
                continue
            raise self._fail(op, "warning", f"kernel warning: {msg}", check=["warnings_ok()"])

    def _alive(self, h: int) -> ProcState | None:
        return self.procs.get(h)

    # processes
    def _spawn(self, op: Spawn):
        if op.h in self.procs or op.h in self.dead:
            return False
        self.procs[op.h] = ProcState(op.h, self.k.spawn(f"p{op.h}"), None)
        self.emit(f"p{op.h} = k.spawn()")

    def _fork(self, op: Fork):
        ps = self._alive(op.h)
        if ps is None or op.child in self.procs or op.child in self.dead:
            return False
        self.emit(f"p{op.child} = p{op.h}.child(p{op.h}.fork())")
        pid = ps.proc.fork()
        if pid < 0:
            raise FuzzFailure("errno", f"fork: returned {pid}")
        cs = ProcState(op.child, ps.proc.child(pid), op.h)
        for vpn, pg in ps.pages.items():
            if pg.obj is None:
                cs.pages[vpn] = PageState(pg.prot, Cell(pg.cell.data))
            else:
                cs.pages[vpn] = PageState(pg.prot, pg.cell, pg.obj, pg.index)
        cs.fds = dict(ps.fds)
        self.procs[op.child] = cs
        self.sweep((ps, cs))

    def _exit(self, op: Exit):
        ps = self._alive(op.h)
        if ps is None:
            return False
        self.emit(f"p{op.h}._exit(0)")
        ps.proc._exit(0)
        del self.procs[op.h]
        self.dead.add(op.h)
        parent = self.procs.get(ps.parent) if ps.parent is not None else None
        if parent is not None and ps.proc.pid in parent.proc.children:
            self.emit(f"assert p{parent.h}.waitpid(p{op.h}.pid) == (p{op.h}.pid, 0)")
            got = parent.proc.waitpid(ps.proc.pid)
            if got != (ps.proc.pid, 0):
                raise FuzzFailure("errno", f"waitpid: returned {got}")
        self.sweep()

    # memory syscalls
    def _expect_ret(self, what: str, ret: int, want: int) -> None:
        if ret < 0:
            self.errnos[f"{what} {ret}"] += 1
        if ret != want:
            raise FuzzFailure(
                "errno",
                f"{what}: returned {ret}, expected {want}",
                check=[f"assert ret == {want}, ret"],
            )
        self.emit(f"assert ret == {want:#x}, ret" if want > 0 else f"assert ret == {want}, ret")

    def _mmap(self, op: Mmap):
        ps = self._alive(op.h)
        if ps is None:
            return False
        length = op.npages * PAGE_SIZE
        flags = op.flags()
        fl = ["MAP_SHARED" if op.shared else "MAP_PRIVATE", "MAP_ANONYMOUS"]
        fl += {"fixed": ["MAP_FIXED"], "noreplace": ["MAP_FIXED_NOREPLACE"], "hint": []}[op.mode]
        fl += ["MAP_POPULATE"] if op.populate else []
        self.emit(
            f"ret = p{op.h}.mmap({op.addr:#x}, {length:#x}, {_PROT_NAMES[op.prot]}, "
            f"{' | '.join(fl)})"
        )
        ret = ps.proc.mmap(op.addr, length, op.prot, flags)
        first = op.addr >> PAGE_SHIFT
        occupied = any(v in ps.pages for v in range(first, first + op.npages))
        if op.mode == "fixed":
            self._expect_ret("mmap", ret, op.addr)
        elif op.mode == "noreplace":
            self._expect_ret("mmap", ret, -EEXIST if occupied else op.addr)
        else:
            if ret < 0 or ret & (PAGE_SIZE - 1):
                raise FuzzFailure("errno", f"mmap: returned {ret}, expected an address")
            got = ret >> PAGE_SHIFT
            if any(v in ps.pages for v in range(got, got + op.npages)):
                raise FuzzFailure("errno", f"mmap: returned {ret:#x}, which overlaps a mapping")
            self.emit(f"assert ret == {ret:#x}, ret")
        if ret < 0:
            return
        first = ret >> PAGE_SHIFT
        obj = SharedObj(op.npages) if op.shared else None
        for i in range(op.npages):
            if obj is None:
                ps.pages[first + i] = PageState(op.prot, Cell())
            else:
                ps.pages[first + i] = PageState(op.prot, obj.cells[i], obj, i)
        ps.changed()
        self.verify(ps, ret, op.npages)

    def _munmap(self, op: Munmap):
        ps = self._alive(op.h)
        if ps is None:
            return False
        self.emit(f"ret = p{op.h}.munmap({op.addr:#x}, {op.npages * PAGE_SIZE:#x})")
        ret = ps.proc.munmap(op.addr, op.npages * PAGE_SIZE)
        self._expect_ret("munmap", ret, 0)
        first = op.addr >> PAGE_SHIFT
        for v in range(first, first + op.npages):
            ps.pages.pop(v, None)
        ps.changed()

    def _mprotect(self, op: Mprotect):
        ps = self._alive(op.h)
        if ps is None:
            return False
        self.emit(
            f"ret = p{op.h}.mprotect({op.addr:#x}, {op.npages * PAGE_SIZE:#x}, "
            f"{_PROT_NAMES[op.prot]})"
        )
        ret = ps.proc.mprotect(op.addr, op.npages * PAGE_SIZE, op.prot)
        first = op.addr >> PAGE_SHIFT
        n = 0  # mprotect applies vma by vma from the start up to the first hole
        while n < op.npages and first + n in ps.pages:
            n += 1
        self._expect_ret("mprotect", ret, 0 if n == op.npages else -ENOMEM)
        for v in range(first, first + n):
            ps.pages[v].prot = op.prot
        self.verify(ps, op.addr, n)

    def _madvise(self, op: Madvise):
        ps = self._alive(op.h)
        if ps is None:
            return False
        self.emit(
            f"ret = p{op.h}.madvise({op.addr:#x}, {op.npages * PAGE_SIZE:#x}, "
            f"{_MADV_NAMES[op.advice]})"
        )
        ret = ps.proc.madvise(op.addr, op.npages * PAGE_SIZE, op.advice)
        first = op.addr >> PAGE_SHIFT
        pages = [ps.pages.get(v) for v in range(first, first + op.npages)]
        self._expect_ret("madvise", ret, 0 if all(pages) else -ENOMEM)
        if op.advice == MADV_DONTNEED:  # applied to every mapped part, even with holes
            for pg in pages:
                if pg is not None and pg.obj is None:
                    pg.cell.data = None
        self.verify(ps, op.addr, op.npages)

    def _mremap(self, op: Mremap):
        ps = self._alive(op.h)
        if ps is None:
            return False
        old_len, new_len = op.old_npages * PAGE_SIZE, op.new_npages * PAGE_SIZE
        fixed = bool(op.flags & MREMAP_FIXED)
        self.emit(
            f"ret = p{op.h}.mremap({op.addr:#x}, {old_len:#x}, {new_len:#x}, "
            f"{_flag_names(op.flags, _MREMAP_NAMES)}{f', {op.new_addr:#x}' if fixed else ''})"
        )
        ret = ps.proc.mremap(op.addr, old_len, new_len, op.flags, op.new_addr)
        pages = ps.pages
        old = op.addr >> PAGE_SHIFT
        old_np, new_np = op.old_npages, op.new_npages
        if ret < 0:
            self.errnos[f"mremap {ret}"] += 1
            self.emit(f"assert ret == {ret}, ret")
            dst = op.new_addr >> PAGE_SHIFT
            if (
                ret == -EFAULT
                and fixed
                and old in pages
                and not (old + old_np > dst and dst + new_np > old)
            ):
                # mm/mremap.c: a MREMAP_FIXED move unmaps its destination and the
                # cut-off tail before vma_to_resize refuses the hole (-EFAULT)
                for v in range(dst, dst + new_np):
                    pages.pop(v, None)
                for v in range(old + new_np, old + old_np):
                    pages.pop(v, None)
                ps.changed()
            self.verify(ps, op.addr, op.old_npages)
            return
        self.emit(f"assert ret == {ret:#x}, ret")
        new = ret >> PAGE_SHIFT
        moved = fixed or op.flags & MREMAP_DONTUNMAP or ret != op.addr
        # mm/mremap.c: a shrink or same-size call in place needs only its first
        # page mapped (it unmaps the tail without looking at the vmas); a
        # MREMAP_FIXED move cuts the tail off first, so only what moves must be
        # one vma; every other call needs the whole old range
        if fixed:
            needed = min(old_np, new_np)
        elif moved or new_np > old_np:
            needed = old_np
        else:
            needed = 1
        if any(v not in pages for v in range(old, old + needed)):
            raise FuzzFailure("errno", f"mremap: returned {ret:#x} for a range with a hole")
        proto = pages[old]
        if moved:
            if fixed:
                for v in range(new, new + new_np):  # the target was unmapped first
                    pages.pop(v, None)
                if old_np > new_np:
                    for v in range(old + new_np, old + old_np):
                        pages.pop(v, None)
                    old_np = new_np
            states = [pages.pop(old + i) for i in range(old_np)]
            if op.flags & MREMAP_DONTUNMAP:  # the old range stays mapped, empty
                for i in range(old_np):
                    pages[old + i] = PageState(proto.prot, Cell())
            if any(v in pages for v in range(new, new + old_np)):
                raise FuzzFailure("errno", f"mremap: moved to {ret:#x}, over a mapping")
            for i, st in enumerate(states):
                pages[new + i] = st
        else:
            for v in range(old + new_np, old + old_np):  # shrunk in place
                pages.pop(v, None)
        for i in range(old_np, new_np):  # grown part: fresh (private) or the object's pages
            if new + i in pages:
                raise FuzzFailure("errno", f"mremap: grew {ret:#x} over a mapping")
            if proto.obj is None:
                pages[new + i] = PageState(proto.prot, Cell())
            else:
                idx = proto.index + i
                cell = proto.obj.cells[idx] if idx < len(proto.obj.cells) else None
                pages[new + i] = PageState(proto.prot, cell, proto.obj, idx)
        ps.changed()
        self.verify(ps, ret, new_np)
        if ret != op.addr:
            self.verify(ps, op.addr, op.old_npages)

    # CPU accesses
    def _access_plan(self, ps: ProcState, addr: int, n: int, write: bool):
        """(bytes before the first faulting page, its signal or None)."""
        end = addr + n
        a = addr
        while a < end:
            pg = ps.pages.get(a >> PAGE_SHIFT)
            sig = "SIGSEGV" if pg is None else pg.cpu_fault(write)
            if sig:
                return a - addr, sig
            a = (a & ~(PAGE_SIZE - 1)) + PAGE_SIZE
        return n, None

    def shadow_bytes(self, ps: ProcState, addr: int, n: int) -> bytes:
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

    def _fail_alloc_pending(self) -> list:
        """The open mirrors whose HMM_DMIRROR_FLAG_FAIL_ALLOC is still set."""
        out = []
        for ps in self.procs.values():
            for fd in ps.fds.values():
                d = ps.proc.fds[fd].private
                if d is not None and d.flags & HMM_DMIRROR_FLAG_FAIL_ALLOC:
                    out.append(d)
        return out

    def _injected(self, pending: list) -> bool:
        """True if an injected device allocation failure was consumed since `pending`."""
        if any(not d.flags & HMM_DMIRROR_FLAG_FAIL_ALLOC for d in pending):
            self.stats["injected_failures"] += 1
            return True
        return False

    def _cpu(self, fn, *args, expect: type | None = None):
        """Run a CPU access the way the shadow expects (raising `expect`, or not).

        Returns "ok", "signal" (the expected signal came) or "oom": an
        OutOfMemory that consumed an injected FAIL_ALLOC, which is allowed:
        test_hmm's migrate_to_ram honours FAIL_ALLOC too, so a CPU fault on a
        device page of that mirror gets VM_FAULT_OOM (the kernel would run the
        OOM killer and retry; the model raises OutOfMemory). The replay line
        just emitted is rewritten to expect that.
        """
        pending = self._fail_alloc_pending()
        try:
            fn(*args)
        except OutOfMemory:
            if not (pending and self._injected(pending)):
                raise
            if self.lines is not None:
                line = self.lines[-1]
                if line.startswith("expect_signal("):
                    line = "expect_signal(OutOfMemory, " + line.split(", ", 1)[1]
                else:
                    call = line.split(" = ", 1)[-1]
                    name, rest = call.split("(", 1)
                    line = f"expect_signal(OutOfMemory, {name}, {rest[:-1]})"
                self.lines[-1] = line + "  # an injected FAIL_ALLOC fails this fault"
            return "oom"
        except Exception as e:
            if expect is not None and isinstance(e, expect):
                return "signal"
            raise
        return "ok"

    def _load(self, op: Load):
        ps = self._alive(op.h)
        if ps is None:
            return False
        _, sig = self._access_plan(ps, op.addr, op.n, write=False)
        box: list = []
        if sig:
            exc = SegmentationFault if sig == "SIGSEGV" else BusError
            self.emit(f"expect_signal({exc.__name__}, p{op.h}.load, {op.addr:#x}, {op.n})")
            r = self._cpu(lambda: box.append(ps.proc.load(op.addr, op.n)), expect=exc)
            if r == "ok":
                got = describe_bytes(box[0])
                raise FuzzFailure("signal", f"load: expected {sig}, read {got}")
        else:
            self.emit(f"data = p{op.h}.load({op.addr:#x}, {op.n})")
            if self._cpu(lambda: box.append(ps.proc.load(op.addr, op.n))) == "ok":
                want = self.shadow_bytes(ps, op.addr, op.n)
                self.compare(box[0], want, f"load({op.addr:#x}, {op.n})", "data", small_assert=True)
        self.verify(ps, op.addr & ~(PAGE_SIZE - 1), _npages_of(op.addr, op.n))

    def _store(self, op: Store):
        ps = self._alive(op.h)
        if ps is None:
            return False
        data = fill(op.tag, op.n)
        done, sig = self._access_plan(ps, op.addr, op.n, write=True)
        if sig:
            exc = SegmentationFault if sig == "SIGSEGV" else BusError
            self.emit(
                f"expect_signal({exc.__name__}, p{op.h}.store, {op.addr:#x}, "
                f"fill({op.tag}, {op.n}))"
            )
            r = self._cpu(ps.proc.store, op.addr, data, expect=exc)
            if r == "ok":
                raise FuzzFailure("signal", f"store: expected {sig}, but it completed")
        else:
            self.emit(f"p{op.h}.store({op.addr:#x}, fill({op.tag}, {op.n}))")
            r = self._cpu(ps.proc.store, op.addr, data)
        if r == "oom":  # the chunks before the failed fault were stored, in order
            done = 0
            while done < op.n:
                chunk = min(PAGE_SIZE - ((op.addr + done) & (PAGE_SIZE - 1)), op.n - done)
                if peek(self.k, ps.proc, op.addr + done, chunk) != data[done : done + chunk]:
                    break
                done += chunk
        self._shadow_write(ps, op.addr, data[:done])
        self.verify(ps, op.addr & ~(PAGE_SIZE - 1), _npages_of(op.addr, op.n))

    def _shadow_write(self, ps: ProcState, addr: int, data: bytes) -> None:
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

    # the dmirror device
    def mirrors(self, h: int, minor: int) -> bool:
        """Does a live mirror of process h's mm on /dev/hmm_dmirror<minor> exist?"""
        ps = self.procs.get(h)
        if ps is None:
            return False
        return any(
            getattr(getattr(mni.ops, "mdevice", None), "minor", None) == minor
            for mni in ps.proc.mm.notifier_subscriptions
        )

    def _open(self, op: Open):
        ps = self._alive(op.h)
        if ps is None or op.fdh in self.fds:
            return False
        if self.mirrors(op.h, op.minor):
            # A second mirror of one mm on one device goes stale: each ignores the
            # MMU_NOTIFY_MIGRATE events of the other's migrations (owner == its
            # device), a use-after-free in lib/test_hmm.c. Not issued.
            self.stats["skipped_second_mirror"] += 1
            return False
        self.emit(f"fd{op.fdh} = p{op.h}.open('/dev/hmm_dmirror{op.minor}', O_RDWR)")
        fd = ps.proc.open(f"/dev/hmm_dmirror{op.minor}", O_RDWR)
        if fd < 0:
            raise FuzzFailure("errno", f"open: returned {fd}")
        self.emit(f"assert fd{op.fdh} >= 0, fd{op.fdh}")
        ps.fds[op.fdh] = fd
        self.fds[op.fdh] = FdState(op.minor, op.h)

    def _close(self, op: Close):
        ps = self._alive(op.h)
        if ps is None or op.fdh not in ps.fds:
            return False
        self.emit(f"ret = p{op.h}.close(fd{op.fdh})")
        ret = ps.proc.close(ps.fds.pop(op.fdh))
        self._expect_ret("close", ret, 0)
        self.sweep()

    def _owned_device_private(self, proc, addr: int, mdevice) -> bool:
        """Does the CPU map addr with a device-private entry of mdevice's memory?"""
        level, e = entry_at(proc, addr)
        swp = self.k.swp
        if level == "pmd" and e and not pmd_present(e):
            entry = swp.softleaf_from_pmd(e)
        elif level == "pte" and not pte_none(e) and not pte_present(e):
            entry = swp.softleaf_from_pte(e)
        else:
            return False
        if not swp.softleaf_is_device_private(entry):
            return False
        return page_pgmap(self.k.softleaf_to_page(entry)).owner is mdevice

    def dmirror_oops_hazard(self, h: int, fdh: int, cmd: str, addr: int, npages: int) -> bool:
        """Would this READ/WRITE crash the kernel in test_hmm itself?

        dmirror_fault() stores what hmm_range_fault() returns in the mirror's
        pt; for a device-private page of the mirror's own device (hmm reports
        those without faulting) that is the ZONE_DEVICE page itself, which has
        no linear mapping, and dmirror_do_read()/do_write() then memcpy through
        it: an oops in lib/test_hmm.c, a KernelOops in the model. It happens
        when some page from the first one that needs a fault to the end of the
        range is such a page. The fuzzer does not issue these.
        """
        ps = self.procs.get(h)
        f = self.fds.get(fdh)
        target = self.procs.get(f.opener) if f is not None else None
        if ps is None or target is None or fdh not in ps.fds or cmd not in ("READ", "WRITE"):
            return False
        d = ps.proc.fds[ps.fds[fdh]].private
        if d is None or not d.mdevice.is_private_zone():
            return False
        need = False
        for v in range(addr >> PAGE_SHIFT, (addr >> PAGE_SHIFT) + npages):
            e = d.pt.get(v)
            if e is None or (cmd == "WRITE" and e[1] != DPT_XA_TAG_WRITE):
                need = True
            if need and v in target.pages:
                if self._owned_device_private(target.proc, v << PAGE_SHIFT, d.mdevice):
                    return True
        return False

    def shared_thp_migrate_hazard(self, fdh: int, cmd: str, addr: int, npages: int) -> bool:
        """Would this MIGRATE_TO_DEV meet the suspected upstream VM_BUG_ON?

        A PMD-mapped THP that another mapping (a fork child) shares, migrated
        with order-0 fallback, leaves that mapping's PMD migration entry behind
        after migrate_vma_split_unmapped_folio() and trips
        VM_BUG_ON_FOLIO in remove_migration_pte() (see
        fuzz-findings/migrate-shared-thp-fallback-remaps-child-pmd.py). The
        fuzzer does not migrate ranges that hold such a THP.
        """
        f = self.fds.get(fdh)
        target = self.procs.get(f.opener) if f is not None else None
        if cmd != "MIGRATE_TO_DEV" or target is None:
            return False
        k = self.k
        block = addr & ~(HPAGE_NR * PAGE_SIZE - 1)
        while block < addr + npages * PAGE_SIZE:
            level, e = entry_at(target.proc, block)
            if level == "pmd" and e & _PAGE_PSE and pmd_present(e):
                pfn = pmd_pfn(e)
                shared = pfn != k.huge_zero_pfn and (
                    folio_mapcount(page_folio(k.mem.pfn_to_page(pfn))) > 1
                )
                if shared:
                    return True
            block += HPAGE_NR * PAGE_SIZE
        return False

    def _ioctl(self, op: Ioctl):
        ps = self._alive(op.h)
        if ps is None or op.fdh not in ps.fds:
            return False
        fd = ps.fds[op.fdh]
        target = self.procs.get(self.fds[op.fdh].opener)
        if target is None and op.cmd in ("READ", "WRITE"):
            # dmirror_fault() returns 0 when mmget_not_zero() fails, so READ and
            # WRITE through an fd whose opener exited spin forever, in the C too.
            self.stats["skipped_dead_mm"] += 1
            return False
        if self.dmirror_oops_hazard(op.h, op.fdh, op.cmd, op.addr, op.npages):
            self.stats["skipped_oops_hazard"] += 1
            return False
        if self.shared_thp_migrate_hazard(op.fdh, op.cmd, op.addr, op.npages):
            self.stats["skipped_upstream_hazard"] += 1
            return False
        req = IOCTLS[op.cmd]
        if op.cmd == "FAIL_ALLOC":
            self.emit(
                f"ret = p{op.h}.ioctl(fd{op.fdh}, HMM_DMIRROR_FLAGS, "
                f"hmm_dmirror_cmd(addr=0, npages=HMM_DMIRROR_FLAG_FAIL_ALLOC))"
            )
            ret = ps.proc.ioctl(fd, req, hmm_dmirror_cmd(npages=HMM_DMIRROR_FLAG_FAIL_ALLOC))
            # Linux 6.12 has no HMM_DMIRROR_FLAGS: an unknown command there
            self._expect_ret("FLAGS", ret, -EINVAL if self.k.config.kernel == "6.12" else 0)
            return
        n = op.npages
        size = n if op.cmd == "SNAPSHOT" else n * PAGE_SIZE
        if op.cmd == "WRITE":
            buf = np.frombuffer(fill(op.tag, size), dtype=np.uint8).copy()
            self.emit(f"buf = np.frombuffer(fill({op.tag}, {size:#x}), np.uint8).copy()")
        else:
            buf = np.zeros(size, dtype=np.uint8)
            self.emit(f"buf = np.zeros({size:#x}, np.uint8)")
        self.emit(
            f"ret = p{op.h}.ioctl(fd{op.fdh}, HMM_DMIRROR_{op.cmd}, "
            f"hmm_dmirror_cmd(addr={op.addr:#x}, ptr=buf, npages={n}))"
        )
        pending = self._fail_alloc_pending()
        ret = ps.proc.ioctl(fd, req, hmm_dmirror_cmd(addr=op.addr, ptr=buf, npages=n))
        injected = bool(pending) and self._injected(pending)
        if ret < 0:
            self.errnos[f"{op.cmd} {ret}"] += 1
        self.emit(f"assert ret == {ret}, ret")
        if target is None:  # the mirrored mm is gone: nothing to compare
            if op.cmd == "RELEASE":
                self.sweep()
            return
        first = op.addr >> PAGE_SHIFT
        pages = [target.pages.get(v) for v in range(first, first + n)]
        in_eof = all(pg is not None and pg.cell is not None for pg in pages)
        # What a successful command needs of the vma: MIGRATE_TO_DEV checks VM_READ
        # (its window loop), EXCLUSIVE GUPs with FOLL_WRITE; READ needs VM_READ only
        # for pages it must fault (pt entries left by EXCLUSIVE or a migration read
        # without one), so a successful READ only proves the pages are mapped.
        need = {"EXCLUSIVE": PROT_WRITE, "MIGRATE_TO_DEV": PROT_READ}.get(op.cmd, 0)
        allowed = in_eof and all(pg.prot & need == need for pg in pages)
        if op.cmd in ("READ", "MIGRATE_TO_DEV", "EXCLUSIVE"):
            if ret == 0:
                if not allowed:
                    raise FuzzFailure(
                        "errno", f"{op.cmd}: returned 0 over an unmapped or inaccessible page"
                    )
                want = self.shadow_bytes(target, op.addr, n * PAGE_SIZE)
                self.compare(buf, want, f"{op.cmd} buffer", "buf")
            elif (
                op.cmd == "READ"
                and allowed
                and not injected
                and all(pg.prot & PROT_READ for pg in pages)
            ):
                raise FuzzFailure(
                    "errno",
                    f"{op.cmd}: returned {ret} for a mapped readable range",
                    check=["assert ret == 0, ret"],
                )
            self.verify(target, op.addr, n)
        elif op.cmd == "WRITE":
            if ret == 0:
                if not (in_eof and all(pg.prot & PROT_WRITE for pg in pages)):
                    raise FuzzFailure(
                        "errno", "WRITE: returned 0 over an unmapped or read-only page"
                    )
                for i, pg in enumerate(pages):
                    pg.cell.data = buf[i * PAGE_SIZE : (i + 1) * PAGE_SIZE].tobytes()
            else:
                self._partial_write(target, op.addr, pages, buf)
            self.verify(target, op.addr, n)
        elif op.cmd == "SNAPSHOT":
            for i, pg in enumerate(pages if ret == 0 else ()):
                b = int(buf[i])
                readable = pg is not None and pg.prot & PROT_READ
                if not readable and b != HMM_DMIRROR_PROT_ERROR:
                    raise FuzzFailure(
                        "errno",
                        f"SNAPSHOT: {'unmapped' if pg is None else 'unreadable'} page {i} "
                        f"reported as {b:#x}, not HMM_DMIRROR_PROT_ERROR",
                        check=[f"assert buf[{i}] == 0xFF, buf"],
                    )
                # (a readable page may still read as ERROR: an unowned device-private
                # PMD entry does, known-bugs 14)
                if readable and b != HMM_DMIRROR_PROT_ERROR and b & HMM_DMIRROR_PROT_WRITE:
                    if not pg.prot & PROT_WRITE:
                        raise FuzzFailure(
                            "errno",
                            f"SNAPSHOT: page {i} reported writable ({b:#x}) in a read-only vma",
                            check=[f"assert not buf[{i}] & 0x02, buf"],
                        )
            self.verify(target, op.addr, n)
        elif op.cmd == "RELEASE":
            self.sweep()
        else:
            self.verify(target, op.addr, n)

    def _partial_write(self, target: ProcState, addr: int, pages, buf: np.ndarray) -> None:
        """A failed WRITE wrote a prefix of the range (dmirror_do_write goes in order)."""
        for i, pg in enumerate(pages):
            if pg is None or pg.cell is None:
                return
            try:
                got = peek_frame(self.k, target.proc, addr + i * PAGE_SIZE)
            except PeekError as e:
                raise FuzzFailure("data", str(e)) from None
            new = buf[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]
            if got is None or not np.array_equal(got, new):
                return
            pg.cell.data = new.tobytes()

    def _set_thp(self, op: SetThp):
        self.emit(f"k.thp_enabled = {op.mode!r}")
        self.k.thp_enabled = op.mode

    # --- checks --------------------------------------------------------------------------------
    def compare(self, got, want: bytes, what: str, var: str, small_assert: bool = False) -> None:
        g = np.frombuffer(bytes(got), dtype=np.uint8) if not isinstance(got, np.ndarray) else got
        w = np.frombuffer(want, dtype=np.uint8)
        self.bytes_checked += w.size
        if g.size == w.size and np.array_equal(g, w):
            if small_assert and w.size <= 64:
                self.emit(f"assert {var} == bytes.fromhex({want.hex()!r}), {var}")
            return
        bad = int(np.count_nonzero(g != w)) if g.size == w.size else w.size
        first = int(np.flatnonzero(g != w)[0]) if g.size == w.size else 0
        f = FuzzFailure(
            "data",
            f"{what}: {bad} of {w.size} bytes differ, first at +{first:#x}; "
            f"expected {describe_bytes(w)}; got {describe_bytes(g)}",
            check=[f"expect_bytes({var}, {_literal(want)}, {what!r})"],
        )
        f.bytes_lost = bad
        raise f

    def verify(self, ps: ProcState, addr: int, npages: int) -> None:
        """Compare the pages of [addr, +npages) with the shadow, reading without faults.

        The same reading as peek_frame(), but walking each PMD once and the PTEs
        of a table as one array (sweeps cover every mapped page).
        """
        k = self.k
        mm = ps.proc.mm
        words = k.mem.ram.words
        pages = ps.pages
        end = addr + npages * PAGE_SIZE
        while addr < end:
            blk_end = min((addr | (HPAGE_NR * PAGE_SIZE - 1)) + 1, end)
            pmdp = pmd_offset(mm, addr)
            pmd = 0 if pmdp is None else int(words[pmdp >> PAGE_SHIFT, (pmdp >> 3) & 511])
            if pmd and pmd & _PAGE_PSE or pmd and not pmd & _PAGE_PRESENT:
                for a in range(addr, blk_end, PAGE_SIZE):  # huge page or PMD softleaf
                    pg = pages.get(a >> PAGE_SHIFT)
                    if pg is not None and pg.cell is not None:
                        self._verify_page(ps, a, pg, None)
            elif pmd:
                i0 = (addr >> PAGE_SHIFT) & (HPAGE_NR - 1)
                ptes = words[table_entry_pfn(pmd), i0 : i0 + ((blk_end - addr) >> PAGE_SHIFT)]
                for j, e in enumerate(ptes.tolist()):
                    a = addr + (j << PAGE_SHIFT)
                    pg = pages.get(a >> PAGE_SHIFT)
                    if pg is None or pg.cell is None:
                        continue
                    if pte_none(e):
                        self._verify_page(ps, a, pg, _NONE if pg.obj is None else None)
                    elif pte_present(e):
                        self._verify_page(ps, a, pg, k.mem.frame(pte_pfn(e)))
                    else:
                        self._verify_page(ps, a, pg, None)
            else:
                for a in range(addr, blk_end, PAGE_SIZE):
                    pg = pages.get(a >> PAGE_SHIFT)
                    if pg is not None and pg.cell is not None:
                        self._verify_page(ps, a, pg, _NONE if pg.obj is None else None)
            addr = blk_end

    def verify_slow(self, ps: ProcState, addr: int, npages: int) -> None:
        """verify() page by page through peek_frame() (the specification of verify)."""
        for v in range(addr >> PAGE_SHIFT, (addr >> PAGE_SHIFT) + npages):
            pg = ps.pages.get(v)
            if pg is not None and pg.cell is not None:
                self._verify_page(ps, v << PAGE_SHIFT, pg, None)

    def _verify_page(self, ps: ProcState, a: int, pg: PageState, got) -> None:
        """Compare one page; got is its frame, _NONE for zeros, None to peek_frame()."""
        if got is None:
            try:
                got = peek_frame(self.k, ps.proc, a)
            except PeekError as e:
                raise FuzzFailure(
                    "data", f"p{ps.h}: {e}", check=[f"peek(k, p{ps.h}, {a:#x}, {PAGE_SIZE})"]
                ) from None
            if got is None:
                got = _NONE
        want = pg.cell.data
        self.bytes_checked += PAGE_SIZE
        if want is None:
            if got is _NONE or not got.any():
                return
            bad = int(np.count_nonzero(got))
        else:
            if got is not _NONE and got.tobytes() == want:
                return
            w = np.frombuffer(want, dtype=np.uint8)
            bad = int(np.count_nonzero(w)) if got is _NONE else int(np.count_nonzero(got != w))
        exp = want if want is not None else bytes(PAGE_SIZE)
        have = bytes(PAGE_SIZE) if got is _NONE else got
        f = FuzzFailure(
            "data",
            f"p{ps.h} page {a:#x}: {bad} bytes differ; expected "
            f"{describe_bytes(exp)}; memory holds {describe_bytes(have)}",
            check=[
                f"expect_bytes(peek(k, p{ps.h}, {a:#x}, {PAGE_SIZE:#x}), {_literal(exp)}, "
                f"'p{ps.h} memory at {a:#x}')"
            ],
        )
        f.bytes_lost = bad
        raise f

    def sweep(self, procs: Iterable[ProcState] | None = None) -> None:
        """verify() every mapped page of the given (default: all) processes."""
        for ps in list(procs if procs is not None else self.procs.values()):
            keys = ps.keys()
            i = 0
            while i < len(keys):  # runs of consecutive pages
                j = i
                while j + 1 < len(keys) and keys[j + 1] == keys[j] + 1:
                    j += 1
                self.verify(ps, keys[i] << PAGE_SHIFT, j - i + 1)
                i = j + 1

    def check(self, sweep: bool = True) -> None:
        """A check point: the invariant checker, warnings, and (sweep) all memory."""
        self.emit("ok()")
        problems = check_invariants(self.k, raise_on_error=False)
        self.stats["invariant_checks"] += 1
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            f = FuzzFailure("invariant", problems[0] + more)
            f.step = self.steps - 1
            raise f
        self.check_warnings()
        if sweep:
            self.stats["sweeps"] += 1
            self.sweep()


_HANDLERS: dict[type, Callable] = {
    Spawn: World._spawn,
    Fork: World._fork,
    Exit: World._exit,
    Mmap: World._mmap,
    Munmap: World._munmap,
    Mprotect: World._mprotect,
    Mremap: World._mremap,
    Madvise: World._madvise,
    Load: World._load,
    Store: World._store,
    Open: World._open,
    Close: World._close,
    Ioctl: World._ioctl,
    SetThp: World._set_thp,
}


def _npages_of(addr: int, n: int) -> int:
    return (((addr + n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)) - (addr & ~(PAGE_SIZE - 1))) >> (
        PAGE_SHIFT
    )


def _literal(data: bytes) -> str:
    """A Python expression for data: compact for zeros and short buffers."""
    if not any(data):
        return f"bytes({len(data)})"
    if len(data) <= 64:
        return f"bytes.fromhex({data.hex()!r})"
    enc = base64.b85encode(zlib.compress(data, 9)).decode()
    parts = [enc[i : i + 88] for i in range(0, len(enc), 88)]
    return "blob(\n    " + "\n    ".join(repr(p) for p in parts) + "\n)"


# --- the random driver ---------------------------------------------------------------------
#: Relative weights of the operation kinds the generator picks.
WEIGHTS = {
    "load": 18,
    "store": 18,
    "mmap": 8,
    "munmap": 3,
    "mprotect": 4,
    "mremap": 4,
    "madvise": 5,
    "fork": 1.5,
    "exit": 1.0,
    "spawn": 0.4,
    "open": 2.0,
    "close": 0.6,
    "ioctl": 26,
    "thp": 0.5,
}
IOCTL_WEIGHTS = {
    "READ": 5,
    "WRITE": 5,
    "MIGRATE_TO_DEV": 8,
    "MIGRATE_TO_SYS": 4,
    "EXCLUSIVE": 3,
    "CHECK_EXCLUSIVE": 1,
    "SNAPSHOT": 2,
    "RELEASE": 0.3,
    "FAIL_ALLOC": 0.7,
}
_PROTS = (PROT_READ | PROT_WRITE, PROT_READ, PROT_NONE, PROT_WRITE)
_PROT_WEIGHTS = (70, 14, 10, 6)


class Generator:
    """Picks the next operation from the World's current state with a seeded Random.

    Addresses are mostly chosen near pages that are already mapped (in the
    process, or for an ioctl in the process the fd mirrors), so that ranges
    straddle vma edges, holes and THP boundaries; sizes are 1..64 pages with
    occasional whole 2 MiB-aligned PMD ranges.
    """

    def __init__(self, world: World, rng: random.Random, *, shared_anon: float = 0.15) -> None:
        self.w = world
        self.rng = rng
        self.shared_anon = shared_anon
        self.next_h = 0
        self.next_fdh = 0
        self.tag = 0
        self.pending: list = []
        self.kinds = list(WEIGHTS)
        self.kind_w = list(WEIGHTS.values())
        self.cmds = list(IOCTL_WEIGHTS)
        self.cmd_w = list(IOCTL_WEIGHTS.values())

    def _tag(self) -> int:
        self.tag += 1
        return self.tag

    def next(self):
        if self.pending:
            return self.pending.pop(0)
        if not self.w.procs:
            self.next_h += 1
            return Spawn(self.next_h - 1)
        kind = self.rng.choices(self.kinds, self.kind_w)[0]
        return self.make(kind)

    def make(self, kind: str):
        """An operation of the given kind (or a fallback when it cannot apply)."""
        rng = self.rng
        w = self.w
        if not w.procs:
            self.next_h += 1
            return Spawn(self.next_h - 1)
        h = rng.choice(sorted(w.procs))
        ps = w.procs[h]
        if kind in ("load", "store"):
            if not ps.pages:
                return self._mmap(ps)
            vpn = self._near(ps)
            r = rng.random()
            if r < 0.6:
                n = rng.randint(1, 64)
            elif r < 0.85:
                n = rng.randint(1, PAGE_SIZE)
            else:
                n = rng.randint(PAGE_SIZE // 2, 2 * PAGE_SIZE)
            off = rng.randrange(PAGE_SIZE) if n < PAGE_SIZE else rng.choice((0, rng.randrange(64)))
            addr = (vpn << PAGE_SHIFT) + min(off, PAGE_SIZE - 1)
            return Load(h, addr, n) if kind == "load" else Store(h, addr, n, self._tag())
        if kind == "mmap":
            return self._mmap(ps)
        if kind in ("munmap", "mprotect", "madvise"):
            if not ps.pages:
                return self._mmap(ps)
            addr, n = self._range(ps)
            if kind == "munmap":
                return Munmap(h, addr, n)
            if kind == "mprotect":
                return Mprotect(h, addr, n, rng.choices(_PROTS, _PROT_WEIGHTS)[0])
            adv = rng.choices((MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE), (50, 35, 15))[0]
            return Madvise(h, addr, n, adv)
        if kind == "mremap":
            return self._mremap(ps)
        if kind == "fork":
            if len(w.procs) >= MAX_PROCS:
                return self.make("exit")
            self.next_h += 1
            return Fork(h, self.next_h - 1)
        if kind == "exit":
            if len(w.procs) <= 1:
                return self.make("fork")
            kids = [x for x, p in w.procs.items() if p.parent is not None]
            return Exit(rng.choice(kids) if kids and rng.random() < 0.8 else h)
        if kind == "spawn":
            if len(w.procs) >= MAX_PROCS:
                return self.make("mmap")
            self.next_h += 1
            return Spawn(self.next_h - 1)
        if kind == "open":
            free = [m for m in range(DEVICES) if not w.mirrors(h, m)]
            if not free:
                return self.make("ioctl") if ps.fds else self.make("mmap")
            self.next_fdh += 1
            return Open(h, self.next_fdh - 1, rng.choice(free))
        if kind == "close":
            if not ps.fds:
                return self.make("open")
            return Close(h, rng.choice(sorted(ps.fds)))
        if kind == "ioctl":
            return self._ioctl(h, ps)
        if kind == "thp":
            return SetThp(rng.choice(THP_MODES))
        raise ValueError(f"unknown operation kind {kind!r}")

    # --- pieces ------------------------------------------------------------------------------
    def _near(self, ps: ProcState) -> int:
        """A page number near (usually at) a mapped page of ps, or anywhere in the arena."""
        rng = self.rng
        keys = ps.keys()
        if keys and rng.random() < 0.9:
            vpn = rng.choice(keys)
            if rng.random() < 0.15:
                vpn += rng.choice((-2, -1, 1, 2))
            return vpn
        return (ARENA_BASE >> PAGE_SHIFT) + rng.randrange(ARENA_PAGES)

    def _range(self, ps: ProcState) -> tuple[int, int]:
        rng = self.rng
        vpn = self._near(ps)
        r = rng.random()
        if r < 0.12:  # a whole PMD
            return (vpn & ~(HPAGE_NR - 1)) << PAGE_SHIFT, HPAGE_NR
        if r < 0.35:
            n = 1
        elif r < 0.7:
            n = rng.randint(2, 8)
        else:
            n = rng.randint(9, 64)
        if rng.random() < 0.3:
            vpn -= rng.randrange(n)
        return vpn << PAGE_SHIFT, n

    def _arena_addr(self, npages: int, pmd_aligned: bool = False) -> int:
        rng = self.rng
        if pmd_aligned:
            return ARENA_BASE + rng.randrange(ARENA_PMDS - npages // HPAGE_NR + 1) * HPAGE_NR * (
                PAGE_SIZE
            )
        return ARENA_BASE + rng.randrange(ARENA_PAGES - npages + 1) * PAGE_SIZE

    def _mmap(self, ps: ProcState):
        rng = self.rng
        if len(ps.pages) > MAX_MAPPED_PAGES:
            addr, n = self._range(ps)
            return Munmap(ps.h, addr, max(n, 64))
        shared = rng.random() < self.shared_anon
        populate = rng.random() < 0.08
        if rng.random() < 0.2:  # a THP-sized region, usually MADV_HUGEPAGE'd right away
            n = rng.choice((HPAGE_NR, HPAGE_NR, 2 * HPAGE_NR))
            addr = self._arena_addr(n, pmd_aligned=True)
            if rng.random() < 0.6:
                self.pending.append(Madvise(ps.h, addr, n, MADV_HUGEPAGE))
            mode = "fixed" if rng.random() < 0.85 else "noreplace"
            return Mmap(ps.h, addr, n, PROT_READ | PROT_WRITE, shared, mode, populate)
        n = rng.randint(1, 64) if rng.random() < 0.8 else rng.randint(1, 8)
        keys = ps.keys()
        if keys and rng.random() < 0.5:  # next to an existing mapping
            v = rng.choice(keys)
            addr = (v + 1 if rng.random() < 0.5 else v - n) << PAGE_SHIFT
        else:
            addr = self._arena_addr(n)
        mode = rng.choices(("fixed", "noreplace", "hint"), (65, 20, 15))[0]
        prot = rng.choices(_PROTS, _PROT_WEIGHTS)[0]
        return Mmap(ps.h, addr, n, prot, shared, mode, populate)

    def _mremap(self, ps: ProcState):
        rng = self.rng
        if not ps.pages:
            return self._mmap(ps)
        addr, n = self._range(ps)
        r = rng.random()
        if r < 0.2 and n > 1:
            return Mremap(ps.h, addr, n, rng.randint(1, n - 1))
        if r < 0.45:
            return Mremap(ps.h, addr, n, n + rng.randint(1, 64), rng.choice((0, MREMAP_MAYMOVE)))
        if r < 0.85:
            new_n = n if rng.random() < 0.7 else rng.randint(1, n + 16)
            dest = self._arena_addr(new_n, pmd_aligned=n == HPAGE_NR and new_n == n)
            return Mremap(ps.h, addr, n, new_n, MREMAP_MAYMOVE | MREMAP_FIXED, dest)
        return Mremap(ps.h, addr, n, n, MREMAP_MAYMOVE | MREMAP_DONTUNMAP)

    def _ioctl(self, h: int, ps: ProcState):
        rng = self.rng
        w = self.w
        if not ps.fds:
            return self.make("open")
        fdh = rng.choice(sorted(ps.fds))
        target = w.procs.get(w.fds[fdh].opener)
        cmd = rng.choices(self.cmds, self.cmd_w)[0]
        if target is None:
            if cmd in ("READ", "WRITE"):
                cmd = "MIGRATE_TO_SYS"
            return Ioctl(h, fdh, cmd, ARENA_BASE, 1)
        if cmd in ("RELEASE", "FAIL_ALLOC"):
            return Ioctl(h, fdh, cmd)
        if not target.pages:
            addr, n = self._arena_addr(1), 1
        else:
            addr, n = self._range(target)
        if w.dmirror_oops_hazard(h, fdh, cmd, addr, n):
            cmd = "MIGRATE_TO_SYS"  # bring the pages home instead (see dmirror_oops_hazard)
        return Ioctl(h, fdh, cmd, addr, n, self._tag() if cmd == "WRITE" else 0)


# --- running, shrinking, reporting ----------------------------------------------------------
@dataclass
class SeqResult:
    """One executed sequence: its operations and, if it failed, the failure."""

    cfg: SeqConfig
    ops: list
    failure: FuzzFailure | None = None
    checks: int = 0
    world: World | None = None


def execute(
    cfg: SeqConfig,
    ops: list,
    *,
    check_every: int = 0,
    check_from: int = 0,
    final_check: bool = True,
    record: bool = False,
) -> SeqResult:
    """Replay ops on a fresh World; stop at the first failure.

    check_every: run World.check() after every that many steps (0: only at
    the end); check_from: no check points before this step.
    """
    w = World(cfg, record=record)
    res = SeqResult(cfg, list(ops), world=w)
    i = -1
    try:
        for i, op in enumerate(ops):
            try:
                w.apply(op)
            except FuzzFailure as f:
                f.step = i
                raise
            if check_every and i >= check_from and (i + 1) % check_every == 0:
                try:
                    w.check()
                except FuzzFailure as f:
                    f.step = i
                    raise
        if final_check and not (check_every and len(ops) % check_every == 0 and ops):
            try:
                w.check()
            except FuzzFailure as f:
                f.step = i
                raise
    except FuzzFailure as f:
        res.failure = f
    res.checks = w.stats["invariant_checks"]
    return res


def localise(cfg: SeqConfig, ops: list, failure: FuzzFailure, last_good: int) -> list:
    """Cut ops at the first step after last_good whose check point fails."""
    if failure.kind not in ("invariant", "data") or failure.step is None:
        return ops[: (failure.step or 0) + 1]
    r = execute(cfg, ops[: failure.step + 1], check_every=1, check_from=last_good + 1)
    f = r.failure
    if f is not None and f.step is not None:
        return ops[: f.step + 1]
    return ops[: failure.step + 1]


def shrink(
    cfg: SeqConfig,
    ops: list,
    signature: str,
    *,
    deadline: float | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list:
    """Delta debugging (ddmin) over the operation list, then one-at-a-time removal.

    A candidate "still fails" when replaying it (with a check at the end)
    fails with the same signature. Stops early at `deadline` (time.monotonic).
    """
    cache: dict[tuple, bool] = {}

    def fails(cand: list) -> bool:
        key = tuple(cand)
        if key not in cache:
            r = execute(cfg, cand, check_every=0, final_check=True)
            cache[key] = r.failure is not None and r.failure.signature == signature
        return cache[key]

    def out_of_time() -> bool:
        return deadline is not None and time.monotonic() > deadline

    cur = list(ops)
    n = 2
    while len(cur) >= 2 and not out_of_time():
        size = max(1, len(cur) // n)
        chunks = [cur[i : i + size] for i in range(0, len(cur), size)]
        reduced = False
        for i in range(len(chunks)):
            if out_of_time():
                break
            comp = [op for j, c in enumerate(chunks) if j != i for op in c]
            if comp and fails(comp):
                cur = comp
                n = max(n - 1, 2)
                reduced = True
                if on_progress:
                    on_progress(len(cur))
                break
        if not reduced:
            if n >= len(cur):
                break
            n = min(len(cur), n * 2)

    def one_minimal(cur: list) -> list:
        changed = True
        while changed and not out_of_time():  # 1-minimality, last to first
            changed = False
            for i in range(len(cur) - 1, -1, -1):
                if out_of_time():
                    break
                cand = cur[:i] + cur[i + 1 :]
                if cand and fails(cand):
                    cur = cand
                    changed = True
                    if on_progress:
                        on_progress(len(cur))
        return cur

    cur = one_minimal(cur)
    while not out_of_time():  # merge processes and fds, then minimise again
        cand = next((c for c in _merged(cur) if fails(c)), None)
        if cand is None:
            break
        cur = one_minimal(cand)
        if on_progress:
            on_progress(len(cur))
    while not out_of_time():  # smaller ranges and accesses
        cand = next((c for c in _smaller(cur) if not out_of_time() and fails(c)), None)
        if cand is None:
            break
        cur = cand
    return cur


def _merged(ops: list):
    """Candidates with one process (or fd) handle folded into another.

    Removing a Fork (or Spawn, Open) alone also drops every later operation
    of its handle, so ddmin cannot remove it; folding the handle into the
    parent (an earlier process, an fd of the same device) can.
    """
    for i, op in enumerate(ops):
        if isinstance(op, Fork):
            yield [_rehandle(o, {op.child: op.h}) for j, o in enumerate(ops) if j != i]
        elif isinstance(op, Spawn):
            first = next((o.h for o in ops[:i] if isinstance(o, Spawn)), None)
            if first is not None:
                yield [_rehandle(o, {op.h: first}) for j, o in enumerate(ops) if j != i]
        elif isinstance(op, Open):
            other = next(
                (o.fdh for o in ops[:i] if isinstance(o, Open) and o.minor == op.minor), None
            )
            if other is not None:
                yield [_rehandle(o, {}, {op.fdh: other}) for j, o in enumerate(ops) if j != i]


def _smaller(ops: list):
    """Candidates with one operation's page or byte count cut to 1 or halved."""
    for i, op in enumerate(ops):
        for name in ("npages", "n", "old_npages", "new_npages"):
            v = getattr(op, name, None)
            if (
                not isinstance(v, int)
                or v <= 1
                or (isinstance(op, Ioctl) and op.cmd == "FAIL_ALLOC")
            ):
                continue
            for smaller in sorted({1, v // 2}):
                yield ops[:i] + [replace(op, **{name: smaller})] + ops[i + 1 :]


def _rehandle(op, procs: dict, fds: dict | None = None):
    """op with process handles (and fd handles) renamed."""
    changes = {}
    for name in ("h", "child"):
        v = getattr(op, name, None)
        if v is not None and v in procs:
            changes[name] = procs[v]
    v = getattr(op, "fdh", None)
    if fds and v in fds:
        changes["fdh"] = fds[v]
    return replace(op, **changes) if changes else op


_SCRIPT_HEAD = '''\
#!/usr/bin/env python3
# ruff: noqa: F401, E501  (generated: every replay script imports the whole vocabulary)
"""hmmsim fuzz replay: {title}

{meta}
Run it with the Python that has hmmsim installed: it exits non-zero (an
AssertionError, an exception from the model, or an InvariantViolation) while
the failure reproduces, and prints "no failure reproduced" once it is fixed.
"""

import base64
import zlib

import numpy as np

from hmmsim.drivers.test_hmm import hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_CHECK_EXCLUSIVE,
    HMM_DMIRROR_EXCLUSIVE,
    HMM_DMIRROR_FLAG_FAIL_ALLOC,
    HMM_DMIRROR_FLAGS,
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_MIGRATE_TO_SYS,
    HMM_DMIRROR_READ,
    HMM_DMIRROR_RELEASE,
    HMM_DMIRROR_SNAPSHOT,
    HMM_DMIRROR_WRITE,
    hmm_dmirror_cmd,
)
from hmmsim.include.mman import (
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_FIXED_NOREPLACE,
    MAP_POPULATE,
    MAP_PRIVATE,
    MAP_SHARED,
    MREMAP_DONTUNMAP,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    O_RDWR,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.kernel import Kernel
from hmmsim.testing.invariants import check_invariants
from hmmsim.userspace import BusError, OutOfMemory, SegmentationFault
{peek_import}
ALLOWED_WARNINGS = {allowed!r}


def fill(tag, n):
    """n bytes of little-endian words (tag << 32) | index, as the fuzzer wrote them."""
    words = np.arange((n + 7) // 8, dtype=np.uint64) | np.uint64((tag & 0xFFFFFFFF) << 32)
    return words.view(np.uint8)[:n].tobytes()


def blob(*parts):
    return zlib.decompress(base64.b85decode("".join(parts)))


def expect_bytes(got, want, what):
    got = bytes(got)
    if got != want:
        diff = [i for i in range(min(len(got), len(want))) if got[i] != want[i]]
        first = diff[0] if diff else min(len(got), len(want))
        raise AssertionError(
            f"{{what}}: {{len(diff)}} of {{len(want)}} bytes differ, first at +{{first:#x}}: "
            f"expected {{want[first:first + 16].hex()}} got {{got[first:first + 16].hex()}}"
        )


def expect_signal(exc, fn, *args):
    try:
        fn(*args)
    except exc:
        return
    raise AssertionError(f"{{fn.__name__}}{{args!r:.60}} did not raise {{exc.__name__}}")


def warnings_ok():
    bad = [w.msg for w in k.warnings if w.msg not in ALLOWED_WARNINGS]
    assert not bad, f"unexpected kernel warnings: {{bad}}"


def ok():
    check_invariants(k)
    warnings_ok()


k = {kernel}
hmm_dmirror_init(k)
k.thp_enabled = {thp!r}
'''


def replay_script(cfg: SeqConfig, ops: list, *, title: str = "", meta: str = "") -> str:
    """A standalone Python file that replays ops through the Process API.

    The sequence is executed once more with recording on (a check point
    after every step, so the script checks after every step too); the
    failing step's own check is appended after its lines.
    """
    r = execute(cfg, ops, check_every=1, record=True)
    w = r.world
    lines = list(w.lines or [])
    if r.failure is not None:
        lines += [f"# the failure: {r.failure}".replace("\n", " ")[:400]] + r.failure.check
        title = title or r.failure.signature
    needs_peek = any("peek(" in ln for ln in lines)
    head = _SCRIPT_HEAD.format(
        title=title or "no failure",
        meta=meta or f"Configuration: {cfg.label()}; {len(ops)} operations.",
        peek_import="from hmmsim.testing.fuzz import peek\n" if needs_peek else "",
        allowed=ALLOWED_WARNINGS,
        kernel=cfg.kernel_source(),
        thp=cfg.thp,
    )
    body = "\n".join(lines)
    return f'{head}\n{body}\n\nprint("replay finished: no failure reproduced")\n'


@dataclass
class Violation:
    """A failing sequence, shrunk, with its replay script."""

    signature: str
    message: str
    cfg: SeqConfig
    sequence: int
    seed: int
    original_steps: int
    ops: list
    script: str
    bytes_lost: int = 0
    reproduced: bool = True
    count: int = 1

    def to_json(self) -> dict:
        return {
            "signature": self.signature,
            "sequences_failing": self.count,
            "message": self.message,
            "config": self.cfg.label(),
            "sequence": self.sequence,
            "sequence_seed": self.seed,
            "original_steps": self.original_steps,
            "shrunk_steps": len(self.ops),
            "operations": [str(op) for op in self.ops],
            "bytes_lost": self.bytes_lost,
            "reproduced_on_replay": self.reproduced,
        }


@dataclass
class FuzzReport:
    """What `run_fuzz` did and found."""

    seed: int
    steps: int = 0
    sequences: int = 0
    seconds: float = 0.0
    checks: int = 0
    sweeps: int = 0
    check_every: int = 0
    sweep_every: int = 0
    bytes_checked: int = 0
    bytes_lost: int = 0
    expected_warnings: int = 0
    failing_sequences: int = 0
    ops: Counter = field(default_factory=Counter)
    errnos: Counter = field(default_factory=Counter)
    configs: Counter = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    bugs: frozenset = frozenset()

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict:
        return {
            "seed": self.seed,
            "steps": self.steps,
            "sequences": self.sequences,
            "seconds": round(self.seconds, 3),
            "steps_per_second": round(self.steps_per_second, 1),
            "invariant_checks": self.checks,
            "check_every": self.check_every,
            "sweeps": self.sweeps,
            "sweep_every": self.sweep_every,
            "bytes_checked": self.bytes_checked,
            "bytes_lost": self.bytes_lost,
            "expected_warnings": self.expected_warnings,
            "operations": dict(sorted(self.ops.items())),
            "errnos": dict(sorted(self.errnos.items())),
            "configs": dict(sorted(self.configs.items())),
            "failing_sequences": self.failing_sequences,
            "violations": [v.to_json() for v in self.violations],
        }


def _seq_seed(seed: int, index: int) -> int:
    return random.Random(f"hmmsim-fuzz/{seed}/{index}").getrandbits(63)


def run_fuzz(
    steps: int,
    seed: int = 0,
    *,
    configs: list[tuple[frozenset, str | None]] | None = None,
    sequence_steps: int = DEFAULT_SEQUENCE_STEPS,
    check_every: int = DEFAULT_CHECK_EVERY,
    sweep_every: int = DEFAULT_SWEEP_EVERY,
    shrink_seconds: float = 300.0,
    max_violations: int = 1,
    on_progress: Callable[[int, FuzzReport], None] | None = None,
    ram_bytes: int = DEFAULT_RAM,
    shared_anon: float = 0.15,
    bugs: frozenset = frozenset(),
    kernel: str = "mainline",
) -> FuzzReport:
    """Run `steps` generated operations in sequences of `sequence_steps`.

    configs: the (features, conflict_resolution) pairs to sample from per
    sequence (default: every buildable one). check_every: steps between
    invariant checks (1: after every step); sweep_every: steps between
    comparisons of every mapped page with the shadow (each operation's own
    range is compared after every step regardless). Both also run after the
    last step of each sequence. Each
    failing sequence is localised, shrunk (for at most shrink_seconds) and
    turned into a replay script (a failure with the signature of one already
    found is only counted); the run stops after max_violations failing
    sequences.
    shared_anon: probability that a generated mmap is MAP_SHARED.
    bugs: known-bug mutants to put back in every sequence's Kernel.
    kernel: the KConfig.kernel profile of every sequence ("mainline", "6.12").
    """
    configs = configs or feature_configs(kernel)
    rep = FuzzReport(seed=seed, check_every=check_every, sweep_every=sweep_every)
    rep.bugs = frozenset(bugs)
    if on_progress:  # the caller holds the live report from the start (Ctrl-C)
        on_progress(0, rep)
    master = random.Random(seed)
    t0 = time.perf_counter()
    index = 0
    while rep.steps < steps and rep.failing_sequences < max_violations:
        fs, cr = configs[master.randrange(len(configs))]
        cfg = SeqConfig(
            frozenset(fs), cr, master.choice(THP_MODES), ram_bytes, frozenset(bugs), kernel
        )
        sseed = _seq_seed(seed, index)
        n = min(sequence_steps, steps - rep.steps)
        w = World(cfg)
        gen = Generator(w, random.Random(sseed), shared_anon=shared_anon)
        ops: list = []
        failure = None
        last_check = last_sweep = -1
        for i in range(n):
            op = gen.next()
            ops.append(op)
            try:
                w.apply(op)
                sweep = (i + 1) % sweep_every == 0 or i == n - 1
                if sweep or (i + 1) % check_every == 0:
                    w.check(sweep=sweep)
                    last_check = i
                    last_sweep = i if sweep else last_sweep
            except FuzzFailure as f:
                f.step = i
                failure = f
                break
            if on_progress and (i + 1) % 50 == 0:
                on_progress(rep.steps + i + 1, rep)
        rep.steps += len(ops)
        rep.sequences += 1
        rep.checks += w.stats["invariant_checks"]
        rep.sweeps += w.stats["sweeps"]
        rep.bytes_checked += w.bytes_checked
        rep.expected_warnings += w.expected_warnings
        rep.configs[cfg.label()] += 1
        rep.ops.update(
            {k: v for k, v in w.stats.items() if k not in ("invariant_checks", "sweeps")}
        )
        rep.errnos.update(w.errnos)
        if failure is not None:
            rep.bytes_lost += failure.bytes_lost
            rep.failing_sequences += 1
            seen = next((v for v in rep.violations if v.signature == failure.signature), None)
            if seen is not None:  # the same failure again: counted, not shrunk again
                seen.count += 1
            else:
                good = last_check if failure.kind == "invariant" else last_sweep
                try:
                    v = _make_violation(cfg, ops, failure, good, index, sseed, shrink_seconds)
                except KeyboardInterrupt:
                    # Ctrl-C while localising or shrinking: keep the failing
                    # sequence as it ran, so the report still has it
                    rep.violations.append(_unshrunk_violation(cfg, ops, failure, index, sseed))
                    raise
                rep.violations.append(v)
        index += 1
        if on_progress:
            on_progress(rep.steps, rep)
    rep.seconds = time.perf_counter() - t0
    return rep


def _unshrunk_violation(cfg, ops, failure, index, sseed) -> Violation:
    """A failing sequence as it ran, neither shrunk nor replayed (the run was
    interrupted before `_make_violation` finished)."""
    meta = (
        f"Found by `hmmsim fuzz` (sequence {index}, sequence seed {sseed}) with "
        f"{cfg.label()}; interrupted before shrinking: all {len(ops)} operations.\n"
        f"Failure: {failure}".replace('"""', "'''")
    )
    return Violation(
        signature=failure.signature,
        message=str(failure),
        cfg=cfg,
        sequence=index,
        seed=sseed,
        original_steps=len(ops),
        ops=list(ops),
        script=replay_script(cfg, list(ops), meta=meta),
        bytes_lost=failure.bytes_lost,
        reproduced=False,
    )


def _make_violation(cfg, ops, failure, last_good, index, sseed, shrink_seconds) -> Violation:
    """Localise, shrink and script one failing sequence."""
    cut = localise(cfg, ops, failure, last_good)
    r = execute(cfg, cut, check_every=0)
    reproduced = r.failure is not None
    shrunk = cut
    if reproduced:
        shrunk = shrink(cfg, cut, r.failure.signature, deadline=time.monotonic() + shrink_seconds)
    meta = (
        f"Found by `hmmsim fuzz` (sequence {index}, sequence seed {sseed}) with "
        f"{cfg.label()}; shrunk from {len(ops)} to {len(shrunk)} operations.\n"
        f"Failure: {failure}".replace('"""', "'''")
    )
    if not reproduced:
        meta += "\nWARNING: replaying the sequence did not reproduce the failure."
    final = execute(cfg, shrunk, check_every=0).failure if reproduced else None
    return Violation(
        signature=failure.signature,
        message=str(final or failure),
        cfg=cfg,
        sequence=index,
        seed=sseed,
        original_steps=len(ops),
        ops=shrunk,
        script=replay_script(cfg, shrunk, meta=meta),
        bytes_lost=failure.bytes_lost,
        reproduced=reproduced,
    )


__all__ = [
    "ALLOWED_WARNINGS",
    "ARENA_BASE",
    "Close",
    "Exit",
    "Fork",
    "Ioctl",
    "Load",
    "Madvise",
    "Mmap",
    "Mprotect",
    "Mremap",
    "Munmap",
    "Open",
    "SetThp",
    "Spawn",
    "Store",
    "THP_MODES",
    "WEIGHTS",
    "FuzzFailure",
    "FuzzReport",
    "Generator",
    "SeqConfig",
    "Violation",
    "World",
    "execute",
    "feature_configs",
    "fill",
    "peek",
    "peek_frame",
    "replay_script",
    "run_fuzz",
    "shrink",
]

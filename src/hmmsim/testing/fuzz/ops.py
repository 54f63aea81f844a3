"""The fuzzer's vocabulary: workload geometry, the operations, sequence configurations, failures."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from hmmsim.drivers.test_hmm import hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_CHECK_EXCLUSIVE,
    HMM_DMIRROR_EXCLUSIVE,
    HMM_DMIRROR_FLAGS,
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_MIGRATE_TO_SYS,
    HMM_DMIRROR_READ,
    HMM_DMIRROR_RELEASE,
    HMM_DMIRROR_SNAPSHOT,
    HMM_DMIRROR_WRITE,
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
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.kconfig import PAGE_SIZE, SERIES, SERIES_ABSENT, SERIES_REQUIRES, KConfig
from hmmsim.kernel import Kernel

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


def tokens(data: bytes, addr: int) -> bytes:
    """data as stored at addr with the bytes that fall at page offsets >= 8
    zeroed: what the fuzzer stores in the token data plane (hmmsim.data_plane),
    where only a page's first 8 bytes (its token) may be non-zero."""
    arr = np.frombuffer(data, dtype=np.uint8).copy()
    arr[(addr + np.arange(arr.size)) % PAGE_SIZE >= 8] = 0
    return arr.tobytes()


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
    data_plane: str = "bytes"  # KConfig.data_plane; "tokens": stores are token-form

    def make_kernel(self) -> Kernel:
        k = Kernel(
            ram_bytes=self.ram_bytes,
            hugetlb_pages=0,
            features=frozenset(self.features),
            conflict_resolution=self.conflict_resolution,
            bugs=frozenset(self.bugs),
            kernel=self.kernel,
            data_plane=self.data_plane,
        )
        hmm_dmirror_init(k)
        k.thp_enabled = self.thp
        return k

    def label(self) -> str:
        f = "".join(sorted(self.features)) or "-"
        if self.conflict_resolution:
            f += f"/{self.conflict_resolution}"
        kern = f" kernel={self.kernel}" if self.kernel != "mainline" else ""
        if self.data_plane != "bytes":
            kern += f" data={self.data_plane}"
        return f"features={f} thp={self.thp}{kern}"

    def kernel_source(self) -> str:
        """The Python expression that builds this configuration's Kernel."""
        feats = "{" + ", ".join(repr(x) for x in sorted(self.features)) + "}"
        feats = f"frozenset({feats})" if self.features else "frozenset()"
        cr = self.conflict_resolution
        cr = f", conflict_resolution={cr!r}" if cr else ""
        bugs = f", bugs=frozenset({sorted(self.bugs)!r})" if self.bugs else ""
        kern = f", kernel={self.kernel!r}" if self.kernel != "mainline" else ""
        if self.data_plane != "bytes":
            kern += f", data_plane={self.data_plane!r}"
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

"""The scenario language (version 1): names, literals and the parser.

The language is specified in docs/scenarios.md; this module is its Python
reading (the C reading is src/hmmsim/oracle/runner.c). `parse()` turns the
text into a tree of `Op`s with every argument already converted to the C
type of the parameter it feeds; any malformed line raises `ScenarioError`
naming the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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
from hmmsim.include import mman
from hmmsim.scenario.ctype import to_int, to_s64, to_u32, to_u64

LANGUAGE_VERSION = 1
#: The fixed user buffer ioctls read from and write to.
BUF = 0x600000000000
BUF_PAGES = 64
PAGE_SIZE = 4096
NSLOTS = 16
#: Most pages one store/load/pagemap may name (a limit of this reading, so a
#: typo cannot ask for 2^60 page hashes; docs/scenarios.md records it).
MAX_ACCESS_PAGES = 1 << 16

PROT_NAMES = {
    "none": mman.PROT_NONE,
    "read": mman.PROT_READ,
    "write": mman.PROT_WRITE,
    "exec": mman.PROT_EXEC,
}
MAP_NAMES = {
    "shared": mman.MAP_SHARED,
    "private": mman.MAP_PRIVATE,
    "shared_validate": mman.MAP_SHARED_VALIDATE,
    "anon": mman.MAP_ANONYMOUS,
    "fixed": mman.MAP_FIXED,
    "fixed_noreplace": mman.MAP_FIXED_NOREPLACE,
    "populate": mman.MAP_POPULATE,
    "noreserve": mman.MAP_NORESERVE,
}
ADVICE_NAMES = {
    "normal": mman.MADV_NORMAL,
    "random": mman.MADV_RANDOM,
    "sequential": mman.MADV_SEQUENTIAL,
    "willneed": mman.MADV_WILLNEED,
    "dontneed": mman.MADV_DONTNEED,
    "free": mman.MADV_FREE,
    "remove": mman.MADV_REMOVE,
    "dontfork": mman.MADV_DONTFORK,
    "dofork": mman.MADV_DOFORK,
    "hugepage": mman.MADV_HUGEPAGE,
    "nohugepage": mman.MADV_NOHUGEPAGE,
    "collapse": mman.MADV_COLLAPSE,
}
MREMAP_NAMES = {
    "maymove": mman.MREMAP_MAYMOVE,
    "fixed": mman.MREMAP_FIXED,
    "dontunmap": mman.MREMAP_DONTUNMAP,
}
OPEN_NAMES = {
    "rdonly": mman.O_RDONLY,
    "wronly": mman.O_WRONLY,
    "rdwr": mman.O_RDWR,
    "creat": mman.O_CREAT,
    "tmpfile": mman.O_TMPFILE,
}
IOCTL_NAMES = {
    "READ": HMM_DMIRROR_READ,
    "WRITE": HMM_DMIRROR_WRITE,
    "MIGRATE_TO_DEV": HMM_DMIRROR_MIGRATE_TO_DEV,
    "MIGRATE_TO_SYS": HMM_DMIRROR_MIGRATE_TO_SYS,
    "SNAPSHOT": HMM_DMIRROR_SNAPSHOT,
    "EXCLUSIVE": HMM_DMIRROR_EXCLUSIVE,
    "CHECK_EXCLUSIVE": HMM_DMIRROR_CHECK_EXCLUSIVE,
    "RELEASE": HMM_DMIRROR_RELEASE,
    "FLAGS": HMM_DMIRROR_FLAGS,
}
DEVICE_PATHS = tuple(f"/dev/hmm_dmirror{i}" for i in range(4))
PAGEMAP_PATH = "/proc/self/pagemap"
CLEAR_REFS_PATH = "/proc/self/clear_refs"
_TMP_NAME = re.compile(r"/tmp/[A-Za-z0-9._-]{1,64}\Z")
_INT = re.compile(r"(-?[0-9]+|0[xX][0-9a-fA-F]+)\Z")


class ScenarioError(ValueError):
    """A malformed scenario: the message starts with `line N:`."""

    def __init__(self, line: int, msg: str) -> None:
        super().__init__(f"line {line}: {msg}")
        self.line = line


@dataclass(frozen=True)
class Fd:
    """An fd argument: a slot (`s3`) or a literal int (`-` is -1)."""

    slot: int | None = None
    value: int = -1


@dataclass(frozen=True)
class Op:
    """One operation: its physical line, name, converted arguments, options.

    `body` holds a fork block's operations; `hold` marks `fork hold`.
    """

    line: int
    name: str
    args: tuple = ()
    opts: dict = field(default_factory=dict, compare=False)
    body: tuple = ()
    hold: bool = False


@dataclass(frozen=True)
class Scenario:
    ops: tuple
    nlines: int


def parse_int(tok: str, line: int, what: str = "integer") -> int:
    """A literal in [-2^63, 2^64): decimal, hex or negative decimal."""
    if not _INT.match(tok):
        raise ScenarioError(line, f"{what}: expected an integer, got {tok!r}")
    v = int(tok, 0) if tok.lower().startswith("0x") else int(tok, 10)
    if not -(1 << 63) <= v < (1 << 64):
        raise ScenarioError(line, f"{what}: {tok} is outside [-2^63, 2^64)")
    return v


def parse_names(tok: str, names: dict[str, int], line: int, what: str) -> int:
    """Names joined by `|` (an integer may stand for a name), or one integer.

    The value is returned unconverted (the caller applies the C type).
    """
    if _INT.match(tok):
        return parse_int(tok, line, what)
    value = 0
    for part in tok.split("|"):
        if part in names:
            value |= names[part]
        elif _INT.match(part):
            value |= to_u64(parse_int(part, line, what))
        else:
            raise ScenarioError(
                line, f"{what}: unknown name {part!r} (one of {', '.join(sorted(names))})"
            )
    return value


def _slot(tok: str, line: int) -> int:
    m = re.fullmatch(r"s([0-9]{1,2})", tok)
    if not m or int(m.group(1)) >= NSLOTS:
        raise ScenarioError(line, f"expected a slot s0..s{NSLOTS - 1}, got {tok!r}")
    return int(m.group(1))


def _fd(tok: str, line: int) -> Fd:
    if tok == "-":
        return Fd(None, -1)
    if tok.startswith("s"):
        return Fd(_slot(tok, line), -1)
    return Fd(None, to_int(parse_int(tok, line, "fd")))


def _count(tok: str, line: int, what: str = "NPAGES") -> int:
    v = parse_int(tok, line, what)
    if not 0 <= v <= MAX_ACCESS_PAGES:
        raise ScenarioError(line, f"{what} must be in 0..{MAX_ACCESS_PAGES}, got {tok}")
    return v


def _aligned(tok: str, line: int, align: int, what: str = "ADDR") -> int:
    v = to_u64(parse_int(tok, line, what))
    if v % align:
        raise ScenarioError(line, f"{what} {tok} must be {align}-byte aligned")
    return v


def _path(tok: str, line: int) -> str:
    if tok in DEVICE_PATHS or tok in ("/tmp", PAGEMAP_PATH) or _TMP_NAME.match(tok):
        return tok
    raise ScenarioError(
        line,
        f"PATH {tok!r}: expected /dev/hmm_dmirror0..3, /tmp, /tmp/NAME or {PAGEMAP_PATH}",
    )


#: op -> (required argument count, optional count)
_ARITY = {
    "mmap": (4, 2),
    "munmap": (2, 0),
    "mprotect": (3, 0),
    "madvise": (3, 0),
    "mremap": (4, 1),
    "store": (3, 0),
    "load": (2, 0),
    "poke": (2, 0),
    "peek": (1, 0),
    "pagemap": (2, 0),
    "clear_refs": (1, 0),
    "open": (3, 0),
    "close": (1, 0),
    "ftruncate": (2, 0),
    "ioctl": (4, 2),
    "reap": (0, 0),
}
OPS = tuple(_ARITY) + ("fork", "end")


def _u(tok: str, line: int, what: str) -> int:
    return to_u64(parse_int(tok, line, what))


def _parse_op(line: int, name: str, a: list[str]) -> Op:
    if name not in _ARITY:
        raise ScenarioError(line, f"unknown operation {name!r} (one of {', '.join(OPS)})")
    need, opt = _ARITY[name]
    if name == "ioctl":
        plain = [t for t in a if "=" not in t]
        extra = [t for t in a if "=" in t]
    else:
        plain, extra = a, []
    if not need <= len(plain) <= need + (0 if name == "ioctl" else opt):
        want = f"{need}" if not opt else f"{need} to {need + opt}"
        raise ScenarioError(line, f"{name} takes {want} arguments, got {len(plain)}")
    if name == "mmap":
        fd = _fd(plain[4], line) if len(plain) > 4 else Fd(None, -1)
        off = to_s64(parse_int(plain[5], line, "OFF")) if len(plain) > 5 else 0
        args = (
            _u(plain[0], line, "ADDR"),
            _u(plain[1], line, "LEN"),
            to_int(parse_names(plain[2], PROT_NAMES, line, "PROT")),
            to_int(parse_names(plain[3], MAP_NAMES, line, "FLAGS")),
            fd,
            off,
        )
    elif name == "munmap":
        args = (_u(plain[0], line, "ADDR"), _u(plain[1], line, "LEN"))
    elif name == "mprotect":
        args = (
            _u(plain[0], line, "ADDR"),
            _u(plain[1], line, "LEN"),
            to_int(parse_names(plain[2], PROT_NAMES, line, "PROT")),
        )
    elif name == "madvise":
        args = (
            _u(plain[0], line, "ADDR"),
            _u(plain[1], line, "LEN"),
            to_int(parse_names(plain[2], ADVICE_NAMES, line, "ADVICE")),
        )
    elif name == "mremap":
        flags = parse_names(plain[3], MREMAP_NAMES, line, "FLAGS")
        args = (
            _u(plain[0], line, "OLD"),
            _u(plain[1], line, "OLDLEN"),
            _u(plain[2], line, "NEWLEN"),
            to_int(flags),
            _u(plain[4], line, "NEW") if len(plain) > 4 else 0,
        )
    elif name == "store":
        args = (
            _aligned(plain[0], line, PAGE_SIZE),
            _count(plain[1], line),
            _u(plain[2], line, "SEED"),
        )
    elif name in ("load", "pagemap"):
        align = PAGE_SIZE if name == "load" else 1
        args = (_aligned(plain[0], line, align), _count(plain[1], line))
    elif name == "poke":
        args = (_aligned(plain[0], line, 8), _u(plain[1], line, "VALUE"))
    elif name == "clear_refs":
        kind = parse_int(plain[0], line, "TYPE")
        if not 0 <= kind <= 9:
            raise ScenarioError(line, f"TYPE {plain[0]!r}: expected one digit (written as 'N\\n')")
        args = (kind,)
    elif name == "peek":
        args = (_aligned(plain[0], line, 8),)
    elif name == "open":
        args = (
            _slot(plain[0], line),
            _path(plain[1], line),
            to_int(parse_names(plain[2], OPEN_NAMES, line, "FLAGS")),
        )
    elif name == "close":
        args = (_slot(plain[0], line),)
    elif name == "ftruncate":
        args = (_slot(plain[0], line), to_s64(parse_int(plain[1], line, "LEN")))
    elif name == "ioctl":
        cmd = plain[1]
        if cmd in IOCTL_NAMES:
            request = IOCTL_NAMES[cmd]
        elif _INT.match(cmd):
            request = parse_int(cmd, line, "CMD")
        else:
            raise ScenarioError(
                line, f"CMD: unknown ioctl {cmd!r} (one of {', '.join(IOCTL_NAMES)} or an integer)"
            )
        args = (
            _slot(plain[0], line),
            to_u32(request),
            _u(plain[2], line, "ADDR"),
            _u(plain[3], line, "NPAGES"),
        )
        opts: dict = {}
        for t in extra:
            key, _, val = t.partition("=")
            if key not in ("ptr", "seed"):
                raise ScenarioError(line, f"unknown ioctl option {key!r} (ptr=, seed=)")
            if key in opts:
                raise ScenarioError(line, f"ioctl option {key}= given twice")
            if key == "ptr":
                opts["ptr"] = None if val == "buf" else _u(val, line, "ptr")
            else:
                opts["seed"] = _u(val, line, "seed")
        return Op(line, name, args, opts)
    else:  # reap
        args = ()
    return Op(line, name, args)


def tokenize(text: str):
    """(line number, tokens) for every line that holds an operation."""
    for n, raw in enumerate(text.splitlines(), 1):
        body = raw.split("#", 1)[0]
        toks = body.split()
        if toks:
            yield n, toks


def parse(text: str) -> Scenario:
    """The scenario in `text`; ScenarioError on the first malformed line."""
    stack: list[tuple[int, bool, list]] = []
    top: list = []
    cur = top
    nlines = len(text.splitlines())
    for n, toks in tokenize(text):
        name, a = toks[0], toks[1:]
        if name == "fork":
            if a not in ([], ["hold"]):
                raise ScenarioError(n, f"fork takes nothing or 'hold', got {' '.join(a)!r}")
            stack.append((n, bool(a), cur))
            cur = []
            continue
        if name == "end":
            if a:
                raise ScenarioError(n, "end takes no arguments")
            if not stack:
                raise ScenarioError(n, "end without fork")
            fline, hold, outer = stack.pop()
            outer.append(Op(fline, "fork", (), {}, tuple(cur), hold))
            cur = outer
            continue
        cur.append(_parse_op(n, name, a))
    if stack:
        raise ScenarioError(stack[-1][0], "fork without end")
    return Scenario(tuple(top), nlines)

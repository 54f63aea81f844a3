"""The model interpreter: run a parsed scenario on a modelled kernel.

Each operation drives the `Process` facade (hmmsim.userspace) the way the C
runner drives the real syscalls, and prints the line docs/scenarios.md
specifies. The interpreter never lets a host exception out: a modelled
SIGSEGV/SIGBUS is reported in the line, a modelled oops (`KernelOops`, or a
`KernelBug` that names its `.function`) ends the scenario with
`LINE OP OOPS FUNC`, and anything else ends it with
`LINE OP ERROR <ExcName>: message` (a model gap, never expected in the corpus).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from hmmsim.bug import KernelBug, KernelOops
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_READ,
    HMM_DMIRROR_SNAPSHOT,
    HMM_DMIRROR_WRITE,
    hmm_dmirror_cmd,
)
from hmmsim.include.mman import (
    MAP_ANONYMOUS,
    MAP_FIXED_NOREPLACE,
    MAP_POPULATE,
    MAP_PRIVATE,
    O_RDONLY,
    O_WRONLY,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.scenario.lang import (
    BUF,
    BUF_PAGES,
    CLEAR_REFS_PATH,
    NSLOTS,
    PAGE_SIZE,
    PAGEMAP_PATH,
    Op,
    Scenario,
    parse,
)
from hmmsim.scenario.patterns import pagehash, pat_pages, rle, rle_bytes
from hmmsim.userspace import WEXITSTATUS, WIFEXITED, WTERMSIG, BusError, SegmentationFault

U64 = (1 << 64) - 1
#: x86-64 4-level paging: the lower canonical half ends here, the upper starts at -2^47.
CANONICAL_LOW_END = 1 << 47
CANONICAL_HIGH_START = (1 << 64) - (1 << 47)

#: The errno names a result may print (include/uapi/asm-generic/errno-base.h and
#: errno.h, first name of each number); any other errno prints as -E<number>.
ERRNO_NAMES = {
    1: "EPERM",
    2: "ENOENT",
    3: "ESRCH",
    4: "EINTR",
    5: "EIO",
    6: "ENXIO",
    7: "E2BIG",
    8: "ENOEXEC",
    9: "EBADF",
    10: "ECHILD",
    11: "EAGAIN",
    12: "ENOMEM",
    13: "EACCES",
    14: "EFAULT",
    15: "ENOTBLK",
    16: "EBUSY",
    17: "EEXIST",
    18: "EXDEV",
    19: "ENODEV",
    20: "ENOTDIR",
    21: "EISDIR",
    22: "EINVAL",
    23: "ENFILE",
    24: "EMFILE",
    25: "ENOTTY",
    26: "ETXTBSY",
    27: "EFBIG",
    28: "ENOSPC",
    29: "ESPIPE",
    30: "EROFS",
    31: "EMLINK",
    32: "EPIPE",
    33: "EDOM",
    34: "ERANGE",
    35: "EDEADLK",
    36: "ENAMETOOLONG",
    37: "ENOLCK",
    38: "ENOSYS",
    39: "ENOTEMPTY",
    40: "ELOOP",
    42: "ENOMSG",
    43: "EIDRM",
    44: "ECHRNG",
    45: "EL2NSYNC",
    46: "EL3HLT",
    47: "EL3RST",
    48: "ELNRNG",
    49: "EUNATCH",
    50: "ENOCSI",
    51: "EL2HLT",
    52: "EBADE",
    53: "EBADR",
    54: "EXFULL",
    55: "ENOANO",
    56: "EBADRQC",
    57: "EBADSLT",
    59: "EBFONT",
    60: "ENOSTR",
    61: "ENODATA",
    62: "ETIME",
    63: "ENOSR",
    64: "ENONET",
    65: "ENOPKG",
    66: "EREMOTE",
    67: "ENOLINK",
    68: "EADV",
    69: "ESRMNT",
    70: "ECOMM",
    71: "EPROTO",
    72: "EMULTIHOP",
    73: "EDOTDOT",
    74: "EBADMSG",
    75: "EOVERFLOW",
    76: "ENOTUNIQ",
    77: "EBADFD",
    78: "EREMCHG",
    79: "ELIBACC",
    80: "ELIBBAD",
    81: "ELIBSCN",
    82: "ELIBMAX",
    83: "ELIBEXEC",
    84: "EILSEQ",
    85: "ERESTART",
    86: "ESTRPIPE",
    87: "EUSERS",
    88: "ENOTSOCK",
    89: "EDESTADDRREQ",
    90: "EMSGSIZE",
    91: "EPROTOTYPE",
    92: "ENOPROTOOPT",
    93: "EPROTONOSUPPORT",
    94: "ESOCKTNOSUPPORT",
    95: "EOPNOTSUPP",
    96: "EPFNOSUPPORT",
    97: "EAFNOSUPPORT",
    98: "EADDRINUSE",
    99: "EADDRNOTAVAIL",
    100: "ENETDOWN",
    101: "ENETUNREACH",
    102: "ENETRESET",
    103: "ECONNABORTED",
    104: "ECONNRESET",
    105: "ENOBUFS",
    106: "EISCONN",
    107: "ENOTCONN",
    108: "ESHUTDOWN",
    109: "ETOOMANYREFS",
    110: "ETIMEDOUT",
    111: "ECONNREFUSED",
    112: "EHOSTDOWN",
    113: "EHOSTUNREACH",
    114: "EALREADY",
    115: "EINPROGRESS",
    116: "ESTALE",
    117: "EUCLEAN",
    118: "ENOTNAM",
    119: "ENAVAIL",
    120: "EISNAM",
    121: "EREMOTEIO",
    122: "EDQUOT",
    123: "ENOMEDIUM",
    124: "EMEDIUMTYPE",
    125: "ECANCELED",
    126: "ENOKEY",
    127: "EKEYEXPIRED",
    128: "EKEYREVOKED",
    129: "EKEYREJECTED",
    130: "EOWNERDEAD",
    131: "ENOTRECOVERABLE",
    132: "ERFKILL",
    133: "EHWPOISON",
}

#: si_code names (include/uapi/asm-generic/siginfo.h).
SEGV_CODES = {1: "MAPERR", 2: "ACCERR", 0x80: "KERNEL"}
BUS_CODES = {1: "ADRALN", 2: "ADRERR", 3: "OBJERR", 4: "MCEERR_AR"}


def errno_token(ret: int) -> str:
    """`-EINVAL` for -22; `-E600` for an errno without a name."""
    n = -ret
    return "-" + ERRNO_NAMES.get(n, f"E{n}")


def _sys(ret: int, hexa: bool = False) -> str:
    """The `= ...` text of a syscall result."""
    if ret < 0:
        return "= " + errno_token(ret)
    return f"= {ret:#x}" if hexa else f"= {ret}"


class _Signal(Exception):
    """A modelled fatal signal at page k of an operation (caught and printed)."""

    def __init__(self, text: str, k: int) -> None:
        super().__init__(text)
        self.text = text
        self.k = k

    def suffix(self) -> str:
        return f"{self.text} @{self.k}"


class _Stop(Exception):
    """The scenario ends (an oops or a model error); the line is printed."""


def _signal_text(e: BaseException) -> str | None:
    if isinstance(e, SegmentationFault):
        code = getattr(e, "si_code", 1)
        return "SIGSEGV " + SEGV_CODES.get(code, str(code))
    if isinstance(e, BusError):
        code = getattr(e, "si_code", None)
        if code is None:
            code = 4 if "poison" in str(e) else 2
        return "SIGBUS " + BUS_CODES.get(code, str(code))
    return None


#: Model function -> the function the kernel's RIP names for it: static
#: functions with one caller are inlined into it in the oracle's build (its
#: WARNING line reads `at lib/test_hmm.c:LINE CALLER+off`), so the events name
#: the caller. lib/test_hmm.c dmirror_do_fault is inlined into dmirror_fault
#: (gen/0304's log: the WARN_ON of a write fault not granted, at dmirror_fault).
RIP_FUNCTION = {"dmirror_do_fault": "dmirror_fault"}


def oops_function(e: BaseException) -> str | None:
    """The kernel function a modelled oops names, or None if e is no oops."""
    from hmmsim.testing.invariants import InvariantViolation

    if isinstance(e, KernelOops):
        return e.function
    if isinstance(e, KernelBug) and not isinstance(e, InvariantViolation):
        return getattr(e, "function", None) or None
    return None


def _error_text(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"ERROR {type(e).__name__}: {msg}" if msg else f"ERROR {type(e).__name__}"


@dataclass
class _Task:
    """One process of the scenario: the model Process, its fd slots, held children."""

    proc: object
    slots: list = field(default_factory=lambda: [-1] * NSLOTS)
    held: list = field(default_factory=list)


@dataclass
class Result:
    """The operation lines and the kernel-event lines (`! ...`) of one run."""

    lines: list[str]
    events: list[str]

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines + self.events)


def scenario_config(features=(), kernel: str | None = None):
    """The KConfig scenarios run on: the selftest kernel plus `features`.

    `kernel` ("mainline" or "6.12") selects the behaviour profile where
    KConfig has a `kernel` field; returns (config, profile actually used).
    """
    from hmmsim.selftests.hmm_tests import selftest_config

    cfg = selftest_config(tuple(features))
    names = {f.name for f in dataclasses.fields(cfg)}
    if kernel is not None and "kernel" in names:
        cfg = dataclasses.replace(cfg, kernel=kernel)
        return cfg, kernel
    return cfg, getattr(cfg, "kernel", "mainline")


def _canonical_check(va: int) -> None:
    """x86-64: a non-canonical access is #GP (SIGSEGV, SI_KERNEL); one into the
    upper (kernel) half is a user fault on a kernel address (SEGV_MAPERR)."""
    if CANONICAL_LOW_END <= va < CANONICAL_HIGH_START:
        raise SegmentationFault(va, 0x80)
    if va >= CANONICAL_HIGH_START:
        raise SegmentationFault(va, 1)


class Interpreter:
    """Runs one scenario on a fresh modelled kernel."""

    def __init__(self, config=None, *, check_invariants: bool = False) -> None:
        from hmmsim.selftests.hmm_tests import make_kernel

        self.k = make_kernel(config or scenario_config()[0])
        self.check = check_invariants
        self.lines: list[str] = []
        self.events: list[str] = []

    # --- driving ---------------------------------------------------------------------------
    def run(self, scn: Scenario) -> Result:
        try:
            main = _Task(self.k.spawn("scenario"))
            ret = main.proc.mmap(
                BUF,
                BUF_PAGES * PAGE_SIZE,
                PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | MAP_POPULATE,
            )
            if ret != BUF:
                self.events.append(f"! ERROR the buffer mmap returned {_sys(ret, True)[2:]}")
                return Result(self.lines, self.events)
        except Exception as e:  # noqa: BLE001 - never a host traceback
            self.events.append("! " + _error_text(e))
            return Result(self.lines, self.events)
        try:
            self._block(main, scn.ops)
        except _Stop:
            return self._finish()
        # the end of the scenario: release held children oldest first, then exit
        try:
            self._reap(main)
            main.proc._exit(0)
        except Exception as e:  # noqa: BLE001
            fn = oops_function(e)
            self.events.append(f"! OOPS {fn}" if fn else "! " + _error_text(e))
        return self._finish()

    def _finish(self) -> Result:
        for w in self.k.warnings:
            msg = " ".join(str(getattr(w, "msg", w)).split())
            head = msg.split(":", 1)[0]
            head = RIP_FUNCTION.get(head, head)
            self.events.append(f"! WARNING {head if head.isidentifier() else msg}")
        return Result(self.lines, self.events)

    def _block(self, task: _Task, ops) -> None:
        for op in ops:
            if op.name == "fork":
                self._fork(task, op)
                continue
            try:
                text = getattr(self, "op_" + op.name)(task, op)
                if self.check:
                    from hmmsim.testing.invariants import check_invariants

                    check_invariants(self.k)
            except _Stop:
                raise
            except Exception as e:  # noqa: BLE001
                self._die(op, e)
            self.lines.append(f"{op.line} {op.name} {text}")

    def _die(self, op: Op, e: BaseException) -> None:
        fn = oops_function(e)
        if fn:
            self.lines.append(f"{op.line} {op.name} OOPS {fn}")
            self.events.append(f"! OOPS {fn}")
        else:
            self.lines.append(f"{op.line} {op.name} {_error_text(e)}")
        raise _Stop from e

    def _fork(self, task: _Task, op: Op) -> None:
        try:
            pid = task.proc.fork()
        except Exception as e:  # noqa: BLE001
            self._die(op, e)
        if pid < 0:
            self.lines.append(f"{op.line} fork {_sys(pid)}")
            return
        child = _Task(task.proc.child(pid), list(task.slots))
        self._block(child, op.body)
        try:
            self._reap(child)
            if op.hold:
                task.held.append(child)
                self.lines.append(f"{op.line} fork = held")
                return
            child.proc._exit(0)
            _, status = task.proc.waitpid(pid)
        except Exception as e:  # noqa: BLE001
            self._die(op, e)
        self.lines.append(f"{op.line} fork = {_status(status)}")

    def _reap(self, task: _Task) -> list[str]:
        """Release the held children oldest first and wait for each."""
        out = []
        while task.held:
            child = task.held.pop(0)
            self._reap(child)
            child.proc._exit(0)
            _, status = task.proc.waitpid(child.proc.pid)
            out.append(_status(status))
        return out

    # --- CPU accesses ------------------------------------------------------------------------
    @staticmethod
    def _access(fn, va: int, k: int):
        try:
            _canonical_check(va)
            return fn()
        except (SegmentationFault, BusError) as e:
            raise _Signal(_signal_text(e), k) from None

    def op_store(self, task: _Task, op: Op) -> str:
        addr, npages, seed = op.args
        p = task.proc
        for i in range(npages):
            va = (addr + i * PAGE_SIZE) & U64
            data = pat_pages(seed, va, 1)
            try:
                self._access(lambda va=va, data=data: p.store(va, data), va, i)
            except _Signal as s:
                return "= " + s.suffix()
        return "= ok"

    def _load_pages(self, p, addr: int, npages: int) -> tuple[list[str], _Signal | None]:
        hashes = []
        for i in range(npages):
            va = (addr + i * PAGE_SIZE) & U64
            try:
                page = self._access(lambda va=va: p.load(va, PAGE_SIZE), va, i)
            except _Signal as s:
                return hashes, s
            hashes.append(pagehash(page))
        return hashes, None

    def op_load(self, task: _Task, op: Op) -> str:
        addr, npages = op.args
        hashes, sig = self._load_pages(task.proc, addr, npages)
        return "= " + rle(hashes) + (" " + sig.suffix() if sig else "")

    def op_poke(self, task: _Task, op: Op) -> str:
        addr, value = op.args
        data = int(value).to_bytes(8, "little")
        try:
            self._access(lambda: task.proc.store(addr, data), addr, 0)
        except _Signal as s:
            return "= " + s.suffix()
        return "= ok"

    def op_peek(self, task: _Task, op: Op) -> str:
        (addr,) = op.args
        try:
            data = self._access(lambda: task.proc.load(addr, 8), addr, 0)
        except _Signal as s:
            return "= " + s.suffix()
        return f"= {int.from_bytes(data, 'little'):#x}"

    # --- memory syscalls ---------------------------------------------------------------------
    def _fdval(self, task: _Task, fd) -> int:
        return task.slots[fd.slot] if fd.slot is not None else fd.value

    def op_mmap(self, task: _Task, op: Op) -> str:
        addr, length, prot, flags, fd, off = op.args
        ret = task.proc.mmap(addr, length, prot, flags, self._fdval(task, fd), off)
        return _sys(ret, hexa=True)

    def op_munmap(self, task: _Task, op: Op) -> str:
        return _sys(task.proc.munmap(*op.args))

    def op_mprotect(self, task: _Task, op: Op) -> str:
        return _sys(task.proc.mprotect(*op.args))

    def op_madvise(self, task: _Task, op: Op) -> str:
        return _sys(task.proc.madvise(*op.args))

    def op_mremap(self, task: _Task, op: Op) -> str:
        return _sys(task.proc.mremap(*op.args), hexa=True)

    # --- files ---------------------------------------------------------------------------------
    def op_open(self, task: _Task, op: Op) -> str:
        slot, path, flags = op.args
        ret = task.proc.open(path, flags, 0o600)
        if ret < 0:
            return _sys(ret)  # the slot keeps what it held
        task.slots[slot] = ret
        return "= ok"

    def op_close(self, task: _Task, op: Op) -> str:
        (slot,) = op.args
        fd = task.slots[slot]
        task.slots[slot] = -1
        return _sys(task.proc.close(fd))

    def op_ftruncate(self, task: _Task, op: Op) -> str:
        slot, length = op.args
        return _sys(task.proc.ftruncate(task.slots[slot], length))

    def op_pagemap(self, task: _Task, op: Op) -> str:
        addr, npages = op.args
        p = task.proc
        fd = p.open(PAGEMAP_PATH, O_RDONLY)
        if fd < 0:
            return _sys(fd)
        # the C runner runs as root (CAP_SYS_ADMIN): pagemap_read shows frames,
        # so a swap-like entry carries its type (only the type is printed)
        f = p.fds.get(fd)
        if f is not None and hasattr(f.obj, "show_pfn"):
            f.obj.show_pfn = True
        try:
            data = p.pread(fd, npages * 8, (addr >> 12) * 8)
        finally:
            p.close(fd)
        if isinstance(data, int):
            return _sys(data)
        words = np.frombuffer(bytes(data[: len(data) // 8 * 8]), dtype="<u8")
        return "= " + rle([pagemap_token(int(w)) for w in words])

    def op_clear_refs(self, task: _Task, op: Op) -> str:
        """write(fd, "TYPE\\n", 2) to /proc/self/clear_refs: the bytes written."""
        (kind,) = op.args
        p = task.proc
        fd = p.open(CLEAR_REFS_PATH, O_WRONLY)
        if fd < 0:
            return _sys(fd)
        try:
            return _sys(p.pwrite(fd, f"{kind}\n".encode(), 0))
        finally:
            p.close(fd)

    def op_ioctl(self, task: _Task, op: Op) -> str:
        slot, request, addr, npages = op.args
        ptr = op.opts.get("ptr")
        seed = op.opts.get("seed", 0)
        p = task.proc
        nfill = min(npages, BUF_PAGES)
        for i in range(nfill):
            va = BUF + i * PAGE_SIZE
            if request == HMM_DMIRROR_WRITE:
                data = pat_pages(seed, va, 1)
            else:
                data = b"\xa5" * PAGE_SIZE
            try:
                self._access(lambda va=va, data=data: p.store(va, data), va, i)
            except _Signal as s:
                return "= " + s.suffix()
        cmd = hmm_dmirror_cmd(addr=addr, ptr=BUF if ptr is None else ptr, npages=npages)
        ret = p.ioctl(task.slots[slot], request, cmd)
        text = "= " + (errno_token(ret) if ret < 0 else str(ret))
        if ret == 0:
            text += f" cpages={cmd.cpages & U64} faults={cmd.faults & U64}"
        if ptr is None and request in (HMM_DMIRROR_READ, HMM_DMIRROR_MIGRATE_TO_DEV):
            hashes, sig = self._load_pages(p, BUF, nfill)
            text += " data=" + rle(hashes) + (" " + sig.suffix() if sig else "")
        elif ptr is None and request == HMM_DMIRROR_SNAPSHOT:
            nbytes = min(npages, BUF_PAGES * PAGE_SIZE)
            raw, sig = b"", None
            for i in range(0, nbytes, PAGE_SIZE):
                va, n = BUF + i, min(PAGE_SIZE, nbytes - i)
                try:
                    raw += self._access(lambda va=va, n=n: p.load(va, n), va, i // PAGE_SIZE)
                except _Signal as s:
                    sig = s
                    break
            text += " snap=" + rle_bytes(raw) + (" " + sig.suffix() if sig else "")
        return text

    def op_reap(self, task: _Task, op: Op) -> str:
        done = self._reap(task)
        return "= " + (",".join(done) if done else "-")


def _status(status: int) -> str:
    if WIFEXITED(status):
        return f"exit {WEXITSTATUS(status)}"
    return f"signal {WTERMSIG(status)}"


def pagemap_token(entry: int) -> str:
    """The flags of one pagemap entry: p, s<type>, f, x, d, w in that order, or `-`."""
    t = ""
    if entry >> 63 & 1:
        t += "p"
    if entry >> 62 & 1:
        t += f"s{entry & 0x1F}"
    if entry >> 61 & 1:
        t += "f"
    if entry >> 56 & 1:
        t += "x"
    if entry >> 55 & 1:
        t += "d"
    if entry >> 57 & 1:
        t += "w"
    return t or "-"


def run_text(text: str, config=None, *, check_invariants: bool = False) -> Result:
    """Parse and run a scenario (ScenarioError for malformed text)."""
    scn = parse(text)
    return Interpreter(config, check_invariants=check_invariants).run(scn)

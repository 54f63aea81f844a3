"""A small kselftest harness: fixtures, variants, TEST_F, ASSERT_*/EXPECT_*, TAP output.

Models: tools/testing/selftests/kselftest_harness.h and
tools/testing/selftests/kselftest.h @ torvalds/linux
0eaed89c18aeedf0898baf2dbf5ff027c6795152 (the parts hmm-tests.c uses).

What it keeps from the C harness:
- registration: `FIXTURE(name)` makes a fixture; `FIXTURE_VARIANT_ADD`,
  `FIXTURE_SETUP`, `FIXTURE_TEARDOWN`, `TEST_F`, `TEST_F_TIMEOUT` attach to
  it, in declaration order; cases run fixture by fixture, then variant by
  variant, then test by test, and are named `fixture.variant.test`;
- the filters `-f/-v/-t/-r` (include by fixture, variant, test, or the full
  `fixture.variant.test` name);
- setup failure or SKIP skips the test body and the teardown; a body that
  fails an ASSERT or SKIPs is still torn down; EXPECT records the failure and
  goes on; a failed ASSERT in a forked child fails the test too (the C
  shares its metadata with forked children) and kills the child (SIGABRT);
- XFAIL_ADD as `run_tests(xfail=...)`: such cases report XFAIL/XPASS;
- the TAP stream byte for byte: `TAP version 13`, `1..N`, `# Starting ...`,
  `#  RUN ...`, `#            OK  ...`, `ok N name`, `not ok N name`,
  `ok N name # SKIP reason`, `# PASSED: ...`, `# Totals: ...`;
- a failed check is logged as `# file:line:test:Expected a (x) == b (y)`.

What is different, and why:
- no fork per test: each case runs on a fresh `Kernel` (the runner's
  `make_kernel`), in a fresh simulated process, so cases cannot disturb each
  other. After the teardown that process exits (as the C test child does,
  which tears its address space down), then the invariant checker runs and
  any kernel warning fails the case: the model's own conformance checks.
- ASSERT_* raise `AssertionFailure` instead of abort(); the expression text
  in the message is recovered from the caller's source line. Arrays may be
  compared element-wise (`ASSERT_EQ(ptr[i], i)` with `i = np.arange(n)`),
  which is the C loop `for (i...) ASSERT_EQ(ptr[i], i);` in one step: the
  message names the first element that differs.
- timeouts are recorded (`TEST_F_TIMEOUT`) but not enforced: the model is
  orders of magnitude slower than hardware, so a wall-clock limit would only
  measure the host.
- the simulated libc (mmap, ioctl, fork, ...) lives here too: it binds
  calls to the process that is "running" (the test process, or a forked
  child inside `in_child`), returns -1 and sets `errno()` like glibc.
"""

from __future__ import annotations

import ast
import contextvars
import inspect
import linecache
import operator
import os
import random
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from hmmsim.bug import KernelBug, KernelOops
from hmmsim.userspace import (
    BusError,
    OutOfMemory,
    SegmentationFault,
)

# --- kselftest.h exit codes -----------------------------------------------------------------
KSFT_PASS = 0
KSFT_FAIL = 1
KSFT_XFAIL = 2
KSFT_XPASS = 3
KSFT_SKIP = 4

TEST_TIMEOUT_DEFAULT = 30

SIGABRT = 6
SIGBUS = 7
SIGKILL = 9
SIGSEGV = 11

#: a C null pointer: a Python None (so a NumPy buffer or an object is never NULL)
NULL = None
MAP_FAILED = -1

RESULT_NAMES = {
    KSFT_PASS: "pass",
    KSFT_FAIL: "fail",
    KSFT_XFAIL: "xfail",
    KSFT_XPASS: "xpass",
    KSFT_SKIP: "skip",
}


class AssertionFailure(Exception):
    """An ASSERT_* that did not hold.

    Fields: message (the harness log line without its `# ` prefix, e.g.
    `hmm_tests.py:120:anon_read:Expected ret (-14) == 0 (0)`).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SkipTest(Exception):
    """SKIP(return, reason): the rest of the test (or setup) does not run."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _ChildExited(BaseException):
    """Raised by _exit() inside `in_child`: the child's code stops there."""


# --- registration -----------------------------------------------------------------------------
@dataclass
class Variant:
    """FIXTURE_VARIANT_ADD: a named set of constant parameters."""

    name: str
    data: SimpleNamespace

    def __repr__(self) -> str:
        return f"<Variant {self.name}>"


@dataclass
class Test:
    """TEST_F / TEST_F_TIMEOUT: one test body of a fixture."""

    name: str
    fn: Callable
    fixture: Fixture
    timeout: int = TEST_TIMEOUT_DEFAULT

    def __repr__(self) -> str:
        return f"<Test {self.fixture.name}.{self.name}>"


@dataclass
class Fixture:
    """FIXTURE(name): setup/teardown, its variants and its tests, in declaration order."""

    name: str
    setup: Callable | None = None
    teardown: Callable | None = None
    variants: list[Variant] = field(default_factory=list)
    tests: list[Test] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"<Fixture {self.name} variants={len(self.variants)} tests={len(self.tests)}>"


def FIXTURE(name: str) -> Fixture:
    """A new fixture; its self-data is a fresh namespace per case."""
    return Fixture(name)


def FIXTURE_VARIANT_ADD(fixture: Fixture, name: str, **data) -> Variant:
    v = Variant(name, SimpleNamespace(**data))
    fixture.variants.append(v)
    return v


def FIXTURE_SETUP(fixture: Fixture):
    def deco(fn):
        fixture.setup = fn
        return fn

    return deco


def FIXTURE_TEARDOWN(fixture: Fixture):
    def deco(fn):
        fixture.teardown = fn
        return fn

    return deco


def TEST_F(fixture: Fixture):
    """Register `fn(_metadata, self, variant)` as test `fn.__name__` of fixture."""
    return TEST_F_TIMEOUT(fixture, TEST_TIMEOUT_DEFAULT)


def TEST_F_TIMEOUT(fixture: Fixture, timeout: int):
    def deco(fn):
        if any(t.name == fn.__name__ for t in fixture.tests):
            raise ValueError(f"test {fixture.name}.{fn.__name__} is defined twice")
        fixture.tests.append(Test(fn.__name__, fn, fixture, timeout))
        return fn

    return deco


@dataclass(frozen=True)
class Case:
    """One runnable (fixture, variant, test) triple."""

    fixture: Fixture
    variant: Variant
    test: Test

    @property
    def name(self) -> str:
        return f"{self.fixture.name}.{self.variant.name}.{self.test.name}"

    def __repr__(self) -> str:
        return f"<Case {self.name}>"


@dataclass
class Filters:
    """The harness's positive filters: -f fixture, -v variant, -t test, -r f.v.t.

    A case runs if it matches any filter, or if no filter was given.
    """

    fixtures: tuple[str, ...] = ()
    variants: tuple[str, ...] = ()
    tests: tuple[str, ...] = ()
    runs: tuple[str, ...] = ()

    def empty(self) -> bool:
        return not (self.fixtures or self.variants or self.tests or self.runs)

    def enabled(self, case: Case) -> bool:
        if self.empty():
            return True
        return (
            case.fixture.name in self.fixtures
            or case.variant.name in self.variants
            or case.test.name in self.tests
            or case.name in self.runs
        )


def all_cases(fixtures: Iterable[Fixture]) -> list[Case]:
    """Every case, in the order test_harness_run() runs them."""
    return [Case(f, v, t) for f in fixtures for v in f.variants for t in f.tests]


def select_cases(fixtures: Iterable[Fixture], filters: Filters | None = None) -> list[Case]:
    filters = filters or Filters()
    return [c for c in all_cases(fixtures) if filters.enabled(c)]


# --- the running test: metadata, current process, errno ------------------------------------
class TestMetadata:
    """struct __test_metadata for one case: its result, reason and log."""

    def __init__(self, case: Case, k) -> None:
        self.case = case
        self.name = case.test.name
        self.k = k
        self.exit_code = KSFT_PASS
        self.reason = ""
        self.log: list[str] = []
        #: /dev/urandom of this case: seeded from its name, so every run is reproducible
        self.random = random.Random(zlib.crc32(case.name.encode()))

    def th_log(self, where: str, msg: str) -> None:
        self.log.append(f"# {where}:{self.name}:{msg}")

    def __repr__(self) -> str:
        return f"<TestMetadata {self.case.name} {RESULT_NAMES.get(self.exit_code)}>"


class Task:
    """A thread of the simulated test program: the process it runs in and its errno."""

    __slots__ = ("proc", "errno", "metadata")

    def __init__(self, proc, metadata: TestMetadata | None) -> None:
        self.proc = proc
        self.errno = 0
        self.metadata = metadata

    def __repr__(self) -> str:
        return f"<Task pid={self.proc.pid} errno={self.errno}>"


_task: contextvars.ContextVar[Task] = contextvars.ContextVar("hmmsim_selftest_task")


def run_as(task: Task, fn: Callable[[], object]) -> object:
    """Run fn as another thread of the test program (its own errno, maybe another process)."""
    token = _task.set(task)
    try:
        return fn()
    finally:
        _task.reset(token)


def current() -> Task:
    try:
        return _task.get()
    except LookupError:
        raise RuntimeError(
            "no simulated test process is running: call the test through "
            "hmmsim.selftests.harness.run_case (or run_tests)"
        ) from None


def current_process():
    return current().proc


def errno() -> int:
    """The calling task's errno (positive), as glibc leaves it after a failed call."""
    return current().errno


def _ret(value: int) -> int:
    """Turn a raw syscall result into glibc's: -1 with errno set on error."""
    if value < 0:
        current().errno = -value
        return -1
    return value


# --- where a check was written (for the log line) ----------------------------------------
def _caller_frame(depth: int):
    frame = inspect.currentframe()
    for _ in range(depth + 1):
        frame = frame.f_back
    return frame


def _where(frame) -> str:
    """file:line of the check, the line where the call starts (like __LINE__ of a macro)."""
    line = frame.f_lineno
    try:
        pos = inspect.getframeinfo(frame, context=0).positions
        if pos is not None and pos.lineno is not None:
            line = pos.lineno
    except Exception:  # noqa: BLE001 - best effort, only for messages
        pass
    return f"{os.path.basename(frame.f_code.co_filename)}:{line}"


def _call_args_source(frame) -> list[str] | None:
    """The source text of each argument of the call being made in `frame`."""
    try:
        pos = inspect.getframeinfo(frame).positions
    except Exception:  # noqa: BLE001 - best effort, only for messages
        return None
    if pos is None or pos.lineno is None or pos.col_offset is None:
        return None
    lines = [
        linecache.getline(frame.f_code.co_filename, n)
        for n in range(pos.lineno, (pos.end_lineno or pos.lineno) + 1)
    ]
    if not lines or not lines[0]:
        return None
    if len(lines) == 1:
        text = lines[0][pos.col_offset : pos.end_col_offset]
    else:
        lines[0] = lines[0][pos.col_offset :]
        lines[-1] = lines[-1][: pos.end_col_offset]
        text = "".join(lines)
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(node, ast.Call):
        return None
    src = text.strip()
    return [ast.get_source_segment(src, a) or "?" for a in node.args]


# --- ASSERT_* / EXPECT_* ------------------------------------------------------------------------
_OPS = {
    "==": np.equal,
    "!=": np.not_equal,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
}


_PY_OPS = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _scalar(v):
    if isinstance(v, np.generic):
        return v.item()
    return v


def _show(v) -> str:
    v = _scalar(v)
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return str(int(v))
    return str(v)


def _check(expected, seen, op: str, fatal: bool, names: tuple[str, str] | None = None) -> None:
    """__EXPECT(): compare, and on failure log and (for ASSERT) stop the test."""
    if expected is None or seen is None:
        # a pointer compared with NULL: only None is NULL
        if op not in ("==", "!="):
            raise TypeError("only == and != compare a pointer with NULL")
        arrays = False
        same = (expected is None) == (seen is None)
        ok = same if op == "==" else not same
    elif isinstance(expected, np.ndarray) or isinstance(seen, np.ndarray):
        arrays = True
        ok_vec = _OPS[op](np.asarray(expected), np.asarray(seen))
        ok = bool(np.all(ok_vec))
    else:
        arrays = False
        ok = bool(_PY_OPS[op](_scalar(expected), _scalar(seen)))
    if ok:
        return
    frame = _caller_frame(2)
    if names is None:
        src = _call_args_source(frame) or ["?", "?"]
        names = (src[0], src[1] if len(src) > 1 else "?")
    if arrays:
        bad = np.flatnonzero(~ok_vec)
        at = int(bad[0])
        ev = np.broadcast_to(np.asarray(expected), ok_vec.shape).reshape(-1)[at]
        sv = np.broadcast_to(np.asarray(seen), ok_vec.shape).reshape(-1)[at]
        detail = (
            f"Expected {names[0]} ({_show(ev)}) {op} {names[1]} ({_show(sv)})"
            f" [element {at} of {ok_vec.size}; {bad.size} differ]"
        )
    else:
        detail = f"Expected {names[0]} ({_show(expected)}) {op} {names[1]} ({_show(seen)})"
    task = _task.get(None)
    md = task.metadata if task is not None else None
    line = f"{_where(frame)}:{md.name if md else '?'}:{detail}"
    if md is not None:
        md.log.append(f"# {line}")
        md.exit_code = KSFT_FAIL
    if fatal:
        raise AssertionFailure(line)


def ASSERT_EQ(expected, seen) -> None:
    _check(expected, seen, "==", True)


def ASSERT_NE(expected, seen) -> None:
    _check(expected, seen, "!=", True)


def ASSERT_LT(expected, seen) -> None:
    _check(expected, seen, "<", True)


def ASSERT_LE(expected, seen) -> None:
    _check(expected, seen, "<=", True)


def ASSERT_GT(expected, seen) -> None:
    _check(expected, seen, ">", True)


def ASSERT_GE(expected, seen) -> None:
    _check(expected, seen, ">=", True)


def ASSERT_TRUE(seen) -> None:
    _check(0, seen, "!=", True, ("0", (_call_args_source(_caller_frame(1)) or ["?"])[0]))


def ASSERT_FALSE(seen) -> None:
    _check(0, seen, "==", True, ("0", (_call_args_source(_caller_frame(1)) or ["?"])[0]))


def ASSERT_NULL(seen) -> None:
    _check(NULL, seen, "==", True, ("NULL", (_call_args_source(_caller_frame(1)) or ["?"])[0]))


def EXPECT_EQ(expected, seen) -> None:
    _check(expected, seen, "==", False)


def EXPECT_NE(expected, seen) -> None:
    _check(expected, seen, "!=", False)


def EXPECT_LT(expected, seen) -> None:
    _check(expected, seen, "<", False)


def EXPECT_LE(expected, seen) -> None:
    _check(expected, seen, "<=", False)


def EXPECT_GT(expected, seen) -> None:
    _check(expected, seen, ">", False)


def EXPECT_GE(expected, seen) -> None:
    _check(expected, seen, ">=", False)


def EXPECT_TRUE(seen) -> None:
    _check(0, seen, "!=", False, ("0", (_call_args_source(_caller_frame(1)) or ["?"])[0]))


def EXPECT_FALSE(seen) -> None:
    _check(0, seen, "==", False, ("0", (_call_args_source(_caller_frame(1)) or ["?"])[0]))


def SKIP(reason: str) -> None:
    """SKIP(return, reason): log `#      SKIP      reason` and stop here."""
    md = current().metadata
    if md is not None:
        md.reason = reason
        md.log.append(f"#      SKIP      {reason}")
        md.exit_code = KSFT_SKIP
    raise SkipTest(reason)


def TH_LOG(msg: str) -> None:
    md = current().metadata
    if md is not None:
        md.th_log(_where(_caller_frame(1)), msg)


def fprintf_stderr(msg: str) -> None:
    """fprintf(stderr, ...) of the test program: kept in the case log."""
    md = current().metadata
    if md is not None:
        for line in msg.rstrip("\n").splitlines():
            md.log.append(line)


printf = fprintf_stderr


def urandom_u32() -> int:
    """Four bytes of /dev/urandom (deterministic per case, see TestMetadata.random)."""
    md = current().metadata
    rng = md.random if md is not None else random.Random(0)
    return rng.getrandbits(32)


# --- the simulated libc --------------------------------------------------------------------------
def mmap(addr: int, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
    """mmap(2) as glibc returns it: the address, or MAP_FAILED with errno set."""
    ret = current_process().mmap(addr or 0, length, prot, flags, fd, offset)
    return MAP_FAILED if _ret(ret) == -1 else ret


def munmap(addr: int, length: int) -> int:
    return _ret(current_process().munmap(addr, length))


def mprotect(addr: int, length: int, prot: int) -> int:
    return _ret(current_process().mprotect(addr, length, prot))


def madvise(addr: int, length: int, advice: int) -> int:
    return _ret(current_process().madvise(addr, length, advice))


def mremap(old_address: int, old_size: int, new_size: int, flags: int, new_address: int) -> int:
    ret = current_process().mremap(old_address, old_size, new_size, flags, new_address)
    return MAP_FAILED if _ret(ret) == -1 else ret


def open(path: str, flags: int, mode: int = 0) -> int:  # noqa: A001 - libc name
    return _ret(current_process().open(path, flags, mode or 0o600))


def close(fd: int) -> int:
    return _ret(current_process().close(fd))


def ioctl(fd: int, request: int, arg) -> int:
    return _ret(current_process().ioctl(fd, request, arg))


def ftruncate(fd: int, length: int) -> int:
    return _ret(current_process().ftruncate(fd, length))


def pwrite(fd: int, buf: np.ndarray, count: int, offset: int) -> int:
    data = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)[:count].tobytes()
    return _ret(current_process().pwrite(fd, data, offset))


def pread(fd: int, buf: np.ndarray, count: int, offset: int) -> int:
    got = current_process().pread(fd, count, offset)
    if isinstance(got, int):
        return _ret(got)
    view = buf.reshape(-1).view(np.uint8)
    view[: len(got)] = np.frombuffer(got, dtype=np.uint8)
    return len(got)


def fork() -> int:
    """fork(2) in the parent: the child's pid (or -1). Run the child's code in `in_child`."""
    return _ret(current_process().fork())


def waitpid(pid: int, options: int = 0) -> tuple[int, int]:
    """waitpid(2): (pid or -1, status)."""
    ret, status = current_process().waitpid(pid, options)
    return _ret(ret), status


def kill(pid: int, sig: int) -> int:
    """kill(2) of one of the caller's children."""
    proc = current_process()
    child = proc.children.get(pid)
    if child is None:
        from hmmsim.errno import ESRCH

        return _ret(-ESRCH)
    child.kill(sig)
    return 0


def _exit(status: int) -> None:
    """_exit(2): the running child ends here (only valid inside `in_child`)."""
    task = current()
    if task.proc.parent is None:
        raise RuntimeError("_exit() in the test process itself: only a forked child may _exit")
    task.proc._exit(status)
    raise _ChildExited()


class in_child:
    """Run a block as the forked child `pid` (the `if (pid == 0) { ... }` branch).

    The child runs to completion before the parent goes on (a valid
    schedule: the parent's next step is to wait for it). A failed ASSERT in
    the child is logged and marks the test failed (the C harness shares its
    metadata with forked children), then the child dies of SIGABRT like the C
    abort(); a SIGSEGV/SIGBUS access kills it with that signal. A block that
    ends without `_exit()` leaves the child running (e.g. spinning until the
    parent kills it).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._token = None

    def __enter__(self):
        parent = current()
        child = parent.proc.child(self.pid)
        self._child = child
        self._token = _task.set(Task(child, parent.metadata))
        return child

    def __exit__(self, exc_type, exc, tb) -> bool:
        _task.reset(self._token)
        if exc_type is None:
            return False
        if issubclass(exc_type, _ChildExited):
            return True
        if issubclass(exc_type, AssertionFailure):
            self._child.kill(SIGABRT)
            return True
        if issubclass(exc_type, SkipTest):
            self._child._exit(KSFT_SKIP)
            return True
        if issubclass(exc_type, SegmentationFault):
            self._child.kill(SIGSEGV)
            return True
        if issubclass(exc_type, BusError):
            self._child.kill(SIGBUS)
            return True
        return False


# --- user memory seen through a C pointer --------------------------------------------------
class user_ptr:
    """`T *ptr` into the running process's memory: ptr[i] loads, ptr[i] = v stores.

    Indices may be ints, slices or sorted integer arrays (np.arange ranges,
    possibly with gaps); every access goes through the simulated CPU of the
    process running at the time of the access, in ascending address order,
    like the C loops `for (i = ...; ++i) ptr[i] ...`.
    """

    __slots__ = ("addr", "dtype")

    def __init__(self, addr: int, dtype=np.int32) -> None:
        self.addr = int(addr)
        self.dtype = np.dtype(dtype)

    def __repr__(self) -> str:
        return f"<{self.dtype} *{self.addr:#x}>"

    def __add__(self, n: int) -> user_ptr:
        return user_ptr(self.addr + int(n) * self.dtype.itemsize, self.dtype)

    def _runs(self, idx) -> Iterator[tuple[int, int]]:
        """(first index, count) for each contiguous run of the sorted index array."""
        if idx.size == 0:
            return
        if int(idx[-1]) - int(idx[0]) == idx.size - 1:
            # strictly increasing (_index checked it) and spanning size - 1: one run
            yield int(idx[0]), int(idx.size)
            return
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1
        starts = np.concatenate(([0], breaks))
        ends = np.concatenate((breaks, [idx.size]))
        for s, e in zip(starts, ends, strict=True):
            yield int(idx[s]), int(e - s)

    def _index(self, key) -> np.ndarray | int:
        if isinstance(key, (int, np.integer)):
            return int(key)
        if isinstance(key, slice):
            if key.stop is None:
                raise ValueError("a C pointer has no length: give the slice an end")
            return np.arange(key.start or 0, key.stop, key.step or 1)
        idx = np.asarray(key)
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise TypeError("index a user_ptr with an int, a slice or a 1-D integer array")
        if idx.size > 1 and not (idx[1:] > idx[:-1]).all():
            raise ValueError("index arrays must be strictly increasing (C loop order)")
        return idx

    @staticmethod
    def _unit_slice(key) -> tuple[int, int] | None:
        """(first, count) of a `ptr[a:b]` key with step 1: one run, no index array built."""
        if not isinstance(key, slice) or key.step not in (None, 1):
            return None
        if key.stop is None:
            raise ValueError("a C pointer has no length: give the slice an end")
        first = int(key.start or 0)
        return first, max(0, int(key.stop) - first)

    def __getitem__(self, key):
        proc = current_process()
        size = self.dtype.itemsize
        run = self._unit_slice(key)
        if run is not None:
            first, n = run
            if not n:
                return np.empty(0, dtype=self.dtype)
            return proc.load_array(self.addr + first * size, n, self.dtype)
        idx = self._index(key)
        if isinstance(idx, int):
            return proc.load_array(self.addr + idx * size, 1, self.dtype)[0]
        out = np.empty(idx.size, dtype=self.dtype)
        pos = 0
        for first, n in self._runs(idx):
            out[pos : pos + n] = proc.load_array(self.addr + first * size, n, self.dtype)
            pos += n
        return out

    def __setitem__(self, key, values) -> None:
        proc = current_process()
        size = self.dtype.itemsize
        run = self._unit_slice(key)
        if run is not None:
            # `for (i = a; i < b; ++i) ptr[i] = values[i - a]`: one store, ascending
            first, n = run
            if n:
                vals = np.broadcast_to(np.asarray(values), (n,)).astype(self.dtype, copy=False)
                proc.store_array(self.addr + first * size, vals)
            return
        idx = self._index(key)
        if isinstance(idx, int):
            proc.store_array(self.addr + idx * size, np.array([values]).astype(self.dtype))
            return
        vals = np.broadcast_to(np.asarray(values), idx.shape).astype(self.dtype, copy=False)
        pos = 0
        for first, n in self._runs(idx):
            proc.store_array(self.addr + first * size, vals[pos : pos + n])
            pos += n


def low_bytes(start: int, stop: int, dtype=np.int32) -> np.ndarray:
    """The values `i & 0xFF` for i in [start, stop), as `dtype` (the C loop's `int`).

    Built by repeating one 256-element period, without the int64 index
    array and mask temporaries that `np.arange(start, stop) & 0xFF` makes
    (hmm-tests.c's benchmark fills up to 256 MiB this way). start >= 0.
    """
    if start < 0:
        raise ValueError("low_bytes: start must be >= 0")
    n = max(0, stop - start)
    period = np.roll(np.arange(256, dtype=dtype), -(start & 0xFF))
    return np.resize(period, n)


#: malloc() hands out whole pages (see malloc).
MALLOC_GRANULE = 4096


def malloc(size: int) -> np.ndarray:
    """A heap buffer of at least `size` bytes, filled with a poison byte (malloc gives no zeroes).

    The buffer is rounded up to whole pages. hmm-tests.c's snapshot test
    gives the driver a 7-byte mirror and then migrates a page through it:
    the driver copies the whole page back into that mirror, an overflow that
    glibc's heap absorbs silently. The slack here absorbs it the same way,
    so the driver's copy_to_user succeeds as it does under the C.
    """
    n = max(MALLOC_GRANULE, -(-size // MALLOC_GRANULE) * MALLOC_GRANULE)
    return np.full(n, 0xA5, dtype=np.uint8)


def memset(buf: np.ndarray, c: int, n: int) -> None:
    buf.reshape(-1).view(np.uint8)[:n] = c & 0xFF


# --- running cases ---------------------------------------------------------------------------
@dataclass
class CaseResult:
    """What one case did: its kselftest exit code, a one-line message, the log."""

    case: Case
    exit_code: int
    seconds: float
    message: str = ""
    log: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.case.name

    @property
    def result(self) -> str:
        return RESULT_NAMES.get(self.exit_code, "fail")

    @property
    def passed(self) -> bool:
        """__test_passed(): not a failure (skips and xfails count as passed)."""
        return self.exit_code != KSFT_FAIL and self.exit_code <= KSFT_SKIP

    def as_json(self) -> dict:
        """What `hmmsim selftest --json` prints for the case; "benchmark" only
        for a case that printed benchmark tables (`benchmark_tables`)."""
        out = {
            "name": self.name,
            "result": self.result,
            "seconds": round(self.seconds, 4),
            "message": self.message,
        }
        tables = benchmark_tables(self.log)
        if tables:
            out["benchmark"] = tables
        return out

    def __repr__(self) -> str:
        return f"<CaseResult {self.name} {self.result} {self.seconds:.2f}s>"


_BENCH_TITLE = re.compile(r"^=== (?P<test>.+) \((?P<mb>[0-9.]+) MB\) ===$")
_BENCH_ROW = re.compile(
    r"^(?P<what>[^|]+?)\s*\|\s*(?P<thp>[-0-9.naif]+) (?P<unit>ms|GB/s)\s*\|"
    r"\s*(?P<regular>[-0-9.naif]+) (?P=unit)\s*\|\s*(?P<pct>[-0-9.naif]+)%$"
)


def benchmark_tables(log: Iterable[str]) -> list[dict]:
    """The tables hmm-tests' print_benchmark_results() wrote to a case log, as
    data: per buffer size, each row's value with and without THP and the
    improvement in percent."""
    tables: list[dict] = []
    for line in log:
        m = _BENCH_TITLE.match(line.strip())
        if m:
            tables.append(
                {"test": m["test"], "size_bytes": round(float(m["mb"]) * 2**20), "rows": []}
            )
            continue
        m = _BENCH_ROW.match(line.strip())
        if m and tables:
            tables[-1]["rows"].append(
                {
                    "what": m["what"],
                    "unit": m["unit"],
                    "thp": float(m["thp"]),
                    "without_thp": float(m["regular"]),
                    "improvement_pct": float(m["pct"]),
                }
            )
    return tables


def _innermost(exc: BaseException) -> str:
    """file:line in function of the frame that raised exc."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "?"
    code = tb.tb_frame.f_code
    return f"{os.path.basename(code.co_filename)}:{tb.tb_lineno} in {code.co_name}"


def _fail(md: TestMetadata, msg: str) -> None:
    md.exit_code = KSFT_FAIL
    md.log.append(f"# {md.name}: {msg}")


def _run_part(md: TestMetadata, fn: Callable[[], None]) -> tuple[bool, str]:
    """Run setup, body, teardown or exit: (finished normally, failure message or "")."""
    try:
        fn()
        return True, ""
    except SkipTest:
        return False, ""
    except AssertionFailure as e:
        return False, e.message
    except SegmentationFault as e:
        msg = f"Test terminated unexpectedly by signal {SIGSEGV} ({e})"
    except BusError as e:
        msg = f"Test terminated unexpectedly by signal {SIGBUS} ({e})"
    except (KernelBug, KernelOops, OutOfMemory) as e:
        msg = f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - a crash of the model fails this case only
        msg = f"model crashed: {type(e).__name__}: {e} ({_innermost(e)})"
    _fail(md, msg)
    return False, msg


def run_case(
    case: Case,
    make_kernel: Callable[[], object],
    post_checks: Callable[[object], list[str]] | None = None,
) -> CaseResult:
    """Run one case on a fresh Kernel: setup, body, teardown, exit, checks.

    As in the C harness, a setup that fails or SKIPs skips the body and the
    teardown, and a body that fails or SKIPs is still torn down. Then the
    test process exits (its fds close, its mm is torn down, children still
    running are killed) and `post_checks(k)` lists problems (invariant
    violations, unexpected kernel warnings); any problem fails a case that
    otherwise passed. The message is the first failure.
    """
    t0 = time.perf_counter()
    k = make_kernel()
    proc = k.spawn(f"{case.fixture.name}-{case.test.name}")
    md = TestMetadata(case, k)
    token = _task.set(Task(proc, md))
    self = SimpleNamespace()
    variant = case.variant.data
    fixture = case.fixture
    messages: list[str] = []

    def part(fn: Callable[[], None]) -> bool:
        done, msg = _run_part(md, fn)
        if msg:
            messages.append(msg)
        return done

    def exit_test_process() -> None:
        for child in list(proc.children.values()):
            child.kill(SIGKILL)
        proc._exit(0)

    try:
        if part(lambda: fixture.setup and fixture.setup(md, self, variant)):
            part(lambda: case.test.fn(md, self, variant))
            if fixture.teardown is not None:
                part(lambda: fixture.teardown(md, self, variant))
        part(exit_test_process)
    finally:
        _task.reset(token)
    if post_checks is not None:
        try:
            problems = post_checks(k)
        except Exception as e:  # noqa: BLE001 - the checker itself tripped over the state
            problems = [f"post-test check crashed: {type(e).__name__}: {e}"]
        for p in problems:
            md.log.append(f"# {md.name}: {p}")
        if problems and md.exit_code != KSFT_FAIL:
            md.exit_code = KSFT_FAIL
        messages.extend(problems)
    if md.exit_code == KSFT_SKIP:
        message = md.reason
    elif md.exit_code == KSFT_FAIL:
        fallback = next((ln[2:] for ln in md.log if ln.startswith("# ")), "Test failed")
        message = messages[0] if messages else fallback
    else:
        message = ""
    return CaseResult(case, md.exit_code, time.perf_counter() - t0, message, md.log)


# --- the TAP stream ------------------------------------------------------------------------------
class TapWriter:
    """kselftest.h's counters and TAP lines, written through `out(line)`."""

    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out
        self.cnt = {"pass": 0, "fail": 0, "xfail": 0, "xpass": 0, "skip": 0, "error": 0}
        self.plan = 0

    def num(self) -> int:
        return sum(self.cnt.values())

    def print_header(self) -> None:
        if not os.environ.get("KSFT_TAP_LEVEL"):
            self.out("TAP version 13")

    def set_plan(self, n: int) -> None:
        self.plan = n
        self.out(f"1..{n}")

    def print_msg(self, msg: str) -> None:
        self.out(f"# {msg}")

    def result_code(self, exit_code: int, test_name: str, diagnostic: str | None) -> None:
        tap, directive = "ok", ""
        if exit_code == KSFT_PASS:
            self.cnt["pass"] += 1
        elif exit_code == KSFT_XFAIL:
            directive = " # XFAIL "
            self.cnt["xfail"] += 1
        elif exit_code == KSFT_XPASS:
            directive = " # XPASS "
            self.cnt["xpass"] += 1
        elif exit_code == KSFT_SKIP:
            directive = " # SKIP "
            self.cnt["skip"] += 1
        else:
            tap = "not ok"
            self.cnt["fail"] += 1
        if not directive and diagnostic is not None:
            directive = " #  "
        self.out(f"{tap} {self.num()} {test_name}{directive}{diagnostic or ''}")

    def print_cnts(self) -> None:
        c = self.cnt
        if c["skip"] > 0:
            self.out(
                f"# {c['skip']} skipped test(s) detected. Consider enabling relevant "
                "config options to improve coverage."
            )
        if self.plan != self.num():
            self.out(f"# Planned tests != run tests ({self.plan} != {self.num()})")
        self.out(
            f"# Totals: pass:{c['pass']} fail:{c['fail']} xfail:{c['xfail']} "
            f"xpass:{c['xpass']} skip:{c['skip']} error:{c['error']}"
        )


def run_tests(
    fixtures: Iterable[Fixture],
    make_kernel: Callable[[], object],
    *,
    filters: Filters | None = None,
    post_checks: Callable[[object], list[str]] | None = None,
    out: Callable[[str], None] | None = print,
    on_result: Callable[[CaseResult], None] | None = None,
    xfail: Iterable[str] = (),
) -> list[CaseResult]:
    """test_harness_run(): run the selected cases, writing TAP through `out`.

    `xfail` names cases (fixture.variant.test) expected to fail, like
    XFAIL_ADD. Pass out=None for no TAP; `on_result` sees each result.
    """
    fixtures = list(fixtures)
    cases = select_cases(fixtures, filters)
    nfix_var = len({(c.fixture.name, c.variant.name) for c in cases})
    xfails = set(xfail)
    tap = TapWriter(out or (lambda _line: None))
    tap.print_header()
    tap.set_plan(len(cases))
    tap.print_msg(f"Starting {len(cases)} tests from {nfix_var} test cases.")
    results: list[CaseResult] = []
    pass_count = 0
    try:
        pass_count = _run_selected(cases, make_kernel, post_checks, tap, xfails, results, on_result)
    except KeyboardInterrupt:
        tap.print_msg(f"Interrupted after {len(results)} of {len(cases)} tests.")
        tap.print_cnts()
        raise
    failed = any(not r.passed for r in results)
    tap.print_msg(
        f"{'FAILED' if failed else 'PASSED'}: {pass_count} / {len(results)} tests passed."
    )
    tap.print_cnts()
    return results


def _run_selected(cases, make_kernel, post_checks, tap, xfails, results, on_result) -> int:
    """run_tests' loop: results go to `results` as they come; the passes."""
    pass_count = 0
    for case in cases:
        tap.print_msg(f" RUN           {case.name} ...")
        r = run_case(case, make_kernel, post_checks)
        for line in r.log:
            tap.out(line)
        tap.print_msg(f"         {'OK' if r.passed else 'FAIL':>4}  {case.name}")
        if case.name in xfails:
            r.exit_code = KSFT_XPASS if r.passed else KSFT_XFAIL
        if r.exit_code in (KSFT_PASS, KSFT_FAIL):
            diagnostic = None
        else:
            diagnostic = r.message or "unknown"
        tap.result_code(r.exit_code, case.name, diagnostic)
        if r.passed:
            pass_count += 1
        results.append(r)
        if on_result is not None:
            on_result(r)
    return pass_count

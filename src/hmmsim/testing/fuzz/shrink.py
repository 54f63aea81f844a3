"""Replaying, localising and shrinking an operation list, and writing a replay script."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from hmmsim.testing.fuzz.ops import (
    ALLOWED_WARNINGS,
    Fork,
    FuzzFailure,
    Ioctl,
    Open,
    SeqConfig,
    Spawn,
)
from hmmsim.testing.fuzz.world import World


# --- replaying and shrinking ----------------------------------------------------------------
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


def tokens(data, addr):
    """data with the bytes at page offsets >= 8 zeroed (the token data plane's stores)."""
    arr = np.frombuffer(data, dtype=np.uint8).copy()
    arr[(addr + np.arange(arr.size)) % 4096 >= 8] = 0
    return arr.tobytes()


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

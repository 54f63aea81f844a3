"""The World: one Kernel with the dmirror driver, the shadow of every process's
bytes, and one handler per operation kind.

World is assembled from mixins, one module per concern: process_ops
(processes, memory syscalls, CPU accesses), device_ops (dmirror opens,
closes, ioctls), oracle (compare, verify, sweep, check points); shadow holds
the shadow model itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from hmmsim.testing.fuzz.device_ops import DeviceOps
from hmmsim.testing.fuzz.ops import (
    ALLOWED_WARNINGS,
    Close,
    Exit,
    Fork,
    FuzzFailure,
    Ioctl,
    Load,
    Madvise,
    Mmap,
    Mprotect,
    Mremap,
    Munmap,
    Open,
    SeqConfig,
    SetThp,
    Spawn,
    Store,
)
from hmmsim.testing.fuzz.oracle import Oracle
from hmmsim.testing.fuzz.process_ops import ProcessOps
from hmmsim.testing.fuzz.shadow import (
    FdState,
    ProcState,
)
from hmmsim.testing.invariants import strict_word_check
from hmmsim.userspace import BusError, OutOfMemory, SegmentationFault


class World(ProcessOps, DeviceOps, Oracle):
    """One Kernel driven by operations, with the shadow of what every process must read.

    Lifecycle: World(cfg) boots a Kernel and loads dmirror; `apply(op)` runs
    one operation and its checks, raising FuzzFailure on any disagreement;
    `check()` runs the invariant checker and sweeps every mapped page. With
    record=True every step appends the Python lines a replay script needs to
    `lines`. `token_stores` (default: the Kernel has the token data plane):
    stores and device writes put data in a page's first 8 bytes only
    (ops.tokens), so a byte-plane World can replay a token-plane sequence.
    """

    def __init__(self, cfg: SeqConfig, *, record: bool = False) -> None:
        self.cfg = cfg
        self.k = cfg.make_kernel()
        self.token_stores = self.k.config.data_plane == "tokens"
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

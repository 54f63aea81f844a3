"""The shadow and the oracle: the bytes every process must see, each operation, and the checks."""

from __future__ import annotations

import base64
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from hmmsim.drivers.test_hmm import DPT_XA_TAG_WRITE
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_FLAG_FAIL_ALLOC,
    HMM_DMIRROR_PROT_ERROR,
    HMM_DMIRROR_PROT_WRITE,
    hmm_dmirror_cmd,
)
from hmmsim.errno import EEXIST, EFAULT, EINVAL, ENOMEM
from hmmsim.include.mm_types import folio_mapcount, page_folio
from hmmsim.include.mman import (
    MADV_DONTNEED,
    MREMAP_DONTUNMAP,
    MREMAP_FIXED,
    O_RDWR,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.include.pgtable import (
    _PAGE_PRESENT,
    _PAGE_PSE,
    pmd_pfn,
    pmd_present,
    pte_none,
    pte_none_array,
    pte_pfn,
    pte_pfn_array,
    pte_present,
    pte_present_array,
    table_entry_pfn,
)
from hmmsim.kconfig import PAGE_SHIFT, PAGE_SIZE
from hmmsim.mm.memremap import page_pgmap
from hmmsim.mm.pgtable import pmd_offset
from hmmsim.testing.fuzz.ops import (
    _MADV_NAMES,
    _MREMAP_NAMES,
    _PROT_NAMES,
    ALLOWED_WARNINGS,
    HPAGE_NR,
    IOCTLS,
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
    _flag_names,
    describe_bytes,
    fill,
)
from hmmsim.testing.fuzz.peek import PeekError, peek, peek_frame, peek_unmapped
from hmmsim.testing.invariants import check_invariants, strict_word_check
from hmmsim.userspace import BusError, OutOfMemory, SegmentationFault, entry_at

#: verify(): a page with nothing populated (reads as zeros)
_NONE = object()
_UNMAPPED = object()
_ZERO_PAGE = bytes(PAGE_SIZE)


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
                if (
                    pmd & _PAGE_PSE
                    and pmd_present(pmd)
                    and self._huge_equal(ps, addr, blk_end, pmd)
                ):
                    addr = blk_end
                    continue
                for a in range(addr, blk_end, PAGE_SIZE):  # huge page or PMD softleaf
                    pg = pages.get(a >> PAGE_SHIFT)
                    if pg is not None and pg.cell is not None:
                        self._verify_page(ps, a, pg, None)
            elif pmd:
                i0 = (addr >> PAGE_SHIFT) & (HPAGE_NR - 1)
                ptes = words[table_entry_pfn(pmd), i0 : i0 + ((blk_end - addr) >> PAGE_SHIFT)]
                done = self._ptes_equal(ps, addr, ptes)
                for j, e in enumerate(ptes.tolist()):
                    if done is not None and done[j]:
                        self.bytes_checked += PAGE_SIZE
                        continue
                    a = addr + (j << PAGE_SHIFT)
                    pg = pages.get(a >> PAGE_SHIFT)
                    if pg is None or pg.cell is None:
                        continue
                    if pte_none(e):
                        self._verify_page(ps, a, pg, _NONE if pg.obj is None else _UNMAPPED)
                    elif pte_present(e):
                        self._verify_page(ps, a, pg, k.mem.frame(pte_pfn(e)))
                    else:
                        self._verify_page(ps, a, pg, None)
            else:
                for a in range(addr, blk_end, PAGE_SIZE):
                    pg = pages.get(a >> PAGE_SHIFT)
                    if pg is None or pg.cell is None:
                        continue
                    if pg.obj is None and pg.cell.data is None:  # zeros read as zeros
                        self.bytes_checked += PAGE_SIZE
                        continue
                    self._verify_page(ps, a, pg, _NONE if pg.obj is None else _UNMAPPED)
            addr = blk_end

    def _frames_equal(self, pgs: list, pfns: np.ndarray) -> bool:
        """Whether the frames pfns (RAM or device-coherent: any range with a
        linear map) hold exactly the shadow bytes of pages pgs, in one
        compare; False also when a PFN has no frame (the per-page path then
        reports it)."""
        got = np.empty((len(pfns), PAGE_SIZE), dtype=np.uint8)
        covered = 0
        for r in self.k.mem.ranges:
            sel = (pfns >= r.base) & (pfns < r.end)
            n = int(np.count_nonzero(sel))
            if not n:
                continue
            if r.frames is None:
                return False
            got[sel] = r.frames[pfns[sel] - r.base]
            covered += n
        if covered != len(pfns):
            return False
        want = b"".join(_ZERO_PAGE if pg.cell.data is None else pg.cell.data for pg in pgs)
        return got.tobytes() == want

    def _ptes_equal(self, ps: ProcState, addr: int, ptes: np.ndarray) -> list[bool] | None:
        """verify()'s bulk form for one table: the pages mapped by present PTEs
        (one compare of their frames with the shadow) and the never-written
        private pages of empty PTEs (zeros, nothing to read). When every page
        mapped holds its shadow bytes, return which entries are done (the
        per-page loop counts them as checked, in order, and checks the rest);
        None: check them all one by one, which reports the first difference."""
        present = pte_present_array(ptes)
        kinds = np.where(present, 1, np.where(pte_none_array(ptes), 2, 0)).tolist()
        pages = ps.pages
        vpn = addr >> PAGE_SHIFT
        done = [False] * len(kinds)
        js, pgs = [], []
        for j, kind in enumerate(kinds):
            pg = pages.get(vpn + j)
            if pg is None or pg.cell is None or not kind:
                continue
            if kind == 1:
                js.append(j)
                pgs.append(pg)
            elif pg.obj is None and pg.cell.data is None:
                done[j] = True
        if js:
            if not self._frames_equal(pgs, pte_pfn_array(ptes[js])):
                return None
            for j in js:
                done[j] = True
        return done

    def _huge_equal(self, ps: ProcState, addr: int, end: int, pmd: int) -> bool:
        """verify()'s bulk form for a present huge PMD over [addr, end): True when
        every shadowed page holds its bytes (counted as checked)."""
        pages = ps.pages
        vpn = addr >> PAGE_SHIFT
        subs, pgs = [], []
        for j in range((end - addr) >> PAGE_SHIFT):
            pg = pages.get(vpn + j)
            if pg is not None and pg.cell is not None:
                subs.append(((addr >> PAGE_SHIFT) + j) & (HPAGE_NR - 1))
                pgs.append(pg)
        if not pgs:
            return True
        if not self._frames_equal(pgs, pmd_pfn(pmd) + np.asarray(subs, dtype=np.int64)):
            return False
        self.bytes_checked += len(pgs) * PAGE_SIZE
        return True

    def verify_slow(self, ps: ProcState, addr: int, npages: int) -> None:
        """verify() page by page through peek_frame() (the specification of verify)."""
        for v in range(addr >> PAGE_SHIFT, (addr >> PAGE_SHIFT) + npages):
            pg = ps.pages.get(v)
            if pg is not None and pg.cell is not None:
                self._verify_page(ps, v << PAGE_SHIFT, pg, None)

    def _verify_page(self, ps: ProcState, a: int, pg: PageState, got) -> None:
        """Compare one page; got is its frame, _NONE for zeros, None to
        peek_frame(), _UNMAPPED to peek_unmapped() (no entry maps it)."""
        if got is None or got is _UNMAPPED:
            try:
                if got is None:
                    got = peek_frame(self.k, ps.proc, a)
                else:
                    got = peek_unmapped(self.k, ps.proc, a)
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

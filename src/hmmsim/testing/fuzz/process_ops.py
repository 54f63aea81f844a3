"""The World's process operations: spawn, fork, exit, mmap, munmap, mprotect,
madvise, mremap, CPU loads and stores, and the THP mode.
"""

from __future__ import annotations

from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_FLAG_FAIL_ALLOC,
)
from hmmsim.errno import EEXIST, EFAULT, ENOMEM
from hmmsim.include.mman import (
    MADV_DONTNEED,
    MREMAP_DONTUNMAP,
    MREMAP_FIXED,
)
from hmmsim.kconfig import PAGE_SHIFT, PAGE_SIZE
from hmmsim.testing.fuzz.ops import (
    _MADV_NAMES,
    _MREMAP_NAMES,
    _PROT_NAMES,
    Exit,
    Fork,
    FuzzFailure,
    Load,
    Madvise,
    Mmap,
    Mprotect,
    Mremap,
    Munmap,
    SetThp,
    Spawn,
    Store,
    _flag_names,
    describe_bytes,
    fill,
    tokens,
)
from hmmsim.testing.fuzz.peek import peek
from hmmsim.testing.fuzz.shadow import (
    Cell,
    PageState,
    ProcState,
    SharedObj,
    _npages_of,
    shadow_bytes,
    shadow_write,
)
from hmmsim.userspace import BusError, OutOfMemory, SegmentationFault


class ProcessOps:
    """World's handlers of the process, memory-syscall and CPU-access operations
    (a mixin of World: each performs one operation through the Process API,
    updates the shadow and checks what the kernel's rules fix)."""

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
        return shadow_bytes(ps, addr, n)

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
        src = f"fill({op.tag}, {op.n})"
        if self.token_stores:  # only a page's first 8 bytes (the token plane)
            data = tokens(data, op.addr)
            src = f"tokens({src}, {op.addr:#x})"
        done, sig = self._access_plan(ps, op.addr, op.n, write=True)
        if sig:
            exc = SegmentationFault if sig == "SIGSEGV" else BusError
            self.emit(f"expect_signal({exc.__name__}, p{op.h}.store, {op.addr:#x}, {src})")
            r = self._cpu(ps.proc.store, op.addr, data, expect=exc)
            if r == "ok":
                raise FuzzFailure("signal", f"store: expected {sig}, but it completed")
        else:
            self.emit(f"p{op.h}.store({op.addr:#x}, {src})")
            r = self._cpu(ps.proc.store, op.addr, data)
        if r == "oom":  # the chunks before the failed fault were stored, in order
            done = 0
            while done < op.n:
                chunk = min(PAGE_SIZE - ((op.addr + done) & (PAGE_SIZE - 1)), op.n - done)
                if peek(self.k, ps.proc, op.addr + done, chunk) != data[done : done + chunk]:
                    break
                done += chunk
        shadow_write(ps, op.addr, data[:done])
        self.verify(ps, op.addr & ~(PAGE_SIZE - 1), _npages_of(op.addr, op.n))

    def _set_thp(self, op: SetThp):
        self.emit(f"k.thp_enabled = {op.mode!r}")
        self.k.thp_enabled = op.mode

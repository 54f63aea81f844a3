"""A simulated user process: raw syscalls returning -errno, and CPU accesses.

Models: the userspace side of the syscalls hmm-tests.c uses (mmap, munmap,
mprotect, mremap, madvise, fork, waitpid, _exit, open, close, ioctl, pread,
pwrite, ftruncate) and the x86-64 MMU walk plus arch/x86/mm/fault.c
(do_user_addr_fault) for loads and stores, @ torvalds/linux 0eaed89c18ae.

Every syscall method returns what the raw syscall returns: a non-negative
result, or a negative errno (so tests read like `ASSERT_EQ(ret, -EFAULT)`).
`load()`/`store()` behave like CPU instructions: they walk the page tables,
set Accessed/Dirty like the hardware, take page faults through
handle_mm_fault, and raise SegmentationFault/BusError where a real process
would get SIGSEGV/SIGBUS.

A forked child is another Process object; the test drives it and calls
`_exit()`; the parent reaps it with `waitpid()`.
"""

from __future__ import annotations

import numpy as np

from hmmsim.bug import KernelBug
from hmmsim.data_plane import TokenPlaneError, check_store_tokens  # noqa: F401 (re-exported)
from hmmsim.errno import EBADF, ECHILD, EINVAL, EMFILE, ENOENT, ENOTTY, EPERM, ESRCH
from hmmsim.fast import memory as fast_mem
from hmmsim.include.mm import (
    FAULT_FLAG_USER,
    FAULT_FLAG_WRITE,
    VM_FAULT_HWPOISON,
    VM_FAULT_OOM,
    VM_FAULT_SIGBUS,
    VM_FAULT_SIGSEGV,
)
from hmmsim.include.mman import (
    MAP_ANONYMOUS,
    O_ACCMODE,
    O_CREAT,
    O_RDONLY,
    O_RDWR,
    O_TMPFILE,
    O_WRONLY,
)
from hmmsim.include.pgtable import (
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_PRESENT,
    _PAGE_PSE,
    _PAGE_RW,
    _PAGE_USER,
    pmd_pfn,
    pte_pfn,
)
from hmmsim.include.uapi_types import (
    c_int,
    int_to_ulong,
    loff_t,
    size_t,
    u32,
    u64,
    ulong,
)
from hmmsim.kconfig import PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, TASK_SIZE
from hmmsim.mm import madvise as _madvise
from hmmsim.mm import mmap as _mmap
from hmmsim.mm import mprotect as _mprotect
from hmmsim.mm import mremap as _mremap
from hmmsim.mm.fork import dup_mmap
from hmmsim.mm.memory import access_error, handle_mm_fault
from hmmsim.mm.mmap import FMODE_READ, FMODE_WRITE
from hmmsim.mm.page_alloc import __GFP_ZERO, GFP_HIGHUSER_MOVABLE
from hmmsim.mm.pgtable import pmd_offset, pmdp_get, pte_offset_map, ptep_get, set_pte_at, walk_pte
from hmmsim.mm.shmem import shmem_inode

#: what the fast first-touch fault borrows from mm/ (fast/ never imports mm/)
_FAST_MEM_REF = fast_mem.Reference(
    walk_pte=walk_pte, gfp_zeroed_movable=GFP_HIGHUSER_MOVABLE | __GFP_ZERO
)

SIGSEGV = 11
SIGBUS = 7
SIGKILL = 9
SIGCHLD = 17

#: include/uapi/linux/wait.h
WNOHANG = 0x00000001
WUNTRACED = 0x00000002
WCONTINUED = 0x00000008
__WNOTHREAD = 0x20000000
__WALL = 0x40000000
__WCLONE = 0x80000000
_WAIT_OPTIONS = WNOHANG | WUNTRACED | WCONTINUED | __WNOTHREAD | __WCLONE | __WALL
#: the same two bits under names a class body does not mangle
_W_CLONE, _W_ALL = __WCLONE, __WALL
_INT_MIN = -(1 << 31)
#: _NSIG, and the signals whose default action does not terminate
#: (kernel/signal.c SIG_KERNEL_IGNORE_MASK, SIG_KERNEL_STOP_MASK)
_NSIG = 64
_SIG_NOT_FATAL = frozenset({17, 18, 19, 20, 21, 22, 23, 28})
#: include/uapi/linux/limits.h PATH_MAX (with the terminating NUL)
PATH_MAX = 4096
#: The most bytes one load() may return: the model builds them as a host
#: bytes object (docs/differences.md)
MAX_LOAD_BYTES = 1 << 30

#: include/uapi/asm-generic/resource.h
RLIMIT_NOFILE = 7
RLIM_NLIMITS = 16
RLIM_INFINITY = (1 << 64) - 1
#: include/asm-generic/resource.h INIT_RLIMITS: the limits init starts with
#: (resource -> (soft, hard)); the rest are RLIM_INFINITY. Only
#: RLIMIT_NOFILE is enforced by the model.
INIT_RLIMITS = {
    4: (0, RLIM_INFINITY),  # RLIMIT_CORE
    3: (8 << 20, RLIM_INFINITY),  # RLIMIT_STACK (_STK_LIM)
    RLIMIT_NOFILE: (1024, 4096),  # INR_OPEN_CUR, INR_OPEN_MAX
    8: (8 << 20, 8 << 20),  # RLIMIT_MEMLOCK (MLOCK_LIMIT)
    12: (819200, 819200),  # RLIMIT_MSGQUEUE (MQ_BYTES_MAX)
    13: (0, 0),  # RLIMIT_NICE
    14: (0, 0),  # RLIMIT_RTPRIO
}
#: fs/file.c sysctl_nr_open (fs.nr_open default): the hard NOFILE ceiling
NR_OPEN = 1024 * 1024
SEGV_MAPERR = 1
SEGV_ACCERR = 2

#: fs/read_write.c MAX_RW_COUNT: one read or write moves at most this much.
MAX_RW_COUNT = ((1 << 31) - 1) & ~(PAGE_SIZE - 1)
_LONG_MAX = (1 << 63) - 1

#: A fault that is retried this many times without progress is a livelock.
FAULT_RETRY_LIMIT = 64


class SegmentationFault(Exception):
    """The access would kill a real process with SIGSEGV."""

    def __init__(self, addr: int, code: int) -> None:
        what = "no mapping" if code == SEGV_MAPERR else "permission denied"
        super().__init__(f"SIGSEGV at {addr:#x} ({what})")
        self.addr = addr
        self.si_code = code


class BusError(Exception):
    """The access would kill a real process with SIGBUS (e.g. past EOF)."""

    def __init__(self, addr: int, why: str = "bus error") -> None:
        super().__init__(f"SIGBUS at {addr:#x} ({why})")
        self.addr = addr


class OutOfMemory(Exception):
    """A page fault returned VM_FAULT_OOM that no OOM kill explains: an
    injected allocation failure (fault injection, the dmirror FAIL_ALLOC
    switch). The kernel retries such a fault (pagefault_out_of_memory);
    the model reports it instead of looping (docs/differences.md)."""


class OomKilled(OutOfMemory):
    """The process died of SIGKILL from the OOM killer (mm/oom_kill.py).

    Raised by the access whose page fault ran the OOM killer when that
    chose the faulting process itself; the process is then a zombie with
    exit status SIGKILL (WIFSIGNALED, WTERMSIG 9) for its parent to reap.
    A subclass of OutOfMemory, so code that expects the old report still
    catches it.
    """

    def __init__(self, pid: int, addr: int) -> None:
        super().__init__(f"SIGKILL: process {pid} killed by the OOM killer (fault at {addr:#x})")
        self.pid = pid
        self.addr = addr
        self.signo = SIGKILL


class WouldBlock(RuntimeError):
    """A blocking call that could never return in the model.

    The model runs one thread of control: a forked child runs only when the
    test calls its methods. waitpid() without WNOHANG on a child that is
    still alive would wait forever; the fix is to drive the child to its
    end first (`child._exit(status)` or `child.kill(sig)`), or to pass
    WNOHANG and get (0, 0) while it runs.
    """


def WIFEXITED(status: int) -> bool:
    return (status & 0x7F) == 0


def WEXITSTATUS(status: int) -> int:
    return (status >> 8) & 0xFF


def WIFSIGNALED(status: int) -> bool:
    return ((status & 0x7F) + 1) >> 1 > 0 and (status & 0x7F) != 0x7F and (status & 0x7F) != 0


def WTERMSIG(status: int) -> int:
    return status & 0x7F


class OpenFile:
    """struct file: what an fd names (an inode or a device) and its mode."""

    __slots__ = ("obj", "fmode", "count", "private")

    def __init__(self, obj, fmode: int) -> None:
        self.obj = obj
        self.fmode = fmode
        self.count = 1
        self.private = None

    def __repr__(self) -> str:
        return f"<file {self.obj!r} mode={self.fmode}>"


class Process:
    """A user process: pid, address space, file descriptors.

    Lifecycle: Kernel.spawn() or fork() creates it; _exit() tears down its
    mm and closes its fds (it stays a zombie); the parent's waitpid() reaps.
    """

    def __init__(self, k, name: str = "proc", mm=None, parent: Process | None = None) -> None:
        self.k = k
        self.pid = k.alloc_pid()
        self.name = name
        self.mm = mm if mm is not None else k.new_mm(self)
        self.mm.owner = self
        self.parent = parent
        self.children: dict[int, Process] = {}
        self.fds: dict[int, OpenFile] = {}
        self.alive = True
        self.exit_status: int | None = None
        #: the process group (a spawned process leads its own; fork inherits)
        self.pgid = parent.pgid if parent is not None else self.pid
        #: resource -> [soft, hard] (setrlimit); fork copies them
        inherit = parent.rlimits if parent is not None else INIT_RLIMITS
        self.rlimits: dict[int, list[int]] = {
            r: list(inherit.get(r, (RLIM_INFINITY, RLIM_INFINITY))) for r in range(RLIM_NLIMITS)
        }
        #: /proc/PID/oom_score_adj (-1000..1000; fork copies it); -1000 exempts
        self.oom_score_adj = parent.oom_score_adj if parent is not None else 0
        #: chosen by the OOM killer (mark_oom_victim)
        self.oom_victim = False
        k.processes[self.pid] = self

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited({self.exit_status})"
        return f"<Process {self.pid} {self.name} {state} vmas={len(self.mm.vmas)}>"

    def _check_alive(self) -> None:
        if not self.alive:
            raise RuntimeError(f"process {self.pid} has exited; it cannot run syscalls")

    # --- memory syscalls ------------------------------------------------------------------
    def mmap(
        self, addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0
    ) -> int:
        """mmap(2): the mapped address, or -errno (MAP_FAILED's errno).

        Arguments have mmap(2)'s C types (void *, size_t, int, int, int,
        off_t) and reach arch/x86/kernel/sys_x86_64.c sys_mmap as unsigned
        longs: an offset that is not page aligned is -EINVAL there, and
        the page offset is the unsigned offset >> PAGE_SHIFT.
        """
        self._check_alive()
        addr, length = ulong(addr, "addr"), size_t(length, "length")
        prot, flags = c_int(prot, "prot"), c_int(flags, "flags")
        fd, offset = c_int(fd, "fd"), u64(loff_t(offset, "offset"))
        prot, flags = int_to_ulong(prot), int_to_ulong(flags)
        if offset & (PAGE_SIZE - 1):
            return -EINVAL
        file, fmode = None, 0
        if not flags & MAP_ANONYMOUS:
            f = self.fds.get(fd)
            if f is None:
                return -EBADF
            if not isinstance(f.obj, shmem_inode) and not hasattr(f.obj, "mmap"):
                from hmmsim.errno import ENODEV

                return -ENODEV
            file, fmode = f.obj, f.fmode
        with _mmap_write(self.mm):
            return _mmap.do_mmap(
                self.mm, addr, length, prot, flags, file, fmode, offset >> PAGE_SHIFT
            )

    def munmap(self, addr: int, length: int) -> int:
        """munmap(2) (unsigned long addr, size_t len)."""
        self._check_alive()
        addr, length = ulong(addr, "addr"), size_t(length, "length")
        with _mmap_write(self.mm):
            return _mmap.do_vmi_munmap(self.mm, addr, length)

    def mprotect(self, addr: int, length: int, prot: int) -> int:
        """mprotect(2) (unsigned long start, size_t len, int prot as unsigned long)."""
        self._check_alive()
        addr, length = ulong(addr, "addr"), size_t(length, "length")
        prot = int_to_ulong(c_int(prot, "prot"))
        with _mmap_write(self.mm):
            return _mprotect.do_mprotect_pkey(self.mm, addr, length, prot)

    def mremap(
        self, old_address: int, old_size: int, new_size: int, flags: int = 0, new_address: int = 0
    ) -> int:
        """mremap(2) (unsigned long addr, old_len, new_len, flags, new_addr;
        libc passes flags as an int)."""
        self._check_alive()
        old_address = ulong(old_address, "old_address")
        old_size, new_size = size_t(old_size, "old_size"), size_t(new_size, "new_size")
        flags = int_to_ulong(c_int(flags, "flags"))
        new_address = ulong(new_address, "new_address")
        with _mmap_write(self.mm):
            return _mremap.do_mremap(self.mm, old_address, old_size, new_size, flags, new_address)

    def madvise(self, addr: int, length: int, advice: int) -> int:
        """madvise(2) (unsigned long start, size_t len_in, int behavior)."""
        self._check_alive()
        addr, length = ulong(addr, "addr"), size_t(length, "length")
        advice = c_int(advice, "advice")
        with _mmap_read(self.mm):
            return _madvise.do_madvise(self.mm, addr, length, advice)

    # --- processes -------------------------------------------------------------------------
    def fork(self) -> int:
        """fork(2): the child's pid (the child is `k.processes[pid]`)."""
        self._check_alive()
        child = Process(self.k, name=self.name, parent=self)
        ret = dup_mmap(child.mm, self.mm)
        if ret:
            child._exit(0)
            del self.k.processes[child.pid]
            return ret
        for fd, f in self.fds.items():
            f.count += 1
            child.fds[fd] = f
        self.children[child.pid] = child
        return child.pid

    def child(self, pid: int) -> Process:
        """The Process object of one of this process's children (a model
        handle, not a syscall): ValueError if `pid` is not a child."""
        pid = c_int(pid, "pid")
        try:
            return self.children[pid]
        except KeyError:
            raise ValueError(f"process {self.pid} has no child with pid {pid}") from None

    def _exit(self, status: int) -> None:
        """_exit(2): tear the mm down, close every fd, become a zombie.

        The order is do_exit()'s (kernel/exit.c): exit_mm() before
        exit_files() (and a file's ->release only runs from task work after
        both). So a driver whose last fd this is still has its mirror
        registered while the mm goes: its interval notifier sees the
        MMU_NOTIFY_RELEASE invalidation, and the process's device-private
        pages are freed by the zap before the driver's release could evict
        (migrate back) them.
        """
        status = c_int(status, "status")
        if not self.alive:
            return
        _mmap.exit_mmap(self.mm)
        for fd in sorted(self.fds):
            self.close(fd)
        self.alive = False
        self.exit_status = (status & 0xFF) << 8

    def kill(self, sig: int) -> int:
        """The process gets signal `sig` (e.g. SIGKILL from its parent): 0 or -EINVAL.

        The model's processes install no handlers, so a signal whose default
        action terminates kills the process (exit status: the signal
        number, no core dump as RLIMIT_CORE is 0); one whose default action
        is to ignore or to stop (SIGCHLD, SIGCONT, SIGURG, SIGWINCH, SIGSTOP,
        SIGTSTP, SIGTTIN, SIGTTOU: stopping is not modelled) and signal 0
        change nothing. kernel/signal.c: a number outside 0..64 is -EINVAL.
        """
        sig = c_int(sig, "sig")
        if not 0 <= sig <= _NSIG:
            return -EINVAL
        if sig == 0 or sig in _SIG_NOT_FATAL:
            return 0
        if self.alive:
            self._exit(0)
            self.exit_status = sig & 0x7F
        return 0

    def waitpid(self, pid: int, options: int = 0) -> tuple[int, int]:
        """waitpid(2) (pid_t pid, int options): (pid, status) of a reaped child,
        (0, 0) with WNOHANG while the children it names still run, or
        (-errno, 0).

        kernel/exit.c kernel_wait4 and do_wait: unknown option bits are
        -EINVAL, pid INT_MIN is -ESRCH; pid > 0 names one child, -1 any
        child, 0 the children in the caller's process group, < -1 those in
        group -pid; no such child is -ECHILD. Every child of the model is a
        fork child (exit signal SIGCHLD), so __WCLONE without __WALL finds
        none. With several exited children the oldest is reaped first (the
        kernel's children list). WUNTRACED/WCONTINUED change nothing: no
        child of the model stops. A call that would block (no WNOHANG, no
        exited child, one still alive) raises WouldBlock: the model cannot
        run the child meanwhile (see WouldBlock for the fix).
        """
        self._check_alive()
        pid, options = c_int(pid, "pid"), c_int(options, "options")
        if options & ~_WAIT_OPTIONS & 0xFFFFFFFF:
            return -EINVAL, 0
        if pid == _INT_MIN:
            return -ESRCH, 0
        if options & _W_CLONE and not options & _W_ALL:
            return -ECHILD, 0  # eligible_child: only non-SIGCHLD children
        if pid > 0:
            eligible = [c for p, c in self.children.items() if p == pid]
        elif pid == -1:
            eligible = list(self.children.values())
        else:
            group = self.pgid if pid == 0 else -pid
            eligible = [c for c in self.children.values() if c.pgid == group]
        if not eligible:
            return -ECHILD, 0
        for child in sorted(eligible, key=lambda c: c.pid):
            if not child.alive:
                del self.children[child.pid]
                self.k.processes.pop(child.pid, None)
                return child.pid, child.exit_status
        if options & WNOHANG:
            return 0, 0
        running = ", ".join(str(c.pid) for c in eligible)
        raise WouldBlock(
            f"waitpid({pid}) would block forever: child {running} is still running and the "
            "model runs one thread of control; drive the child and call its _exit() (or "
            "kill()) first, or pass WNOHANG"
        )

    def getrlimit(self, resource: int) -> tuple[int, int]:
        """getrlimit(2): (soft, hard), or (-EINVAL, 0) for an unknown resource
        (kernel/sys.c do_prlimit). RLIM_INFINITY is 2**64 - 1."""
        self._check_alive()
        resource = u32(resource, "resource")
        if resource >= RLIM_NLIMITS:
            return -EINVAL, 0
        soft, hard = self.rlimits[resource]
        return soft, hard

    def setrlimit(self, resource: int, soft: int, hard: int) -> int:
        """setrlimit(2) (unsigned int resource, struct rlimit of two unsigned
        longs): 0 or -errno, kernel/sys.c do_prlimit: an unknown resource or
        soft > hard is -EINVAL; a RLIMIT_NOFILE hard limit above fs.nr_open
        is -EPERM. The model's processes run as root (CAP_SYS_RESOURCE), so
        raising a hard limit is allowed. Only RLIMIT_NOFILE is enforced
        (open: -EMFILE)."""
        self._check_alive()
        resource = u32(resource, "resource")
        soft, hard = ulong(soft, "soft"), ulong(hard, "hard")
        if resource >= RLIM_NLIMITS or soft > hard:
            return -EINVAL
        if resource == RLIMIT_NOFILE and hard > NR_OPEN:
            return -EPERM
        self.rlimits[resource] = [soft, hard]
        return 0

    # --- files --------------------------------------------------------------------------------
    def open(self, path: str, flags: int = O_RDONLY, mode: int = 0o600) -> int:
        """open(2) of a tmpfs path (O_TMPFILE or O_CREAT under /tmp) or a device.

        `path` is the C string: a str or bytes (cut at the first NUL), None
        (a NULL pointer: -EFAULT) or a user address (an int) where the
        NUL-terminated string lies (fs/namei.c getname: -EFAULT if it is
        unreadable, -ENAMETOOLONG if PATH_MAX bytes hold no NUL, -ENOENT
        for an empty name). Anything else is a TypeError naming `path`.
        flags is an int, mode an unsigned int.
        """
        self._check_alive()
        flags, mode = c_int(flags, "flags"), u32(mode, "mode")
        path = self._getname(path)
        if isinstance(path, int):
            return path
        acc = flags & O_ACCMODE
        fmode = {O_RDONLY: FMODE_READ, O_WRONLY: FMODE_WRITE, O_RDWR: FMODE_READ | FMODE_WRITE}
        if acc not in fmode:
            return -EINVAL
        # get_unused_fd_flags -> alloc_fd before the path is looked up: the
        # lowest free fd (0-2 are stdin/stdout/stderr), -EMFILE at or above
        # RLIMIT_NOFILE's soft limit (fs/file.c)
        fd = 3
        while fd in self.fds:
            fd += 1
        if fd >= min(self.rlimits[RLIMIT_NOFILE][0], NR_OPEN):
            return -EMFILE
        k = self.k
        if path in ("/proc/self/pagemap", f"/proc/{self.pid}/pagemap"):
            from hmmsim.fs.task_mmu import pagemap_file

            if acc != O_RDONLY:
                from hmmsim.errno import EACCES

                return -EACCES
            f = OpenFile(pagemap_file(self), fmode[acc])
        elif path in ("/proc/self/clear_refs", f"/proc/{self.pid}/clear_refs"):
            from hmmsim.fs.task_mmu import clear_refs_file

            if acc == O_RDONLY:  # mode 0200: writable only
                from hmmsim.errno import EACCES

                return -EACCES
            f = OpenFile(clear_refs_file(self), fmode[acc])
        elif path in k.devices:
            dev = k.devices[path]
            f = OpenFile(dev, fmode[acc])
            ret = dev.open(f, self)
            if ret:
                return ret
        elif (flags & O_TMPFILE) == O_TMPFILE:
            if path.rstrip("/") != "/tmp":
                return -ENOENT
            inode = shmem_inode(k, "/tmp/#tmpfile")
            inode.nlink = 0
            k.fget(inode)
            f = OpenFile(inode, fmode[acc])
        elif path.startswith("/tmp/"):
            inode = k.tmpfs.get(path)
            if inode is None:
                if not flags & O_CREAT:
                    return -ENOENT
                inode = k.tmpfs[path] = shmem_inode(k, path)
            k.fget(inode)
            f = OpenFile(inode, fmode[acc])
        else:
            return -ENOENT
        self.fds[fd] = f
        return fd

    def _getname(self, path) -> str | int:
        """fs/namei.c getname: the path as a str, or -EFAULT/-ENAMETOOLONG/-ENOENT."""
        from hmmsim.errno import EFAULT

        ENAMETOOLONG = 36  # include/uapi/asm-generic/errno-base.h

        if path is None:
            return -EFAULT
        if isinstance(path, (int, np.integer)) and not isinstance(path, bool):
            addr, raw = ulong(path, "path"), bytearray()
            while len(raw) < PATH_MAX:  # strncpy_from_user, page by page
                a = (addr + len(raw)) & ((1 << 64) - 1)
                chunk = PAGE_SIZE - (a & (PAGE_SIZE - 1))
                try:
                    data = self.load(a, min(chunk, PATH_MAX - len(raw)))
                except (SegmentationFault, BusError, OutOfMemory):
                    return -EFAULT
                nul = data.find(b"\0")
                if nul >= 0:
                    raw += data[:nul]
                    break
                raw += data
            else:
                return -ENAMETOOLONG
            path = bytes(raw)
        if isinstance(path, (bytes, bytearray, memoryview)):
            path = bytes(path).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif isinstance(path, str):
            path = path.split("\0", 1)[0]
        else:
            raise TypeError(
                "path must be a str, bytes, None or a user address (int), "
                f"not {type(path).__name__}"
            )
        if len(path.encode("utf-8", "surrogateescape")) >= PATH_MAX:
            return -ENAMETOOLONG
        if not path:
            return -ENOENT
        return path

    def close(self, fd: int) -> int:
        """close(2) (unsigned int fd): 0 or -EBADF."""
        self._check_alive()
        fd = u32(fd, "fd")
        f = self.fds.pop(fd, None)
        if f is None:
            return -EBADF
        f.count -= 1
        if f.count == 0:
            if isinstance(f.obj, shmem_inode):
                self.k.fput(f.obj)
            else:
                f.obj.release(f)
        return 0

    def ioctl(self, fd: int, request: int, arg=None) -> int:
        """ioctl(2): the driver's return value (0 or -errno).

        fs/ioctl.c: the fd is an unsigned int, the request an unsigned int
        (libc's unsigned long, truncated), the argument an unsigned long:
        here either a user address (an int) or, as a convenience of the
        model, the driver's command object itself.
        """
        self._check_alive()
        fd, request = c_int(fd, "fd"), u32(request, "request")
        if isinstance(arg, (int, np.integer)):
            arg = ulong(arg, "arg")
        elif isinstance(
            arg, (float, complex, str, bytes, bytearray, memoryview, np.ndarray, np.generic)
        ) or isinstance(arg, (list, tuple, dict, set)):
            raise TypeError(
                "arg must be a user address (int), None (NULL) or the driver's command "
                f"object, not {type(arg).__name__}"
            )
        f = self.fds.get(fd)
        if f is None:
            return -EBADF
        handler = getattr(f.obj, "ioctl", None)
        if handler is None:
            return -ENOTTY
        return handler(f, self, request, arg)

    def _inode(self, fd: int):
        """The open file's object if it supports file reads (tmpfs, procfs)."""
        f = self.fds.get(fd)
        if f is None or not hasattr(f.obj, "read"):
            return None, None
        return f, f.obj

    def pread(self, fd: int, count: int, offset: int) -> bytes | int:
        """pread(2) (int fd, size_t count, off_t offset): the bytes read, or -errno.

        fs/read_write.c ksys_pread64: a negative offset is -EINVAL before
        the fd is looked up; rw_verify_area: a count that is negative as
        ssize_t, or an end that overflows loff_t, is -EINVAL; the count is
        clamped to MAX_RW_COUNT.
        """
        self._check_alive()
        fd, count, offset = c_int(fd, "fd"), size_t(count, "count"), loff_t(offset, "offset")
        if offset < 0:
            return -EINVAL
        f, inode = self._inode(fd)
        if inode is None:
            return -EBADF
        if not f.fmode & FMODE_READ:
            return -EBADF
        if count > _LONG_MAX or offset + count > _LONG_MAX:
            return -EINVAL
        return inode.read(offset, min(count, MAX_RW_COUNT))

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        """pwrite(2) (int fd, the buffer, off_t offset): bytes written, or -errno
        (ksys_pwrite64 and rw_verify_area, as pread). In the token data plane
        data that would make a byte at a file-page offset >= 8 non-zero raises
        TokenPlaneError before anything is written."""
        self._check_alive()
        fd, offset = c_int(fd, "fd"), loff_t(offset, "offset")
        data = _user_bytes(data, "data")
        if offset < 0:
            return -EINVAL
        f, inode = self._inode(fd)
        if inode is None or not f.fmode & FMODE_WRITE:
            return -EBADF
        if offset + len(data) > _LONG_MAX:
            return -EINVAL
        if self.k.mem.data_plane == "tokens":  # refused whole, before any page changes
            check_store_tokens(offset, np.frombuffer(data[:MAX_RW_COUNT], dtype=np.uint8))
        return inode.write(offset, data[:MAX_RW_COUNT])

    def ftruncate(self, fd: int, length: int) -> int:
        """ftruncate(2) (int fd, off_t length): fs/open.c do_sys_ftruncate
        checks a negative length (-EINVAL) before the fd (-EBADF)."""
        self._check_alive()
        fd, length = c_int(fd, "fd"), loff_t(length, "length")
        if length < 0:
            return -EINVAL
        f, inode = self._inode(fd)
        if inode is None or not f.fmode & FMODE_WRITE:
            return -EBADF if inode is None else -EINVAL
        return inode.setattr_size(length)

    # --- CPU accesses -----------------------------------------------------------------------
    def _translate(self, addr: int, write: bool) -> int | None:
        """The hardware walk: PFN for a permitted access, else None (fault)."""
        k = self.k
        mm = self.mm
        pmdp = pmd_offset(mm, addr)
        if pmdp is None:
            return None
        pmd = pmdp_get(k, pmdp)
        need = _PAGE_PRESENT | _PAGE_USER | (_PAGE_RW if write else 0)
        if not pmd & _PAGE_PRESENT:
            return None  # empty, PROT_NONE or a PMD softleaf entry: fault
        if pmd & _PAGE_PSE:
            if pmd & need != need:
                return None
            new = pmd | _PAGE_ACCESSED | (_PAGE_DIRTY if write else 0)
            if new != pmd:
                set_pte_at(mm, addr, pmdp, new)
            return pmd_pfn(pmd) + ((addr & (PMD_SIZE - 1)) >> PAGE_SHIFT)
        ptep = pte_offset_map(k, pmd, addr)
        if ptep is None:
            return None
        pte = ptep_get(k, ptep)
        if pte & need != need:
            return None
        new = pte | _PAGE_ACCESSED | (_PAGE_DIRTY if write else 0)
        if new != pte:
            set_pte_at(mm, addr, ptep, new)
        return pte_pfn(pte)

    def _fault(self, addr: int, write: bool) -> None:
        """do_user_addr_fault(): find the vma, check access, handle_mm_fault."""
        mm = self.mm
        nr_oom = self.k.mem.nr_oom_failures
        mm.mmap_lock.down_read()
        try:
            vma = _mmap.vma_lookup(mm, addr)
            if vma is None:
                raise SegmentationFault(addr, SEGV_MAPERR)
            flags = FAULT_FLAG_USER | (FAULT_FLAG_WRITE if write else 0)
            if access_error(flags, vma):
                raise SegmentationFault(addr, SEGV_ACCERR)
            ret = handle_mm_fault(vma, addr, flags)
        finally:
            mm.mmap_lock.up_read()
        if ret & VM_FAULT_OOM:
            if self.k.mem.nr_oom_failures != nr_oom:
                # the allocator ran out where the kernel runs the OOM killer
                from hmmsim.mm.oom_kill import out_of_memory

                if out_of_memory(self.k) is self:
                    raise OomKilled(self.pid, addr)
                return  # a victim's memory is free: the access retries
            raise OutOfMemory(f"page fault at {addr:#x}: out of modelled memory")
        if ret & VM_FAULT_SIGSEGV:
            raise SegmentationFault(addr, SEGV_ACCERR)
        if ret & (VM_FAULT_SIGBUS | VM_FAULT_HWPOISON):
            raise BusError(addr, "hardware poison" if ret & VM_FAULT_HWPOISON else "bus error")

    def page_for(self, addr: int, write: bool) -> int:
        """PFN backing addr for this access, faulting as the CPU would.

        An address at or above TASK_SIZE is never a user mapping: the kernel
        half and the top guard page fault (do_user_addr_fault's bad area),
        a non-canonical address takes a general protection fault; both are
        SIGSEGV. The page-table walk is never tried there (its indices
        would alias a user address).
        """
        self._check_alive()
        addr = ulong(addr, "addr")
        if not isinstance(write, (bool, np.bool_)):
            write = bool(c_int(write, "write"))
        write = bool(write)
        if not 0 <= addr < TASK_SIZE:
            raise SegmentationFault(addr, SEGV_MAPERR)
        for attempt in range(FAULT_RETRY_LIMIT):
            pfn = self._translate(addr, write)
            if pfn is not None:
                return pfn
            if attempt:
                # returning to userspace to retry the access: other threads run
                self.k.sched.point("yield", self)
            self._fault(addr, write)
        raise KernelBug(f"fault livelock: {FAULT_RETRY_LIMIT} faults at {addr:#x} made no progress")

    def load(self, addr: int, n: int) -> bytes:
        """Read n bytes at addr like CPU loads (void *addr, size_t n: the
        bytes come page by page, so a huge n faults where the mapping ends)."""
        addr, n = ulong(addr, "addr"), size_t(n, "n")
        if n > MAX_LOAD_BYTES:
            raise ValueError(
                f"n={n:#x}: load() returns the bytes as one host object, at most "
                f"MAX_LOAD_BYTES ({MAX_LOAD_BYTES:#x}); load in pieces"
            )
        out = bytearray()
        end = addr + n
        while addr < end:
            off = addr & (PAGE_SIZE - 1)
            chunk = min(PAGE_SIZE - off, end - addr)
            frame = self.k.mem.frame(self.page_for(addr, write=False))
            out += frame[off : off + chunk].tobytes()
            addr += chunk
        return bytes(out)

    def store(self, addr: int, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Write data at addr like CPU stores (data: bytes-like or a NumPy
        array of numbers; anything else is a TypeError naming `data`).

        With the token data plane (KConfig.data_plane "tokens"), a store that
        would make a byte at a page offset >= 8 non-zero raises
        hmmsim.data_plane.TokenPlaneError before anything happens (no fault
        taken, no byte stored)."""
        if (
            isinstance(data, np.ndarray)
            and not data.dtype.hasobject
            and data.dtype.itemsize
            and not any(
                isinstance(r.frames, np.ndarray) and np.may_share_memory(data, r.frames)
                for r in self.k.mem.ranges
            )
        ):  # its bytes in place (no host copy): the source cannot alias a frame
            buf = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        else:
            buf = np.frombuffer(_user_bytes(data, "data"), dtype=np.uint8)
        addr = ulong(addr, "addr")
        if self.k.mem.data_plane == "tokens":
            # the whole store is checked before any page is faulted or written
            check_store_tokens(addr, buf)
        pos = 0
        n = buf.size
        bulk_at = 0  # the next position worth offering to the bulk fault path
        huge_at = 0  # the next position worth checking for a huge mapping
        while pos < n:
            a = addr + pos
            off = a & (PAGE_SIZE - 1)
            if (
                not off
                and pos >= bulk_at
                and n - pos >= fast_mem.MIN_RUN * PAGE_SIZE
                and self.k.fastpath  # no mmap_lock round trip (a scheduler point) when off
            ):
                done, skip = self._store_first_touch_bulk(a, buf[pos:])
                if done:
                    pos += done
                    continue
                bulk_at = pos + skip
            chunk = min(PAGE_SIZE - off, n - pos)
            frame = self.k.mem.frame(self.page_for(a, write=True))
            frame[off : off + chunk] = buf[pos : pos + chunk]
            pos += chunk
            if pos < n and pos >= huge_at and self.k.fastpath:
                done = self._store_huge_run(a, buf[pos:])
                if done:
                    pos += done
                else:  # not a huge mapping: look again at the next PMD
                    huge_at = pos + ((PMD_SIZE - ((addr + pos) & (PMD_SIZE - 1))) & (PMD_SIZE - 1))

    def _store_first_touch_bulk(self, a: int, buf: np.ndarray) -> tuple[int, int]:
        """The whole pages of buf stored from page-aligned a on, while they
        are unpopulated anonymous pages under one PTE table that exists:
        their write faults taken in one go (fast/memory.py do_anonymous_pages), which
        leaves what a fault per page would. (bytes stored, 0), or (0, bytes
        the per-page path should store before the next offer). Not a
        kernel function (issue 16)."""
        if not self.alive:
            return 0, buf.size
        mm = self.mm
        nr = min(buf.size >> PAGE_SHIFT, (PMD_SIZE - (a & (PMD_SIZE - 1))) >> PAGE_SHIFT)
        mm.mmap_lock.down_read()
        try:
            vma = _mmap.vma_lookup(mm, a)
            if vma is None:
                return 0, buf.size
            nr = min(nr, (vma.vm_end - a) >> PAGE_SHIFT)
            pfns, skip = fast_mem.do_anonymous_pages(_FAST_MEM_REF, vma, a, nr)
        finally:
            mm.mmap_lock.up_read()
        if pfns is None:
            return 0, skip << PAGE_SHIFT
        done = len(pfns) << PAGE_SHIFT
        self.k.mem.ram.frames[pfns] = buf[:done].reshape(len(pfns), PAGE_SIZE)
        return done, 0

    def _store_huge_run(self, prev: int, rest: np.ndarray) -> int:
        """After a store to the page at prev: when a writable huge PMD maps
        it, already accessed and dirty (the store's translation made it so),
        the rest of that PMD's bytes of rest are stored in one copy. The
        per-page loop would translate each of those pages through the same
        PMD and change nothing (no fault, no PMD update), so the state is
        the same. Returns the bytes stored (0: not such a mapping, nothing
        done). Not a kernel function (issue 16)."""
        mm = self.mm
        pmdp = pmd_offset(mm, prev)
        if pmdp is None:
            return 0
        pmd = pmdp_get(self.k, pmdp)
        need = _PAGE_PRESENT | _PAGE_PSE | _PAGE_USER | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY
        if pmd & need != need:
            return 0
        start = (prev | (PAGE_SIZE - 1)) + 1  # the next page: where rest begins
        if (start ^ prev) & ~(PMD_SIZE - 1):
            return 0  # rest begins in the next PMD
        nbytes = min(rest.size, PMD_SIZE - (start & (PMD_SIZE - 1)))
        pfn = pmd_pfn(pmd) + ((start & (PMD_SIZE - 1)) >> PAGE_SHIFT)
        npages = (nbytes + PAGE_SIZE - 1) >> PAGE_SHIFT
        r = self.k.mem.range_of(pfn)
        frames = None if r is None else r.frames
        if not isinstance(frames, np.ndarray) or pfn + npages > r.end:
            return 0  # the token data plane, or not one range: page by page
        view = frames[pfn - r.base : pfn - r.base + npages]
        if not view.flags.c_contiguous:
            return 0
        view.reshape(-1)[:nbytes] = rest[:nbytes]
        return nbytes

    def load_array(self, addr: int, count: int, dtype=np.int32) -> np.ndarray:
        """Read `count` elements of dtype at addr (e.g. an int buffer)."""
        try:
            dt = np.dtype(dtype)
        except TypeError as e:
            raise TypeError(f"dtype must be a NumPy dtype: {e}") from None
        if dt.hasobject or not dt.itemsize:
            raise TypeError(f"dtype must be a fixed-size numeric dtype, not {dt}")
        count = size_t(count, "count")
        if count > MAX_LOAD_BYTES // dt.itemsize:
            raise ValueError(f"count={count:#x} elements of {dt}: more than MAX_LOAD_BYTES")
        return np.frombuffer(self.load(addr, count * dt.itemsize), dtype=dt).copy()

    def store_array(self, addr: int, values) -> None:
        """Store an array's elements (anything np.asarray makes a numeric array of)."""
        if not isinstance(values, np.ndarray):
            try:
                values = np.asarray(values)
            except (TypeError, ValueError, OverflowError) as e:
                raise TypeError(f"values must be array-like numbers: {e}") from None
        if values.dtype.hasobject:
            raise TypeError(f"values must be array-like numbers, not {type(values).__name__}")
        self.store(addr, np.ascontiguousarray(values))

    def load_u32(self, addr: int) -> int:
        return int(np.frombuffer(self.load(addr, 4), dtype=np.int32)[0])

    def store_u32(self, addr: int, value: int) -> None:
        """Store a 32-bit value (any integer, reduced like C's (u32) cast)."""
        self.store(addr, u32(value, "value").to_bytes(4, "little"))


def _user_bytes(data, name: str) -> bytes:
    """The bytes of a user buffer: bytes-like objects and NumPy arrays of
    numbers (their raw C-order bytes); TypeError naming the parameter
    otherwise (an int is not a buffer: C would not compile the call)."""
    if isinstance(data, np.ndarray):
        if data.dtype.hasobject:
            raise TypeError(f"{name} must be a buffer of numbers, not an object array")
        return np.ascontiguousarray(data).tobytes()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(
        f"{name} must be bytes, bytearray, memoryview or a NumPy array, not {type(data).__name__}"
    )


class _mmap_write:
    def __init__(self, mm) -> None:
        self.mm = mm

    def __enter__(self):
        self.mm.mmap_lock.down_write()

    def __exit__(self, *exc) -> None:
        self.mm.mmap_lock.up_write()


class _mmap_read:
    def __init__(self, mm) -> None:
        self.mm = mm

    def __enter__(self):
        self.mm.mmap_lock.down_read()

    def __exit__(self, *exc) -> None:
        self.mm.mmap_lock.up_read()


_ = (ESRCH, SIGBUS, SIGSEGV, SIGKILL)


def entry_at(proc: Process, addr: int) -> tuple[str, int]:
    """("pmd", word) for a huge/leaf PMD, ("pte", word), or ("none", 0)."""
    k = proc.k
    pmdp = pmd_offset(proc.mm, addr)
    if pmdp is None:
        return "none", 0
    pmd = pmdp_get(k, pmdp)
    if not pmd:
        return "none", 0
    if pmd & _PAGE_PSE or not pmd & _PAGE_PRESENT:
        return "pmd", pmd
    ptep = pte_offset_map(k, pmd, addr)
    return "pte", ptep_get(k, ptep)


def describe_entry(k, word: int, level: str = "pte") -> str:
    """One line: the raw word and what it decodes to, kernel names."""
    from hmmsim.include.pgtable import pte_flag_names, pte_present

    if word == 0 or level == "none":
        return f"{word:#018x}  none"
    if pte_present(word) or (level == "pmd" and word & _PAGE_PSE and word & _PAGE_PRESENT):
        pfn = pmd_pfn(word) if level == "pmd" else pte_pfn(word)
        what = ""
        if pfn == k.mem.zero_pfn or pfn == k.huge_zero_pfn:
            what = " (zero page)" if pfn == k.mem.zero_pfn else " (huge zero page)"
        return f"{word:#018x}  {level} pfn={pfn:#x}{what} [{' '.join(pte_flag_names(word))}]"
    swp = k.swp
    entry = swp.softleaf_from_pmd(word) if level == "pmd" else swp.softleaf_from_pte(word)
    return f"{word:#018x}  {level} {swp.describe_softleaf(entry)}"

"""waitpid(2) semantics and RLIMIT_NOFILE (issue 15 part 1).

kernel/exit.c kernel_wait4/do_wait: WNOHANG on a running child is (0, 0);
pid -1 waits for any child, 0 for the caller's process group, < -1 for
group -pid; bad options are -EINVAL, INT_MIN is -ESRCH, no child is -ECHILD.
A blocking wait the model could never finish raises WouldBlock naming the
fix. fs/file.c alloc_fd: an fd at or above RLIMIT_NOFILE (soft, default
1024) is -EMFILE; kernel/sys.c do_prlimit checks the new limits.
"""

from __future__ import annotations

import numpy as np
import pytest

from hmmsim.drivers.test_hmm import hmm_dmirror_init
from hmmsim.errno import ECHILD, EINVAL, EMFILE, EPERM, ESRCH
from hmmsim.include.mman import O_CREAT, O_RDWR, O_TMPFILE
from hmmsim.kernel import Kernel
from hmmsim.testing.invariants import check_invariants
from hmmsim.userspace import (
    __WALL,
    __WCLONE,
    RLIM_INFINITY,
    RLIMIT_NOFILE,
    SIGKILL,
    WEXITSTATUS,
    WNOHANG,
    WTERMSIG,
    WUNTRACED,
    WouldBlock,
)


@pytest.fixture
def k():
    k = Kernel(ram_bytes=32 << 20)
    hmm_dmirror_init(k)
    return k


def test_wnohang_on_a_running_child_is_zero(k):
    p = k.spawn()
    pid = p.fork()
    assert p.waitpid(pid, WNOHANG) == (0, 0)
    assert p.waitpid(-1, WNOHANG) == (0, 0)
    assert p.waitpid(pid, WNOHANG | WUNTRACED) == (0, 0)
    p.child(pid)._exit(3)
    got, status = p.waitpid(pid, WNOHANG)
    assert got == pid and WEXITSTATUS(status) == 3
    assert p.waitpid(pid, WNOHANG) == (-ECHILD, 0)


def test_blocking_on_a_running_child_names_the_fix(k):
    p = k.spawn()
    pid = p.fork()
    with pytest.raises(WouldBlock, match=r"_exit\(\).*WNOHANG"):
        p.waitpid(pid)
    with pytest.raises(WouldBlock):
        p.waitpid(-1)
    assert pid in p.children  # nothing reaped
    p.child(pid).kill(SIGKILL)
    got, status = p.waitpid(-1)
    assert got == pid and WTERMSIG(status) == SIGKILL


def test_pid_minus_one_reaps_any_child_oldest_first(k):
    p = k.spawn()
    a, b, c = p.fork(), p.fork(), p.fork()
    p.child(c)._exit(3)
    p.child(a)._exit(1)
    assert p.waitpid(-1)[0] == a
    assert p.waitpid(-1)[0] == c
    assert p.waitpid(-1, WNOHANG) == (0, 0)  # b still runs
    p.child(b)._exit(2)
    got, status = p.waitpid(-1)
    assert (got, WEXITSTATUS(status)) == (b, 2)
    assert p.waitpid(-1) == (-ECHILD, 0)


def test_process_groups(k):
    p = k.spawn()
    other = k.spawn()
    a = p.fork()
    p.child(a)._exit(0)
    assert p.waitpid(-other.pgid) == (-ECHILD, 0)  # nobody in that group
    assert p.waitpid(0)[0] == a  # the caller's group
    b = p.fork()
    p.child(b)._exit(0)
    assert p.waitpid(-p.pgid)[0] == b


def test_bad_arguments(k):
    p = k.spawn()
    assert p.waitpid(12345) == (-ECHILD, 0)
    pid = p.fork()
    assert p.waitpid(pid, 0x100) == (-EINVAL, 0)  # not a wait option
    assert p.waitpid(-(1 << 31)) == (-ESRCH, 0)
    assert p.waitpid(pid, __WCLONE) == (-ECHILD, 0)  # fork children send SIGCHLD
    assert p.waitpid(pid, __WCLONE | __WALL | WNOHANG) == (0, 0)
    assert p.waitpid(np.int64(pid), np.int8(WNOHANG)) == (0, 0)
    with pytest.raises(TypeError, match="pid"):
        p.waitpid(None)
    # pid_t is an int: 2**32 + pid is pid
    p.child(pid)._exit(0)
    assert p.waitpid((1 << 32) + pid)[0] == pid


def test_rlimit_nofile_default_and_emfile(k):
    p = k.spawn()
    assert p.getrlimit(RLIMIT_NOFILE) == (1024, 4096)
    fds = [p.open("/tmp", O_TMPFILE | O_RDWR) for _ in range(1024 - 3)]
    assert fds[0] == 3 and fds[-1] == 1023
    assert p.open("/tmp", O_TMPFILE | O_RDWR) == -EMFILE
    assert p.open("/dev/hmm_dmirror0", O_RDWR) == -EMFILE  # before the device opens
    assert p.open("/tmp/nope", O_RDWR) == -EMFILE  # before the lookup
    assert p.close(500) == 0
    assert p.open("/tmp/f", O_RDWR | O_CREAT) == 500  # the lowest free fd
    check_invariants(k)


def test_setrlimit_rules_and_fork_inherits(k):
    p = k.spawn()
    assert p.setrlimit(RLIMIT_NOFILE, 5, 4) == -EINVAL
    assert p.setrlimit(RLIMIT_NOFILE, 5, (1 << 20) + 1) == -EPERM
    assert p.setrlimit(99, 1, 1) == -EINVAL
    assert p.getrlimit(99) == (-EINVAL, 0)
    assert p.setrlimit(RLIMIT_NOFILE, 5, 5) == 0
    assert [p.open("/tmp", O_TMPFILE | O_RDWR) for _ in range(3)] == [3, 4, -EMFILE]
    child = p.child(p.fork())
    assert child.getrlimit(RLIMIT_NOFILE) == (5, 5)
    assert child.open("/tmp", O_TMPFILE | O_RDWR) == -EMFILE  # fds 3, 4 are inherited
    assert p.setrlimit(RLIMIT_NOFILE, 1 << 20, 1 << 20) == 0  # root may raise it
    assert p.open("/tmp", O_TMPFILE | O_RDWR) == 5
    assert p.getrlimit(0) == (RLIM_INFINITY, RLIM_INFINITY)  # RLIMIT_CPU
    child._exit(0)
    p.waitpid(child.pid)
    check_invariants(k)

"""The host exceptions the hostile-input campaign found, one test each (issue 15 part 1).

Before these fixes a Python caller got KeyError, OverflowError,
AttributeError, MemoryError or an anonymous TypeError/ValueError from deep
inside the model where C would either have accepted the value (reduced to
the parameter's type) or not compiled the call. Now: C's conversion, or a
TypeError/ValueError naming the parameter, or the kernel's errno.
"""

from __future__ import annotations

import numpy as np
import pytest

from hmmsim.drivers.test_hmm import hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import HMM_DMIRROR_READ
from hmmsim.errno import EFAULT, EINVAL, ENOENT
from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, O_CREAT, O_RDWR, PROT_READ, PROT_WRITE
from hmmsim.kernel import Kernel
from hmmsim.testing.invariants import check_invariants
from hmmsim.userspace import MAX_LOAD_BYTES, SIGKILL, WTERMSIG, SegmentationFault

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
PAGE = 4096


@pytest.fixture
def p():
    k = Kernel(ram_bytes=32 << 20)
    hmm_dmirror_init(k)
    return k.spawn()


@pytest.fixture
def a(p):
    return p.mmap(0, 4 * PAGE, RW, ANON)


def test_store_u32_reduces_like_a_c_cast(p, a):
    p.store_u32(a, 1 << 40 | 0x1234)  # was OverflowError
    p.store_u32(a + 4, -(1 << 32))
    p.store_u32(a + 8, np.int8(-1))
    assert p.load(a, 12) == bytes.fromhex("34120000 00000000 ffffffff")
    with pytest.raises(TypeError, match="value"):
        p.store_u32(a, "7")  # was ValueError from int()


def test_store_takes_buffers_only(p, a):
    with pytest.raises(TypeError, match="data"):
        p.store(a, 1 << 40)  # was MemoryError: bytes(2**40)
    with pytest.raises(TypeError, match="data"):
        p.store(a, np.int8(-16))  # was ValueError: negative count
    with pytest.raises(TypeError, match="data"):
        p.store(a, None)
    with pytest.raises(TypeError, match="data"):
        p.store(a, np.array([None, 1], dtype=object))
    p.store(a, memoryview(b"ok"))
    assert p.load(a, 2) == b"ok"


def test_store_array_refuses_objects(p, a):
    with pytest.raises(TypeError, match="values"):
        p.store_array(a, [None, 1])  # was TypeError from NumPy's view
    p.store_array(a, [1, 2])
    assert p.load_array(a, 2, np.int64).tolist() == [1, 2]


def test_load_array_checks_dtype_and_count(p, a):
    with pytest.raises(TypeError, match="dtype"):
        p.load_array(a, 1, -5)  # was NumPy's "Cannot interpret"
    with pytest.raises(TypeError, match="count"):
        p.load_array(a, float("inf"))  # was a TypeError naming n
    with pytest.raises(ValueError, match="MAX_LOAD_BYTES"):
        p.load_array(a, MAX_LOAD_BYTES, np.int32)


def test_load_is_bounded_by_what_the_host_can_hold(p, a):
    with pytest.raises(ValueError, match="MAX_LOAD_BYTES"):
        p.load(a, MAX_LOAD_BYTES + 1)
    with pytest.raises(SegmentationFault):
        p.load(a, 8 * PAGE)  # runs off the mapping first


def test_child_of_an_unknown_pid_is_a_value_error(p):
    with pytest.raises(ValueError, match="no child with pid 56"):
        p.child(56)  # was KeyError
    with pytest.raises(TypeError, match="pid"):
        p.child(1.5)
    pid = p.fork()
    assert p.child(pid).pid == pid
    assert p.child((1 << 32) + pid).pid == pid  # pid_t


def test_exit_and_kill_take_ints(p):
    c1, c2, c3 = (p.child(p.fork()) for _ in range(3))
    with pytest.raises(TypeError, match="status"):
        c1._exit(None)
    with pytest.raises(TypeError, match="sig"):
        c1.kill(1.0)
    c1._exit(np.int8(-1))  # status & 0xff, as the kernel keeps it
    assert p.waitpid(c1.pid)[1] == 0xFF00
    assert c2.kill(65) == -EINVAL and c2.alive
    assert c2.kill(0) == 0 and c2.kill(17) == 0 and c2.alive  # SIGCHLD is ignored
    assert c2.kill(SIGKILL) == 0 and not c2.alive
    assert WTERMSIG(p.waitpid(c2.pid)[1]) == SIGKILL
    assert c3.kill(-1) == -EINVAL


def test_open_takes_a_c_string(p, a):
    assert p.open(None, O_RDWR) == -EFAULT  # NULL
    assert p.open(1 << 47, O_RDWR) == -EFAULT  # unreadable
    with pytest.raises(TypeError, match="path"):
        p.open(1.5, O_RDWR)
    with pytest.raises(TypeError, match="flags"):
        p.open("/tmp/f", None)  # was TypeError from '&'
    assert p.open("", O_RDWR) == -ENOENT
    p.store(a, b"/tmp/f\0junk")
    fd = p.open(a, O_RDWR | O_CREAT)  # a user address: was AttributeError
    assert fd == 3
    assert p.open(b"/tmp/f\0ignored", O_RDWR) == 4
    assert p.open("/tmp/f\0ignored", O_RDWR) == 5
    p.store(a, b"x" * (4 * PAGE))
    assert p.open(a, O_RDWR) == -36  # no NUL in PATH_MAX bytes: -ENAMETOOLONG
    assert p.open(np.int16(3), O_RDWR) == -EFAULT  # was AttributeError
    check_invariants(p.k)


def test_close_takes_an_unsigned_int(p):
    with pytest.raises(TypeError, match="fd"):
        p.close(np.arange(2))  # was "unhashable type"
    fd = p.open("/tmp/f", O_RDWR | O_CREAT)
    assert p.close(fd + (1 << 32)) == 0


def test_page_for_converts_its_arguments(p, a):
    with pytest.raises(TypeError, match="addr"):
        p.page_for(None, False)
    with pytest.raises(TypeError, match="write"):
        p.page_for(a, np.arange(2))  # was NumPy's ambiguous truth value
    assert p.page_for(a, np.int8(1)) > 0  # was OverflowError in the PTE check
    with pytest.raises(SegmentationFault):
        p.page_for(-1, False)


def test_ioctl_arg_must_be_an_address_null_or_the_command(p):
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    with pytest.raises(TypeError, match="arg"):
        p.ioctl(fd, HMM_DMIRROR_READ, np.bool_(True))  # was AttributeError .addr
    with pytest.raises(TypeError, match="arg"):
        p.ioctl(fd, HMM_DMIRROR_READ, 1.5)
    assert p.ioctl(fd, HMM_DMIRROR_READ, None) == -EFAULT
    assert p.ioctl(fd, HMM_DMIRROR_READ, 0) == -EFAULT


def test_pwrite_data_is_a_buffer(p):
    fd = p.open("/tmp/f", O_RDWR | O_CREAT)
    with pytest.raises(TypeError, match="data"):
        p.pwrite(fd, 5, 0)  # was five zero bytes written
    assert p.pwrite(fd, np.arange(2, dtype=np.int32), 0) == 8
    assert p.pread(fd, 8, 0) == bytes.fromhex("00000000 01000000")

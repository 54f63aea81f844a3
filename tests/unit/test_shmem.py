from hmmsim.errno import EBADF, EINVAL, ENOENT
from hmmsim.include.mman import O_CREAT, O_RDONLY, O_RDWR, O_TMPFILE, O_WRONLY


def test_tmpfile_read_write_truncate(k, proc, ok):
    fd = proc.open("/tmp", O_TMPFILE | O_RDWR)
    assert fd >= 3
    assert proc.pwrite(fd, b"hello world", 4090) == 11
    assert proc.pread(fd, 20, 4088) == b"\0\0hello world"
    assert proc.ftruncate(fd, 4092) == 0
    assert proc.pread(fd, 20, 4088) == b"\0\0he"
    assert proc.ftruncate(fd, 8192) == 0
    assert proc.pread(fd, 6, 4090) == b"he\0\0\0\0"  # the truncated tail reads as zeroes
    ok(k)


def test_tmpfile_is_freed_on_last_close(k, proc, ok):
    free = k.mem.nr_free
    fd = proc.open("/tmp", O_TMPFILE | O_RDWR)
    proc.pwrite(fd, b"x" * 10000, 0)
    assert k.mem.nr_free == free - 3
    assert proc.close(fd) == 0
    assert k.mem.nr_free == free
    ok(k)


def test_open_errors_and_modes(proc):
    assert proc.open("/nonexistent", O_RDONLY) == -ENOENT
    assert proc.open("/tmp/none", O_RDONLY) == -ENOENT
    assert proc.open("/tmp/x", 3) == -EINVAL
    assert proc.open("/var", O_TMPFILE | O_RDWR) == -ENOENT
    w = proc.open("/tmp/x", O_WRONLY | O_CREAT)
    assert proc.pread(w, 1, 0) == -EBADF
    r = proc.open("/tmp/x", O_RDONLY)
    assert proc.pwrite(r, b"x", 0) == -EBADF
    assert proc.close(99) == -EBADF
    assert proc.pread(99, 1, 0) == -EBADF

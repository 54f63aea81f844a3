"""Negative errno values, as the kernel returns them.

Models: include/uapi/asm-generic/errno-base.h, errno.h and
include/linux/errno.h @ torvalds/linux 0eaed89c18ae. The model's mm/ and
drivers/ return these negated, exactly where the kernel does.
"""

EPERM = 1
ENOENT = 2
ESRCH = 3
EINTR = 4
EIO = 5
ENXIO = 6
E2BIG = 7
EBADF = 9
ECHILD = 10
EAGAIN = 11
ENOMEM = 12
EACCES = 13
EFAULT = 14
EBUSY = 16
EEXIST = 17
ENODEV = 19
EINVAL = 22
ENFILE = 23
EMFILE = 24
ENOTTY = 25
EFBIG = 27
ENOSPC = 28
ESPIPE = 29
ERANGE = 34
ENOSYS = 38
EOVERFLOW = 75
EOPNOTSUPP = 95
EHWPOISON = 133

NAMES = {v: k for k, v in dict(globals()).items() if k.startswith("E") and isinstance(v, int)}


def errname(err: int) -> str:
    """'-EINVAL' for -22, 'EINVAL' for 22, str(err) for unknown values."""
    name = NAMES.get(abs(err))
    if name is None:
        return str(err)
    return f"-{name}" if err < 0 else name

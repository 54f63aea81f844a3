"""The dmirror test driver's userspace API.

Models: lib/test_hmm_uapi.h @ torvalds/linux 0eaed89c18ae (struct
hmm_dmirror_cmd, the HMM_DMIRROR_* ioctls, snapshot bytes, FLAGS).
"""

from __future__ import annotations

from dataclasses import dataclass

_IOC_WRITE, _IOC_READ = 1, 2


def _IOWR(type_: str, nr: int, size: int) -> int:
    return ((_IOC_READ | _IOC_WRITE) << 30) | (size << 16) | (ord(type_) << 8) | nr


@dataclass
class hmm_dmirror_cmd:
    """struct hmm_dmirror_cmd: five __u64 fields.

    addr: page-aligned VA of the range; ptr: the user buffer (a bytearray /
    C-contiguous NumPy array the caller owns, or a user address in the
    calling process; anything else is refused with TypeError/ValueError
    before the ioctl does any work, and a read-only buffer is -EFAULT where
    the driver writes to it); npages (for FLAGS: the flag value); cpages,
    faults: outputs. The ioctl reduces addr, npages and an int ptr modulo
    2**64 (include/uapi_types.u64), so npages=-1 is 2**64 - 1, as in C.

    `ioctl(fd, request, cmd)` takes this object, or the user address of the
    struct laid out as five little-endian u64s (SIZEOF_HMM_DMIRROR_CMD
    bytes), which the driver reads and writes back like copy_from_user /
    copy_to_user.
    """

    addr: int = 0
    ptr: object = None
    npages: int = 0
    cpages: int = 0
    faults: int = 0


SIZEOF_HMM_DMIRROR_CMD = 5 * 8

HMM_DMIRROR_READ = _IOWR("H", 0x00, SIZEOF_HMM_DMIRROR_CMD)
HMM_DMIRROR_WRITE = _IOWR("H", 0x01, SIZEOF_HMM_DMIRROR_CMD)
HMM_DMIRROR_MIGRATE_TO_DEV = _IOWR("H", 0x02, SIZEOF_HMM_DMIRROR_CMD)
HMM_DMIRROR_MIGRATE_TO_SYS = _IOWR("H", 0x03, SIZEOF_HMM_DMIRROR_CMD)
HMM_DMIRROR_SNAPSHOT = _IOWR("H", 0x04, SIZEOF_HMM_DMIRROR_CMD)
HMM_DMIRROR_EXCLUSIVE = _IOWR("H", 0x05, SIZEOF_HMM_DMIRROR_CMD)
HMM_DMIRROR_CHECK_EXCLUSIVE = _IOWR("H", 0x06, SIZEOF_HMM_DMIRROR_CMD)
HMM_DMIRROR_RELEASE = _IOWR("H", 0x07, SIZEOF_HMM_DMIRROR_CMD)
HMM_DMIRROR_FLAGS = _IOWR("H", 0x08, SIZEOF_HMM_DMIRROR_CMD)
#: Series (e) only ("mm: add new testcase for the migrate on fault case"): its
#: RFC inserted this at 0x03 and renumbered every later ioctl; the model
#: appends it after FLAGS so that the pinned ABI stays as it is.
HMM_DMIRROR_MIGRATE_ON_FAULT_TO_DEV = _IOWR("H", 0x09, SIZEOF_HMM_DMIRROR_CMD)

HMM_DMIRROR_FLAG_FAIL_ALLOC = 1 << 0

HMM_DMIRROR_PROT_ERROR = 0xFF
HMM_DMIRROR_PROT_NONE = 0x00
HMM_DMIRROR_PROT_READ = 0x01
HMM_DMIRROR_PROT_WRITE = 0x02
HMM_DMIRROR_PROT_PMD = 0x04
HMM_DMIRROR_PROT_PUD = 0x08
HMM_DMIRROR_PROT_ZERO = 0x10
HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL = 0x20
HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE = 0x30
HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL = 0x40
HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE = 0x50

HMM_DMIRROR_MEMORY_DEVICE_PRIVATE = 1
HMM_DMIRROR_MEMORY_DEVICE_COHERENT = 2

import pytest

from hmmsim import errno
from hmmsim.bug import BUG_ON, KernelBug, KernelOops


def test_errno_values_are_linux_x86_64():
    assert (errno.EPERM, errno.ENOMEM, errno.EFAULT, errno.EBUSY, errno.EINVAL) == (
        1,
        12,
        14,
        16,
        22,
    )
    assert errno.EOPNOTSUPP == 95 and errno.EHWPOISON == 133


def test_errname():
    assert errno.errname(-22) == "-EINVAL"
    assert errno.errname(14) == "EFAULT"
    assert errno.errname(-9999) == "-9999"


def test_bug_on_raises_and_oops_names_function():
    BUG_ON(False)
    with pytest.raises(KernelBug, match="boom"):
        BUG_ON(True, "boom")
    e = KernelOops("page_address", "no linear map")
    assert e.function == "page_address" and "page_address" in str(e)

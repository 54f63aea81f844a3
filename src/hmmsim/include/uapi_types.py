"""C integer types for values crossing the user/kernel boundary.

Models: the C conversions a syscall argument or a uAPI struct field goes
through on x86-64 (LP64) @ torvalds/linux 0eaed89c18ae: include/uapi/
asm-generic/int-ll64.h (__u64, __s32 ...), include/linux/types.h (size_t,
loff_t), and the SYSCALL_DEFINEx argument types (unsigned long for
addresses and lengths, int for fds and madvise advice).

A Python caller may pass any integer; C would see it reduced to the
parameter's type: an unsigned type modulo 2**bits, a signed type modulo
2**bits in two's complement (what gcc does when converting an out-of-range
value). So `mremap(a, n, -4096)` reaches the kernel as new_len
0xfffffffffffff000, exactly as a C program's call would. bool is an integer
in C too and is accepted; NumPy integer scalars are accepted. Anything
else (float, str, None, an array) raises TypeError naming the parameter:
C would not compile the call.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Callable
from typing import Any

U64_MASK = (1 << 64) - 1
U32_MASK = (1 << 32) - 1
ULONG_MAX = U64_MASK
LONG_MAX = (1 << 63) - 1
INT_MAX = (1 << 31) - 1


def _integral(value: Any, name: str) -> int:
    """The Python int of an integral value, or TypeError naming the parameter."""
    if isinstance(value, int):  # int and bool
        return int(value)
    if isinstance(value, numbers.Integral) or (
        hasattr(value, "__index__") and not hasattr(value, "__len__")
    ):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{name} must be an integer (a C integral type), not {type(value).__name__}")


#: A C-type conversion: (value, parameter name for the TypeError) -> int.
CConv = Callable[..., int]


def _unsigned(bits: int) -> CConv:
    mask = (1 << bits) - 1

    def conv(value: Any, name: str = "value") -> int:
        return _integral(value, name) & mask

    return conv


def _signed(bits: int) -> CConv:
    mask = (1 << bits) - 1
    sign = 1 << (bits - 1)

    def conv(value: Any, name: str = "value") -> int:
        v = _integral(value, name) & mask
        return v - (1 << bits) if v & sign else v

    return conv


#: __u64 / unsigned long / size_t / u64: modulo 2**64
u64 = _unsigned(64)
ulong = u64
size_t = u64
#: __u32 / unsigned int
u32 = _unsigned(32)
#: int / __s32: modulo 2**32, two's complement
int32 = _signed(32)
c_int = int32
#: long / loff_t / off_t / __s64: modulo 2**64, two's complement
s64 = _signed(64)
loff_t = s64
long = s64


def int_to_ulong(value: int) -> int:
    """An int argument as the unsigned long register the syscall reads
    (sign-extended, then unsigned): c_int(-1) -> ULONG_MAX."""
    return value & U64_MASK


def check_integral(**args: Any) -> None:
    """TypeError naming the first argument that is not an integer."""
    for name, v in args.items():
        _integral(v, name)

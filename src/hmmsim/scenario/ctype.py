"""C integer conversions for scenario arguments (docs/scenarios.md, "Lexical rules").

A literal is converted to the C type of the parameter it feeds, as a C
compiler converts an argument to a prototype. The conversions are the
project's (`hmmsim.include.uapi_types`); these names are the scenario
reader's view of them.
"""

from __future__ import annotations

from hmmsim.include.uapi_types import U32_MASK, U64_MASK, c_int, s64, u32, u64

U64_MAX = U64_MASK
U32_MAX = U32_MASK


def to_u64(v: int) -> int:
    """unsigned long / u64 / size_t / void *: modulo 2^64."""
    return u64(v)


def to_u32(v: int) -> int:
    """unsigned int (the ioctl request sys_ioctl takes): modulo 2^32."""
    return u32(v)


def to_int(v: int) -> int:
    """int: modulo 2^32, two's complement."""
    return c_int(v)


def to_s64(v: int) -> int:
    """long / off_t / loff_t: modulo 2^64, two's complement."""
    return s64(v)

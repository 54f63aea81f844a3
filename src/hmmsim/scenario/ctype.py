"""C integer conversions for scenario arguments (docs/scenarios.md, "Lexical rules").

A literal is converted to the C type of the parameter it feeds, as a C
compiler converts an argument to a prototype: unsigned types modulo 2^N,
signed types modulo 2^N then read as two's complement. (Local to the
scenario package: src/hmmsim/include has no C-type helpers yet.)
"""

from __future__ import annotations

U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1


def to_u64(v: int) -> int:
    """unsigned long / u64 / size_t / void *."""
    return v & U64_MAX


def to_u32(v: int) -> int:
    """unsigned int (e.g. the ioctl request the kernel's sys_ioctl takes)."""
    return v & U32_MAX


def to_int(v: int) -> int:
    """int (32-bit, signed)."""
    v &= U32_MAX
    return v - (1 << 32) if v >> 31 else v


def to_s64(v: int) -> int:
    """long / off_t / loff_t (64-bit, signed)."""
    v &= U64_MAX
    return v - (1 << 64) if v >> 63 else v

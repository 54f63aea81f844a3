"""BUG_ON, WARN_ON_ONCE and oopses.

Models: include/asm-generic/bug.h and include/linux/mmdebug.h @
torvalds/linux 0eaed89c18ae. A BUG becomes a `KernelBug` exception (never
swallowed); a WARN is recorded on the Kernel, and the test suite fails when a
warning it did not expect was recorded. Where the modelled code would crash a
real kernel (NULL dereference, access through a missing linear mapping) the
model raises `KernelOops` naming the kernel function.
"""

from __future__ import annotations


class KernelBug(AssertionError):
    """A BUG_ON/VM_BUG_ON fired, or a model invariant broke."""


class KernelOops(RuntimeError):
    """The modelled code would have crashed a real kernel at this point."""

    def __init__(self, function: str, what: str) -> None:
        super().__init__(f"oops in {function}: {what}")
        self.function = function


def BUG_ON(cond: object, msg: str = "BUG_ON") -> None:
    """Raise KernelBug if `cond` is true."""
    if cond:
        raise KernelBug(msg)


VM_BUG_ON = BUG_ON

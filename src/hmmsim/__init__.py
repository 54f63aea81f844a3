"""hmmsim: an executable, kernel-faithful model of Linux HMM and device-memory migration.

Models: torvalds/linux @ 0eaed89c18ae (see hmmsim.kconfig). The public entry
points are `Kernel` (the world), `Process` (the userspace facade) and
`check_invariants`.
"""

__version__ = "0.1.0"

__all__ = ["Kernel", "KConfig", "Process", "check_invariants", "__version__"]


def __getattr__(name: str):
    if name == "Kernel":
        from hmmsim.kernel import Kernel

        return Kernel
    if name == "KConfig":
        from hmmsim.kconfig import KConfig

        return KConfig
    if name == "Process":
        from hmmsim.userspace import Process

        return Process
    if name == "check_invariants":
        from hmmsim.testing.invariants import check_invariants

        return check_invariants
    raise AttributeError(name)

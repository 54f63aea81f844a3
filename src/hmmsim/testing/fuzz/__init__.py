"""Stateful fuzzing of the model against a shadow of the bytes every process must see.

Nothing here is kernel code. A `World` drives one Kernel (with the dmirror
test driver loaded) through an operation vocabulary: processes (spawn, fork,
exit), mmap/munmap/mprotect/mremap/madvise, CPU loads and stores, dmirror
opens, closes and ioctls (READ, WRITE, MIGRATE_TO_DEV, MIGRATE_TO_SYS,
EXCLUSIVE, CHECK_EXCLUSIVE, SNAPSHOT, RELEASE, FLAGS=FAIL_ALLOC) on both
device kinds, and the THP mode. Next to the kernel it keeps a shadow model:
for every live process and every mapped page, the bytes that process must
read there (anonymous private memory is copy-on-write across fork, MAP_SHARED
anonymous memory is one object shared by everyone who maps it, DONTNEED and
munmap of private memory make it read back as zeros, a device WRITE puts the
buffer's bytes in the mirrored process, READ/MIGRATE_TO_DEV/EXCLUSIVE return
the process's bytes, migrations never change bytes, mremap moves them).

The oracle checks:
- every CPU load against the shadow, and that an access to an unmapped or
  PROT_NONE page, or a store to a read-only one, raises SegmentationFault
  (and past the end of a shared object BusError), and nothing else does;
- every device buffer (READ, MIGRATE_TO_DEV, EXCLUSIVE) against the shadow;
- after every operation, the touched range through `peek()`: a read of what
  a CPU access would see (present page, device-private backing page,
  device-exclusive page, shmem page cache, or zeros) that does not fault;
- at check points, `check_invariants` and a sweep of every mapped page;
- after every step, that no kernel warning was recorded (except the faithful
  WARN_ON listed in ALLOWED_WARNINGS).

Return values are the model's to choose wherever the kernel's rules depend on
state the shadow does not keep (vma boundaries, migration eligibility); the
shadow follows them and checks only what they imply (a successful mremap
moved mapped pages; a failed ioctl changed no bytes). Where the rule is plain
(mmap/munmap/mprotect/madvise results, MAP_FIXED_NOREPLACE) the expected
value is checked.

`run_fuzz()` is the seeded random driver behind `hmmsim fuzz` (no Hypothesis
needed); `shrink()` is delta debugging over the recorded operation list; and
`replay_script()` writes a standalone Python file that reproduces a failing
sequence through the Process API.

The package, one module per concern (the CLI is hmmsim.testing.fuzz_cli):
- ops: the workload geometry, the operation dataclasses, SeqConfig and
  feature_configs, FuzzFailure, fill;
- peek: peek/peek_frame, what a CPU access would read, read without faulting;
- shadow: the shadow model of user memory (Cell, SharedObj, PageState,
  ProcState, FdState), the bytes every process must read;
- world: the World, one Kernel with the shadow, apply() and _HANDLERS (one
  handler per operation kind), assembled from three mixins:
  process_ops (processes, memory syscalls, CPU accesses), device_ops
  (dmirror opens, closes and ioctls) and oracle (compare, verify, sweep and
  the check point);
- rules: the Generator, the seeded rules that pick the next operation;
- shrink: execute (replay a list on a fresh World), localise, shrink and
  replay_script;
- runner: run_fuzz, the run loop, and its FuzzReport and Violation.
The names in __all__ are importable from hmmsim.testing.fuzz itself.
"""

from __future__ import annotations

from hmmsim.testing.fuzz.ops import (
    ALLOWED_WARNINGS,
    ARENA_BASE,
    THP_MODES,
    Close,
    Exit,
    Fork,
    FuzzFailure,
    Ioctl,
    Load,
    Madvise,
    Mmap,
    Mprotect,
    Mremap,
    Munmap,
    Open,
    SeqConfig,
    SetThp,
    Spawn,
    Store,
    feature_configs,
    fill,
    tokens,
)
from hmmsim.testing.fuzz.peek import peek, peek_frame
from hmmsim.testing.fuzz.rules import WEIGHTS, Generator
from hmmsim.testing.fuzz.runner import FuzzReport, Violation, run_fuzz
from hmmsim.testing.fuzz.shrink import execute, replay_script, shrink
from hmmsim.testing.fuzz.world import World

__all__ = [
    "ALLOWED_WARNINGS",
    "ARENA_BASE",
    "Close",
    "Exit",
    "Fork",
    "Ioctl",
    "Load",
    "Madvise",
    "Mmap",
    "Mprotect",
    "Mremap",
    "Munmap",
    "Open",
    "SetThp",
    "Spawn",
    "Store",
    "THP_MODES",
    "WEIGHTS",
    "FuzzFailure",
    "FuzzReport",
    "Generator",
    "SeqConfig",
    "Violation",
    "World",
    "execute",
    "feature_configs",
    "fill",
    "tokens",
    "peek",
    "peek_frame",
    "replay_script",
    "run_fuzz",
    "shrink",
]

"""MMU interval notifiers: invalidation callbacks and the sequence protocol.

Models: mm/mmu_notifier.c and include/linux/mmu_notifier.h
(mmu_interval_notifier_insert/remove, mmu_interval_read_begin/read_retry/
set_seq, mmu_notifier_invalidate_range_start/end) @ torvalds/linux 0eaed89c18ae.

Every CPU path that changes or removes a user mapping calls `notify_range`
with the kernel's event. Subscribed interval notifiers overlapping the range
get `ops.invalidate(mni, range, cur_seq)` and must call
`mmu_interval_set_seq` under their own lock, as drivers do.

Differences from kernel: invalidate callbacks are called synchronously in
range_start (the kernel defers notifier removal during an invalidation; the
model forbids removal from inside a callback).
"""

from __future__ import annotations

from contextlib import contextmanager

from hmmsim.bug import KernelBug
from hmmsim.include.mmu_notifier import MMU_NOTIFIER_RANGE_BLOCKABLE, mmu_notifier_range


class mmu_interval_notifier:
    """A driver's subscription to invalidations of [start, start + length).

    Fields: interval (start, last inclusive) as in the kernel; ops (an object
    with invalidate(mni, range, cur_seq) -> bool); mm; invalidate_seq.
    Invariant: invalidate_seq only grows; it is odd while an invalidation of
    this notifier's range is in progress and not yet ended.
    """

    __slots__ = ("start", "last", "ops", "mm", "invalidate_seq", "active")

    def __init__(self) -> None:
        self.start = 0
        self.last = 0
        self.ops = None
        self.mm = None
        self.invalidate_seq = 2
        self.active = False

    def __repr__(self) -> str:
        span = f"[{self.start:#x}, {self.last:#x}]"
        return f"<mmu_interval_notifier {span} seq={self.invalidate_seq}>"


def mmu_interval_notifier_insert(mni, mm, start: int, length: int, ops) -> int:
    """Subscribe mni to [start, start+length) of mm. 0 or -EINVAL on overflow."""
    from hmmsim.errno import EINVAL

    if length == 0 or start + length - 1 < start:
        return -EINVAL
    mni.start, mni.last, mni.ops, mni.mm = start, start + length - 1, ops, mm
    mni.active = True
    mm.notifier_subscriptions.append(mni)
    return 0


def mmu_interval_notifier_remove(mni) -> None:
    mm = mni.mm
    if mm is not None and mni in mm.notifier_subscriptions:
        if mm.invalidating:
            raise KernelBug("mmu_interval_notifier_remove inside an invalidation")
        mm.notifier_subscriptions.remove(mni)
    mni.active = False


def mmu_interval_read_begin(mni) -> int:
    """Sequence to pass to read_retry; waits out an invalidation in progress."""
    k = mni.mm.k
    while mni.invalidate_seq & 1:
        k.sched.wait(mni, "mmu_interval_read_begin: invalidation in progress")
    return mni.invalidate_seq


def mmu_interval_read_retry(mni, seq: int) -> bool:
    """True if an invalidation started since seq was read (the driver retries)."""
    return mni.invalidate_seq != seq


def mmu_interval_check_retry(mni, seq: int) -> bool:
    return mni.invalidate_seq != seq


def mmu_interval_set_seq(mni, cur_seq: int) -> None:
    """Called by the invalidate callback with the driver lock held."""
    mni.invalidate_seq = cur_seq


def mmu_notifier_invalidate_range_start(r: mmu_notifier_range) -> list:
    mm = r.mm
    k = mm.k
    mm.invalidating += 1
    hit = []
    for mni in list(mm.notifier_subscriptions):
        if mni.last < r.start or mni.start >= r.end:
            continue
        cur_seq = mni.invalidate_seq + 1 if not mni.invalidate_seq & 1 else mni.invalidate_seq
        k.sched.point("notifier", mni)
        ok = mni.ops.invalidate(mni, r, cur_seq)
        if not ok and r.flags & MMU_NOTIFIER_RANGE_BLOCKABLE:
            raise KernelBug("interval notifier refused a blockable invalidation")
        hit.append(mni)
    k.notifier_events.append((r.event, r.start, r.end, r.owner))
    return hit


def mmu_notifier_invalidate_range_end(r: mmu_notifier_range, hit: list) -> None:
    mm = r.mm
    for mni in hit:
        if mni.invalidate_seq & 1:
            mni.invalidate_seq += 1
        mm.k.sched.point("release", mni)  # wakes mmu_interval_read_begin waiters
    mm.invalidating -= 1


@contextmanager
def notify_range(mm, event, start: int, end: int, owner=None, flags: int = 0):
    """with notify_range(mm, MMU_NOTIFY_X, start, end): ... brackets a change.

    mmu_notifier_invalidate_range_start() always marks the range blockable
    (only the _nonblock variant, used by the OOM reaper, does not).
    """
    flags |= MMU_NOTIFIER_RANGE_BLOCKABLE
    r = mmu_notifier_range(mm=mm, start=start, end=end, flags=flags, event=event, owner=owner)
    hit = mmu_notifier_invalidate_range_start(r)
    try:
        yield r
    finally:
        mmu_notifier_invalidate_range_end(r, hit)

"""Modelled locks: mmap_lock, page-table locks, the folio lock, seqcounts.

Models: include/linux/mmap_lock.h, include/linux/spinlock.h, the folio lock
of include/linux/pagemap.h (folio_lock/folio_trylock/folio_unlock) @
torvalds/linux 0eaed89c18ae.

Every acquire, release and wait calls the Kernel's scheduler hook
(`Kernel.sched`), which does nothing by default. With no scheduler able to
run another thread, a wait that could never end is a deadlock and raises
KernelBug naming the lock, instead of hanging.
"""

from __future__ import annotations

from hmmsim.bug import KernelBug

#: A kernel busy-retry (a "retry" point) that comes back to the same place
#: this many times in a row, with no other thread to change anything, spins
#: forever: the scheduler reports it as a livelock.
SPIN_LIMIT = 64


class Livelock(KernelBug):
    """Threads run but make no progress (or one spins on what cannot change)."""


class Scheduler:
    """The default scheduler hook: a single thread, nothing else can run.

    `point(kind, obj)` is called at every acquire/release/wait; `wait(obj,
    why)` is called when the current thread must sleep until another thread
    acts. Subclasses (testing/) switch threads there.

    A "retry" point marks a kernel loop going round again at once, without
    sleeping; `obj` names where (e.g. the address hmm_range_fault rewalks
    from). With a single thread nothing can change between two rounds, so
    SPIN_LIMIT retries at the same place in a row raise Livelock.
    """

    _spin_at: object = None
    _spins: int = 0

    def point(self, kind: str, obj: object) -> None:
        if kind == "retry":
            self._spins = self._spins + 1 if obj == self._spin_at else 1
            self._spin_at = obj
            if self._spins >= SPIN_LIMIT:
                self._spins = 0
                raise Livelock(
                    f"livelock: {obj} busy-retried {SPIN_LIMIT} times in a row "
                    "and no other thread can change what it waits for"
                )

    def wait(self, obj: object, why: str) -> None:
        raise KernelBug(f"deadlock: {why} ({obj!r}) and no other thread can run")


class Lock:
    """A sleeping or spinning mutual-exclusion lock (spinlock_t, mutex)."""

    __slots__ = ("k", "name", "holder")

    def __init__(self, k, name: str) -> None:
        self.k = k
        self.name = name
        self.holder: object | None = None

    def lock(self, owner: object = "cpu") -> None:
        self.k.sched.point("acquire", self)
        while self.holder is not None:
            self.k.sched.wait(self, f"{self.name} is held by {self.holder}")
        self.holder = owner
        self.k.held_locks.add(self)

    def trylock(self, owner: object = "cpu") -> bool:
        self.k.sched.point("acquire", self)
        if self.holder is not None:
            return False
        self.holder = owner
        self.k.held_locks.add(self)
        return True

    def unlock(self) -> None:
        if self.holder is None:
            raise KernelBug(f"unlock of unlocked {self.name}")
        self.holder = None
        self.k.held_locks.discard(self)
        self.k.sched.point("release", self)

    def is_locked(self) -> bool:
        return self.holder is not None

    def __enter__(self) -> Lock:
        self.lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    def __repr__(self) -> str:
        state = f"held by {self.holder}" if self.holder is not None else "free"
        return f"<{type(self).__name__} {self.name} {state}>"


class RWSem:
    """A reader/writer semaphore (mmap_lock)."""

    __slots__ = ("k", "name", "readers", "writer")

    def __init__(self, k, name: str) -> None:
        self.k = k
        self.name = name
        self.readers = 0
        self.writer: object | None = None

    def down_read(self) -> None:
        self.k.sched.point("acquire", self)
        while self.writer is not None:
            self.k.sched.wait(self, f"{self.name} is write-held")
        self.readers += 1
        self.k.held_locks.add(self)

    def up_read(self) -> None:
        if self.readers <= 0:
            raise KernelBug(f"up_read of {self.name} not read-held")
        self.readers -= 1
        if not self.readers and self.writer is None:
            self.k.held_locks.discard(self)
        self.k.sched.point("release", self)

    def down_write(self, owner: object = "cpu") -> None:
        self.k.sched.point("acquire", self)
        while self.writer is not None or self.readers:
            self.k.sched.wait(self, f"{self.name} is held")
        self.writer = owner
        self.k.held_locks.add(self)

    def up_write(self) -> None:
        if self.writer is None:
            raise KernelBug(f"up_write of {self.name} not write-held")
        self.writer = None
        self.k.held_locks.discard(self)
        self.k.sched.point("release", self)

    def is_locked(self) -> bool:
        return self.writer is not None or self.readers > 0

    def __repr__(self) -> str:
        return f"<RWSem {self.name} readers={self.readers} writer={self.writer}>"


# --- the folio lock (PG_locked) ------------------------------------------------------
def folio_trylock(folio) -> bool:
    """Set PG_locked if clear. True on success. A tail page is a kernel bug."""
    from hmmsim.include.mm_types import PG_locked

    if folio.a.head_off[folio.i]:
        raise KernelBug(f"folio_trylock on tail page {folio!r} (use trylock_page)")
    k = folio.k
    k.sched.point("acquire", folio)
    if folio.a.flags[folio.i] & PG_locked:
        return False
    folio.a.flags[folio.i] |= PG_locked
    return True


def folio_lock(folio) -> None:
    """Sleep until PG_locked can be taken (through the scheduler hook)."""
    while not folio_trylock(folio):
        folio.k.sched.wait(folio, "folio_lock: folio is locked")


def folio_unlock(folio) -> None:
    from hmmsim.include.mm_types import PG_locked

    if not folio.a.flags[folio.i] & PG_locked:
        raise KernelBug(f"folio_unlock of unlocked {folio!r}")
    folio.a.flags[folio.i] &= 0xFFFFFFFF ^ PG_locked
    folio.k.sched.point("release", folio)


def folio_wait_locked(folio) -> None:
    """Sleep until PG_locked is clear (no busy spin)."""
    from hmmsim.include.mm_types import PG_locked

    while folio.a.flags[folio.i] & PG_locked:
        folio.k.sched.wait(folio, "waiting for the folio lock to be released")


def trylock_page(page) -> bool:
    """trylock_page(): lock the folio the page belongs to *now*."""
    from hmmsim.include.mm_types import page_folio

    return folio_trylock(page_folio(page))


def lock_page(page) -> None:
    from hmmsim.include.mm_types import page_folio

    folio_lock(page_folio(page))


def unlock_page(page) -> None:
    from hmmsim.include.mm_types import page_folio

    folio_unlock(page_folio(page))

import pytest

from hmmsim.bug import KernelBug
from hmmsim.locking import Lock, RWSem, folio_lock, folio_trylock, folio_unlock


class Recorder:
    def __init__(self):
        self.events = []

    def point(self, kind, obj):
        self.events.append(kind)

    def wait(self, obj, why):
        raise KernelBug("deadlock: " + why)


def test_every_acquire_and_release_calls_the_scheduler_hook(k):
    rec = Recorder()
    k.sched = rec
    lock = Lock(k, "x")
    with lock:
        assert k.held_locks == {lock}
    assert rec.events == ["acquire", "release"]
    assert not k.held_locks


def test_self_deadlock_is_reported_not_hung(k):
    lock = Lock(k, "ptl")
    lock.lock()
    with pytest.raises(KernelBug, match="deadlock: ptl is held"):
        lock.lock()
    lock.unlock()
    with pytest.raises(KernelBug, match="unlock of unlocked"):
        lock.unlock()


def test_rwsem(k):
    s = RWSem(k, "mmap_lock")
    s.down_read()
    s.down_read()
    with pytest.raises(KernelBug):
        s.down_write()
    s.up_read()
    s.up_read()
    s.down_write()
    assert s.is_locked()
    s.up_write()
    assert not k.held_locks


def test_folio_lock(k):
    page = k.mem.alloc_pages(0)
    assert folio_trylock(page)
    assert not folio_trylock(page)
    with pytest.raises(KernelBug, match="folio is locked"):
        folio_lock(page)
    folio_unlock(page)
    folio_lock(page)
    folio_unlock(page)
    with pytest.raises(KernelBug):
        folio_unlock(page)
    from hmmsim.include.mm_types import folio_put

    folio_put(page)

"""Running out of memory: the OOM killer's choice and its SIGKILL (issue 15 part 1).

mm/oom_kill.c with Linux's defaults: the victim is the process whose death
frees the most (oom_badness: RSS + swap entries + page tables, plus
oom_score_adj thousandths of RAM + swap; -1000 exempts), ties go to the
later task, and it dies of SIGKILL. The model runs it when a user page fault
fails for want of memory (mm/oom_kill.py); a victim other than the faulting
process frees its memory and the access is retried.
"""

from __future__ import annotations

import pytest

from hmmsim.bug import KernelOops
from hmmsim.include.mman import MAP_ANONYMOUS, MAP_POPULATE, MAP_PRIVATE, PROT_READ, PROT_WRITE
from hmmsim.kconfig import KConfig
from hmmsim.kernel import Kernel
from hmmsim.mm.oom_kill import OOM_SCORE_ADJ_MIN, mm_pgtables_pages, oom_badness
from hmmsim.mm.util import totalram_pages
from hmmsim.testing.invariants import check_invariants
from hmmsim.userspace import (
    SIGKILL,
    WIFSIGNALED,
    WTERMSIG,
    OomKilled,
    OutOfMemory,
)

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
PAGE = 4096
MIB = 1 << 20


@pytest.fixture
def k():
    return Kernel(KConfig(ram_bytes=32 * MIB))


def fill(p, size: int) -> int:
    """A private writable mapping of `size` bytes, every page touched."""
    a = p.mmap(0, size, RW, ANON | MAP_POPULATE)
    assert a > 0
    return a


def touch_until_done(p, size: int) -> int:
    """Store to every page of a fresh `size`-byte mapping; returns it."""
    a = p.mmap(0, size, RW, ANON)
    assert a > 0
    for off in range(0, size, PAGE):
        p.store(a + off, b"y")
    return a


def test_badness_is_rss_plus_page_tables(k):
    p = k.spawn()
    a = p.mmap(0, 4 * PAGE, RW, ANON)
    p.store(a, b"x")
    p.store(a + PAGE, b"x")
    # two anon pages; a PUD, a PMD and a PTE table (the PGD is not counted)
    assert mm_pgtables_pages(p.mm) == 3
    total = totalram_pages(k)
    assert oom_badness(p, total) == 2 + 3
    p.oom_score_adj = 500
    assert oom_badness(p, total) == 5 + 500 * (total // 1000)
    p.oom_score_adj = OOM_SCORE_ADJ_MIN
    assert oom_badness(p, total) == -(1 << 63)


@pytest.mark.parametrize("kernel", ["mainline", "6.12"])
def test_the_only_process_is_killed_by_sigkill(kernel):
    k = Kernel(KConfig(ram_bytes=32 * MIB, kernel=kernel))
    free = k.mem.nr_free
    parent = k.spawn()
    p = parent.child(parent.fork())
    with pytest.raises(OomKilled) as e:
        touch_until_done(p, 28 * MIB)
    assert isinstance(e.value, OutOfMemory) and e.value.signo == SIGKILL
    assert not p.alive
    pid, status = parent.waitpid(p.pid)
    assert pid == p.pid and WIFSIGNALED(status) and WTERMSIG(status) == SIGKILL
    assert [v for v, _ in k.oom_kills] == [p.pid]
    # all of its memory came back (the parent keeps its own page tables)
    assert k.mem.nr_free + k.mem.pcp.count >= free - 8
    check_invariants(k)


def test_the_biggest_process_dies_and_the_fault_is_retried(k):
    hog = k.spawn("hog")
    fill(hog, 14 * MIB)  # about 22 MiB are free
    p = k.spawn("small")
    a = touch_until_done(p, 12 * MIB)  # needs the hog's memory: the hog goes
    assert p.alive and p.load(a + 12 * MIB - PAGE, 1) == b"y"
    assert not hog.alive and WTERMSIG(hog.exit_status) == SIGKILL
    assert [v for v, _ in k.oom_kills] == [hog.pid]
    check_invariants(k)


def test_oom_score_adj_min_exempts_a_process(k):
    hog = k.spawn("hog")
    hog.oom_score_adj = OOM_SCORE_ADJ_MIN
    fill(hog, 14 * MIB)
    p = k.spawn("small")
    with pytest.raises(OomKilled):
        touch_until_done(p, 12 * MIB)
    assert hog.alive and not p.alive
    check_invariants(k)


def test_oom_score_adj_max_picks_a_small_process(k):
    small = k.spawn("small")
    fill(small, 4 * MIB)
    small.oom_score_adj = 1000  # + 1000/1000 of RAM: more than the grower's RSS
    p = k.spawn("grower")
    a = touch_until_done(p, 20 * MIB)
    assert not small.alive and p.alive and p.load(a, 1) == b"y"
    check_invariants(k)


def test_equal_badness_kills_the_later_task(k):
    first, second = k.spawn("first"), k.spawn("second")
    assert oom_badness(first, 1) == oom_badness(second, 1) == 0
    from hmmsim.mm.oom_kill import select_bad_process

    assert select_bad_process(k)[0] is second


def test_no_killable_process_is_a_panic(k):
    p = k.spawn()
    p.oom_score_adj = OOM_SCORE_ADJ_MIN
    with pytest.raises(KernelOops, match="no killable processes"):
        touch_until_done(p, 28 * MIB)


def test_an_injected_failure_kills_nobody():
    k = Kernel(KConfig(ram_bytes=32 * MIB))
    p = k.spawn()
    a = p.mmap(0, PAGE, RW, ANON)
    k.mem.should_fail_alloc = lambda order: True
    with pytest.raises(OutOfMemory) as e:
        p.store(a, b"x")
    assert not isinstance(e.value, OomKilled)
    assert p.alive and not k.oom_kills
    k.mem.should_fail_alloc = None
    p.store(a, b"x")
    check_invariants(k)

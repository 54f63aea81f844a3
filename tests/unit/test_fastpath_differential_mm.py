"""Issue 16: the bulk first-touch fault, fork copy and zap paths give exactly
what the per-entry code gives.

The same worlds as tests/unit/test_fastpath_differential.py (one kernel with
`Kernel.fastpath` on, one with it off), compared with its whole-machine
state after every step: stores spanning unpopulated, partially populated,
THP-eligible (MADV_HUGEPAGE) and several vmas' anonymous pages, stores
filling THPs (Process.store's huge-PMD runs); fork of
populated, zero-page, read-only, device-private and THP ranges; the
child's exit; munmap. (The model has no swap device, so no swap entries.)
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from test_fastpath_differential import ANON, CONFIGS, NPAGES, RW, World, assert_same, pair

import hmmsim.fast.memory as fast_mem
from hmmsim.include.mman import MADV_HUGEPAGE, MADV_NOHUGEPAGE, PROT_READ
from hmmsim.kconfig import PAGE_SIZE, PMD_SIZE
from hmmsim.testing.invariants import check_invariants
from hmmsim.userspace import Process, SegmentationFault


@pytest.fixture
def ran(monkeypatch):
    """Counts the windows each fast form of fast/memory.py took (to prove
    they ran): a window counts when the fast function handled it (returned
    a count, or for the first-touch fault new PFNs), not when it declined."""
    taken = {"fault": 0, "copy": 0, "zap": 0}

    def counting(mod, fn, name):
        real = getattr(mod, fn)

        def spy(*args, **kw):
            done = real(*args, **kw)
            if isinstance(done, tuple):
                taken[name] += done[0] is not None
            else:
                taken[name] += done > 0
            return done

        monkeypatch.setattr(mod, fn, spy)

    counting(fast_mem, "do_anonymous_pages", "fault")
    counting(fast_mem, "copy_pte_range", "copy")
    counting(fast_mem, "zap_pte_range", "zap")
    taken["huge"] = 0
    real_huge = Process._store_huge_run

    def huge_spy(self, prev, rest):
        done = real_huge(self, prev, rest)
        taken["huge"] += done > 0
        return done

    monkeypatch.setattr(Process, "_store_huge_run", huge_spy)
    return taken


def _store(w: World, addr: int, data: bytes, proc=None):
    try:
        (proc or w.p).store(addr, data)
        return None
    except SegmentationFault as e:
        return repr(e)


def _fresh_range(w: World, rng: random.Random) -> tuple[int, int]:
    """A new anonymous range of four PMDs: a NOHUGEPAGE vma, a PMD-aligned
    MADV_HUGEPAGE vma of two PMDs (one PTE table already there), a
    NOHUGEPAGE vma; some pages already written, some read (zero page)."""
    p = w.p
    span = 4 * PMD_SIZE
    a = p.mmap(0, span + PMD_SIZE, RW, ANON)
    a = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    p.madvise(a, span, MADV_NOHUGEPAGE)
    for i in rng.sample(range(2 * 512, 3 * 512), 1) + rng.sample(range(4 * 512), 12):
        p.store(a + i * PAGE_SIZE, b"\x5a" * 3)  # written before: PTE tables here
    for i in rng.sample(range(4 * 512), 12):
        p.load(a + i * PAGE_SIZE, 1)
    p.madvise(a + PMD_SIZE, 2 * PMD_SIZE, MADV_HUGEPAGE)
    return a, span


@pytest.mark.parametrize("cfg", sorted(CONFIGS))
@pytest.mark.parametrize("seed", [1, 2])
def test_first_touch_store_matches(seed, cfg, ran):
    fast, slow = pair(seed, cfg, fork=False, common=0.9)
    ranges = []
    for w in (fast, slow):
        ranges.append(_fresh_range(w, random.Random(seed)))
    assert ranges[0] == ranges[1]
    assert_same(fast, slow, "setup")
    a, span = ranges[0]
    rng = random.Random(seed * 31)
    for step in range(4):
        start = a + rng.randrange(span // 2)
        n = rng.randrange(span // 4, a + span - start)
        data = rng.randbytes(n)
        assert _store(fast, start, data) == _store(slow, start, data), step
        assert_same(fast, slow, f"store {step}")
    # over the mixed buffer: read-only and PROT_NONE pages stop the store
    data = rng.randbytes(NPAGES * PAGE_SIZE)
    assert _store(fast, fast.a, data) == _store(slow, slow.a, data)
    assert_same(fast, slow, "store over the mixed buffer")
    for w in (fast, slow):
        w.p.munmap(a, span)
    assert_same(fast, slow, "munmap")
    check_invariants(fast.k)
    assert ran["fault"] > 0 and ran["zap"] > 0, ran


@pytest.mark.parametrize("cfg", sorted(CONFIGS))
@pytest.mark.parametrize("seed", [3, 4])
def test_fork_and_exit_match(seed, cfg, ran):
    fast, slow = pair(seed, cfg, fork=True, common=0.97)
    rng = random.Random(seed * 17)
    plan = []
    for w in (fast, slow):
        r = random.Random(seed)
        p = w.p
        b = p.mmap(0, 3 * 512 * PAGE_SIZE, RW, ANON)
        p.madvise(b, 3 * 512 * PAGE_SIZE, MADV_NOHUGEPAGE)
        p.store_array(b, np.arange(3 * 512 * PAGE_SIZE // 4, dtype=np.int32) + seed)
        for i in r.sample(range(3 * 512), 8):
            p.mprotect(b + i * PAGE_SIZE, PAGE_SIZE, PROT_READ)
        z = p.mmap(0, 64 * PAGE_SIZE, RW, ANON)
        p.load(z, 64 * PAGE_SIZE)  # zero-page mappings
        plan.append((b, z))
    assert plan[0] == plan[1]
    b, z = plan[0]
    assert_same(fast, slow, "setup")
    kids = []
    for w in (fast, slow):
        kids.append(w.p.child(w.p.fork()))
    assert_same(fast, slow, "fork")
    writes = [(rng.randrange(3 * 512 - 40), rng.randrange(1, 40)) for _ in range(6)]
    outcomes = []
    for w, kid in zip((fast, slow), kids, strict=True):
        seen = []
        for i, n in writes[:3]:  # COW breaks in the child: its exit frees those copies
            seen.append(_store(w, b + i * PAGE_SIZE, b"\x11" * (n * PAGE_SIZE), kid))
        for i, n in writes[3:]:
            seen.append(_store(w, b + i * PAGE_SIZE, b"\x22" * (n * PAGE_SIZE)))
        outcomes.append(seen)
    assert outcomes[0] == outcomes[1]
    assert_same(fast, slow, "COW breaks")
    kids2 = []
    for w in (fast, slow):
        kids2.append(w.p.child(w.p.fork()))
    assert_same(fast, slow, "second fork")
    for w, kid in zip((fast, slow), kids, strict=True):
        kid._exit(0)
        w.p.waitpid(kid.pid)
    assert_same(fast, slow, "first child's exit")
    for w in (fast, slow):
        w.p.munmap(b, 3 * 512 * PAGE_SIZE)
    assert_same(fast, slow, "parent's munmap")
    for w, kid in zip((fast, slow), kids2, strict=True):
        kid._exit(0)
        w.p.waitpid(kid.pid)
    assert_same(fast, slow, "second child's exit: the last references")
    check_invariants(fast.k)
    assert ran["copy"] > 0 and ran["zap"] > 0 and ran["fault"] > 0, ran


@pytest.mark.parametrize("cfg", sorted(CONFIGS))
@pytest.mark.parametrize("seed", [5, 6])
def test_thp_fill_matches(seed, cfg, ran):
    """Stores over a MADV_HUGEPAGE vma of three PMDs, one of them holding
    the huge zero page (read first), one with a PTE table: after each
    store's first fault per PMD the rest of a THP is one copy in the fast
    world, page by page in the other; same state, and the bytes read back."""
    fast, slow = pair(seed, cfg, fork=False, common=0.9)
    rng = random.Random(seed)
    span = 3 * PMD_SIZE
    bufs = []
    for w in (fast, slow):
        p = w.p
        b = p.mmap(0, span + PMD_SIZE, RW, ANON)
        b = (b + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
        p.madvise(b, span, MADV_HUGEPAGE)
        p.load(b + PMD_SIZE + 7 * PAGE_SIZE, 1)  # the huge zero page
        p.madvise(b + 2 * PMD_SIZE, PMD_SIZE, MADV_NOHUGEPAGE)
        p.store(b + 2 * PMD_SIZE + 3 * PAGE_SIZE, b"\x5a")  # a PTE table
        p.madvise(b + 2 * PMD_SIZE, PMD_SIZE, MADV_HUGEPAGE)
        bufs.append(b)
    assert bufs[0] == bufs[1]
    b = bufs[0]
    assert_same(fast, slow, "setup")
    # unaligned start, a partial last page; then over the THPs again
    for start, n in ((b + 3 * PAGE_SIZE + 5, span - 4 * PAGE_SIZE - 11), (b + 9, PMD_SIZE)):
        data = rng.randbytes(n)
        assert _store(fast, start, data) is None and _store(slow, start, data) is None
        assert_same(fast, slow, f"store at {start - b:#x}")
        assert fast.p.load(start, n) == data
    check_invariants(fast.k)
    for w in (fast, slow):
        w.p.munmap(b, span)
    assert_same(fast, slow, "munmap")
    assert ran["huge"] >= 3, ran

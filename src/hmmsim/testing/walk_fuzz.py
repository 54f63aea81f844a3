"""A seeded fuzzer of series (e)'s unified walk, driven through the kernel API.

lib/test_hmm.c does not use HMM_PFN_REQ_MIGRATE, so the dmirror fuzzer never
reaches series (e)'s collect-while-walking path. This one plays the driver:
it builds a random address space (THPs, PMD-sized holes, present, zero-page
and empty small pages, read-only ranges), then for a random PMD-aligned or
page-aligned subrange runs hmm_range_fault with HMM_PFN_REQ_MIGRATE,
migrate_hmm_range_setup, gives every collected small page a system-RAM
destination (locked, bytes copied) or none, and runs migrate_vma_pages and
migrate_vma_finalize. After each round it compares every byte with what was
stored and runs the invariant checker. Any exception, lost byte or broken
invariant is a failure.

Not kernel code: a driver-shaped client of mm/hmm.c and mm/migrate_device.c.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from hmmsim.include.hmm import hmm_range
from hmmsim.include.migrate import (
    MIGRATE_PFN_COMPOUND,
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_VALID,
    MIGRATE_VMA_SELECT_COMPOUND,
    MIGRATE_VMA_SELECT_SYSTEM,
    migrate_vma,
)
from hmmsim.include.mman import MADV_HUGEPAGE, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from hmmsim.kconfig import PAGE_SIZE, PMD_SIZE
from hmmsim.kernel import Kernel
from hmmsim.locking import lock_page
from hmmsim.mm.hmm import hmm_range_fault
from hmmsim.mm.migrate import migrate_pfn_from_page, migrate_pfn_to_page
from hmmsim.mm.migrate_device import (
    migrate_hmm_range_setup,
    migrate_vma_finalize,
    migrate_vma_pages,
)
from hmmsim.mm.mmu_notifier import (
    mmu_interval_notifier,
    mmu_interval_notifier_insert,
    mmu_interval_notifier_remove,
    mmu_interval_read_begin,
    mmu_interval_set_seq,
)
from hmmsim.testing.invariants import check_bytes, check_invariants, strict_word_check

RW = PROT_READ | PROT_WRITE
NPMD = 3


class _Sub:
    def invalidate(self, mni, r, cur_seq):
        mmu_interval_set_seq(mni, cur_seq)
        return True


@dataclass
class WalkFuzzReport:
    runs: int = 0
    rounds: int = 0
    migrated: int = 0
    failure: str = ""
    seed: int = 0


def _populate(k, p, rng: random.Random) -> tuple[int, np.ndarray]:
    """A vma of NPMD PMDs with a random mix of THPs, holes, pages and zero pages."""
    raw = p.mmap(0, (NPMD + 1) * PMD_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    base = (raw + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    p.madvise(raw, (NPMD + 1) * PMD_SIZE, MADV_HUGEPAGE)
    words = PMD_SIZE // 4
    shadow = np.zeros(NPMD * words, dtype=np.int32)
    for j in range(NPMD):
        a = base + j * PMD_SIZE
        kind = rng.choice(("thp", "hole", "small"))
        if kind == "thp":
            k.thp_enabled = "madvise"
            data = rng.randrange(1, 1 << 30) + np.arange(words, dtype=np.int32)
            p.store_array(a, data)
            shadow[j * words : (j + 1) * words] = data
        elif kind == "small":
            k.thp_enabled = "never"
            for i in rng.sample(range(512), 24):
                if rng.random() < 0.3:
                    p.load(a + i * PAGE_SIZE, 1)  # the zero page
                else:
                    v = rng.randrange(1, 1 << 30)
                    p.store_array(a + i * PAGE_SIZE, np.full(4, v, dtype=np.int32))
                    shadow[(j * 512 + i) * 1024 : (j * 512 + i) * 1024 + 4] = v
    k.thp_enabled = "madvise"
    return base, shadow


def _round(k, p, base: int, rng: random.Random) -> int:
    """One unified walk + migration of a random subrange; returns pages migrated."""
    L = k.hmm
    if rng.random() < 0.5:
        first, n = rng.randrange(NPMD) * 512, 512 * rng.randint(1, 2)
    else:
        first, n = rng.randrange(NPMD * 512 - 8), rng.randint(1, 40)
    n = min(n, NPMD * 512 - first)
    start = base + first * PAGE_SIZE
    mni = mmu_interval_notifier()
    mmu_interval_notifier_insert(mni, p.mm, start, n * PAGE_SIZE, _Sub())
    m = migrate_vma(
        src=[0] * n, dst=[0] * n, flags=MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_SELECT_COMPOUND
    )
    r = hmm_range(
        notifier=mni,
        start=start,
        end=start + n * PAGE_SIZE,
        hmm_pfns=[0] * n,
        default_flags=L.HMM_PFN_REQ_MIGRATE,
        migrate=m,
    )
    moved = 0
    p.mm.mmap_lock.down_read()
    try:
        r.notifier_seq = mmu_interval_read_begin(mni)
        if hmm_range_fault(r) != 0:
            return 0
        migrate_hmm_range_setup(r)
        give = rng.random() < 0.7
        for i in range(n):
            s = int(m.src[i])
            if not give or not s & MIGRATE_PFN_MIGRATE or s & MIGRATE_PFN_COMPOUND:
                continue
            dpage = k.mem.alloc_pages(0)
            if dpage is None:
                continue
            lock_page(dpage)
            if s & MIGRATE_PFN_VALID:
                spage = migrate_pfn_to_page(s, k=k)
                k.mem.ram.frames[dpage.pfn][:] = k.mem.ram.frames[spage.pfn]
            else:
                k.mem.ram.frames[dpage.pfn][:] = 0
            m.dst[i] = migrate_pfn_from_page(dpage)
            moved += 1
        migrate_vma_pages(m)
        migrate_vma_finalize(m)
    finally:
        p.mm.mmap_lock.up_read()
        mmu_interval_notifier_remove(mni)
    return moved


def run_walk_fuzz(
    runs: int, seed: int = 0, *, features=frozenset({"d", "e"}), bugs=frozenset()
) -> WalkFuzzReport:
    """`runs` fresh address spaces, four walk rounds each; stop at the first failure."""
    rep = WalkFuzzReport(seed=seed)
    master = random.Random(seed)
    for run in range(runs):
        rng = random.Random(master.getrandbits(63))
        k = Kernel(ram_bytes=64 << 20, hugetlb_pages=0, features=frozenset(features), bugs=bugs)
        k.word_checks.append(strict_word_check)
        p = k.spawn("walker")
        rep.runs += 1
        try:
            base, shadow = _populate(k, p, rng)
            for _ in range(4):
                rep.rounds += 1
                rep.migrated += _round(k, p, base, rng)
                check_bytes(p, base, shadow)
                check_invariants(k)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            rep.failure = f"run {run}: {type(e).__name__}: {e}"
            break
    return rep

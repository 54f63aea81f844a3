"""Series (e): one hmm_range_fault walk that faults and collects for migration."""

import numpy as np
import pytest

from hmmsim.include.hmm import hmm_range
from hmmsim.include.migrate import (
    MIGRATE_PFN_COMPOUND,
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_VALID,
    MIGRATE_PFN_WRITE,
    MIGRATE_VMA_SELECT_COMPOUND,
    MIGRATE_VMA_SELECT_SYSTEM,
    migrate_vma,
)
from hmmsim.include.mman import MADV_HUGEPAGE, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from hmmsim.kconfig import PMD_SIZE, ConfigError, KConfig
from hmmsim.kernel import Kernel
from hmmsim.mm.hmm import hmm_range_fault
from hmmsim.mm.migrate_device import (
    migrate_hmm_range_setup,
    migrate_vma_finalize,
    migrate_vma_pages,
    migrate_vma_setup,
)
from hmmsim.mm.mmap import vma_lookup
from hmmsim.mm.mmu_notifier import (
    mmu_interval_notifier,
    mmu_interval_notifier_insert,
    mmu_interval_read_begin,
    mmu_interval_set_seq,
)
from hmmsim.testing.invariants import check_invariants

RW = PROT_READ | PROT_WRITE
FLAGS = MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_SELECT_COMPOUND
N = 1024 + 8  # two PMDs and a few pages


class Sub:
    def invalidate(self, mni, r, cur_seq):
        mmu_interval_set_seq(mni, cur_seq)
        return True


def build(k):
    """A range with a THP, a PMD-aligned hole, present pages, zero pages, holes."""
    p = k.spawn()
    a = p.mmap(0, 4 * PMD_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    h = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    p.madvise(a, 4 * PMD_SIZE, MADV_HUGEPAGE)  # one vma
    p.store_array(h, np.arange(PMD_SIZE // 4, dtype=np.int32))  # THP
    k.thp_enabled = "never"  # small pages from here on
    tail = h + 2 * PMD_SIZE  # [h+PMD, h+2PMD) stays a PMD-aligned hole
    p.store(tail, b"present")
    p.load(tail + 4096, 1)  # zero page
    p.store(tail + 3 * 4096, b"again")
    return p, h


def signature(k, src, n):
    out = []
    for v in src[:n]:
        v = int(v)
        out.append(
            (
                v
                & (
                    MIGRATE_PFN_VALID
                    | MIGRATE_PFN_MIGRATE
                    | MIGRATE_PFN_WRITE
                    | MIGRATE_PFN_COMPOUND
                ),
                v != 0,
            )
        )
    return out


def finish(p, m, k):
    p.mm.mmap_lock.down_read()
    migrate_vma_pages(m)
    migrate_vma_finalize(m)
    p.mm.mmap_lock.up_read()


def test_one_walk_equals_migrate_vma_setup():
    k = Kernel(ram_bytes=128 << 20, features=frozenset({"d", "e"}))
    L = k.hmm
    # the reference: migrate_vma_setup of the pinned kernel (without (e): the
    # collect walk of mm/migrate_device.c; with (e) migrate_vma_setup is the
    # unified walk itself and the comparison would prove nothing)
    k1 = Kernel(ram_bytes=128 << 20, features=frozenset({"d"}))
    p1, h1 = build(k1)
    ref = migrate_vma(
        vma=vma_lookup(p1.mm, h1),
        src=[0] * N,
        dst=[0] * N,
        start=h1,
        end=h1 + N * 4096,
        flags=FLAGS,
    )
    p1.mm.mmap_lock.down_read()
    assert migrate_vma_setup(ref) == 0
    p1.mm.mmap_lock.up_read()
    # the unified walk on an identical process
    k.thp_enabled = "madvise"
    p2, h2 = build(k)
    mni = mmu_interval_notifier()
    mmu_interval_notifier_insert(mni, p2.mm, h2, N * 4096, Sub())
    m = migrate_vma(src=[0] * N, dst=[0] * N, flags=FLAGS)
    r = hmm_range(
        notifier=mni,
        start=h2,
        end=h2 + N * 4096,
        hmm_pfns=[0] * N,
        default_flags=L.HMM_PFN_REQ_MIGRATE,
        migrate=m,
    )
    r.notifier_seq = mmu_interval_read_begin(mni)
    p2.mm.mmap_lock.down_read()
    assert hmm_range_fault(r) == 0
    out = list(r.hmm_pfns)
    assert out[0] & L.HMM_PFN_MIGRATE and out[0] & L.HMM_PFN_COMPOUND
    assert L.hmm_pfn_to_map_order(out[0]) == 9 and out[0] & L.HMM_PFN_VALID
    assert out[512] == L.HMM_PFN_MIGRATE | L.HMM_PFN_COMPOUND | (9 << L.HMM_PFN_ORDER_SHIFT)
    assert out[1025] == L.HMM_PFN_MIGRATE  # the zero page: MIGRATE without VALID
    migrate_hmm_range_setup(r)
    p2.mm.mmap_lock.up_read()
    assert (m.cpages, m.npages) == (ref.cpages, ref.npages)
    assert signature(k, m.src, N) == signature(k, ref.src, N)
    finish(p1, ref, k1)
    finish(p2, m, k)
    for p, h in ((p1, h1), (p2, h2)):
        assert (p.load_array(h, PMD_SIZE // 4) == np.arange(PMD_SIZE // 4)).all()
        assert p.load(h + 2 * PMD_SIZE, 7) == b"present"
    check_invariants(k)
    check_invariants(k1)


def test_without_series_e_nothing_is_collected():
    k = Kernel(ram_bytes=64 << 20)
    assert k.hmm.HMM_PFN_MIGRATE == 0 and k.hmm.HMM_PFN_REQ_MIGRATE == 0


def test_c_and_e_need_an_explicit_resolution():
    with pytest.raises(ConfigError, match=r"bit 57"):
        Kernel(ram_bytes=64 << 20, features=frozenset({"a", "b", "c", "d", "e"}))
    for res, (dp, mig) in {"c-first": (57, 56), "e-first": (55, 57)}.items():
        k = Kernel(
            KConfig(features=frozenset("abcde"), conflict_resolution=res, ram_bytes=64 << 20)
        )
        assert k.hmm.HMM_PFN_DEVICE_PRIVATE == 1 << dp and k.hmm.HMM_PFN_MIGRATE == 1 << mig
        assert k.hmm.HMM_PFN_ORDER_SHIFT == 50

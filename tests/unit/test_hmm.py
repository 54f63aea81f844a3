"""hmm_range_fault: every output case, the fault rule, errors, and the retry protocol."""

import numpy as np
import pytest

from hmmsim.bug import KernelBug
from hmmsim.drivers.test_hmm import hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd
from hmmsim.errno import EBUSY, EFAULT, EPERM
from hmmsim.include.hmm import hmm_range
from hmmsim.include.migrate import MIGRATE_VMA_SELECT_SYSTEM, migrate_vma
from hmmsim.include.mman import (
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_HUGETLB,
    MAP_PRIVATE,
    O_RDWR,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.include.pgtable import pmd_pfn, pte_pfn
from hmmsim.kconfig import PMD_SIZE
from hmmsim.kernel import Kernel
from hmmsim.locking import Scheduler
from hmmsim.mm.hmm import hmm_range_fault
from hmmsim.mm.migrate_device import migrate_vma_finalize, migrate_vma_pages, migrate_vma_setup
from hmmsim.mm.mmap import vma_lookup
from hmmsim.mm.mmu_notifier import (
    mmu_interval_notifier,
    mmu_interval_notifier_insert,
    mmu_interval_read_begin,
    mmu_interval_set_seq,
)
from hmmsim.testing.invariants import check_invariants
from hmmsim.userspace import entry_at

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


class Sub:
    def invalidate(self, mni, r, cur_seq):
        mmu_interval_set_seq(mni, cur_seq)
        return True


@pytest.fixture
def env():
    k = Kernel(ram_bytes=256 << 20, hugetlb_pages=2)
    devs = hmm_dmirror_init(k)
    p = k.spawn()
    yield k, devs, p
    assert not k.warnings


def fault(p, start, npages, default_flags=0, mask=0, owner=None, inputs=None):
    """The driver loop around hmm_range_fault; returns (ret, outputs).

    Like a real driver it starts over from mmu_interval_read_begin on -EBUSY
    (its own faults can invalidate the range, e.g. a COW break) and refills
    the input array each time: after -EBUSY, slots already walked hold outputs.
    """
    from hmmsim.mm.mmu_notifier import mmu_interval_notifier_remove

    mni = mmu_interval_notifier()
    mmu_interval_notifier_insert(mni, p.mm, start, npages * 4096, Sub())
    for _attempt in range(16):
        pfns = list(inputs) if inputs is not None else [0] * npages
        r = hmm_range(
            notifier=mni,
            start=start,
            end=start + npages * 4096,
            hmm_pfns=pfns,
            default_flags=default_flags,
            pfn_flags_mask=mask,
            dev_private_owner=owner,
        )
        r.notifier_seq = mmu_interval_read_begin(mni)
        p.mm.mmap_lock.down_read()
        try:
            ret = hmm_range_fault(r)
        finally:
            p.mm.mmap_lock.up_read()
        if ret != -EBUSY:
            break
    mmu_interval_notifier_remove(mni)
    return ret, pfns


def test_snapshot_outputs(env):
    k, devs, p = env
    L = k.hmm
    a = p.mmap(0, 4 * 4096, RW, ANON)
    p.load(a + 4096, 1)  # zero page
    p.store(a + 2 * 4096, b"x")  # writable anon
    p.store(a + 3 * 4096, b"y")
    p.mprotect(a + 3 * 4096, 4096, PROT_READ)
    ret, out = fault(p, a, 4)
    assert ret == 0
    assert out[0] == 0  # none: not present, but faultable
    assert out[1] == L.HMM_PFN_VALID | k.mem.zero_pfn  # zero page: read-only
    assert out[2] == L.HMM_PFN_VALID | L.HMM_PFN_WRITE | pte_pfn(entry_at(p, a + 2 * 4096)[1])
    assert out[3] == L.HMM_PFN_VALID | pte_pfn(entry_at(p, a + 3 * 4096)[1])
    check_invariants(k)


def test_fault_none_and_write_fault_zero_page(env):
    k, devs, p = env
    L = k.hmm
    a = p.mmap(0, 2 * 4096, RW, ANON)
    p.load(a + 4096, 1)
    ret, out = fault(p, a, 2, default_flags=L.HMM_PFN_REQ_FAULT | L.HMM_PFN_REQ_WRITE)
    assert ret == 0
    for i in range(2):
        assert out[i] & (L.HMM_PFN_VALID | L.HMM_PFN_WRITE) == L.HMM_PFN_VALID | L.HMM_PFN_WRITE
        assert L.hmm_pfn_to_pfn(out[i]) != k.mem.zero_pfn  # COW broke the zero page
    assert k.stats["hmm_range_fault_rewalks"] >= 1
    check_invariants(k)


def test_per_page_requests_through_the_mask(env):
    k, devs, p = env
    L = k.hmm
    a = p.mmap(0, 4 * 4096, RW, ANON)
    p.load(a + 3 * 4096, 1)  # a PTE table exists: each empty PTE is decided alone
    inputs = [0, L.HMM_PFN_REQ_FAULT, L.HMM_PFN_REQ_FAULT | L.HMM_PFN_REQ_WRITE, 0]
    ret, out = fault(p, a, 4, mask=L.HMM_PFN_REQ_FAULT | L.HMM_PFN_REQ_WRITE, inputs=inputs)
    assert ret == 0
    assert out[0] == 0
    assert out[1] == L.HMM_PFN_VALID | k.mem.zero_pfn
    assert out[2] & L.HMM_PFN_WRITE
    # hmm_vma_fault runs on to the end of the PMD walk: page 3 asked for
    # nothing, but page 2's write fault covered it too (a COW of the zero page)
    assert out[3] & (L.HMM_PFN_VALID | L.HMM_PFN_WRITE) == L.HMM_PFN_VALID | L.HMM_PFN_WRITE
    assert L.hmm_pfn_to_pfn(out[3]) != k.mem.zero_pfn


def test_a_request_faults_the_whole_missing_table_hole(env):
    """hmm_range_need_fault ORs requests over a hole: one request faults it all."""
    k, devs, p = env
    L = k.hmm
    a = p.mmap(0, 3 * 4096, RW, ANON)
    inputs = [0, 0, L.HMM_PFN_REQ_FAULT]
    ret, out = fault(p, a, 3, mask=L.HMM_PFN_REQ_FAULT, inputs=inputs)
    assert ret == 0 and all(v == L.HMM_PFN_VALID | k.mem.zero_pfn for v in out)


def test_inout_flags_are_sticky(env):
    k, devs, p = env
    L = k.hmm
    a = p.mmap(0, 4096, RW, ANON)
    p.store(a, b"z")
    ret, out = fault(p, a, 1, inputs=[L.HMM_PFN_DMA_MAPPED | L.HMM_PFN_ERROR])
    assert ret == 0
    assert out[0] & L.HMM_PFN_DMA_MAPPED and not out[0] & L.HMM_PFN_ERROR


def test_prot_none_efault_and_readonly_eperm(env):
    k, devs, p = env
    L = k.hmm
    a = p.mmap(0, 4096, PROT_NONE, ANON)
    assert fault(p, a, 1)[0] == 0
    assert fault(p, a, 1)[1] == [L.HMM_PFN_ERROR]
    assert fault(p, a, 1, default_flags=L.HMM_PFN_REQ_FAULT)[0] == -EFAULT
    b = p.mmap(0, 4096, PROT_READ, ANON)
    ret, _ = fault(p, b, 1, default_flags=L.HMM_PFN_REQ_FAULT | L.HMM_PFN_REQ_WRITE)
    assert ret == -EPERM
    assert fault(p, b, 1, default_flags=L.HMM_PFN_REQ_FAULT)[0] == 0


def test_hole_without_vma(env):
    k, devs, p = env
    L = k.hmm
    a = p.mmap(0, 3 * 4096, RW, ANON)
    p.munmap(a + 4096, 4096)
    ret, out = fault(p, a, 3)
    assert ret == 0 and out[1] == L.HMM_PFN_ERROR
    assert fault(p, a, 3, default_flags=L.HMM_PFN_REQ_FAULT)[0] == -EFAULT


def test_thp_and_hugetlb_orders(env):
    k, devs, p = env
    L = k.hmm
    a = p.mmap(0, 2 * PMD_SIZE, RW, ANON)
    h = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    p.madvise(h, PMD_SIZE, MADV_HUGEPAGE)
    p.store(h, b"t")
    ret, out = fault(p, h + 8 * 4096, 4)
    base = pmd_pfn(entry_at(p, h)[1])
    assert ret == 0
    for i, v in enumerate(out):
        assert L.hmm_pfn_to_map_order(v) == 9 and L.hmm_pfn_to_pfn(v) == base + 8 + i
        assert v & L.HMM_PFN_WRITE
    g = p.mmap(0, PMD_SIZE, RW, ANON | MAP_HUGETLB)
    ret, out = fault(p, g, 2, default_flags=L.HMM_PFN_REQ_FAULT)
    assert ret == 0 and all(L.hmm_pfn_to_map_order(v) == 9 for v in out)
    assert L.hmm_pfn_to_pfn(out[1]) == L.hmm_pfn_to_pfn(out[0]) + 1
    check_invariants(k)


def _to_device(k, p, a, npages, dev=0):
    fd = p.open(f"/dev/hmm_dmirror{dev}", O_RDWR)
    mirror = np.zeros(npages * 1024, dtype=np.int32)
    assert (
        p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd(addr=a, ptr=mirror, npages=npages))
        == 0
    )
    return fd


def test_device_private_owned_and_unowned_pte(env):
    k, devs, p = env
    L = k.hmm
    a = p.mmap(0, 2 * 4096, RW, ANON)
    p.store_array(a, np.arange(2048, dtype=np.int32))
    fd = _to_device(k, p, a, 2)
    dpage = k.softleaf_to_page(k.swp.softleaf_from_pte(entry_at(p, a)[1]))
    ret, out = fault(p, a, 1, default_flags=L.HMM_PFN_REQ_FAULT, owner=devs[0])
    assert ret == 0 and out[0] == L.HMM_PFN_VALID | L.HMM_PFN_WRITE | dpage.pfn
    ret, out = fault(p, a, 1, owner=devs[1])  # unowned, no fault wanted: reported 0
    assert ret == 0 and out[0] == 0
    ret, out = fault(p, a, 1, default_flags=L.HMM_PFN_REQ_FAULT, owner=devs[1])
    assert ret == 0 and out[0] & L.HMM_PFN_VALID  # faulted back to system RAM
    assert entry_at(p, a)[1] & 1
    assert (p.load_array(a, 2048) == np.arange(2048)).all()
    p.close(fd)
    check_invariants(k)


def test_device_private_pmd_owned_vs_unowned_asymmetry(env):
    k, devs, p = env
    L = k.hmm
    a = p.mmap(0, 2 * PMD_SIZE, RW, ANON)
    h = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    p.madvise(h, PMD_SIZE, MADV_HUGEPAGE)
    p.store(h, b"t")
    fd = _to_device(k, p, h, 512)
    assert k.swp.pmd_is_device_private_entry(entry_at(p, h)[1])
    ret, out = fault(p, h, 2, owner=devs[0])
    assert ret == 0 and all(L.hmm_pfn_to_map_order(v) == 9 and v & L.HMM_PFN_VALID for v in out)
    ret, out = fault(p, h, 2, owner=devs[1])
    assert ret == 0 and out == [L.HMM_PFN_ERROR] * 2  # PTE level would say 0
    p.close(fd)
    check_invariants(k)


def test_migration_entry_waits_then_rewalks(env):
    """A fault request meeting a migration entry sleeps on the folio lock; when
    the migration finishes the walk restarts (driven through the scheduler hook)."""
    k, devs, p = env
    L = k.hmm
    a = p.mmap(0, 4096, RW, ANON)
    p.store(a, b"m")
    args = migrate_vma(
        vma=vma_lookup(p.mm, a),
        src=[0],
        dst=[0],
        start=a,
        end=a + 4096,
        flags=MIGRATE_VMA_SELECT_SYSTEM,
    )
    p.mm.mmap_lock.down_read()
    assert migrate_vma_setup(args) == 0
    p.mm.mmap_lock.up_read()
    assert k.swp.softleaf_is_migration(k.swp.softleaf_from_pte(entry_at(p, a)[1]))
    assert fault(p, a, 1)[1] == [0]  # no fault wanted: a migration entry reads as 0

    class FinishMigration(Scheduler):
        woke = 0

        def wait(self, obj, why):
            FinishMigration.woke += 1
            migrate_vma_pages(args)  # the migrating thread runs and completes
            migrate_vma_finalize(args)

    k.sched = FinishMigration()
    with pytest.raises(KernelBug, match="deadlock"):
        Scheduler().wait(None, "x")
    ret, out = fault(p, a, 1, default_flags=L.HMM_PFN_REQ_FAULT)
    assert ret == 0 and FinishMigration.woke == 1 and out[0] & L.HMM_PFN_VALID
    k.sched = Scheduler()
    check_invariants(k)


def test_ebusy_when_the_range_was_invalidated(env):
    k, devs, p = env
    L = k.hmm
    a = p.mmap(0, 2 * 4096, RW, ANON)
    p.store(a, b"1")
    mni = mmu_interval_notifier()
    mmu_interval_notifier_insert(mni, p.mm, a, 2 * 4096, Sub())
    r = hmm_range(
        notifier=mni, start=a, end=a + 2 * 4096, hmm_pfns=[0, 0], default_flags=L.HMM_PFN_REQ_FAULT
    )
    r.notifier_seq = mmu_interval_read_begin(mni)
    p.munmap(a + 4096, 4096)  # invalidation between read_begin and the walk
    p.mm.mmap_lock.down_read()
    assert hmm_range_fault(r) == -EBUSY
    r.notifier_seq = mmu_interval_read_begin(mni)
    r.end = a + 4096
    assert hmm_range_fault(r) == 0
    p.mm.mmap_lock.up_read()


def test_driver_retry_loop_survives_a_racing_invalidation(env):
    """dmirror_range_fault retries when an invalidation lands mid-walk."""
    from hmmsim.drivers.test_hmm_uapi import HMM_DMIRROR_READ

    k, devs, p = env
    a = p.mmap(0, 4 * 4096, RW, ANON)
    p.store_array(a, np.arange(4096, dtype=np.int32))
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)

    class Racer(Scheduler):
        fired = False

        def point(self, kind, obj):
            if kind == "fault" and not Racer.fired:
                Racer.fired = True
                # another thread changes protection while the device faults
                p.mm.mmap_lock.up_read()
                p.mprotect(a, 4096, PROT_READ)
                p.mprotect(a, 4096, RW)
                p.mm.mmap_lock.down_read()

    p.munmap(a, 4096)
    p.mmap(a, 4096, RW, ANON | 0x10)
    k.sched = Racer()
    mirror = np.zeros(4096, dtype=np.int32)
    cmd = hmm_dmirror_cmd(addr=a, ptr=mirror, npages=4)
    assert p.ioctl(fd, HMM_DMIRROR_READ, cmd) == 0
    k.sched = Scheduler()
    assert Racer.fired and cmd.cpages == 4
    assert (mirror[1024:] == np.arange(1024, 4096)).all() and (mirror[:1024] == 0).all()
    p.close(fd)
    check_invariants(k)


def test_out_of_range_pfn_is_an_error_not_truncation():
    k = Kernel(ram_bytes=64 << 20, bits_per_long=32)
    L = k.hmm
    assert L.HMM_PFN_ORDER_SHIFT == 21
    L.encode((1 << 21) - 1)
    with pytest.raises(ValueError, match="does not fit"):
        L.encode(1 << 21)

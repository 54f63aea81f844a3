"""migrate_vma_setup/pages/finalize and the device-range variants, phase by phase."""

import dataclasses

import numpy as np
import pytest

from hmmsim.drivers.test_hmm import BACKING_PAGE, hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_FLAG_FAIL_ALLOC,
    HMM_DMIRROR_FLAGS,
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_MIGRATE_TO_SYS,
    HMM_DMIRROR_READ,
    HMM_DMIRROR_RELEASE,
    hmm_dmirror_cmd,
)
from hmmsim.errno import EINVAL, ENOENT
from hmmsim.include.migrate import (
    MIGRATE_PFN_COMPOUND,
    MIGRATE_PFN_DEVICE_PRIVATE,
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_VALID,
    MIGRATE_PFN_WRITE,
    MIGRATE_VMA_SELECT_COMPOUND,
    MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
    MIGRATE_VMA_SELECT_SYSTEM,
    migrate_vma,
)
from hmmsim.include.mm_types import folio_ref_count, page_folio
from hmmsim.include.mman import (
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_HUGETLB,
    MAP_PRIVATE,
    MAP_SHARED,
    O_RDWR,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.include.pgtable import pte_pfn
from hmmsim.kconfig import PMD_SIZE
from hmmsim.kernel import Kernel
from hmmsim.locking import folio_lock, folio_unlock
from hmmsim.mm.gup import FOLL_WRITE, pin_user_pages_remote, unpin_user_page
from hmmsim.mm.migrate import migrate_pfn_to_page
from hmmsim.mm.migrate_device import (
    migrate_vma_finalize,
    migrate_vma_pages,
    migrate_vma_setup,
)
from hmmsim.mm.mmap import vma_lookup
from hmmsim.testing.invariants import check_invariants
from hmmsim.userspace import entry_at

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
NPAGES = 16


def make(features=(), ram=256 << 20, **kw):
    k = Kernel(ram_bytes=ram, features=frozenset({"d", *features}), **kw)
    devs = hmm_dmirror_init(k)
    return k, devs


@pytest.fixture
def env():
    k, devs = make()
    p = k.spawn()
    yield k, devs, p
    assert not k.warnings, k.warnings


def filled(p, npages=NPAGES, flags=ANON):
    a = p.mmap(0, npages * 4096, RW, flags)
    p.store_array(a, np.arange(npages * 1024, dtype=np.int32))
    return a


def setup_args(p, start, end, flags, owner=None, fault_page=None, n=None):
    n = n if n is not None else max((end - start) >> 12, 1)
    return migrate_vma(
        vma=vma_lookup(p.mm, start),
        src=[0] * n,
        dst=[0] * n,
        start=start,
        end=end,
        pgmap_owner=owner,
        flags=flags,
        fault_page=fault_page,
    )


def run_setup(p, args):
    p.mm.mmap_lock.down_read()
    try:
        return migrate_vma_setup(args)
    finally:
        p.mm.mmap_lock.up_read()


def finish(p, args):
    p.mm.mmap_lock.down_read()
    try:
        migrate_vma_pages(args)
        migrate_vma_finalize(args)
    finally:
        p.mm.mmap_lock.up_read()


# --- migrate_vma_setup argument checks ------------------------------------------------------
def test_setup_einval_cases(env):
    k, devs, p = env
    a = filled(p)
    base = setup_args(p, a, a + NPAGES * 4096, MIGRATE_VMA_SELECT_SYSTEM)
    cases = {
        "no vma": dict(vma=None),
        "end before start": dict(end=a - 4096),
        "start outside vma": dict(start=a - 4096 * 4, end=a + 4096),
        "end outside vma": dict(end=a + (NPAGES + 1) * 4096),
        "no src": dict(src=None),
        "no dst": dict(dst=None),
    }
    for what, change in cases.items():
        args = dataclasses.replace(base, **change)
        assert run_setup(p, args) == -EINVAL, what
    h = p.mmap(0, PMD_SIZE, RW, ANON | MAP_HUGETLB)
    assert run_setup(p, setup_args(p, h, h + 4096, MIGRATE_VMA_SELECT_SYSTEM)) == -EINVAL
    check_invariants(k)


def test_setup_fault_page_must_be_locked_device_private(env):
    k, devs, p = env
    a = filled(p)
    sys_page = k.mem.pfn_to_page(pte_pfn(entry_at(p, a)[1]))
    args = setup_args(p, a, a + 4096, MIGRATE_VMA_SELECT_SYSTEM, fault_page=sys_page)
    assert run_setup(p, args) == -EINVAL
    d0 = devs[0]
    dpage = d0.free_pages[-1]
    args = setup_args(p, a, a + 4096, MIGRATE_VMA_SELECT_SYSTEM, fault_page=dpage)
    assert run_setup(p, args) == -EINVAL  # not locked


def test_nr_pages_is_computed_before_masking(env):
    k, devs, p = env
    a = filled(p)
    # (end - start) >> PAGE_SHIFT is 0 before start is rounded down: -EINVAL
    args = setup_args(p, a + 1, a + 4096, MIGRATE_VMA_SELECT_SYSTEM, n=1)
    assert run_setup(p, args) == -EINVAL
    # one page before masking, still one page after: accepted
    args = setup_args(p, a, a + 2 * 4096 - 1, MIGRATE_VMA_SELECT_SYSTEM, n=1)
    assert run_setup(p, args) == 0
    assert args.npages == 1 and args.end == a + 4096
    finish(p, args)
    check_invariants(k)


# --- collect / unmap -----------------------------------------------------------------------
def test_collect_encodes_each_kind_of_slot(env):
    k, devs, p = env
    a = p.mmap(0, 4 * 4096, RW, ANON)
    p.store(a + 4096, b"w")  # present writable
    p.load(a + 2 * 4096, 1)  # zero page
    ro_page = a + 3 * 4096
    p.store(ro_page, b"r")
    child = p.child(p.fork())  # COW: present read-only, no longer exclusive
    p.store(a + 4096, b"w")  # break COW again on page 1 only
    args = setup_args(p, a, a + 4 * 4096, MIGRATE_VMA_SELECT_SYSTEM, owner=devs[0])
    assert run_setup(p, args) == 0
    s = args.src
    assert s[0] == MIGRATE_PFN_MIGRATE  # hole
    assert s[1] & (MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE | MIGRATE_PFN_WRITE) == (
        MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE | MIGRATE_PFN_WRITE
    )
    assert s[2] == MIGRATE_PFN_MIGRATE  # the zero page counts as a hole
    # page 3 is shared with the child: try_to_migrate unmapped the child's PTE too
    assert s[3] & MIGRATE_PFN_VALID and not s[3] & MIGRATE_PFN_WRITE
    assert args.cpages == 4 and args.npages == 4
    # the present pages are now migration entries, locked and referenced once
    swp = k.swp
    entry = swp.softleaf_from_pte(entry_at(p, a + 4096)[1])
    assert swp.softleaf_is_migration_write(entry)
    entry = swp.softleaf_from_pte(entry_at(p, ro_page)[1])
    assert swp.softleaf_is_migration_read(entry)
    assert swp.softleaf_is_migration(k.swp.softleaf_from_pte(entry_at(child, ro_page)[1]))
    page = migrate_pfn_to_page(s[1], k=k)
    assert page.test(1) and folio_ref_count(page) == 1  # PG_locked, the isolation ref
    finish(p, args)  # no destinations: everything is restored
    assert p.load(a + 4096, 1) == b"w" and p.load(ro_page, 1) == b"r"
    assert child.load(ro_page, 1) == b"r"
    check_invariants(k)


def test_shared_anon_holes_are_not_collected(env):
    k, devs, p = env
    a = p.mmap(0, 4 * 4096, RW, MAP_SHARED | MAP_ANONYMOUS)
    args = setup_args(p, a, a + 4 * 4096, MIGRATE_VMA_SELECT_SYSTEM)
    assert run_setup(p, args) == 0
    assert list(args.src) == [0] * 4 and args.cpages == 0 and args.npages == 4
    finish(p, args)


def test_pinned_page_is_restored_and_dropped(env):
    k, devs, p = env
    a = filled(p, 2)
    p.mm.mmap_lock.down_read()
    pinned = pin_user_pages_remote(p.mm, a, 1, FOLL_WRITE)
    p.mm.mmap_lock.up_read()
    args = setup_args(p, a, a + 2 * 4096, MIGRATE_VMA_SELECT_SYSTEM)
    assert run_setup(p, args) == 0
    assert args.src[0] == 0  # refcount - extra > mapcount: pinned, restored
    assert args.src[1] & MIGRATE_PFN_MIGRATE
    assert args.cpages == 1
    assert entry_at(p, a)[1] & 1  # the PTE is back
    finish(p, args)
    unpin_user_page(pinned[0])
    check_invariants(k)


def test_compound_collect_of_thp_and_aligned_hole(env):
    k, devs, p = env
    a = p.mmap(0, 3 * PMD_SIZE, RW, ANON)
    h = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    p.madvise(h, 2 * PMD_SIZE, MADV_HUGEPAGE)
    p.store(h, b"thp")
    args = setup_args(
        p, h, h + 2 * PMD_SIZE, MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_SELECT_COMPOUND
    )
    assert run_setup(p, args) == 0
    s = args.src
    assert s[0] & (MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND | 8) == (
        MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND | MIGRATE_PFN_WRITE
    )
    assert all(v == 0 for v in s[1:512])
    assert s[512] == MIGRATE_PFN_MIGRATE | MIGRATE_PFN_COMPOUND  # PMD-aligned hole
    assert all(v == 0 for v in s[513:1024])
    assert args.cpages == 2  # one per compound slot
    assert k.swp.pmd_is_migration_entry(entry_at(p, h)[1])
    finish(p, args)
    assert entry_at(p, h)[0] == "pmd" and p.load(h, 3) == b"thp"
    check_invariants(k)


def test_mapping_in_another_process_is_migrated_too(env):
    k, devs, p = env
    a = filled(p, 4)
    child = p.child(p.fork())
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    mirror = np.zeros(4 * 1024, dtype=np.int32)
    cmd = hmm_dmirror_cmd(addr=a, ptr=mirror, npages=4)
    assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == 0
    assert cmd.cpages == 4 and (mirror == np.arange(4096)).all()
    # try_to_migrate replaced the child's PTEs too: both now see device-private entries
    for proc in (p, child):
        assert k.swp.softleaf_is_device_private(k.swp.softleaf_from_pte(entry_at(proc, a)[1]))
    check_invariants(k)
    assert (child.load_array(a, 4096) == np.arange(4096)).all()
    check_invariants(k)
    child._exit(0)
    p.waitpid(child.pid)
    assert (p.load_array(a, 4096) == np.arange(4096)).all()
    p.close(fd)
    check_invariants(k)


# --- the directions ---------------------------------------------------------------------------
@pytest.mark.parametrize("dev", [0, 2], ids=["private", "coherent"])
def test_round_trip_system_device_system(env, dev):
    k, devs, p = env
    a = filled(p)
    fd = p.open(f"/dev/hmm_dmirror{dev}", O_RDWR)
    mirror = np.zeros(NPAGES * 1024, dtype=np.int32)
    cmd = hmm_dmirror_cmd(addr=a, ptr=mirror, npages=NPAGES)
    assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == 0 and cmd.cpages == NPAGES
    check_invariants(k)
    cmd = hmm_dmirror_cmd(addr=a, ptr=mirror, npages=NPAGES)
    assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_SYS, cmd) == 0 and cmd.cpages == NPAGES
    level, pte = entry_at(p, a)
    assert pte & 1 and k.mem.range_of(pte_pfn(pte)) is k.mem.ram
    assert (p.load_array(a, NPAGES * 1024) == np.arange(NPAGES * 1024)).all()
    p.close(fd)
    check_invariants(k)


def test_private_to_private_between_two_owners(env):
    k, devs, p = env
    a = filled(p)
    fd0 = p.open("/dev/hmm_dmirror0", O_RDWR)
    fd1 = p.open("/dev/hmm_dmirror1", O_RDWR)
    mirror = np.zeros(NPAGES * 1024, dtype=np.int32)
    assert (
        p.ioctl(fd0, HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd(addr=a, ptr=mirror, npages=NPAGES))
        == 0
    )
    page = k.softleaf_to_page(k.swp.softleaf_from_pte(entry_at(p, a)[1]))
    assert page.k.page_pgmap(page).owner is devs[0]
    # device 1 cannot migrate dev0's pages directly (not SELECT_SYSTEM pages) ...
    cmd = hmm_dmirror_cmd(addr=a, ptr=mirror, npages=NPAGES)
    assert p.ioctl(fd1, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == -ENOENT
    # ... but its READ faults them back to RAM (unowned device-private), then it migrates
    cmd = hmm_dmirror_cmd(addr=a, ptr=mirror, npages=NPAGES)
    assert p.ioctl(fd1, HMM_DMIRROR_READ, cmd) == 0 and cmd.faults == 1
    cmd = hmm_dmirror_cmd(addr=a, ptr=mirror, npages=NPAGES)
    assert p.ioctl(fd1, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == 0 and cmd.cpages == NPAGES
    page = k.softleaf_to_page(k.swp.softleaf_from_pte(entry_at(p, a)[1]))
    assert k.page_pgmap(page).owner is devs[1]
    assert (mirror == np.arange(NPAGES * 1024)).all()
    p.close(fd0)
    p.close(fd1)
    assert (p.load_array(a, NPAGES * 1024) == np.arange(NPAGES * 1024)).all()
    check_invariants(k)


def test_partial_migration_with_fail_alloc(env):
    k, devs, p = env
    a = filled(p)
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    assert (
        p.ioctl(fd, HMM_DMIRROR_FLAGS, hmm_dmirror_cmd(addr=a, npages=HMM_DMIRROR_FLAG_FAIL_ALLOC))
        == 0
    )
    mirror = np.zeros(NPAGES * 1024, dtype=np.int32)
    cmd = hmm_dmirror_cmd(addr=a, ptr=mirror, npages=NPAGES)
    # the first page stays in RAM, so reading back through the mirror finds a hole
    assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == -ENOENT
    assert entry_at(p, a)[1] & 1  # still a present system page
    assert k.swp.softleaf_is_device_private(k.swp.softleaf_from_pte(entry_at(p, a + 4096)[1]))
    assert (p.load_array(a, NPAGES * 1024) == np.arange(NPAGES * 1024)).all()
    p.close(fd)
    check_invariants(k)


def test_release_evicts_everything_and_frees_device_memory(env):
    k, devs, p = env
    a = filled(p)
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    mirror = np.zeros(NPAGES * 1024, dtype=np.int32)
    p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd(addr=a, ptr=mirror, npages=NPAGES))
    assert p.ioctl(fd, HMM_DMIRROR_RELEASE, hmm_dmirror_cmd(addr=a, npages=1)) == 0
    assert devs[0].devmem_chunks == [] and entry_at(p, a)[1] & 1
    assert (p.load_array(a, NPAGES * 1024) == np.arange(NPAGES * 1024)).all()
    p.close(fd)
    check_invariants(k)


def test_device_to_system_thp_split_fallback(env):
    """A PMD-mapped device folio meets order-0 system destinations: split."""
    k, devs, p = env
    a = p.mmap(0, 2 * PMD_SIZE, RW, ANON)
    h = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    p.madvise(h, PMD_SIZE, MADV_HUGEPAGE)
    p.store_array(h, np.arange(PMD_SIZE // 4, dtype=np.int32))
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    mirror = np.zeros(PMD_SIZE // 4, dtype=np.int32)
    assert (
        p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd(addr=h, ptr=mirror, npages=512))
        == 0
    )
    assert k.swp.pmd_is_device_private_entry(entry_at(p, h)[1])
    # FAIL_ALLOC makes the large system allocation fail: order-0 pages instead
    p.ioctl(fd, HMM_DMIRROR_FLAGS, hmm_dmirror_cmd(addr=h, npages=HMM_DMIRROR_FLAG_FAIL_ALLOC))
    cmd = hmm_dmirror_cmd(addr=h, ptr=mirror, npages=512)
    assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_SYS, cmd) == 0 and cmd.cpages == 512
    assert entry_at(p, h)[0] == "pte"
    assert (p.load_array(h, PMD_SIZE // 4) == np.arange(PMD_SIZE // 4)).all()
    p.close(fd)
    check_invariants(k)


# --- seed series ------------------------------------------------------------------------------
@pytest.mark.parametrize("dev", [0, 2], ids=["private", "coherent"])
def test_series_a_flag_marks_device_private_only(dev):
    """known-bugs 3: MIGRATE_PFN_DEVICE_PRIVATE never marks DEVICE_COHERENT pages."""
    k, devs = make("a")
    p = k.spawn()
    a = filled(p, 2)
    fd = p.open(f"/dev/hmm_dmirror{dev}", O_RDWR)
    mirror = np.zeros(2048, dtype=np.int32)
    p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd(addr=a, ptr=mirror, npages=2))
    select = MIGRATE_VMA_SELECT_DEVICE_PRIVATE if dev == 0 else 1 << 2
    args = setup_args(p, a, a + 2 * 4096, select, owner=devs[dev])
    assert run_setup(p, args) == 0 and args.cpages == 2
    for v in args.src[:2]:
        assert v & MIGRATE_PFN_VALID
        assert bool(v & MIGRATE_PFN_DEVICE_PRIVATE) == (dev == 0)
    finish(p, args)
    p.close(fd)
    check_invariants(k)


def test_series_b_device_private_migration_entries():
    k, devs = make("b")
    p = k.spawn()
    a = filled(p, 2)
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    mirror = np.zeros(2048, dtype=np.int32)
    p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd(addr=a, ptr=mirror, npages=2))
    dev_entry = k.swp.softleaf_from_pte(entry_at(p, a)[1])
    dpage = k.softleaf_to_page(dev_entry)
    args = setup_args(p, a, a + 2 * 4096, MIGRATE_VMA_SELECT_DEVICE_PRIVATE, owner=devs[0])
    assert run_setup(p, args) == 0
    entry = k.swp.softleaf_from_pte(entry_at(p, a)[1])
    assert k.swp.softleaf_is_migration_device_private_write(entry)
    assert k.swp.softleaf_is_migration(entry) and k.swp.softleaf_is_migration_write(entry)
    assert k.swp.swp_type(entry) == k.swp.SWP_MIGRATION_DEVICE_WRITE == 30
    assert k.softleaf_to_page(entry) == dpage
    finish(p, args)  # no destinations: restored as device-private entries
    assert k.swp.softleaf_is_device_private(k.swp.softleaf_from_pte(entry_at(p, a)[1]))
    p.close(fd)
    check_invariants(k)


def test_series_c_device_private_pages_have_no_pfn():
    from hmmsim.bug import KernelBug
    from hmmsim.mm.memremap import page_to_pfn

    k, devs = make("abc")
    p = k.spawn()
    a = filled(p, 2)
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    mirror = np.zeros(2048, dtype=np.int32)
    p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd(addr=a, ptr=mirror, npages=2))
    entry = k.swp.softleaf_from_pte(entry_at(p, a)[1])
    offset = k.swp.softleaf_to_pfn(entry)
    page = k.softleaf_to_page(entry)
    # the entry carries an offset in the device-private space, which starts at 0
    assert offset < 2 * (256 << 20) >> 12
    # no device-private page occupies physical address space
    assert all(r.pgmap_id == 0 or k.pgmaps[r.pgmap_id].type != 1 for r in k.mem.ranges)
    with pytest.raises(KernelBug, match="no PFN"):
        page_to_pfn(page)
    assert BACKING_PAGE(page) is not None
    assert (p.load_array(a, 2048) == np.arange(2048)).all()
    p.close(fd)
    check_invariants(k)


def test_series_c_lifts_the_physical_address_space_limit():
    # 1 GiB of physical address space, 256 MiB of RAM: the four 256 MiB device
    # chunks (two coherent SPM ranges, two private) no longer fit legacy-style.
    with pytest.raises(MemoryError, match="chunk failed"):
        make(ram=128 << 20, phys_addr_bits=30)
    k, devs = make("abc", ram=128 << 20, phys_addr_bits=30)
    assert len(devs[0].devmem_chunks) == 1 and len(devs[1].devmem_chunks) == 1
    check_invariants(k)


def test_legacy_request_free_mem_region_runs_out():
    from hmmsim.errno import ERANGE

    # 2 GiB of physical address space: 128 MiB of RAM at the bottom, four 256 MiB
    # chunks taken at boot from the top; 256 MiB-aligned room for three more.
    k, devs = make(ram=128 << 20, phys_addr_bits=31)
    got = [devs[0].dmirror_allocate_chunk(False, False)[0] for _ in range(4)]
    assert got == [0, 0, 0, -ERANGE]
    check_invariants(k)


def test_fault_page_lock_hand_off_on_split():
    """known-bugs 2: after a split during collect, the folio holding the
    fault page is the one left locked."""
    from hmmsim.mm.migrate_device import migrate_vma_split_folio

    k, devs = make()
    p = k.spawn()
    a = p.mmap(0, 2 * PMD_SIZE, RW, ANON)
    h = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    p.madvise(h, PMD_SIZE, MADV_HUGEPAGE)
    p.store(h, b"x")
    p.munmap(h + PMD_SIZE - 4096, 4096)  # PTE-mapped now
    head = page_folio(k.mem.pfn_to_page(pte_pfn(entry_at(p, h)[1])))
    fault_page = k.mem.pfn_to_page(head.pfn + 7)
    folio_lock(head)  # the caller holds the (large) fault folio locked
    head.a._refcount[head.i] += 1
    assert migrate_vma_split_folio(head, fault_page) == 0
    assert fault_page.test(1) and not head.test(1)  # lock moved to the fault page's folio
    folio_unlock(fault_page)
    from hmmsim.include.mm_types import folio_put

    folio_put(fault_page)
    check_invariants(k)


def test_shared_thp_split_fallback_hits_the_kernels_vm_bug_on():
    """Suspected upstream bug, found by the fuzzer: a THP shared with a
    child after fork, migrated to a device with no free device folio, falls
    back to order-0 destinations. migrate_vma_split_unmapped_folio() splits
    only migrate->vma's PMD, so the child's PMD migration entry outlives the
    folio split; remove_migration_ptes() of the first order-0 source then
    finds that PMD entry and remove_migration_pte() hits
    VM_BUG_ON_FOLIO(!folio_test_pmd_mappable). The model raises that BUG
    instead of installing a huge PMD naming an order-0 page."""
    from hmmsim.bug import KernelBug

    k, _ = make()
    k.thp_enabled = "always"
    p = k.spawn()
    fd = p.open("/dev/hmm_dmirror3", O_RDWR)  # coherent: order-0 free pages only
    a = p.mmap(0, 2 * PMD_SIZE, RW, ANON)
    h = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    p.store(h + 5, b"shared")
    assert entry_at(p, h)[0] == "pmd"
    p.fork()
    cmd = hmm_dmirror_cmd(addr=h, ptr=np.zeros(PMD_SIZE, np.uint8), npages=512)
    with pytest.raises(KernelBug, match="PMD migration entry .* covers the order-0 folio"):
        p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, cmd)


def test_coherent_thp_split_skips_the_private_split_callback():
    """zone_device_private_split_cb() runs the driver's folio_split only for
    device-private folios. Found by the fuzzer: a device-coherent THP (dmirror2
    after RELEASE gets a fresh chunk with THP folios) split by a one-page
    migration to dmirror1 went through test_hmm's private callback, which
    cleared the head's anon mapping and took a driver reference on each tail."""
    k, _ = make()
    k.thp_enabled = "madvise"
    p = k.spawn()
    coherent = p.open("/dev/hmm_dmirror2", O_RDWR)
    private = p.open("/dev/hmm_dmirror1", O_RDWR)
    one = hmm_dmirror_cmd(addr=0, ptr=np.zeros(4096, np.uint8), npages=1)
    assert p.ioctl(coherent, HMM_DMIRROR_RELEASE, one) == 0
    a = p.mmap(0, 2 * PMD_SIZE, RW, ANON)
    h = (a + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    assert p.madvise(h, PMD_SIZE, MADV_HUGEPAGE) == 0
    p.store_array(h, np.arange(PMD_SIZE // 4, dtype=np.int32))
    cmd = hmm_dmirror_cmd(addr=h, ptr=np.zeros(PMD_SIZE, np.uint8), npages=512)
    assert p.ioctl(coherent, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == 0
    level, pmd = entry_at(p, h)
    assert level == "pmd"  # a PMD-mapped device-coherent THP
    check_invariants(k)
    cmd = hmm_dmirror_cmd(addr=h + 0x162000, ptr=np.zeros(4096, np.uint8), npages=1)
    p.ioctl(private, HMM_DMIRROR_MIGRATE_TO_DEV, cmd)
    check_invariants(k)
    assert (p.load_array(h, PMD_SIZE // 4) == np.arange(PMD_SIZE // 4)).all()
    check_invariants(k)


@pytest.mark.parametrize(
    "ptr, error",
    [
        (np.zeros(2 * NPAGES * 4096, np.uint8)[::2], ValueError),  # not one run of bytes
        (np.zeros((NPAGES * 4096, 2), np.uint8)[:, 0], ValueError),
        ([0] * (NPAGES * 4096), TypeError),  # no buffer protocol
        ("text", TypeError),
    ],
)
def test_a_user_buffer_the_model_cannot_write_is_refused_before_any_work(ptr, error):
    k, _ = make()
    p = k.spawn()
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    a = p.mmap(0, NPAGES * 4096, RW, ANON)
    p.store_array(a, np.arange(NPAGES * 1024, dtype=np.int32))
    before = [entry_at(p, a + i * 4096) for i in range(NPAGES)]
    stats = dict(k.stats)
    for req in (HMM_DMIRROR_MIGRATE_TO_DEV, HMM_DMIRROR_READ):
        with pytest.raises(error, match="hmm_dmirror_cmd.ptr"):
            p.ioctl(fd, req, hmm_dmirror_cmd(addr=a, ptr=ptr, npages=NPAGES))
    assert [entry_at(p, a + i * 4096) for i in range(NPAGES)] == before  # nothing migrated
    assert dict(k.stats) == stats
    check_invariants(k)


@pytest.mark.parametrize("fastpath", [True, False])
def test_a_read_only_user_buffer_is_efault_like_copy_to_user(fastpath):
    """copy_to_user into memory without write permission fails: -EFAULT,
    after the work the kernel does first (the migration itself stands)."""
    from hmmsim.errno import EFAULT

    k, _ = make()
    k.fastpath = fastpath
    p = k.spawn()
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    a = p.mmap(0, NPAGES * 4096, RW, ANON)
    data = np.arange(NPAGES * 1024, dtype=np.int32)
    p.store_array(a, data)
    ro = np.full(NPAGES * 1024, -1, dtype=np.int32)
    ro.flags.writeable = False
    cmd = hmm_dmirror_cmd(addr=a, ptr=ro, npages=NPAGES)
    assert p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, cmd) == -EFAULT
    assert cmd.cpages == 0  # not written back on error
    assert (ro == -1).all()
    from hmmsim.include.pgtable import pte_present

    entries = [entry_at(p, a + i * 4096) for i in range(NPAGES)]
    assert all(lvl == "pte" and w and not pte_present(w) for lvl, w in entries)  # migrated
    assert p.ioctl(fd, HMM_DMIRROR_READ, hmm_dmirror_cmd(addr=a, ptr=ro, npages=NPAGES)) == -EFAULT
    assert (ro == -1).all()
    out = np.zeros(NPAGES * 1024, dtype=np.int32)
    assert p.ioctl(fd, HMM_DMIRROR_READ, hmm_dmirror_cmd(addr=a, ptr=out, npages=NPAGES)) == 0
    assert (out == data).all()
    check_invariants(k)

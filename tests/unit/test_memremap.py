"""ZONE_DEVICE registration, device page lifetime and the CPU paths into device memory."""

import numpy as np
import pytest

from hmmsim.drivers.test_hmm import hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd
from hmmsim.errno import EINVAL, ENOMEM, ENXIO
from hmmsim.include.memremap import (
    MEMORY_DEVICE_COHERENT,
    MEMORY_DEVICE_PRIVATE,
    dev_pagemap,
    dev_pagemap_ops,
)
from hmmsim.include.memremap import (
    range as prange,
)
from hmmsim.include.migrate import MIGRATE_VMA_SELECT_DEVICE_PRIVATE, migrate_vma
from hmmsim.include.mm_types import folio_ref_count
from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, O_RDWR, PROT_READ, PROT_WRITE
from hmmsim.kernel import Kernel
from hmmsim.locking import Scheduler
from hmmsim.mm.gup import FOLL_LONGTERM, FOLL_WRITE, pin_user_pages_remote, unpin_user_page
from hmmsim.mm.memremap import (
    memremap_device_private_pagemap,
    memremap_pages,
    memunmap_pages,
    zone_device_page_init,
)
from hmmsim.mm.migrate_device import migrate_vma_finalize, migrate_vma_pages, migrate_vma_setup
from hmmsim.mm.mmap import vma_lookup
from hmmsim.testing.invariants import check_invariants
from hmmsim.userspace import entry_at

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
CHUNK = 16 << 20


def ops(**kw):
    return dev_pagemap_ops(
        folio_free=kw.get("folio_free", lambda f: None),
        migrate_to_ram=kw.get("migrate_to_ram", lambda vmf: 0),
    )


def pgmap(k, type_=MEMORY_DEVICE_PRIVATE, size=CHUNK, **kw):
    res = k.iomem.request_free_mem_region(size, "test")
    pm = dev_pagemap(
        type=type_,
        ops=kw.get("ops", ops()),
        owner=kw.get("owner", object()),
        nr_range=kw.get("nr_range", 1),
        vmemmap_shift=kw.get("vmemmap_shift", 0),
        range=prange(res.start, res.end),
    )
    return pm


@pytest.fixture
def k():
    kern = Kernel(ram_bytes=128 << 20)
    yield kern


@pytest.mark.parametrize(
    "change",
    [
        dict(nr_range=0),
        dict(vmemmap_shift=19),
        dict(owner=None),
        dict(ops=dev_pagemap_ops(folio_free=lambda f: None)),  # PRIVATE without migrate_to_ram
        dict(ops=dev_pagemap_ops(migrate_to_ram=lambda v: 0)),  # without folio_free
    ],
)
def test_memremap_pages_einval_and_warns(k, change):
    pm = pgmap(k, **change)
    if "owner" in change:
        pm.owner = None
    assert memremap_pages(pm, 0, k=k) == -EINVAL
    assert k.warnings  # each check is a WARN in the kernel
    assert len(k.mem.ranges) == 1


def test_coherent_needs_folio_free_and_owner(k):
    pm = pgmap(k, MEMORY_DEVICE_COHERENT, ops=dev_pagemap_ops())
    assert memremap_pages(pm, 0, k=k) == -EINVAL


def test_memremap_pages_range_conflicts(k):
    ram = dev_pagemap(type=MEMORY_DEVICE_PRIVATE, ops=ops(), owner=1, range=prange(0, CHUNK - 1))
    assert memremap_pages(ram, 0, k=k) == -ENXIO
    pm = pgmap(k)
    assert memremap_pages(pm, 0, k=k) > 0
    again = dev_pagemap(
        type=MEMORY_DEVICE_PRIVATE, ops=ops(), owner=1, range=prange(pm.range.start, pm.range.end)
    )
    assert memremap_pages(again, 0, k=k) == -ENOMEM
    assert [w.msg for w in k.warnings] == ["memremap_pages: Conflicting mapping in same section"]


def test_device_page_lifetime_and_memunmap(k):
    freed = []
    pm = pgmap(k, ops=ops(folio_free=freed.append))
    assert memremap_pages(pm, 0, k=k) > 0
    r = pm._ranges[0]
    from hmmsim.include.mm_types import Page, folio_put

    page = Page(k, r.pages, 5)
    assert folio_ref_count(page) == 0
    zone_device_page_init(page, pm, 0)
    assert folio_ref_count(page) == 1 and page.test(1)  # referenced and locked
    from hmmsim.locking import folio_unlock

    folio_unlock(page)
    from hmmsim.bug import KernelBug

    with pytest.raises(KernelBug, match="device pages still in use"):
        memunmap_pages(pm, k=k)  # would wait forever for the page
    pm._killed = False
    folio_put(page)
    assert freed == [page] and pm._refs == 0
    memunmap_pages(pm, k=k)
    assert len(k.mem.ranges) == 1


def test_series_c_refuses_private_memremap_pages_and_allocates_offsets():
    k = Kernel(ram_bytes=128 << 20, features=frozenset("abcd"))
    pm = pgmap(k)
    assert memremap_pages(pm, 0, k=k) == -EINVAL
    pm2 = dev_pagemap(type=MEMORY_DEVICE_PRIVATE, ops=ops(), owner=2, nr_pages=1000)
    assert memremap_device_private_pagemap(pm2, 0, k=k) == 0
    assert pm2.range.start == 0 and pm2.range.end == 1000 * 4096 - 1
    pm3 = dev_pagemap(type=MEMORY_DEVICE_PRIVATE, ops=ops(), owner=3, nr_pages=10)
    assert memremap_device_private_pagemap(pm3, 0, k=k) == 0
    assert pm3.range.start == 1000 * 4096
    assert (
        memremap_device_private_pagemap(
            dev_pagemap(type=MEMORY_DEVICE_COHERENT, ops=ops(), owner=4, nr_pages=1), 0, k=k
        )
        == -EINVAL
    )


def test_without_series_c_the_new_api_is_absent(k):
    pm = dev_pagemap(type=MEMORY_DEVICE_PRIVATE, ops=ops(), owner=2, nr_pages=10)
    assert memremap_device_private_pagemap(pm, 0, k=k) == -EINVAL


# --- the CPU side ---------------------------------------------------------------------------
@pytest.fixture
def dev():
    kern = Kernel(ram_bytes=256 << 20)
    devs = hmm_dmirror_init(kern)
    p = kern.spawn()
    yield kern, devs, p
    assert not kern.warnings, kern.warnings


def to_device(p, a, n, dev=0):
    fd = p.open(f"/dev/hmm_dmirror{dev}", O_RDWR)
    mirror = np.zeros(n * 1024, dtype=np.int32)
    assert (
        p.ioctl(fd, HMM_DMIRROR_MIGRATE_TO_DEV, hmm_dmirror_cmd(addr=a, ptr=mirror, npages=n)) == 0
    )
    return fd


def test_fork_makes_device_private_entries_readonly_in_both(dev):
    k, devs, p = dev
    a = p.mmap(0, 2 * 4096, RW, ANON)
    p.store_array(a, np.arange(2048, dtype=np.int32))
    fd = to_device(p, a, 2)
    swp = k.swp
    assert swp.softleaf_is_device_private_write(swp.softleaf_from_pte(entry_at(p, a)[1]))
    child = p.child(p.fork())
    for proc in (p, child):
        e = swp.softleaf_from_pte(entry_at(proc, a)[1])
        assert swp.softleaf_is_device_private(e) and not swp.softleaf_is_device_private_write(e)
    page = k.softleaf_to_page(swp.softleaf_from_pte(entry_at(p, a)[1]))
    assert folio_ref_count(page) == 2
    check_invariants(k)
    child.store(a, np.array([-1], dtype=np.int32))  # faults to RAM, then COW
    assert p.load_array(a, 1)[0] == 0 and child.load_array(a, 1)[0] == -1
    check_invariants(k)
    child._exit(0)
    p.waitpid(child.pid)
    p.close(fd)
    check_invariants(k)


def test_cpu_fault_on_locked_device_page_sleeps_instead_of_spinning(dev):
    """known-bugs 1: do_swap_page waits for the device page's lock."""
    k, devs, p = dev
    a = p.mmap(0, 4096, RW, ANON)
    p.store(a, b"wait")
    fd = to_device(p, a, 1)
    args = migrate_vma(
        vma=vma_lookup(p.mm, a),
        src=[0],
        dst=[0],
        start=a,
        end=a + 4096,
        pgmap_owner=devs[0],
        flags=MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
    )
    p.mm.mmap_lock.down_read()
    assert migrate_vma_setup(args) == 0  # the device page is now locked, mid-migration
    p.mm.mmap_lock.up_read()
    waits = []

    class Other(Scheduler):
        def wait(self, obj, why):
            waits.append(why)
            migrate_vma_pages(args)  # the migrating thread gives up (no dst) ...
            migrate_vma_finalize(args)  # ... and unlocks the page

    k.sched = Other()
    assert p.load(a, 4) == b"wait"
    k.sched = Scheduler()
    assert len(waits) == 1 and k.stats["migration_entry_waits"] == 1
    p.close(fd)
    check_invariants(k)


def test_longterm_pin_migrates_a_coherent_page_out(dev):
    k, devs, p = dev
    a = p.mmap(0, 4096, RW, ANON)
    p.store(a, b"pin me")
    fd = to_device(p, a, 1, dev=2)
    before = entry_at(p, a)[1]
    from hmmsim.include.pgtable import pte_pfn
    from hmmsim.mm.memremap import is_device_coherent_page

    assert is_device_coherent_page(k.mem.pfn_to_page(pte_pfn(before)))
    p.mm.mmap_lock.down_read()
    pages = pin_user_pages_remote(p.mm, a, 1, FOLL_WRITE | FOLL_LONGTERM)
    p.mm.mmap_lock.up_read()
    assert not is_device_coherent_page(pages[0])
    assert pte_pfn(entry_at(p, a)[1]) == pages[0].pfn
    assert p.load(a, 6) == b"pin me"
    unpin_user_page(pages[0])
    p.close(fd)
    check_invariants(k)

"""The device-coherent bulk forms give exactly what the per-entry path gives.

fast/migrate_device_coherent.py (collect of present PTEs of device-coherent
pages) and fast/test_hmm_coherent.py (the coherent dmirror's alloc and copy
both ways, its mirror update, its folio_free) against the per-entry code:
two kernels from one seed (test_fastpath_differential.World: a mixed buffer
of 4 KiB pages and a THP, device-private pages of two devices, COW-shared
pages after fork), fast paths on and off, the same migrations through the
device-coherent dmirror (fd 2), with the whole machine state compared after
every step. Some steps first pin or lock pages, or put some on a
device-private device or on the other coherent device, so that windows the
bulk forms must decline (or cut short) reach them too; spies prove every
bulk form ran and declined somewhere.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from test_fastpath_differential import NPAGES, World, assert_same, pair

import hmmsim.fast.migrate_device_coherent as fmdc
import hmmsim.fast.test_hmm_coherent as fthc
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_MIGRATE_TO_SYS,
)
from hmmsim.include.migrate import (
    MIGRATE_VMA_SELECT_DEVICE_COHERENT,
    MIGRATE_VMA_SELECT_SYSTEM,
    migrate_vma,
)
from hmmsim.include.mm_types import folio_test_locked, page_folio
from hmmsim.include.mman import O_RDWR
from hmmsim.kconfig import PAGE_SIZE
from hmmsim.locking import folio_lock, folio_unlock
from hmmsim.mm.gup import _follow_page, pin_user_pages_remote, unpin_user_page
from hmmsim.mm.migrate_device import migrate_vma_finalize, migrate_vma_pages, migrate_vma_setup
from hmmsim.mm.mmap import vma_lookup
from hmmsim.testing.invariants import check_invariants

COHERENT = 2  # World.fds: dmirror0, dmirror1 (device-private), dmirror2 (coherent)
SPIED = (
    (fmdc, "migrate_vma_collect_coherent_ptes"),
    (fthc, "dmirror_migrate_alloc_and_copy_coherent_bulk"),
    (fthc, "dmirror_migrate_finalize_and_map_coherent_bulk"),
    (fthc, "dmirror_devmem_fault_alloc_and_copy_coherent_bulk"),
    (fthc, "dmirror_devmem_free_coherent_bulk"),
    (fthc, "dmirror_alloc_and_copy_coherent_split_bulk"),
    (fmdc, "migrate_split_run_pages"),
)


@pytest.fixture
def spies(monkeypatch):
    """name -> [runs taken, runs declined] of each coherent bulk form."""
    seen: dict[str, list[int]] = {}
    for mod, name in SPIED:
        real = getattr(mod, name)
        seen[name] = [0, 0]

        def spy(*args, _real=real, _name=name):
            out = _real(*args)
            seen[_name][0 if out else 1] += 1
            return out

        monkeypatch.setattr(mod, name, spy)
    return seen


def _hold(w: World, rng: random.Random, kind: str) -> list:
    """Pin (FOLL_PIN) or lock a few mapped pages of the buffer: undo list."""
    undo = []
    w.p.mm.mmap_lock.down_read()  # (gup's faults need it)
    try:
        _hold_some(w, rng, kind, undo)
    finally:
        w.p.mm.mmap_lock.up_read()
    return undo


def _hold_some(w: World, rng: random.Random, kind: str, undo: list) -> None:
    for _ in range(3):
        addr = w.a + rng.randrange(NPAGES) * PAGE_SIZE
        if kind == "pin":
            got = pin_user_pages_remote(w.p.mm, addr, 2, 0)
            if isinstance(got, list):
                undo += [("pin", p) for p in got]
        else:
            page = _follow_page(w.p.mm, vma_lookup(w.p.mm, addr), addr, 0)
            folio = page_folio(page) if page is not None else None
            if folio is not None and not folio_test_locked(folio):
                folio_lock(folio)
                undo.append(("lock", folio))


def _release(undo: list) -> None:
    for what, page in undo:
        unpin_user_page(page) if what == "pin" else folio_unlock(page)


# one configuration each (about 3 s a case): coherent pages are the same
# under every series; the configurations differ in the device-private pages
# mixed in
@pytest.mark.parametrize(
    "seed,fork,common,cfg",
    [(21, False, 0.97, "d"), (22, True, 0.7, "abcd"), (23, False, 0.7, "6.12")],
)
def test_coherent_round_trips_match(seed, fork, common, cfg, spies):
    fast, slow = pair(seed, cfg, fork, common)
    for w in (fast, slow):
        w.fds.append(w.p.open("/dev/hmm_dmirror3", O_RDWR))
    rng = random.Random(seed)
    total = NPAGES + 512  # the 4 KiB pages and the THP
    # first the whole buffer there and back (THP included), then random steps
    steps = [(0, total, "to_dev"), (0, total, "to_sys")]
    for _ in range(10):
        first = rng.randrange(total)
        steps.append((first, rng.randint(1, total - first), rng.choice(["to_dev", "to_sys"])))
    for step, (first, npages, kind) in enumerate(steps):
        hold = rng.choice(["", "", "pin", "lock"]) if step >= 2 else ""
        other = rng.random() < 0.2 and step >= 2  # some pages on another device first
        held = []
        for w in (fast, slow):
            r2 = random.Random(seed * 100 + step)
            if other:
                dev = r2.choice([0, 1, 3])  # device-private, or the other coherent one
                w.ioctl(dev, HMM_DMIRROR_MIGRATE_TO_DEV, w.a + r2.randrange(NPAGES) * PAGE_SIZE, 4)
            held.append(_hold(w, r2, hold) if hold else [])
        assert_same(fast, slow, f"step {step} setup")
        req = HMM_DMIRROR_MIGRATE_TO_DEV if kind == "to_dev" else HMM_DMIRROR_MIGRATE_TO_SYS
        args = (COHERENT, req, fast.a + first * PAGE_SIZE, npages)
        rf, rs = fast.ioctl(*args), slow.ioctl(*args)
        assert rf[:3] == rs[:3] and np.array_equal(rf[3], rs[3]), f"step {step}"
        assert_same(fast, slow, f"step {step}")
        for undo in held:
            _release(undo)
        assert_same(fast, slow, f"step {step} release")
    check_invariants(fast.k)
    check_invariants(slow.k)
    if common > 0.9:  # long runs of plain pages: every coherent bulk form took some
        split = ("dmirror_alloc_and_copy_coherent_split_bulk", "migrate_split_run_pages")
        assert all(v[0] > 0 for name, v in spies.items() if name not in split), spies
    assert spies["migrate_vma_collect_coherent_ptes"][1] > 0, spies  # and declined some


def _setup(w: World, first: int, npages: int, flags: int, owner: int):
    mm = w.p.mm
    start = w.a + first * PAGE_SIZE
    vma = vma_lookup(mm, start)
    end = min(start + npages * PAGE_SIZE, vma.vm_end)
    n = (end - start) // PAGE_SIZE
    args = migrate_vma(
        vma=vma,
        src=[0] * n,
        dst=[0] * n,
        start=start,
        end=end,
        pgmap_owner=w.devs[owner],
        flags=flags,
    )
    mm.mmap_lock.down_read()
    try:
        return migrate_vma_setup(args), args
    finally:
        mm.mmap_lock.up_read()


@pytest.mark.parametrize("seed,cfg", [(24, "d"), (25, "abcd")])
def test_coherent_collect_matches_before_finalize(seed, cfg, spies):
    """The collect result itself (src words, PTEs, struct pages), before
    pages/finalize restore everything: coherent pages of the walking
    device, of another coherent device (owner mismatch: declined), with and
    without SELECT_SYSTEM, mixed with system pages."""
    fast, slow = pair(seed, cfg, False, 0.97)
    rng = random.Random(seed)
    # most of the buffer on the coherent device, a stretch on the other one
    for w in (fast, slow):
        w.fds.append(w.p.open("/dev/hmm_dmirror3", O_RDWR))
        # in pieces (a PROT_NONE page fails its piece with -EINVAL)
        for lo in range(0, NPAGES, 32):
            w.ioctl(COHERENT, HMM_DMIRROR_MIGRATE_TO_DEV, w.a + lo * PAGE_SIZE, 32)
        for lo in range(700, 800, 20):
            w.ioctl(COHERENT, HMM_DMIRROR_MIGRATE_TO_SYS, w.a + lo * PAGE_SIZE, 20)
            w.ioctl(3, HMM_DMIRROR_MIGRATE_TO_DEV, w.a + lo * PAGE_SIZE, 20)
        w.ioctl(COHERENT, HMM_DMIRROR_MIGRATE_TO_SYS, w.a + 1200 * PAGE_SIZE, 40)
    assert_same(fast, slow, "setup")
    for step in range(10):
        first = rng.randrange(NPAGES)
        npages = rng.randint(1, 512)
        flags = rng.choice(
            [
                MIGRATE_VMA_SELECT_DEVICE_COHERENT,
                MIGRATE_VMA_SELECT_DEVICE_COHERENT | MIGRATE_VMA_SELECT_SYSTEM,
                MIGRATE_VMA_SELECT_SYSTEM,
            ]
        )
        owner = rng.choice([COHERENT, COHERENT, 3])
        rf, af = _setup(fast, first, npages, flags, owner)
        rs, as_ = _setup(slow, first, npages, flags, owner)
        assert (rf, af.src, af.cpages, af.npages) == (rs, as_.src, as_.cpages, as_.npages)
        assert_same(fast, slow, f"step {step} after setup")
        for w, args in ((fast, af), (slow, as_)):  # no destinations: everything restored
            w.p.mm.mmap_lock.down_read()
            migrate_vma_pages(args)
            migrate_vma_finalize(args)
            w.p.mm.mmap_lock.up_read()
        assert_same(fast, slow, f"step {step} after restore")
    check_invariants(fast.k)
    taken, declined = spies["migrate_vma_collect_coherent_ptes"]
    assert taken > 0 and declined > 0, spies


@pytest.mark.parametrize("seed,cfg,first", [(26, "d", 0), (27, "abcd", 1), (29, "d", 2)])
def test_coherent_thp_first_trip_matches(seed, cfg, first, spies):
    """A THP's first trip to the coherent device and back: no device THP is
    free, so the driver's alloc_and_copy moves the compound source through
    order-0 device pages (the split bulk form), then migrate_vma_pages
    splits the source. The THP alone (its allocation adds the device's
    first chunk), with 4 KiB pages before it in the window, and after the
    chunk was added by 4 KiB pages; then back, then part of it again."""
    fast, slow = pair(seed, cfg, False, 0.97)
    thp = NPAGES  # slot of the THP in the buffer
    lo = thp
    while first and lo > thp - 40 and fast.kinds[lo - 1] == "rw":
        lo -= 1  # plain pages just before the THP
    if first == 2:
        for w in (fast, slow):  # the chunk comes from the 4 KiB pages' allocations
            assert (
                w.ioctl(COHERENT, HMM_DMIRROR_MIGRATE_TO_DEV, w.a + lo * PAGE_SIZE, thp - lo)[0]
                == 0
            )
        assert_same(fast, slow, "setup")
    steps = [(lo, thp + 512 - lo, HMM_DMIRROR_MIGRATE_TO_DEV)]
    steps.append((lo, thp + 512 - lo, HMM_DMIRROR_MIGRATE_TO_SYS))
    steps.append((thp + 100, 300, HMM_DMIRROR_MIGRATE_TO_DEV))  # part of it
    steps.append((thp, 512, HMM_DMIRROR_MIGRATE_TO_SYS))
    for step, (s, npages, req) in enumerate(steps):
        args = (COHERENT, req, fast.a + s * PAGE_SIZE, npages)
        rf, rs = fast.ioctl(*args), slow.ioctl(*args)
        assert rf[:3] == rs[:3] and np.array_equal(rf[3], rs[3]), f"step {step}"
        assert rf[0] == 0, f"step {step}: {rf[:3]}"
        assert_same(fast, slow, f"step {step}")
    check_invariants(fast.k)
    check_invariants(slow.k)
    assert spies["dmirror_alloc_and_copy_coherent_split_bulk"][0] > 0, spies
    assert spies["migrate_split_run_pages"][0] > 0, spies

"""A seeded fuzzer of series (e)'s unified walk, driven through the kernel API.

lib/test_hmm.c at the pin does not use HMM_PFN_REQ_MIGRATE, so the dmirror
fuzzer never reaches series (e)'s collect-while-walking path except through
migrate_vma_setup. This one plays the driver:
it builds a random address space (THPs, PMD-sized holes, present, zero-page
and empty small pages, read-only ranges), then for a random PMD-aligned or
page-aligned subrange runs hmm_range_fault with HMM_PFN_REQ_MIGRATE,
migrate_hmm_range_setup, gives every collected small page a system-RAM
destination (locked, bytes copied) or none, and runs migrate_vma_pages and
migrate_vma_finalize. After each round it compares every byte with what was
stored and runs the invariant checker. Any exception, lost byte or broken
invariant is a failure.

With `devices=True` (and series (e) on) the world also has the dmirror
devices, and a round is one of: the API walk above with HMM_PFN_REQ_FAULT
or not, selecting system, device-private and device-coherent sources of one
device's owner (foreign device pages are faulted home when REQ_FAULT is
asked); the series' migrate-on-fault ioctl (REQ_FAULT | REQ_MIGRATE, system
sources to device-private or coherent destinations); MIGRATE_TO_SYS (the
migrate_vma_setup path, which with (e) is the same walk); a CPU store. Bytes
are compared at the end of each world (a CPU read brings every device page
home), invariants after every round. The walk's own MMU_NOTIFY_MIGRATE is
ignored by the fuzzer's interval notifier when it carries the fuzzer's
owner, as dmirror does; an -EBUSY walk is unwound (migrate_hmm_range_setup
and finalize with no destination) and counted.

Not kernel code: a driver-shaped client of mm/hmm.c and mm/migrate_device.c.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from hmmsim.include.hmm import hmm_range
from hmmsim.include.migrate import (
    MIGRATE_PFN_COMPOUND,
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_VALID,
    MIGRATE_VMA_SELECT_COMPOUND,
    MIGRATE_VMA_SELECT_DEVICE_COHERENT,
    MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
    MIGRATE_VMA_SELECT_SYSTEM,
    migrate_vma,
)
from hmmsim.include.mman import MADV_HUGEPAGE, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from hmmsim.include.mmu_notifier import MMU_NOTIFY_MIGRATE
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
    def __init__(self, owner=None):
        self.owner = owner

    def invalidate(self, mni, r, cur_seq):
        if r.event == MMU_NOTIFY_MIGRATE and self.owner is not None and r.owner is self.owner:
            return True  # the walk's own collect (dmirror_interval_invalidate does this)
        mmu_interval_set_seq(mni, cur_seq)
        return True


@dataclass
class WalkFuzzReport:
    runs: int = 0
    rounds: int = 0
    migrated: int = 0
    busy: int = 0
    kinds: dict = field(default_factory=dict)
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


def _round(k, p, base: int, rng: random.Random, dev=None, rep=None) -> int:
    """One unified walk + migration of a random subrange; returns pages migrated.

    dev: None (system RAM sources only, no fault) or a dmirror device: then
    its pages are selected too (SELECT_DEVICE_PRIVATE/_COHERENT, its owner)
    and HMM_PFN_REQ_FAULT is asked half of the time.
    """
    from hmmsim.drivers.test_hmm import BACKING_PAGE
    from hmmsim.errno import EBUSY

    L = k.hmm
    if rng.random() < 0.5:
        first, n = rng.randrange(NPMD) * 512, 512 * rng.randint(1, 2)
    else:
        first, n = rng.randrange(NPMD * 512 - 8), rng.randint(1, 40)
    n = min(n, NPMD * 512 - first)
    start = base + first * PAGE_SIZE
    owner = dev.mdevice if dev is not None else None
    flags = MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_SELECT_COMPOUND
    if dev is not None:
        flags |= MIGRATE_VMA_SELECT_DEVICE_PRIVATE | MIGRATE_VMA_SELECT_DEVICE_COHERENT
    default = L.HMM_PFN_REQ_MIGRATE
    if dev is not None and rng.random() < 0.5:
        default |= L.HMM_PFN_REQ_FAULT
    mni = mmu_interval_notifier()
    mmu_interval_notifier_insert(mni, p.mm, start, n * PAGE_SIZE, _Sub(owner))
    m = migrate_vma(src=[0] * n, dst=[0] * n, flags=flags, pgmap_owner=owner)
    r = hmm_range(
        notifier=mni,
        start=start,
        end=start + n * PAGE_SIZE,
        hmm_pfns=[0] * n,
        default_flags=default,
        dev_private_owner=owner,
        migrate=m,
    )
    moved = 0
    p.mm.mmap_lock.down_read()
    try:
        r.notifier_seq = mmu_interval_read_begin(mni)
        ret = hmm_range_fault(r)
        migrate_hmm_range_setup(r)  # on an error too: it unwinds what was collected
        if m.vma is None:
            return 0
        if ret:
            if ret == -EBUSY and rep is not None:
                rep.busy += 1
            migrate_vma_finalize(m)
            return 0
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
                spage = BACKING_PAGE(migrate_pfn_to_page(s, k=k))
                k.mem.frame(dpage.pfn)[:] = k.mem.frame(spage.pfn)
            else:
                k.mem.frame(dpage.pfn)[:] = 0
            m.dst[i] = migrate_pfn_from_page(dpage)
            moved += 1
        migrate_vma_pages(m)
        if dev is not None:
            # the driver's side of a migration under its own owner (its notifier
            # ignores the walk's MMU_NOTIFY_MIGRATE): forget the device mappings
            with dev.mutex:
                dev.dmirror_do_update(start, start + n * PAGE_SIZE - 1)
        migrate_vma_finalize(m)
    finally:
        p.mm.mmap_lock.up_read()
        mmu_interval_notifier_remove(mni)
    return moved


def _subrange(base: int, rng: random.Random) -> tuple[int, int]:
    if rng.random() < 0.3:
        return base + rng.randrange(NPMD) * PMD_SIZE, 512
    first = rng.randrange(NPMD * 512 - 8)
    return base + first * PAGE_SIZE, min(rng.randint(1, 100), NPMD * 512 - first)


def _device_round(k, p, base: int, shadow, rng: random.Random, devs, rep) -> None:
    """One round of the device mode (see the module docstring)."""
    from hmmsim.drivers.test_hmm_uapi import (
        HMM_DMIRROR_MIGRATE_ON_FAULT_TO_DEV,
        HMM_DMIRROR_MIGRATE_TO_SYS,
        hmm_dmirror_cmd,
    )
    from hmmsim.errno import EBUSY, ENOENT, ENOMEM

    fd, dev = rng.choice(devs)
    kind = rng.choice(("walk", "on_fault", "to_sys", "cpu"))
    rep.kinds[kind] = rep.kinds.get(kind, 0) + 1
    if kind == "walk":
        rep.migrated += _round(k, p, base, rng, dev, rep)
        return
    if kind == "cpu":
        j = rng.randrange(NPMD * 512)
        v = rng.randrange(1, 1 << 30)
        p.store_array(base + j * PAGE_SIZE, np.full(4, v, dtype=np.int32))
        shadow[j * 1024 : j * 1024 + 4] = v
        return
    addr, n = _subrange(base, rng)
    buf = np.zeros(n * 1024, dtype=np.int32)
    cmd = hmm_dmirror_cmd(addr=addr, ptr=buf, npages=n)
    req = HMM_DMIRROR_MIGRATE_ON_FAULT_TO_DEV if kind == "on_fault" else HMM_DMIRROR_MIGRATE_TO_SYS
    ret = p.ioctl(fd, req, cmd)
    key = f"{kind}:{ret}"
    rep.kinds[key] = rep.kinds.get(key, 0) + 1
    if ret not in (0, -ENOENT, -EBUSY, -ENOMEM):
        raise AssertionError(f"{kind} [{addr:#x}, +{n} pages) returned {ret}")
    off = (addr - base) // 4
    if kind == "on_fault" and ret == 0:
        if cmd.cpages != n:
            raise AssertionError(f"migrate-on-fault of {n} pages migrated {cmd.cpages}")
        want = shadow[off : off + n * 1024]
        if not (buf == want).all():
            w = int(np.nonzero(buf != want)[0][0])
            raise AssertionError(f"device read word {w} at {addr:#x}: {buf[w]} != {want[w]}")


def run_walk_fuzz(
    runs: int,
    seed: int = 0,
    *,
    features=frozenset({"d", "e"}),
    bugs=frozenset(),
    conflict_resolution=None,
    devices: bool = False,
    rounds: int = 4,
) -> WalkFuzzReport:
    """`runs` fresh address spaces, `rounds` rounds each; stop at the first failure."""
    from hmmsim.kconfig import KConfig

    rep = WalkFuzzReport(seed=seed)
    master = random.Random(seed)
    for run in range(runs):
        rng = random.Random(master.getrandbits(63))
        cfg = KConfig(
            ram_bytes=(128 if devices else 64) << 20,
            hugetlb_pages=0,
            features=frozenset(features),
            bugs=frozenset(bugs),
            conflict_resolution=conflict_resolution,
        )
        k = Kernel(cfg)
        k.word_checks.append(strict_word_check)
        devs = []
        if devices:
            from hmmsim.drivers.test_hmm import hmm_dmirror_init
            from hmmsim.include.mman import O_RDWR

        p = k.spawn("walker")
        if devices:
            hmm_dmirror_init(k)
            for unit in (0, 2):  # a device-private and a device-coherent dmirror
                fd = p.open(f"/dev/hmm_dmirror{unit}", O_RDWR)
                if fd >= 0:
                    devs.append((fd, p.fds[fd].private))
        rep.runs += 1
        try:
            base, shadow = _populate(k, p, rng)
            for _ in range(rounds):
                rep.rounds += 1
                if devs:
                    _device_round(k, p, base, shadow, rng, devs, rep)
                else:
                    rep.migrated += _round(k, p, base, rng)
                    check_bytes(p, base, shadow)
                check_invariants(k)
            if devs:
                check_bytes(p, base, shadow)
                check_invariants(k)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            rep.failure = f"run {run}: {type(e).__name__}: {e}"
            break
    return rep

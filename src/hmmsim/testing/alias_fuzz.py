"""A seeded fuzzer of device-private offsets that equal RAM PFNs (series (c)).

With series (c) a device-private page has an offset, not a PFN, and offsets
start at 0, so on a real machine the same number is both a device-private
offset and the PFN of some RAM page all the time. The page-table walks that
find a folio's mappings (page_vma_mapped_walk: try_to_migrate,
make_device_exclusive, remove_migration_ptes) must therefore tell the two
apart by kind, which is what series (c)'s PVMW_DEVICE_PRIVATE marker is for.
lib/test_hmm.c never produces such a coincidence in the model: it hands out
its chunk's offsets from the top (0xffff down) and the model's small RAM
fills from low PFNs up.

This fuzzer plays a driver whose allocator can: `AliasDevice` registers
device-private memory with memremap_device_private_pagemap (offsets from 0,
DEV_PAGES of them, covering every PFN of the world's RAM) and, like a
driver with a buddy allocator over its VRAM, may place a page at any free
offset. Half of its allocations take a hint: the PFN of a page the client
family has mapped, read from /proc/pid/pagemap as a privileged client can
(CAP_SYS_ADMIN shows PFNs). The rest is ordinary use: a parent and a forked
child over one anonymous buffer, CPU writes and reads (a read of a device
page faults it back through migrate_to_ram), migrations to the device that
may stay open (setup done, pages and finalize later) while other things
happen, evictions of device pages (migrate_device_pfns, as a driver
releasing its memory does, without mmap_lock), MADV_DONTNEED. Every byte is
compared with a per-process shadow and the invariant checker runs whenever
no migration is open. Any exception, warning, lost byte or broken invariant
is a failure.

Not kernel code: a driver-shaped client of mm/migrate_device.c and
mm/memremap.c. Needs series (c) (so (a) and (b)).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from hmmsim.include.memremap import MEMORY_DEVICE_PRIVATE, dev_pagemap, dev_pagemap_ops
from hmmsim.include.migrate import (
    MIGRATE_PFN_MIGRATE,
    MIGRATE_PFN_VALID,
    MIGRATE_PFN_WRITE,
    MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
    MIGRATE_VMA_SELECT_SYSTEM,
    migrate_vma,
)
from hmmsim.include.mman import MADV_DONTNEED, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from hmmsim.kconfig import PAGE_SHIFT, PAGE_SIZE
from hmmsim.kernel import Kernel
from hmmsim.locking import lock_page
from hmmsim.mm.memremap import (
    device_private_offset_to_page,
    device_private_page_to_offset,
    memremap_device_private_pagemap,
    zone_device_page_init,
)
from hmmsim.mm.migrate import migrate_pfn, migrate_pfn_from_page, migrate_pfn_to_page
from hmmsim.mm.migrate_device import (
    migrate_device_finalize,
    migrate_device_pages,
    migrate_device_pfns,
    migrate_vma_finalize,
    migrate_vma_pages,
    migrate_vma_setup,
)
from hmmsim.mm.mmap import vma_lookup
from hmmsim.testing.invariants import check_invariants, strict_word_check

RW = PROT_READ | PROT_WRITE
NPAGES = 4
ROUNDS = 40
PM_PRESENT = 1 << 63
PM_PFN_MASK = (1 << 55) - 1


class AliasDevice:
    """Series (c) device-private memory whose driver picks any free offset.

    `alloc(want)` hands out the page at offset `want` when it is free, else
    the lowest free one; the bytes of a device page live in `store` (the
    device's memory). migrate_to_ram is a one-page migration like
    dmirror_devmem_fault's; `evict` migrates chosen device pages to RAM.
    """

    def __init__(self, k, nr_pages: int) -> None:
        self.k = k
        pgmap = dev_pagemap()
        pgmap.type = MEMORY_DEVICE_PRIVATE
        pgmap.nr_range = 1
        pgmap.nr_pages = nr_pages
        pgmap.ops = dev_pagemap_ops(folio_free=self.folio_free, migrate_to_ram=self.migrate_to_ram)
        pgmap.owner = self
        ret = memremap_device_private_pagemap(pgmap, 0, k=k)
        if ret:
            raise MemoryError(f"memremap_device_private_pagemap: {ret}")
        self.pgmap = pgmap
        self.base = pgmap.range.start >> PAGE_SHIFT
        self.nr = nr_pages
        self.used = np.zeros(nr_pages, dtype=bool)
        self.store: dict[int, np.ndarray] = {}

    def alloc(self, want: int | None = None):
        i = None if want is None else want - self.base
        if i is None or not 0 <= i < self.nr or self.used[i]:
            free = np.flatnonzero(~self.used)
            if not len(free):
                return None
            i = int(free[0])
        self.used[i] = True
        page = device_private_offset_to_page(self.base + i, k=self.k)
        zone_device_page_init(page, self.pgmap)  # refcount 1, locked
        return page

    def folio_free(self, folio) -> None:
        i = device_private_page_to_offset(folio) - self.base
        self.used[i] = False
        self.store.pop(i, None)

    def offsets_in_use(self) -> list[int]:
        return (np.flatnonzero(self.used) + self.base).tolist()

    def _to_ram(self, spage):
        """A locked RAM page holding spage's bytes (the driver's copy out)."""
        k = self.k
        dpage = k.mem.alloc_pages(0)
        if dpage is None:
            raise MemoryError("alias fuzz: out of RAM")
        lock_page(dpage)
        i = device_private_page_to_offset(spage) - self.base
        data = self.store.get(i)
        k.mem.ram.frames[dpage.pfn] = 0 if data is None else data
        return dpage

    def migrate_to_ram(self, vmf) -> int:
        k = self.k
        start = vmf.address & ~(PAGE_SIZE - 1)
        m = migrate_vma(
            vma=vmf.vma,
            src=[0],
            dst=[0],
            start=start,
            end=start + PAGE_SIZE,
            pgmap_owner=self,
            flags=MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
            fault_page=vmf.page,
        )
        if migrate_vma_setup(m):
            from hmmsim.include.mm import VM_FAULT_SIGBUS

            return VM_FAULT_SIGBUS
        s = int(m.src[0])
        if s & MIGRATE_PFN_MIGRATE:
            dpage = self._to_ram(migrate_pfn_to_page(s, k=k))
            m.dst[0] = migrate_pfn(dpage.pfn) | (s & MIGRATE_PFN_WRITE)
        migrate_vma_pages(m)
        migrate_vma_finalize(m)
        return 0

    def evict(self, offsets: list[int]) -> None:
        """Migrate the device pages at `offsets` to RAM (no mmap_lock)."""
        k = self.k
        n = len(offsets)
        src = list(offsets)
        dst = [0] * n
        migrate_device_pfns(src, n, k=k, device_private=True)
        for i in range(n):
            s = int(src[i])
            if s & MIGRATE_PFN_MIGRATE and s & MIGRATE_PFN_VALID:
                dpage = self._to_ram(migrate_pfn_to_page(s, k=k))
                dst[i] = migrate_pfn(dpage.pfn) | (s & MIGRATE_PFN_WRITE)
        migrate_device_pages(src, dst, n, k=k)
        migrate_device_finalize(src, dst, n, k=k)


class _Open:
    """A migration to the device between setup and pages/finalize."""

    def __init__(self, proc, m, first: int, n: int) -> None:
        self.proc, self.m, self.first, self.n = proc, m, first, n


def begin_to_device(
    k, dev: AliasDevice, proc, addr: int, n: int, want, index: int = 0
) -> _Open | None:
    """migrate_vma_setup + allocate and copy (mmap_lock held until finish)."""
    m = migrate_vma(
        vma=vma_lookup(proc.mm, addr),
        src=[0] * n,
        dst=[0] * n,
        start=addr,
        end=addr + n * PAGE_SIZE,
        pgmap_owner=dev,
        flags=MIGRATE_VMA_SELECT_SYSTEM,
    )
    proc.mm.mmap_lock.down_read()
    if migrate_vma_setup(m):
        proc.mm.mmap_lock.up_read()
        return None
    for i in range(n):
        s = int(m.src[i])
        if not (s & MIGRATE_PFN_MIGRATE and s & MIGRATE_PFN_VALID):
            continue
        spage = migrate_pfn_to_page(s, k=k)
        dpage = dev.alloc(want())
        if dpage is None:
            continue
        off = device_private_page_to_offset(dpage) - dev.base
        dev.store[off] = np.array(k.mem.ram.frames[spage.pfn], copy=True)
        m.dst[i] = migrate_pfn_from_page(dpage) | (s & MIGRATE_PFN_WRITE)
    return _Open(proc, m, index, n)


def finish(op: _Open) -> None:
    try:
        migrate_vma_pages(op.m)
        migrate_vma_finalize(op.m)
    finally:
        op.proc.mm.mmap_lock.up_read()


@dataclass
class AliasFuzzReport:
    runs: int = 0
    rounds: int = 0
    migrated: int = 0
    aliased: int = 0  # device pages placed at an offset equal to a mapped PFN
    failure: str = ""
    seed: int = 0


def _present_pfns(procs, base: int) -> list[int]:
    from hmmsim.fs.task_mmu import pagemap_file

    out = []
    for p in procs:
        pm = pagemap_file(p, show_pfn=True)
        for i in range(NPAGES):
            e = pm.entry(base + i * PAGE_SIZE)
            if e & PM_PRESENT:
                out.append(e & PM_PFN_MASK)
    return out


def run_alias_fuzz(
    runs: int, seed: int = 0, *, bugs=frozenset(), pvmw_form=None, data_plane: str = "bytes"
) -> AliasFuzzReport:
    """`runs` fresh worlds of ROUNDS rounds each; stop at the first failure.

    Each world takes the series (c) marker form `pvmw_form` ("flag" or
    "pfn-bit"), or a random one when None. `data_plane` "tokens": the
    Kernel keeps a token per page and the writes keep to a page's first 8
    bytes (hmmsim.data_plane).
    """
    rep = AliasFuzzReport(seed=seed)
    master = random.Random(seed)
    for run in range(runs):
        rng = random.Random(master.getrandbits(63))
        form = pvmw_form or rng.choice(("flag", "pfn-bit"))
        k = Kernel(
            ram_bytes=64 << 20,
            hugetlb_pages=0,
            features=frozenset("abcd"),
            pvmw_form=form,
            bugs=frozenset(bugs),
            data_plane=data_plane,
        )
        k.word_checks.append(strict_word_check)
        rep.runs += 1
        opened: list[_Open] = []
        try:
            _world(k, rng, rep, opened)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            rep.failure = f"run {run} ({form}): {type(e).__name__}: {e}"
            break
    return rep


def _world(k, rng, rep: AliasFuzzReport, opened: list) -> None:
    dev = AliasDevice(k, k.config.nr_ram_pages)
    parent = k.spawn("parent")
    base = parent.mmap(0, NPAGES * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    words = NPAGES * PAGE_SIZE // 4
    shadow = {}
    sh = rng.randrange(1, 1 << 30) + np.arange(words, dtype=np.int64)
    tokens = k.mem.data_plane == "tokens"
    if tokens:  # a token page: only its first two words may be non-zero
        sh.reshape(-1, 1024)[:, 2:] = 0
    shadow[parent] = sh.astype(np.int32)
    parent.store_array(base, shadow[parent])
    child = parent.child(parent.fork())
    child.name = "child"
    shadow[child] = shadow[parent].copy()
    procs = (parent, child)

    def want():
        if rng.random() < 0.5:
            pfns = _present_pfns(procs, base)
            if pfns:
                rep.aliased += 1
                return rng.choice(pfns)
        return None

    def busy(p, i: int) -> bool:
        """p has a migration open, or page i is in one (its PTEs may be
        migration entries: a fault there would sleep on a lock this single
        thread holds)."""
        return any(o.proc is p or o.first <= i < o.first + o.n for o in opened)

    def check(p) -> None:
        got = p.load_array(base, words)
        if not (got == shadow[p]).all():
            bad = int(np.nonzero(got != shadow[p])[0][0])
            raise AssertionError(
                f"{p.name} lost bytes: word {bad} (page {bad // 1024}) is {got[bad]}, "
                f"expected {shadow[p][bad]}"
            )

    for _ in range(ROUNDS):
        rep.rounds += 1
        p = rng.choice(procs)
        i = rng.randrange(NPAGES)
        addr = base + i * PAGE_SIZE
        op = rng.random()
        if op < 0.2 and not busy(p, i):  # a CPU write (COW, or a fault back from the device)
            vals = (rng.randrange(1, 1 << 30) + np.arange(1024)).astype(np.int32)
            if tokens:
                vals[2:] = 0
            p.store_array(addr, vals)
            shadow[p][i * 1024 : (i + 1) * 1024] = vals
        elif op < 0.3 and not busy(p, i):  # a CPU read
            got = p.load_array(addr, 1024)
            if not (got == shadow[p][i * 1024 : (i + 1) * 1024]).all():
                raise AssertionError(f"{p.name} read wrong bytes at page {i}")
        elif op < 0.6 and not busy(p, i):  # migrate to the device, maybe left open
            n = min(rng.randint(1, 4), NPAGES - i)
            o = begin_to_device(k, dev, p, addr, n, want, i)
            if o is not None:
                rep.migrated += n
                if rng.random() < 0.4:
                    opened.append(o)
                else:
                    finish(o)
        elif op < 0.7 and opened:
            finish(opened.pop(rng.randrange(len(opened))))
        elif op < 0.9:  # the driver releases some of its memory
            used = dev.offsets_in_use()
            if used:
                dev.evict(rng.sample(used, min(len(used), rng.randint(1, 4))))
        elif not busy(p, i):
            p.madvise(addr, PAGE_SIZE, MADV_DONTNEED)
            shadow[p][i * 1024 : (i + 1) * 1024] = 0
        if not opened:
            check_invariants(k)
            if k.warnings:
                raise AssertionError(f"kernel warnings: {k.warnings}")
    while opened:
        finish(opened.pop())
    for p in procs:
        check(p)
    check_invariants(k)
    if k.warnings:
        raise AssertionError(f"kernel warnings: {k.warnings}")

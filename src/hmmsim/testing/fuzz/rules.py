"""The rules: how the seeded generator picks the next operation from the World's state."""

from __future__ import annotations

import random

from hmmsim.include.mman import (
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    MREMAP_DONTUNMAP,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.kconfig import PAGE_SHIFT, PAGE_SIZE
from hmmsim.testing.fuzz.ops import (
    ARENA_BASE,
    ARENA_PAGES,
    ARENA_PMDS,
    DEVICES,
    HPAGE_NR,
    MAX_MAPPED_PAGES,
    MAX_PROCS,
    THP_MODES,
    Close,
    Exit,
    Fork,
    Ioctl,
    Load,
    Madvise,
    Mmap,
    Mprotect,
    Mremap,
    Munmap,
    Open,
    SetThp,
    Spawn,
    Store,
)
from hmmsim.testing.fuzz.shadow import ProcState
from hmmsim.testing.fuzz.world import World

# --- the random driver ---------------------------------------------------------------------
#: Relative weights of the operation kinds the generator picks.
WEIGHTS = {
    "load": 18,
    "store": 18,
    "mmap": 8,
    "munmap": 3,
    "mprotect": 4,
    "mremap": 4,
    "madvise": 5,
    "fork": 1.5,
    "exit": 1.0,
    "spawn": 0.4,
    "open": 2.0,
    "close": 0.6,
    "ioctl": 26,
    "thp": 0.5,
}
IOCTL_WEIGHTS = {
    "READ": 5,
    "WRITE": 5,
    "MIGRATE_TO_DEV": 8,
    "MIGRATE_TO_SYS": 4,
    "EXCLUSIVE": 3,
    "CHECK_EXCLUSIVE": 1,
    "SNAPSHOT": 2,
    "RELEASE": 0.3,
    "FAIL_ALLOC": 0.7,
}
_PROTS = (PROT_READ | PROT_WRITE, PROT_READ, PROT_NONE, PROT_WRITE)
_PROT_WEIGHTS = (70, 14, 10, 6)


class Generator:
    """Picks the next operation from the World's current state with a seeded Random.

    Addresses are mostly chosen near pages that are already mapped (in the
    process, or for an ioctl in the process the fd mirrors), so that ranges
    straddle vma edges, holes and THP boundaries; sizes are 1..64 pages with
    occasional whole 2 MiB-aligned PMD ranges.
    """

    def __init__(self, world: World, rng: random.Random, *, shared_anon: float = 0.15) -> None:
        self.w = world
        self.rng = rng
        self.shared_anon = shared_anon
        self.next_h = 0
        self.next_fdh = 0
        self.tag = 0
        self.pending: list = []
        self.kinds = list(WEIGHTS)
        self.kind_w = list(WEIGHTS.values())
        self.cmds = list(IOCTL_WEIGHTS)
        self.cmd_w = list(IOCTL_WEIGHTS.values())

    def _tag(self) -> int:
        self.tag += 1
        return self.tag

    def next(self):
        if self.pending:
            return self.pending.pop(0)
        if not self.w.procs:
            self.next_h += 1
            return Spawn(self.next_h - 1)
        kind = self.rng.choices(self.kinds, self.kind_w)[0]
        return self.make(kind)

    def make(self, kind: str):
        """An operation of the given kind (or a fallback when it cannot apply)."""
        rng = self.rng
        w = self.w
        if not w.procs:
            self.next_h += 1
            return Spawn(self.next_h - 1)
        h = rng.choice(sorted(w.procs))
        ps = w.procs[h]
        if kind in ("load", "store"):
            if not ps.pages:
                return self._mmap(ps)
            vpn = self._near(ps)
            r = rng.random()
            if r < 0.6:
                n = rng.randint(1, 64)
            elif r < 0.85:
                n = rng.randint(1, PAGE_SIZE)
            else:
                n = rng.randint(PAGE_SIZE // 2, 2 * PAGE_SIZE)
            off = rng.randrange(PAGE_SIZE) if n < PAGE_SIZE else rng.choice((0, rng.randrange(64)))
            addr = (vpn << PAGE_SHIFT) + min(off, PAGE_SIZE - 1)
            return Load(h, addr, n) if kind == "load" else Store(h, addr, n, self._tag())
        if kind == "mmap":
            return self._mmap(ps)
        if kind in ("munmap", "mprotect", "madvise"):
            if not ps.pages:
                return self._mmap(ps)
            addr, n = self._range(ps)
            if kind == "munmap":
                return Munmap(h, addr, n)
            if kind == "mprotect":
                return Mprotect(h, addr, n, rng.choices(_PROTS, _PROT_WEIGHTS)[0])
            adv = rng.choices((MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE), (50, 35, 15))[0]
            return Madvise(h, addr, n, adv)
        if kind == "mremap":
            return self._mremap(ps)
        if kind == "fork":
            if len(w.procs) >= MAX_PROCS:
                return self.make("exit")
            self.next_h += 1
            return Fork(h, self.next_h - 1)
        if kind == "exit":
            if len(w.procs) <= 1:
                return self.make("fork")
            kids = [x for x, p in w.procs.items() if p.parent is not None]
            return Exit(rng.choice(kids) if kids and rng.random() < 0.8 else h)
        if kind == "spawn":
            if len(w.procs) >= MAX_PROCS:
                return self.make("mmap")
            self.next_h += 1
            return Spawn(self.next_h - 1)
        if kind == "open":
            free = [m for m in range(DEVICES) if not w.mirrors(h, m)]
            if not free:
                return self.make("ioctl") if ps.fds else self.make("mmap")
            self.next_fdh += 1
            return Open(h, self.next_fdh - 1, rng.choice(free))
        if kind == "close":
            if not ps.fds:
                return self.make("open")
            return Close(h, rng.choice(sorted(ps.fds)))
        if kind == "ioctl":
            return self._ioctl(h, ps)
        if kind == "thp":
            return SetThp(rng.choice(THP_MODES))
        raise ValueError(f"unknown operation kind {kind!r}")

    # --- pieces ------------------------------------------------------------------------------
    def _near(self, ps: ProcState) -> int:
        """A page number near (usually at) a mapped page of ps, or anywhere in the arena."""
        rng = self.rng
        keys = ps.keys()
        if keys and rng.random() < 0.9:
            vpn = rng.choice(keys)
            if rng.random() < 0.15:
                vpn += rng.choice((-2, -1, 1, 2))
            return vpn
        return (ARENA_BASE >> PAGE_SHIFT) + rng.randrange(ARENA_PAGES)

    def _range(self, ps: ProcState) -> tuple[int, int]:
        rng = self.rng
        vpn = self._near(ps)
        r = rng.random()
        if r < 0.12:  # a whole PMD
            return (vpn & ~(HPAGE_NR - 1)) << PAGE_SHIFT, HPAGE_NR
        if r < 0.35:
            n = 1
        elif r < 0.7:
            n = rng.randint(2, 8)
        else:
            n = rng.randint(9, 64)
        if rng.random() < 0.3:
            vpn -= rng.randrange(n)
        return vpn << PAGE_SHIFT, n

    def _arena_addr(self, npages: int, pmd_aligned: bool = False) -> int:
        rng = self.rng
        if pmd_aligned:
            return ARENA_BASE + rng.randrange(ARENA_PMDS - npages // HPAGE_NR + 1) * HPAGE_NR * (
                PAGE_SIZE
            )
        return ARENA_BASE + rng.randrange(ARENA_PAGES - npages + 1) * PAGE_SIZE

    def _mmap(self, ps: ProcState):
        rng = self.rng
        if len(ps.pages) > MAX_MAPPED_PAGES:
            addr, n = self._range(ps)
            return Munmap(ps.h, addr, max(n, 64))
        shared = rng.random() < self.shared_anon
        populate = rng.random() < 0.08
        if rng.random() < 0.2:  # a THP-sized region, usually MADV_HUGEPAGE'd right away
            n = rng.choice((HPAGE_NR, HPAGE_NR, 2 * HPAGE_NR))
            addr = self._arena_addr(n, pmd_aligned=True)
            if rng.random() < 0.6:
                self.pending.append(Madvise(ps.h, addr, n, MADV_HUGEPAGE))
            mode = "fixed" if rng.random() < 0.85 else "noreplace"
            return Mmap(ps.h, addr, n, PROT_READ | PROT_WRITE, shared, mode, populate)
        n = rng.randint(1, 64) if rng.random() < 0.8 else rng.randint(1, 8)
        keys = ps.keys()
        if keys and rng.random() < 0.5:  # next to an existing mapping
            v = rng.choice(keys)
            addr = (v + 1 if rng.random() < 0.5 else v - n) << PAGE_SHIFT
        else:
            addr = self._arena_addr(n)
        mode = rng.choices(("fixed", "noreplace", "hint"), (65, 20, 15))[0]
        prot = rng.choices(_PROTS, _PROT_WEIGHTS)[0]
        return Mmap(ps.h, addr, n, prot, shared, mode, populate)

    def _mremap(self, ps: ProcState):
        rng = self.rng
        if not ps.pages:
            return self._mmap(ps)
        addr, n = self._range(ps)
        r = rng.random()
        if r < 0.2 and n > 1:
            return Mremap(ps.h, addr, n, rng.randint(1, n - 1))
        if r < 0.45:
            return Mremap(ps.h, addr, n, n + rng.randint(1, 64), rng.choice((0, MREMAP_MAYMOVE)))
        if r < 0.85:
            new_n = n if rng.random() < 0.7 else rng.randint(1, n + 16)
            dest = self._arena_addr(new_n, pmd_aligned=n == HPAGE_NR and new_n == n)
            return Mremap(ps.h, addr, n, new_n, MREMAP_MAYMOVE | MREMAP_FIXED, dest)
        return Mremap(ps.h, addr, n, n, MREMAP_MAYMOVE | MREMAP_DONTUNMAP)

    def _ioctl(self, h: int, ps: ProcState):
        rng = self.rng
        w = self.w
        if not ps.fds:
            return self.make("open")
        fdh = rng.choice(sorted(ps.fds))
        target = w.procs.get(w.fds[fdh].opener)
        cmd = rng.choices(self.cmds, self.cmd_w)[0]
        if target is None:
            if cmd in ("READ", "WRITE"):
                cmd = "MIGRATE_TO_SYS"
            return Ioctl(h, fdh, cmd, ARENA_BASE, 1)
        if cmd in ("RELEASE", "FAIL_ALLOC"):
            return Ioctl(h, fdh, cmd)
        if not target.pages:
            addr, n = self._arena_addr(1), 1
        else:
            addr, n = self._range(target)
        if w.dmirror_oops_hazard(h, fdh, cmd, addr, n):
            cmd = "MIGRATE_TO_SYS"  # bring the pages home instead (see dmirror_oops_hazard)
        return Ioctl(h, fdh, cmd, addr, n, self._tag() if cmd == "WRITE" else 0)

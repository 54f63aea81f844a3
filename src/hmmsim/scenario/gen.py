"""A seeded generator of random scenarios (docs/scenarios.md).

`generate(seed)` returns the text of one scenario: 10-40 operations over a
few small fixed mappings (anonymous private/shared, tmpfs shared/private
through O_TMPFILE + ftruncate) at addresses in [0x100000000,
0x500000000000), CPU accesses, fork blocks, the dmirror devices and every
dmirror ioctl (mostly with sane ranges inside the mappings, sometimes with
hostile page counts), and pagemap reads. The generator tracks what it has
mapped so most operations land on mapped memory; it never asks the kernel to
choose an address (a kernel-chosen address differs between the model and a
real process), so every line is deterministic on both.

Only the generator's own `random.Random(seed)` is used, through methods
whose output is fixed across Python versions for integer seeds (randrange,
choice, random), so a seed names the same scenario everywhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

GENERATOR_VERSION = 1
PAGE = 4096
LO, HI = 0x100000000, 0x500000000000
MAX_REGION_PAGES = 48
#: Page counts a hostile ioctl passes (all __u64): zero, 2^31, 2^32, 2^52,
#: 2^63, 2^64-1 and -1 (the same value written as a negative literal).
HOSTILE_NPAGES = ("0", "0x80000000", "0x100000000", "0x10000000000000",
                  "0x8000000000000000", "0xffffffffffffffff", "-1")  # fmt: skip
#: (command, hostile value) pairs left out: the model walks every page of
#: them in Python (seconds per ioctl), which would slow the corpus down; the
#: real kernel's answer is covered by hand/ scenarios.
SLOW_HOSTILE = {("SNAPSHOT", "0x80000000"), ("SNAPSHOT", "0x100000000")}
IOCTLS = ("READ", "WRITE", "MIGRATE_TO_DEV", "MIGRATE_TO_SYS", "SNAPSHOT", "EXCLUSIVE",
          "CHECK_EXCLUSIVE", "RELEASE")  # fmt: skip


@dataclass
class Region:
    addr: int
    npages: int
    kind: str  # "private", "shared", "file_shared", "file_private"
    prot: str

    @property
    def end(self) -> int:
        return self.addr + self.npages * PAGE


@dataclass
class _State:
    regions: list = field(default_factory=list)
    slots: dict = field(default_factory=dict)  # slot -> "dev0".."dev3" | ("tmp", size)
    held: int = 0

    def copy(self) -> _State:
        return _State(
            [Region(r.addr, r.npages, r.kind, r.prot) for r in self.regions],
            dict(self.slots),
            0,
        )


class Generator:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.r = random.Random(seed)
        self.lines: list[str] = []
        self.nops = 0

    # --- helpers ---------------------------------------------------------------------------
    def chance(self, p: float) -> bool:
        return self.r.random() < p

    def hexa(self, v: int) -> str:
        return f"{v:#x}"

    def free_addr(self, st: _State, npages: int) -> int:
        """A page-aligned address in [LO, HI) with npages free around it."""
        for _ in range(50):
            if self.chance(0.6):
                # a few arenas, so regions meet and merge now and then
                base = LO + self.r.randrange(4) * 0x40000000 + self.r.randrange(64) * PAGE
            else:
                base = self.r.randrange(LO >> 21, HI >> 21) << 21
                if self.chance(0.5):
                    base += self.r.randrange(512) * PAGE
            end = base + npages * PAGE
            if (
                base >= LO
                and end <= HI
                and not any(base < x.end + PAGE and x.addr - PAGE < end for x in st.regions)
            ):
                return base
        return LO + 0x3F0000000000 + self.r.randrange(1 << 20) * PAGE * 64

    def pick_range(self, st: _State, maxpages: int = MAX_REGION_PAGES) -> tuple[int, int]:
        """(addr, npages) mostly inside one region, sometimes past its edges."""
        if not st.regions or self.chance(0.05):
            return self.free_addr(st, 4), self.r.randrange(1, 5)
        reg = self.r.choice(st.regions)
        first = self.r.randrange(reg.npages)
        n = self.r.randrange(1, reg.npages - first + 1)
        if self.chance(0.08):
            n += self.r.randrange(1, 4)  # runs off the end of the region
        return reg.addr + first * PAGE, min(n, maxpages)

    def emit(self, text: str, depth: int) -> None:
        self.lines.append("  " * depth + text)
        self.nops += 1

    def prot(self) -> str:
        return self.r.choice(["read|write"] * 6 + ["read"] * 2 + ["none", "write", "read|exec"])

    # --- operations -------------------------------------------------------------------------
    def op_mmap(self, st: _State, depth: int) -> None:
        npages = self.r.randrange(1, MAX_REGION_PAGES + 1)
        addr = self.free_addr(st, npages)
        prot = self.prot() if self.chance(0.3) else "read|write"
        kind = self.r.choice(["private"] * 5 + ["shared"] * 2 + ["file_shared"] * 2 + ["file"])
        fixed = "fixed_noreplace"
        if kind == "file":
            kind = "file_private"
        extra = ""
        if self.chance(0.15):
            extra += "|populate"
        if self.chance(0.05):
            extra += "|noreserve"
        if kind in ("private", "shared"):
            self.emit(f"mmap {self.hexa(addr)} {npages * PAGE} {prot} {kind}|anon|{fixed}{extra}",
                      depth)  # fmt: skip
        else:
            slot = self.tmp_slot(st, depth, npages)
            size = st.slots[slot][1]
            off = self.r.randrange(max(1, size // PAGE - npages + 1)) if self.chance(0.3) else 0
            how = "shared" if kind == "file_shared" else "private"
            self.emit(
                f"mmap {self.hexa(addr)} {npages * PAGE} {prot} {how}|{fixed}{extra} "
                f"s{slot} {off * PAGE}",
                depth,
            )
        st.regions.append(Region(addr, npages, kind, prot))

    def tmp_slot(self, st: _State, depth: int, npages: int) -> int:
        have = [s for s, v in st.slots.items() if isinstance(v, tuple)]
        if have and self.chance(0.6):
            s = self.r.choice(have)
            if st.slots[s][1] < npages * PAGE and self.chance(0.8):
                self.emit(f"ftruncate s{s} {npages * PAGE}", depth)
                st.slots[s] = ("tmp", npages * PAGE)
            return s
        s = self.free_slot(st)
        self.emit(f"open s{s} /tmp rdwr|tmpfile", depth)
        size = npages * PAGE if self.chance(0.9) else self.r.randrange(npages) * PAGE
        self.emit(f"ftruncate s{s} {size}", depth)
        st.slots[s] = ("tmp", size)
        return s

    def free_slot(self, st: _State) -> int:
        free = [s for s in range(16) if s not in st.slots]
        return self.r.choice(free) if free else self.r.randrange(16)

    def dev_slot(self, st: _State, depth: int) -> int:
        have = [s for s, v in st.slots.items() if isinstance(v, str)]
        if have and self.chance(0.85):
            return self.r.choice(have)
        s = self.free_slot(st)
        dev = self.r.choice([0, 0, 0, 1, 1, 2, 3])
        mode = "rdwr" if self.chance(0.95) else "rdonly"
        self.emit(f"open s{s} /dev/hmm_dmirror{dev} {mode}", depth)
        st.slots[s] = f"dev{dev}"
        return s

    def op_munmap(self, st: _State, depth: int) -> None:
        addr, n = self.pick_range(st)
        self.emit(f"munmap {self.hexa(addr)} {n * PAGE}", depth)
        self.carve(st, addr, n)

    def carve(self, st: _State, addr: int, n: int) -> None:
        end = addr + n * PAGE
        out = []
        for x in st.regions:
            if x.end <= addr or end <= x.addr:
                out.append(x)
                continue
            if x.addr < addr:
                out.append(Region(x.addr, (addr - x.addr) // PAGE, x.kind, x.prot))
            if end < x.end:
                out.append(Region(end, (x.end - end) // PAGE, x.kind, x.prot))
        st.regions = out

    def op_mprotect(self, st: _State, depth: int) -> None:
        addr, n = self.pick_range(st)
        reg = next((x for x in st.regions if x.addr <= addr < x.end), None)
        prot = reg.prot if reg is not None and self.chance(0.35) else self.prot()
        self.emit(f"mprotect {self.hexa(addr)} {n * PAGE} {prot}", depth)

    def op_madvise(self, st: _State, depth: int) -> None:
        addr, n = self.pick_range(st)
        adv = self.r.choice(
            ["dontneed"] * 4 + ["free"] * 3 + ["willneed"] * 2 + ["nohugepage"] * 2
            + ["normal", "random", "sequential", "dontfork", "dofork", "remove", "hugepage"]
        )  # fmt: skip
        self.emit(f"madvise {self.hexa(addr)} {n * PAGE} {adv}", depth)

    def op_mremap(self, st: _State, depth: int) -> None:
        if not st.regions:
            return self.op_mmap(st, depth)
        reg = self.r.choice(st.regions)
        first = self.r.randrange(reg.npages)
        n = self.r.randrange(1, reg.npages - first + 1)
        old = reg.addr + first * PAGE
        how = self.r.randrange(4)
        if how == 0:  # shrink in place
            new_n = self.r.randrange(1, n + 1)
            self.emit(f"mremap {self.hexa(old)} {n * PAGE} {new_n * PAGE} 0", depth)
            self.carve(st, old + new_n * PAGE, n - new_n)
            return None
        new_n = min(MAX_REGION_PAGES, n + self.r.randrange(0, 8))
        if how == 1:  # grow in place (fails with -ENOMEM if the next page is taken)
            self.emit(f"mremap {self.hexa(old)} {n * PAGE} {new_n * PAGE} 0", depth)
            return None
        new = self.free_addr(st, new_n)
        if how == 3 and reg.kind == "private" and self.chance(0.5):
            flags, new_n = "maymove|fixed|dontunmap", n
        else:
            flags = "maymove|fixed"
        self.emit(
            f"mremap {self.hexa(old)} {n * PAGE} {new_n * PAGE} {flags} {self.hexa(new)}", depth
        )
        if "dontunmap" not in flags:
            self.carve(st, old, n)
        st.regions.append(Region(new, new_n, reg.kind, reg.prot))
        return None

    def op_store(self, st: _State, depth: int) -> None:
        addr, n = self.pick_range(st)
        self.emit(f"store {self.hexa(addr)} {n} {self.r.randrange(1, 1 << 16)}", depth)

    def op_load(self, st: _State, depth: int) -> None:
        addr, n = self.pick_range(st)
        self.emit(f"load {self.hexa(addr)} {n}", depth)

    def op_poke(self, st: _State, depth: int) -> None:
        addr, _ = self.pick_range(st)
        addr += self.r.randrange(512) * 8
        self.emit(f"poke {self.hexa(addr)} {self.hexa(self.r.randrange(1 << 64))}", depth)

    def op_peek(self, st: _State, depth: int) -> None:
        addr, _ = self.pick_range(st)
        self.emit(f"peek {self.hexa(addr + self.r.randrange(512) * 8)}", depth)

    def op_pagemap(self, st: _State, depth: int) -> None:
        addr, n = self.pick_range(st)
        self.emit(f"pagemap {self.hexa(addr)} {n}", depth)

    def op_ioctl(self, st: _State, depth: int) -> None:
        slot = self.dev_slot(st, depth)
        cmd = self.r.choice(
            ["READ"] * 4 + ["WRITE"] * 3 + ["MIGRATE_TO_DEV"] * 4 + ["MIGRATE_TO_SYS"] * 3
            + ["SNAPSHOT"] * 3 + ["EXCLUSIVE"] * 2 + ["CHECK_EXCLUSIVE"] * 2 + ["RELEASE"]
        )  # fmt: skip
        addr, n = self.pick_range(st, maxpages=64)
        npages = str(n)
        if self.chance(0.1):
            npages = self.r.choice([v for v in HOSTILE_NPAGES if (cmd, v) not in SLOW_HOSTILE])
        opts = ""
        if cmd == "WRITE" and self.chance(0.7):
            opts += f" seed={self.r.randrange(1 << 16)}"
        if self.chance(0.04):
            choices = [0, 0x600000000000 + 63 * PAGE + 4064]
            if st.regions:
                choices.append(self.r.choice(st.regions).addr)
            opts += f" ptr={self.hexa(self.r.choice(choices))}"
        self.emit(f"ioctl s{slot} {cmd} {self.hexa(addr)} {npages}{opts}", depth)

    def op_close(self, st: _State, depth: int) -> None:
        if not st.slots or self.chance(0.1):
            self.emit(f"close s{self.r.randrange(16)}", depth)
            return
        s = self.r.choice(sorted(st.slots))
        self.emit(f"close s{s}", depth)
        del st.slots[s]

    def op_fork(self, st: _State, depth: int) -> None:
        if depth >= 2:
            return self.op_store(st, depth)
        hold = self.chance(0.4)
        self.emit("fork hold" if hold else "fork", depth)
        self.nops -= 1  # the fork line counts once, with its end
        child = st.copy()
        for _ in range(self.r.randrange(1, 5)):
            self.step(child, depth + 1, in_child=True)
        self.lines.append("  " * depth + "end")
        self.nops += 1
        if hold:
            st.held += 1
        return None

    def op_reap(self, st: _State, depth: int) -> None:
        self.emit("reap", depth)
        st.held = 0

    WEIGHTS = {
        "mmap": 8, "munmap": 3, "mprotect": 4, "madvise": 4, "mremap": 2, "store": 9,
        "load": 7, "poke": 2, "peek": 2, "pagemap": 4, "ioctl": 16, "close": 1, "fork": 4,
        "reap": 1,
    }  # fmt: skip
    CHILD_OPS = ("store", "load", "peek", "poke", "ioctl", "munmap", "mprotect", "madvise",
                 "pagemap", "fork")  # fmt: skip

    def step(self, st: _State, depth: int, in_child: bool = False) -> None:
        names = [n for n in self.WEIGHTS if not in_child or n in self.CHILD_OPS]
        if not st.regions:
            name = "mmap"
        else:
            weights = [self.WEIGHTS[n] for n in names]
            if not st.held and "reap" in names:
                weights[names.index("reap")] = 0.2
            name = self.r.choices(names, weights)[0]
        getattr(self, "op_" + name)(st, depth)

    def generate(self) -> str:
        target = self.r.randrange(10, 41)
        st = _State()
        for _ in range(self.r.randrange(1, 3)):
            self.op_mmap(st, 0)
        while self.nops < target:
            self.step(st, 0)
        head = [
            f"# generated by `hmmsim scenario gen`: seed={self.seed} "
            f"(generator v{GENERATOR_VERSION}, language v1)"
        ]
        return "\n".join(head + self.lines) + "\n"


def generate(seed: int) -> str:
    """The text of the scenario with this seed."""
    return Generator(seed).generate()

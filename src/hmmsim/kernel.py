"""The Kernel: the one world object that owns all modelled state.

Models: no single kernel file; it gathers what the kernel keeps in globals
(mem_map, the buddy allocator, the zero pages, hugetlb pools, the pgmap
xarray, the task list) at torvalds/linux 0eaed89c18ae, so that several
Kernels can live side by side in one interpreter.
"""

from __future__ import annotations

from collections import Counter, deque

from hmmsim.bug import KernelBug
from hmmsim.include.hmm import HmmPfnLayout
from hmmsim.include.mm_types import STRUCT_PAGE_BYTES, Page, mm_struct
from hmmsim.include.swapops import SwapLayout
from hmmsim.kconfig import DEFAULT, KERNEL_COMMIT, KERNEL_TAG, PAGE_SIZE, KConfig
from hmmsim.locking import Scheduler
from hmmsim.mm.hugetlb import hstate
from hmmsim.mm.page_alloc import PhysMem
from hmmsim.mm.pgtable import alloc_table


class KernelWarning:
    """One WARN_ON/WARN_ON_ONCE that fired."""

    __slots__ = ("msg",)

    def __init__(self, msg: str) -> None:
        self.msg = msg

    def __repr__(self) -> str:
        return f"<WARNING {self.msg}>"


class Kernel:
    """A modelled kernel: physical memory, processes, devices, scheduler hook.

    Lifecycle: create with a KConfig (or keyword overrides of one), create
    processes with `spawn()`, drive them through the Process facade, inspect
    with `check_invariants(k)`. Nothing outside the object is mutated.

    Fields: config; swp (softleaf layout for this config); mem (PhysMem);
    hugetlb (hstate); processes (pid -> Process); objects (id -> anon_vma /
    inode, what folio->mapping names); pgmaps (id -> dev_pagemap); sched
    (scheduler hook); warnings; stats (event counters); notifier_events
    (the last invalidations, for tests and traces).
    """

    def __init__(self, config: KConfig | None = None, **overrides) -> None:
        cfg = config or DEFAULT
        if overrides:
            from dataclasses import replace

            if "features" in overrides:
                overrides["features"] = frozenset(overrides["features"])
            cfg = replace(cfg, **overrides)
        self.config = cfg
        #: known bugs put back (hmmsim.mutants); tested only where each bug lived
        self.bugs: frozenset[str] = cfg.bugs
        #: debug hooks f(k, "migrate"|"hmm", words, n) run on every src/dst and
        #: hmm_pfns array the migrate and HMM APIs hand over (testing/ adds them)
        self.word_checks: list = []
        #: hmmsim.fault_inject.FaultInjector while a test injects failures
        self.fault_inject = None
        #: the discrete-event clock (hmmsim.sim.clock.EventClock) of a simulation
        #: running on this kernel, so kernel paths may charge simulated time;
        #: None unless a Simulation attaches one
        self.clock = None
        self.swp = SwapLayout(cfg)
        self.hmm = HmmPfnLayout(cfg)
        self.sched = Scheduler()
        self.held_locks: set = set()
        self.warnings: list[KernelWarning] = []
        self._warned_once: set[str] = set()
        self.stats: Counter = Counter()
        self.notifier_events: deque = deque(maxlen=4096)
        self.objects: dict[int, object] = {}
        self._next_object_id = 2
        self.ptlocks: dict = {}
        self.deposited: dict[int, int] = {}
        self.pins: dict[int, int] = {}
        #: references drivers hold on system folios (e.g. dmirror backing pages)
        self.driver_refs: Counter = Counter()
        self.deferred_split_queue: list[int] = []
        self.pgmaps: dict[int, object] = {}
        self.devices: dict[str, object] = {}
        self.tmpfs: dict[str, object] = {}
        self._fastpath = True
        self.thp_enabled = "madvise"
        self.thp_use_zero_page = True
        #: vm.overcommit_memory (mm/util.py): OVERCOMMIT_GUESS, the default
        self.sysctl_overcommit_memory = 0
        #: (pid, badness) of each process the OOM killer chose (mm/oom_kill.py)
        self.oom_kills: list[tuple[int, int]] = []
        self.mem = PhysMem(self, cfg.nr_ram_pages)
        self.huge_zero_pfn: int | None = None
        self.hugetlb = hstate(self, cfg.hugetlb_pages)
        self.processes: dict[int, object] = {}
        self._next_pid = 1
        self._next_pgmap_id = 1
        from hmmsim.mm.memremap import DevicePrivateSpace, IomemSpace

        self.iomem = IomemSpace(self, cfg.phys_addr_bits)
        self.device_private_space = DevicePrivateSpace(self)

    @property
    def fastpath(self) -> bool:
        """Whether the bulk NumPy passes may run (issue 7).

        They replace per-entry loops only where every entry takes the common
        path; the per-entry code is the specification (tests set this False
        to compare the two). They never run while a known bug is put back, a
        fault is being injected, or a testing scheduler interleaves threads:
        mutant sites, injection sites and scheduler points all live on the
        per-entry path, and a bulk pass would step over them.
        """
        return (
            self._fastpath
            and not self.bugs
            and self.fault_inject is None
            and type(self.sched) is Scheduler
        )

    @fastpath.setter
    def fastpath(self, on: bool) -> None:
        self._fastpath = bool(on)

    def __repr__(self) -> str:
        f = "".join(sorted(self.config.features)) or "-"
        return (
            f"<Kernel {KERNEL_COMMIT[:12]} series={f} ram={self.config.ram_bytes >> 20}MiB "
            f"free={self.mem.nr_free} procs={len(self.processes)}>"
        )

    # --- bookkeeping ------------------------------------------------------------------------
    def new_object_id(self, obj: object) -> int:
        """An id for folio->mapping (even, so bit 0 can tag anon)."""
        oid = self._next_object_id
        self._next_object_id += 2
        self.objects[oid] = obj
        return oid

    def warn(self, msg: str) -> None:
        """WARN_ON(): record a kernel warning (tests fail on unexpected ones)."""
        self.warnings.append(KernelWarning(msg))

    def warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned_once:
            self._warned_once.add(key)
            self.warn(msg)

    def fget(self, inode) -> None:
        inode.i_count += 1

    def fput(self, inode) -> None:
        inode.i_count -= 1
        if inode.i_count == 0 and inode.nlink == 0:
            inode.evict()

    # --- processes -----------------------------------------------------------------------
    def new_mm(self, owner=None) -> mm_struct:
        pgd = alloc_table(self)
        if pgd is None:
            raise MemoryError("out of modelled memory for a page table")
        return mm_struct(self, pgd, owner)

    def spawn(self, name: str = "proc"):
        """A new process with an empty address space."""
        from hmmsim.userspace import Process

        return Process(self, name=name)

    def alloc_pid(self) -> int:
        pid = self._next_pid
        self._next_pid += 1
        return pid

    # --- software leaf entries that name pages ----------------------------------------------
    def softleaf_to_page(self, entry: int) -> Page:
        """The struct page named by a PFN-carrying softleaf entry.

        With series (c), device-private and device-private migration entries
        carry a device-private offset, not a PFN (softleaf_to_page dispatches
        on the type, as the series does).
        """
        swp = self.swp
        idx = swp.softleaf_to_pfn(entry)
        if self.config.has("c") and (
            swp.softleaf_is_device_private(entry) or swp.softleaf_is_migration_device_private(entry)
        ):
            from hmmsim.mm.memremap import device_private_offset_to_page

            return device_private_offset_to_page(idx, k=self)
        return self.mem.pfn_to_page(idx)

    def softleaf_with_pfn(self, entry: int, pfn: int) -> int:
        """The same entry (type and A/D bits) naming another PFN."""
        swp = self.swp
        mask = (1 << swp.SWP_PFN_BITS) - 1
        off = (swp.swp_offset(entry) & ~mask) | pfn
        return swp.swp_entry(swp.swp_type(entry), off)

    def make_readable_migration_entry_for(self, entry: int, exclusive: bool = False) -> int:
        """Downgrade a writable migration entry, keeping its offset bits.

        Under series (b) a device-private migration entry stays a
        device-private one (fork's copy_nonpresent_pte, mprotect).
        """
        swp = self.swp
        off = swp.swp_offset(entry)
        if self.config.has("b") and swp.softleaf_is_migration_device_private(entry):
            if exclusive:
                return swp.make_readable_exclusive_migration_device_private_entry(off)
            return swp.make_readable_migration_device_private_entry(off)
        if exclusive:
            return swp.make_readable_exclusive_migration_entry(off)
        return swp.make_readable_migration_entry(off)

    def page_pgmap(self, page: Page):
        pid = int(page.a.pgmap[page.i])
        if not pid:
            raise KernelBug(f"page_pgmap: {page!r} is not a ZONE_DEVICE page")
        return self.pgmaps[pid]

    def free_zone_device_folio(self, folio: Page) -> None:
        from hmmsim.mm.memremap import free_zone_device_folio

        free_zone_device_folio(folio)

    def new_pgmap_id(self, pgmap) -> int:
        pid = self._next_pgmap_id
        self._next_pgmap_id += 1
        self.pgmaps[pid] = pgmap
        return pid

    # --- THP shrinker -------------------------------------------------------------------------
    def deferred_split_scan(self) -> int:
        from hmmsim.mm.huge_memory import deferred_split_scan

        return deferred_split_scan(self)

    # --- reporting ------------------------------------------------------------------------
    def memory_report(self) -> dict:
        """Sizes that `hmmsim info` prints."""
        ram_pages = self.mem.ram.pages.nr
        return {
            "ram_bytes": ram_pages * PAGE_SIZE,
            "ram_pages": ram_pages,
            "free_pages": self.mem.nr_free,
            "struct_page_bytes": STRUCT_PAGE_BYTES,
            "metadata_bytes": self.mem.ram.pages.nbytes,
            "hugetlb_pages": self.hugetlb.nr_huge_pages,
            "hugetlb_free": self.hugetlb.free_huge_pages,
        }

    @staticmethod
    def pinned() -> tuple[str, str]:
        return KERNEL_COMMIT, KERNEL_TAG

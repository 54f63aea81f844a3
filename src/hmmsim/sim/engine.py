"""The simulation engine: a workload through the GPU driver, with simulated time.

``Simulation(workload, policy, params, device_mem=...)`` builds a Kernel,
maps the workload's buffer in one process (2 MiB aligned, anonymous,
private), binds a ``GpuDevice`` to it and replays the accesses in program
order:

- a GPU access that hits the device page table costs ``gpu_access_ns``
  (device memory) or ``remote_access_ns`` (a system page); one that misses
  is a replayable fault: it waits in the fault buffer, and a full buffer
  (``fault_batch``) is serviced as one batch, whose cost the clock charges
  before the stalled accesses replay;
- a CPU access first waits for outstanding GPU faults (a synchronise), then
  loads or stores through the model's MMU; a fault that reaches
  ``migrate_to_ram`` costs ``cpu_fault_us`` plus the copy.

Every access also moves data: writes store the access number in the first 8
bytes of the page (the CPU through its page tables, the GPU into device
memory or the system page it maps), reads compare with the last value
written; a mismatch counts in ``data_errors`` (always 0 unless the model
loses data).

Metrics (``Metrics``), a residency series, fault latencies, the clock's
spans (for the trace export) and the driver's move log are kept on the
object after ``run()``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hmmsim.drivers.gpu import (
    CHUNK_PAGES,
    GPU_ROOT_CHUNK_SIZE,
    GpuDevice,
    GpuFaultBuffer,
    GpuNoMemory,
)
from hmmsim.include.mman import MAP_NORESERVE
from hmmsim.kconfig import PAGE_SHIFT, PAGE_SIZE, PMD_SIZE
from hmmsim.sim.clock import EventClock
from hmmsim.sim.params import SimParams
from hmmsim.sim.policy import Policy, make_policy
from hmmsim.sim.workloads import CPU, Workload, make_workload

PROT_RW = 3
MAP_PRIVATE_ANON = 0x22
MAX_LATENCIES = 1_000_000
HEAT_BINS = 256
MAX_HEAT_SAMPLES = 4096
#: GPU accesses per batch of the batched engine, and page events per NumPy segment
GPU_CHUNK = 1 << 16
SEGMENT = 4096
#: most pages one CPU store run writes (2 MiB)
CPU_RUN = 512


class SimError(RuntimeError):
    """The simulation could not go on (an invariant broke, a fault never resolved)."""


@dataclass
class Metrics:
    workload: str
    policy: str
    interconnect: str
    footprint_bytes: int
    device_mem_bytes: int
    oversubscription: float
    gpu_accesses: int = 0
    cpu_accesses: int = 0
    gpu_faults: int = 0  # entries written to the fault buffer (replays included)
    gpu_faults_unique: int = 0  # after per-page dedup in each batch
    fault_batches: int = 0
    replays: int = 0  # accesses that faulted again after their batch
    cpu_faults: int = 0  # CPU faults that reached migrate_to_ram
    cpu_faults_other: int = 0  # other CPU faults (first touch)
    pages_d2h_cpu: int = 0  # d2h pages that CPU faults pulled back (migrate_to_ram)
    pages_h2d: int = 0
    pages_d2h: int = 0
    bytes_h2d: int = 0
    bytes_d2h: int = 0
    pages_faulted_in: int = 0  # h2d pages that faulted
    pages_prefetched: int = 0  # h2d pages moved by granularity or prefetch
    pages_access_counter: int = 0  # h2d pages moved on access counter notifications
    ac_notifications: int = 0  # access counter notifications serviced
    ac_batches: int = 0  # access counter services (batches of notifications)
    evictions: int = 0  # root chunks evicted
    evicted_pages: int = 0
    remote_accesses: int = 0
    thrash_throttles: int = 0  # batches the policy throttled for thrashing
    thrash_pins: int = 0  # faults served by mapping a pinned page remotely
    sim_time_s: float = 0.0
    achieved_bandwidth_gbps: float = 0.0  # bytes moved both ways / simulated time
    access_throughput_gbps: float = 0.0  # bytes the agents accessed / simulated time
    gpu_time_s: float = 0.0  # simulated time inside GPU kernels (launch to synchronise)
    gpu_throughput_gbps: float = 0.0  # bytes the GPU accessed / gpu_time_s
    data_errors: int = 0
    invariant_checks: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def touched_pages(workload: Workload) -> np.ndarray:
    """Sorted distinct page numbers, relative to the buffer's start, that the
    workload's accesses touch."""
    acc = workload.accesses
    if not len(acc):
        return np.zeros(0, dtype=np.int64)
    off = acc["off"].astype(np.int64)
    first = off >> PAGE_SHIFT
    last = (off + np.maximum(1, acc["size"].astype(np.int64)) - 1) >> PAGE_SHIFT
    if int((last - first).max()) == 0:
        return np.unique(first)
    cnt = last - first + 1
    return np.unique(np.repeat(first, cnt) + _ramp(cnt))


def modelled_ram_bytes(workload: Workload, touched: np.ndarray | None = None) -> int:
    """The RAM a simulation's Kernel models: 1.25 x the footprint plus 48 MiB;
    for a sparse workload (touching less than half its pages) 1.25 x what it
    can use (its touched pages, a page table per 2 MiB region touched and
    one per 1 GiB) plus 48 MiB, so a TB-sized virtual range costs what its
    touched pages cost. Whole 2 MiB."""
    fp = workload.footprint
    if touched is None:
        touched = touched_pages(workload)
    n = len(touched)
    if 2 * n >= workload.npages:
        ram = fp + fp // 4
    else:
        tables = len(np.unique(touched >> 9)) + len(np.unique(touched >> 18)) + 64
        ram = (n + tables) * PAGE_SIZE
        ram += ram // 4
    ram += 48 << 20
    return (ram + GPU_ROOT_CHUNK_SIZE - 1) // GPU_ROOT_CHUNK_SIZE * GPU_ROOT_CHUNK_SIZE


def default_device_mem(footprint: int, oversub: float | None) -> int:
    """Device memory for a footprint: footprint / oversub, else room for all
    of it; whole root chunks, at least one."""
    if oversub:
        chunks = round(footprint / oversub / GPU_ROOT_CHUNK_SIZE)
        return max(1, chunks) * GPU_ROOT_CHUNK_SIZE
    n = (footprint + GPU_ROOT_CHUNK_SIZE - 1) // GPU_ROOT_CHUNK_SIZE
    return max(1, n) * GPU_ROOT_CHUNK_SIZE


class Simulation:
    def __init__(
        self,
        workload: Workload | str,
        policy: Policy | str = "naive",
        params: SimParams | None = None,
        device_mem: int | None = None,
        features: tuple[str, ...] | None = None,
        config=None,
        check_invariants: bool = False,
        seed: int = 0,
        log_moves: bool = True,
        batched: bool = True,
    ) -> None:
        from hmmsim.kernel import Kernel

        if isinstance(workload, str):
            workload = make_workload(workload, seed=seed)
        if isinstance(policy, str):
            policy = make_policy(policy)
        self.workload = workload
        self.policy = policy
        self.params = params or SimParams()
        fp = workload.footprint
        self.device_mem = device_mem or default_device_mem(fp, workload.oversub)
        if self.device_mem < GPU_ROOT_CHUNK_SIZE:
            raise ValueError(
                f"device memory must be at least one 2 MiB root chunk ({self.device_mem})"
            )
        # the pages the accesses touch, relative to the buffer's (2 MiB aligned) start
        self._touched = touched_pages(workload)
        ram = modelled_ram_bytes(workload, self._touched)
        if config is not None:
            from dataclasses import replace

            self.k = Kernel(replace(config, ram_bytes=ram))
        else:
            kw: dict = {"ram_bytes": ram}
            if features is not None:
                kw["features"] = frozenset(features)
            self.k = Kernel(**kw)
        self.proc = self.k.spawn("sim")
        # a footprint beyond the modelled RAM (a sparse workload) is mapped
        # MAP_NORESERVE, as a program reserving a huge virtual range does: the
        # model's heuristic overcommit (OVERCOMMIT_GUESS) refuses larger
        # accounted mappings than RAM
        self.base = self._map_buffer(fp, noreserve=fp > ram)
        if getattr(policy, "compound", False):
            from hmmsim.include.mman import MADV_HUGEPAGE

            self.proc.madvise(self.base, fp, MADV_HUGEPAGE)
        self.dev = GpuDevice(self.k, self.device_mem, policy)
        self.dev.log_moves = log_moves
        self.space = self.dev.bind(self.proc)
        # the Kernel owns the simulation's clock (k.clock), so kernel paths
        # could charge time; the driver timestamps with it too
        self.k.clock = EventClock()
        self.dev.now = lambda: self.k.clock.now
        self.buf = GpuFaultBuffer(self.params.fault_batch)
        self.pending: list[tuple[int, bool, float, int]] = []
        self.check = check_invariants
        #: process accesses in NumPy batches (False: one access at a time, the
        #: reference the batched engine must match)
        self.batched = batched
        # CPU write runs as one store: not where a first touch may fault in a
        # THP (then the pages after it in the run do not fault)
        self._cpu_bulk = (
            batched and not getattr(policy, "compound", False) and self.k.thp_enabled != "always"
        )
        # the pages the workload touches, and per page the value last written
        # (0: never written); the device page table keeps NumPy columns for them
        self.tvpns = self._touched + (self.base >> PAGE_SHIFT)
        self.shadow = np.zeros(len(self.tvpns), dtype=np.uint64)
        self.space.pt.track(self.tvpns)
        self.residency: list[tuple[float, int]] = [(0.0, 0)]
        #: (time, resident pages per address bin) for the residency heatmap
        self.heat: list[tuple[float, np.ndarray]] = []
        self.heat_bins = max(1, min(HEAT_BINS, workload.npages))
        self.dev.track_residency(self.base >> PAGE_SHIFT, workload.npages, self.heat_bins)
        self.latencies: list[float] = []
        self._gpu_open: float | None = None
        self._bytes_accessed = 0
        self._gpu_bytes = 0
        self._stuck: dict[int, int] = {}
        self.m = Metrics(
            workload=workload.name,
            policy=policy.name,
            interconnect=self.params.interconnect,
            footprint_bytes=fp,
            device_mem_bytes=self.dev.capacity_pages * PAGE_SIZE,
            oversubscription=round(fp / (self.dev.capacity_pages * PAGE_SIZE), 4),
        )

    def _map_buffer(self, size: int, noreserve: bool = False) -> int:
        p = self.proc
        span = size + GPU_ROOT_CHUNK_SIZE
        flags = MAP_PRIVATE_ANON | (MAP_NORESERVE if noreserve else 0)
        addr = p.mmap(0, span, PROT_RW, flags, -1, 0)
        if addr < 0 or addr >= 1 << 63:
            raise SimError(f"mmap of the {size >> 20} MiB buffer failed ({addr})")
        base = (addr + GPU_ROOT_CHUNK_SIZE - 1) & ~(GPU_ROOT_CHUNK_SIZE - 1)
        if base > addr:
            p.munmap(addr, base - addr)
        end = addr + span
        if end > base + size:
            p.munmap(base + size, end - (base + size))
        return base

    def _page_span(self, off: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        addr = off.astype(np.int64) + self.base
        first = addr >> PAGE_SHIFT
        last = (addr + np.maximum(1, size.astype(np.int64)) - 1) >> PAGE_SHIFT
        return first, last

    def _ti(self, vpn: int) -> int:
        return int(np.searchsorted(self.tvpns, vpn))

    # --- the run ----------------------------------------------------------------------------
    def run(self, progress=None) -> Metrics:
        if not self.batched:
            return self._run_per_access(progress)
        acc = self.workload.accesses
        n = len(acc)
        agent = acc["agent"]
        # runs of one agent: [starts[j], starts[j + 1])
        cut = np.flatnonzero(agent[1:] != agent[:-1]) + 1
        starts = np.concatenate([[0], cut, [n]]).tolist()
        done = 0
        step = max(1, n // 100)
        for j in range(len(starts) - 1):
            lo, hi = starts[j], starts[j + 1]
            if agent[lo] == CPU:
                self._cpu_run(lo, hi)
            else:
                for c in range(lo, hi, GPU_CHUNK):
                    self._gpu_run(c, min(hi, c + GPU_CHUNK))
                    if progress is not None and (min(hi, c + GPU_CHUNK) - done) >= step:
                        done = min(hi, c + GPU_CHUNK)
                        progress(done, n)
        self._sync()
        self._finish()
        return self.m

    def _cpu_run(self, lo: int, hi: int) -> None:
        acc = self.workload.accesses[lo:hi]
        first, last = self._page_span(acc["off"], acc["size"])
        sizes = acc["size"]
        self._bytes_accessed += int(sizes.astype(np.int64).sum())
        writes = acc["write"].tolist()
        fl, la = first.tolist(), last.tolist()
        # runs of one-page writes to consecutive pages not on the device: one store
        ok = (first == last) & acc["write"]
        nxt = np.zeros(len(ok), dtype=bool)
        nxt[:-1] = first[1:] == first[:-1] + 1
        where = self.dev.where
        j = 0
        n = hi - lo
        while j < n:
            if self._cpu_bulk and ok[j]:
                self._sync()  # (outstanding GPU faults may move pages of the run)
                r = j
                while (
                    r < n
                    and r - j < CPU_RUN
                    and ok[r]
                    and fl[r] not in where
                    and (r == j or nxt[r - 1])
                ):
                    r += 1
                if r - j >= 8:
                    self._cpu_store_run(fl[j], lo + j, r - j)
                    j = r
                    continue
            self._sync()
            self.m.cpu_accesses += 1
            for vpn in range(fl[j], la[j] + 1):
                self._cpu_access(vpn, writes[j], lo + j + 1)
            j += 1

    def _cpu_store_run(self, vpn: int, first_access: int, n: int) -> None:
        """n CPU writes, access first_access + 1 ... to pages vpn ... vpn + n - 1
        (none on the device): one store of the n pages, each holding its
        access number in its first 8 bytes (the other bytes of every page
        are 0 in a simulation, so the whole-page store leaves what n 8-byte
        stores leave; first touches go through the kernel's bulk fault
        path). Charged as _cpu_access charges each."""
        self._sync()
        p = self.params
        proc = self.proc
        m = self.m
        m.cpu_accesses += n
        addr = vpn << PAGE_SHIFT
        values = np.arange(first_access + 1, first_access + n + 1, dtype=np.uint64)
        buf = np.zeros((n, PAGE_SIZE // 8), dtype=np.uint64)
        buf[:, 0] = values
        before = self.dev.cpu_faults
        # a write to a page of a private anon buffer not on the device faults
        # at most once (do_anonymous_page or do_wp_page map it writable): the
        # kernel's fault count tells how many of the n pages faulted
        faults = self._store_faulted(addr, n)
        nfaults = self.k.stats["faults"]
        proc.store(addr, buf.view(np.uint8).reshape(-1))
        nfaults = self.k.stats["faults"] - nfaults
        if self.dev.cpu_faults != before or nfaults != int(faults.sum()):
            raise SimError("a CPU store run took other faults than one per unmapped page")
        ti = self.space.pt.index(np.arange(vpn, vpn + n, dtype=np.int64))
        self.shadow[ti] = values
        m.cpu_faults_other += nfaults
        costs = np.full(n, p.cpu_access_ns / 1000)
        costs[faults] += p.cpu_minor_fault_us
        self.clock.now = float(np.cumsum(np.concatenate([[self.clock.now], costs]))[-1])

    def _store_faulted(self, addr: int, n: int) -> np.ndarray:
        """Which of the n pages from addr a CPU write faults on: those whose
        PTE is not present, user and writable (the MMU walk's test, read
        for whole PTE tables; a missing table faults every page it would
        hold). The run never covers a PMD mapping (no THP may appear)."""
        from hmmsim.include.pgtable import _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, _PAGE_USER
        from hmmsim.mm.pgtable import pmd_offset, pmdp_get, pte_offset_map

        k = self.k
        mm = self.proc.mm
        need = _PAGE_PRESENT | _PAGE_USER | _PAGE_RW
        out = np.ones(n, dtype=bool)
        i = 0
        while i < n:
            a = addr + (i << PAGE_SHIFT)
            cnt = min(n - i, (PMD_SIZE - (a & (PMD_SIZE - 1))) >> PAGE_SHIFT)
            pmdp = pmd_offset(mm, a)
            pmd = pmdp_get(k, pmdp) if pmdp is not None else 0
            if pmd & _PAGE_PRESENT:
                if pmd & _PAGE_PSE:
                    raise SimError("a CPU store run met a PMD mapping")
                ptep = pte_offset_map(k, pmd, a)
                if ptep is not None:
                    col = (ptep >> 3) & 511
                    w = np.asarray(k.mem.ram.words[ptep >> PAGE_SHIFT, col : col + cnt])
                    out[i : i + cnt] = (w & np.uint64(need)) != need
            i += cnt
        return out

    def _gpu_run(self, lo: int, hi: int) -> None:
        """GPU accesses [lo, hi) in NumPy segments: resident-page hits in bulk,
        misses into the fault buffer in bulk, a full buffer serviced where the
        per-access engine services it; hits on system pages (remote: access
        counters, pin expiry) and the rest of their access one at a time."""
        acc = self.workload.accesses[lo:hi]
        if self._gpu_open is None:
            self._gpu_open = self.clock.now
        self.m.gpu_accesses += hi - lo
        nbytes = int(acc["size"].astype(np.int64).sum())
        self._bytes_accessed += nbytes
        self._gpu_bytes += nbytes
        first, last = self._page_span(acc["off"], acc["size"])
        cnt = last - first + 1
        if int(cnt.max()) == 1:
            vpn, ai = first, np.arange(hi - lo, dtype=np.int64)
        else:
            ai = np.repeat(np.arange(hi - lo, dtype=np.int64), cnt)
            vpn = np.repeat(first, cnt) + _ramp(cnt)
        write = acc["write"][ai]
        value = (ai + lo + 1).astype(np.uint64)
        # the last page event of each access (where the access counter check runs)
        end_of = np.zeros(len(ai), dtype=bool)
        end_of[np.cumsum(cnt) - 1] = True
        ti = self.space.pt.index(vpn)
        if (ti < 0).any():
            raise SimError("an access outside the tracked pages")
        pt = self.space.pt
        dt = self.params.gpu_access_ns / 1000
        lru_access = self.policy is None or getattr(self.policy, "lru", "access") == "access"
        E = len(ai)
        p = 0
        while p < E:
            q = min(E, p + SEGMENT)
            t = ti[p:q]
            w = write[p:q]
            kind = pt.kind[t]
            hit = (kind == 1) & (~w | pt.writable[t])
            remote = (kind == 2) & (~w | pt.writable[t])
            miss = ~(hit | remote)
            e = q - p
            r = np.flatnonzero(remote)
            if len(r):
                e = int(r[0])
            room = max(1, self.buf.batch - len(self.buf))
            mi = np.flatnonzero(miss[:e])
            full = len(mi) >= room
            if full:
                e = int(mi[room - 1]) + 1
            if e:
                self._bulk(t[:e], vpn[p : p + e], w[:e], value[p : p + e], hit[:e], dt, lru_access)
            p += e
            if full:
                self._service()
            elif len(r) and e == int(r[0]):
                # a remote hit: this page event and the rest of its access one by one
                while True:
                    self._gpu_access(int(vpn[p]), bool(write[p]), int(value[p]))
                    p += 1
                    if end_of[p - 1]:
                        break
                if len(self.dev.ac_notifications) >= self.params.ac_batch:
                    self._service_ac()

    def _bulk(self, t, vpn, w, value, hit, dt: float, lru_access: bool) -> None:
        """Page events that hit device pages or miss, with no fault service
        among them (the device page table does not change)."""
        m = self.m
        pt = self.space.pt
        costs = np.where(hit, dt, 0.0)
        # now += dt per hit, in order (np.cumsum adds sequentially, as the clock does)
        times = np.cumsum(np.concatenate([[self.clock.now], costs]))
        nmiss = int(len(hit) - hit.sum())
        if nmiss:
            miss = ~hit
            mv = vpn[miss].tolist()
            mw = w[miss].tolist()
            m.gpu_faults += nmiss
            self.pending.extend(
                zip(mv, mw, times[:-1][miss].tolist(), value[miss].tolist(), strict=True)
            )
            self.buf.entries.extend(zip(mv, mw, strict=True))
        if nmiss < len(hit):
            ht, hw, hv = t[hit], w[hit], value[hit]
            if lru_access:
                seq = self.dev.seq
                for c in np.unique(pt.chunk[ht]).tolist():
                    self.dev.chunks[c].last_access = seq
            # reads before any write in this segment see the memory as it was
            order = np.lexsort((np.arange(len(ht)), ht))
            st, sw = ht[order], hw[order]
            start = np.concatenate([[True], st[1:] != st[:-1]])
            cw = np.cumsum(sw) - sw
            base = np.maximum.accumulate(np.where(start, cw, 0))
            fresh = (cw == base) & ~sw  # a read with no earlier write to its page
            if fresh.any():
                ft = st[fresh]
                got = self.dev.load_words(pt.chunk[ft], pt.row[ft])
                m.data_errors += int((got != self.shadow[ft]).sum())
            if sw.any():
                last = np.concatenate([st[1:] != st[:-1], [True]])
                # the last write to each page: the last write event of its group
                wpos = np.where(sw, np.arange(len(st)), -1)
                lastw = np.maximum.accumulate(wpos)  # never crosses groups where it matters
                gl = lastw[last]
                gt = st[last]
                ok = gl >= 0
                ok[ok] = st[gl[ok]] == gt[ok]
                gt, gl = gt[ok], gl[ok]
                vals = hv[order][gl]
                self.dev.store_words(pt.chunk[gt], pt.row[gt], vals)
                self.shadow[gt] = vals
        self.clock.now = float(times[-1])

    def _run_per_access(self, progress=None) -> Metrics:
        """The reference engine: every access through _gpu_access / _cpu_access."""
        acc = self.workload.accesses
        agents = acc["agent"].tolist()
        offs = acc["off"].tolist()
        writes = acc["write"].tolist()
        sizes = acc["size"].tolist()
        base = self.base
        n = len(agents)
        step = max(1, n // 100)
        for i in range(n):
            a, off, w, size = agents[i], offs[i], writes[i], sizes[i]
            addr = base + off
            first = addr >> PAGE_SHIFT
            last = (addr + max(1, size) - 1) >> PAGE_SHIFT
            self._bytes_accessed += size
            if a != CPU:
                self._gpu_bytes += size
            if a == CPU:
                self._sync()
                self.m.cpu_accesses += 1
                for vpn in range(first, last + 1):
                    self._cpu_access(vpn, w, i + 1)
            else:
                if self._gpu_open is None:
                    self._gpu_open = self.clock.now
                self.m.gpu_accesses += 1
                for vpn in range(first, last + 1):
                    self._gpu_access(vpn, w, i + 1)
                if len(self.dev.ac_notifications) >= self.params.ac_batch:
                    self._service_ac()
            if progress is not None and i % step == 0:
                progress(i, n)
        self._sync()
        self._finish()
        return self.m

    def _sync(self) -> None:
        """The CPU waits for the GPU: service outstanding faults, close the kernel span."""
        while self.pending:
            self._service()
        if self.dev.ac_notifications:
            self._service_ac()
        if self._gpu_open is not None:
            dur = self.clock.now - self._gpu_open
            self.clock.span("gpu", "kernel", self._gpu_open, dur)
            self.m.gpu_time_s += dur * 1e-6
            self._gpu_open = None

    # --- GPU side -----------------------------------------------------------------------
    def _gpu_access(self, vpn: int, write: bool, value: int) -> None:
        r = self.dev.access(vpn, write)
        if r == "miss":
            self.m.gpu_faults += 1
            self.pending.append((vpn, write, self.clock.now, value))
            if self.buf.push(vpn, write):
                self._service()
            return
        self._gpu_complete(vpn, write, value, r)

    def _gpu_complete(self, vpn: int, write: bool, value: int, where: str) -> None:
        p = self.params
        if where == "remote":
            self.m.remote_accesses += 1
            self.clock.advance(p.remote_access_ns / 1000)
        else:
            self.clock.advance(p.gpu_access_ns / 1000)
        page, _tag = self.space.pt[vpn]
        from hmmsim.mm.memremap import is_device_private_page

        if is_device_private_page(page):
            row = self.dev.vram_row(page)
        else:
            row = self.k.mem.frame(page.pfn)
        ti = self._ti(vpn)
        if write:  # a store of the first 8 bytes (a token page's token)
            row[:8] = np.array([value], dtype="<u8").view(np.uint8)
            self.shadow[ti] = value
        elif int(np.asarray(row[:8]).view("<u8")[0]) != int(self.shadow[ti]):
            self.m.data_errors += 1

    def _service(self) -> None:
        entries = self.buf.fetch()
        stalled = self.pending
        self.pending = []
        if not entries:
            entries = [(v, w) for v, w, _t, _x in stalled]
        try:
            res = self.dev.service_faults(entries)
        except GpuNoMemory as e:
            raise SimError(str(e)) from None
        p = self.params
        m = self.m
        h2d = res.migrated_fault + res.migrated_prefetch
        dur = (
            p.gpu_fault_latency_us
            + p.per_fault_us * res.unique
            + p.per_page_kernel_us * (h2d + res.evicted_pages)
            + p.copy_us(h2d * PAGE_SIZE, res.windows)
            + p.copy_us(res.evicted_pages * PAGE_SIZE, res.evicted_chunks)
            + p.eviction_chunk_us * res.evicted_chunks
            + p.map_per_page_us * res.mapped
        )
        if res.throttled:
            # the device naps once per throttled batch (uvm_perf_thrashing.c nap)
            dur += getattr(self.policy, "thrash_nap_us", 0.0)
            m.thrash_throttles += 1
        m.thrash_pins += res.pinned
        start = self.clock.now
        m.fault_batches += 1
        m.gpu_faults_unique += res.unique
        m.pages_faulted_in += res.migrated_fault
        m.pages_prefetched += res.migrated_prefetch
        m.pages_h2d += h2d
        m.evictions += res.evicted_chunks
        m.evicted_pages += res.evicted_pages
        self.clock.span(
            "driver",
            "fault batch",
            start,
            dur,
            faults=res.faults,
            unique=res.unique,
            h2d=h2d,
            evicted=res.evicted_pages,
        )
        if res.evicted_chunks:
            self.clock.span("driver", "evict", start, p.eviction_chunk_us * res.evicted_chunks)
        self.clock.schedule(start + dur, lambda: self._replay(stalled))
        self.clock.run()
        self._sample()
        if self.dev.ac_notifications:
            self._service_ac()
        if self.check:
            from hmmsim.testing.invariants import check_invariants

            problems = check_invariants(self.k, raise_on_error=False)
            m.invariant_checks += 1
            if problems:
                raise SimError(f"invariant broken after batch {m.fault_batches}: {problems[0]}")

    def _service_ac(self) -> None:
        """Service the pending access counter notifications, at most
        params.ac_batch per batch (the driver fetches
        uvm_perf_access_counter_batch_count entries from the notification
        buffer and services them together, uvm_gpu_access_counters.c)."""
        dev = self.dev
        b = int(self.params.ac_batch)
        while dev.ac_notifications:
            rest = dev.ac_notifications[b:]
            dev.ac_notifications = dev.ac_notifications[:b]
            self._service_ac_batch()
            dev.ac_notifications = rest + dev.ac_notifications

    def _service_ac_batch(self) -> None:
        """One batch: the driver's bottom half migrates the hot pages; the
        clock charges it like a fault batch (assumed: the device is not
        stalled by it on hardware, but the copy occupies the link)."""
        try:
            res = self.dev.service_access_counters()
        except GpuNoMemory as e:
            raise SimError(str(e)) from None
        p = self.params
        m = self.m
        h2d = res.migrated_ac
        dur = (
            p.ac_service_us
            + p.per_page_kernel_us * (h2d + res.evicted_pages)
            + p.copy_us(h2d * PAGE_SIZE, res.windows)
            + p.copy_us(res.evicted_pages * PAGE_SIZE, res.evicted_chunks)
            + p.eviction_chunk_us * res.evicted_chunks
            + p.map_per_page_us * res.mapped
        )
        m.ac_notifications += res.notifications
        m.ac_batches += 1
        m.pages_access_counter += h2d
        m.pages_h2d += h2d
        m.evictions += res.evicted_chunks
        m.evicted_pages += res.evicted_pages
        start = self.clock.now
        self.clock.span(
            "driver", "access counters", start, dur, notifications=res.notifications, h2d=h2d
        )
        self.clock.advance(dur)
        self._sample()
        if self.check:
            from hmmsim.testing.invariants import check_invariants

            problems = check_invariants(self.k, raise_on_error=False)
            m.invariant_checks += 1
            if problems:
                raise SimError(f"invariant broken after access counter service: {problems[0]}")

    def _replay(self, stalled) -> None:
        now = self.clock.now
        if self.batched and len(stalled) >= 8 and self._replay_bulk(stalled, now):
            return
        for vpn, write, t0, value in stalled:
            if len(self.latencies) < MAX_LATENCIES:
                self.latencies.append(now - t0)
            r = self.dev.access(vpn, write)
            if r == "miss":
                self.m.replays += 1
                n = self._stuck.get(vpn, 0) + 1
                self._stuck[vpn] = n
                if n > 8:
                    raise SimError(f"device fault at {vpn << PAGE_SHIFT:#x} never resolves")
                self.m.gpu_faults += 1
                self.pending.append((vpn, write, now, value))
                self.buf.push(vpn, write)
            else:
                self._stuck.pop(vpn, None)
                self._gpu_complete(vpn, write, value, r)

    def _replay_bulk(self, stalled, now: float) -> bool:
        """Replay a batch's stalled accesses at once when every one now hits a
        device page (what _replay does entry by entry then: a latency each,
        the LRU stamp, the access's time and data); False (nothing done)
        otherwise."""
        pt = self.space.pt
        vpn = np.fromiter((e[0] for e in stalled), dtype=np.int64, count=len(stalled))
        w = np.fromiter((e[1] for e in stalled), dtype=bool, count=len(stalled))
        ti = pt.index(vpn)
        if (ti < 0).any():
            return False
        hit = (pt.kind[ti] == 1) & (~w | pt.writable[ti])
        if not hit.all():
            return False
        room = MAX_LATENCIES - len(self.latencies)
        if room > 0:
            t0 = np.fromiter((e[2] for e in stalled), dtype=np.float64, count=len(stalled))
            self.latencies.extend((now - t0[:room]).tolist())
        if self._stuck:
            for v in vpn.tolist():
                self._stuck.pop(v, None)
        value = np.fromiter((e[3] for e in stalled), dtype=np.uint64, count=len(stalled))
        lru = self.policy is None or getattr(self.policy, "lru", "access") == "access"
        self._bulk(ti, vpn, w, value, hit, self.params.gpu_access_ns / 1000, lru)
        return True

    # --- CPU side ---------------------------------------------------------------------------
    def _cpu_access(self, vpn: int, write: bool, value: int) -> None:
        p = self.params
        dev = self.dev
        proc = self.proc
        addr = vpn << PAGE_SHIFT
        before, moved = dev.cpu_faults, dev.d2h_cpu
        # the MMU's walk first: None means this access faults
        faults = proc._translate(addr, write) is None
        start = self.clock.now
        ti = self._ti(vpn)
        if write:
            proc.store(addr, np.array([value], dtype=np.uint64))
            self.shadow[ti] = value
        else:
            got = int(np.frombuffer(proc.load(addr, 8), dtype=np.uint64)[0])
            if got != int(self.shadow[ti]):
                self.m.data_errors += 1
        cost = p.cpu_access_ns / 1000
        if dev.cpu_faults != before:
            npages = dev.d2h_cpu - moved
            self.m.cpu_faults += dev.cpu_faults - before
            self.m.pages_d2h += npages
            self.m.pages_d2h_cpu += npages
            cost += (
                p.cpu_fault_us
                + p.per_page_kernel_us * npages
                + p.copy_us(npages * PAGE_SIZE, dev.cpu_faults - before)
            )
            self.clock.span("cpu", "migrate_to_ram", start, cost, pages=npages)
            self.clock.advance(cost)
            self._sample()
            return
        if faults:
            self.m.cpu_faults_other += 1
            cost += p.cpu_minor_fault_us
        self.clock.advance(cost)

    # --- records -----------------------------------------------------------------------------
    def _sample(self) -> None:
        n = self.dev.resident_pages
        self.residency.append((self.clock.now, n))
        if len(self.heat) < MAX_HEAT_SAMPLES:
            self.heat.append((self.clock.now, self.dev.heat.copy()))
        self.clock.counter("device resident", self.clock.now, MiB=n * PAGE_SIZE / (1 << 20))

    def _finish(self) -> None:
        m = self.m
        self._sample()
        m.pages_d2h += m.evicted_pages
        m.bytes_h2d = m.pages_h2d * PAGE_SIZE
        m.bytes_d2h = m.pages_d2h * PAGE_SIZE
        t = self.clock.now * 1e-6
        m.sim_time_s = t
        if t > 0:
            m.achieved_bandwidth_gbps = (m.bytes_h2d + m.bytes_d2h) / t / 1e9
            m.access_throughput_gbps = self._bytes_accessed / t / 1e9
        if m.gpu_time_s > 0:
            m.gpu_throughput_gbps = self._gpu_bytes / m.gpu_time_s / 1e9

    @property
    def clock(self) -> EventClock:
        """The simulation's discrete-event clock: the Kernel's ``k.clock``."""
        return self.k.clock

    @property
    def moves(self):
        return self.dev.moves


def _ramp(cnt: np.ndarray) -> np.ndarray:
    """0, 1, ..., cnt[0] - 1, 0, 1, ..., cnt[1] - 1, ... (int64)."""
    total = int(cnt.sum())
    starts = np.cumsum(cnt) - cnt
    return np.arange(total, dtype=np.int64) - np.repeat(starts, cnt)


def run(workload: Workload | str, policy: Policy | str = "naive", **kw) -> Metrics:
    """Build a Simulation and run it; its Metrics."""
    return Simulation(workload, policy, **kw).run()


__all__ = [
    "CHUNK_PAGES",
    "Metrics",
    "SimError",
    "Simulation",
    "default_device_mem",
    "modelled_ram_bytes",
    "run",
    "touched_pages",
]

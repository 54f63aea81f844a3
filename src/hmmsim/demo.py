"""`hmmsim demo`: narrated tours of the model, with the real page-table words.

Two tours:

- `run_device_demo`: device migration with the dmirror test driver
  (lib/test_hmm.c): MIGRATE_TO_DEV of anonymous pages, a CPU touch that
  faults one back through migrate_to_ram, hmm_range_fault snapshots with the
  HMM PFN words decoded, fork of a range holding device-private pages, a THP
  migrated whole and one split by the order-0 fallback, and eviction
  (HMM_DMIRROR_RELEASE -> migrate_device_range).
- `run_cpu_demo` (`run_demo`, its old name): the CPU memory-management
  substrate (faults, fork with COW, mprotect, munmap, THP).

Every page-table word printed is the x86-64 encoding the model holds, decoded
with the kernel's names under the configuration's seed-series switches, so
running the device tour with and without a series (`hmmsim demo device
--feature b --diff`) shows exactly which words the series changes. The
migrate src/dst words and hmm_range_fault output words are captured with a
`Kernel.word_checks` hook (what migrate_vma_pages and hmm_range_fault hand
over), and the PTE of a page in flight is read from inside that hook, so the
migration entries a series renames are shown too.

`DemoTrace` records, after each step of the device tour, where every tracked
page lives (RAM or device, writable or not, PTE or PMD); `plot_residency`
draws it (matplotlib, optional: `pip install '.[plot]'`).

Not kernel code: a user of the syscall API, the dmirror ioctls and, for the
series (e) step, the driver-side hmm_range_fault API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hmmsim.include.mman import (
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.kconfig import PAGE_SIZE, PMD_SIZE, KConfig
from hmmsim.testing.invariants import check_invariants
from hmmsim.userspace import WEXITSTATUS, describe_entry, entry_at

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


def run_demo(cfg: KConfig, say: Callable[[str], None]) -> None:
    """The CPU tour (kept under its first name)."""
    run_cpu_demo(cfg, say)


def run_cpu_demo(cfg: KConfig, say: Callable[[str], None]) -> None:
    from hmmsim.kernel import Kernel

    k = Kernel(cfg)
    p = k.spawn("demo")

    def show(proc, addr: int, label: str) -> None:
        level, word = entry_at(proc, addr)
        say(f"    {label:<22} {addr:#x}: {describe_entry(k, word, level)}")

    say(f"A Kernel with {cfg.ram_bytes >> 20} MiB of RAM; process {p.pid} starts empty.")
    a = p.mmap(0, 2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    say(f"\n1. mmap(2 pages, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS) = {a:#x}")
    say(f"   vma: {p.mm.vmas[0]!r}; nothing is mapped yet:")
    show(p, a, "page 0")
    say("\n2. A load faults in the shared zero page (special, read-only):")
    p.load(a, 4)
    show(p, a, "page 0 after load")
    say("   A store faults again: do_wp_page copies the zero page into a new anon page:")
    p.store(a, b"parent!!")
    p.store(a + PAGE_SIZE, b"second page")
    show(p, a, "page 0 after store")
    show(p, a + PAGE_SIZE, "page 1 after store")

    say("\n3. fork(): copy_present_pte write-protects both copies (copy-on-write):")
    pid = p.fork()
    c = p.child(pid)
    show(p, a, "parent page 0")
    show(c, a, "child page 0")
    say("   The child stores: wp_page_copy gives it a private page, the parent keeps its own:")
    c.store(a, b"child!!!")
    show(c, a, "child page 0")
    show(p, a, "parent page 0")
    say(f"   parent reads {p.load(a, 8)!r}, child reads {c.load(a, 8)!r}")
    c._exit(3)
    rpid, status = p.waitpid(pid)
    say(f"   waitpid({pid}) -> exit status {WEXITSTATUS(status)}")
    say("   The parent writes again: its page is now exclusive, so it is reused in place:")
    p.store(a, b"PARENT")
    show(p, a, "parent page 0")

    say("\n4. mprotect(PROT_READ) clears RW in every PTE (pte_modify):")
    p.mprotect(a, 2 * PAGE_SIZE, PROT_READ)
    show(p, a, "page 0")
    say("   mprotect(PROT_READ|PROT_WRITE): an exclusive anon page becomes writable at once:")
    p.mprotect(a, 2 * PAGE_SIZE, PROT_READ | PROT_WRITE)
    show(p, a, "page 0")

    say("\n5. munmap(page 1): the PTE is zapped and the page freed:")
    free_before = k.mem.nr_free
    p.munmap(a + PAGE_SIZE, PAGE_SIZE)
    show(p, a + PAGE_SIZE, "page 1")
    say(f"   free pages {free_before} -> {k.mem.nr_free}; vmas now {p.mm.vmas}")

    say("\n6. A transparent huge page: 2 MiB aligned, MADV_HUGEPAGE, one write fault:")
    big = p.mmap(0, 2 * PMD_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    h = (big + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    p.madvise(h, PMD_SIZE, MADV_HUGEPAGE)
    p.store(h, b"huge")
    show(p, h, "THP")
    say("   munmap of its last 4 KiB splits the PMD into 511 PTEs of the same folio:")
    p.munmap(h + PMD_SIZE - PAGE_SIZE, PAGE_SIZE)
    show(p, h, "THP page 0")
    say(
        f"   the folio is queued for a deferred split; the shrinker splits "
        f"{k.deferred_split_scan()} folio(s)"
    )
    show(p, h, "page 0 after split")
    check_invariants(k)
    say("\nThe invariant checker agrees with every refcount, mapcount and rss counter.")


# --- the device tour -------------------------------------------------------------------------
#: Residency states a cell of the trace can take (also the plot's legend, in order).
STATES = (
    "RAM rw",
    "RAM ro",
    "device rw",
    "device ro",
    "migrating",
    "zero page",
    "none",
)


@dataclass
class DemoTrace:
    """Where each tracked page lives after each step of the device tour.

    Fields: steps (short step names, in order); rows (tracked page names);
    cells[step][row]: (state, level), state one of STATES or "" when the row
    does not exist at that step (the child before fork and after exit), level
    "pte" or "pmd"; faults_back: pages migrate_to_ram brought back (CPU
    faults, the child's write included); words: {label: raw word} of the
    entries the narration printed, for tests.
    """

    steps: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)
    cells: list[list[tuple[str, str]]] = field(default_factory=list)
    faults_back: int = 0
    words: dict[str, int] = field(default_factory=dict)


def classify(k, proc, addr: int) -> tuple[str, str]:
    """(state, level) of the page at `addr` in `proc`: one of STATES and "pte"/"pmd"."""
    from hmmsim.include.pgtable import _PAGE_RW, pte_present

    level, word = entry_at(proc, addr)
    if level == "none" or word == 0:
        return "none", "pte"
    swp = k.swp
    if level == "pmd" and word & 1 or level == "pte" and pte_present(word):
        from hmmsim.include.pgtable import pmd_pfn, pte_pfn

        pfn = pmd_pfn(word) if level == "pmd" else pte_pfn(word)
        if pfn in (k.mem.zero_pfn, k.huge_zero_pfn):
            return "zero page", level
        where = "RAM" if pfn < k.config.nr_ram_pages else "device"
        return f"{where} {'rw' if word & _PAGE_RW else 'ro'}", level
    entry = swp.softleaf_from_pmd(word) if level == "pmd" else swp.softleaf_from_pte(word)
    if swp.softleaf_is_device_private(entry):
        rw = "rw" if swp.softleaf_is_device_private_write(entry) else "ro"
        return f"device {rw}", level
    if swp.softleaf_is_migration(entry):
        return "migrating", level
    return "none", level


def _mpfn_text(v: int) -> str:
    from hmmsim.include.migrate import describe_migrate_pfn

    return f"{int(v):#x} {describe_migrate_pfn(int(v))}"


def run_device_demo(
    cfg: KConfig, say: Callable[[str], None], trace: DemoTrace | None = None
) -> DemoTrace:
    """Narrate device migration on a fresh kernel with test_hmm loaded; return the trace."""
    import numpy as np

    from hmmsim.drivers.test_hmm import hmm_dmirror_init
    from hmmsim.drivers.test_hmm_uapi import (
        HMM_DMIRROR_FLAG_FAIL_ALLOC,
        HMM_DMIRROR_FLAGS,
        HMM_DMIRROR_MIGRATE_TO_DEV,
        HMM_DMIRROR_RELEASE,
        HMM_DMIRROR_SNAPSHOT,
        hmm_dmirror_cmd,
    )
    from hmmsim.errno import ENOENT
    from hmmsim.include.mman import O_RDWR
    from hmmsim.kernel import Kernel

    t = trace if trace is not None else DemoTrace()
    k = Kernel(cfg)
    hmm_dmirror_init(k)
    L = k.hmm
    n_small = 4

    # what migrate_vma_pages and hmm_range_fault hand over, and PTEs read mid-flight
    captured: list[tuple[str, list[int]]] = []
    watch: list[tuple[object, int, str]] = []
    mid: list[str] = []
    inflight: list[str] = []  # the trace column to record at the next transaction

    def hook(k_, kind: str, words, n: int | None = None) -> None:
        m = len(words) if n is None else n
        captured.append((kind, [int(words[i]) for i in range(m)]))
        migs = sum(1 for kd, _ in captured if kd == "migrate")
        if kind == "migrate" and migs % 2 == 1:  # once per transaction (at src[])
            if inflight:
                record(inflight.pop())
            for proc, addr, label in watch:
                lvl, w = entry_at(proc, addr)
                mid.append(f"    {label:<16} {addr:#x}: {describe_entry(k, w, lvl)}")
                t.words[f"mid {label}"] = w

    k.word_checks.append(hook)

    p = k.spawn("demo")
    fd0 = p.open("/dev/hmm_dmirror0", O_RDWR)
    fd1 = p.open("/dev/hmm_dmirror1", O_RDWR)
    child = None

    def line(proc, addr: int, label: str) -> None:
        level, word = entry_at(proc, addr)
        t.words[label] = word
        say(f"    {label:<16} {addr:#x}: {describe_entry(k, word, level)}")

    a = p.mmap(0, n_small * PAGE_SIZE, RW, ANON)
    big = p.mmap(0, 5 * PMD_SIZE, RW, ANON)
    thp_a = (big + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    thp_b = thp_a + 2 * PMD_SIZE
    p.madvise(thp_a, 3 * PMD_SIZE, MADV_HUGEPAGE)
    t.rows = [f"page {i}" for i in range(n_small)]
    t.rows += [f"child page {i}" for i in range(n_small)]
    t.rows += ["THP A", "THP B"]

    def record(step: str) -> None:
        row: list[tuple[str, str]] = [classify(k, p, a + i * PAGE_SIZE) for i in range(n_small)]
        for i in range(n_small):
            row.append(classify(k, child, a + i * PAGE_SIZE) if child else ("", "pte"))
        row += [classify(k, p, thp_a), classify(k, p, thp_b)]
        t.steps.append(step)
        t.cells.append(row)

    def ioctl(fd: int, request: int, addr: int, npages: int, buf=None) -> hmm_dmirror_cmd:
        cmd = hmm_dmirror_cmd(addr=addr, ptr=buf, npages=npages)
        cmd.ret = p.ioctl(fd, request, cmd)
        return cmd

    def show_transaction(what: str, limit: int = n_small) -> None:
        pairs = [w for kind, w in captured if kind == "migrate"]
        for src, dst in zip(pairs[0::2], pairs[1::2], strict=True):
            say(f"    {what}: {len(src)} slot(s); src[]/dst[] as migrate_vma_pages gets them:")
            for i in range(min(limit, len(src))):
                say(f"      [{i}] src {_mpfn_text(src[i]):<44} dst {_mpfn_text(dst[i])}")
            if len(src) > limit:
                say(f"      ... {len(src) - limit} more")

    say(
        f"Device migration with the dmirror test driver (lib/test_hmm.c) on {cfg!r}.\n"
        "/dev/hmm_dmirror0 and /dev/hmm_dmirror1 are MEMORY_DEVICE_PRIVATE devices with\n"
        "different pgmap owners; the process opens both. Words are decoded with the\n"
        f"layouts in force: {k.swp!r}, {L!r}."
    )

    # 1. pages in RAM
    say(f"\n1. mmap({n_small} pages) = {a:#x}; the CPU writes each page:")
    for i in range(n_small):
        p.store(a + i * PAGE_SIZE, f"page {i} data".encode())
    for i in range(n_small):
        line(p, a + i * PAGE_SIZE, f"page {i}")
    record("1 CPU writes")

    # 2. migrate to the device
    say(
        f"\n2. ioctl(HMM_DMIRROR_MIGRATE_TO_DEV, {n_small} pages) on dmirror0: "
        "migrate_vma_setup collects\n   and unmaps (a migration entry replaces each PTE), "
        "the driver allocates device pages\n   and copies, migrate_vma_pages moves the "
        "struct page state, migrate_vma_finalize\n   installs device-private entries "
        "(remove_migration_ptes):"
    )
    captured.clear()
    mid.clear()
    watch[:] = [(p, a, "page 0 in flight")]
    inflight[:] = ["2 in flight"]
    buf = np.zeros(n_small * PAGE_SIZE, np.uint8)
    cmd = ioctl(fd0, HMM_DMIRROR_MIGRATE_TO_DEV, a, n_small, buf)
    watch.clear()
    show_transaction("MIGRATE_TO_DEV")
    say("   while the pages moved (read inside migrate_vma_pages):")
    for m_ in mid:
        say(m_)
    say(f"   ret={cmd.ret} cpages={cmd.cpages}; the CPU page table now holds softleaf entries:")
    for i in range(n_small):
        line(p, a + i * PAGE_SIZE, f"page {i}")
    say(f"   the device read {bytes(buf[:11])!r} from page 0")
    record("2 on device")

    # 3. a CPU touch faults one page back
    say(
        "\n3. The CPU loads page 1: handle_pte_fault -> do_swap_page sees a device-private "
        "entry\n   and calls the pgmap's migrate_to_ram (dmirror_devmem_fault), which "
        "migrates that\n   one page back to RAM (migrate_vma_setup with "
        "MIGRATE_VMA_SELECT_DEVICE_PRIVATE):"
    )
    captured.clear()
    mid.clear()
    watch[:] = [(p, a + PAGE_SIZE, "page 1 in flight")]
    inflight[:] = ["3 in flight"]
    data = p.load(a + PAGE_SIZE, 11)
    watch.clear()
    back = sum(1 for kind, _ in captured if kind == "migrate") // 2
    t.faults_back += back
    show_transaction("migrate_to_ram")
    say("   while it moved, page 1's PTE held a migration entry naming the device page:")
    for m_ in mid:
        say(m_)
    say(f"   faulted back: {back} page (migrate_to_ram calls); the load returned {data!r}")
    for i in range(n_small):
        line(p, a + i * PAGE_SIZE, f"page {i}")
    record("3 CPU load")

    # 4. snapshots
    say(
        "\n4. ioctl(HMM_DMIRROR_SNAPSHOT): hmm_range_fault without fault flags, then the "
        "driver turns\n   each HMM PFN word into an HMM_DMIRROR_PROT_* byte "
        "(dmirror_mkentry):"
    )
    for fd, who in ((fd0, "dmirror0 (owner)"), (fd1, "dmirror1 (other owner)")):
        captured.clear()
        prot = np.zeros(n_small, np.uint8)
        cmd = ioctl(fd, HMM_DMIRROR_SNAPSHOT, a, n_small, prot)
        words = next(w for kind, w in captured if kind == "hmm")
        say(f"   {who}: ret={cmd.ret}")
        for i in range(n_small):
            t.words[f"hmm {who.split()[0]} page {i}"] = words[i]
            say(
                f"    page {i}  hmm_pfn {words[i]:#018x}  {L.describe(words[i]):<40} "
                f"-> prot {_prot_names(int(prot[i]))}"
            )
    say(
        "   dmirror0 is the pages' dev_private_owner: hmm_range_fault reports its "
        "device-private pages\n   as they are ("
        + (
            "VALID, WRITE, HMM_PFN_DEVICE_PRIVATE and the device offset, series (c)"
            if cfg.has("c")
            else "VALID, WRITE and the device PFN"
        )
        + "). For dmirror1 they are another\n   device's pages, which a snapshot "
        "(no HMM_PFN_REQ_FAULT) leaves as 0."
    )

    # 5. fork
    say(
        "\n5. fork(): copy_nonpresent_pte copies the device-private entries; in a COW "
        "mapping a\n   writable one is made readable in both parent and child, and "
        "the device page gains\n   a second mapping (folio_try_dup_anon_rmap):"
    )
    pid = p.fork()
    child = p.child(pid)
    for i in range(n_small):
        line(p, a + i * PAGE_SIZE, f"parent page {i}")
        line(child, a + i * PAGE_SIZE, f"child page {i}")
    record("5 fork")
    say(
        "   The child writes page 2: a write fault on a read-only device-private entry "
        "runs\n   migrate_to_ram; the page is mapped twice, so the unmap step (rmap, "
        "try_to_migrate)\n   replaces both entries and both end up on the same new RAM "
        "page, read-only; the\n   write fault then copies it for the child (do_wp_page):"
    )
    captured.clear()
    mid.clear()
    watch[:] = [(p, a + 2 * PAGE_SIZE, "parent page 2"), (child, a + 2 * PAGE_SIZE, "child page 2")]
    inflight[:] = ["5 in flight"]
    child.store(a + 2 * PAGE_SIZE, b"child!")
    watch.clear()
    back = sum(1 for kind, _ in captured if kind == "migrate") // 2
    t.faults_back += back
    show_transaction("migrate_to_ram")
    say("   in flight, both processes' PTEs held migration entries:")
    for m_ in mid:
        say(m_)
    say("   afterwards:")
    line(p, a + 2 * PAGE_SIZE, "parent page 2")
    line(child, a + 2 * PAGE_SIZE, "child page 2")
    say(
        f"   parent reads {p.load(a + 2 * PAGE_SIZE, 11)!r}, "
        f"child reads {child.load(a + 2 * PAGE_SIZE, 11)!r}"
    )
    record("5 child writes")
    child._exit(0)
    p.waitpid(pid)
    child = None

    # 6. THPs
    k.thp_enabled = "madvise"
    say(
        "\n6. Two THPs (MADV_HUGEPAGE, one write fault each), then MIGRATE_TO_DEV of "
        + (
            "the first:\n   migrate_vma_collect_huge_pmd collects the whole folio "
            "(MIGRATE_VMA_SELECT_COMPOUND)\n   when the driver can allocate a device THP:"
            if cfg.has("d")
            else "the first:\n   without series (d) there is no THP migration of device "
            "pages: migrate_vma_collect_pmd\n   splits the folio (split_folio) and "
            "collects 512 small pages:"
        )
    )
    p.store(thp_a, b"THP A data")
    p.store(thp_b, b"THP B data")
    line(p, thp_a, "THP A")
    line(p, thp_b, "THP B")
    captured.clear()
    snap = np.zeros(2, np.uint8)
    ioctl(fd0, HMM_DMIRROR_SNAPSHOT, thp_a, 2, snap)
    w0 = next(w for kind, w in captured if kind == "hmm")[0]
    t.words["hmm THP A ram"] = w0
    say(f"    snapshot of THP A page 0: hmm_pfn {w0:#018x}  {L.describe(w0)}")
    captured.clear()
    hbuf = np.zeros(PMD_SIZE, np.uint8)
    cmd = ioctl(fd0, HMM_DMIRROR_MIGRATE_TO_DEV, thp_a, PMD_SIZE // PAGE_SIZE, hbuf)
    show_transaction("MIGRATE_TO_DEV THP A", limit=2)
    say(f"   ret={cmd.ret} cpages={cmd.cpages}:")
    line(p, thp_a, "THP A")
    line(p, thp_a + PAGE_SIZE, "THP A page 1")
    if classify(k, p, thp_a)[1] == "pmd":
        say("   one PMD-level device-private entry maps the whole device folio.")
    else:
        say(
            "   no THP migration of device pages in this configuration (series (d) off):"
            " the THP was\n   split and migrated as 512 order-0 pages."
        )
    captured.clear()
    ioctl(fd0, HMM_DMIRROR_SNAPSHOT, thp_a, 2, snap)
    w0 = next(w for kind, w in captured if kind == "hmm")[0]
    t.words["hmm THP A device"] = w0
    say(f"    snapshot of THP A page 0: hmm_pfn {w0:#018x}  {L.describe(w0)}")
    record("6 THP A whole")

    flags = ioctl(fd0, HMM_DMIRROR_FLAGS, thp_b, HMM_DMIRROR_FLAG_FAIL_ALLOC)
    if flags.ret:
        say(
            f"\n   THP B: HMM_DMIRROR_FLAGS returns {flags.ret} (this kernel's test_hmm "
            "has no FLAGS ioctl),\n   so THP B migrates like THP A:"
        )
    elif cfg.has("d"):
        say(
            "\n   Now THP B with HMM_DMIRROR_FLAG_FAIL_ALLOC: the driver's device-THP "
            "allocation fails,\n   it falls back to order-0 device pages (dst[] without "
            "COMPOUND) and migrate_vma_pages\n   splits the source folio and its PMD "
            "(migrate_vma_split_unmapped_folio):"
        )
    else:
        say("\n   THP B with HMM_DMIRROR_FLAG_FAIL_ALLOC (no THP to fail without (d)):")
    captured.clear()
    cmd = ioctl(fd0, HMM_DMIRROR_MIGRATE_TO_DEV, thp_b, PMD_SIZE // PAGE_SIZE, hbuf)
    show_transaction("MIGRATE_TO_DEV THP B", limit=2)
    say(f"   ret={cmd.ret} cpages={cmd.cpages}:")
    if cmd.ret == -ENOENT:
        say(
            "   (-ENOENT: the small page whose allocation failed stayed in RAM, and the "
            "driver's\n   read-back of the range, dmirror_do_read, finds it missing "
            "from the mirror)"
        )
    line(p, thp_b, "THP B")
    line(p, thp_b + PAGE_SIZE, "THP B page 1")
    record("6 THP B split")

    # 7. series (e): the unified walk
    if cfg.has("e"):
        _unified_walk_step(k, p, say, t)

    # 8. eviction
    say(
        "\n7. ioctl(HMM_DMIRROR_RELEASE): the driver evicts every chunk "
        "(dmirror_device_evict_chunk:\n   migrate_device_range, copy, "
        "migrate_device_pages, migrate_device_finalize), then\n   memunmap_pages; "
        "every page the process still maps comes back to RAM:"
    )
    cmd = ioctl(fd0, HMM_DMIRROR_RELEASE, a, 1)
    say(f"   ret={cmd.ret}")
    for i in range(n_small):
        line(p, a + i * PAGE_SIZE, f"page {i}")
    line(p, thp_a, "THP A")
    line(p, thp_b, "THP B")
    good = all(p.load(a + i * PAGE_SIZE, 11) == f"page {i} data".encode() for i in range(n_small))
    good = good and p.load(thp_a, 10) == b"THP A data" and p.load(thp_b, 10) == b"THP B data"
    say(f"   every byte the CPU wrote reads back: {'yes' if good else 'NO'}")
    record("7 release")

    p.close(fd0)
    p.close(fd1)
    check_invariants(k)
    say(
        f"\n{t.faults_back} page(s) faulted back through migrate_to_ram. The invariant "
        "checker agrees with\nevery refcount, mapcount and rss counter, device pages included."
    )
    return t


def _unified_walk_step(k, p, say, t: DemoTrace) -> None:
    """Series (e): hmm_range_fault with HMM_PFN_REQ_MIGRATE collects while it walks."""
    from hmmsim.include.hmm import hmm_range
    from hmmsim.include.migrate import (
        MIGRATE_VMA_SELECT_COMPOUND,
        MIGRATE_VMA_SELECT_SYSTEM,
        migrate_vma,
    )
    from hmmsim.mm.hmm import hmm_range_fault
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

    class _Sub:
        def invalidate(self, mni, r, cur_seq):
            mmu_interval_set_seq(mni, cur_seq)
            return True

    L = k.hmm
    n = 3
    b = p.mmap(0, n * PAGE_SIZE, RW, ANON)
    p.store(b, b"walk")
    p.load(b + PAGE_SIZE, 1)  # the zero page; page 2 stays empty
    say(
        "\n   Series (e): a driver calls hmm_range_fault with HMM_PFN_REQ_MIGRATE on 3 "
        "pages (written,\n   zero page, empty): the walk collects for migration as it "
        "goes and marks HMM_PFN_MIGRATE;\n   migrate_hmm_range_setup turns the words "
        "into src[]. No destination is given, so\n   migrate_vma_finalize restores "
        "the PTEs:"
    )
    mni = mmu_interval_notifier()
    mmu_interval_notifier_insert(mni, p.mm, b, n * PAGE_SIZE, _Sub())
    m = migrate_vma(
        src=[0] * n, dst=[0] * n, flags=MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_SELECT_COMPOUND
    )
    r = hmm_range(
        notifier=mni,
        start=b,
        end=b + n * PAGE_SIZE,
        hmm_pfns=[0] * n,
        default_flags=L.HMM_PFN_REQ_MIGRATE,
        migrate=m,
    )
    p.mm.mmap_lock.down_read()
    try:
        r.notifier_seq = mmu_interval_read_begin(mni)
        ret = hmm_range_fault(r)
        words = [int(x) for x in r.hmm_pfns]
        src = [0] * n
        if ret == 0:
            migrate_hmm_range_setup(r)
            src = [int(x) for x in m.src]
            migrate_vma_pages(m)
            migrate_vma_finalize(m)
    finally:
        p.mm.mmap_lock.up_read()
        mmu_interval_notifier_remove(mni)
    say(f"   hmm_range_fault -> {ret}")
    for i, w in enumerate(words):
        t.words[f"hmm migrate page {i}"] = w
        say(f"    page {i}  hmm_pfn {w:#018x}  {L.describe(w):<40} src {_mpfn_text(src[i])}")
    level, w = entry_at(p, b)
    say(f"    page 0 after finalize: {describe_entry(k, w, level)}")
    p.munmap(b, n * PAGE_SIZE)


def _prot_names(v: int) -> str:
    """'0x22 DEV_PRIVATE_LOCAL|WRITE' for an HMM_DMIRROR_PROT_* byte."""
    from hmmsim.drivers import test_hmm_uapi as u

    if v == u.HMM_DMIRROR_PROT_ERROR:
        return f"{v:#04x} ERROR"
    kinds = {
        u.HMM_DMIRROR_PROT_ZERO: "ZERO",
        u.HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL: "DEV_PRIVATE_LOCAL",
        u.HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE: "DEV_PRIVATE_REMOTE",
        u.HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL: "DEV_COHERENT_LOCAL",
        u.HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE: "DEV_COHERENT_REMOTE",
    }
    out = [kinds[v & 0xF0]] if v & 0xF0 in kinds else []
    for bit, name in (
        (u.HMM_DMIRROR_PROT_READ, "READ"),
        (u.HMM_DMIRROR_PROT_WRITE, "WRITE"),
        (u.HMM_DMIRROR_PROT_PMD, "PMD"),
        (u.HMM_DMIRROR_PROT_PUD, "PUD"),
    ):
        if v & bit:
            out.append(name)
    return f"{v:#04x} " + ("|".join(out) or "NONE")


# --- the picture -------------------------------------------------------------------------
_COLOURS = {
    "RAM rw": "#4c9f50",
    "RAM ro": "#a5d6a7",
    "device rw": "#3f6fb5",
    "device ro": "#9ec1ea",
    "migrating": "#f0a030",
    "zero page": "#dddddd",
    "none": "#ffffff",
    "": "#f4f4f4",
}


def plot_residency(t: DemoTrace, path: str, title: str = "") -> None:
    """Draw the trace as a grid (rows: tracked pages, columns: steps) into a PNG.

    Needs matplotlib (the ``plot`` extra); raises ImportError without it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    nrows, ncols = len(t.rows), len(t.steps)
    fig, ax = plt.subplots(figsize=(1.15 * ncols + 2.6, 0.42 * nrows + 1.9), dpi=110)
    for c, row in enumerate(t.cells):
        for r, (state, level) in enumerate(row):
            y = nrows - 1 - r
            ax.add_patch(
                Rectangle(
                    (c, y), 1, 1, facecolor=_COLOURS[state], edgecolor="#888888", linewidth=0.6
                )
            )
            if state:
                label = state.replace(" ", "\n", 1) if state != "none" else "-"
                if state != "none" and t.rows[r].startswith("THP"):
                    label += " PMD" if level == "pmd" else " PTEs"
                dark = state in ("RAM rw", "device rw")
                ax.text(
                    c + 0.5,
                    y + 0.5,
                    label,
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color="white" if dark else "black",
                )
    ax.set_xlim(0, ncols)
    ax.set_ylim(0, nrows)
    ax.set_xticks([c + 0.5 for c in range(ncols)])
    ax.set_xticklabels(t.steps, rotation=30, ha="right")
    ax.set_yticks([nrows - 1 - r + 0.5 for r in range(nrows)])
    ax.set_yticklabels(t.rows)
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_title(title or "hmmsim demo device: where each page lives after each step", fontsize=10)
    seen = {state for row in t.cells for state, _ in row}
    handles = [
        Patch(facecolor=_COLOURS[s], edgecolor="#888888", label=s) for s in STATES if s in seen
    ]
    if "" in seen:
        handles.append(Patch(facecolor=_COLOURS[""], edgecolor="#888888", label="no process"))
    ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False
    )
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


# --- the command -----------------------------------------------------------------------------
def _demo_command():
    import difflib

    import click

    from hmmsim.explain import cli_config, series_options

    @click.command("demo")
    @click.argument("tour", type=click.Choice(["all", "device", "cpu"]), default="all")
    @series_options
    @click.option(
        "--diff",
        is_flag=True,
        help="Print only the lines of the device tour that the chosen series change "
        "(a unified diff against the same tour with no series but those merged in the profile).",
    )
    @click.option(
        "--plot",
        "plot_path",
        type=click.Path(dir_okay=False),
        default=None,
        metavar="PNG",
        help="Also draw where each page lives after each device-tour step "
        "(needs matplotlib: pip install '.[plot]').",
    )
    def demo_command(
        tour: str,
        features: tuple[str, ...],
        kernel: str,
        conflict_resolution: str | None,
        diff: bool,
        plot_path: str | None,
    ) -> None:
        """Narrated tours with the real page-table words.

        TOUR is `device` (device migration with the dmirror driver: MIGRATE_TO_DEV,
        a CPU fault back through migrate_to_ram, hmm_range_fault snapshots, fork,
        THP migrated whole and split, eviction), `cpu` (faults, fork with COW,
        mprotect, munmap, THP) or `all` (the default: device, then cpu).

        \b
        Examples:
          hmmsim demo device
          hmmsim demo device --feature b --diff     # which words series (b) changes
          hmmsim demo device --feature a,b,c --plot demo.png
        """
        cfg = cli_config(features, kernel, conflict_resolution)
        if plot_path:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                raise click.UsageError(
                    "--plot needs matplotlib: pip install matplotlib (or '.[plot]')"
                ) from None
        if diff:
            if tour == "cpu":
                raise click.UsageError("--diff compares device tours: use `demo device --diff`")
            base_cfg = cli_config((), kernel)
            base: list[str] = []
            new: list[str] = []
            run_device_demo(base_cfg, base.append)
            trace = run_device_demo(cfg, new.append)
            a = "\n".join(base).splitlines()
            b = "\n".join(new).splitlines()
            lines = list(difflib.unified_diff(a, b, f"{base_cfg!r}", f"{cfg!r}", n=0, lineterm=""))
            for line in lines:
                click.echo(line)
            if not lines:
                click.echo(f"no line of the device tour differs between {base_cfg!r} and {cfg!r}")
        else:
            trace = None
            if tour in ("all", "device"):
                trace = run_device_demo(cfg, click.echo)
            if tour == "all":
                click.echo(
                    "\n" + "=" * 78 + "\nThe CPU side: faults, fork, mprotect, munmap, THP\n"
                )
            if tour in ("all", "cpu"):
                run_cpu_demo(cfg, click.echo)
            if plot_path and trace is None:
                trace = run_device_demo(cfg, lambda s: None)
        if plot_path:
            series = "".join(sorted(cfg.features)) or "none"
            plot_residency(
                trace,
                plot_path,
                f"hmmsim demo device (series {series}, {cfg.kernel}): "
                "where each page lives after each step",
            )
            click.echo(f"wrote {plot_path}")

    return demo_command


demo_command = _demo_command()

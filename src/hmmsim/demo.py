"""`hmmsim demo`: a narrated tour of the CPU memory-management substrate.

Every page-table word printed is the real x86-64 encoding the model holds,
decoded with the kernel's names.
"""

from __future__ import annotations

from collections.abc import Callable

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


def run_demo(cfg: KConfig, say: Callable[[str], None]) -> None:
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

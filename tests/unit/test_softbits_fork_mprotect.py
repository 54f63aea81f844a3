"""Soft-dirty and uffd-wp through fork and mprotect of migration and
device-private entries (issue 14 item 5), seen through /proc/self/pagemap
after /proc/self/clear_refs (fs/proc/task_mmu.c).

What the kernel does (mm/memory.c copy_nonpresent_pte, mm/mprotect.c
change_softleaf_pte, mm/huge_memory.c copy_huge_non_present_pmd,
change_non_present_huge_pmd, set_pmd_migration_entry,
remove_migration_pmd):
- a writable device-private PTE made readable by fork or mprotect loses
  soft-dirty and keeps uffd-wp; a writable migration PTE made readable by
  mprotect keeps soft-dirty and loses uffd-wp;
- at PMD level, mprotect keeps soft-dirty on a migration entry (not uffd-wp)
  and uffd-wp on a device-private PMD (not soft-dirty); fork keeps both on the
  rewritten source PMD, migration entry or device-private;
- migrating a THP back from the device keeps the entry's soft-dirty.

Migration entries only rest in page tables during a migration: the tests
stop a device eviction (migrate_device_range, no mmap_lock) after it has
unmapped, do the fork or mprotect, then let the eviction fail back
(no destination pages), which restores the device-private entries.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from hmmsim.drivers.test_hmm import hmm_dmirror_init
from hmmsim.drivers.test_hmm_uapi import (
    HMM_DMIRROR_MIGRATE_TO_DEV,
    HMM_DMIRROR_MIGRATE_TO_SYS,
    hmm_dmirror_cmd,
)
from hmmsim.errno import EACCES, EINVAL
from hmmsim.fs.task_mmu import PM_MMAP_EXCLUSIVE, PM_PRESENT, PM_SOFT_DIRTY, PM_SWAP, PM_UFFD_WP
from hmmsim.include.mman import (
    MADV_HUGEPAGE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    O_RDONLY,
    O_RDWR,
    O_WRONLY,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.kconfig import PMD_SIZE, KConfig
from hmmsim.kernel import Kernel
from hmmsim.testing.invariants import check_invariants

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
PAGE = 4096
NR = PMD_SIZE // PAGE
BITS = PM_PRESENT | PM_SWAP | PM_SOFT_DIRTY | PM_UFFD_WP | PM_MMAP_EXCLUSIVE


def words(p, addr, n=1):
    fd = p.open("/proc/self/pagemap", O_RDONLY)
    data = p.pread(fd, 8 * n, (addr >> 12) * 8)
    p.close(fd)
    return [w & BITS for w in struct.unpack(f"<{n}Q", data)]


def clear_refs(p, text=b"4\n"):
    fd = p.open("/proc/self/clear_refs", O_WRONLY)
    ret = p.pwrite(fd, text, 0)
    p.close(fd)
    return ret


def kernel(profile="mainline", features=None):
    k = Kernel(KConfig(ram_bytes=64 << 20, hugetlb_pages=0, kernel=profile, features=features))
    hmm_dmirror_init(k)
    return k


def dirty_again(p, a, n):
    """n pages at a, written, soft-dirty cleared (clear_refs), written again:
    soft-dirty entries in a vma without VM_SOFTDIRTY."""
    p.store_array(a, np.arange(n * 1024, dtype=np.int32))
    assert clear_refs(p) == 2
    p.store_array(a, np.arange(n * 1024, dtype=np.int32) + 1)


def migrate(p, fd, req, a, n):
    mirror = np.zeros(n * 1024, dtype=np.int32)
    cmd = hmm_dmirror_cmd(addr=a, ptr=mirror, npages=n)
    assert p.ioctl(fd, req, cmd) == 0
    return cmd


def thp(p):
    raw = p.mmap(0, 2 * PMD_SIZE, RW, ANON)
    p.madvise(raw, 2 * PMD_SIZE, MADV_HUGEPAGE)
    return (raw + PMD_SIZE - 1) & ~(PMD_SIZE - 1)


class Eviction:
    """A dmirror eviction stopped between unmap and copy: every device page
    of the device's chunks is locked and replaced by migration entries."""

    def __init__(self, k, dev="/dev/hmm_dmirror0") -> None:
        from hmmsim.mm.memremap import MEMORY_DEVICE_PRIVATE
        from hmmsim.mm.migrate_device import migrate_device_range

        self.k = k
        self.srcs = []
        for chunk in k.devices[dev].devmem_chunks:
            pfns = chunk.pfns()
            src = np.zeros(len(pfns), dtype=np.uint64)
            dp = chunk.pagemap.type == MEMORY_DEVICE_PRIVATE
            migrate_device_range(src, pfns.start, len(pfns), k=k, device_private=dp)
            self.srcs.append(src)

    def fail_back(self) -> None:
        """No destination pages: the device pages are mapped again."""
        from hmmsim.mm.migrate_device import migrate_device_finalize, migrate_device_pages

        for src in self.srcs:
            dst = np.zeros(src.size, dtype=np.uint64)
            migrate_device_pages(src, dst, src.size, k=self.k)
            migrate_device_finalize(src, dst, src.size, k=self.k)


def kind(p, addr):
    """('pte' or 'pmd', 'migration' / 'device' / other) of the entry at addr."""
    from hmmsim.userspace import entry_at

    level, e = entry_at(p, addr)
    swp = p.k.swp
    entry = swp.softleaf_from_pmd(e) if level == "pmd" else swp.softleaf_from_pte(e)
    if swp.softleaf_is_migration(entry):
        return level, "migration"
    if swp.softleaf_is_device_private(entry):
        return level, "device"
    return level, "other"


# --- clear_refs ------------------------------------------------------------------------
@pytest.mark.parametrize("profile", ["mainline", "6.12"])
def test_clear_refs_clears_and_a_write_sets_soft_dirty_again(profile):
    k = kernel(profile)
    p = k.spawn("t")
    a = p.mmap(0, 2 * PAGE, RW, ANON)
    p.store(a, b"x")
    assert words(p, a, 2) == [PM_PRESENT | PM_MMAP_EXCLUSIVE | PM_SOFT_DIRTY, PM_SOFT_DIRTY]
    assert clear_refs(p) == 2
    assert words(p, a, 2) == [PM_PRESENT | PM_MMAP_EXCLUSIVE, 0]  # VM_SOFTDIRTY gone too
    p.store(a, b"y")  # write-protected by clear_refs: the write fault marks it
    assert words(p, a, 2) == [PM_PRESENT | PM_MMAP_EXCLUSIVE | PM_SOFT_DIRTY, 0]
    check_invariants(k)


def test_clear_refs_text_and_open_mode():
    k = kernel()
    p = k.spawn("t")
    assert p.open("/proc/self/clear_refs", O_RDONLY) == -EACCES
    for bad in (b"0", b"6", b"x", b"", b"4x"):
        assert clear_refs(p, bad) == -EINVAL
    assert clear_refs(p, b" 4 \n") == 4
    assert clear_refs(p, b"1") == 1  # young/referenced: nothing the model reports


def test_clear_refs_clears_a_device_private_pte_and_swap_bits():
    k = kernel()
    p = k.spawn("t")
    a = p.mmap(0, PAGE, RW, ANON)
    dirty_again(p, a, 1)
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    migrate(p, fd, HMM_DMIRROR_MIGRATE_TO_DEV, a, 1)
    assert words(p, a) == [PM_SWAP | PM_SOFT_DIRTY]
    clear_refs(p)
    assert words(p, a) == [PM_SWAP]
    p.close(fd)
    check_invariants(k)


# --- PTE level ---------------------------------------------------------------------------
@pytest.mark.parametrize("profile", ["mainline", "6.12"])
def test_mprotect_drops_soft_dirty_of_a_writable_device_private_pte(profile):
    """change_softleaf_pte (6.12 change_pte_range): 'we do not preserve
    soft-dirtiness' when a writable device-private entry becomes readable."""
    k = kernel(profile)
    p = k.spawn("t")
    a = p.mmap(0, 2 * PAGE, RW, ANON)
    dirty_again(p, a, 2)
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    migrate(p, fd, HMM_DMIRROR_MIGRATE_TO_DEV, a, 2)
    assert words(p, a, 2) == [PM_SWAP | PM_SOFT_DIRTY] * 2
    assert p.mprotect(a, PAGE, PROT_READ) == 0
    assert words(p, a, 2) == [PM_SWAP, PM_SWAP | PM_SOFT_DIRTY]
    p.close(fd)
    check_invariants(k)


def test_mprotect_leaves_a_readable_device_private_pte_alone():
    k = kernel()
    p = k.spawn("t")
    a = p.mmap(0, PAGE, RW, ANON)
    dirty_again(p, a, 1)
    assert p.mprotect(a, PAGE, PROT_READ) == 0
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    migrate(p, fd, HMM_DMIRROR_MIGRATE_TO_DEV, a, 1)  # a readable device entry
    assert words(p, a) == [PM_SWAP | PM_SOFT_DIRTY]
    assert p.mprotect(a, PAGE, PROT_READ | 4) == 0  # PROT_EXEC: still readable
    assert words(p, a) == [PM_SWAP | PM_SOFT_DIRTY]
    p.close(fd)


@pytest.mark.parametrize("profile", ["mainline", "6.12"])
def test_fork_drops_soft_dirty_of_a_writable_device_private_pte(profile):
    k = kernel(profile)
    p = k.spawn("t")
    a = p.mmap(0, PAGE, RW, ANON)
    dirty_again(p, a, 1)
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    migrate(p, fd, HMM_DMIRROR_MIGRATE_TO_DEV, a, 1)
    c = p.child(p.fork())
    assert words(p, a) == [PM_SWAP]
    assert words(c, a) == [PM_SWAP]
    c._exit(0)
    p.waitpid(c.pid)
    p.close(fd)
    check_invariants(k)


@pytest.mark.parametrize("features", [None, frozenset("abcd")])
def test_mprotect_keeps_soft_dirty_of_a_migration_pte(features):
    """A writable migration entry (an eviction in flight) made readable keeps
    soft-dirty; with series (b) it stays a device-private migration entry."""
    k = kernel(features=features)
    p = k.spawn("t")
    a = p.mmap(0, 2 * PAGE, RW, ANON)
    dirty_again(p, a, 2)
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    migrate(p, fd, HMM_DMIRROR_MIGRATE_TO_DEV, a, 2)
    ev = Eviction(k)
    assert kind(p, a) == ("pte", "migration")
    assert words(p, a, 2) == [PM_SWAP | PM_SOFT_DIRTY] * 2
    assert p.mprotect(a, PAGE, PROT_READ) == 0
    assert words(p, a, 2) == [PM_SWAP | PM_SOFT_DIRTY] * 2
    ev.fail_back()
    # the first page came back as a readable device-private entry
    assert words(p, a, 2) == [PM_SWAP | PM_SOFT_DIRTY] * 2
    p.close(fd)
    check_invariants(k)


# --- PMD level (series (d): device THPs; mainline only) ----------------------------------
def device_thp(k):
    p = k.spawn("t")
    a = thp(p)
    dirty_again(p, a, NR)
    assert words(p, a)[0] & PM_SOFT_DIRTY
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    migrate(p, fd, HMM_DMIRROR_MIGRATE_TO_DEV, a, NR)
    assert kind(p, a) == ("pmd", "device")
    assert set(words(p, a, NR)) == {PM_SWAP | PM_SOFT_DIRTY}
    return p, a, fd


@pytest.mark.parametrize("features", [None, frozenset("abcd")])
def test_mprotect_keeps_soft_dirty_of_a_pmd_migration_entry(features):
    k = kernel(features=features)
    p, a, fd = device_thp(k)
    ev = Eviction(k)
    assert kind(p, a) == ("pmd", "migration")
    assert set(words(p, a, NR)) == {PM_SWAP | PM_SOFT_DIRTY}
    assert p.mprotect(a, PMD_SIZE, PROT_READ) == 0
    assert set(words(p, a, NR)) == {PM_SWAP | PM_SOFT_DIRTY}
    ev.fail_back()
    assert set(words(p, a, NR)) == {PM_SWAP | PM_SOFT_DIRTY}
    p.close(fd)
    check_invariants(k)


def test_mprotect_drops_soft_dirty_of_a_writable_device_private_pmd():
    k = kernel()
    p, a, fd = device_thp(k)
    assert p.mprotect(a, PMD_SIZE, PROT_READ) == 0
    assert set(words(p, a, NR)) == {PM_SWAP}
    p.close(fd)
    check_invariants(k)


def test_fork_keeps_soft_dirty_of_a_device_private_pmd():
    """copy_huge_non_present_pmd keeps soft-dirty on the rewritten source PMD
    (a PTE's copy drops it); the child gets the same entry."""
    k = kernel()
    p, a, fd = device_thp(k)
    c = p.child(p.fork())
    assert set(words(p, a, NR)) == {PM_SWAP | PM_SOFT_DIRTY}
    assert set(words(c, a, NR)) == {PM_SWAP | PM_SOFT_DIRTY}
    c._exit(0)
    p.waitpid(c.pid)
    p.close(fd)
    check_invariants(k)


@pytest.mark.parametrize("features", [None, frozenset("abcd")])
def test_fork_keeps_soft_dirty_of_a_pmd_migration_entry(features):
    k = kernel(features=features)
    p, a, fd = device_thp(k)
    ev = Eviction(k)
    assert kind(p, a) == ("pmd", "migration")
    c = p.child(p.fork())
    assert set(words(p, a, NR)) == {PM_SWAP | PM_SOFT_DIRTY}
    assert set(words(c, a, NR)) == {PM_SWAP | PM_SOFT_DIRTY}
    ev.fail_back()  # both get the (now readable) device-private PMD back
    assert set(words(p, a, NR)) == {PM_SWAP | PM_SOFT_DIRTY}
    assert set(words(c, a, NR)) == {PM_SWAP | PM_SOFT_DIRTY}
    c._exit(0)
    p.waitpid(c.pid)
    p.close(fd)
    check_invariants(k)


def test_thp_back_from_the_device_keeps_soft_dirty():
    """remove_migration_pmd: the PMD migration entry's soft-dirty becomes the
    present PMD's."""
    k = kernel()
    p, a, fd = device_thp(k)
    migrate(p, fd, HMM_DMIRROR_MIGRATE_TO_SYS, a, NR)
    from hmmsim.userspace import entry_at

    assert entry_at(p, a)[0] == "pmd"
    assert set(words(p, a, NR)) == {PM_PRESENT | PM_MMAP_EXCLUSIVE | PM_SOFT_DIRTY}
    p.close(fd)
    check_invariants(k)


# --- uffd-wp ------------------------------------------------------------------------------
# The model has no userfaultfd, so these tests set the entry's uffd-wp bit by
# hand (what UFFDIO_WRITEPROTECT of a non-present entry does) and read it back
# through pagemap's PM_UFFD_WP.
def poke_uffd_wp(p, addr):
    from hmmsim.include.pgtable import _PAGE_SWP_UFFD_WP
    from hmmsim.mm.pgtable import (
        pmd_offset,
        pmdp_get,
        pte_offset_map,
        ptep_get,
        set_pmd_at,
        set_pte_at,
    )

    level, _ = kind(p, addr)
    pmdp = pmd_offset(p.mm, addr)
    if level == "pmd":
        set_pmd_at(p.mm, addr, pmdp, pmdp_get(p.k, pmdp) | _PAGE_SWP_UFFD_WP)
    else:
        ptep = pte_offset_map(p.k, pmdp_get(p.k, pmdp), addr)
        set_pte_at(p.mm, addr, ptep, ptep_get(p.k, ptep) | _PAGE_SWP_UFFD_WP)


def test_mprotect_uffd_wp_of_ptes():
    """A writable device-private PTE made readable keeps uffd-wp; a writable
    migration PTE made readable loses it (change_softleaf_pte)."""
    k = kernel()
    p = k.spawn("t")
    a = p.mmap(0, 2 * PAGE, RW, ANON)
    p.store_array(a, np.arange(2048, dtype=np.int32))
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    migrate(p, fd, HMM_DMIRROR_MIGRATE_TO_DEV, a, 2)
    poke_uffd_wp(p, a)
    assert p.mprotect(a, PAGE, PROT_READ) == 0
    assert words(p, a)[0] & PM_UFFD_WP
    ev = Eviction(k)
    assert kind(p, a + PAGE) == ("pte", "migration")
    poke_uffd_wp(p, a + PAGE)
    assert words(p, a + PAGE)[0] & PM_UFFD_WP
    assert p.mprotect(a + PAGE, PAGE, PROT_READ) == 0
    assert not words(p, a + PAGE)[0] & PM_UFFD_WP
    ev.fail_back()
    p.close(fd)


def test_mprotect_uffd_wp_of_pmds():
    """change_non_present_huge_pmd: a writable device-private PMD keeps
    uffd-wp; a writable PMD migration entry loses it."""
    k = kernel()
    p, a, fd = device_thp(k)
    poke_uffd_wp(p, a)
    assert p.mprotect(a, PMD_SIZE, PROT_READ) == 0
    assert words(p, a)[0] & PM_UFFD_WP
    assert p.mprotect(a, PMD_SIZE, RW) == 0
    p.close(fd)  # back to system memory: a writable THP again

    p2, b, fd2 = device_thp(k)
    ev = Eviction(k)
    assert kind(p2, b) == ("pmd", "migration")
    poke_uffd_wp(p2, b)
    assert p2.mprotect(b, PMD_SIZE, PROT_READ) == 0
    assert not words(p2, b)[0] & PM_UFFD_WP
    ev.fail_back()
    p2.close(fd2)


@pytest.mark.parametrize("evicting", [False, True])
def test_fork_keeps_uffd_wp_on_the_source_pmd_only(evicting):
    """copy_huge_non_present_pmd: the rewritten source PMD keeps uffd-wp; the
    child's copy drops it (its vma is not userfaultfd-wp registered)."""
    k = kernel()
    p, a, fd = device_thp(k)
    ev = Eviction(k) if evicting else None
    poke_uffd_wp(p, a)
    c = p.child(p.fork())
    assert words(p, a)[0] & PM_UFFD_WP
    assert not words(c, a)[0] & PM_UFFD_WP
    if ev is not None:
        ev.fail_back()
    c._exit(0)
    p.waitpid(c.pid)
    p.close(fd)


# --- mremap of a huge PMD -----------------------------------------------------------------
@pytest.mark.parametrize("what", ["thp", "device", "migration"])
def test_mremap_marks_a_moved_pmd_soft_dirty(what):
    """move_huge_pmd sets soft-dirty on a moved present PMD or PMD migration
    entry (move_soft_dirty_pmd), so userspace sees the move; a device-private
    PMD moves as it is."""
    from hmmsim.include.mman import MREMAP_FIXED, MREMAP_MAYMOVE

    k = kernel()
    if what == "thp":
        p = k.spawn("t")
        a = thp(p)
        p.store_array(a, np.arange(NR * 1024, dtype=np.int32))
        fd = None
    else:
        p, a, fd = device_thp(k)
        assert p.mprotect(a, PMD_SIZE, PROT_READ) == 0  # drops the PMD's soft-dirty
        assert p.mprotect(a, PMD_SIZE, RW) == 0
    b = thp(p)  # the target, made before clear_refs: no VM_SOFTDIRTY around it
    clear_refs(p)
    assert not words(p, a)[0] & PM_SOFT_DIRTY
    ev = Eviction(k) if what == "migration" else None
    assert p.mremap(a, PMD_SIZE, PMD_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, b) == b
    assert kind(p, b)[0] == "pmd"
    moved = words(p, b)[0]
    assert bool(moved & PM_SOFT_DIRTY) == (what != "device"), hex(moved)
    if ev is not None:
        ev.fail_back()
    if fd is not None:
        p.close(fd)
    check_invariants(k)


# --- mremap of PTEs ------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["ram", "device", "migration"])
@pytest.mark.parametrize("profile", ["mainline", "6.12"])
def test_mremap_marks_moved_ptes_soft_dirty(what, profile):
    """move_ptes sets soft-dirty on every entry it moves (move_soft_dirty_pte):
    the PTE bit of a present page, the swap-PTE bit of a device-private or
    migration entry; the target vma is made before clear_refs, so only the
    entries' own bits can show."""
    from hmmsim.include.mman import MREMAP_FIXED, MREMAP_MAYMOVE

    k = kernel(profile)
    p = k.spawn("t")
    a = p.mmap(0, 2 * PAGE, RW, ANON)
    p.store_array(a, np.arange(2 * 1024, dtype=np.int32))
    b = p.mmap(0, 2 * PAGE, RW, ANON)
    fd = None
    if what != "ram":
        fd = p.open("/dev/hmm_dmirror0", O_RDWR)
        migrate(p, fd, HMM_DMIRROR_MIGRATE_TO_DEV, a, 2)
    assert clear_refs(p) == 2
    assert not any(w & PM_SOFT_DIRTY for w in words(p, a, 2))
    ev = Eviction(k) if what == "migration" else None
    if ev is not None:
        assert kind(p, a) == ("pte", "migration")
    assert p.mremap(a, 2 * PAGE, 2 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, b) == b
    present = PM_PRESENT | PM_MMAP_EXCLUSIVE if what == "ram" else PM_SWAP
    assert words(p, b, 2) == [present | PM_SOFT_DIRTY] * 2
    if ev is not None:
        ev.fail_back()
    if fd is not None:
        p.close(fd)
    check_invariants(k)

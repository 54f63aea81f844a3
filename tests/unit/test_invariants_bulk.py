"""The checker's and the fuzz oracle's bulk (NumPy) paths against their per-entry forms.

`_Checker.walk_pte` accounts plain present entries as arrays and hands every
other entry to `_pte_entry`; `World.verify` compares whole tables of frames
at once and falls back to the per-page loop. Both must report exactly what
the per-entry forms report: the same problems in the same order, the same
first differing page, the same bytes counted. Each case runs a fuzzed world,
breaks one thing on purpose, and compares the two forms.
"""

import random

import numpy as np
import pytest

from hmmsim.include.mm_types import FOLIO_MAPPING_ANON, PGTY_buddy
from hmmsim.include.pgtable import pte_pfn, pte_present
from hmmsim.testing.fuzz import Generator, World, feature_configs
from hmmsim.testing.fuzz.ops import DEFAULT_RAM, FuzzFailure, SeqConfig
from hmmsim.testing.invariants import _Checker
from hmmsim.userspace import entry_at


def _world(seed: int, steps: int = 120) -> World:
    fs, cr = feature_configs("mainline")[seed % len(feature_configs("mainline"))]
    w = World(SeqConfig(frozenset(fs), cr, "always", DEFAULT_RAM, frozenset(), "mainline"))
    gen = Generator(w, random.Random(seed))
    for _ in range(steps):
        try:
            w.apply(gen.next())
        except FuzzFailure:  # pragma: no cover - the fixed model runs clean
            raise
    return w


def _problems(k, bulk: bool) -> list[str]:
    c = _Checker(k)
    if not bulk:
        c._pte_bulk = lambda *a: None  # every entry through _pte_entry
    c.run()
    return c.problems


def _mapped_pages(w: World):
    """(process, address, Page) of present PTEs mapping RAM pages."""
    out = []
    for ps in w.procs.values():
        for vpn in ps.keys():
            level, e = entry_at(ps.proc, vpn << 12)
            if level == "pte" and e and pte_present(e):
                pfn = pte_pfn(e)
                if 0 < pfn < w.k.mem.ram.pages.nr and pfn != w.k.mem.zero_pfn:
                    out.append((ps, vpn << 12, w.k.mem.pfn_to_page(pfn)))
    return out


BREAKS = {
    "mapcount": lambda p: p.a._mapcount.__setitem__(p.i, p.a._mapcount[p.i] + 1),
    "refcount": lambda p: p.a._refcount.__setitem__(p.i, p.a._refcount[p.i] + 3),
    "index": lambda p: p.a.index.__setitem__(p.i, p.a.index[p.i] + 7),
    "anon_vma": lambda p: p.a.mapping.__setitem__(p.i, 0x7FFFFF | FOLIO_MAPPING_ANON),
    "free": lambda p: p.a.flags.__setitem__(p.i, p.a.flags[p.i] | PGTY_buddy),
    "on_pcp": lambda p: _put_on_pcp(p),
}


def _put_on_pcp(page) -> None:
    """A mapped page also on the order-0 per-cpu list (a page freed while mapped)."""
    pcp = page.k.mem.pcp
    pcp.lists[0].append(page.pfn)
    pcp.count += 1


@pytest.mark.parametrize("seed", [1, 2])
def test_bulk_walk_agrees_on_a_clean_world(seed):
    w = _world(seed)
    assert _problems(w.k, bulk=True) == _problems(w.k, bulk=False) == []


@pytest.mark.parametrize("what", sorted(BREAKS))
def test_bulk_walk_reports_what_the_per_entry_walk_reports(what):
    w = _world(3)
    pages = _mapped_pages(w)
    assert pages
    for _, _, page in pages[:: max(1, len(pages) // 3)][:3]:
        BREAKS[what](page)
    got = _problems(w.k, bulk=True)
    assert got, what
    assert got == _problems(w.k, bulk=False)


def _runs(ps):
    """(address, npages) of the runs of consecutive mapped pages (as World.sweep)."""
    keys, out, i = ps.keys(), [], 0
    while i < len(keys):
        j = i
        while j + 1 < len(keys) and keys[j + 1] == keys[j] + 1:
            j += 1
        out.append((keys[i] << 12, j - i + 1))
        i = j + 1
    return out


def test_bulk_verify_reports_the_first_lost_byte_like_the_per_page_loop():
    w = _world(4)
    pages = _mapped_pages(w)
    assert len(pages) >= 3
    ps, a, page = pages[len(pages) // 2]
    ps2, a2, page2 = pages[-1]
    frame = w.k.mem.frame(page.pfn)
    frame[5] ^= 0xFF
    w.k.mem.frame(page2.pfn)[9] ^= 0x0F
    failures = []
    for verify in (w.verify, w.verify_slow):
        w.bytes_checked = 0
        with pytest.raises(FuzzFailure) as e:
            for p in (ps, ps2):
                for addr, n in _runs(p):
                    verify(p, addr, n)
        failures.append((str(e.value), e.value.bytes_lost, w.bytes_checked))
    assert failures[0] == failures[1]
    assert f"page {a:#x}" in failures[0][0] or f"page {a2:#x}" in failures[0][0]
    frame[5] ^= 0xFF
    w.k.mem.frame(page2.pfn)[9] ^= 0x0F
    counted = []
    for verify in (w.verify, w.verify_slow):
        w.bytes_checked = 0
        for p in w.procs.values():
            for addr, n in _runs(p):
                verify(p, addr, n)
        counted.append(w.bytes_checked)
    assert counted[0] == counted[1] > 0


# --- dmirror's invariant hook: whole-column checks against one gather per column ------------
def _dev_break(k, what: str) -> None:
    """Break the first device that has free pages, at three of its free pages."""
    from hmmsim.drivers.test_hmm import dmirror_device
    from hmmsim.include.mm_types import PG_locked

    devs = [d for _, d in sorted(k.devices.items()) if isinstance(d, dmirror_device)]
    d = next(d for d in devs if len(d.free_pages.items) > 100)
    items = d.free_pages.items
    picks = [items[7], items[len(items) // 2], items[-3]]
    for v in picks:
        a, i = d.free_pages.arrays[v >> 32], v & 0xFFFFFFFF
        if what == "refcount":
            a._refcount[i] += 1
        elif what == "mapcount":
            a._mapcount[i] += 1
        elif what == "mapping":
            a.mapping[i] = 0x1000
        elif what == "lock":
            a.flags[i] |= PG_locked
        elif what == "twice":
            items.append(v)
        elif what == "lost":
            items.remove(v)
    d.free_pages._low = 0  # items changed in the middle: as_array() rebuilds


def _thp_device_kernel():
    """A kernel whose device 0 has free THP folios (a THP migrated there and back)."""
    import numpy as np

    from hmmsim.drivers.test_hmm import hmm_dmirror_init
    from hmmsim.drivers.test_hmm_uapi import (
        HMM_DMIRROR_MIGRATE_TO_DEV,
        HMM_DMIRROR_MIGRATE_TO_SYS,
        hmm_dmirror_cmd,
    )
    from hmmsim.include.mman import MAP_ANONYMOUS, MAP_PRIVATE, O_RDWR, PROT_READ, PROT_WRITE
    from hmmsim.kernel import Kernel

    k = Kernel(ram_bytes=64 << 20, hugetlb_pages=0, features=frozenset("d"))
    hmm_dmirror_init(k)
    k.thp_enabled = "always"
    p = k.spawn("p")
    fd = p.open("/dev/hmm_dmirror0", O_RDWR)
    a = p.mmap(0, 4 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    a = (a + (2 << 20) - 1) & ~((2 << 20) - 1)
    p.store(a, b"x" * (2 << 20))
    buf = np.zeros(2 << 20, np.uint8)
    for cmd in (HMM_DMIRROR_MIGRATE_TO_DEV, HMM_DMIRROR_MIGRATE_TO_SYS):
        assert p.ioctl(fd, cmd, hmm_dmirror_cmd(addr=a, ptr=buf, npages=512)) == 0
    d = k.devices["/dev/hmm_dmirror0"]
    assert len(d.free_folios.items) > 3
    return k, d


@pytest.mark.parametrize("seed", [1, 5])
def test_dmirror_hook_agrees_on_a_clean_world(seed):
    from hmmsim.drivers.test_hmm.device import (
        dmirror_check_device_pages,
        dmirror_check_device_pages_slow,
    )

    w = _world(seed, steps=200)
    assert dmirror_check_device_pages(w.k) == dmirror_check_device_pages_slow(w.k) == []


@pytest.mark.parametrize("what", ["refcount", "mapcount", "mapping", "lock", "twice", "lost"])
def test_dmirror_hook_reports_what_the_gather_form_reports(what):
    from hmmsim.drivers.test_hmm.device import (
        dmirror_check_device_pages,
        dmirror_check_device_pages_slow,
    )

    w = _world(6, steps=150)
    _dev_break(w.k, what)
    got = dmirror_check_device_pages(w.k)
    assert got, what
    assert got == dmirror_check_device_pages_slow(w.k)


@pytest.mark.parametrize("what", ["clean", "tail_ref", "folio_twice", "head_on_pages", "lost"])
def test_dmirror_hook_free_folios_like_the_gather_form(what):
    from hmmsim.drivers.test_hmm.device import (
        dmirror_check_device_pages,
        dmirror_check_device_pages_slow,
    )

    k, d = _thp_device_kernel()
    folios = d.free_folios.items
    v = folios[1]
    a, i = d.free_folios.arrays[v >> 32], v & 0xFFFFFFFF
    if what == "tail_ref":
        a._refcount[i + 7] = 1
    elif what == "folio_twice":
        folios.append(v)
    elif what == "head_on_pages":  # a free folio's pages also on the order-0 list
        d.free_pages.items.append(folios[2])
        d.free_pages.items.append(folios[2] + 5)
    elif what == "lost":
        folios.remove(v)
    d.free_folios._low = d.free_pages._low = 0
    got = dmirror_check_device_pages(k)
    assert bool(got) == (what != "clean")
    assert got == dmirror_check_device_pages_slow(k)


# --- the buddy lists: a coverage count against block-by-block slices ------------------------
def _buddy_problems(k, fast: bool) -> list[str]:
    c = _Checker(k)
    if not fast:
        c._free_lists_mask = lambda *a: None  # every block through the slow form
    c.run()
    return c.problems


@pytest.mark.parametrize(
    "what", ["clean", "misaligned", "overlap", "past_ram", "both", "pcp_also_buddy"]
)
def test_buddy_coverage_reports_what_the_block_loop_reports(what):
    w = _world(7, steps=150)
    mem = w.k.mem
    nr = mem.ram.pages.nr
    top = max(o for o, fa in enumerate(mem.free_area) if fa)
    blk = min(mem.free_area[top])
    if what in ("misaligned", "both"):
        mem.free_area[1].add(blk + 3)  # order 1 at an odd pfn, inside a free block too
    if what in ("overlap", "both"):
        mem.free_area[0].add(blk + 8)
    if what == "past_ram":
        mem.free_area[2].add(nr - 2)
    if what == "pcp_also_buddy" and mem.pcp_pfns().size:
        mem.free_area[0].add(int(mem.pcp_pfns()[0]))
    c = _Checker(w.k)
    fast = c._free_lists_mask(mem, nr)
    assert (fast is None) == (what in ("misaligned", "overlap", "past_ram", "both"))
    got = _buddy_problems(w.k, fast=True)
    assert bool(got) == (what != "clean")
    assert got == _buddy_problems(w.k, fast=False)


# --- device mirrors: a packed dmirror table's present PTEs as arrays -------------------------
def _mirror_problems(k, bulk: bool) -> list[str]:
    c = _Checker(k)
    c.mirror_bulk = bulk
    c.run()
    return c.problems


def _mirror_world():
    """A world whose dmirror tables hold entries (seed picked for many of them)."""
    for seed in range(8, 40):
        w = _world(seed, steps=200)
        tables = [
            mni.ops.pt
            for p in w.k.processes.values()
            if p.alive
            for mni in p.mm.notifier_subscriptions
            if hasattr(getattr(mni.ops, "pt", None), "_d") and len(mni.ops.pt) > 20
        ]
        if tables:
            return w, tables
    raise AssertionError("no world with a populated mirror")  # pragma: no cover


@pytest.mark.parametrize("what", ["clean", "other_page", "write_tag", "unmapped", "all"])
def test_mirror_bulk_reports_what_the_per_entry_check_reports(what):
    w, tables = _mirror_world()
    pt = tables[0]
    vpns = list(pt._d)
    if what in ("other_page", "all"):
        v = pt._d[vpns[len(vpns) // 2]]
        pt._d[vpns[len(vpns) // 2]] = v + (5 << 2)  # five pages further in its array
    if what in ("write_tag", "all"):
        proc = next(p for p in w.k.processes.values() if any(m.ops.pt is pt for m in _subs(p)))
        for vpn in vpns[:: max(1, len(vpns) // 4)]:
            pt._d[vpn] |= 3  # WRITE-tagged ...
            _clear_pte_rw(w.k, proc, vpn << 12)  # ... where the CPU maps it read-only
    if what in ("unmapped", "all"):
        pt._d[(1 << 35) + 17] = pt._d[vpns[0]]  # an address nothing maps
    got = _mirror_problems(w.k, bulk=True)
    assert (got == []) == (what == "clean"), got
    assert got == _mirror_problems(w.k, bulk=False)
    c = _Checker(w.k)
    p = next(p for p in w.k.processes.values() if any(m.ops.pt is pt for m in _subs(p)))
    assert c._mirror_bulk(p, pt, {})[2].any()  # the bulk form took some entries


def _subs(p):
    return [m for m in p.mm.notifier_subscriptions if getattr(m.ops, "pt", None) is not None]


def _clear_pte_rw(k, proc, addr: int) -> None:
    """Clear _PAGE_RW of the present PTE mapping addr, if there is one."""
    from hmmsim.include.pgtable import _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, table_entry_pfn
    from hmmsim.mm.pgtable import pmd_offset, pmdp_get

    pmdp = pmd_offset(proc.mm, addr)
    pmd = 0 if pmdp is None else pmdp_get(k, pmdp)
    if not pmd or pmd & _PAGE_PSE or not pmd & _PAGE_PRESENT:
        return
    words = k.mem.ram.words
    t, i = table_entry_pfn(pmd), (addr >> 12) & 511
    if pte_present(int(words[t, i])):
        words[t, i] &= ~np.uint64(_PAGE_RW)


# --- device-private and device-exclusive PTEs in the bulk walk ------------------------------
def _device_leaf_pages(w: World, exclusive: bool = True):
    """Pages named by device-private (and device-exclusive) PTEs of the world's processes."""
    swp = w.k.swp
    out = []
    for ps in w.procs.values():
        for vpn in ps.keys():
            level, e = entry_at(ps.proc, vpn << 12)
            if level != "pte" or not e or pte_present(e):
                continue
            sl = swp.softleaf_from_pte(e)
            if swp.softleaf_is_device_private(sl) or (
                exclusive and swp.softleaf_is_device_exclusive(sl)
            ):
                out.append(w.k.softleaf_to_page(sl))
    return out


def _device_leaf_world(kernel: str = "mainline", series_c: bool = False):
    for seed in range(20, 60):
        fs, cr = feature_configs(kernel)[seed % len(feature_configs(kernel))]
        if ("c" in fs) != series_c:  # series (c)'s device-private offsets stay per entry
            continue
        w = World(SeqConfig(frozenset(fs), cr, "always", DEFAULT_RAM, frozenset(), kernel))
        gen = Generator(w, random.Random(seed))
        for _ in range(200):
            w.apply(gen.next())
        # Linux 6.12's device-exclusive entries stay per entry: look for device-private ones
        pages = _device_leaf_pages(w, exclusive=kernel != "6.12")
        if len(pages) >= 6:
            return w, pages
    raise AssertionError("no world with device-private entries")  # pragma: no cover


@pytest.mark.parametrize("kernel", ["mainline", "6.12"])
@pytest.mark.parametrize("what", ["clean", "mapcount", "refcount"])
def test_device_leaf_bulk_reports_what_the_per_entry_walk_reports(kernel, what):
    w, pages = _device_leaf_world(kernel)
    if what != "clean":
        for page in pages[:: max(1, len(pages) // 3)][:3]:
            BREAKS[what](page)
    taken = []
    c = _Checker(w.k)
    orig = c._device_leaf_bulk

    def spy(wd, where, ok):
        before = ok.copy()
        orig(wd, where, ok)
        taken.append(int((ok & ~before).sum()))

    c._device_leaf_bulk = spy
    c.run()
    assert sum(taken) > 0  # the bulk form accounted device entries
    assert (c.problems == []) == (what == "clean"), c.problems
    assert c.problems == _problems(w.k, bulk=False)


@pytest.mark.parametrize("what", ["clean", "mapcount"])
def test_device_leaf_bulk_leaves_series_c_offsets_to_the_per_entry_walk(what):
    w, pages = _device_leaf_world(series_c=True)
    if what != "clean":
        for page in pages[:3]:
            BREAKS[what](page)
    got = _problems(w.k, bulk=True)
    assert (got == []) == (what == "clean"), got
    assert got == _problems(w.k, bulk=False)

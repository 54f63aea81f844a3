"""The checker's and the fuzz oracle's bulk (NumPy) paths against their per-entry forms.

`_Checker.walk_pte` accounts plain present entries as arrays and hands every
other entry to `_pte_entry`; `World.verify` compares whole tables of frames
at once and falls back to the per-page loop. Both must report exactly what
the per-entry forms report: the same problems in the same order, the same
first differing page, the same bytes counted. Each case runs a fuzzed world,
breaks one thing on purpose, and compares the two forms.
"""

import random

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
}


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

"""page_vma_mapped_walk reads the PTEs under one table as a row: the same hits.

The walk used to step one address at a time (pmd_offset from the PGD, then
the one PTE); it now scans the rest of the PTE table at once and checks only
its non-none words. The reference below is that entry-by-entry form, written
here from the kernel's rules (mm/page_vma_mapped.c): for each address of the
walk, a none PMD or a PMD the walk does not match moves to the next PMD, a
matching huge/softleaf PMD ends the walk with one hit, and a PTE hits when
check_pte says so. On fuzzed worlds (device-private, device-exclusive and THP
entries among them) both must give the same (address, pmd, pte) hits for
every folio in every vma rmap_walk offers, in both walk modes, and leave no
page-table lock held.
"""

import random

import pytest

from hmmsim.include.mm_types import page_folio
from hmmsim.include.pgtable import pmd_leaf, pmd_none, pte_pfn, pte_present
from hmmsim.include.rmap import PVMW_MIGRATION
from hmmsim.kconfig import PAGE_SIZE, PMD_MASK, PMD_SIZE
from hmmsim.mm.page_vma_mapped import (
    DEFINE_FOLIO_VMA_WALK,
    _pmd_matches,
    check_pte,
    page_vma_mapped_walk,
)
from hmmsim.mm.pgtable import pmd_offset, pte_offset_map, ptep_get
from hmmsim.mm.rmap import rmap_walk, rmap_walk_control
from hmmsim.testing.fuzz import Generator, World, feature_configs
from hmmsim.testing.fuzz.ops import DEFAULT_RAM, SeqConfig
from hmmsim.userspace import entry_at


def _world(seed: int, steps: int, kernel: str = "mainline") -> World:
    cfgs = feature_configs(kernel)
    fs, cr = cfgs[seed % len(cfgs)]
    w = World(SeqConfig(frozenset(fs), cr, "always", DEFAULT_RAM, frozenset(), kernel))
    gen = Generator(w, random.Random(seed))
    for _ in range(steps):
        w.apply(gen.next())
    return w


def _reference(pvmw) -> list[tuple[int, int, int | None]]:
    """Every hit of the entry-by-entry walk, without taking locks."""
    vma = pvmw.vma
    mm = vma.vm_mm
    k = mm.k
    hits = []
    addr = pvmw.address
    end = min(vma.vm_end, addr + pvmw.nr_pages * PAGE_SIZE)
    while addr < end:
        pmdp = pmd_offset(mm, addr)
        if pmdp is None or pmd_none(ptep_get(k, pmdp)):
            addr = (addr & PMD_MASK) + PMD_SIZE
            continue
        pmd = ptep_get(k, pmdp)
        if pmd_leaf(pmd) or not pmd & 1:
            if _pmd_matches(k, pvmw, pmd):
                hits.append((addr, pmdp, None))
                return hits
            addr = (addr & PMD_MASK) + PMD_SIZE
            continue
        ptep = pte_offset_map(k, pmd, addr)
        word = ptep_get(k, ptep)
        if word and check_pte(k, pvmw, word):
            hits.append((addr, pmdp, ptep))
        addr += PAGE_SIZE
    return hits


def _walked(pvmw) -> list[tuple[int, int, int | None]]:
    hits = []
    while page_vma_mapped_walk(pvmw):
        assert pvmw.ptl is not None and pvmw.ptl.is_locked()
        hits.append((pvmw.address, pvmw.pmd, pvmw.pte))
    assert pvmw.ptl is None
    return hits


def _folios(w: World):
    seen = {}
    for ps in w.procs.values():
        for vpn in ps.keys():
            level, e = entry_at(ps.proc, vpn << 12)
            if e and pte_present(e):
                pfn = pte_pfn(e)
                if 0 < pfn < w.k.mem.ram.pages.nr and pfn != w.k.mem.zero_pfn:
                    f = page_folio(w.k.mem.pfn_to_page(pfn))
                    seen.setdefault(f.pfn, f)
    return list(seen.values())


@pytest.mark.parametrize(("seed", "kernel"), [(1, "mainline"), (2, "mainline"), (3, "6.12")])
def test_row_scan_finds_what_the_entry_walk_finds(seed, kernel):
    w = _world(seed, 150, kernel)
    compared = hits = 0
    for folio in _folios(w):
        for flags in (0, PVMW_MIGRATION):

            def one(f, vma, address, arg, flags=flags):
                nonlocal compared, hits
                ref = _reference(DEFINE_FOLIO_VMA_WALK(f, vma, address, flags))
                got = _walked(DEFINE_FOLIO_VMA_WALK(f, vma, address, flags))
                assert got == ref, (hex(f.pfn), hex(address), flags)
                compared += 1
                hits += len(got)
                return True

            rmap_walk(folio, rmap_walk_control(rmap_one=one))
    assert compared > 20 and hits > 20

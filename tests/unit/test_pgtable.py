"""mm/pgtable.py: pmd_offset's read-only walk against the level-by-level one.

pmd_offset(mm, addr) without alloc reads the PGD and PUD words inline; it
must give what pud_offset followed by _next_level gives (the pointer to the
PMD word, or None where a PGD or PUD entry is none), on fuzzed worlds of
both data planes, for mapped addresses, addresses in holes and addresses
under upper-level tables that do not exist.
"""

import random

import pytest

from hmmsim.include.pgtable import pmd_index
from hmmsim.kconfig import PAGE_SIZE, PGDIR_SHIFT, PMD_SIZE, PUD_SHIFT
from hmmsim.mm.pgtable import _next_level, entry_ptr, pmd_offset, pud_offset
from hmmsim.testing.fuzz import Generator, World, feature_configs
from hmmsim.testing.fuzz.ops import DEFAULT_RAM, SeqConfig


def _general(mm, addr):
    pudp = pud_offset(mm, addr)
    if pudp is None:
        return None
    table = _next_level(mm, pudp, False)
    return None if table is None else entry_ptr(table, pmd_index(addr))


@pytest.mark.parametrize("plane", ["bytes", "tokens"])
def test_inline_walk_matches_the_level_walk(plane):
    fs, cr = feature_configs("mainline")[0]
    w = World(SeqConfig(frozenset(fs), cr, "always", DEFAULT_RAM, frozenset(), "mainline", plane))
    gen = Generator(w, random.Random(5))
    for _ in range(80):
        w.apply(gen.next())
    rng = random.Random(1)
    found = missing = 0
    for ps in w.procs.values():
        mm = ps.proc.mm
        addrs = [a for v in mm.vmas for a in range(v.vm_start, v.vm_end, 37 * PAGE_SIZE)]
        addrs += [rng.randrange(0, 1 << 47) & ~(PAGE_SIZE - 1) for _ in range(200)]
        addrs += [(1 << PGDIR_SHIFT) * 200, (1 << PUD_SHIFT) * 3 + PMD_SIZE]
        for a in addrs:
            got = pmd_offset(mm, a)
            assert got == _general(mm, a), hex(a)
            found += got is not None
            missing += got is None
    assert found > 20 and missing > 20

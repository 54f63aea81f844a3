"""Range walks cost what is mapped, not what the user asked for (issue 15 part 1).

The kernel's unmap_page_range, change_protection, copy_page_range and
move_page_tables descend level by level and skip an empty PGD or PUD entry
whole, so a call over a 32 TiB mapping with two pages in it visits a handful
of tables. The budget here is counted in pmd_offset() calls (operations, not
seconds): a walk that steps over every 2 MiB of the range would need 16
million and is stopped at the budget.
"""

from __future__ import annotations

import pytest

from hmmsim.include.mman import (
    MADV_DONTNEED,
    MAP_ANONYMOUS,
    MAP_NORESERVE,
    MAP_PRIVATE,
    MREMAP_FIXED,
    MREMAP_MAYMOVE,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.kernel import Kernel
from hmmsim.testing.invariants import check_invariants

RW = PROT_READ | PROT_WRITE
L = 1 << 45  # 32 TiB: MAP_NORESERVE, so the default overcommit policy allows it
PAGE = 4096
BUDGET = 16384


class OverBudget(Exception):
    pass


@pytest.fixture
def counted(monkeypatch):
    """Count pmd_offset() calls in the walking modules; stop past BUDGET."""
    import hmmsim.mm.memory as memory
    import hmmsim.mm.mprotect as mprotect
    import hmmsim.mm.mremap as mremap
    from hmmsim.mm import pgtable

    n = [0]
    real = pgtable.pmd_offset

    def pmd_offset(mm, addr, alloc=False):
        n[0] += 1
        if n[0] > BUDGET:
            raise OverBudget(f"{n[0]} pmd_offset calls")
        return real(mm, addr, alloc)

    for mod in (memory, mprotect, mremap):
        monkeypatch.setattr(mod, "pmd_offset", pmd_offset)
    return n


@pytest.fixture
def world():
    k = Kernel(ram_bytes=32 << 20)
    p = k.spawn()
    a = p.mmap(0, L, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)
    assert a > 0
    p.store(a, b"first")
    p.store(a + L - PAGE, b"last")
    return k, p, a


@pytest.mark.parametrize(
    "call",
    [
        lambda p, a: p.mprotect(a, L, PROT_READ),
        lambda p, a: p.madvise(a, L, MADV_DONTNEED),
        lambda p, a: p.munmap(a, L),
        lambda p, a: p.mremap(a, L, L, MREMAP_MAYMOVE | MREMAP_FIXED, 1 << 30),
        lambda p, a: p.fork(),
    ],
    ids=["mprotect", "madvise_dontneed", "munmap", "mremap_move", "fork"],
)
def test_a_walk_over_64_tib_visits_only_the_tables_present(world, counted, call):
    k, p, a = world
    counted[0] = 0
    ret = call(p, a)
    assert ret >= 0
    assert counted[0] <= BUDGET
    check_invariants(k)

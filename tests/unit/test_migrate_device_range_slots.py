"""migrate_device_range zeroes the slots of free and tail pages at once.

When the fast layer lists the in-use pages of the range, _range_pages clears
every slot first and then fills the in-use ones (mm/migrate_device.c
migrate_device_range gives 0 for a page it cannot take). A list or 1-D
array is cleared with one slice store; any other sequence slot by slot. The
two must leave the same slots and the same machine: two worlds built from
one seed, src pre-filled with junk, one as a NumPy array (slice store) and
one as an array.array (per-slot stores).
"""

from __future__ import annotations

import array

import numpy as np
import pytest
from test_fastpath_differential import assert_same
from test_fastpath_differential_range import build

from hmmsim.drivers.gpu import CHUNK_PAGES
from hmmsim.mm.migrate_device import migrate_device_range

JUNK = 0xDEAD000


@pytest.mark.parametrize("form", ["ndarray", pytest.param("list", marks=pytest.mark.slow)])
def test_slice_clear_leaves_what_the_slot_loop_leaves(form):
    fw, fg = build(1, True, "d", 1.0, "plain")
    sw, sg = build(1, True, "d", 1.0, "plain")
    assert_same(fw, sw, "setup")
    chunk_f, chunk_s = fg.chunks[-1], sg.chunks[-1]  # the partly used one
    fast = (
        np.full(CHUNK_PAGES, JUNK, dtype=np.uint64) if form == "ndarray" else [JUNK] * CHUNK_PAGES
    )
    slow = array.array("Q", [JUNK] * CHUNK_PAGES)  # not sliceable: the per-slot loop
    migrate_device_range(fast, chunk_f.first, CHUNK_PAGES, k=fw.k, device_private=True)
    migrate_device_range(slow, chunk_s.first, CHUNK_PAGES, k=sw.k, device_private=True)
    got, want = [int(x) for x in fast], list(slow)
    assert got == want
    assert JUNK not in got and any(got) and 0 in got  # some pages taken, some free
    assert_same(fw, sw, "after migrate_device_range")

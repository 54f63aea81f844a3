"""The selftest port's `user_ptr`: indexed loads and stores through the simulated CPU.

`user_ptr` turns a sorted index array into runs of consecutive elements and
does one CPU access per run; an index array that spans exactly its length
is a single run without a scan for breaks. Every form must touch exactly the
elements a per-element C loop touches, and refuse what a C loop could not be.
"""

import numpy as np
import pytest

from hmmsim.include.mm_types import PAGE_FIELDS
from hmmsim.include.mman import (
    MADV_HUGEPAGE,
    MADV_NOHUGEPAGE,
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PROT_READ,
    PROT_WRITE,
)
from hmmsim.kconfig import PMD_SIZE
from hmmsim.kernel import Kernel
from hmmsim.selftests.harness import Task, low_bytes, run_as, user_ptr
from hmmsim.testing.invariants import check_invariants


@pytest.fixture
def ptr(proc):
    addr = proc.mmap(0, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    return proc, addr


def _per_element(proc, addr, idx, vals) -> np.ndarray:
    """What a C loop `for (...) ptr[idx[j]] = vals[j]` leaves, read back element by element."""
    for i, v in zip(idx, vals, strict=True):
        proc.store_array(addr + int(i) * 4, np.array([v], dtype=np.int32))
    return proc.load_array(addr, 8 * 1024, np.int32)


INDEXES = {
    "contiguous": np.arange(5, 3000),
    "from_zero_whole": np.arange(0, 8 * 1024),
    "gaps": np.concatenate((np.arange(3, 900), np.arange(1000, 1500), [4000, 4001, 8000])),
    "one": np.array([77]),
    "two_apart": np.array([10, 4000]),
    "span_matches_but_gap": np.array([0, 2, 3]),  # span 3 != size - 1 = 2: has a gap
}


@pytest.mark.parametrize("name", sorted(INDEXES))
def test_store_and_load_touch_the_elements_a_c_loop_touches(ptr, k, name):
    proc, addr = ptr
    idx = INDEXES[name]
    vals = (idx * 7 + 3).astype(np.int32)
    p = user_ptr(addr)

    def go():
        p[idx] = vals
        return p[idx]

    got = run_as(Task(proc, None), go)
    assert np.array_equal(got, vals)
    after = proc.load_array(addr, 8 * 1024, np.int32)
    proc2 = k.spawn("ref")
    addr2 = proc2.mmap(addr, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    assert addr2 == addr
    assert np.array_equal(after, _per_element(proc2, addr2, idx, vals))


@pytest.mark.parametrize(
    "idx", [np.array([3, 2, 4]), np.array([1, 1, 2]), np.array([5, 4, 3, 2, 1, 0])]
)
def test_unsorted_or_repeated_indices_are_refused(ptr, idx):
    proc, addr = ptr
    p = user_ptr(addr)
    with pytest.raises(ValueError, match="strictly increasing"):
        run_as(Task(proc, None), lambda: p.__setitem__(idx, 1))
    with pytest.raises(ValueError, match="strictly increasing"):
        run_as(Task(proc, None), lambda: p[idx])


# --- the benchmark's fill, `for (i = 0; i < n; ++i) ptr[i] = i & 0xFF` ----------------------
def _state(kern, p) -> dict:
    """What a store could change: RAM bytes, struct pages, the allocator, counters, the mm."""
    st = {name: getattr(kern.mem.ram.pages, name).copy() for name, _ in PAGE_FIELDS}
    st["frames"] = kern.mem.ram.frames.copy()
    st["nr_free"] = kern.mem.nr_free
    st["free_area"] = [sorted(s) for s in kern.mem.free_area]
    st["stats"] = sorted(kern.stats.items())
    st["rss"] = list(p.mm.rss_stat)
    st["vmas"] = [repr(v) for v in p.mm.vmas]
    return st


def _fill(kind: str, n: int, npages: int, thp: bool) -> dict:
    kern = Kernel(ram_bytes=32 << 20, hugetlb_pages=0)
    p = kern.spawn("fill")
    addr = p.mmap(
        0, 2 * PMD_SIZE + npages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS
    )
    addr = (addr + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    p.madvise(addr, npages * 4096, MADV_HUGEPAGE if thp else MADV_NOHUGEPAGE)
    ptr = user_ptr(addr)

    def go():
        if kind == "per_element":
            for i in range(n):
                ptr[i] = i & 0xFF
        elif kind == "slice":
            ptr[0:n] = low_bytes(0, n)
        elif kind == "off_by_one_values":
            ptr[0:n] = low_bytes(1, n + 1)
        elif kind == "off_by_one_length":
            ptr[0 : n + 1] = low_bytes(0, n + 1)

    run_as(Task(p, None), go)
    check_invariants(kern)
    return _state(kern, p)


def _differs(a: dict, b: dict) -> list:
    assert a.keys() == b.keys()
    return [
        key
        for key in a
        if not (
            np.array_equal(a[key], b[key]) if isinstance(a[key], np.ndarray) else a[key] == b[key]
        )
    ]


@pytest.mark.parametrize("thp", [False, True], ids=["4k", "thp"])
def test_low_bytes_fill_leaves_what_the_c_loop_leaves(thp):
    # about 2.5 pages of ints, ending mid-page (a THP buffer: the first touch maps the huge page)
    n = 2 * 1024 + 500  # n & 0xFF != 0: one int too many stores a non-zero byte
    ref = _fill("per_element", n, 4, thp)
    assert not _differs(_fill("slice", n, 4, thp), ref)
    # the comparison sees a planted off-by-one in the values or in the length
    assert "frames" in _differs(_fill("off_by_one_values", n, 4, thp), ref)
    assert "frames" in _differs(_fill("off_by_one_length", n, 4, thp), ref)


@pytest.mark.parametrize(
    "start, stop", [(0, 0), (0, 1), (0, 256), (5, 1000), (255, 257), (300, 70000)]
)
def test_low_bytes_is_the_masked_index(start, stop):
    got = low_bytes(start, stop)
    assert got.dtype == np.int32
    assert np.array_equal(got, (np.arange(start, stop) & 0xFF).astype(np.int32))


def test_unit_slice_matches_the_index_array_form(ptr):
    proc, addr = ptr
    p = user_ptr(addr)
    vals = (np.arange(3, 2000) * 5).astype(np.int32)

    def go():
        p[3:2000] = vals
        p[7:7] = 99  # an empty loop stores nothing
        return p[3:2000], p[np.arange(3, 2000)], p[9:9]

    got_slice, got_idx, empty = run_as(Task(proc, None), go)
    assert np.array_equal(got_slice, vals) and np.array_equal(got_idx, vals)
    assert empty.size == 0
    assert proc.load_array(addr, 3, np.int32).tolist() == [0, 0, 0]
    assert proc.load_array(addr + 2000 * 4, 1, np.int32)[0] == 0
